//! The HTTP listener: at most `max_connections` connections (one more is answered 503 and
//! closed at once), each on its own task, optionally behind TLS, served by hyper with a
//! header read timeout (which also closes idle keep-alive connections). On shutdown the
//! listener closes, every connection finishes its request in progress and closes, then the
//! input's task ends.

use super::request::{self, Shared};
use crate::metrics::{Counter, Gauge, Registry};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::Instrument;

/// Largest read buffer of a connection: headers must fit in it, and body bytes wait in it
/// at most this many at a time per connection.
const MAX_BUF: usize = 64 * 1024;

/// The answer to a connection over `max_connections`.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 21\r\n\r\ntoo many connections\n";

pub struct Server {
    pub request: Arc<Shared>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub handshake: Duration,
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub metrics: Metrics,
}

pub struct Metrics {
    open: Gauge,
    accepted: Counter,
    refused: Counter,
    tls_failed: Counter,
    header_timeouts: Counter,
}

impl Metrics {
    pub fn register(r: &Registry, id: &str) -> Self {
        let labels = [("input", id)];
        Metrics {
            open: r.gauge(
                "sheepdog_http_connections_open",
                "HTTP connections being served",
                &labels,
            ),
            accepted: r.counter(
                "sheepdog_http_connections_total",
                "HTTP connections accepted",
                &labels,
            ),
            refused: r.counter(
                "sheepdog_http_connections_refused_total",
                "HTTP connections answered 503 and closed because max_connections were open",
                &labels,
            ),
            tls_failed: r.counter(
                "sheepdog_http_tls_handshake_failures_total",
                "HTTPS connections closed because the TLS handshake failed or timed out",
                &labels,
            ),
            header_timeouts: r.counter(
                "sheepdog_http_header_timeouts_total",
                "HTTP connections closed because headers did not arrive within header_read_timeout",
                &labels,
            ),
        }
    }
}

impl Server {
    /// Accepts connections until shutdown, then waits for every connection to end.
    pub async fn run(self, listener: TcpListener) {
        let server = Arc::new(self);
        let slots = Arc::new(Semaphore::new(server.max_connections));
        let shutdown = server.request.shutdown.clone();
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = shutdown.cancelled() => break,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(input = %server.request.source, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                server.refuse(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            server.metrics.accepted.inc();
            let span = tracing::debug_span!("http", input = %server.request.source, peer = %peer);
            let server = server.clone();
            tokio::spawn(
                async move {
                    server.connection(stream).await;
                    drop(slot);
                }
                .instrument(span),
            );
        }
        drop(listener);
        let _ = slots.acquire_many(server.max_connections as u32).await;
    }

    /// Answers a connection over the cap with 503 and closes it.
    fn refuse(&self, stream: TcpStream) {
        self.metrics.refused.inc();
        // A new socket's send buffer is empty, so the answer fits without waiting.
        let _ = stream.try_write(BUSY);
    }

    async fn connection(&self, stream: TcpStream) {
        self.metrics.open.add(1);
        match &self.tls {
            None => self.serve(stream).await,
            Some(acceptor) => {
                match tokio::time::timeout(self.handshake, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => self.serve(tls).await,
                    Ok(Err(e)) => {
                        self.metrics.tls_failed.inc();
                        tracing::debug!(error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        self.metrics.tls_failed.inc();
                        tracing::debug!("TLS handshake timed out");
                    }
                }
            }
        }
        self.metrics.open.sub(1);
    }

    /// Serves requests on one connection until it closes, or answers the request in
    /// progress and closes on shutdown.
    async fn serve<I>(&self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shared = self.request.clone();
        let service = service_fn(move |req| request::handle(shared.clone(), req));
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .max_buf_size(MAX_BUF);
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let shutdown = self.request.shutdown.clone();
        let ended = tokio::select! {
            r = conn.as_mut() => r,
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = ended {
            if e.is_timeout() {
                self.metrics.header_timeouts.inc();
            }
            tracing::debug!(error = %e, "connection ended");
        }
    }
}
