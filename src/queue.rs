//! The bounded queue between inputs and filter workers, bounded in events (not batches) by a
//! semaphore. Inputs either wait for room (`send`, Beats: the ACK is withheld meanwhile) or
//! fail at once (`try_send`, HTTP: 429). A batch holds its permits until its events have been
//! handed to every output, so queue depth counts events not yet delivered onward. Events travel
//! with their [`Charge`] on the memory budget: the bytes given with them stay accounted until
//! the batch is dropped.

use crate::ack::Hold;
use crate::budget::{Charge, Use};
use crate::event::Event;
use crate::metrics::Gauge;
use std::sync::Arc;
use tokio::sync::{mpsc, Mutex, OwnedSemaphorePermit, Semaphore};

/// Events travelling together, with their share of the queue's capacity.
pub struct Batch {
    pub events: Vec<Event>,
    /// Which input produced the batch (for logs).
    pub source: Arc<str>,
    /// The input's acknowledgement for these events, confirmed by the worker once every
    /// output took them (outputs that confirm later hold clones).
    pub hold: Option<crate::ack::Hold>,
    _permit: OwnedSemaphorePermit,
    _charge: Charge,
    depth: Gauge,
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.depth.sub(self.events_accounted());
    }
}

impl Batch {
    fn events_accounted(&self) -> i64 {
        self._permit.num_permits() as i64
    }
}

/// Why events were not queued; the events are handed back.
#[derive(Debug)]
pub enum QueueError {
    /// Not enough room right now.
    Full(Vec<Event>),
    /// The pipeline is shutting down.
    Closed(Vec<Event>),
}

#[derive(Clone)]
pub struct QueueSender {
    tx: mpsc::Sender<Batch>,
    permits: Arc<Semaphore>,
    capacity: usize,
    batch_size: usize,
    depth: Gauge,
    /// The persisted queue inputs write to before they queue, when there is one.
    journal: Option<Arc<crate::journal::Journal>>,
    /// `acknowledge = "delivered"`: inputs answer once the outputs confirmed, waiting for HTTP
    /// at most this long.
    delivered: Option<std::time::Duration>,
}

pub struct QueueReceiver {
    rx: Mutex<mpsc::Receiver<Batch>>,
}

/// A queue holding at most `capacity` events, handed on in batches of at most `batch_size`.
pub fn bounded(
    capacity: usize,
    batch_size: usize,
    depth: Gauge,
) -> (QueueSender, Arc<QueueReceiver>) {
    let capacity = capacity.max(1);
    let (tx, rx) = mpsc::channel(capacity);
    (
        QueueSender {
            tx,
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            batch_size: batch_size.max(1),
            depth,
            journal: None,
            delivered: None,
        },
        Arc::new(QueueReceiver { rx: Mutex::new(rx) }),
    )
}

impl QueueSender {
    /// The sender with inputs writing to `journal` before they queue.
    pub fn with_journal(mut self, journal: Option<Arc<crate::journal::Journal>>) -> Self {
        self.journal = journal;
        self
    }

    /// The sender with inputs answering only once events are delivered (HTTP waiting at most
    /// `timeout`).
    pub fn acknowledging_delivery(mut self, timeout: Option<std::time::Duration>) -> Self {
        self.delivered = timeout;
        self
    }

    /// `Some(timeout)` when inputs answer only once the outputs confirmed delivery.
    pub fn delivery_wait(&self) -> Option<std::time::Duration> {
        self.delivered
    }

