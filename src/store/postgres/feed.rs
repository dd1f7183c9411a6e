//! What cluster mode asks of the database, apart from the refresh tokens
//! themselves: the change feed (read side; `mod.rs` writes it with each
//! create and delete), the replica registry, and the listening connection.
//!
//! Everything here is async and runs on the backend's own runtime
//! (`ClusterDb::handle`); the cluster loop above the store drives it.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, GenericClient, NoTls};

use super::schema::FEED_LOCK;
use super::tls::RustlsMakeTls;
use super::PgError;
use crate::restrict::RestrictionSpec;
use crate::store::accounts::{AccountRecord, Source};
use crate::store::record::{PreviousSecret, RefreshHash, RefreshRecord};

/// The channel every change is announced on (its payload: the `seq`).
pub(crate) const CHANNEL: &str = "tokengate";
/// `application_name` of the listening connection, so operators (and the
/// tests) can find it in `pg_stat_activity`.
pub(crate) const LISTENER_NAME: &str = "tokengate-listener";

/// One row of the change feed, with the token's record for a create (if
/// the token still exists: a create followed by a delete reads as both).
pub(crate) enum Change {
    /// Boxed: a record (with its restrictions) dwarfs the other variants.
    Created(RefreshHash, Box<RefreshRecord>),
    /// Edited (fields or secret): the token as it was when the page was
    /// read, and the change row's position (see `RefreshStore::edited_at`).
    Updated(RefreshHash, Box<RefreshRecord>, i64),
    Deleted(u64),
    /// An access token its holder revoked: its id, and its expiry (Unix
    /// seconds) until which it must be refused.
    AccessRevoked(u128, u64),
    /// A boot was retired, or all of them (`rotate`): the registry says which.
    Retired,
    /// An account changed: as it was when the page was read (`None`:
    /// deleted), and the change row's position.
    Account(String, Option<Box<AccountRecord>>, i64),
    /// A page session ended (a logout): its cookie's fingerprint.
    Logout([u8; 32]),
}

/// A handle on the database for the cluster: the pool, the runtime the
/// connections live on, and what a listening connection is made from.
#[derive(Clone)]
pub(crate) struct ClusterDb {
    pub(crate) pool: Pool,
    pub(crate) handle: tokio::runtime::Handle,
    pub(crate) url: String,
    connect: tokio_postgres::Config,
    tls: Option<RustlsMakeTls>,
    /// The feed's position when the tokens were loaded at start.
    pub(crate) start_seq: i64,
}

impl ClusterDb {
    pub(super) fn new(
        pool: Pool,
        handle: tokio::runtime::Handle,
        url: String,
        connect: tokio_postgres::Config,
        tls: Option<RustlsMakeTls>,
        start_seq: i64,
    ) -> ClusterDb {
        ClusterDb {
            pool,
            handle,
            url,
            connect,
            tls,
            start_seq,
        }
    }

    /// Opens the listening connection (not pooled: a pooled connection
    /// never delivers notifications) and drives it on a task of its own,
    /// which calls `wake` on every notification. `LISTEN` is issued before
    /// this returns, so a change committed after it is never missed.
    /// The connection ends when the returned client is dropped.
    pub(crate) async fn listen(&self, wake: Arc<Notify>) -> Result<Client, PgError> {
        let mut config = self.connect.clone();
        config.application_name(LISTENER_NAME);
        let client = match &self.tls {
            Some(tls) => {
                let (client, conn) = config.connect(tls.clone()).await?;
                tokio::spawn(drive(conn, wake));
                client
            }
            None => {
                let (client, conn) = config.connect(NoTls).await?;
                tokio::spawn(drive(conn, wake));
                client
            }
        };
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        Ok(client)
    }
}

/// Polls the connection itself (tokio-postgres hands notifications only to
/// whoever polls `poll_message`), until it closes or fails.
async fn drive<S, T>(mut conn: tokio_postgres::Connection<S, T>, wake: Arc<Notify>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!(error = %PgError::from(e).0, "the listening connection to PostgreSQL failed");
                // Wake the loop so it notices at once, not at its next poll.
                wake.notify_one();
                return;
            }
            None => {
                wake.notify_one();
                return;
            }
        }
    }
}

