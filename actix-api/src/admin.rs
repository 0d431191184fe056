//! The admin HTTP API, guarded by an API key (`--admin-key`): rooms and participants
//! cluster-wide, kicks, server messages and drain. Errors are JSON:
//! `{"error": {"code": "...", "message": "..."}}`. The OpenAPI description is served at
//! `/api/openapi.json`.

use crate::http::AppState;
use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use switchboard_protocol::pb::AdminKick;
use switchboard_protocol::subject::validate_id;
use switchboard_relay::admin;

/// Register the admin routes under `/api`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/openapi.json", web::get().to(openapi))
        .route("/api/rooms", web::get().to(list_rooms))
        .route("/api/rooms/{room}/participants", web::get().to(list_participants))
        .route("/api/rooms/{room}/kick", web::post().to(kick))
        .route("/api/rooms/{room}/messages", web::post().to(message_room))
        .route("/api/users/{user}/messages", web::post().to(message_user))
        .route("/api/users/{user}/disconnect", web::post().to(disconnect_user))
        .route("/api/drain", web::post().to(drain));
}

/// An API error: HTTP status, stable code, message.
pub struct ApiError(pub StatusCode, pub &'static str, pub String);

impl ApiError {
    fn response(&self) -> HttpResponse {
        HttpResponse::build(self.0).json(json!({"error": {"code": self.1, "message": self.2}}))
    }
}

pub(crate) type ApiResult = Result<HttpResponse, ApiError>;

pub(crate) fn respond(r: ApiResult) -> HttpResponse {
    r.unwrap_or_else(|e| e.response())
}

/// Constant-time comparison, so the key cannot be guessed byte by byte from timings.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let Some(expected) = &state.admin_key else {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "the admin API is disabled: set --admin-key".into(),
        ));
    };
    let headers = req.headers();
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    match given {
        Some(key) if same(key.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError(StatusCode::UNAUTHORIZED, "unauthorized", "wrong API key".into())),
        None => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the API key as `Authorization: Bearer <key>` or `X-Api-Key`".into(),
        )),
    }
}

pub(crate) fn valid(kind: &'static str, id: &str) -> Result<(), ApiError> {
    validate_id(id).map_err(|e| ApiError(StatusCode::BAD_REQUEST, kind, format!("{id:?}: {e}")))
}

pub(crate) fn unavailable(e: switchboard_relay::BusError) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string())
}

fn accepted() -> HttpResponse {
    HttpResponse::Accepted().json(json!({"status": "accepted"}))
}

async fn list_rooms(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    respond(
        async {
            authorize(&req, &state)?;
            let rooms = admin::rooms(state.node.context()).await.map_err(unavailable)?;
            let rooms: Vec<_> = rooms.into_iter().map(|(room, n)| json!({"room": room, "participants": n})).collect();
            Ok(HttpResponse::Ok().json(json!({ "rooms": rooms })))
        }
        .await,
    )
}

async fn list_participants(req: HttpRequest, state: web::Data<AppState>, room: web::Path<String>) -> HttpResponse {
    respond(async {
        authorize(&req, &state)?;
        valid("invalid_room", &room)?;
        let list = admin::participants(state.node.context(), &room).await.map_err(unavailable)?;
        let list: Vec<_> = list
            .iter()
            .map(|p| json!({"user": p.user, "session": p.session, "name": p.name, "node": p.node, "joined_at_ms": p.joined_at_ms}))
            .collect();
        Ok(HttpResponse::Ok().json(json!({"room": room.as_str(), "participants": list})))
    }
    .await)
}

/// Body of a kick.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KickBody {
    user: Option<String>,
    session: Option<String>,
    reason: Option<String>,
}

async fn kick(
    req: HttpRequest,
    state: web::Data<AppState>,
    room: web::Path<String>,
    body: web::Json<KickBody>,
) -> HttpResponse {
    respond(
        async {
            authorize(&req, &state)?;
            valid("invalid_room", &room)?;
            let body = body.into_inner();
            if body.user.is_none() && body.session.is_none() {
                return Err(ApiError(StatusCode::BAD_REQUEST, "invalid_argument", "give `user` or `session`".into()));
            }
            let kick = AdminKick {
                room: room.into_inner(),
                user: body.user.unwrap_or_default(),
                session: body.session.unwrap_or_default(),
                reason: body.reason.unwrap_or_else(|| "kicked".into()),
                ban_until_ms: 0,
            };
            admin::kick(state.node.context(), kick).await.map_err(unavailable)?;
            Ok(accepted())
        }
        .await,
    )
}

/// Body of a server message: `text` (UTF-8) or `payload_base64`, and an optional `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    text: Option<String>,
    payload_base64: Option<String>,
    kind: Option<String>,
}

impl MessageBody {
    fn payload(self) -> Result<(bytes::Bytes, String), ApiError> {
        payload_of(self.text, self.payload_base64, self.kind)
    }
}

/// Body of a backend publish to a room: a server message's fields, plus `reliable`
/// (default true), `from` (a sender other than the server) and `idempotency_key`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomMessageBody {
    text: Option<String>,
    payload_base64: Option<String>,
    kind: Option<String>,
    reliable: Option<bool>,
    from: Option<FromBody>,
    idempotency_key: Option<String>,
}

/// Who a backend publishes as.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FromBody {
    user: String,
    name: Option<String>,
}

