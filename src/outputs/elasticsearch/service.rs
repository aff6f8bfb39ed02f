//! HTTP to the cluster: one reqwest client, hosts taken round-robin, a host that fails to
//! connect skipped for a while (fail-over to the next), basic or API-key auth, optional gzip.
//! Each host's reachability is logged when it changes and shown as its own health component.

use crate::config::secret::Secret;
use crate::health::{HealthHandle, HealthRegistry, Status};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How to reach the cluster, validated.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Base URLs without a trailing slash.
    pub hosts: Vec<String>,
    /// A ready `Authorization` header value.
    pub authorization: Option<Secret>,
    pub request_timeout: Duration,
    pub gzip: bool,
    pub tls_ca_pem: Option<Vec<u8>>,
    /// Client certificate chain and key, PEM.
    pub tls_identity_pem: Option<Vec<u8>>,
    pub tls_skip_verify: bool,
    /// How long a host that refused a connection is skipped.
    pub dead_host_pause: Duration,
}

struct Host {
    base: String,
    /// Milliseconds since `Service::epoch` until which the host is skipped.
    skip_until_ms: AtomicI64,
    /// The last connection attempt failed; flips log once per change, not once per request.
    down: AtomicBool,
    /// `output <id> host <url>` in `/health` once [`Service::report_health`] registered it.
    health: Option<HealthHandle>,
}

impl Host {
    /// Records a failed connection: the first failure after an answer logs and degrades.
    fn mark_down(&self, reason: &str) {
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(host = %self.base, reason, "Elasticsearch host went down; its requests go to the other hosts");
            if let Some(h) = &self.health {
                h.set(Status::Degraded, format!("unreachable: {reason}"));
            }
        }
    }

    /// Records an answer: the first one after a failure logs and clears the health state.
    fn mark_up(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(host = %self.base, "Elasticsearch host is back");
            if let Some(h) = &self.health {
                h.ok();
            }
        }
    }
}

pub struct Service {
    client: reqwest::Client,
    hosts: Vec<Host>,
    next: AtomicUsize,
    /// The `Authorization` header, marked sensitive (hyper and reqwest print it redacted).
    authorization: Option<reqwest::header::HeaderValue>,
    gzip: bool,
    dead_host_pause: Duration,
    epoch: Instant,
}

/// An answer from a host.
pub struct Reply {
    pub host: String,
    pub status: u16,
    pub body: bytes::Bytes,
}

/// A request that got no HTTP answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct TransportError {
    pub host: String,
    /// For `/health` and logs, e.g. "connection refused to http://127.0.0.1:9200".
    pub reason: String,
}

impl Service {
    pub fn new(config: &ServiceConfig) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .danger_accept_invalid_certs(config.tls_skip_verify);
        if let Some(pem) = &config.tls_ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(pem) = &config.tls_identity_pem {
            builder = builder.identity(reqwest::Identity::from_pem(pem)?);
        }
        Ok(Service {
            client: builder.build()?,
            hosts: config
                .hosts
                .iter()
                .map(|h| Host {
                    base: h.clone(),
                    skip_until_ms: AtomicI64::new(0),
                    down: AtomicBool::new(false),
                    health: None,
                })
                .collect(),
            next: AtomicUsize::new(0),
            authorization: config
                .authorization
                .as_ref()
                .map(|a| {
                    let mut value = reqwest::header::HeaderValue::from_str(a.expose())?;
                    value.set_sensitive(true);
                    Ok::<_, anyhow::Error>(value)
                })
                .transpose()?,
            gzip: config.gzip,
            dead_host_pause: config.dead_host_pause,
            epoch: Instant::now(),
        })
    }

    /// Registers one health component per host, `output <id> host <url>`: `degraded` with the
    /// reason while the host refuses connections (the output's own component says whether
    /// events can be delivered at all), `ok` otherwise.
    pub fn report_health(&mut self, id: &str, health: &HealthRegistry) {
        for host in &mut self.hosts {
            let handle = health.register(format!("output {id} host {}", host.base));
            handle.ok();
            host.health = Some(handle);
        }
    }

    fn now_ms(&self) -> i64 {
        self.epoch.elapsed().as_millis() as i64
    }

    /// The next host in turn that is not being skipped; when every host is, the one whose pause
    /// ends first.
    fn pick(&self) -> &Host {
        let n = self.hosts.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        (0..n)
            .map(|i| &self.hosts[(start + i) % n])
            .find(|h| h.skip_until_ms.load(Ordering::Relaxed) <= now)
            .unwrap_or_else(|| {
                self.hosts
                    .iter()
                    .min_by_key(|h| h.skip_until_ms.load(Ordering::Relaxed))
                    .expect("at least one host")
            })
    }

    /// POSTs a bulk body (gzipped here when configured).
    pub async fn bulk(&self, body: bytes::Bytes) -> Result<Reply, TransportError> {
        let body = if self.gzip {
            tokio::task::spawn_blocking(move || bytes::Bytes::from(gzip(&body)))
                .await
                .map_err(|e| TransportError {
                    host: String::new(),
                    reason: format!("compressing the bulk body failed: {e}"),
                })?
        } else {
            body
        };
        self.send(
            reqwest::Method::POST,
            "/_bulk",
            Some(body),
            "application/x-ndjson",
        )
        .await
    }

    /// A request with an optional JSON (or NDJSON) body to the next host; a connection failure
    /// is retried once on each other host before giving up.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<bytes::Bytes>,
        content_type: &str,
    ) -> Result<Reply, TransportError> {
        let mut last_error = None;
        for _ in 0..self.hosts.len() {
            let host = self.pick();
            let mut request = self
                .client
                .request(method.clone(), format!("{}{path}", host.base));
            if let Some(auth) = &self.authorization {
                request = request.header(reqwest::header::AUTHORIZATION, auth.clone());
            }
            if let Some(body) = &body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, content_type)
                    .body(body.clone());
                if self.gzip && path == "/_bulk" {
                    request = request.header(reqwest::header::CONTENT_ENCODING, "gzip");
                }
            }
            let result = async {
                let response = request.send().await?;
                let status = response.status().as_u16();
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, body))
            }
            .await;
            match result {
                Ok((status, body)) => {
                    host.mark_up();
                    return Ok(Reply {
                        host: host.base.clone(),
                        status,
                        body,
                    });
                }
                Err(e) => {
                    let connect = e.is_connect();
                    let error = TransportError {
                        host: host.base.clone(),
                        reason: describe(&e, &host.base),
                    };
                    if connect {
                        host.skip_until_ms.store(
                            self.now_ms() + self.dead_host_pause.as_millis() as i64,
                            Ordering::Relaxed,
                        );
                        host.mark_down(&error.reason);
                        last_error = Some(error);
                        continue;
                    }
                    // No fail-over once the request may have reached the host (timeout, reset):
                    // the caller's retry decides.
                    return Err(error);
                }
            }
        }
        Err(last_error.expect("at least one host was tried"))
    }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    use flate2::write::GzEncoder;
    use std::io::Write;
    let mut enc = GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

