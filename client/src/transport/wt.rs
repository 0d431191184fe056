//! WebTransport halves (wtransport): one bidirectional control stream carrying
//! length-prefixed records.

use super::Ended;
use crate::{config::parse_cert_hash, ClientConfig, ClientError};
use bytes::Bytes;
use switchboard_protocol::codes::error_from_close_code;
use switchboard_protocol::framing::{encode_record, RecordDecoder};
use switchboard_protocol::limits::MAX_FRAME_BYTES;
use wtransport::error::ConnectionError;
use wtransport::tls::Sha256Digest;
use wtransport::{ClientConfig as WtClientConfig, Connection, Endpoint, RecvStream, SendStream, VarInt};

/// QUIC send priority of the control stream with media lanes (group streams keep 0).
const CONTROL_PRIORITY: i32 = 1;

pub(crate) struct WtReader {
    connection: Connection,
    recv: RecvStream,
    decoder: RecordDecoder,
    buf: Box<[u8]>,
}

pub(crate) struct WtWriter {
    /// Kept to drive the close to the wire ([`WtWriter::close`]): each client has its own.
    endpoint: Endpoint<wtransport::endpoint::endpoint_side::Client>,
    connection: Connection,
    send: SendStream,
}

pub(crate) async fn connect(config: &ClientConfig) -> Result<(WtReader, WtWriter), ClientError> {
    let builder = match config.bind_ip {
        Some(ip) => WtClientConfig::builder().with_bind_address(std::net::SocketAddr::new(ip, 0)),
        None => WtClientConfig::builder().with_bind_default(),
    };
    let mut wt_config = if config.insecure {
        builder.with_no_cert_validation().build()
    } else if !config.cert_hashes.is_empty() {
        let hashes = config
            .cert_hashes
            .iter()
            .map(|h| parse_cert_hash(h).map(Sha256Digest::new))
            .collect::<Result<Vec<_>, _>>()?;
        builder.with_server_certificate_hashes(hashes).build()
    } else {
        builder.with_native_certs().build()
    };
    let mut transport = transport_config();
    if config.media_lanes {
        crate::lanes::configure_transport(&mut transport);
    }
    wt_config.quic_config_mut().transport_config(std::sync::Arc::new(transport));
    let endpoint = Endpoint::client(wt_config).map_err(|e| ClientError::Connect(e.to_string()))?;
    let connection =
        endpoint.connect(&config.url).await.map_err(|e| ClientError::Connect(format!("{}: {e}", config.url)))?;
    let opening = connection.open_bi().await.map_err(|e| ClientError::Connect(format!("control stream: {e}")))?;
    let (send, recv) = opening.await.map_err(|e| ClientError::Connect(format!("control stream: {e}")))?;
    Ok((
        WtReader {
            connection: connection.clone(),
            recv,
            decoder: RecordDecoder::new(MAX_FRAME_BYTES),
            buf: vec![0u8; 64 * 1024].into_boxed_slice(),
        },
        WtWriter { endpoint, connection, send },
    ))
}

fn ended(err: ConnectionError) -> Ended {
    match err {
        ConnectionError::ApplicationClosed(close) => Ended {
            code: u16::try_from(close.code().into_inner()).ok().and_then(error_from_close_code),
            reason: String::from_utf8_lossy(close.reason()).into_owned(),
        },
        other => Ended { code: None, reason: other.to_string() },
    }
}

impl WtReader {
    pub async fn next(&mut self) -> Result<Bytes, Ended> {
        loop {
            match self.decoder.next_record() {
                Ok(Some(record)) => return Ok(record),
                Ok(None) => {}
                Err(e) => return Err(Ended { code: None, reason: format!("bad record from server: {e}") }),
            }
            match self.recv.read(&mut self.buf).await {
                Ok(Some(n)) => self.decoder.extend(&self.buf[..n]),
                // The stream ended: report how the session ended.
                Ok(None) | Err(_) => return Err(ended(self.connection.closed().await)),
            }
        }
    }
}

impl WtWriter {
    /// The session (for its media lanes).
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Give the control stream a higher QUIC send priority than media streams, so a media
    /// burst never delays a request.
    pub fn prioritize_control(&self) {
        self.send.set_priority(CONTROL_PRIORITY);
    }

    pub async fn send(&mut self, frame: Bytes) -> Result<(), ClientError> {
        self.send
            .write_all(&encode_record(&frame))
            .await
            .map_err(|e| ClientError::Closed { code: None, reason: e.to_string() })
    }

    /// End the control stream, close the session with 1000 (normal closure), and wait
    /// (bounded) until the endpoint is idle: quinn sends the CONNECTION_CLOSE from the
    /// endpoint's driver task, so a process exiting right after `close` may never send it
    /// and leave the session open on the node until its idle timeout.
    pub async fn close(&mut self) {
        let _ = tokio::time::timeout(super::CLOSE_TIMEOUT, self.send.finish()).await;
        self.connection.close(VarInt::from_u32(1000), b"client closed");
        let _ = tokio::time::timeout(super::CLOSE_TIMEOUT, self.endpoint.wait_idle()).await;
    }
}

/// Flow-control window of one stream from the node (the control stream, each media group):
/// node → client carries at most this per RTT, ~7/8 of it usable (quinn re-opens a window
/// after an eighth was read): ~98 Mbit/s at 150 ms RTT, >= 20 Mbit/s up to ~700 ms.
const STREAM_RECEIVE_WINDOW: u32 = 2 << 20;
/// Flow-control window of the whole connection: the most a node can make this client buffer
/// (quinn's default is unbounded); four stream windows, so media groups in flight do not
/// stall the control stream.
const RECEIVE_WINDOW: u32 = 8 << 20;

/// quinn's defaults with the receive windows above.
fn transport_config() -> wtransport::config::QuicTransportConfig {
    let mut transport = wtransport::config::QuicTransportConfig::default();
    transport
        .stream_receive_window(wtransport::quinn::VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(wtransport::quinn::VarInt::from_u32(RECEIVE_WINDOW));
    // BBR, as the node: CUBIC reads a lossy mobile link's random loss as congestion.
    transport.congestion_controller_factory(std::sync::Arc::new(wtransport::quinn::congestion::BbrConfig::default()));
    transport
}
