//! The monitoring API: `GET /health` (200 when every output can deliver, 503 with reasons
//! otherwise) and `GET /metrics` (Prometheus text).

use crate::health::{HealthRegistry, Status};
use crate::metrics::Registry;
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

/// Binds the API address and serves until the task is aborted.
pub async fn start(address: &str, ctx: &BuildContext) -> anyhow::Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("api: cannot listen on {address}"))?;
    tracing::info!(address = %listener.local_addr()?, "api listening");
    let state = ApiState {
        metrics: ctx.metrics.clone(),
        health: ctx.health.clone(),
    };
    let app = axum::Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(state);
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
