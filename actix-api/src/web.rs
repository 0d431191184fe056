//! The browser demo app (`/`), the endpoints document browsers connect with, and
//! development tokens.
//!
//! The demo's assets are the committed build output of `web/` (`web/dist/`), embedded at
//! compile time, so `cargo build` needs no npm; rebuild them with `npm run build` in `web/`.
//!
//! - `GET /` and `GET /app/{file}`: the demo app and the client library bundle.
//! - `GET /api/endpoints`: how to reach this node (WebSocket path, WebTransport port and the
//!   generated certificate's hash); the TypeScript client reads it to pick a transport.
//! - `POST /api/dev/token {"name": "Alice"}`: a token for user `alice` granting every room,
//!   only when the node runs with the built-in development secret (no `--jwt-secret`, no
//!   `--jwt-public-key`) or with `--dev-tokens`; otherwise 404. Names whose id is reserved
//!   (`server`, `admin`, ...: [`switchboard_relay::admin::RESERVED_USER_IDS`]) get 400
//!   `reserved_name`. Anyone who can reach the
//!   node can then act as anyone: never enable it in production.

use crate::http::AppState;
use actix_web::http::{header, Method};
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use switchboard_relay::auth::{Claims, Minter};
use switchboard_relay::AllowedOrigins;

/// Lifetime of development tokens unless the request asks for less.
const DEV_TOKEN_TTL: u64 = 3600;
/// The shortest lifetime a request may ask for (tests exercise token refresh with it).
const MIN_DEV_TOKEN_TTL: u64 = 10;
/// The longest display name accepted.
const MAX_NAME_CHARS: usize = 64;

/// State of the web routes.
pub struct WebState {
    /// Signs development tokens; `None` when they are disabled.
    pub dev_minter: Option<Minter>,
}

impl WebState {
    /// Development tokens are served with the development secret, or with `--dev-tokens`
    /// (signed with the configured HMAC secret). A public key leaves nothing to sign with.
    pub fn new(dev_secret_in_use: bool, dev_tokens_flag: bool, hmac_secret: Option<&[u8]>) -> Self {
        let dev_minter = if dev_secret_in_use || dev_tokens_flag { hmac_secret.map(Minter::hmac) } else { None };
        if dev_tokens_flag && dev_minter.is_none() {
            tracing::warn!("--dev-tokens needs an HMAC secret (not --jwt-public-key): development tokens disabled");
        }
        if dev_minter.is_some() {
            tracing::warn!("development tokens enabled: POST /api/dev/token mints a token for any name");
        }
        Self { dev_minter }
    }
}

/// A file of the demo, embedded from `web/dist/`.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "demo.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/dist/demo.js"),
    },
    Asset {
        path: "demo.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/dist/demo.css"),
    },
    Asset {
        path: "switchboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/dist/switchboard.js"),
    },
];

const INDEX_HTML: &str = include_str!("../../web/dist/index.html");

/// Register the routes; `origins` may call the API ones cross-origin (CORS): a page served
/// by one node reads the others' endpoints and, in the demo, their development tokens.
pub fn routes(cfg: &mut web::ServiceConfig, origins: &AllowedOrigins) {
    cfg.route("/", web::get().to(index))
        .route("/app/{file}", web::get().to(asset))
        .service(
            web::resource("/api/endpoints")
                .wrap(crate::cors::cors(origins, &[Method::GET]))
                .route(web::get().to(endpoints)),
        )
        .service(
            web::resource("/api/dev/token")
                .wrap(crate::cors::cors(origins, &[Method::POST]))
                .route(web::post().to(dev_token)),
        );
}

async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(INDEX_HTML)
}

async fn asset(file: web::Path<String>) -> HttpResponse {
    match ASSETS.iter().find(|a| a.path == file.as_str()) {
        Some(a) => HttpResponse::Ok()
            .content_type(a.content_type)
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
            .body(a.body),
        None => HttpResponse::NotFound().json(json!({"error": {"code": "not_found", "message": "no such file"}})),
    }
}

/// How a browser reaches this node. Readable cross-origin by the allowed origins: a page
/// served by one node connects to the others.
async fn endpoints(state: web::Data<AppState>, web_state: web::Data<WebState>) -> HttpResponse {
    let webtransport = state.wt_port.map(|port| {
        json!({"port": port, "path": switchboard_webtransport::WT_PATH, "certificate_sha256": state.cert_sha256.as_ref().map(|h| h.current())})
    });
    HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(json!({
        "node": state.node.id(),
        "websocket": {"path": "/ws"},
        "webtransport": webtransport,
        "dev_tokens": web_state.dev_minter.is_some(),
    }))
}

#[derive(Deserialize)]
struct DevTokenRequest {
    name: String,
    /// Lifetime in seconds (default one hour).
    ttl: Option<u64>,
}

