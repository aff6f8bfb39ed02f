//! `metrics`: exports counters and histograms computed from event fields on `/metrics`, e.g.
//! requests, spend, tokens and latency per model. Label values come from fields and are
//! bounded: past `max_values` distinct values a label folds new ones into `fold`.
//!
//! The stage runs per event, so the common case neither allocates nor locks: one lock-free
//! load of a snapshot (label value -> index, label index tuple -> series handle), string
//! lookups by `&str`, and relaxed atomic updates. Only a label value or series seen for the
//! first time takes the registration lock and publishes a new snapshot; the caps bound how
//! often that can happen. A missing or non-numeric value field skips that metric for that
//! event; the event is never tagged.

use super::{parse_path, Filter};
use crate::config::problem::{did_you_mean, PathSeg, Problem};
use crate::event::{Event, FieldPath};
use crate::metrics::{Counter, FloatCounter, Histogram, Kind, Registry};
use arc_swap::ArcSwap;
use foldhash::fast::FixedState;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Labels one stage may declare (per-event indices live in a stack array of this size).
pub const MAX_LABELS: usize = 16;
/// Longest label value kept; longer values fold (an id or a message is not a label).
pub const MAX_VALUE_LEN: usize = 256;
const MAX_VALUES_LIMIT: usize = 100_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Labels by name, each read from an event field.
    #[serde(default)]
    pub labels: BTreeMap<String, LabelConfig>,
    /// The metrics exported.
    pub metrics: Vec<MetricConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelConfig {
    /// Field holding the label value (a string, integer or boolean).
    pub field: String,
    /// Distinct values kept before new ones fold into `fold`. Default 50.
    #[serde(default = "d_max_values")]
    pub max_values: usize,
    /// The value that stands for every value past `max_values`. Default `other`.
    #[serde(default = "d_fold")]
    pub fold: String,
    /// The value when the field is missing (or an object, array or null); without it the
    /// event is not counted in metrics with this label.
    #[serde(default)]
    pub missing: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    Counter,
    Histogram,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricConfig {
    /// Metric name; counters end with `_total`.
    pub name: String,
    /// The HELP text.
    pub help: String,
    pub kind: MetricKind,
    /// Numeric field added (counter) or observed (histogram); a counter without it counts
    /// events (adds 1).
    #[serde(default)]
    pub value: Option<String>,
    /// Names of labels from `[filters.labels]`.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Labels with a fixed value, e.g. `{ kind = "prompt" }`.
    #[serde(default)]
    pub const_labels: BTreeMap<String, String>,
    /// Histogram upper bounds (inclusive, ascending; `+Inf` is implied).
    #[serde(default)]
    pub buckets: Option<Vec<f64>>,
}

fn d_max_values() -> usize {
    50
}
fn d_fold() -> String {
    "other".into()
}

/// A compiled label: where its value comes from and its reserved value indices.
struct Label {
    name: String,
    field: FieldPath,
    max_values: usize,
    /// Index of the `missing` value, when there is one.
    missing: Option<u32>,
}

/// Index of a label's `fold` value.
const FOLD: u32 = 0;
/// A label with no value for this event.
const ABSENT: u32 = u32::MAX;

/// What a metric adds per event.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Record {
    /// 1 per event.
    Count,
    /// A field's value onto a float counter.
    Sum,
    /// A field's value into a histogram.
    Observe,
}

/// A compiled metric.
struct Spec {
    name: String,
    help: String,
    record: Record,
    value: Option<FieldPath>,
    /// Indices into the stage's labels, in declaration order.
    labels: Vec<usize>,
    const_labels: Vec<(String, String)>,
    buckets: Vec<f64>,
}

#[derive(Clone)]
enum Series {
    Count(Counter),
    Sum(FloatCounter),
    Observe(Histogram),
}

impl Series {
    fn record(&self, amount: f64) {
        match self {
            Series::Count(c) => c.inc(),
            Series::Sum(c) => c.add(amount),
            Series::Observe(h) => h.observe(amount),
        }
    }
}

