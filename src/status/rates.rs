//! Events per second in and out, per input and per output: a task samples the event counters
//! of the metrics registry at a fixed interval and keeps the last [`POINTS`] rates of each
//! series in a ring buffer.

use crate::metrics::Registry;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Rates kept per series: 15 minutes at the default 5-second interval.
pub const POINTS: usize = 180;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
}

/// One counter reading: which series, and its value now.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub direction: Direction,
    pub name: String,
    pub total: u64,
}

/// One series as the status page shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub direction: Direction,
    pub name: String,
    /// The counter at the last sample.
    pub total: u64,
    /// Events per second between consecutive samples, oldest first.
    pub per_s: VecDeque<f64>,
}

/// The ring buffers.
#[derive(Debug)]
pub struct Rates {
    every: Duration,
    series: Mutex<Vec<Series>>,
}

impl Rates {
    pub fn new(every: Duration) -> Self {
        Rates {
            every,
            series: Mutex::new(Vec::new()),
        }
    }

    pub fn every(&self) -> Duration {
        self.every
    }

    /// Adds one sample: a series seen for the first time only sets its baseline.
    pub fn record(&self, readings: Vec<Reading>) {
        let secs = self.every.as_secs_f64();
        // Held for one sample every few seconds; readers clone under it.
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for r in readings {
            let at = series
                .iter()
                .position(|s| s.direction == r.direction && s.name == r.name);
            let Some(at) = at else {
                series.push(Series {
                    direction: r.direction,
                    name: r.name,
                    total: r.total,
                    per_s: VecDeque::with_capacity(POINTS),
                });
                continue;
            };
            let s = &mut series[at];
            if s.per_s.len() == POINTS {
                s.per_s.pop_front();
            }
            let rate = r.total.saturating_sub(s.total) as f64 / secs;
            s.per_s.push_back((rate * 100.0).round() / 100.0);
            s.total = r.total;
        }
    }

    /// Every series, inputs first, each group by name.
    pub fn snapshot(&self) -> Vec<Series> {
        let mut out = self
            .series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        out.sort_by(|a, b| {
            (a.direction == Direction::Out)
                .cmp(&(b.direction == Direction::Out))
                .then(a.name.cmp(&b.name))
        });
        out
    }
}

/// The event counters now: events accepted per input, and per output the events it took:
/// documents indexed by an Elasticsearch output, events matched by an email output.
pub fn read(metrics: &Registry) -> Vec<Reading> {
    let mut out = Vec::new();
    let mut add = |direction, family: &str, key: &str, only: Option<(&str, &str)>| {
        for (labels, value) in metrics.series(family) {
            let get = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            if only.is_some_and(|(k, v)| get(k) != Some(v)) {
                continue;
            }
            if let Some(name) = get(key) {
                out.push(Reading {
                    direction,
                    name: name.to_string(),
                    total: value as u64,
                });
            }
        }
    };
    add(Direction::In, "sheepdog_input_events_total", "input", None);
    add(
        Direction::Out,
        "sheepdog_es_documents_total",
        "output",
        Some(("outcome", "indexed")),
    );
    add(
        Direction::Out,
        "sheepdog_email_events_total",
        "output",
        None,
    );
    out
}

/// Samples the counters every `rates.every()` until `shutdown`.
pub fn start(
    rates: Arc<Rates>,
    metrics: Arc<Registry>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(rates.every());
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => rates.record(read(&metrics)),
                _ = shutdown.cancelled() => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(direction: Direction, name: &str, total: u64) -> Reading {
        Reading {
            direction,
            name: name.into(),
            total,
        }
    }

    #[test]
    fn rates_are_differences_over_the_interval_in_a_bounded_ring() {
        let rates = Rates::new(Duration::from_secs(5));
        rates.record(vec![reading(Direction::Out, "es", 0)]);
        rates.record(vec![
            reading(Direction::Out, "es", 50),
            reading(Direction::In, "http", 7),
        ]);
        let s = rates.snapshot();
        assert_eq!(s[0].name, "http");
        assert!(s[0].per_s.is_empty(), "first reading is the baseline");
        assert_eq!(s[1].per_s, [10.0]);
        assert_eq!(s[1].total, 50);
        for i in 0..POINTS as u64 + 20 {
            rates.record(vec![reading(Direction::In, "http", 7 + (i + 1) * 5)]);
        }
        let s = rates.snapshot();
        assert_eq!(s[0].per_s.len(), POINTS);
        assert!(s[0].per_s.iter().all(|&r| r == 1.0));
        // A counter that went backwards (a restarted component) shows 0, not a huge rate.
        rates.record(vec![reading(Direction::In, "http", 0)]);
        assert_eq!(rates.snapshot()[0].per_s.back(), Some(&0.0));
    }

    #[test]
    fn reads_inputs_and_outputs_from_the_registry() {
        let m = Registry::new();
        m.counter("sheepdog_input_events_total", "h", &[("input", "http")])
            .add(3);
        let docs = "sheepdog_es_documents_total";
        m.counter(docs, "h", &[("output", "es"), ("outcome", "indexed")])
            .add(2);
        m.counter(docs, "h", &[("output", "es"), ("outcome", "failed")])
            .add(9);
        m.counter("sheepdog_email_events_total", "h", &[("output", "mail")])
            .add(1);
        assert_eq!(
            read(&m),
            [
                reading(Direction::In, "http", 3),
                reading(Direction::Out, "es", 2),
                reading(Direction::Out, "mail", 1),
            ]
        );
    }
}
