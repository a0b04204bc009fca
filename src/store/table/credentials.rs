//! Pipeline credentials on Table Storage: each kept beside its connection
//! (PartitionKey = integration, RowKey = `<connection id>!<client id>`) with an
//! index entry in `~credential` that finds it by client id; credentials of the
//! earlier layout are the `~credential` entity alone (see the module above).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use azure_data_tables::IfMatchCondition;
use futures::StreamExt;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::connections::connection_row;
use super::{
    classify, etag_of, get_str, get_time, odata_string, opt_i64, opt_str, opt_time, put_i64,
    put_str, put_time, Indexed, TableBackend,
};
use crate::domain::{ConnectionId, IntegrationName, SecretHash};
use crate::store::{
    BoxFuture, ConnectionAndCredential, CredentialRow, CredentialRows, StoreError, Versioned,
};

/// Pipeline credentials by client id: RowKey = client id.
pub(crate) const CREDENTIAL_PARTITION: &str = "~credential";

/// Between a connection id and a client id in the RowKey of a credential kept
/// beside its connection. It sorts before every character a connection id may
/// hold (`[A-Za-z0-9._-]`), so the keys from `<connection>` to
/// `<connection>!<client id>` hold that connection, its credentials and nothing
/// of any other connection.
pub(super) const BESIDE: char = '!';

/// The `$filter` of every entity kept beside one connection: `"` follows `!`
/// (BESIDE), so the range holds exactly the RowKeys `<connection>!…`.
fn beside_range(integration: &str, connection: &str) -> String {
    format!(
        "PartitionKey eq {} and RowKey gt {} and RowKey lt {}",
        odata_string(integration),
        odata_string(&format!("{connection}{BESIDE}")),
        odata_string(&format!("{connection}\""))
    )
}

/// The RowKey of a credential kept beside its connection.
pub(crate) fn beside_key(connection: &str, client_id: &str) -> String {
    format!("{connection}{BESIDE}{client_id}")
}

/// How long a seen index entry vouches for its credential beside the
/// connection. This version deletes the credential beside first, so its
/// deletions fail at once regardless; an earlier version deletes only the index
/// entry, and an instance of this version running beside it takes this long at
/// most to notice (a process of this version notices at its first use).
const INDEX_RECHECK: Duration = Duration::from_secs(300);
/// Bounds the memory of seen index entries (only existing credentials enter it).
const INDEX_MEMORY: usize = 10_000;

pub(crate) fn credential_entity(r: &CredentialRow) -> Map<String, Value> {
    let mut m = Map::new();
    put_str(&mut m, "PartitionKey", Some(CREDENTIAL_PARTITION));
    put_str(&mut m, "RowKey", Some(&r.client_id));
    put_str(&mut m, "Integration", Some(&r.integration));
    put_str(&mut m, "Connection", Some(&r.connection));
    put_str(&mut m, "Description", Some(&r.description));
    put_time(&mut m, "CreatedAt", Some(r.created_at));
    put_time(&mut m, "ExpiresAt", r.expires_at);
    put_time(&mut m, "LastUsedAt", r.last_used_at);
    put_i64(&mut m, "MinValiditySecs", r.min_validity_secs);
    put_str(&mut m, "KeyId", Some(&r.key_id));
    put_str(&mut m, "SecretHash", Some(&r.secret_hash));
    m
}

/// The `~credential` entry of a credential kept beside its connection.
pub(crate) fn credential_index_entity(r: &CredentialRow) -> Map<String, Value> {
    let mut m = credential_entity(r);
    m.insert("Colocated".into(), Value::Bool(true));
    m
}

/// True for a `~credential` entry that only points at the credential beside its connection.
pub(crate) fn is_index(m: &Map<String, Value>) -> bool {
    m.get("Colocated").and_then(Value::as_bool) == Some(true)
}

/// Where the credential a `~credential` entry points at is kept (PartitionKey,
/// RowKey); `None` for an entry that is the credential itself. The entry is the
/// table's content: its names become keys only in their own shape.
fn beside_of(
    index: &Map<String, Value>,
    client_id: &str,
) -> Result<Option<(String, String)>, StoreError> {
    if !is_index(index) {
        return Ok(None);
    }
    let (i, c) = (
        get_str(index, "Integration")?,
        get_str(index, "Connection")?,
    );
    if IntegrationName::parse(&i).is_err() || ConnectionId::parse(&c).is_err() {
        return Err(StoreError::Corrupt(
            "a credential index entry names no connection".into(),
        ));
    }
    let beside = beside_key(&c, client_id);
    Ok(Some((i, beside)))
}

