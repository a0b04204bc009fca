//! An in-memory Table Storage: the store backend of the fuzz targets, of the
//! store contract suite beside Table Storage and SQLite, and of the refresh
//! engine's unit tests. Never part of the product build (only with `test` or
//! the `fuzzing` feature).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::credentials::two_reads;
use super::table;
use super::{
    AuxKind, AuxRow, AuxRows, BoxFuture, ConnectionAndCredential, ConnectionRow, ConnectionRows,
    CredentialRow, CredentialRows, Lifecycle, PendingRow, PendingRows, StoreError, Version,
    Versioned,
};

/// An in-memory Table Storage. Entities are kept
/// as Table Storage hands them back (JSON objects), under their PartitionKey
/// and RowKey, each with an ETag; every write goes through the broker's own
/// entity mapping (`store::table`) and every read decodes through it, with
/// Table Storage's conditional-write rules. Hostile table contents are
/// planted with [`MemoryTable::plant`] and edited with [`MemoryTable::edit`].
/// Pipeline credentials are kept in the earlier layout (the `~credential`
/// entity alone): the layout beside the connection is Table Storage's own
/// (`table/credentials.rs`), tested on Azurite.
#[derive(Default)]
pub struct MemoryTable {
    rows: Mutex<Entities>,
    etags: AtomicU64,
}

type Entities = BTreeMap<(String, String), (Map<String, Value>, u64)>;

fn key(pk: &str, rk: &str) -> (String, String) {
    (pk.to_owned(), rk.to_owned())
}

fn version(etag: u64) -> Version {
    Version(format!("W/\"{etag}\""))
}

/// An entity as Table Storage returns it: its PartitionKey and RowKey are
/// always there, and always the keys it is stored under.
fn as_returned(pk: &str, rk: &str, m: &Map<String, Value>) -> Map<String, Value> {
    let mut m = m.clone();
    m.insert("PartitionKey".into(), Value::String(pk.to_owned()));
    m.insert("RowKey".into(), Value::String(rk.to_owned()));
    m
}

pub(crate) fn time_of(m: &Map<String, Value>, name: &str) -> Option<OffsetDateTime> {
    m.get(name)
        .and_then(Value::as_str)
        .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
}

impl MemoryTable {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entities> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_etag(&self) -> u64 {
        self.etags.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Puts an entity into the table as it is (a writer with access to the table).
    pub fn plant(&self, pk: &str, rk: &str, entity: Map<String, Value>) {
        let etag = self.next_etag();
        self.lock().insert(key(pk, rk), (entity, etag));
    }

    /// The entity at `pk`/`rk`, as stored.
    pub fn entity(&self, pk: &str, rk: &str) -> Option<Map<String, Value>> {
        self.lock().get(&key(pk, rk)).map(|(m, _)| m.clone())
    }

    /// Changes an entity in place (a writer with access to the table); a new ETag.
    pub fn edit(&self, pk: &str, rk: &str, f: impl FnOnce(&mut Map<String, Value>)) {
        let etag = self.next_etag();
        if let Some((m, e)) = self.lock().get_mut(&key(pk, rk)) {
            f(m);
            *e = etag;
        }
    }

    /// Every (PartitionKey, RowKey) held.
    pub fn keys(&self) -> Vec<(String, String)> {
        self.lock().keys().cloned().collect()
    }

    /// Inserts unless the key exists (`Conflict`).
    fn insert(
        &self,
        pk: &str,
        rk: &str,
        entity: Map<String, Value>,
    ) -> Result<Version, StoreError> {
        let etag = self.next_etag();
        let mut rows = self.lock();
        if rows.contains_key(&key(pk, rk)) {
            return Err(StoreError::Conflict);
        }
        rows.insert(key(pk, rk), (entity, etag));
        Ok(version(etag))
    }

    /// Replaces at `expected` (`NotFound` when absent, `Conflict` when changed).
    fn replace(
        &self,
        pk: &str,
        rk: &str,
        entity: Map<String, Value>,
        expected: &Version,
    ) -> Result<Version, StoreError> {
        let etag = self.next_etag();
        let mut rows = self.lock();
        let Some((m, e)) = rows.get_mut(&key(pk, rk)) else {
            return Err(StoreError::NotFound);
        };
        if version(*e) != *expected {
            return Err(StoreError::Conflict);
        }
        (*m, *e) = (entity, etag);
        Ok(version(etag))
    }

    fn read(&self, pk: &str, rk: &str) -> Option<(Map<String, Value>, Version)> {
        self.lock()
            .get(&key(pk, rk))
            .map(|(m, e)| (as_returned(pk, rk, m), version(*e)))
    }

