//! A hash map split into many small maps, so that it never doubles all at
//! once.
//!
//! A `HashMap` grows by moving every entry into a table twice the size, in
//! one call: at a million entries that is tens of megabytes to fault in and
//! a million keys to hash again, for hundreds of milliseconds, under
//! whatever lock guards the map. The scale benchmark saw intake stop for
//! 0.3–0.8 s exactly where the vault's and the projections' maps doubled
//! (458,752 and 917,504 threads: 2^19 and 2^20 times 7/8).
//!
//! Here each key goes to one of [`SHARDS`] maps, chosen by a hasher of its
//! own, so a growth moves about a [`SHARDS`]th of the entries. Shards of
//! equal shares would still all reach their limits at about the same size
//! of the whole map, and grow one after the other within a few percent of
//! it: the same work, crowded together. So the shares are unequal, spread
//! evenly over one doubling: shard `i` takes a share proportional to
//! `2^(i / SHARDS)`, the largest twice the smallest. Whatever the size of
//! the whole map, the shards are then at every point of their growth
//! cycle, and as it grows by any fraction, about that fraction of the
//! shards grow, one at a time.

use std::borrow::Borrow;
use std::collections::hash_map::{self, HashMap, RandomState};
use std::hash::{BuildHasher, Hash};

/// Maps per [`ShardedMap`]: a growth moves at most about this fraction of
/// the entries.
pub const SHARDS: usize = 256;

/// A hash map kept as [`SHARDS`] maps; see the module docs. Iteration
/// visits shard after shard, in no meaningful order, like `HashMap`'s.
#[derive(Clone)]
pub struct ShardedMap<K, V> {
    shards: Box<[HashMap<K, V>]>,
    /// Chooses the shard: independent of the shards' own hashers, so the
    /// keys of one shard are spread over all of its buckets.
    router: RandomState,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| HashMap::new()).collect(),
            router: RandomState::new(),
        }
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A map with room for about `capacity` entries before any shard grows.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut map = Self::default();
        map.reserve(capacity);
        map
    }

    /// Room for about `additional` more entries, spread as the keys will
    /// be (with some slack, as they do not split exactly so). Below a few
    /// entries per shard nothing is reserved: small shards grow cheaply,
    /// and 256 tables for a handful of keys would cost more than the keys.
    pub fn reserve(&mut self, additional: usize) {
        if additional < 8 * SHARDS {
            return;
        }
        for (i, shard) in self.shards.iter_mut().enumerate() {
            let share = additional as f64 * (share_below(i + 1) - share_below(i));
            shard.reserve((share * 1.125) as usize + 1);
        }
    }

    /// The shard of `key`: a uniform draw `u` in [0, 1) from the router,
    /// and the shard where the shares below it add up past `u`.
    fn shard_of<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        let u = (self.router.hash_one(key) >> 11) as f64 / (1u64 << 53) as f64;
        ((SHARDS as f64 * (1.0 + u).log2()) as usize).min(SHARDS - 1)
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(HashMap::is_empty)
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[self.shard_of(key)].get(key)
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shard_of(key);
        self.shards[shard].get_mut(key)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let shard = self.shard_of(&key);
        self.shards[shard].insert(key, value)
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shard_of(key);
        self.shards[shard].remove(key)
    }

    pub fn entry(&mut self, key: K) -> hash_map::Entry<'_, K, V> {
        let shard = self.shard_of(&key);
        self.shards[shard].entry(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(HashMap::iter)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(HashMap::values)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.shards.iter_mut().flat_map(HashMap::values_mut)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        for shard in self.shards.iter_mut() {
            shard.retain(&mut keep);
        }
    }
}

/// The share of keys that go to the shards before shard `i`: shard `i`'s
/// share is proportional to `2^(i / SHARDS)` (see the module docs).
fn share_below(i: usize) -> f64 {
    (i as f64 / SHARDS as f64).exp2() - 1.0
}

impl<K, Q, V> std::ops::Index<&Q> for ShardedMap<K, V>
where
    K: Hash + Eq + Borrow<Q>,
    Q: Hash + Eq + ?Sized,
{
    type Output = V;

    fn index(&self, key: &Q) -> &V {
        self.get(key).expect("no entry for this key")
    }
}

impl<K: Hash + Eq, V> FromIterator<(K, V)> for ShardedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        let mut map = Self::new();
        map.extend(entries);
        map
    }
}

