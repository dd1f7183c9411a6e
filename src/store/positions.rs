//! The feed position each token and account was last mapped at, so that
//! neither a feed read older than this replica's own edit undoes it, nor
//! this replica's edit undoes a newer change the feed mapped first.
//!
//! Why: a feed round (or a reconcile) reads a row as it stands when its
//! query runs. When this replica commits an edit of the same row after
//! that query and maps it before the round maps what it read, the round
//! puts the old version back (a narrowing undone, a disabled account
//! enabled again). Session 34's CI failure was one. The other way round:
//! our edit commits, another replica's change of the row commits after it,
//! and our feed maps that newer version before our own thread maps ours
//! (a stall between the commit and the map); mapping ours then would undo
//! theirs for good, since no later read of the row comes.
//!
//! The rule, a version per row: every change has a feed position (its
//! change row's `seq`, in commit order under the feed's lock). A read at
//! position `at` holds every change up to `at` (the row is read as it
//! stands when the query runs, which is after `at` committed). So a read
//! is mapped unless something later than `at` is mapped already, and our
//! own edit at `at` is mapped unless a read at `at` or later (which holds
//! it) is mapped already. Skipping loses nothing: what is mapped is at
//! least as new. One lock makes "is it newer?" and "map it" a single step
//! on both paths; it is never held across a database call.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

/// The feed position each row was last mapped at.
pub(crate) struct Positions<K> {
    at: Mutex<HashMap<K, i64>>,
}

impl<K: Eq + Hash> Default for Positions<K> {
    fn default() -> Self {
        Positions {
            at: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone> Positions<K> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, i64>> {
        // A poisoned map is still right: each entry is written whole.
        self.at.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Maps an edit this replica committed at feed position `at` (`map`),
    /// unless a read at `at` or later is mapped already (it holds this
    /// edit): then `None`. `at` is `None` where there is no feed (redb):
    /// this process is the only writer, and the edit is mapped.
    pub(crate) fn edited<T>(&self, key: K, at: Option<i64>, map: impl FnOnce() -> T) -> Option<T> {
        let Some(at) = at else {
            return Some(map());
        };
        let mut mapped = self.lock();
        if mapped.get(&key).is_some_and(|&pos| pos >= at) {
            return None;
        }
        let done = map();
        mapped.insert(key, at);
        Some(done)
    }

    /// Maps a row read at feed position `at` (`map`), unless something
    /// later than `at` is mapped already: then `None`.
    pub(crate) fn read<T>(&self, key: &K, at: i64, map: impl FnOnce() -> T) -> Option<T> {
        let mut mapped = self.lock();
        if mapped.get(key).is_some_and(|&pos| pos > at) {
            return None;
        }
        let done = map();
        mapped.insert(key.clone(), at);
        Some(done)
    }

    /// Forgets the rows in `keys` (deleted for good: ids are never reused).
    pub(crate) fn forget<'k>(&self, keys: impl IntoIterator<Item = &'k K>)
    where
        K: 'k,
    {
        let mut mapped = self.lock();
        for k in keys {
            mapped.remove(k);
        }
    }

    /// How many rows have a position (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_older_than_our_edit_is_skipped() {
        let ours: Positions<u64> = Positions::default();
        assert_eq!(ours.edited(7, Some(10), || "mapped"), Some("mapped"));
        assert_eq!(ours.read(&7, 9, || ()), None, "read before our edit");
        assert_eq!(ours.read(&8, 9, || ()), Some(()), "another row");
        assert_eq!(ours.read(&7, 10, || ()), Some(()), "our own change row");
        assert_eq!(ours.read(&7, 12, || ()), Some(()), "a later change");
        assert_eq!(ours.read(&7, 11, || ()), None, "older than what is mapped");
    }

    /// Another replica's change (11) committed after ours (10) and the feed
    /// mapped it before our thread got to map ours: ours is skipped.
    #[test]
    fn our_edit_never_undoes_a_newer_read() {
        let ours: Positions<u64> = Positions::default();
        assert_eq!(ours.read(&7, 11, || ()), Some(()));
        assert_eq!(ours.edited(7, Some(10), || ()), None);
        assert_eq!(ours.read(&7, 10, || ()), None, "our row, read later");
        // A read at our edit's own position holds it: ours is not needed.
        let ours: Positions<u64> = Positions::default();
        ours.read(&7, 10, || ());
        assert_eq!(ours.edited(7, Some(10), || ()), None);
    }

    #[test]
    fn without_a_feed_edits_map_and_deletes_forget() {
        let ours: Positions<String> = Positions::default();
        assert_eq!(ours.edited("a".into(), None, || 1), Some(1));
        assert_eq!(ours.len(), 0);
        ours.edited("a".into(), Some(5), || ());
        ours.edited("b".into(), Some(6), || ());
        ours.forget([&"a".to_owned()]);
        assert_eq!(ours.len(), 1);
        assert_eq!(ours.read(&"b".to_owned(), 5, || ()), None);
        assert_eq!(ours.read(&"a".to_owned(), 1, || ()), Some(()));
    }
}