/// A credential as kept beside its connection.
pub(crate) fn beside_entity(r: &CredentialRow) -> Map<String, Value> {
    let mut m = credential_entity(r);
    put_str(&mut m, "PartitionKey", Some(&r.integration));
    put_str(
        &mut m,
        "RowKey",
        Some(&beside_key(&r.connection, &r.client_id)),
    );
    put_str(&mut m, "ClientId", Some(&r.client_id));
    m
}

/// A credential kept beside its connection, read as `(integration,
/// connection, client_id)`: an entity whose keys or properties name anything
/// else (a table writer's edit) is corrupt, never another credential.
pub(crate) fn beside_row(
    m: &Map<String, Value>,
    integration: &str,
    connection: &str,
    client_id: &str,
) -> Result<CredentialRow, StoreError> {
    let mut row = credential_row(m)?;
    row.client_id = get_str(m, "ClientId")?;
    let keys = (opt_str(m, "PartitionKey"), opt_str(m, "RowKey"));
    let named = (
        row.integration.as_str(),
        row.connection.as_str(),
        row.client_id.as_str(),
    );
    if named != (integration, connection, client_id)
        || keys
            != (
                Some(integration.to_owned()),
                Some(beside_key(connection, client_id)),
            )
    {
        return Err(StoreError::Corrupt(
            "a credential entity beside a connection names another".into(),
        ));
    }
    Ok(row)
}

pub(crate) fn credential_row(m: &Map<String, Value>) -> Result<CredentialRow, StoreError> {
    Ok(CredentialRow {
        client_id: get_str(m, "RowKey")?,
        integration: get_str(m, "Integration")?,
        connection: get_str(m, "Connection")?,
        description: opt_str(m, "Description").unwrap_or_default(),
        created_at: get_time(m, "CreatedAt")?,
        expires_at: opt_time(m, "ExpiresAt")?,
        last_used_at: opt_time(m, "LastUsedAt")?,
        min_validity_secs: opt_i64(m, "MinValiditySecs")?,
        key_id: get_str(m, "KeyId")?,
        secret_hash: get_str(m, "SecretHash")?,
    })
}

