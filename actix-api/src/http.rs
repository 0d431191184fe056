//! HTTP endpoints: health, readiness, metrics, the WebTransport certificate hash and the
//! node page (`/node`; the demo app at `/` is in `web.rs`).

use actix_web::http::{header, Method};
use actix_web::{web, HttpResponse, Responder};
use std::sync::Arc;
use switchboard_relay::{AllowedOrigins, Node};

/// Shared state of the HTTP app.
pub struct AppState {
    /// The relay node.
    pub node: Arc<Node>,
    /// SHA-256 (hex) of the generated WebTransport certificate, if WebTransport runs.
    pub cert_sha256: Option<switchboard_webtransport::CertificateHash>,
    /// The WebTransport address clients should use, if WebTransport runs.
    pub wt_port: Option<u16>,
    /// The admin API key; `None` disables the admin API.
    pub admin_key: Option<String>,
    /// How long a drain waits for clients.
    pub drain_timeout: std::time::Duration,
    /// Origins allowed to use the node from a browser (WebSocket, CORS); empty allows any.
    pub allowed_origins: AllowedOrigins,
    /// Built-in accounts (`--accounts`); `None` when disabled.
    pub accounts: Option<crate::accounts::Accounts>,
}

/// Register the routes; `origins` may read the browser-facing ones cross-origin (CORS).
pub fn routes(cfg: &mut web::ServiceConfig, origins: &AllowedOrigins) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .service(
            web::resource("/certificate.sha256")
                .wrap(crate::cors::cors(origins, &[Method::GET]))
                .route(web::get().to(certificate)),
        )
        .route("/ws", web::get().to(crate::ws::upgrade))
        .route("/node", web::get().to(index))
        .app_data(web::JsonConfig::default().limit(256 * 1024).error_handler(|err, _req| {
            let body = serde_json::json!({"error": {"code": "invalid_json", "message": err.to_string()}});
            actix_web::error::InternalError::from_response(err, HttpResponse::BadRequest().json(body)).into()
        }))
        .configure(crate::admin::routes)
        .configure(|cfg| crate::calls_api::routes(cfg, origins))
        .configure(|cfg| crate::ice_api::routes(cfg, origins))
        .configure(|cfg| crate::accounts::routes(cfg, origins));
}

/// Liveness: the process serves HTTP.
async fn healthz() -> impl Responder {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Readiness: the bus is connected and the node is not draining.
async fn readyz(state: web::Data<AppState>) -> impl Responder {
    let node = &state.node;
    let body = serde_json::json!({
        "ready": node.is_ready(),
        "bus": node.bus().kind(),
        "bus_connected": node.bus().is_connected(),
        "draining": node.is_draining(),
        "node": node.id(),
        "sessions": node.session_count(),
        "rooms": node.room_count(),
    });
    if node.is_ready() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus metrics.
async fn metrics(state: web::Data<AppState>) -> impl Responder {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8"))
        .body(state.node.metrics().encode())
}

/// The SHA-256 of the generated WebTransport certificate (for `serverCertificateHashes`).
async fn certificate(state: web::Data<AppState>) -> impl Responder {
    match &state.cert_sha256 {
        Some(hash) => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "text/plain"))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(format!("{}\n", hash.current())),
        None => HttpResponse::NotFound().body("WebTransport is disabled or uses a configured certificate\n"),
    }
}

async fn index(state: web::Data<AppState>) -> impl Responder {
    let node = &state.node;
    let wt = match state.wt_port {
        Some(p) => format!("<li>WebTransport: <code>https://HOST:{p}/wt</code> (UDP)</li>"),
        None => "<li>WebTransport: disabled</li>".to_owned(),
    };
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>Switchboard</title>\
         <h1>Switchboard node <code>{id}</code></h1>\
         <p>Bus: {bus}. Sessions: {sessions}. Rooms: {rooms}.</p>\
         <ul><li>WebSocket: <code>ws://HOST/ws</code></li>{wt}\
         <li><a href=/healthz>/healthz</a>, <a href=/readyz>/readyz</a>, <a href=/metrics>/metrics</a></li></ul>",
        id = node.id(),
        bus = node.bus().kind(),
        sessions = node.session_count(),
        rooms = node.room_count(),
    );
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(html)
}
