//! The consuming task: fetch a batch, decode it, queue it with a hold that settles its offset
//! ranges, commit what is delivered every `commit_interval`; the consumer's context keeps the
//! offset tracker in step with rebalances.

use super::offsets::{Partition, Ticket, Tracker};
use super::Config;
use crate::ack::Hold;
use crate::budget::{self, Use};
use crate::event::Event;
use crate::inputs::http::{Decoder, Documents};
use crate::metrics::{Counter, Gauge};
use crate::queue::{QueueError, QueueSender};
use crate::BuildContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The offset tracker, shared by the consuming task, the rebalance callbacks (on the task's
/// thread, inside `recv`) and the settlement callbacks (wherever the last output confirms). A
/// std mutex: every use is a few map operations, never across an await.
type Shared = Arc<Mutex<Tracker>>;

fn lock(tracker: &Shared) -> std::sync::MutexGuard<'_, Tracker> {
    tracker.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone)]
struct Metrics {
    messages: Counter,
    events_in: Counter,
    parse_failures: Counter,
    commits: Counter,
    commit_errors: Counter,
    undelivered: Counter,
    rebalances: Counter,
    assigned: Gauge,
}

impl Metrics {
    fn register(r: &crate::metrics::Registry, id: &str) -> Metrics {
        let labels = [("input", id)];
        Metrics {
            messages: r.counter("sheepdog_kafka_consumed_messages_total", "Kafka messages consumed", &labels),
            events_in: r.counter("sheepdog_input_events_total", "Events accepted into the queue", &labels),
            parse_failures: r.counter("sheepdog_input_parse_failures_total", "Lines or bodies that were not JSON objects", &labels),
            commits: r.counter("sheepdog_kafka_commits_total", "Offset commits of delivered messages (one per partition moved)", &labels),
            commit_errors: r.counter("sheepdog_kafka_commit_errors_total", "Offset commits the group coordinator refused or that failed", &labels),
            undelivered: r.counter("sheepdog_kafka_undelivered_batches_total", "Batches whose events were not all delivered: their partition commits nothing more until it is reassigned", &labels),
            rebalances: r.counter("sheepdog_kafka_rebalances_total", "Partition assignments and revocations", &labels),
            assigned: r.gauge("sheepdog_kafka_assigned_partitions", "Partitions this consumer owns in its group", &labels),
        }
    }
}

/// The consumer's context: client logs and errors, and rebalances applied to the tracker.
struct Context {
    client: crate::kafka::Context,
    tracker: Shared,
    metrics: Metrics,
    /// Longest a revocation waits for the revoked partitions' batches in flight.
    drain_wait: Duration,
}

impl ClientContext for Context {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.client.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.client.error(error, reason);
    }
}

impl Context {
    /// Waits (up to `rebalance_drain_wait`) until the batches in flight from `revoked` are
    /// settled, so their offsets are committed before the partitions go and the next owner
    /// does not consume them again. It runs inside the consumer's poll on a runtime thread:
    /// `block_in_place` hands that thread's other tasks (the outputs confirming these very
    /// batches among them) to the rest of the runtime meanwhile.
    fn drain(&self, revoked: &[Partition]) {
        let pending = || {
            let tracker = lock(&self.tracker);
            revoked
                .iter()
                .map(|p| tracker.in_flight_in(p))
                .sum::<usize>()
        };
        if self.drain_wait.is_zero() || pending() == 0 {
            return;
        }
        let wait = || {
            let deadline = std::time::Instant::now() + self.drain_wait;
            while pending() > 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(wait);
        } else {
            wait();
        }
        let left = pending();
        if left > 0 {
            tracing::info!(input = %self.client.component, batches = left, "partitions revoked with batches in flight; their next owner consumes them again");
        }
    }
}

impl ConsumerContext for Context {
    /// Before partitions go: commit what is delivered for them (synchronously, so the next
    /// owner starts there) and forget the rest.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        self.metrics.rebalances.inc();
        let revoked: Vec<Partition> = list
            .elements()
            .iter()
            .map(|e| (Arc::from(e.topic()), e.partition()))
            .collect();
        self.drain(&revoked);
        let mut commits = Vec::new();
        {
            let mut tracker = lock(&self.tracker);
            for partition in revoked {
                if let Some(offset) = tracker.revoke(&partition) {
                    commits.push((partition, offset));
                }
            }
            self.metrics.assigned.set(tracker.assigned() as i64);
        }
        tracing::info!(input = %self.client.component, revoked = list.count(), committing = commits.len(), "kafka partitions revoked");
        commit(
            consumer,
            &commits,
            CommitMode::Sync,
            &self.metrics,
            &self.client.component,
        );
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(list) = rebalance else {
            return;
        };
        self.metrics.rebalances.inc();
        let mut tracker = lock(&self.tracker);
        for elem in list.elements() {
            tracker.assign((Arc::from(elem.topic()), elem.partition()));
        }
        self.metrics.assigned.set(tracker.assigned() as i64);
        let partitions: Vec<String> = list
            .elements()
            .iter()
            .map(|e| format!("{}[{}]", e.topic(), e.partition()))
            .collect();
        tracing::info!(input = %self.client.component, assigned = ?partitions, "kafka partitions assigned");
        self.client.working();
    }
}

