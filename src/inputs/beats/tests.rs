//! Connection-level tests: a real listener on 127.0.0.1, hand-built frames from a TCP client,
//! exact ACK bytes back.

use super::codec::{COMPRESSED, DATA, JSON, VERSION, WINDOW};
use super::*;
use crate::queue::{self, QueueReceiver};
use std::io::Write;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

fn window(n: u32) -> Vec<u8> {
    let mut v = vec![VERSION, WINDOW];
    v.extend_from_slice(&n.to_be_bytes());
    v
}

fn json(seq: u32, body: &str) -> Vec<u8> {
    let mut v = vec![VERSION, JSON];
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(body.as_bytes());
    v
}

fn compressed(inner: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(3));
    e.write_all(inner).unwrap();
    let z = e.finish().unwrap();
    let mut v = vec![VERSION, COMPRESSED];
    v.extend_from_slice(&(z.len() as u32).to_be_bytes());
    v.extend_from_slice(&z);
    v
}

fn config(extra: &str) -> Config {
    toml::from_str(&format!("address = \"127.0.0.1:0\"\n{extra}")).unwrap()
}

struct Harness {
    addr: SocketAddr,
    ctx: BuildContext,
    rx: Arc<QueueReceiver>,
    task: JoinHandle<()>,
}

async fn start(cfg: Config, capacity: usize) -> Harness {
    let ctx = BuildContext::new(std::env::temp_dir(), CancellationToken::new());
    let (tx, rx) = queue::bounded(capacity, 1024, Gauge::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = cfg.serve_on(listener, None, "beats", &ctx, tx).unwrap();
    Harness {
        addr,
        ctx,
        rx,
        task,
    }
}

impl Harness {
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.ctx.metrics.value(name, labels).unwrap_or(-1.0)
    }
    fn errors(&self, kind: &str) -> f64 {
        self.metric(
            "sheepdog_beats_protocol_errors_total",
            &[("input", "beats"), ("kind", kind)],
        )
    }
    async fn stop(self) {
        self.ctx.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("input stops after shutdown")
            .unwrap();
    }
}

async fn read_ack(s: &mut TcpStream) -> u32 {
    let mut b = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b))
        .await
        .expect("an ACK within 5 s")
        .unwrap();
    assert_eq!(&b[..2], b"2A");
    u32::from_be_bytes([b[2], b[3], b[4], b[5]])
}

/// Reads until the server closes the connection (or it resets), within 5 s.
async fn expect_closed(s: &mut TcpStream) {
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("server closes the connection");
    if let Ok(n) = r {
        assert_eq!(n, 0, "no ACK for a broken window: {rest:?}");
    }
}

#[tokio::test]
async fn acks_a_compressed_window_after_queueing_and_keeps_the_fields() {
    let h = start(config("tags = [\"beats\"]"), 100).await;
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    let mut inner = json(
        1,
        r#"{"@timestamp":"2026-11-27T10:15:02.123Z","message":"one","@metadata":{"beat":"filebeat","version":"8.1.3"},"log":{"file":{"path":"/var/log/a.json"}}}"#,
    );
    inner.extend(json(2, "not json"));
    let mut d = vec![VERSION, DATA, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 4];
    d.extend_from_slice(b"line");
    d.extend_from_slice(&[0, 0, 0, 5]);
    d.extend_from_slice(b"three");
    inner.extend(d);
    let mut bytes = window(3);
    bytes.extend(compressed(&inner));
    c.write_all(&bytes).await.unwrap();
    assert_eq!(read_ack(&mut c).await, 3);
    let batch = h.rx.recv().await.unwrap();
    let e = &batch.events;
    assert_eq!(e.len(), 3);
    assert_eq!(e[0].fields()["message"], "one");
    assert_eq!(e[0].fields()["log"]["file"]["path"], "/var/log/a.json");
    assert_eq!(e[0].timestamp_ms(), 1_795_774_502_123);
    assert_eq!(e[0].metadata()["beat"], "filebeat");
    assert_eq!(e[0].metadata()["version"], "8.1.3");
    assert_eq!(e[0].metadata()["input"]["beats"]["host"]["ip"], "127.0.0.1");
    assert!(e[0].has_tag("beats"));
    assert_eq!(e[1].fields()["message"], "not json");
    assert!(e[1].has_tag("_jsonparsefailure"));
    assert_eq!(e[2].fields()["message"], "three");
    // an empty window is answered with ACK 0
    c.write_all(&window(0)).await.unwrap();
    assert_eq!(read_ack(&mut c).await, 0);
    assert_eq!(
        h.metric("sheepdog_beats_windows_total", &[("input", "beats")]),
        2.0
    );
    assert_eq!(
        h.metric("sheepdog_input_events_total", &[("input", "beats")]),
        3.0
    );
    assert_eq!(
        h.metric("sheepdog_input_parse_failures_total", &[("input", "beats")]),
        1.0
    );
    assert_eq!(
        h.metric("sheepdog_beats_acks_total", &[("input", "beats")]),
        2.0
    );
    drop(c);
    h.stop().await;
}

