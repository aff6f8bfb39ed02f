//! Delivery reports: every message the output hands to librdkafka carries an `Arc` of its
//! [`Chunk`] as the delivery opaque. librdkafka retries a failed produce itself until
//! `message.timeout.ms`; its final report arrives here on the producer's polling thread. A
//! delivered message counts; one that was not is written to the dead-letter file with the
//! broker's reason. When the last message of a chunk is reported its `Arc` drops, and with it
//! the chunk's hold is confirmed (or failed, when a dead letter could not be written), its
//! share of the output's capacity and its memory charge are given back.

use crate::ack::Hold;
use crate::budget::Charge;
use crate::metrics::{Counter, Gauge};
use crate::outputs::elasticsearch::dead_letter::{DeadLetterFile, Letter};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::ProducerContext;
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// What the output counts.
#[derive(Clone)]
pub struct Metrics {
    pub delivered: Counter,
    pub dead_lettered: Counter,
    pub dead_letter_errors: Counter,
    /// Messages handed to librdkafka and not yet reported.
    pub in_flight: Gauge,
}

impl Metrics {
    pub fn register(id: &str, registry: &crate::metrics::Registry) -> Metrics {
        let outcome = |o: &str| {
            registry.counter(
                "sheepdog_kafka_messages_total",
                "Messages the kafka output produced, by outcome: delivered (acknowledged by all in-sync replicas) or dead_letter (not deliverable, written to the dead-letter file)",
                &[("output", id), ("outcome", o)],
            )
        };
        Metrics {
            delivered: outcome("delivered"),
            dead_lettered: outcome("dead_letter"),
            dead_letter_errors: registry.counter(
                "sheepdog_kafka_dead_letter_errors_total",
                "Undeliverable messages that could not be written to the dead-letter file either (their events count as not delivered)",
                &[("output", id)],
            ),
            in_flight: registry.gauge(
                "sheepdog_kafka_in_flight_messages",
                "Messages handed to the producer and not yet acknowledged or dead-lettered",
                &[("output", id)],
            ),
        }
    }
}

/// Messages submitted together: their acknowledgement, their room in the output and their
/// bytes on the memory budget, all released when the last message's report drops it.
pub struct Chunk {
    hold: std::sync::Mutex<Option<Hold>>,
    /// A message of the chunk was neither delivered nor dead-lettered.
    lost: AtomicBool,
    _permit: OwnedSemaphorePermit,
    _charge: Charge,
}

impl Chunk {
    pub fn new(hold: Option<Hold>, permit: OwnedSemaphorePermit, charge: Charge) -> Arc<Chunk> {
        Arc::new(Chunk {
            hold: std::sync::Mutex::new(hold),
            lost: AtomicBool::new(false),
            _permit: permit,
            _charge: charge,
        })
    }

    /// Marks the chunk undelivered: its hold fails instead of being confirmed.
    pub fn lose(&self) {
        self.lost.store(true, Ordering::Release);
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let hold = self
            .hold
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(hold) = hold {
            if !self.lost.load(Ordering::Acquire) {
                hold.confirm();
            }
        }
    }
}

/// The producer's context: client logs and errors as [`crate::kafka::Context`], delivery
/// reports as described above.
pub struct Delivery {
    pub client: crate::kafka::Context,
    pub dead_letters: DeadLetterFile,
    pub metrics: Metrics,
}

impl ClientContext for Delivery {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.client.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.client.error(error, reason);
    }
}

impl ProducerContext for Delivery {
    type DeliveryOpaque = Arc<Chunk>;

    fn delivery(&self, result: &DeliveryResult<'_>, chunk: Arc<Chunk>) {
        self.metrics.in_flight.sub(1);
        match result {
            Ok(_) => {
                self.metrics.delivered.inc();
                self.client.working();
            }
            Err((error, message)) => {
                let key = message.key().map(String::from_utf8_lossy);
                let undelivered = Undelivered {
                    topic: message.topic(),
                    key: key.as_deref(),
                    payload: message.payload().unwrap_or_default(),
                };
                self.dead_letter(&undelivered, error, &chunk);
            }
        }
    }
}

/// A message that could not be delivered, as the dead-letter file keeps it.
pub struct Undelivered<'a> {
    pub topic: &'a str,
    pub key: Option<&'a str>,
    pub payload: &'a [u8],
}

impl Delivery {
    /// Writes an undeliverable message to the dead-letter file with the reason; when that
    /// fails too, its chunk is marked lost (its events count as not delivered).
    pub fn dead_letter(&self, message: &Undelivered<'_>, error: &KafkaError, chunk: &Chunk) {
        let error_type = error_type(error);
        let reason = error.to_string();
        let letter = Letter {
            index: message.topic,
            id: message.key,
            status: 0,
            error_type: &error_type,
            reason: &reason,
            document: message.payload,
        };
        match self.dead_letters.write(&[letter]) {
            Ok(()) => {
                self.metrics.dead_lettered.inc();
                // A broker away past message_timeout (or a shutdown purging the queue) reports
                // every waiting message: log the 1st, 2nd, 4th, 8th, ... with the total.
                let total = self.metrics.dead_lettered.get();
                if total.is_power_of_two() {
                    tracing::warn!(output = %self.client.component, topic = message.topic, error = %reason, dead_lettered = total, "message not delivered; written to the dead-letter file");
                }
            }
            Err(e) => {
                self.metrics.dead_letter_errors.inc();
                tracing::error!(output = %self.client.component, path = %self.dead_letters.path().display(), error = %e, "cannot write the dead-letter file; the events count as not delivered");
                chunk.lose();
            }
        }
    }
}

/// The error's librdkafka code as a type name, e.g. `kafka_message_timed_out`.
pub fn error_type(error: &KafkaError) -> String {
    match error.rdkafka_error_code() {
        Some(code) => format!("kafka_{}", snake(&format!("{code:?}"))),
        None => "kafka_error".to_string(),
    }
}

/// `MessageTimedOut` as `message_timed_out`.
fn snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::RDKafkaErrorCode;
    use tokio::sync::Semaphore;

    #[test]
    fn error_types_name_the_librdkafka_code() {
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert_eq!(error_type(&e), "kafka_message_timed_out");
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert_eq!(error_type(&e), "kafka_message_size_too_large");
    }

    #[test]
    fn a_chunk_confirms_its_hold_when_its_last_message_is_reported() {
        let permits = Arc::new(Semaphore::new(10));
        let (hold, outcome) = Hold::awaitable();
        let chunk = Chunk::new(
            Some(hold),
            permits.clone().try_acquire_many_owned(3).unwrap(),
            Charge::none(),
        );
        let reports: Vec<Arc<Chunk>> = (0..3).map(|_| chunk.clone()).collect();
        drop(chunk);
        assert_eq!(permits.available_permits(), 7, "held until every report");
        drop(reports);
        assert_eq!(permits.available_permits(), 10);
        assert_eq!(outcome.blocking_recv(), Ok(true));

        let (hold, outcome) = Hold::awaitable();
        let chunk = Chunk::new(
            Some(hold),
            permits.clone().try_acquire_many_owned(1).unwrap(),
            Charge::none(),
        );
        chunk.lose();
        drop(chunk);
        assert_eq!(
            outcome.blocking_recv(),
            Ok(false),
            "a lost message fails the hold"
        );
    }
}
