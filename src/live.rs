//! The running inputs and outputs, and how a reload replaces them without losing or doubling
//! an event.
//!
//! - **Outputs** (with the alert rules) are started anew when the file's `[[outputs]]` or
//!   `[alerts]` changed. Workers take the new set for their next batch; the old outputs keep
//!   what they hold, deliver it and stop once the last batch handed to them is done (their
//!   acknowledgements are confirmed as usual). Both may write to Elasticsearch for a moment.
//! - **Inputs** whose table did not change keep running. A changed input is started anew
//!   before the old one stops: on the same address both share one socket (see
//!   [`crate::listeners`]), so the port never closes; the old one answers what it took in.
//!   Removed inputs stop the same way.

use crate::condition::Condition;
use crate::config::PipelineConfig;
use crate::inputs::InputConfig;
use crate::outputs::Output;
use crate::queue::QueueSender;
use crate::BuildContext;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// An output as the workers see it.
pub(crate) struct OutputSlot {
    pub when: Option<Condition>,
    pub output: Arc<dyn Output>,
}

impl Clone for OutputSlot {
    fn clone(&self) -> Self {
        OutputSlot {
            when: self.when.clone(),
            output: Arc::clone(&self.output),
        }
    }
}

/// The outputs the workers hand events to, replaced whole by a reload.
pub(crate) type Slots = Arc<Vec<OutputSlot>>;

/// Tasks by component id, awaited at shutdown.
pub(crate) type Tasks = Vec<(String, JoinHandle<()>)>;

/// How long a reload waits for a replaced input to answer what it took in.
const INPUT_STOP_WAIT: Duration = Duration::from_secs(30);

struct RunningInput {
    id: String,
    /// The input's table in the file (before `${VAR}` substitution).
    table: Option<toml::Value>,
    address: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// What runs, and what a reload may replace.
pub(crate) struct Live {
    inputs: Vec<RunningInput>,
    outputs: watch::Sender<Slots>,
    /// Slots fed like outputs that are not in the file (the status page's statistics).
    fixed: Vec<OutputSlot>,
    output_tasks: Tasks,
    queue: QueueSender,
}

impl Live {
    pub fn new(
        outputs: watch::Sender<Slots>,
        fixed: Vec<OutputSlot>,
        output_tasks: Tasks,
        queue: QueueSender,
    ) -> Live {
        Live {
            inputs: Vec::new(),
            outputs,
            fixed,
            output_tasks,
            queue,
        }
    }

    /// Starts every input of `config` (`text`: the file it was parsed from).
    pub async fn start_inputs(
        &mut self,
        config: &PipelineConfig,
        text: &str,
        ctx: &BuildContext,
    ) -> anyhow::Result<()> {
        let tables = input_tables(text);
        for (i, stage) in config.inputs.iter().enumerate() {
            let input = self
                .start_input(&stage.id, &stage.config, tables.get(i).cloned(), ctx)
                .await?;
            self.inputs.push(input);
        }
        Ok(())
    }

    async fn start_input(
        &self,
        id: &str,
        config: &InputConfig,
        table: Option<toml::Value>,
        ctx: &BuildContext,
    ) -> anyhow::Result<RunningInput> {
        let stop = ctx.shutdown.child_token();
        let mut own = ctx.clone();
        own.shutdown = stop.clone();
        let task = config.start(id, &own, self.queue.clone()).await?;
        Ok(RunningInput {
            id: id.to_string(),
            table,
            address: config.address().to_string(),
            stop,
            task,
        })
    }

