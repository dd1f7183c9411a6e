//! A fixed-capacity table of per-client entries.
//!
//! Set-associative, like a CPU cache: a keyed hash of the client picks one
//! of `sets` sets, and each set holds at most `WAYS` clients. So memory is
//! bounded whatever the number of addresses (`sets × WAYS` entries), every
//! operation touches one set under that set's own lock (clients in other
//! sets never wait for each other), and making room in a full set looks at
//! `WAYS` entries, not the whole table. The hash is keyed with random seeds
//! drawn at start, so nobody can choose addresses that land in one set to
//! push a particular client out.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::ClientKey;

/// Clients per set.
pub(crate) const WAYS: usize = 8;

#[derive(Clone, Copy)]
struct Way<E> {
    key: ClientKey,
    entry: E,
}

type Ways<E> = [Option<Way<E>>; WAYS];
/// One set: its ways, allocated while it holds a client.
type Set<E> = Mutex<Option<Box<Ways<E>>>>;

pub(crate) struct Table<E> {
    seeds: [u64; 4],
    mask: u64,
    /// A set's ways are allocated when its first client arrives and freed
    /// when the sweep empties it, so an idle table costs 16 bytes per set.
    sets: Box<[Set<E>]>,
}

/// The high and low halves of a 128-bit product, folded: a fast keyed mix
/// (as in foldhash and ahash's fallback).
#[allow(
    clippy::cast_possible_truncation,
    reason = "the two halves, on purpose"
)]
#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl<E: Copy> Table<E> {
    /// A table of `sets` sets (rounded up to a power of two) of `WAYS` clients each.
    pub(crate) fn new(sets: usize) -> Table<E> {
        let sets = sets.max(1).next_power_of_two();
        // std's RandomState is seeded from the OS generator, once per process.
        let rs = RandomState::new();
        let seeds = [1u8, 2, 3, 4].map(|i| rs.hash_one(i) | 1);
        Table {
            seeds,
            mask: u64::try_from(sets - 1).unwrap_or(0),
            sets: (0..sets).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Clients the table can hold at most.
    pub(crate) fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    /// Which set `key` lives in.
    #[inline]
    pub(crate) fn set_of(&self, key: ClientKey) -> usize {
        let (a, b) = key.words();
        let h = fold(a ^ self.seeds[0], b ^ self.seeds[1]);
        let h = fold(h ^ self.seeds[2], self.seeds[3]);
        usize::try_from(h & self.mask).unwrap_or(0)
    }

    fn lock(&self, set: usize) -> MutexGuard<'_, Option<Box<Ways<E>>>> {
        // Entries are plain counters: one left half-updated by a panic is
        // still a valid entry.
        self.sets[set]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on `key`'s entry, if it is tracked.
    pub(crate) fn get<R>(&self, key: ClientKey, f: impl FnOnce(&mut E) -> R) -> Option<R> {
        let mut set = self.lock(self.set_of(key));
        let way = set.as_mut()?.iter_mut().flatten().find(|w| w.key == key)?;
        Some(f(&mut way.entry))
    }

    /// Runs `f` on `key`'s entry, starting it as `new` if it is not tracked.
    /// In a full set the entry with the lowest `rank` makes room; it is
    /// returned with its key, so the caller can report what it held.
    pub(crate) fn upsert<R, K: Ord>(
        &self,
        key: ClientKey,
        new: E,
        rank: impl Fn(&E) -> K,
        f: impl FnOnce(&mut E) -> R,
    ) -> (R, Option<(ClientKey, E)>) {
        let mut set = self.lock(self.set_of(key));
        let ways = set.get_or_insert_with(|| Box::new([None; WAYS]));
        if let Some(w) = ways.iter_mut().flatten().find(|w| w.key == key) {
            return (f(&mut w.entry), None);
        }
        let (slot, evicted) = match ways.iter().position(Option::is_none) {
            Some(free) => (free, None),
            None => {
                let coldest = ways
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, w)| w.as_ref().map(|w| rank(&w.entry)))
                    .map_or(0, |(i, _)| i);
                (coldest, ways[coldest].map(|w| (w.key, w.entry)))
            }
        };
        let way = ways[slot].insert(Way { key, entry: new });
        (f(&mut way.entry), evicted)
    }

    /// Visits every entry, one set at a time; an entry for which `keep`
    /// answers false is dropped, and a set left empty frees its ways.
    pub(crate) fn retain(&self, mut keep: impl FnMut(ClientKey, &mut E) -> bool) {
        for i in 0..self.sets.len() {
            let mut set = self.lock(i);
            let Some(ways) = set.as_mut() else { continue };
            for w in ways.iter_mut() {
                if let Some(way) = w {
                    if !keep(way.key, &mut way.entry) {
                        *w = None;
                    }
                }
            }
            if ways.iter().all(Option::is_none) {
                *set = None;
            }
        }
    }

    /// Clients tracked now.
    pub(crate) fn len(&self) -> usize {
        let mut n = 0;
        self.retain(|_, _| {
            n += 1;
            true
        });
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn key(n: u32) -> ClientKey {
        ClientKey::of(IpAddr::V4(Ipv4Addr::from(n)))
    }

    #[test]
    fn memory_is_bounded_and_the_coldest_make_room() {
        let t: Table<u32> = Table::new(4);
        assert_eq!(t.capacity(), 4 * WAYS);
        // A million addresses, each with its arrival number as heat.
        let mut evicted = 0;
        for n in 0..1_000_000u32 {
            let (_, out) = t.upsert(key(n), n, |e| *e, |_| ());
            if let Some((_, heat)) = out {
                evicted += 1;
                // Always a colder entry than the one arriving.
                assert!(heat < n);
            }
        }
        assert_eq!(t.len(), t.capacity());
        assert_eq!(evicted, 1_000_000 - t.capacity());
        // The latest arrivals are the ones still tracked.
        assert_eq!(t.get(key(999_999), |e| *e), Some(999_999));
        assert_eq!(t.get(key(0), |e| *e), None);
    }

    #[test]
    fn entries_are_found_updated_and_swept() {
        let t: Table<u32> = Table::new(16);
        t.upsert(key(1), 0, |e| *e, |e| *e += 5);
        t.upsert(key(1), 0, |e| *e, |e| *e += 5);
        t.upsert(key(2), 0, |e| *e, |e| *e += 1);
        assert_eq!(t.get(key(1), |e| *e), Some(10));
        assert_eq!(t.get(key(3), |e| *e), None);
        t.retain(|_, e| *e > 1);
        assert_eq!(t.get(key(2), |e| *e), None);
        assert_eq!(t.len(), 1);
        t.retain(|_, e| *e > 10);
        assert_eq!(t.len(), 0);
        // Emptied sets free their ways.
        assert!(t.sets.iter().all(|s| s.lock().unwrap().is_none()));
    }

    #[test]
    fn keys_spread_over_the_sets() {
        let t: Table<u32> = Table::new(256);
        let mut per_set = vec![0u32; 256];
        for n in 0..25_600u32 {
            per_set[t.set_of(key(n))] += 1;
        }
        // 100 per set on average; a poor mix would leave sets empty.
        assert!(
            per_set.iter().all(|&c| (40..200).contains(&c)),
            "{per_set:?}"
        );
    }
}
