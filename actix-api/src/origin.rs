//! The browser origin policy ([`AllowedOrigins`], `--allowed-origins`) on HTTP: the check
//! before a WebSocket upgrade, and CORS on the browser-facing endpoints (`/api/calls`,
//! `/api/auth/*`, `/api/endpoints`, `/api/dev/token`, `/certificate.sha256`). The admin API
//! is for servers, not pages: it gets no CORS headers.
//!
//! CORS (actix-cors), for an allowed origin (any origin when the list is empty): the request's
//! origin is reflected in `Access-Control-Allow-Origin` (not `*`, so the answer is the same
//! whether or not the list is set), `Authorization` and `Content-Type` may be sent, preflights
//! are cached for an hour, and every answer says `Vary: Origin`. For a refused origin (or two
//! `Origin` headers): no CORS headers on the answer, so the page cannot read it, and the
//! preflight is refused (400), so a request that needs one is never sent. No credentials
//! (cookies) are involved: the API authenticates with `Authorization: Bearer`.

use crate::http::AppState;
use actix_cors::Cors;
use actix_web::http::{header, Method};
use actix_web::{HttpRequest, HttpResponse};
use switchboard_protocol::ErrorCode;
use switchboard_relay::AllowedOrigins;

/// How long a browser may reuse a preflight answer (Chromium caps it at two hours).
const PREFLIGHT_MAX_AGE_SECS: usize = 3600;

/// The CORS middleware of a browser-facing resource answering `methods`.
pub fn cors(origins: &AllowedOrigins, methods: &[Method]) -> Cors {
    let origins = origins.clone();
    Cors::default()
        .allowed_origin_fn(move |_, head| {
            origins.check(head.headers().get_all(header::ORIGIN).map(|v| v.as_bytes())).is_ok()
        })
        .allowed_methods(methods.iter().cloned())
        .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(PREFLIGHT_MAX_AGE_SECS)
}

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
