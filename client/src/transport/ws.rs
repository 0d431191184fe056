//! WebSocket halves (tokio-tungstenite): one binary message per frame.

use super::Ended;
use crate::ClientError;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use switchboard_protocol::codes::error_from_close_code;
use switchboard_protocol::limits::MAX_FRAME_BYTES;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) struct WsReader(SplitStream<Ws>);
pub(crate) struct WsWriter(SplitSink<Ws, Message>);

pub(crate) async fn connect(url: &str) -> Result<(WsReader, WsWriter), ClientError> {
    let config =
        WebSocketConfig::default().max_message_size(Some(MAX_FRAME_BYTES)).max_frame_size(Some(MAX_FRAME_BYTES));
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .map_err(|e| ClientError::Connect(format!("{url}: {e}")))?;
    let (sink, stream) = ws.split();
    Ok((WsReader(stream), WsWriter(sink)))
}

impl WsReader {
    pub async fn next(&mut self) -> Result<Bytes, Ended> {
        loop {
            match self.0.next().await {
                Some(Ok(Message::Binary(b))) => return Ok(b),
                Some(Ok(Message::Close(frame))) => {
                    return Err(match frame {
                        Some(f) => {
                            Ended { code: error_from_close_code(u16::from(f.code)), reason: f.reason.to_string() }
                        }
                        None => Ended { code: None, reason: "closed".into() },
                    })
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

    pub async fn close(&mut self) {
        let _ = self.0.close().await;
    }
}
