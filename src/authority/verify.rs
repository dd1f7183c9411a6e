//! The bearer check on the proxy path, in its order: the client's failure
//! budget, a bearer token at all, cluster freshness, the token (MAC, boot,
//! expiry, its refresh token), then the token's restrictions.

use std::net::IpAddr;
use std::time::Instant;

use http::Method;

use super::{restrictions, Authority, BearerError, Freshness};
use crate::restrict::Refused;
use crate::store::RefreshToken;
use crate::throttle::Throttled;
use crate::tokens::access::AccessError;

/// What a request presents to the bearer check: all the core sees of it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Presented<'a> {
    /// The `Authorization` header's token, or why there is none.
    pub(crate) bearer: Result<&'a [u8], BearerError>,
    /// The client, as `identify` decided it.
    pub(crate) client: IpAddr,
    pub(crate) method: &'a Method,
    /// The canonical path (`proxy::canonicalise`): the very path the
    /// upstream will be sent, so no spelling means one path to the scope
    /// check and another to the upstream.
    pub(crate) path: &'a str,
    pub(crate) now: Instant,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The client is over its failure budget: nothing else was looked at.
    Throttled(Throttled),
    /// No bearer token to check.
    Bearer(BearerError),
    /// Cluster mode: this replica may have missed a delete (no contact with
    /// the database for too long, or a catch-up that did not finish in
    /// time), so it vouches for no token. Not the token's fault: no count.
    Stale,
    /// The access token is refused.
    Token(AccessError),
    /// The token is good; its restrictions refuse this request.
    Restricted { refused: Refused, token_id: u64 },
}

/// The synchronous verdict.
pub(crate) enum Verdict<'a, R> {
    /// Good: what the caller's `on_token` made of the refresh token.
    Admitted(R),
    Refused(Refusal),
    /// Cluster mode: a token not known here yet (a peer that started a
    /// moment ago, or a refresh token created on one): `verify_caught_up`
    /// decides once this replica has caught up with the database.
    CatchUp(CatchUp<'a>),
}

/// A verdict deferred until a catch-up with the cluster.
pub(crate) struct CatchUp<'a> {
    cluster: &'a dyn Freshness,
    token: &'a [u8],
    /// The token's boot was unknown: if it still is afterwards, it was
    /// never registered (a guess), and counts.
    unknown_boot: bool,
}

impl CatchUp<'_> {
    /// What a caller that must let this value go (it borrows the request,
    /// which moves on) keeps to take the catch-up up again with
    /// `Authority::resume_catch_up`.
    pub(crate) fn unknown_boot(&self) -> bool {
        self.unknown_boot
    }
}

impl Authority {
    /// The catch-up a `Verdict::CatchUp` deferred, rebuilt from the same
    /// request's token and what `CatchUp::unknown_boot` said: the first
    /// check is not run (nor counted) again. `None` outside cluster mode
    /// (which never defers) or without a bearer token.
    pub(crate) fn resume_catch_up<'a>(
        &'a self,
        p: &Presented<'a>,
        unknown_boot: bool,
    ) -> Option<CatchUp<'a>> {
        Some(CatchUp {
            cluster: &**self.cluster.as_ref()?,
            token: p.bearer.as_ref().ok()?,
            unknown_boot,
        })
    }

    /// Checks a request's bearer token. `on_token` runs on the token's
    /// refresh token (under the access map's read guard: no reference
    /// count is touched) before its restrictions are checked; what it
    /// returns is the verdict's. No allocation on the way to `Admitted`.
    #[inline]
    pub(crate) fn verify<'a, R>(
        &'a self,
        p: &Presented<'a>,
        on_token: &mut impl FnMut(&RefreshToken) -> R,
    ) -> Verdict<'a, R> {
        // Over its failure budget, a client costs no MAC work or map lookup.
        if let Err(t) = self.admit_client(p.client, p.now) {
            return Verdict::Refused(Refusal::Throttled(t));
        }
        let token = match p.bearer {
            Ok(t) => t,
            Err(e) => return Verdict::Refused(Refusal::Bearer(e)),
        };
        if let Some(cluster) = &self.cluster {
            // Fail closed: past cluster.max_staleness this replica may
            // have missed a delete, so it vouches for no token.
            if !cluster.fresh() {
                return Verdict::Refused(Refusal::Stale);
            }
        }
        match self.check(token, p, on_token) {
            Ok(r) => Verdict::Admitted(r),
            Err(Refusal::Token(e @ (AccessError::RefreshUnseen | AccessError::UnknownBoot))) => {
                match &self.cluster {
                    Some(cluster) => Verdict::CatchUp(CatchUp {
                        cluster: &**cluster,
                        token,
                        unknown_boot: e == AccessError::UnknownBoot,
                    }),
                    None => Verdict::Refused(Refusal::Token(e)),
                }
            }
            Err(refusal) => {
                self.count(refusal, p);
                Verdict::Refused(refusal)
            }
        }
    }

    /// The second half of a deferred verdict: catches up with the cluster
    /// (concurrent misses share the round), then checks again.
    pub(crate) async fn verify_caught_up<R>(
        &self,
        c: CatchUp<'_>,
        p: &Presented<'_>,
        on_token: &mut impl FnMut(&RefreshToken) -> R,
    ) -> Result<R, Refusal> {
        if !c.cluster.catch_up().await {
            // The database did not answer in time: the token is not known
            // to be bad, so no 401 and no count.
            return Err(Refusal::Stale);
        }
        let checked = self.check(c.token, p, on_token);
        if let Err(refusal) = checked {
            if c.unknown_boot && refusal == Refusal::Token(AccessError::UnknownBoot) {
                self.failed(p.client, p.now);
            }
            self.count(refusal, p);
        }
        checked
    }

    /// The token, then (on its refresh token, under the map's guard) the
    /// caller's `on_token` and the token's restrictions. An unrestricted
    /// token pays one branch for them.
    #[inline]
    fn check<R>(
        &self,
        token: &[u8],
        p: &Presented<'_>,
        on_token: &mut impl FnMut(&RefreshToken) -> R,
    ) -> Result<R, Refusal> {
        let checked = self.access.validate_with(
            token,
            p.now,
            self.clock.unix(),
            |id| {
                self.store.get(id).ok_or(if self.store.is_gone(id) {
                    AccessError::RefreshGone
                } else {
                    AccessError::RefreshUnseen
                })
            },
            |r| {
                let out = on_token(r);
                if let Some(x) = r.restrictions() {
                    restrictions::check(x, p.client, p.method, p.path, p.now)
                        .map_err(|refused| (refused, r.id))?;
                }
                Ok(out)
            },
        );
        match checked {
            Ok(Ok(r)) => Ok(r),
            Ok(Err((refused, token_id))) => Err(Refusal::Restricted { refused, token_id }),
            Err(e) => Err(Refusal::Token(e)),
        }
    }

    /// Counts a refusal that could be a guess against the client's budget.
    fn count(&self, refusal: Refusal, p: &Presented<'_>) {
        if let Refusal::Token(e) = refusal {
            if e.counts_as_guess() {
                self.failed(p.client, p.now);
            }
        }
    }
}