    /// The persisted queue, when the pipeline has one: inputs write a record of what they
    /// queue to it first and answer their clients once it is written.
    pub fn journal(&self) -> Option<&Arc<crate::journal::Journal>> {
        self.journal.as_ref()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Events currently queued or being processed.
    pub fn depth(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    /// Queues all `events` or none: fails at once when there is not room for all of them.
    /// On success `charge`'s bytes travel with the events (it is left empty); on failure it
    /// is untouched.
    pub fn try_send(
        &self,
        source: &Arc<str>,
        events: Vec<Event>,
        charge: &mut Charge,
    ) -> Result<(), QueueError> {
        if events.is_empty() {
            return Ok(());
        }
        if events.len() > self.capacity {
            return Err(QueueError::Full(events));
        }
        let permit = match self
            .permits
            .clone()
            .try_acquire_many_owned(events.len() as u32)
        {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(QueueError::Full(events)),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(QueueError::Closed(events)),
        };
        self.push_chunks(source, events, permit, charge, None)
    }

    /// Takes room for `events` events now, before they exist, or fails at once (`Full` or
    /// `Closed`, holding no events). The HTTP input reserves a body's line count before it
    /// decodes: a full queue refuses the body before the decode spends CPU and memory on it,
    /// and decoded events never exceed the queue's capacity.
    pub fn try_reserve(&self, events: usize) -> Result<Reservation, QueueError> {
        if events > self.capacity {
            return Err(QueueError::Full(Vec::new()));
        }
        match self.permits.clone().try_acquire_many_owned(events as u32) {
            Ok(permit) => Ok(Reservation {
                permit,
                sender: self.clone(),
            }),
            Err(tokio::sync::TryAcquireError::NoPermits) => Err(QueueError::Full(Vec::new())),
            Err(tokio::sync::TryAcquireError::Closed) => Err(QueueError::Closed(Vec::new())),
        }
    }

    /// [`try_reserve`](Self::try_reserve), waiting up to `wait` for room first. A client kept
    /// waiting a moment costs its raw body only (nothing is decoded yet), and is cheaper than a
    /// 429 that makes it back off and send the whole body again.
    pub async fn reserve_within(
        &self,
        events: usize,
        wait: std::time::Duration,
    ) -> Result<Reservation, QueueError> {
        match self.try_reserve(events) {
            Err(QueueError::Full(none)) if events <= self.capacity => {
                let acquire = self.permits.clone().acquire_many_owned(events as u32);
                match tokio::time::timeout(wait, acquire).await {
                    Ok(Ok(permit)) => Ok(Reservation {
                        permit,
                        sender: self.clone(),
                    }),
                    Ok(Err(_)) => Err(QueueError::Closed(none)),
                    Err(_) => Err(QueueError::Full(none)),
                }
            }
            other => other,
        }
    }

    /// Queues `events`, waiting for room. Events larger than the whole queue go in chunks,
    /// each with its share of `charge`; what is left of it on failure covers the events
    /// handed back.
    pub async fn send(
        &self,
        source: &Arc<str>,
        events: Vec<Event>,
        charge: &mut Charge,
    ) -> Result<(), QueueError> {
        self.send_held(source, events, charge, None).await
    }

    /// [`send`](Self::send), every batch carrying a clone of `hold`.
    pub async fn send_held(
        &self,
        source: &Arc<str>,
        mut events: Vec<Event>,
        charge: &mut Charge,
        hold: Option<Hold>,
    ) -> Result<(), QueueError> {
        while !events.is_empty() {
            let take = events.len().min(self.capacity);
            let rest = if take < events.len() {
                events.split_off(take)
            } else {
                Vec::new()
            };
            let permit = match self.permits.clone().acquire_many_owned(take as u32).await {
                Ok(p) => p,
                Err(_) => {
                    events.extend(rest);
                    return Err(QueueError::Closed(events));
                }
            };
            let mut share = share_of(charge, take, take + rest.len());
            if let Err(e) = self.push_chunks(source, events, permit, &mut share, hold.clone()) {
                charge.merge(share);
                return Err(match e {
                    QueueError::Closed(mut back) => {
                        back.extend(rest);
                        QueueError::Closed(back)
                    }
                    full => full,
                });
            }
            events = rest;
        }
        crate::ack::confirm(hold);
        Ok(())
    }

    /// Sends events whose room `permit` holds, in batches of at most `batch_size`, each with
    /// its share of `charge` (left empty on success) and a clone of `hold`.
    fn push_chunks(
        &self,
        source: &Arc<str>,
        mut events: Vec<Event>,
        mut permit: OwnedSemaphorePermit,
        charge: &mut Charge,
        hold: Option<Hold>,
    ) -> Result<(), QueueError> {
        self.depth.add(events.len() as i64);
        charge.relabel(Use::Queue);
        while !events.is_empty() {
            let rest = if events.len() > self.batch_size {
                events.split_off(self.batch_size)
            } else {
                Vec::new()
            };
            let chunk_permit = if rest.is_empty() {
                std::mem::replace(
                    &mut permit,
                    self.permits
                        .clone()
                        .try_acquire_many_owned(0)
                        .expect("zero permits are always available"),
                )
            } else {
                permit
                    .split(events.len())
                    .expect("permit covers every event of the chunk")
            };
            let chunk_charge = share_of(charge, events.len(), events.len() + rest.len());
            let batch = Batch {
                events,
                source: source.clone(),
                hold: hold.clone(),
                _permit: chunk_permit,
                _charge: chunk_charge,
                depth: self.depth.clone(),
            };
            // The channel holds as many slots as the semaphore has permits, so a batch that got
            // its permits always finds a slot; failure means the receiver is gone.
            if let Err(e) = self.tx.try_send(batch) {
                let mut batch = match e {
                    mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => b,
                };
                let mut back = std::mem::take(&mut batch.events);
                back.extend(rest);
                charge.merge(std::mem::replace(&mut batch._charge, Charge::none()));
                return Err(QueueError::Closed(back));
            }
            events = rest;
        }
        crate::ack::confirm(hold);
        Ok(())
    }
}

/// Room held in the queue for events being produced; dropping it gives the room back.
pub struct Reservation {
    permit: OwnedSemaphorePermit,
    sender: QueueSender,
}

impl Reservation {
    /// Events this reservation has room for.
    pub fn events(&self) -> usize {
        self.permit.num_permits()
    }

    /// Queues `events` in the reserved room, giving back what they do not use; more events
    /// than reserved need the difference free now, otherwise nothing is queued (`Full`).
    pub fn send(
        self,
        source: &Arc<str>,
        events: Vec<Event>,
        charge: &mut Charge,
    ) -> Result<(), QueueError> {
        self.send_held(source, events, charge, None)
    }

    /// [`send`](Self::send), every batch carrying a clone of `hold`.
    pub fn send_held(
        mut self,
        source: &Arc<str>,
        events: Vec<Event>,
        charge: &mut Charge,
        hold: Option<Hold>,
    ) -> Result<(), QueueError> {
        let reserved = self.permit.num_permits();
        let permit = if events.len() <= reserved {
            if events.is_empty() {
                crate::ack::confirm(hold);
                return Ok(());
            }
            // The rest stays in `self.permit` and is released when it drops.
            self.permit
                .split(events.len())
                .expect("the reservation covers the events")
        } else {
            if events.len() > self.sender.capacity {
                return Err(QueueError::Full(events));
            }
            match self
                .sender
                .permits
                .clone()
                .try_acquire_many_owned((events.len() - reserved) as u32)
            {
                Ok(extra) => {
                    self.permit.merge(extra);
                    self.permit
                }
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    return Err(QueueError::Full(events))
                }
                Err(tokio::sync::TryAcquireError::Closed) => {
                    return Err(QueueError::Closed(events))
                }
            }
        };
        self.sender
            .push_chunks(source, events, permit, charge, hold)
    }
}

/// The part of `charge` that `part` of `whole` events carry: all of it for the last part.
fn share_of(charge: &mut Charge, part: usize, whole: usize) -> Charge {
    if part >= whole {
        return charge.split_off(charge.bytes());
    }
    let bytes = (charge.bytes() as u128 * part as u128 / whole.max(1) as u128) as usize;
    charge.split_off(bytes)
}

impl QueueReceiver {
    /// The next batch, or `None` once every sender is gone and the queue is empty.
    pub async fn recv(&self) -> Option<Batch> {
        self.rx.lock().await.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: usize) -> Vec<Event> {
        (0..n)
            .map(|i| Event::from_message(i.to_string(), 0))
            .collect()
    }

