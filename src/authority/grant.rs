//! The exchange (RFC 6749 §6) as the core decides it: cluster contact, the
//! exchange's checks (`tokens::exchange`), a use taken from a limited
//! token in the store, one catch-up with the cluster
//! before a well-formed token unknown here is refused, and the failure
//! count. The client's budget is asked first, before the request's body
//! is read (`Authority::admit_client`).

use std::time::Instant;

use super::Authority;
use crate::tokens::exchange::{Client, ExchangeError, Exchanger, Issued, RefreshGrant};
use crate::tokens::format::parse_refresh;

/// Why no access token was issued.
#[derive(Debug, Clone)]
pub(crate) enum ExchangeRefusal {
    /// Cluster mode: without the database this replica may have missed a
    /// delete, so it mints nothing it could not vouch for. Not counted.
    Stale,
    /// The exchange refused the grant; `NotValid` (unknown, deleted or
    /// mistyped: could be a guess) was counted against the client.
    Refused(ExchangeError),
}

impl Authority {
    /// Trades a refresh grant for an access token. `now` is when the
    /// client was admitted (`admit_client`): a failure counts in that window.
    pub(crate) async fn exchange(
        &self,
        grant: RefreshGrant<'_>,
        client: Client<'_>,
        now: Instant,
    ) -> Result<Issued, ExchangeRefusal> {
        if let Some(cluster) = &self.cluster {
            if !cluster.connected() {
                return Err(ExchangeRefusal::Stale);
            }
        }
        let exchanger = Exchanger {
            hasher: &self.hasher,
            store: &self.store,
            access: &self.access,
            clock: &self.clock,
            access_ttl: self.access_ttl,
        };
        let mut result = exchanger.check(grant, client);
        if let (Err(ExchangeError::NotValid), Some(cluster)) = (&result, &self.cluster) {
            // Unknown here, but well formed: it may have been created on
            // another replica a moment ago. Ask the database (coalesced
            // with other misses; the failure still counts against the
            // client's budget).
            if parse_refresh(grant.refresh_token).is_ok() {
                if !cluster.catch_up().await {
                    return Err(ExchangeRefusal::Stale);
                }
                result = exchanger.check(grant, client);
            }
        }
        if let (Err(ExchangeError::NotValid), Some(ip)) = (&result, client.ip) {
            // Unknown, deleted or mistyped could be a guess; expired could not.
            self.failed(ip, now);
        }
        let refresh = result.map_err(ExchangeRefusal::Refused)?;
        if refresh.max_uses().is_some() {
            // A limited token's use is taken in the backend before the
            // access token exists (PostgreSQL: one conditional UPDATE, the
            // same count for every replica; redb: a committed write), so
            // no more than the limit is ever issued. Unlimited tokens
            // never get here: their exchange touches no backend.
            let (store, token) = (self.store.clone(), refresh.clone());
            match tokio::task::spawn_blocking(move || store.consume_use(&token)).await {
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => {
                    return Err(ExchangeRefusal::Refused(ExchangeError::UsageLimit(refresh)))
                }
                Ok(Err(e)) => {
                    tracing::warn!(token_id = refresh.id, error = %e, "taking a use of a limited refresh token failed");
                    return Err(ExchangeRefusal::Refused(ExchangeError::Unavailable));
                }
                Err(e) => {
                    tracing::warn!(token_id = refresh.id, error = %e, "taking a use of a limited refresh token failed");
                    return Err(ExchangeRefusal::Refused(ExchangeError::Unavailable));
                }
            }
        }
        exchanger
            .issue(refresh, client)
            .map_err(ExchangeRefusal::Refused)
    }
}
