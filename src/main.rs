//! The `sheepdog` command: `run` the daemon on a pipeline file, `check` one, `test` it against
//! expectations, or `tap` it with events from stdin.

use clap::{Parser, Subcommand};
use sheepdog::config;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: sheepdog::alloc::Allocator = sheepdog::alloc::Allocator;

/// `mi_option_purge_delay`: libmimalloc-sys names only the older options, so this is its index
/// in mimalloc's option table (the same in v2 and v3; the test below pins it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed allocator pages stay resident before they go back to the OS (mimalloc: 1 s;
/// 100 ms cost about 0.2 us of CPU per event more at full speed for a few MB less), unless
/// `MIMALLOC_PURGE_DELAY` says otherwise.
const PURGE_DELAY_MS: std::ffi::c_long = 250;

/// Keeps the allocator's resident memory close to what is live. Measured on the core pipeline
/// at full speed (BENCHMARKS.md, "Latency and memory"): mimalloc v3 asks for transparent huge
/// pages on its arenas, so a 2 MiB page is resident once one byte of it is touched (idle daemon
/// 20 MB instead of 11), and it keeps freed pages for 1 s, which at 300,000+ events/s is tens
/// of MB of bulk and request buffers already given back. An operator's `MIMALLOC_ALLOW_THP` or
/// `MIMALLOC_PURGE_DELAY` wins.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // prctl is variadic: each argument goes in as the unsigned long the kernel reads.
        let (disable, unused): (libc::c_ulong, libc::c_ulong) = (1, 0);
        // SAFETY: PR_SET_THP_DISABLE reads one integer argument (the unused ones must be 0)
        // and touches no memory of ours. It fails only on kernels without it (< 3.15), where
        // there is nothing to undo, so the result is not checked.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, disable, unused, unused, unused);
        }
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option, which mimalloc reads at each purge. The call is
        // not thread-safe, and it runs first in `main`, before any other thread exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
    }
}

/// Ingest pipeline daemon: Beats and HTTP JSON in, enrichment, Elasticsearch bulk out.
#[derive(Parser)]
#[command(name = "sheepdog", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// Print each store's documents grouped by reason, with the first and last time seen.
    List {
        /// Pipeline TOML file.
        #[arg(long, short)]
        config: PathBuf,
        /// Only this output's store (its `id`).
        #[arg(long)]
        output: Option<String>,
    },
    /// Send the stored documents to the cluster again; exit 1 when some could not be sent now.
    Replay {
        /// Pipeline TOML file.
        #[arg(long, short)]
        config: PathBuf,
        /// Only this output's store (its `id`).
        #[arg(long)]
        output: Option<String>,
        /// Only documents whose reason (as `list` prints it) contains this text.
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon on a pipeline file until SIGINT or SIGTERM, then drain and flush.
    Run {
        /// Pipeline TOML file.
        #[arg(long, short, default_value = "pipelines/holysheep.toml")]
        config: PathBuf,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
    },
    /// The Elasticsearch outputs' dead-letter stores: `list` groups the refused documents by
    /// reason, `replay` sends them to the cluster again (after a mapping was fixed); a replayed
    /// document leaves the store only once indexed.
    DeadLetter {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Validate a pipeline file: print every problem as file:line:column with a hint; exit 1
    /// when there is an error, 0 when the file is fine (warnings allowed).
    Check {
        /// Pipeline TOML file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run pipeline unit tests (TOML files of inputs and expected fields) through the filter
    /// chain, with outputs replaced by capture: nothing is sent. Exit 0 when every test passes,
    /// 1 when one fails, 2 when a test or pipeline file is malformed.
    Test {
        /// Pipeline TOML file.
        #[arg(long, short)]
        config: PathBuf,
        /// Test files (see "Pipeline tests" in README.md).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Read events from stdin (JSON objects, a JSON array, NDJSON or plain lines), run the
    /// filter chain and print each resulting event as a JSON line, with the index it would go
    /// to in [@metadata][index]. Nothing is sent, no port is bound. Exit 2 on a bad pipeline.
    Tap {
        /// Pipeline TOML file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHEEPDOG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colours only for a person at a terminal: journald, files and pipes get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Parses and validates `path`; `verify` says whether database files are walked now (`check`)
/// or left to the running pipeline, which verifies them after the inputs bind (`run`).
fn load(
    path: &Path,
    verify: sheepdog::Verify,
) -> Result<(config::PipelineConfig, Vec<config::LocatedProblem>), String> {
    sheepdog::load(path, &config::process_env, verify).map(|l| (l.config, l.warnings))
}

/// [`load`] for `run`, also returning the file's text: read once, so reloads compare with the
/// very text the running pipeline was built from.
fn load_for_run(
    path: &Path,
) -> Result<(config::PipelineConfig, Vec<config::LocatedProblem>, String), String> {
    let source = config::Source::read(path).map_err(|e| format!("{e:#}"))?;
    let loaded = sheepdog::load_source(&source, &config::process_env, sheepdog::Verify::Background)
        .map_err(|e| e.to_string())?;
    Ok((loaded.config, loaded.warnings, source.text))
}

async fn wait_for_signal(token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received");
    token.cancel();
}

/// Turns each SIGHUP into a reload request; hangups while one is pending fold into it.
async fn forward_hangups(requests: tokio::sync::mpsc::Sender<()>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup()).expect("SIGHUP handler");
    while hangups.recv().await.is_some() {
        if let Err(tokio::sync::mpsc::error::TrySendError::Closed(())) = requests.try_send(()) {
            return;
        }
    }
}

fn main() -> ExitCode {
    tune_allocator();
    // A panic a filter stage catches is logged once by the stage; any other is printed as
    // the default hook prints it.
    sheepdog::filters::panics::install_hook();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match load(&config, sheepdog::Verify::Now) {
            Ok((_, warnings)) => {
                for w in &warnings {
                    println!("{w}");
                }
                println!("{}: OK", config.display());
                ExitCode::SUCCESS
            }
            Err(text) => {
                eprintln!("{text}");
                ExitCode::FAILURE
            }
        },
        Command::Test { config, files } => {
            ExitCode::from(sheepdog::offline::suite::command(&config, &files))
        }
        Command::DeadLetter { action } => {
            use sheepdog::offline::dead_letter::{command, Action};
            let code = match action {
                DeadLetterAction::List { config, output } => {
                    command(&config, output.as_deref(), Action::List)
                }
                DeadLetterAction::Replay {
                    config,
                    output,
                    reason,
                } => command(&config, output.as_deref(), Action::Replay { reason }),
            };
            ExitCode::from(code)
        }
        Command::Tap { config } => ExitCode::from(sheepdog::offline::tap::command(&config)),
        Command::Run { config, log_json } => {
            init_logging(log_json);
            let loaded = load_for_run(&config);
            let (cfg, warnings, text) = match loaded {
                Ok(v) => v,
                Err(text) => {
                    eprintln!("{text}");
                    return ExitCode::FAILURE;
                }
            };
            for w in &warnings {
                tracing::warn!("{w}");
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let result = runtime.block_on(async move {
                let token = CancellationToken::new();
                tokio::spawn(wait_for_signal(token.clone()));
                let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
                tokio::spawn(forward_hangups(reload_tx));
                sheepdog::run_reloadable(cfg, token, config, text, reload_rx).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("sheepdog: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Option 15 is the purge delay: the only option whose default is 1000 (ms, mimalloc v3).
    #[test]
    fn purge_delay_option_index() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reads an integer option; nothing in this test binary sets it.
            let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
            assert_eq!(delay, 1000);
        }
    }
}