    /// Deletes (only at `expected` when given: `Conflict` if it changed).
    fn delete_at(
        &self,
        pk: &str,
        rk: &str,
        expected: Option<&Version>,
    ) -> Result<bool, StoreError> {
        let mut rows = self.lock();
        let k = key(pk, rk);
        match (rows.get(&k), expected) {
            (None, _) => Ok(false),
            (Some((_, e)), Some(v)) if version(*e) != *v => Err(StoreError::Conflict),
            (Some(_), _) => {
                rows.remove(&k);
                Ok(true)
            }
        }
    }

    /// Takes an entity out of the table (a writer with access to the table).
    pub fn remove(&self, pk: &str, rk: &str) -> Option<Map<String, Value>> {
        self.lock().remove(&key(pk, rk)).map(|(m, _)| m)
    }

    /// A query: the entities of which `keep` holds, in key order, each with its
    /// `odata.etag` as Table Storage adds it to query results.
    fn query(&self, keep: impl Fn(&str, &Map<String, Value>) -> bool) -> Vec<Map<String, Value>> {
        self.lock()
            .iter()
            .filter(|((pk, _), (m, _))| keep(pk, m))
            .map(|((pk, rk), (m, e))| {
                let mut m = as_returned(pk, rk, m);
                m.insert("odata.etag".into(), Value::String(version(*e).0));
                m
            })
            .collect()
    }

    fn connections(&self, keep: impl Fn(&ConnectionRow) -> bool) -> Vec<Versioned<ConnectionRow>> {
        self.query(|pk, _| pk < "~")
            .iter()
            .filter_map(|m| match table::connection_row(m) {
                Ok(value) => keep(&value).then(|| Versioned {
                    value,
                    version: Version(
                        m.get("odata.etag")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                    ),
                }),
                Err(e) => {
                    tracing::error!(error = %e, "skipping an unreadable connection entity");
                    None
                }
            })
            .collect()
    }

    fn pending_where(
        &self,
        keep: impl Fn(&Map<String, Value>) -> bool,
    ) -> Result<Vec<PendingRow>, StoreError> {
        self.query(|pk, m| pk == table::PENDING_PARTITION && keep(m))
            .iter()
            .map(table::pending_row)
            .collect()
    }

    fn credentials_of(&self, integration: &str, connection: &str) -> Vec<CredentialRow> {
        self.query(|pk, m| {
            pk == table::CREDENTIAL_PARTITION
                && m.get("Integration").and_then(Value::as_str) == Some(integration)
                && m.get("Connection").and_then(Value::as_str) == Some(connection)
        })
        .iter()
        .filter_map(|m| match table::credential_row(m) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(error = %e, "skipping an unreadable credential entity");
                None
            }
        })
        .collect()
    }
}

/// An answer that is ready at once (the memory table never waits).
fn ready<T: Send + 'static>(v: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(v))
}

impl Lifecycle for MemoryTable {
    fn init(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        ready(Ok(()))
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        ready(Ok(()))
    }
}

impl ConnectionRows for MemoryTable {
    fn get_connection<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned<ConnectionRow>>, StoreError>> {
        ready(
            self.read(integration, connection)
                .map(|(m, version)| {
                    Ok(Versioned {
                        value: table::connection_row(&m)?,
                        version,
                    })
                })
                .transpose(),
        )
    }
    fn upsert_connection<'a>(
        &'a self,
        row: &'a ConnectionRow,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        let etag = self.next_etag();
        self.lock().insert(
            key(&row.integration, &row.connection),
            (table::connection_entity(row), etag),
        );
        ready(Ok(version(etag)))
    }
    fn replace_connection<'a>(
        &'a self,
        row: &'a ConnectionRow,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        ready(self.replace(
            &row.integration,
            &row.connection,
            table::connection_entity(row),
            version,
        ))
    }
    fn list_due(
        &self,
        expires_before: OffsetDateTime,
        refreshed_before: OffsetDateTime,
    ) -> BoxFuture<'_, Result<Vec<Versioned<ConnectionRow>>, StoreError>> {
        ready(Ok(self.connections(|r| {
            r.status == "active"
                && (r.expires_at < expires_before || r.refreshed_at < refreshed_before)
        })))
    }
    fn list_connections(&self) -> BoxFuture<'_, Result<Vec<Versioned<ConnectionRow>>, StoreError>> {
        ready(Ok(self.connections(|_| true)))
    }
    fn delete_connection<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        ready(Ok(self.remove(integration, connection).is_some()))
    }
}

