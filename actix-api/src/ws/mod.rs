//! The WebSocket edge: upgraded actix-web connections adapted to the relay's [`Transport`].
//!
//! actix-http does the handshake and the frame codec; [`outgoing`] and [`incoming`] are the
//! two halves of a connection (no actix-ws: its per-connection channel cost memory on every
//! idle connection and a channel hop on every frame).

mod incoming;
mod outgoing;

use actix_http::ws::{CloseCode, CloseReason, Frame, OpCode, ProtocolError};
use actix_web::body::{BodyStream, MessageBody};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use incoming::Incoming;
use outgoing::Outgoing;
use std::sync::Arc;
use switchboard_protocol::{close_code, limits::MAX_FRAME_BYTES, ErrorCode};
use switchboard_relay::{ConnInfo, Transport, TransportError, TransportKind};

use crate::http::AppState;

/// One WebSocket connection: each binary message is one frame.
pub struct WsTransport {
    out: Arc<Outgoing>,
    incoming: Incoming,
}

impl Transport for WsTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::WebSocket
    }

    async fn recv(&mut self) -> Option<Result<Bytes, TransportError>> {
        loop {
            let frame = match self.incoming.next().await? {
                Ok(f) => f,
                Err(ProtocolError::Overflow) => return Some(Err(TransportError::TooLarge(MAX_FRAME_BYTES + 1))),
                Err(e) => return Some(Err(TransportError::Protocol(e.to_string()))),
            };
            match frame {
                Frame::Binary(b) => return Some(Ok(b)),
                // Not protobuf: handed on so the session answers BAD_FRAME and carries on.
                Frame::Text(t) => return Some(Ok(t)),
                // Through the bounded path: a client that pings without reading the pongs
                // stops being read (TCP pushes back) instead of growing the buffer. If this
                // wait is cancelled, that one pong is skipped.
                Frame::Ping(p) => {
                    if self.out.send(OpCode::Pong, &p).await.is_err() {
                        return None;
                    }
                }
                Frame::Pong(_) => {}
                // The session answers with its own close frame.
                Frame::Close(_) => return None,
                Frame::Continuation(_) => {
                    return Some(Err(TransportError::Protocol("fragmented messages are not supported".into())))
                }
            }
        }
    }

    async fn send(&mut self, frame: Bytes) -> Result<(), TransportError> {
        self.out.send(OpCode::Binary, &frame).await.map_err(|e| TransportError::Io(e.to_string()))
    }

    async fn close(self, code: ErrorCode, reason: &str) {
        let code = match close_code(code) {
            1000 => CloseCode::Normal,
            other => CloseCode::Other(other),
        };
        self.out.close(CloseReason { code, description: Some(reason.to_owned()) });
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
    if let Some(refused) = crate::origin::refuse_upgrade(&req, &state) {
        return Ok(refused);
    }
    let mut response = match actix_http::ws::handshake(req.head()) {
        Ok(r) => r,
        Err(e) => {
            return Ok(HttpResponse::BadRequest().json(serde_json::json!(
                {"error": {"code": "bad_websocket_handshake", "message": e.to_string()}}
            )))
        }
    };
    let (out, body_stream) = Outgoing::new();
    let response: HttpResponse = response.message_body(BodyStream::new(body_stream).boxed())?.into();
    let transport = WsTransport { out, incoming: Incoming::new(body.into_inner(), MAX_FRAME_BYTES) };
    let info = ConnInfo { peer: req.peer_addr() };
    actix_web::rt::spawn(switchboard_relay::run_session(state.node.clone(), transport, info));
    Ok(response)
}