type FastMap<K, V> = HashMap<K, V, FixedState>;

/// One label's values seen so far; indices are stable once given.
#[derive(Clone, Default)]
struct Values {
    index: FastMap<Box<str>, u32>,
    names: Vec<Box<str>>,
    /// Values taken from events (not `fold` or `missing`); at `max_values` the label is full.
    taken: usize,
}

/// What the hot path reads: replaced as a whole when a value or series is added.
#[derive(Clone, Default)]
struct Snapshot {
    values: Vec<Values>,
    /// Per metric: the key of a label index tuple to its series.
    series: Vec<FastMap<u64, Series>>,
}

pub struct MetricsFilter {
    labels: Vec<Label>,
    specs: Vec<Spec>,
    snapshot: ArcSwap<Snapshot>,
    /// Serialises the slow path (new label values and series); never taken for known ones.
    register: Mutex<()>,
    registry: Arc<Registry>,
}

fn at(path: &[PathSeg], key: &str, message: impl Into<String>) -> Problem {
    let mut p = path.to_vec();
    p.push(PathSeg::Key(key.to_string()));
    Problem::at_path(p, message)
}

fn metric_path(i: usize) -> [PathSeg; 2] {
    [PathSeg::Key("metrics".into()), PathSeg::Index(i)]
}

