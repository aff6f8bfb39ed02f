//! Inputs -> bounded queue -> filter workers -> outputs. Validation compiles every stage first;
//! `run` starts outputs, workers, inputs and the API, then on shutdown stops the inputs, drains
//! the queue through the workers and lets the outputs flush, all within the deadline.

use crate::condition::Condition;
use crate::config::problem::{PathSeg, Problem};
use crate::config::PipelineConfig;
use crate::filters::panics::DeadLetters;
use crate::filters::{BuildState, FilterStage};
use crate::live::{Live, OutputSlot, Slots, Tasks};
use crate::outputs::OutputConfig;
use crate::queue::{self, QueueReceiver};
use crate::BuildContext;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The smallest `pipeline.memory_limit` accepted.
const MIN_MEMORY_LIMIT: u64 = 16 * 1024 * 1024;

fn compile_when(
    when: &Option<String>,
    path: &[PathSeg],
    problems: &mut Vec<Problem>,
) -> Option<Condition> {
    let source = when.as_ref()?;
    match Condition::compile(source) {
        Ok(c) => Some(c),
        Err(e) => {
            problems
                .push(Problem::at("when", format!("bad condition `{source}`: {e}")).prefixed(path));
            None
        }
    }
}

/// Compiles the filter chain; problems carry their full document paths.
pub fn build_filters(
    config: &PipelineConfig,
    ctx: &BuildContext,
) -> Result<Vec<FilterStage>, Vec<Problem>> {
    let mut problems = Vec::new();
    let stages = build_filters_into(config, ctx, &mut problems);
    if problems.iter().any(Problem::is_error) {
        Err(problems)
    } else {
        // Warnings (a missing optional file) do not stop the pipeline; `check` reports them.
        Ok(stages)
    }
}

/// Compiles the filter chain, adding every error and warning to `problems`.
fn build_filters_into(
    config: &PipelineConfig,
    ctx: &BuildContext,
    problems: &mut Vec<Problem>,
) -> Vec<FilterStage> {
    let state = BuildState::default();
    let mut stages = Vec::new();
    for stage in &config.filters {
        let when = compile_when(&stage.when, &stage.path, problems);
        let mut warnings = Vec::new();
        let built = stage
            .config
            .build_reporting(&stage.id, ctx, &state, &mut warnings);
        problems.extend(warnings.into_iter().map(|p| p.prefixed(&stage.path)));
        match built {
            Ok(filter) => stages.push(FilterStage::new(stage.id.clone(), when, filter, ctx)),
            Err(errs) => problems.extend(errs.into_iter().map(|p| p.prefixed(&stage.path))),
        }
    }
    stages
}

/// Every problem in the configuration that can be found without starting anything.
pub fn validate(config: &PipelineConfig, ctx: &BuildContext) -> Vec<Problem> {
    validate_and_build(config, ctx).0
}

/// [`validate`], keeping the compiled filter chain: building a stage can be costly (the GeoIP
/// stage verifies its whole database), so `run` builds it once.
pub fn validate_and_build(
    config: &PipelineConfig,
    ctx: &BuildContext,
) -> (Vec<Problem>, Vec<FilterStage>) {
    let mut problems = Vec::new();
    for stage in &config.inputs {
        problems.extend(
            stage
                .config
                .validate()
                .into_iter()
                .map(|p| p.prefixed(&stage.path)),
        );
    }
    let stages = build_filters_into(config, ctx, &mut problems);
    for stage in &config.outputs {
        compile_when(&stage.when, &stage.path, &mut problems);
        problems.extend(
            stage
                .config
                .validate(ctx)
                .into_iter()
                .map(|p| p.prefixed(&stage.path)),
        );
    }
    // [alerts] (windowed rules)
    if let Some(input) = alert_input(config) {
        problems.extend(crate::alerts::validate(&input));
    }
    if config.pipeline.batch_size == 0 {
        problems.push(Problem::at("pipeline.batch_size", "must be at least 1"));
    }
    if config.pipeline.memory_limit < MIN_MEMORY_LIMIT {
        problems.push(
            Problem::at(
                "pipeline.memory_limit",
                format!(
                    "{} bytes is too small to hold one request body and one batch",
                    config.pipeline.memory_limit
                ),
            )
            .hint("use at least 16MiB; the default is 256MiB"),
        );
    }
    if config.pipeline.queue_capacity == 0 {
        problems.push(Problem::at("pipeline.queue_capacity", "must be at least 1"));
    }
    problems.extend(persisted_queue_problems(&config.pipeline));
    if !config.api.address.is_empty() {
        problems.extend(crate::inputs::check_address(
            "api.address",
            &config.api.address,
        ));
        problems.extend(config.api.status_page.validate());
    }
    (problems, stages)
}

