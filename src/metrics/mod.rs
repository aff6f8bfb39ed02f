//! Counters, gauges and histograms registered once when components are built and updated with
//! relaxed atomics on the hot path; `/metrics` renders them in the Prometheus text format
//! (version 0.0.4) through `prometheus-client`'s encoder.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::{counter, gauge, MetricType};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The `Content-Type` of what [`Registry::render`] writes (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// A monotonically increasing count.
#[derive(Debug, Clone, Default)]
pub struct Counter(counter::Counter);

impl Counter {
    pub fn inc(&self) {
        self.0.inc();
    }
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A monotonically increasing sum of non-negative floats (USD, tokens). An addition is a
/// compare-and-swap loop on one atomic, never a lock.
#[derive(Debug, Clone, Default)]
pub struct FloatCounter(counter::Counter<f64, AtomicU64>);

impl FloatCounter {
    /// Adds `v`; a negative or non-finite `v` would break monotonicity and is ignored.
    pub fn add(&self, v: f64) {
        if v.is_finite() && v >= 0.0 {
            self.0.inc_by(v);
        }
    }
    pub fn get(&self) -> f64 {
        self.0.get()
    }
}

/// A value that goes up and down.
#[derive(Debug, Clone, Default)]
pub struct Gauge(gauge::Gauge);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.set(v);
    }
    pub fn add(&self, v: i64) {
        self.0.inc_by(v);
    }
    pub fn sub(&self, v: i64) {
        self.0.dec_by(v);
    }
    pub fn get(&self) -> i64 {
        self.0.get()
    }
}

/// A histogram with fixed upper bounds (in seconds for latencies). An observation is two
/// relaxed atomic updates (its bucket, then the sum), never a lock, so it suits per-event
/// values. `_count` is rendered as the sum of the bucket counts read, so it always equals the
/// `+Inf` bucket; `_sum` may trail a concurrent observation by one value.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<AtomicHistogram>);