/// The feed's newest position (0 when empty).
pub(crate) async fn feed_position(client: &Client) -> Result<i64, PgError> {
    let row = client
        .query_one("SELECT coalesce(max(seq), 0) FROM tokengate_changes", &[])
        .await?;
    Ok(row.try_get(0)?)
}

/// One page of the feed: the changes to apply, in order, and how far it
/// read (rows of creates whose token is gone since are read and skipped:
/// the cursor must still pass them).
pub(crate) struct Page {
    pub(crate) changes: Vec<Change>,
    /// The last `seq` read (the caller's position when nothing was read).
    pub(crate) last: i64,
    /// Rows read, skipped ones included: a full page means read on.
    pub(crate) rows: usize,
}

/// Changes after `seq`, in order, at most `limit` rows.
pub(crate) async fn changes_since(client: &Client, seq: i64, limit: i64) -> Result<Page, PgError> {
    let rows = client
        .query(
            &format!(
                "SELECT c.seq, c.kind, c.refresh_id, t.hash, t.name, t.created, t.expires, \
                    t.last_used, t.use_count, t.last_ip, t.last_user_agent, \
                    t.restrictions::text, t.prev_hash, t.prev_until, t.generation, \
                    t.created_by, c.account, c.session, \
                    a.name, a.role, a.disabled, a.source, a.password_hash, a.created, \
                    a.last_login, c.access_id, c.access_expires, {GOVERNANCE} \
             FROM tokengate_changes c LEFT JOIN refresh_tokens t \
               ON c.kind IN ('create', 'update') AND t.id = c.refresh_id \
             LEFT JOIN tokengate_accounts a ON c.kind = 'account' AND a.name = c.account \
             WHERE c.seq > $1 ORDER BY c.seq LIMIT $2"
            ),
            &[&seq, &limit],
        )
        .await?;
    let mut page = Page {
        changes: Vec::with_capacity(rows.len()),
        last: seq,
        rows: rows.len(),
    };
    for row in rows {
        let seq: i64 = row.try_get(0)?;
        page.last = page.last.max(seq);
        let kind: &str = row.try_get(1)?;
        let refresh_id: Option<i64> = row.try_get(2)?;
        let id = refresh_id.and_then(|i| u64::try_from(i).ok());
        let change = match (kind, id) {
            ("create", Some(id)) => match token_at(&row, 3, id)? {
                Some((hash, rec)) => Change::Created(hash, Box::new(rec)),
                // Deleted since: its delete follows in the feed.
                None => continue,
            },
            ("update", Some(id)) => match token_at(&row, 3, id)? {
                // The token as it is now (later edits included: applying
                // it again is a no-op).
                Some((hash, rec)) => Change::Updated(hash, Box::new(rec), seq),
                None => continue,
            },
            ("delete", Some(id)) => Change::Deleted(id),
            ("revoke_access", _) => {
                let id: Option<Vec<u8>> = row.try_get(25)?;
                let expires: Option<i64> = row.try_get(26)?;
                match (id.and_then(|b| <[u8; 16]>::try_from(b).ok()), expires) {
                    (Some(id), Some(e)) => Change::AccessRevoked(
                        u128::from_be_bytes(id),
                        u64::try_from(e).unwrap_or(0),
                    ),
                    _ => continue,
                }
            }
            ("retire" | "rotate", _) => Change::Retired,
            ("account", _) => {
                let Some(name) = row.try_get::<_, Option<String>>(16)? else {
                    continue;
                };
                Change::Account(name, account_at(&row, 18)?.map(Box::new), seq)
            }
            ("logout", _) => {
                let fp: Option<Vec<u8>> = row.try_get(17)?;
                match fp.and_then(|f| <[u8; 32]>::try_from(f.as_slice()).ok()) {
                    Some(fp) => Change::Logout(fp),
                    None => continue,
                }
            }
            _ => continue,
        };
        page.changes.push(change);
    }
    Ok(page)
}

