//! sheepdog: an ingest pipeline daemon for LLM-API request logs. Beats and HTTP in, a filter
//! chain (JSON, cost, mutate, date, status, latency buckets, GeoIP, user agent), Elasticsearch
//! bulk and alert mail out.

pub mod alerts;
pub mod api;
pub mod condition;
pub mod config;
pub mod event;
pub mod filters;
pub mod health;
pub mod inputs;
pub mod metrics;
pub mod outputs;
pub mod pipeline;
pub mod queue;
pub mod ser;
pub mod template;

use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What every component gets when it is built: where to register metrics and health, where
/// state lives, and the one shutdown token.
#[derive(Clone)]
pub struct BuildContext {
    pub metrics: Arc<metrics::Registry>,
    pub health: Arc<health::HealthRegistry>,
    pub data_dir: PathBuf,
    pub shutdown: CancellationToken,
}

impl BuildContext {
    pub fn new(data_dir: PathBuf, shutdown: CancellationToken) -> Self {
        BuildContext {
            metrics: metrics::Registry::new(),
            health: health::HealthRegistry::new(),
            data_dir,
            shutdown,
        }
    }
}

/// Runs a parsed pipeline until `shutdown` is cancelled.
pub async fn run(
    config: config::PipelineConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ctx = BuildContext::new(config.pipeline.data_dir.clone(), shutdown);
    pipeline::run(config, ctx).await
}