impl Config {
    pub fn build(&self, registry: &Arc<Registry>) -> Result<MetricsFilter, Vec<Problem>> {
        let mut problems = Vec::new();
        let (labels, values) = self.compile_labels(&mut problems);
        let specs = self.compile_metrics(&labels, &mut problems);
        check_families(&specs, &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        for (i, spec) in specs.iter().enumerate() {
            let mut names: Vec<&str> = spec.labels.iter().map(|l| &*labels[*l].name).collect();
            names.extend(spec.const_labels.iter().map(|(k, _)| k.as_str()));
            let kind = match spec.record {
                Record::Count | Record::Sum => Kind::Counter,
                Record::Observe => Kind::Histogram,
            };
            if let Err(e) = registry.declare(&spec.name, &spec.help, &names, kind) {
                problems.push(at(&metric_path(i), "name", e.to_string()));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let snapshot = Snapshot {
            values,
            series: specs.iter().map(|_| FastMap::default()).collect(),
        };
        Ok(MetricsFilter {
            labels,
            specs,
            snapshot: ArcSwap::from_pointee(snapshot),
            register: Mutex::new(()),
            registry: registry.clone(),
        })
    }

    /// The labels, with `fold` (index 0) and `missing` (index 1) already in their values.
    fn compile_labels(&self, problems: &mut Vec<Problem>) -> (Vec<Label>, Vec<Values>) {
        if self.labels.len() > MAX_LABELS {
            problems.push(Problem::at(
                "labels",
                format!("at most {MAX_LABELS} labels per stage"),
            ));
        }
        let mut labels = Vec::new();
        let mut all_values = Vec::new();
        for (name, c) in &self.labels {
            let path = [PathSeg::Key("labels".into()), PathSeg::Key(name.clone())];
            let mut local = Vec::new();
            let field = parse_path("field", &c.field, &mut local);
            problems.extend(local.into_iter().map(|p| p.prefixed(&path)));
            if !(1..=MAX_VALUES_LIMIT).contains(&c.max_values) {
                problems.push(
                    at(&path, "max_values", "must be between 1 and 100000")
                        .hint("it bounds the series a label can create; 50 suits model names"),
                );
            }
            let reserved = std::iter::once(&c.fold).chain(&c.missing);
            if reserved
                .clone()
                .any(|v| v.is_empty() || v.len() > MAX_VALUE_LEN)
            {
                problems.push(at(
                    &path,
                    "fold",
                    "fold and missing values must be 1 to 256 bytes",
                ));
            }
            let mut values = Values::default();
            for v in reserved {
                intern(&mut values, v);
            }
            let missing = c.missing.as_deref().map(|m| values.index[m]);
            labels.push(Label {
                name: name.clone(),
                field: field.unwrap_or_else(|| FieldPath::top("_")),
                max_values: c.max_values,
                missing,
            });
            all_values.push(values);
        }
        (labels, all_values)
    }

    fn compile_metrics(&self, labels: &[Label], problems: &mut Vec<Problem>) -> Vec<Spec> {
        if self.metrics.is_empty() {
            problems.push(Problem::at("metrics", "no metrics declared").hint(
                "add [[filters.metrics]] with name, help, kind and optionally value and labels",
            ));
        }
        let names: Vec<&str> = labels.iter().map(|l| l.name.as_str()).collect();
        let mut used = vec![false; labels.len()];
        let mut specs = Vec::new();
        for (i, m) in self.metrics.iter().enumerate() {
            let path = metric_path(i);
            let mut spec_labels = Vec::new();
            for (j, l) in m.labels.iter().enumerate() {
                match names.iter().position(|n| n == l) {
                    Some(k) if spec_labels.contains(&k) => {
                        problems.push(at(&path, "labels", format!("label `{l}` listed twice")))
                    }
                    Some(k) => {
                        used[k] = true;
                        spec_labels.push(k);
                    }
                    None => {
                        let mut p = path.to_vec();
                        p.extend([PathSeg::Key("labels".into()), PathSeg::Index(j)]);
                        let hint = match did_you_mean(l, &names) {
                            Some(s) => format!("did you mean `{s}`?"),
                            None => format!("declare it under [filters.labels.{l}] with a field"),
                        };
                        problems
                            .push(Problem::at_path(p, format!("unknown label `{l}`")).hint(hint));
                    }
                }
            }
            if let Some(spec) = m.compile(&path, spec_labels, labels, problems) {
                specs.push(spec);
            }
        }
        for (label, used) in labels.iter().zip(used) {
            if !used {
                problems.push(
                    Problem::at_path(
                        vec![
                            PathSeg::Key("labels".into()),
                            PathSeg::Key(label.name.clone()),
                        ],
                        "declared but no metric uses it",
                    )
                    .hint("list it in a metric's labels or remove it"),
                );
            }
        }
        specs
    }
}

impl MetricConfig {
    fn compile(
        &self,
        path: &[PathSeg],
        spec_labels: Vec<usize>,
        labels: &[Label],
        problems: &mut Vec<Problem>,
    ) -> Option<Spec> {
        let before = problems.len();
        if self.name.starts_with("sheepdog_") && !self.name.starts_with("sheepdog_llm_") {
            problems.push(
                at(
                    path,
                    "name",
                    format!("`{}` is in the daemon's own namespace", self.name),
                )
                .hint("use a name outside sheepdog_, or under sheepdog_llm_"),
            );
        }
        let value = self.value.as_ref().and_then(|v| {
            let mut local = Vec::new();
            let p = parse_path("value", v, &mut local);
            problems.extend(local.into_iter().map(|p| p.prefixed(path)));
            p
        });
        let record = match (self.kind, &value) {
            (MetricKind::Counter, None) => Record::Count,
            (MetricKind::Counter, Some(_)) => Record::Sum,
            (MetricKind::Histogram, _) => Record::Observe,
        };
        self.check_kind(path, problems);
        for k in self.const_labels.keys() {
            if spec_labels.iter().any(|l| labels[*l].name == *k) {
                problems.push(at(
                    path,
                    "const_labels",
                    format!("`{k}` is also a field label"),
                ));
            }
        }
        let key_space = spec_labels.iter().try_fold(1u64, |acc, l| {
            acc.checked_mul(labels[*l].max_values as u64 + 2)
        });
        if key_space.is_none() {
            problems.push(
                at(path, "labels", "too many label value combinations")
                    .hint("lower max_values of its labels"),
            );
        }
        if problems.len() > before {
            return None;
        }
        Some(Spec {
            name: self.name.clone(),
            help: self.help.clone(),
            record,
            value,
            labels: spec_labels,
            const_labels: self.const_labels.clone().into_iter().collect(),
            buckets: self.buckets.clone().unwrap_or_default(),
        })
    }

    /// Counters take no buckets; histograms need a value field and ascending finite buckets.
    fn check_kind(&self, path: &[PathSeg], problems: &mut Vec<Problem>) {
        match (self.kind, &self.buckets) {
            (MetricKind::Counter, Some(_)) => problems.push(
                at(path, "buckets", "a counter has no buckets")
                    .hint("remove buckets, or set kind = \"histogram\""),
            ),
            (MetricKind::Counter, None) => {}
            (MetricKind::Histogram, buckets) => {
                if self.value.is_none() {
                    problems.push(
                        at(path, "value", "a histogram needs a value field")
                            .hint("e.g. value = \"latency_ms\""),
                    );
                }
                let b = buckets.as_deref().unwrap_or_default();
                if b.is_empty()
                    || b.iter().any(|x| !x.is_finite())
                    || b.windows(2).any(|w| w[0] >= w[1])
                {
                    problems.push(
                        at(
                            path,
                            "buckets",
                            "needs finite, strictly ascending upper bounds",
                        )
                        .hint("e.g. buckets = [50, 100, 200, 500]; +Inf is implied"),
                    );
                }
            }
        }
    }
}

/// Entries that share a name must agree on type, help and label names, and differ in their
/// constant labels (else two entries would feed one series).
fn check_families(specs: &[Spec], problems: &mut Vec<Problem>) {
    let label_names = |s: &Spec| {
        let mut n: Vec<String> = s.const_labels.iter().map(|(k, _)| k.clone()).collect();
        n.extend(s.labels.iter().map(|l| format!("#{l}")));
        n.sort();
        n
    };
    for (i, a) in specs.iter().enumerate() {
        let Some(b) = specs[..i].iter().find(|b| b.name == a.name) else {
            continue;
        };
        let same_kind = (a.record == Record::Observe) == (b.record == Record::Observe);
        let problem = if !same_kind || a.help != b.help || label_names(a) != label_names(b) {
            "an earlier metric of this name has another kind, help or label names"
        } else if a.const_labels == b.const_labels {
            "an earlier metric of this name has the same labels: both would feed one series"
        } else {
            continue;
        };
        problems.push(
            Problem::at("metrics", format!("`{}`: {problem}", a.name))
                .hint("entries of one name differ only in const_labels values"),
        );
    }
}

/// Adds `v` to `values`, returning its index.
fn intern(values: &mut Values, v: &str) -> u32 {
    if let Some(i) = values.index.get(v) {
        return *i;
    }
    let i = values.names.len() as u32;
    values.index.insert(v.into(), i);
    values.names.push(v.into());
    i
}

/// Calls `f` with the text of a label value without allocating: strings as they are,
/// integers and booleans as written; `None` for other values.
fn with_text<R>(value: &Value, f: impl FnOnce(&str) -> R) -> Option<R> {
    match value {
        Value::String(s) => Some(f(s)),
        Value::Bool(b) => Some(f(if *b { "true" } else { "false" })),
        Value::Number(n) => {
            let mut buf = itoa::Buffer::new();
            if let Some(i) = n.as_i64() {
                Some(f(buf.format(i)))
            } else if let Some(u) = n.as_u64() {
                Some(f(buf.format(u)))
            } else {
                // serde_json writes floats in their shortest form (at most 24 bytes).
                let mut buf = StackText::default();
                std::fmt::Write::write_fmt(&mut buf, format_args!("{n}")).ok()?;
                Some(f(buf.as_str()))
            }
        }
        _ => None,
    }
}

/// A short text written on the stack; writing past its capacity fails.
#[derive(Default)]
struct StackText {
    buf: [u8; 32],
    len: usize,
}

impl StackText {
    fn as_str(&self) -> &str {
        // Only whole `&str`s are copied in, so the bytes are UTF-8.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The number in a field: a JSON number or a numeric string; `None` when missing, not
/// numeric or not finite.
pub fn numeric(value: Option<&Value>) -> Option<f64> {
    let x = match value? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    x.is_finite().then_some(x)
}

impl MetricsFilter {
    /// The value index of label `i` for `event`, [`ABSENT`] when it has none.
    fn resolve(&self, snap: &Snapshot, i: usize, event: &Event) -> u32 {
        let label = &self.labels[i];
        let text = event.get(&label.field).and_then(|v| {
            with_text(v, |s| {
                if s.len() > MAX_VALUE_LEN {
                    return FOLD;
                }
                let values = &snap.values[i];
                match values.index.get(s) {
                    Some(ix) => *ix,
                    None if values.taken >= label.max_values => FOLD,
                    None => self.add_value(i, s),
                }
            })
        });
        text.or(label.missing).unwrap_or(ABSENT)
    }

    /// Slow path: gives `s` an index if label `i` has room, else folds it.
    #[cold]
    fn add_value(&self, i: usize, s: &str) -> u32 {
        let _serial = self.register.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.snapshot.load_full();
        if let Some(ix) = current.values[i].index.get(s) {
            return *ix;
        }
        if current.values[i].taken >= self.labels[i].max_values {
            return FOLD;
        }
        let mut next = Snapshot::clone(&current);
        next.values[i].taken += 1;
        let ix = intern(&mut next.values[i], s);
        self.snapshot.store(Arc::new(next));
        ix
    }

    /// The series key of metric `spec` for the label indices of this event.
    fn key(&self, spec: &Spec, indices: &[u32; MAX_LABELS]) -> Option<u64> {
        let mut key = 0u64;
        for l in &spec.labels {
            let ix = indices[*l];
            if ix == ABSENT {
                return None;
            }
            key = key * (self.labels[*l].max_values as u64 + 2) + u64::from(ix);
        }
        Some(key)
    }

    /// Slow path: registers the series of metric `m` for these label indices.
    #[cold]
    fn add_series(&self, m: usize, key: u64, indices: &[u32; MAX_LABELS]) -> Series {
        let _serial = self.register.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.snapshot.load_full();
        if let Some(s) = current.series[m].get(&key) {
            return s.clone();
        }
        let spec = &self.specs[m];
        let mut pairs: Vec<(&str, &str)> = spec
            .labels
            .iter()
            .map(|l| {
                let name = &*current.values[*l].names[indices[*l] as usize];
                (self.labels[*l].name.as_str(), name)
            })
            .collect();
        pairs.extend(
            spec.const_labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let r = &self.registry;
        let series = match spec.record {
            Record::Count => Series::Count(r.counter(&spec.name, &spec.help, &pairs)),
            Record::Sum => Series::Sum(r.float_counter(&spec.name, &spec.help, &pairs)),
            Record::Observe => {
                Series::Observe(r.histogram(&spec.name, &spec.help, &pairs, &spec.buckets))
            }
        };
        let mut next = Snapshot::clone(&current);
        next.series[m].insert(key, series.clone());
        self.snapshot.store(Arc::new(next));
        series
    }

    /// What `spec` adds for `event`; `None` skips it (missing, non-numeric or, for a counter,
    /// negative value).
    fn amount(spec: &Spec, event: &Event) -> Option<f64> {
        let Some(path) = &spec.value else {
            return Some(1.0);
        };
        let x = numeric(event.get(path))?;
        (spec.record == Record::Observe || x >= 0.0).then_some(x)
    }
}

impl Filter for MetricsFilter {
    fn apply(&self, event: &mut Event) -> bool {
        let snap = self.snapshot.load();
        let mut indices = [ABSENT; MAX_LABELS];
        for (i, ix) in indices.iter_mut().enumerate().take(self.labels.len()) {
            *ix = self.resolve(&snap, i, event);
        }
        for (m, spec) in self.specs.iter().enumerate() {
            let Some(amount) = Self::amount(spec, event) else {
                continue;
            };
            let Some(key) = self.key(spec, &indices) else {
                continue;
            };
            match snap.series[m].get(&key) {
                Some(series) => series.record(amount),
                None => self.add_series(m, key, &indices).record(amount),
            }
        }
        true
    }
}

#[cfg(test)]
mod tests;
