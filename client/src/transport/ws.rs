//! WebSocket halves (tokio-tungstenite): one binary message per frame.

use super::Ended;
use crate::ClientError;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use switchboard_protocol::codes::error_from_close_code;
use switchboard_protocol::limits::MAX_FRAME_BYTES;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket connection.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The receiving half, and whether this side started the close (shared with the writer).
pub(crate) struct WsReader(SplitStream<Ws>, Arc<AtomicBool>);
/// The sending half, and whether this side started the close (shared with the reader).
pub(crate) struct WsWriter(SplitSink<Ws, Message>, Arc<AtomicBool>);

/// After the server starts a close, how long the reader keeps reading to get tungstenite's
/// queued answer onto the wire.
const ANSWER_FLUSH: std::time::Duration = std::time::Duration::from_millis(250);

/// Open a raw WebSocket to `url` (optionally from a chosen local address), with the
/// protocol's frame-size limits. Used by the client and by load generators.
pub async fn websocket_connect(url: &str, bind_ip: Option<std::net::IpAddr>) -> Result<Ws, ClientError> {
    let config =
        WebSocketConfig::default().max_message_size(Some(MAX_FRAME_BYTES)).max_frame_size(Some(MAX_FRAME_BYTES));
    let err = |e: &dyn std::fmt::Display| ClientError::Connect(format!("{url}: {e}"));
    let Some(ip) = bind_ip else {
        return Ok(tokio_tungstenite::connect_async_with_config(url, Some(config), true).await.map_err(|e| err(&e))?.0);
    };
    // Connect from a chosen local address, then run the WebSocket handshake on it.
    let authority = url.split("://").nth(1).and_then(|r| r.split('/').next()).unwrap_or_default();
    let remote =
        tokio::net::lookup_host(authority).await.map_err(|e| err(&e))?.next().ok_or_else(|| err(&"no address"))?;
    let socket = if remote.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
        .map_err(|e| err(&e))?;
    defer_port_choice(&socket);
    socket.bind(std::net::SocketAddr::new(ip, 0)).map_err(|e| err(&e))?;
    let stream = socket.connect(remote).await.map_err(|e| err(&e))?;
    let _ = stream.set_nodelay(true);
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    Ok(tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await.map_err(|e| err(&e))?.0)
}

/// Let the kernel pick the local port at `connect` (knowing the destination) rather than at
/// `bind`: otherwise every bound socket needs a port unused by any other, TIME_WAIT included,
/// and a load generator cycling connections runs out of ports after ~28k of them.
#[cfg(target_os = "linux")]
fn defer_port_choice(socket: &tokio::net::TcpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, an int option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            std::ptr::addr_of!(on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "IP_BIND_ADDRESS_NO_PORT not set");
    }
}

#[cfg(not(target_os = "linux"))]
fn defer_port_choice(_socket: &tokio::net::TcpSocket) {}

/// Open a `wss://` WebSocket trusting only the CA certificate(s) in `pem`.
pub async fn websocket_connect_with_ca(url: &str, pem: &[u8]) -> Result<Ws, ClientError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let err = |e: &dyn std::fmt::Display| ClientError::Connect(format!("{url}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots.add(cert.map_err(|e| err(&e))?).map_err(|e| err(&e))?;
    }
    let tls =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| err(&e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let config =
        WebSocketConfig::default().max_message_size(Some(MAX_FRAME_BYTES)).max_frame_size(Some(MAX_FRAME_BYTES));
    let connector = tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(tls));
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(url, Some(config), true, Some(connector))
        .await
        .map_err(|e| err(&e))?;
    Ok(ws)
}

pub(crate) async fn connect(
    url: &str,
    bind_ip: Option<std::net::IpAddr>,
    ca_pem: Option<&[u8]>,
) -> Result<(WsReader, WsWriter), ClientError> {
    let ws = match ca_pem {
        Some(pem) => websocket_connect_with_ca(url, pem).await?,
        None => websocket_connect(url, bind_ip).await?,
    };
    let (sink, stream) = ws.split();
    let we_closed = Arc::new(AtomicBool::new(false));
    Ok((WsReader(stream, we_closed.clone()), WsWriter(sink, we_closed)))
}

impl WsReader {
    pub async fn next(&mut self) -> Result<Bytes, Ended> {
        loop {
            match self.0.next().await {
                Some(Ok(Message::Binary(b))) => return Ok(b),
                Some(Ok(Message::Close(frame))) => {
                    // The closing handshake: when this side started it, the server's close is
                    // the answer and the handshake is complete (dropping the connection ends
                    // TCP, which also ends the server's wait for it at once). When the server
                    // started it, tungstenite queued our answer and sends it on the next
                    // read: read on, briefly.
                    if !self.1.load(Ordering::Acquire) {
                        let _ = tokio::time::timeout(ANSWER_FLUSH, async {
                            while let Some(Ok(_)) = self.0.next().await {}
                        })
                        .await;
                    }
                    return Err(match frame {
                        Some(f) => {
                            Ended { code: error_from_close_code(u16::from(f.code)), reason: f.reason.to_string() }
                        }
                        None => Ended { code: None, reason: "closed".into() },
                    });
                }
                Some(Ok(_)) => continue, // pings are answered by tungstenite; text is not ours
                Some(Err(e)) => return Err(Ended { code: None, reason: e.to_string() }),
                None => return Err(Ended { code: None, reason: "connection ended".into() }),
            }
        }
    }
}

impl WsWriter {
    pub async fn send(&mut self, frame: Bytes) -> Result<(), ClientError> {
        self.0.send(Message::Binary(frame)).await.map_err(|e| ClientError::Closed { code: None, reason: e.to_string() })
    }

    /// Send a close frame (1000, normal closure) and flush it. The server's answer arrives
    /// on the reading half ([`WsReader::next`]).
    pub async fn close(&mut self) {
        self.1.store(true, Ordering::Release);
        let frame = CloseFrame { code: CloseCode::Normal, reason: "client closed".into() };
        let _ = tokio::time::timeout(super::CLOSE_TIMEOUT, async {
            let _ = self.0.send(Message::Close(Some(frame))).await;
            let _ = self.0.close().await;
        })
        .await;
    }
}