#[derive(Debug)]
struct AtomicHistogram {
    bounds: Box<[f64]>,
    /// Per bucket (not cumulative), one more than `bounds` for `+Inf`.
    counts: Box<[AtomicU64]>,
    /// The bits of the f64 sum.
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        Histogram(Arc::new(AtomicHistogram {
            bounds: bounds.into(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    pub fn observe(&self, value: f64) {
        let h = &self.0;
        // `le` is inclusive; NaN lands in +Inf as it compares false.
        let i = h.bounds.partition_point(|b| *b < value);
        let i = if value.is_nan() { h.bounds.len() } else { i };
        h.counts[i].fetch_add(1, Ordering::Relaxed);
        let mut old = h.sum.load(Ordering::Relaxed);
        loop {
            let new = (f64::from_bits(old) + value).to_bits();
            match h
                .sum
                .compare_exchange_weak(old, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(x) => old = x,
            }
        }
    }

    /// Observations so far, per bucket (not cumulative; the last is `+Inf`).
    pub fn bucket_counts(&self) -> Vec<u64> {
        self.0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.bucket_counts();
        let bounds = self.0.bounds.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(counts.iter().copied()).collect();
        let sum = f64::from_bits(self.0.sum.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(sum, counts.iter().sum(), &buckets, None)
    }
}

/// Latency bounds in seconds used for request timings.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The type of a metric family, which every series of one name shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }

    fn metric_type(self) -> MetricType {
        match self {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
            Kind::Histogram => MetricType::Histogram,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A registration that would make the exposition invalid. Names and label keys come from the
/// code, not from configuration, so the public registration methods panic with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("metric {name} is already registered as a {registered}, it cannot also be a {requested}: one name has one type")]
    TypeConflict {
        name: String,
        registered: Kind,
        requested: Kind,
    },
    #[error("metric name {0:?} is not [a-zA-Z_:][a-zA-Z0-9_:]*")]
    BadName(String),
    #[error("counter {0} must end with _total")]
    CounterSuffix(String),
    #[error("metric {name}: label name {label:?} is not [a-zA-Z_][a-zA-Z0-9_]* or is reserved")]
    BadLabel { name: String, label: String },
}

#[derive(Debug, Clone)]
enum Metric {
    Counter(Counter),
    FloatCounter(FloatCounter),
    Gauge(Gauge),
    Histogram(Histogram),
}

impl Metric {
    /// The value of a counter or gauge; `None` for a histogram, which has no single value.
    fn scalar(&self) -> Option<f64> {
        match self {
            Metric::Counter(c) => Some(c.get() as f64),
            Metric::FloatCounter(c) => Some(c.get()),
            Metric::Gauge(g) => Some(g.get() as f64),
            Metric::Histogram(_) => None,
        }
    }
}

/// Label names and values of one series.
pub type Labels = Vec<(String, String)>;

/// Every series of one metric name: one HELP and TYPE line, then the series in label order.
#[derive(Debug)]
struct Family {
    help: String,
    kind: Kind,
    series: BTreeMap<Labels, Metric>,
}

/// The families by name, shared between the registry and the encoder that renders them.
#[derive(Debug, Default)]
struct Families(Mutex<BTreeMap<String, Family>>);

impl Families {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Family>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, family) in self.lock().iter() {
            // prometheus-client appends the `_total` of counters itself.
            let stem = match family.kind {
                Kind::Counter => name.strip_suffix("_total").unwrap_or(name),
                Kind::Gauge | Kind::Histogram => name,
            };
            let mut descriptor =
                encoder.encode_descriptor(stem, &family.help, None, family.kind.metric_type())?;
            for (labels, metric) in &family.series {
                let series = descriptor.encode_family(labels)?;
                match metric {
                    Metric::Counter(c) => c.0.encode(series)?,
                    Metric::FloatCounter(c) => c.0.encode(series)?,
                    Metric::Gauge(g) => g.0.encode(series)?,
                    Metric::Histogram(h) => h.encode(series)?,
                }
            }
        }
        Ok(())
    }
}

/// The registry. Registration takes a short lock (start-up only); counter and gauge updates
/// never do.
#[derive(Debug)]
pub struct Registry {
    families: Arc<Families>,
    exposition: prometheus_client::registry::Registry,
}

impl Default for Registry {
    fn default() -> Self {
        let families = Arc::new(Families::default());
        let mut exposition = prometheus_client::registry::Registry::default();
        exposition.register_collector(Box::new(families.clone()));
        Self {
            families,
            exposition,
        }
    }
}

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The counter `name` with `labels`, registered on first use. Panics when `name` is taken
    /// by another type or breaks the naming rules (see [`RegisterError`]).
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        let make = || Metric::Counter(Counter::default());
        match self.register(name, help, labels, Kind::Counter, make) {
            Ok(Metric::Counter(c)) => c,
            other => refuse(other),
        }
    }

    /// The float counter `name` with `labels`, registered on first use; panics like
    /// [`Self::counter`]. It shares the counter type, so one family may mix both.
    pub fn float_counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> FloatCounter {
        let make = || Metric::FloatCounter(FloatCounter::default());
        match self.register(name, help, labels, Kind::Counter, make) {
            Ok(Metric::FloatCounter(c)) => c,
            other => refuse(other),
        }
    }

    /// Claims `name` for a family of `kind` with no series yet (it renders as HELP and TYPE
    /// only), or checks that an existing family has that kind. For names that come from
    /// configuration: an error here, not a panic at the first registration.
    pub fn declare(
        &self,
        name: &str,
        help: &str,
        label_names: &[&str],
        kind: Kind,
    ) -> Result<(), RegisterError> {
        let labels: Vec<(&str, &str)> = label_names.iter().map(|l| (*l, "")).collect();
        check_names(name, &labels, kind)?;
        claim(&mut self.families.lock(), name, help, kind).map(|_| ())
    }

    /// The gauge `name` with `labels`, registered on first use; panics like [`Self::counter`].
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        let make = || Metric::Gauge(Gauge::default());
        match self.register(name, help, labels, Kind::Gauge, make) {
            Ok(Metric::Gauge(g)) => g,
            other => refuse(other),
        }
    }

    /// The histogram `name` with `labels` and upper `bounds` (the `+Inf` bucket is implied),
    /// registered on first use; panics like [`Self::counter`].
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
    ) -> Histogram {
        let make = || Metric::Histogram(Histogram::new(bounds));
        match self.register(name, help, labels, Kind::Histogram, make) {
            Ok(Metric::Histogram(h)) => h,
            other => refuse(other),
        }
    }

