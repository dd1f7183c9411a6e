//! The token lifecycle: every change to a refresh token, in one place.
//!
//! - `create`, `edit`, `rotate`, `delete`: an administrator's changes (the
//!   admin API over TCP and the CLI's local socket alike), each committed
//!   to the store on the blocking pool, answered only after the commit,
//!   and written to the log and the audit log;
//! - the changes another replica made (`cluster::Replica`, which the
//!   change feed calls): applied to the in-memory maps with the same
//!   revocation as a local change;
//! - `suspend` and `resume`: a token stops exchanging (and its access
//!   tokens end) until an administrator lets it work again;
//! - `sweep`, `revoke_unused` and `flush_usage`: the periodic upkeep of
//!   what it holds.
//!
//! A change that ends a refresh token (a delete, a rotation without a grace
//! period) also drops the access tokens it issued, here and (through the
//! feed) on every other replica.

use std::sync::Arc;
use std::time::Instant;

use crate::audit::{Actor, Audit};
use crate::clock::Clock;
use crate::cluster::Replica;
use crate::restrict::RestrictionSpec;
use crate::store::{
    AccountRecord, CreateLimits, Edit, RefreshHash, RefreshRecord, RefreshStore, RefreshToken,
    StoreError,
};
use crate::tokens::access::AccessTokens;
use crate::tokens::format::{new_refresh_token, parse_refresh, RefreshFormatError, RefreshHasher};

