//! Beats sender: Lumberjack v2 windows like Filebeat 8 (`2W` count, one `2C` zlib frame holding
//! `2J` frames with seq 1..=n), acked by `2A` frames.
//!
//! Windows are compressed once at start-up by `deflate::compress_patchable`, which keeps the
//! `sent_at_us` digits patchable: at send time the 16 digits are copied into the one stored block
//! per window (every other event's digits are back-references to it) and the zlib Adler-32 trailer
//! is updated arithmetically for the changed digits. A window costs a few byte copies and no
//! compression, and every event carries the window's send time. The encoder uses fixed Huffman
//! codes and greedy matching, so windows are somewhat larger than Filebeat's level-3 output but
//! cost the receiver about the same to inflate (see the `inflate_cost` test).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::{Buf, BytesMut};
use std::io::Read;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::deflate::compress_patchable;
use crate::gen::{placeholder_offsets, ts_digits, EventGen, PLACEHOLDER, TS_WIDTH};
use crate::load::{Pacer, Run};
use crate::stats::now_us;

const ADLER_MOD: i64 = 65521;

pub fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    // 5552 is the longest run for which the sums cannot overflow u32 before the modulo.
    for chunk in data.chunks(5552) {
        for &x in chunk {
            a += u32::from(x);
            b += a;
        }
        a %= ADLER_MOD as u32;
        b %= ADLER_MOD as u32;
    }
    (b << 16) | a
}

/// A window ready to write: `2W` + `2C` frames, with placeholder digits at `ts_offsets`.
pub struct Window {
    pub bytes: Vec<u8>,
    pub count: u32,
    /// Where the stored copies of the digits are; all other events refer back to them.
    ts_offsets: Vec<u32>,
    /// Events with a placeholder, mod 65521.
    holes: i64,
    adler_offset: usize,
    /// Adler-32 sums of the uncompressed payload with the placeholder digits.
    base_a: i64,
    base_b: i64,
    /// Sum over placeholders of (payload length - placeholder position), mod 65521.
    weight: i64,
}

/// Appends a frame of Filebeat-shaped JSON events: `2J` seq len payload.
pub fn data_frames(events: &[Vec<u8>]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(events.iter().map(|e| e.len() + 10).sum());
    for (i, e) in events.iter().enumerate() {
        raw.extend_from_slice(b"2J");
        raw.extend_from_slice(&(i as u32 + 1).to_be_bytes());
        raw.extend_from_slice(&(e.len() as u32).to_be_bytes());
        raw.extend_from_slice(e);
    }
    raw
}

impl Window {
    pub fn build(events: &[Vec<u8>]) -> Self {
        let raw = data_frames(events);
        let n = raw.len() as i64;
        let marks: Vec<usize> = placeholder_offsets(&raw)
            .into_iter()
            .map(|m| m as usize)
            .collect();
        let weight = marks
            .iter()
            .fold(0i64, |w, &m| (w + (n - m as i64)) % ADLER_MOD);
        let (deflated, stored_at) = compress_patchable(&raw, &marks, TS_WIDTH);
        let adler = adler32(&raw);

        let z_len = 2 + deflated.len() + 4;
        let mut bytes = Vec::with_capacity(12 + z_len);
        bytes.extend_from_slice(b"2W");
        bytes.extend_from_slice(&(events.len() as u32).to_be_bytes());
        bytes.extend_from_slice(b"2C");
        bytes.extend_from_slice(&(z_len as u32).to_be_bytes());
        // zlib header: deflate, 32 KiB window, "fastest" level hint; check bits make it % 31 == 0.
        bytes.extend_from_slice(&[0x78, 0x01]);
        let base = bytes.len();
        bytes.extend_from_slice(&deflated);
        bytes.extend_from_slice(&adler.to_be_bytes());
        Self {
            count: events.len() as u32,
            ts_offsets: stored_at.into_iter().map(|o| (o + base) as u32).collect(),
            holes: marks.len() as i64 % ADLER_MOD,
            adler_offset: bytes.len() - 4,
            base_a: i64::from(adler & 0xffff),
            base_b: i64::from(adler >> 16),
            weight,
            bytes,
        }
    }

