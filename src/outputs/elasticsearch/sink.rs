//! The output task: installs the index template (retrying until the cluster answers), then
//! gathers chunks into bulk requests by count, size and age, keeps at most `max_in_flight`
//! requests running, and sees each one through: resending what the cluster pushed back on with
//! backoff, dead-lettering what it refused, reporting health and metrics.

use super::dead_letter::{DeadLetterFile, Letter};
use super::encoder::split_item;
use super::retry::{self, Verdict};
use super::service::{Reply, Service, TransportError};
use super::{Pending, Settings};
use crate::health::{HealthHandle, Status};
use crate::metrics::{Counter, Gauge, Histogram, LATENCY_BOUNDS};
use crate::BuildContext;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// The output's metrics, registered once.
#[derive(Clone)]
pub struct Metrics {
    pub indexed: Counter,
    /// `create` items answered 409: a document with that `_id` was indexed before.
    pub duplicates: Counter,
    pub dead_lettered: Counter,
    /// Documents lost: not serialisable, or refused and not writable to the dead-letter file.
    pub failed: Counter,
    pub retried_docs: Counter,
    pub retries: Counter,
    pub bulk_ok: Counter,
    pub bulk_partial: Counter,
    pub bulk_retry: Counter,
    pub bulk_unreachable: Counter,
    pub bulk_rejected: Counter,
    pub bulk_seconds: Histogram,
    pub in_flight: Gauge,
    pub queued: Gauge,
    /// Bulk requests started, by what completed them: count, bytes, age, closing.
    flushed: [Counter; 4],
}

impl Metrics {
    pub fn register(id: &str, ctx: &BuildContext) -> Self {
        let m = &ctx.metrics;
        let l = [("output", id)];
        let docs = |outcome: &str, help: &str| {
            m.counter(
                "sheepdog_es_documents_total",
                help,
                &[("output", id), ("outcome", outcome)],
            )
        };
        let bulk = |outcome: &str| {
            m.counter(
                "sheepdog_es_bulk_requests_total",
                "Bulk requests by outcome (ok, partial: some items retried or refused, retry: whole request to resend, unreachable: no answer, rejected: refused whole)",
                &[("output", id), ("outcome", outcome)],
            )
        };
        let docs_help = "Documents by outcome (indexed, duplicate: a create answered 409 because a document with its _id was indexed before, dead_lettered, failed, retried)";
        Metrics {
            indexed: docs("indexed", docs_help),
            duplicates: docs("duplicate", docs_help),
            dead_lettered: docs("dead_lettered", docs_help),
            failed: docs("failed", docs_help),
            retried_docs: docs("retried", docs_help),
            retries: m.counter(
                "sheepdog_es_retries_total",
                "Bulk attempts that were resent after a failure",
                &l,
            ),
            bulk_ok: bulk("ok"),
            bulk_partial: bulk("partial"),
            bulk_retry: bulk("retry"),
            bulk_unreachable: bulk("unreachable"),
            bulk_rejected: bulk("rejected"),
            bulk_seconds: m.histogram(
                "sheepdog_es_bulk_duration_seconds",
                "Time from sending a bulk request to its reply",
                &l,
                LATENCY_BOUNDS,
            ),
            in_flight: m.gauge(
                "sheepdog_es_bulk_in_flight",
                "Bulk requests being sent or awaiting a retry",
                &l,
            ),
            queued: m.gauge(
                "sheepdog_es_queued_events",
                "Events held by the output (queued, in flight or awaiting a retry)",
                &l,
            ),
            flushed: [Flush::Count, Flush::Bytes, Flush::Age, Flush::Closing].map(|f| {
                m.counter(
                    "sheepdog_es_flushes_total",
                    "Bulk requests started, by what completed them (count: batch_max_events, bytes: batch_max_bytes, age: flush_interval, closing: shutdown)",
                    &[("output", id), ("reason", f.label())],
                )
            }),
        }
    }

    fn flushes(&self, why: Flush) -> &Counter {
        &self.flushed[why as usize]
    }
}

/// Everything a bulk task needs, shared.
pub struct Sink {
    id: String,
    settings: Settings,
    service: Arc<Service>,
    metrics: Metrics,
    health: HealthHandle,
    dead_letters: DeadLetterFile,
}

impl Sink {
    pub fn new(
        id: &str,
        settings: Settings,
        service: Arc<Service>,
        metrics: Metrics,
        ctx: &BuildContext,
    ) -> Arc<Self> {
        let dead_letters = DeadLetterFile::new(settings.dead_letter_path.clone());
        Arc::new(Sink {
            id: id.to_string(),
            health: ctx.health.register(format!("output {id}")),
            settings,
            service,
            metrics,
            dead_letters,
        })
    }

    fn jitter() -> f64 {
        rand::random::<f64>()
    }

    async fn pause(&self, attempt: u32) {
        let s = &self.settings;
        tokio::time::sleep(retry::backoff(
            attempt,
            s.backoff_initial,
            s.backoff_max,
            Self::jitter(),
        ))
        .await;
    }

    fn unreachable(&self, e: &TransportError) {
        self.health.set(Status::Down, e.reason.clone());
    }