/// Longest display name a backend may give a sender.
const MAX_NAME_LEN: usize = 128;
/// Longest idempotency key.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

impl RoomMessageBody {
    fn publish(self) -> Result<admin::RoomPublish, ApiError> {
        let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, "invalid_argument", m);
        let from = match self.from {
            None => None,
            Some(FromBody { user, name }) => {
                validate_id(&user).map_err(|e| bad(format!("from.user {user:?}: {e}")))?;
                if admin::is_reserved_user_id(&user) {
                    return Err(bad(format!("from.user {user:?} is reserved (omit `from` to send as the server)")));
                }
                let name = name.unwrap_or_else(|| user.clone());
                if name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
                    return Err(bad(format!("from.name: at most {MAX_NAME_LEN} bytes, no control characters")));
                }
                Some((user, name))
            }
        };
        if let Some(key) = &self.idempotency_key {
            if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN || key.chars().any(|c| c.is_control()) {
                return Err(bad(format!(
                    "idempotency_key: 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes, no control characters"
                )));
            }
        }
        let (payload, kind) = payload_of(self.text, self.payload_base64, self.kind)?;
        Ok(admin::RoomPublish {
            payload,
            kind,
            reliable: self.reliable.unwrap_or(true),
            from,
            idempotency_key: self.idempotency_key,
        })
    }
}

fn payload_of(
    text: Option<String>,
    payload_base64: Option<String>,
    kind: Option<String>,
) -> Result<(bytes::Bytes, String), ApiError> {
    let kind = kind.unwrap_or_else(|| "server".into());
    if kind.len() > switchboard_protocol::limits::MAX_KIND_LEN {
        return Err(ApiError(StatusCode::BAD_REQUEST, "invalid_argument", "kind longer than 64 bytes".into()));
    }
    let payload = match (text, payload_base64) {
        (Some(t), None) => bytes::Bytes::from(t),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(bytes::Bytes::from)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, "invalid_argument", format!("payload_base64: {e}")))?,
        _ => {
            return Err(ApiError(StatusCode::BAD_REQUEST, "invalid_argument", "give `text` or `payload_base64`".into()))
        }
    };
    if payload.len() > switchboard_protocol::limits::MAX_FRAME_BYTES / 2 {
        return Err(ApiError(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "payload too large".into()));
    }
    Ok((payload, kind))
}

async fn message_room(
    req: HttpRequest,
    state: web::Data<AppState>,
    room: web::Path<String>,
    body: web::Json<RoomMessageBody>,
) -> HttpResponse {
    respond(
        async {
            authorize(&req, &state)?;
            valid("invalid_room", &room)?;
            let publish = body.into_inner().publish()?;
            let reliable = publish.reliable;
            match admin::publish_room(state.node.context(), &room, publish).await.map_err(unavailable)? {
                // Stored in the room's history: the offset participants see it at.
                Some(offset) => Ok(HttpResponse::Ok().json(json!({"room": *room, "offset": offset, "reliable": true}))),
                None => {
                    Ok(HttpResponse::Accepted()
                        .json(json!({"status": "accepted", "room": *room, "reliable": reliable})))
                }
            }
        }
        .await,
    )
}

async fn message_user(
    req: HttpRequest,
    state: web::Data<AppState>,
    user: web::Path<String>,
    body: web::Json<MessageBody>,
) -> HttpResponse {
    respond(
        async {
            authorize(&req, &state)?;
            valid("invalid_user", &user)?;
            let (payload, kind) = body.into_inner().payload()?;
            admin::message_user(state.node.context(), &user, payload, &kind).await.map_err(unavailable)?;
            Ok(accepted())
        }
        .await,
    )
}

/// Body of a disconnect.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    reason: Option<String>,
    /// Refuse the user's new sessions for this long (their tokens stay valid otherwise).
    ban_seconds: Option<u64>,
}

async fn disconnect_user(
    req: HttpRequest,
    state: web::Data<AppState>,
    user: web::Path<String>,
    body: Option<web::Json<DisconnectBody>>,
) -> HttpResponse {
    respond(
        async {
            authorize(&req, &state)?;
            valid("invalid_user", &user)?;
            let body = body.map(|b| b.into_inner());
            let ban_until_ms = match body.as_ref().and_then(|b| b.ban_seconds) {
                Some(secs) if secs > 366 * 86_400 => {
                    return Err(ApiError(
                        StatusCode::BAD_REQUEST,
                        "invalid_argument",
                        "ban_seconds: at most a year".into(),
                    ))
                }
                Some(secs) => switchboard_protocol::now_ms() + secs * 1000,
                None => 0,
            };
            let reason = body.and_then(|b| b.reason).unwrap_or_else(|| "disconnected by an operator".into());
            let kick = AdminKick {
                room: String::new(),
                user: user.into_inner(),
                session: String::new(),
                reason,
                ban_until_ms,
            };
            admin::kick(state.node.context(), kick).await.map_err(unavailable)?;
            Ok(accepted())
        }
        .await,
    )
}

async fn drain(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    respond(
        async {
            authorize(&req, &state)?;
            let node = state.node.clone();
            let deadline = state.drain_timeout;
            tokio::spawn(async move { node.drain(deadline).await });
            Ok(HttpResponse::Accepted().json(json!({"status": "draining", "node": state.node.id()})))
        }
        .await,
    )
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(crate::openapi::SPEC)
}
