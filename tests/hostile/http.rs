//! Attacks on the HTTP input: a gzip bomb, uploads stalled mid-body, large bodies while
//! Elasticsearch is down, and JSON that is deeply nested or not UTF-8.

use crate::common::{client, free_port, Osmem};
use crate::harness::{report, Honest, Target, INDEX};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Honest traffic sent alongside each attack.
const HONEST_BODIES: usize = 10;
const HONEST_PER_BODY: usize = 20;

/// Gzip of `text`.
fn gzip(text: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(text).unwrap();
    enc.finish().unwrap()
}

/// POSTs `body` with `headers`; the status and `X-Sheepdog-Accepted`, or `None` when the
/// request failed.
fn post(url: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Option<(u16, u64)> {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let mut req = http.post(url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().ok()?;
    let accepted = resp
        .headers()
        .get("x-sheepdog-accepted")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some((resp.status().as_u16(), accepted))
}

/// The honest client's share of an attack: sends until done or `deadline`, then waits for its
/// events to be searchable and checks every served one is.
fn honest_alongside(t: &Target, prefix: &str, deadline: Instant) -> Honest {
    let mut honest = Honest::new(prefix);
    honest.send(&t.dog.http_url, HONEST_BODIES, HONEST_PER_BODY, deadline);
    honest
}

fn check_honest(es: &Osmem, honest: &Honest, attack: &str) {
    assert_eq!(
        honest.served, honest.sent,
        "{attack}: honest requests were not all served"
    );
    let indexed = honest.indexed(es, HONEST_PER_BODY, Duration::from_secs(120));
    assert_eq!(
        indexed,
        (honest.served * HONEST_PER_BODY) as u64,
        "{attack}: honest events indexed"
    );
}

/// 3,400,000 lines of `{}` (10.2 MB, inside the shipped 10 MiB max_body_size) in a 10 KB gzip
/// body, posted by three clients at once: each body is inflated under the budget and decoded a
/// chunk at a time as the queue drains, and answered (200 or 429 with the count taken) within
/// queue_wait of waiting.
#[test]
fn gzip_bomb() {
    let attack = "gzip bomb";
    let t = Target::start(&[]);
    let bomb = gzip(&b"{}\n".repeat(3_400_000));
    assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
    let url = t.dog.http_url.clone();
    let bombers: Vec<_> = (0..3)
        .map(|_| {
            let (url, bomb) = (url.clone(), bomb.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                let answer = post(&url, bomb, &[("content-encoding", "gzip")]);
                (answer, started.elapsed())
            })
        })
        .collect();
    let honest = honest_alongside(&t, "bomb", Instant::now() + Duration::from_secs(90));
    for b in bombers {
        let (answer, took) = b.join().unwrap();
        let (status, accepted) = answer.expect("the bomb was answered");
        assert!(
            status == 200 || status == 429,
            "{attack}: answered {status} after {took:?}"
        );
        // queue_wait (5s) of waiting, plus inflating and decoding 10 MB in a debug build.
        assert!(
            took < Duration::from_secs(60),
            "{attack}: answered after {took:?}"
        );
        assert!(accepted <= 3_400_000);
    }
    let peak = t.assert_survived(attack);
    check_honest(&t.es, &honest, attack);
    report(attack, peak, &honest);
}

/// Opens a connection, announces a 64 KiB NDJSON body, sends half of it and goes quiet.
fn stalled_upload(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let line = "{\"request_id\":\"stalled\",\"user_id\":\"stalled\"}\n";
    let body = line.repeat(65536 / line.len() + 1);
    let head = format!(
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body.as_bytes()[..body.len() / 2]).unwrap();
    s
}

/// What a stalled connection got: the status line's code, or 0 when it was closed without an
/// answer; `None` when nothing happened before `deadline`.
fn fate(s: &mut TcpStream, deadline: Instant) -> Option<u16> {
    let left = deadline.saturating_duration_since(Instant::now());
    s.set_read_timeout(Some(left.max(Duration::from_millis(10))))
        .unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => Some(0),
        Ok(n) => {
            let text = String::from_utf8_lossy(&buf[..n]);
            Some(text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0))
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(0),
        Err(_) => None,
    }
}

