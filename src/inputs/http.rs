//! `http` input: accepts POST (or PUT) on any path with one JSON object, a JSON array of
//! objects, or NDJSON; gzip bodies are inflated. A line or body that is not a JSON object
//! becomes an event with `message` = the text and tag `_jsonparsefailure`. Replies 200 once the
//! events are queued, 413 over the body limit, 429 (with `Retry-After`) when the queue stays
//! full for `queue_wait`, 401 when authentication is configured and fails, 503 while shutting down.

use super::check_address;
use crate::budget::Charge;
use crate::config::de;
use crate::config::problem::Problem;
use crate::config::secret::Secret;
use crate::event::{now_ms, Event, Fields, Receipt};
use crate::metrics::Counter;
use crate::queue::{QueueError, QueueSender};
use crate::BuildContext;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listen address, e.g. `0.0.0.0:8080`.
    pub address: String,
    /// Tags added to every event from this input.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Largest accepted body, compressed or inflated. Default `10MiB`.
    #[serde(default = "d_limit", deserialize_with = "de::bytes")]
    pub max_body_size: u64,
    /// Basic-auth user; requires `password`.
    #[serde(default)]
    pub user: Option<String>,
    /// Basic-auth password (never printed).
    #[serde(default)]
    pub password: Option<Secret>,
    /// Bearer token expected in `Authorization: Bearer <token>` (never printed).
    #[serde(default)]
    pub token: Option<Secret>,
    /// How long a request waits for room in a full pipeline queue before it is answered 429
    /// (the client's connection is the backpressure meanwhile, as Logstash's input threads
    /// block); `0s` answers 429 at once. Default `5s`.
    #[serde(default = "d_queue_wait", deserialize_with = "de::duration")]
    pub queue_wait: Duration,
}

fn d_limit() -> u64 {
    10 * 1024 * 1024
}

fn d_queue_wait() -> Duration {
    Duration::from_secs(5)
}

impl Config {
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems: Vec<Problem> = check_address("address", &self.address)
            .into_iter()
            .collect();
        if self.user.is_some() != self.password.is_some() {
            problems.push(Problem::at(
                "user",
                "basic auth needs both `user` and `password`",
            ));
        }
        if self.user.is_some() && self.token.is_some() {
            problems.push(Problem::at(
                "token",
                "choose basic auth (`user`/`password`) or a bearer `token`, not both",
            ));
        }
        if self.max_body_size == 0 {
            problems.push(Problem::at("max_body_size", "must be greater than zero"));
        }
        problems
    }

    pub async fn start(
        &self,
        id: &str,
        ctx: &BuildContext,
        queue: QueueSender,
    ) -> anyhow::Result<JoinHandle<()>> {
        use anyhow::Context;
        let listener = tokio::net::TcpListener::bind(&self.address)
            .await
            .with_context(|| format!("input `{id}`: cannot listen on {}", self.address))?;
        let local = listener.local_addr()?;
        tracing::info!(input = id, address = %local, "http input listening");
        let labels = [("input", id)];
        let expected_auth = match (&self.user, &self.password, &self.token) {
            (Some(u), Some(p), _) => Some(format!(
                "Basic {}",
                base64_encode(&format!("{u}:{}", p.expose()))
            )),
            (_, _, Some(t)) => Some(format!("Bearer {}", t.expose())),
            _ => None,
        };
        let state = Arc::new(HttpState {
            source: Arc::from(id),
            tags: self.tags.clone(),
            limit: self.max_body_size as usize,
            expected_auth,
            queue,
            queue_wait: self.queue_wait,
            events_in: ctx.metrics.counter(
                "sheepdog_input_events_total",
                "Events accepted into the queue",
                &labels,
            ),
            parse_failures: ctx.metrics.counter(
                "sheepdog_input_parse_failures_total",
                "Lines or bodies that were not JSON objects",
                &labels,
            ),
            rejected_full: ctx.metrics.counter(
                "sheepdog_input_rejected_total",
                "Requests refused because the queue was full",
                &labels,
            ),
            bytes_in: ctx.metrics.counter(
                "sheepdog_input_bytes_total",
                "Request body bytes received",
                &labels,
            ),
        });
        let app = axum::Router::new().fallback(handle).with_state(state);
        let shutdown = ctx.shutdown.clone();
        let task = tokio::spawn(async move {
            let server = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await });
            if let Err(e) = server.await {
                tracing::error!(error = %e, "http input stopped");
            }
        });
        Ok(task)
    }
}