    /// Applies a reloaded file's inputs and outputs (those that changed).
    pub async fn reload(
        &mut self,
        old: &str,
        new: &str,
        config: &PipelineConfig,
        ctx: &BuildContext,
    ) {
        if section(old, "outputs") != section(new, "outputs")
            || section(old, "alerts") != section(new, "alerts")
        {
            match start_file_outputs(config, ctx).await {
                Ok((slots, tasks, _states)) => self.replace_outputs(slots, tasks),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "reload: the new outputs could not start; the running ones go on")
                }
            }
        }
        self.reload_inputs(new, config, ctx).await;
    }

    fn replace_outputs(&mut self, mut slots: Vec<OutputSlot>, tasks: Tasks) {
        let count = slots.len();
        slots.extend(self.fixed.iter().cloned());
        // Workers take the new set for their next batch; the old outputs end once the last
        // batch handed to them is delivered.
        self.outputs.send_replace(Arc::new(slots));
        self.output_tasks.extend(tasks);
        tracing::info!(
            outputs = count,
            "reload: new outputs took over; the previous ones deliver what they hold and stop"
        );
    }

    async fn reload_inputs(&mut self, text: &str, config: &PipelineConfig, ctx: &BuildContext) {
        let tables = input_tables(text);
        let mut next = Vec::new();
        let mut retired = Vec::new();
        let mut old: Vec<RunningInput> = std::mem::take(&mut self.inputs);
        for (i, stage) in config.inputs.iter().enumerate() {
            let table = tables.get(i).cloned();
            let same = old
                .iter()
                .position(|r| r.id == stage.id && r.table == table && table.is_some());
            if let Some(at) = same {
                next.push(old.remove(at));
                continue;
            }
            match self.start_input(&stage.id, &stage.config, table, ctx).await {
                Ok(started) => {
                    tracing::info!(input = %stage.id, address = %started.address, "reload: input started with its new settings");
                    next.push(started);
                }
                Err(e) => {
                    tracing::error!(input = %stage.id, error = %format!("{e:#}"), "reload: input could not start; its previous settings stay");
                    if let Some(at) = old.iter().position(|r| r.id == stage.id) {
                        next.push(old.remove(at));
                    }
                }
            }
        }
        retired.extend(old);
        self.inputs = next;
        stop_inputs(retired).await;
        let used: Vec<String> = self.inputs.iter().map(|r| r.address.clone()).collect();
        ctx.listeners.retain(&used);
    }

    /// The tasks to end at shutdown: inputs, then outputs (the outputs' handles are dropped
    /// with `self`, so each output task ends once the workers let go of theirs).
    pub fn into_tasks(self) -> (Tasks, Tasks) {
        let inputs = self.inputs.into_iter().map(|r| (r.id, r.task)).collect();
        (inputs, self.output_tasks)
    }
}

/// Stops inputs and waits (bounded) until each answered what it took in.
async fn stop_inputs(inputs: Vec<RunningInput>) {
    for r in &inputs {
        r.stop.cancel();
    }
    for r in inputs {
        if tokio::time::timeout(INPUT_STOP_WAIT, r.task).await.is_err() {
            tracing::warn!(input = %r.id, "reload: the replaced input did not stop within 30s");
        } else {
            tracing::info!(input = %r.id, "reload: the replaced input stopped");
        }
    }
}

/// The file's `[[outputs]]` and the alert rules, started.
pub(crate) async fn start_file_outputs(
    config: &PipelineConfig,
    ctx: &BuildContext,
) -> anyhow::Result<(Vec<OutputSlot>, Tasks, Option<crate::alerts::States>)> {
    let mut slots = Vec::new();
    let mut tasks: Tasks = Vec::new();
    for stage in &config.outputs {
        let started = stage
            .config
            .start(&stage.id, ctx)
            .await
            .with_context(|| format!("output `{}` could not start", stage.id))?;
        let when = stage
            .when
            .as_ref()
            .map(|w| Condition::compile(w))
            .transpose()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        slots.push(OutputSlot {
            when,
            output: Arc::from(started.output),
        });
        tasks.push((stage.id.clone(), started.task));
    }
    // [alerts]: the rules see every event after the filters, fed like an output without `when`.
    let alerts = match crate::pipeline::alert_input(config) {
        Some(input) => crate::alerts::start(&input, ctx)?,
        None => None,
    };
    let states = alerts.map(|(started, states)| {
        slots.push(OutputSlot {
            when: None,
            output: Arc::from(started.output),
        });
        tasks.push(("alerts".into(), started.task));
        states
    });
    Ok((slots, tasks, states))
}

fn section(text: &str, key: &str) -> Option<toml::Value> {
    text.parse::<toml::Table>().ok()?.remove(key)
}

/// The file's `[[inputs]]` tables, in order.
fn input_tables(text: &str) -> Vec<toml::Value> {
    match section(text, "inputs") {
        Some(toml::Value::Array(tables)) => tables,
        _ => Vec::new(),
    }
}
