//! A hash map split into shards that grow one at a time.
//!
//! A hash map that outgrows its table allocates one twice the size and moves
//! every entry at once: at half a million threads that is half a second,
//! during which the fold holds the lock every webhook waits on. Split into
//! [`SHARDS`] maps, each move is 1/256 of that, and since the shards fill
//! at slightly different rates, their moves fall on different folds.
//! Lookups stay hash lookups (a B-tree would compare keys at every level).

use std::borrow::Borrow;
use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// How many maps a [`ShardedMap`] is split into.
pub const SHARDS: usize = 256;

/// Which shard holds `key`: a fixed (unkeyed) hash, so two maps with the
/// same entries hold them in the same shards and compare equal shard by
/// shard. Each shard's own table is keyed as usual.
fn shard_of<Q: Hash + ?Sized>(key: &Q) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() >> 56) as usize % SHARDS
}

/// A map of `K` to `V` in [`SHARDS`] hash maps.
#[derive(Clone)]
pub struct ShardedMap<K, V> {
    shards: Box<[HashMap<K, V>]>,
}

impl<K: Hash + Eq, V: PartialEq> PartialEq for ShardedMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.shards
            .iter()
            .zip(other.shards.iter())
            .all(|(a, b)| a == b)
    }
}

impl<K: Hash + Eq, V: Eq> Eq for ShardedMap<K, V> {}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| HashMap::new()).collect(),
        }
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for ShardedMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.shards.iter().flat_map(HashMap::iter))
            .finish()
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries in all shards (sums the shards' lengths).
    pub fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(HashMap::is_empty)
    }

    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.shards[shard_of(key)].get(key)
    }

    pub fn get_mut<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.shards[shard_of(key)].get_mut(key)
    }

    pub fn contains_key<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.shards[shard_of(key)].contains_key(key)
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.shards[shard_of(&key)].insert(key, value)
    }

    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.shards[shard_of(key)].remove(key)
    }

    pub fn entry(&mut self, key: K) -> Entry<'_, K, V> {
        self.shards[shard_of(&key)].entry(key)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(HashMap::iter)
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.shards.iter().flat_map(HashMap::keys)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(HashMap::values)
    }
}

impl<K: Hash + Eq, V> FromIterator<(K, V)> for ShardedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = Self::new();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_is_a_map_whatever_the_shard() {
        let mut a: ShardedMap<String, usize> = ShardedMap::new();
        let mut plain = HashMap::new();
        for n in 0..10_000 {
            a.insert(format!("user-{n}"), n);
            plain.insert(format!("user-{n}"), n);
        }
        *a.entry("user-7".into()).or_default() += 1;
        *plain.entry("user-7".into()).or_default() += 1;
        assert_eq!(a.remove("user-9"), plain.remove("user-9"));
        assert_eq!(a.len(), plain.len());
        assert_eq!(a.get("user-7"), Some(&8));
        assert!(!a.contains_key("user-9"));
        let back: HashMap<String, usize> = a.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(back, plain);
        // The same entries, inserted in another order, compare equal.
        let b: ShardedMap<String, usize> = plain.into_iter().collect();
        assert_eq!(a, b);
        // Every shard is used.
        assert!(a.shards.iter().all(|s| !s.is_empty()));
    }
}