/// Why a change to a refresh token was not made (or not confirmed).
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
    #[error("minted a malformed token: {0}")]
    Minted(#[source] RefreshFormatError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("token store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The lifecycle's handle: the store, the access tokens it revokes, and
/// the audit log its changes are written to.
pub(crate) struct Lifecycle {
    pub(crate) clock: Clock,
    /// Keys refresh-token hashes with the server secret.
    pub(crate) hasher: RefreshHasher,
    /// Durable refresh tokens and their in-memory mirror; `Arc` so blocking
    /// writes can run on the blocking pool.
    pub(crate) store: Arc<RefreshStore>,
    /// Live access tokens: a token that ends takes its access tokens along.
    pub(crate) access: Arc<AccessTokens>,
    pub(crate) audit: Arc<Audit>,
}

/// A rotated token: the token, its new secret (shown this once), and until
/// when the old secret still exchanges (`None`: it stopped at once).
pub(crate) struct Rotated {
    pub(crate) token: Arc<RefreshToken>,
    pub(crate) secret: String,
    pub(crate) old_until: Option<u64>,
}

impl Lifecycle {
    /// Every refresh token, expired ones included (never a token string).
    pub(crate) fn list(&self) -> Vec<Arc<RefreshToken>> {
        self.store.list()
    }

    /// Mints a refresh token, commits its hash to the store, and only then
    /// returns it with its string, which is never stored. No log or audit
    /// line: `create` is the administrator's way; this is also `serve
    /// --dev`'s sample token at start.
    pub(crate) async fn mint(
        &self,
        name: &str,
        created: u64,
        expires: Option<u64>,
        restrictions: &RestrictionSpec,
    ) -> Result<(Arc<RefreshToken>, String), LifecycleError> {
        self.mint_by(
            name,
            created,
            expires,
            restrictions,
            None,
            CreateLimits::default(),
        )
        .await
    }

    async fn mint_by(
        &self,
        name: &str,
        created: u64,
        expires: Option<u64>,
        restrictions: &RestrictionSpec,
        created_by: Option<String>,
        limits: CreateLimits,
    ) -> Result<(Arc<RefreshToken>, String), LifecycleError> {
        let (secret, hash) = self.new_secret()?;
        let store = self.store.clone();
        let name = name.to_owned();
        let spec = restrictions.clone();
        let created = tokio::task::spawn_blocking(move || {
            store.create_by(
                hash,
                &name,
                created,
                expires,
                Some(&spec),
                created_by.as_deref(),
                &limits,
            )
        })
        .await??;
        Ok((created, secret))
    }

    /// `mint`, for an administrator (`by`, recorded as `created_by`), with
    /// a not-before and a usage limit if given: logged and audited
    /// (`refresh_token.created`).
    pub(crate) async fn create(
        &self,
        by: &Actor,
        name: &str,
        created: u64,
        expires: Option<u64>,
        restrictions: &RestrictionSpec,
        limits: CreateLimits,
    ) -> Result<(Arc<RefreshToken>, String), LifecycleError> {
        let (token, secret) = self
            .mint_by(
                name,
                created,
                expires,
                restrictions,
                Some(by.who.user.clone()),
                limits,
            )
            .await?;
        tracing::info!(peer = %by.peer, user = %by.who.user, token_id = token.id, token_name = %token.name, "refresh token created");
        self.audit(by, "refresh_token.created", &token, "");
        Ok((token, secret))
    }

    /// Edits token `id`'s fields (`changed` names them, for the log and the
    /// audit line `refresh_token.updated`); its live access tokens follow
    /// from their next request. `None`: no such token.
    pub(crate) async fn edit(
        &self,
        by: &Actor,
        id: u64,
        edit: Edit,
        changed: &str,
    ) -> Result<Option<Arc<RefreshToken>>, LifecycleError> {
        let Some(token) = self.commit_edit(id, edit).await? else {
            return Ok(None);
        };
        tracing::info!(peer = %by.peer, user = %by.who.user, token_id = token.id, token_name = %token.name, fields = %changed, "refresh token edited");
        self.audit(by, "refresh_token.updated", &token, changed);
        Ok(Some(token))
    }

    /// Gives token `id` a new secret. The old one keeps exchanging for
    /// `grace` seconds, or (0) stops at once, and then so do the access
    /// tokens issued under it. Audited as `refresh_token.rotated`.
    pub(crate) async fn rotate(
        &self,
        by: &Actor,
        id: u64,
        grace: u64,
    ) -> Result<Option<Rotated>, LifecycleError> {
        let old_until = (grace > 0).then(|| self.clock.unix().saturating_add(grace));
        let (secret, hash) = self.new_secret()?;
        let Some(token) = self
            .commit_edit(id, Edit::Secret { hash, old_until })
            .await?
        else {
            return Ok(None);
        };
        if old_until.is_none() {
            // Refused already through the old version's flag; this frees them.
            self.access.revoke_refresh(&[id]);
        }
        let how = match old_until {
            Some(_) => format!("old secret valid for {grace} s more"),
            None => "old secret and its access tokens ended at once".to_owned(),
        };
        tracing::info!(peer = %by.peer, user = %by.who.user, token_id = token.id, token_name = %token.name, "refresh token rotated: {how}");
        self.audit(by, "refresh_token.rotated", &token, &how);
        Ok(Some(Rotated {
            token,
            secret,
            old_until,
        }))
    }

    /// Deletes `ids` in one transaction, then drops the access tokens they
    /// issued; one `refresh_token.deleted` line each. Returns the tokens
    /// that were there (unknown ids are left out).
    pub(crate) async fn delete(
        &self,
        by: &Actor,
        ids: Vec<u64>,
    ) -> Result<Vec<Arc<RefreshToken>>, LifecycleError> {
        let store = self.store.clone();
        let gone = tokio::task::spawn_blocking(move || store.delete(&ids)).await??;
        let ids: Vec<u64> = gone.iter().map(|r| r.id).collect();
        self.access.revoke_refresh(&ids);
        for r in &gone {
            tracing::info!(peer = %by.peer, user = %by.who.user, token_id = r.id, token_name = %r.name, "refresh token deleted");
            self.audit(by, "refresh_token.deleted", r, "");
        }
        Ok(gone)
    }

    /// Suspends token `id`: its exchanges are refused and the access tokens
    /// it issued end, here at once and on every other replica as the
    /// change feed brings the new generation (which also keeps them ended
    /// after a resume). Audited as `refresh_token.suspended` with the
    /// reason. Suspending a suspended token again only changes its reason
    /// (and writes nothing when that is the same). `None`: no such token.
    pub(crate) async fn suspend(
        &self,
        by: &Actor,
        id: u64,
        reason: Option<&str>,
    ) -> Result<Option<Arc<RefreshToken>>, LifecycleError> {
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        if let Some(t) = self.store.get(id) {
            if t.is_suspended() && t.suspended_reason() == reason {
                return Ok(Some(t));
            }
        }
        let edit = Edit::Suspend {
            reason: reason.map(str::to_owned),
        };
        let Some(token) = self.commit_edit(id, edit).await? else {
            return Ok(None);
        };
        // Refused already through the old version's flag; this frees them.
        self.access.revoke_refresh(&[id]);
        tracing::info!(peer = %by.peer, user = %by.who.user, token_id = token.id, token_name = %token.name, reason = reason.unwrap_or(""), "refresh token suspended");
        self.audit(by, "refresh_token.suspended", &token, reason.unwrap_or(""));
        Ok(Some(token))
    }

    /// Lets a suspended token exchange again; the access tokens it had
    /// before the suspension stay ended. Audited as
    /// `refresh_token.resumed`; a token that is not suspended is left as
    /// it is. `None`: no such token.
    pub(crate) async fn resume(
        &self,
        by: &Actor,
        id: u64,
    ) -> Result<Option<Arc<RefreshToken>>, LifecycleError> {
        if let Some(t) = self.store.get(id) {
            if !t.is_suspended() {
                return Ok(Some(t));
            }
        }
        let Some(token) = self.commit_edit(id, Edit::Resume).await? else {
            return Ok(None);
        };
        tracing::info!(peer = %by.peer, user = %by.who.user, token_id = token.id, token_name = %token.name, "refresh token resumed");
        self.audit(by, "refresh_token.resumed", &token, "");
        Ok(Some(token))
    }

    /// Deletes the tokens not exchanged for `after` seconds (since their
    /// last use, or their creation if never used), with their access
    /// tokens; one `refresh_token.revoked_unused` line each. The usage is
    /// flushed first and the backend judges each token again in its
    /// transaction, so a token used a moment ago (here, or on a replica
    /// that flushed) stays, and of replicas sweeping at once only the one
    /// whose delete found the token writes the line.
    pub(crate) async fn revoke_unused(
        &self,
        after: u64,
    ) -> Result<Vec<Arc<RefreshToken>>, LifecycleError> {
        let cutoff = self.clock.unix().saturating_sub(after);
        let due: Vec<u64> = self
            .store
            .list()
            .iter()
            .filter(|t| t.last_used().unwrap_or(t.created) <= cutoff)
            .map(|t| t.id)
            .collect();
        if due.is_empty() {
            return Ok(Vec::new());
        }
        self.flush_usage().await?;
        let store = self.store.clone();
        let gone = tokio::task::spawn_blocking(move || store.delete_unused(&due, cutoff)).await??;
        let ids: Vec<u64> = gone.iter().map(|r| r.id).collect();
        self.access.revoke_refresh(&ids);
        let why = format!("not exchanged for {after} s (tokens.revoke_unused_after)");
        for r in &gone {
            tracing::info!(token_id = r.id, token_name = %r.name, "refresh token revoked: unused");
            self.audit.record(&crate::audit::Event {
                event: "refresh_token.revoked_unused",
                actor: Some("system"),
                token_id: Some(r.id),
                token_name: Some(&r.name),
                reason: Some(&why),
                ..Default::default()
            });
        }
        Ok(gone)
    }

    /// Drops expired access tokens and retired secrets past their grace;
    /// how many access tokens went.
    pub(crate) fn sweep(&self, now: Instant) -> usize {
        let wall = self.clock.unix();
        self.store.sweep_secrets(wall);
        self.access.sweep(now, wall)
    }

    /// Writes changed usage (last use, count) to the store on the blocking
    /// pool; how many tokens were written.
    pub(crate) async fn flush_usage(&self) -> Result<usize, LifecycleError> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || store.flush_usage()).await??)
    }

    /// A fresh token string and its keyed hash.
    fn new_secret(&self) -> Result<(String, RefreshHash), LifecycleError> {
        let secret = new_refresh_token().map_err(LifecycleError::Random)?;
        let parsed = parse_refresh(&secret).map_err(LifecycleError::Minted)?;
        let hash = self.hasher.hash(&parsed);
        Ok((secret, hash))
    }

    async fn commit_edit(
        &self,
        id: u64,
        edit: Edit,
    ) -> Result<Option<Arc<RefreshToken>>, LifecycleError> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || store.edit(id, &edit)).await??)
    }

    /// One audit line for an administrator's change to a refresh token,
    /// saying what changed (`what`), if anything.
    fn audit(&self, by: &Actor, event: &'static str, token: &RefreshToken, what: &str) {
        self.audit.record(&crate::audit::Event {
            token_id: Some(token.id),
            token_name: Some(&token.name),
            reason: (!what.is_empty()).then_some(what),
            ..by.event(event)
        });
    }
}

