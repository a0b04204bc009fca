//! The embedded store: SQLite through rusqlite (bundled), with a version
//! column for conditional writes. WAL mode and a busy timeout let several
//! broker processes share one database file.
//!
//! Over 600 lines: one whole `Backend` for one technology (schema, row mapping
//! and every operation), kept in one file so it reads side by side with `table.rs`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension, Row};
use time::OffsetDateTime;

use super::{
    AuxKind, AuxRow, Backend, BoxFuture, ConnectionRow, CredentialRow, PendingRow, StoreError,
    Version, Versioned,
};
use crate::domain::SecretHash;

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

fn read_aux(kind: AuxKind) -> impl Fn(&Row<'_>) -> Result<Versioned<AuxRow>, rusqlite::Error> {
    move |r| {
        Ok(Versioned {
            version: Version(r.get::<_, i64>(1)?.to_string()),
            value: AuxRow {
                kind,
                key: r.get(0)?,
                due_at: from_ms(r.get(2)?)?,
                body: r.get(3)?,
            },
        })
    }
}

const CRED_COLUMNS: &str = "client_id, integration, connection, description, created_at, \
     expires_at, last_used_at, min_validity_secs, key_id, secret_hash";

fn read_credential(r: &Row<'_>) -> Result<CredentialRow, rusqlite::Error> {
    Ok(CredentialRow {
        client_id: r.get(0)?,
        integration: r.get(1)?,
        connection: r.get(2)?,
        description: r.get(3)?,
        created_at: from_ms(r.get(4)?)?,
        expires_at: opt_ms(r.get(5)?)?,
        last_used_at: opt_ms(r.get(6)?)?,
        min_validity_secs: r.get(7)?,
        key_id: r.get(8)?,
        secret_hash: r.get(9)?,
    })
}

const CONN_COLUMNS: &str =
    "integration, connection, version, status, key_id, sealed_tokens, token_type, scope, \
     expires_at, created_at, refreshed_at, last_error, last_error_at, lease_until, lease_owner, metadata, account, last_error_kind";

const PENDING_COLUMNS: &str =
    "state_hash, integration, connection, key_id, sealed_verifier, binding_hash, expires_at, link_hash";

fn read_pending(r: &Row<'_>) -> Result<PendingRow, rusqlite::Error> {
    Ok(PendingRow {
        state_hash: r.get(0)?,
        integration: r.get(1)?,
        connection: r.get(2)?,
        key_id: r.get(3)?,
        sealed_verifier: r.get(4)?,
        binding_hash: r.get(5)?,
        expires_at: from_ms(r.get(6)?)?,
        link_hash: r.get(7)?,
    })
}

