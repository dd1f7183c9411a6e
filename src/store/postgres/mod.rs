//! The PostgreSQL backend: refresh tokens in a database that several
//! replicas share (cluster mode's ground; `docs/cluster.md` describes
//! cluster mode).
//!
//! **How an async client fits a blocking interface.** The store's `Backend`
//! trait blocks, and its callers already run it on the blocking pool
//! (`spawn_blocking`), as redb needs. This backend keeps that contract by
//! owning a small runtime of its own (one worker thread, `tokengate-db`):
//! the pooled connections (deadpool-postgres over tokio-postgres) live and
//! are driven there, and each call runs its future there while the calling
//! thread waits for the answer. Why not
//! `Handle::block_on` on the caller's runtime: the gateway's runtimes are
//! per-core single-threaded workers plus the admin runtime, and a
//! current-thread runtime cannot drive I/O for `Handle::block_on`, so the
//! database would depend on which runtime opened it; a runtime of its own
//! works the same from the gateway, from `tokengate db migrate` (no runtime
//! at all) and from tests. Why not an async trait: the in-memory maps are
//! the hot path and stay synchronous; only writes and start-up reach the
//! backend, and a dyn-compatible async trait costs a boxed future per call
//! and a second way of calling redb. The next phases' listener (LISTEN /
//! NOTIFY on a connection it drives itself) will run on this same runtime.
//!
//! Every call is bounded: a connection within `connect_timeout`, every
//! statement within `statement_timeout` (set as the session's
//! `statement_timeout`), and the call as a whole by their sum.
//!
//! At open: migrations (`schema`), then the server secret's fingerprint is
//! stored if the database has none and compared if it has, so a replica
//! with another secret (whose hashes would match no token) refuses to start.

pub(crate) mod feed;
mod outbox;
mod schema;
mod tls;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod};
use subtle::ConstantTimeEq;
use tokio_postgres::NoTls;

use super::accounts::{self, AccountChange, AccountRecord, Applied, Refusal};
use super::record::{CreateLimits, Edit, RefreshHash, RefreshRecord, UsageDelta, UsageRow};
use super::{Backend, Edited, SessionRow, StoreError};
use crate::config::{PostgresConfig, SslMode};
use crate::restrict::RestrictionSpec;

pub use schema::{Migrated, SCHEMA_VERSION};

/// A database failure as text that is safe to log and show: PostgreSQL's
/// own message and code, or the client's description. Never the URL.
pub(crate) struct PgError(pub(crate) String);

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            return PgError(format!(
                "{} {}: {}",
                db.severity(),
                db.code().code(),
                db.message()
            ));
        }
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        if let Some(hint) = tls::hint(&text) {
            text.push_str("\n  hint: ");
            text.push_str(hint);
        }
        PgError(text)
    }
}

impl From<PoolError> for PgError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Backend(e) => PgError::from(e),
            PoolError::Timeout(kind) => PgError(format!(
                "no database connection in time ({kind:?}; storage.postgres.connect_timeout)"
            )),
            other => PgError(other.to_string()),
        }
    }
}

/// The key of the secret's fingerprint in `tokengate_meta`.
const FINGERPRINT_KEY: &str = "secret_fingerprint";

pub(crate) struct PostgresBackend {
    pool: Pool,
    /// The runtime the pool's connections live on; `Option` only so that
    /// `Drop` can shut it down without blocking (a store may be dropped on
    /// an async thread, where a blocking runtime shutdown would panic).
    runtime: Option<tokio::runtime::Runtime>,
    /// The masked URL: what errors and logs name.
    url: String,
    /// Bound on one call: a connection plus a statement.
    call_timeout: Duration,
    /// Bound on migrating: a connection plus the migration transaction.
    migrate_timeout: Duration,
    /// What the listening connection is made from (cluster mode).
    connect: tokio_postgres::Config,
    tls: Option<tls::RustlsMakeTls>,
    /// The change feed's position read just before the tokens were loaded:
    /// the listener applies what came after (a change seen twice is harmless).
    start_seq: std::sync::atomic::AtomicI64,
}

