//! Blackhole Elasticsearch: answers the bulk, info, health and template APIs like Elasticsearch 8,
//! counts documents and measures end-to-end latency from each document's `sent_at_us`.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use memchr::memmem::{Finder, FinderRev};

use crate::stats::{self, now_us, Histogram};

pub struct SinkOptions {
    pub addr: SocketAddr,
    /// Also accept Lumberjack v2 (Beats) here, acking every window, to drive the sink directly.
    pub beats_addr: Option<SocketAddr>,
    /// Answer bulk requests with one item per action (as Elasticsearch does); otherwise `items:[]`.
    pub items: bool,
    pub report_interval: Option<Duration>,
    pub duration: Option<Duration>,
    pub expect: Option<u64>,
    /// Append one JSON line per request (arrival time, documents, least and most latency).
    pub trace: Option<std::path::PathBuf>,
}

/// What the bulk scanner found in one request body.
#[derive(Debug, Default, PartialEq)]
pub struct Scan {
    pub docs: u64,
    pub latency_samples: u64,
    /// Least and most latency of the documents, in microseconds (0 when none had a timestamp).
    pub min_us: u64,
    pub max_us: u64,
}

#[derive(Default)]
struct Totals {
    docs: u64,
    requests: u64,
    bytes: u64,
    first_doc: Option<Instant>,
    last_doc: Option<Instant>,
    hist: Histogram,
    templates: Vec<String>,
}

struct Sink {
    // A std Mutex held only while a request body is scanned (no await inside): one lock per
    // request rather than per document, and the histogram needs no merging.
    totals: Mutex<Totals>,
    started: Instant,
    cpu_at_start: f64,
    items: bool,
    expect: Option<u64>,
    reached: tokio::sync::Notify,
    trace: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
}

static SENT_AT: std::sync::LazyLock<Finder<'static>> =
    std::sync::LazyLock::new(|| Finder::new(b"sent_at_us"));
static SENT_AT_REV: std::sync::LazyLock<FinderRev<'static>> =
    std::sync::LazyLock::new(|| FinderRev::new(b"sent_at_us"));
static INDEX_KEY: std::sync::LazyLock<Finder<'static>> =
    std::sync::LazyLock::new(|| Finder::new(b"\"_index\""));
static ID_KEY: std::sync::LazyLock<Finder<'static>> =
    std::sync::LazyLock::new(|| Finder::new(b"\"_id\""));

/// Parses the send time of a document (`"sent_at_us":123` or, inside a string field,
/// `\"sent_at_us\":123`). Looks at the end first, where the generator puts it; the reverse
/// finder is not vectorised, so a whole-line search goes forwards.
pub fn sent_at(doc: &[u8]) -> Option<u64> {
    // Fast path for documents that end like the generator's: `"sent_at_us":<16 digits>}`.
    const KEY: &[u8] = b"\"sent_at_us\":";
    const TAIL: usize = KEY.len() + 16 + 1;
    if doc.len() >= TAIL && doc.ends_with(b"}") {
        let tail = &doc[doc.len() - TAIL..];
        if tail.starts_with(KEY) && tail[KEY.len()..TAIL - 1].iter().all(u8::is_ascii_digit) {
            let digits = &tail[KEY.len()..TAIL - 1];
            return Some(
                digits
                    .iter()
                    .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0')),
            );
        }
    }
    let tail_start = doc.len().saturating_sub(48);
    let i = match SENT_AT_REV.rfind(&doc[tail_start..]) {
        Some(i) => tail_start + i,
        None => SENT_AT.find(doc)?,
    } + "sent_at_us".len();
    let rest = &doc[i..];
    let rest = rest
        .strip_prefix(b"\":")
        .or_else(|| rest.strip_prefix(b"\\\":"))?;
    let start = rest.iter().position(|c| !c.is_ascii_whitespace())?;
    let digits = &rest[start..];
    let end = digits
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 || end > 19 {
        return None;
    }
    Some(
        digits[..end]
            .iter()
            .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0')),
    )
}

fn record_latency(doc: &[u8], now: u64, hist: &mut Histogram, scan: &mut Scan) {
    if let Some(sent) = sent_at(doc) {
        let us = now.saturating_sub(sent);
        hist.record(us);
        scan.min_us = if scan.latency_samples == 0 {
            us
        } else {
            scan.min_us.min(us)
        };
        scan.max_us = scan.max_us.max(us);
        scan.latency_samples += 1;
    }
}

