//! Operations endpoints: liveness, readiness and Prometheus metrics.

use axum::{
    extract::{MatchedPath, Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    db,
    http::error::{ApiError, ErrorBody},
    state::AppState,
    telemetry::{self, names},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` (liveness) or `ready` (readiness).
    pub status: String,
    /// Readiness only: `ok` for each backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
}

/// Liveness: the process answers (no backend is touched).
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "Alive", body = Health)))]
async fn healthz() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
        database: None,
        broker: None,
    })
}

/// Readiness: the database and RabbitMQ answer. 503 (naming the failing one) otherwise.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "Ready to serve", body = Health),
        (status = 503, description = "The database or the broker is unreachable", body = ErrorBody),
    ))]
async fn readyz(State(state): State<AppState>) -> Result<axum::Json<Health>, ApiError> {
    db::ping(&state.db).await?;
    state.broker.ping().await?;
    Ok(axum::Json(Health {
        status: "ready".into(),
        database: Some("ok".into()),
        broker: Some("ok".into()),
    }))
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Metrics", content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<AppState>) -> Response {
    // Pool states are read when scraped.
    let (size, idle) = crate::db::pool_state(&state.db);
    metrics::gauge!(names::DB_POOL_CONNECTIONS, "state" => "open").set(f64::from(size));
    metrics::gauge!(names::DB_POOL_CONNECTIONS, "state" => "idle").set(idle as f64);
    let (reachable, open, available) = state.broker.pool_state();
    metrics::gauge!(names::BROKER_UP).set(if reachable { 1.0 } else { 0.0 });
    metrics::gauge!(names::BROKER_CONNECTIONS, "state" => "open").set(open as f64);
    metrics::gauge!(names::BROKER_CONNECTIONS, "state" => "idle").set(available as f64);
    let handle = telemetry::metrics();
    handle.run_upkeep();
    let mut text = handle.render();
    telemetry::process::render(&mut text);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Middleware: counts requests by route template (never the raw path: ids would explode the label set)
/// and status, and times them.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!(names::HTTP_REQUESTS, "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(names::HTTP_DURATION, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}
