//! Inputs: each binds its listener at start-up (so the daemon is ready when `start` returns),
//! turns what it receives into events and hands them to the pipeline queue.

pub mod beats;
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;

use crate::config::problem::{PathSeg, Problem};
use crate::queue::QueueSender;
use crate::BuildContext;
use tokio::task::JoinHandle;

/// Every input `type` the pipeline file accepts.
/// `kafka` is listed in builds without the feature too, so its use gets a clear error.
pub const TYPES: &[&str] = &["http", "beats", "kafka"];

#[derive(Debug, Clone)]
pub enum InputConfig {
    Http(http::Config),
    Beats(beats::Config),
    #[cfg(feature = "kafka")]
    Kafka(kafka::Config),
}

impl InputConfig {
    pub fn parse(
        kind: &str,
        value: toml::Value,
        path: &[PathSeg],
        problems: &mut Vec<Problem>,
    ) -> Option<Self> {
        use crate::config::de::deserialize_at as de;
        Some(match kind {
            "http" => InputConfig::Http(de(value, path, problems)?),
            "beats" => InputConfig::Beats(de(value, path, problems)?),
            #[cfg(feature = "kafka")]
            "kafka" => InputConfig::Kafka(de(value, path, problems)?),
            #[cfg(not(feature = "kafka"))]
            "kafka" => return crate::kafka_not_built(path, problems),
            _ => return None,
        })
    }

    /// Checks the configuration without binding anything.
    pub fn validate(&self) -> Vec<Problem> {
        match self {
            InputConfig::Http(c) => c.validate(),
            InputConfig::Beats(c) => c.validate(),
            #[cfg(feature = "kafka")]
            InputConfig::Kafka(c) => c.validate(),
        }
    }

    /// The address the input listens on; empty for an input that listens on none (`kafka`).
    pub fn address(&self) -> &str {
        match self {
            InputConfig::Http(c) => &c.address,
            InputConfig::Beats(c) => &c.address,
            #[cfg(feature = "kafka")]
            InputConfig::Kafka(_) => "",
        }
    }

    /// Binds the listener and spawns the input; the task ends after shutdown is signalled
    /// and in-flight requests are answered.
    pub async fn start(
        &self,
        id: &str,
        ctx: &BuildContext,
        queue: QueueSender,
    ) -> anyhow::Result<JoinHandle<()>> {
        match self {
            InputConfig::Http(c) => c.start(id, ctx, queue).await,
            InputConfig::Beats(c) => c.start(id, ctx, queue).await,
            #[cfg(feature = "kafka")]
            InputConfig::Kafka(c) => c.start(id, ctx, queue).await,
        }
    }
}

/// Validates a listen address such as `0.0.0.0:8080`.
pub fn check_address(key: &str, address: &str) -> Option<Problem> {
    match address.parse::<std::net::SocketAddr>() {
        Ok(_) => None,
        Err(_) => Some(
            Problem::at(key, format!("`{address}` is not a listen address"))
                .hint("write host:port, e.g. 0.0.0.0:8080 or 127.0.0.1:0"),
        ),
    }
}
