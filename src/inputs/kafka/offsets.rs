//! Which offsets may be committed. The input records, per partition and in the order it hands
//! them to the pipeline, the offset ranges of its batches; the outputs later settle each range
//! as delivered or not, in any order. A partition's commit position is one past the last
//! offset of the longest run of delivered ranges from the oldest one: nothing past a range
//! still in flight, or one that failed, is ever committed.
//!
//! A failed range (its events were neither delivered nor dead-lettered: the shutdown deadline
//! cut delivery short, or a dead letter could not be written) stays at the head of its
//! partition, so the partition commits nothing more until it is revoked or the daemon restarts;
//! then the group's next owner of the partition consumes again from the last commit, failed
//! range included. Idempotent document ids make what was delivered twice harmless.
//!
//! Each assignment of a partition is a new generation: a rebalance forgets the ranges of the
//! old one, and their late settlements are ignored (their events will be consumed again by
//! whoever owns the partition now).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// A topic and partition.
pub type Partition = (Arc<str>, i32);

/// One batch's range of offsets in one partition, as handed out at dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub partition: Partition,
    generation: u64,
    /// The range's last offset (ranges of a partition are disjoint and dispatched in order).
    last: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    InFlight,
    Delivered,
    Failed,
}

#[derive(Debug)]
struct Owned {
    generation: u64,
    /// Dispatched ranges not yet committed, oldest first: (last offset, state).
    ranges: VecDeque<(i64, State)>,
    /// The commit position reached and not yet handed out for committing.
    uncommitted: Option<i64>,
}

/// The ranges of every partition this consumer owns.
#[derive(Debug, Default)]
pub struct Tracker {
    owned: HashMap<Partition, Owned>,
    next_generation: u64,
}

impl Tracker {
    /// The partition was assigned to this consumer: a new generation with nothing in flight.
    pub fn assign(&mut self, partition: Partition) {
        self.next_generation += 1;
        self.owned.insert(
            partition,
            Owned {
                generation: self.next_generation,
                ranges: VecDeque::new(),
                uncommitted: None,
            },
        );
    }

    /// The partition was revoked: returns the position to commit for it before it goes (what
    /// is confirmed), and forgets the rest.
    pub fn revoke(&mut self, partition: &Partition) -> Option<i64> {
        let mut owned = self.owned.remove(partition)?;
        advance(&mut owned);
        owned.uncommitted
    }

    /// Records that offsets `first..=last` of `partition` were handed to the pipeline; `None`
    /// when the partition is not assigned (its events are not tracked: whoever owns it will
    /// consume them again).
    pub fn dispatch(&mut self, partition: &Partition, last: i64) -> Option<Ticket> {
        let owned = self.owned.get_mut(partition)?;
        if owned.ranges.back().is_some_and(|(l, _)| *l >= last) {
            // Offsets only grow within a generation; a repeated one (after a seek) is not
            // tracked twice.
            return None;
        }
        owned.ranges.push_back((last, State::InFlight));
        Some(Ticket {
            partition: partition.clone(),
            generation: owned.generation,
            last,
        })
    }

    /// The outputs settled the range of `ticket`: delivered (`ok`) or not.
    pub fn settle(&mut self, ticket: &Ticket, ok: bool) {
        let Some(owned) = self.owned.get_mut(&ticket.partition) else {
            return;
        };
        if owned.generation != ticket.generation {
            return;
        }
        if let Ok(i) = owned.ranges.binary_search_by_key(&ticket.last, |(l, _)| *l) {
            owned.ranges[i].1 = if ok { State::Delivered } else { State::Failed };
        }
        advance(owned);
    }

    /// The positions to commit now, one per partition whose position moved since the last
    /// call.
    pub fn take_commits(&mut self) -> Vec<(Partition, i64)> {
        self.owned
            .iter_mut()
            .filter_map(|(p, owned)| Some((p.clone(), owned.uncommitted.take()?)))
            .collect()
    }

    /// Ranges dispatched and not yet settled, over every partition.
    pub fn in_flight(&self) -> usize {
        self.owned
            .values()
            .map(|o| {
                o.ranges
                    .iter()
                    .filter(|(_, s)| *s == State::InFlight)
                    .count()
            })
            .sum()
    }