#[tokio::test]
async fn pipelined_windows_are_acked_in_order_with_their_own_sequences() {
    let h = start(config(""), 100).await;
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    // Filebeat restarts at 1 per window; pylogbeat keeps counting (ACK echoes its seq).
    let mut bytes = window(2);
    bytes.extend(compressed(&[json(1, "{}"), json(2, "{}")].concat()));
    bytes.extend(window(2));
    bytes.extend(json(11, "{}"));
    bytes.extend(json(12, "{}"));
    c.write_all(&bytes).await.unwrap();
    assert_eq!(read_ack(&mut c).await, 2);
    assert_eq!(read_ack(&mut c).await, 12);
    drop(c);
    h.stop().await;
}

#[tokio::test]
async fn keepalives_while_the_queue_is_full_then_the_ack() {
    let h = start(config("keepalive_interval = \"100ms\""), 2).await;
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    let mut bytes = window(2);
    bytes.extend(compressed(&[json(1, "{}"), json(2, "{}")].concat()));
    c.write_all(&bytes).await.unwrap();
    assert_eq!(read_ack(&mut c).await, 2);
    // the first batch is not taken off the queue: the second window waits
    let first = h.rx.recv().await.unwrap();
    c.write_all(&bytes).await.unwrap();
    assert_eq!(read_ack(&mut c).await, 0);
    assert_eq!(read_ack(&mut c).await, 0);
    drop(first);
    // ACK 0s may still be in flight; then comes the real ACK
    let mut seq = read_ack(&mut c).await;
    while seq == 0 {
        seq = read_ack(&mut c).await;
    }
    assert_eq!(seq, 2);
    assert!(h.metric("sheepdog_beats_keepalives_total", &[("input", "beats")]) >= 2.0);
    drop(c);
    h.stop().await;
}

#[tokio::test]
async fn a_window_larger_than_the_queue_is_acked_in_parts() {
    let h = start(config(""), 2).await;
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    let mut bytes = window(5);
    for i in 1..=5 {
        bytes.extend(json(i, "{}"));
    }
    c.write_all(&bytes).await.unwrap();
    let mut acks = Vec::new();
    let mut got = 0;
    while got < 5 {
        let b = h.rx.recv().await.unwrap();
        got += b.events.len();
        acks.push(read_ack(&mut c).await);
    }
    assert_eq!(acks, [2, 4, 5]);
    drop(c);
    h.stop().await;
}

