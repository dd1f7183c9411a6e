//! The schema tokengate owns in PostgreSQL, as numbered migrations.
//!
//! Every start (and `tokengate db migrate`) runs [`migrate`]: one transaction
//! that first takes a transaction-scoped advisory lock, so replicas starting
//! together on an empty database apply each migration exactly once (the
//! others wait on the lock, then find nothing left to do); the lock goes
//! with the transaction, whatever ends it. A database whose schema is newer
//! than this binary's is refused, not written to.
//!
//! Never edit a migration that has shipped: add the next one.

use tokio_postgres::GenericClient;

use super::PgError;

/// One schema change.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// In order; each `version` is its position, counted from 1.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "refresh tokens and the secret fingerprint",
        // Times are Unix seconds (bigint), as in the redb records. Ids come from
        // an identity sequence, which never hands a value out twice (not even
        // after a rollback): an access token bound to a deleted id can never be
        // revived by a new token.
        sql: "
        CREATE TABLE tokengate_meta (
            key   text PRIMARY KEY,
            value bytea NOT NULL
        );
        CREATE TABLE refresh_tokens (
            id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            hash            bytea NOT NULL UNIQUE CHECK (octet_length(hash) = 32),
            name            text NOT NULL,
            created         bigint NOT NULL,
            expires         bigint,
            last_used       bigint,
            use_count       bigint NOT NULL DEFAULT 0 CHECK (use_count >= 0),
            last_ip         text,
            last_user_agent text
        );
    ",
    },
    Migration {
        version: 2,
        name: "the change feed and the replica registry",
        // `tokengate_changes`: what every replica must apply, in `seq` order.
        // Writers take FEED_LOCK before inserting, so `seq` order is commit
        // order and a reader that has seen `seq` n has seen everything below.
        // `kind`: create / delete (refresh_id), retire (boot_id), rotate.
        //
        // `tokengate_replicas`: one row per boot (process start) of a replica.
        // The nonce keys the boot's access-token MAC together with the server
        // secret, which the database never holds: the table alone mints nothing.
        sql: "
        CREATE TABLE tokengate_changes (
            seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            kind       text NOT NULL CHECK (kind IN ('create', 'delete', 'retire', 'rotate')),
            refresh_id bigint,
            boot_id    bigint,
            at         timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE tokengate_replicas (
            boot_id   bigint PRIMARY KEY,
            nonce     bytea NOT NULL CHECK (octet_length(nonce) = 32),
            name      text NOT NULL,
            started   timestamptz NOT NULL DEFAULT now(),
            heartbeat timestamptz NOT NULL DEFAULT now(),
            retired   timestamptz
        );
    ",
    },
    Migration {
        version: 3,
        name: "refresh token restrictions",
        // Scopes, networks and rate as one JSON document (the admin API's
        // shape, `restrict::RestrictionSpec`): read and written whole, never
        // queried by part. NULL = full access, so every existing token keeps
        // behaving as before.
        sql: "ALTER TABLE refresh_tokens ADD COLUMN restrictions jsonb;",
    },
    Migration {
        version: 4,
        name: "token edits and rotation",
        // A rotated-out secret's hash while its grace period lasts (both
        // NULL otherwise), and the feed's `update` kind: an edit or a
        // rotation, which replicas apply by reading the token's row.
        sql: "
        ALTER TABLE refresh_tokens
            ADD COLUMN prev_hash bytea CHECK (prev_hash IS NULL OR octet_length(prev_hash) = 32),
            ADD COLUMN prev_until bigint;
        ALTER TABLE tokengate_changes DROP CONSTRAINT tokengate_changes_kind_check;
        ALTER TABLE tokengate_changes ADD CONSTRAINT tokengate_changes_kind_check
            CHECK (kind IN ('create', 'delete', 'retire', 'rotate', 'update'));
    ",
    },
    Migration {
        version: 5,
        name: "the secret generation",
        // Bumped by a rotation at once and carried by every access token:
        // a replica verifying a token from its claims refuses one issued
        // under an earlier secret. 0 for every existing token (their access
        // tokens, of the previous format, died with the upgrade anyway).
        sql: "ALTER TABLE refresh_tokens
            ADD COLUMN generation bigint NOT NULL DEFAULT 0 CHECK (generation >= 0);",
    },
    Migration {
        version: 6,
        name: "admin accounts, shared page sessions, who created a token",
        // Accounts: the bootstrap `admin` row holds no password (it is
        // configured). Sessions: only the SHA-256 of a cookie is stored,
        // never the cookie, so a database leak hands out no live session;
        // they go with their account. The feed's `account` kind names an
        // account to read again, `logout` a session fingerprint to forget.
        // `created_by` is NULL for every token made before accounts.
        sql: "
        CREATE TABLE tokengate_accounts (
            name          text PRIMARY KEY CHECK (char_length(name) BETWEEN 1 AND 64),
            role          text NOT NULL CHECK (role IN ('admin', 'manager', 'creator', 'viewer')),
            disabled      boolean NOT NULL DEFAULT false,
            source        text NOT NULL CHECK (source IN ('local', 'oidc')),
            password_hash text,
            created       bigint NOT NULL,
            last_login    bigint
        );
        CREATE TABLE tokengate_sessions (
            fingerprint bytea PRIMARY KEY CHECK (octet_length(fingerprint) = 32),
            account     text NOT NULL REFERENCES tokengate_accounts (name) ON DELETE CASCADE,
            via         text NOT NULL CHECK (via IN ('password', 'oidc', 'socket')),
            csrf        text NOT NULL,
            expires     bigint NOT NULL
        );
        CREATE INDEX tokengate_sessions_account ON tokengate_sessions (account);
        ALTER TABLE refresh_tokens ADD COLUMN created_by text;
        ALTER TABLE tokengate_changes
            ADD COLUMN account text,
            ADD COLUMN session bytea;
        ALTER TABLE tokengate_changes DROP CONSTRAINT tokengate_changes_kind_check;
        ALTER TABLE tokengate_changes ADD CONSTRAINT tokengate_changes_kind_check
            CHECK (kind IN ('create', 'delete', 'retire', 'rotate', 'update', 'account', 'logout'));
    ",
    },
    Migration {
        version: 7,
        name: "access tokens revoked by their holders",
        // The feed's `revoke_access` kind: one access token a script revoked
        // (RFC 7009), by its id (16 bytes) until its expiry (Unix seconds),
        // so a replica that never saw it refuses it instead of verifying
        // it from its claims.
        sql: "
        ALTER TABLE tokengate_changes
            ADD COLUMN access_id bytea CHECK (access_id IS NULL OR octet_length(access_id) = 16),
            ADD COLUMN access_expires bigint;
        ALTER TABLE tokengate_changes DROP CONSTRAINT tokengate_changes_kind_check;
        ALTER TABLE tokengate_changes ADD CONSTRAINT tokengate_changes_kind_check
            CHECK (kind IN ('create', 'delete', 'retire', 'rotate', 'update', 'account', 'logout',
                           'revoke_access'));
    ",
    },
    Migration {
        version: 8,
        name: "suspension, not-before and usage limits",
        // Existing tokens: not suspended, no not-before, unlimited. A
        // limited token's `uses_left` is taken one exchange at a time by a
        // conditional UPDATE, so every replica draws from the one count.
        sql: "
        ALTER TABLE refresh_tokens
            ADD COLUMN suspended boolean NOT NULL DEFAULT false,
            ADD COLUMN suspended_reason text,
            ADD COLUMN not_before bigint,
            ADD COLUMN max_uses bigint CHECK (max_uses IS NULL OR max_uses >= 0),
            ADD COLUMN uses_left bigint CHECK (uses_left IS NULL OR uses_left >= 0);
    ",
    },
];