    /// Ranges of `partition` dispatched and not yet settled.
    pub fn in_flight_in(&self, partition: &Partition) -> usize {
        self.owned.get(partition).map_or(0, |o| {
            o.ranges
                .iter()
                .filter(|(_, s)| *s == State::InFlight)
                .count()
        })
    }

    /// Partitions assigned to this consumer.
    pub fn assigned(&self) -> usize {
        self.owned.len()
    }
}

/// Moves the partition's commit position past the delivered ranges at its head.
fn advance(owned: &mut Owned) {
    while let Some(&(last, State::Delivered)) = owned.ranges.front() {
        owned.ranges.pop_front();
        owned.uncommitted = Some(last + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Partition {
        (Arc::from("logs"), n)
    }

    #[test]
    fn commits_the_highest_contiguous_delivered_offset_plus_one() {
        let mut t = Tracker::default();
        t.assign(p(0));
        let a = t.dispatch(&p(0), 9).unwrap();
        let b = t.dispatch(&p(0), 19).unwrap();
        let c = t.dispatch(&p(0), 29).unwrap();
        t.settle(&b, true);
        assert_eq!(t.take_commits(), [], "the oldest range is still in flight");
        t.settle(&a, true);
        assert_eq!(t.take_commits(), [(p(0), 20)]);
        assert_eq!(t.take_commits(), [], "handed out once");
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.in_flight_in(&p(0)), 1);
        assert_eq!(t.in_flight_in(&p(1)), 0);
        t.settle(&c, true);
        assert_eq!(t.take_commits(), [(p(0), 30)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn nothing_past_a_failed_range_is_committed() {
        let mut t = Tracker::default();
        t.assign(p(0));
        let a = t.dispatch(&p(0), 4).unwrap();
        let b = t.dispatch(&p(0), 9).unwrap();
        let c = t.dispatch(&p(0), 14).unwrap();
        t.settle(&a, true);
        t.settle(&b, false);
        t.settle(&c, true);
        assert_eq!(t.take_commits(), [(p(0), 5)]);
        let d = t.dispatch(&p(0), 20).unwrap();
        t.settle(&d, true);
        assert_eq!(
            t.take_commits(),
            [],
            "the failed range blocks the partition"
        );
        assert_eq!(
            t.revoke(&p(0)),
            None,
            "revoking commits nothing past it either"
        );
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = Tracker::default();
        t.assign(p(0));
        t.assign(p(1));
        let a = t.dispatch(&p(0), 100).unwrap();
        let b = t.dispatch(&p(1), 7).unwrap();
        t.settle(&b, true);
        assert_eq!(t.take_commits(), [(p(1), 8)]);
        t.settle(&a, true);
        assert_eq!(t.take_commits(), [(p(0), 101)]);
        assert_eq!(t.assigned(), 2);
    }

    #[test]
    fn a_revoke_commits_what_is_confirmed_and_forgets_the_rest() {
        let mut t = Tracker::default();
        t.assign(p(0));
        let a = t.dispatch(&p(0), 9).unwrap();
        let b = t.dispatch(&p(0), 19).unwrap();
        t.settle(&a, true);
        assert_eq!(t.revoke(&p(0)), Some(10));
        assert_eq!(t.in_flight(), 0);
        // Late settlements of the old assignment change nothing, even after it comes back.
        t.assign(p(0));
        t.settle(&b, true);
        assert_eq!(t.take_commits(), []);
        let c = t.dispatch(&p(0), 14).unwrap();
        t.settle(&c, true);
        assert_eq!(t.take_commits(), [(p(0), 15)]);
    }

    #[test]
    fn unassigned_partitions_and_repeated_offsets_are_not_tracked() {
        let mut t = Tracker::default();
        assert_eq!(t.dispatch(&p(3), 5), None);
        t.assign(p(3));
        assert!(t.dispatch(&p(3), 5).is_some());
        assert_eq!(t.dispatch(&p(3), 5), None);
        assert_eq!(t.dispatch(&p(3), 2), None);
    }
}