impl TableBackend {
    /// The credentials of one connection: those beside it (a key range of its
    /// partition) and those of the earlier layout (`~credential` entities that
    /// are not index entries). An index entry whose credential is gone is not
    /// one: nothing can authenticate with it.
    async fn credentials_of(
        &self,
        integration: &str,
        connection: &str,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        let (beside, entries) = futures::join!(
            self.query_entities(beside_range(integration, connection)),
            self.query_credentials(integration, connection)
        );
        let (beside, entries) = (beside?, entries?);
        let indexed: std::collections::HashSet<&str> = entries
            .iter()
            .filter(|(_, index)| *index)
            .map(|(r, _)| r.client_id.as_str())
            .collect();
        let mut out = Vec::new();
        for m in beside {
            let client_id = opt_str(&m, "ClientId").unwrap_or_default();
            match beside_row(&m, integration, connection, &client_id) {
                // Without its index entry (an earlier version deleted only that) it is no credential.
                Ok(r) if indexed.contains(r.client_id.as_str()) => out.push(r),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "skipping an unreadable credential entity"),
            }
        }
        out.extend(
            entries
                .into_iter()
                .filter(|(_, index)| !index)
                .map(|(r, _)| r),
        );
        Ok(out)
    }

    /// The RowKeys of every entity kept beside one connection (credentials, whether or not they
    /// are readable or indexed).
    async fn beside_keys(
        &self,
        integration: &str,
        connection: &str,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self
            .query_entities(beside_range(integration, connection))
            .await?
            .iter()
            .filter_map(|m| opt_str(m, "RowKey"))
            .collect())
    }

    /// Whether the credential beside `connection` still has the index entry
    /// that names it there: read at a process's first use of the credential and
    /// again after [`INDEX_RECHECK`]. An earlier version deletes a credential (and
    /// a connection's credentials) by their index entries alone.
    async fn index_confirmed(
        &self,
        integration: &str,
        connection: &str,
        client_id: &str,
    ) -> Result<bool, StoreError> {
        if self
            .lock_indexed()
            .get(client_id)
            .is_some_and(|(i, c, at)| {
                (i.as_str(), c.as_str()) == (integration, connection)
                    && at.elapsed() < INDEX_RECHECK
            })
        {
            return Ok(true);
        }
        let confirmed = match self.read_entity(CREDENTIAL_PARTITION, client_id).await? {
            Some((m, _)) => {
                beside_of(&m, client_id)?
                    == Some((integration.to_owned(), beside_key(connection, client_id)))
            }
            None => false,
        };
        if confirmed {
            self.remember_indexed(client_id, integration, connection);
        }
        Ok(confirmed)
    }

    fn remember_indexed(&self, client_id: &str, integration: &str, connection: &str) {
        let mut seen = self.lock_indexed();
        if seen.len() >= INDEX_MEMORY {
            seen.retain(|_, (_, _, at)| at.elapsed() < INDEX_RECHECK);
            if seen.len() >= INDEX_MEMORY {
                seen.clear();
            }
        }
        let at = Instant::now();
        seen.insert(
            client_id.to_owned(),
            (integration.to_owned(), connection.to_owned(), at),
        );
    }

    fn lock_indexed(&self) -> std::sync::MutexGuard<'_, HashMap<String, Indexed>> {
        self.indexed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `~credential` entities naming one connection (a filter inside their
    /// partition), each with whether it is only an index entry.
    async fn query_credentials(
        &self,
        integration: &str,
        connection: &str,
    ) -> Result<Vec<(CredentialRow, bool)>, StoreError> {
        let filter = format!(
            "PartitionKey eq '{CREDENTIAL_PARTITION}' and Integration eq {} and Connection eq {}",
            odata_string(integration),
            odata_string(connection)
        );
        let mut pages = self
            .table
            .query()
            .filter(filter)
            .into_stream::<Map<String, Value>>();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            for m in page.map_err(classify)?.entities {
                match credential_row(&m) {
                    Ok(r) => out.push((r, is_index(&m))),
                    Err(e) => {
                        tracing::error!(error = %e, "skipping an unreadable credential entity")
                    }
                }
            }
        }
        Ok(out)
    }

    /// The credential `client_id` through its `~credential` entry: the entry
    /// itself for a credential stored before credentials were kept beside their
    /// connections, else the entity beside the connection the entry names
    /// (`Ok(None)` when that is gone: a deletion removes it first). `skip`: that
    /// connection's keys were just read and the credential was not among them.
    async fn credential_by_id(
        &self,
        client_id: &str,
        skip: Option<(&str, &str)>,
    ) -> Result<Option<CredentialRow>, StoreError> {
        let Some((m, _)) = self.read_entity(CREDENTIAL_PARTITION, client_id).await? else {
            return Ok(None);
        };
        let index = credential_row(&m)?;
        if beside_of(&m, client_id)?.is_none() {
            return Ok(Some(index));
        }
        let (i, c) = (index.integration.as_str(), index.connection.as_str());
        if skip == Some((i, c)) {
            return Ok(None);
        }
        match self.read_entity(i, &beside_key(c, client_id)).await? {
            Some((m, _)) => {
                let row = beside_row(&m, i, c, client_id)?;
                self.remember_indexed(client_id, i, c);
                Ok(Some(row))
            }
            None => Ok(None),
        }
    }
}