/// The smallest `pipeline.queue_max_bytes` accepted.
const MIN_QUEUE_BYTES: u64 = 1 << 20;

fn persisted_queue_problems(p: &crate::config::PipelineSettings) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Err(e) = crate::journal::Sync::parse(&p.queue_sync) {
        problems.push(
            Problem::at("pipeline.queue_sync", e)
                .hint("write \"always\" or an interval such as \"1s\""),
        );
    }
    if p.queue_max_bytes < MIN_QUEUE_BYTES {
        problems.push(
            Problem::at(
                "pipeline.queue_max_bytes",
                format!("{} bytes cannot hold a request body", p.queue_max_bytes),
            )
            .hint("use at least 1MiB; the default is 1GiB"),
        );
    }
    problems
}

/// Opens the persisted queue when the pipeline asks for one.
fn open_journal(
    config: &PipelineConfig,
    ctx: &BuildContext,
) -> anyhow::Result<Option<Arc<crate::journal::Journal>>> {
    if config.pipeline.queue != crate::config::QueueKind::Persisted {
        return Ok(None);
    }
    let settings = crate::journal::Settings {
        dir: ctx.data_dir.join("queue"),
        max_bytes: config.pipeline.queue_max_bytes,
        sync: crate::journal::Sync::parse(&config.pipeline.queue_sync)
            .map_err(|e| anyhow::anyhow!("pipeline.queue_sync: {e}"))?,
    };
    let journal = crate::journal::Journal::open(&settings, &ctx.metrics)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(dir = %settings.dir.display(), max_bytes = settings.max_bytes, sync = %config.pipeline.queue_sync, "persisted queue open");
    Ok(Some(Arc::new(journal)))
}

/// Replays what the persisted queue holds (before the inputs start), then keeps delivering
/// again what fails at run time.
async fn replay_journal(
    journal: &Option<Arc<crate::journal::Journal>>,
    queue: &queue::QueueSender,
    ctx: &BuildContext,
) {
    let Some(journal) = journal else { return };
    journal.replay(queue, &ctx.budget).await;
    tokio::spawn(journal.clone().redeliver(
        queue.clone(),
        ctx.budget.clone(),
        ctx.shutdown.clone(),
    ));
}

/// What the alert rules read from the pipeline file; `None` without `[alerts]`.
pub fn alert_input(config: &PipelineConfig) -> Option<crate::alerts::Input<'_>> {
    Some(crate::alerts::Input {
        table: config.alerts.as_ref()?,
        email_outputs: config
            .outputs
            .iter()
            .filter_map(|s| match &s.config {
                OutputConfig::Email(c) => Some((s.id.as_str(), c)),
                _ => None,
            })
            .collect(),
    })
}

fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    }
}

/// What every filter worker shares.
#[derive(Clone)]
struct Worker {
    queue: Arc<QueueReceiver>,
    chain: tokio::sync::watch::Receiver<crate::reload::Chain>,
    outputs: tokio::sync::watch::Receiver<Slots>,
    /// Where events a stage panicked on go.
    dead_letters: Arc<DeadLetters>,
    events_out: crate::metrics::Counter,
}

