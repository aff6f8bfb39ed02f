//! The monitoring API: `GET /health` (200 when every output can deliver, 503 with reasons
//! otherwise), `GET /metrics` (Prometheus text), and unless turned off the status page
//! (`GET /`) with the JSON it refreshes from (`GET /status.json`).

use crate::health::{HealthRegistry, Status};
use crate::metrics::Registry;
use crate::status::Sources;
use crate::BuildContext;
use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use tokio::task::JoinHandle;

#[derive(Clone)]
struct ApiState {
    metrics: Arc<Registry>,
    health: Arc<HealthRegistry>,
}

/// Binds the API address and serves until the task is aborted; with `status`, also serves the
/// status page and samples the event counters for it until the shutdown token fires.
pub async fn start(
    address: &str,
    ctx: &BuildContext,
    status: Option<Sources>,
) -> anyhow::Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("api: cannot listen on {address}"))?;
    tracing::info!(address = %listener.local_addr()?, "api listening");
    let state = ApiState {
        metrics: ctx.metrics.clone(),
        health: ctx.health.clone(),
    };
    let mut app = axum::Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(state);
    if let Some(sources) = status {
        crate::status::rates::start(
            sources.rates.clone(),
            sources.metrics.clone(),
            ctx.shutdown.clone(),
        );
        let page = axum::Router::new()
            .route("/", get(page))
            .route("/status.json", get(status_json))
            .with_state(sources);
        app = app.merge(page);
    }
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "api stopped");
        }
    }))
}

async fn health(State(state): State<ApiState>) -> Response {
    let report = state.health.report();
    let code = if report.status == Status::Down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = serde_json::to_string_pretty(&report).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn metrics(State(state): State<ApiState>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

async fn page() -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        crate::status::PAGE,
    )
        .into_response()
}

async fn status_json(State(sources): State<Sources>) -> Response {
    let body = serde_json::to_string(&sources.snapshot()).unwrap_or_default();
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}
