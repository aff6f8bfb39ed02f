//! `beats` input: the Lumberjack v2 server that Filebeat's `output.logstash` talks to. One
//! task per connection (capped by a semaphore), optional TLS, and at-least-once delivery: a
//! window is acknowledged only once all its events are in the pipeline queue; while the queue
//! is full the connection sends ACK 0 keepalives so Filebeat does not time out and resend.
//!
//! Events keep what the client sent; Filebeat's own `@metadata` (beat, version, ...) becomes
//! the event metadata and the peer address is added as `[@metadata][input][beats][host][ip]`.
//! A J frame that is not a JSON object becomes an event with `message` = its text and tag
//! `_jsonparsefailure` (like the `http` input), so nothing acknowledged is dropped. A D frame
//! (legacy key/value strings) becomes an event of string fields, `line` renamed to `message`.

pub mod codec;
mod limits;
pub mod tls;

use crate::budget::{self, Charge, MemoryBudget, Use};
use crate::config::de;
use crate::config::problem::Problem;
use crate::event::{now_ms, Event, Fields, Receipt, SharedValue};
use crate::journal::{DocKind, JournalError, RecordBuilder};
use crate::metrics::{Counter, Gauge, Registry};
use crate::queue::QueueSender;
use crate::BuildContext;
use bytes::Bytes;
use codec::{BeatsCodec, Body, Frame, Limits, ProtocolError, RawEvent};
use futures_util::StreamExt;
use limits::{Counted, FrameRate, PerClient, Trickle};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use tls::ClientAuth;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listen address, e.g. `0.0.0.0:5044`.
    pub address: String,
    /// Tags added to every event from this input.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Connections served at once; further clients wait in the listen backlog. Default 1000.
    #[serde(
        default = "d_max_connections",
        deserialize_with = "de::from_str_or_value"
    )]
    pub max_connections: usize,
    /// Connections served at once from one client IP address; more are closed as soon as
    /// they are accepted. Default 64: a Filebeat opens one connection per `worker` (default 1)
    /// and host, so 64 leaves room for a NAT gateway in front of a few dozen hosts while one
    /// address cannot take more than a sixteenth of the default `max_connections`.
    #[serde(
        default = "d_max_connections_per_client",
        deserialize_with = "de::from_str_or_value"
    )]
    pub max_connections_per_client: usize,
    /// A connection that sends nothing for this long is closed (Logstash's
    /// `client_inactivity_timeout`). Time spent waiting for queue room does not count.
    /// Default `60s`.
    #[serde(default = "d_inactivity", deserialize_with = "de::duration")]
    pub client_inactivity_timeout: Duration,
    /// While a window waits for queue room, an ACK 0 is sent this often so the client's
    /// timeout (Filebeat: 30 s) is reset. Default `5s`.
    #[serde(default = "d_keepalive", deserialize_with = "de::duration")]
    pub keepalive_interval: Duration,
    /// Largest frame on the wire, compressed or not, and largest event frame inside a
    /// compressed one, in bytes. Default `64MiB`. A header reserves nothing: a frame holds only
    /// the bytes that arrived.
    #[serde(default = "d_max_frame", deserialize_with = "de::bytes")]
    pub max_frame_size: u64,
    /// Most bytes the compressed frames of one window may inflate to; a window inflating to
    /// more closes the connection. Default `64MiB`: a Filebeat window of 2048 typical events
    /// inflates to about 2.4 MB, and 64 MiB leaves room for 2048 events of 32 KB. Compressed
    /// frames are inflated as a stream, so this bounds work, not memory held at once.
    #[serde(default = "d_max_window_bytes", deserialize_with = "de::bytes")]
    pub max_window_bytes: u64,
    /// Largest window a client may announce, in events. Default 16384 (Filebeat sends 2048).
    #[serde(default = "d_max_window", deserialize_with = "de::from_str_or_value")]
    pub max_window_size: u32,
    /// A frame still arriving after `frame_rate_grace` is closed unless its bytes have come at
    /// this average rate or faster since its first byte, in bytes per second; `0` turns the
    /// check off. Default `1KiB` (a Filebeat window of about 400 KB compressed then takes at
    /// most 6.5 minutes). Idle time between frames is `client_inactivity_timeout`'s.
    #[serde(default = "d_min_frame_rate", deserialize_with = "de::bytes")]
    pub min_frame_rate: u64,
    /// How long a frame may arrive at any rate before `min_frame_rate` applies. Default `10s`.
    #[serde(default = "d_frame_rate_grace", deserialize_with = "de::duration")]
    pub frame_rate_grace: Duration,
    /// Serve TLS. Default false.
    #[serde(default, deserialize_with = "de::from_str_or_value")]
    pub ssl_enabled: bool,
    /// PEM certificate (chain) presented to clients.
    #[serde(default)]
    pub ssl_certificate: Option<PathBuf>,
    /// PEM private key of `ssl_certificate` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub ssl_key: Option<PathBuf>,
    /// PEM CA certificates that sign client certificates.
    #[serde(default, deserialize_with = "tls::path_list")]
    pub ssl_certificate_authorities: Vec<PathBuf>,
    /// `none` (default), `optional` or `required`.
    #[serde(default)]
    pub ssl_client_authentication: ClientAuth,
    /// How long a TLS handshake may take. Default `10s`.
    #[serde(
        default = "tls::default_handshake_timeout",
        deserialize_with = "de::duration"
    )]
    pub ssl_handshake_timeout: Duration,
}

