//! Pending authorizations and consent links in SQLite: the `pending` table.

use rusqlite::{params, Connection, OptionalExtension, Row};
use time::OffsetDateTime;

use super::{from_ms, inserted, ms, unavailable, SqliteBackend};
use crate::store::{BoxFuture, PendingRow, PendingRows, StoreError};

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

fn one_pending(
    db: &Connection,
    sql: &str,
    state_hash: &str,
) -> Result<Option<PendingRow>, StoreError> {
    db.query_row(sql, params![state_hash], read_pending)
        .optional()
        .map_err(unavailable)
}

impl PendingRows for SqliteBackend {
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
}
