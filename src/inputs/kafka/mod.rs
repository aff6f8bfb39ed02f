//! `kafka` input: a member of a consumer group (librdkafka's, partitions rebalanced as members
//! come and go) that decodes each message's payload as the HTTP input decodes a body (a JSON
//! object, an array of them, NDJSON; anything else becomes an event tagged
//! `_jsonparsefailure`), adds `[@metadata][kafka]` (topic, partition, offset, key, timestamp)
//! and queues the events in batches.
//!
//! Offsets are committed by this input, never automatically: a batch carries a
//! [`Hold`](crate::ack::Hold) whose settlement marks its offset ranges delivered or not
//! (`offsets.rs`), and every `commit_interval` the positions past the delivered ranges are
//! committed. A rebalance commits what is confirmed for the revoked partitions and forgets the
//! rest. While the pipeline queue is full the input waits and fetches nothing more; librdkafka
//! prefetches at most `fetch_buffer_bytes` meanwhile. Built only with the `kafka` cargo feature.

mod consume;
mod offsets;

use crate::config::de;
use crate::config::problem::Problem;
use crate::config::secret::Secret;
use crate::queue::QueueSender;
use crate::BuildContext;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Bootstrap brokers, `host:port`, an array or a comma-separated string
    /// (`"${KAFKA_BROKERS}"`). librdkafka: `bootstrap.servers`.
    #[serde(deserialize_with = "de::string_list")]
    pub brokers: Vec<String>,
    /// Topics to consume, an array or a comma-separated string.
    #[serde(deserialize_with = "de::string_list")]
    pub topics: Vec<String>,
    /// Consumer group (`group.id`): the members of a group share the topics' partitions.
    pub group_id: String,
    /// Tags added to every event from this input.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Where a group without a committed offset starts: `earliest` (default: nothing written
    /// before the first indexer started is skipped) or `latest` (`auto.offset.reset`).
    #[serde(default = "d_reset")]
    pub auto_offset_reset: String,
    /// Most messages in one batch handed to the pipeline queue. Default 1024.
    #[serde(default = "d_batch", deserialize_with = "de::from_str_or_value")]
    pub batch_max_messages: usize,
    /// Longest the first message of a batch waits for more before the batch is queued.
    /// Default `20ms`.
    #[serde(default = "d_batch_wait", deserialize_with = "de::duration")]
    pub batch_max_wait: Duration,
    /// Bytes librdkafka may prefetch ahead of the pipeline (`queued.max.messages.kbytes`): the
    /// most held while the pipeline pushes back. Default `16MiB`.
    #[serde(default = "d_fetch_buffer", deserialize_with = "de::bytes")]
    pub fetch_buffer_bytes: u64,
    /// How often delivered offsets are committed. Default `1s`.
    #[serde(default = "d_commit_interval", deserialize_with = "de::duration")]
    pub commit_interval: Duration,
    /// At shutdown, how long the input waits for its events to be delivered so their offsets
    /// can be committed (keep it below `pipeline.shutdown_timeout`). Default `20s`.
    #[serde(default = "d_shutdown_wait", deserialize_with = "de::duration")]
    pub shutdown_commit_wait: Duration,
    /// When partitions are revoked (a rebalance), how long the input waits for their batches
    /// in flight to be confirmed, so their offsets are committed and the next owner does not
    /// consume them again; `0s` commits what is confirmed at once. Default `10s`.
    #[serde(default = "d_drain_wait", deserialize_with = "de::duration")]
    pub rebalance_drain_wait: Duration,
    /// `session.timeout.ms`: a member silent this long leaves the group. Default `45s`.
    #[serde(default = "d_session", deserialize_with = "de::duration")]
    pub session_timeout: Duration,
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl` (`security.protocol`).
    #[serde(default = "crate::kafka::d_protocol")]
    pub security_protocol: String,
    /// `PLAIN` (default), `SCRAM-SHA-256` or `SCRAM-SHA-512` (`sasl.mechanism`).
    #[serde(default = "crate::kafka::d_mechanism")]
    pub sasl_mechanism: String,
    /// SASL user (`sasl.username`).
    #[serde(default)]
    pub sasl_username: String,
    /// SASL password (`sasl.password`); never printed.
    #[serde(default)]
    pub sasl_password: Secret,
    /// PEM CA certificate(s) to verify the brokers with (`ssl.ca.location`).
    #[serde(default)]
    pub ssl_ca_location: Option<PathBuf>,
    /// PEM client certificate (`ssl.certificate.location`); needs `ssl_key_location`.
    #[serde(default)]
    pub ssl_certificate_location: Option<PathBuf>,
    /// PEM key of the client certificate (`ssl.key.location`).
    #[serde(default)]
    pub ssl_key_location: Option<PathBuf>,
    /// Password of an encrypted `ssl_key_location` (`ssl.key.password`); never printed.
    #[serde(default)]
    pub ssl_key_password: Secret,
    /// Check that a broker's certificate names the host connected to. Default true.
    #[serde(
        default = "crate::kafka::d_true",
        deserialize_with = "de::from_str_or_value"
    )]
    pub ssl_endpoint_identification: bool,
    /// Any other librdkafka consumer property, e.g. `{ "client.rack" = "eu-1a" }`.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
}

fn d_reset() -> String {
    "earliest".into()
}
fn d_batch() -> usize {
    1024
}
fn d_batch_wait() -> Duration {
    Duration::from_millis(20)
}
fn d_fetch_buffer() -> u64 {
    16 * 1024 * 1024
}
fn d_commit_interval() -> Duration {
    Duration::from_secs(1)
}
fn d_shutdown_wait() -> Duration {
    Duration::from_secs(20)
}
fn d_drain_wait() -> Duration {
    Duration::from_secs(10)
}
fn d_session() -> Duration {
    Duration::from_secs(45)
}

/// The consumer properties the input sets itself: its commit discipline and its bounds.
const MANAGED: &[&str] = &[
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "queued.max.messages.kbytes",
    "session.timeout.ms",
];

impl Config {
    fn connection(&self) -> crate::kafka::Connection<'_> {
        crate::kafka::Connection {
            brokers: &self.brokers,
            security_protocol: &self.security_protocol,
            sasl_mechanism: &self.sasl_mechanism,
            sasl_username: &self.sasl_username,
            sasl_password: &self.sasl_password,
            ssl_ca_location: self.ssl_ca_location.as_ref(),
            ssl_certificate_location: self.ssl_certificate_location.as_ref(),
            ssl_key_location: self.ssl_key_location.as_ref(),
            ssl_key_password: &self.ssl_key_password,
            ssl_endpoint_identification: self.ssl_endpoint_identification,
            librdkafka: &self.librdkafka,
        }
    }

    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = self.connection().problems(MANAGED);
        if self.topics.is_empty() {
            problems.push(
                Problem::at("topics", "no topics").hint("e.g. topics = [\"holysheep-logs\"]"),
            );
        }
        if self.group_id.trim().is_empty() {
            problems.push(
                Problem::at("group_id", "the consumer group is empty")
                    .hint("e.g. group_id = \"sheepdog-indexer\""),
            );
        }
        if !["earliest", "latest"].contains(&self.auto_offset_reset.as_str()) {
            problems.push(
                Problem::at(
                    "auto_offset_reset",
                    format!("unknown value `{}`", self.auto_offset_reset),
                )
                .hint("\"earliest\" or \"latest\""),
            );
        }
        if self.batch_max_messages == 0 {
            problems.push(Problem::at("batch_max_messages", "must be at least 1"));
        }
        if !(1024..=2 * 1024 * 1024 * 1024).contains(&self.fetch_buffer_bytes) {
            problems.push(Problem::at(
                "fetch_buffer_bytes",
                "must be between 1KiB and 2GiB",
            ));
        }
        for (key, d) in [
            ("commit_interval", self.commit_interval),
            ("session_timeout", self.session_timeout),
        ] {
            if d.is_zero() {
                problems.push(Problem::at(key, "must be longer than zero"));
            }
        }
        problems
    }

    /// librdkafka's consumer configuration: the connection, the group and our commits.
    fn consumer_config(&self) -> rdkafka::ClientConfig {
        let mut config = self.connection().client_config();
        config
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", &self.auto_offset_reset)
            .set(
                "queued.max.messages.kbytes",
                (self.fetch_buffer_bytes / 1024).max(1).to_string(),
            )
            .set(
                "session.timeout.ms",
                self.session_timeout.as_millis().to_string(),
            );
        config
    }

    /// Creates the consumer, subscribes and spawns the consuming task; it ends after shutdown
    /// once its delivered offsets are committed.
    pub async fn start(
        &self,
        id: &str,
        ctx: &BuildContext,
        queue: QueueSender,
    ) -> anyhow::Result<JoinHandle<()>> {
        let input = consume::Input::new(self, id, ctx, queue)?;
        tracing::info!(input = id, brokers = %self.brokers.join(","), topics = ?self.topics, group = %self.group_id, "kafka input subscribed");
        Ok(tokio::spawn(input.run()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<Config, String> {
        let text = format!("brokers = \"k1:9092\"\ntopics = \"a, b\"\ngroup_id = \"g\"\n{extra}");
        toml::from_str(&text).map_err(|e| e.to_string())
    }

    fn problems(extra: &str) -> Vec<String> {
        config(extra)
            .unwrap()
            .validate()
            .iter()
            .map(|p| crate::config::problem::path_to_string(&p.path))
            .collect()
    }

    #[test]
    fn defaults_commit_by_hand_from_the_earliest_offset() {
        let c = config("").unwrap();
        assert_eq!(c.topics, ["a", "b"]);
        assert!(problems("").is_empty());
        let k = c.consumer_config();
        assert_eq!(k.get("enable.auto.commit"), Some("false"));
        assert_eq!(k.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(k.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(k.get("queued.max.messages.kbytes"), Some("16384"));
        assert_eq!(k.get("group.id"), Some("g"));
    }

    #[test]
    fn bad_settings_are_reported_at_their_keys() {
        assert_eq!(
            problems("auto_offset_reset = \"smallest\""),
            ["auto_offset_reset"]
        );
        assert_eq!(problems("batch_max_messages = 0"), ["batch_max_messages"]);
        assert_eq!(problems("commit_interval = \"0s\""), ["commit_interval"]);
        assert_eq!(
            problems("librdkafka = { \"enable.auto.commit\" = \"true\" }"),
            ["librdkafka.enable.auto.commit"]
        );
        assert!(problems("librdkafka = { \"fetch.wait.max.ms\" = \"50\" }").is_empty());
        let empty = "brokers = \"\"\ntopics = []\ngroup_id = \" \"";
        let c: Config = toml::from_str(empty).unwrap();
        let keys: Vec<String> = c
            .validate()
            .iter()
            .map(|p| crate::config::problem::path_to_string(&p.path))
            .collect();
        assert_eq!(keys, ["brokers", "topics", "group_id"]);
        assert!(config("group = \"x\"").is_err(), "unknown keys are refused");
    }
}
