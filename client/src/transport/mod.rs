//! Connection halves for both transports: a [`Reader`] of whole server frames and a
//! [`Writer`] of whole client frames.

pub(crate) mod ws;
mod wt;

use crate::{ClientConfig, ClientError, TransportChoice};
use bytes::Bytes;
use switchboard_protocol::ErrorCode;

/// How long each step of a normal close may take (sending the close, the server's answer,
/// the QUIC close reaching the wire) before the client gives up on it.
pub(crate) const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How a connection ended.
#[derive(Debug, Clone)]
pub(crate) struct Ended {
    pub code: Option<ErrorCode>,
    pub reason: String,
}

/// The receiving half.
pub(crate) enum Reader {
    Ws(ws::WsReader),
    Wt(wt::WtReader),
}

/// The sending half.
pub(crate) enum Writer {
    Ws(ws::WsWriter),
    Wt(wt::WtWriter),
}

/// Open a connection as `config.url` says.
pub(crate) async fn connect(config: &ClientConfig) -> Result<(Reader, Writer), ClientError> {
    match config.transport()? {
        TransportChoice::WebSocket => ws::connect(&config.url, config.bind_ip, config.ca_pem.as_deref())
            .await
            .map(|(r, w)| (Reader::Ws(r), Writer::Ws(w))),
        TransportChoice::WebTransport => wt::connect(config).await.map(|(r, w)| (Reader::Wt(r), Writer::Wt(w))),
    }
}

impl Reader {
    /// The next frame, or how the connection ended.
    pub async fn next(&mut self) -> Result<Bytes, Ended> {
        match self {
            Reader::Ws(r) => r.next().await,
            Reader::Wt(r) => r.next().await,
        }
    }
}

impl Writer {
    /// Send one frame.
    pub async fn send(&mut self, frame: Bytes) -> Result<(), ClientError> {
        match self {
            Writer::Ws(w) => w.send(frame).await,
            Writer::Wt(w) => w.send(frame).await,
        }
    }

    /// The WebTransport session, for its media lanes (`None` on WebSocket).
    pub fn wt_connection(&self) -> Option<wtransport::Connection> {
        match self {
            Writer::Ws(_) => None,
            Writer::Wt(w) => Some(w.connection().clone()),
        }
    }

    /// Media lanes are in use: the control stream goes before media (WebTransport).
    pub fn prioritize_control(&self) {
        if let Writer::Wt(w) = self {
            w.prioritize_control();
        }
    }

    /// Close the connection normally: the close is on the wire when this returns (or
    /// [`CLOSE_TIMEOUT`] passed).
    pub async fn close(&mut self) {
        match self {
            Writer::Ws(w) => w.close().await,
            Writer::Wt(w) => w.close().await,
        }
    }
}