    /// A window as Filebeat sends it with `compression_level: 0`: `2W` and the `2J` frames,
    /// no compressed frame.
    pub fn build_uncompressed(events: &[Vec<u8>]) -> Self {
        let raw = data_frames(events);
        let mut bytes = Vec::with_capacity(6 + raw.len());
        bytes.extend_from_slice(b"2W");
        bytes.extend_from_slice(&(events.len() as u32).to_be_bytes());
        let base = bytes.len();
        bytes.extend_from_slice(&raw);
        Self {
            count: events.len() as u32,
            ts_offsets: placeholder_offsets(&raw)
                .into_iter()
                .map(|o| (o as usize + base) as u32)
                .collect(),
            holes: 0,
            adler_offset: 0,
            base_a: 0,
            base_b: 0,
            weight: 0,
            bytes,
        }
    }

    /// Builds a window compressed like Filebeat's default (level 3) or not at all.
    pub fn build_with(events: &[Vec<u8>], compressed: bool) -> Self {
        if compressed {
            Window::build(events)
        } else {
            Window::build_uncompressed(events)
        }
    }

    /// Writes `us` into every event and fixes the Adler-32 trailer.
    pub fn patch(&mut self, us: u64) {
        let digits = ts_digits(us);
        for &o in &self.ts_offsets {
            self.bytes[o as usize..o as usize + TS_WIDTH].copy_from_slice(&digits);
        }
        if self.adler_offset == 0 {
            // Uncompressed: no checksum to fix.
            return;
        }
        // Changing byte p of an n-byte payload by d adds d to A and (n - p) * d to B. Every
        // placeholder gets the same digits, so the sums factor into per-window constants.
        let (mut sum_d, mut sum_kd) = (0i64, 0i64);
        for k in 0..TS_WIDTH {
            let d = i64::from(digits[k]) - i64::from(PLACEHOLDER[k]);
            sum_d += d;
            sum_kd += k as i64 * d;
        }
        let a = (self.base_a + self.holes * sum_d).rem_euclid(ADLER_MOD);
        let b = (self.base_b + self.weight * sum_d - self.holes * sum_kd).rem_euclid(ADLER_MOD);
        let adler = ((b as u32) << 16) | a as u32;
        self.bytes[self.adler_offset..self.adler_offset + 4].copy_from_slice(&adler.to_be_bytes());
    }
}

/// Wraps an application log line the way Filebeat ships it with the shipped `filebeat.yml`
/// (`json.keys_under_root`, `json.add_error_key`, `json.message_key: message`): the line's
/// fields at the top level beside Filebeat's own, plus the empty `message` and the
/// `error.message` Filebeat adds because the line has no `message` key.
pub fn filebeat_event(line: &[u8], host: usize, offset: u64, timestamp: &str) -> Vec<u8> {
    let inner = line
        .strip_prefix(b"{")
        .and_then(|l| l.strip_suffix(b"}"))
        .unwrap_or(b"");
    let mut out = format!(
        r#"{{"@timestamp":"{timestamp}","@metadata":{{"beat":"filebeat","type":"_doc","version":"8.1.3"}},"agent":{{"type":"filebeat","version":"8.1.3","name":"app-{host}","id":"6f1c2a7e-0b3d-4c1e-9a55-3d2f1e0{host:05}","ephemeral_id":"b9d7e5a1-2c4f-4e8a-8f0b-71c6d2e{host:05}"}},"ecs":{{"version":"8.0.0"}},"host":{{"name":"app-{host}"}},"input":{{"type":"log"}},"log":{{"offset":{offset},"file":{{"path":"/var/log/llm-gateway/requests.log"}}}},"#
    )
    .into_bytes();
    out.extend_from_slice(inner);
    out.extend_from_slice(
        br#","message":"","error":{"message":"Key 'message' not found","type":"json"}}"#,
    );
    out
}

pub struct BeatsOptions {
    pub addr: String,
    pub connections: usize,
    pub window: usize,
    /// Distinct prebuilt windows, shared out between connections.
    pub pool: usize,
    /// Windows in flight per connection before waiting for an ack.
    pub pipeline: usize,
    /// Send the application event itself instead of inside Filebeat's envelope.
    pub raw: bool,
    /// Send windows uncompressed (Filebeat's `compression_level: 0`).
    pub uncompressed: bool,
    pub rate: Option<f64>,
}

