//! The browser origin policy ([`switchboard_relay::AllowedOrigins`], `--allowed-origins`)
//! before a WebSocket upgrade. CORS on the HTTP API is `crate::cors`.

use crate::http::AppState;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use switchboard_protocol::ErrorCode;

/// The check before a WebSocket upgrade: the 403 answer (counted as
/// `errors_total{code="FORBIDDEN"}`) when the request's origin is refused.
pub fn refuse_upgrade(req: &HttpRequest, state: &AppState) -> Option<HttpResponse> {
    let origins = req.headers().get_all(header::ORIGIN).map(|v| v.as_bytes());
    let refused = state.allowed_origins.check(origins).err()?;
    state.node.metrics().error(ErrorCode::Forbidden);
    tracing::info!(%refused, "WebSocket from a disallowed origin refused");
    Some(
        HttpResponse::Forbidden()
            .json(serde_json::json!({"error": {"code": "origin_not_allowed", "message": refused.to_string()}})),
    )
}