impl CredentialRows for TableBackend {
    fn insert_credential<'a>(
        &'a self,
        row: &'a CredentialRow,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            // The credential first, then the entry that finds it by client id: a credential is
            // usable only once both exist, and a failure between them leaves no usable half.
            self.table
                .insert::<_, Map<String, Value>>(beside_entity(row))
                .map_err(classify)?
                .await
                .map_err(classify)?;
            let indexed = match self
                .table
                .insert::<_, Map<String, Value>>(credential_index_entity(row))
            {
                Ok(insert) => insert.await.map(|_| ()).map_err(classify),
                Err(e) => Err(classify(e)),
            };
            if indexed.is_err() {
                let beside = beside_key(&row.connection, &row.client_id);
                let _ = self.entity(&row.integration, &beside).delete().await;
            }
            indexed
        })
    }

    fn get_credential<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<CredentialRow>, StoreError>> {
        Box::pin(async move { self.credential_by_id(client_id, None).await })
    }

    fn credential_home<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<(String, String)>, StoreError>> {
        // The index entry alone: it names the connection whether or not the credential
        // beside it is still there.
        Box::pin(async move {
            match self.read_entity(CREDENTIAL_PARTITION, client_id).await? {
                Some((m, _)) => Ok(Some((
                    get_str(&m, "Integration")?,
                    get_str(&m, "Connection")?,
                ))),
                None => Ok(None),
            }
        })
    }

    fn get_connection_and_credential<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, ConnectionAndCredential> {
        Box::pin(async move {
            // One query within the partition: the range from the connection's row to
            // this credential bounds what the service scans (a connection's credentials
            // sort between them), and the two keys bound what it answers, however many
            // credentials the connection has (the caller is not authenticated yet).
            let beside = beside_key(connection, client_id);
            let (c, b) = (odata_string(connection), odata_string(&beside));
            let filter = format!(
                "PartitionKey eq {} and RowKey ge {c} and RowKey le {b} and (RowKey eq {c} or RowKey eq {b})",
                odata_string(integration),
            );
            let entities = match self.query_entities(filter).await {
                Ok(entities) => entities,
                Err(e) => return (Err(e.clone()), Err(e)),
            };
            let (mut row, mut credential) = (Ok(None), Ok(None));
            for m in entities {
                let key = opt_str(&m, "RowKey").unwrap_or_default();
                if key == connection {
                    row = connection_row(&m).and_then(|value| {
                        Ok(Some(Versioned {
                            value,
                            version: etag_of(&m)?,
                        }))
                    });
                } else if key == beside {
                    credential = beside_row(&m, integration, connection, client_id).map(Some);
                }
            }
            if matches!(credential, Ok(Some(_))) {
                credential = match self
                    .index_confirmed(integration, connection, client_id)
                    .await
                {
                    Ok(true) => credential,
                    // Deleted by an earlier version, or a creation cut short before its entry.
                    Ok(false) => Ok(None),
                    Err(e) => Err(e),
                };
            } else if matches!(credential, Ok(None)) {
                // Another connection's, one stored before this layout, or none.
                credential = self
                    .credential_by_id(client_id, Some((integration, connection)))
                    .await;
            }
            (row, credential)
        })
    }

    fn list_credentials<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CredentialRow>, StoreError>> {
        Box::pin(async move { self.credentials_of(integration, connection).await })
    }

    fn touch_credential<'a>(
        &'a self,
        client_id: &'a str,
        last_used_at: OffsetDateTime,
        rehashed: Option<&'a SecretHash>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let Some((index, _)) = self.read_entity(CREDENTIAL_PARTITION, client_id).await? else {
                return Err(StoreError::NotFound);
            };
            let mut targets = vec![(CREDENTIAL_PARTITION.to_owned(), client_id.to_owned())];
            if let Some((integration, beside)) = beside_of(&index, client_id)? {
                targets.insert(0, (integration, beside));
            }
            for (pk, rk) in targets {
                let mut m = Map::new();
                put_str(&mut m, "PartitionKey", Some(&pk));
                put_str(&mut m, "RowKey", Some(&rk));
                put_time(&mut m, "LastUsedAt", Some(last_used_at));
                if let Some(h) = rehashed {
                    put_str(&mut m, "KeyId", Some(&h.key_id));
                    put_str(&mut m, "SecretHash", Some(&h.hash));
                }
                // A merge with If-Match: * fails with 404 on a deleted row instead of re-creating it.
                self.entity(&pk, &rk)
                    .merge(m, IfMatchCondition::Any)
                    .map_err(classify)?
                    .await
                    .map_err(classify)?;
            }
            Ok(())
        })
    }

    fn delete_credential<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let Some((index, _)) = self.read_entity(CREDENTIAL_PARTITION, client_id).await? else {
                return Ok(false);
            };
            // The credential beside its connection first: from then on it fails everywhere
            // (an index entry without it authenticates nothing), whatever happens next.
            if let Some((integration, beside)) = beside_of(&index, client_id)? {
                match self
                    .entity(&integration, &beside)
                    .delete()
                    .await
                    .map_err(classify)
                {
                    Ok(_) | Err(StoreError::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
            match self
                .entity(CREDENTIAL_PARTITION, client_id)
                .delete()
                .await
                .map_err(classify)
            {
                Ok(_) => Ok(true),
                Err(StoreError::NotFound) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    fn delete_credentials_of<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut removed = 0;
            // Every entry, also one whose credential is already gone.
            for (c, _) in self.query_credentials(integration, connection).await? {
                if self.delete_credential(&c.client_id).await? {
                    removed += 1;
                }
            }
            // And what is left beside the connection without an entry (an earlier version's
            // deletion, a creation cut short): a connection created again under this id must
            // not find it.
            for key in self.beside_keys(integration, connection).await? {
                match self
                    .entity(integration, &key)
                    .delete()
                    .await
                    .map_err(classify)
                {
                    Ok(_) | Err(StoreError::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(removed)
        })
    }
}