    /// Makes sure the index template exists before the first document is indexed, so daily
    /// indices get the right mappings. Waits (with backoff) for the cluster to answer.
    async fn install_template(&self) {
        let mut attempt = 0;
        loop {
            let result = match &self.settings.template {
                Some(t) => self.try_install_template(t).await,
                // Nothing to install: a GET / tells whether the cluster is reachable, for /health.
                None => self
                    .service
                    .send(reqwest::Method::GET, "/", None, "")
                    .await
                    .map(|_| ())
                    .map_err(TemplateError::Unreachable),
            };
            match result {
                Ok(()) => {
                    self.health.ok();
                    return;
                }
                Err(TemplateError::Unreachable(e)) => {
                    if attempt == 0 {
                        tracing::warn!(output = %self.id, reason = %e.reason, "Elasticsearch is unreachable; holding events until it answers");
                    }
                    self.unreachable(&e);
                }
                Err(TemplateError::Refused(reason)) => {
                    if retry::is_retryable_status(reason.0) || matches!(reason.0, 401 | 403) {
                        self.health.set(
                            Status::Down,
                            format!("index template install: HTTP {}: {}", reason.0, reason.1),
                        );
                    } else {
                        // A template the cluster will not take is an operator's problem, not a
                        // reason to stop indexing.
                        tracing::error!(output = %self.id, status = reason.0, reason = %reason.1, "index template refused; indexing with the cluster's mappings");
                        self.health.set(
                            Status::Degraded,
                            format!("index template refused: HTTP {}: {}", reason.0, reason.1),
                        );
                        return;
                    }
                }
            }
            self.pause(attempt).await;
            attempt = attempt.saturating_add(1);
        }
    }

    async fn try_install_template(&self, t: &super::TemplateInstall) -> Result<(), TemplateError> {
        let path = format!("/_index_template/{}", t.name);
        if !t.overwrite {
            let reply = self
                .service
                .send(reqwest::Method::HEAD, &path, None, "")
                .await
                .map_err(TemplateError::Unreachable)?;
            match reply.status {
                200 => {
                    tracing::info!(output = %self.id, template = %t.name, "index template already installed; keeping it (template_overwrite = false)");
                    if let Some(policy) = &t.ilm_policy {
                        tracing::warn!(output = %self.id, template = %t.name, ilm_policy = %policy, "ilm_policy is not added to a template that is kept; set template_overwrite = true (once) to install it");
                    }
                    return Ok(());
                }
                404 => {}
                status => return Err(refused(&reply, status)),
            }
        }
        let body = super::template::body(&t.pattern, t.ilm_policy.as_deref());
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let reply = self
            .service
            .send(
                reqwest::Method::PUT,
                &path,
                Some(body.into()),
                "application/json",
            )
            .await
            .map_err(TemplateError::Unreachable)?;
        if (200..300).contains(&reply.status) {
            tracing::info!(output = %self.id, template = %t.name, pattern = %t.pattern, ilm_policy = t.ilm_policy.as_deref().unwrap_or(""), host = %reply.host, "index template installed");
            Ok(())
        } else {
            Err(refused(&reply, reply.status))
        }
    }

    /// Sends one batch until every item is indexed or dead-lettered (or, with `max_retries`,
    /// out of attempts, which dead-letters the rest).
    async fn deliver(self: Arc<Self>, mut batch: Vec<Pending>) {
        self.metrics.in_flight.add(1);
        let joined = Joined::new(&mut batch);
        // Work list: item sets still to send, each within `batch_max_bytes` (a 413 splits one
        // into two); popped from the end, so the first set is last.
        let (mut work, oversize) = joined.partition(self.settings.batch_max_bytes);
        work.reverse();
        if !oversize.is_empty() {
            self.dead_letter_oversize(&oversize, &joined);
        }
        while let Some(items) = work.pop() {
            self.deliver_items(&joined, items, &mut work).await;
        }
        self.metrics.in_flight.sub(1);
        // Every item is indexed or dead-lettered: the events' acknowledgements are confirmed
        // (unless a dead letter could not be written). Dropping `batch` releases the output's
        // capacity for these events.
        let delivered = !joined
            .letters_lost
            .load(std::sync::atomic::Ordering::Relaxed);
        for pending in &mut batch {
            pending.settle(delivered);
        }
        drop(batch);
    }

    /// Sends `items` until each is indexed, dead-lettered or split off into `work`.
    async fn deliver_items(&self, joined: &Joined, mut items: Vec<u32>, work: &mut Vec<Vec<u32>>) {
        let whole_batch = items.len() == joined.len();
        let mut attempt: u32 = 0;
        loop {
            let body = if whole_batch && attempt == 0 {
                joined.bytes.clone()
            } else {
                joined.body_of(&items)
            };
            let started = Instant::now();
            let result = self.service.bulk(body).await;
            self.metrics
                .bulk_seconds
                .observe(started.elapsed().as_secs_f64());
            let reason = match result {
                Err(e) => {
                    self.metrics.bulk_unreachable.inc();
                    self.unreachable(&e);
                    tracing::warn!(output = %self.id, host = %e.host, reason = %e.reason, documents = items.len(), attempt, "bulk request failed; will retry");
                    e.reason
                }
                Ok(reply) => match self.settle(&reply, &mut items, joined, work, attempt) {
                    Attempt::Done => return,
                    Attempt::Resend(reason) => reason,
                },
            };
            if self.out_of_retries(attempt, &reason, &items, joined) {
                return;
            }
            self.metrics.retries.inc();
            self.pause(attempt).await;
            attempt = attempt.saturating_add(1);
        }
    }

