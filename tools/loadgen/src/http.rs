//! HTTP sender: N keep-alive connections POSTing prebuilt NDJSON (or bulk) bodies with a minimal
//! HTTP/1.1 client, so the per-request cost is two writes, one read and a header scan.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::gen::{Body, EventGen};
use crate::load::{Pacer, Run};
use crate::stats::now_us;

/// `http://host:port/path`; only plain HTTP is supported.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub authority: String,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url.strip_prefix("http://").with_context(|| {
            format!("target {url:?} must start with http:// (https is not supported)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            bail!("target {url:?} has no host");
        }
        let authority = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            authority,
            path: path.to_string(),
        })
    }
}

pub struct HttpOptions {
    pub target: Target,
    pub connections: usize,
    pub events_per_body: usize,
    /// Distinct prebuilt bodies, shared out between connections.
    pub pool: usize,
    /// Wrap events as Elasticsearch bulk `index` actions into this index.
    pub bulk_index: Option<String>,
    pub rate: Option<f64>,
    /// Resend a body answered with 429 or 503 (after a backoff) instead of counting it as failed.
    pub retry: bool,
}

pub async fn run(opts: HttpOptions, gen: &mut EventGen, run: Arc<Run>) -> Result<()> {
    let action = opts.bulk_index.as_ref().map(|i| {
        serde_json::json!({"index": {"_index": i}})
            .to_string()
            .into_bytes()
    });
    let pool = opts.pool.max(opts.connections);
    let mut per_conn: Vec<Vec<Body>> = (0..opts.connections).map(|_| Vec::new()).collect();
    for i in 0..pool {
        per_conn[i % opts.connections].push(Body::build(
            gen,
            opts.events_per_body,
            action.as_deref(),
        ));
    }
    let rate = opts.rate.map(|r| r / opts.connections as f64);
    let opts = Arc::new(opts);
    run.begin();
    let mut tasks = Vec::new();
    for (index, bodies) in per_conn.into_iter().enumerate() {
        let (opts, run) = (Arc::clone(&opts), Arc::clone(&run));
        let pacer = Pacer::staggered(rate, opts.events_per_body, index, opts.connections);
        tasks.push(tokio::spawn(async move {
            let r = connection(&opts, bodies, pacer, &run).await;
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

async fn connect(target: &Target) -> Result<TcpStream> {
    let s = TcpStream::connect(&target.authority)
        .await
        .with_context(|| format!("connecting to {}", target.authority))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn request_head(target: &Target, len: usize) -> Vec<u8> {
    format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sheepdog-loadgen\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        target.path, target.authority, len
    )
    .into_bytes()
}

/// One keep-alive connection with its read buffers; dropped after a failure or a `close`.
struct Conn {
    stream: Option<TcpStream>,
    buf: BytesMut,
    scratch: Vec<u8>,
}

impl Conn {
    /// Connects if the last exchange left no connection.
    async fn ensure_connected(&mut self, target: &Target) -> Result<()> {
        if self.stream.is_none() {
            self.stream = Some(connect(target).await?);
        }
        Ok(())
    }

    /// Writes one request and reads its response; an I/O error or `close` drops the connection.
    async fn exchange(&mut self, head: &[u8], body: &[u8]) -> Result<Response> {
        let Conn {
            stream,
            buf,
            scratch,
        } = self;
        let Some(s) = stream.as_mut() else {
            bail!("not connected");
        };
        let result = async {
            s.write_all(head).await?;
            s.write_all(body).await?;
            read_response(s, buf, scratch).await
        }
        .await;
        if result.as_ref().map_or(true, |r| r.close) {
            *stream = None;
            buf.clear();
        }
        result
    }
}

async fn connection(
    opts: &HttpOptions,
    mut bodies: Vec<Body>,
    mut pacer: Pacer,
    run: &Run,
) -> Result<()> {
    let heads: Vec<Vec<u8>> = bodies
        .iter()
        .map(|b| request_head(&opts.target, b.bytes.len()))
        .collect();
    let mut conn = Conn {
        stream: Some(connect(&opts.target).await?),
        buf: BytesMut::with_capacity(64 * 1024),
        scratch: vec![0u8; 256 * 1024],
    };
    let mut next = 0usize;
    loop {
        let n = run.budget.claim(opts.events_per_body);
        if n == 0 {
            return Ok(());
        }
        pacer.wait(n).await;
        let i = next % bodies.len();
        next += 1;
        let partial_head;
        let head = if n == bodies[i].events() {
            &heads[i]
        } else {
            partial_head = request_head(&opts.target, bodies[i].prefix(n).len());
            &partial_head
        };
        send_body(opts, &mut conn, head, &mut bodies[i], n, run).await?;
    }
}

/// Sends the first `n` events of `body` until they are answered 2xx, refused for good, or the
/// connection failed six times in a row; counts the outcome.
async fn send_body(
    opts: &HttpOptions,
    conn: &mut Conn,
    head: &[u8],
    body: &mut Body,
    n: usize,
    run: &Run,
) -> Result<()> {
    let counters = &run.counters;
    let mut backoff = Duration::from_millis(20);
    let mut io_failures = 0;
    loop {
        body.patch(now_us());
        let bytes = body.prefix(n);
        conn.ensure_connected(&opts.target).await?;
        let result = conn.exchange(head, bytes).await;
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                // The server closed a kept-alive connection or reset it: reconnect and resend.
                io_failures += 1;
                if io_failures > 5 {
                    return Err(e.context(format!("POST {} failed 6 times", opts.target.path)));
                }
                counters.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        counters.status(resp.status);
        if (200..300).contains(&resp.status) {
            counters.events_ok.fetch_add(n as u64, Ordering::Relaxed);
            counters
                .bytes
                .fetch_add((head.len() + bytes.len()) as u64, Ordering::Relaxed);
            return Ok(());
        }
        if opts.retry && matches!(resp.status, 429 | 503) && !run.budget.stopped() {
            counters.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            continue;
        }
        counters
            .events_failed
            .fetch_add(n as u64, Ordering::Relaxed);
        return Ok(());
    }
}

#[derive(Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    /// The server will close the connection after this response.
    pub close: bool,
}

/// Reads one response and discards its body, leaving any following bytes in `buf`. `scratch`
/// receives the body bytes that were not read with the head.
pub async fn read_response(
    s: &mut TcpStream,
    buf: &mut BytesMut,
    scratch: &mut [u8],
) -> Result<Response> {
    loop {
        if let Some((head_len, resp, body)) = parse_head(buf)? {
            let consumed = match body {
                BodyLen::Fixed(n) => {
                    // Discard the body (up to 200 bytes per document for bulk items) through the
                    // scratch buffer instead of growing `buf`.
                    let mut left = (head_len + n).saturating_sub(buf.len());
                    if left > 0 {
                        buf.clear();
                        while left > 0 {
                            let want = left.min(scratch.len());
                            let got = s.read(&mut scratch[..want]).await?;
                            if got == 0 {
                                bail!("connection closed inside a response body");
                            }
                            left -= got;
                        }
                        0
                    } else {
                        head_len + n
                    }
                }
                BodyLen::Chunked => skip_chunked(s, buf, head_len).await?,
                BodyLen::UntilClose => {
                    while s.read_buf(buf).await? != 0 {
                        buf.clear();
                    }
                    buf.len()
                }
            };
            buf.advance(consumed);
            return Ok(resp);
        }
        if s.read_buf(buf).await? == 0 {
            bail!("connection closed before a complete response");
        }
    }
}

#[derive(Debug, PartialEq)]
enum BodyLen {
    Fixed(usize),
    Chunked,
    UntilClose,
}

/// Parses a response head if `buf` holds all of it: (head length, response, body framing).
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Response, BodyLen)>> {
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            bail!("response head larger than 64 KiB");
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut close = status_line.starts_with("HTTP/1.0");
    let mut body = if status == 204 || status == 304 || (100..200).contains(&status) {
        BodyLen::Fixed(0)
    } else {
        BodyLen::UntilClose
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            body = BodyLen::Fixed(
                value
                    .parse()
                    .with_context(|| format!("bad content-length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.eq_ignore_ascii_case("chunked")
        {
            body = BodyLen::Chunked;
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    if body == BodyLen::UntilClose {
        close = true;
    }
    Ok(Some((end + 4, Response { status, close }, body)))
}

async fn fill(s: &mut TcpStream, buf: &mut BytesMut, n: usize) -> Result<()> {
    while buf.len() < n {
        if s.read_buf(buf).await? == 0 {
            bail!("connection closed inside a response body");
        }
    }
    Ok(())
}

/// Skips a chunked body starting at `pos`; returns where the response ends.
async fn skip_chunked(s: &mut TcpStream, buf: &mut BytesMut, mut pos: usize) -> Result<usize> {
    loop {
        let line_end = loop {
            if let Some(i) = memchr::memmem::find(&buf[pos..], b"\r\n") {
                break pos + i;
            }
            fill(s, buf, buf.len() + 1).await?;
        };
        let size_hex = std::str::from_utf8(&buf[pos..line_end])?
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size {size_hex:?}"))?;
        pos = line_end + 2;
        if size == 0 {
            // No trailers expected: the body ends with an empty line.
            fill(s, buf, pos + 2).await?;
            return Ok(pos + 2);
        }
        fill(s, buf, pos + size + 2).await?;
        pos += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(
            Target::parse("http://127.0.0.1:8080/ingest").unwrap(),
            Target {
                authority: "127.0.0.1:8080".into(),
                path: "/ingest".into()
            }
        );
        assert_eq!(
            Target::parse("http://localhost").unwrap().authority,
            "localhost:80"
        );
        assert!(Target::parse("https://x:1/").is_err());
    }

    #[test]
    fn parses_response_heads() {
        let (len, r, b) =
            parse_head(b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 12\r\n\r\nxx")
                .unwrap()
                .unwrap();
        assert_eq!((r.status, r.close, b), (429, false, BodyLen::Fixed(12)));
        assert_eq!(len, 54);
        let (_, r, b) = parse_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!((r.status, r.close, b), (200, true, BodyLen::Chunked));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
    }

    #[tokio::test]
    async fn reads_chunked_and_pipelined_responses() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")
                .await
                .unwrap();
            let mut sink = [0u8; 1];
            let _ = s.read(&mut sink).await;
        });
        let mut s = TcpStream::connect(addr).await.unwrap();
        let (mut buf, mut scratch) = (BytesMut::new(), [0u8; 4]);
        assert_eq!(
            read_response(&mut s, &mut buf, &mut scratch)
                .await
                .unwrap()
                .status,
            200
        );
        assert_eq!(
            read_response(&mut s, &mut buf, &mut scratch)
                .await
                .unwrap()
                .status,
            201
        );
        assert!(buf.is_empty());
    }
}
