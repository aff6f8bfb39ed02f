//! `elasticsearch`: bulk-indexes events into (daily) indices, like Logstash's elasticsearch
//! output. Workers encode in `submit`; one task batches chunks into bulk requests with a few in
//! flight, retries what the cluster pushes back on, and dead-letters what it refuses.

pub(crate) mod dead_letter;
pub mod encoder;
mod hosts;
pub mod replay;
mod retention;
mod retry;
mod service;
mod sink;
mod template;

use super::{BoxFuture, Output, Started};
use crate::config::de;
use crate::config::problem::Problem;
use crate::config::secret::Secret;
use crate::event::Event;
use crate::template::Template;
use crate::BuildContext;
use anyhow::Context;
use encoder::{Chunk, Encoder};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Cluster URLs, an array or a comma-separated string (`"${ES_HOSTS}"`); requests go
    /// round-robin and fail over. A URL without a scheme gets `http://`. A `user:password@`
    /// in a URL is taken out of it into `user` and `password` (it must agree with them).
    pub hosts: hosts::HostList,
    /// Basic-auth user; used only when `password` is not empty.
    #[serde(default)]
    pub user: String,
    /// Basic-auth password; empty means no basic auth. Never printed.
    #[serde(default)]
    pub password: Secret,
    /// An API key (the base64 `id:key` form) sent as `Authorization: ApiKey ...`. Never printed.
    #[serde(default)]
    pub api_key: Secret,
    /// Index name template, e.g. `holysheep-logs-%{+YYYY.MM.dd}` (UTC day of `@timestamp`).
    pub index: String,
    /// Document id template, or templates tried in order: the first whose fields are all
    /// present and that renders non-empty becomes the bulk item's `_id`, e.g.
    /// `["%{request_id}", "%{[@metadata][fingerprint]}"]`. When none does (or none is set),
    /// Elasticsearch picks the id. Default: none.
    #[serde(default, deserialize_with = "one_or_many")]
    pub document_id: Vec<String>,
    /// The bulk action, as in Logstash: `index` (a document with the same `_id` is replaced)
    /// or `create` (it is kept, and the 409 counts as already indexed). Default `index`.
    #[serde(default = "d_action")]
    pub action: String,
    /// Install the index template at start-up. Default true.
    #[serde(default = "d_true", deserialize_with = "de::from_str_or_value")]
    pub manage_template: bool,
    /// Name of the composable index template. Default: `index` up to its first `%{`, trimmed of
    /// `-`, `_` and `.`.
    #[serde(default)]
    pub template_name: String,
    /// Index pattern the template applies to. Default: that prefix followed by `-*`.
    #[serde(default)]
    pub template_pattern: String,
    /// Replace a template of the same name that is already installed. Default false (like
    /// Logstash: an operator's edited template is kept).
    #[serde(default, deserialize_with = "de::from_str_or_value")]
    pub template_overwrite: bool,
    /// Where refused documents are appended. Default `<data_dir>/dead_letter.ndjson`.
    #[serde(default)]
    pub dead_letter_path: Option<PathBuf>,
    /// Most documents in one bulk request. Default 2000 (about 1.2 MB of LLM-API log events;
    /// Filebeat's `bulk_max_size` is 1600).
    #[serde(default = "d_batch_events", deserialize_with = "de::from_str_or_value")]
    pub batch_max_events: usize,
    /// Most bytes (uncompressed) in one bulk request, e.g. `"10MiB"`. Default 10MiB.
    #[serde(default = "d_batch_bytes", deserialize_with = "de::bytes")]
    pub batch_max_bytes: u64,
    /// Longest the oldest gathered event waits for its bulk request to fill before it is sent
    /// anyway. Default `50ms` (Logstash's `pipeline.batch.delay`): at a steady 20,000 events/s
    /// a full bulk takes 100 ms to fill, so requests go out by age well before.
    /// Under full load they fill by count first and this never applies.
    #[serde(default = "d_flush", deserialize_with = "de::duration")]
    pub flush_interval: Duration,
    /// Bulk requests in flight at once. Default 4.
    #[serde(default = "d_in_flight", deserialize_with = "de::from_str_or_value")]
    pub max_in_flight: usize,
    /// Events held by this output (queued, in flight or being retried) before `submit` waits.
    /// Default 6000 (three full bulk requests).
    #[serde(default = "d_queue", deserialize_with = "de::from_str_or_value")]
    pub queue_max_events: usize,
    /// `none` or `gzip` for request bodies. Default `none`.
    #[serde(default = "d_compression")]
    pub compression: String,
    /// Attempts after the first before undelivered documents go to the dead-letter file.
    /// Default: retry forever.
    #[serde(default, deserialize_with = "opt_u32")]
    pub max_retries: Option<u32>,
    /// First retry delay, doubled per attempt. Default `100ms`.
    #[serde(default = "d_backoff_initial", deserialize_with = "de::duration")]
    pub retry_initial_backoff: Duration,
    /// Longest retry delay. Default `10s`.
    #[serde(default = "d_backoff_max", deserialize_with = "de::duration")]
    pub retry_max_backoff: Duration,
    /// Timeout of one HTTP request. Default `60s`.
    #[serde(default = "d_timeout", deserialize_with = "de::duration")]
    pub request_timeout: Duration,
    /// PEM file with the CA certificate(s) to trust for `https://` hosts.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate (chain) presented to `https://` hosts that ask for one; needs
    /// `tls_key`.
    #[serde(default)]
    pub tls_certificate: Option<PathBuf>,
    /// PEM private key of `tls_certificate` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Accept any server certificate, so anyone between sheepdog and the cluster can read and
    /// change what is sent (testing only; `check` and start-up warn). Default false.
    #[serde(default, deserialize_with = "de::from_str_or_value")]
    pub tls_skip_verify: bool,
    /// Delete this output's daily indices (`index` = `<prefix>%{+YYYY.MM.dd}`) dated more than
    /// this many days before today (UTC), at start-up and then daily. Default 0: keep forever.
    #[serde(default, deserialize_with = "de::from_str_or_value")]
    pub retention_days: u32,
    /// Name of an existing ILM policy, set as `index.lifecycle.name` in the installed index
    /// template (Logstash's `ilm_policy`). Default: none.
    #[serde(default)]
    pub ilm_policy: String,
}