/// Builds `n` events as they travel in Beats frames.
pub fn beats_events(
    gen: &mut EventGen,
    n: usize,
    raw: bool,
    host: usize,
    offset: &mut u64,
) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            let line = gen.event();
            if raw {
                return line;
            }
            let ts = serde_json::from_slice::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v["timestamp"].as_str().map(|s| s.to_string()))
                .unwrap_or_default();
            let ts = chrono::DateTime::parse_from_rfc3339(&ts)
                .map(|t| {
                    t.to_utc()
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                })
                .unwrap_or(ts);
            let e = filebeat_event(&line, host, *offset, &ts);
            *offset += line.len() as u64 + 1;
            e
        })
        .collect()
}

pub async fn run(opts: BeatsOptions, gen: &mut EventGen, run: Arc<Run>) -> Result<()> {
    let pool = opts.pool.max(opts.connections);
    let mut per_conn: Vec<Vec<Window>> = (0..opts.connections).map(|_| Vec::new()).collect();
    let mut sources: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut offsets = vec![0u64; opts.connections];
    for i in 0..pool {
        let host = i % opts.connections;
        let events = beats_events(gen, opts.window, opts.raw, host + 1, &mut offsets[host]);
        per_conn[host].push(Window::build_with(&events, !opts.uncompressed));
        if i < opts.connections {
            // Kept to build the one short window a count may end with.
            sources.push(events);
        }
    }
    let rate = opts.rate.map(|r| r / opts.connections as f64);
    let opts = Arc::new(opts);
    run.begin();
    let mut tasks = Vec::new();
    for (index, (windows, source)) in per_conn.into_iter().zip(sources).enumerate() {
        let (opts, run) = (Arc::clone(&opts), Arc::clone(&run));
        let pacer = Pacer::staggered(rate, opts.window, index, opts.connections);
        tasks.push(tokio::spawn(async move {
            let r = connection(&opts, windows, source, pacer, &run).await;
            if r.is_err() {
                run.budget.stop();
            }
            r
        }));
    }
    for t in tasks {
        t.await.context("connection task panicked")??;
    }
    Ok(())
}

async fn connection(
    opts: &BeatsOptions,
    mut windows: Vec<Window>,
    source: Vec<Vec<u8>>,
    mut pacer: Pacer,
    run: &Run,
) -> Result<()> {
    let mut s = TcpStream::connect(&opts.addr)
        .await
        .with_context(|| format!("connecting to {}", opts.addr))?;
    s.set_nodelay(true)?;
    let mut pending: VecDeque<u32> = VecDeque::new();
    let mut buf = BytesMut::with_capacity(4096);
    let mut next = 0usize;
    let counters = &run.counters;
    loop {
        let n = run.budget.claim(opts.window);
        if n == 0 {
            break;
        }
        pacer.wait(n).await;
        let mut short;
        let w = if n == opts.window {
            let i = next % windows.len();
            next += 1;
            &mut windows[i]
        } else {
            short = Window::build_with(&source[..n], !opts.uncompressed);
            &mut short
        };
        w.patch(now_us());
        s.write_all(&w.bytes).await.context("writing a window")?;
        counters.requests.fetch_add(1, Ordering::Relaxed);
        counters
            .bytes
            .fetch_add(w.bytes.len() as u64, Ordering::Relaxed);
        pending.push_back(w.count);
        while pending.len() >= opts.pipeline.max(1) {
            read_ack(&mut s, &mut buf, &mut pending, run).await?;
        }
    }
    while !pending.is_empty() {
        read_ack(&mut s, &mut buf, &mut pending, run).await?;
    }
    Ok(())
}

/// Reads ack frames until the oldest pending window is fully acked.
async fn read_ack(
    s: &mut TcpStream,
    buf: &mut BytesMut,
    pending: &mut VecDeque<u32>,
    run: &Run,
) -> Result<()> {
    loop {
        while buf.len() >= 6 {
            if buf[1] != b'A' {
                bail!("expected an ack frame, got {:?}", &buf[..2]);
            }
            let seq = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]);
            buf.advance(6);
            // seq 0 is a keepalive; smaller seqs are partial acks of the same window.
            if Some(&seq) == pending.front() {
                pending.pop_front();
                run.counters
                    .events_ok
                    .fetch_add(u64::from(seq), Ordering::Relaxed);
                run.counters.status(200);
                return Ok(());
            }
        }
        if s.read_buf(buf).await.context("reading acks")? == 0 {
            bail!(
                "server closed the connection with {} windows unacked",
                pending.len()
            );
        }
    }
}