    /// Acts on the cluster's answer to a bulk request of `items`: counts the indexed,
    /// dead-letters the refused, splits a request too large, and leaves in `items` what to resend.
    fn settle(
        &self,
        reply: &Reply,
        items: &mut Vec<u32>,
        joined: &Joined,
        work: &mut Vec<Vec<u32>>,
        attempt: u32,
    ) -> Attempt {
        match retry::classify(reply.status, &reply.body, items.len()) {
            Verdict::AllIndexed => {
                self.metrics.bulk_ok.inc();
                self.metrics.indexed.add(items.len() as u64);
                self.health.ok();
                Attempt::Done
            }
            Verdict::Items {
                retry,
                rejected,
                duplicates,
            } => {
                let outcome = ItemOutcome {
                    to_retry: &retry,
                    rejected: &rejected,
                    duplicates,
                };
                self.settle_items(outcome, items, joined, attempt)
            }
            Verdict::RetryAll { reason } => {
                self.metrics.bulk_retry.inc();
                let reason = format!("bulk to {} failed: {reason}", reply.host);
                if reply.status == 429 {
                    self.health.set(Status::Degraded, reason.clone());
                } else {
                    self.health.set(Status::Down, reason.clone());
                }
                tracing::warn!(output = %self.id, status = reply.status, reason = %reason, documents = items.len(), attempt, "bulk request not accepted; will retry");
                Attempt::Resend(reason)
            }
            Verdict::Split if items.len() > 1 => {
                self.metrics.bulk_retry.inc();
                tracing::warn!(output = %self.id, documents = items.len(), "bulk request too large (413); splitting it");
                let second = items.split_off(items.len() / 2);
                work.push(second);
                work.push(std::mem::take(items));
                Attempt::Done
            }
            Verdict::Split => {
                self.metrics.bulk_rejected.inc();
                let reason = "document larger than the cluster's http.max_content_length";
                self.dead_letter(
                    &[(0, 413, "request_entity_too_large", reason)],
                    items,
                    joined,
                );
                Attempt::Done
            }
            Verdict::RejectAll { status, reason } => {
                self.metrics.bulk_rejected.inc();
                tracing::error!(output = %self.id, status, reason = %reason, documents = items.len(), "bulk request refused; dead-lettering its documents");
                let letters: Vec<(usize, u16, &str, &str)> = (0..items.len())
                    .map(|i| (i, status, "bulk_request_refused", reason.as_str()))
                    .collect();
                self.dead_letter(&letters, items, joined);
                Attempt::Done
            }
        }
    }

    /// Acts on per-item results: counts the indexed, dead-letters the refused, and leaves in
    /// `items` those pushed back (positions `to_retry`).
    fn settle_items(
        &self,
        outcome: ItemOutcome<'_>,
        items: &mut Vec<u32>,
        joined: &Joined,
        attempt: u32,
    ) -> Attempt {
        let ItemOutcome {
            to_retry,
            rejected,
            duplicates,
        } = outcome;
        self.metrics.bulk_partial.inc();
        self.health.ok();
        let done = items.len() - to_retry.len() - rejected.len();
        self.metrics.indexed.add((done - duplicates) as u64);
        if duplicates > 0 {
            self.metrics.duplicates.add(duplicates as u64);
        }
        if !rejected.is_empty() {
            let letters: Vec<(usize, u16, &str, &str)> = rejected
                .iter()
                .map(|r| (r.item, r.status, r.error_type.as_str(), r.reason.as_str()))
                .collect();
            self.dead_letter(&letters, items, joined);
        }
        if to_retry.is_empty() {
            return Attempt::Done;
        }
        self.metrics.retried_docs.add(to_retry.len() as u64);
        tracing::warn!(output = %self.id, documents = to_retry.len(), attempt, "Elasticsearch pushed back on some documents; resending them");
        *items = to_retry.iter().map(|&i| items[i]).collect();
        Attempt::Resend(format!("{} documents pushed back", items.len()))
    }

    /// Dead-letters items (positions in `joined`) too large for any bulk request.
    fn dead_letter_oversize(&self, oversize: &[u32], joined: &Joined) {
        let max = self.settings.batch_max_bytes;
        let reasons: Vec<String> = oversize
            .iter()
            .map(|&i| {
                format!(
                    "bulk item of {} bytes is larger than batch_max_bytes ({max} bytes)",
                    joined.item(i).len()
                )
            })
            .collect();
        let letters: Vec<(usize, u16, &str, &str)> = reasons
            .iter()
            .enumerate()
            .map(|(pos, reason)| (pos, 0, "document_too_large", reason.as_str()))
            .collect();
        self.dead_letter(&letters, oversize, joined);
    }

    /// With `max_retries` reached, dead-letters `items` and says so.
    fn out_of_retries(&self, attempt: u32, reason: &str, items: &[u32], joined: &Joined) -> bool {
        let Some(max) = self.settings.max_retries else {
            return false;
        };
        if attempt < max {
            return false;
        }
        let why = format!("gave up after {} attempts: {reason}", attempt + 1);
        tracing::error!(output = %self.id, documents = items.len(), reason = %why, "dead-lettering undelivered documents (max_retries)");
        let letters: Vec<(usize, u16, &str, &str)> = (0..items.len())
            .map(|i| (i, 0, "retries_exhausted", why.as_str()))
            .collect();
        self.dead_letter(&letters, items, joined);
        true
    }