fn d_true() -> bool {
    true
}
fn d_action() -> String {
    "index".into()
}
fn d_batch_events() -> usize {
    2000
}
fn d_batch_bytes() -> u64 {
    10 * 1024 * 1024
}
fn d_flush() -> Duration {
    Duration::from_millis(50)
}
fn d_in_flight() -> usize {
    4
}
fn d_queue() -> usize {
    6000
}
fn d_compression() -> String {
    "none".into()
}
fn d_backoff_initial() -> Duration {
    Duration::from_millis(100)
}
fn d_backoff_max() -> Duration {
    Duration::from_secs(10)
}
fn d_timeout() -> Duration {
    Duration::from_secs(60)
}

fn opt_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    de::from_str_or_value(d).map(Some)
}

/// A string or an array of strings (templates may hold commas, so no splitting).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Bulk request bodies stay below this (Logstash's target as well): proxies and clusters in
/// front commonly cap request bodies near it.
const MAX_BULK_BYTES: u64 = 20 * 1024 * 1024;

/// The settings the running output uses, all checked.
struct Settings {
    service: service::ServiceConfig,
    index: Template,
    /// `_id` templates and the bulk action.
    ids: encoder::Ids,
    template: Option<TemplateInstall>,
    dead_letter_path: PathBuf,
    batch_max_events: usize,
    batch_max_bytes: usize,
    flush_interval: Duration,
    max_in_flight: usize,
    queue_max_events: usize,
    max_retries: Option<u32>,
    backoff_initial: Duration,
    backoff_max: Duration,
    /// Daily indices to delete after `retention_days`, when set.
    retention: Option<(retention::DailyIndices, u32)>,
}

struct TemplateInstall {
    name: String,
    pattern: String,
    overwrite: bool,
    /// `index.lifecycle.name` in the template's settings.
    ilm_policy: Option<String>,
}

impl Config {
    pub fn validate(&self, ctx: &BuildContext) -> Vec<Problem> {
        let mut problems = match self.settings(ctx) {
            Ok(_) => Vec::new(),
            Err(problems) => problems,
        };
        if self.tls_skip_verify {
            problems.push(
                Problem::at(
                    "tls_skip_verify",
                    "server certificates are not verified: anyone between sheepdog and the cluster can read and change the documents and credentials sent",
                )
                .hint("trust the cluster's CA with tls_ca = \"/path/to/http_ca.crt\" and remove tls_skip_verify")
                .warning(),
            );
        }
        problems
    }

    /// Validates the whole configuration into settings, or every problem found.
    fn settings(&self, ctx: &BuildContext) -> Result<Settings, Vec<Problem>> {
        let mut problems = Vec::new();
        let hosts = hosts::parse(&self.hosts, &mut problems);
        let index = self.index_template(&mut problems);
        let ids = self.ids(&mut problems);
        let authorization = self.authorization(hosts.credentials, &mut problems);
        let gzip = self.gzip(&mut problems);
        let tls_ca_pem = self.tls_ca_pem(&mut problems);
        let tls_identity_pem = self.tls_identity_pem(&mut problems);
        self.check_limits(&mut problems);
        let template = self.template_install(&mut problems);
        let dead_letter_path = self.dead_letter_path(ctx, &mut problems);
        let retention = self.retention(&mut problems);
        match (problems.is_empty(), index) {
            (true, Some(index)) => Ok(Settings {
                service: service::ServiceConfig {
                    hosts: hosts.urls,
                    authorization,
                    request_timeout: self.request_timeout,
                    gzip,
                    tls_ca_pem,
                    tls_identity_pem,
                    tls_skip_verify: self.tls_skip_verify,
                    dead_host_pause: self.retry_max_backoff.min(Duration::from_secs(5)),
                },
                index,
                ids,
                template,
                dead_letter_path,
                batch_max_events: self.batch_max_events,
                batch_max_bytes: usize::try_from(self.batch_max_bytes).unwrap_or(usize::MAX),
                flush_interval: self.flush_interval,
                max_in_flight: self.max_in_flight,
                queue_max_events: self.queue_max_events,
                max_retries: self.max_retries,
                backoff_initial: self.retry_initial_backoff,
                backoff_max: self.retry_max_backoff,
                retention,
            }),
            _ => Err(problems),
        }
    }

