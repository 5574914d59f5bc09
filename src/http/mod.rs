//! The HTTP layer: routes, middleware, extractors. Handlers are thin: they parse input, call a domain
//! service (`chat`, `notify`, `support`, `accounts`, `delivery`) and shape the answer. Every domain
//! error becomes JSON in one place, [`crate::http::error::ApiError`].

pub mod account;
pub mod admin;
pub mod assets;
pub mod auth;
pub mod chats;
pub mod demo;
pub mod docs;
pub mod error;
pub mod extract;
pub mod notifications;
pub mod ops;
pub mod poll;
pub mod server;
pub mod sse;
pub mod support;

use std::time::Duration;

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request},
    http::{HeaderName, StatusCode},
    response::{IntoResponse, Response},
};
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{AllowOrigin, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::{
    config::{Config, CorsOrigins},
    http::error::ApiError,
    state::AppState,
};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every public route, registered together with its OpenAPI description (a route cannot exist without
/// one: `utoipa_axum::routes!` adds both).
/// `max_attachment_bytes` sizes the body limit of the send route.
pub fn api(max_attachment_bytes: usize) -> OpenApiRouter<AppState> {
    let communication = OpenApiRouter::new()
        .merge(poll::router())
        .merge(sse::router())
        .merge(chats::router(max_attachment_bytes))
        .merge(notifications::router())
        .merge(account::router());
    OpenApiRouter::with_openapi(docs::ApiDoc::openapi())
        .merge(ops::router())
        .merge(assets::router())
        .merge(demo::router())
        .nest("/api/v1/communication", communication)
        .nest("/api/v1/admin", admin::router())
        .nest("/api/v1", notifications::publish_router())
        .nest("/api/support", support::router())
}

/// The OpenAPI document of the whole API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    // Limits shape the routes' layers, never the document.
    let mut doc = api(0).into_openapi();
    docs::error_headers(&mut doc);
    doc
}

/// The OpenAPI document as pretty JSON with a final newline (what `docs/openapi.json` holds).
pub fn openapi_json() -> String {
    let mut doc = openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    doc.push('\n');
    doc
}

/// The whole application router: the API, its document and docs page, JSON fallbacks, middleware.
pub fn router(state: AppState) -> Router {
    let (api, mut openapi) = api(state.config.max_attachment_bytes).split_for_parts();
    docs::error_headers(&mut openapi);
    let app = api
        .merge(docs::router(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .route_layer(axum::middleware::from_fn(ops::track))
        .layer(CatchPanicLayer::custom(panic_response));
    // Inside the trace layer (preflights are logged) and outside everything else: a preflight is
    // answered before authentication, and every answer (errors included) carries the CORS headers.
    let app = match cors(&state.config) {
        Some(cors) => app.layer(cors),
        None => app,
    };
    app.layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let request_id = req
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    // The path only: query strings may carry `?token=`.
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id)
                })
                // Failures are logged once, by `ApiError` (with their cause), not again here.
                .on_failure(())
                .on_response(|resp: &Response, latency: Duration, _span: &tracing::Span| {
                    tracing::info!(status = resp.status().as_u16(), latency_ms = latency.as_secs_f64() * 1000.0, "response");
                }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// The CORS layer for `POSTBOX_CORS_ORIGINS`, `None` when no origin is allowed (no CORS headers).
///
/// Tokens travel in the `Authorization` header (or the query string), never in cookies, so credentials
/// mode is not needed and `*` is safe to offer. Exposed: the headers a client reads from an answer.
fn cors(config: &Config) -> Option<CorsLayer> {
    use axum::http::{HeaderValue, Method, header};
    let origins = match config.cors().ok()? {
        CorsOrigins::None => return None,
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(
            list.iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        ),
    };
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PATCH,
                Method::PUT,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
                REQUEST_ID,
            ])
            .expose_headers([
                header::RETRY_AFTER,
                header::WWW_AUTHENTICATE,
                header::CONTENT_DISPOSITION,
                header::CONTENT_LENGTH,
                REQUEST_ID,
            ])
            .max_age(Duration::from_secs(600)),
    )
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("method not allowed on this endpoint".into())
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    let mut resp = ApiError::Internal("handler panicked".into()).into_response();
    *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    resp
}
