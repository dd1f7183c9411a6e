//! This replica's own edits until the change feed shows them back, so that
//! a feed read older than one of them never undoes it.
//!
//! Why: a feed round (or a reconcile) reads a row as it stands when its
//! query runs. When this replica commits an edit of the same row after
//! that query and maps it before the round maps what it read, the round
//! puts the old version back (a narrowing undone, a disabled account
//! enabled again) until its next round. Session 34's CI failure was one.
//!
//! The rule: an edit made here is recorded with its own change row's feed
//! position; a row read at an earlier position than that is skipped. This
//! loses nothing: the edit's own change row comes later in the feed (the
//! cursor never passes a position it has not read), and it is read at a
//! position that includes the edit and every change before it. One lock
//! makes "is it older?" and "map it" a single step against a local edit's
//! "map it and record it"; the lock is never held across a database call.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

/// Feed positions of this replica's edits, by the row they changed.
pub(crate) struct Ours<K> {
    at: Mutex<HashMap<K, i64>>,
}

impl<K: Eq + Hash> Default for Ours<K> {
    fn default() -> Self {
        Ours {
            at: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash> Ours<K> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, i64>> {
        // A poisoned map is still right: each entry is written whole.
        self.at.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Maps an edit this replica committed (`map`), and records its
    /// change row's position (`None`: no feed, nothing can be older).
    pub(crate) fn edited<T>(&self, key: K, at: Option<i64>, map: impl FnOnce() -> T) -> T {
        let mut ours = self.lock();
        let mapped = map();
        if let Some(at) = at {
            ours.insert(key, at);
        }
        mapped
    }

    /// Maps a row read at feed position `at` or later (`map`), unless an
    /// edit of ours is later than that: then `None`, and the row's state
    /// arrives with our edit's own change row.
    pub(crate) fn read<T>(&self, key: &K, at: i64, map: impl FnOnce() -> T) -> Option<T> {
        let mut ours = self.lock();
        if let Some(&mine) = ours.get(key) {
            if at < mine {
                return None;
            }
            // Read at or after our edit: it includes it, and nothing
            // older than this read can come any more for this row.
            ours.remove(key);
        }
        Some(map())
    }

    /// Forgets the rows in `keys` (deleted: nothing of theirs is mapped).
    pub(crate) fn forget<'k>(&self, keys: impl IntoIterator<Item = &'k K>)
    where
        K: 'k,
    {
        let mut ours = self.lock();
        for k in keys {
            ours.remove(k);
        }
    }

    /// How many edits wait for the feed (tests).
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_read_is_skipped_until_our_own_change_row() {
        let ours: Ours<u64> = Ours::default();
        assert_eq!(ours.edited(7, Some(10), || "mapped"), "mapped");
        assert_eq!(ours.read(&7, 9, || ()), None, "read before our edit");
        assert_eq!(ours.read(&8, 9, || ()), Some(()), "another row");
        assert_eq!(ours.waiting(), 1);
        assert_eq!(ours.read(&7, 10, || ()), Some(()), "our own change row");
        assert_eq!(ours.waiting(), 0);
        assert_eq!(ours.read(&7, 3, || ()), Some(()), "nothing waits any more");
    }

    #[test]
    fn without_a_feed_nothing_is_recorded_and_deletes_forget() {
        let ours: Ours<String> = Ours::default();
        ours.edited("a".into(), None, || ());
        assert_eq!(ours.waiting(), 0);
        ours.edited("a".into(), Some(5), || ());
        ours.edited("b".into(), Some(6), || ());
        ours.forget([&"a".to_owned()]);
        assert_eq!(ours.waiting(), 1);
        assert_eq!(ours.read(&"b".to_owned(), 5, || ()), None);
    }
}
