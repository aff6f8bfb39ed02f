//! `sheepdog-loadgen`: benchmark tooling for sheepdog. Generates realistic LLM-API request-log
//! events and sends them over HTTP or Beats, plays a blackhole Elasticsearch that measures
//! end-to-end latency, and reads a process's CPU and memory from /proc.

mod beats;
mod deflate;
mod gen;
mod http;
mod load;
mod sink;
mod stats;

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

// Request-sized buffers come and go hundreds of times a second; mimalloc keeps their pages
// instead of faulting fresh zeroed ones in from the kernel each time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sheepdog-loadgen",
    version,
    about = "Load generator and blackhole Elasticsearch for benchmarking sheepdog"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print generated events as NDJSON on stdout (with the sent_at_us placeholder).
    Gen {
        #[command(flatten)]
        gen: GenArgs,
        /// Number of events.
        #[arg(long, default_value_t = 10)]
        count: u64,
    },
    /// POST NDJSON (or Elasticsearch bulk) bodies over keep-alive HTTP/1.1 connections.
    Http(HttpArgs),
    /// Send Lumberjack v2 windows like Filebeat 8 and wait for the acks.
    Beats(BeatsArgs),
    /// Blackhole Elasticsearch bulk endpoint that counts documents and measures latency.
    Sink(SinkArgs),
    /// Print CPU seconds (utime+stime) and peak/current RSS of a process as JSON.
    Procstat {
        #[arg(long)]
        pid: u32,
    },
}

/// Options of `http`.
#[derive(Args)]
struct HttpArgs {
    /// Where to POST, e.g. http://127.0.0.1:8080/ or http://127.0.0.1:9200/_bulk.
    #[arg(long)]
    target: String,
    /// Events per request body.
    #[arg(long, default_value_t = 1000)]
    events_per_body: usize,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Wrap each event in an Elasticsearch bulk `index` action (to drive the sink directly).
    #[arg(long)]
    bulk: bool,
    /// Index named in the bulk actions.
    #[arg(long, default_value = "loadgen", requires = "bulk")]
    bulk_index: String,
    /// Count 429/503 answers as failed instead of retrying the body after a backoff.
    #[arg(long)]
    no_retry: bool,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    gen: GenArgs,
}

/// Options of `beats`.
#[derive(Args)]
struct BeatsArgs {
    /// host:port of the Beats input, e.g. 127.0.0.1:5044.
    #[arg(long)]
    target: String,
    /// Events per window.
    #[arg(long, default_value_t = 2048)]
    window: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Windows sent before waiting for an ack (Filebeat's pipelining).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pipeline: u16,
    /// Send the application event as the Beats event, without the fields Filebeat adds
    /// (agent, host, log, the empty `message` of `json.keys_under_root`).
    #[arg(long)]
    raw: bool,
    /// Send windows uncompressed, as Filebeat does with `compression_level: 0` (default:
    /// one zlib-compressed frame per window, as with Filebeat's default level 3).
    #[arg(long)]
    uncompressed: bool,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    gen: GenArgs,
}

/// Options of `sink`.
#[derive(Args)]
struct SinkArgs {
    /// Listen address; port 0 picks a free port. The URL is printed as JSON on stdout.
    #[arg(long, default_value = "127.0.0.1:9200")]
    addr: std::net::SocketAddr,
    /// Also accept Beats (Lumberjack v2) here and ack every window; port 0 picks a free port,
    /// printed as {"beats":"127.0.0.1:PORT"} on the second stdout line.
    #[arg(long)]
    beats_addr: Option<std::net::SocketAddr>,
    /// Answer bulk requests with `"items":[]` instead of one result per action.
    #[arg(long)]
    no_items: bool,
    /// Seconds between progress lines on stderr; 0 disables them.
    #[arg(long, default_value_t = 5.0)]
    report_interval: f64,
    /// Exit with the summary after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Exit with the summary once this many documents arrived.
    #[arg(long)]
    expect: Option<u64>,
    /// Append one JSON line per request to this file: arrival (unix µs), documents, bytes,
    /// least and most end-to-end latency in it.
    #[arg(long)]
    trace: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct GenArgs {
    /// Seed of the event generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Distinct user ids (Zipf-distributed).
    #[arg(long, default_value_t = 5000)]
    users: usize,
    /// Distinct prebuilt bodies/windows reused during the run [default: 64 for HTTP, 16 for Beats].
    #[arg(long)]
    pool: Option<usize>,
}

#[derive(Args)]
struct LoadArgs {
    /// Total events to send (exact); without it and --duration, run until interrupted.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Events per second over all connections; full speed when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds between progress lines on stderr; 0 disables them.
    #[arg(long, default_value_t = 0.0)]
    report_interval: f64,
    /// Runtime worker threads; 1 runs everything on the calling thread.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn secs(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("{what} must be a non-negative number of seconds, got {s}"))
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    rt.context("starting the tokio runtime")
}

impl GenArgs {
    fn generator(&self) -> gen::EventGen {
        gen::EventGen::new(&gen::GenConfig {
            seed: self.seed,
            users: self.users,
        })
    }
}

impl LoadArgs {
    fn run(&self, mode: &'static str) -> Result<std::sync::Arc<load::Run>> {
        let duration = self.duration.map(|d| secs(d, "--duration")).transpose()?;
        if self.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
            bail!("--rate must be a positive number of events per second");
        }
        Ok(load::Run::new(
            mode,
            load::Budget::new(self.count, duration),
        ))
    }
}

/// Runs a sender until it finishes or Ctrl-C, then prints its summary on stdout.
fn drive<F>(load: &LoadArgs, run: std::sync::Arc<load::Run>, send: F) -> Result<()>
where
    F: std::future::Future<Output = Result<()>>,
{
    let report = secs(load.report_interval, "--report-interval")?;
    runtime(load.threads)?.block_on(async {
        let run2 = std::sync::Arc::clone(&run);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                run2.budget.stop();
            }
        });
        run.spawn_reporter(Some(report));
        let r = send.await;
        println!("{}", run.summary());
        r
    })
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Gen { gen, count } => print_events(&gen, count),
        Cmd::Http(args) => run_http(args),
        Cmd::Beats(args) => run_beats(args),
        Cmd::Sink(args) => run_sink(args),
        Cmd::Procstat { pid } => {
            let p = stats::read_proc(&pid.to_string())?;
            println!("{}", p.to_json(&pid.to_string()));
            Ok(())
        }
    }
}