impl Worker {
    /// Takes batches until the queue closes: every stage over the batch, then each output
    /// whose `when` matches.
    async fn run(self) {
        // A stage still loading (the GeoIP database is verified after the inputs bind) holds
        // the first batch back; the bounded queue fills meanwhile, then inputs push back (429).
        // A reloaded chain was built complete.
        let first = self.chain.borrow().clone();
        for stage in first.iter() {
            if let Some(ready) = stage.ready() {
                ready.await;
            }
        }
        drop(first);
        let mut panicked = Vec::new();
        while let Some(mut batch) = self.queue.recv().await {
            // The chain for this batch: a reload between batches takes effect at the next one.
            let stages = self.chain.borrow().clone();
            for stage in stages.iter() {
                stage.apply_batch(&mut batch.events, &mut panicked);
            }
            if !panicked.is_empty() {
                self.dead_letters.write(&panicked);
                panicked.clear();
            }
            let outputs = self.outputs.borrow().clone();
            for slot in outputs.iter() {
                let refs: Vec<&crate::event::Event> = match &slot.when {
                    None => batch.events.iter().collect(),
                    Some(cond) => batch.events.iter().filter(|e| cond.matches(e)).collect(),
                };
                if !refs.is_empty() {
                    slot.output.submit_held(&refs, batch.hold.as_ref()).await;
                }
            }
            self.events_out.add(batch.events.len() as u64);
            crate::ack::confirm(batch.hold.take());
            // Dropping the batch returns its share of the queue's capacity.
        }
    }
}

/// Where a running pipeline re-reads its file from, and when.
pub struct ReloadSource {
    pub path: std::path::PathBuf,
    /// The file as `config` was parsed from it.
    pub text: String,
    /// One message per reload request (SIGHUP).
    pub requests: tokio::sync::mpsc::Receiver<()>,
}

/// Runs the pipeline until `ctx.shutdown` is cancelled, then drains it.
pub async fn run(
    config: PipelineConfig,
    ctx: BuildContext,
    reload: Option<ReloadSource>,
) -> anyhow::Result<()> {
    ctx.budget.set_limit(config.pipeline.memory_limit);
    let stages = Arc::new(checked_filters(&config, &ctx)?);
    let filters = stages.len();
    let (chain_tx, chain) = tokio::sync::watch::channel(stages);
    let (slots, output_tasks, status) = start_outputs(&config, &ctx).await?;
    let outputs = slots.len();
    let fixed: Vec<OutputSlot> = slots
        .iter()
        .filter(|s| s.fixed)
        .map(|s| s.slot.clone())
        .collect();
    let (outputs_tx, outputs_rx) = tokio::sync::watch::channel(Arc::new(
        slots.into_iter().map(|s| s.slot).collect::<Vec<_>>(),
    ));
    let journal = open_journal(&config, &ctx)?;
    let (queue_tx, queue_rx) = pipeline_queue(&config, &ctx);
    let delivered = (config.pipeline.acknowledge == crate::config::AckPoint::Delivered)
        .then_some(config.pipeline.delivery_timeout);
    let queue_tx = queue_tx
        .with_journal(journal.clone())
        .acknowledging_delivery(delivered);
    let workers = start_workers(&config, &ctx, queue_rx, chain, outputs_rx);
    replay_journal(&journal, &queue_tx, &ctx).await;

    let mut live = Live::new(outputs_tx, fixed, output_tasks, queue_tx);
    let text = reload.as_ref().map(|r| r.text.clone()).unwrap_or_default();
    live.start_inputs(&config, &text, &ctx).await?;

    let api_task = if config.api.address.is_empty() {
        None
    } else {
        Some(crate::api::start(&config.api.address, &ctx, status).await?)
    };
    tracing::info!(
        inputs = config.inputs.len(),
        filters,
        outputs,
        "sheepdog ready"
    );

    let live = wait_for_shutdown(&ctx, chain_tx, reload, live).await;
    let (input_tasks, output_tasks) = live.into_tasks();
    let running = Running {
        input_tasks,
        workers,
        output_tasks,
        api_task,
        journal,
    };
    running.drain(config.pipeline.shutdown_timeout, &ctx).await;
    Ok(())
}