/// Reads one Lumberjack v2 window (a `2W` frame, then `2J` or `2C` frames until `count` events)
/// and calls `event` with each JSON payload. Returns the window's event count, or `None` at a clean
/// end of stream. `buf` keeps unread bytes between calls; `raw` is scratch for inflating.
pub async fn read_window<R, F>(
    r: &mut R,
    buf: &mut BytesMut,
    raw: &mut Vec<u8>,
    mut event: F,
) -> Result<Option<u32>>
where
    R: tokio::io::AsyncRead + Unpin,
    F: FnMut(&[u8]),
{
    async fn need<R: tokio::io::AsyncRead + Unpin>(
        r: &mut R,
        buf: &mut BytesMut,
        n: usize,
    ) -> Result<bool> {
        while buf.len() < n {
            if r.read_buf(buf).await? == 0 {
                if buf.is_empty() {
                    return Ok(false);
                }
                bail!("connection closed inside a frame");
            }
        }
        Ok(true)
    }
    if !need(r, buf, 6).await? {
        return Ok(None);
    }
    if &buf[..2] != b"2W" {
        bail!("expected a window frame, got {:?}", &buf[..2]);
    }
    let count = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]);
    buf.advance(6);
    let mut seen = 0u32;
    while seen < count {
        need(r, buf, 2).await?;
        match &buf[..2] {
            b"2J" => {
                need(r, buf, 10).await?;
                let len = u32::from_be_bytes([buf[6], buf[7], buf[8], buf[9]]) as usize;
                need(r, buf, 10 + len).await?;
                event(&buf[10..10 + len]);
                buf.advance(10 + len);
                seen += 1;
            }
            b"2C" => {
                need(r, buf, 6).await?;
                let len = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
                need(r, buf, 6 + len).await?;
                raw.clear();
                flate2::read::ZlibDecoder::new(&buf[6..6 + len])
                    .read_to_end(raw)
                    .context("inflating a compressed frame")?;
                buf.advance(6 + len);
                let mut p = &raw[..];
                while p.len() >= 10 {
                    if &p[..2] != b"2J" {
                        bail!(
                            "expected a JSON frame inside the compressed frame, got {:?}",
                            &p[..2]
                        );
                    }
                    let len = u32::from_be_bytes([p[6], p[7], p[8], p[9]]) as usize;
                    let payload = p.get(10..10 + len).context("truncated JSON frame")?;
                    event(payload);
                    p = &p[10 + len..];
                    seen += 1;
                }
            }
            other => bail!("unsupported frame type {other:?}"),
        }
    }
    Ok(Some(count))
}

