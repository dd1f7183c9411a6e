//! Cluster mode: replicas sharing refresh tokens in PostgreSQL.
//!
//! Each replica runs one loop (`run`, on the database runtime) that holds a
//! listening connection of its own and, on every notification, every
//! catch-up request and at least every `POLL`:
//!
//! 1. applies the change feed past its position, in order (creates and
//!    deletes of refresh tokens; a delete revokes every access token the
//!    refresh token issued, here as on the replica that deleted it);
//! 2. renews its boot's heartbeat (every quarter of `cluster.node_timeout`),
//!    and draws a new boot if the cluster retired this one;
//! 3. reads the live boots (heartbeat within `cluster.node_timeout` by the
//!    database's clock): their access tokens verify here, and the tokens of
//!    every other boot are refused from then on.
//!
//! A round that succeeds is "contact". Without contact for
//! `cluster.max_staleness` the replica can no longer vouch for a delete it
//! may have missed, so bearer checks answer 503 (fail closed, not 401: the
//! token is not known to be bad); without contact for `EXCHANGE_STALENESS`,
//! or with the listening connection down, exchanges answer 503. After a
//! reconnect the loop reconciles the maps with the tokens table (it may
//! have missed changes the feed has since pruned), then carries on.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::store::{
    cluster_db, AccountRecord, Change, ClusterDb, PgError, RefreshHash, RefreshRecord,
};
use crate::tokens::access::AccessTokens;

/// What the change feed changes on this replica: the refresh tokens held
/// here. The token lifecycle implements it (so a remote change is applied
/// as a local one is, revocation included); the feed only reads and
/// orders the changes.
pub(crate) trait Replica: Send + Sync + 'static {
    /// Created on another replica (or missing here after a reconnect).
    fn created(&self, hash: RefreshHash, rec: &RefreshRecord);
    /// Edited or rotated elsewhere: the token as read at feed position
    /// `at` or later (skipped when a later version is mapped already:
    /// `store::positions`).
    fn updated(&self, hash: RefreshHash, rec: &RefreshRecord, at: i64);
    /// Deleted elsewhere: gone here too, with the access tokens they issued.
    fn deleted(&self, ids: &[u64]);
    /// Every refresh-token id held here.
    fn ids(&self) -> Vec<u64>;
    /// Whether refresh token `id` is held here.
    fn holds(&self, id: u64) -> bool;
    /// An account changed elsewhere (`None`: deleted), read at feed
    /// position `at` or later; false when skipped (a later version is
    /// mapped already).
    fn account(&self, name: &str, rec: Option<AccountRecord>, at: i64) -> bool;
    /// Every account, after a reconnect (the feed may have been missed),
    /// read at feed position `at` or later.
    fn all_accounts(&self, all: Vec<AccountRecord>, at: i64);
    /// A page session ended elsewhere (a logout): its cookie's fingerprint.
    fn session_ended(&self, fingerprint: [u8; 32]);
}

