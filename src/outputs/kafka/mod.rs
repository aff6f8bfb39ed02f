//! `kafka`: produces each event as one JSON message (the document the Elasticsearch output
//! would index) to a topic, like Logstash's kafka output, through librdkafka's idempotent
//! producer with `acks=all`. Workers encode and hand messages to librdkafka in `submit`, which
//! waits while `queue_max_events` messages are undelivered; librdkafka batches, compresses and
//! retries them until `message_timeout`; its delivery reports (`delivery.rs`) confirm the
//! events' acknowledgement, or write what could not be delivered to the dead-letter file with
//! the broker's reason. Built only with the `kafka` cargo feature.

mod delivery;

use super::{BoxFuture, Output, Started};
use crate::ack::Hold;
use crate::config::de;
use crate::config::problem::Problem;
use crate::config::secret::Secret;
use crate::event::Event;
use crate::outputs::elasticsearch::dead_letter::DeadLetterFile;
use crate::template::Template;
use crate::BuildContext;
use delivery::{Chunk, Delivery, Undelivered};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Bootstrap brokers, `host:port`, an array or a comma-separated string
    /// (`"${KAFKA_BROKERS}"`). librdkafka: `bootstrap.servers`.
    #[serde(deserialize_with = "de::string_list")]
    pub brokers: Vec<String>,
    /// Topic template, e.g. `holysheep-logs` or `logs-%{service}`; an event missing a field
    /// goes to the topic named by the template text, as Logstash does (and is usually refused
    /// and dead-lettered: `%{` is not valid in a topic name).
    pub topic: String,
    /// Message key templates tried in order: the first whose fields are present and that
    /// renders non-empty is the key (events with one key stay on one partition, in order).
    /// None renders: no key, and librdkafka spreads the messages. Default `%{request_id}`.
    #[serde(default = "d_key", deserialize_with = "one_or_many")]
    pub key: Vec<String>,
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd` (librdkafka `compression.codec`). Default
    /// `none`.
    #[serde(default = "d_compression")]
    pub compression: String,
    /// How long librdkafka retries a message before it is reported undelivered and written to
    /// the dead-letter file (`message.timeout.ms`). Default `5m`.
    #[serde(default = "d_message_timeout", deserialize_with = "de::duration")]
    pub message_timeout: Duration,
    /// How long librdkafka gathers messages into a batch (`linger.ms`). Default `5ms`.
    #[serde(default = "d_linger", deserialize_with = "de::duration")]
    pub linger: Duration,
    /// Messages handed to the producer and not yet delivered (or dead-lettered) before
    /// `submit` waits: the backpressure bound. Default 20000.
    #[serde(default = "d_queue", deserialize_with = "de::from_str_or_value")]
    pub queue_max_events: usize,
    /// Largest message in bytes (`message.max.bytes`); a larger event is dead-lettered. The
    /// broker's and topic's limits must allow it. Default `1MiB`.
    #[serde(default = "d_max_message", deserialize_with = "de::bytes")]
    pub max_message_bytes: u64,
    /// Where undeliverable messages are appended. Default `<data_dir>/kafka_dead_letter.ndjson`.
    #[serde(default)]
    pub dead_letter_path: Option<PathBuf>,
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
    /// Check that a broker's certificate names the host connected to
    /// (`ssl.endpoint.identification.algorithm` `https`). Default true.
    #[serde(
        default = "crate::kafka::d_true",
        deserialize_with = "de::from_str_or_value"
    )]
    pub ssl_endpoint_identification: bool,
    /// Any other librdkafka producer property, e.g. `{ "batch.size" = "1000000" }`.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
}

fn d_key() -> Vec<String> {
    vec!["%{request_id}".into()]
}
fn d_compression() -> String {
    "none".into()
}
fn d_message_timeout() -> Duration {
    Duration::from_secs(300)
}
fn d_linger() -> Duration {
    Duration::from_millis(5)
}
fn d_queue() -> usize {
    20_000
}
fn d_max_message() -> u64 {
    1024 * 1024
}

/// A string or an array of strings (templates may hold commas, so no splitting).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

const COMPRESSIONS: &[&str] = &["none", "gzip", "snappy", "lz4", "zstd"];

/// The producer properties the output sets itself: the delivery guarantees it promises.
const MANAGED: &[&str] = &[
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "compression.codec",
    "compression.type",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "linger.ms",
    "message.max.bytes",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "queue.buffering.max.messages",
];

/// The checked settings the running output uses.
struct Settings {
    topic: Template,
    keys: Vec<Template>,
    dead_letter_path: PathBuf,
    queue_max_events: usize,
}

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

    pub fn validate(&self, ctx: &BuildContext) -> Vec<Problem> {
        match self.settings(ctx) {
            Ok(_) => Vec::new(),
            Err(problems) => problems,
        }
    }

    /// Validates the whole configuration into settings, or every problem found.
    fn settings(&self, ctx: &BuildContext) -> Result<Settings, Vec<Problem>> {
        let mut problems = self.connection().problems(MANAGED);
        let topic = compile("topic", &self.topic, "\"holysheep-logs\"", &mut problems);
        if self.topic.trim().is_empty() {
            problems.push(
                Problem::at("topic", "the topic is empty").hint("e.g. topic = \"holysheep-logs\""),
            );
        }
        let keys = self
            .key
            .iter()
            .filter_map(|k| compile("key", k, "\"%{request_id}\"", &mut problems))
            .collect();
        if !COMPRESSIONS.contains(&self.compression.as_str()) {
            problems.push(
                Problem::at(
                    "compression",
                    format!("unknown compression `{}`", self.compression),
                )
                .hint(format!("one of: {}", COMPRESSIONS.join(", "))),
            );
        }
        self.check_limits(&mut problems);
        let dead_letter_path = crate::outputs::dead_letter_path(
            &self.dead_letter_path,
            ctx,
            "kafka_dead_letter.ndjson",
            &mut problems,
        );
        match (problems.is_empty(), topic) {
            (true, Some(topic)) => Ok(Settings {
                topic,
                keys,
                dead_letter_path,
                queue_max_events: self.queue_max_events,
            }),
            _ => Err(problems),
        }
    }

    /// Bounds that librdkafka would refuse or that stop the output from working.
    fn check_limits(&self, problems: &mut Vec<Problem>) {
        if self.queue_max_events == 0 || self.queue_max_events > 1_000_000 {
            problems.push(Problem::at(
                "queue_max_events",
                "must be between 1 and 1000000",
            ));
        }
        if self.message_timeout < Duration::from_secs(1) {
            problems.push(
                Problem::at("message_timeout", "must be at least 1s")
                    .hint("it is how long librdkafka retries before a message is dead-lettered"),
            );
        }
        if self.linger > Duration::from_secs(900) {
            problems.push(Problem::at("linger", "must be at most 900s"));
        }
        if !(1000..=1_000_000_000).contains(&self.max_message_bytes) {
            problems.push(Problem::at(
                "max_message_bytes",
                "must be between 1000 and 1000000000 bytes",
            ));
        }
    }

    /// librdkafka's producer configuration: the connection, then the guarantees.
    fn producer_config(&self, settings: &Settings) -> rdkafka::ClientConfig {
        let mut config = self.connection().client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.codec", &self.compression)
            .set(
                "message.timeout.ms",
                self.message_timeout.as_millis().to_string(),
            )
            .set("linger.ms", self.linger.as_millis().to_string())
            .set("message.max.bytes", self.max_message_bytes.to_string())
            // The output's own bound is always below librdkafka's, so `send` never finds its
            // queue full in normal operation.
            .set(
                "queue.buffering.max.messages",
                (settings.queue_max_events + 1000).to_string(),
            );
        config
    }

    pub fn start(&self, id: &str, ctx: &BuildContext) -> anyhow::Result<Started> {
        let settings = self.settings(ctx).map_err(|problems| {
            let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            anyhow::anyhow!("{}", text.join("; "))
        })?;
        let metrics = delivery::Metrics::register(id, &ctx.metrics);
        let context = Delivery {
            client: crate::kafka::Context::new(
                id.to_string(),
                ctx.health
                    .register(format!("output {id} kafka {}", self.brokers.join(","))),
            ),
            dead_letters: DeadLetterFile::new(settings.dead_letter_path.clone()),
            metrics: metrics.clone(),
        };
        let producer: ThreadedProducer<Delivery> = self
            .producer_config(&settings)
            .create_with_context(context)
            .map_err(|e| anyhow::anyhow!("output `{id}`: cannot create the Kafka producer: {e}"))?;
        tracing::info!(output = id, brokers = %self.brokers.join(","), topic = %settings.topic.source(), compression = %self.compression, "kafka output starting");
        let producer = Arc::new(producer);
        let permits = Arc::new(Semaphore::new(settings.queue_max_events));
        let (alive, closed) = tokio::sync::mpsc::channel::<()>(1);
        let output = KafkaOutput {
            producer: producer.clone(),
            topic: settings.topic,
            keys: settings.keys,
            permits: permits.clone(),
            capacity: settings.queue_max_events,
            budget: ctx.budget.clone(),
            metrics,
            _alive: alive,
        };
        let task = tokio::spawn(drain(
            id.to_string(),
            producer,
            permits,
            settings.queue_max_events,
            closed,
        ));
        Ok(Started {
            output: Box::new(output),
            task,
        })
    }
}

/// Compiles one template, reporting a bad one at `key`.
fn compile(
    key: &str,
    source: &str,
    example: &str,
    problems: &mut Vec<Problem>,
) -> Option<Template> {
    match Template::compile(source) {
        Ok(t) => Some(t),
        Err(e) => {
            problems.push(
                Problem::at(key, format!("bad template `{source}`: {e}"))
                    .hint(format!("e.g. {key} = {example}")),
            );
            None
        }
    }
}

/// The output's task: once every handle is gone (the workers drained), waits until every
/// message was reported, then flushes the producer.
async fn drain(
    id: String,
    producer: Arc<ThreadedProducer<Delivery>>,
    permits: Arc<Semaphore>,
    capacity: usize,
    mut closed: tokio::sync::mpsc::Receiver<()>,
) {
    while closed.recv().await.is_some() {}
    // Every chunk holds permits until its last report: all of them back means all reported.
    let _ = permits.acquire_many(capacity as u32).await;
    let flushed =
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
    if let Ok(Err(e)) = flushed {
        tracing::warn!(output = %id, error = %e, "kafka producer flush failed");
    }
}

struct KafkaOutput {
    producer: Arc<ThreadedProducer<Delivery>>,
    topic: Template,
    keys: Vec<Template>,
    permits: Arc<Semaphore>,
    capacity: usize,
    budget: crate::budget::MemoryBudget,
    metrics: delivery::Metrics,
    /// Dropped with the output; the task then knows no more messages come.
    _alive: tokio::sync::mpsc::Sender<()>,
}

/// What one event becomes: its topic, key and JSON payload.
struct Encoded {
    topic: String,
    key: Option<String>,
    payload: Vec<u8>,
}

impl KafkaOutput {
    /// The event's topic (the template text when a field is missing, as Logstash does), key
    /// and document.
    fn encode(&self, event: &Event) -> Encoded {
        let mut topic = String::new();
        if self.topic.render_into(event, &mut topic).is_err() {
            topic.clear();
            topic.push_str(self.topic.source());
        }
        let mut payload = Vec::with_capacity(512);
        event.fields().write_json(&mut payload);
        Encoded {
            topic,
            key: render_key(&self.keys, event),
            payload,
        }
    }

    /// Hands `events` (at most the output's capacity) to the producer as one chunk, whose
    /// bytes stay charged to the memory budget until every message is reported (librdkafka
    /// holds a copy). The charge is forced: a worker must not wait on room only delivery frees.
    async fn produce(&self, events: &[&Event], hold: Option<&Hold>) {
        let Ok(permit) = self
            .permits
            .clone()
            .acquire_many_owned(events.len() as u32)
            .await
        else {
            return;
        };
        let messages: Vec<Encoded> = events.iter().map(|e| self.encode(e)).collect();
        let bytes = messages.iter().map(|m| m.payload.len() + 64).sum();
        let charge = self.budget.force(bytes, crate::budget::Use::Output);
        let chunk = Chunk::new(hold.cloned(), permit, charge);
        for message in &messages {
            self.send(message, &chunk).await;
        }
    }

    /// Hands one message to librdkafka, waiting while its queue is full; a message it refuses
    /// at once (too large, unknown topic) is dead-lettered.
    async fn send(&self, message: &Encoded, chunk: &Arc<Chunk>) {
        loop {
            let mut record = BaseRecord::with_opaque_to(&message.topic, chunk.clone())
                .payload(message.payload.as_slice());
            if let Some(key) = &message.key {
                record = record.key(key.as_str());
            }
            self.metrics.in_flight.add(1);
            let refused = match self.producer.send(record) {
                Ok(()) => return,
                Err((error, _record)) => error,
            };
            self.metrics.in_flight.sub(1);
            if refused == KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            let undelivered = Undelivered {
                topic: &message.topic,
                key: message.key.as_deref(),
                payload: &message.payload,
            };
            self.producer
                .context()
                .dead_letter(&undelivered, &refused, chunk);
            return;
        }
    }
}

/// The first key template that renders non-empty, if any.
fn render_key(keys: &[Template], event: &Event) -> Option<String> {
    let mut out = String::new();
    for template in keys {
        out.clear();
        if template.render_into(event, &mut out).is_ok() && !out.is_empty() {
            return Some(out);
        }
    }
    None
}

impl Output for KafkaOutput {
    fn submit<'a>(&'a self, events: &'a [&'a Event]) -> BoxFuture<'a, ()> {
        self.submit_held(events, None)
    }

    fn submit_held<'a>(
        &'a self,
        events: &'a [&'a Event],
        hold: Option<&'a Hold>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            for part in events.chunks(self.capacity) {
                self.produce(part, hold).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(extra: &str) -> Result<Config, String> {
        let text = format!("brokers = \"k1:9092, k2:9092\"\ntopic = \"logs\"\n{extra}");
        toml::from_str(&text).map_err(|e| e.to_string())
    }

    fn problems(extra: &str) -> Vec<String> {
        let ctx = BuildContext::new(std::env::temp_dir(), Default::default());
        config(extra)
            .unwrap()
            .validate(&ctx)
            .iter()
            .map(|p| crate::config::problem::path_to_string(&p.path))
            .collect()
    }

    #[test]
    fn defaults_are_the_safe_ones() {
        let c = config("").unwrap();
        assert_eq!(c.brokers, ["k1:9092", "k2:9092"]);
        assert_eq!(c.key, ["%{request_id}"]);
        assert_eq!(c.compression, "none");
        assert_eq!(c.message_timeout, Duration::from_secs(300));
        assert!(problems("").is_empty());
        let ctx = BuildContext::new(std::env::temp_dir(), Default::default());
        let settings = c.settings(&ctx).unwrap();
        let p = c.producer_config(&settings);
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("acks"), Some("all"));
    }

    #[test]
    fn bad_settings_are_reported_at_their_keys() {
        assert_eq!(problems("compression = \"brotli\""), ["compression"]);
        assert_eq!(problems("key = \"%{[a\""), ["key"]);
        assert_eq!(problems("queue_max_events = 0"), ["queue_max_events"]);
        assert_eq!(problems("message_timeout = \"10ms\""), ["message_timeout"]);
        assert_eq!(
            problems("librdkafka = { acks = \"1\" }"),
            ["librdkafka.acks"]
        );
        assert_eq!(
            problems("security_protocol = \"sasl_ssl\""),
            ["sasl_username"]
        );
        assert!(problems("security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-256\"\nsasl_username = \"u\"\nsasl_password = \"p\"").is_empty());
        assert!(config("brokers = 1").is_err());
        assert!(config("acks = 1").is_err(), "unknown keys are refused");
    }

    #[test]
    fn keys_fall_back_in_order_and_are_absent_when_none_renders() {
        let keys: Vec<Template> = ["%{request_id}", "%{[@metadata][fingerprint]}"]
            .iter()
            .map(|s| Template::compile(s).unwrap())
            .collect();
        let event = |v: serde_json::Value| Event::from_map(v.as_object().unwrap().clone(), 0);
        assert_eq!(
            render_key(&keys, &event(json!({"request_id": "r-1"}))).as_deref(),
            Some("r-1")
        );
        assert_eq!(
            render_key(&keys, &event(json!({"request_id": 42}))).as_deref(),
            Some("42")
        );
        let mut fp = event(json!({"request_id": ""}));
        fp.insert(
            &crate::event::FieldPath::parse("[@metadata][fingerprint]").unwrap(),
            json!("abc"),
        );
        assert_eq!(render_key(&keys, &fp).as_deref(), Some("abc"));
        assert_eq!(render_key(&keys, &event(json!({"model": "m"}))), None);
    }
}
