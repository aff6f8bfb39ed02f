//! The memory budget: one limit in bytes (`pipeline.memory_limit`) over everything held for
//! clients — request bodies being read or inflated, Beats windows, decoded events waiting for
//! queue room, events in the queue and documents in the outputs' buffers.
//!
//! Holders take a [`Charge`] before they hold the bytes and give it back by dropping it. Inputs
//! *wait* for room (a withheld Beats ACK, an HTTP request answered 429 once `queue_wait` runs
//! out) so the process never grows past the limit because of them. Outputs cannot wait — a
//! worker blocked on a full budget that only it can empty would never empty it — so they take
//! a [`MemoryBudget::force`] charge: always granted, counted, and it leaves inputs less room.
//! Output buffers are bounded in events on their own, so the overdraft is bounded too.
//!
//! Accounting is a few atomic operations per charge (one per body, window or batch, never per
//! event), and waiting uses one [`Notify`] that every release wakes.

use crate::metrics::{Counter, Gauge, Registry};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The default `pipeline.memory_limit`: 256 MiB.
pub const DEFAULT_LIMIT: u64 = 256 * 1024 * 1024;

/// What the bytes of a charge are held for; each use is a series of
/// `sheepdog_memory_budget_used_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// HTTP request bodies being read, inflated and decoded.
    HttpBody,
    /// Beats windows being read, inflated and decoded.
    BeatsWindow,
    /// Decoded events in the pipeline queue or with the filter workers.
    Queue,
    /// Documents in the outputs' buffers.
    Output,
}

impl Use {
    const ALL: [Use; 4] = [Use::HttpBody, Use::BeatsWindow, Use::Queue, Use::Output];

    fn label(self) -> &'static str {
        match self {
            Use::HttpBody => "http_body",
            Use::BeatsWindow => "beats_window",
            Use::Queue => "queue",
            Use::Output => "output",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The estimated memory of one decoded event whose JSON text is `json_len` bytes: the event
/// itself, its field map and values (about twice the text), and allocator rounding.
pub fn event_bytes(json_len: usize) -> usize {
    std::mem::size_of::<crate::event::Event>() + 192 + 2 * json_len
}

/// A charge larger than the whole limit: it could never be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    pub bytes: usize,
    pub limit: usize,
}

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes exceed the whole memory budget of {} bytes (pipeline.memory_limit)",
            self.bytes, self.limit
        )
    }
}

/// The shared budget; clones share one account.
#[derive(Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    limit: AtomicUsize,
    used: AtomicUsize,
    room: Notify,
    by_use: [Gauge; 4],
    limit_gauge: Gauge,
    waits: Counter,
}

impl MemoryBudget {
    /// A budget of `limit` bytes whose use is reported in `metrics`.
    pub fn new(limit: u64, metrics: &Registry) -> Self {
        let by_use = Use::ALL.map(|u| {
            metrics.gauge(
                "sheepdog_memory_budget_used_bytes",
                "Bytes of the memory budget held, by what holds them",
                &[("use", u.label())],
            )
        });
        let limit_gauge = metrics.gauge(
            "sheepdog_memory_budget_limit_bytes",
            "The memory budget (pipeline.memory_limit)",
            &[],
        );
        let waits = metrics.counter(
            "sheepdog_memory_budget_waits_total",
            "Times an input had to wait for room in the memory budget",
            &[],
        );
        let budget = MemoryBudget {
            inner: Arc::new(Inner {
                limit: AtomicUsize::new(0),
                used: AtomicUsize::new(0),
                room: Notify::new(),
                by_use,
                limit_gauge,
                waits,
            }),
        };
        budget.set_limit(limit);
        budget
    }

    /// A budget reported nowhere, for tests and offline tools.
    pub fn unmetered(limit: u64) -> Self {
        let budget = MemoryBudget {
            inner: Arc::new(Inner {
                limit: AtomicUsize::new(0),
                used: AtomicUsize::new(0),
                room: Notify::new(),
                by_use: Default::default(),
                limit_gauge: Gauge::default(),
                waits: Counter::default(),
            }),
        };
        budget.set_limit(limit);
        budget
    }

    /// Sets the limit (at start, from `pipeline.memory_limit`); waiters re-check.
    pub fn set_limit(&self, limit: u64) {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        self.inner.limit.store(limit, Ordering::Relaxed);
        self.inner.limit_gauge.set(limit as i64);
        self.inner.room.notify_waiters();
    }

    pub fn limit(&self) -> usize {
        self.inner.limit.load(Ordering::Relaxed)
    }

    /// Bytes held now, forced charges included (may exceed the limit).
    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// Bytes that can be charged now without waiting.
    pub fn available(&self) -> usize {
        self.limit().saturating_sub(self.used())
    }