/// A one-line reason from a reqwest error, naming the host.
fn describe(e: &reqwest::Error, host: &str) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut io_kind = None;
    let mut innermost = None;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        innermost = Some(s.to_string());
        source = s.source();
    }
    use std::io::ErrorKind::*;
    match io_kind {
        Some(ConnectionRefused) => return format!("connection refused to {host}"),
        Some(ConnectionReset) => return format!("connection reset by {host}"),
        Some(TimedOut) => return format!("connection to {host} timed out"),
        _ => {}
    }
    if e.is_timeout() {
        return format!("request to {host} timed out");
    }
    match innermost {
        Some(inner) if e.is_connect() => format!("cannot connect to {host}: {inner}"),
        Some(inner) => format!("request to {host} failed: {inner}"),
        None => format!("request to {host} failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(hosts: &[&str]) -> Service {
        Service::new(&ServiceConfig {
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            authorization: None,
            request_timeout: Duration::from_secs(2),
            gzip: false,
            tls_ca_pem: None,
            tls_identity_pem: None,
            tls_skip_verify: false,
            dead_host_pause: Duration::from_secs(60),
        })
        .unwrap()
    }

    #[test]
    fn round_robin_skips_paused_hosts() {
        let s = service(&["http://a", "http://b", "http://c"]);
        let picks: Vec<&str> = (0..4).map(|_| s.pick().base.as_str()).collect();
        assert_eq!(picks, ["http://a", "http://b", "http://c", "http://a"]);
        s.hosts[1]
            .skip_until_ms
            .store(i64::MAX / 2, Ordering::Relaxed);
        let picks: Vec<&str> = (0..4).map(|_| s.pick().base.as_str()).collect();
        // b is skipped: its turns go to the next live host
        assert_eq!(picks, ["http://c", "http://c", "http://a", "http://c"]);
        for h in &s.hosts {
            h.skip_until_ms.store(i64::MAX / 2, Ordering::Relaxed);
        }
        s.hosts[2].skip_until_ms.store(1000, Ordering::Relaxed);
        assert_eq!(s.pick().base, "http://c");
    }

    #[tokio::test]
    async fn a_host_going_down_and_coming_back_changes_its_health_once_each() {
        let health = HealthRegistry::new();
        let mut s = service(&["http://x"]);
        s.report_health("es", &health);
        let host = &s.hosts[0];
        host.mark_down("connection refused to http://x");
        host.mark_down("a second failure does not change the first reason");
        let c = &health.report().components[0];
        assert_eq!(c.component, "output es host http://x");
        assert_eq!(
            (c.status, c.reason.as_str()),
            (
                Status::Degraded,
                "unreachable: connection refused to http://x"
            )
        );
        host.mark_up();
        let c = &health.report().components[0];
        assert_eq!((c.status, c.reason.as_str()), (Status::Ok, ""));
    }

    #[tokio::test]
    async fn fails_over_to_a_live_host_and_names_a_dead_one() {
        // A port nothing listens on: bind, note it, close.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let live_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = format!("http://{}", live_listener.local_addr().unwrap());
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut sock, _)) = live_listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                    )
                    .await;
            }
        });
        let health = HealthRegistry::new();
        let mut s = service(&[&dead, &live]);
        s.report_health("es", &health);
        for _ in 0..3 {
            let reply = s.bulk(bytes::Bytes::from_static(b"{}\n")).await.unwrap();
            assert_eq!((reply.status, reply.host.as_str()), (200, live.as_str()));
        }
        let state = |host: &str| {
            let name = format!("output es host {host}");
            let c = health.report().components;
            let c = c.into_iter().find(|c| c.component == name).unwrap();
            (c.status, c.reason)
        };
        assert_eq!(
            state(&dead),
            (
                Status::Degraded,
                format!("unreachable: connection refused to {dead}")
            )
        );
        assert_eq!(state(&live), (Status::Ok, String::new()));
        // One unreachable host among live ones degrades, never fails, `/health`.
        assert_eq!(health.report().status, Status::Degraded);
        let only_dead = service(&[&dead]);
        let err = only_dead.bulk(bytes::Bytes::new()).await.err().unwrap();
        assert_eq!(err.reason, format!("connection refused to {dead}"));
    }
}