/// Byte streams that break the protocol, each with the error kind it is counted as (under
/// `max_window_size = 10` and `max_frame_size = "4KiB"`).
fn protocol_violations() -> Vec<(Vec<u8>, &'static str)> {
    vec![
        (b"\x16\x03\x01\x02\0".to_vec(), "bad_version"),
        (b"2Q\0\0\0\x01".to_vec(), "unknown_frame"),
        (window(11), "window_too_large"),
        (json(1, "{}"), "event_outside_window"),
        // The complete window is acknowledged; the event after it closes the connection.
        (
            [window(1), json(1, "{}"), json(2, "{}")].concat(),
            "window_overflow",
        ),
        (
            [
                window(1),
                compressed(&[json(1, "{}"), json(2, "{}")].concat()),
            ]
            .concat(),
            "window_overflow",
        ),
        (
            [window(2), compressed(&json(1, &"x".repeat(3000)).repeat(2))].concat(),
            "window_bytes",
        ),
        (
            [window(2), json(1, "{}"), window(1)].concat(),
            "window_incomplete",
        ),
        (
            [window(1), json(1, &"x".repeat(5000))].concat(),
            "too_large",
        ),
        (
            [window(1), b"2C\0\0\0\x03abc".to_vec()].concat(),
            "bad_zlib",
        ),
    ]
}

/// Waits until `ready` holds, looking every 10 ms, at most `tries` times.
async fn eventually(tries: u32, ready: impl Fn() -> bool) {
    for _ in 0..tries {
        if ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Connects to `addr`, sends `bytes` and hangs up.
async fn send_and_hang_up(addr: SocketAddr, bytes: &[u8]) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(bytes).await.unwrap();
    drop(c);
}

#[tokio::test]
async fn protocol_errors_close_only_their_connection() {
    let h = start(
        config("max_window_size = 10\nclient_inactivity_timeout = \"300ms\"\nmax_frame_size = \"4KiB\"\nmax_window_bytes = \"5KiB\""),
        100,
    )
    .await;
    let mut good = TcpStream::connect(h.addr).await.unwrap();
    let mut seen: Vec<&str> = Vec::new();
    for (bytes, kind) in &protocol_violations() {
        let mut c = TcpStream::connect(h.addr).await.unwrap();
        c.write_all(bytes).await.unwrap();
        if *kind == "window_overflow" {
            assert_eq!(read_ack(&mut c).await, 1);
        }
        expect_closed(&mut c).await;
        seen.push(kind);
        let times = seen.iter().filter(|k| *k == kind).count() as f64;
        // the metric is counted just after the close
        eventually(50, || h.errors(kind) >= times).await;
        assert_eq!(h.errors(kind), times, "{kind}");
        // the healthy connection stays served (and busy enough not to go idle)
        good.write_all(&window(0)).await.unwrap();
        assert_eq!(read_ack(&mut good).await, 0);
    }
    // dropped mid-window and mid-frame
    send_and_hang_up(h.addr, &[window(2), json(1, "{}")].concat()).await;
    send_and_hang_up(h.addr, &[window(1), json(1, "{}")[..5].to_vec()].concat()).await;
    eventually(100, || {
        h.errors("closed_mid_window") >= 1.0 && h.errors("truncated") >= 1.0
    })
    .await;
    assert_eq!(h.errors("closed_mid_window"), 1.0);
    assert_eq!(h.errors("truncated"), 1.0);
    // the first connection was not disturbed
    good.write_all(&[window(1), json(1, "{}")].concat())
        .await
        .unwrap();
    assert_eq!(read_ack(&mut good).await, 1);
    // this one and the complete windows before the two overflows
    assert_eq!(
        h.metric("sheepdog_input_events_total", &[("input", "beats")]),
        3.0
    );
    drop(good);
    // silent in the middle of a window (the healthy connection is gone: it would go idle too)
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    c.write_all(&[window(2), json(1, "{}")].concat())
        .await
        .unwrap();
    expect_closed(&mut c).await;
    eventually(50, || h.errors("idle_mid_window") >= 1.0).await;
    assert_eq!(h.errors("idle_mid_window"), 1.0);
    drop(c);
    let open = || h.metric("sheepdog_beats_connections_open", &[("input", "beats")]);
    eventually(100, || open() == 0.0).await;
    assert_eq!(open(), 0.0);
    h.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_their_turn() {
    let h = start(config("max_connections = 1"), 100).await;
    let mut first = TcpStream::connect(h.addr).await.unwrap();
    first
        .write_all(&[window(1), json(1, "{}")].concat())
        .await
        .unwrap();
    assert_eq!(read_ack(&mut first).await, 1);
    // the kernel accepts the second connection, the server does not serve it yet
    let mut second = TcpStream::connect(h.addr).await.unwrap();
    second
        .write_all(&[window(1), json(1, "{}")].concat())
        .await
        .unwrap();
    let mut b = [0u8; 6];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), second.read_exact(&mut b))
            .await
            .is_err(),
        "second connection served while the first holds the only permit"
    );
    drop(first);
    assert_eq!(read_ack(&mut second).await, 1);
    drop(second);
    h.stop().await;
}

