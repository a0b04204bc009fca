//! Pipeline credentials in SQLite: the `credentials` table, by client id and
//! by connection.

use rusqlite::{params, OptionalExtension, Row};
use time::OffsetDateTime;

use super::{from_ms, inserted, ms, opt_ms, unavailable, SqliteBackend};
use crate::domain::SecretHash;
use crate::store::credentials::two_reads;
use crate::store::{BoxFuture, ConnectionAndCredential, CredentialRow, CredentialRows, StoreError};

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

impl CredentialRows for SqliteBackend {
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

    fn get_connection_and_credential<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, ConnectionAndCredential> {
        two_reads(self, integration, connection, client_id)
    }
}
