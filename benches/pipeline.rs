//! Per-stage cost per event: HTTP body decoding, each shipped filter, bulk encoding and the
//! status page's statistics. Run
//! with `GEOIP_DB=GeoLite2/GeoLite2-City.mmdb cargo bench --bench pipeline` (scripts/fetch-geolite2
//! puts the database there; without it the geoip stage passes events through); every iteration
//! processes BATCH events, so criterion's element throughput is events per second. Clients
//! repeat (3,000 users, one address each) and agents come from a small pool, as in production,
//! so the GeoIP and user-agent caches answer most events after the first pass.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sheepdog::config::{parse_partial, Source};
use sheepdog::event::Event;
use sheepdog::filters::FilterStage;
use sheepdog::inputs::http::decode_body;
use sheepdog::outputs::elasticsearch::encoder::{Chunk, Encoder};
use sheepdog::template::Template;
use std::hint::black_box;
use std::time::Instant;

const BATCH: usize = 1000;

fn sample_body() -> Vec<u8> {
    let models = [
        "deepseek-v3.2",
        "deepseek-v3.2",
        "deepseek-v3.2",
        "gpt-4.1",
        "claude-sonnet-4.5",
        "gemini-2.5-flash",
    ];
    let agents = [
        "OpenAI/Python 1.54.0",
        "OpenAI/NodeJS 4.73.1",
        "anthropic-sdk-python/0.39.0",
        "python-requests/2.32.3",
        "curl/8.5.0",
        "Go-http-client/2.0",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Safari/605.1.15",
    ];
    // Public address blocks only (no private, loopback or shared ranges).
    let first_octets = [
        24, 31, 46, 62, 73, 81, 89, 103, 118, 151, 176, 183, 195, 203, 212,
    ];
    let mut body = String::new();
    for i in 0..BATCH {
        let model = models[i % models.len()];
        let user = (i * 7919) % 3000;
        let ip = format!(
            "{}.{}.{}.{}",
            first_octets[user % first_octets.len()],
            (user * 7) % 256,
            (user * 13) % 256,
            1 + user % 250
        );
        let agent = agents[(i * 31) % agents.len()];
        let client = format!(",\"client_ip\":\"{ip}\",\"user_agent\":\"{agent}\"");
        if i % 50 == 7 {
            body.push_str(&format!(
                "{{\"timestamp\":\"2026-11-27T10:15:{:02}.123456+00:00\",\"request_id\":\"{:012x}\",\"model\":\"{model}\",\"user_id\":\"user_{}\",\"endpoint\":\"/v1/chat/completions\",\"status\":\"error\",\"error_message\":\"HTTP 429: rate limited\",\"latency_ms\":{}.17{client}}}\n",
                i % 60, i * 7919, i % 3000, 20 + i % 700
            ));
        } else {
            let cost = if i % 3 == 0 {
                String::new()
            } else {
                ",\"cost_usd\":0.000438".to_string()
            };
            body.push_str(&format!(
                "{{\"timestamp\":\"2026-11-27T10:15:{:02}.123456+00:00\",\"request_id\":\"{:012x}\",\"model\":\"{model}\",\"user_id\":\"user_{}\",\"endpoint\":\"/v1/chat/completions\",\"status\":\"success\",\"latency_ms\":{}.17,\"prompt_tokens\":812,\"completion_tokens\":230,\"total_tokens\":1042{cost}{client}}}\n",
                i % 60, i * 7919, i % 3000, 20 + i % 700
            ));
        }
    }
    body.into_bytes()
}

/// The shipped pipeline's filter stages, built as the daemon builds them.
fn shipped_filters() -> Vec<FilterStage> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/pipelines/holysheep.toml"
    ))
    .unwrap();
    let env = |name: &str| std::env::var(name).ok();
    let (cfg, _) =
        parse_partial(&Source::new("holysheep.toml", text), &env).expect("shipped pipeline parses");
    let ctx = sheepdog::BuildContext::new(std::env::temp_dir(), Default::default());
    let stages = sheepdog::pipeline::build_filters(&cfg, &ctx).expect("shipped filters build");
    // The geoip stage opens its database in the background; measure it in use.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        for stage in &stages {
            if let Some(ready) = stage.ready() {
                ready.await;
            }
        }
    });
    stages
}

fn bench(c: &mut Criterion) {
    let body = sample_body();
    let mut group = c.benchmark_group("per_event");
    group.throughput(Throughput::Elements(BATCH as u64));

    group.bench_function("decode_ndjson", |b| {
        b.iter(|| {
            let mut failures = 0;
            black_box(decode_body(black_box(&body), 0, &mut failures))
        })
    });

    let mut failures = 0;
    let decoded = decode_body(&body, 0, &mut failures);
    let stages = shipped_filters();
    for stage in &stages {
        group.bench_function(format!("filter_{}", stage.id), |b| {
            b.iter_batched_ref(
                || decoded.clone(),
                |events: &mut Vec<Event>| stage.apply_batch(events, &mut Vec::new()),
                BatchSize::LargeInput,
            )
        });
    }
    // The spend metrics stage only reads events, so two workers can apply it to their own
    // batch over and over: one iteration is BATCH events on each of two threads at once, all
    // updating the same series (the contended case of a multi-worker pipeline).
    if let Some(spend) = stages.iter().find(|s| s.id == "spend_metrics") {
        let batches = [decoded.clone(), decoded.clone()];
        group.bench_function("filter_spend_metrics_2_threads", |b| {
            b.iter_custom(|iters| {
                let mut owned = batches.clone();
                let start = Instant::now();
                std::thread::scope(|s| {
                    for batch in &mut owned {
                        s.spawn(move || {
                            for _ in 0..iters {
                                spend.apply_batch(batch, &mut Vec::new());
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    group.bench_function("all_filters", |b| {
        b.iter_batched_ref(
            || decoded.clone(),
            |events: &mut Vec<Event>| {
                for stage in &stages {
                    stage.apply_batch(events, &mut Vec::new());
                }
            },
            BatchSize::LargeInput,
        )
    });

    let mut filtered = decoded.clone();
    for stage in &stages {
        stage.apply_batch(&mut filtered, &mut Vec::new());
    }
    let enriched = filtered
        .iter()
        .filter(|e| e.fields().contains_key("geoip"))
        .count();
    eprintln!("geoip enriched {enriched} of {BATCH} events (0: no database, see GEOIP_DB)");
    let encoder = Encoder::new(Template::compile("holysheep-logs-%{+YYYY.MM.dd}").unwrap());
    let refs: Vec<&Event> = filtered.iter().collect();
    let mut chunk = Chunk::default();
    group.bench_function("bulk_encode", |b| {
        b.iter(|| {
            chunk.buf.clear();
            chunk.ends.clear();
            encoder.encode(black_box(&refs), &mut chunk);
            black_box(chunk.buf.len())
        })
    });
    // The status page's rolling statistics (fed every event after the filters): 3,000 users
    // against the default 200 per minute, so most fold into `other` as under real load.
    let stats = sheepdog::status::EventStats::new(
        &sheepdog::status::Settings::default(),
        sheepdog::clock::system(),
    )
    .unwrap();
    group.bench_function("status_stats", |b| {
        b.iter(|| stats.observe(black_box(&refs)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