fn d_max_connections() -> usize {
    1000
}
fn d_max_connections_per_client() -> usize {
    64
}
fn d_max_window_bytes() -> u64 {
    64 * 1024 * 1024
}
fn d_min_frame_rate() -> u64 {
    1024
}
fn d_frame_rate_grace() -> Duration {
    Duration::from_secs(10)
}
fn d_inactivity() -> Duration {
    Duration::from_secs(60)
}
fn d_keepalive() -> Duration {
    Duration::from_secs(5)
}
fn d_max_frame() -> u64 {
    64 * 1024 * 1024
}
fn d_max_window() -> u32 {
    16384
}
impl Config {
    fn tls_files(&self) -> tls::TlsFiles<'_> {
        tls::TlsFiles {
            certificate: self.ssl_certificate.as_deref(),
            key: self.ssl_key.as_deref(),
            authorities: &self.ssl_certificate_authorities,
            client_auth: self.ssl_client_authentication,
        }
    }

    pub fn validate(&self) -> Vec<Problem> {
        let mut problems: Vec<Problem> = super::check_address("address", &self.address)
            .into_iter()
            .collect();
        for (key, n) in [
            ("max_connections", self.max_connections),
            (
                "max_connections_per_client",
                self.max_connections_per_client,
            ),
        ] {
            if n == 0 {
                problems.push(Problem::at(key, "must be at least 1"));
            }
        }
        for (key, d) in [
            ("client_inactivity_timeout", self.client_inactivity_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("ssl_handshake_timeout", self.ssl_handshake_timeout),
            ("frame_rate_grace", self.frame_rate_grace),
        ] {
            if d.is_zero() {
                problems.push(Problem::at(key, "must be longer than zero"));
            }
        }
        for (key, size) in [
            ("max_frame_size", self.max_frame_size),
            ("max_window_bytes", self.max_window_bytes),
        ] {
            if !(1024..=u32::MAX as u64).contains(&size) {
                problems.push(
                    Problem::at(key, format!("{size} bytes is out of range"))
                        .hint("use a size between 1KiB and 4GiB, e.g. \"64MiB\""),
                );
            }
        }
        if self.max_window_size == 0 {
            problems.push(Problem::at("max_window_size", "must be at least 1"));
        }
        problems.extend(tls::settings_problems(
            self.ssl_enabled,
            &self.tls_files(),
            "TLS",
        ));
        problems
    }

    /// Binds the listener and spawns the accept loop. The returned task ends after shutdown
    /// once every connection task has ended.
    pub async fn start(
        &self,
        id: &str,
        ctx: &BuildContext,
        queue: QueueSender,
    ) -> anyhow::Result<JoinHandle<()>> {
        use anyhow::Context;
        let tls = if self.ssl_enabled {
            let config = tls::server_config(&self.tls_files()).map_err(|errs| {
                let text: Vec<String> = errs.iter().map(|p| p.to_string()).collect();
                anyhow::anyhow!("input `{id}`: {}", text.join("; "))
            })?;
            Some(tokio_rustls::TlsAcceptor::from(config))
        } else {
            None
        };
        let listener = ctx
            .listeners
            .bind(&self.address)
            .with_context(|| format!("input `{id}`: cannot listen on {}", self.address))?;
        self.serve_on(listener, tls, id, ctx, queue)
    }

    /// Spawns the accept loop on an already bound listener.
    fn serve_on(
        &self,
        listener: tokio::net::TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        id: &str,
        ctx: &BuildContext,
        queue: QueueSender,
    ) -> anyhow::Result<JoinHandle<()>> {
        let local = listener.local_addr()?;
        tracing::info!(input = id, address = %local, tls = tls.is_some(), "beats input listening");
        let shared = Arc::new(Shared {
            source: Arc::from(id),
            tags: self.tags.clone(),
            idle: self.client_inactivity_timeout,
            keepalive: self.keepalive_interval,
            limits: Limits {
                max_frame: self.max_frame_size as usize,
                max_window: self.max_window_size,
                max_window_bytes: self.max_window_bytes as usize,
            },
            frame_rate: FrameRate {
                min: self.min_frame_rate,
                grace: self.frame_rate_grace,
            },
            clients: PerClient::new(self.max_connections_per_client),
            handshake: self.ssl_handshake_timeout,
            tls,
            queue,
            budget: ctx.budget.clone(),
            metrics: Metrics::register(&ctx.metrics, id),
            shutdown: ctx.shutdown.clone(),
        });
        let limit = Arc::new(Semaphore::new(self.max_connections));
        let max = self.max_connections as u32;
        Ok(tokio::spawn(accept_loop(listener, shared, limit, max)))
    }
}