/// The safety net under notifications: a round at least this often.
pub(crate) const POLL: Duration = Duration::from_millis(250);
/// Exchanges need fresher contact than the bearer check's staleness bound
/// (a new access token is a new promise), but not so fresh that a busy
/// machine's scheduling refuses them; never looser than `max_staleness`.
const EXCHANGE_STALENESS: Duration = Duration::from_secs(2);
/// How long one catch-up (an exchange's database fallback) may wait.
pub(crate) const CATCH_UP_WAIT: Duration = Duration::from_secs(1);
/// Most changes applied per query (a replica far behind reads in pages).
const PAGE: i64 = 10_000;
/// How often old changes and boots are pruned (by every replica: cheap).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The least time between two rounds: at most 40 rounds a second, however
/// many notifications and catch-ups (forged tokens among them) ask.
const MIN_ROUND_GAP: Duration = Duration::from_millis(25);
/// A round's queries together; beyond this the connection is presumed dead
/// (and never beyond half of `cluster.node_timeout`, so one slow round
/// cannot cost a healthy replica its heartbeat).
const ROUND_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) struct Cluster {
    db: ClusterDb,
    /// This replica's access tokens: its own boot, which it heartbeats and
    /// renews, and the peer boots whose tokens verify here.
    access: Arc<AccessTokens>,
    pub(crate) name: String,
    node_timeout: Duration,
    max_staleness: Duration,
    exchange_staleness: Duration,
    round_timeout: Duration,
    /// Set at shutdown, before this boot is retired: the loop must not
    /// mistake that for a rotation and register a new boot.
    stopping: AtomicBool,
    /// Milliseconds since `base` of the start of the last successful round.
    base: Instant,
    last_contact: AtomicU64,
    /// The listening connection is up and its last round succeeded.
    connected: AtomicBool,
    /// The feed's position: every change up to it is applied here.
    seq: AtomicI64,
    /// Rounds begun and ended, so a catch-up waits for a round that
    /// started after it asked.
    started: AtomicU64,
    ended: watch::Sender<u64>,
    /// Notifications and catch-up requests wake the loop.
    wake: Arc<Notify>,
    /// Changes applied from the feed since start (tests, stats).
    applied: AtomicU64,
}

/// Why the cluster refused to serve a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// No contact with the database for longer than allowed.
    Stale,
}

impl Cluster {
    /// Registers this process's boot (blocking, at start: its tokens must
    /// verify on the other replicas before the first one is handed out).
    pub(crate) fn start(
        db: ClusterDb,
        config: &crate::config::ClusterConfig,
        access: Arc<AccessTokens>,
    ) -> Result<Cluster, crate::store::StoreError> {
        let boot = access.own_boot();
        let name = config.name.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let pool = db.pool.clone();
        let seed_name = name.clone();
        db.handle.spawn(async move {
            let done = tokio::time::timeout(ROUND_TIMEOUT, async {
                let client = pool.get().await.map_err(PgError::from)?;
                cluster_db::register(&client, boot.0, &boot.1, &seed_name).await
            })
            .await;
            let _ = tx.send(done);
        });
        let fail = |detail: String| crate::store::StoreError::Postgres {
            url: db.url.clone(),
            detail: format!("registering this replica: {detail}"),
        };
        match rx.recv() {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(fail(e.0)),
            Ok(Err(_)) => return Err(fail(format!("no answer within {ROUND_TIMEOUT:?}"))),
            Err(_) => return Err(fail("the database runtime stopped".into())),
        }
        tracing::info!(replica = %name, boot = format!("{:016x}", boot.0), "replica registered");
        let seq = db.start_seq;
        Ok(Cluster {
            db,
            access,
            name,
            node_timeout: config.node_timeout,
            max_staleness: config.max_staleness,
            exchange_staleness: EXCHANGE_STALENESS.min(config.max_staleness),
            round_timeout: ROUND_TIMEOUT.min(config.node_timeout / 2),
            stopping: AtomicBool::new(false),
            base: Instant::now(),
            // Registering was contact.
            last_contact: AtomicU64::new(0),
            connected: AtomicBool::new(true),
            seq: AtomicI64::new(seq),
            started: AtomicU64::new(0),
            ended: watch::channel(0).0,
            wake: Arc::new(Notify::new()),
            applied: AtomicU64::new(0),
        })
    }

    fn since_contact(&self) -> Duration {
        let last = Duration::from_millis(self.last_contact.load(Ordering::Acquire));
        self.base.elapsed().saturating_sub(last)
    }

