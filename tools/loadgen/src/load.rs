//! Run control shared by the HTTP and Beats senders: how many events are left (count, duration or
//! until interrupted), per-connection pacing for a fixed rate, counters and the final summary.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stats;

/// What the whole run may still send. Connections claim events in chunks, so the total is exact.
pub struct Budget {
    remaining: AtomicU64,
    duration: Option<Duration>,
    /// Set when sending begins, so start-up time does not eat into `duration`.
    deadline: std::sync::OnceLock<Instant>,
    stop: AtomicBool,
}

impl Budget {
    pub fn new(count: Option<u64>, duration: Option<Duration>) -> Self {
        Self {
            remaining: AtomicU64::new(count.unwrap_or(u64::MAX)),
            duration,
            deadline: std::sync::OnceLock::new(),
            stop: AtomicBool::new(false),
        }
    }

    pub fn start(&self) {
        if let Some(d) = self.duration {
            let _ = self.deadline.set(Instant::now() + d);
        }
    }

    /// Claims up to `max` events; 0 means the run is over.
    pub fn claim(&self, max: usize) -> usize {
        if self.stop.load(Ordering::Relaxed)
            || self.deadline.get().is_some_and(|d| Instant::now() >= *d)
        {
            return 0;
        }
        let mut cur = self.remaining.load(Ordering::Relaxed);
        loop {
            let n = cur.min(max as u64);
            if n == 0 {
                return 0;
            }
            match self.remaining.compare_exchange_weak(
                cur,
                cur - n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return n as usize,
                Err(actual) => cur = actual,
            }
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Paces one connection at `rate` events/s; `None` means full speed.
pub struct Pacer {
    per_event: Option<Duration>,
    next: Instant,
}

impl Pacer {
    pub fn new(rate: Option<f64>) -> Self {
        Self {
            per_event: rate
                .filter(|r| *r > 0.0)
                .map(|r| Duration::from_secs_f64(1.0 / r)),
            next: Instant::now(),
        }
    }

    /// Paces connection `index` of `connections` that share a rate, each at `rate` events/s
    /// in sends of `chunk` events. Connection `index` starts `index / connections` of its send
    /// interval late, so the connections take turns: at 20,000 events/s, 4 connections and
    /// 1000-event bodies the target gets one body every 50 ms, not four at once every 200 ms.
    pub fn staggered(rate: Option<f64>, chunk: usize, index: usize, connections: usize) -> Self {
        let mut p = Self::new(rate);
        if let Some(per) = p.per_event {
            let interval = per * chunk.min(u32::MAX as usize) as u32;
            p.next += interval.mul_f64(index as f64 / connections.max(1) as f64);
        }
        p
    }

    /// Waits until `events` more may be sent.
    pub async fn wait(&mut self, events: usize) {
        let Some(per) = self.per_event else { return };
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep_until(self.next.into()).await;
        } else if now - self.next > Duration::from_secs(1) {
            // Fell behind by more than a second (slow target): do not burst to catch up.
            self.next = now;
        }
        self.next += per * events as u32;
    }
}

/// Counters updated by every connection.
pub struct Counters {
    pub events_ok: AtomicU64,
    pub events_failed: AtomicU64,
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub bytes: AtomicU64,
    /// Responses by HTTP status (index = status code), or Beats windows acked under index 200.
    statuses: Vec<AtomicU64>,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            events_ok: AtomicU64::new(0),
            events_failed: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            statuses: (0..600).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Counters {
    pub fn status(&self, code: u16) {
        if let Some(c) = self.statuses.get(code as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn statuses_json(&self) -> String {
        let parts: Vec<String> = self
            .statuses
            .iter()
            .enumerate()
            .filter_map(|(code, c)| {
                let n = c.load(Ordering::Relaxed);
                (n > 0).then(|| format!(r#""{code}":{n}"#))
            })
            .collect();
        format!("{{{}}}", parts.join(","))
    }
}

pub struct Run {
    pub mode: &'static str,
    pub budget: Budget,
    pub counters: Counters,
    created: Instant,
    /// Wall clock and CPU seconds when sending began, after the pools were built.
    begun: std::sync::OnceLock<(Instant, f64)>,
}

impl Run {
    pub fn new(mode: &'static str, budget: Budget) -> Arc<Self> {
        Arc::new(Self {
            mode,
            budget,
            counters: Counters::default(),
            created: Instant::now(),
            begun: std::sync::OnceLock::new(),
        })
    }

    /// Marks the end of set-up: rates and CPU in the summary count from here.
    pub fn begin(&self) {
        let cpu = stats::read_proc("self").map(|p| p.cpu_s()).unwrap_or(0.0);
        let _ = self.begun.set((Instant::now(), cpu));
        self.budget.start();
    }

    fn began(&self) -> (Instant, f64) {
        self.begun.get().copied().unwrap_or((self.created, 0.0))
    }

    /// One JSON line: what was delivered, how fast, and what it cost this process.
    pub fn summary(&self) -> String {
        let c = &self.counters;
        let (started, cpu_at_start) = self.began();
        let elapsed = started.elapsed().as_secs_f64();
        let ok = c.events_ok.load(Ordering::Relaxed);
        let proc = stats::read_proc("self").ok();
        let cpu = proc.map(|p| p.cpu_s() - cpu_at_start).unwrap_or(0.0);
        format!(
            r#"{{"mode":"{}","setup_s":{:.3},"events":{},"events_failed":{},"requests":{},"retries":{},"bytes":{},"elapsed_s":{:.3},"events_per_s":{:.0},"statuses":{},"cpu_s":{:.3},"cpu_pct":{:.1},"vm_hwm_kb":{}}}"#,
            self.mode,
            (started - self.created).as_secs_f64(),
            ok,
            c.events_failed.load(Ordering::Relaxed),
            c.requests.load(Ordering::Relaxed),
            c.retries.load(Ordering::Relaxed),
            c.bytes.load(Ordering::Relaxed),
            elapsed,
            ok as f64 / elapsed.max(1e-9),
            c.statuses_json(),
            cpu,
            100.0 * cpu / elapsed.max(1e-9),
            proc.map(|p| p.vm_hwm_kb).unwrap_or(0),
        )
    }

    /// Prints a progress line to stderr every `interval` until the run ends.
    pub fn spawn_reporter(self: &Arc<Self>, interval: Option<Duration>) {
        let Some(interval) = interval.filter(|d| !d.is_zero()) else {
            return;
        };
        let run = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            let mut last = 0;
            loop {
                tick.tick().await;
                let ok = run.counters.events_ok.load(Ordering::Relaxed);
                eprintln!(
                    r#"{{"t_s":{:.1},"events":{},"events_per_s":{:.0}}}"#,
                    run.began().0.elapsed().as_secs_f64(),
                    ok,
                    (ok - last) as f64 / interval.as_secs_f64()
                );
                last = ok;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staggered_connections_take_turns() {
        // 5000 events/s per connection, 1000-event sends: one send per 200 ms per connection,
        // so four connections start 0, 50, 100 and 150 ms apart.
        let starts: Vec<Duration> = (0..4)
            .map(|i| {
                let before = Instant::now();
                let p = Pacer::staggered(Some(5000.0), 1000, i, 4);
                p.next.saturating_duration_since(before)
            })
            .collect();
        for (i, d) in starts.iter().enumerate() {
            let want = Duration::from_millis(50 * i as u64);
            assert!(
                d.abs_diff(want) < Duration::from_millis(5),
                "connection {i} starts after {d:?}, want {want:?}"
            );
        }
        assert_eq!(
            Pacer::staggered(None, 1000, 3, 4).per_event,
            None,
            "full speed has no pacing"
        );
    }

    #[test]
    fn budget_hands_out_exactly_the_count() {
        let b = Budget::new(Some(2500), None);
        let mut got = vec![];
        loop {
            match b.claim(1000) {
                0 => break,
                n => got.push(n),
            }
        }
        assert_eq!(got, vec![1000, 1000, 500]);
        let b = Budget::new(None, None);
        assert_eq!(b.claim(7), 7);
        b.stop();
        assert_eq!(b.claim(7), 0);
    }
}