fn base64_encode(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

struct HttpState {
    source: Arc<str>,
    tags: Vec<String>,
    limit: usize,
    expected_auth: Option<String>,
    queue: QueueSender,
    events_in: Counter,
    parse_failures: Counter,
    rejected_full: Counter,
    queue_wait: Duration,
    bytes_in: Counter,
}

fn reply(status: StatusCode, text: &'static str) -> Response {
    (status, text).into_response()
}

/// Answers one request: refuses it early, reads its body, queues its events.
async fn handle(
    State(state): State<Arc<HttpState>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(refusal) = refusal(&state, &method, &headers) {
        return refusal;
    }
    match read_body(&state, &headers, body).await {
        Ok(body) => queue_body(&state, &body).await,
        Err(refusal) => refusal,
    }
}

/// The answer to a request refused by its method, its credentials or its announced length.
fn refusal(state: &HttpState, method: &Method, headers: &HeaderMap) -> Option<Response> {
    if *method != Method::POST && *method != Method::PUT {
        return Some(
            (
                StatusCode::METHOD_NOT_ALLOWED,
                [(header::ALLOW, "POST, PUT")],
                "use POST with a JSON or NDJSON body\n",
            )
                .into_response(),
        );
    }
    if let Some(expected) = &state.expected_auth {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            let challenge = if expected.starts_with("Basic") {
                "Basic realm=\"sheepdog\""
            } else {
                "Bearer"
            };
            return Some(
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, challenge)],
                    "authentication required\n",
                )
                    .into_response(),
            );
        }
    }
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > state.limit {
            return Some(reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body exceeds the configured max_body_size\n",
            ));
        }
    }
    None
}

/// The body within `max_body_size`, inflated when it is gzip.
async fn read_body(state: &HttpState, headers: &HeaderMap, body: Body) -> Result<Bytes, Response> {
    let raw = match axum::body::to_bytes(body, state.limit).await {
        Ok(b) => b,
        Err(_) => {
            return Err(reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body exceeds the configured max_body_size\n",
            ))
        }
    };
    state.bytes_in.add(raw.len() as u64);
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip") || v.eq_ignore_ascii_case("x-gzip"));
    if gzip {
        match inflate_gzip(&raw, state.limit) {
            Ok(b) => Ok(b),
            Err(Inflate::TooLarge) => Err(reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "inflated body exceeds the configured max_body_size\n",
            )),
            Err(Inflate::Corrupt) => {
                Err(reply(StatusCode::BAD_REQUEST, "body is not valid gzip\n"))
            }
        }
    } else {
        Ok(raw)
    }
}