    /// The index name template, compiled; an empty or upper-case name is a problem.
    fn index_template(&self, problems: &mut Vec<Problem>) -> Option<Template> {
        let index = match Template::compile(&self.index) {
            Ok(t) => Some(t),
            Err(e) => {
                problems.push(
                    Problem::at("index", format!("bad index template `{}`: {e}", self.index))
                        .hint("e.g. \"holysheep-logs-%{+YYYY.MM.dd}\""),
                );
                None
            }
        };
        if self.index.trim().is_empty() {
            problems.push(
                Problem::at("index", "the index name is empty")
                    .hint("e.g. \"holysheep-logs-%{+YYYY.MM.dd}\""),
            );
        } else if self.index.chars().any(|c| c.is_ascii_uppercase()) && !self.index.contains("%{") {
            problems.push(
                Problem::at(
                    "index",
                    format!("index `{}` has upper-case letters", self.index),
                )
                .hint("Elasticsearch index names must be lower case"),
            );
        }
        index
    }

    /// The document id templates and the bulk action.
    fn ids(&self, problems: &mut Vec<Problem>) -> encoder::Ids {
        let mut templates = Vec::new();
        for source in &self.document_id {
            match Template::compile(source) {
                Ok(t) if !source.trim().is_empty() => templates.push(t),
                Ok(_) => problems.push(
                    Problem::at("document_id", "a document id template is empty")
                        .hint("e.g. \"%{request_id}\", or leave document_id out"),
                ),
                Err(e) => problems.push(
                    Problem::at("document_id", format!("bad template `{source}`: {e}"))
                        .hint("e.g. [\"%{request_id}\", \"%{[@metadata][fingerprint]}\"]"),
                ),
            }
        }
        let action = match self.action.as_str() {
            "index" => encoder::Action::Index,
            "create" => encoder::Action::Create,
            other => {
                problems.push(
                    Problem::at("action", format!("unsupported action `{other}`"))
                        .hint("use \"index\" or \"create\""),
                );
                encoder::Action::Index
            }
        };
        encoder::Ids { templates, action }
    }

