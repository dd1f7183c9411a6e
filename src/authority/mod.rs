//! The authentication core: every decision about a credential the public
//! listener is shown, free of HTTP, as typed verdicts the listener maps to
//! a response, a metric and a log line.
//!
//! - `verify`: a bearer access token on the proxy path (the client's
//!   failure budget, cluster freshness, the token, then its restrictions,
//!   with one catch-up with the cluster before a token unknown here is
//!   refused);
//! - `exchange`: a refresh grant for an access token (the same budget and
//!   catch-up);
//! - `holder`: what a token's holder may do with it, revoke it (RFC 7009)
//!   and read what it is;
//! - `introspect`: RFC 7662, what any token is, for a caller allowed to
//!   ask (and whether an access token is allowed to);
//! - `leaks`: which strings of a leaked-token report are live tokens,
//!   looked up alike whatever they turn out to be;
//! - `restrictions`: a token's networks, scopes and rate, checked on the
//!   canonical path the upstream will be sent.
//!
//! Failure accounting lives here: a refusal that could be a guess counts
//! against the client's budget (`throttle::AuthThrottle`), and a client
//! over it is refused before any MAC work or map lookup.
//!
//! The success path of `verify` is synchronous and allocates nothing; only
//! the rare catch-up with the cluster awaits.

mod grant;
mod holder;
mod introspect;
mod leaks;
pub(crate) mod restrictions;
mod verify;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::audit::Audit;
use crate::clock::Clock;
use crate::cluster::Cluster;
use crate::store::RefreshStore;
use crate::throttle::{AuthThrottle, Throttled};
use crate::tokens::access::AccessTokens;
use crate::tokens::format::RefreshHasher;

pub(crate) use grant::ExchangeRefusal;
pub(crate) use holder::{RevokeError, Revoked};
pub(crate) use introspect::{Stale as IntrospectStale, Subject};
pub(crate) use leaks::Leaked;
pub(crate) use verify::{Presented, Refusal, Verdict};

/// Why the `Authorization` header holds no bearer token to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    /// No `Authorization` header, or `Bearer` with nothing after it.
    Missing,
    /// More than one `Authorization` header.
    Repeated,
    /// Another scheme than `Bearer`.
    Scheme,
}

/// What the core asks of cluster mode: `Cluster` in the gateway, a
/// stand-in in the core's tests (no database needed to test a verdict).
pub(crate) trait Freshness: Send + Sync {
    /// May access tokens verified here still be trusted (contact within
    /// `cluster.max_staleness`)?
    fn fresh(&self) -> bool;
    /// Is the database reachable right now (exchanges mint only then)?
    fn connected(&self) -> bool;
    /// Waits (bounded) for a round with the database that starts after
    /// this call; false when none completed in time.
    fn catch_up(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>>;
}

impl Freshness for Cluster {
    #[inline]
    fn fresh(&self) -> bool {
        self.check_fresh().is_ok()
    }

    fn connected(&self) -> bool {
        self.check_connected().is_ok()
    }

    fn catch_up(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(Cluster::catch_up(self))
    }
}

/// The core's handle: what it reads and what it counts.
pub(crate) struct Authority {
    pub(crate) clock: Clock,
    /// Keys refresh-token hashes with the server secret.
    pub(crate) hasher: RefreshHasher,
    /// The refresh tokens: an exchange finds its token here, and a peer's
    /// access token its refresh token.
    pub(crate) store: Arc<RefreshStore>,
    /// Live access tokens; the boot nonce inside makes a restart invalidate them all.
    pub(crate) access: Arc<AccessTokens>,
    /// Failed token checks and exchanges per client address: consulted
    /// before any MAC work.
    pub(crate) throttle: AuthThrottle,
    /// Where the throttle writes its `auth.throttled` lines.
    pub(crate) audit: Arc<Audit>,
    /// Cluster mode: freshness and catch-up. `None` with redb.
    pub(crate) cluster: Option<Arc<dyn Freshness>>,
    /// `tokens.access_ttl`.
    pub(crate) access_ttl: Duration,
}

impl Authority {
    /// The monotonic time verdicts are taken at.
    #[inline]
    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    /// The verdict time for a request that arrived at `raw` (an
    /// `Instant::now()` read as it came in, used for its metrics too).
    #[inline]
    pub(crate) fn at(&self, raw: Instant) -> Instant {
        self.clock.at(raw)
    }

    /// Whether `client` may still try a credential at `now`: over its
    /// failure budget it is refused before anything else is done (the
    /// token endpoint asks before it reads the body).
    #[inline]
    pub(crate) fn admit_client(&self, client: IpAddr, now: Instant) -> Result<(), Throttled> {
        self.throttle.check(client, now)
    }

    /// A refusal that could be a guess: counted against `client`'s budget.
    fn failed(&self, client: IpAddr, now: Instant) {
        self.throttle.failed(client, now, &self.audit);
    }

    /// A new failure budget (`public.auth_failures_per_minute`, reloaded).
    pub(crate) fn set_failure_budget(&self, per_minute: u32) {
        self.throttle.set_budget(per_minute);
    }

    /// Writes `auth.throttled` for the windows over at `now` and forgets
    /// their clients.
    pub(crate) fn sweep(&self, now: Instant) {
        self.throttle.sweep(now, &self.audit);
    }

    /// At shutdown: writes `auth.throttled` for windows still running.
    pub(crate) fn report_all(&self) {
        self.throttle.report_all(&self.audit);
    }
}