    #[tokio::test]
    async fn bounded_in_events_and_split_in_batches() {
        let depth = Gauge::default();
        let (tx, rx) = bounded(10, 4, depth.clone());
        let src: Arc<str> = Arc::from("test");
        tx.try_send(&src, events(9), &mut Charge::none()).unwrap();
        assert_eq!(tx.depth(), 9);
        assert_eq!(depth.get(), 9);
        assert!(
            matches!(tx.try_send(&src, events(2), &mut Charge::none()), Err(QueueError::Full(e)) if e.len() == 2)
        );
        let b1 = rx.recv().await.unwrap();
        assert_eq!(b1.events.len(), 4);
        drop(b1);
        assert_eq!(tx.depth(), 5);
        assert_eq!(depth.get(), 5);
        tx.try_send(&src, events(2), &mut Charge::none()).unwrap();
        let sizes: Vec<usize> = [
            rx.recv().await.unwrap(),
            rx.recv().await.unwrap(),
            rx.recv().await.unwrap(),
        ]
        .iter()
        .map(|b| b.events.len())
        .collect();
        assert_eq!(sizes, [4, 1, 2]);
        assert_eq!(depth.get(), 0);
    }

    #[tokio::test]
    async fn reservations_refuse_early_and_give_back_what_is_unused() {
        let depth = Gauge::default();
        let (tx, rx) = bounded(10, 4, depth.clone());
        let src: Arc<str> = Arc::from("test");
        assert!(matches!(tx.try_reserve(11), Err(QueueError::Full(e)) if e.is_empty()));
        let r = tx.try_reserve(8).unwrap();
        assert_eq!((r.events(), tx.depth()), (8, 8));
        assert!(
            matches!(tx.try_reserve(3), Err(QueueError::Full(_))),
            "reserved room is taken"
        );
        // 5 events in room for 8: 3 come back.
        r.send(&src, events(5), &mut Charge::none()).unwrap();
        assert_eq!((tx.depth(), depth.get()), (5, 5));
        // More events than reserved: the difference is taken if free...
        let r = tx.try_reserve(1).unwrap();
        r.send(&src, events(3), &mut Charge::none()).unwrap();
        assert_eq!(tx.depth(), 8);
        // ...and nothing is queued when it is not.
        let r = tx.try_reserve(1).unwrap();
        assert!(
            matches!(r.send(&src, events(4), &mut Charge::none()), Err(QueueError::Full(e)) if e.len() == 4)
        );
        assert_eq!(tx.depth(), 8, "the failed reservation was given back");
        let r = tx.try_reserve(2).unwrap();
        drop(r);
        assert_eq!(tx.depth(), 8);
        tx.try_reserve(0)
            .unwrap()
            .send(&src, Vec::new(), &mut Charge::none())
            .unwrap();
        let mut sizes = Vec::new();
        while tx.depth() > 0 {
            let b = rx.recv().await.unwrap();
            sizes.push(b.events.len());
        }
        assert_eq!(sizes, [4, 1, 3]);
        assert_eq!(depth.get(), 0);
    }