    /// Writes refused items (positions in `items`) to the dead-letter file.
    fn dead_letter(&self, letters: &[(usize, u16, &str, &str)], items: &[u32], joined: &Joined) {
        let parts: Vec<_> = letters
            .iter()
            .map(|&(pos, ..)| split_item(joined.item(items[pos])))
            .collect();
        let lines: Vec<Letter<'_>> = letters
            .iter()
            .zip(&parts)
            .map(|(&(_, status, error_type, reason), p)| Letter {
                index: &p.index,
                id: p.id.as_deref(),
                status,
                error_type,
                reason,
                document: p.document,
            })
            .collect();
        for l in lines.iter().take(3) {
            tracing::warn!(output = %self.id, index = %l.index, status = l.status, error = %l.error_type, reason = %l.reason, "document refused; written to the dead-letter file");
        }
        match self.dead_letters.write(&lines) {
            Ok(()) => self.metrics.dead_lettered.add(lines.len() as u64),
            Err(e) => {
                self.metrics.failed.add(lines.len() as u64);
                joined
                    .letters_lost
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(output = %self.id, path = %self.dead_letters.path().display(), error = %e, documents = lines.len(), "cannot write the dead-letter file; refused documents stay unconfirmed (a persisted queue keeps them)");
            }
        }
    }
}

/// Per-item results of a bulk reply, by position in the request.
struct ItemOutcome<'a> {
    to_retry: &'a [usize],
    rejected: &'a [retry::Rejection],
    /// `create`s answered 409: already indexed.
    duplicates: usize,
}

/// What is left of a bulk request after the cluster's answer.
enum Attempt {
    /// Nothing: every item was indexed, dead-lettered or split off into new work.
    Done,
    /// The items left are to be sent again; why, for the give-up message.
    Resend(String),
}

enum TemplateError {
    Unreachable(TransportError),
    Refused((u16, String)),
}

fn refused(reply: &Reply, status: u16) -> TemplateError {
    TemplateError::Refused((status, retry::error_summary(&reply.body)))
}

/// The documents of one bulk request in one buffer, with the item boundaries that partial
/// retries and dead letters need. Each chunk's bytes are moved in once and freed, so a request
/// in flight holds its documents once (the HTTP client shares the buffer, it does not copy it).
struct Joined {
    bytes: bytes::Bytes,
    ends: Vec<u32>,
    /// Set when refused documents could not be written to the dead-letter store: the batch's
    /// acknowledgements then fail, so a persisted queue keeps the events.
    letters_lost: std::sync::atomic::AtomicBool,
}

impl Joined {
    fn new(batch: &mut [Pending]) -> Self {
        if let [only] = batch {
            let chunk = std::mem::take(&mut only.chunk);
            return Joined {
                bytes: chunk.buf.into(),
                ends: chunk.ends,
                letters_lost: Default::default(),
            };
        }
        let total = batch.iter().map(|p| p.chunk.buf.len()).sum();
        let mut buf = Vec::with_capacity(total);
        let mut ends = Vec::with_capacity(batch.iter().map(|p| p.chunk.len()).sum());
        for p in batch.iter_mut() {
            let chunk = std::mem::take(&mut p.chunk);
            let base = buf.len() as u32;
            ends.extend(chunk.ends.iter().map(|e| base + e));
            buf.extend_from_slice(&chunk.buf);
        }
        Joined {
            bytes: buf.into(),
            ends,
            letters_lost: Default::default(),
        }
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    /// The bytes of item `i` (action line and document line).
    fn item(&self, i: u32) -> &[u8] {
        let i = i as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.bytes[start..self.ends[i] as usize]
    }

    /// The items in order, cut into runs whose bodies stay within `max_bytes`, and apart the
    /// items larger than that on their own.
    fn partition(&self, max_bytes: usize) -> (Vec<Vec<u32>>, Vec<u32>) {
        let mut groups = Vec::new();
        let mut oversize = Vec::new();
        let mut group = Vec::new();
        let mut bytes = 0;
        for i in 0..self.len() as u32 {
            let len = self.item(i).len();
            if len > max_bytes {
                oversize.push(i);
                continue;
            }
            if bytes + len > max_bytes && !group.is_empty() {
                groups.push(std::mem::take(&mut group));
                bytes = 0;
            }
            bytes += len;
            group.push(i);
        }
        if !group.is_empty() {
            groups.push(group);
        }
        (groups, oversize)
    }

    /// A request body of `items` alone, copied out.
    fn body_of(&self, items: &[u32]) -> bytes::Bytes {
        let mut body = Vec::with_capacity(items.iter().map(|&i| self.item(i).len()).sum());
        for &i in items {
            body.extend_from_slice(self.item(i));
        }
        bytes::Bytes::from(body)
    }
}

/// Why gathered chunks go out as a bulk request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// `batch_max_events` reached.
    Count,
    /// `batch_max_bytes` reached.
    Bytes,
    /// The oldest chunk waited `flush_interval`.
    Age,
    /// The pipeline is stopping: nothing more will come.
    Closing,
}

impl Flush {
    fn label(self) -> &'static str {
        match self {
            Flush::Count => "count",
            Flush::Bytes => "bytes",
            Flush::Age => "age",
            Flush::Closing => "closing",
        }
    }
}

/// The limits a bulk request is gathered under.
#[derive(Debug, Clone, Copy)]
struct BatchLimits {
    max_events: usize,
    max_bytes: usize,
    flush_interval: std::time::Duration,
}

/// Chunks waiting to become one bulk request.
struct Gathering {
    chunks: Vec<Pending>,
    /// A chunk that would have taken the request past `max_bytes`: it starts the next one.
    held: Option<Pending>,
    events: usize,
    bytes: usize,
    /// When the oldest chunk arrived.
    since: tokio::time::Instant,
}

