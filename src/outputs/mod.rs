//! Outputs: each receives, from the filter workers, the events its `when` condition selects.
//! `submit` does the per-event work in the worker (encoding) and then awaits room in the
//! output's own bounded queue, so a slow output applies backpressure to the pipeline.

pub mod elasticsearch;
pub mod email;
pub mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod stdout;

use crate::config::problem::{PathSeg, Problem};
use crate::event::Event;
use crate::BuildContext;
use std::future::Future;
use std::pin::Pin;
use tokio::task::JoinHandle;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A running output.
pub trait Output: Send + Sync {
    /// Hands events to the output; resolves once they are in its queue.
    fn submit<'a>(&'a self, events: &'a [&'a Event]) -> BoxFuture<'a, ()>;

    /// [`submit`](Self::submit) with the events' acknowledgement. An output that confirms
    /// delivery (Elasticsearch) keeps a clone of `hold` until its events are indexed or
    /// dead-lettered. The default is best effort: the events count as delivered once handed
    /// over (email, alert rules, files, stdout).
    fn submit_held<'a>(
        &'a self,
        events: &'a [&'a Event],
        _hold: Option<&'a crate::ack::Hold>,
    ) -> BoxFuture<'a, ()> {
        self.submit(events)
    }
}

/// An output's dead-letter file: `configured`, or `default_name` under the data directory;
/// a problem when it is not a file path.
pub fn dead_letter_path(
    configured: &Option<std::path::PathBuf>,
    ctx: &BuildContext,
    default_name: &str,
    problems: &mut Vec<Problem>,
) -> std::path::PathBuf {
    let path = configured
        .clone()
        .unwrap_or_else(|| ctx.data_dir.join(default_name));
    if path.as_os_str().is_empty() || path.is_dir() {
        problems.push(
            Problem::at(
                "dead_letter_path",
                format!("`{}` is not a file path", path.display()),
            )
            .hint(format!("e.g. \"data/{default_name}\"")),
        );
    }
    path
}

/// Every output `type` the pipeline file accepts.
/// `kafka` is listed in builds without the feature too, so its use gets a clear error.
pub const TYPES: &[&str] = &["elasticsearch", "stdout", "file", "email", "kafka"];

#[derive(Debug, Clone)]
pub enum OutputConfig {
    Elasticsearch(elasticsearch::Config),
    Stdout(stdout::Config),
    File(file::Config),
    Email(email::Config),
    #[cfg(feature = "kafka")]
    Kafka(kafka::Config),
}

/// What starting an output yields: the handle workers submit to, and the task that drains it
/// (it ends once every handle is dropped and its queue is flushed).
pub struct Started {
    pub output: Box<dyn Output>,
    pub task: JoinHandle<()>,
}

impl OutputConfig {
    pub fn parse(
        kind: &str,
        value: toml::Value,
        path: &[PathSeg],
        problems: &mut Vec<Problem>,
    ) -> Option<Self> {
        use crate::config::de::deserialize_at as de;
        Some(match kind {
            "elasticsearch" => OutputConfig::Elasticsearch(de(value, path, problems)?),
            "stdout" => OutputConfig::Stdout(de(value, path, problems)?),
            "file" => OutputConfig::File(de(value, path, problems)?),
            "email" => OutputConfig::Email(de(value, path, problems)?),
            #[cfg(feature = "kafka")]
            "kafka" => OutputConfig::Kafka(de(value, path, problems)?),
            #[cfg(not(feature = "kafka"))]
            "kafka" => return crate::kafka_not_built(path, problems),
            _ => return None,
        })
    }

    /// Checks the configuration without starting anything.
    pub fn validate(&self, ctx: &BuildContext) -> Vec<Problem> {
        match self {
            OutputConfig::Elasticsearch(c) => c.validate(ctx),
            OutputConfig::Stdout(c) => c.validate(ctx),
            OutputConfig::File(c) => c.validate(ctx),
            OutputConfig::Email(c) => c.validate(ctx),
            #[cfg(feature = "kafka")]
            OutputConfig::Kafka(c) => c.validate(ctx),
        }
    }

    /// Starts the output's task.
    pub async fn start(&self, id: &str, ctx: &BuildContext) -> anyhow::Result<Started> {
        match self {
            OutputConfig::Elasticsearch(c) => c.start(id, ctx),
            OutputConfig::Stdout(c) => c.start(id, ctx),
            OutputConfig::File(c) => c.start(id, ctx).await,
            OutputConfig::Email(c) => c.start(id, ctx),
            #[cfg(feature = "kafka")]
            OutputConfig::Kafka(c) => c.start(id, ctx),
        }
    }
}
