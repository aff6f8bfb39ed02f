//! sheepdog: an ingest pipeline daemon for LLM-API request logs. Beats and HTTP in, a filter
//! chain (JSON, cost, mutate, date, status, latency buckets, GeoIP, user agent), Elasticsearch
//! bulk and alert mail out.

pub mod ack;
pub mod alerts;
pub mod alloc;
pub mod api;
pub mod budget;
pub mod clock;
pub mod condition;
pub mod config;
pub mod event;
pub mod filters;
pub mod health;
pub mod inputs;
pub mod journal;
pub mod json;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod listeners;
pub mod live;
pub mod metrics;
pub mod offline;
pub mod outputs;
pub mod pipeline;
pub mod queue;
pub mod reload;
pub mod status;
pub mod template;

use std::path::{Path, PathBuf};
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
    /// The memory budget every input, the queue and the outputs charge what they hold to.
    pub budget: budget::MemoryBudget,
    /// Listening sockets, kept across reloads.
    pub listeners: listeners::Listeners,
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
        let metrics = metrics::Registry::new();
        BuildContext {
            budget: budget::MemoryBudget::new(budget::DEFAULT_LIMIT, &metrics),
            metrics,
            health: health::HealthRegistry::new(),
            data_dir,
            shutdown,
            verify: Verify::Now,
            listeners: listeners::Listeners::default(),
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
    pipeline::run(config, ctx, None).await
}

/// [`run`], re-reading the pipeline file at `path` (whose text `text` was parsed into `config`)
/// each time `reload` receives a message.
pub async fn run_reloadable(
    config: config::PipelineConfig,
    shutdown: CancellationToken,
    path: PathBuf,
    text: String,
    reload: tokio::sync::mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    let mut ctx = BuildContext::new(config.pipeline.data_dir.clone(), shutdown);
    ctx.verify = Verify::Background;
    let source = pipeline::ReloadSource {
        path,
        text,
        requests: reload,
    };
    pipeline::run(config, ctx, Some(source)).await
}

/// A pipeline file that parsed and validated: the configuration, its warnings, and the filter
/// chain validation compiled (building a GeoIP stage walks its database, so it is built once).
pub struct Loaded {
    pub config: config::PipelineConfig,
    pub warnings: Vec<config::LocatedProblem>,
    pub stages: Vec<filters::FilterStage>,
}

/// Reads, parses and validates the pipeline file at `path`, resolving `${VAR}` through `lookup`.
/// `verify` says whether database files are walked now (`check`, `test`, `tap`) or left to the
/// running pipeline, which verifies them after the inputs bind (`run`). `Err` holds every
/// problem, one `file:line:column: ...` per line.
pub fn load(path: &Path, lookup: config::env::Lookup, verify: Verify) -> Result<Loaded, String> {
    let source = config::Source::read(path).map_err(|e| format!("{e:#}"))?;
    load_source(&source, lookup, verify).map_err(|e| e.to_string())
}

/// [`load`] for pipeline text already read: `Err` holds every problem located in `source`.
pub fn load_source(
    source: &config::Source,
    lookup: config::env::Lookup,
    verify: Verify,
) -> Result<Loaded, config::ConfigErrors> {
    // Stages that parsed are validated (templates, files, addresses) even when others did not,
    // so one run reports every problem.
    let (config, mut located) = config::parse_partial(source, lookup)?;
    let mut ctx = BuildContext::new(config.pipeline.data_dir.clone(), CancellationToken::new());
    ctx.verify = verify;
    let (problems, stages) = pipeline::validate_and_build(&config, &ctx);
    located.extend(problems.into_iter().map(|p| source.locate(p)));
    located.sort_by_key(|p| (p.line, p.column));
    if located.iter().any(|p| p.problem.is_error()) {
        Err(config::ConfigErrors(located))
    } else {
        Ok(Loaded {
            config,
            warnings: located,
            stages,
        })
    }
}

/// The problem of a `type = "kafka"` stage in a build without the `kafka` feature; `None`, so
/// the stage is left out.
#[cfg(not(feature = "kafka"))]
pub(crate) fn kafka_not_built<T>(
    path: &[config::problem::PathSeg],
    problems: &mut Vec<config::problem::Problem>,
) -> Option<T> {
    let mut at = path.to_vec();
    at.push(config::problem::PathSeg::Key("type".into()));
    problems.push(
        config::problem::Problem::at_path(
            at,
            "this build has no Kafka support; build with --features kafka",
        )
        .hint("cargo build --release --features kafka (needs cmake, pkg-config and the libcurl and OpenSSL headers, which scripts/ci-deps/kafka.sh installs)"),
    );
    None
}
