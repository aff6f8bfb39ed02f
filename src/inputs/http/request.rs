//! One request: refused early by method, credentials, announced size or the cap on requests in
//! progress; its body read and inflated under the memory budget (charged as it grows, the
//! allocation before it is made); its documents decoded and queued a chunk at a time as room
//! appears, each chunk's events charged and handed to the queue with their charge.
//!
//! The answer comes within `body_read_timeout` (time the client takes to send the body) plus
//! `queue_wait` (time spent waiting for queue or budget room, summed over the whole request)
//! plus the time to inflate and decode at most `max_body_size`. A body refused part-way had
//! its leading `X-Sheepdog-Accepted` events queued: they will be delivered, and resending the
//! whole body repeats them (harmless with idempotent document ids).

use super::decode::{Doc, Documents};
use crate::budget::{self, Charge, MemoryBudget, Use};
use crate::event::{now_ms, Event};
use crate::journal::{DocKind, JournalError, RecordBuilder, DOC_OVERHEAD};
use crate::metrics::{Counter, Registry};
use crate::queue::{QueueError, QueueSender, Reservation};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Most events decoded and queued in one step.
const CHUNK_EVENTS: usize = 1024;
/// Inflated bytes produced per step between budget checks.
const INFLATE_STEP: usize = 64 * 1024;
/// Smallest allocation of a body buffer (less when the body announces less).
const MIN_BUFFER: usize = 64 * 1024;
/// The answer's header that counts the body's events that were queued.
pub const ACCEPTED_HEADER: &str = "x-sheepdog-accepted";

pub type Reply = Response<Full<Bytes>>;

/// What every request of one input shares.
pub struct Shared {
    pub source: Arc<str>,
    pub tags: Vec<String>,
    /// `max_body_size`.
    pub limit: usize,
    pub auth: Option<Auth>,
    pub queue: QueueSender,
    pub queue_wait: Duration,
    pub body_timeout: Duration,
    pub budget: MemoryBudget,
    /// One permit per request in progress (`max_pending_requests`).
    pub pending: Arc<Semaphore>,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
}

/// The expected `Authorization` value, kept as its SHA-256 digest: comparing digests in
/// constant time reveals neither the value nor its length.
pub struct Auth {
    digest: [u8; 32],
    challenge: &'static str,
}

impl Auth {
    pub fn new(expected: &str) -> Auth {
        Auth {
            digest: sha256(expected.as_bytes()),
            challenge: if expected.starts_with("Basic") {
                "Basic realm=\"sheepdog\""
            } else {
                "Bearer"
            },
        }
    }