/// Decodes a body into events and queues them; the reply says whether they were queued.
async fn queue_body(state: &HttpState, body: &[u8]) -> Response {
    // A body that fits in the queue takes its room (its line count) before it is decoded: a
    // queue full for `queue_wait` answers 429 without spending the decode, and decoded events
    // stay within the queue's capacity. Unused room goes back once the events are counted.
    // A larger body is decoded and goes in chunks as room appears.
    let expected = expected_events(body);
    let reservation = if expected <= state.queue.capacity() {
        match state.queue.reserve_within(expected, state.queue_wait).await {
            Ok(r) => Some(r),
            Err(QueueError::Full(_)) => return queue_full(state),
            Err(QueueError::Closed(_)) => {
                return reply(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            }
        }
    } else {
        None
    };
    let events = decode_tagged(state, body);
    let n = events.len();
    let queued = match reservation {
        // More events than reserved (a JSON array) and no room for the rest right now: the
        // reservation is given back and the body waits like any other.
        Some(r) => match r.send(&state.source, events, &mut Charge::none()) {
            Err(QueueError::Full(events)) if !events.is_empty() => {
                enqueue(&state.queue, &state.source, events, state.queue_wait).await
            }
            other => other,
        },
        None => enqueue(&state.queue, &state.source, events, state.queue_wait).await,
    };
    match queued {
        Ok(()) => {
            state.events_in.add(n as u64);
            reply(StatusCode::OK, "ok\n")
        }
        Err(QueueError::Full(_)) => queue_full(state),
        Err(QueueError::Closed(_)) => reply(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
    }
}

/// The events of a body with the input's tags, parse failures counted.
fn decode_tagged(state: &HttpState, body: &[u8]) -> Vec<Event> {
    let received = now_ms();
    let mut failures = 0u64;
    let mut events = decode_body(body, received, &mut failures);
    if failures > 0 {
        state.parse_failures.add(failures);
    }
    if !state.tags.is_empty() {
        for e in &mut events {
            for t in &state.tags {
                e.add_tag(t);
            }
        }
    }
    events
}

fn queue_full(state: &HttpState) -> Response {
    state.rejected_full.inc();
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, "1")],
        "pipeline queue is full, retry later\n",
    )
        .into_response()
}

/// Upper bound on the events of an NDJSON body (its non-blank line count, counted without
/// decoding); 1 for a JSON array, whose size is known only once decoded.
fn expected_events(body: &[u8]) -> usize {
    let body = body.trim_ascii();
    match body.first() {
        None => 0,
        Some(b'[') => 1,
        Some(_) => memchr::memchr_iter(b'\n', body).count() + 1,
    }
}