impl PostgresBackend {
    /// Connects, migrates and checks the secret (blocking; not from an async thread).
    pub(crate) fn open(
        pg: &PostgresConfig,
        fingerprint: &[u8; 32],
        secret_file: &Path,
    ) -> Result<PostgresBackend, StoreError> {
        let backend = PostgresBackend::connect(pg)?;
        backend.migrate()?;
        let fp = fingerprint.to_vec();
        let stored: Vec<u8> = backend.run("checking the server secret", |pool| async move {
            let client = pool.get().await?;
            client
                .execute(
                    "INSERT INTO tokengate_meta (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO NOTHING",
                    &[&FINGERPRINT_KEY, &fp],
                )
                .await?;
            let row = client
                .query_one(
                    "SELECT value FROM tokengate_meta WHERE key = $1",
                    &[&FINGERPRINT_KEY],
                )
                .await?;
            Ok(row.try_get::<_, Vec<u8>>(0)?)
        })?;
        if !bool::from(stored.ct_eq(&fingerprint[..])) {
            return Err(StoreError::SecretMismatch {
                url: backend.url.clone(),
                secret_file: PathBuf::from(secret_file),
            });
        }
        // Before the tokens are loaded (the store loads them next): whatever
        // commits in between is applied again by the listener, harmlessly.
        let seq = backend.run("reading the change feed", |pool| async move {
            let client = pool.get().await?;
            feed::feed_position(&client).await
        })?;
        backend
            .start_seq
            .store(seq, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(url = %backend.url, schema = SCHEMA_VERSION, "PostgreSQL token store ready");
        Ok(backend)
    }

    /// The runtime and the pool; no connection is made yet.
    fn connect(pg: &PostgresConfig) -> Result<PostgresBackend, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            // Database I/O is a handful of sockets; one thread drives them all.
            .worker_threads(1)
            .thread_name("tokengate-db")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Setup(format!("cannot start the database runtime: {e}")))?;
        let mut connect = pg.connect.clone();
        // Every statement of every session is bounded by the server itself;
        // notices (a migration's "already exists, skipping") are not logged.
        let options = format!(
            "{} -c statement_timeout={} -c client_min_messages=warning",
            connect.get_options().unwrap_or(""),
            pg.statement_timeout.as_millis()
        );
        connect.options(options.trim());
        let manager_config = ManagerConfig {
            // A closed connection is noticed and replaced; a live one is not
            // probed with a round trip per checkout.
            recycling_method: RecyclingMethod::Fast,
        };
        if pg.sslmode == SslMode::Require {
            tracing::warn!(
                url = %pg.display_url,
                "storage.postgres.sslmode = \"require\": the connection is encrypted but the server is not verified; use verify-full"
            );
        }
        let tls = tls::RustlsMakeTls::new(pg).map_err(StoreError::Setup)?;
        let manager = match &tls {
            Some(tls) => Manager::from_config(connect.clone(), tls.clone(), manager_config),
            None => Manager::from_config(connect.clone(), NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(pg.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            // Waiting for a free connection, making one, and checking one
            // out are each bounded like a connection.
            .wait_timeout(Some(pg.connect_timeout))
            .create_timeout(Some(pg.connect_timeout))
            .recycle_timeout(Some(pg.connect_timeout))
            .build()
            .map_err(|e| StoreError::Setup(format!("connection pool: {e}")))?;
        Ok(PostgresBackend {
            pool,
            runtime: Some(runtime),
            url: pg.display_url.clone(),
            call_timeout: pg.connect_timeout + pg.statement_timeout,
            migrate_timeout: pg.connect_timeout
                + Duration::from_secs(schema::MIGRATION_TIMEOUT_SECS),
            connect,
            tls,
            start_seq: std::sync::atomic::AtomicI64::new(0),
        })
    }

    fn migrate(&self) -> Result<Migrated, StoreError> {
        let pool = self.pool.clone();
        let outcome = self.block_on("migrating the schema", self.migrate_timeout, async move {
            let mut client = pool.get().await.map_err(PgError::from)?;
            let client: &mut tokio_postgres::Client = &mut client;
            Ok(schema::migrate(client).await)
        })?;
        match outcome {
            Ok(m) => Ok(m),
            Err(schema::MigrateError::Newer { found }) => Err(StoreError::NewerSchema {
                url: self.url.clone(),
                found,
                known: SCHEMA_VERSION,
            }),
            Err(schema::MigrateError::Db(e)) => Err(self.error("migrating the schema", e)),
        }
    }

    /// Runs one call's future on the database runtime, bounded by `call_timeout`.
    fn run<T, F>(&self, what: &str, call: impl FnOnce(Pool) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, PgError>> + Send + 'static,
        T: Send + 'static,
    {
        self.block_on(what, self.call_timeout, call(self.pool.clone()))
    }

    /// Spawns `fut` on the database runtime and blocks this thread until it
    /// ends or `limit` passes. A spawned task and a channel rather than
    /// `Runtime::block_on`, which panics when called on an async thread:
    /// a misplaced call here blocks (as a redb call would), it never aborts.
    fn block_on<T, F>(&self, what: &str, limit: Duration, fut: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, PgError>> + Send + 'static,
        T: Send + 'static,
    {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| self.error(what, PgError("the store is closed".into())))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = tx.send(tokio::time::timeout(limit, fut).await);
        });
        match rx.recv() {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(self.error(what, e)),
            Ok(Err(_)) => Err(self.error(what, PgError(format!("no answer within {limit:?}")))),
            Err(_) => Err(self.error(what, PgError("the database runtime stopped".into()))),
        }
    }

    fn error(&self, what: &str, e: PgError) -> StoreError {
        StoreError::Postgres {
            url: self.url.clone(),
            detail: format!("{what}: {}", e.0),
        }
    }

    fn corrupt(&self, id: i64, detail: &str) -> StoreError {
        StoreError::Corrupt {
            at: self.url.clone(),
            id: id.to_string(),
            detail: detail.to_owned(),
        }
    }
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        self.pool.close();
        if let Some(runtime) = self.runtime.take() {
            // Connections end with their tasks; nothing is waited for.
            runtime.shutdown_background();
        }
    }
}