/// The changes other replicas made, as the change feed delivers them.
/// Nothing here is audited: the replica that made a change wrote its line.
impl Replica for Lifecycle {
    fn created(&self, hash: RefreshHash, rec: &RefreshRecord) {
        if self.store.apply_created(hash, rec) {
            tracing::debug!(
                token_id = rec.id,
                "refresh token created on another replica"
            );
        }
    }

    fn updated(&self, hash: RefreshHash, rec: &RefreshRecord, at: i64) {
        if self.store.apply_updated(hash, rec, at) {
            // Rotated at once elsewhere: the old generation's tokens are
            // refused already; this frees them.
            self.access.revoke_refresh(&[rec.id]);
        }
    }

    fn deleted(&self, ids: &[u64]) {
        let gone = self.store.apply_deleted(ids);
        self.access.revoke_refresh(ids);
        for t in gone {
            tracing::debug!(token_id = t.id, token_name = %t.name, "refresh token deleted on another replica");
        }
    }

    fn ids(&self) -> Vec<u64> {
        self.store.ids()
    }

    fn holds(&self, id: u64) -> bool {
        self.store.get(id).is_some()
    }

    fn account(&self, name: &str, rec: Option<AccountRecord>, at: i64) -> bool {
        self.store.apply_account(name, rec, at)
    }

    fn all_accounts(&self, all: Vec<AccountRecord>, at: i64) {
        self.store.apply_all_accounts(all, at);
    }

    /// Page sessions are the admin listener's: `gateway` routes this there.
    fn session_ended(&self, _fingerprint: [u8; 32]) {}
}