#[tokio::test]
async fn a_client_address_beyond_its_cap_is_closed_at_once_and_counted() {
    let h = start(config("max_connections_per_client = 2"), 100).await;
    let mut served = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(h.addr).await.unwrap();
        c.write_all(&window(0)).await.unwrap();
        assert_eq!(read_ack(&mut c).await, 0);
        served.push(c);
    }
    let refused = || {
        h.metric(
            "sheepdog_beats_connections_refused_total",
            &[("input", "beats"), ("reason", "per_client")],
        )
    };
    for n in 1..=3 {
        let mut c = TcpStream::connect(h.addr).await.unwrap();
        let _ = c.write_all(&window(0)).await;
        expect_closed(&mut c).await;
        eventually(50, || refused() >= n as f64).await;
        assert_eq!(refused(), n as f64);
    }
    // The served ones go on; once one ends, the address has room again.
    served[0].write_all(&window(0)).await.unwrap();
    assert_eq!(read_ack(&mut served[0]).await, 0);
    drop(served.remove(0));
    let mut again = None;
    for _ in 0..50 {
        let mut c = TcpStream::connect(h.addr).await.unwrap();
        let _ = c.write_all(&window(0)).await;
        let mut b = [0u8; 6];
        let read = tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut b)).await;
        if matches!(read, Ok(Ok(_))) {
            again = Some(b);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(again, Some(codec::ack(0)));
    h.stop().await;
}