/// Commits the positions in `commits`; a failure is logged and counted (the positions are
/// committed again with the next ones, or the messages consumed again).
fn commit<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    commits: &[(Partition, i64)],
    mode: CommitMode,
    metrics: &Metrics,
    component: &str,
) {
    if commits.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::with_capacity(commits.len());
    for ((topic, partition), offset) in commits {
        if let Err(e) = list.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            tracing::warn!(input = component, error = %e, "bad commit position");
        }
    }
    match consumer.commit(&list, mode) {
        Ok(()) => metrics.commits.add(commits.len() as u64),
        Err(e) => {
            metrics.commit_errors.inc();
            tracing::warn!(input = component, error = %e, "kafka offset commit failed; the messages after the last commit will be consumed again if the partition moves");
        }
    }
}

/// A running kafka input.
pub struct Input {
    consumer: StreamConsumer<Context>,
    tracker: Shared,
    queue: QueueSender,
    source: Arc<str>,
    tags: Vec<String>,
    budget: budget::MemoryBudget,
    metrics: Metrics,
    shutdown: CancellationToken,
    batch_max: usize,
    batch_wait: Duration,
    commit_interval: Duration,
    shutdown_wait: Duration,
}

/// A batch being gathered: its events and, per partition, the last offset in it.
#[derive(Default)]
struct Gathered {
    events: Vec<Event>,
    messages: usize,
    bytes: usize,
    /// A batch holds a few partitions: a short list, searched without allocating per message.
    last: Vec<(Partition, i64)>,
}

impl Gathered {
    /// `offset` is the last offset of `topic`'s `partition` in the batch so far.
    fn record(&mut self, topic: &str, partition: i32, offset: i64) {
        match self
            .last
            .iter_mut()
            .find(|((t, p), _)| *p == partition && &**t == topic)
        {
            Some((_, last)) => *last = offset,
            None => self.last.push(((Arc::from(topic), partition), offset)),
        }
    }
}

