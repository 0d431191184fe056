//! Client configuration.

use crate::ClientError;
use std::time::Duration;

/// How to reach a Switchboard node.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `ws://HOST:PORT/ws`, `wss://...` or `https://HOST:PORT/wt`.
    pub url: String,
    /// The JWT sent in `Hello`.
    pub token: String,
    /// SHA-256 hashes (hex) of self-signed WebTransport certificates to trust.
    pub cert_hashes: Vec<String>,
    /// WebTransport: accept any certificate (development only).
    pub insecure: bool,
    /// Limit for connecting and the `Hello`/`Welcome` exchange.
    pub connect_timeout: Duration,
    /// Limit for a request's `Ack`/`Joined`/`Error`.
    pub request_timeout: Duration,
    /// Client description sent in `Hello`.
    pub client_name: String,
    /// Capacity of the event channel; when full, the connection stops reading (backpressure).
    pub event_buffer: usize,
    /// `wss://`: trust this CA (PEM) instead of the public web roots (private CAs, tests).
    pub ca_pem: Option<Vec<u8>>,
    /// Local address to connect from (load generators spread connections over several
    /// loopback addresses to get past the ephemeral-port limit). `None`: the OS picks.
    pub bind_ip: Option<std::net::IpAddr>,
    /// WebTransport: carry media on QUIC datagrams and per-group unidirectional streams
    /// ("media lanes", README) when the node agrees; `false` keeps all media on the ordered
    /// control stream. Ignored on WebSocket. Default `true`.
    pub media_lanes: bool,
    /// Ids of calls to resume (`Hello.calls`): the node answers each with a
    /// [`crate::Event::Call`] of its current state. [`crate::ReconnectingClient`] sets it on
    /// every reconnect to the calls it saw ringing or accepted and not ended. Default empty.
    pub resume_calls: Vec<String>,
}

impl ClientConfig {
    /// Defaults for `url` and `token`.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: token.into(),
            cert_hashes: Vec::new(),
            insecure: false,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            client_name: concat!("switchboard-rs/", env!("CARGO_PKG_VERSION")).into(),
            event_buffer: 1024,
            bind_ip: None,
            ca_pem: None,
            media_lanes: true,
            resume_calls: Vec::new(),
        }
    }

    /// `wss://`: trust the CA certificate(s) in `pem` instead of the public web roots.
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// WebTransport: use media lanes (`true`, the default) or keep media on the control
    /// stream (`false`).
    pub fn with_media_lanes(mut self, on: bool) -> Self {
        self.media_lanes = on;
        self
    }

    /// Trust a self-signed WebTransport certificate by its SHA-256 (hex).
    pub fn with_cert_hash(mut self, hex: impl Into<String>) -> Self {
        self.cert_hashes.push(hex.into());
        self
    }

    /// The transport the URL selects.
    pub fn transport(&self) -> Result<TransportChoice, ClientError> {
        let scheme = self.url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("ws") | Some("wss") => Ok(TransportChoice::WebSocket),
            Some("https") => Ok(TransportChoice::WebTransport),
            _ => Err(ClientError::InvalidUrl(format!("{}: use ws://, wss:// or https:// (WebTransport)", self.url))),
        }
    }
}

/// Which transport a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportChoice {
    /// WebSocket (`ws://`, `wss://`).
    WebSocket,
    /// WebTransport (`https://`).
    WebTransport,
}

/// Parse a hex SHA-256 (64 hex digits; `:` separators and surrounding space allowed).
pub fn parse_cert_hash(hex: &str) -> Result<[u8; 32], ClientError> {
    let clean: String = hex.trim().chars().filter(|c| *c != ':').collect();
    let bad = || ClientError::InvalidCertHash(hex.trim().to_owned());
    if clean.len() != 64 || !clean.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&clean[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_from_url() {
        assert_eq!(ClientConfig::new("ws://h/ws", "t").transport().unwrap(), TransportChoice::WebSocket);
        assert_eq!(ClientConfig::new("WSS://h/ws", "t").transport().unwrap(), TransportChoice::WebSocket);
        assert_eq!(ClientConfig::new("https://h:4433/wt", "t").transport().unwrap(), TransportChoice::WebTransport);
        assert!(ClientConfig::new("http://h", "t").transport().is_err());
        assert!(ClientConfig::new("nonsense", "t").transport().is_err());
    }

    #[test]
    fn cert_hashes() {
        let hex = "00ff".repeat(16);
        assert_eq!(parse_cert_hash(&format!("{hex}\n")).unwrap()[1], 0xff);
        let colons: Vec<String> = (0..32).map(|i| format!("{:02X}", i)).collect();
        assert_eq!(parse_cert_hash(&colons.join(":")).unwrap()[31], 31);
        assert!(parse_cert_hash("abc").is_err());
        assert!(parse_cert_hash(&"zz".repeat(32)).is_err());
    }
}