/// Starts the filter workers.
fn start_workers(
    config: &PipelineConfig,
    ctx: &BuildContext,
    queue: Arc<QueueReceiver>,
    chain: tokio::sync::watch::Receiver<crate::reload::Chain>,
    outputs: tokio::sync::watch::Receiver<Slots>,
) -> Vec<JoinHandle<()>> {
    let worker = Worker {
        queue,
        chain,
        outputs,
        dead_letters: Arc::new(DeadLetters::in_dir(&ctx.data_dir)),
        events_out: ctx.metrics.counter(
            "sheepdog_pipeline_events_total",
            "Events that passed the filter chain and were handed to outputs",
            &[],
        ),
    };
    (0..worker_count(config.pipeline.workers))
        .map(|_| tokio::spawn(worker.clone().run()))
        .collect()
}

/// Waits for shutdown, reloading the pipeline file on each request meanwhile; hands back
/// what runs then.
async fn wait_for_shutdown(
    ctx: &BuildContext,
    chain: tokio::sync::watch::Sender<crate::reload::Chain>,
    reload: Option<ReloadSource>,
    mut live: Live,
) -> Live {
    let Some(mut source) = reload else {
        ctx.shutdown.cancelled().await;
        return live;
    };
    let mut reloader = crate::reload::Reloader::new(source.path, source.text, chain, ctx);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return live,
            request = source.requests.recv() => match request {
                Some(()) => reloader.reload(&mut live).await,
                None => {
                    ctx.shutdown.cancelled().await;
                    return live;
                }
            },
        }
    }
}

/// Validates the whole configuration (logging its warnings) and returns the compiled filter
/// chain; any error stops the start.
fn checked_filters(
    config: &PipelineConfig,
    ctx: &BuildContext,
) -> anyhow::Result<Vec<FilterStage>> {
    let (problems, stages) = validate_and_build(config, ctx);
    for p in problems.iter().filter(|p| !p.is_error()) {
        tracing::warn!(problem = %p, "configuration warning");
    }
    if problems.iter().any(Problem::is_error) {
        let text: Vec<String> = problems
            .iter()
            .filter(|p| p.is_error())
            .map(|p| p.to_string())
            .collect();
        anyhow::bail!("invalid configuration:\n{}", text.join("\n"));
    }
    Ok(stages)
}

/// A slot at start-up, and whether it stays across reloads (it is not from the file's
/// `[[outputs]]` or `[alerts]`).
struct StartSlot {
    slot: OutputSlot,
    fixed: bool,
}

/// Starts every output, then the alert rules and the status page's statistics (both fed like
/// an output without `when`).
async fn start_outputs(
    config: &PipelineConfig,
    ctx: &BuildContext,
) -> anyhow::Result<(Vec<StartSlot>, Tasks, Option<crate::status::Sources>)> {
    let (file_slots, tasks, alert_states) = crate::live::start_file_outputs(config, ctx).await?;
    let mut slots: Vec<StartSlot> = file_slots
        .into_iter()
        .map(|slot| StartSlot { slot, fixed: false })
        .collect();
    let status = status_sources(config, ctx, alert_states)?;
    if let Some(sources) = &status {
        slots.push(StartSlot {
            slot: OutputSlot {
                when: None,
                output: Arc::new(crate::status::StatsSink(sources.events.clone())),
            },
            fixed: true,
        });
    }
    Ok((slots, tasks, status))
}

