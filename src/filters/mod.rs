//! Filter stages: each is a config struct (validated once) and a runtime [`Filter`] that
//! enriches one event in place. A failing stage tags the event and passes it on; a stage that
//! panics on an event loses the event to the dead-letter file, not the worker ([`panics`]).

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
pub mod panics;
pub mod useragent;

use crate::condition::Condition;
use crate::config::problem::{PathSeg, Problem};
use crate::event::Event;
use crate::metrics::Counter;
use crate::BuildContext;
pub use panics::Panicked;
use std::panic::{catch_unwind, AssertUnwindSafe};
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
    panics: Counter,
}

/// How far [`FilterStage::apply_batch`] got through a batch; kept outside the code that may
/// panic, so it survives the unwinding.
#[derive(Default)]
struct Progress {
    /// The event being worked on, or the next one.
    next: usize,
    matched: u64,
    failed: u64,
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
            panics: ctx.metrics.counter(
                "sheepdog_filter_panics_total",
                "Events a filter stage panicked on, moved to the filter dead-letter file",
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

    /// Runs the stage over a batch; counters are updated once per batch. An event the stage
    /// panics on is taken out of `events` into `panicked`, and the rest of the batch goes on.
    ///
    /// The panic is caught around the whole batch, not per event: `catch_unwind` keeps its
    /// closure out of line, which per event would cost a call on the hot path. `Progress`
    /// lives outside the closure and says which event was being worked on when it unwound,
    /// so the loop resumes after that event: no event has the stage applied twice, and no
    /// clone is taken. The panicking event keeps whatever the stage did to it before
    /// panicking (a valid event, if not a finished one), which is what the dead-letter file
    /// gets. `AssertUnwindSafe` is sound for the rest because that event leaves the batch and
    /// the stages' shared state (caches, metric registries) takes its locks poison-tolerantly.
    pub fn apply_batch(&self, events: &mut Vec<Event>, panicked: &mut Vec<Panicked>) {
        let mut progress = Progress::default();
        let mut hit = Vec::new();
        let catching = panics::Catching::start();
        while let Err(payload) =
            catch_unwind(AssertUnwindSafe(|| self.apply_from(events, &mut progress)))
        {
            hit.push((progress.next, panics::message(payload.as_ref())));
            progress.next += 1;
        }
        drop(catching);
        self.matched.add(progress.matched);
        if progress.failed > 0 {
            self.failed.add(progress.failed);
        }
        if !hit.is_empty() {
            self.take_panicked(events, hit, panicked);
        }
    }

    /// Applies the stage to `events[progress.next..]`, counting as it goes.
    #[inline]
    fn apply_from(&self, events: &mut [Event], progress: &mut Progress) {
        while let Some(event) = events.get_mut(progress.next) {
            let matches = match &self.when {
                Some(cond) => cond.matches(event),
                None => true,
            };
            if matches {
                progress.matched += 1;
                if !self.filter.apply(event) {
                    progress.failed += 1;
                }
            }
            progress.next += 1;
        }
    }

    /// Moves the events at `hit` (ascending indices, with their panic messages) out of
    /// `events` into `panicked`, counting them; one log line per batch names how many and the
    /// first message, so a stage that panics on every event does not flood the log.
    #[cold]
    fn take_panicked(
        &self,
        events: &mut Vec<Event>,
        hit: Vec<(usize, String)>,
        panicked: &mut Vec<Panicked>,
    ) {
        self.panics.add(hit.len() as u64);
        if let Some((_, message)) = hit.first() {
            tracing::error!(stage = %self.id, events = hit.len(), panic = %message, "filter stage panicked on events of a batch; they go to the filter dead-letter file and the batch goes on");
        }
        let first = panicked.len();
        for (index, message) in hit.into_iter().rev() {
            panicked.push(Panicked {
                stage: self.id.clone(),
                message,
                event: events.remove(index),
            });
        }
        panicked[first..].reverse();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FieldPath;
    use serde_json::{json, Value};
    use tokio_util::sync::CancellationToken;

    /// Panics on events whose `n` is in `on`; counts its applications in `applied` otherwise.
    /// Test-only: no configuration reaches it.
    struct PanicOn(Vec<i64>);

    impl Filter for PanicOn {
        fn apply(&self, event: &mut Event) -> bool {
            let n = event.fields()["n"].as_i64().unwrap();
            let applied = event
                .get(&FieldPath::top("applied"))
                .and_then(Value::as_i64);
            event.insert(&FieldPath::top("applied"), json!(applied.unwrap_or(0) + 1));
            if self.0.contains(&n) {
                panic!("boom on {n}");
            }
            true
        }
    }

    fn events(ns: &[i64]) -> Vec<Event> {
        ns.iter()
            .map(|n| Event::from_map(json!({"n": n}).as_object().unwrap().clone(), 0))
            .collect()
    }

    fn ns(events: &[Event]) -> Vec<i64> {
        events
            .iter()
            .map(|e| e.fields()["n"].as_i64().unwrap())
            .collect()
    }

    #[test]
    fn a_panicking_event_leaves_the_batch_and_the_rest_is_applied_once() {
        let ctx = BuildContext::new("/tmp/sheepdog-data".into(), CancellationToken::new());
        let stage = FilterStage::new(
            "boom".into(),
            None,
            Box::new(PanicOn(vec![0, 3, 4, 7])),
            &ctx,
        );
        let mut batch = events(&[0, 1, 2, 3, 4, 5, 6, 7]);
        let mut panicked = Vec::new();
        stage.apply_batch(&mut batch, &mut panicked);

        assert_eq!(ns(&batch), [1, 2, 5, 6]);
        for e in &batch {
            assert_eq!(
                e.fields()["applied"],
                json!(1),
                "applied once: {:?}",
                e.fields()
            );
        }
        let caught: Vec<(i64, &str)> = panicked
            .iter()
            .map(|p| (p.event.fields()["n"].as_i64().unwrap(), p.stage.as_str()))
            .collect();
        assert_eq!(caught, [(0, "boom"), (3, "boom"), (4, "boom"), (7, "boom")]);
        assert!(
            panicked[1].message.starts_with("boom on 3"),
            "{}",
            panicked[1].message
        );
        let value = |name| ctx.metrics.value(name, &[("stage", "boom")]);
        assert_eq!(value("sheepdog_filter_panics_total"), Some(4.0));
        assert_eq!(value("sheepdog_filter_events_total"), Some(8.0));
    }

    #[test]
    fn the_hook_keeps_caught_panics_quiet_and_gives_their_location() {
        panics::install_hook();
        let ctx = BuildContext::new("/tmp/sheepdog-data".into(), CancellationToken::new());
        let stage = FilterStage::new("boom".into(), None, Box::new(PanicOn(vec![1])), &ctx);
        let mut batch = events(&[0, 1]);
        let mut panicked = Vec::new();
        stage.apply_batch(&mut batch, &mut panicked);
        let message = &panicked[0].message;
        assert!(
            message.starts_with("boom on 1 at src/filters/mod.rs:"),
            "{message}"
        );
        // Outside a stage the hook does not catch: the panic still unwinds to its catcher.
        assert!(std::panic::catch_unwind(|| panic!("elsewhere")).is_err());
    }
}