fn select_connections(
    db: &Connection,
    clause: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<Vec<Versioned<ConnectionRow>>, StoreError> {
    let mut s = db
        .prepare_cached(&format!("SELECT {CONN_COLUMNS} FROM connections {clause}"))
        .map_err(unavailable)?;
    let rows = s.query_map(params, read_connection).map_err(unavailable)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
}

fn one_pending(
    db: &Connection,
    sql: &str,
    state_hash: &str,
) -> Result<Option<PendingRow>, StoreError> {
    db.query_row(sql, params![state_hash], read_pending)
        .optional()
        .map_err(unavailable)
}

fn read_connection(r: &Row<'_>) -> Result<Versioned<ConnectionRow>, rusqlite::Error> {
    Ok(Versioned {
        version: Version(r.get::<_, i64>(2)?.to_string()),
        value: ConnectionRow {
            integration: r.get(0)?,
            connection: r.get(1)?,
            status: r.get(3)?,
            key_id: r.get(4)?,
            sealed_tokens: r.get(5)?,
            token_type: r.get(6)?,
            scope: r.get(7)?,
            expires_at: from_ms(r.get(8)?)?,
            created_at: from_ms(r.get(9)?)?,
            refreshed_at: from_ms(r.get(10)?)?,
            last_error: r.get(11)?,
            last_error_at: opt_ms(r.get(12)?)?,
            lease_until: opt_ms(r.get(13)?)?,
            lease_owner: r.get(14)?,
            metadata: r.get(15)?,
            account: r.get(16)?,
            last_error_kind: r.get(17)?,
        },
    })
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

impl Backend for SqliteBackend {
    fn init(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.run(migrate)
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.run(|c| {
            c.query_row("SELECT count(*) FROM pending WHERE 0", [], |_| Ok(()))
                .map_err(unavailable)
        })
    }

    fn get_connection<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned<ConnectionRow>>, StoreError>> {
        let (i, c) = (integration.to_owned(), connection.to_owned());
        self.run(move |db| {
            db.prepare_cached(&format!(
                "SELECT {CONN_COLUMNS} FROM connections WHERE integration = ?1 AND connection = ?2"
            ))
            .and_then(|mut s| s.query_row(params![i, c], read_connection).optional())
            .map_err(unavailable)
        })
    }

    fn upsert_connection<'a>(
        &'a self,
        row: &'a ConnectionRow,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        let r = row.clone();
        self.run(move |db| {
            db.query_row(
                "INSERT INTO connections (integration, connection, version, status, key_id, sealed_tokens, token_type, scope,
                     expires_at, created_at, refreshed_at, last_error, last_error_at, lease_until, lease_owner, metadata, account,
                     last_error_kind)
                 VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
                 ON CONFLICT (integration, connection) DO UPDATE SET
                     version = version + 1, status = excluded.status, key_id = excluded.key_id,
                     sealed_tokens = excluded.sealed_tokens, token_type = excluded.token_type, scope = excluded.scope,
                     expires_at = excluded.expires_at, created_at = excluded.created_at,
                     refreshed_at = excluded.refreshed_at, last_error = excluded.last_error,
                     last_error_at = excluded.last_error_at, lease_until = excluded.lease_until,
                     lease_owner = excluded.lease_owner, metadata = excluded.metadata,
                     account = excluded.account, last_error_kind = excluded.last_error_kind
                 RETURNING version",
                params![
                    r.integration, r.connection, r.status, r.key_id, r.sealed_tokens, r.token_type, r.scope,
                    ms(r.expires_at), ms(r.created_at), ms(r.refreshed_at), r.last_error,
                    r.last_error_at.map(ms), r.lease_until.map(ms), r.lease_owner, r.metadata, r.account,
                    r.last_error_kind
                ],
                |x| x.get::<_, i64>(0),
            )
            .map(|v| Version(v.to_string()))
            .map_err(unavailable)
        })
    }

    fn replace_connection<'a>(
        &'a self,
        row: &'a ConnectionRow,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        let r = row.clone();
        let expected: Option<i64> = version.0.parse().ok();
        self.run(move |db| {
            let Some(expected) = expected else {
                return Err(StoreError::Conflict);
            };
            let updated = db
                .query_row(
                    "UPDATE connections SET version = version + 1, status = ?3, key_id = ?4, sealed_tokens = ?5,
                         token_type = ?6, scope = ?7, expires_at = ?8, created_at = ?9, refreshed_at = ?10,
                         last_error = ?11, last_error_at = ?12, lease_until = ?13, lease_owner = ?14,
                         metadata = ?16, account = ?17, last_error_kind = ?18
                     WHERE integration = ?1 AND connection = ?2 AND version = ?15
                     RETURNING version",
                    params![
                        r.integration, r.connection, r.status, r.key_id, r.sealed_tokens, r.token_type, r.scope,
                        ms(r.expires_at), ms(r.created_at), ms(r.refreshed_at), r.last_error,
                        r.last_error_at.map(ms), r.lease_until.map(ms), r.lease_owner, expected, r.metadata,
                        r.account, r.last_error_kind
                    ],
                    |x| x.get::<_, i64>(0),
                )
                .optional()
                .map_err(unavailable)?;
            match updated {
                Some(v) => Ok(Version(v.to_string())),
                None => {
                    let exists = db
                        .query_row(
                            "SELECT 1 FROM connections WHERE integration = ?1 AND connection = ?2",
                            params![r.integration, r.connection],
                            |_| Ok(()),
                        )
                        .optional()
                        .map_err(unavailable)?;
                    Err(if exists.is_some() { StoreError::Conflict } else { StoreError::NotFound })
                }
            }
        })
    }

    fn list_due(
        &self,
        expires_before: OffsetDateTime,
        refreshed_before: OffsetDateTime,
    ) -> BoxFuture<'_, Result<Vec<Versioned<ConnectionRow>>, StoreError>> {
        self.run(move |db| {
            select_connections(
                db,
                "WHERE status = 'active' AND (expires_at < ?1 OR refreshed_at < ?2) ORDER BY expires_at",
                params![ms(expires_before), ms(refreshed_before)],
            )
        })
    }

    fn insert_pending<'a>(&'a self, row: &'a PendingRow) -> BoxFuture<'a, Result<(), StoreError>> {
        let r = row.clone();
        self.run(move |db| {
            inserted(db.execute(
                "INSERT INTO pending (state_hash, integration, connection, key_id, sealed_verifier, binding_hash, expires_at, link_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![r.state_hash, r.integration, r.connection, r.key_id, r.sealed_verifier, r.binding_hash, ms(r.expires_at), r.link_hash],
            ))
        })
    }

    fn take_pending<'a>(
        &'a self,
        state_hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<PendingRow>, StoreError>> {
        let h = state_hash.to_owned();
        self.run(move |db| {
            one_pending(
                db,
                &format!("DELETE FROM pending WHERE state_hash = ?1 RETURNING {PENDING_COLUMNS}"),
                &h,
            )
        })
    }

    fn purge_pending(&self, before: OffsetDateTime) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.run(move |db| {
            db.execute(
                "DELETE FROM pending WHERE expires_at < ?1",
                params![ms(before)],
            )
            .map(|n| n as u64)
            .map_err(unavailable)
        })
    }

    fn peek_pending<'a>(
        &'a self,
        state_hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<PendingRow>, StoreError>> {
        let h = state_hash.to_owned();
        self.run(move |db| {
            one_pending(
                db,
                &format!("SELECT {PENDING_COLUMNS} FROM pending WHERE state_hash = ?1"),
                &h,
            )
        })
    }

    fn pending_of_connection<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PendingRow>, StoreError>> {
        let (i, c) = (integration.to_owned(), connection.to_owned());
        self.run(move |db| {
            let mut stmt = db
                .prepare_cached(&format!(
                    "SELECT {PENDING_COLUMNS} FROM pending WHERE integration = ?1 AND connection = ?2"
                ))
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![i, c], read_pending)
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
    }

    fn pending_of_link<'a>(
        &'a self,
        link_hash: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PendingRow>, StoreError>> {
        let h = link_hash.to_owned();
        self.run(move |db| {
            let mut stmt = db
                .prepare(&format!(
                    "SELECT {PENDING_COLUMNS} FROM pending WHERE link_hash = ?1"
                ))
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![h], read_pending)
                .map_err(unavailable)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(unavailable)?;
            Ok(rows)
        })
    }

    fn list_connections(&self) -> BoxFuture<'_, Result<Vec<Versioned<ConnectionRow>>, StoreError>> {
        self.run(move |db| select_connections(db, "ORDER BY integration, connection", params![]))
    }

    fn delete_connection<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let (i, c) = (integration.to_owned(), connection.to_owned());
        self.run(move |db| {
            db.execute(
                "DELETE FROM connections WHERE integration = ?1 AND connection = ?2",
                params![i, c],
            )
            .map(|n| n > 0)
            .map_err(unavailable)
        })
    }

    fn insert_credential<'a>(
        &'a self,
        row: &'a CredentialRow,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let r = row.clone();
        self.run(move |db| {
            inserted(db.execute(
                &format!("INSERT INTO credentials ({CRED_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
                params![
                    r.client_id, r.integration, r.connection, r.description, ms(r.created_at),
                    r.expires_at.map(ms), r.last_used_at.map(ms), r.min_validity_secs, r.key_id, r.secret_hash
                ],
            ))
        })
    }

    fn get_credential<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<CredentialRow>, StoreError>> {
        let id = client_id.to_owned();
        self.run(move |db| {
            db.prepare_cached(&format!(
                "SELECT {CRED_COLUMNS} FROM credentials WHERE client_id = ?1"
            ))
            .and_then(|mut s| s.query_row(params![id], read_credential).optional())
            .map_err(unavailable)
        })
    }

    fn list_credentials<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CredentialRow>, StoreError>> {
        let (i, c) = (integration.to_owned(), connection.to_owned());
        self.run(move |db| {
            let mut s = db
                .prepare_cached(&format!(
                    "SELECT {CRED_COLUMNS} FROM credentials WHERE integration = ?1 AND connection = ?2 ORDER BY created_at, client_id"
                ))
                .map_err(unavailable)?;
            let rows = s
                .query_map(params![i, c], read_credential)
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
    }

    fn touch_credential<'a>(
        &'a self,
        client_id: &'a str,
        last_used_at: OffsetDateTime,
        rehashed: Option<&'a SecretHash>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let id = client_id.to_owned();
        let rehashed = rehashed.cloned();
        self.run(move |db| {
            let n = match rehashed {
                Some(h) => db.execute(
                    "UPDATE credentials SET last_used_at = ?2, key_id = ?3, secret_hash = ?4 WHERE client_id = ?1",
                    params![id, ms(last_used_at), h.key_id, h.hash],
                ),
                None => db.execute(
                    "UPDATE credentials SET last_used_at = ?2 WHERE client_id = ?1",
                    params![id, ms(last_used_at)],
                ),
            }
            .map_err(unavailable)?;
            if n == 0 {
                Err(StoreError::NotFound)
            } else {
                Ok(())
            }
        })
    }

    fn delete_credential<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let id = client_id.to_owned();
        self.run(move |db| {
            db.execute("DELETE FROM credentials WHERE client_id = ?1", params![id])
                .map(|n| n > 0)
                .map_err(unavailable)
        })
    }

    fn delete_credentials_of<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let (i, c) = (integration.to_owned(), connection.to_owned());
        self.run(move |db| {
            db.execute(
                "DELETE FROM credentials WHERE integration = ?1 AND connection = ?2",
                params![i, c],
            )
            .map(|n| n as u64)
            .map_err(unavailable)
        })
    }

    fn insert_aux<'a>(&'a self, row: &'a AuxRow) -> BoxFuture<'a, Result<Version, StoreError>> {
        let r = row.clone();
        self.run(move |db| {
            inserted(db.execute(
                "INSERT INTO aux (kind, key, version, due_at, body) VALUES (?1, ?2, 1, ?3, ?4)",
                params![r.kind.as_str(), r.key, ms(r.due_at), r.body],
            ))
            .map(|()| Version("1".into()))
        })
    }

    fn get_aux<'a>(
        &'a self,
        kind: AuxKind,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned<AuxRow>>, StoreError>> {
        let k = key.to_owned();
        self.run(move |db| {
            db.query_row(
                "SELECT key, version, due_at, body FROM aux WHERE kind = ?1 AND key = ?2",
                params![kind.as_str(), k],
                read_aux(kind),
            )
            .optional()
            .map_err(unavailable)
        })
    }

    fn replace_aux<'a>(
        &'a self,
        row: &'a AuxRow,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        let r = row.clone();
        let expected: Option<i64> = version.0.parse().ok();
        self.run(move |db| {
            let Some(expected) = expected else {
                return Err(StoreError::Conflict);
            };
            let updated = db
                .query_row(
                    "UPDATE aux SET version = version + 1, due_at = ?3, body = ?4
                     WHERE kind = ?1 AND key = ?2 AND version = ?5 RETURNING version",
                    params![r.kind.as_str(), r.key, ms(r.due_at), r.body, expected],
                    |x| x.get::<_, i64>(0),
                )
                .optional()
                .map_err(unavailable)?;
            match updated {
                Some(v) => Ok(Version(v.to_string())),
                None => {
                    let exists = db
                        .query_row(
                            "SELECT 1 FROM aux WHERE kind = ?1 AND key = ?2",
                            params![r.kind.as_str(), r.key],
                            |_| Ok(()),
                        )
                        .optional()
                        .map_err(unavailable)?;
                    Err(if exists.is_some() {
                        StoreError::Conflict
                    } else {
                        StoreError::NotFound
                    })
                }
            }
        })
    }

    fn delete_aux<'a>(
        &'a self,
        kind: AuxKind,
        key: &'a str,
        version: Option<&'a Version>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let k = key.to_owned();
        let expected = version.map(|v| v.0.parse::<i64>().unwrap_or(-1));
        self.run(move |db| {
            let n = match expected {
                None => db.execute(
                    "DELETE FROM aux WHERE kind = ?1 AND key = ?2",
                    params![kind.as_str(), k],
                ),
                Some(v) => db.execute(
                    "DELETE FROM aux WHERE kind = ?1 AND key = ?2 AND version = ?3",
                    params![kind.as_str(), k, v],
                ),
            }
            .map_err(unavailable)?;
            if n > 0 || expected.is_none() {
                return Ok(n > 0);
            }
            let exists = db
                .query_row(
                    "SELECT 1 FROM aux WHERE kind = ?1 AND key = ?2",
                    params![kind.as_str(), k],
                    |_| Ok(()),
                )
                .optional()
                .map_err(unavailable)?;
            match exists {
                Some(()) => Err(StoreError::Conflict),
                None => Ok(false),
            }
        })
    }

    fn due_aux(
        &self,
        kind: AuxKind,
        before: OffsetDateTime,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<Versioned<AuxRow>>, StoreError>> {
        self.run(move |db| {
            let mut stmt = db
                .prepare_cached(
                    "SELECT key, version, due_at, body FROM aux
                     WHERE kind = ?1 AND due_at <= ?2 ORDER BY due_at LIMIT ?3",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![kind.as_str(), ms(before), limit], read_aux(kind))
                .map_err(unavailable)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(unavailable)?;
            Ok(rows)
        })
    }
}
