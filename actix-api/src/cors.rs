//! CORS on the browser-facing endpoints (`/api/calls`, `/api/ice-servers`, `/api/auth/*`, `/api/endpoints`,
//! `/api/dev/token`, `/certificate.sha256`), under the browser origin policy
//! ([`AllowedOrigins`], `--allowed-origins`). The admin API is for servers, not pages: it
//! gets no CORS headers.
//!
//! actix-cors does the work, with the allow-list as its origin predicate (so `*`, exact
//! origins and `https://*.example.com` entries mean what they mean for WebSocket and
//! WebTransport). For an allowed origin (any origin when the list is empty or holds `*`):
//! the request's origin is reflected in `Access-Control-Allow-Origin` (never `*`, so the
//! answer is the same whether or not a list is set), `Authorization` and `Content-Type` may
//! be sent, preflights are cached for an hour, and every answer says `Vary: Origin`. A
//! preflight is answered `204 No Content`. For a refused origin (or two `Origin` headers):
//! the answer carries no CORS headers, so the page cannot read it, and the preflight is
//! answered `403` (`origin_not_allowed`), so a request that needs one is never sent. A
//! preflight asking for a method or header the endpoint does not take stays actix-cors's
//! `400`.
//!
//! No `Access-Control-Allow-Credentials`: nothing here uses cookies or HTTP authentication
//! (the API authenticates with `Authorization: Bearer`, which a page sets itself), so a
//! page's `credentials: "include"` request is refused by its browser, and a cookie of the
//! node's site can never ride along on a request another site's page makes.

use actix_cors::{Cors, CorsError, CorsMiddleware};
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::{header, Method, StatusCode};
use actix_web::{Error, HttpResponse};
use futures_util::future::LocalBoxFuture;
use switchboard_relay::AllowedOrigins;

/// How long a browser may reuse a preflight answer (Chromium caps it at two hours).
const PREFLIGHT_MAX_AGE_SECS: usize = 3600;

/// The CORS middleware of a browser-facing resource answering `methods`.
pub fn cors(origins: &AllowedOrigins, methods: &[Method]) -> BrowserCors {
    let origins = origins.clone();
    BrowserCors(
        Cors::default()
            .allowed_origin_fn(move |_, head| {
                origins.check(head.headers().get_all(header::ORIGIN).map(|v| v.as_bytes())).is_ok()
            })
            .allowed_methods(methods.iter().cloned())
            .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(PREFLIGHT_MAX_AGE_SECS),
    )
}

/// actix-cors, with the statuses of its preflight answers set as described above.
pub struct BrowserCors(Cors);

impl<S, B> Transform<S, ServiceRequest> for BrowserCors
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type InitError = ();
    type Transform = BrowserCorsMiddleware<S>;
    type Future = LocalBoxFuture<'static, Result<Self::Transform, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        let cors = self.0.new_transform(service);
        Box::pin(async move { Ok(BrowserCorsMiddleware { cors: cors.await? }) })
    }
}

/// The service [`BrowserCors`] wraps a resource in.
pub struct BrowserCorsMiddleware<S> {
    cors: CorsMiddleware<S>,
}

impl<S, B> Service<ServiceRequest> for BrowserCorsMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Error>>;

    forward_ready!(cors);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let preflight =
            req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let answer = self.cors.call(req);
        Box::pin(async move {
            let res = answer.await?;
            Ok(if preflight { preflight_status(res) } else { res })
        })
    }
}

/// A preflight actix-cors answered: `204` when it let the request through, `403` when it
/// refused the origin.
fn preflight_status<B>(mut res: ServiceResponse<EitherBody<B>>) -> ServiceResponse<EitherBody<B>> {
    let allowed = res.headers().contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN);
    if allowed && res.status() == StatusCode::OK {
        *res.response_mut().status_mut() = StatusCode::NO_CONTENT;
        return res;
    }
    let refused_origin = res
        .response()
        .error()
        .and_then(|e| e.as_error::<CorsError>())
        .is_some_and(|e| matches!(e, CorsError::OriginNotAllowed));
    if !refused_origin {
        return res;
    }
    let forbidden = HttpResponse::Forbidden().insert_header((header::VARY, "Origin")).json(serde_json::json!({
        "error": {"code": "origin_not_allowed", "message": "this origin may not call the API (--allowed-origins)"}
    }));
    res.into_response(forbidden.map_into_right_body())
}
