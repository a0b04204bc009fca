//! The embedded store: SQLite through rusqlite (bundled), with a version
//! column for conditional writes. WAL mode and a busy timeout let several
//! broker processes share one database file.
//!
//! This file holds the schema, its migrations and [`Lifecycle`]; each
//! capability's rows and operations are in a file of their own
//! (`connections.rs`, `pending.rs`, `credentials.rs`, `outbox.rs`).

mod connections;
mod credentials;
mod outbox;
mod pending;

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use time::OffsetDateTime;

use super::{BoxFuture, Lifecycle, StoreError};

pub struct SqliteBackend {
    conn: Arc<Mutex<Connection>>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// An insert's outcome: an existing key is a `Conflict`.
fn inserted(r: rusqlite::Result<usize>) -> Result<(), StoreError> {
    match r {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(StoreError::Conflict)
        }
        Err(e) => Err(unavailable(e)),
    }
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_ms(v: i64) -> Result<OffsetDateTime, rusqlite::Error> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(v) * 1_000_000).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Integer, Box::new(e))
    })
}

fn opt_ms(v: Option<i64>) -> Result<Option<OffsetDateTime>, rusqlite::Error> {
    v.map(from_ms).transpose()
}

/// Schema 1: the tables as the first versions created them, before
/// `user_version` was kept (they set none, so such a database reads 0; every
/// statement is `IF NOT EXISTS`, so applying it to one changes nothing).
const SCHEMA_1: &str = "
CREATE TABLE IF NOT EXISTS connections (
    integration   TEXT NOT NULL,
    connection    TEXT NOT NULL,
    version       INTEGER NOT NULL,
    status        TEXT NOT NULL,
    key_id        TEXT NOT NULL,
    sealed_tokens TEXT NOT NULL,
    token_type    TEXT NOT NULL,
    scope         TEXT NOT NULL,
    expires_at    INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    refreshed_at  INTEGER NOT NULL,
    last_error    TEXT,
    last_error_at INTEGER,
    lease_until   INTEGER,
    lease_owner   TEXT,
    metadata      TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (integration, connection)
);
CREATE INDEX IF NOT EXISTS connections_due ON connections (status, expires_at);
CREATE INDEX IF NOT EXISTS connections_idle ON connections (status, refreshed_at);
CREATE TABLE IF NOT EXISTS pending (
    state_hash      TEXT PRIMARY KEY,
    integration     TEXT NOT NULL,
    connection      TEXT NOT NULL,
    key_id          TEXT NOT NULL,
    sealed_verifier TEXT NOT NULL,
    binding_hash    TEXT NOT NULL,
    expires_at      INTEGER NOT NULL,
    link_hash       TEXT
);
CREATE TABLE IF NOT EXISTS credentials (
    client_id         TEXT PRIMARY KEY,
    integration       TEXT NOT NULL,
    connection        TEXT NOT NULL,
    description       TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    expires_at        INTEGER,
    last_used_at      INTEGER,
    min_validity_secs INTEGER,
    key_id            TEXT NOT NULL,
    secret_hash       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS credentials_of ON credentials (integration, connection);
CREATE TABLE IF NOT EXISTS aux (
    kind    TEXT NOT NULL,
    key     TEXT NOT NULL,
    version INTEGER NOT NULL,
    due_at  INTEGER NOT NULL,
    body    TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX IF NOT EXISTS aux_due ON aux (kind, due_at);
";

/// The migrations, in order: the database's `PRAGMA user_version` is the
/// number applied. Append only; never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    SCHEMA_1,
    // 2: the vendor account behind a grant (issue 17); NULL for older rows.
    // Pending rows by connection: a connection's consent links are listed and
    // end with it.
    "ALTER TABLE connections ADD COLUMN account TEXT;
     CREATE INDEX IF NOT EXISTS pending_of ON pending (integration, connection);",
    // 3: the kind of the last refresh failure beside its text (issue 16); NULL
    // for older rows, which are classified by their text as before.
    "ALTER TABLE connections ADD COLUMN last_error_kind TEXT;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Brings the database to [`SCHEMA_VERSION`] in one immediate transaction, so
/// of several processes opening it at once one migrates and the others then
/// find it done. A database from a newer version is refused, not altered.
fn migrate(db: &mut Connection) -> Result<(), StoreError> {
    let tx = db
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    let at: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(unavailable)?;
    let at = usize::try_from(at).unwrap_or(usize::MAX);
    if at > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "the database has schema version {at}, written by a newer broker; this one knows up to {SCHEMA_VERSION}: run the newer version (or restore a backup)"
        )));
    }
    if at == SCHEMA_VERSION {
        return Ok(());
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(at) {
        tx.execute_batch(m)
            .map_err(|e| unavailable(format!("schema migration {} failed: {e}", i + 1)))?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION as i64)
        .map_err(unavailable)?;
    tx.commit().map_err(unavailable)?;
    tracing::info!(
        from = at,
        to = SCHEMA_VERSION,
        "embedded store schema migrated"
    );
    Ok(())
}

impl SqliteBackend {
    /// Opens (creating if needed) the database file and its directory.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)
            .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(unavailable)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(unavailable)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
                f(&mut guard)
            })
            .await
            .map_err(unavailable)?
        })
    }
}

impl Lifecycle for SqliteBackend {
    fn init(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.run(migrate)
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.run(|c| {
            c.query_row("SELECT count(*) FROM pending WHERE 0", [], |_| Ok(()))
                .map_err(unavailable)
        })
    }
}
