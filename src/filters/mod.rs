//! Filter stages: each is a config struct (validated once) and a runtime [`Filter`] that
//! enriches one event in place. A failing stage tags the event and passes it on.

pub mod bucket;
pub mod cache;
pub mod classify;
pub mod cost;
pub mod date;
pub mod fingerprint;
pub mod geoip;
pub mod json;
pub mod metrics;
pub mod mutate;
pub mod useragent;

use crate::condition::Condition;
use crate::config::problem::{PathSeg, Problem};
use crate::event::Event;
use crate::metrics::Counter;
use crate::BuildContext;
use std::sync::Arc;

/// A filter's work on one event. Returns `false` when it failed on this event (and tagged it).
pub trait Filter: Send + Sync {
    fn apply(&self, event: &mut Event) -> bool;

    /// Resolves once the stage can do its work (a database it loads in the background after
    /// start-up); `None` when it already can. Filter workers await every stage's readiness
    /// before taking their first batch, so events queue up meanwhile instead of passing through
    /// unenriched.
    fn ready(&self) -> Option<futures_util::future::BoxFuture<'static, ()>> {
        None
    }
}

/// Every filter `type` the pipeline file accepts.
pub const TYPES: &[&str] = &[
    "json",
    "cost",
    "mutate",
    "date",
    "classify",
    "bucket",
    "geoip",
    "useragent",
    "metrics",
    "fingerprint",
];

/// What the stages of one filter chain share while it is built.
#[derive(Default)]
pub struct BuildState {
    /// Verified GeoIP database files: a file used by several geoip stages is walked once.
    geoip: Arc<geoip::Registry>,
}

#[derive(Debug, Clone)]
pub enum FilterConfig {
    Json(json::Config),
    Cost(cost::Config),
    Mutate(mutate::Config),
    Date(date::Config),
    Classify(classify::Config),
    Bucket(bucket::Config),
    Geoip(geoip::Config),
    Useragent(useragent::Config),
    Metrics(metrics::Config),
    Fingerprint(fingerprint::Config),
}

impl FilterConfig {
    pub fn parse(
        kind: &str,
        value: toml::Value,
        path: &[PathSeg],
        problems: &mut Vec<Problem>,
    ) -> Option<Self> {
        use crate::config::de::deserialize_at as de;
        Some(match kind {
            "json" => FilterConfig::Json(de(value, path, problems)?),
            "cost" => FilterConfig::Cost(de(value, path, problems)?),
            "mutate" => FilterConfig::Mutate(de(value, path, problems)?),
            "date" => FilterConfig::Date(de(value, path, problems)?),
            "classify" => FilterConfig::Classify(de(value, path, problems)?),
            "bucket" => FilterConfig::Bucket(de(value, path, problems)?),
            "geoip" => FilterConfig::Geoip(de(value, path, problems)?),
            "useragent" => FilterConfig::Useragent(de(value, path, problems)?),
            "metrics" => FilterConfig::Metrics(de(value, path, problems)?),
            "fingerprint" => FilterConfig::Fingerprint(de(value, path, problems)?),
            _ => return None,
        })
    }

    /// Validates and compiles stage `id` of the chain that `state` belongs to. Problems carry
    /// paths relative to the stage.
    pub fn build(
        &self,
        id: &str,
        ctx: &BuildContext,
        state: &BuildState,
    ) -> Result<Box<dyn Filter>, Vec<Problem>> {
        self.build_reporting(id, ctx, state, &mut Vec::new())
    }

    /// Like [`FilterConfig::build`], also collecting warnings (a missing optional file) for a
    /// stage that still runs.
    pub fn build_reporting(
        &self,
        id: &str,
        ctx: &BuildContext,
        state: &BuildState,
        warnings: &mut Vec<Problem>,
    ) -> Result<Box<dyn Filter>, Vec<Problem>> {
        match self {
            FilterConfig::Json(c) => c.build().map(|f| Box::new(f) as Box<dyn Filter>),
            FilterConfig::Cost(c) => c.build().map(|f| Box::new(f) as Box<dyn Filter>),
            FilterConfig::Mutate(c) => c.build().map(|f| Box::new(f) as Box<dyn Filter>),
            FilterConfig::Date(c) => c.build().map(|f| Box::new(f) as Box<dyn Filter>),
            FilterConfig::Classify(c) => c.build().map(|f| Box::new(f) as Box<dyn Filter>),
            FilterConfig::Bucket(c) => c.build().map(|f| Box::new(f) as Box<dyn Filter>),
            FilterConfig::Geoip(c) => c
                .build(id, ctx, &state.geoip, warnings)
                .map(|f| Box::new(f) as Box<dyn Filter>),
            FilterConfig::Useragent(c) => c.build().map(|f| Box::new(f) as Box<dyn Filter>),
            FilterConfig::Metrics(c) => c
                .build(&ctx.metrics)
                .map(|f| Box::new(f) as Box<dyn Filter>),
            FilterConfig::Fingerprint(c) => c.build().map(|f| Box::new(f) as Box<dyn Filter>),
        }
    }
}

/// A compiled stage: condition, filter and its counters.
pub struct FilterStage {
    pub id: String,
    when: Option<Condition>,
    filter: Box<dyn Filter>,
    matched: Counter,
    failed: Counter,
}

impl FilterStage {
    pub fn new(
        id: String,
        when: Option<Condition>,
        filter: Box<dyn Filter>,
        ctx: &BuildContext,
    ) -> Self {
        let labels = [("stage", id.as_str())];
        FilterStage {
            matched: ctx.metrics.counter(
                "sheepdog_filter_events_total",
                "Events a filter stage ran on (its condition held)",
                &labels,
            ),
            failed: ctx.metrics.counter(
                "sheepdog_filter_failures_total",
                "Events a filter stage failed on and tagged",
                &labels,
            ),
            id,
            when,
            filter,
        }
    }

    /// See [`Filter::ready`].
    pub fn ready(&self) -> Option<futures_util::future::BoxFuture<'static, ()>> {
        self.filter.ready()
    }

    /// Runs the stage over a batch; counters are updated once per batch.
    pub fn apply_batch(&self, events: &mut [Event]) {
        let mut matched = 0u64;
        let mut failed = 0u64;
        for event in events.iter_mut() {
            if let Some(cond) = &self.when {
                if !cond.matches(event) {
                    continue;
                }
            }
            matched += 1;
            if !self.filter.apply(event) {
                failed += 1;
            }
        }
        self.matched.add(matched);
        if failed > 0 {
            self.failed.add(failed);
        }
    }
}

/// Helper for filter configs: a field path option that must parse.
pub fn parse_path(
    key: &str,
    value: &str,
    problems: &mut Vec<Problem>,
) -> Option<crate::event::FieldPath> {
    match crate::event::FieldPath::parse(value) {
        Ok(p) => Some(p),
        Err(e) => {
            problems.push(
                Problem::at(key, e.to_string()).hint("write a field as [a][b] or a top-level name"),
            );
            None
        }
    }
}

/// Helper for filter configs: a template option that must compile.
pub fn parse_template(
    key: &str,
    value: &str,
    problems: &mut Vec<Problem>,
) -> Option<crate::template::Template> {
    match crate::template::Template::compile(value) {
        Ok(t) => Some(t),
        Err(e) => {
            problems.push(
                Problem::at(key, format!("bad template `{value}`: {e}"))
                    .hint("templates look like %{[fields][service]} or %{+YYYY.MM.dd}"),
            );
            None
        }
    }
}
