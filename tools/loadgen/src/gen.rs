//! Synthetic LLM-API request-log events shaped like the apps' request logger output, and prebuilt
//! NDJSON bodies whose `sent_at_us` placeholders are patched in place at send time.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Written where the send timestamp goes: 16 digits (unix microseconds stay 16 digits until 2286),
/// a valid JSON number, and a digit run that no other field produces.
pub const PLACEHOLDER: &[u8; 16] = b"1999999999999999";
pub const TS_WIDTH: usize = PLACEHOLDER.len();

struct Model {
    name: &'static str,
    weight: f64,
    /// Median latency of a successful call, ms.
    latency_median_ms: f64,
    /// USD per million prompt / completion tokens.
    price_in: f64,
    price_out: f64,
}

const MODELS: &[Model] = &[
    Model {
        name: "deepseek-v3.2",
        weight: 0.60,
        latency_median_ms: 850.0,
        price_in: 0.28,
        price_out: 0.42,
    },
    Model {
        name: "gpt-4.1",
        weight: 0.20,
        latency_median_ms: 1200.0,
        price_in: 2.0,
        price_out: 8.0,
    },
    Model {
        name: "claude-sonnet-4.5",
        weight: 0.15,
        latency_median_ms: 1500.0,
        price_in: 3.0,
        price_out: 15.0,
    },
    Model {
        name: "gemini-2.5-flash",
        weight: 0.05,
        latency_median_ms: 450.0,
        price_in: 0.30,
        price_out: 2.50,
    },
];

/// (status, message, relative weight, median latency ms)
const ERRORS: &[(&str, &str, f64, f64)] = &[
    ("error", "HTTP 429: rate limited", 40.0, 25.0),
    ("error", "HTTP 500: internal server error", 15.0, 300.0),
    ("error", "HTTP 503: upstream overloaded", 15.0, 120.0),
    ("error", "HTTP 400: context length exceeded", 10.0, 40.0),
    (
        "exception",
        "ReadTimeout: request timed out after 60s",
        10.0,
        60_000.0,
    ),
    (
        "exception",
        "ConnectError: connection reset by peer",
        10.0,
        15.0,
    ),
];

const ENDPOINTS: &[(&str, f64)] = &[
    ("/v1/chat/completions", 0.85),
    ("/v1/embeddings", 0.10),
    ("/v1/completions", 0.05),
];

pub const ERROR_RATE: f64 = 0.02;
pub const COST_OMITTED_RATE: f64 = 0.30;

/// Public IPv4 blocks of big access networks, so that most addresses resolve in GeoLite2:
/// (first octet, second octet range, weight, country). No private, shared or reserved space.
const IP_BLOCKS: &[(u8, (u8, u8), f64, &str)] = &[
    (73, (0, 255), 18.0, "US"),   // Comcast
    (98, (0, 255), 10.0, "US"),   // mixed US ISPs
    (24, (0, 127), 6.0, "US"),    // cable ISPs
    (183, (0, 63), 6.0, "CN"),    // China Telecom / Unicom
    (36, (96, 127), 4.0, "CN"),   // China Telecom
    (117, (192, 255), 6.0, "IN"), // BSNL
    (49, (32, 63), 5.0, "IN"),    // Reliance Jio
    (84, (128, 191), 5.0, "DE"),  // Deutsche Telekom
    (91, (0, 63), 3.0, "DE"),     // Deutsche Telekom
    (86, (128, 191), 4.0, "GB"),  // BT
    (81, (128, 159), 3.0, "GB"),  // BT
    (90, (0, 127), 5.0, "FR"),    // Orange
    (126, (0, 255), 5.0, "JP"),   // SoftBank
    (177, (0, 255), 5.0, "BR"),   // Brazilian ISPs
    (189, (0, 127), 3.0, "BR"),
    (175, (192, 255), 4.0, "KR"), // KT
];

/// Discrete distribution sampled by binary search over a cumulative table.
struct Weighted {
    cdf: Vec<f64>,
}

