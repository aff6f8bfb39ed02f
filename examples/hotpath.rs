//! Profiling driver for the per-event hot path, without sockets or tasks: decodes NDJSON bodies
//! of 1000 lines (the file is cut into as many as it holds) as the HTTP input does (plus the
//! input's tags), runs a pipeline's filter chain and bulk-encodes each batch, ITERATIONS passes
//! over all bodies. Distinct events (a 20000-line file) keep the GeoIP cache as cold as the
//! benchmark's unique client addresses make it. Each stage is its own non-inlined function so
//! `callgrind_annotate --inclusive=yes` shows the instructions per stage.
//!
//! cargo build --release --example hotpath
//! sheepdog-loadgen gen --count 20000 > /tmp/body.ndjson
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='hotpath::stage_*' \
//!   target/release/examples/hotpath /tmp/body.ndjson pipelines/holysheep.toml 1

use sheepdog::config::{parse_partial, Source};
use sheepdog::event::Event;
use sheepdog::filters::FilterStage;
use sheepdog::inputs::http::decode_body;
use sheepdog::outputs::elasticsearch::encoder::{Chunk, Encoder};
use sheepdog::template::Template;
use std::hint::black_box;

#[global_allocator]
static GLOBAL: sheepdog::alloc::Allocator = sheepdog::alloc::Allocator;

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
fn stage_filters(stages: &[FilterStage], events: &mut Vec<Event>) {
    let mut panicked = Vec::new();
    for stage in stages {
        stage.apply_batch(events, &mut panicked);
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
    let file = std::fs::read(&args[1])?;
    let mut bodies: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    for (n, end) in memchr::memchr_iter(b'\n', &file).enumerate() {
        if n % 1000 == 999 {
            bodies.push(&file[start..=end]);
            start = end + 1;
        }
    }
    if start < file.len() {
        bodies.push(&file[start..]);
    }
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
        for body in &bodies {
            let mut events = stage_decode(black_box(body), &["direct-upload"]);
            stage_filters(&stages, &mut events);
            stage_encode(&encoder, &events, &mut chunk);
            events_total += events.len();
            stage_drop(events);
            black_box(chunk.buf.len());
        }
    }
    eprintln!(
        "{events_total} events, {} stages, last chunk {} bytes",
        stages.len(),
        chunk.buf.len()
    );
    Ok(())
}
