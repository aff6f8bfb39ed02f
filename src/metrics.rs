//! Counters, gauges and histograms registered once when components are built, updated with
//! relaxed atomics on the hot path, and rendered in the Prometheus text format for `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A monotonically increasing count.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn add(&self, v: i64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    pub fn sub(&self, v: i64) {
        self.0.fetch_sub(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram with fixed upper bounds (in seconds for latencies).
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    bounds: Vec<f64>,
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum in microseconds-of-unit to keep it atomic.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, value: f64) {
        let inner = &self.0;
        let idx = inner
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(inner.bounds.len());
        inner.buckets[idx].fetch_add(1, Ordering::Relaxed);
        inner.count.fetch_add(1, Ordering::Relaxed);
        inner
            .sum_micros
            .fetch_add((value.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }
}

/// Latency bounds in seconds used for request timings.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Clone)]
enum Metric {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

#[derive(Debug)]
struct Entry {
    name: String,
    help: String,
    labels: String,
    metric: Metric,
}

/// The registry. Registration takes a short lock (start-up only); updates never do.
#[derive(Debug, Default)]
pub struct Registry {
    entries: Mutex<Vec<Entry>>,
}

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        if let Some(Metric::Counter(c)) = self.find(name, labels) {
            return c;
        }
        let c = Counter::default();
        self.register(name, help, labels, Metric::Counter(c.clone()));
        c
    }

    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        if let Some(Metric::Gauge(g)) = self.find(name, labels) {
            return g;
        }
        let g = Gauge::default();
        self.register(name, help, labels, Metric::Gauge(g.clone()));
        g
    }

    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
    ) -> Histogram {
        if let Some(Metric::Histogram(h)) = self.find(name, labels) {
            return h;
        }
        let h = Histogram(Arc::new(HistogramInner {
            bounds: bounds.to_vec(),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }));
        self.register(name, help, labels, Metric::Histogram(h.clone()));
        h
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<Metric> {
        let labels = format_labels(labels);
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .find(|e| e.name == name && e.labels == labels)
            .map(|e| e.metric.clone())
    }

    fn register(&self, name: &str, help: &str, labels: &[(&str, &str)], metric: Metric) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.push(Entry {
            name: name.to_string(),
            help: help.to_string(),
            labels: format_labels(labels),
            metric,
        });
    }

    /// The value of a counter or gauge, for tests and `/health`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.find(name, labels)? {
            Metric::Counter(c) => Some(c.get() as f64),
            Metric::Gauge(g) => Some(g.get() as f64),
            Metric::Histogram(h) => Some(h.count() as f64),
        }
    }

    /// Renders every metric in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut order: Vec<&Entry> = entries.iter().collect();
        order.sort_by(|a, b| a.name.cmp(&b.name).then(a.labels.cmp(&b.labels)));
        let mut out = String::with_capacity(order.len() * 96);
        let mut last_name = "";
        for e in order {
            if e.name != last_name {
                let kind = match e.metric {
                    Metric::Counter(_) => "counter",
                    Metric::Gauge(_) => "gauge",
                    Metric::Histogram(_) => "histogram",
                };
                let _ = writeln!(out, "# HELP {} {}", e.name, e.help);
                let _ = writeln!(out, "# TYPE {} {}", e.name, kind);
                last_name = &e.name;
            }
            let braces = |extra: &str| -> String {
                match (e.labels.is_empty(), extra.is_empty()) {
                    (true, true) => String::new(),
                    (true, false) => format!("{{{extra}}}"),
                    (false, true) => format!("{{{}}}", e.labels),
                    (false, false) => format!("{{{},{extra}}}", e.labels),
                }
            };
            match &e.metric {
                Metric::Counter(c) => {
                    let _ = writeln!(out, "{}{} {}", e.name, braces(""), c.get());
                }
                Metric::Gauge(g) => {
                    let _ = writeln!(out, "{}{} {}", e.name, braces(""), g.get());
                }
                Metric::Histogram(h) => {
                    let mut cumulative = 0;
                    for (i, bound) in h.0.bounds.iter().enumerate() {
                        cumulative += h.0.buckets[i].load(Ordering::Relaxed);
                        let _ = writeln!(
                            out,
                            "{}_bucket{} {}",
                            e.name,
                            braces(&format!("le=\"{bound}\"")),
                            cumulative
                        );
                    }
                    let _ = writeln!(
                        out,
                        "{}_bucket{} {}",
                        e.name,
                        braces("le=\"+Inf\""),
                        h.count()
                    );
                    let sum = h.0.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
                    let _ = writeln!(out, "{}_sum{} {}", e.name, braces(""), sum);
                    let _ = writeln!(out, "{}_count{} {}", e.name, braces(""), h.count());
                }
            }
        }
        out
    }
}

fn format_labels(labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let escaped = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(out, "{k}=\"{escaped}\"");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let r = Registry::new();
        let c = r.counter(
            "sheepdog_events_in_total",
            "Events accepted",
            &[("input", "http")],
        );
        c.add(3);
        // registering the same name and labels again shares the counter
        r.counter(
            "sheepdog_events_in_total",
            "Events accepted",
            &[("input", "http")],
        )
        .inc();
        r.gauge("sheepdog_queue_depth", "Events queued", &[]).set(7);
        let h = r.histogram(
            "sheepdog_bulk_seconds",
            "Bulk latency",
            &[("output", "es")],
            &[0.1, 1.0],
        );
        h.observe(0.05);
        h.observe(2.0);
        let text = r.render();
        assert!(
            text.contains("sheepdog_events_in_total{input=\"http\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE sheepdog_queue_depth gauge\nsheepdog_queue_depth 7\n"),
            "{text}"
        );
        assert!(
            text.contains("sheepdog_bulk_seconds_bucket{output=\"es\",le=\"0.1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("sheepdog_bulk_seconds_bucket{output=\"es\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert_eq!(
            r.value("sheepdog_events_in_total", &[("input", "http")]),
            Some(4.0)
        );
    }
}