impl Gathering {
    fn new() -> Self {
        Gathering {
            chunks: Vec::new(),
            held: None,
            events: 0,
            bytes: 0,
            since: tokio::time::Instant::now(),
        }
    }

    /// Adds a chunk, or holds it for the next request when it would take this one past
    /// `max_bytes` (bulk bodies stay within it; a chunk larger on its own is cut up when sent).
    fn offer(&mut self, p: Pending, limits: &BatchLimits) {
        if !self.chunks.is_empty() && self.bytes + p.chunk.buf.len() > limits.max_bytes {
            self.held = Some(p);
        } else {
            self.push(p);
        }
    }

    fn push(&mut self, p: Pending) {
        if self.chunks.is_empty() {
            self.since = tokio::time::Instant::now();
        }
        self.events += p.chunk.len();
        self.bytes += p.chunk.buf.len();
        self.chunks.push(p);
    }

    /// Whether the gathered chunks should be sent at `now`, and why. Pure, so the batching
    /// policy is tested without a cluster or a clock.
    fn due(&self, limits: &BatchLimits, now: tokio::time::Instant, open: bool) -> Option<Flush> {
        if self.chunks.is_empty() {
            None
        } else if self.events >= limits.max_events {
            Some(Flush::Count)
        } else if self.bytes >= limits.max_bytes || self.held.is_some() {
            Some(Flush::Bytes)
        } else if !open {
            Some(Flush::Closing)
        } else if now.saturating_duration_since(self.since) >= limits.flush_interval {
            Some(Flush::Age)
        } else {
            None
        }
    }

    fn take(&mut self) -> Vec<Pending> {
        self.events = 0;
        self.bytes = 0;
        let taken = std::mem::take(&mut self.chunks);
        if let Some(held) = self.held.take() {
            self.push(held);
        }
        taken
    }
}

/// Runs until every `submit` handle is gone and everything received has been dealt with.
pub async fn run(sink: Arc<Sink>, mut rx: mpsc::Receiver<Pending>) {
    // The template goes in before the first bulk. If the pipeline stops while Elasticsearch is
    // still unreachable and nothing was ever queued, there is nothing to wait for.
    let install = sink.install_template();
    tokio::pin!(install);
    loop {
        tokio::select! {
            _ = &mut install => break,
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                if rx.is_closed() && rx.is_empty() {
                    tracing::info!(output = %sink.id, "stopping before Elasticsearch answered; nothing was queued");
                    return;
                }
            }
        }
    }
    let s = &sink.settings;
    let limits = BatchLimits {
        max_events: s.batch_max_events,
        max_bytes: s.batch_max_bytes,
        flush_interval: s.flush_interval,
    };
    let mut gathering = Gathering::new();
    let mut in_flight: JoinSet<()> = JoinSet::new();
    let mut open = true;
    while open || !gathering.chunks.is_empty() {
        if let Some(why) = gathering.due(&limits, tokio::time::Instant::now(), open) {
            while in_flight.len() >= s.max_in_flight {
                reap(&sink, in_flight.join_next().await);
            }
            sink.metrics.flushes(why).inc();
            in_flight.spawn(sink.clone().deliver(gathering.take()));
            continue;
        }
        let flush_at = gathering.since + s.flush_interval;
        tokio::select! {
            done = in_flight.join_next(), if !in_flight.is_empty() => reap(&sink, done),
            msg = rx.recv(), if open => match msg {
                Some(p) => gathering.offer(p, &limits),
                None => open = false,
            },
            _ = tokio::time::sleep_until(flush_at), if !gathering.chunks.is_empty() => {}
        }
    }
    while let Some(done) = in_flight.join_next().await {
        reap(&sink, Some(done));
    }
    tracing::info!(output = %sink.id, "elasticsearch output flushed");
}