    /// The `Authorization` header value: an API key, basic auth (from `user` and `password`,
    /// or from the host URLs), or none.
    fn authorization(
        &self,
        from_urls: Option<hosts::UrlCredentials>,
        problems: &mut Vec<Problem>,
    ) -> Option<Secret> {
        let (user, password) = match from_urls {
            None => (self.user.clone(), self.password.clone()),
            Some(found) => self.merge_url_credentials(found, problems)?,
        };
        if !self.api_key.is_empty() {
            if !password.is_empty() {
                problems.push(
                    Problem::at("api_key", "both `api_key` and `password` are set")
                        .hint("use either an API key or basic auth (user/password)"),
                );
            }
            Some(Secret::new(format!("ApiKey {}", self.api_key.expose())))
        } else if !password.is_empty() {
            if user.is_empty() {
                problems.push(
                    Problem::at("user", "`password` is set but `user` is empty")
                        .hint("set user = \"elastic\" (or the user the password belongs to)"),
                );
            }
            use base64::Engine;
            Some(Secret::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{}", password.expose()))
            )))
        } else {
            None
        }
    }

    /// The user and password from the host URLs, checked against `user`, `password` and
    /// `api_key`: giving the same value twice is fine, two different ones are a problem
    /// (`None`).
    fn merge_url_credentials(
        &self,
        found: hosts::UrlCredentials,
        problems: &mut Vec<Problem>,
    ) -> Option<(String, Secret)> {
        let before = problems.len();
        if !self.api_key.is_empty() {
            problems.push(
                Problem::at("api_key", "`api_key` is set and a host URL carries a user and password")
                    .hint("use either an API key or basic auth: remove user:password@ from hosts, or api_key"),
            );
        }
        if !self.user.is_empty() && self.user != found.user {
            problems.push(
                Problem::at(
                    "user",
                    format!(
                        "`user` is `{}` but a host URL names the user `{}`",
                        self.user, found.user
                    ),
                )
                .hint("give the login once: in user and password, or in the host URL"),
            );
        }
        let password = match found.password {
            Some(p) if !self.password.is_empty() && self.password != p => {
                problems.push(
                    Problem::at(
                        "password",
                        "`password` differs from the password in a host URL",
                    )
                    .hint("give the login once: in user and password, or in the host URL"),
                );
                p
            }
            Some(p) => p,
            None => self.password.clone(),
        };
        (problems.len() == before).then_some((found.user, password))
    }

    /// Whether bulk bodies are gzipped.
    fn gzip(&self, problems: &mut Vec<Problem>) -> bool {
        let gzip = match self.compression.as_str() {
            "none" | "" => false,
            "gzip" => true,
            other => {
                problems.push(
                    Problem::at("compression", format!("unknown compression `{other}`"))
                        .hint("use \"none\" or \"gzip\""),
                );
                false
            }
        };
        gzip
    }

    /// The CA bundle file's PEM bytes, checked to hold a certificate.
    fn tls_ca_pem(&self, problems: &mut Vec<Problem>) -> Option<Vec<u8>> {
        let tls_ca_pem = match &self.tls_ca {
            None => None,
            Some(path) => match std::fs::read(path) {
                Ok(pem) => {
                    if reqwest::Certificate::from_pem_bundle(&pem).map_or(true, |c| c.is_empty()) {
                        problems.push(
                            Problem::at(
                                "tls_ca",
                                format!("`{}` holds no PEM certificate", path.display()),
                            )
                            .hint("point it at the cluster's CA certificate (http_ca.crt)"),
                        );
                    }
                    Some(pem)
                }
                Err(e) => {
                    problems.push(
                        Problem::at("tls_ca", format!("cannot read `{}`: {e}", path.display()))
                            .hint("point it at the cluster's CA certificate (http_ca.crt)"),
                    );
                    None
                }
            },
        };
        tls_ca_pem
    }

    /// The client certificate and its key as one PEM bundle, checked to make an identity.
    fn tls_identity_pem(&self, problems: &mut Vec<Problem>) -> Option<Vec<u8>> {
        let (cert, key) = match (&self.tls_certificate, &self.tls_key) {
            (None, None) => return None,
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) | (None, Some(_)) => {
                problems.push(
                    Problem::at(
                        "tls_certificate",
                        "a client certificate needs both `tls_certificate` and `tls_key`",
                    )
                    .hint("give both PEM files, or neither"),
                );
                return None;
            }
        };
        let mut read = |key: &str, path: &PathBuf| match std::fs::read(path) {
            Ok(pem) => Some(pem),
            Err(e) => {
                problems.push(
                    Problem::at(key, format!("cannot read `{}`: {e}", path.display()))
                        .hint("give the path of a readable PEM file"),
                );
                None
            }
        };
        let (Some(mut bundle), Some(key_pem)) =
            (read("tls_key", key), read("tls_certificate", cert))
        else {
            return None;
        };
        bundle.push(b'\n');
        bundle.extend_from_slice(&key_pem);
        if let Err(e) = reqwest::Identity::from_pem(&bundle) {
            problems.push(
                Problem::at(
                    "tls_certificate",
                    format!(
                        "`{}` and `{}` do not make a client identity: {e}",
                        cert.display(),
                        key.display()
                    ),
                )
                .hint("a PEM certificate chain and its private key (PKCS#8, PKCS#1 or SEC1)"),
            );
            return None;
        }
        Some(bundle)
    }

    /// Checks that sizes, intervals and backoffs are positive.
    fn check_limits(&self, problems: &mut Vec<Problem>) {
        for (key, value) in [
            ("batch_max_events", self.batch_max_events),
            ("max_in_flight", self.max_in_flight),
            ("queue_max_events", self.queue_max_events),
        ] {
            if value == 0 {
                problems.push(Problem::at(key, "must be at least 1"));
            }
        }
        if self.batch_max_bytes == 0 {
            problems.push(Problem::at("batch_max_bytes", "must be greater than zero"));
        } else if self.batch_max_bytes >= MAX_BULK_BYTES {
            problems.push(
                Problem::at("batch_max_bytes", "must be below 20MiB")
                    .hint("bulk bodies over 20 MiB are refused by many clusters and proxies; the default is \"10MiB\""),
            );
        }
        if self.flush_interval.is_zero() {
            problems.push(
                Problem::at("flush_interval", "must be greater than zero").hint("e.g. \"1s\""),
            );
        }
        if self.request_timeout.is_zero() {
            problems.push(
                Problem::at("request_timeout", "must be greater than zero").hint("e.g. \"60s\""),
            );
        }
        if self.retry_initial_backoff.is_zero()
            || self.retry_max_backoff < self.retry_initial_backoff
        {
            problems.push(
                Problem::at(
                    "retry_max_backoff",
                    "retry backoffs must be positive with retry_max_backoff >= retry_initial_backoff",
                )
                .hint("e.g. retry_initial_backoff = \"100ms\", retry_max_backoff = \"10s\""),
            );
        }
    }

    /// The index template to install, its name and pattern derived from `index` by default.
    fn template_install(&self, problems: &mut Vec<Problem>) -> Option<TemplateInstall> {
        let prefix = self
            .index
            .split("%{")
            .next()
            .unwrap_or_default()
            .trim_end_matches(['-', '_', '.'])
            .to_string();
        let template = if self.manage_template {
            let name = if self.template_name.is_empty() {
                prefix.clone()
            } else {
                self.template_name.clone()
            };
            let pattern = if self.template_pattern.is_empty() {
                format!("{prefix}-*")
            } else {
                self.template_pattern.clone()
            };
            if name.is_empty() {
                problems.push(
                    Problem::at(
                        "template_name",
                        "cannot derive a template name from `index`",
                    )
                    .hint("set template_name, or manage_template = false"),
                );
            }
            if pattern.is_empty() || pattern == "-*" {
                problems.push(
                    Problem::at(
                        "template_pattern",
                        "cannot derive an index pattern from `index`",
                    )
                    .hint("set template_pattern = \"myindex-*\", or manage_template = false"),
                );
            }
            Some(TemplateInstall {
                name,
                pattern,
                overwrite: self.template_overwrite,
                ilm_policy: self.ilm_policy(problems),
            })
        } else {
            if !self.ilm_policy.trim().is_empty() {
                problems.push(
                    Problem::at("ilm_policy", "the policy is attached through the index template, which manage_template = false does not install")
                        .hint("set manage_template = true, or attach the policy in your own template"),
                );
            }
            None
        };
        template
    }

    /// The ILM policy name, when set; it must be usable in a setting value.
    fn ilm_policy(&self, problems: &mut Vec<Problem>) -> Option<String> {
        let policy = self.ilm_policy.trim();
        if policy.is_empty() {
            return None;
        }
        if policy.chars().any(|c| c.is_whitespace() || c.is_control()) {
            problems.push(
                Problem::at(
                    "ilm_policy",
                    format!("policy name `{policy}` holds white space"),
                )
                .hint("give the name of an existing ILM policy, e.g. \"holysheep-logs\""),
            );
        }
        Some(policy.to_string())
    }

    /// The daily indices `retention_days` deletes, read from `index`.
    fn retention(&self, problems: &mut Vec<Problem>) -> Option<(retention::DailyIndices, u32)> {
        if self.retention_days == 0 {
            return None;
        }
        match retention::DailyIndices::from_template(&self.index) {
            Ok(indices) => Some((indices, self.retention_days)),
            Err(why) => {
                problems.push(
                    Problem::at(
                        "retention_days",
                        format!("cannot tell which indices expire from index `{}`: {why}", self.index),
                    )
                    .hint("retention needs index = \"<prefix>%{+YYYY.MM.dd}\" with no field references; or set retention_days = 0 and use an ILM policy (ilm_policy)"),
                );
                None
            }
        }
    }

    /// Where refused documents go, checked to be a file path.
    fn dead_letter_path(&self, ctx: &BuildContext, problems: &mut Vec<Problem>) -> PathBuf {
        crate::outputs::dead_letter_path(
            &self.dead_letter_path,
            ctx,
            "dead_letter.ndjson",
            problems,
        )
    }

    /// The output's dead-letter store with a client for its cluster, for `sheepdog
    /// dead-letter`.
    pub fn dead_letter_store(&self, ctx: &BuildContext) -> anyhow::Result<replay::Store> {
        let settings = self.settings(ctx).map_err(|problems| {
            let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            anyhow::anyhow!("{}", text.join("; "))
        })?;
        let service = service::Service::new(&settings.service)?;
        Ok(replay::Store::new(settings.dead_letter_path, service))
    }

    pub fn start(&self, id: &str, ctx: &BuildContext) -> anyhow::Result<Started> {
        let settings = self.settings(ctx).map_err(|problems| {
            let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            anyhow::anyhow!("{}", text.join("; "))
        })?;
        let mut service = service::Service::new(&settings.service)
            .with_context(|| format!("output `{id}`: cannot build the HTTP client"))?;
        service.report_health(id, &ctx.health);
        let service = Arc::new(service);
        let (tx, rx) = mpsc::channel(settings.queue_max_events.clamp(1, 4096));
        let permits = Arc::new(Semaphore::new(settings.queue_max_events));
        let metrics = sink::Metrics::register(id, ctx);
        let encoder = Encoder::with_ids(settings.index.clone(), settings.ids.clone());
        let output = ElasticsearchOutput {
            budget: ctx.budget.clone(),
            encoder,
            tx,
            permits,
            capacity: settings.queue_max_events,
            avg_item_bytes: AtomicUsize::new(512),
            queued: metrics.queued.clone(),
        };
        tracing::info!(
            output = id,
            hosts = ?settings.service.hosts,
            index = %settings.index.source(),
            dead_letter = %settings.dead_letter_path.display(),
            "elasticsearch output starting"
        );
        let retention = settings.retention.clone().map(|(indices, days)| {
            let r = retention::Retention {
                output: id.to_string(),
                indices,
                days,
                service: service.clone(),
                deleted: ctx.metrics.counter(
                    "sheepdog_es_retention_deleted_total",
                    "Daily indices deleted because they were older than retention_days",
                    &[("output", id)],
                ),
            };
            tokio::spawn(retention::run(r, ctx.shutdown.clone()))
        });
        let sink = sink::Sink::new(id, settings, service, metrics, ctx);
        // One task for the output: the bulk sink, and beside it the retention rounds, which end
        // on the shutdown token (before the sink has drained).
        let task = tokio::spawn(async move {
            sink::run(sink, rx).await;
            if let Some(retention) = retention {
                let _ = retention.await;
            }
        });
        Ok(Started {
            output: Box::new(output),
            task,
        })
    }
}

