//! The filter chain without inputs or outputs, for `sheepdog test` and `sheepdog tap`: events
//! go through the compiled stages as a filter worker runs them, and instead of being sent each
//! is routed: the outputs whose `when` holds for it and the Elasticsearch index it would go to.

pub mod dead_letter;
pub mod spec;
pub mod split;
pub mod suite;
pub mod tap;

use crate::condition::Condition;
use crate::config::{LocatedProblem, PipelineConfig};
use crate::event::{Event, METADATA};
use crate::filters::FilterStage;
use crate::outputs::elasticsearch::encoder::Encoder;
use crate::outputs::OutputConfig;
use crate::template::Template;
use serde_json::Value;

/// Where an event would go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Routed {
    /// Ids of the outputs whose `when` holds, in file order.
    pub outputs: Vec<String>,
    /// The index of the first Elasticsearch output the event reaches.
    pub index: Option<String>,
}

/// An output as the capture sees it.
struct Route {
    id: String,
    when: Option<Condition>,
    /// `Some` for Elasticsearch outputs: renders the index name exactly as the bulk encoder.
    index: Option<Encoder>,
}

/// The compiled filter chain of one pipeline file, with its outputs replaced by capture.
pub struct Chain {
    stages: Vec<FilterStage>,
    routes: Vec<Route>,
}

impl Chain {
    /// The chain of a loaded pipeline. Conditions and index templates compiled during
    /// validation, so they compile here too.
    pub fn new(config: &PipelineConfig, stages: Vec<FilterStage>) -> anyhow::Result<Self> {
        let mut routes = Vec::with_capacity(config.outputs.len());
        for stage in &config.outputs {
            let when = match &stage.when {
                Some(w) => Some(Condition::compile(w).map_err(|e| anyhow::anyhow!("{e}"))?),
                None => None,
            };
            let index = match &stage.config {
                OutputConfig::Elasticsearch(c) => Some(Encoder::new(
                    Template::compile(&c.index).map_err(|e| anyhow::anyhow!("{e}"))?,
                )),
                _ => None,
            };
            routes.push(Route {
                id: stage.id.clone(),
                when,
                index,
            });
        }
        Ok(Chain { stages, routes })
    }

    /// Reads and validates a pipeline file (database files are verified now) and builds its
    /// chain; `Err` is the text to print: every problem at file:line:column.
    pub fn load(
        path: &std::path::Path,
        lookup: crate::config::env::Lookup,
    ) -> Result<(Chain, Vec<LocatedProblem>), String> {
        let loaded = crate::load(path, lookup, crate::Verify::Now)?;
        let chain = Chain::new(&loaded.config, loaded.stages).map_err(|e| format!("{e:#}"))?;
        Ok((chain, loaded.warnings))
    }

    /// Whether an output with this id exists.
    pub fn has_output(&self, id: &str) -> bool {
        self.routes.iter().any(|r| r.id == id)
    }

    /// Runs every stage over the batch, as a filter worker does. An event a stage panicked on
    /// leaves the batch and is printed to stderr as the daemon's dead-letter line.
    pub fn apply(&self, events: &mut Vec<Event>) {
        let mut panicked = Vec::new();
        for stage in &self.stages {
            stage.apply_batch(events, &mut panicked);
        }
        for p in &panicked {
            let mut line = Vec::new();
            crate::filters::panics::encode_line(p, crate::event::now_ms(), &mut line);
            eprint!(
                "filter stage `{}` panicked on an event: {}",
                p.stage,
                String::from_utf8_lossy(&line)
            );
        }
    }

    /// The outputs `event` reaches and the index it would be written to.
    pub fn route(&self, event: &Event) -> Routed {
        let mut routed = Routed::default();
        for route in &self.routes {
            if route.when.as_ref().is_some_and(|c| !c.matches(event)) {
                continue;
            }
            routed.outputs.push(route.id.clone());
            if let (None, Some(encoder)) = (&routed.index, &route.index) {
                routed.index = Some(encoder.index_name(event));
            }
        }
        routed
    }
}

/// The event as `tap` prints it and a failing test shows it: its fields with `@metadata`
/// (what the event carried plus `index` and `outputs` from `routed`) as a JSON object.
pub fn event_json(event: &Event, routed: &Routed) -> crate::event::Fields {
    let mut metadata = event.metadata().clone();
    if let Some(index) = &routed.index {
        metadata.insert("index", Value::String(index.clone()));
    }
    let outputs = routed.outputs.iter().cloned().map(Value::String).collect();
    metadata.insert("outputs", Value::Array(outputs));
    let mut doc = event.fields().clone();
    doc.insert(METADATA, Value::from(metadata));
    doc
}

#[cfg(test)]
mod tests;
