//! A bounded map shared by filter workers, for results that repeat (user agents, client IPs).
//! Split into shards, each a small `Mutex<HashMap>`, so two workers rarely touch the same lock
//! and a critical section is one hash probe. When a shard is full, an arbitrary entry (the
//! first in table order, which is effectively random by hash) makes room. Keys are hashed with
//! foldhash (per-process random seed): SipHash cost a few hundred instructions for a user-agent
//! string, twice per lookup (shard, then table).

use foldhash::fast::RandomState;
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;

const SHARDS: usize = 16;

pub struct ShardedCache<K, V> {
    shards: Box<[Mutex<HashMap<K, V, RandomState>>]>,
    per_shard: usize,
    hasher: RandomState,
}

impl<K: Hash + Eq + Clone, V: Clone> ShardedCache<K, V> {
    /// A cache holding about `capacity` entries; 0 stores nothing.
    pub fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS);
        ShardedCache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(HashMap::with_capacity_and_hasher(
                        per_shard,
                        RandomState::default(),
                    ))
                })
                .collect(),
            per_shard,
            hasher: RandomState::default(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &Mutex<HashMap<K, V, RandomState>> {
        // The shard index uses the high bits; the map re-hashes with its own state.
        let h = self.hasher.hash_one(key);
        &self.shards[(h >> 60) as usize % SHARDS]
    }

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.per_shard == 0 {
            return None;
        }
        // Held for one probe and a clone (an `Arc` or small value); never across an await.
        let shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        shard.get(key).cloned()
    }

    pub fn insert(&self, key: K, value: V) {
        if self.per_shard == 0 {
            return;
        }
        let mut shard = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            if let Some(victim) = shard.keys().next().cloned() {
                shard.remove(&victim);
            }
        }
        shard.insert(key, value);
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_hits() {
        let c: ShardedCache<Box<str>, u32> = ShardedCache::new(64);
        for i in 0..1000u32 {
            c.insert(i.to_string().into(), i);
            assert_eq!(c.get(i.to_string().as_str()), Some(i));
        }
        assert!(c.len() <= c.capacity(), "{} > {}", c.len(), c.capacity());
        assert!(c.len() >= 32);
        let off: ShardedCache<u32, u32> = ShardedCache::new(0);
        off.insert(1, 1);
        assert_eq!(off.get(&1), None);
        assert!(off.is_empty());
    }
}