fn reap(sink: &Sink, done: Option<Result<(), tokio::task::JoinError>>) {
    if let Some(Err(e)) = done {
        tracing::error!(output = %sink.id, error = %e, "bulk task failed");
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Chunk, Encoder};
    use super::*;
    use crate::event::Event;
    use std::path::Path;
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::Semaphore;
    use tokio_util::sync::CancellationToken;

    type Seen = Arc<Mutex<Vec<(String, String)>>>;

    fn pending(events: usize, bytes_each: usize, permits: &Arc<Semaphore>) -> Pending {
        let chunk = super::super::Chunk {
            buf: vec![b'x'; events * bytes_each],
            ends: (1..=events).map(|i| (i * bytes_each) as u32).collect(),
        };
        Pending::new(
            chunk,
            permits
                .clone()
                .try_acquire_many_owned(events as u32)
                .unwrap(),
            Gauge::default(),
        )
    }

    #[test]
    fn a_batch_goes_out_by_count_bytes_age_or_shutdown_whichever_comes_first() {
        let limits = BatchLimits {
            max_events: 5000,
            max_bytes: 1 << 20,
            flush_interval: Duration::from_millis(50),
        };
        let permits = Arc::new(Semaphore::new(100_000));
        let t0 = tokio::time::Instant::now();
        let mut g = Gathering::new();
        assert_eq!(
            g.due(&limits, t0 + Duration::from_secs(9), true),
            None,
            "empty"
        );
        assert_eq!(g.due(&limits, t0, false), None, "empty, closing");

        // 1000 events of 100 bytes: neither limit is reached, so only age sends them.
        g.push(pending(1000, 100, &permits));
        let since = g.since;
        assert_eq!(g.due(&limits, since, true), None);
        assert_eq!(
            g.due(&limits, since + Duration::from_millis(49), true),
            None
        );
        assert_eq!(
            g.due(&limits, since + Duration::from_millis(50), true),
            Some(Flush::Age),
            "the count is not reached, the age is"
        );
        assert_eq!(g.due(&limits, since, false), Some(Flush::Closing));

        // A later chunk does not restart the clock: age counts from the oldest.
        g.push(pending(1000, 100, &permits));
        assert_eq!(g.since, since);
        assert_eq!(
            g.due(&limits, since + Duration::from_millis(50), true),
            Some(Flush::Age)
        );
        g.push(pending(3000, 100, &permits));
        assert_eq!(g.due(&limits, since, true), Some(Flush::Count));
        assert_eq!(g.take().len(), 3);
        assert_eq!((g.events, g.bytes), (0, 0));
        assert_eq!(
            permits.available_permits(),
            100_000,
            "taken chunks were dropped"
        );

        // 10 events of 200 KB: the bytes limit before the count.
        g.push(pending(10, 200 * 1024, &permits));
        assert_eq!(g.due(&limits, g.since, true), Some(Flush::Bytes));
    }

    #[test]
    fn joined_chunks_keep_their_items_and_free_the_chunk_buffers() {
        let permits = Arc::new(Semaphore::new(100));
        let queued = Gauge::default();
        let chunk = |items: &[&str]| {
            let mut c = super::super::Chunk::default();
            for i in items {
                c.buf.extend_from_slice(i.as_bytes());
                c.ends.push(c.buf.len() as u32);
            }
            c
        };
        let mut batch = vec![
            Pending::new(
                chunk(&["a1\nd1\n", "a2\nd2\n"]),
                permits.clone().try_acquire_many_owned(2).unwrap(),
                queued.clone(),
            ),
            Pending::new(
                chunk(&["a3\nd33\n"]),
                permits.clone().try_acquire_many_owned(1).unwrap(),
                queued.clone(),
            ),
        ];
        assert_eq!(queued.get(), 3);
        let joined = Joined::new(&mut batch);
        assert_eq!(&joined.bytes[..], b"a1\nd1\na2\nd2\na3\nd33\n");
        let items: Vec<&[u8]> = (0..joined.len() as u32).map(|i| joined.item(i)).collect();
        assert_eq!(items, [&b"a1\nd1\n"[..], b"a2\nd2\n", b"a3\nd33\n"]);
        assert!(
            batch.iter().all(|p| p.chunk.buf.capacity() == 0),
            "chunk bytes freed"
        );
        assert_eq!(queued.get(), 3, "still held until delivered");
        assert_eq!(permits.available_permits(), 97);
        drop(batch);
        assert_eq!(queued.get(), 0);
        assert_eq!(permits.available_permits(), 100);

        let mut one = vec![Pending::new(
            chunk(&["x\ny\n"]),
            permits.clone().try_acquire_many_owned(1).unwrap(),
            queued.clone(),
        )];
        let joined = Joined::new(&mut one);
        assert_eq!((joined.len(), joined.item(0)), (1, &b"x\ny\n"[..]));
    }

    #[test]
    fn default_flush_interval_keeps_a_slow_stream_well_under_a_second() {
        let c: super::super::Config =
            toml::from_str("hosts = \"http://es:9200\"\nindex = \"x\"").unwrap();
        assert_eq!(c.flush_interval, Duration::from_millis(50));
        assert_eq!(c.batch_max_events, 2000);
    }

    /// A cluster that answers from a script: each request takes the next reply whose path
    /// matches, and every request line and body is recorded.
    async fn scripted_cluster(script: Vec<(&'static str, u16, String)>) -> (String, Seen) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Seen = Arc::default();
        let script = Arc::new(Mutex::new(script));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut raw = Vec::new();
                let mut buf = [0u8; 65536];
                let (head, body) = loop {
                    let n = sock.read(&mut buf).await.unwrap();
                    raw.extend_from_slice(&buf[..n]);
                    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&raw[..end]).to_string();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    while raw.len() < end + 4 + len {
                        let n = sock.read(&mut buf).await.unwrap();
                        raw.extend_from_slice(&buf[..n]);
                    }
                    break (
                        head,
                        String::from_utf8_lossy(&raw[end + 4..end + 4 + len]).to_string(),
                    );
                };
                let line = head.lines().next().unwrap().to_string();
                record.lock().unwrap().push((line.clone(), body));
                let (status, reply) = {
                    let mut script = script.lock().unwrap();
                    let i = script
                        .iter()
                        .position(|(p, ..)| line.contains(p))
                        .unwrap_or_else(|| panic!("unscripted request {line}"));
                    let (_, s, r) = script.remove(i);
                    (s, r)
                };
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                    reply.len()
                );
                let _ = sock.write_all(response.as_bytes()).await;
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn a_trickle_is_sent_by_age_while_the_output_stays_open() {
        let (url, seen) = scripted_cluster(vec![
            ("HEAD /_index_template/logs ", 200, String::new()),
            ("POST /_bulk ", 200, r#"{"errors":false,"items":[]}"#.into()),
        ])
        .await;
        let dir = tempfile::tempdir().unwrap();
        // Default batching: 2000 events or 50 ms.
        let (sink, metrics, _) = sink_for(&url, "", dir.path());
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(run(sink, rx));
        let permits = Arc::new(Semaphore::new(10));
        let sent = Instant::now();
        tx.send(pending(3, 10, &permits)).await.unwrap();
        let deadline = sent + Duration::from_secs(5);
        while metrics.indexed.get() < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = sent.elapsed();
        assert_eq!(metrics.indexed.get(), 3, "the bulk never went out");
        assert!(
            took < Duration::from_millis(600),
            "3 events waited {took:?} for a 2000-event batch; the 50 ms age should send them"
        );
        assert_eq!(metrics.flushes(Flush::Age).get(), 1);
        assert_eq!(seen.lock().unwrap().len(), 2);
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    /// A sink for an index `logs-%{+YYYY.MM.dd}` on the cluster at `url`, with `extra`
    /// configuration lines, its metrics and an encoder for its index.
    fn sink_for(url: &str, extra: &str, data_dir: &Path) -> (Arc<Sink>, Metrics, Encoder) {
        let config: super::super::Config = toml::from_str(&format!(
            "hosts = \"{url}\"\nindex = \"logs-%{{+YYYY.MM.dd}}\"\n{extra}"
        ))
        .unwrap();
        let ctx = BuildContext::new(data_dir.to_path_buf(), CancellationToken::new());
        let settings = config.settings(&ctx).unwrap_or_else(|p| panic!("{p:?}"));
        let service = Arc::new(Service::new(&settings.service).unwrap());
        let metrics = Metrics::register("es", &ctx);
        let encoder = Encoder::new(settings.index.clone());
        let sink = Sink::new("es", settings, service, metrics.clone(), &ctx);
        (sink, metrics, encoder)
    }

    /// A bulk reply for three items: indexed, pushed back (429), refused (400).
    fn partial_bulk_reply() -> String {
        let item = |status: u16, error: &str| {
            format!(r#"{{"index":{{"_index":"logs-2026.11.27","status":{status}{error}}}}}"#)
        };
        format!(
            r#"{{"errors":true,"items":[{},{},{}]}}"#,
            item(201, ""),
            item(
                429,
                r#","error":{"type":"es_rejected_execution_exception","reason":"queue full"}"#
            ),
            item(
                400,
                r#","error":{"type":"mapper_parsing_exception","reason":"failed to parse field [n]"}"#
            ),
        )
    }

    /// Three events `{"n": 0..3}` encoded into one chunk.
    fn three_event_chunk(encoder: &Encoder) -> Chunk {
        let events: Vec<Event> = (0..3)
            .map(|i| {
                let mut m = serde_json::Map::new();
                m.insert("n".into(), i.into());
                Event::from_map(m, 1_795_774_502_123)
            })
            .collect();
        let refs: Vec<&Event> = events.iter().collect();
        let mut chunk = Chunk::default();
        encoder.encode(&refs, &mut chunk);
        chunk
    }

    #[tokio::test]
    async fn resends_only_pushed_back_items_and_dead_letters_refused_ones() {
        let first = partial_bulk_reply();
        let (url, seen) = scripted_cluster(vec![
            ("HEAD /_index_template/logs ", 404, String::new()),
            (
                "PUT /_index_template/logs ",
                200,
                r#"{"acknowledged":true}"#.into(),
            ),
            ("POST /_bulk ", 200, first),
            ("POST /_bulk ", 200, r#"{"errors":false,"items":[]}"#.into()),
        ])
        .await;
        let dir = tempfile::tempdir().unwrap();
        let extra = "retry_initial_backoff = \"10ms\"\nflush_interval = \"10ms\"";
        let (sink, metrics, encoder) = sink_for(&url, extra, dir.path());
        let chunk = three_event_chunk(&encoder);
        let expected_retry = String::from_utf8(chunk.item(1).to_vec()).unwrap();
        let full = String::from_utf8(chunk.buf.clone()).unwrap();
        let permits = Arc::new(Semaphore::new(10));
        let (tx, rx) = mpsc::channel(4);
        tx.send(Pending::new(
            chunk,
            permits.clone().acquire_many_owned(3).await.unwrap(),
            metrics.queued.clone(),
        ))
        .await
        .unwrap();
        drop(tx);
        tokio::time::timeout(Duration::from_secs(10), run(sink, rx))
            .await
            .expect("the sink finishes once its queue is closed and flushed");

        let seen = seen.lock().unwrap().clone();
        let lines: Vec<&str> = seen.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            lines,
            [
                "HEAD /_index_template/logs HTTP/1.1",
                "PUT /_index_template/logs HTTP/1.1",
                "POST /_bulk HTTP/1.1",
                "POST /_bulk HTTP/1.1"
            ]
        );
        assert!(
            seen[1].1.contains(r#""index_patterns":["logs-*"]"#),
            "{}",
            seen[1].1
        );
        assert_eq!(seen[2].1, full);
        assert_eq!(seen[3].1, expected_retry, "only the 429 item is resent");
        assert_eq!(metrics.indexed.get(), 2);
        assert_eq!(metrics.retried_docs.get(), 1);
        assert_eq!(metrics.dead_lettered.get(), 1);
        assert_eq!(metrics.queued.get(), 0);
        assert_eq!(permits.available_permits(), 10, "capacity is released");
        let letters = std::fs::read_to_string(dir.path().join("dead_letter.ndjson")).unwrap();
        let letter: serde_json::Value = serde_json::from_str(letters.trim()).unwrap();
        assert_eq!(letter["document"]["n"], 2);
        assert_eq!(letter["error"]["reason"], "failed to parse field [n]");
    }

    #[tokio::test]
    async fn ilm_policy_is_sent_in_the_installed_template() {
        let (url, seen) = scripted_cluster(vec![
            ("HEAD /_index_template/logs ", 404, String::new()),
            (
                "PUT /_index_template/logs ",
                200,
                r#"{"acknowledged":true}"#.into(),
            ),
        ])
        .await;
        let dir = tempfile::tempdir().unwrap();
        let (sink, _, _) = sink_for(&url, "ilm_policy = \"logs-30d\"", dir.path());
        tokio::time::timeout(Duration::from_secs(10), sink.install_template())
            .await
            .unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[1].0, "PUT /_index_template/logs HTTP/1.1");
        let body: serde_json::Value = serde_json::from_str(&seen[1].1).unwrap();
        assert_eq!(
            body["template"]["settings"]["index"]["lifecycle"]["name"],
            "logs-30d"
        );
    }

    #[test]
    fn a_chunk_that_would_pass_the_byte_limit_starts_the_next_request() {
        let limits = BatchLimits {
            max_events: 5000,
            max_bytes: 1000,
            flush_interval: Duration::from_secs(60),
        };
        let permits = Arc::new(Semaphore::new(1000));
        let mut g = Gathering::new();
        g.offer(pending(6, 100, &permits), &limits);
        assert_eq!(g.due(&limits, g.since, true), None);
        // 600 + 500 > 1000: sent as it is, the new chunk held for the next request.
        g.offer(pending(5, 100, &permits), &limits);
        assert_eq!(g.due(&limits, g.since, true), Some(Flush::Bytes));
        let first = g.take();
        assert_eq!((first.len(), first[0].chunk.len()), (1, 6));
        assert_eq!((g.chunks.len(), g.events, g.bytes), (1, 5, 500));
        assert_eq!(g.due(&limits, g.since, true), None);
        // A chunk over the limit on its own goes alone when the gathering is empty.
        let mut g = Gathering::new();
        g.offer(pending(3, 500, &permits), &limits);
        assert_eq!(g.due(&limits, g.since, true), Some(Flush::Bytes));
        assert_eq!(g.take().len(), 1);
        assert!(g.chunks.is_empty() && g.held.is_none());
    }

    #[test]
    fn requests_are_cut_within_the_byte_limit_and_larger_items_set_apart() {
        let mut c = super::super::Chunk::default();
        for len in [300, 300, 300, 1200, 500, 1000, 1] {
            c.buf.extend(std::iter::repeat_n(b'x', len));
            c.ends.push(c.buf.len() as u32);
        }
        let permits = Arc::new(Semaphore::new(100));
        let mut batch = vec![Pending::new(
            c,
            permits.clone().try_acquire_many_owned(7).unwrap(),
            Gauge::default(),
        )];
        let joined = Joined::new(&mut batch);
        let (groups, oversize) = joined.partition(1000);
        assert_eq!(groups, [vec![0, 1, 2], vec![4], vec![5], vec![6]]);
        assert_eq!(oversize, [3]);
        for g in &groups {
            assert!(joined.body_of(g).len() <= 1000);
        }
        let (groups, oversize) = joined.partition(usize::MAX);
        assert_eq!((groups.len(), oversize.len()), (1, 0));
    }

    #[tokio::test]
    async fn a_document_larger_than_a_bulk_request_goes_to_the_dead_letter_file() {
        let (url, seen) = scripted_cluster(vec![
            ("HEAD /_index_template/logs ", 200, String::new()),
            ("POST /_bulk ", 200, r#"{"errors":false,"items":[]}"#.into()),
        ])
        .await;
        let dir = tempfile::tempdir().unwrap();
        let (sink, metrics, encoder) = sink_for(&url, "batch_max_bytes = 300", dir.path());
        let events: Vec<Event> = ["small", &"x".repeat(400), "small too"]
            .iter()
            .map(|m| Event::from_message(*m, 1_795_774_502_123))
            .collect();
        let refs: Vec<&Event> = events.iter().collect();
        let mut chunk = Chunk::default();
        encoder.encode(&refs, &mut chunk);
        let permits = Arc::new(Semaphore::new(10));
        let (tx, rx) = mpsc::channel(4);
        tx.send(Pending::new(
            chunk,
            permits.clone().acquire_many_owned(3).await.unwrap(),
            metrics.queued.clone(),
        ))
        .await
        .unwrap();
        drop(tx);
        tokio::time::timeout(Duration::from_secs(10), run(sink, rx))
            .await
            .unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert!(seen[1].1.contains("\"small\"") && seen[1].1.contains("\"small too\""));
        assert!(seen[1].1.len() <= 300, "{}", seen[1].1.len());
        assert_eq!((metrics.indexed.get(), metrics.dead_lettered.get()), (2, 1));
        let letters = std::fs::read_to_string(dir.path().join("dead_letter.ndjson")).unwrap();
        let letter: serde_json::Value = serde_json::from_str(letters.trim()).unwrap();
        assert_eq!(letter["error"]["type"], "document_too_large");
        assert!(
            letter["error"]["reason"]
                .as_str()
                .unwrap()
                .ends_with("is larger than batch_max_bytes (300 bytes)"),
            "{letter}"
        );
        assert_eq!(letter["document"]["message"].as_str().unwrap().len(), 400);
    }
}