/// What every connection task of one input shares.
struct Shared {
    source: Arc<str>,
    tags: Vec<String>,
    idle: Duration,
    keepalive: Duration,
    limits: Limits,
    frame_rate: FrameRate,
    clients: PerClient,
    handshake: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
    queue: QueueSender,
    budget: MemoryBudget,
    metrics: Metrics,
    shutdown: CancellationToken,
}

/// Kinds of connection failure, each a `kind` label of the protocol error counter.
const ERROR_KINDS: &[&str] = &[
    "bad_version",
    "unknown_frame",
    "too_large",
    "bad_zlib",
    "nesting",
    "truncated",
    "io",
    "window_bytes",
    "window_too_large",
    "event_outside_window",
    "window_overflow",
    "window_incomplete",
    "closed_mid_window",
    "idle_mid_window",
    "slow_frame",
    "memory_budget",
    "tls_handshake",
    "ack_write",
];

struct Metrics {
    open: Gauge,
    connections: Counter,
    windows: Counter,
    events_received: Counter,
    events_queued: Counter,
    parse_failures: Counter,
    acks: Counter,
    keepalives: Counter,
    idle_closed: Counter,
    refused_per_client: Counter,
    errors: Vec<(&'static str, Counter)>,
}

impl Metrics {
    fn register(r: &Registry, id: &str) -> Self {
        let labels = [("input", id)];
        Metrics {
            open: r.gauge(
                "sheepdog_beats_connections_open",
                "Beats connections being served",
                &labels,
            ),
            connections: r.counter(
                "sheepdog_beats_connections_total",
                "Beats connections accepted",
                &labels,
            ),
            windows: r.counter(
                "sheepdog_beats_windows_total",
                "Beats windows (batches) received",
                &labels,
            ),
            events_received: r.counter(
                "sheepdog_beats_events_received_total",
                "Beats events decoded",
                &labels,
            ),
            events_queued: r.counter(
                "sheepdog_input_events_total",
                "Events accepted into the queue",
                &labels,
            ),
            parse_failures: r.counter(
                "sheepdog_input_parse_failures_total",
                "Lines or bodies that were not JSON objects",
                &labels,
            ),
            acks: r.counter(
                "sheepdog_beats_acks_total",
                "ACK frames sent for queued events",
                &labels,
            ),
            keepalives: r.counter(
                "sheepdog_beats_keepalives_total",
                "ACK 0 keepalives sent while a window waited for queue room",
                &labels,
            ),
            idle_closed: r.counter(
                "sheepdog_beats_idle_closed_total",
                "Connections closed after client_inactivity_timeout between windows",
                &labels,
            ),
            refused_per_client: r.counter(
                "sheepdog_beats_connections_refused_total",
                "Beats connections closed at once because their client address had max_connections_per_client open",
                &[("input", id), ("reason", "per_client")],
            ),
            errors: ERROR_KINDS
                .iter()
                .map(|kind| {
                    (
                        *kind,
                        r.counter(
                            "sheepdog_beats_protocol_errors_total",
                            "Beats connections closed by an error, by kind",
                            &[("input", id), ("kind", kind)],
                        ),
                    )
                })
                .collect(),
        }
    }