/// The value of `"key":"value"` in a small action line.
fn str_field<'a>(line: &'a [u8], key: &Finder<'_>) -> Option<&'a [u8]> {
    let i = key.find(line)? + key.needle().len();
    let rest = &line[i..];
    let rest = &rest[rest.iter().position(|c| !matches!(c, b'"' | b':' | b' '))?..];
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

/// Non-blank lines of `body`, found with memchr.
fn lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = body;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        if !line.iter().all(u8::is_ascii_whitespace) {
            return Some(line);
        }
    })
}

/// Counts the actions of a bulk body and records the latency of each source document. When `items`
/// is given, appends one Elasticsearch result item per action to it (comma-separated).
pub fn scan_bulk(
    body: &[u8],
    now: u64,
    default_index: &[u8],
    hist: &mut Histogram,
    mut items: Option<&mut Vec<u8>>,
) -> Scan {
    let mut scan = Scan::default();
    let mut lines = lines(body);
    // Bulk bodies usually repeat one action line; parse it once.
    let mut last: (&[u8], &[u8], Option<&[u8]>) = (&[], default_index, None);
    while let Some(action) = lines.next() {
        let start = action.iter().position(|&c| c == b'"').map_or(0, |i| i + 1);
        let op: &[u8] = match &action[start..] {
            a if a.starts_with(b"index\"") => b"index",
            a if a.starts_with(b"create\"") => b"create",
            a if a.starts_with(b"update\"") => b"update",
            a if a.starts_with(b"delete\"") => b"delete",
            _ => {
                // Not an action line: Elasticsearch would reject the request; count nothing.
                continue;
            }
        };
        if op != b"delete" {
            if let Some(source) = lines.next() {
                record_latency(source, now, hist, &mut scan);
            }
        }
        if let Some(out) = items.as_deref_mut() {
            if last.0 != action {
                last = (
                    action,
                    str_field(action, &INDEX_KEY).unwrap_or(default_index),
                    str_field(action, &ID_KEY),
                );
            }
            let (_, index, id) = last;
            if scan.docs > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"");
            out.extend_from_slice(op);
            out.extend_from_slice(b"\":{\"_index\":\"");
            out.extend_from_slice(index);
            out.extend_from_slice(b"\",\"_id\":\"");
            match id {
                Some(id) => out.extend_from_slice(id),
                None => out.extend_from_slice(itoa::Buffer::new().format(scan.docs).as_bytes()),
            }
            let (result, status): (&[u8], &[u8]) = match op {
                b"update" => (b"updated", b"200"),
                b"delete" => (b"deleted", b"200"),
                _ => (b"created", b"201"),
            };
            out.extend_from_slice(b"\",\"_version\":1,\"result\":\"");
            out.extend_from_slice(result);
            out.extend_from_slice(
                b"\",\"_shards\":{\"total\":1,\"successful\":1,\"failed\":0},\"_seq_no\":",
            );
            out.extend_from_slice(itoa::Buffer::new().format(scan.docs).as_bytes());
            out.extend_from_slice(b",\"_primary_term\":1,\"status\":");
            out.extend_from_slice(status);
            out.extend_from_slice(b"}}");
        }
        scan.docs += 1;
    }
    scan
}

/// Counts the non-empty lines of an NDJSON body and records their latency.
pub fn scan_ndjson(body: &[u8], now: u64, hist: &mut Histogram) -> Scan {
    let mut scan = Scan::default();
    for line in lines(body) {
        record_latency(line, now, hist, &mut scan);
        scan.docs += 1;
    }
    scan
}