impl Weighted {
    fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = weights
            .into_iter()
            .map(|w| {
                acc += w;
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Self { cdf }
    }

    fn zipf(n: usize, s: f64) -> Self {
        Self::new((1..=n).map(|k| 1.0 / (k as f64).powf(s)))
    }

    fn sample(&self, rng: &mut StdRng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

fn normal(rng: &mut StdRng) -> f64 {
    // Box-Muller; rand 0.9 has no distributions beyond uniform without rand_distr.
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn log_normal(rng: &mut StdRng, median: f64, sigma: f64) -> f64 {
    median * (sigma * normal(rng)).exp()
}

/// Generator configuration.
#[derive(Debug, Clone)]
pub struct GenConfig {
    pub seed: u64,
    /// Distinct user ids, drawn Zipf-like (user_1 is the busiest).
    pub users: usize,
}

pub struct EventGen {
    rng: StdRng,
    models: Weighted,
    errors: Weighted,
    endpoints: Weighted,
    users: Weighted,
    ip_blocks: Weighted,
    user_agents: Vec<String>,
    ua_pick: Weighted,
    /// Event time of the next event, unix micros; advances by exponential gaps.
    clock_us: i64,
    /// Seeds each user's home address.
    ip_seed: u64,
}

/// Share of events sent from an address other than the user's home address.
const FRESH_IP_RATE: f64 = 0.1;

/// A public address from one of the weighted country blocks.
fn random_ip(blocks: &Weighted, rng: &mut StdRng) -> [u8; 4] {
    let (first, (lo, hi), _, _) = IP_BLOCKS[blocks.sample(rng)];
    [
        first,
        rng.random_range(lo..=hi),
        rng.random_range(0..=255),
        rng.random_range(1..=254),
    ]
}

impl EventGen {
    pub fn new(cfg: &GenConfig) -> Self {
        let user_agents = user_agents();
        Self {
            rng: StdRng::seed_from_u64(cfg.seed),
            models: Weighted::new(MODELS.iter().map(|m| m.weight)),
            errors: Weighted::new(ERRORS.iter().map(|e| e.2)),
            endpoints: Weighted::new(ENDPOINTS.iter().map(|e| e.1)),
            users: Weighted::zipf(cfg.users.max(1), 1.07),
            ip_blocks: Weighted::new(IP_BLOCKS.iter().map(|b| b.2)),
            ua_pick: Weighted::zipf(user_agents.len(), 0.9),
            user_agents,
            clock_us: Utc::now().timestamp_micros() - 3_600_000_000,
            ip_seed: cfg.seed.rotate_left(17) ^ 0x05ee_d1b5,
        }
    }

    /// Appends one event object (no trailing newline) whose last field is
    /// `"sent_at_us":<PLACEHOLDER>`.
    pub fn write_event(&mut self, out: &mut Vec<u8>) {
        let rng = &mut self.rng;
        self.clock_us += (-(rng.random::<f64>().max(1e-12)).ln() * 2_000.0) as i64 + 1;
        let ts = DateTime::<Utc>::from_timestamp_micros(self.clock_us).unwrap_or_default();
        let model = &MODELS[self.models.sample(rng)];
        let (endpoint, _) = ENDPOINTS[self.endpoints.sample(rng)];
        let user = self.users.sample(rng) + 1;
        let request_id: u64 = rng.random::<u64>() & 0xffff_ffff_ffff;
        // Real clients repeat: each user calls from a home address of their own, and about one
        // call in ten comes from a fresh address (mobile networks, new servers).
        let ip = if rng.random::<f64>() < FRESH_IP_RATE {
            random_ip(&self.ip_blocks, rng)
        } else {
            let mut home = StdRng::seed_from_u64(
                self.ip_seed ^ (user as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            random_ip(&self.ip_blocks, &mut home)
        };
        let ua = &self.user_agents[self.ua_pick.sample(rng)];

        let _ = write!(
            out,
            r#"{{"timestamp":"{}","request_id":"{:012x}","model":"{}","user_id":"user_{}","endpoint":"{}","client_ip":"{}.{}.{}.{}","user_agent":"#,
            ts.to_rfc3339_opts(SecondsFormat::Micros, false),
            request_id,
            model.name,
            user,
            endpoint,
            ip[0],
            ip[1],
            ip[2],
            ip[3],
        );
        let _ = serde_json::to_writer(&mut *out, ua.as_str());

        if rng.random::<f64>() < ERROR_RATE {
            let (status, message, _, median) = ERRORS[self.errors.sample(rng)];
            let latency = log_normal(rng, median, 0.3);
            let _ = write!(
                out,
                r#","status":"{status}","error_message":"{message}","latency_ms":{latency:.2}"#
            );
        } else {
            let latency = log_normal(rng, model.latency_median_ms, 0.6);
            let prompt = (log_normal(rng, 700.0, 0.9) as u64).clamp(1, 128_000);
            let completion = if endpoint == "/v1/embeddings" {
                0
            } else {
                (log_normal(rng, 220.0, 0.8) as u64).clamp(1, 16_000)
            };
            let _ = write!(
                out,
                r#","status":"success","latency_ms":{latency:.2},"prompt_tokens":{prompt},"completion_tokens":{completion},"total_tokens":{}"#,
                prompt + completion
            );
            if rng.random::<f64>() >= COST_OMITTED_RATE {
                let cost =
                    (prompt as f64 * model.price_in + completion as f64 * model.price_out) / 1e6;
                let _ = write!(out, r#","cost_usd":{cost:.6}"#);
            }
        }
        out.extend_from_slice(br#","sent_at_us":"#);
        out.extend_from_slice(PLACEHOLDER);
        out.push(b'}');
    }

    pub fn event(&mut self) -> Vec<u8> {
        let mut v = Vec::with_capacity(512);
        self.write_event(&mut v);
        v
    }
}

/// Fixed-width decimal form of `us`, zero-padded to 16 digits.
pub fn ts_digits(mut us: u64) -> [u8; TS_WIDTH] {
    let mut d = [b'0'; TS_WIDTH];
    for slot in d.iter_mut().rev() {
        *slot = b'0' + (us % 10) as u8;
        us /= 10;
    }
    d
}

/// Byte offsets of every placeholder in `buf`.
pub fn placeholder_offsets(buf: &[u8]) -> Vec<u32> {
    memchr::memmem::find_iter(buf, PLACEHOLDER)
        .map(|o| o as u32)
        .collect()
}

/// A prebuilt NDJSON body (optionally Elasticsearch bulk) whose send timestamps are patched in
/// place before each send; the only per-send work is copying 16 bytes per event.
pub struct Body {
    pub bytes: Vec<u8>,
    ts_offsets: Vec<u32>,
    /// End (exclusive, after '\n') of each event's last line, to send a prefix of the body.
    event_ends: Vec<u32>,
}

impl Body {
    /// `bulk_action`: when set, each event is preceded by this action line (without newline).
    pub fn build(gen: &mut EventGen, events: usize, bulk_action: Option<&[u8]>) -> Self {
        let mut bytes = Vec::with_capacity(events * 560);
        let mut event_ends = Vec::with_capacity(events);
        for _ in 0..events {
            if let Some(a) = bulk_action {
                bytes.extend_from_slice(a);
                bytes.push(b'\n');
            }
            gen.write_event(&mut bytes);
            bytes.push(b'\n');
            event_ends.push(bytes.len() as u32);
        }
        let ts_offsets = placeholder_offsets(&bytes);
        assert_eq!(
            ts_offsets.len(),
            events,
            "placeholder digits appeared outside sent_at_us"
        );
        Self {
            bytes,
            ts_offsets,
            event_ends,
        }
    }

    pub fn events(&self) -> usize {
        self.event_ends.len()
    }

    /// Writes `sent_at_us` into every event.
    pub fn patch(&mut self, us: u64) {
        let digits = ts_digits(us);
        for &o in &self.ts_offsets {
            self.bytes[o as usize..o as usize + TS_WIDTH].copy_from_slice(&digits);
        }
    }

    /// The bytes of the first `n` events.
    pub fn prefix(&self, n: usize) -> &[u8] {
        match n {
            0 => &[],
            n => &self.bytes[..self.event_ends[n.min(self.events()) - 1] as usize],
        }
    }
}

/// A few hundred distinct user agents: API client libraries (most LLM API traffic), desktop and
/// mobile browsers assembled from real families, versions and platforms, and crawlers.
pub fn user_agents() -> Vec<String> {
    let mut v = api_client_agents();
    v.extend(desktop_browser_agents());
    v.extend(mobile_browser_agents());
    v.extend(crawler_agents());
    v.sort();
    v.dedup();
    zipf_order(v)
}

/// HTTP client libraries and SDKs as they name themselves, several versions each.
fn api_client_agents() -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    let clients: &[(&str, &[&str])] = &[
        (
            "OpenAI/Python",
            &["1.54.0", "1.51.2", "1.47.1", "1.40.6", "1.35.13", "1.30.5"],
        ),
        (
            "Anthropic/Python",
            &["0.39.0", "0.37.1", "0.34.2", "0.31.0"],
        ),
        ("OpenAI/JS", &["4.73.0", "4.71.1", "4.67.3", "4.56.0"]),
        (
            "python-httpx",
            &["0.27.0", "0.27.2", "0.26.0", "0.25.2", "0.28.1"],
        ),
        ("python-requests", &["2.32.3", "2.31.0", "2.28.2", "2.25.1"]),
        ("aiohttp", &["3.9.5", "3.10.10", "3.11.7"]),
        ("axios", &["1.7.2", "1.7.7", "1.6.8", "0.27.2"]),
        ("node-fetch", &["1.0", "2.7.0", "3.3.2"]),
        ("undici", &["6.19.8", "5.28.4"]),
        ("Go-http-client", &["1.1", "2.0"]),
        ("okhttp", &["4.12.0", "4.11.0", "3.14.9"]),
        ("curl", &["8.5.0", "8.10.1", "7.88.1", "7.81.0", "8.4.0"]),
        ("Wget", &["1.21.4", "1.21.2"]),
        ("PostmanRuntime", &["7.42.0", "7.39.1", "7.37.3"]),
        ("langchain-openai", &["0.2.9", "0.1.25"]),
        ("litellm", &["1.52.10", "1.48.2"]),
        ("Java-http-client", &["17.0.12", "21.0.5"]),
        ("Dart", &["3.5 (dart:io)", "3.4 (dart:io)"]),
        ("reqwest", &["0.12.9", "0.11.27"]),
        ("RestSharp", &["112.1.0", "110.2.0"]),
    ];
    for (name, versions) in clients {
        for ver in versions.iter() {
            v.push(format!("{name}/{ver}"));
        }
    }
    v.push("OpenAI/Python 1.54.0".into());
    v.push("Anthropic/Python 0.39.0".into());
    v.push("AsyncOpenAI/Python 1.54.0".into());

    v
}

/// Chrome, Edge and Firefox on Windows, macOS and Linux over recent major versions.
fn desktop_browser_agents() -> Vec<String> {
    let mut v = Vec::new();
    let desktop_os = [
        "Windows NT 10.0; Win64; x64",
        "Macintosh; Intel Mac OS X 10_15_7",
        "X11; Linux x86_64",
        "X11; Ubuntu; Linux x86_64",
    ];
    for major in 118..=131 {
        for os in desktop_os {
            v.push(format!(
                "Mozilla/5.0 ({os}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{major}.0.0.0 Safari/537.36"
            ));
        }
        if major >= 120 {
            v.push(format!(
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{major}.0.0.0 Safari/537.36 Edg/{major}.0.0.0"
            ));
        }
    }
    for major in 115..=133 {
        for os in [
            "Windows NT 10.0; Win64; x64",
            "Macintosh; Intel Mac OS X 10.15",
            "X11; Linux x86_64",
            "X11; Ubuntu; Linux x86_64",
        ] {
            v.push(format!(
                "Mozilla/5.0 ({os}; rv:{major}.0) Gecko/20100101 Firefox/{major}.0"
            ));
        }
    }
    v
}

/// Safari on macOS, iOS and iPadOS, and Chrome on Android phones.
fn mobile_browser_agents() -> Vec<String> {
    let mut v = Vec::new();
    for (safari, webkit) in [
        ("16.6", "605.1.15"),
        ("17.0", "605.1.15"),
        ("17.4.1", "605.1.15"),
        ("17.6", "605.1.15"),
        ("18.0", "605.1.15"),
        ("18.1", "605.1.15"),
    ] {
        v.push(format!(
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/{webkit} (KHTML, like Gecko) Version/{safari} Safari/{webkit}"
        ));
    }
    for ios in [
        "16_7_10", "17_0", "17_2_1", "17_4", "17_5_1", "17_6_1", "18_0", "18_0_1", "18_1",
    ] {
        let ver = ios.split('_').take(2).collect::<Vec<_>>().join(".");
        for device in ["iPhone; CPU iPhone OS", "iPad; CPU OS"] {
            v.push(format!(
                "Mozilla/5.0 ({device} {ios} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{ver} Mobile/15E148 Safari/604.1"
            ));
        }
    }
    let androids = [
        ("10", "K"),
        ("13", "SM-S918B"),
        ("14", "SM-S928B"),
        ("14", "Pixel 8"),
        ("14", "Pixel 7a"),
        ("13", "M2101K20AG"),
        ("12", "SM-A525F"),
        ("14", "CPH2581"),
    ];
    for (ver, model) in androids {
        for major in [124, 127, 129, 130, 131] {
            v.push(format!(
                "Mozilla/5.0 (Linux; Android {ver}; {model}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{major}.0.0.0 Mobile Safari/537.36"
            ));
        }
    }
    v
}

/// Search-engine, AI and SEO crawlers.
fn crawler_agents() -> Vec<String> {
    let mut v = Vec::new();
    v.extend(
        [
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Googlebot/2.1; +http://www.google.com/bot.html) Chrome/130.0.6723.116 Safari/537.36",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
            "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; GPTBot/1.2; +https://openai.com/gptbot",
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; ClaudeBot/1.0; +claudebot@anthropic.com",
            "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
            "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        ]
        .map(String::from),
    );
    v
}

/// API clients first so that the Zipf pick favours them, then the browsers and crawlers, each
/// group in a fixed shuffle.
fn zipf_order(v: Vec<String>) -> Vec<String> {
    let (mut api, mut rest): (Vec<String>, Vec<String>) = v
        .into_iter()
        .partition(|u| !u.starts_with("Mozilla") && !u.starts_with("facebookexternalhit"));
    let mut rng = StdRng::seed_from_u64(7);
    for i in (1..rest.len()).rev() {
        rest.swap(i, rng.random_range(0..=i));
    }
    for i in (1..api.len()).rev() {
        api.swap(i, rng.random_range(0..=i));
    }
    api.extend(rest);
    api
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn events(n: usize) -> Vec<serde_json::Value> {
        let mut g = EventGen::new(&GenConfig {
            seed: 1,
            users: 5000,
        });
        (0..n)
            .map(|_| serde_json::from_slice(&g.event()).expect("event is valid JSON"))
            .collect()
    }

    #[test]
    fn distribution_is_roughly_right() {
        let n = 50_000;
        let evs = events(n);
        let mut models: HashMap<String, usize> = HashMap::new();
        let (mut errors, mut no_cost_success, mut success) = (0, 0, 0);
        let mut users = HashMap::<String, usize>::new();
        let mut messages = HashSet::new();
        let mut uas = HashSet::new();
        for e in &evs {
            *models
                .entry(e["model"].as_str().unwrap().into())
                .or_default() += 1;
            *users
                .entry(e["user_id"].as_str().unwrap().into())
                .or_default() += 1;
            uas.insert(e["user_agent"].as_str().unwrap().to_string());
            assert!(e["latency_ms"].as_f64().unwrap() > 0.0);
            assert_eq!(e["sent_at_us"].as_u64().unwrap(), 1_999_999_999_999_999);
            match e["status"].as_str().unwrap() {
                "success" => {
                    success += 1;
                    let p = e["prompt_tokens"].as_u64().unwrap();
                    let c = e["completion_tokens"].as_u64().unwrap();
                    assert_eq!(e["total_tokens"].as_u64().unwrap(), p + c);
                    if e.get("cost_usd").is_none() {
                        no_cost_success += 1;
                    }
                }
                "error" | "exception" => {
                    errors += 1;
                    messages.insert(e["error_message"].as_str().unwrap().to_string());
                    assert!(e.get("prompt_tokens").is_none());
                    assert!(e.get("cost_usd").is_none());
                }
                s => panic!("unexpected status {s}"),
            }
        }
        let share = |m: &str| models[m] as f64 / n as f64;
        assert!((share("deepseek-v3.2") - 0.60).abs() < 0.02);
        assert!((share("gpt-4.1") - 0.20).abs() < 0.02);
        assert!((share("claude-sonnet-4.5") - 0.15).abs() < 0.02);
        assert!((share("gemini-2.5-flash") - 0.05).abs() < 0.01);
        let err_share = errors as f64 / n as f64;
        assert!((0.01..0.03).contains(&err_share), "error share {err_share}");
        assert!(messages.len() >= 4);
        let omitted = no_cost_success as f64 / success as f64;
        assert!(
            (omitted - 0.30).abs() < 0.02,
            "cost omitted share {omitted}"
        );
        // Skewed users: thousands seen, the busiest one far above the mean.
        assert!(users.len() > 2000, "{} users", users.len());
        assert!(users["user_1"] > 20 * n / users.len());
        assert!(uas.len() > 150, "{} user agents", uas.len());
    }

    #[test]
    fn user_agent_pool_has_a_few_hundred_including_api_clients() {
        let uas = user_agents();
        assert!((250..1000).contains(&uas.len()), "{}", uas.len());
        for must in [
            "python-httpx/0.27.0",
            "OpenAI/Python 1.54.0",
            "Anthropic/Python 0.39.0",
            "axios/1.7.2",
            "node-fetch/1.0",
            "Go-http-client/2.0",
            "okhttp/4.12.0",
            "python-requests/2.32.3",
            "curl/8.5.0",
        ] {
            assert!(uas.iter().any(|u| u == must), "missing {must}");
        }
    }

    #[test]
    fn client_ips_repeat_per_user() {
        let evs = events(20_000);
        let mut ips = std::collections::HashSet::new();
        let mut home: std::collections::HashMap<String, std::collections::HashMap<String, usize>> =
            Default::default();
        for e in &evs {
            let ip = e["client_ip"].as_str().unwrap().to_string();
            ips.insert(ip.clone());
            *home
                .entry(e["user_id"].as_str().unwrap().into())
                .or_default()
                .entry(ip)
                .or_default() += 1;
        }
        // about one event in ten from a fresh address, the rest from the users' home addresses
        assert!(
            ips.len() < evs.len() * 3 / 10,
            "{} distinct of {}",
            ips.len(),
            evs.len()
        );
        assert!(ips.len() > 1000, "{} distinct", ips.len());
        let busiest = home
            .values()
            .max_by_key(|m| m.values().sum::<usize>())
            .unwrap();
        let total: usize = busiest.values().sum();
        let top = busiest.values().max().unwrap();
        assert!(
            *top as f64 > 0.8 * total as f64,
            "home address share {top}/{total}"
        );
    }

    #[test]
    fn client_ips_avoid_reserved_space() {
        for e in events(5000) {
            let ip: std::net::Ipv4Addr = e["client_ip"].as_str().unwrap().parse().unwrap();
            assert!(!ip.is_private() && !ip.is_loopback() && !ip.is_link_local());
            assert!(!ip.is_broadcast() && !ip.is_documentation() && !ip.is_unspecified());
            let o = ip.octets();
            assert!(
                !(o[0] == 100 && (64..128).contains(&o[1])),
                "shared space {ip}"
            );
            assert!(o[0] < 224, "multicast/reserved {ip}");
        }
    }

    #[test]
    fn patched_body_is_valid_ndjson_with_the_timestamp() {
        let mut g = EventGen::new(&GenConfig {
            seed: 3,
            users: 100,
        });
        let mut b = Body::build(&mut g, 50, None);
        b.patch(1_764_238_502_123_456);
        let text = std::str::from_utf8(&b.bytes).unwrap();
        assert_eq!(text.lines().count(), 50);
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["sent_at_us"].as_u64(), Some(1_764_238_502_123_456));
        }
        b.patch(1_764_238_502_999_999);
        let v: serde_json::Value =
            serde_json::from_slice(b.prefix(1).strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!(v["sent_at_us"].as_u64(), Some(1_764_238_502_999_999));
        assert_eq!(std::str::from_utf8(b.prefix(7)).unwrap().lines().count(), 7);
        assert_eq!(b.prefix(50), &b.bytes[..]);
    }

    #[test]
    fn bulk_body_alternates_action_and_source() {
        let mut g = EventGen::new(&GenConfig {
            seed: 3,
            users: 100,
        });
        let mut b = Body::build(&mut g, 10, Some(br#"{"index":{"_index":"loadgen"}}"#));
        b.patch(1_700_000_000_000_000);
        let lines: Vec<&str> = std::str::from_utf8(&b.bytes).unwrap().lines().collect();
        assert_eq!(lines.len(), 20);
        for pair in lines.chunks(2) {
            assert_eq!(pair[0], r#"{"index":{"_index":"loadgen"}}"#);
            let v: serde_json::Value = serde_json::from_str(pair[1]).unwrap();
            assert_eq!(v["sent_at_us"].as_u64(), Some(1_700_000_000_000_000));
        }
        assert_eq!(std::str::from_utf8(b.prefix(3)).unwrap().lines().count(), 6);
    }

    #[test]
    fn ts_digits_is_fixed_width() {
        assert_eq!(&ts_digits(42), b"0000000000000042");
        assert_eq!(&ts_digits(1_764_238_502_123_456), b"1764238502123456");
    }
}