    fn error(&self, kind: &str) {
        if let Some((_, c)) = self.errors.iter().find(|(k, _)| *k == kind) {
            c.inc();
        }
    }
}

/// Why a connection was closed by the server.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("connection closed after {got} of {expected} events of a window")]
    ClosedMidWindow { expected: u32, got: usize },
    #[error("memory budget: {0}")]
    Budget(String),
    #[error("no data for {0:?} in the middle of a window")]
    IdleMidWindow(Duration),
    #[error(
        "a frame arrived at {bytes} bytes in {elapsed:?}, slower than min_frame_rate {min} bytes/s"
    )]
    SlowFrame {
        bytes: u64,
        elapsed: Duration,
        min: u64,
    },
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("writing an ACK failed: {0}")]
    AckWrite(String),
    #[error("{0}")]
    Queue(String),
}

impl ConnError {
    fn kind(&self) -> &'static str {
        match self {
            ConnError::Protocol(e) => e.kind(),
            ConnError::ClosedMidWindow { .. } => "closed_mid_window",
            ConnError::IdleMidWindow(_) => "idle_mid_window",
            ConnError::Budget(_) => "memory_budget",
            ConnError::SlowFrame { .. } => "slow_frame",
            ConnError::Tls(_) => "tls_handshake",
            ConnError::AckWrite(_) => "ack_write",
            ConnError::Queue(_) => "persisted_queue",
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    max: u32,
) {
    loop {
        // The permit is taken before accepting, so at most `max` connections are served and
        // the rest wait in the kernel's backlog.
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shared.shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shared.shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(input = %shared.source, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !shared.clients.admit(peer.ip()) {
            refuse(stream, peer, &shared);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let span = tracing::info_span!("beats", input = %shared.source, peer = %peer);
        let shared = shared.clone();
        tokio::spawn(
            async move {
                connection(stream, peer, &shared).await;
                shared.clients.release(peer.ip());
                drop(permit);
            }
            .instrument(span),
        );
    }
    drop(listener);
    // Every connection task holds a permit; having them all back means they have ended.
    let _ = limit.acquire_many(max).await;
}

/// Closes a connection from a client address that has `max_connections_per_client` open.
fn refuse(stream: TcpStream, peer: SocketAddr, shared: &Shared) {
    drop(stream);
    shared.metrics.refused_per_client.inc();
    if let Some(n) = shared.clients.refused() {
        tracing::warn!(
            input = %shared.source,
            peer = %peer,
            refused = n,
            max_connections_per_client = shared.clients.max(),
            "beats connections refused: the client address has too many open"
        );
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, shared: &Shared) {
    let m = &shared.metrics;
    m.connections.inc();
    m.open.add(1);
    tracing::debug!("beats connection opened");
    let result = match &shared.tls {
        None => {
            let (r, w) = stream.into_split();
            serve(r, w, peer, shared).await
        }
        Some(acceptor) => {
            match tokio::time::timeout(shared.handshake, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let (r, w) = tokio::io::split(tls);
                    serve(r, w, peer, shared).await
                }
                Ok(Err(e)) => Err(ConnError::Tls(e.to_string())),
                Err(_) => Err(ConnError::Tls(format!(
                    "not finished within {:?}",
                    shared.handshake
                ))),
            }
        }
    };
    m.open.sub(1);
    match result {
        Ok(()) => tracing::debug!("beats connection closed"),
        Err(e) => {
            m.error(e.kind());
            tracing::warn!(error = %e, kind = e.kind(), "beats connection closed on error");
        }
    }
}

/// The window being received.
struct Window {
    expected: u32,
    events: Vec<Event>,
    seqs: Vec<u32>,
    /// With a persisted queue: the window's documents as received, written before the ACK.
    record: Option<RecordBuilder>,
}

/// Room reserved for a window's events when its first ones arrive: an announced window of
/// 16,384 events that never comes costs nothing, and a Filebeat window (2048) needs no regrowth.
const WINDOW_PREALLOC: usize = 4096;

type Frames<R> = FramedRead<Counted<R>, BeatsCodec>;

/// Reads windows, queues their events and acknowledges them, until the client closes, goes
/// idle between windows, breaks the protocol, or shutdown begins.
async fn serve<R, W>(
    read: R,
    mut write: W,
    peer: SocketAddr,
    shared: &Shared,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let codec = BeatsCodec::new(shared.limits);
    let mut frames = FramedRead::with_capacity(Counted::new(read), codec, READ_BUFFER);
    // One object per connection, shared by its events (no copy per event).
    let peer_meta =
        SharedValue::new(serde_json::json!({"beats": {"host": {"ip": peer.ip().to_string()}}}));
    let mut window: Option<Window> = None;
    let mut held = Held {
        charge: shared.budget.empty(Use::BeatsWindow),
        events: 0,
    };
    while let Some(frame) = next_frame(&mut frames, &window, &mut held, shared).await? {
        match frame {
            // The codec hands out a window only once the previous one is complete, and
            // events only inside a window, never beyond its end.
            Frame::Window(n) => window = open_window(n, &mut write, shared).await?,
            Frame::Events(raw) => {
                let w = window.as_mut().ok_or(ProtocolError::EventOutsideWindow)?;
                held.events += add_events(w, raw, &peer_meta, shared)?;
            }
        }
        // Shutting down (false): the window stays unacknowledged and the client sends it
        // again after reconnecting.
        if !account(&frames, &mut held, &mut write, shared).await? {
            return Ok(());
        }
        if window
            .as_ref()
            .is_some_and(|w| w.events.len() == w.expected as usize)
        {
            let w = window.take().expect("window is open");
            if !deliver(w, held.take_events(), &mut write, shared).await? {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The read buffer a connection starts with; it grows only with bytes that arrive.
const READ_BUFFER: usize = 64 * 1024;

/// The next frame, or `None` when the connection ends without error: shutdown, or the
/// client closing or going idle between windows. While waiting, a frame that trickles in
/// slower than `min_frame_rate` closes the connection, and one that is quiet between frames
/// lets go of its buffers.
async fn next_frame<R: AsyncRead + Unpin>(
    frames: &mut Frames<R>,
    window: &Option<Window>,
    held: &mut Held,
    shared: &Shared,
) -> Result<Option<Frame>, ConnError> {
    let idle = tokio::time::sleep(shared.idle);
    tokio::pin!(idle);
    let mut trickle = Trickle::start(frames.get_ref().read());
    let tick = limits::tick(shared.frame_rate);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    loop {
        let next = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return Ok(None),
            r = frames.next() => r,
            _ = &mut idle => return idle_end(window, shared),
            _ = ticks.tick() => {
                watch_frame(frames, &mut trickle, shared)?;
                // What a quiet connection let go of goes back to the budget.
                let want = held.wanted(frames);
                held.charge.shrink_to(want);
                continue;
            }
        };
        return match next {
            None => match window {
                Some(w) => Err(ConnError::ClosedMidWindow {
                    expected: w.expected,
                    got: w.events.len(),
                }),
                None => Ok(None),
            },
            Some(r) => Ok(Some(r?)),
        };
    }
}

/// No frame for `client_inactivity_timeout`: an error in the middle of a window, else the
/// end of an idle connection.
fn idle_end(window: &Option<Window>, shared: &Shared) -> Result<Option<Frame>, ConnError> {
    match window {
        Some(_) => Err(ConnError::IdleMidWindow(shared.idle)),
        None => {
            shared.metrics.idle_closed.inc();
            tracing::debug!(timeout = ?shared.idle, "closing idle beats connection");
            Ok(None)
        }
    }
}

/// Checks the rate of the frame being received; between frames, lets go of the window
/// buffer and of a read buffer grown past its first size.
fn watch_frame<R>(
    frames: &mut Frames<R>,
    trickle: &mut Trickle,
    shared: &Shared,
) -> Result<(), ConnError> {
    let partial = !frames.read_buffer().is_empty();
    if !partial {
        frames.decoder_mut().shed();
        if frames.read_buffer().capacity() > READ_BUFFER {
            *frames.read_buffer_mut() = bytes::BytesMut::with_capacity(READ_BUFFER);
        }
    }
    let rate = shared.frame_rate;
    trickle
        .check(frames.get_ref().read(), partial, rate)
        .map_err(|slow| ConnError::SlowFrame {
            bytes: slow.bytes,
            elapsed: slow.elapsed,
            min: rate.min,
        })
}

/// Opens a window of `n` events; an empty window is acknowledged at once and opens nothing.
async fn open_window<W: AsyncWrite + Unpin>(
    n: u32,
    write: &mut W,
    shared: &Shared,
) -> Result<Option<Window>, ConnError> {
    shared.metrics.windows.inc();
    if n == 0 {
        write_ack(write, 0, shared).await?;
        shared.metrics.acks.inc();
        return Ok(None);
    }
    Ok(Some(Window {
        expected: n,
        events: Vec::new(),
        seqs: Vec::new(),
        record: None,
    }))
}

/// Turns received events into pipeline events in the open window, which they must not
/// overfill; returns their estimated size for the memory budget.
fn add_events(
    w: &mut Window,
    raw: Vec<RawEvent>,
    peer_meta: &Arc<SharedValue>,
    shared: &Shared,
) -> Result<usize, ConnError> {
    if w.events.len() + raw.len() > w.expected as usize {
        return Err(ProtocolError::WindowOverflow(w.expected).into());
    }
    if w.events.capacity() == 0 {
        let room = (w.expected as usize).min(WINDOW_PREALLOC);
        w.events.reserve(room);
        w.seqs.reserve(room);
    }
    if w.record.is_none() && shared.queue.journal().is_some() {
        let guess: usize = raw.iter().map(|r| r.body.len()).sum::<usize>()
            * (w.expected as usize)
                .div_ceil(raw.len().max(1))
                .min(WINDOW_PREALLOC);
        w.record = Some(RecordBuilder::new(
            &shared.source,
            Some(peer_meta),
            &shared.tags,
            guess,
        ));
    }
    shared.metrics.events_received.add(raw.len() as u64);
    let receipt = Receipt::new(now_ms());
    let mut failures = 0u64;
    let mut bytes = 0;
    for r in raw {
        // The record holds a second copy of the document until it is written.
        let copies = 1 + usize::from(w.record.is_some());
        bytes += budget::event_bytes(r.body.len()) + (copies - 1) * r.body.len();
        w.seqs.push(r.seq);
        let event = to_event(r, &receipt, peer_meta, w.record.as_mut(), &mut failures);
        w.events.push(tagged(event, &shared.tags));
    }
    if failures > 0 {
        shared.metrics.parse_failures.add(failures);
    }
    Ok(bytes)
}

/// Queues a complete window and acknowledges it; `charge` (the events' bytes) travels with
/// them into the queue. A window larger than the whole queue goes in parts, each with its
/// share of the charge and acknowledged (cumulatively) once queued. Returns false when
/// shutdown interrupted the wait; nothing further is acknowledged then.
async fn deliver<W: AsyncWrite + Unpin>(
    mut w: Window,
    mut charge: Charge,
    write: &mut W,
    shared: &Shared,
) -> Result<bool, ConnError> {
    let part = shared.queue.capacity().max(1);
    let mut hold = match persist(w.record.take(), write, shared).await? {
        Persisted::Written(hold) => hold,
        Persisted::Stopped => return Ok(false),
    };
    let mut outcome = None;
    if shared.queue.delivery_wait().is_some() {
        let (h, o) = crate::ack::for_delivery(hold);
        hold = Some(h);
        outcome = Some(o);
    }
    while !w.events.is_empty() {
        let take = w.events.len().min(part);
        let (events, seq, mut share) = if take == w.events.len() {
            let seq = *w.seqs.last().expect("one seq per event");
            let all = charge.split_off(charge.bytes());
            (std::mem::take(&mut w.events), seq, all)
        } else {
            let rest = w.events.split_off(take);
            let share = charge.split_off(charge.bytes() / (take + rest.len()) * take);
            (
                std::mem::replace(&mut w.events, rest),
                w.seqs[take - 1],
                share,
            )
        };
        w.seqs.drain(..take);
        let n = events.len() as u64;
        let send = shared
            .queue
            .send_held(&shared.source, events, &mut share, hold.clone());
        match with_keepalive(send, "queue full", write, shared).await? {
            Some(Ok(())) => {}
            Some(Err(_)) | None => return Ok(false),
        }
        shared.metrics.events_queued.add(n);
        if outcome.is_some() && !w.events.is_empty() {
            // Acknowledged once the whole window is delivered.
            continue;
        }
        if let Some(o) = outcome.take() {
            crate::ack::confirm(hold.take());
            if !await_delivery(o, write, shared).await? {
                return Ok(false);
            }
        }
        write_ack(write, seq, shared).await?;
        shared.metrics.acks.inc();
    }
    crate::ack::confirm(hold);
    Ok(true)
}

/// With `acknowledge = "delivered"`, waits with keepalives until the outputs confirmed the
/// window. A failed delivery closes the connection: the client sends the window again.
async fn await_delivery<W: AsyncWrite + Unpin>(
    outcome: tokio::sync::oneshot::Receiver<bool>,
    write: &mut W,
    shared: &Shared,
) -> Result<bool, ConnError> {
    match with_keepalive(outcome, "waiting for delivery", write, shared).await? {
        None => Ok(false),
        Some(Ok(true)) => Ok(true),
        Some(_) => Err(ConnError::Queue(
            "the outputs did not deliver the window; the client sends it again".into(),
        )),
    }
}

enum Persisted {
    /// Written (or no persisted queue): the window's acknowledgement, if any.
    Written(Option<crate::ack::Hold>),
    /// Shutdown interrupted the wait for room.
    Stopped,
}

/// With a persisted queue, writes the window's record before anything is acknowledged,
/// waiting for room with keepalives. A write the disk refuses closes the connection, so the
/// client sends the window again.
async fn persist<W: AsyncWrite + Unpin>(
    record: Option<RecordBuilder>,
    write: &mut W,
    shared: &Shared,
) -> Result<Persisted, ConnError> {
    let (Some(record), Some(journal)) = (record, shared.queue.journal()) else {
        return Ok(Persisted::Written(None));
    };
    let append = journal.append(record, None);
    match with_keepalive(append, "persisted queue full", write, shared).await? {
        Some(Ok(hold)) => Ok(Persisted::Written(Some(hold))),
        Some(Err(JournalError::Io(e))) => Err(ConnError::Queue(e)),
        Some(Err(JournalError::Full | JournalError::Closed)) | None => Ok(Persisted::Stopped),
    }
}

/// Awaits `wait`, sending ACK 0 every `keepalive` meanwhile so the client (Filebeat: 30 s)
/// does not time out and resend. `None` on shutdown.
async fn with_keepalive<T, W: AsyncWrite + Unpin>(
    wait: impl std::future::Future<Output = T>,
    why: &'static str,
    write: &mut W,
    shared: &Shared,
) -> Result<Option<T>, ConnError> {
    tokio::pin!(wait);
    let start = tokio::time::Instant::now() + shared.keepalive;
    let mut ticks = tokio::time::interval_at(start, shared.keepalive);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            r = &mut wait => return Ok(Some(r)),
            _ = shared.shutdown.cancelled() => return Ok(None),
            _ = ticks.tick() => {
                write_ack(write, 0, shared).await?;
                shared.metrics.keepalives.inc();
                tracing::debug!(why, "sent keepalive ACK 0");
            }
        }
    }
}

/// What one connection holds against the memory budget.
struct Held {
    charge: Charge,
    /// Estimated bytes of the open window's decoded events.
    events: usize,
}

impl Held {
    /// The bytes to charge now: the read buffer beyond its first size (or what it holds),
    /// the codec's window buffer and streamed frames, and the window's decoded events.
    fn wanted<R>(&self, frames: &Frames<R>) -> usize {
        let buf = frames.read_buffer();
        let read = buf.len().max(buf.capacity().saturating_sub(READ_BUFFER));
        read + frames.decoder().held() + self.events
    }

    /// The events' bytes, to travel with them into the queue.
    fn take_events(&mut self) -> Charge {
        let bytes = std::mem::take(&mut self.events);
        self.charge.split_off(bytes)
    }
}

/// Brings the connection's charge up (or down) to what it holds. When the budget has no room
/// the connection reads nothing more and waits, with keepalives, at most
/// `client_inactivity_timeout`; then it is closed so that what it holds goes back. False on
/// shutdown.
async fn account<R, W: AsyncWrite + Unpin>(
    frames: &Frames<R>,
    held: &mut Held,
    write: &mut W,
    shared: &Shared,
) -> Result<bool, ConnError> {
    let want = held.wanted(frames);
    let have = held.charge.bytes();
    if want <= have {
        held.charge.shrink_to(want);
        return Ok(true);
    }
    if held.charge.try_grow(want - have) {
        return Ok(true);
    }
    let grow = tokio::time::timeout(shared.idle, held.charge.grow(want - have));
    match with_keepalive(grow, "memory budget spent", write, shared).await? {
        None => Ok(false),
        Some(Ok(Ok(()))) => Ok(true),
        Some(Ok(Err(too_large))) => Err(ConnError::Budget(too_large.to_string())),
        Some(Err(_)) => Err(ConnError::Budget(format!(
            "no room for {} more bytes within {:?}",
            want - have,
            shared.idle
        ))),
    }
}

async fn write_ack<W: AsyncWrite + Unpin>(
    write: &mut W,
    seq: u32,
    shared: &Shared,
) -> Result<(), ConnError> {
    let frame = codec::ack(seq);
    let io = async {
        write.write_all(&frame).await?;
        // TLS buffers records; plain TCP flush is free.
        write.flush().await
    };
    match tokio::time::timeout(shared.idle, io).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ConnError::AckWrite(e.to_string())),
        Err(_) => Err(ConnError::AckWrite(format!(
            "client did not read for {:?}",
            shared.idle
        ))),
    }
}

fn tagged(mut event: Event, tags: &[String]) -> Event {
    for t in tags {
        event.add_tag(t);
    }
    event
}

/// One raw event as a pipeline event (without the input's tags), its document added to
/// `record` as received.
fn to_event(
    raw: RawEvent,
    receipt: &Receipt,
    peer_meta: &Arc<SharedValue>,
    record: Option<&mut RecordBuilder>,
    failures: &mut u64,
) -> Event {
    let mut event = match raw.body {
        Body::Json(bytes) => {
            if let Some(r) = record {
                r.push(DocKind::Json, receipt.ms(), &bytes);
            }
            json_event(&bytes, receipt, failures)
        }
        Body::Pairs(pairs) => {
            let map = pairs_object(pairs);
            if let Some(r) = record {
                let json = serde_json::to_vec(&map).unwrap_or_default();
                r.push(DocKind::Json, receipt.ms(), &json);
            }
            Event::from_map(map, receipt.ms())
        }
    };
    event
        .metadata_mut()
        .insert_shared("input", Arc::clone(peer_meta));
    event
}

/// The event of a JSON document; a `_jsonparsefailure` event when it is not an object.
fn json_event(bytes: &[u8], receipt: &Receipt, failures: &mut u64) -> Event {
    match Fields::from_json_slice(bytes) {
        Ok(fields) => Event::from_fields_at(fields, receipt),
        Err(_) => {
            *failures += 1;
            let mut e =
                Event::from_message(String::from_utf8_lossy(bytes).into_owned(), receipt.ms());
            e.add_tag("_jsonparsefailure");
            e
        }
    }
}

/// A protocol-v1 data frame's key/value pairs as an object (`line` becomes `message`).
fn pairs_object(pairs: Vec<(Bytes, Bytes)>) -> Map<String, Value> {
    let mut map = Map::new();
    for (k, v) in pairs {
        map.insert(
            String::from_utf8_lossy(&k).into_owned(),
            Value::String(String::from_utf8_lossy(&v).into_owned()),
        );
    }
    if !map.contains_key("message") {
        if let Some(line) = map.remove("line") {
            map.insert("message".into(), line);
        }
    }
    map
}

#[cfg(test)]
mod tests;