/// Every token's id and hash: what a replica reconciles its maps with after
/// it lost the feed for a while.
pub(crate) async fn all_ids(client: &Client) -> Result<Vec<u64>, PgError> {
    let rows = client.query("SELECT id FROM refresh_tokens", &[]).await?;
    let mut ids = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get(0)?;
        if let Ok(id) = u64::try_from(id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// The tokens whose ids are in `ids`, as a create change each.
pub(crate) async fn records(client: &Client, ids: &[u64]) -> Result<Vec<Change>, PgError> {
    let ids: Vec<i64> = ids.iter().filter_map(|&i| i64::try_from(i).ok()).collect();
    let rows = client
        .query(
            &format!(
                "SELECT id, hash, name, created, expires, last_used, use_count, last_ip, \
                        last_user_agent, restrictions::text, prev_hash, prev_until, generation, \
                        created_by, {GOVERNANCE} \
                 FROM refresh_tokens t WHERE id = ANY($1)"
            ),
            &[&ids],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get(0)?;
        let Ok(id) = u64::try_from(id) else {
            continue;
        };
        if let Some((hash, rec)) = token_at(&row, 1, id)? {
            out.push(Change::Created(hash, Box::new(rec)));
        }
    }
    Ok(out)
}

/// The columns of suspension, not-before and usage limit, read by name
/// (`governance`) wherever a token's row is (the table is `t`).
pub(super) const GOVERNANCE: &str = "t.suspended AS gov_suspended, \
     t.suspended_reason AS gov_suspended_reason, t.not_before AS gov_not_before, \
     t.max_uses AS gov_max_uses, t.uses_left AS gov_uses_left";

/// Fills in a record's suspension, not-before and usage limit from the
/// `GOVERNANCE` columns of `row`.
pub(super) fn governance(
    row: &tokio_postgres::Row,
    rec: &mut RefreshRecord,
) -> Result<(), PgError> {
    let unsigned = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
    rec.suspended = row
        .try_get::<_, Option<bool>>("gov_suspended")?
        .unwrap_or(false);
    rec.suspended_reason = row.try_get("gov_suspended_reason")?;
    rec.not_before = unsigned(row.try_get("gov_not_before")?);
    rec.max_uses = unsigned(row.try_get("gov_max_uses")?);
    rec.uses_left = unsigned(row.try_get("gov_uses_left")?);
    Ok(())
}

/// A token's hash and record from `row`'s columns `at..at + 13` (hash, name,
/// created, expires, last_used, use_count, last_ip, last_user_agent,
/// restrictions as text, prev_hash, prev_until, generation, created_by);
/// `None` when the hash is absent (a left join found no token) or not 32 bytes.
pub(super) fn token_at(
    row: &tokio_postgres::Row,
    at: usize,
    id: u64,
) -> Result<Option<(RefreshHash, RefreshRecord)>, PgError> {
    let hash: Option<Vec<u8>> = row.try_get(at)?;
    let Some(hash) = hash.and_then(|h| RefreshHash::try_from(h.as_slice()).ok()) else {
        return Ok(None);
    };
    let unsigned = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
    let mut rec = RefreshRecord {
        id,
        name: row.try_get(at + 1)?,
        created: unsigned(row.try_get(at + 2)?).unwrap_or(0),
        expires: unsigned(row.try_get(at + 3)?),
        last_used: unsigned(row.try_get(at + 4)?),
        use_count: unsigned(row.try_get(at + 5)?).unwrap_or(0),
        last_ip: row.try_get(at + 6)?,
        last_user_agent: row.try_get(at + 7)?,
        restrictions: {
            let text: Option<String> = row.try_get(at + 8)?;
            // Unreadable restrictions stop the feed here (an error, retried)
            // rather than map the token without them: never fail open.
            restrictions(text.as_deref())
                .map_err(|e| PgError(format!("token {id}: unreadable restrictions: {e}")))?
        },
        previous: previous(row.try_get(at + 9)?, row.try_get(at + 10)?),
        // Never negative (a CHECK); an unreadable one stops the feed here
        // (an error, retried): a generation read as 0 would revive tokens.
        generation: {
            let g: i64 = row.try_get(at + 11)?;
            u64::try_from(g).map_err(|_| PgError(format!("token {id}: negative generation")))?
        },
        created_by: row.try_get(at + 12)?,
        ..RefreshRecord::new(id, "", 0, None)
    };
    governance(row, &mut rec)?;
    Ok(Some((hash, rec)))
}

/// Every account.
pub(crate) async fn all_accounts(
    client: &impl GenericClient,
) -> Result<Vec<AccountRecord>, PgError> {
    let rows = client
        .query(
            "SELECT name, role, disabled, source, password_hash, created, last_login \
             FROM tokengate_accounts",
            &[],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(a) = account_at(&row, 0)? {
            out.push(a);
        }
    }
    Ok(out)
}

/// An account from `row`'s columns `at..at + 7` (name, role, disabled,
/// source, password_hash, created, last_login); `None` when the name is
/// absent (a left join found none: deleted).
pub(crate) fn account_at(
    row: &tokio_postgres::Row,
    at: usize,
) -> Result<Option<AccountRecord>, PgError> {
    let Some(name) = row.try_get::<_, Option<String>>(at)? else {
        return Ok(None);
    };
    let role: String = row.try_get(at + 1)?;
    let source: String = row.try_get(at + 3)?;
    // The table's CHECKs allow only known values; an unknown one stops
    // here (an error, retried) rather than grant a guessed role.
    let role = role
        .parse()
        .map_err(|e: String| PgError(format!("account {name:?}: {e}")))?;
    let source = Source::parse(&source)
        .ok_or_else(|| PgError(format!("account {name:?}: unknown source {source:?}")))?;
    let unsigned = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
    Ok(Some(AccountRecord {
        role,
        disabled: row.try_get(at + 2)?,
        source,
        password_hash: row.try_get(at + 4)?,
        created: unsigned(row.try_get(at + 5)?).unwrap_or(0),
        last_login: unsigned(row.try_get(at + 6)?),
        name,
    }))
}

/// The `prev_hash` and `prev_until` columns: a rotated-out secret in its
/// grace period (a malformed pair is none: the old secret then fails
/// closed).
pub(crate) fn previous(hash: Option<Vec<u8>>, until: Option<i64>) -> Option<PreviousSecret> {
    Some(PreviousSecret {
        hash: RefreshHash::try_from(hash?.as_slice()).ok()?,
        until: u64::try_from(until?).ok()?,
    })
}

/// The `restrictions` column (as text) as a spec; NULL = none.
pub(crate) fn restrictions(text: Option<&str>) -> Result<Option<RestrictionSpec>, String> {
    text.map(serde_json::from_str::<RestrictionSpec>)
        .transpose()
        .map(|s| s.filter(|s| !s.is_empty()))
        .map_err(|e| e.to_string())
}

/// Adds this boot to the registry (its heartbeat starts now).
pub(crate) async fn register(
    client: &Client,
    boot: u64,
    nonce: &[u8; 32],
    name: &str,
) -> Result<(), PgError> {
    let boot = to_db(boot)?;
    // One statement, so the announcement commits with the row: the peers
    // wake and read the registry within milliseconds, not at their next poll.
    client
        .execute(
            "WITH r AS (INSERT INTO tokengate_replicas (boot_id, nonce, name) \
                        VALUES ($1, $2, $3) RETURNING boot_id) \
             SELECT pg_notify($4, 'boot') FROM r",
            &[&boot, &nonce.as_slice(), &name, &CHANNEL],
        )
        .await?;
    Ok(())
}

/// Renews this boot's heartbeat. False when the cluster retired the boot
/// (a rotation, or its row is gone): it must not come back to life. A
/// heartbeat that lapsed while the database was away is simply renewed: the
/// process did not restart, so by DPA's rule its tokens live on.
pub(crate) async fn heartbeat(client: &Client, boot: u64) -> Result<bool, PgError> {
    let boot = to_db(boot)?;
    let n = client
        .execute(
            "UPDATE tokengate_replicas SET heartbeat = now() \
             WHERE boot_id = $1 AND retired IS NULL",
            &[&boot],
        )
        .await?;
    Ok(n == 1)
}

/// A boot in the registry.
pub(crate) struct PeerBoot {
    pub(crate) boot: u64,
    pub(crate) nonce: [u8; 32],
    /// Retired: stopped cleanly, rotated, or found silent (for good).
    pub(crate) retired: bool,
    /// Heard from within `node_timeout` (see `FRESH`).
    pub(crate) fresh: bool,
}

/// A boot is fresh when its heartbeat is within `node_timeout` ($2, in ms)
/// by the database's clock (one clock for every replica), or when the
/// database restarted within `node_timeout` and the boot was fresh when it
/// went down: nobody could heartbeat meanwhile, so every replica alive then
/// gets `node_timeout` to be heard from again. A boot that was already
/// silent before the restart gets no such grace.
const FRESH: &str = "(heartbeat > now() - make_interval(secs => $2::bigint / 1000.0) \
     OR (pg_postmaster_start_time() > now() - make_interval(secs => $2::bigint / 1000.0) \
         AND heartbeat > pg_postmaster_start_time() - make_interval(secs => $2::bigint / 1000.0)))";

/// Every boot other than `own`, with whether it is retired and whether it
/// is fresh (`FRESH`).
pub(crate) async fn peer_boots(
    client: &Client,
    own: u64,
    node_timeout: Duration,
) -> Result<Vec<PeerBoot>, PgError> {
    let own = to_db(own)?;
    let timeout = millis(node_timeout);
    let rows = client
        .query(
            &format!(
                "SELECT boot_id, nonce, retired IS NOT NULL, {FRESH} \
                 FROM tokengate_replicas WHERE boot_id <> $1"
            ),
            &[&own, &timeout],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get(0)?;
        let nonce: Vec<u8> = row.try_get(1)?;
        let retired: bool = row.try_get(2)?;
        let fresh: bool = row.try_get(3)?;
        if let (Ok(boot), Ok(nonce)) = (u64::try_from(id), <[u8; 32]>::try_from(nonce.as_slice())) {
            out.push(PeerBoot {
                boot,
                nonce,
                retired,
                fresh,
            });
        }
    }
    Ok(out)
}

/// Retires, for good, the boots other than `own` that are not fresh: a
/// replica killed or cut off does not come back to life when it is heard
/// from again (it draws a new boot). Only a replica that has itself been in
/// contact for `node_timeout` calls this. Returns the boots retired.
pub(crate) async fn retire_silent(
    client: &Client,
    own: u64,
    node_timeout: Duration,
) -> Result<Vec<u64>, PgError> {
    let own = to_db(own)?;
    let timeout = millis(node_timeout);
    let rows = client
        .query(
            &format!(
                "UPDATE tokengate_replicas SET retired = now() \
                 WHERE retired IS NULL AND boot_id <> $1 AND NOT {FRESH} RETURNING boot_id"
            ),
            &[&own, &timeout],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get(0)?;
        out.extend(u64::try_from(id).ok());
    }
    Ok(out)
}

/// Retires one boot (a clean shutdown) or every boot (`boot = None`: a
/// rotation), with a change record so every replica hears of it at once.
/// Returns how many boots it retired.
pub(crate) async fn retire(pool: &Pool, boot: Option<u64>) -> Result<u64, PgError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&FEED_LOCK])
        .await?;
    let (n, kind, boot) = match boot {
        Some(b) => {
            let b = to_db(b)?;
            let n = tx
                .execute(
                    "UPDATE tokengate_replicas SET retired = now() \
                     WHERE boot_id = $1 AND retired IS NULL",
                    &[&b],
                )
                .await?;
            (n, "retire", Some(b))
        }
        None => {
            let n = tx
                .execute(
                    "UPDATE tokengate_replicas SET retired = now() WHERE retired IS NULL",
                    &[],
                )
                .await?;
            (n, "rotate", None)
        }
    };
    let row = tx
        .query_one(
            "INSERT INTO tokengate_changes (kind, boot_id) VALUES ($1, $2) RETURNING seq",
            &[&kind, &boot],
        )
        .await?;
    let seq: i64 = row.try_get(0)?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &seq.to_string()])
        .await?;
    tx.commit().await?;
    Ok(n)
}

/// Forgets what nobody needs any more: changes older than a day (a replica
/// away longer reconciles from the tokens themselves), all but the newest
/// (`feed_position` reads it: a reconcile after a quiet day must read the
/// position its records are at, not 0, or `store::positions` would skip
/// them), and boots retired or silent for as long.
pub(crate) async fn prune(client: &Client) -> Result<(), PgError> {
    client
        .batch_execute(
            "DELETE FROM tokengate_changes WHERE at < now() - interval '1 day' \
               AND seq < (SELECT max(seq) FROM tokengate_changes); \
             DELETE FROM tokengate_replicas \
               WHERE coalesce(retired, heartbeat) < now() - interval '1 day'",
        )
        .await?;
    Ok(())
}

fn to_db(v: u64) -> Result<i64, PgError> {
    i64::try_from(v).map_err(|_| PgError(format!("id {v} out of range")))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
