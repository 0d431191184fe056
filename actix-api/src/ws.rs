//! The WebSocket edge: actix-ws connections adapted to the relay's [`Transport`].

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, ProtocolError, Session};
use bytes::Bytes;
use switchboard_protocol::{close_code, limits::MAX_FRAME_BYTES, ErrorCode};
use switchboard_relay::{ConnInfo, Transport, TransportError, TransportKind};

use crate::http::AppState;

/// One WebSocket connection: each binary message is one frame.
pub struct WsTransport {
    session: Session,
    stream: MessageStream,
}

impl Transport for WsTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::WebSocket
    }

    async fn recv(&mut self) -> Option<Result<Bytes, TransportError>> {
        loop {
            let msg = match self.stream.recv().await? {
                Ok(m) => m,
                Err(ProtocolError::Overflow) => return Some(Err(TransportError::TooLarge(MAX_FRAME_BYTES + 1))),
                Err(e) => return Some(Err(TransportError::Protocol(e.to_string()))),
            };
            match msg {
                Message::Binary(b) => return Some(Ok(b)),
                // Not protobuf: handed on so the session answers BAD_FRAME and carries on.
                Message::Text(t) => return Some(Ok(t.into_bytes())),
                Message::Ping(p) => {
                    // Boxed: rare, and inline it would enlarge every idle session's task.
                    if Box::pin(self.session.pong(&p)).await.is_err() {
                        return None;
                    }
                }
                Message::Pong(_) | Message::Nop => {}
                Message::Close(_) => return None,
                Message::Continuation(_) => {
                    return Some(Err(TransportError::Protocol("fragmented messages are not supported".into())))
                }
            }
        }
    }

    async fn send(&mut self, frame: Bytes) -> Result<(), TransportError> {
        self.session.binary(frame).await.map_err(|e| TransportError::Io(e.to_string()))
    }

    async fn close(self, code: ErrorCode, reason: &str) {
        let code = match close_code(code) {
            1000 => CloseCode::Normal,
            other => CloseCode::Other(other),
        };
        let mut description = reason.to_owned();
        // Close reasons must fit a control frame (123 bytes).
        if description.len() > 120 {
            let mut end = 120;
            while !description.is_char_boundary(end) {
                end -= 1;
            }
            description.truncate(end);
        }
        let _ = self.session.close(Some(CloseReason { code, description: Some(description) })).await;
    }
}

/// `GET /ws`: upgrade to WebSocket and run a session.
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    if state.node.is_draining() {
        // Tell the load balancer (and the client) to go elsewhere before upgrading.
        return Ok(HttpResponse::ServiceUnavailable().body("draining"));
    }
    if !state.allowed_origins.is_empty() {
        if let Some(origin) = req.headers().get(actix_web::http::header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
            if !state.allowed_origins.iter().any(|o| o == origin) {
                state.node.metrics().error(ErrorCode::Forbidden);
                tracing::info!(origin, "WebSocket from a disallowed origin refused");
                return Ok(HttpResponse::Forbidden().json(serde_json::json!(
                    {"error": {"code": "origin_not_allowed", "message": format!("origin {origin:?} is not allowed")}}
                )));
            }
        }
    }
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let transport = WsTransport { session, stream: stream.max_frame_size(MAX_FRAME_BYTES) };
    let info = ConnInfo { peer: req.peer_addr() };
    actix_web::rt::spawn(switchboard_relay::run_session(state.node.clone(), transport, info));
    Ok(response)
}