pub fn ack_frame(seq: u32) -> [u8; 6] {
    let s = seq.to_be_bytes();
    [b'2', b'A', s[0], s[1], s[2], s[3]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::GenConfig;
    use crate::load::Budget;

    /// Decodes a window's frames back into (seq, json) pairs.
    fn decode(bytes: &[u8]) -> (u32, Vec<(u32, serde_json::Value)>) {
        assert_eq!(&bytes[..2], b"2W");
        let count = u32::from_be_bytes(bytes[2..6].try_into().unwrap());
        let mut raw = Vec::new();
        if &bytes[6..8] == b"2C" {
            let len = u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
            assert_eq!(bytes.len(), 12 + len);
            flate2::read::ZlibDecoder::new(&bytes[12..])
                .read_to_end(&mut raw)
                .expect("valid zlib incl. adler");
        } else {
            // Uncompressed: the J frames follow the window frame directly.
            raw.extend_from_slice(&bytes[6..]);
        }
        let mut frames = vec![];
        let mut p = &raw[..];
        while !p.is_empty() {
            assert_eq!(&p[..2], b"2J");
            let seq = u32::from_be_bytes(p[2..6].try_into().unwrap());
            let l = u32::from_be_bytes(p[6..10].try_into().unwrap()) as usize;
            frames.push((seq, serde_json::from_slice(&p[10..10 + l]).unwrap()));
            p = &p[10 + l..];
        }
        (count, frames)
    }

    #[test]
    fn adler_matches_reference_values() {
        assert_eq!(adler32(b""), 1);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
        let big = vec![0xffu8; 100_000];
        let (mut a, mut b) = (1u64, 0u64);
        for &x in &big {
            a = (a + x as u64) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!(adler32(&big), ((b << 16) | a) as u32);
    }

    #[test]
    fn patched_window_decodes_with_the_timestamp() {
        let mut g = EventGen::new(&GenConfig {
            seed: 9,
            users: 100,
        });
        for (raw, compressed) in [(false, true), (true, true), (false, false)] {
            let events = beats_events(&mut g, 300, raw, 1, &mut 0);
            let mut w = Window::build_with(&events, compressed);
            for us in [
                1_764_238_502_123_456u64,
                1_700_000_000_000_001,
                9_999_999_999_999_999,
            ] {
                w.patch(us);
                let (count, frames) = decode(&w.bytes);
                assert_eq!(count, 300);
                assert_eq!(frames.len(), 300);
                for (i, (seq, v)) in frames.iter().enumerate() {
                    assert_eq!(*seq, i as u32 + 1);
                    let app: serde_json::Value = if raw {
                        v.clone()
                    } else {
                        assert_eq!(v["agent"]["type"], "filebeat");
                        assert_eq!(v["message"], "");
                        assert_eq!(v["error"]["message"], "Key 'message' not found");
                        v.clone()
                    };
                    assert_eq!(app["sent_at_us"].as_u64(), Some(us));
                }
            }
        }
    }

    /// A Lumberjack server that decodes each window and acks it (after a keepalive).
    #[tokio::test]
    async fn sends_exact_count_and_waits_for_acks() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut total = 0usize;
            loop {
                let mut head = [0u8; 12];
                if s.read_exact(&mut head).await.is_err() {
                    return total;
                }
                let len = u32::from_be_bytes(head[8..12].try_into().unwrap()) as usize;
                let mut body = vec![0u8; len];
                s.read_exact(&mut body).await.unwrap();
                let mut all = head.to_vec();
                all.extend_from_slice(&body);
                let (count, frames) = decode(&all);
                assert_eq!(frames.len() as u32, count);
                total += frames.len();
                let mut ack = b"2A\0\0\0\0".to_vec();
                ack.extend_from_slice(b"2A");
                ack.extend_from_slice(&count.to_be_bytes());
                s.write_all(&ack).await.unwrap();
            }
        });
        let mut g = EventGen::new(&GenConfig { seed: 1, users: 10 });
        let run = Run::new("beats", Budget::new(Some(1000), None));
        let opts = BeatsOptions {
            addr: addr.to_string(),
            connections: 1,
            window: 256,
            pool: 2,
            pipeline: 2,
            raw: false,
            uncompressed: false,
            rate: None,
        };
        super::run(opts, &mut g, Arc::clone(&run)).await.unwrap();
        assert_eq!(run.counters.events_ok.load(Ordering::Relaxed), 1000);
        assert_eq!(run.counters.requests.load(Ordering::Relaxed), 4);
        assert_eq!(server.await.unwrap(), 1000);
    }
}

#[cfg(test)]
mod inflate_cost {
    use super::*;
    use crate::gen::GenConfig;
    use std::io::Read;

    /// `cargo test --release --bin sheepdog-loadgen inflate_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn patchable_versus_plain_window_inflate_time() {
        let mut g = EventGen::new(&GenConfig {
            seed: 1,
            users: 5000,
        });
        let events = beats_events(&mut g, 2048, false, 1, &mut 0);
        let mut w = Window::build(&events);
        w.patch(crate::stats::now_us());
        let raw = data_frames(&events);
        let mut plain = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(3));
        std::io::Write::write_all(&mut plain, &raw).unwrap();
        let plain = plain.finish().unwrap();
        for (name, z) in [("patchable", &w.bytes[12..]), ("plain", &plain[..])] {
            let t = std::time::Instant::now();
            let mut out = Vec::new();
            for _ in 0..50 {
                out.clear();
                flate2::read::ZlibDecoder::new(z)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            let per_event = t.elapsed().as_secs_f64() / 50.0 / 2048.0 * 1e9;
            eprintln!(
                "{name}: {} compressed bytes for {} raw, {per_event:.0} ns/event to inflate",
                z.len(),
                raw.len()
            );
        }
    }
}