/// 300 uploads stalled mid-body (the classic slow-loris) hold 300 connections and about 10 MiB
/// of body bytes: the honest client is still served, and every stalled upload is answered 408
/// once body_read_timeout (3 s here) has passed.
#[test]
fn stalled_uploads() {
    let attack = "300 HTTP uploads stalled mid-body";
    let timeout = Duration::from_secs(3);
    let t = Target::start(&[("HTTP_BODY_READ_TIMEOUT", "3s")]);
    let addr = t
        .dog
        .http_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let stalled_at = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..300).map(|_| stalled_upload(&addr)).collect();
    let honest = honest_alongside(&t, "loris", Instant::now() + Duration::from_secs(60));
    // Answered within the body timeout plus scheduling slack for 300 connections.
    let deadline = stalled_at + timeout + Duration::from_secs(10);
    let fates: Vec<Option<u16>> = stalled.iter_mut().map(|s| fate(s, deadline)).collect();
    let answered = fates.iter().filter(|f| **f == Some(408)).count();
    assert!(
        fates.iter().all(|f| f.is_some()),
        "{attack}: some stalled uploads were neither answered nor closed within {:?}: {fates:?}",
        deadline - stalled_at
    );
    assert_eq!(answered, 300, "{attack}: {fates:?}");
    let peak = t.assert_survived(attack);
    check_honest(&t.es, &honest, attack);
    assert_eq!(
        t.dog
            .metric("sheepdog_input_rejected_total{input=\"http\",reason=\"body_timeout\"}"),
        Some(300.0)
    );
    report(attack, peak, &honest);
}

/// Events in one flood body: more than the shipped queue's 4096, so no body fits in the queue.
/// (The bodies held 12,000 smaller events; a debug build on a shared machine indexes
/// too slowly for 288,000 events in a test, so the same 4 MiB carry half as many.)
const FLOOD_EVENTS: u64 = 6_000;

/// One flood client's 4 MiB NDJSON body: FLOOD_EVENTS events with unique request ids.
fn flood_body(client: usize) -> Vec<u8> {
    let pad = "x".repeat(560);
    (0..FLOOD_EVENTS)
        .map(|i| {
            let line = json!({
                "request_id": format!("flood-{client}-{i}"),
                "user_id": format!("flood-{client}"),
                "model": "gpt-4o",
                "status_code": 200,
                "latency_ms": 120,
                "timestamp": "2026-11-29T12:00:00Z",
                "note": pad,
            });
            format!("{line}\n")
        })
        .collect::<String>()
        .into_bytes()
}

