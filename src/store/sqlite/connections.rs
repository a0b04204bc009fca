//! Connections in SQLite: the `connections` table, a version column for
//! conditional writes.

use rusqlite::{params, Connection, OptionalExtension, Row};
use time::OffsetDateTime;

use super::{from_ms, ms, opt_ms, unavailable, SqliteBackend};
use crate::store::{BoxFuture, ConnectionRow, ConnectionRows, StoreError, Version, Versioned};

const CONN_COLUMNS: &str =
    "integration, connection, version, status, key_id, sealed_tokens, token_type, scope, \
     expires_at, created_at, refreshed_at, last_error, last_error_at, lease_until, lease_owner, metadata, account, last_error_kind";

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

impl ConnectionRows for SqliteBackend {
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
}