    /// A charge of `bytes` if there is room now.
    pub fn try_charge(&self, bytes: usize, purpose: Use) -> Option<Charge> {
        self.take(bytes).then(|| self.charged(bytes, purpose))
    }

    /// A charge of `bytes`, waiting for room as long as it takes; `TooLarge` at once when
    /// `bytes` exceed the whole limit. Cancel it by dropping the future.
    pub async fn charge(&self, bytes: usize, purpose: Use) -> Result<Charge, TooLarge> {
        self.wait_for(bytes).await?;
        Ok(self.charged(bytes, purpose))
    }

    /// [`charge`](Self::charge), giving up after `wait` (`Ok(None)`).
    pub async fn charge_within(
        &self,
        bytes: usize,
        purpose: Use,
        wait: Duration,
    ) -> Result<Option<Charge>, TooLarge> {
        if let Some(c) = self.try_charge(bytes, purpose) {
            return Ok(Some(c));
        }
        if wait.is_zero() {
            self.too_large(bytes)?;
            return Ok(None);
        }
        match tokio::time::timeout(wait, self.charge(bytes, purpose)).await {
            Ok(result) => result.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// A charge granted whatever the room: for holders that must not wait (outputs).
    pub fn force(&self, bytes: usize, purpose: Use) -> Charge {
        self.inner.used.fetch_add(bytes, Ordering::Relaxed);
        self.charged(bytes, purpose)
    }

    /// An empty charge of `purpose`, to grow later.
    pub fn empty(&self, purpose: Use) -> Charge {
        self.charged(0, purpose)
    }

    fn too_large(&self, bytes: usize) -> Result<(), TooLarge> {
        let limit = self.limit();
        if bytes > limit {
            Err(TooLarge { bytes, limit })
        } else {
            Ok(())
        }
    }

    /// Takes `bytes` from the account if they fit under the limit.
    fn take(&self, bytes: usize) -> bool {
        let limit = self.limit();
        self.inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&after| after <= limit)
            })
            .is_ok()
    }

    /// Waits until `bytes` could be taken, and takes them.
    async fn wait_for(&self, bytes: usize) -> Result<(), TooLarge> {
        let mut counted = false;
        loop {
            self.too_large(bytes)?;
            let room = self.inner.room.notified();
            tokio::pin!(room);
            // Registered before the check, so a release between the check and the wait
            // still wakes this waiter.
            room.as_mut().enable();
            if self.take(bytes) {
                return Ok(());
            }
            if !counted {
                self.inner.waits.inc();
                counted = true;
            }
            room.await;
        }
    }

    fn charged(&self, bytes: usize, purpose: Use) -> Charge {
        self.inner.by_use[purpose.index()].add(bytes as i64);
        Charge {
            budget: self.inner.clone(),
            bytes,
            purpose,
        }
    }
}

impl Inner {
    fn release(&self, bytes: usize, purpose: Use) {
        if bytes == 0 {
            return;
        }
        self.by_use[purpose.index()].sub(bytes as i64);
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.room.notify_waiters();
    }
}

/// Bytes held against the budget until dropped.
pub struct Charge {
    budget: Arc<Inner>,
    bytes: usize,
    purpose: Use,
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Charge({} bytes, {})", self.bytes, self.purpose.label())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes, self.purpose);
    }
}

