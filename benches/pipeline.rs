//! Per-stage cost per event: HTTP body decoding, each shipped filter, and document
//! serialisation. Run with `cargo bench --bench pipeline`; every iteration processes BATCH
//! events, so criterion's element throughput is events per second.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sheepdog::config::{parse_partial, Source};
use sheepdog::event::Event;
use sheepdog::filters::FilterStage;
use sheepdog::inputs::http::decode_body;
use std::hint::black_box;

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
    let mut body = String::new();
    for i in 0..BATCH {
        let model = models[i % models.len()];
        if i % 50 == 7 {
            body.push_str(&format!(
                "{{\"timestamp\":\"2026-11-27T10:15:{:02}.123456+00:00\",\"request_id\":\"{:012x}\",\"model\":\"{model}\",\"user_id\":\"user_{}\",\"endpoint\":\"/v1/chat/completions\",\"status\":\"error\",\"error_message\":\"HTTP 429: rate limited\",\"latency_ms\":{}.17}}\n",
                i % 60, i * 7919, i % 3000, 20 + i % 700
            ));
        } else {
            let cost = if i % 3 == 0 {
                String::new()
            } else {
                ",\"cost_usd\":0.000438".to_string()
            };
            body.push_str(&format!(
                "{{\"timestamp\":\"2026-11-27T10:15:{:02}.123456+00:00\",\"request_id\":\"{:012x}\",\"model\":\"{model}\",\"user_id\":\"user_{}\",\"endpoint\":\"/v1/chat/completions\",\"status\":\"success\",\"latency_ms\":{}.17,\"prompt_tokens\":812,\"completion_tokens\":230,\"total_tokens\":1042{cost}}}\n",
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
    sheepdog::pipeline::build_filters(&cfg, &ctx).expect("shipped filters build")
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
                |events: &mut Vec<Event>| stage.apply_batch(events),
                BatchSize::LargeInput,
            )
        });
    }
    group.bench_function("all_filters", |b| {
        b.iter_batched_ref(
            || decoded.clone(),
            |events: &mut Vec<Event>| {
                for stage in &stages {
                    stage.apply_batch(events);
                }
            },
            BatchSize::LargeInput,
        )
    });

    let mut filtered = decoded.clone();
    for stage in &stages {
        stage.apply_batch(&mut filtered);
    }
    let mut buf = Vec::with_capacity(body.len() * 2);
    group.bench_function("serialize_document", |b| {
        b.iter(|| {
            buf.clear();
            for e in &filtered {
                serde_json::to_writer(&mut buf, e.fields()).unwrap();
                buf.push(b'\n');
            }
            black_box(buf.len())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
