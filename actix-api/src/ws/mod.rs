//! The WebSocket edge: upgraded actix-web connections adapted to the relay's [`Transport`].
//!
//! actix-http does the handshake and the frame codec; [`outgoing`] and [`incoming`] are the
//! two halves of a connection (no actix-ws: its per-connection channel cost memory on every
//! idle connection and a channel hop on every frame).

mod incoming;
mod outgoing;

use actix_http::ws::{CloseCode, CloseReason, Frame, OpCode};
use actix_web::body::{BodyStream, MessageBody};
use actix_web::{web, HttpRequest, HttpResponse};
use incoming::{Incoming, ReadError};
use outgoing::Outgoing;
use std::sync::Arc;
use switchboard_protocol::{close_code, limits::MAX_HELLO_FRAME_BYTES, ErrorCode};
use switchboard_relay::config::Rate;
use switchboard_relay::rate::TokenBucket;
use switchboard_relay::{Sent, Transport, TransportError, TransportKind};

use crate::http::AppState;

/// WebSocket pings answered per second per connection (bursts of [`PONG_BURST`]); the rest
/// are not answered (RFC 6455 lets an endpoint answer only the latest ping). A keep-alive
/// needs one every few seconds.
const PONG_RATE: f64 = 5.0;
const PONG_BURST: f64 = 20.0;
/// Unanswered pings per second (bursts of twice that) beyond which the connection is a
/// flood and is closed with `RATE_LIMITED`: every ping still costs a read and a decode.
const PING_FLOOD_RATE: f64 = 200.0;

/// One WebSocket connection: each binary message is one frame.
pub struct WsTransport {
    out: Arc<Outgoing>,
    incoming: Incoming,
    pongs: TokenBucket,
    unanswered_pings: TokenBucket,
}

impl WsTransport {
    fn new(out: Arc<Outgoing>, incoming: Incoming) -> Self {
        Self {
            out,
            incoming,
            pongs: TokenBucket::new(Rate { per_sec: PONG_RATE, burst: PONG_BURST }),
            unanswered_pings: TokenBucket::new(Rate { per_sec: PING_FLOOD_RATE, burst: 2.0 * PING_FLOOD_RATE }),
        }
    }
}

impl Transport for WsTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::WebSocket
    }

    async fn recv(&mut self) -> Option<Result<switchboard_relay::Incoming, TransportError>> {
        loop {
            let frame = match self.incoming.next().await? {
                Ok(f) => f,
                Err(ReadError::TooLarge { len, .. }) => {
                    return Some(Err(TransportError::TooLarge(usize::try_from(len).unwrap_or(usize::MAX))))
                }
                Err(ReadError::Protocol(e)) => return Some(Err(TransportError::Protocol(e.to_string()))),
                Err(ReadError::Lost(e)) => return Some(Err(TransportError::Io(e))),
            };
            match frame {
                Frame::Binary(b) => return Some(Ok(b.into())),
                // Not protobuf: handed on so the session answers BAD_FRAME and carries on.
                Frame::Text(t) => return Some(Ok(t.into())),
                // Through the bounded path: a client that pings without reading the pongs
                // stops being read (TCP pushes back) instead of growing the buffer. If this
                // wait is cancelled, that one pong is skipped.
                Frame::Ping(p) => {
                    if !self.pongs.take(1.0) {
                        if !self.unanswered_pings.take(1.0) {
                            return Some(Err(TransportError::Flood("WebSocket pings far over the rate limit".into())));
                        }
                        continue;
                    }
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

    fn set_max_frame(&mut self, bytes: usize) {
        self.incoming.set_max_frame(bytes);
    }

    /// One ordered stream is all TCP has: every frame, media included, goes on it.
    async fn send(&mut self, frame: switchboard_relay::Outgoing) -> Result<Sent, TransportError> {
        self.out.send(OpCode::Binary, &frame.frame).await.map_err(|e| TransportError::Io(e.to_string()))?;
        Ok(Sent::Written)
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
    let ticket = switchboard_relay::admit(&state.node, TransportKind::WebSocket, req.peer_addr());
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
    match ticket {
        Ok(ticket) => {
            let transport = WsTransport::new(out, Incoming::new(body.into_inner(), MAX_HELLO_FRAME_BYTES));
            actix_web::rt::spawn(switchboard_relay::run_session(state.node.clone(), transport, ticket));
        }
        Err(why) => {
            // Upgraded so that the client can read why (a browser sees no HTTP status), but
            // nothing runs for it: the response carries the error and the close, and what the
            // client sends is never read.
            tracing::debug!(peer = ?req.peer_addr(), reason = why.label(), "WebSocket connection refused at admission");
            let _ = out.try_append(OpCode::Binary, &switchboard_relay::session::refusal_frame(why));
            out.close(CloseReason {
                code: CloseCode::Other(close_code(why.code())),
                description: Some(why.to_string()),
            });
        }
    }
    Ok(response)
}
