//! `GET /api/ice-servers`: the ICE servers for the caller's WebRTC peer connections, in the
//! shape `RTCPeerConnection`'s `iceServers` takes, with fresh short-lived TURN credentials
//! (`switchboard_relay::ice`). For apps that want them without a Switchboard session (a
//! session gets the same in `Welcome` and on `IceServersRequest`).
//!
//! Authorized by the user's token (`Authorization: Bearer <jwt>`, verified like every
//! session's `Hello`): the credentials name that user. The answer is never cached
//! (`Cache-Control: no-store`). CORS like `/api/calls`.
//!
//! ```json
//! {"ice_servers": [{"urls": ["stun:stun.example.com"]},
//!                  {"urls": ["turn:turn.example.com"], "username": "1700003600:alice", "credential": "..."}],
//!  "expires_at": 1700003600}
//! ```
//! `expires_at` (Unix seconds) is `null` when nothing expires (no TURN server configured).

use crate::admin::{respond, ApiError};
use crate::http::AppState;
use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use switchboard_relay::AllowedOrigins;

/// Register the route, readable cross-origin by `origins` (CORS).
pub fn routes(cfg: &mut web::ServiceConfig, origins: &AllowedOrigins) {
    cfg.service(
        web::resource("/api/ice-servers")
            .wrap(crate::cors::cors(origins, &[Method::GET]))
            .route(web::get().to(ice_servers)),
    );
}

async fn ice_servers(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    respond((|| {
        let Some(token) = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send the user's token as `Authorization: Bearer <jwt>`".into(),
            ));
        };
        let claims = state
            .node
            .verifier()
            .verify(token.trim())
            .map_err(|e| ApiError(StatusCode::UNAUTHORIZED, "unauthorized", format!("token refused: {e}")))?;
        let now = switchboard_protocol::now_ms() / 1000;
        let servers = state.node.config().ice.servers(&claims.sub, now);
        Ok(HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(body(&servers)))
    })())
}

/// The JSON answer of `servers`.
fn body(servers: &switchboard_protocol::pb::IceServers) -> Value {
    let list: Vec<Value> = servers
        .servers
        .iter()
        .map(|s| {
            if s.username.is_empty() {
                json!({"urls": s.urls})
            } else {
                json!({"urls": s.urls, "username": s.username, "credential": s.credential})
            }
        })
        .collect();
    let expires_at = (servers.expires_at > 0).then_some(servers.expires_at);
    json!({"ice_servers": list, "expires_at": expires_at})
}