    #[tokio::test]
    async fn a_reservation_waits_a_bounded_time_for_room() {
        use std::time::Duration;
        let (tx, rx) = bounded(10, 10, Gauge::default());
        let src: Arc<str> = Arc::from("test");
        tx.try_send(&src, events(8), &mut Charge::none()).unwrap();
        let started = tokio::time::Instant::now();
        assert!(matches!(
            tx.reserve_within(5, Duration::from_millis(30)).await,
            Err(QueueError::Full(_))
        ));
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(tx.depth(), 8, "a timed-out wait holds nothing");
        let waiting = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.reserve_within(5, Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx.recv().await.unwrap());
        let r = waiting.await.unwrap().unwrap();
        assert_eq!((r.events(), tx.depth()), (5, 5));
        assert!(
            matches!(
                tx.reserve_within(11, Duration::from_secs(10)).await,
                Err(QueueError::Full(_))
            ),
            "more than the capacity fails at once"
        );
    }

    #[tokio::test]
    async fn send_waits_for_room_and_chunks_oversized_input() {
        let (tx, rx) = bounded(3, 2, Gauge::default());
        let src: Arc<str> = Arc::from("test");
        let sender = tokio::spawn(async move {
            tx.send(&src, events(7), &mut Charge::none())
                .await
                .map_err(|_| ())
        });
        let mut got = 0;
        while got < 7 {
            let b = rx.recv().await.unwrap();
            got += b.events.len();
        }
        sender.await.unwrap().unwrap();
        assert_eq!(got, 7);
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn the_charge_travels_with_the_batches_and_comes_back_when_they_drop() {
        use crate::budget::MemoryBudget;
        let budget = MemoryBudget::unmetered(10_000);
        let (tx, rx) = bounded(100, 4, Gauge::default());
        let src: Arc<str> = Arc::from("t");
        let mut charge = budget.try_charge(1000, Use::HttpBody).unwrap();
        tx.try_send(&src, events(10), &mut charge).unwrap();
        assert_eq!(charge.bytes(), 0);
        assert_eq!(budget.used(), 1000);
        let first = rx.recv().await.unwrap();
        assert_eq!(first.events.len(), 4);
        drop(first);
        assert_eq!(budget.used(), 600);
        drop(rx.recv().await.unwrap());
        drop(rx.recv().await.unwrap());
        assert_eq!(budget.used(), 0);
        // Refused events leave the charge with the caller.
        let mut charge = budget.try_charge(500, Use::HttpBody).unwrap();
        assert!(tx.try_send(&src, events(101), &mut charge).is_err());
        assert_eq!(charge.bytes(), 500);
    }

    #[tokio::test]
    async fn every_batch_carries_the_hold_and_it_settles_once_all_are_confirmed() {
        let (tx, rx) = bounded(100, 4, Gauge::default());
        let src: Arc<str> = Arc::from("t");
        let (hold, outcome) = Hold::awaitable();
        tx.send_held(&src, events(10), &mut Charge::none(), Some(hold))
            .await
            .unwrap();
        let mut batches = vec![
            rx.recv().await.unwrap(),
            rx.recv().await.unwrap(),
            rx.recv().await.unwrap(),
        ];
        assert!(batches.iter().all(|b| b.hold.is_some()));
        for b in &mut batches {
            crate::ack::confirm(b.hold.take());
        }
        assert!(outcome.await.unwrap());
        // A batch dropped with its hold (never delivered) fails the acknowledgement.
        let (hold, outcome) = Hold::awaitable();
        tx.send_held(&src, events(2), &mut Charge::none(), Some(hold))
            .await
            .unwrap();
        drop(rx.recv().await.unwrap());
        assert!(!outcome.await.unwrap());
    }
}
