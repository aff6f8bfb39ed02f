//! Attacks on the Beats input: the window-of-1 zlib bomb (one and four at once), 400
//! connections announcing 16,384-event windows and going quiet, and random bytes. An honest
//! Lumberjack v2 client (compressed windows, as Filebeat sends them) runs alongside each, from
//! 127.0.0.1; attackers that need many connections come from other loopback addresses, as
//! they would from other hosts, so the per-client cap does not hide what they cost.

use crate::common::*;
use crate::harness::{Target, BUDGET_MIB, MARGIN_MIB};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events in each honest window.
const HONEST_WINDOW: usize = 100;

fn json_frame(seq: u32, body: &[u8]) -> Vec<u8> {
    let mut v = vec![b'2', b'J'];
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn window_frame(n: u32) -> Vec<u8> {
    let mut v = vec![b'2', b'W'];
    v.extend_from_slice(&n.to_be_bytes());
    v
}

fn compressed_frame(zlib: &[u8]) -> Vec<u8> {
    let mut v = vec![b'2', b'C'];
    v.extend_from_slice(&(zlib.len() as u32).to_be_bytes());
    v.extend_from_slice(zlib);
    v
}

fn zlib(bytes: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// The measured bomb: a window of 1, then one compressed frame of 5,000,000 tiny J frames
/// (60 MB inflated, inside the default `max_window_bytes`, so only the window count stops it).
/// Compressed by Python's zlib: the test build's own inflater takes long over 60 MB.
fn bomb() -> Vec<u8> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, zlib; sys.stdout.buffer.write(zlib.compress(b'2J\\0\\0\\0\\x01\\0\\0\\0\\x02{}' * 5000000, 9))",
        ])
        .output()
        .expect("python3 compresses the bomb");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let z = out.stdout;
    assert!(z.len() < 400_000, "bomb of {} bytes", z.len());
    [window_frame(1), compressed_frame(&z)].concat()
}

/// Reads ACK frames until one for `seq` (skipping ACK 0 keepalives).
fn await_ack(s: &mut TcpStream, seq: u32) -> std::io::Result<()> {
    loop {
        let mut b = [0u8; 6];
        s.read_exact(&mut b)?;
        if &b[..2] != b"2A" {
            return Err(std::io::Error::other(format!("not an ACK: {b:?}")));
        }
        if u32::from_be_bytes([b[2], b[3], b[4], b[5]]) == seq {
            return Ok(());
        }
    }
}