    /// Records contact as of `at` (when the round that succeeded began:
    /// what it read was true then, not when it ended).
    fn contact(&self, at: Instant) {
        let ms =
            u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX);
        self.last_contact.fetch_max(ms, Ordering::AcqRel);
    }

    /// Bearer checks: may access tokens verified here still be trusted?
    #[inline]
    pub(crate) fn check_fresh(&self) -> Result<(), Unavailable> {
        if self.since_contact() > self.max_staleness {
            Err(Unavailable::Stale)
        } else {
            Ok(())
        }
    }

    /// Exchanges (and readiness): is the database reachable right now?
    pub(crate) fn check_connected(&self) -> Result<(), Unavailable> {
        if !self.connected.load(Ordering::Acquire) || self.since_contact() > self.exchange_staleness
        {
            Err(Unavailable::Stale)
        } else {
            Ok(())
        }
    }

    /// Seconds since the last contact with the database (readiness, stats).
    pub(crate) fn staleness(&self) -> Duration {
        self.since_contact()
    }

    /// Changes applied from the feed since start.
    pub(crate) fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Waits (at most `CATCH_UP_WAIT`) for a round that starts after this
    /// call: afterwards, everything committed before the call is applied
    /// here. Concurrent callers share rounds. False when none completed in
    /// time (the database is slow or away).
    pub(crate) async fn catch_up(&self) -> bool {
        let target = self.started.load(Ordering::Acquire) + 1;
        let mut ended = self.ended.subscribe();
        self.wake.notify_one();
        tokio::time::timeout(CATCH_UP_WAIT, ended.wait_for(|&n| n >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Retires every boot of every replica (`tokengate cluster rotate`):
    /// every access token in the cluster is refused within a round, and
    /// each replica draws a new boot. Returns how many boots were retired.
    pub(crate) async fn rotate(&self) -> Result<u64, PgError> {
        let pool = self.db.pool.clone();
        let n = self
            .db
            .handle
            .spawn(async move {
                tokio::time::timeout(ROUND_TIMEOUT, cluster_db::retire(&pool, None)).await
            })
            .await
            .map_err(|e| PgError(e.to_string()))?
            .map_err(|_| PgError(format!("no answer within {ROUND_TIMEOUT:?}")))??;
        self.wake.notify_one();
        Ok(n)
    }

    /// Retires this process's boot at a clean shutdown: every replica drops
    /// its access tokens at once (DPA's rule: a restart ends them).
    pub(crate) async fn retire(&self, boot: u64) {
        self.stopping.store(true, Ordering::Release);
        let pool = self.db.pool.clone();
        let done = self
            .db
            .handle
            .spawn(async move {
                tokio::time::timeout(ROUND_TIMEOUT, cluster_db::retire(&pool, Some(boot))).await
            })
            .await;
        match done {
            Ok(Ok(Ok(_))) => tracing::info!(replica = %self.name, "boot retired"),
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "retiring this boot failed; the others drop its tokens after cluster.node_timeout")
            }
            _ => tracing::warn!(
                "retiring this boot timed out; the others drop its tokens after cluster.node_timeout"
            ),
        }
    }

    /// Starts the loop on the database runtime, applying the feed to
    /// `replica`; it ends with `shutdown`.
    pub(crate) fn spawn(
        self: Arc<Self>,
        replica: Arc<dyn Replica>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        self.db.handle.clone().spawn(async move {
            tokio::select! {
                () = self.run(&*replica) => {}
                _ = shutdown.wait_for(|&s| s) => {}
            }
        });
    }

    async fn run(&self, replica: &dyn Replica) {
        let mut backoff = Duration::from_millis(50);
        let mut first = true;
        let mut last_beat: Option<Instant> = None;
        let mut last_prune = Instant::now();
        loop {
            let client = match self.db.listen(self.wake.clone()).await {
                Ok(c) => c,
                Err(e) => {
                    self.connected.store(false, Ordering::Release);
                    tracing::warn!(url = %self.db.url, error = %e, "cannot reach PostgreSQL; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            let connected_since = Instant::now();
            if !first {
                tracing::info!(url = %self.db.url, "listening to PostgreSQL again; catching up");
            }
            // A new connection may follow missed changes (pruned from the
            // feed, if it was long): reconcile before trusting the feed.
            let mut reconcile = !first;
            first = false;
            if reconcile {
                // A rotation may have happened meanwhile (its record is
                // skipped with the feed): heartbeat in the first round.
                last_beat = None;
            }
            loop {
                let began = Instant::now();
                // Until this replica has been in contact for node_timeout
                // (after its start or a reconnect), a stale heartbeat says
                // more about the database having been away than about the
                // peer: it judges no peer dead yet.
                let settled = connected_since.elapsed() >= self.node_timeout;
                let round = tokio::time::timeout(
                    self.round_timeout,
                    self.round(replica, &client, reconcile, settled, &mut last_beat),
                )
                .await;
                match round {
                    Ok(Ok(())) => {
                        reconcile = false;
                        self.contact(began);
                        self.connected.store(true, Ordering::Release);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(url = %self.db.url, error = %e, "PostgreSQL round failed; reconnecting");
                        break;
                    }
                    Err(_) => {
                        tracing::warn!(url = %self.db.url, timeout = ?self.round_timeout, "PostgreSQL did not answer in time; reconnecting");
                        break;
                    }
                }
                if last_prune.elapsed() >= PRUNE_EVERY {
                    last_prune = Instant::now();
                    if let Err(e) = cluster_db::prune(&client).await {
                        tracing::debug!(error = %e, "pruning the change feed failed");
                    }
                }
                if client.is_closed() {
                    break;
                }
                // Rounds begin at most every MIN_ROUND_GAP, however many
                // notifications and catch-ups ask: the database's load from
                // one replica stays bounded (catch-ups share the next round).
                // A wake-up meanwhile is kept (Notify stores it), and one
                // that comes later starts a round at once.
                tokio::time::sleep_until((began + MIN_ROUND_GAP).into()).await;
                let _ = tokio::time::timeout(POLL, self.wake.notified()).await;
            }
            self.connected.store(false, Ordering::Release);
        }
    }

    /// One round: the feed, the heartbeat, the live boots.
    async fn round(
        &self,
        replica: &dyn Replica,
        client: &tokio_postgres::Client,
        reconcile: bool,
        settled: bool,
        last_beat: &mut Option<Instant>,
    ) -> Result<(), PgError> {
        let id = self.started.fetch_add(1, Ordering::AcqRel) + 1;
        let mut retired = false;
        if reconcile {
            self.reconcile(replica, client).await?;
        }
        loop {
            let from = self.seq.load(Ordering::Acquire);
            let page = cluster_db::changes_since(client, from, PAGE).await?;
            let mut deleted = Vec::new();
            for change in page.changes {
                match change {
                    Change::Created(hash, rec) => replica.created(hash, &rec),
                    Change::Updated(hash, rec, at) => replica.updated(hash, &rec, at),
                    Change::Deleted(id) => deleted.push(id),
                    Change::AccessRevoked(id, expires) => self.access.revoke_one(id, expires),
                    Change::Retired => retired = true,
                    Change::Account(name, rec, at) => {
                        replica.account(&name, rec.map(|r| *r), at);
                    }
                    Change::Logout(fp) => replica.session_ended(fp),
                }
                apply_deletes(replica, &mut deleted);
                self.applied.fetch_add(1, Ordering::Relaxed);
            }
            // Past every row read, skipped ones included (a page of creates
            // of tokens deleted since must not stop the cursor).
            self.seq.fetch_max(page.last, Ordering::AcqRel);
            if i64::try_from(page.rows).unwrap_or(PAGE) < PAGE {
                break;
            }
        }
        let beat_due = last_beat.is_none_or(|t| t.elapsed() >= self.node_timeout / 4);
        if beat_due || retired {
            let (boot, _) = self.access.own_boot();
            if cluster_db::heartbeat(client, boot).await? {
                *last_beat = Some(Instant::now());
            } else if self.stopping.load(Ordering::Acquire) {
                // Our own clean shutdown retired it: nothing to renew.
            } else {
                // Retired (a rotation, or the others found us silent past
                // node_timeout and dropped our tokens): a new boot, so
                // nothing minted by the old one comes back to life.
                let seed = self
                    .access
                    .renew_boot()
                    .map_err(|e| PgError(format!("drawing a new boot: {e}")))?;
                cluster_db::register(client, seed.0, &seed.1, &self.name).await?;
                *last_beat = Some(Instant::now());
                tracing::warn!(
                    replica = %self.name,
                    old = format!("{boot:016x}"),
                    new = format!("{:016x}", seed.0),
                    "this replica's boot was retired by the cluster; its access tokens are no longer valid"
                );
            }
        }
        let (own, _) = self.access.own_boot();
        if settled {
            let silent = cluster_db::retire_silent(client, own, self.node_timeout).await?;
            if !silent.is_empty() {
                tracing::info!(
                    boots = ?silent.iter().map(|b| format!("{b:016x}")).collect::<Vec<_>>(),
                    "replica boots silent past cluster.node_timeout retired"
                );
            }
        }
        let peers = cluster_db::peer_boots(client, own, self.node_timeout).await?;
        // Live: not retired, and fresh, or (not settled yet) already trusted.
        let live_boot = |p: &cluster_db::PeerBoot| {
            !p.retired && (p.fresh || (!settled && self.access.trusts(p.boot)))
        };
        let live: Vec<(u64, [u8; 32])> = peers
            .iter()
            .filter(|p| live_boot(p))
            .map(|p| (p.boot, p.nonce))
            .collect();
        let ended: Vec<u64> = peers
            .iter()
            .filter(|p| !live_boot(p))
            .map(|p| p.boot)
            .collect();
        let gone = self.access.set_peers(&live, &ended);
        if !gone.is_empty() {
            tracing::info!(
                boots = ?gone.iter().map(|b| format!("{b:016x}")).collect::<Vec<_>>(),
                "replica boots retired or silent past cluster.node_timeout; their access tokens are refused"
            );
        }
        self.ended.send_replace(id);
        Ok(())
    }

    /// Makes the maps match the tokens table: what is missing is added,
    /// what is gone is deleted. The feed position is read first, so the
    /// feed then replays anything that commits meanwhile.
    async fn reconcile(
        &self,
        replica: &dyn Replica,
        client: &tokio_postgres::Client,
    ) -> Result<(), PgError> {
        // Ours before the table is read: a token created here meanwhile is
        // not in this set, so it is never taken for a deleted one.
        let here: std::collections::HashSet<u64> = replica.ids().into_iter().collect();
        let seq = cluster_db::feed_position(client).await?;
        let stored = cluster_db::all_ids(client).await?;
        let stored_set: std::collections::HashSet<u64> = stored.iter().copied().collect();
        let mut gone: Vec<u64> = here
            .iter()
            .copied()
            .filter(|id| !stored_set.contains(id))
            .collect();
        let missing = stored.iter().filter(|id| !replica.holds(**id)).count();
        // Every record, not only the missing ones: an edit or a rotation
        // made while this replica was away shows only in the table.
        if !stored.is_empty() {
            for change in cluster_db::records(client, &stored).await? {
                if let Change::Created(hash, rec) = change {
                    if replica.holds(rec.id) {
                        // Read after `seq`: at least as new as it.
                        replica.updated(hash, &rec, seq);
                    } else {
                        replica.created(hash, &rec);
                    }
                }
            }
        }
        let deleted = gone.len();
        apply_deletes(replica, &mut gone);
        replica.all_accounts(cluster_db::all_accounts(client).await?, seq);
        // Never move backwards (the feed may have run ahead meanwhile).
        self.seq.fetch_max(seq, Ordering::AcqRel);
        tracing::info!(
            added = missing,
            deleted,
            "reconciled refresh tokens with PostgreSQL"
        );
        Ok(())
    }
}

/// Applies a batch of remote deletes (kept together: one pass over the
/// access tokens for the lot), then empties it.
fn apply_deletes(replica: &dyn Replica, ids: &mut Vec<u64>) {
    if ids.is_empty() {
        return;
    }
    replica.deleted(ids);
    ids.clear();
}