/// Queues a body's events, all or none when they fit in the queue: at once when there is room,
/// else after waiting up to `wait` for it (`Full` when the wait runs out). A body larger than
/// the whole queue goes in queue-sized chunks as room appears, however long that takes.
async fn enqueue(
    queue: &QueueSender,
    source: &Arc<str>,
    events: Vec<Event>,
    wait: Duration,
) -> Result<(), QueueError> {
    let mut charge = Charge::none();
    let events = match queue.try_send(source, events, &mut charge) {
        Err(QueueError::Full(events)) => events,
        other => return other,
    };
    if events.len() > queue.capacity() {
        return queue.send(source, events, &mut charge).await;
    }
    if wait.is_zero() {
        return Err(QueueError::Full(events));
    }
    // `send` takes the permits for a body that fits in one step, so running out of time never
    // leaves part of the body queued.
    match tokio::time::timeout(wait, queue.send(source, events, &mut charge)).await {
        Ok(result) => result,
        Err(_) => Err(QueueError::Full(Vec::new())),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a gzip body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inflate {
    /// It inflates to more than the limit.
    TooLarge,
    /// It is not a gzip stream.
    Corrupt,
}

/// Inflates a gzip body (one or more members), refusing it once it passes `limit` bytes.
pub fn inflate_gzip(raw: &[u8], limit: usize) -> Result<Bytes, Inflate> {
    let mut out = Vec::with_capacity((raw.len() * 4).min(limit));
    let mut decoder = flate2::read::MultiGzDecoder::new(raw).take(limit as u64 + 1);
    decoder
        .read_to_end(&mut out)
        .map_err(|_| Inflate::Corrupt)?;
    if out.len() > limit {
        return Err(Inflate::TooLarge);
    }
    Ok(Bytes::from(out))
}

fn failure_event(text: &[u8], received: i64, failures: &mut u64) -> Event {
    *failures += 1;
    let mut e = Event::from_message(String::from_utf8_lossy(text).into_owned(), received);
    e.add_tag("_jsonparsefailure");
    e
}

/// One document: a JSON object becomes an event, anything else an event with `message` = the
/// text and tag `_jsonparsefailure` (counted in `failures`). `sheepdog tap` decodes with it too.
pub fn parse_object(line: &[u8], received: i64, failures: &mut u64) -> Event {
    match Fields::from_json_slice(line) {
        Ok(fields) => Event::from_fields(fields, received),
        Err(_) => failure_event(line, received, failures),
    }
}

/// Turns a body into events: a JSON array of objects, a single (possibly pretty-printed)
/// object, or NDJSON. Nothing is dropped: what does not parse becomes a tagged event.
pub fn decode_body(body: &[u8], received: i64, failures: &mut u64) -> Vec<Event> {
    let body = body.trim_ascii();
    if body.is_empty() {
        return Vec::new();
    }
    if body[0] == b'[' {
        return match serde_json::from_slice::<Vec<Value>>(body) {
            Ok(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::Object(map) => Event::from_map(map, received),
                    other => failure_event(other.to_string().as_bytes(), received, failures),
                })
                .collect(),
            Err(_) => vec![failure_event(body, received, failures)],
        };
    }
    let first_line_end = memchr::memchr(b'\n', body);
    let single_document = match first_line_end {
        None => true,
        // A first line that is not a whole object means one pretty-printed document.
        Some(end) => {
            serde_json::from_slice::<serde::de::IgnoredAny>(body[..end].trim_ascii()).is_err()
                && body[0] == b'{'
        }
    };
    if single_document {
        return vec![parse_object(body, received, failures)];
    }
    let receipt = Receipt::new(received);
    let mut events = Vec::with_capacity(memchr::memchr_iter(b'\n', body).count() + 1);
    // One UTF-8 check of the whole body lets each line skip serde_json's per-string check.
    let text = std::str::from_utf8(body).ok();
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len())) {
        let line = body[start..end].trim_ascii();
        start = end + 1;
        if line.is_empty() {
            continue;
        }
        let parsed = match text {
            Some(text) => {
                // Trimming removed ASCII only, so the line still starts and ends on character
                // boundaries of `text`.
                let at = line.as_ptr() as usize - body.as_ptr() as usize;
                Fields::from_json_str(&text[at..at + line.len()])
            }
            None => Fields::from_json_slice(line),
        };
        let event = match parsed {
            Ok(fields) => Event::from_fields_at(fields, &receipt),
            Err(_) => failure_event(line, received, failures),
        };
        events.push(event);
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Gauge;
    use serde_json::json;

    fn messages(n: usize) -> Vec<Event> {
        (0..n)
            .map(|i| Event::from_message(i.to_string(), 0))
            .collect()
    }

    #[tokio::test]
    async fn a_full_queue_holds_the_request_until_room_appears_or_the_wait_runs_out() {
        let (tx, rx) = crate::queue::bounded(4, 4, Gauge::default());
        let src: Arc<str> = Arc::from("http");
        let wait = Duration::from_secs(5);
        enqueue(&tx, &src, messages(3), wait).await.unwrap();
        // No room and no wait: refused at once, nothing queued.
        let refused = enqueue(&tx, &src, messages(2), Duration::ZERO).await;
        assert!(matches!(refused, Err(QueueError::Full(e)) if e.len() == 2));
        // No room within the wait: refused after it, nothing queued.
        let started = std::time::Instant::now();
        let timed_out = enqueue(&tx, &src, messages(2), Duration::from_millis(100)).await;
        assert!(matches!(timed_out, Err(QueueError::Full(_))));
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(tx.depth(), 3);
        // Room appears while the request waits: queued whole.
        let drain = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let first = rx.recv().await.unwrap();
            assert_eq!(first.events.len(), 3);
            drop(first);
            rx
        });
        enqueue(&tx, &src, messages(2), wait).await.unwrap();
        let rx = drain.await.unwrap();
        assert_eq!(rx.recv().await.unwrap().events.len(), 2);
    }

    #[tokio::test]
    async fn a_body_larger_than_the_queue_goes_in_chunks() {
        let (tx, rx) = crate::queue::bounded(4, 4, Gauge::default());
        let src: Arc<str> = Arc::from("http");
        let consumer = tokio::spawn(async move {
            let mut seen = Vec::new();
            while seen.len() < 10 {
                let batch = rx.recv().await.unwrap();
                seen.extend(batch.events.iter().map(|e| e.fields()["message"].clone()));
            }
            seen
        });
        enqueue(&tx, &src, messages(10), Duration::ZERO)
            .await
            .unwrap();
        let seen = consumer.await.unwrap();
        let want: Vec<Value> = (0..10).map(|i| json!(i.to_string())).collect();
        assert_eq!(seen, want);
    }

    fn decode(body: &str) -> (Vec<Event>, u64) {
        let mut failures = 0;
        let events = decode_body(body.as_bytes(), 7, &mut failures);
        (events, failures)
    }

    #[test]
    fn three_body_shapes() {
        let (e, f) = decode(r#"{"a":1}"#);
        assert_eq!((e.len(), f), (1, 0));
        assert_eq!(e[0].fields()["a"], json!(1));
        let (e, f) = decode("[{\"a\":1},{\"a\":2}]");
        assert_eq!((e.len(), f), (2, 0));
        let (e, f) = decode("{\"a\":1}\n{\"a\":2}\r\n\n{\"a\":3}\n");
        assert_eq!((e.len(), f), (3, 0));
        assert_eq!(e[2].fields()["a"], json!(3));
        let (e, f) = decode("{\n  \"a\": 1,\n  \"b\": [1,2]\n}\n");
        assert_eq!((e.len(), f), (1, 0));
        assert_eq!(e[0].fields()["b"], json!([1, 2]));
    }

    #[test]
    fn bad_input_becomes_tagged_events() {
        let (e, f) = decode("{\"a\":1}\nnot json\n{\"a\":3}");
        assert_eq!((e.len(), f), (3, 1));
        assert_eq!(e[1].fields()["message"], json!("not json"));
        assert!(e[1].has_tag("_jsonparsefailure"));
        assert!(!e[0].has_tag("_jsonparsefailure"));
        let (e, f) = decode("hello world");
        assert_eq!((e.len(), f), (1, 1));
        assert_eq!(e[0].fields()["message"], json!("hello world"));
        let (e, f) = decode("[{\"a\":1}, 5]");
        assert_eq!((e.len(), f), (2, 1));
        assert_eq!(e[1].fields()["message"], json!("5"));
        let (e, f) = decode("[{\"a\":1}, ");
        assert_eq!((e.len(), f), (1, 1));
        let (e, _) = decode("   \n ");
        assert!(e.is_empty());
    }

    #[test]
    fn invalid_utf8_lines_fail_alone() {
        let body = b"{\"a\":1}\n{\"b\":\"\xff\"}\n {\"c\":\"\xc3\xa9\"} \r\n";
        let mut failures = 0;
        let e = decode_body(body, 7, &mut failures);
        assert_eq!((e.len(), failures), (3, 1));
        assert_eq!(e[0].fields()["a"], json!(1));
        assert!(e[1].has_tag("_jsonparsefailure"));
        assert_eq!(e[2].fields()["c"], json!("é"));
        let (e, f) = decode("{\"s\":\"日本\"}\n{\"t\":\"🐑\"}");
        assert_eq!((e.len(), f), (2, 0));
        assert_eq!(e[1].fields()["t"], json!("🐑"));
    }

    #[test]
    fn gzip_is_bounded() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&vec![b'a'; 10_000]).unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(inflate_gzip(&gz, 10_000).ok().unwrap().len(), 10_000);
        assert!(matches!(inflate_gzip(&gz, 9_999), Err(Inflate::TooLarge)));
        assert!(matches!(inflate_gzip(b"nope", 100), Err(Inflate::Corrupt)));
    }
}