#[tokio::test]
async fn a_frame_trickling_in_below_the_floor_rate_is_closed() {
    let h = start(
        config("min_frame_rate = \"1KiB\"\nframe_rate_grace = \"400ms\""),
        100,
    )
    .await;
    // A merely idle connection between windows is not slow.
    let mut idle = TcpStream::connect(h.addr).await.unwrap();
    idle.write_all(&window(0)).await.unwrap();
    assert_eq!(read_ack(&mut idle).await, 0);
    // A frame announcing 100 KB that comes at 100 bytes every 100 ms (1000 bytes/s).
    let mut slow = TcpStream::connect(h.addr).await.unwrap();
    let mut frame = [window(1), json(1, &"x".repeat(100_000))].concat();
    frame.truncate(6 + 10 + 1000);
    let mut closed = false;
    for chunk in frame.chunks(100) {
        if slow.write_all(chunk).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if h.errors("slow_frame") >= 1.0 {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow frame was not closed");
    expect_closed(&mut slow).await;
    assert_eq!(h.errors("slow_frame"), 1.0);
    idle.write_all(&window(0)).await.unwrap();
    assert_eq!(read_ack(&mut idle).await, 0);
    h.stop().await;
}

#[tokio::test]
async fn a_window_waits_for_room_in_the_memory_budget_and_its_charge_travels_with_it() {
    use crate::budget::{event_bytes, Use};
    let h = start(config("keepalive_interval = \"100ms\""), 100).await;
    let budget = h.ctx.budget.clone();
    let per_event = event_bytes(2);
    budget.set_limit((per_event * 3) as u64);
    // Someone else holds two events' worth: one is left, the window needs two.
    let hog = budget.try_charge(per_event * 2, Use::HttpBody).unwrap();
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    c.write_all(&[window(2), json(1, "{}"), json(2, "{}")].concat())
        .await
        .unwrap();
    assert_eq!(read_ack(&mut c).await, 0, "a keepalive while it waits");
    assert_eq!(
        h.metric("sheepdog_input_events_total", &[("input", "beats")]),
        0.0,
        "nothing queued without room"
    );
    drop(hog);
    let mut ack = read_ack(&mut c).await;
    while ack == 0 {
        ack = read_ack(&mut c).await;
    }
    assert_eq!(ack, 2);
    // The events' bytes stay charged while they are in the queue.
    let batch = h.rx.recv().await.unwrap();
    assert_eq!(batch.events.len(), 2);
    assert_eq!(budget.used(), per_event * 2);
    drop(batch);
    assert_eq!(budget.used(), 0);
    // A window that could never fit the whole budget closes its connection.
    budget.set_limit(per_event as u64);
    c.write_all(&[window(2), json(1, "{}"), json(2, "{}")].concat())
        .await
        .unwrap();
    expect_closed(&mut c).await;
    eventually(50, || h.errors("memory_budget") >= 1.0).await;
    assert_eq!(h.errors("memory_budget"), 1.0);
    h.stop().await;
}

#[test]
fn config_defaults_and_validation() {
    let c = config("");
    assert_eq!(c.client_inactivity_timeout, Duration::from_secs(60));
    assert_eq!(c.keepalive_interval, Duration::from_secs(5));
    assert_eq!(c.max_connections, 1000);
    assert_eq!(c.max_connections_per_client, 64);
    assert_eq!(c.max_window_bytes, 64 << 20);
    assert_eq!(c.min_frame_rate, 1024);
    assert_eq!(c.frame_rate_grace, Duration::from_secs(10));
    assert!(c.validate().is_empty());
    let c = config("ssl_enabled = \"true\"\nssl_certificate = \"/nonexistent/cert.pem\"\nssl_key = \"/nonexistent/key.pem\"\nssl_client_authentication = \"required\"");
    let text: Vec<String> = c.validate().iter().map(|p| p.to_string()).collect();
    let text = text.join("\n");
    assert!(
        text.contains("ssl_certificate: cannot read `/nonexistent/cert.pem`"),
        "{text}"
    );
    assert!(
        text.contains("ssl_key: cannot read `/nonexistent/key.pem`"),
        "{text}"
    );
    assert!(
        text.contains("ssl_certificate_authorities: client authentication needs"),
        "{text}"
    );
    let c = config("ssl_certificate = \"x.pem\"");
    let p = c.validate();
    assert_eq!(p.len(), 1);
    assert!(!p[0].is_error());
    let c = config("keepalive_interval = \"0s\"\nmax_connections = 0");
    assert_eq!(c.validate().len(), 2);
    let c = config(
        "max_connections_per_client = 0\nmax_window_bytes = \"100B\"\nframe_rate_grace = \"0s\"\nmin_frame_rate = \"0B\"",
    );
    let text: Vec<String> = c.validate().iter().map(|p| p.to_string()).collect();
    assert_eq!(text.len(), 3, "{text:?}");
    for key in [
        "max_connections_per_client",
        "max_window_bytes",
        "frame_rate_grace",
    ] {
        assert!(text.iter().any(|t| t.contains(key)), "{key}: {text:?}");
    }
    assert!(
        toml::from_str::<Config>("address = \"x\"\nssl_client_authentication = \"sometimes\"")
            .is_err()
    );
}