impl PendingRows for MemoryTable {
    fn insert_pending<'a>(&'a self, row: &'a PendingRow) -> BoxFuture<'a, Result<(), StoreError>> {
        ready(
            self.insert(
                table::PENDING_PARTITION,
                &row.state_hash,
                table::pending_entity(row),
            )
            .map(|_| ()),
        )
    }
    fn take_pending<'a>(
        &'a self,
        state_hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<PendingRow>, StoreError>> {
        ready(
            self.remove(table::PENDING_PARTITION, state_hash)
                .map(|m| table::pending_row(&m))
                .transpose(),
        )
    }
    fn purge_pending(&self, before: OffsetDateTime) -> BoxFuture<'_, Result<u64, StoreError>> {
        let mut rows = self.lock();
        let n = rows.len();
        rows.retain(|(pk, _), (m, _)| {
            pk != table::PENDING_PARTITION || time_of(m, "ExpiresAt").is_none_or(|t| t >= before)
        });
        ready(Ok((n - rows.len()) as u64))
    }
    fn peek_pending<'a>(
        &'a self,
        state_hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<PendingRow>, StoreError>> {
        ready(
            self.read(table::PENDING_PARTITION, state_hash)
                .map(|(m, _)| table::pending_row(&m))
                .transpose(),
        )
    }
    fn pending_of_link<'a>(
        &'a self,
        link_hash: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PendingRow>, StoreError>> {
        ready(self.pending_where(|m| m.get("LinkHash").and_then(Value::as_str) == Some(link_hash)))
    }
    fn pending_of_connection<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PendingRow>, StoreError>> {
        ready(self.pending_where(|m| {
            m.get("Integration").and_then(Value::as_str) == Some(integration)
                && m.get("Connection").and_then(Value::as_str) == Some(connection)
        }))
    }
}

impl CredentialRows for MemoryTable {
    fn insert_credential<'a>(
        &'a self,
        row: &'a CredentialRow,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        ready(
            self.insert(
                table::CREDENTIAL_PARTITION,
                &row.client_id,
                table::credential_entity(row),
            )
            .map(|_| ()),
        )
    }
    fn get_credential<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<CredentialRow>, StoreError>> {
        ready(
            self.read(table::CREDENTIAL_PARTITION, client_id)
                .map(|(m, _)| table::credential_row(&m))
                .transpose(),
        )
    }
    fn list_credentials<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CredentialRow>, StoreError>> {
        ready(Ok(self.credentials_of(integration, connection)))
    }
    fn touch_credential<'a>(
        &'a self,
        client_id: &'a str,
        last_used_at: OffsetDateTime,
        rehashed: Option<&'a crate::domain::SecretHash>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        // A merge with If-Match: *: 404 on a deleted row, never a re-creation.
        let etag = self.next_etag();
        let mut rows = self.lock();
        let Some((m, e)) = rows.get_mut(&key(table::CREDENTIAL_PARTITION, client_id)) else {
            return ready(Err(StoreError::NotFound));
        };
        table::put_time(m, "LastUsedAt", Some(last_used_at));
        if let Some(h) = rehashed {
            m.insert("KeyId".into(), Value::String(h.key_id.clone()));
            m.insert("SecretHash".into(), Value::String(h.hash.clone()));
        }
        *e = etag;
        ready(Ok(()))
    }
    fn delete_credential<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        ready(Ok(self
            .remove(table::CREDENTIAL_PARTITION, client_id)
            .is_some()))
    }
    fn delete_credentials_of<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let mut removed = 0;
        for c in self.credentials_of(integration, connection) {
            if self
                .remove(table::CREDENTIAL_PARTITION, &c.client_id)
                .is_some()
            {
                removed += 1;
            }
        }
        ready(Ok(removed))
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

impl AuxRows for MemoryTable {
    fn insert_aux<'a>(&'a self, row: &'a AuxRow) -> BoxFuture<'a, Result<Version, StoreError>> {
        ready(self.insert(
            table::aux_partition(row.kind),
            &row.key,
            table::aux_entity(row),
        ))
    }
    fn get_aux<'a>(
        &'a self,
        kind: AuxKind,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned<AuxRow>>, StoreError>> {
        ready(
            self.read(table::aux_partition(kind), key)
                .map(|(m, version)| {
                    Ok(Versioned {
                        value: table::aux_row(kind, &m)?,
                        version,
                    })
                })
                .transpose(),
        )
    }
    fn replace_aux<'a>(
        &'a self,
        row: &'a AuxRow,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        ready(self.replace(
            table::aux_partition(row.kind),
            &row.key,
            table::aux_entity(row),
            version,
        ))
    }
    fn delete_aux<'a>(
        &'a self,
        kind: AuxKind,
        key: &'a str,
        expected: Option<&'a Version>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        ready(self.delete_at(table::aux_partition(kind), key, expected))
    }
    fn due_aux(
        &self,
        kind: AuxKind,
        before: OffsetDateTime,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<Versioned<AuxRow>>, StoreError>> {
        let partition = table::aux_partition(kind);
        let mut page =
            self.query(|pk, m| pk == partition && time_of(m, "DueAt").is_some_and(|t| t <= before));
        page.truncate(limit.max(1) as usize);
        let (due, unreadable) = table::due_page(kind, page);
        for (key, version) in unreadable {
            let _ = self.delete_at(partition, &key, Some(&version));
        }
        ready(Ok(due))
    }
}