/// What the status page reads, when the API and the page are on.
fn status_sources(
    config: &PipelineConfig,
    ctx: &BuildContext,
    alerts: Option<crate::alerts::States>,
) -> anyhow::Result<Option<crate::status::Sources>> {
    let settings = &config.api.status_page;
    if config.api.address.is_empty() || !settings.enabled {
        return Ok(None);
    }
    let clock = crate::clock::system();
    Ok(Some(crate::status::Sources {
        metrics: ctx.metrics.clone(),
        health: ctx.health.clone(),
        rates: Arc::new(crate::status::rates::Rates::new(settings.sample_every)),
        events: Arc::new(crate::status::EventStats::new(settings, clock.clone())?),
        alerts,
        clock,
    }))
}

/// The bounded queue between inputs and filter workers, with its depth and capacity gauges.
fn pipeline_queue(
    config: &PipelineConfig,
    ctx: &BuildContext,
) -> (queue::QueueSender, Arc<QueueReceiver>) {
    let depth = ctx.metrics.gauge(
        "sheepdog_queue_events",
        "Events in the pipeline queue or being processed",
        &[],
    );
    let (queue_tx, queue_rx) = queue::bounded(
        config.pipeline.queue_capacity,
        config.pipeline.batch_size,
        depth,
    );
    ctx.metrics
        .gauge(
            "sheepdog_queue_capacity_events",
            "Capacity of the pipeline queue in events",
            &[],
        )
        .set(queue_tx.capacity() as i64);
    (queue_tx, queue_rx)
}

/// Events still in the pipeline queue (or with the workers), and held by outputs.
fn undelivered(metrics: &crate::metrics::Registry) -> (i64, i64) {
    let sum = |name: &str| -> i64 {
        metrics
            .series(name)
            .into_iter()
            .map(|(_, v)| v as i64)
            .sum()
    };
    (
        sum("sheepdog_queue_events"),
        sum("sheepdog_es_queued_events") + sum("sheepdog_kafka_in_flight_messages"),
    )
}

/// The tasks of a started pipeline, in the order shutdown ends them.
struct Running {
    input_tasks: Tasks,
    workers: Vec<JoinHandle<()>>,
    output_tasks: Tasks,
    api_task: Option<JoinHandle<()>>,
    journal: Option<Arc<crate::journal::Journal>>,
}

