//! Elasticsearch behaving badly, through a fault-injecting HTTP proxy in front of osmem-server:
//! whole bulk requests answered 503, requests forwarded and their replies dropped, and single
//! items refused with 429 (removed from what is forwarded). The shipped pipeline's idempotent
//! document ids and `create` make every retry harmless: each event is indexed exactly once.

mod common;

use common::{free_port, Osmem, Sheepdog};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the proxy does to bulk requests, in turn.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    /// Forward untouched.
    None,
    /// Answer 503 without forwarding.
    Refuse,
    /// Forward, then close the connection without an answer.
    DropReply,
    /// Remove every third item from the request, forward the rest, and answer those items 429.
    RefuseItems,
    /// Forward, and answer only after the client's request timeout has passed.
    SlowReply,
}

/// Counts of what the proxy did.
#[derive(Default)]
struct Counts {
    /// While set, every connection is closed at once, unanswered: the cluster is away.
    away: std::sync::atomic::AtomicBool,
    bulks: AtomicUsize,
    refused: AtomicUsize,
    dropped: AtomicUsize,
    items_refused: AtomicUsize,
}

struct Proxy {
    url: String,
    counts: Arc<Counts>,
}

/// Starts a proxy to `upstream` that applies `faults` to bulk requests round-robin.
fn start_proxy(upstream: String, faults: Vec<Fault>) -> Proxy {
    let port = free_port();
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let counts = Arc::new(Counts::default());
    let shared = counts.clone();
    std::thread::spawn(move || {
        let faults = Arc::new(faults);
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (upstream, faults, counts) = (upstream.clone(), faults.clone(), shared.clone());
            std::thread::spawn(move || serve(conn, &upstream, &faults, &counts));
        }
    });
    Proxy {
        url: format!("http://127.0.0.1:{port}"),
        counts,
    }
}

/// One request per connection (the proxy answers `Connection: close`).
fn serve(conn: TcpStream, upstream: &str, faults: &[Fault], counts: &Counts) {
    if counts.away.load(Ordering::Relaxed) {
        return;
    }
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let Some((method, path, headers, body)) = read_request(&mut reader) else {
        return;
    };
    let mut conn = conn;
    let fault = if path.ends_with("/_bulk") {
        let n = counts.bulks.fetch_add(1, Ordering::Relaxed);
        faults[n % faults.len()]
    } else {
        Fault::None
    };
    match fault {
        Fault::Refuse => {
            counts.refused.fetch_add(1, Ordering::Relaxed);
            let body = br#"{"error":"injected","status":503}"#;
            respond(&mut conn, 503, body);
        }
        Fault::DropReply => {
            let _ = forward(upstream, &method, &path, &headers, body);
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            // No answer: the client cannot tell whether the request was applied.
        }
        Fault::RefuseItems => {
            let (kept, refused) = split_items(&body);
            counts
                .items_refused
                .fetch_add(refused.len(), Ordering::Relaxed);
            let (status, reply) =
                forward(upstream, &method, &path, &headers, kept).unwrap_or((502, b"{}".to_vec()));
            respond(&mut conn, status, &merge_reply(&reply, &refused));
        }
        Fault::SlowReply => {
            let reply = forward(upstream, &method, &path, &headers, body);
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(SLOW_REPLY);
            if let Some((status, reply)) = reply {
                respond(&mut conn, status, &reply);
            }
        }
        Fault::None => match forward(upstream, &method, &path, &headers, body) {
            Some((status, reply)) => respond(&mut conn, status, &reply),
            None => respond(&mut conn, 502, b"{}"),
        },
    }
}

type Request = (String, String, Vec<(String, String)>, Vec<u8>);

/// How long a slow reply takes: past the `request_timeout` the slow-cluster test sets.
const SLOW_REPLY: Duration = Duration::from_secs(4);

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    let mut length = 0;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
        if k == "content-length" {
            length = v.parse().ok()?;
        }
        headers.push((k, v));
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((method, path, headers, body))
}

fn respond(conn: &mut TcpStream, status: u16, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
}

fn forward(
    upstream: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Option<(u16, Vec<u8>)> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .ok()?;
    let mut req = client.request(method.parse().ok()?, format!("{upstream}{path}"));
    for (k, v) in headers {
        if k == "content-type" || k == "content-encoding" || k == "authorization" {
            req = req.header(k.as_str(), v.as_str());
        }
    }
    let resp = req.body(body).send().ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.bytes().ok()?.to_vec()))
}

/// The bulk body without every third item, and the positions (in the original request) of
/// the removed ones.
fn split_items(body: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let lines: Vec<&[u8]> = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut kept = Vec::new();
    let mut refused = Vec::new();
    for (i, pair) in lines.chunks(2).enumerate() {
        if i % 3 == 2 {
            refused.push(i);
            continue;
        }
        for l in pair {
            kept.extend_from_slice(l);
            kept.push(b'\n');
        }
    }
    (kept, refused)
}

/// The upstream reply with a 429 item put back at each refused position.
fn merge_reply(reply: &[u8], refused: &[usize]) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(reply).unwrap_or(json!({"items": []}));
    let upstream: Vec<Value> = v["items"].as_array().cloned().unwrap_or_default();
    let mut upstream = upstream.into_iter();
    let total = upstream.len() + refused.len();
    let items: Vec<Value> = (0..total)
        .map(|i| {
            if refused.contains(&i) {
                json!({"create": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "injected"}}})
            } else {
                upstream.next().unwrap_or(json!({"create": {"status": 500}}))
            }
        })
        .collect();
    v["errors"] = json!(true);
    v["items"] = json!(items);
    serde_json::to_vec(&v).unwrap()
}

