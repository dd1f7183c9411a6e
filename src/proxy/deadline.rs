//! The response timeout's timers, kept and reused by one worker.
//!
//! `tokio::time::timeout` creates a timer per request: it is put into the
//! runtime's timer wheel at its first poll and taken out again when the
//! response comes (a lock, a wheel insert and a removal, with their clock
//! arithmetic, on every proxied request). Here a finished request's timer
//! goes back to its worker's free list and the next request moves it to its
//! own deadline. Every request has the same timeout, so the new deadline is
//! later than the old one, and tokio then only raises the entry's deadline
//! in place (one compare-and-swap); the wheel meets the entry at the old
//! deadline once and files it again further on, without waking anyone.
//!
//! A timer in the free list may still hold the waker of the request that
//! used it last: if it is not reused before its deadline, that task is woken
//! once for nothing (tasks tolerate spurious wake-ups), and its memory is
//! kept until then. The free list is bounded.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Free timers kept per worker: more than the requests a worker usually
/// has in flight at once; beyond it, timers are dropped as before.
const KEEP: usize = 256;

/// One worker's free timers.
#[derive(Default)]
pub(super) struct Timers {
    free: Mutex<Vec<Pin<Box<Sleep>>>>,
}

impl Timers {
    /// A timer that fires `after` from `now` (`Instant::now()`, read by the
    /// caller), until the returned guard is dropped.
    pub(super) fn start(&self, now: std::time::Instant, after: Duration) -> Deadline<'_> {
        // From the system clock, as the caller's read is: a paused tokio
        // test clock (`tokio::time::pause`, used by no test) would not move it.
        let at = Instant::from_std(now) + after;
        let reused = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let sleep = match reused {
            Some(mut sleep) => {
                sleep.as_mut().reset(at);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(at)),
        };
        Deadline {
            sleep: Some(sleep),
            timers: self,
        }
    }

    #[cfg(test)]
    fn free(&self) -> usize {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A request's timer: ready once its deadline has passed; back to the free
/// list when dropped.
pub(super) struct Deadline<'a> {
    sleep: Option<Pin<Box<Sleep>>>,
    timers: &'a Timers,
}

impl Future for Deadline<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut().sleep.as_mut() {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

impl Drop for Deadline<'_> {
    fn drop(&mut self) {
        if let Some(sleep) = self.sleep.take() {
            let mut free = self
                .timers
                .free
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if free.len() < KEEP {
                free.push(sleep);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> std::time::Instant {
        std::time::Instant::now()
    }

    #[tokio::test]
    async fn a_timer_fires_at_its_deadline_and_is_reused_after() {
        let timers = Timers::default();
        timers.start(now(), Duration::from_millis(5)).await;
        assert_eq!(timers.free(), 1, "the timer went back to the free list");
        // The reused one has fired: it is filed again, and fires again.
        let again = timers.start(now(), Duration::from_millis(5));
        assert_eq!(timers.free(), 0);
        again.await;
        assert_eq!(timers.free(), 1);
    }

    #[tokio::test]
    async fn a_reused_timer_takes_the_new_deadline_not_the_old_one() {
        let timers = Timers::default();
        // A long timer put back before it fired...
        drop(timers.start(now(), Duration::from_secs(3600)));
        assert_eq!(timers.free(), 1);
        // ...then moved to a short deadline (earlier than its old one).
        let short = timers.start(now(), Duration::from_millis(10));
        assert_eq!(timers.free(), 0);
        tokio::time::timeout(Duration::from_secs(5), short)
            .await
            .unwrap_or_else(|_| panic!("the reused timer kept its old deadline"));
        // And one moved later does not fire at its old deadline.
        drop(timers.start(now(), Duration::from_millis(1)));
        let later = timers.start(now(), Duration::from_secs(3600));
        let early = tokio::time::timeout(Duration::from_millis(50), later).await;
        assert!(early.is_err(), "fired at the old deadline");
    }

    #[tokio::test]
    async fn the_free_list_is_bounded() {
        let timers = Timers::default();
        let held: Vec<_> = (0..KEEP + 10)
            .map(|_| timers.start(now(), Duration::from_secs(60)))
            .collect();
        drop(held);
        assert_eq!(timers.free(), KEEP);
    }
}