/// `gen`: writes `count` generated events to stdout as NDJSON.
fn print_events(gen: &GenArgs, count: u64) -> Result<()> {
    let mut g = gen.generator();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut buf = Vec::with_capacity(1024);
    for _ in 0..count {
        buf.clear();
        g.write_event(&mut buf);
        buf.push(b'\n');
        out.write_all(&buf)?;
    }
    out.flush()?;
    Ok(())
}

/// `http`: posts generated bodies to the target until the load is sent.
fn run_http(a: HttpArgs) -> Result<()> {
    if a.events_per_body == 0 || a.connections == 0 {
        bail!("--events-per-body and --connections must be at least 1");
    }
    let opts = http::HttpOptions {
        target: http::Target::parse(&a.target).context("--target")?,
        connections: a.connections,
        events_per_body: a.events_per_body,
        pool: a.gen.pool.unwrap_or(64),
        bulk_index: a.bulk.then_some(a.bulk_index),
        rate: a.load.rate,
        retry: !a.no_retry,
    };
    let run = a.load.run("http")?;
    let mut g = a.gen.generator();
    drive(&a.load, std::sync::Arc::clone(&run), async move {
        http::run(opts, &mut g, run).await
    })
}

/// `beats`: sends generated Lumberjack windows to the target until the load is sent.
fn run_beats(a: BeatsArgs) -> Result<()> {
    if a.window == 0 || a.connections == 0 {
        bail!("--window and --connections must be at least 1");
    }
    let opts = beats::BeatsOptions {
        addr: a.target,
        connections: a.connections,
        window: a.window,
        pool: a.gen.pool.unwrap_or(16),
        pipeline: usize::from(a.pipeline),
        raw: a.raw,
        uncompressed: a.uncompressed,
        rate: a.load.rate,
    };
    let run = a.load.run("beats")?;
    let mut g = a.gen.generator();
    drive(&a.load, std::sync::Arc::clone(&run), async move {
        beats::run(opts, &mut g, run).await
    })
}

/// `sink`: runs the blackhole bulk (and Beats) endpoint until its exit condition.
fn run_sink(a: SinkArgs) -> Result<()> {
    let opts = sink::SinkOptions {
        addr: a.addr,
        beats_addr: a.beats_addr,
        items: !a.no_items,
        report_interval: Some(secs(a.report_interval, "--report-interval")?),
        duration: a.duration.map(|d| secs(d, "--duration")).transpose()?,
        expect: a.expect,
        trace: a.trace,
    };
    runtime(1)?.block_on(sink::run(opts))
}