    /// Finds the series `name` + `labels` or adds it; the first registration of a name sets its
    /// help text and type.
    fn register(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        kind: Kind,
        make: impl FnOnce() -> Metric,
    ) -> Result<Metric, RegisterError> {
        check_names(name, labels, kind)?;
        let mut families = self.families.lock();
        let family = claim(&mut families, name, help, kind)?;
        Ok(family
            .series
            .entry(owned(labels))
            .or_insert_with(make)
            .clone())
    }

    /// The value of a counter or gauge (`None` for a histogram), for tests and `/health`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let families = self.families.lock();
        families.get(name)?.series.get(&owned(labels))?.scalar()
    }

    /// Every counter and gauge series of `name` with its labels and value, in label order
    /// (empty for an unknown name or a histogram), for the status page.
    pub fn series(&self, name: &str) -> Vec<(Labels, f64)> {
        let families = self.families.lock();
        let Some(family) = families.get(name) else {
            return Vec::new();
        };
        family
            .series
            .iter()
            .filter_map(|(labels, metric)| Some((labels.clone(), metric.scalar()?)))
            .collect()
    }

    /// Renders every metric in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_text::encode(&mut out, &self.exposition) {
            tracing::error!(error = %e, "cannot render metrics");
        }
        out
    }
}

/// The family `name`, created with `help` and `kind` when new; refused when it exists with
/// another kind.
fn claim<'a>(
    families: &'a mut BTreeMap<String, Family>,
    name: &str,
    help: &str,
    kind: Kind,
) -> Result<&'a mut Family, RegisterError> {
    let family = families.entry(name.to_string()).or_insert_with(|| Family {
        help: help.to_string(),
        kind,
        series: BTreeMap::new(),
    });
    if family.kind != kind {
        return Err(RegisterError::TypeConflict {
            name: name.to_string(),
            registered: family.kind,
            requested: kind,
        });
    }
    Ok(family)
}

/// The labels as the key a family keeps its series under.
fn owned(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Panics with the reason a registration was refused.
#[track_caller]
fn refuse<T>(result: Result<Metric, RegisterError>) -> T {
    match result {
        Err(e) => panic!("{e}"),
        Ok(m) => unreachable!("register returned a {m:?} of another kind than asked"),
    }
}

/// Checks the metric name, the `_total` suffix of counters and the label names against the
/// exposition rules (`le` is the histogram bucket label, `__` names are reserved).
fn check_names(name: &str, labels: &[(&str, &str)], kind: Kind) -> Result<(), RegisterError> {
    let first_ok = |c: char| c.is_ascii_alphabetic() || c == '_';
    let name_ok = name.starts_with(|c: char| first_ok(c) || c == ':')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if !name_ok {
        return Err(RegisterError::BadName(name.to_string()));
    }
    if kind == Kind::Counter && !name.ends_with("_total") {
        return Err(RegisterError::CounterSuffix(name.to_string()));
    }
    for (label, _) in labels {
        let ok = label.starts_with(first_ok)
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !label.starts_with("__")
            && !(kind == Kind::Histogram && *label == "le");
        if !ok {
            return Err(RegisterError::BadLabel {
                name: name.to_string(),
                label: label.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