/// Encoded items on their way to the sink, holding their share of the output's capacity until
/// they are delivered or dead-lettered.
pub(crate) struct Pending {
    pub chunk: Chunk,
    /// Items in `chunk` when it was queued (the sink moves the bytes out into the request body
    /// and keeps this until delivery).
    events: usize,
    _permit: OwnedSemaphorePermit,
    queued: crate::metrics::Gauge,
    /// The documents' bytes on the memory budget, held until delivery.
    _charge: Option<crate::budget::Charge>,
    /// The events' acknowledgement, confirmed once every item is indexed or dead-lettered;
    /// dropped unconfirmed (delivery cut short) it fails.
    hold: Option<crate::ack::Hold>,
}

impl Pending {
    fn new(chunk: Chunk, permit: OwnedSemaphorePermit, queued: crate::metrics::Gauge) -> Self {
        queued.add(chunk.len() as i64);
        Pending {
            events: chunk.len(),
            chunk,
            _permit: permit,
            queued,
            _charge: None,
            hold: None,
        }
    }

    fn held(mut self, hold: Option<&crate::ack::Hold>) -> Self {
        self.hold = hold.cloned();
        self
    }

    /// Confirms (or fails) the chunk's acknowledgement once delivery is over.
    pub(crate) fn settle(&mut self, delivered: bool) {
        match self.hold.take() {
            Some(h) if delivered => h.confirm(),
            Some(h) => h.fail(),
            None => {}
        }
    }