impl<K: Hash + Eq, V> Extend<(K, V)> for ShardedMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, entries: I) {
        for (k, v) in entries {
            self.insert(k, v);
        }
    }
}

/// Equal when they hold the same entries (shards are chosen per map, so
/// two equal maps may keep an entry in different shards).
impl<K: Hash + Eq, V: PartialEq> PartialEq for ShardedMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl<K: Hash + Eq, V: Eq> Eq for ShardedMap<K, V> {}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for ShardedMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.shards.iter().flat_map(HashMap::iter))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// It behaves as one map: every entry found, replaced, removed and
    /// counted; equality ignores where entries are kept.
    #[test]
    fn it_answers_as_one_map() {
        let mut map = ShardedMap::new();
        for n in 0..10_000u32 {
            assert_eq!(map.insert(format!("k{n}"), n), None);
        }
        assert_eq!(map.len(), 10_000);
        assert_eq!(map.get("k42"), Some(&42));
        assert_eq!(map.insert("k42".to_owned(), 7), Some(42));
        *map.get_mut("k43").unwrap() += 1;
        *map.entry("k44".to_owned()).or_insert(0) += 1;
        *map.entry("new".to_owned()).or_insert(100) += 1;
        assert_eq!(
            [map["k42"], map["k43"], map["k44"], map["new"]],
            [7, 44, 45, 101]
        );
        assert_eq!(map.remove("k1"), Some(1));
        assert_eq!(map.remove("k1"), None);
        assert!(!map.contains_key("k1"));
        assert_eq!(map.len(), 10_000);
        map.retain(|_, v| *v % 2 == 0);
        assert!(map.values().all(|v| v % 2 == 0));
        let other: ShardedMap<String, u32> = map.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(other, map);
        let mut changed = other.clone();
        *changed.values_mut().next().unwrap() += 1;
        assert_ne!(changed, map);
        assert!(ShardedMap::<u8, u8>::new().is_empty());
    }

    /// The point of it: a growth moves one shard's entries, about a
    /// [`SHARDS`]th of the map, where a `HashMap` moves all of them; the
    /// growths come evenly spread as the map grows, not crowded where
    /// equal shards would all fill up; and reserved room is spread as the
    /// keys are, so that no shard grows before it runs out.
    #[test]
    fn a_growth_moves_a_shard_not_the_map() {
        let n = 400_000u64;
        let mut map = ShardedMap::new();
        let mut most_moved = 0;
        let mut growths = Vec::new();
        for k in 0..n {
            let shard = map.shard_of(&k);
            let (before, len) = (map.shards[shard].capacity(), map.shards[shard].len());
            map.insert(k, ());
            if map.shards[shard].capacity() != before {
                most_moved = most_moved.max(len);
                growths.push(k);
            }
        }
        let even = n as usize / SHARDS;
        assert!(most_moved > 0 && most_moved < 2 * even, "{most_moved}");
        let largest = map.shards.iter().map(HashMap::len).max().unwrap();
        assert!(largest < 2 * even, "{largest}");
        // Over the last doubling of the whole map, each quarter of it sees
        // about a quarter of the growths: equal shards would all have grown
        // within a few percent of one size.
        let last: Vec<u64> = growths.into_iter().filter(|k| *k >= n / 2).collect();
        assert!(last.len() > SHARDS / 2, "{}", last.len());
        for quarter in 0..4 {
            let (from, to) = (n / 2 + quarter * n / 8, n / 2 + (quarter + 1) * n / 8);
            let here = last.iter().filter(|k| (from..to).contains(*k)).count();
            let share = here as f64 / last.len() as f64;
            assert!((0.1..0.4).contains(&share), "quarter {quarter}: {share}");
        }

        let mut reserved = ShardedMap::with_capacity(n as usize);
        let capacity: Vec<usize> = reserved.shards.iter().map(HashMap::capacity).collect();
        reserved.extend((0..n).map(|k| (k, ())));
        let grown = reserved
            .shards
            .iter()
            .zip(&capacity)
            .filter(|(s, c)| s.capacity() != **c)
            .count();
        assert_eq!(grown, 0, "shards grew despite the reserved room");

        // A few keys reserve nothing: 256 tables would outweigh them.
        let small = ShardedMap::<u64, ()>::with_capacity(100);
        assert!(small.shards.iter().all(|s| s.capacity() == 0));
    }
}