/// Posts `body` until all of it was taken or `deadline` passes: after an answer that took
/// part of it (`X-Sheepdog-Accepted: N`, 429), the events after the first N are sent again,
/// as the README tells clients without idempotent document ids. Returns whether the whole body
/// was taken and how many answers took part of it.
fn post_until_taken(url: &str, body: Vec<u8>, deadline: Instant) -> (bool, usize) {
    let mut rest = body;
    let mut partial = 0;
    while Instant::now() < deadline {
        let answer = post(
            url,
            rest.clone(),
            &[("content-type", "application/x-ndjson")],
        );
        match answer {
            Some((200, _)) => return (true, partial),
            Some((_, accepted)) if accepted > 0 => {
                partial += 1;
                let cut: usize = rest
                    .split_inclusive(|b| *b == b'\n')
                    .take(accepted as usize)
                    .map(|l| l.len())
                    .sum();
                rest.drain(..cut);
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    (false, partial)
}

/// Documents and distinct request ids indexed for a flood client.
fn indexed_ids(es: &Osmem, client: usize) -> (u64, u64) {
    let r = es.search(
        INDEX,
        &json!({
            "size": 0,
            "track_total_hits": true,
            "query": {"term": {"user_id": format!("flood-{client}")}},
            "aggs": {"ids": {"cardinality": {"field": "request_id", "precision_threshold": 40000}}}
        }),
    );
    (
        r["hits"]["total"]["value"].as_u64().unwrap_or(0),
        r["aggregations"]["ids"]["value"].as_u64().unwrap_or(0),
    )
}

/// Two dozen clients post 4 MiB bodies (6,000 events each, more than the queue's 4096) while
/// Elasticsearch is down: every request is answered within queue_wait (429 with the count of
/// events taken), nothing grows past the budget, and once Elasticsearch is back every event
/// of every body is indexed exactly once: each client resends only what was not taken, so no
/// idempotent document ids are needed for that.
#[test]
fn large_bodies_while_elasticsearch_is_down() {
    let attack = "24 concurrent 4 MiB bodies while Elasticsearch is down";
    let es_addr = format!("127.0.0.1:{}", free_port());
    let es_url = format!("http://{es_addr}");
    let t = Target::start(&[("ES_HOSTS", es_url.as_str())]);
    let deadline = Instant::now() + Duration::from_secs(600);
    let clients: Vec<_> = (0..24)
        .map(|c| {
            let url = t.dog.http_url.clone();
            std::thread::spawn(move || post_until_taken(&url, flood_body(c), deadline))
        })
        .collect();
    // While Elasticsearch is down, requests are answered (429) within queue_wait.
    std::thread::sleep(Duration::from_secs(3));
    let probe_body = flood_body(99);
    let started = Instant::now();
    let probe = post(&t.dog.http_url, probe_body, &[]);
    assert!(
        matches!(probe, Some((429, _))),
        "{attack}: {probe:?} while Elasticsearch is down"
    );
    // The stated bound: body_read_timeout (30s) + queue_wait (5s) + inflating and decoding.
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(40),
        "{attack}: answered after {took:?}"
    );
    eprintln!(
        "{attack}: a 4 MiB body was answered 429 after {took:?} while Elasticsearch was down"
    );
    let honest_url = t.dog.http_url.clone();
    let honest = std::thread::spawn(move || {
        let mut h = Honest::new("down");
        h.send(&honest_url, HONEST_BODIES, HONEST_PER_BODY, deadline);
        h
    });
    std::thread::sleep(Duration::from_secs(10));
    let es = Osmem::start_on(&es_addr);
    let mut partial = 0;
    for c in clients {
        let (ok, p) = c.join().unwrap();
        assert!(ok, "{attack}: a body was never taken whole");
        partial += p;
    }
    let honest = honest.join().unwrap();
    let peak = t.assert_survived(attack);
    check_honest(&es, &honest, attack);
    let settle = Instant::now();
    for c in 0..24 {
        while indexed_ids(&es, c).0 < FLOOD_EVENTS && settle.elapsed() < Duration::from_secs(300) {
            std::thread::sleep(Duration::from_secs(1));
        }
        assert_eq!(
            indexed_ids(&es, c),
            (FLOOD_EVENTS, FLOOD_EVENTS),
            "{attack}: client {c}"
        );
    }
    eprintln!("{attack}: {partial} answers took part of a body");
    report(attack, peak, &honest);
}

/// Documents nested 100,000 deep (arrays, objects, object values), an unterminated array and
/// bytes that are not UTF-8: each request is answered 200 and each document indexed as an
/// event tagged `_jsonparsefailure`.
#[test]
fn deeply_nested_and_non_utf8_json() {
    let attack = "deeply nested and non-UTF-8 JSON";
    let t = Target::start(&[]);
    let mut bodies: Vec<Vec<u8>> = vec![
        "[".repeat(100_000).into_bytes(),
        "{".repeat(100_000).into_bytes(),
        "{\"a\":".repeat(100_000).into_bytes(),
        format!("[{}{}]", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        b"{\"user_id\":\"\xff\xfe\",\"n\":1}\n{\"user_id\":\"\xc3\x28\"}\n".to_vec(),
        b"[{\"user_id\":\"\xe2\x82\"}]".to_vec(),
    ];
    bodies.push(format!("{{\"deep\":{}}}", "[".repeat(200)).into_bytes());
    let expected = 8;
    for body in &bodies {
        let (status, _) = post(&t.dog.http_url, body.clone(), &[]).expect("answered");
        assert_eq!(status, 200, "{attack}");
    }
    let honest = honest_alongside(&t, "nested", Instant::now() + Duration::from_secs(60));
    let peak = t.assert_survived(attack);
    check_honest(&t.es, &honest, attack);
    let tagged = || -> u64 {
        let r: Value = t.es.search(
            INDEX,
            &json!({"size": 0, "query": {"term": {"tags": "_jsonparsefailure"}}}),
        );
        r["hits"]["total"]["value"].as_u64().unwrap_or(0)
    };
    let started = Instant::now();
    while tagged() < expected && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(tagged(), expected, "{attack}: tagged events indexed");
    assert!(client()
        .get(format!("{}/health", t.dog.api_url))
        .send()
        .is_ok());
    report(attack, peak, &honest);
}