    /// Charges the documents' bytes to `budget` until the chunk is delivered. The charge is
    /// forced: a worker handing events over must not wait on room only delivery frees.
    fn charged_to(mut self, budget: &crate::budget::MemoryBudget) -> Self {
        let bytes =
            self.chunk.buf.capacity() + self.chunk.ends.capacity() * std::mem::size_of::<u32>();
        self._charge = Some(budget.force(bytes, crate::budget::Use::Output));
        self
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.queued.sub(self.events as i64);
    }
}

struct ElasticsearchOutput {
    budget: crate::budget::MemoryBudget,
    encoder: Encoder,
    tx: mpsc::Sender<Pending>,
    permits: Arc<Semaphore>,
    capacity: usize,
    /// Running estimate of an item's size, to size chunk buffers in one allocation.
    avg_item_bytes: AtomicUsize,
    queued: crate::metrics::Gauge,
}

impl Output for ElasticsearchOutput {
    fn submit<'a>(&'a self, events: &'a [&'a Event]) -> BoxFuture<'a, ()> {
        self.submit_held(events, None)
    }

    fn submit_held<'a>(
        &'a self,
        events: &'a [&'a Event],
        hold: Option<&'a crate::ack::Hold>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if events.is_empty() {
                return;
            }
            let avg = self.avg_item_bytes.load(Ordering::Relaxed);
            let mut chunk = Chunk {
                buf: Vec::with_capacity(events.len() * (avg + avg / 8)),
                ends: Vec::with_capacity(events.len()),
            };
            self.encoder.encode(events, &mut chunk);
            if chunk.is_empty() {
                return;
            }
            self.avg_item_bytes
                .store(chunk.buf.len() / chunk.len(), Ordering::Relaxed);
            let want = chunk.len().min(self.capacity) as u32;
            let Ok(permit) = self.permits.clone().acquire_many_owned(want).await else {
                // The output is closed: the events were not taken.
                if let Some(h) = hold {
                    h.clone().fail();
                }
                return;
            };
            let pending = Pending::new(chunk, permit, self.queued.clone())
                .charged_to(&self.budget)
                .held(hold);
            if self.tx.send(pending).await.is_err() {
                tracing::error!("elasticsearch output task has stopped; events were not delivered");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    fn ctx() -> BuildContext {
        BuildContext::new(
            PathBuf::from("/tmp/sheepdog-data"),
            CancellationToken::new(),
        )
    }

    fn parse(toml_text: &str) -> Result<Config, String> {
        toml::from_str(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn client_certificates_need_both_files_and_skipped_verification_warns() {
        let c = parse(
            "hosts = \"https://es:9200\"\nindex = \"x\"\ntls_certificate = \"/nonexistent/c.pem\"",
        )
        .unwrap();
        let problems = c.validate(&ctx());
        assert!(
            problems.iter().any(|p| p
                .to_string()
                .contains("needs both `tls_certificate` and `tls_key`")),
            "{problems:?}"
        );
        let c = parse("hosts = \"https://es:9200\"\nindex = \"x\"\ntls_certificate = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"").unwrap();
        let problems = c.validate(&ctx());
        assert!(
            problems
                .iter()
                .any(|p| p.is_error() && p.to_string().contains("cannot read `/nonexistent/")),
            "{problems:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let text = format!(
            "hosts = \"https://es:9200\"\nindex = \"x\"\ntls_certificate = \"{0}\"\ntls_key = \"{0}\"",
            junk.display()
        );
        let problems = parse(&text).unwrap().validate(&ctx());
        assert!(
            problems
                .iter()
                .any(|p| p.is_error() && p.to_string().contains("do not make a client identity")),
            "{problems:?}"
        );
        let c =
            parse("hosts = \"https://es:9200\"\nindex = \"x\"\ntls_skip_verify = true").unwrap();
        let problems = c.validate(&ctx());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(!problems[0].is_error());
        assert!(problems[0]
            .to_string()
            .contains("server certificates are not verified"));
    }

    #[test]
    fn shipped_keys_and_defaults() {
        let c = parse(
            r#"
            hosts = "http://a:9200, b:9200/"
            user = "elastic"
            password = ""
            index = "holysheep-logs-%{+YYYY.MM.dd}"
            template_name = "holysheep-logs"
            template_pattern = "holysheep-logs-*"
            dead_letter_path = "data/dead_letter.ndjson"
            "#,
        )
        .unwrap();
        let s = c.settings(&ctx()).unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(s.service.hosts, ["http://a:9200", "http://b:9200"]);
        assert_eq!(
            s.service.authorization, None,
            "empty password means no auth"
        );
        assert_eq!(s.batch_max_events, 2000);
        assert_eq!(s.queue_max_events, 6000);
        assert_eq!(s.flush_interval, Duration::from_millis(50));
        assert_eq!(s.max_in_flight, 4);
        assert_eq!(s.max_retries, None);
        assert_eq!(s.dead_letter_path, PathBuf::from("data/dead_letter.ndjson"));
        let t = s.template.unwrap();
        assert_eq!(
            (t.name.as_str(), t.pattern.as_str()),
            ("holysheep-logs", "holysheep-logs-*")
        );

        let c = parse("hosts = [\"https://es:9200\"]\nindex = \"app-%{+YYYY.MM.dd}\"\nuser = \"elastic\"\npassword = \"pw\"\nmax_retries = \"3\"").unwrap();
        let s = c.settings(&ctx()).unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(
            s.service.authorization.as_ref().map(Secret::expose),
            Some("Basic ZWxhc3RpYzpwdw==")
        );
        assert_eq!(s.max_retries, Some(3));
        assert_eq!(
            s.dead_letter_path,
            PathBuf::from("/tmp/sheepdog-data/dead_letter.ndjson")
        );
        let t = s.template.unwrap();
        assert_eq!((t.name.as_str(), t.pattern.as_str()), ("app", "app-*"));

        let c = parse("hosts = \"es:9200\"\nindex = \"x\"\napi_key = \"abc\"").unwrap();
        let s = c.settings(&ctx()).unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(
            s.service.authorization.as_ref().map(Secret::expose),
            Some("ApiKey abc")
        );
    }

    #[test]
    fn problems_name_the_key_and_a_fix() {
        let c = parse(
            r#"
            hosts = "ftp://x, "
            index = "logs-%{+YYYY.MM.dd"
            api_key = "k"
            password = "p"
            compression = "zstd"
            max_in_flight = 0
            "#,
        )
        .unwrap();
        let problems = c.validate(&ctx());
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let has = |needle: &str| text.iter().any(|t| t.contains(needle));
        assert!(
            has("error: hosts: host `ftp://x` is not an http(s) URL"),
            "{text:#?}"
        );
        assert!(has("error: index: bad index template"), "{text:#?}");
        assert!(
            has("error: api_key: both `api_key` and `password` are set"),
            "{text:#?}"
        );
        assert!(
            has("error: compression: unknown compression `zstd` (hint: use \"none\" or \"gzip\")"),
            "{text:#?}"
        );
        assert!(has("error: max_in_flight: must be at least 1"), "{text:#?}");
        assert_eq!(problems.len(), 5, "{text:#?}");

        let c = parse("hosts = \"\"\nindex = \"x\"").unwrap();
        let text = c.validate(&ctx())[0].to_string();
        assert!(
            text.starts_with("error: hosts: no Elasticsearch host given"),
            "{text}"
        );

        let err = parse("hosts = \"a\"\nindex = \"x\"\nbatch_size = 5").unwrap_err();
        assert!(err.contains("unknown field `batch_size`"), "{err}");
    }

    #[test]
    fn credentials_in_host_urls_become_basic_auth() {
        let auth = |toml: &str| {
            let s = parse(toml)
                .unwrap()
                .settings(&ctx())
                .unwrap_or_else(|p| panic!("{toml}: {p:?}"));
            let debug = format!("{:?}", s.service);
            assert!(!debug.contains("changeme"), "{debug}");
            (
                s.service.hosts,
                s.service.authorization.map(|a| a.expose().to_string()),
            )
        };
        // base64("elastic:changeme")
        let basic = Some("Basic ZWxhc3RpYzpjaGFuZ2VtZQ==".to_string());
        let (hosts, a) = auth("hosts = \"http://elastic:changeme@es:9200\"\nindex = \"x\"");
        assert_eq!(
            (hosts, a),
            (vec!["http://es:9200".to_string()], basic.clone())
        );
        // The same login given twice, or split between URL and keys, is one login.
        for extra in [
            "user = \"elastic\"\npassword = \"changeme\"",
            "password = \"changeme\"",
        ] {
            let toml =
                format!("hosts = \"http://elastic:changeme@es:9200\"\nindex = \"x\"\n{extra}");
            assert_eq!(auth(&toml).1, basic, "{extra}");
        }
        let toml = "hosts = \"http://elastic@es:9200\"\nindex = \"x\"\npassword = \"changeme\"";
        assert_eq!(auth(toml).1, basic);
    }

    #[test]
    fn credentials_in_host_urls_that_conflict_are_problems() {
        let problems = |extra: &str| -> Vec<String> {
            let toml =
                format!("hosts = \"http://elastic:changeme@es:9200\"\nindex = \"x\"\n{extra}");
            let text: Vec<String> = parse(&toml)
                .unwrap()
                .validate(&ctx())
                .iter()
                .map(|p| p.to_string())
                .collect();
            for t in &text {
                assert!(!t.contains("changeme") && !t.contains("0ther"), "{t}");
            }
            text
        };
        let text = problems("api_key = \"k3y\"");
        assert_eq!(text.len(), 1, "{text:?}");
        assert!(
            text[0].starts_with(
                "error: api_key: `api_key` is set and a host URL carries a user and password"
            ),
            "{text:?}"
        );
        let text = problems("user = \"admin\"");
        assert_eq!(text.len(), 1, "{text:?}");
        assert!(
            text[0].starts_with(
                "error: user: `user` is `admin` but a host URL names the user `elastic`"
            ),
            "{text:?}"
        );
        let text = problems("password = \"0ther\"");
        assert_eq!(text.len(), 1, "{text:?}");
        assert!(
            text[0]
                .starts_with("error: password: `password` differs from the password in a host URL"),
            "{text:?}"
        );
    }

    #[test]
    fn retention_days_and_ilm_policy() {
        let c = parse("hosts = \"es\"\nindex = \"logs-%{+YYYY.MM.dd}\"").unwrap();
        let s = c.settings(&ctx()).unwrap_or_else(|p| panic!("{p:?}"));
        assert!(s.retention.is_none(), "off by default");
        assert_eq!(s.template.unwrap().ilm_policy, None);

        // As the shipped pipeline writes them: strings from the environment.
        let c = parse(
            "hosts = \"es\"\nindex = \"logs-%{+YYYY.MM.dd}\"\nretention_days = \"30\"\nilm_policy = \"logs-hot-warm\"",
        )
        .unwrap();
        let s = c.settings(&ctx()).unwrap_or_else(|p| panic!("{p:?}"));
        let (indices, days) = s.retention.unwrap();
        assert_eq!((indices.prefix(), days), ("logs-", 30));
        assert_eq!(
            s.template.unwrap().ilm_policy.as_deref(),
            Some("logs-hot-warm")
        );
        let c =
            parse("hosts = \"es\"\nindex = \"x-%{[service]}\"\nretention_days = \"0\"").unwrap();
        assert!(c.settings(&ctx()).unwrap().retention.is_none());

        let problem = |toml: &str| -> String {
            let problems = parse(toml).unwrap().validate(&ctx());
            assert_eq!(problems.len(), 1, "{toml}: {problems:?}");
            problems[0].to_string()
        };
        let text = problem(
            "hosts = \"es\"\nindex = \"logs-%{[service]}-%{+YYYY.MM.dd}\"\nretention_days = 7",
        );
        assert!(
            text.starts_with("error: retention_days: cannot tell which indices expire from index `logs-%{[service]}-%{+YYYY.MM.dd}`: the index must end with one date pattern"),
            "{text}"
        );
        assert!(
            text.contains("hint: retention needs index = \"<prefix>%{+YYYY.MM.dd}\""),
            "{text}"
        );
        let text = problem("hosts = \"es\"\nindex = \"logs\"\nretention_days = 7");
        assert!(text.contains("the index has no date pattern"), "{text}");
        let text = problem("hosts = \"es\"\nindex = \"logs-%{+YYYY.MM}\"\nretention_days = 7");
        assert!(text.contains("needs exactly one dd"), "{text}");
        let text = problem("hosts = \"es\"\nindex = \"logs-%{+YYYY.MM.dd}\"\nmanage_template = false\nilm_policy = \"p\"");
        assert!(
            text.starts_with(
                "error: ilm_policy: the policy is attached through the index template"
            ),
            "{text}"
        );
        let text =
            problem("hosts = \"es\"\nindex = \"logs-%{+YYYY.MM.dd}\"\nilm_policy = \"my policy\"");
        assert!(
            text.starts_with("error: ilm_policy: policy name `my policy` holds white space"),
            "{text}"
        );
        let err = parse("hosts = \"es\"\nindex = \"x\"\nretention_days = \"-1\"").unwrap_err();
        assert!(err.contains("invalid value `-1`"), "{err}");
    }
}