async fn dev_token(web_state: web::Data<WebState>, body: web::Json<DevTokenRequest>) -> HttpResponse {
    let Some(minter) = &web_state.dev_minter else {
        return HttpResponse::NotFound().json(json!({"error": {
            "code": "dev_tokens_disabled",
            "message": "development tokens are served only with the development secret or --dev-tokens",
        }}));
    };
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return HttpResponse::BadRequest().json(json!({"error": {
            "code": "invalid_name",
            "message": format!("the name must have 1 to {MAX_NAME_CHARS} characters"),
        }}));
    }
    let user = user_id(name);
    if switchboard_relay::admin::is_reserved_user_id(&user) {
        // `server` is the sender of the operator's server messages: nobody may pose as it.
        return HttpResponse::BadRequest().json(json!({"error": {
            "code": "reserved_name",
            "message": format!("the name {name:?} is reserved (user id {user:?}): choose another"),
        }}));
    }
    let ttl = body.ttl.unwrap_or(DEV_TOKEN_TTL).clamp(MIN_DEV_TOKEN_TTL, DEV_TOKEN_TTL);
    let claims = Claims { name: Some(name.to_owned()), ..Claims::new(user.clone(), &["*"], ttl) };
    match minter.mint(&claims) {
        Ok(token) => HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(json!({
            "token": token, "user": user, "name": name, "expires_at": claims.exp,
        })),
        Err(e) => HttpResponse::InternalServerError()
            .json(json!({"error": {"code": "internal", "message": format!("cannot sign: {e}")}})),
    }
}

/// The user id of a display name: lowercase ASCII letters and digits, other characters as
/// `-` (runs collapsed), at most 64 bytes; `user` if nothing is left. The same name is the
/// same user, so every tab signed in as "Bob" rings for Bob's calls.
fn user_id(name: &str) -> String {
    let mut id = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            id.push(c.to_ascii_lowercase());
        } else if !id.ends_with('-') {
            id.push('-');
        }
        if id.len() >= 64 {
            break;
        }
    }
    let id = id.trim_matches('-');
    if id.is_empty() {
        "user".to_owned()
    } else {
        id.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{test as atest, App};
    use switchboard_relay::auth::{Verifier, VerifyKey, DEV_SECRET};

    async fn post_token(state: WebState, body: serde_json::Value) -> (u16, serde_json::Value) {
        let app = atest::init_service(
            App::new().app_data(web::Data::new(state)).route("/api/dev/token", web::post().to(dev_token)),
        )
        .await;
        let req = atest::TestRequest::post().uri("/api/dev/token").set_json(body).to_request();
        let res = atest::call_service(&app, req).await;
        let status = res.status().as_u16();
        (status, atest::read_body_json(res).await)
    }

    #[actix_web::test]
    async fn dev_tokens_only_with_the_development_secret_or_the_flag() {
        // A configured secret without --dev-tokens: 404 with a JSON error.
        let (status, body) =
            post_token(WebState::new(false, false, Some(b"configured")), json!({"name": "Alice"})).await;
        assert_eq!(status, 404);
        assert_eq!(body["error"]["code"], "dev_tokens_disabled");
        // A public key leaves nothing to sign with, even with the flag.
        let (status, _) = post_token(WebState::new(false, true, None), json!({"name": "Alice"})).await;
        assert_eq!(status, 404);

        // The development secret: a token the node accepts, for user `alice`, every room.
        let (status, body) =
            post_token(WebState::new(true, false, Some(DEV_SECRET.as_bytes())), json!({"name": " Alice "})).await;
        assert_eq!(status, 200);
        assert_eq!(body["user"], "alice");
        let verifier = Verifier::new(&VerifyKey::Hmac(DEV_SECRET.as_bytes().to_vec()), 5).unwrap();
        let claims = verifier.verify(body["token"].as_str().unwrap()).unwrap();
        assert_eq!((claims.sub.as_str(), claims.display_name()), ("alice", "Alice"));
        assert!(claims.may_join("anything"));
        assert_eq!(body["expires_at"], claims.exp);

        // --dev-tokens with a configured secret signs with that secret; ttl is clamped.
        let secret = b"0123456789abcdef0123456789abcdef";
        let (status, body) =
            post_token(WebState::new(false, true, Some(secret)), json!({"name": "Bob", "ttl": 1})).await;
        assert_eq!(status, 200);
        let claims = Verifier::new(&VerifyKey::Hmac(secret.to_vec()), 5)
            .unwrap()
            .verify(body["token"].as_str().unwrap())
            .unwrap();
        assert_eq!(claims.exp - claims.iat.unwrap(), MIN_DEV_TOKEN_TTL);

        let (status, body) =
            post_token(WebState::new(true, false, Some(DEV_SECRET.as_bytes())), json!({"name": "  "})).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"]["code"], "invalid_name");
    }

    #[actix_web::test]
    async fn reserved_user_ids_are_not_minted() {
        // "Server" would be user `server`, the sender of the operator's server messages.
        for name in ["Server", " server ", "ADMIN", "System!"] {
            let state = WebState::new(true, false, Some(DEV_SECRET.as_bytes()));
            let (status, body) = post_token(state, json!({"name": name})).await;
            assert_eq!((status, body["error"]["code"].as_str()), (400, Some("reserved_name")), "{name}: {body}");
            assert!(body.get("token").is_none());
        }
        // Names merely containing one are fine.
        let (status, body) =
            post_token(WebState::new(true, false, Some(DEV_SECRET.as_bytes())), json!({"name": "Server Room"})).await;
        assert_eq!((status, body["user"].as_str()), (200, Some("server-room")));
    }

    #[test]
    fn names_become_valid_user_ids() {
        assert_eq!(user_id("Alice"), "alice");
        assert_eq!(user_id("  Bob Smith! "), "bob-smith");
        assert_eq!(user_id("Zoë"), "zo");
        assert_eq!(user_id("日本"), "user");
        assert_eq!(user_id(&"x".repeat(200)).len(), 64);
        for name in ["Alice", "a b", "---", "日本", "o'Neil"] {
            assert!(switchboard_protocol::subject::validate_id(&user_id(name)).is_ok(), "{name}");
        }
    }
}
