//! Profiling driver for the per-event hot path, without sockets or tasks: decodes an NDJSON body
//! as the HTTP input does (plus the input's tags), runs a pipeline's filter chain and bulk-encodes
//! the batch, `--iterations` times. Each stage is its own non-inlined function so
//! `callgrind_annotate --inclusive=yes` shows the instructions per stage.
//!
//! cargo build --release --example hotpath
//! sheepdog-loadgen gen --count 1000 > /tmp/body.ndjson
//! valgrind --tool=callgrind target/release/examples/hotpath /tmp/body.ndjson pipelines/holysheep.toml 20

use sheepdog::config::{parse_partial, Source};
use sheepdog::event::Event;
use sheepdog::filters::FilterStage;
use sheepdog::inputs::http::decode_body;
use sheepdog::outputs::elasticsearch::encoder::{Chunk, Encoder};
use sheepdog::template::Template;
use std::hint::black_box;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[inline(never)]
fn stage_decode(body: &[u8], tags: &[&str]) -> Vec<Event> {
    let mut failures = 0;
    let mut events = decode_body(body, 1_795_774_502_123, &mut failures);
    for e in &mut events {
        for t in tags {
            e.add_tag(t);
        }
    }
    events
}

#[inline(never)]
fn stage_filters(stages: &[FilterStage], events: &mut [Event]) {
    for stage in stages {
        stage.apply_batch(events);
    }
}

#[inline(never)]
fn stage_encode(encoder: &Encoder, events: &[Event], chunk: &mut Chunk) {
    let refs: Vec<&Event> = events.iter().collect();
    chunk.buf.clear();
    chunk.ends.clear();
    encoder.encode(&refs, chunk);
}

#[inline(never)]
fn stage_drop(events: Vec<Event>) {
    drop(events);
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        anyhow::bail!("usage: hotpath BODY.ndjson PIPELINE.toml [ITERATIONS]");
    }
    let body = std::fs::read(&args[1])?;
    let text = std::fs::read_to_string(&args[2])?;
    let iterations: usize = args.get(3).map_or(Ok(20), |s| s.parse())?;
    let env = |name: &str| std::env::var(name).ok();
    let (cfg, _) =
        parse_partial(&Source::new(&args[2], text), &env).map_err(|p| anyhow::anyhow!("{p:?}"))?;
    let ctx = sheepdog::BuildContext::new(std::env::temp_dir(), Default::default());
    let stages = sheepdog::pipeline::build_filters(&cfg, &ctx)
        .map_err(|p| anyhow::anyhow!("filters do not build: {p:?}"))?;
    let encoder = Encoder::new(Template::compile("holysheep-logs-%{+YYYY.MM.dd}")?);
    let mut chunk = Chunk::default();
    let mut events_total = 0;
    for _ in 0..iterations {
        let mut events = stage_decode(black_box(&body), &["direct-upload"]);
        stage_filters(&stages, &mut events);
        stage_encode(&encoder, &events, &mut chunk);
        events_total += events.len();
        stage_drop(events);
        black_box(chunk.buf.len());
    }
    eprintln!(
        "{events_total} events, {} stages, last chunk {} bytes",
        stages.len(),
        chunk.buf.len()
    );
    Ok(())
}