/// Applies pending migrations and reports the versions (`tokengate db
/// migrate`). Blocking; not from an async thread. Opening a store migrates
/// too: this is for operators who want it done, and seen, before a rollout.
pub fn migrate(pg: &PostgresConfig) -> Result<Migrated, StoreError> {
    PostgresBackend::connect(pg)?.migrate()
}

/// Records a change per token and announces the last one, inside the
/// caller's transaction (which holds `FEED_LOCK`, so `seq` order is commit
/// order): a replica that hears the notification reads a committed change.
/// Returns the last change's position.
async fn announce(
    tx: &deadpool_postgres::Transaction<'_>,
    kind: &str,
    ids: &[i64],
) -> Result<i64, PgError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO tokengate_changes (kind, refresh_id) \
             SELECT $1, unnest($2::bigint[]) RETURNING seq",
        )
        .await?;
    let rows = tx.query(&stmt, &[&kind, &ids]).await?;
    let last = rows
        .iter()
        .filter_map(|r| r.try_get::<_, i64>(0).ok())
        .max()
        .unwrap_or(0);
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&feed::CHANNEL, &last.to_string()],
    )
    .await?;
    Ok(last)
}

/// Records a change to an account (`kind` `account`: read it again) or a
/// session (`logout`: forget it) and announces it, inside the caller's
/// transaction (which holds `FEED_LOCK`); returns the change's position.
async fn announce_other(
    tx: &deadpool_postgres::Transaction<'_>,
    kind: &str,
    account: Option<&str>,
    session: Option<&[u8]>,
) -> Result<i64, PgError> {
    let row = tx
        .query_one(
            "INSERT INTO tokengate_changes (kind, account, session) VALUES ($1, $2, $3) \
             RETURNING seq",
            &[&kind, &account, &session],
        )
        .await?;
    let seq: i64 = row.try_get(0)?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&feed::CHANNEL, &seq.to_string()],
    )
    .await?;
    Ok(seq)
}