/// Every document's request_id in the shipped pipeline's indices, with how often it appears.
fn indexed(es: &Osmem) -> HashMap<String, u64> {
    es.refresh();
    let r = es.search(
        "holysheep-logs-*",
        &json!({"size": 10000, "_source": ["request_id"]}),
    );
    let mut seen = HashMap::new();
    for hit in r["hits"]["hits"].as_array().cloned().unwrap_or_default() {
        if let Some(id) = hit["_source"]["request_id"].as_str() {
            *seen.entry(id.to_string()).or_insert(0) += 1;
        }
    }
    seen
}

/// Posts events `from..to` in NDJSON bodies of 200, each answered 200.
fn post_events(dog: &Sheepdog, from: usize, to: usize) {
    let mut n = from;
    while n < to {
        let end = (n + 200).min(to);
        let lines: String = (n..end)
            .map(|i| {
                format!(
                    "{}\n",
                    json!({"request_id": format!("f-{i}"), "model": "gpt-4.1", "status": "success",
                           "total_tokens": 100, "latency_ms": 30.0})
                )
            })
            .collect();
        let (code, text) = dog.post(lines, "application/x-ndjson");
        assert_eq!(code, 200, "{text}");
        n = end;
    }
}

/// Waits (at most `timeout`) until `sent` distinct events are indexed, then prints and checks
/// the tally.
fn settle(name: &str, es: &Osmem, dog: &Sheepdog, sent: usize, timeout: Duration) {
    let started = Instant::now();
    let mut seen = indexed(es);
    while seen.len() < sent && started.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(500));
        seen = indexed(es);
    }
    let (duplicates, lost) = common::fault_tally(name, "f", sent, &seen);
    assert_eq!((duplicates, lost), (0, 0), "{}", dog.log());
    assert_eq!(es.count("holysheep-logs-*"), sent as u64);
}

#[test]
fn elasticsearch_away_for_a_minute_mid_stream_loses_and_doubles_nothing() {
    let es = Osmem::start();
    let proxy = start_proxy(es.url.clone(), vec![Fault::None]);
    let mut dog = Sheepdog::start("pipelines/holysheep.toml", &[("ES_HOSTS", &proxy.url)]);
    post_events(&dog, 0, 1000);
    proxy.counts.away.store(true, Ordering::Relaxed);
    // Accepted while the cluster is away: held in the queue and the output until it is back.
    post_events(&dog, 1000, 4000);
    std::thread::sleep(Duration::from_secs(60));
    let (_, health) = dog.health();
    assert_ne!(
        health["status"], "ok",
        "the output reports the cluster away: {health}"
    );
    proxy.counts.away.store(false, Ordering::Relaxed);
    settle(
        "Elasticsearch away for 60 s",
        &es,
        &dog,
        4000,
        Duration::from_secs(120),
    );
    assert!(dog.stop().success());
}

#[test]
fn a_request_timeout_is_retried_with_the_same_ids() {
    let es = Osmem::start();
    let proxy = start_proxy(es.url.clone(), vec![Fault::None, Fault::SlowReply]);
    // The shipped pipeline with a request timeout the slow replies overrun: each such bulk was
    // applied by the cluster, but sheepdog cannot know it and sends it again.
    let shipped =
        std::fs::read_to_string(common::repo_root().join("pipelines/holysheep.toml")).unwrap();
    let patched = shipped.replacen(
        "action = \"create\"\n",
        "action = \"create\"\nrequest_timeout = \"2s\"\n",
        1,
    );
    assert_ne!(
        patched, shipped,
        "the shipped pipeline still has action = \"create\""
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("slow-cluster.toml");
    std::fs::write(&config, patched).unwrap();
    let mut dog = Sheepdog::start(&config, &[("ES_HOSTS", &proxy.url)]);
    post_events(&dog, 0, 2000);
    // The late bulk's documents come back as already indexed once its retry is answered.
    let duplicates = "sheepdog_es_documents_total{output=\"elasticsearch\",outcome=\"duplicate\"}";
    common::wait_for(Duration::from_secs(60), "the resent bulk's 409s", || {
        (dog.metric(duplicates).unwrap_or(0.0) > 0.0).then_some(())
    });
    settle(
        "replies slower than request_timeout",
        &es,
        &dog,
        2000,
        Duration::from_secs(120),
    );
    assert!(
        proxy.counts.dropped.load(Ordering::Relaxed) > 0,
        "some replies came too late"
    );
    assert!(dog.stop().success());
}

#[test]
fn a_faulty_cluster_for_a_whole_run_loses_and_doubles_nothing() {
    let es = Osmem::start();
    let proxy = start_proxy(
        es.url.clone(),
        vec![
            Fault::None,
            Fault::Refuse,
            Fault::DropReply,
            Fault::RefuseItems,
        ],
    );
    let mut dog = Sheepdog::start("pipelines/holysheep.toml", &[("ES_HOSTS", &proxy.url)]);
    let sent = 4000;
    post_events(&dog, 0, sent);
    settle(
        "faulty proxy for a whole run",
        &es,
        &dog,
        sent,
        Duration::from_secs(120),
    );
    let c = &proxy.counts;
    let (refused, dropped, items) = (
        c.refused.load(Ordering::Relaxed),
        c.dropped.load(Ordering::Relaxed),
        c.items_refused.load(Ordering::Relaxed),
    );
    assert!(
        refused > 0 && dropped > 0 && items > 0,
        "every fault happened: {refused} {dropped} {items}"
    );
    assert!(dog.stop().success());
}
