//! What every hostile test shares: a daemon on the shipped pipeline with a small budget, its
//! peak RSS, and an honest HTTP client whose events must be served and indexed.

#![allow(dead_code)]

use crate::common::{client, Osmem, Sheepdog};
use serde_json::json;
use std::time::{Duration, Instant};

/// The memory budget the hostile tests give the daemon (`MEMORY_LIMIT`).
pub const BUDGET_MIB: u64 = 64;

/// What the process may use beyond the budget: code, runtime, GeoIP map and allocator slack,
/// measured as the shipped pipeline's RSS at rest plus headroom for per-connection buffers.
///
/// 128 rather than 96 since the HTTP flood (24 clients resending 4 MiB bodies answered 429 while
/// Elasticsearch is down) peaked at 169-181 MiB: body buffers freed after each 429 stay resident
/// until the allocator purges them (250 ms, src/main.rs), and decoded events weigh somewhat more
/// than `budget::event_bytes` estimates.
pub const MARGIN_MIB: u64 = 128;

/// The index pattern the shipped pipeline writes to.
pub const INDEX: &str = "holysheep-logs-*";

/// A daemon on the shipped pipeline in front of osmem-server.
pub struct Target {
    pub es: Osmem,
    pub dog: Sheepdog,
}

impl Target {
    /// Starts osmem-server and the daemon with the hostile budget; `env` adds settings.
    pub fn start(env: &[(&str, &str)]) -> Target {
        let es = Osmem::start();
        let budget = format!("{BUDGET_MIB}MiB");
        let mut all: Vec<(&str, &str)> =
            vec![("ES_HOSTS", es.url.as_str()), ("MEMORY_LIMIT", &budget)];
        all.extend_from_slice(env);
        let dog = Sheepdog::start("pipelines/holysheep.toml", &all);
        Target { es, dog }
    }

    /// The daemon's peak resident set so far, in MiB.
    pub fn peak_rss_mib(&self) -> u64 {
        peak_rss_mib(self.dog.pid())
    }

    /// Asserts the daemon still answers `/health` and its peak RSS stayed within the budget
    /// plus the margin; returns the peak.
    pub fn assert_survived(&self, attack: &str) -> u64 {
        let peak = self.peak_rss_mib();
        let alive = client()
            .get(format!("{}/health", self.dog.api_url))
            .send()
            .is_ok();
        assert!(
            alive,
            "{attack}: the daemon stopped answering:\n{}",
            self.dog.log()
        );
        assert!(
            peak <= BUDGET_MIB + MARGIN_MIB,
            "{attack}: peak RSS {peak} MiB exceeds the {BUDGET_MIB} MiB budget + {MARGIN_MIB} MiB margin"
        );
        peak
    }
}

/// VmHWM of process `pid`, in MiB.
pub fn peak_rss_mib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:") / 1024
}

/// VmRSS of process `pid`, in MiB.
pub fn rss_mib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:") / 1024
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// An honest application: posts small NDJSON bodies with unique request ids, resending a
/// body answered 429/503 (as applications do) until `deadline`.
pub struct Honest {
    pub prefix: String,
    pub sent: usize,
    pub served: usize,
}

impl Honest {
    pub fn new(prefix: &str) -> Honest {
        Honest {
            prefix: prefix.to_string(),
            sent: 0,
            served: 0,
        }
    }

    /// Posts `bodies` bodies of `per_body` events, each retried until answered 200 or
    /// `deadline` passes; counts those served.
    pub fn send(&mut self, url: &str, bodies: usize, per_body: usize, deadline: Instant) {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        for b in 0..bodies {
            let body: String = (0..per_body)
                .map(|i| {
                    let line = json!({
                        "request_id": format!("{}-{}-{}", self.prefix, self.sent + b, i),
                        "model": "gpt-4o",
                        "user_id": "honest",
                        "status_code": 200,
                        "latency_ms": 120,
                        "prompt_tokens": 10,
                        "completion_tokens": 5,
                        "timestamp": "2026-11-29T12:00:00Z",
                    });
                    format!("{line}\n")
                })
                .collect();
            loop {
                let r = http
                    .post(url)
                    .header("content-type", "application/x-ndjson")
                    .body(body.clone())
                    .send();
                if let Ok(r) = &r {
                    if r.status().as_u16() == 200 {
                        self.served += 1;
                        break;
                    }
                }
                if Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        self.sent += bodies;
    }

    /// Waits until every served event of this client is searchable, and returns how many are.
    pub fn indexed(&self, es: &Osmem, per_body: usize, timeout: Duration) -> u64 {
        let want = (self.served * per_body) as u64;
        let started = Instant::now();
        loop {
            es.refresh();
            let r = es.search(
                INDEX,
                &json!({"size": 0, "query": {"match": {"user_id": "honest"}}}),
            );
            let n = r["hits"]["total"]["value"].as_u64().unwrap_or(0);
            if n >= want || started.elapsed() > timeout {
                return n;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The one line each attack prints.
pub fn report(attack: &str, peak_mib: u64, honest: &Honest) {
    println!(
        "hostile: {attack}: peak RSS {peak_mib} MiB, honest requests served {}/{}",
        honest.served, honest.sent
    );
}
