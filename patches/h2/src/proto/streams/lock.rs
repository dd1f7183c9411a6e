// PATCH (tokengate): the lock around a connection's stream state and its send
// buffer (PATCH.md, section 15).
//
// `std::sync::Mutex` costs two locked instructions per critical section: a
// compare-and-swap to take it and a swap to release it (the swap tells the
// releasing thread whether anyone sleeps on the futex). h2 takes these locks
// about 25 times per request, for a few hundred nanoseconds each, and on a
// current-thread runtime (or any connection driven from one thread) nobody
// else ever wants them. A locked instruction drains the store buffer, so on
// the request path each one costs the cache misses of the writes before it.
//
// This lock is taken with one compare-and-swap and released with a plain
// release store (an ordinary `mov` on x86). The price is that a waiter cannot
// sleep: it spins briefly, then yields its time slice until the holder is
// done. h2's critical sections are short (stream bookkeeping and copying
// frames into the write buffer, plus at most one socket write), so a thread
// that finds the lock taken waits about as long as a futex round trip would
// take. Poisoning behaves as `std::sync::Mutex`'s: a guard dropped while its
// thread panics marks the lock, and later `lock` calls return `Err`.

use std::cell::UnsafeCell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{LockResult, PoisonError, TryLockError, TryLockResult};

/// Spins this many times on a taken lock before it starts yielding.
const SPINS: u32 = 64;

pub(crate) struct Mutex<T> {
    locked: AtomicBool,
    poisoned: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: as for `std::sync::Mutex`: the lock hands out access to `value` to
// one thread at a time, so sharing the lock only needs the value to be `Send`.
unsafe impl<T: Send> Send for Mutex<T> {}
// SAFETY: see above.
unsafe impl<T: Send> Sync for Mutex<T> {}
// As std's: a panic under the lock poisons it, so callers see a possibly
// broken invariant as an `Err`, not silently.
impl<T> std::panic::UnwindSafe for Mutex<T> {}
impl<T> std::panic::RefUnwindSafe for Mutex<T> {}

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Mutex<T> {
        Mutex {
            locked: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> LockResult<MutexGuard<'_, T>> {
        if self
            .locked
            .compare_exchange_weak(false, true, Acquire, Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        let guard = MutexGuard {
            lock: self,
            panicking: std::thread::panicking(),
            _not_send: PhantomData,
        };
        if self.poisoned.load(Relaxed) {
            Err(PoisonError::new(guard))
        } else {
            Ok(guard)
        }
    }

    /// As `std::sync::Mutex::try_lock` (used by `Debug` impls).
    pub(crate) fn try_lock(&self) -> TryLockResult<MutexGuard<'_, T>> {
        if self
            .locked
            .compare_exchange(false, true, Acquire, Relaxed)
            .is_err()
        {
            return Err(TryLockError::WouldBlock);
        }
        let guard = MutexGuard {
            lock: self,
            panicking: std::thread::panicking(),
            _not_send: PhantomData,
        };
        if self.poisoned.load(Relaxed) {
            Err(TryLockError::Poisoned(PoisonError::new(guard)))
        } else {
            Ok(guard)
        }
    }

    #[cold]
    fn lock_contended(&self) {
        let mut spins = 0;
        loop {
            while self.locked.load(Relaxed) {
                if spins < SPINS {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            if self
                .locked
                .compare_exchange_weak(false, true, Acquire, Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }
}

impl<T> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mutex")
            .field("locked", &self.locked.load(Relaxed))
            .finish_non_exhaustive()
    }
}

pub(crate) struct MutexGuard<'a, T> {
    lock: &'a Mutex<T>,
    /// The thread was already panicking when it took the lock: dropping the
    /// guard in that unwinding does not poison it (as with std's).
    panicking: bool,
    /// Not `Send`, as std's guard: a guard held across an `.await` in a
    /// spawned future is then a compile error, not a lock that another
    /// thread spins on until that future runs again. (`Sync` below.)
    _not_send: PhantomData<(&'a mut T, *const ())>,
}

// SAFETY: a shared guard gives `&T` to the threads that hold a reference to
// it, which needs `T: Sync`, as for std's guard.
unsafe impl<T: Sync> Sync for MutexGuard<'_, T> {}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while this thread holds the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while this thread holds the lock, and
        // `&mut self` makes this the only reference through it.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if !self.panicking && std::thread::panicking() {
            self.lock.poisoned.store(true, Relaxed);
        }
        self.lock.locked.store(false, Release);
    }
}

impl<T> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutexGuard").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::Mutex;
    use std::sync::Arc;

    #[test]
    fn counts_from_many_threads() {
        let m = Arc::new(Mutex::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..50_000 {
                        *m.lock().unwrap() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*m.lock().unwrap(), 200_000);
    }

    #[test]
    fn a_panic_under_the_lock_poisons_it() {
        let m = Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let r = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("under the lock");
        })
        .join();
        assert!(r.is_err());
        let err = m.lock().unwrap_err();
        // Still usable, as std's is after poisoning.
        assert_eq!(*err.into_inner(), 1);
    }

    #[test]
    fn a_lock_taken_while_panicking_is_not_poisoned_by_that_panic() {
        struct LockOnDrop(Arc<Mutex<u8>>);
        impl Drop for LockOnDrop {
            fn drop(&mut self) {
                let _g = self.0.lock();
            }
        }
        let m = Arc::new(Mutex::new(0));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _d = LockOnDrop(m2);
            panic!("unwinding");
        })
        .join();
        assert!(m.lock().is_ok());
    }

    #[test]
    fn try_lock_says_when_it_is_taken() {
        let m = Mutex::new(5);
        let g = m.lock().unwrap();
        assert!(matches!(
            m.try_lock(),
            Err(std::sync::TryLockError::WouldBlock)
        ));
        drop(g);
        assert_eq!(*m.try_lock().unwrap(), 5);
    }
}
