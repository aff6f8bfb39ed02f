//! End-to-end acknowledgements. A [`Hold`] travels with events from the input that received
//! them, through the queue's batches and the filter workers, into every output that must
//! confirm them. Each holder confirms its clone once it is done with the events (a worker once
//! it handed them to every output, the Elasticsearch output once the bulk items succeeded or
//! were dead-lettered). When the last clone is gone, the input's callback learns the outcome:
//! `true` when every clone was confirmed, `false` when one was dropped unconfirmed (delivery
//! failed, or was cut short by the shutdown deadline).
//!
//! The persisted queue uses it to let records go only once delivered; an input that waits for
//! delivery before answering its client awaits the outcome.
//!
//! Cost: one reference-count increment per batch and per output chunk, never per event.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

type Settle = Box<dyn FnOnce(bool) + Send + 'static>;

struct Tracked {
    failed: AtomicBool,
    on_settle: Mutex<Option<Settle>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let settle = self
            .on_settle
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(settle) = settle {
            settle(!self.failed.load(Ordering::Acquire));
        }
    }
}

/// One holder's share of the responsibility for some events: confirm it once they are
/// delivered; dropping it unconfirmed marks the events undelivered.
pub struct Hold {
    tracked: Arc<Tracked>,
    confirmed: bool,
}

impl Hold {
    /// A hold whose outcome `on_settle` receives once every clone is confirmed or dropped.
    pub fn new(on_settle: impl FnOnce(bool) + Send + 'static) -> Hold {
        Hold {
            tracked: Arc::new(Tracked {
                failed: AtomicBool::new(false),
                on_settle: Mutex::new(Some(Box::new(on_settle))),
            }),
            confirmed: false,
        }
    }

    /// A hold and a receiver of its outcome, for an input that answers its client only once
    /// the events are delivered.
    pub fn awaitable() -> (Hold, tokio::sync::oneshot::Receiver<bool>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let hold = Hold::new(move |ok| {
            let _ = tx.send(ok);
        });
        (hold, rx)
    }

    /// This holder is done with the events: they were delivered (or handed on with a clone).
    pub fn confirm(mut self) {
        self.confirmed = true;
    }

    /// Marks the events undelivered at once; the outcome is `false` whatever other clones do.
    pub fn fail(self) {
        drop(self);
    }
}

impl Clone for Hold {
    fn clone(&self) -> Hold {
        Hold {
            tracked: Arc::clone(&self.tracked),
            confirmed: false,
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.confirmed {
            self.tracked.failed.store(true, Ordering::Release);
        }
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold")
            .field("holders", &Arc::strong_count(&self.tracked))
            .finish()
    }
}

/// A hold for events an input answers its client about only once they are delivered, and the
/// receiver of the outcome. `inner` (the persisted queue's record) settles with it.
pub fn for_delivery(inner: Option<Hold>) -> (Hold, tokio::sync::oneshot::Receiver<bool>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let hold = Hold::new(move |delivered| {
        match inner {
            Some(h) if delivered => h.confirm(),
            Some(h) => h.fail(),
            None => {}
        }
        let _ = tx.send(delivered);
    });
    (hold, rx)
}

/// Confirms an optional hold (events carried without one need nothing).
pub fn confirm(hold: Option<Hold>) {
    if let Some(h) = hold {
        h.confirm();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder() -> (Hold, Arc<Mutex<Vec<bool>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (Hold::new(move |ok| s.lock().unwrap().push(ok)), seen)
    }

    #[test]
    fn settles_true_once_every_clone_is_confirmed() {
        let (hold, seen) = recorder();
        let a = hold.clone();
        let b = a.clone();
        hold.confirm();
        a.confirm();
        assert!(seen.lock().unwrap().is_empty(), "one clone is still out");
        b.confirm();
        assert_eq!(*seen.lock().unwrap(), [true]);
    }

    #[test]
    fn one_clone_dropped_unconfirmed_settles_false() {
        let (hold, seen) = recorder();
        let a = hold.clone();
        drop(a);
        hold.confirm();
        assert_eq!(*seen.lock().unwrap(), [false]);
        let (hold, seen) = recorder();
        hold.fail();
        assert_eq!(*seen.lock().unwrap(), [false]);
    }

    #[tokio::test]
    async fn a_delivery_hold_settles_the_inner_one_with_it() {
        let (inner, seen) = recorder();
        let (hold, outcome) = for_delivery(Some(inner));
        hold.clone().confirm();
        hold.confirm();
        assert!(outcome.await.unwrap());
        assert_eq!(*seen.lock().unwrap(), [true]);
        let (inner, seen) = recorder();
        let (hold, outcome) = for_delivery(Some(inner));
        drop(hold);
        assert!(!outcome.await.unwrap());
        assert_eq!(*seen.lock().unwrap(), [false]);
    }

    #[tokio::test]
    async fn an_awaitable_hold_reports_its_outcome() {
        let (hold, outcome) = Hold::awaitable();
        let c = hold.clone();
        tokio::spawn(async move { c.confirm() });
        hold.confirm();
        assert!(outcome.await.unwrap());
        let (hold, outcome) = Hold::awaitable();
        drop(hold);
        assert!(!outcome.await.unwrap());
    }
}