impl Running {
    /// Stops the inputs, lets the workers drain the queue, then lets the outputs flush, all
    /// within `timeout`.
    async fn drain(self, timeout: Duration, ctx: &BuildContext) {
        let metrics = &ctx.metrics;
        let deadline = tokio::time::Instant::now() + timeout;
        tracing::info!(timeout = ?timeout, "shutting down: stopping inputs, draining the queue");
        for (id, task) in self.input_tasks {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!(input = %id, "input did not stop before the shutdown deadline");
            }
        }
        // No input accepts any more: close the sockets kept for reloads.
        ctx.listeners.retain(&[]);
        for w in self.workers {
            if tokio::time::timeout_at(deadline, w).await.is_err() {
                tracing::warn!("filter worker did not drain before the shutdown deadline");
            }
        }
        for (id, task) in self.output_tasks {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!(output = %id, "output did not flush before the shutdown deadline");
            }
        }
        let (queued, in_outputs) = undelivered(metrics);
        if let Some(journal) = &self.journal {
            // What is unconfirmed stays in the queue's files (logged by `close`).
            journal.close().await;
        } else if queued + in_outputs > 0 {
            tracing::error!(
                queued,
                in_outputs,
                "shutdown deadline passed with events not delivered; they are lost (the memory queue keeps nothing across restarts)"
            );
        }
        if let Some(api) = self.api_task {
            api.abort();
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        tracing::info!(spare = ?remaining.min(Duration::from_secs(3600)), "sheepdog stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, FieldPath};
    use crate::filters::Filter;
    use crate::outputs::BoxFuture;
    use serde_json::{json, Value};
    use std::sync::Mutex;
    use tokio_util::sync::CancellationToken;

    /// Panics on the event whose `n` is 2 (test-only: no configuration reaches it).
    struct PanicOnTwo;

    impl Filter for PanicOnTwo {
        fn apply(&self, event: &mut Event) -> bool {
            if event.fields()["n"] == json!(2) {
                panic!("cannot handle n = 2");
            }
            event.insert(&FieldPath::top("checked"), json!(true));
            true
        }
    }

    /// Keeps what it is handed.
    #[derive(Default)]
    struct Capture(Mutex<Vec<Value>>);

    impl crate::outputs::Output for Arc<Capture> {
        fn submit<'a>(&'a self, events: &'a [&'a Event]) -> BoxFuture<'a, ()> {
            let mut seen = self.0.lock().unwrap();
            seen.extend(events.iter().map(|e| Value::Object(e.fields().to_map())));
            Box::pin(async {})
        }
    }

    fn batch(ns: std::ops::Range<i64>) -> Vec<Event> {
        ns.map(|n| Event::from_map(json!({"n": n}).as_object().unwrap().clone(), 0))
            .collect()
    }

    #[tokio::test]
    async fn a_filter_panic_dead_letters_its_event_and_the_worker_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = BuildContext::new(dir.path().to_path_buf(), CancellationToken::new());
        let stage = FilterStage::new("picky".into(), None, Box::new(PanicOnTwo), &ctx);
        let capture = Arc::new(Capture::default());
        let (tx, rx) = queue::bounded(
            100,
            100,
            ctx.metrics.gauge("sheepdog_test_queue_events", "q", &[]),
        );
        let (_chain_tx, chain) = tokio::sync::watch::channel(Arc::new(vec![stage]));
        let worker = Worker {
            queue: rx,
            chain,
            outputs: tokio::sync::watch::channel(Arc::new(vec![OutputSlot {
                when: None,
                output: Arc::new(capture.clone()),
            }]))
            .1,
            dead_letters: Arc::new(DeadLetters::in_dir(dir.path())),
            events_out: ctx.metrics.counter("sheepdog_test_out_total", "out", &[]),
        };
        let task = tokio::spawn(worker.run());
        let source: Arc<str> = Arc::from("test");
        let mut charge = crate::budget::Charge::none();
        tx.send(&source, batch(0..5), &mut charge).await.unwrap();
        tx.send(&source, batch(10..13), &mut charge).await.unwrap();
        drop(tx);
        task.await
            .expect("the worker ends when the queue closes, not by a panic");

        let seen: Vec<Value> = capture.0.lock().unwrap().clone();
        let ns: Vec<i64> = seen.iter().map(|e| e["n"].as_i64().unwrap()).collect();
        assert_eq!(
            ns,
            [0, 1, 3, 4, 10, 11, 12],
            "every other event, both batches"
        );
        assert!(seen.iter().all(|e| e["checked"] == json!(true)));

        let text = std::fs::read_to_string(dir.path().join("filter_dead_letter.ndjson")).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(lines[0]["stage"], "picky");
        assert_eq!(lines[0]["error"]["type"], "panic");
        let reason = lines[0]["error"]["reason"].as_str().unwrap();
        assert!(reason.starts_with("cannot handle n = 2"), "{reason}");
        assert_eq!(
            lines[0]["document"],
            json!({"@timestamp": "1970-01-01T00:00:00.000Z", "n": 2})
        );
        assert_eq!(
            ctx.metrics
                .value("sheepdog_filter_panics_total", &[("stage", "picky")]),
            Some(1.0)
        );
    }

    #[test]
    fn persisted_queue_settings_are_checked() {
        let mut p = crate::config::PipelineSettings::default();
        assert!(persisted_queue_problems(&p).is_empty());
        p.queue_sync = "sometimes".into();
        p.queue_max_bytes = 1000;
        let problems: Vec<String> = persisted_queue_problems(&p)
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("pipeline.queue_sync"), "{problems:?}");
        assert!(problems[1].contains("at least 1MiB"), "{problems:?}");
    }
}