fn json(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    let mut r = (status, body.into()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Official Elasticsearch clients refuse servers that do not send this.
    h.insert(
        "x-elastic-product",
        HeaderValue::from_static("Elasticsearch"),
    );
    r
}

/// Inflates a gzip body; the error is the 400 answer, boxed to keep the `Result` small.
fn decode_body(headers: &HeaderMap, body: Bytes) -> Result<Bytes, Box<Response>> {
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    if !gzip {
        return Ok(body);
    }
    let mut out = Vec::with_capacity(body.len() * 8);
    flate2::read::MultiGzDecoder::new(&body[..])
        .read_to_end(&mut out)
        .map_err(|e| {
            Box::new(json(
                StatusCode::BAD_REQUEST,
                format!(r#"{{"error":{{"type":"parse_exception","reason":"bad gzip body: {e}"}},"status":400}}"#),
            ))
        })?;
    Ok(out.into())
}

impl Sink {
    fn ingest(&self, body: &[u8], items: Option<&mut Vec<u8>>, bulk_index: Option<&[u8]>) -> Scan {
        let arrived = Instant::now();
        let now = now_us();
        let mut t = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let scan = match bulk_index {
            Some(index) => scan_bulk(body, now, index, &mut t.hist, items),
            None => scan_ndjson(body, now, &mut t.hist),
        };
        t.requests += 1;
        t.bytes += body.len() as u64;
        if scan.docs > 0 {
            t.docs += scan.docs;
            t.first_doc.get_or_insert(arrived);
            t.last_doc = Some(arrived);
        }
        let reached = self.expect.is_some_and(|n| t.docs >= n);
        drop(t);
        if reached {
            self.reached.notify_one();
        }
        if let Some(trace) = &self.trace {
            use std::io::Write;
            let mut w = trace.lock().unwrap_or_else(|e| e.into_inner());
            // Flushed per line: the file is for looking at while or after a run, not for speed.
            let _ = writeln!(
                w,
                r#"{{"at_us":{now},"docs":{},"bytes":{},"min_ms":{:.3},"max_ms":{:.3}}}"#,
                scan.docs,
                body.len(),
                scan.min_us as f64 / 1000.0,
                scan.max_us as f64 / 1000.0
            )
            .and_then(|()| w.flush());
        }
        scan
    }

    /// The summary JSON served at `/_sink/stats` and printed at exit.
    fn stats_json(&self) -> String {
        let t = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = match (t.first_doc, t.last_doc) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        let ms = |us: u64| us as f64 / 1000.0;
        let proc = stats::read_proc("self").ok();
        let cpu = proc.map(|p| p.cpu_s() - self.cpu_at_start).unwrap_or(0.0);
        let uptime = self.started.elapsed().as_secs_f64();
        format!(
            r#"{{"docs":{},"requests":{},"bytes":{},"elapsed_s":{:.3},"docs_per_s":{:.0},"latency_samples":{},"p50_ms":{:.3},"p90_ms":{:.3},"p99_ms":{:.3},"max_ms":{:.3},"uptime_s":{:.3},"cpu_s":{:.3},"vm_hwm_kb":{}}}"#,
            t.docs,
            t.requests,
            t.bytes,
            elapsed,
            if elapsed > 0.0 {
                t.docs as f64 / elapsed
            } else {
                0.0
            },
            t.hist.count(),
            ms(t.hist.quantile(0.50)),
            ms(t.hist.quantile(0.90)),
            ms(t.hist.quantile(0.99)),
            ms(t.hist.max()),
            uptime,
            cpu,
            proc.map(|p| p.vm_hwm_kb).unwrap_or(0),
        )
    }
}

type Shared = Arc<Sink>;

async fn bulk(
    State(s): State<Shared>,
    index: Option<Path<String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match decode_body(&headers, body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let index = index.map(|Path(i)| i).unwrap_or_else(|| "sink".into());
    if !s.items {
        s.ingest(&body, None, Some(index.as_bytes()));
        return json(StatusCode::OK, r#"{"took":0,"errors":false,"items":[]}"#);
    }
    // An item is ~190 bytes; a generated document ~480 with its action line.
    let mut out = Vec::with_capacity(64 + body.len() / 2);
    out.extend_from_slice(br#"{"took":1,"errors":false,"items":["#);
    s.ingest(&body, Some(&mut out), Some(index.as_bytes()));
    out.extend_from_slice(b"]}");
    json(StatusCode::OK, out)
}

async fn bulk_with_index(
    state: State<Shared>,
    index: Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    bulk(state, Some(index), headers, body).await
}

async fn bulk_default(state: State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    bulk(state, None, headers, body).await
}

async fn events(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let body = match decode_body(&headers, body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let scan = s.ingest(&body, None, None);
    json(StatusCode::OK, format!(r#"{{"accepted":{}}}"#, scan.docs))
}

async fn info() -> Response {
    json(
        StatusCode::OK,
        r#"{"name":"sheepdog-sink","cluster_name":"sheepdog-sink","cluster_uuid":"c2hlZXBkb2ctc2luay0x","version":{"number":"8.15.0","build_flavor":"default","build_type":"tar","build_hash":"1a77947f34deddb41af25e6f0ddb8e830159c179","build_date":"2024-08-05T10:05:34.233336849Z","build_snapshot":false,"lucene_version":"9.11.1","minimum_wire_compatibility_version":"7.17.0","minimum_index_compatibility_version":"7.0.0"},"tagline":"You Know, for Search"}"#,
    )
}

async fn health() -> Response {
    json(
        StatusCode::OK,
        r#"{"cluster_name":"sheepdog-sink","status":"green","timed_out":false,"number_of_nodes":1,"number_of_data_nodes":1,"active_primary_shards":0,"active_shards":0,"relocating_shards":0,"initializing_shards":0,"unassigned_shards":0,"delayed_unassigned_shards":0,"number_of_pending_tasks":0,"number_of_in_flight_fetch":0,"task_max_waiting_in_queue_millis":0,"active_shards_percent_as_number":100.0}"#,
    )
}

async fn put_template(State(s): State<Shared>, Path(name): Path<String>) -> Response {
    let mut t = s.totals.lock().unwrap_or_else(|e| e.into_inner());
    if !t.templates.contains(&name) {
        t.templates.push(name);
    }
    json(StatusCode::OK, r#"{"acknowledged":true}"#)
}

async fn get_template(State(s): State<Shared>, Path(name): Path<String>) -> Response {
    let known = s
        .totals
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .templates
        .contains(&name);
    if known {
        json(
            StatusCode::OK,
            format!(
                r#"{{"index_templates":[{{"name":{:?},"index_template":{{}}}}]}}"#,
                name
            ),
        )
    } else {
        json(
            StatusCode::NOT_FOUND,
            format!(
                r#"{{"error":{{"type":"resource_not_found_exception","reason":"index template matching [{name}] not found"}},"status":404}}"#
            ),
        )
    }
}

async fn sink_stats(State(s): State<Shared>) -> Response {
    json(StatusCode::OK, s.stats_json())
}

async fn sink_reset(State(s): State<Shared>) -> Response {
    let mut t = s.totals.lock().unwrap_or_else(|e| e.into_inner());
    let templates = std::mem::take(&mut t.templates);
    *t = Totals {
        templates,
        ..Totals::default()
    };
    json(StatusCode::OK, r#"{"acknowledged":true}"#)
}

async fn fallback(uri: axum::http::Uri) -> Response {
    tracing::debug!(%uri, "unhandled request");
    json(
        StatusCode::NOT_FOUND,
        format!(
            r#"{{"error":{{"type":"sink_unsupported","reason":"sheepdog sink does not implement {}"}},"status":404}}"#,
            uri.path()
        ),
    )
}

async fn beats_listener(l: tokio::net::TcpListener, sink: Shared) {
    loop {
        let Ok((stream, peer)) = l.accept().await else {
            continue;
        };
        let sink = Arc::clone(&sink);
        tokio::spawn(async move {
            if let Err(e) = beats_connection(stream, &sink).await {
                tracing::warn!(%peer, error = %e, "beats connection failed");
            }
        });
    }
}

async fn beats_connection(mut stream: tokio::net::TcpStream, sink: &Sink) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut buf = bytes::BytesMut::with_capacity(256 * 1024);
    let mut raw = Vec::new();
    let mut events = Vec::new();
    loop {
        // Collect the window's events as NDJSON so they go through the same counting as HTTP.
        events.clear();
        let window = crate::beats::read_window(&mut stream, &mut buf, &mut raw, |e| {
            events.extend_from_slice(e);
            events.push(b'\n');
        })
        .await?;
        let Some(count) = window else { return Ok(()) };
        sink.ingest(&events, None, None);
        stream.write_all(&crate::beats::ack_frame(count)).await?;
    }
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(info).head(info))
        .route("/_cluster/health", get(health))
        .route("/_bulk", post(bulk_default).put(bulk_default))
        .route("/{index}/_bulk", post(bulk_with_index).put(bulk_with_index))
        .route(
            "/_index_template/{name}",
            put(put_template)
                .post(put_template)
                .get(get_template)
                .head(get_template),
        )
        .route(
            "/_template/{name}",
            put(put_template)
                .post(put_template)
                .get(get_template)
                .head(get_template),
        )
        .route("/_sink/stats", get(sink_stats))
        .route("/_sink/reset", post(sink_reset))
        .route("/_sink/events", post(events))
        .fallback(fallback)
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

pub async fn run(opts: SinkOptions) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .with_context(|| format!("binding the sink to {}", opts.addr))?;
    let addr = listener.local_addr()?;
    println!(r#"{{"url":"http://{addr}"}}"#);
    let sink = Arc::new(Sink {
        totals: Mutex::new(Totals::default()),
        started: Instant::now(),
        cpu_at_start: stats::read_proc("self").map(|p| p.cpu_s()).unwrap_or(0.0),
        items: opts.items,
        expect: opts.expect,
        reached: tokio::sync::Notify::new(),
        trace: match &opts.trace {
            None => None,
            Some(path) => Some(Mutex::new(std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening the trace file {}", path.display()))?,
            ))),
        },
    });
    let server = axum::serve(listener, router(Arc::clone(&sink)));
    if let Some(beats_addr) = opts.beats_addr {
        let l = tokio::net::TcpListener::bind(beats_addr)
            .await
            .with_context(|| format!("binding the sink's Beats listener to {beats_addr}"))?;
        println!(r#"{{"beats":"{}"}}"#, l.local_addr()?);
        tokio::spawn(beats_listener(l, Arc::clone(&sink)));
    }
    if let Some(interval) = opts.report_interval.filter(|d| !d.is_zero()) {
        let sink = Arc::clone(&sink);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("{}", sink.stats_json());
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let expect_reached = async {
        if opts.expect.is_some() {
            sink.reached.notified().await
        } else {
            std::future::pending().await
        }
    };
    let deadline = async {
        match opts.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = std::future::IntoFuture::into_future(server) => r.context("sink server failed")?,
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = expect_reached => {}
        _ = deadline => {}
    }
    println!("{}", sink.stats_json());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_send_times() {
        assert_eq!(
            sent_at(br#"{"a":1,"sent_at_us":1764238502123456}"#),
            Some(1_764_238_502_123_456)
        );
        assert_eq!(sent_at(br#"{"sent_at_us": 42,"b":2}"#), Some(42));
        assert_eq!(sent_at(br#"{"message":"{\"sent_at_us\":7}"}"#), Some(7));
        assert_eq!(sent_at(br#"{"sent_at_us":"x"}"#), None);
        assert_eq!(sent_at(br#"{"nope":1}"#), None);
    }

    #[test]
    fn counts_bulk_actions_and_builds_items() {
        let body = concat!(
            "{\"index\":{\"_index\":\"logs-a\"}}\n{\"sent_at_us\":1000}\n",
            "{\"create\":{\"_index\":\"logs-b\",\"_id\":\"x1\"}}\n{\"sent_at_us\":2000}\n",
            "{\"delete\":{\"_index\":\"logs-a\",\"_id\":\"gone\"}}\n",
            "{ \"update\" : {\"_id\":\"u\"}}\n{\"doc\":{\"a\":1}}\n",
            "{\"index\":{}}\n{\"no_time\":true}\n\n",
        );
        let mut h = Histogram::default();
        let mut items = Vec::new();
        let scan = scan_bulk(body.as_bytes(), 5000, b"dflt", &mut h, Some(&mut items));
        assert_eq!(
            scan,
            Scan {
                docs: 5,
                latency_samples: 2,
                min_us: 3000,
                max_us: 4000,
            }
        );
        assert_eq!(h.count(), 2);
        assert_eq!(h.max(), 4000);
        let resp: serde_json::Value =
            serde_json::from_slice(&[b"[", &items[..], b"]"].concat()).unwrap();
        let items = resp.as_array().unwrap();
        assert_eq!(items.len(), 5);
        assert_eq!(items[0]["index"]["_index"], "logs-a");
        assert_eq!(items[0]["index"]["status"], 201);
        assert_eq!(items[1]["create"]["_id"], "x1");
        assert_eq!(items[2]["delete"]["status"], 200);
        assert_eq!(items[3]["update"]["_index"], "dflt");
        assert_eq!(items[4]["index"]["_index"], "dflt");
    }

    #[test]
    fn counts_generated_bulk_bodies_exactly() {
        use crate::gen::{Body, EventGen, GenConfig};
        let mut g = EventGen::new(&GenConfig {
            seed: 5,
            users: 100,
        });
        let mut b = Body::build(&mut g, 1000, Some(br#"{"index":{"_index":"loadgen"}}"#));
        b.patch(1_000_000);
        let mut h = Histogram::default();
        let mut items = Vec::new();
        let scan = scan_bulk(b.prefix(777), 3_000_000, b"x", &mut h, Some(&mut items));
        assert_eq!(
            scan,
            Scan {
                docs: 777,
                latency_samples: 777,
                min_us: 2_000_000,
                max_us: 2_000_000,
            }
        );
        // All samples are 2 s: the bucket midpoint is capped at the exact maximum.
        assert_eq!(h.quantile(0.5), 2_000_000);
        let n = scan_ndjson(b"{\"sent_at_us\":1}\n\n{\"a\":2}\n{\"a\":3}", 10, &mut h);
        assert_eq!(
            n,
            Scan {
                docs: 3,
                latency_samples: 1,
                min_us: 9,
                max_us: 9,
            }
        );
    }
}
