// PATCH (tokengate): the lock of a body channel and of the HTTP/2 ping
// state (PATCH.md, section 18), the same as patches/h2's
// `src/proto/streams/lock.rs`.
//
// `std::sync::Mutex` costs two locked instructions per critical section: a
// compare-and-swap to take it and a swap to release it (the swap tells the
// releasing thread whether anyone sleeps on the futex). hyper's body channel
// and HTTP/2 ping state take theirs about 7 times per proxied request, and on
// a current-thread runtime (or any connection driven from one thread) nobody
// else ever wants them. A locked instruction drains the store buffer, so on
// the request path each one costs the cache misses of the writes before it.
//
// This lock is taken with one compare-and-swap and released with a plain
// release store (an ordinary `mov` on x86). The price is that a waiter cannot
// sleep: it spins briefly, then yields its time slice until the holder is
// done. The critical sections are a few field updates, so a thread that
// finds the lock taken waits less than a futex round trip would take. Poisoning behaves as `std::sync::Mutex`'s: a guard dropped while its
// thread panics marks the lock, and later `lock` calls return `Err`.

use std::cell::UnsafeCell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{LockResult, PoisonError};

pub(crate) trait LockResultExt<T> {
    fn panic_if_poisoned(self) -> T;
}

#[allow(clippy::panic)]
impl<T> LockResultExt<T> for LockResult<T> {
    #[track_caller]
    fn panic_if_poisoned(self) -> T {
        match self {
            Ok(inner) => inner,
            Err(err) => panic!("lock poisoned by panic: {err}"),
        }
    }
}

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
}