/// The advisory-lock key that orders change records ("tgfeed" + 1): held
/// from a change's insert to its commit, so `seq` order is commit order.
pub(super) const FEED_LOCK: i64 = 0x7467_6665_6564_0001;

/// The newest schema version this binary knows.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "a handful of migrations"
)]
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The advisory-lock key of migrations ("tokengat" in ASCII): one fixed
/// number, per database (PostgreSQL scopes advisory locks to a database).
const LOCK_KEY: i64 = 0x746f_6b65_6e67_6174;

/// Migrations may rewrite tables and may wait for another replica's
/// migration: far longer than an ordinary statement, still bounded.
pub(super) const MIGRATION_TIMEOUT_SECS: u64 = 60;

/// What [`migrate`] found and left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// The schema version before (0: an empty database).
    pub from: i32,
    /// The schema version now: [`SCHEMA_VERSION`].
    pub to: i32,
}

/// Why migrating failed, apart from the database's own errors.
pub(super) enum MigrateError {
    Db(PgError),
    Newer { found: i32 },
}

impl From<PgError> for MigrateError {
    fn from(e: PgError) -> Self {
        MigrateError::Db(e)
    }
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        MigrateError::Db(PgError::from(e))
    }
}

/// Brings the schema to [`SCHEMA_VERSION`] under the advisory lock, in one transaction.
pub(super) async fn migrate(client: &mut tokio_postgres::Client) -> Result<Migrated, MigrateError> {
    let tx = client.transaction().await?;
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = '{MIGRATION_TIMEOUT_SECS}s'; \
         SET LOCAL lock_timeout = '{MIGRATION_TIMEOUT_SECS}s'"
    ))
    .await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tokengate_schema (
            version    integer PRIMARY KEY,
            name       text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let from = current(&tx).await?;
    if from > SCHEMA_VERSION {
        // Dropping the transaction rolls it back and releases the lock.
        return Err(MigrateError::Newer { found: from });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > from) {
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO tokengate_schema (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied schema migration"
        );
    }
    tx.commit().await?;
    Ok(Migrated {
        from,
        to: SCHEMA_VERSION,
    })
}

async fn current(client: &impl GenericClient) -> Result<i32, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM tokengate_schema",
            &[],
        )
        .await?;
    row.try_get(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(
                usize::try_from(m.version).ok(),
                Some(i + 1),
                "migration {:?}",
                m.name
            );
        }
        assert_eq!(usize::try_from(SCHEMA_VERSION).ok(), Some(MIGRATIONS.len()));
    }
}