impl Charge {
    /// A charge of nothing on no shared account, for callers outside a pipeline (tests,
    /// `sheepdog tap`).
    pub fn none() -> Charge {
        MemoryBudget::unmetered(0).empty(Use::Queue)
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn budget(&self) -> MemoryBudget {
        MemoryBudget {
            inner: self.budget.clone(),
        }
    }

    /// Adds `extra` bytes if there is room now.
    pub fn try_grow(&mut self, extra: usize) -> bool {
        match self.budget().try_charge(extra, self.purpose) {
            Some(more) => {
                self.merge(more);
                true
            }
            None => false,
        }
    }

    /// Adds `extra` bytes, waiting for room; `TooLarge` when the charge could never fit.
    pub async fn grow(&mut self, extra: usize) -> Result<(), TooLarge> {
        let more = self.budget().charge(extra, self.purpose).await?;
        self.merge(more);
        Ok(())
    }

    /// Adds `extra` bytes whatever the room.
    pub fn force_grow(&mut self, extra: usize) {
        let more = self.budget().force(extra, self.purpose);
        self.merge(more);
    }

    /// Gives back everything above `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            drop(self.split_off(self.bytes - bytes));
        }
    }

    /// Moves `bytes` (at most all of this charge) into a charge of their own.
    pub fn split_off(&mut self, bytes: usize) -> Charge {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        Charge {
            budget: self.budget.clone(),
            bytes,
            purpose: self.purpose,
        }
    }

    /// Takes over `other`'s bytes (of the same account); they are reported under this
    /// charge's use from now on.
    pub fn merge(&mut self, mut other: Charge) {
        debug_assert!(Arc::ptr_eq(&self.budget, &other.budget));
        if other.purpose != self.purpose {
            other.relabel(self.purpose);
        }
        self.bytes += std::mem::take(&mut other.bytes);
    }

    /// Reports the bytes under `purpose` from now on (a body's bytes becoming queued events).
    pub fn relabel(&mut self, purpose: Use) {
        self.budget.by_use[self.purpose.index()].sub(self.bytes as i64);
        self.budget.by_use[purpose.index()].add(self.bytes as i64);
        self.purpose = purpose;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(metrics: &Registry, purpose: Use) -> i64 {
        metrics
            .value(
                "sheepdog_memory_budget_used_bytes",
                &[("use", purpose.label())],
            )
            .unwrap_or_default() as i64
    }

    #[test]
    fn charges_fit_under_the_limit_and_come_back_when_dropped() {
        let metrics = Registry::new();
        let budget = MemoryBudget::new(100, &metrics);
        let a = budget.try_charge(60, Use::HttpBody).unwrap();
        assert!(budget.try_charge(41, Use::HttpBody).is_none());
        let b = budget.try_charge(40, Use::Queue).unwrap();
        assert_eq!((budget.used(), budget.available()), (100, 0));
        assert_eq!(used(&metrics, Use::HttpBody), 60);
        assert_eq!(used(&metrics, Use::Queue), 40);
        drop(a);
        assert_eq!(budget.used(), 40);
        assert_eq!(used(&metrics, Use::HttpBody), 0);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn forced_charges_overdraw_and_leave_inputs_no_room() {
        let budget = MemoryBudget::unmetered(100);
        let out = budget.force(150, Use::Output);
        assert_eq!(budget.used(), 150);
        assert_eq!(budget.available(), 0);
        assert!(budget.try_charge(1, Use::HttpBody).is_none());
        drop(out);
        assert!(budget.try_charge(100, Use::HttpBody).is_some());
    }

    #[test]
    fn split_merge_shrink_and_relabel_keep_the_account_exact() {
        let metrics = Registry::new();
        let budget = MemoryBudget::new(1000, &metrics);
        let mut body = budget.try_charge(300, Use::HttpBody).unwrap();
        assert!(body.try_grow(200));
        assert!(!body.try_grow(501));
        let mut queued = body.split_off(120);
        queued.relabel(Use::Queue);
        assert_eq!((body.bytes(), queued.bytes()), (380, 120));
        assert_eq!(used(&metrics, Use::HttpBody), 380);
        assert_eq!(used(&metrics, Use::Queue), 120);
        body.shrink_to(80);
        assert_eq!(budget.used(), 200);
        queued.merge(body);
        assert_eq!(used(&metrics, Use::HttpBody), 0);
        assert_eq!(used(&metrics, Use::Queue), 200);
        drop(queued);
        assert_eq!(budget.used(), 0);
        assert_eq!(used(&metrics, Use::Queue), 0);
    }

    #[tokio::test]
    async fn a_waiting_charge_is_granted_when_room_appears() {
        let budget = MemoryBudget::unmetered(100);
        let held = budget.try_charge(90, Use::BeatsWindow).unwrap();
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.charge(50, Use::BeatsWindow).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(held);
        let granted = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("granted once room appeared")
            .unwrap()
            .unwrap();
        assert_eq!(granted.bytes(), 50);
        assert_eq!(budget.used(), 50);
    }

    #[tokio::test]
    async fn waits_are_bounded_and_impossible_charges_fail_at_once() {
        let budget = MemoryBudget::unmetered(100);
        let _held = budget.try_charge(100, Use::HttpBody).unwrap();
        let started = std::time::Instant::now();
        let none = budget
            .charge_within(10, Use::HttpBody, Duration::from_millis(50))
            .await
            .unwrap();
        assert!(none.is_none());
        assert!(started.elapsed() >= Duration::from_millis(50));
        let err = budget.charge(101, Use::HttpBody).await.unwrap_err();
        assert_eq!(
            err,
            TooLarge {
                bytes: 101,
                limit: 100
            }
        );
        assert!(budget
            .charge_within(101, Use::HttpBody, Duration::ZERO)
            .await
            .is_err());
        assert_eq!(budget.used(), 100);
    }

    #[tokio::test]
    async fn many_waiters_all_get_through_as_room_comes_back() {
        let budget = MemoryBudget::unmetered(10);
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let budget = budget.clone();
            tasks.push(tokio::spawn(async move {
                let c = budget.charge(4, Use::HttpBody).await.unwrap();
                assert!(budget.used() <= 10);
                tokio::task::yield_now().await;
                drop(c);
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .unwrap()
                .unwrap();
        }
        assert_eq!(budget.used(), 0);
    }
}
