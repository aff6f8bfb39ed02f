//! Which records of the persisted queue are still unconfirmed. Records are confirmed out of
//! order (outputs deliver batches concurrently); the watermark is the start of the oldest
//! unconfirmed record, so everything before it can go, and a restart replays from it.

use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Confirmed,
}

#[derive(Debug)]
struct Entry {
    start: u64,
    events: u32,
    state: State,
}

/// Unconfirmed records in log order, and the room they take.
#[derive(Debug)]
pub struct Ledger {
    open: VecDeque<Entry>,
    /// Start of the oldest unconfirmed record (or the head when none is open).
    watermark: u64,
    /// Where the next record will be written.
    head: u64,
    /// Bytes promised to appends not yet written.
    reserved: u64,
}

impl Ledger {
    /// A ledger for a log whose records so far end at `head`, none of them open.
    pub fn new(head: u64) -> Ledger {
        Ledger {
            open: VecDeque::new(),
            watermark: head,
            head,
            reserved: 0,
        }
    }

    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    pub fn head(&self) -> u64 {
        self.head
    }

    /// Records not yet confirmed, and their events.
    pub fn unconfirmed(&self) -> (usize, u64) {
        self.open
            .iter()
            .filter(|e| e.state == State::Pending)
            .fold((0, 0), |(r, n), e| (r + 1, n + e.events as u64))
    }

    /// Bytes of the log not yet passed by the watermark, with those promised to appends.
    pub fn used(&self) -> u64 {
        self.head + self.reserved - self.watermark
    }

    /// Promises `bytes` to an append when they fit within `max` (or nothing else is held, so
    /// a record larger than the whole queue still goes, alone).
    pub fn try_reserve(&mut self, bytes: u64, max: u64) -> bool {
        let used = self.used();
        if used == 0 || used + bytes <= max {
            self.reserved += bytes;
            true
        } else {
            false
        }
    }

    /// Gives back a promise that was not written.
    pub fn unreserve(&mut self, bytes: u64) {
        self.reserved = self.reserved.saturating_sub(bytes);
    }

    /// Opens a record of `len` bytes and `events` events written at the head (its promise
    /// becomes the record).
    pub fn written(&mut self, len: u64, events: u32) -> u64 {
        let start = self.head;
        self.reserved = self.reserved.saturating_sub(len);
        self.head += len;
        if self.open.is_empty() {
            self.watermark = start;
        }
        self.open.push_back(Entry {
            start,
            events,
            state: State::Pending,
        });
        start
    }

    /// Skips `len` bytes at the head that hold no record to deliver (a record already read
    /// at start-up, or a gap): the head moves on.
    pub fn skip(&mut self, len: u64) {
        self.head += len;
        if self.open.is_empty() {
            self.watermark = self.head;
        }
    }

    /// The record starting at `start` is delivered. True when the watermark moved.
    pub fn confirm(&mut self, start: u64) -> bool {
        if let Some(i) = self.position(start) {
            self.open[i].state = State::Confirmed;
        }
        let before = self.watermark;
        while self
            .open
            .front()
            .is_some_and(|e| e.state == State::Confirmed)
        {
            self.open.pop_front();
        }
        self.watermark = self.open.front().map_or(self.head, |e| e.start);
        self.watermark != before
    }

    /// Starts of the records already confirmed beyond the watermark (outputs confirm out of
    /// order); a restart need not replay them.
    pub fn confirmed_beyond(&self) -> Vec<u64> {
        self.open
            .iter()
            .filter(|e| e.state == State::Confirmed)
            .map(|e| e.start)
            .collect()
    }

    /// Sets the event count of the open record at `start` (known once it is decoded).
    pub fn set_events(&mut self, start: u64, events: u32) {
        if let Some(i) = self.position(start) {
            self.open[i].events = events;
        }
    }

    fn position(&self, start: u64) -> Option<usize> {
        self.open.binary_search_by_key(&start, |e| e.start).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_waits_for_the_oldest_record() {
        let mut l = Ledger::new(100);
        assert!(l.try_reserve(30, 50));
        assert!(!l.try_reserve(30, 50), "30 + 30 > 50");
        let a = l.written(30, 1);
        assert!(l.try_reserve(20, 50));
        let b = l.written(20, 1);
        let c = {
            assert!(l.try_reserve(10, 1000));
            l.written(10, 1)
        };
        assert_eq!((a, b, c, l.head()), (100, 130, 150, 160));
        assert_eq!(l.watermark(), 100);
        assert!(!l.confirm(b), "b is confirmed but a is still open");
        assert_eq!(l.watermark(), 100);
        assert_eq!(l.unconfirmed(), (2, 2));
        assert!(l.confirm(a));
        assert_eq!(l.watermark(), 150, "a and b are both passed");
        assert!(l.confirm(c));
        assert_eq!((l.watermark(), l.used()), (160, 0));
    }

    #[test]
    fn a_record_larger_than_the_queue_goes_alone() {
        let mut l = Ledger::new(0);
        assert!(l.try_reserve(500, 100), "nothing else is held");
        l.written(500, 1);
        assert!(!l.try_reserve(1, 100));
        l.confirm(0);
        assert!(l.try_reserve(1, 100));
        l.unreserve(1);
        assert_eq!(l.used(), 0);
    }
}