impl Input {
    pub fn new(
        config: &Config,
        id: &str,
        ctx: &BuildContext,
        queue: QueueSender,
    ) -> anyhow::Result<Input> {
        let tracker: Shared = Arc::default();
        let metrics = Metrics::register(&ctx.metrics, id);
        let context = Context {
            client: crate::kafka::Context::new(
                id.to_string(),
                ctx.health
                    .register(format!("input {id} kafka {}", config.brokers.join(","))),
            ),
            tracker: tracker.clone(),
            metrics: metrics.clone(),
            drain_wait: config.rebalance_drain_wait,
        };
        let consumer: StreamConsumer<Context> = config
            .consumer_config()
            .create_with_context(context)
            .map_err(|e| anyhow::anyhow!("input `{id}`: cannot create the Kafka consumer: {e}"))?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| anyhow::anyhow!("input `{id}`: cannot subscribe to {topics:?}: {e}"))?;
        Ok(Input {
            consumer,
            tracker,
            queue,
            source: Arc::from(id),
            tags: config.tags.clone(),
            budget: ctx.budget.clone(),
            metrics,
            shutdown: ctx.shutdown.clone(),
            batch_max: config.batch_max_messages,
            batch_wait: config.batch_max_wait,
            commit_interval: config.commit_interval,
            shutdown_wait: config.shutdown_commit_wait,
        })
    }

    /// Consumes until shutdown, then commits what its events' delivery allows.
    pub async fn run(self) {
        let mut commit_tick = tokio::time::interval(self.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                _ = commit_tick.tick() => {
                    self.commit_delivered(CommitMode::Async);
                    continue;
                }
                message = self.consumer.recv() => message,
            };
            let mut batch = Gathered::default();
            match first {
                Ok(message) => self.add(&mut batch, &message),
                Err(e) => {
                    self.fetch_error(e).await;
                    continue;
                }
            }
            self.gather(&mut batch).await;
            if !self.dispatch(batch).await {
                break;
            }
        }
        self.finish().await;
    }

    /// Adds messages to `batch` until it is full or `batch_max_wait` has passed.
    async fn gather(&self, batch: &mut Gathered) {
        let deadline = tokio::time::Instant::now() + self.batch_wait;
        while batch.messages < self.batch_max {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(message)) => self.add(batch, &message),
                Ok(Err(e)) => {
                    self.fetch_error(e).await;
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// A failed fetch (no broker reachable, a topic gone): logged, and a pause before the next.
    async fn fetch_error(&self, error: KafkaError) {
        tracing::warn!(input = %self.source, error = %error, "kafka fetch failed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Decodes one message into `batch`: its documents become events with the message's
    /// coordinates in `[@metadata][kafka]` and the input's tags.
    fn add(&self, batch: &mut Gathered, message: &BorrowedMessage<'_>) {
        self.metrics.messages.inc();
        self.consumer.context().client.working();
        let payload = message.payload().unwrap_or_default();
        let kafka = metadata(message);
        let docs = Documents::new(payload);
        let mut decoder = Decoder::new(docs.body(), crate::event::now_ms());
        let before = batch.events.len();
        for doc in docs {
            batch.bytes += budget::event_bytes(doc.len());
            let event = decoder.event(doc);
            batch.events.push(self.decorated(event, &kafka));
        }
        if batch.events.len() == before {
            // An empty payload is still a message: it becomes an empty event tagged
            // `_jsonparsefailure`, so nothing consumed disappears unseen.
            let event = crate::inputs::http::parse_object(
                b"",
                crate::event::now_ms(),
                &mut decoder.failures,
            );
            batch.events.push(self.decorated(event, &kafka));
        }
        self.metrics.parse_failures.add(decoder.failures);
        batch.messages += 1;
        batch.record(message.topic(), message.partition(), message.offset());
    }

    /// `event` with `[@metadata][kafka]` and the input's tags.
    fn decorated(&self, mut event: Event, kafka: &Value) -> Event {
        event.metadata_mut().insert("kafka", kafka.clone());
        for tag in &self.tags {
            event.add_tag(tag);
        }
        event
    }

    /// Queues the batch with a hold that settles its offset ranges; waits for room (fetching
    /// nothing meanwhile). `false` when the pipeline is closing.
    async fn dispatch(&self, batch: Gathered) -> bool {
        let tickets: Vec<Ticket> = {
            let mut tracker = lock(&self.tracker);
            batch
                .last
                .iter()
                .filter_map(|(partition, last)| tracker.dispatch(partition, *last))
                .collect()
        };
        let tracker = self.tracker.clone();
        let undelivered = self.metrics.undelivered.clone();
        let hold = Hold::new(move |ok| {
            if !ok {
                undelivered.inc();
            }
            let mut tracker = lock(&tracker);
            for ticket in &tickets {
                tracker.settle(ticket, ok);
            }
        });
        let n = batch.events.len();
        let charge = tokio::select! {
            _ = self.shutdown.cancelled() => return false,
            charge = self.budget.charge(batch.bytes.min(self.budget.limit()), Use::Queue) => charge,
        };
        let Ok(mut charge) = charge else {
            return false;
        };
        match self
            .queue
            .send_held(&self.source, batch.events, &mut charge, Some(hold))
            .await
        {
            Ok(()) => {
                self.metrics.events_in.add(n as u64);
                true
            }
            Err(QueueError::Closed(_) | QueueError::Full(_)) => false,
        }
    }

    /// Commits every position that moved.
    fn commit_delivered(&self, mode: CommitMode) {
        let commits = lock(&self.tracker).take_commits();
        commit(&self.consumer, &commits, mode, &self.metrics, &self.source);
    }

    /// At shutdown: lets go of the queue (so the workers can drain it), waits up to
    /// `shutdown_commit_wait` for the events in flight to be delivered, commits, and leaves
    /// the group.
    async fn finish(self) {
        let Input {
            consumer,
            tracker,
            queue,
            metrics,
            source,
            shutdown_wait,
            ..
        } = self;
        drop(queue);
        let deadline = tokio::time::Instant::now() + shutdown_wait;
        while lock(&tracker).in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = lock(&tracker).in_flight();
        if left > 0 {
            tracing::warn!(input = %source, batches = left, "kafka input stopping with batches not yet delivered; their messages will be consumed again");
        }
        let commits = lock(&tracker).take_commits();
        commit(&consumer, &commits, CommitMode::Sync, &metrics, &source);
        consumer.unsubscribe();
        consumer.context().client.stopped();
        tracing::info!(input = %source, "kafka input stopped");
    }
}

/// `[@metadata][kafka]`: where the message came from.
fn metadata(message: &BorrowedMessage<'_>) -> Value {
    let key = message
        .key()
        .map(|k| String::from_utf8_lossy(k).into_owned());
    json!({
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
        "key": key,
        "timestamp": message.timestamp().to_millis(),
    })
}
