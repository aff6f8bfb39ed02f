//! `http` input: accepts POST (or PUT) on any path with one JSON object, a JSON array of
//! objects, or NDJSON; gzip bodies are inflated. A line or body that is not a JSON object
//! becomes an event with `message` = the text and tag `_jsonparsefailure`.
//!
//! `serve.rs` accepts connections (capped, optionally TLS) and serves them with hyper (header
//! read timeout, graceful shutdown); `request.rs` answers one request: body read and inflated
//! under the memory budget, then decoded and queued in chunks as room appears; `decode.rs`
//! splits a body into documents and decodes them. Replies: 200 once every event is queued,
//! 401, 405, 408 (body too slow), 413, 429 with `Retry-After` (queue or memory budget full
//! for `queue_wait`, or too many requests), 503 while shutting down; every reply carries
//! `X-Sheepdog-Accepted`, the events of the body that were queued.

mod decode;
mod request;
mod serve;

pub use decode::{decode_body, failure_event, parse_object, Decoder, Doc, Documents};

use super::beats::tls::{self, ClientAuth};
use super::check_address;
use crate::config::de;
use crate::config::problem::Problem;
use crate::config::secret::Secret;
use crate::queue::QueueSender;
use crate::BuildContext;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listen address, e.g. `0.0.0.0:8080`.
    pub address: String,
    /// Tags added to every event from this input.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Largest accepted body, compressed or inflated. Default `10MiB`.
    #[serde(default = "d_limit", deserialize_with = "de::bytes")]
    pub max_body_size: u64,
    /// Basic-auth user; requires `password`.
    #[serde(default)]
    pub user: Option<String>,
    /// Basic-auth password (never printed).
    #[serde(default)]
    pub password: Option<Secret>,
    /// Bearer token expected in `Authorization: Bearer <token>` (never printed).
    #[serde(default)]
    pub token: Option<Secret>,
    /// How long a request may wait in total for room in a full pipeline queue or memory
    /// budget before it is answered 429 (the client's connection is the backpressure
    /// meanwhile, as Logstash's input threads block); `0s` answers 429 at once. Default `5s`.
    #[serde(default = "d_queue_wait", deserialize_with = "de::duration")]
    pub queue_wait: Duration,
    /// Connections served at once; one more is answered 503 and closed. Default 1024.
    #[serde(
        default = "d_max_connections",
        deserialize_with = "de::from_str_or_value"
    )]
    pub max_connections: usize,
    /// Requests being answered at once; one more is answered 429 at once (Logstash's
    /// `max_pending_requests`). Default 512.
    #[serde(
        default = "d_max_pending_requests",
        deserialize_with = "de::from_str_or_value"
    )]
    pub max_pending_requests: usize,
    /// How long a client may take to send a request's headers, and how long an idle
    /// keep-alive connection stays open; then the connection is closed. Default `10s`.
    #[serde(default = "d_header_timeout", deserialize_with = "de::duration")]
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body once its headers arrived (time
    /// spent waiting for room does not count); a slower body is answered 408 and its
    /// connection closed. Default `30s`.
    #[serde(default = "d_body_timeout", deserialize_with = "de::duration")]
    pub body_read_timeout: Duration,
    /// Serve HTTPS. Default false.
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

fn d_limit() -> u64 {
    10 * 1024 * 1024
}
fn d_queue_wait() -> Duration {
    Duration::from_secs(5)
}
fn d_max_connections() -> usize {
    1024
}
fn d_max_pending_requests() -> usize {
    512
}
fn d_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn d_body_timeout() -> Duration {
    Duration::from_secs(30)
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
        let mut problems: Vec<Problem> = check_address("address", &self.address)
            .into_iter()
            .collect();
        if self.user.is_some() != self.password.is_some() {
            problems.push(Problem::at(
                "user",
                "basic auth needs both `user` and `password`",
            ));
        }
        if self.user.is_some() && self.token.is_some() {
            problems.push(Problem::at(
                "token",
                "choose basic auth (`user`/`password`) or a bearer `token`, not both",
            ));
        }
        if self.max_body_size == 0 {
            problems.push(Problem::at("max_body_size", "must be greater than zero"));
        }
        for (key, n) in [
            ("max_connections", self.max_connections),
            ("max_pending_requests", self.max_pending_requests),
        ] {
            if n == 0 {
                problems.push(Problem::at(key, "must be at least 1"));
            }
        }
        for (key, d) in [
            ("header_read_timeout", self.header_read_timeout),
            ("body_read_timeout", self.body_read_timeout),
            ("ssl_handshake_timeout", self.ssl_handshake_timeout),
        ] {
            if d.is_zero() {
                problems.push(Problem::at(key, "must be longer than zero"));
            }
        }
        problems.extend(tls::settings_problems(
            self.ssl_enabled,
            &self.tls_files(),
            "HTTPS",
        ));
        problems
    }

    /// The value a request's `Authorization` header must have, when authentication is on.
    fn expected_authorization(&self) -> Option<String> {
        match (&self.user, &self.password, &self.token) {
            (Some(u), Some(p), _) => Some(format!(
                "Basic {}",
                base64_encode(&format!("{u}:{}", p.expose()))
            )),
            (_, _, Some(t)) => Some(format!("Bearer {}", t.expose())),
            _ => None,
        }
    }

    /// Binds the listener and spawns the accept loop; the task ends after shutdown once every
    /// connection has been answered and closed.
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
        let local = listener.local_addr()?;
        tracing::info!(input = id, address = %local, tls = tls.is_some(), "http input listening");
        let request = Arc::new(request::Shared {
            source: Arc::from(id),
            tags: self.tags.clone(),
            limit: self.max_body_size as usize,
            auth: self
                .expected_authorization()
                .map(|a| request::Auth::new(&a)),
            queue,
            queue_wait: self.queue_wait,
            body_timeout: self.body_read_timeout,
            budget: ctx.budget.clone(),
            pending: Arc::new(tokio::sync::Semaphore::new(self.max_pending_requests)),
            metrics: request::Metrics::register(&ctx.metrics, id),
            shutdown: ctx.shutdown.clone(),
        });
        let server = serve::Server {
            request,
            tls,
            handshake: self.ssl_handshake_timeout,
            header_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
            metrics: serve::Metrics::register(&ctx.metrics, id),
        };
        Ok(tokio::spawn(server.run(listener)))
    }
}

fn base64_encode(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}
