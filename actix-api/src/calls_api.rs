//! `GET /api/calls?user=ID[&limit=N][&before=CURSOR]`: a user's call history, newest first.
//!
//! Authorized by the user's own token (`Authorization: Bearer <jwt>` whose `sub` is `user`)
//! or by the admin API key. Each record: id, media, caller, parties with their final
//! status, outcome, start/answer/end (Unix ms) and connected duration. Pages are linked by
//! `next_before` (pass it as `before`; absent on the last page).

use crate::admin::{respond, same, unavailable, valid, ApiError};
use crate::http::AppState;
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use switchboard_relay::{calls, AllowedOrigins};

/// Records per page by default, and at most.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 200;

/// Register the route, readable cross-origin by `origins` (CORS).
pub fn routes(cfg: &mut web::ServiceConfig, origins: &AllowedOrigins) {
    cfg.service(
        web::resource("/api/calls").wrap(crate::cors::cors(origins, &[Method::GET])).route(web::get().to(list_calls)),
    );
}

#[derive(Deserialize)]
struct Query {
    user: Option<String>,
    limit: Option<usize>,
    before: Option<u64>,
}

/// The caller is the admin (API key) or the user themselves (token).
fn authorize(req: &HttpRequest, state: &AppState, user: &str) -> Result<(), ApiError> {
    let Some(given) =
        req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the user's token (or the admin API key) as `Authorization: Bearer ...`".into(),
        ));
    };
    if state.admin_key.as_deref().is_some_and(|key| same(given.as_bytes(), key.as_bytes())) {
        return Ok(());
    }
    let claims = state
        .node
        .verifier()
        .verify(given)
        .map_err(|e| ApiError(StatusCode::UNAUTHORIZED, "unauthorized", format!("token refused: {e}")))?;
    if claims.sub != user {
        return Err(ApiError(StatusCode::FORBIDDEN, "forbidden", "a token may read only its own user's calls".into()));
    }
    Ok(())
}

async fn list_calls(req: HttpRequest, state: web::Data<AppState>, query: web::Query<Query>) -> HttpResponse {
    respond(
        async {
            let Some(user) = query.user.as_deref() else {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    "invalid_user",
                    "the `user` query parameter is required".into(),
                ));
            };
            valid("invalid_user", user)?;
            authorize(&req, &state, user)?;
            let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
            let (page, next) =
                calls::history(state.node.context(), user, query.before, limit).await.map_err(unavailable)?;
            let list: Vec<_> = page.iter().map(|(_, c)| calls::json::call_json(c)).collect();
            Ok(HttpResponse::Ok().json(json!({"user": user, "calls": list, "next_before": next})))
        }
        .await,
    )
}
