//! sheepdog: an ingest pipeline daemon for LLM-API request logs. Beats and HTTP in, a filter
//! chain (JSON, cost, mutate, date, status, latency buckets, GeoIP, user agent), Elasticsearch
//! bulk and alert mail out.

pub mod alerts;
pub mod alloc;
pub mod api;
pub mod clock;
pub mod condition;
pub mod config;
pub mod event;
pub mod filters;
pub mod health;
pub mod inputs;
pub mod json;
pub mod metrics;
pub mod outputs;
pub mod pipeline;
pub mod queue;
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
    /// When slow checks of data files (walking a GeoIP database) run.
    pub verify: Verify,
}

/// When a build runs slow checks of data files (walking a 55 MB GeoIP database takes seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Before the build returns: `sheepdog check`, tests and benchmarks.
    Now,
    /// In a background task once the pipeline runs, so the inputs bind at once; stages report
    /// readiness through [`filters::Filter::ready`]. Outside a Tokio runtime (the configuration
    /// check before `run` starts one) such builds only validate.
    Background,
}

impl BuildContext {
    pub fn new(data_dir: PathBuf, shutdown: CancellationToken) -> Self {
        BuildContext {
            metrics: metrics::Registry::new(),
            health: health::HealthRegistry::new(),
            data_dir,
            shutdown,
            verify: Verify::Now,
        }
    }
}

/// Runs a parsed pipeline until `shutdown` is cancelled.
pub async fn run(
    config: config::PipelineConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut ctx = BuildContext::new(config.pipeline.data_dir.clone(), shutdown);
    ctx.verify = Verify::Background;
    pipeline::run(config, ctx).await
}
