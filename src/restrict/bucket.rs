//! A per-token request rate: a token bucket kept as one `AtomicU64`.
//!
//! The bucket is the Generic Cell Rate Algorithm form of a token bucket:
//! instead of a token count and a refill time (two words, a lock or a
//! double-width CAS), it keeps the one instant at which the bucket will be
//! full again ("theoretical arrival time", nanoseconds since `origin`). A
//! request is allowed when taking one token would not push that instant
//! more than `burst` tokens' worth into the future; taking it is a CAS that
//! moves the instant on by one emission interval. Constant memory, no
//! lock, and workers contend only on the tokens that are actually limited
//! (each on its own word).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// Allowed; `remaining` more could pass at this instant.
    Allowed { remaining: u64 },
    /// Refused; one request will be allowed after `retry_after`.
    Refused { retry_after: Duration },
}

#[derive(Debug)]
pub(crate) struct Bucket {
    /// Nanoseconds since `origin` at which the bucket is full again; at or
    /// before now = full.
    tat: AtomicU64,
    /// Where the nanosecond timeline starts (the bucket's creation).
    origin: Instant,
    /// One token's worth of time: 1 s / per_second.
    interval: u64,
    /// `burst` tokens' worth of time.
    capacity: u64,
    per_second: u32,
    burst: u32,
}

impl Bucket {
    /// `per_second` and `burst` are at least 1 (validated at create).
    pub(crate) fn new(per_second: u32, burst: u32, origin: Instant) -> Bucket {
        let interval = NANOS_PER_SEC / u64::from(per_second.max(1));
        Bucket {
            tat: AtomicU64::new(0),
            origin,
            interval,
            capacity: interval.saturating_mul(u64::from(burst.max(1))),
            per_second: per_second.max(1),
            burst: burst.max(1),
        }
    }

    pub(crate) fn per_second(&self) -> u32 {
        self.per_second
    }

    pub(crate) fn burst(&self) -> u32 {
        self.burst
    }

    /// Takes one token at `now`, or says how long until one is there.
    #[inline]
    pub(crate) fn take(&self, now: Instant) -> Take {
        let now = u64::try_from(now.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(u64::MAX);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now).saturating_add(self.interval);
            let ahead = next - now;
            if ahead > self.capacity {
                return Take::Refused {
                    retry_after: Duration::from_nanos(ahead - self.capacity),
                };
            }
            // Relaxed: the word is the whole state; no other memory hangs on it.
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Take::Allowed {
                        remaining: (self.capacity - ahead) / self.interval,
                    }
                }
                Err(seen) => tat = seen,
            }
        }
    }

    /// Requests that would pass at `now`, without taking one (what
    /// `/token/info` shows a script).
    pub(crate) fn available(&self, now: Instant) -> u64 {
        let now = u64::try_from(now.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(u64::MAX);
        let ahead = self.tat.load(Ordering::Relaxed).saturating_sub(now);
        self.capacity.saturating_sub(ahead) / self.interval
    }

    /// Whole seconds an empty bucket takes to fill (the `RateLimit-Policy`
    /// window: `burst` requests per that many seconds).
    pub(crate) fn window_secs(&self) -> u64 {
        self.capacity.div_ceil(NANOS_PER_SEC).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(b: &Bucket, at: Instant, n: usize) -> usize {
        (0..n)
            .filter(|_| matches!(b.take(at), Take::Allowed { .. }))
            .count()
    }

    #[test]
    fn a_burst_passes_then_the_rate() {
        let t0 = Instant::now();
        let b = Bucket::new(5, 10, t0);
        assert_eq!(b.available(t0), 10);
        assert_eq!(b.take(t0), Take::Allowed { remaining: 9 });
        assert_eq!(b.available(t0), 9, "looking takes nothing");
        assert_eq!(allowed(&b, t0, 20), 9, "the burst is exactly 10");
        match b.take(t0) {
            Take::Refused { retry_after } => assert_eq!(retry_after, Duration::from_millis(200)),
            other => panic!("{other:?}"),
        }
        // 5 per second: one token every 200 ms.
        let t1 = t0 + Duration::from_millis(200);
        assert_eq!(b.take(t1), Take::Allowed { remaining: 0 });
        assert_eq!(allowed(&b, t1, 5), 0);
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(allowed(&b, t2, 10), 5);
        // Idle long enough: full again, and never more than the burst.
        let t3 = t2 + Duration::from_secs(3600);
        assert_eq!(allowed(&b, t3, 100), 10);
        assert_eq!(b.window_secs(), 2);
    }

    #[test]
    fn time_before_the_origin_counts_as_the_origin() {
        let t0 = Instant::now();
        let b = Bucket::new(1, 1, t0 + Duration::from_secs(5));
        assert_eq!(allowed(&b, t0, 3), 1);
    }

    #[test]
    fn concurrent_takers_never_exceed_the_burst() {
        let t0 = Instant::now();
        let b = std::sync::Arc::new(Bucket::new(1, 1000, t0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || allowed(&b, t0, 1000))
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 1000);
    }
}