/// An honest client: compressed windows of [`HONEST_WINDOW`] events on one connection, each
/// sent once the previous was acknowledged, until `stop` (at least `min` windows, at most
/// 200). Returns (windows acknowledged, windows sent) and the request ids sent.
fn honest(addr: &str, tag: &str, min: usize, stop: &AtomicBool) -> (usize, usize, Vec<String>) {
    let mut ids = Vec::new();
    let (mut served, mut sent) = (0, 0);
    let mut conn: Option<TcpStream> = None;
    while sent < 200 && (sent < min || !stop.load(Ordering::Relaxed)) {
        let s = match conn.as_mut() {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(addr).expect("honest client connects");
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                conn.insert(s)
            }
        };
        let mut inner = Vec::new();
        let mut window_ids = Vec::new();
        for i in 0..HONEST_WINDOW {
            let id = format!("honest-{tag}-{sent}-{i}");
            let body = serde_json::json!({
                "message": format!("honest event {i}"),
                "request_id": id,
                "model": "gpt-4.1",
                "status": "success",
                "latency_ms": 120,
            });
            inner.extend(json_frame(i as u32 + 1, body.to_string().as_bytes()));
            window_ids.push(id);
        }
        let bytes = [
            window_frame(HONEST_WINDOW as u32),
            compressed_frame(&zlib(&inner, 3)),
        ]
        .concat();
        sent += 1;
        let ok = s.write_all(&bytes).is_ok() && await_ack(s, HONEST_WINDOW as u32).is_ok();
        if ok {
            served += 1;
            ids.extend(window_ids);
        } else {
            conn = None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (served, sent, ids)
}

/// Runs the honest client on its own thread while `attack` runs against a daemon with the
/// hostile tests' budget, then checks that it was served, that its events were indexed, that
/// the daemon is alive and its peak RSS within the budget plus margin; prints the one result
/// line.
fn with_honest_client(name: &str, attack: impl FnOnce(&Sheepdog)) {
    let target = Target::start(&[]);
    let (es, dog) = (&target.es, &target.dog);
    let stop = Arc::new(AtomicBool::new(false));
    let tag = name.replace(' ', "-");
    let client = {
        let (addr, stop, tag) = (dog.beats_addr.clone(), stop.clone(), tag.clone());
        std::thread::spawn(move || honest(&addr, &tag, 5, &stop))
    };
    attack(dog);
    stop.store(true, Ordering::Relaxed);
    let (served, sent, ids) = client.join().expect("honest client thread");
    assert_eq!(served, sent, "honest windows acknowledged\n{}", dog.log());
    assert_indexed(es, &ids, dog);
    let peak = target.peak_rss_mib();
    println!("hostile: {name}: peak RSS {peak} MiB, honest requests served {served}/{sent}");
    target.assert_survived(name);
    assert!(peak <= BUDGET_MIB + MARGIN_MIB);
}

/// Waits (at most 120 s) until every id is in Elasticsearch.
fn assert_indexed(es: &Osmem, ids: &[String], dog: &Sheepdog) {
    let want: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let start = Instant::now();
    loop {
        let reply = es.search(
            "holysheep-logs-*",
            &serde_json::json!({"size": 10000, "_source": ["request_id"]}),
        );
        let got: HashSet<String> = reply["hits"]["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h["_source"]["request_id"].as_str().map(String::from))
            .collect();
        let missing = want.iter().filter(|id| !got.contains(**id)).count();
        if missing == 0 {
            return;
        }
        if start.elapsed() > Duration::from_secs(120) {
            panic!(
                "{missing} of {} honest events not indexed after 120 s\n{}",
                want.len(),
                dog.log()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Sends `bytes` on a new connection and waits (at most 30 s) for the daemon to close it.
/// Returns how long that took.
fn send_until_closed(addr: &str, bytes: &[u8]) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The daemon may close before everything is written: that is the point.
    let _ = s.write_all(bytes);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "connection not closed within 30 s"
    );
    start.elapsed()
}

fn protocol_errors(dog: &Sheepdog) -> f64 {
    dog.metrics()
        .lines()
        .filter(|l| l.starts_with("sheepdog_beats_protocol_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn beats_zlib_bomb_in_a_window_of_one() {
    let bomb = bomb();
    with_honest_client("beats bomb", |dog| {
        for _ in 0..10 {
            send_until_closed(&dog.beats_addr, &bomb);
        }
        // The counter rises as the daemon closes the connection, which the client may see
        // first: wait a bounded time for it.
        let overflows =
            "sheepdog_beats_protocol_errors_total{input=\"beats\",kind=\"window_overflow\"}";
        crate::common::wait_for(Duration::from_secs(10), "ten window overflows", || {
            (dog.metric(overflows) == Some(10.0)).then_some(())
        });
    });
}

#[test]
fn four_beats_bombs_at_once() {
    let bomb = Arc::new(bomb());
    with_honest_client("four beats bombs at once", |dog| {
        for _ in 0..5 {
            let senders: Vec<_> = (0..4)
                .map(|_| {
                    let (addr, bomb) = (dog.beats_addr.clone(), bomb.clone());
                    std::thread::spawn(move || send_until_closed(&addr, &bomb))
                })
                .collect();
            for s in senders {
                s.join().unwrap();
            }
        }
        // Every bomb is closed with a counted protocol error: a window overflow, or the
        // memory budget when four windows at once leave one no room.
        crate::common::wait_for(Duration::from_secs(10), "twenty closed bombs", || {
            (protocol_errors(dog) == 20.0).then_some(())
        });
        assert!(
            dog.metric(
                "sheepdog_beats_protocol_errors_total{input=\"beats\",kind=\"window_overflow\"}"
            )
            .unwrap_or(0.0)
                >= 1.0,
            "{}",
            dog.metrics()
        );
    });
}

/// Connects from `source` (any 127.x.y.z address) to `addr`.
async fn connect_from(source: std::net::Ipv4Addr, addr: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source.into(), 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

#[test]
fn four_hundred_beats_connections_announce_windows_and_go_quiet() {
    with_honest_client("400 quiet beats windows", |dog| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let addr: SocketAddr = dog.beats_addr.parse().unwrap();
        let quiet = rt.block_on(async {
            let mut conns = Vec::new();
            // 8 addresses of 50 connections each: under the per-client cap, as 8 hosts.
            for i in 0..400u32 {
                let source = std::net::Ipv4Addr::new(127, 0, 1, 2 + (i % 8) as u8);
                let mut c = connect_from(source, addr).await;
                use tokio::io::AsyncWriteExt;
                c.write_all(&window_frame(16384)).await.unwrap();
                conns.push(c);
            }
            conns
        });
        let open = wait_for(
            Duration::from_secs(30),
            "400 quiet connections served",
            || {
                let n = dog.metric("sheepdog_beats_connections_open{input=\"beats\"}")?;
                (n >= 400.0).then_some(n)
            },
        );
        assert!(open >= 400.0);
        // The honest client runs while they hold their windows open.
        std::thread::sleep(Duration::from_secs(3));
        drop(quiet);
        drop(rt);
    });
}

#[test]
fn random_bytes_on_the_beats_port() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let streams: Vec<Vec<u8>> = (0..200)
        .map(|_| {
            let mut b = vec![0u8; 16 * 1024];
            rng.fill(&mut b[..]);
            b
        })
        .collect();
    with_honest_client("random bytes on the beats port", |dog| {
        let before = protocol_errors(dog);
        let mut slowest = Duration::ZERO;
        for chunk in streams.chunks(20) {
            let senders: Vec<_> = chunk
                .iter()
                .cloned()
                .map(|bytes| {
                    let addr = dog.beats_addr.clone();
                    std::thread::spawn(move || {
                        let start = Instant::now();
                        let mut s = TcpStream::connect(&addr).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                        let _ = s.write_all(&bytes);
                        // A stream that happens to start like a frame header waits for the
                        // rest: the end of the stream settles it.
                        let _ = s.shutdown(std::net::Shutdown::Write);
                        let _ = s.read_to_end(&mut Vec::new());
                        start.elapsed()
                    })
                })
                .collect();
            for s in senders {
                slowest = slowest.max(s.join().unwrap());
            }
        }
        assert!(
            slowest < Duration::from_secs(10),
            "slowest close {slowest:?}"
        );
        let counted = wait_for(Duration::from_secs(10), "200 protocol errors", || {
            let n = protocol_errors(dog) - before;
            (n >= 200.0).then_some(n)
        });
        assert_eq!(counted, 200.0);
    });
}