    fn accepts(&self, given: &[u8]) -> bool {
        sha256(given).ct_eq(&self.digest).into()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Why a request was refused; each is a `reason` of `sheepdog_input_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Method,
    Unauthorized,
    TooLarge,
    TooManyRequests,
    BadGzip,
    BadBody,
    BodyTimeout,
    Memory,
    QueueFull,
    QueueUnavailable,
    NotDelivered,
    ShuttingDown,
}

impl Refusal {
    const ALL: [Refusal; 12] = [
        Refusal::Method,
        Refusal::Unauthorized,
        Refusal::TooLarge,
        Refusal::TooManyRequests,
        Refusal::BadGzip,
        Refusal::BadBody,
        Refusal::BodyTimeout,
        Refusal::Memory,
        Refusal::QueueFull,
        Refusal::QueueUnavailable,
        Refusal::NotDelivered,
        Refusal::ShuttingDown,
    ];

    fn reason(self) -> &'static str {
        match self {
            Refusal::Method => "method",
            Refusal::Unauthorized => "unauthorized",
            Refusal::TooLarge => "too_large",
            Refusal::TooManyRequests => "too_many_requests",
            Refusal::BadGzip => "bad_gzip",
            Refusal::BadBody => "bad_body",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::Memory => "memory",
            Refusal::QueueFull => "queue_full",
            Refusal::QueueUnavailable => "queue_unavailable",
            Refusal::NotDelivered => "not_delivered",
            Refusal::ShuttingDown => "shutting_down",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Refusal::Method => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::BadGzip | Refusal::BadBody => StatusCode::BAD_REQUEST,
            Refusal::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::TooManyRequests | Refusal::Memory | Refusal::QueueFull => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Refusal::ShuttingDown | Refusal::QueueUnavailable | Refusal::NotDelivered => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn text(self) -> &'static str {
        match self {
            Refusal::Method => "use POST with a JSON or NDJSON body\n",
            Refusal::Unauthorized => "authentication required\n",
            Refusal::TooLarge => "body exceeds the configured max_body_size\n",
            Refusal::TooManyRequests => "too many requests in progress, retry later\n",
            Refusal::BadGzip => "body is not valid gzip\n",
            Refusal::BadBody => "body could not be read\n",
            Refusal::BodyTimeout => "body did not arrive within body_read_timeout\n",
            Refusal::Memory => "memory budget is full, retry later\n",
            Refusal::QueueFull => "pipeline queue is full, retry later\n",
            Refusal::QueueUnavailable => "the persisted queue cannot be written, retry later\n",
            Refusal::NotDelivered => {
                "the outputs did not confirm delivery within delivery_timeout, retry later\n"
            }
            Refusal::ShuttingDown => "shutting down\n",
        }
    }

    /// Whether the client should try again later (`Retry-After`).
    fn retry(self) -> bool {
        matches!(
            self.status(),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
    }
}

/// The input's request counters.
#[derive(Default)]
pub struct Metrics {
    events_in: Counter,
    parse_failures: Counter,
    bytes_in: Counter,
    rejected: [Counter; Refusal::ALL.len()],
}

impl Metrics {
    pub fn register(r: &Registry, id: &str) -> Self {
        let labels = [("input", id)];
        Metrics {
            events_in: r.counter(
                "sheepdog_input_events_total",
                "Events accepted into the queue",
                &labels,
            ),
            parse_failures: r.counter(
                "sheepdog_input_parse_failures_total",
                "Lines or bodies that were not JSON objects",
                &labels,
            ),
            bytes_in: r.counter(
                "sheepdog_input_bytes_total",
                "Request body bytes received",
                &labels,
            ),
            rejected: Refusal::ALL.map(|why| {
                r.counter(
                    "sheepdog_input_rejected_total",
                    "Requests refused, by reason (a body refused part-way counts too)",
                    &[("input", id), ("reason", why.reason())],
                )
            }),
        }
    }

    fn rejected(&self, why: Refusal) -> &Counter {
        &self.rejected[why as usize]
    }
}

/// How far a request got: what the answer reports.
#[derive(Debug, Default)]
struct Progress {
    /// Events of the body queued.
    accepted: usize,
    /// The body was read to its end (the connection can serve another request).
    body_read: bool,
}

/// What is left of a request's two allowances.
struct Clock {
    /// Waiting for queue or budget room.
    room: Duration,
    /// Waiting for the client's body.
    body: Duration,
}

/// Answers one request.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Reply, Infallible> {
    let mut progress = Progress::default();
    let outcome = answer(&shared, req, &mut progress).await;
    Ok(reply(&shared, outcome, &progress))
}

async fn answer(
    shared: &Shared,
    req: Request<Incoming>,
    progress: &mut Progress,
) -> Result<(), Refusal> {
    let (parts, body) = req.into_parts();
    check(shared, &parts.method, &parts.headers)?;
    let _pending = shared
        .pending
        .try_acquire()
        .map_err(|_| Refusal::TooManyRequests)?;
    let mut clock = Clock {
        room: shared.queue_wait,
        body: shared.body_timeout,
    };
    let announced = content_length(&parts.headers);
    let raw = read_body(shared, body, announced, &mut clock).await?;
    progress.body_read = true;
    let body = if is_gzip(&parts.headers) {
        inflate(shared, raw, &mut clock).await?
    } else {
        raw
    };
    queue_documents(shared, &body.buf, &mut clock, progress).await
}

/// Refuses a request by its method, its credentials or its announced length.
fn check(shared: &Shared, method: &Method, headers: &hyper::HeaderMap) -> Result<(), Refusal> {
    if *method != Method::POST && *method != Method::PUT {
        return Err(Refusal::Method);
    }
    if let Some(auth) = &shared.auth {
        let given = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !auth.accepts(given) {
            return Err(Refusal::Unauthorized);
        }
    }
    if content_length(headers).is_some_and(|len| len > shared.limit) {
        return Err(Refusal::TooLarge);
    }
    Ok(())
}

fn content_length(headers: &hyper::HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

fn is_gzip(headers: &hyper::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip") || v.eq_ignore_ascii_case("x-gzip"))
}

/// The answer to a request, with the count of its events that were queued.
fn reply(shared: &Shared, outcome: Result<(), Refusal>, progress: &Progress) -> Reply {
    let mut builder =
        Response::builder().header(ACCEPTED_HEADER, HeaderValue::from(progress.accepted));
    let why = match outcome {
        Ok(()) => {
            return builder
                .status(StatusCode::OK)
                .body(Full::new(Bytes::from_static(b"ok\n")))
                .expect("a valid response");
        }
        Err(why) => why,
    };
    shared.metrics.rejected(why).inc();
    if why.retry() {
        builder = builder.header(header::RETRY_AFTER, "1");
    }
    match why {
        Refusal::Method => builder = builder.header(header::ALLOW, "POST, PUT"),
        Refusal::Unauthorized => {
            let challenge = shared.auth.as_ref().map_or("Bearer", |a| a.challenge);
            builder = builder.header(header::WWW_AUTHENTICATE, challenge);
        }
        _ => {}
    }
    // What is left of an unread body would be taken for the next request.
    if !progress.body_read {
        builder = builder.header(header::CONNECTION, "close");
    }
    builder
        .status(why.status())
        .body(Full::new(Bytes::from_static(why.text().as_bytes())))
        .expect("a valid response")
}

/// Bytes held for a request with their charge on the memory budget, which covers the
/// buffer's capacity.
struct Held {
    buf: Vec<u8>,
    charge: Charge,
}

impl Held {
    fn new(budget: &MemoryBudget) -> Held {
        Held {
            buf: Vec::new(),
            charge: budget.empty(Use::HttpBody),
        }
    }

    /// Makes room for `extra` more bytes, growing to at most `most` in all unless more is
    /// needed; the new capacity is charged before it is allocated.
    async fn make_room(
        &mut self,
        extra: usize,
        most: usize,
        shared: &Shared,
        clock: &mut Clock,
    ) -> Result<(), Refusal> {
        let need = self.buf.len() + extra;
        let old = self.buf.capacity();
        if need <= old {
            return Ok(());
        }
        let new = need.max(old * 2).max(MIN_BUFFER).min(most.max(need));
        // The old and the new block both exist while the bytes move: both are charged.
        grow(&mut self.charge, new, shared, clock).await?;
        let mut bigger = Vec::with_capacity(new);
        bigger.extend_from_slice(&self.buf);
        self.buf = bigger;
        self.charge.shrink_to(new);
        Ok(())
    }
}

/// Adds `bytes` to `charge`, waiting for budget room within what is left of the request's
/// allowance.
async fn grow(
    charge: &mut Charge,
    bytes: usize,
    shared: &Shared,
    clock: &mut Clock,
) -> Result<(), Refusal> {
    if charge.try_grow(bytes) {
        return Ok(());
    }
    let started = Instant::now();
    let more = shared
        .budget
        .charge_within(bytes, Use::HttpBody, clock.room)
        .await;
    clock.room = clock.room.saturating_sub(started.elapsed());
    match more {
        Ok(Some(more)) => {
            charge.merge(more);
            Ok(())
        }
        Ok(None) => Err(Refusal::Memory),
        Err(_) => Err(Refusal::TooLarge),
    }
}

/// Reads the body frame by frame within `max_body_size`, each frame charged before it is kept.
async fn read_body(
    shared: &Shared,
    mut body: Incoming,
    announced: Option<usize>,
    clock: &mut Clock,
) -> Result<Held, Refusal> {
    let mut held = Held::new(&shared.budget);
    // The buffer grows (charged before it is allocated) with the bytes that arrive, up to the
    // announced length: a client announcing much and sending little holds only about what it
    // sent. Charging the announced length as the bytes arrive instead would not do: a reused
    // allocation is resident whether or not this body wrote to it.
    let most = announced.unwrap_or(shared.limit).min(shared.limit);
    loop {
        let started = Instant::now();
        let frame = tokio::select! {
            f = tokio::time::timeout(clock.body, body.frame()) => f,
            _ = shared.shutdown.cancelled() => return Err(Refusal::ShuttingDown),
        };
        clock.body = clock.body.saturating_sub(started.elapsed());
        let data = match frame {
            Err(_) => return Err(Refusal::BodyTimeout),
            Ok(None) => return Ok(held),
            Ok(Some(Err(_))) => return Err(Refusal::BadBody),
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers
            },
        };
        if held.buf.len() + data.len() > shared.limit {
            return Err(Refusal::TooLarge);
        }
        held.make_room(data.len(), most, shared, clock).await?;
        held.buf.extend_from_slice(&data);
        shared.metrics.bytes_in.add(data.len() as u64);
    }
}

/// Inflates a gzip body a step at a time, each step's output charged before it is produced;
/// at most `max_body_size` inflated. The compressed bytes are given back once inflated.
async fn inflate(shared: &Shared, raw: Held, clock: &mut Clock) -> Result<Held, Refusal> {
    let mut out = Held::new(&shared.budget);
    let mut gz = flate2::bufread::MultiGzDecoder::new(raw.buf.as_slice());
    loop {
        out.make_room(INFLATE_STEP, shared.limit + 1, shared, clock)
            .await?;
        let len = out.buf.len();
        let step = (out.buf.capacity() - len).min(INFLATE_STEP);
        out.buf.resize(len + step, 0);
        let n = gz.read(&mut out.buf[len..]).map_err(|_| Refusal::BadGzip);
        out.buf.truncate(len + *n.as_ref().unwrap_or(&0));
        match n? {
            0 => return Ok(out),
            _ if out.buf.len() > shared.limit => return Err(Refusal::TooLarge),
            _ => {}
        }
    }
}

/// Decodes and queues a body's documents a chunk at a time: each chunk takes its queue room
/// and the budget its events will use before it is decoded.
async fn queue_documents(
    shared: &Shared,
    body: &[u8],
    clock: &mut Clock,
    progress: &mut Progress,
) -> Result<(), Refusal> {
    let docs = Documents::new(body);
    let received = now_ms();
    let mut decoder = super::Decoder::new(docs.body(), received);
    let mut docs = docs.peekable();
    let most = shared.queue.capacity().min(CHUNK_EVENTS);
    // A chunk takes at most an eighth of the budget, so concurrent bodies share it.
    let share = shared.budget.limit() / 8;
    let mut chunk: Vec<Doc<'_>> = Vec::new();
    let mut outcomes = Vec::new();
    while docs.peek().is_some() {
        chunk.clear();
        let mut cost = 0;
        while let Some(doc) = docs.next_if(|d| {
            chunk.is_empty() || (chunk.len() < most && cost + budget::event_bytes(d.len()) <= share)
        }) {
            cost += budget::event_bytes(doc.len());
            chunk.push(doc);
        }
        let room = reserve(shared, chunk.len(), clock).await?;
        let mut charge = shared.budget.empty(Use::HttpBody);
        grow(&mut charge, cost, shared, clock).await?;
        let before = decoder.failures;
        let events: Vec<Event> = chunk
            .iter()
            .map(|d| tagged(shared, decoder.event(*d)))
            .collect();
        shared.metrics.parse_failures.add(decoder.failures - before);
        let n = events.len();
        let mut hold = persist(shared, &chunk, received, clock).await?;
        if shared.queue.delivery_wait().is_some() {
            let (h, outcome) = crate::ack::for_delivery(hold);
            hold = Some(h);
            outcomes.push(outcome);
        }
        match room.send_held(&shared.source, events, &mut charge, hold) {
            Ok(()) => {}
            Err(QueueError::Closed(_)) => return Err(Refusal::ShuttingDown),
            Err(QueueError::Full(_)) => return Err(Refusal::QueueFull),
        }
        progress.accepted += n;
        shared.metrics.events_in.add(n as u64);
    }
    await_delivery(shared, outcomes).await
}

/// With `acknowledge = "delivered"`, waits (at most `delivery_timeout`) until the outputs
/// confirmed every chunk.
async fn await_delivery(
    shared: &Shared,
    outcomes: Vec<tokio::sync::oneshot::Receiver<bool>>,
) -> Result<(), Refusal> {
    let Some(wait) = shared.queue.delivery_wait() else {
        return Ok(());
    };
    let deadline = tokio::time::Instant::now() + wait;
    for outcome in outcomes {
        match tokio::time::timeout_at(deadline, outcome).await {
            Ok(Ok(true)) => {}
            _ => return Err(Refusal::NotDelivered),
        }
    }
    Ok(())
}

/// With a persisted queue, writes the chunk's documents as one record (waiting for room
/// within what is left of the request's allowance) and returns its acknowledgement.
async fn persist(
    shared: &Shared,
    chunk: &[Doc<'_>],
    received: i64,
    clock: &mut Clock,
) -> Result<Option<crate::ack::Hold>, Refusal> {
    let Some(journal) = shared.queue.journal() else {
        return Ok(None);
    };
    let bytes = chunk.iter().map(|d| d.len()).sum::<usize>() + chunk.len() * DOC_OVERHEAD;
    let mut record = RecordBuilder::new(&shared.source, None, &shared.tags, bytes);
    for doc in chunk {
        match doc {
            Doc::Json(json) => record.push(DocKind::Json, received, json),
            Doc::Broken(text) => record.push(DocKind::Broken, received, text),
        }
    }
    let started = Instant::now();
    let written = journal.append(record, Some(clock.room)).await;
    clock.room = clock.room.saturating_sub(started.elapsed());
    match written {
        Ok(hold) => Ok(Some(hold)),
        Err(JournalError::Full) => Err(Refusal::QueueFull),
        Err(JournalError::Closed) => Err(Refusal::ShuttingDown),
        Err(JournalError::Io(_)) => Err(Refusal::QueueUnavailable),
    }
}

fn tagged(shared: &Shared, mut event: Event) -> Event {
    for t in &shared.tags {
        event.add_tag(t);
    }
    event
}

/// Queue room for `events` events, waiting within what is left of the request's allowance.
async fn reserve(
    shared: &Shared,
    events: usize,
    clock: &mut Clock,
) -> Result<Reservation, Refusal> {
    let started = Instant::now();
    let room = shared.queue.reserve_within(events, clock.room).await;
    clock.room = clock.room.saturating_sub(started.elapsed());
    match room {
        Ok(r) => Ok(r),
        Err(QueueError::Full(_)) => Err(Refusal::QueueFull),
        Err(QueueError::Closed(_)) => Err(Refusal::ShuttingDown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Gauge;
    use serde_json::{json, Value};

    fn shared(queue: QueueSender, budget: MemoryBudget, wait: Duration) -> Shared {
        Shared {
            source: Arc::from("http"),
            tags: vec!["t".into()],
            limit: 1 << 20,
            auth: None,
            queue,
            queue_wait: wait,
            body_timeout: Duration::from_secs(1),
            budget,
            pending: Arc::new(Semaphore::new(1)),
            metrics: Metrics::default(),
            shutdown: CancellationToken::new(),
        }
    }

    fn ndjson(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| format!("{{\"n\":{i}}}\n"))
            .collect::<String>()
            .into_bytes()
    }

    async fn queue(s: &Shared, body: &[u8]) -> (Result<(), Refusal>, usize) {
        let mut clock = Clock {
            room: s.queue_wait,
            body: s.body_timeout,
        };
        let mut progress = Progress::default();
        let r = queue_documents(s, body, &mut clock, &mut progress).await;
        (r, progress.accepted)
    }

    #[tokio::test]
    async fn a_body_larger_than_the_queue_goes_in_chunks_as_room_appears() {
        let (tx, rx) = crate::queue::bounded(4, 4, Gauge::default());
        let budget = MemoryBudget::unmetered(1 << 20);
        let s = shared(tx, budget.clone(), Duration::from_secs(5));
        let consumer = tokio::spawn(async move {
            let mut seen = Vec::new();
            while seen.len() < 10 {
                let batch = rx.recv().await.unwrap();
                assert!(batch.events.len() <= 4);
                seen.extend(batch.events.iter().map(|e| e.fields()["n"].clone()));
            }
            seen
        });
        assert_eq!(queue(&s, &ndjson(10)).await, (Ok(()), 10));
        let want: Vec<Value> = (0..10).map(|i| json!(i)).collect();
        assert_eq!(consumer.await.unwrap(), want);
        assert_eq!(budget.used(), 0, "the charge went with the batches");
    }

    #[tokio::test]
    async fn a_stalled_queue_answers_within_queue_wait_with_the_events_taken() {
        let (tx, rx) = crate::queue::bounded(4, 4, Gauge::default());
        let s = shared(
            tx,
            MemoryBudget::unmetered(1 << 20),
            Duration::from_millis(200),
        );
        let started = Instant::now();
        let (r, accepted) = queue(&s, &ndjson(10)).await;
        assert_eq!((r, accepted), (Err(Refusal::QueueFull), 4));
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(rx);
    }

    #[tokio::test]
    async fn a_spent_budget_answers_429_without_decoding() {
        let (tx, _rx) = crate::queue::bounded(64, 64, Gauge::default());
        let budget = MemoryBudget::unmetered(1 << 20);
        let _held = budget.try_charge(1 << 20, Use::Queue).unwrap();
        let s = shared(tx, budget, Duration::from_millis(50));
        let (r, accepted) = queue(&s, b"not json\n").await;
        assert_eq!((r, accepted), (Err(Refusal::Memory), 0));
        assert_eq!(s.metrics.parse_failures.get(), 0);
    }

    #[tokio::test]
    async fn inflating_is_charged_and_capped() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let (tx, _rx) = crate::queue::bounded(4, 4, Gauge::default());
        let budget = MemoryBudget::unmetered(64 << 20);
        let s = shared(tx, budget.clone(), Duration::from_millis(50));
        let gz = |n: usize| {
            let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(&vec![b'a'; n]).unwrap();
            let mut held = Held::new(&budget);
            held.buf = enc.finish().unwrap();
            held
        };
        let mut clock = Clock {
            room: s.queue_wait,
            body: s.body_timeout,
        };
        let out = inflate(&s, gz(1 << 20), &mut clock).await.unwrap();
        assert_eq!(out.buf.len(), 1 << 20);
        assert_eq!(budget.used(), out.buf.capacity());
        drop(out);
        let over = inflate(&s, gz((1 << 20) + 1), &mut clock).await;
        assert_eq!(over.err(), Some(Refusal::TooLarge));
        let mut bad = Held::new(&budget);
        bad.buf = b"nope".to_vec();
        assert_eq!(
            inflate(&s, bad, &mut clock).await.err(),
            Some(Refusal::BadGzip)
        );
        assert_eq!(budget.used(), 0);
        // Too little budget for the inflated bytes: refused once the wait ran out.
        let small = MemoryBudget::unmetered(256 << 10);
        let s = shared(s.queue.clone(), small, Duration::from_millis(20));
        let mut held = Held::new(&s.budget);
        held.buf = gz(1 << 20).buf.clone();
        assert_eq!(
            inflate(&s, held, &mut clock).await.err(),
            Some(Refusal::Memory)
        );
    }

    #[test]
    fn credentials_compare_by_digest() {
        let auth = Auth::new("Bearer s3cret");
        assert!(auth.accepts(b"Bearer s3cret"));
        assert!(!auth.accepts(b"Bearer s3cre"));
        assert!(!auth.accepts(b"Bearer s3cret "));
        assert!(!auth.accepts(b""));
        assert_eq!(auth.challenge, "Bearer");
        assert_eq!(
            Auth::new("Basic dTpw").challenge,
            "Basic realm=\"sheepdog\""
        );
    }
}