/// Unix seconds as PostgreSQL's bigint; times past year 292 billion are refused.
fn to_db(v: u64) -> Result<i64, PgError> {
    i64::try_from(v).map_err(|_| PgError(format!("time {v} out of range")))
}

impl Backend for PostgresBackend {
    fn outbox(&self) -> Option<&dyn super::outbox::Outbox> {
        Some(self)
    }

    fn cluster(&self) -> Option<feed::ClusterDb> {
        let handle = self.runtime.as_ref()?.handle().clone();
        Some(feed::ClusterDb::new(
            self.pool.clone(),
            handle,
            self.url.clone(),
            self.connect.clone(),
            self.tls.clone(),
            self.start_seq.load(std::sync::atomic::Ordering::Relaxed),
        ))
    }

    fn load(&self) -> Result<Vec<(RefreshHash, RefreshRecord)>, StoreError> {
        let rows = self.run("loading refresh tokens", |pool| async move {
            let client = pool.get().await?;
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT id, hash, name, created, expires, last_used, use_count, \
                     last_ip, last_user_agent, restrictions::text, prev_hash, prev_until, \
                     generation, created_by, {} \
                     FROM refresh_tokens t",
                    feed::GOVERNANCE
                ))
                .await?;
            Ok(client.query(&stmt, &[]).await?)
        })?;
        let mut all = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row
                .try_get(0)
                .map_err(|e| self.error("loading refresh tokens", e.into()))?;
            let bad = |what: &str| self.corrupt(id, what);
            let unsigned = |v: i64, what: &str| u64::try_from(v).map_err(|_| bad(what));
            let hash: Vec<u8> = row.try_get(1).map_err(|_| bad("hash"))?;
            let hash: RefreshHash = hash
                .as_slice()
                .try_into()
                .map_err(|_| bad("hash is not 32 bytes"))?;
            let opt = |i: usize, what: &str| -> Result<Option<u64>, StoreError> {
                let v: Option<i64> = row.try_get(i).map_err(|_| bad(what))?;
                v.map(|v| unsigned(v, what)).transpose()
            };
            let mut rec = RefreshRecord {
                id: unsigned(id, "negative id")?,
                name: row.try_get(2).map_err(|_| bad("name"))?,
                created: unsigned(row.try_get(3).map_err(|_| bad("created"))?, "created")?,
                expires: opt(4, "expires")?,
                last_used: opt(5, "last_used")?,
                use_count: unsigned(row.try_get(6).map_err(|_| bad("use_count"))?, "use_count")?,
                last_ip: row.try_get(7).map_err(|_| bad("last_ip"))?,
                last_user_agent: row.try_get(8).map_err(|_| bad("last_user_agent"))?,
                restrictions: {
                    let text: Option<String> = row.try_get(9).map_err(|_| bad("restrictions"))?;
                    feed::restrictions(text.as_deref())
                        .map_err(|e| bad(&format!("restrictions: {e}")))?
                },
                previous: feed::previous(
                    row.try_get(10).map_err(|_| bad("prev_hash"))?,
                    row.try_get(11).map_err(|_| bad("prev_until"))?,
                ),
                generation: unsigned(
                    row.try_get(12).map_err(|_| bad("generation"))?,
                    "generation",
                )?,
                created_by: row.try_get(13).map_err(|_| bad("created_by"))?,
                ..RefreshRecord::new(0, "", 0, None)
            };
            feed::governance(&row, &mut rec).map_err(|e| bad(&e.0))?;
            all.push((hash, rec));
        }
        Ok(all)
    }

    fn create(
        &self,
        hash: &RefreshHash,
        name: &str,
        created: u64,
        expires: Option<u64>,
        restrictions: Option<&RestrictionSpec>,
        created_by: Option<&str>,
        limits: &CreateLimits,
    ) -> Result<RefreshRecord, StoreError> {
        let (h, n) = (hash.to_vec(), name.to_owned());
        let lim = *limits;
        let by = created_by.map(str::to_owned);
        // Sent as text and cast by the server: no JSON feature in the driver.
        let spec = restrictions.map(serde_json::to_string).transpose()?;
        let id: i64 = self.run("creating a refresh token", |pool| async move {
            let (created, expires) = (to_db(created)?, expires.map(to_db).transpose()?);
            let not_before = lim.not_before.map(to_db).transpose()?;
            let max_uses = lim.max_uses.map(to_db).transpose()?;
            let mut client = pool.get().await?;
            // The token, its change record and the announcement commit
            // together: a replica that hears of it can read it.
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::FEED_LOCK])
                .await?;
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO refresh_tokens \
                       (hash, name, created, expires, restrictions, created_by, \
                        not_before, max_uses, uses_left) \
                     VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7, $8, $8) RETURNING id",
                )
                .await?;
            let row = tx
                .query_one(
                    &stmt,
                    &[
                        &h,
                        &n,
                        &created,
                        &expires,
                        &spec,
                        &by,
                        &not_before,
                        &max_uses,
                    ],
                )
                .await?;
            let id: i64 = row.try_get(0)?;
            announce(&tx, "create", &[id]).await?;
            tx.commit().await?;
            Ok(id)
        })?;
        let id = u64::try_from(id).map_err(|_| self.corrupt(id, "negative id"))?;
        let mut rec = RefreshRecord::restricted(id, name, created, expires, restrictions);
        rec.created_by = created_by.map(str::to_owned);
        limits.apply(&mut rec);
        Ok(rec)
    }

    fn update(&self, id: u64, edit: &Edit) -> Result<Option<Edited>, StoreError> {
        let Ok(db_id) = i64::try_from(id) else {
            return Ok(None);
        };
        let edit = edit.clone();
        let done = self.run("editing a refresh token", |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::FEED_LOCK])
                .await?;
            // Read, edit in Rust (the one place the rules live, as with
            // redb), write back: under the feed lock, so no other writer
            // interleaves.
            // FOR UPDATE: an exchange taking a use waits for this edit,
            // so the count written back below loses none.
            let rows = tx
                .query(
                    &format!(
                        "SELECT hash, name, created, expires, last_used, use_count, last_ip, \
                                last_user_agent, restrictions::text, prev_hash, prev_until, \
                                generation, created_by, {} \
                         FROM refresh_tokens t WHERE id = $1 FOR UPDATE",
                        feed::GOVERNANCE
                    ),
                    &[&db_id],
                )
                .await?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            let Some((mut hash, mut rec)) = feed::token_at(row, 0, id)? else {
                return Ok(None);
            };
            edit.apply(&mut hash, &mut rec);
            let spec = rec
                .restrictions
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|e| PgError(e.to_string()))?;
            let expires = rec.expires.map(to_db).transpose()?;
            let prev_hash = rec.previous.map(|p| p.hash.to_vec());
            let prev_until = rec.previous.map(|p| to_db(p.until)).transpose()?;
            let generation = to_db(rec.generation)?;
            let not_before = rec.not_before.map(to_db).transpose()?;
            let max_uses = rec.max_uses.map(to_db).transpose()?;
            let uses_left = rec.uses_left.map(to_db).transpose()?;
            tx.execute(
                "UPDATE refresh_tokens SET hash = $2, name = $3, expires = $4, \
                        restrictions = $5::text::jsonb, prev_hash = $6, prev_until = $7, \
                        generation = $8, suspended = $9, suspended_reason = $10, \
                        not_before = $11, max_uses = $12, uses_left = $13 \
                 WHERE id = $1",
                &[
                    &db_id,
                    &hash.to_vec(),
                    &rec.name,
                    &expires,
                    &spec,
                    &prev_hash,
                    &prev_until,
                    &generation,
                    &rec.suspended,
                    &rec.suspended_reason,
                    &not_before,
                    &max_uses,
                    &uses_left,
                ],
            )
            .await?;
            let at = announce(&tx, "update", &[db_id]).await?;
            tx.commit().await?;
            Ok(Some(Edited {
                hash,
                rec,
                at: Some(at),
            }))
        })?;
        Ok(done)
    }

    fn delete(&self, ids: &[u64]) -> Result<Vec<(u64, String)>, StoreError> {
        self.delete_where(ids, None)
    }

    fn delete_unused(&self, ids: &[u64], cutoff: u64) -> Result<Vec<(u64, String)>, StoreError> {
        self.delete_where(ids, Some(cutoff))
    }

    fn consume_use(&self, id: u64) -> Result<Option<u64>, StoreError> {
        let Ok(db_id) = i64::try_from(id) else {
            return Ok(None);
        };
        let left = self.run("counting a limited exchange", |pool| async move {
            let client = pool.get().await?;
            // One statement: the row lock makes concurrent exchanges of
            // every replica take their uses one after another, and none
            // takes a use that is not there.
            let stmt = client
                .prepare_cached(
                    "UPDATE refresh_tokens SET uses_left = uses_left - 1 \
                     WHERE id = $1 AND uses_left > 0 RETURNING uses_left",
                )
                .await?;
            let rows = client.query(&stmt, &[&db_id]).await?;
            match rows.first() {
                Some(row) => Ok(Some(row.try_get::<_, i64>(0)?)),
                None => Ok(None),
            }
        })?;
        Ok(left.map(|n| u64::try_from(n).unwrap_or(0)))
    }

    fn load_accounts(&self) -> Result<Vec<AccountRecord>, StoreError> {
        self.run("loading accounts", |pool| async move {
            let client = pool.get().await?;
            feed::all_accounts(&**client).await
        })
    }

    fn change_account(
        &self,
        change: &AccountChange,
    ) -> Result<Result<Applied, Refusal>, StoreError> {
        let change = change.clone();
        self.run("changing an account", |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            // Under the feed lock: account writers (on every replica) go one
            // at a time, so the last-admin rule sees every committed change.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::FEED_LOCK])
                .await?;
            let all = feed::all_accounts(&*tx).await?;
            let name = change.name().to_owned();
            let current = all.iter().find(|a| a.name == name).cloned();
            let applied = match accounts::apply(&all, current.as_ref(), &change) {
                Ok(a) => a,
                Err(refusal) => return Ok(Err(refusal)),
            };
            match &applied.account {
                Some(rec) => {
                    let created = to_db(rec.created)?;
                    let last = rec.last_login.map(to_db).transpose()?;
                    tx.execute(
                        "INSERT INTO tokengate_accounts \
                           (name, role, disabled, source, password_hash, created, last_login) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) \
                         ON CONFLICT (name) DO UPDATE SET role = $2, disabled = $3, \
                           source = $4, password_hash = $5, last_login = $7",
                        &[
                            &rec.name,
                            &rec.role.as_str(),
                            &rec.disabled,
                            &rec.source.as_str(),
                            &rec.password_hash,
                            &created,
                            &last,
                        ],
                    )
                    .await?;
                }
                None => {
                    tx.execute("DELETE FROM tokengate_accounts WHERE name = $1", &[&name])
                        .await?;
                }
            }
            if applied.end_sessions {
                tx.execute(
                    "DELETE FROM tokengate_sessions WHERE account = $1",
                    &[&name],
                )
                .await?;
            }
            let at = announce_other(&tx, "account", Some(&name), None).await?;
            tx.commit().await?;
            Ok(Ok(Applied {
                at: Some(at),
                ..applied
            }))
        })
    }

    fn shares_sessions(&self) -> bool {
        true
    }

    fn put_session(&self, session: &SessionRow) -> Result<(), StoreError> {
        let row = session.clone();
        self.run("storing a page session", |pool| async move {
            let client = pool.get().await?;
            let expires = to_db(row.expires)?;
            // Only while the account exists and is enabled: a session for
            // an account disabled a moment ago is never stored.
            let n = client
                .execute(
                    "INSERT INTO tokengate_sessions (fingerprint, account, via, csrf, expires) \
                     SELECT $1, name, $3, $4, $5 FROM tokengate_accounts \
                     WHERE name = $2 AND NOT disabled",
                    &[
                        &row.fingerprint.as_slice(),
                        &row.user,
                        &row.via.as_str(),
                        &row.csrf,
                        &expires,
                    ],
                )
                .await?;
            if n == 1 {
                Ok(())
            } else {
                Err(PgError(format!(
                    "the account {:?} is gone or disabled",
                    row.user
                )))
            }
        })
    }

    fn get_session(
        &self,
        fingerprint: &[u8; 32],
        now: u64,
    ) -> Result<Option<SessionRow>, StoreError> {
        let fp = *fingerprint;
        self.run("reading a page session", |pool| async move {
            let client = pool.get().await?;
            let now = to_db(now)?;
            let rows = client
                .query(
                    "SELECT account, via, csrf, expires FROM tokengate_sessions \
                     WHERE fingerprint = $1 AND expires > $2",
                    &[&fp.as_slice(), &now],
                )
                .await?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            let via: String = row.try_get(1)?;
            let via = match via.as_str() {
                "password" => crate::roles::Via::Password,
                "oidc" => crate::roles::Via::Oidc,
                "socket" => crate::roles::Via::Socket,
                _ => return Ok(None),
            };
            let expires: i64 = row.try_get(3)?;
            Ok(Some(SessionRow {
                fingerprint: fp,
                user: row.try_get(0)?,
                via,
                csrf: row.try_get(2)?,
                expires: u64::try_from(expires).unwrap_or(0),
            }))
        })
    }

    fn end_session(&self, fingerprint: &[u8; 32]) -> Result<(), StoreError> {
        let fp = *fingerprint;
        self.run("ending a page session", |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::FEED_LOCK])
                .await?;
            tx.execute(
                "DELETE FROM tokengate_sessions WHERE fingerprint = $1",
                &[&fp.as_slice()],
            )
            .await?;
            announce_other(&tx, "logout", None, Some(fp.as_slice())).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn sweep_sessions(&self, now: u64) -> Result<u64, StoreError> {
        self.run("sweeping page sessions", |pool| async move {
            let client = pool.get().await?;
            let now = to_db(now)?;
            Ok(client
                .execute(
                    "DELETE FROM tokengate_sessions WHERE expires <= $1",
                    &[&now],
                )
                .await?)
        })
    }

    fn revoke_access(&self, id: u128, expires: u64) -> Result<(), StoreError> {
        let id = id.to_be_bytes().to_vec();
        let expires = i64::try_from(expires).unwrap_or(i64::MAX);
        self.run("revoking an access token", |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::FEED_LOCK])
                .await?;
            let row = tx
                .query_one(
                    "INSERT INTO tokengate_changes (kind, access_id, access_expires) \
                     VALUES ('revoke_access', $1, $2) RETURNING seq",
                    &[&id, &expires],
                )
                .await?;
            let seq: i64 = row.try_get(0)?;
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&feed::CHANNEL, &seq.to_string()],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn read_usage(&self) -> Result<Option<Vec<UsageRow>>, StoreError> {
        let rows = self.run("reading token usage", |pool| async move {
            let client = pool.get().await?;
            let stmt = client
                .prepare_cached(
                    "SELECT id, use_count, last_used, last_ip, last_user_agent, uses_left \
                     FROM refresh_tokens",
                )
                .await?;
            Ok(client.query(&stmt, &[]).await?)
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let unsigned = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
            let read = || -> Result<Option<UsageRow>, tokio_postgres::Error> {
                let Some(id) = unsigned(row.try_get(0)?) else {
                    return Ok(None);
                };
                Ok(Some(UsageRow {
                    id,
                    use_count: unsigned(row.try_get(1)?).unwrap_or(0),
                    last_used: unsigned(row.try_get(2)?),
                    last_ip: row.try_get(3)?,
                    last_user_agent: row.try_get(4)?,
                    uses_left: unsigned(row.try_get(5)?),
                }))
            };
            match read() {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => return Err(self.error("reading token usage", e.into())),
            }
        }
        Ok(Some(out))
    }

    fn write_usage(&self, rows: &[UsageDelta]) -> Result<usize, StoreError> {
        let mut ids = Vec::with_capacity(rows.len());
        let mut uses = Vec::with_capacity(rows.len());
        let mut last = Vec::with_capacity(rows.len());
        let mut ips = Vec::with_capacity(rows.len());
        let mut agents = Vec::with_capacity(rows.len());
        for d in rows {
            let Ok(id) = i64::try_from(d.id) else {
                continue;
            };
            ids.push(id);
            // Saturate rather than fail: a count past 2^63 is not a real case.
            uses.push(i64::try_from(d.uses).unwrap_or(i64::MAX));
            last.push(i64::try_from(d.last_used).unwrap_or(i64::MAX));
            ips.push(d.last_ip.clone());
            agents.push(d.last_user_agent.clone());
        }
        let n = self.run("writing token usage", |pool| async move {
            let client = pool.get().await?;
            // One statement for the whole batch. Counts add up across
            // replicas; the later use wins, with its client. Deleted tokens
            // have no row to update, so they are never written back.
            let stmt = client
                .prepare_cached(
                    "UPDATE refresh_tokens AS t SET \
                       use_count = t.use_count + u.uses, \
                       last_used = GREATEST(t.last_used, u.last_used), \
                       last_ip = CASE WHEN t.last_used IS NULL OR u.last_used >= t.last_used \
                                 THEN u.last_ip ELSE t.last_ip END, \
                       last_user_agent = CASE WHEN t.last_used IS NULL OR u.last_used >= t.last_used \
                                 THEN u.last_user_agent ELSE t.last_user_agent END \
                     FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[]) \
                       AS u(id, uses, last_used, last_ip, last_user_agent) \
                     WHERE t.id = u.id",
                )
                .await?;
            Ok(client
                .execute(&stmt, &[&ids, &uses, &last, &ips, &agents])
                .await?)
        })?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

impl PostgresBackend {
    /// Deletes those of `ids` that exist and, with `unused_since`, were
    /// last used (or, never used, created) at or before it.
    fn delete_where(
        &self,
        ids: &[u64],
        unused_since: Option<u64>,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        // An id beyond bigint was never handed out: nothing to delete.
        let ids: Vec<i64> = ids.iter().filter_map(|&i| i64::try_from(i).ok()).collect();
        let cutoff = unused_since.map(|c| i64::try_from(c).unwrap_or(i64::MAX));
        let rows = self.run("deleting refresh tokens", |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::FEED_LOCK])
                .await?;
            // A NULL cutoff deletes whatever is listed.
            let stmt = tx
                .prepare_cached(
                    "DELETE FROM refresh_tokens WHERE id = ANY($1) \
                       AND ($2::bigint IS NULL OR coalesce(last_used, created) <= $2) \
                     RETURNING id, name",
                )
                .await?;
            let rows = tx.query(&stmt, &[&ids, &cutoff]).await?;
            let gone: Vec<i64> = rows
                .iter()
                .map(|r| r.try_get::<_, i64>(0))
                .collect::<Result<_, _>>()?;
            if !gone.is_empty() {
                announce(&tx, "delete", &gone).await?;
            }
            tx.commit().await?;
            Ok(rows)
        })?;
        rows.iter()
            .map(|r| {
                let id: i64 = r
                    .try_get(0)
                    .map_err(|e| self.error("deleting refresh tokens", e.into()))?;
                let name: String = r
                    .try_get(1)
                    .map_err(|e| self.error("deleting refresh tokens", e.into()))?;
                let id = u64::try_from(id).map_err(|_| self.corrupt(id, "negative id"))?;
                Ok((id, name))
            })
            .collect()
    }
}
