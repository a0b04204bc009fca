//! Azure Table Storage (and Azurite) through azure_data_tables 0.21.
//!
//! Layout: one table; a connection is the entity (PartitionKey = integration,
//! RowKey = connection id); a pending authorization is the entity
//! (PartitionKey = `~pending`, RowKey = SHA-256 of its state); a pipeline
//! credential is two entities: its own beside its connection (PartitionKey =
//! integration, RowKey = `<connection id>!<client id>`, so that one range
//! query reads a connection and a credential together) and an index entry
//! (PartitionKey = `~credential`, RowKey = client id, `Colocated = true`) that
//! finds it by client id alone. A credential stored before that layout has
//! only the `~credential` entity, which is then the credential itself. Event
//! deliveries and markers are side rows in `~outbox` and `~marker`. Names are
//! limited by `domain::ids` to characters that are safe in keys and URLs.
//! Writes are conditional on ETags; reads are point reads; the sweep uses a
//! server-side `$filter`. The HTTP transport is the broker's pooled reqwest
//! client and retries are bounded explicitly (azure_core's defaults are no
//! pooling and up to 60 s of retries).
//!
//! Over 600 lines: one whole `Backend` for one technology (the entity mapping
//! of every row kind and each operation's conditional-write rules), kept in one
//! file so it reads side by side with `sqlite.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azure_core::error::ErrorKind;
use azure_core::{ExponentialRetryOptions, RetryOptions, StatusCode, TransportOptions};
use azure_data_tables::prelude::*;
use azure_data_tables::{clients::TableServiceClientBuilder, IfMatchCondition};
use azure_storage::{CloudLocation, ConnectionString};
use futures::StreamExt;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{
    AuxKind, AuxRow, Backend, BoxFuture, ConnectionRow, CredentialRow, PendingRow, StoreError,
    Version, Versioned,
};
use crate::domain::{ConnectionId, IntegrationName, Secret, SecretHash};

pub(crate) const PENDING_PARTITION: &str = "~pending";

/// Side rows (outbox, markers) live in partitions that sort after every
/// integration name (`[a-z0-9-]`), like `~pending`.
pub(crate) fn aux_partition(kind: AuxKind) -> &'static str {
    match kind {
        AuxKind::Outbox => "~outbox",
        AuxKind::Marker => "~marker",
    }
}
/// Pipeline credentials by client id: RowKey = client id.
pub(crate) const CREDENTIAL_PARTITION: &str = "~credential";

/// Between a connection id and a client id in the RowKey of a credential kept
/// beside its connection. It sorts before every character a connection id may
/// hold (`[A-Za-z0-9._-]`), so the keys from `<connection>` to
/// `<connection>!<client id>` hold that connection, its credentials and nothing
/// of any other connection.
const BESIDE: char = '!';

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

/// A storage connection string the broker cannot use (never echoes it: it holds a key).
#[derive(Debug, thiserror::Error)]
#[error("is not a valid storage connection string: expected DefaultEndpointsProtocol=https;AccountName=<name>;AccountKey=<key>[;TableEndpoint=<url>] or UseDevelopmentStorage=true{missing}")]
pub struct InvalidConnectionString {
    missing: &'static str,
}

pub struct TableBackend {
    table: TableClient,
    /// Client ids whose index entry was last seen naming the credential beside
    /// a connection: which one, and when (see [`TableBackend::index_confirmed`]).
    indexed: Mutex<HashMap<String, Indexed>>,
}

/// How long a seen index entry vouches for its credential beside the
/// connection. This version deletes the credential beside first, so its
/// deletions fail at once regardless; an earlier version deletes only the index
/// entry, and an instance of this version running beside it takes this long at
/// most to notice (a process of this version notices at its first use).
const INDEX_RECHECK: Duration = Duration::from_secs(300);
/// Bounds the memory of seen index entries (only existing credentials enter it).
const INDEX_MEMORY: usize = 10_000;

/// An index entry seen: the integration and connection it named, and when.
type Indexed = (String, String, Instant);

/// Maps an azure_core error to the store's taxonomy. Only the kind (status
/// and error code) is kept: never request details.
fn classify(e: azure_core::Error) -> StoreError {
    match e.kind() {
        ErrorKind::HttpResponse { status, .. } if *status == StatusCode::NotFound => {
            StoreError::NotFound
        }
        ErrorKind::HttpResponse { status, .. }
            if *status == StatusCode::Conflict || *status == StatusCode::PreconditionFailed =>
        {
            StoreError::Conflict
        }
        ErrorKind::HttpResponse { status, error_code } => StoreError::Unavailable(format!(
            "Table Storage answered {} {}",
            u16::from(*status),
            error_code.as_deref().unwrap_or("")
        )),
        other => StoreError::Unavailable(format!("Table Storage request failed ({other:?})")),
    }
}

impl TableBackend {
    /// Builds the client from a connection string (account-key form, with or
    /// without `TableEndpoint=`, or `UseDevelopmentStorage=true`).
    pub fn connect(
        connection_string: &Secret,
        table: &str,
        http: reqwest::Client,
    ) -> Result<Self, InvalidConnectionString> {
        let bad = |missing: &'static str| InvalidConnectionString { missing };
        let cs = ConnectionString::new(connection_string.expose()).map_err(|_| bad(""))?;
        let builder = if cs.use_development_storage == Some(true) {
            TableServiceClientBuilder::emulator()
        } else {
            let account = cs.account_name.ok_or(bad(" (AccountName is missing)"))?;
            let credentials = cs
                .storage_credentials()
                .map_err(|_| bad(" (AccountKey or SharedAccessSignature is missing)"))?;
            let location = match (cs.table_endpoint, cs.endpoint_suffix) {
                (Some(uri), _) => CloudLocation::Custom {
                    account: account.to_owned(),
                    uri: uri.trim_end_matches('/').to_owned(),
                },
                (None, Some(suffix)) if suffix != "core.windows.net" => CloudLocation::Custom {
                    account: account.to_owned(),
                    uri: format!("https://{account}.table.{suffix}"),
                },
                _ => CloudLocation::Public {
                    account: account.to_owned(),
                },
            };
            TableServiceClientBuilder::with_location(location, credentials)
        };
        Ok(Self::with_builder(builder, table, http))
    }

    /// Builds the client for identity-based access: `Authorization: Bearer` with a
    /// token from `credential` (the app's managed identity), no account key.
    /// `table_uri` is the table service endpoint; `None` means the public cloud's
    /// `https://<account>.table.core.windows.net`.
    pub fn connect_with_identity(
        account: &str,
        table_uri: Option<&str>,
        credential: Arc<dyn azure_core::auth::TokenCredential>,
        table: &str,
        http: reqwest::Client,
    ) -> Self {
        let location = match table_uri {
            Some(uri) => CloudLocation::Custom {
                account: account.to_owned(),
                uri: uri.trim_end_matches('/').to_owned(),
            },
            None => CloudLocation::Public {
                account: account.to_owned(),
            },
        };
        let credentials = azure_storage::StorageCredentials::token_credential(credential);
        let builder = TableServiceClientBuilder::with_location(location, credentials);
        Self::with_builder(builder, table, http)
    }

    /// The broker's pooled client as transport, and bounded retries.
    fn with_builder(
        builder: TableServiceClientBuilder,
        table: &str,
        http: reqwest::Client,
    ) -> Self {
        let service = builder
            .transport(TransportOptions::new(Arc::new(http)))
            .retry(RetryOptions::exponential(
                ExponentialRetryOptions::default()
                    .max_retries(2u32)
                    .initial_delay(std::time::Duration::from_millis(100))
                    .max_delay(std::time::Duration::from_millis(800))
                    .max_total_elapsed(std::time::Duration::from_secs(5)),
            ))
            .build();
        Self {
            indexed: Mutex::new(HashMap::new()),
            table: service.table_client(table),
        }
    }

    /// Entities matching an OData `$filter`, following continuations.
    async fn query_entities(&self, filter: String) -> Result<Vec<Map<String, Value>>, StoreError> {
        let mut pages = self
            .table
            .query()
            .filter(filter)
            .into_stream::<Map<String, Value>>();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            out.extend(page.map_err(classify)?.entities);
        }
        Ok(out)
    }

    /// Connection rows matching an OData `$filter`; unreadable entities are logged and skipped.
    async fn query_connections(
        &self,
        filter: String,
    ) -> Result<Vec<Versioned<ConnectionRow>>, StoreError> {
        let mut out = Vec::new();
        for m in self.query_entities(filter).await? {
            if opt_str(&m, "RowKey").is_some_and(|k| k.contains(BESIDE)) {
                continue; // a credential beside its connection
            }
            match connection_row(&m) {
                Ok(value) => out.push(Versioned {
                    value,
                    version: etag_of(&m)?,
                }),
                Err(e) => {
                    tracing::error!(error = %e, "skipping an unreadable connection entity")
                }
            }
        }
        Ok(out)
    }

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

    /// A point read: the entity and its ETag, `Ok(None)` when it does not exist.
    async fn read_entity(
        &self,
        pk: &str,
        rk: &str,
    ) -> Result<Option<(Map<String, Value>, Version)>, StoreError> {
        match self
            .entity(pk, rk)
            .get::<Map<String, Value>>()
            .await
            .map_err(classify)
        {
            Ok(r) => Ok(Some((r.entity, Version(r.etag.to_string())))),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn entity(&self, pk: &str, rk: &str) -> EntityClient {
        self.table.partition_key_client(pk).entity_client(rk)
    }
}

fn fmt_time(t: OffsetDateTime) -> String {
    // Millisecond precision: inside Table Storage's 100 ns and identical on every backend.
    crate::domain::clock::to_millis(t)
        .format(&Rfc3339)
        .unwrap_or_default()
}

pub(crate) fn put_time(m: &mut Map<String, Value>, name: &str, t: Option<OffsetDateTime>) {
    if let Some(t) = t {
        m.insert(name.to_owned(), Value::String(fmt_time(t)));
        m.insert(
            format!("{name}@odata.type"),
            Value::String("Edm.DateTime".into()),
        );
    }
}

fn put_str(m: &mut Map<String, Value>, name: &str, v: Option<&str>) {
    if let Some(v) = v {
        m.insert(name.to_owned(), Value::String(v.to_owned()));
    }
}

fn get_str(m: &Map<String, Value>, name: &str) -> Result<String, StoreError> {
    opt_str(m, name).ok_or_else(|| StoreError::Corrupt(format!("property {name} is missing")))
}

fn opt_str(m: &Map<String, Value>, name: &str) -> Option<String> {
    m.get(name).and_then(Value::as_str).map(str::to_owned)
}

fn opt_time(m: &Map<String, Value>, name: &str) -> Result<Option<OffsetDateTime>, StoreError> {
    m.get(name)
        .and_then(Value::as_str)
        .map(|s| {
            OffsetDateTime::parse(s, &Rfc3339)
                .map_err(|_| StoreError::Corrupt(format!("property {name} is not a date")))
        })
        .transpose()
}

fn get_time(m: &Map<String, Value>, name: &str) -> Result<OffsetDateTime, StoreError> {
    opt_time(m, name)?.ok_or_else(|| StoreError::Corrupt(format!("property {name} is missing")))
}

pub(crate) fn connection_entity(r: &ConnectionRow) -> Map<String, Value> {
    let mut m = Map::new();
    put_str(&mut m, "PartitionKey", Some(&r.integration));
    put_str(&mut m, "RowKey", Some(&r.connection));
    put_str(&mut m, "Status", Some(&r.status));
    put_str(&mut m, "KeyId", Some(&r.key_id));
    put_str(&mut m, "SealedTokens", Some(&r.sealed_tokens));
    put_str(&mut m, "TokenType", Some(&r.token_type));
    put_str(&mut m, "Scope", Some(&r.scope));
    put_time(&mut m, "ExpiresAt", Some(r.expires_at));
    put_time(&mut m, "CreatedAt", Some(r.created_at));
    put_time(&mut m, "RefreshedAt", Some(r.refreshed_at));
    put_str(&mut m, "LastError", r.last_error.as_deref());
    put_time(&mut m, "LastErrorAt", r.last_error_at);
    put_str(&mut m, "LastErrorKind", r.last_error_kind.as_deref());
    put_time(&mut m, "LeaseUntil", r.lease_until);
    put_str(&mut m, "LeaseOwner", r.lease_owner.as_deref());
    put_str(&mut m, "Metadata", Some(&r.metadata));
    put_str(&mut m, "Account", r.account.as_deref());
    m
}

pub(crate) fn connection_row(m: &Map<String, Value>) -> Result<ConnectionRow, StoreError> {
    Ok(ConnectionRow {
        integration: get_str(m, "PartitionKey")?,
        connection: get_str(m, "RowKey")?,
        status: get_str(m, "Status")?,
        key_id: get_str(m, "KeyId")?,
        sealed_tokens: get_str(m, "SealedTokens")?,
        token_type: get_str(m, "TokenType")?,
        scope: opt_str(m, "Scope").unwrap_or_default(),
        expires_at: get_time(m, "ExpiresAt")?,
        created_at: get_time(m, "CreatedAt")?,
        refreshed_at: get_time(m, "RefreshedAt")?,
        last_error: opt_str(m, "LastError"),
        last_error_at: opt_time(m, "LastErrorAt")?,
        last_error_kind: opt_str(m, "LastErrorKind"),
        lease_until: opt_time(m, "LeaseUntil")?,
        lease_owner: opt_str(m, "LeaseOwner"),
        metadata: opt_str(m, "Metadata").unwrap_or_else(|| "{}".into()),
        account: opt_str(m, "Account"),
    })
}

pub(crate) fn pending_entity(r: &PendingRow) -> Map<String, Value> {
    let mut m = Map::new();
    put_str(&mut m, "PartitionKey", Some(PENDING_PARTITION));
    put_str(&mut m, "RowKey", Some(&r.state_hash));
    put_str(&mut m, "Integration", Some(&r.integration));
    put_str(&mut m, "Connection", Some(&r.connection));
    put_str(&mut m, "KeyId", Some(&r.key_id));
    put_str(&mut m, "SealedVerifier", Some(&r.sealed_verifier));
    put_str(&mut m, "BindingHash", Some(&r.binding_hash));
    put_time(&mut m, "ExpiresAt", Some(r.expires_at));
    put_str(&mut m, "LinkHash", r.link_hash.as_deref());
    m
}

pub(crate) fn pending_row(m: &Map<String, Value>) -> Result<PendingRow, StoreError> {
    Ok(PendingRow {
        state_hash: get_str(m, "RowKey")?,
        integration: get_str(m, "Integration")?,
        connection: get_str(m, "Connection")?,
        key_id: get_str(m, "KeyId")?,
        sealed_verifier: get_str(m, "SealedVerifier")?,
        binding_hash: get_str(m, "BindingHash")?,
        expires_at: get_time(m, "ExpiresAt")?,
        link_hash: opt_str(m, "LinkHash"),
    })
}

fn put_i64(m: &mut Map<String, Value>, name: &str, v: Option<i64>) {
    if let Some(v) = v {
        m.insert(name.to_owned(), Value::String(v.to_string()));
        m.insert(
            format!("{name}@odata.type"),
            Value::String("Edm.Int64".into()),
        );
    }
}

fn opt_i64(m: &Map<String, Value>, name: &str) -> Result<Option<i64>, StoreError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| StoreError::Corrupt(format!("property {name} is not a number"))),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt(format!("property {name} is not a number"))),
    }
}

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

/// An OData string literal (quotes doubled).
fn odata_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub(crate) fn aux_entity(r: &AuxRow) -> Map<String, Value> {
    let mut m = Map::new();
    put_str(&mut m, "PartitionKey", Some(aux_partition(r.kind)));
    put_str(&mut m, "RowKey", Some(&r.key));
    put_time(&mut m, "DueAt", Some(r.due_at));
    put_str(&mut m, "Body", Some(&r.body));
    m
}

pub(crate) fn aux_row(kind: AuxKind, m: &Map<String, Value>) -> Result<AuxRow, StoreError> {
    Ok(AuxRow {
        kind,
        key: get_str(m, "RowKey")?,
        due_at: get_time(m, "DueAt")?,
        body: get_str(m, "Body")?,
    })
}

/// One page of side rows as a query answers them (each entity with its
/// `odata.etag`), earliest first; and the key and version of each entity that
/// cannot be read as a side row. One such entity must not stop every later
/// drain: the caller removes it (it can never be used, and would otherwise
/// come back in every page).
pub(crate) fn due_page(
    kind: AuxKind,
    entities: Vec<Map<String, Value>>,
) -> (Vec<Versioned<AuxRow>>, Vec<(String, Version)>) {
    let mut out = Vec::with_capacity(entities.len());
    let mut unreadable = Vec::new();
    for m in entities {
        match (aux_row(kind, &m), etag_of(&m)) {
            (Ok(value), Ok(version)) => out.push(Versioned { value, version }),
            (Err(e), version) => {
                let key = opt_str(&m, "RowKey");
                tracing::error!(error = %e, kind = kind.as_str(), key = key.as_deref().unwrap_or_default(), "removing a side row that cannot be read");
                if let (Some(key), Ok(version)) = (key, version) {
                    unreadable.push((key, version));
                }
            }
            (Ok(_), Err(e)) => {
                tracing::error!(error = %e, kind = kind.as_str(), "skipping a side row without a version")
            }
        }
    }
    out.sort_by_key(|v| v.value.due_at);
    (out, unreadable)
}

fn etag_of(m: &Map<String, Value>) -> Result<Version, StoreError> {
    opt_str(m, "odata.etag")
        .map(Version)
        .ok_or_else(|| StoreError::Corrupt("query result without odata.etag".into()))
}

/// Only single-quote escaping is needed: the values come from our own alphabet.
fn odata_datetime(t: OffsetDateTime) -> String {
    format!("datetime'{}'", fmt_time(t))
}

impl Backend for TableBackend {
    fn init(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            match self.table.create().await.map_err(classify) {
                Ok(_) | Err(StoreError::Conflict) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            match self
                .entity(PENDING_PARTITION, "ping")
                .get::<Map<String, Value>>()
                .await
                .map_err(classify)
            {
                Ok(_) | Err(StoreError::NotFound) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn get_connection<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned<ConnectionRow>>, StoreError>> {
        Box::pin(async move {
            match self.read_entity(integration, connection).await? {
                Some((m, version)) => Ok(Some(Versioned {
                    value: connection_row(&m)?,
                    version,
                })),
                None => Ok(None),
            }
        })
    }

    fn upsert_connection<'a>(
        &'a self,
        row: &'a ConnectionRow,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        Box::pin(async move {
            let e = self.entity(&row.integration, &row.connection);
            let r = e
                .insert_or_replace(connection_entity(row))
                .map_err(classify)?
                .await
                .map_err(classify)?;
            Ok(Version(r.etag.to_string()))
        })
    }

    fn replace_connection<'a>(
        &'a self,
        row: &'a ConnectionRow,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        Box::pin(async move {
            let e = self.entity(&row.integration, &row.connection);
            let cond = IfMatchCondition::Etag(version.0.clone().into());
            let r = e
                .update(connection_entity(row), cond)
                .map_err(classify)?
                .await
                .map_err(classify)?;
            Ok(Version(r.etag.to_string()))
        })
    }

    fn list_due(
        &self,
        expires_before: OffsetDateTime,
        refreshed_before: OffsetDateTime,
    ) -> BoxFuture<'_, Result<Vec<Versioned<ConnectionRow>>, StoreError>> {
        Box::pin(async move {
            let filter = format!(
                "Status eq 'active' and (ExpiresAt lt {} or RefreshedAt lt {})",
                odata_datetime(expires_before),
                odata_datetime(refreshed_before)
            );
            self.query_connections(filter).await
        })
    }

    fn insert_pending<'a>(&'a self, row: &'a PendingRow) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.table
                .insert::<_, Map<String, Value>>(pending_entity(row))
                .map_err(classify)?
                .await
                .map_err(classify)?;
            Ok(())
        })
    }

    fn take_pending<'a>(
        &'a self,
        state_hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<PendingRow>, StoreError>> {
        Box::pin(async move {
            let e = self.entity(PENDING_PARTITION, state_hash);
            let got = match e.get::<Map<String, Value>>().await.map_err(classify) {
                Ok(r) => r,
                Err(StoreError::NotFound) => return Ok(None),
                Err(err) => return Err(err),
            };
            // Deleting at the ETag we read makes the take single-use under races.
            match e
                .delete()
                .if_match(IfMatchCondition::Etag(got.etag))
                .await
                .map_err(classify)
            {
                Ok(_) => Ok(Some(pending_row(&got.entity)?)),
                Err(StoreError::NotFound | StoreError::Conflict) => Ok(None),
                Err(err) => Err(err),
            }
        })
    }

    fn purge_pending(&self, before: OffsetDateTime) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let filter = format!(
                "PartitionKey eq '{PENDING_PARTITION}' and ExpiresAt lt {}",
                odata_datetime(before)
            );
            let mut pages = self
                .table
                .query()
                .filter(filter)
                .into_stream::<Map<String, Value>>();
            let mut purged = 0;
            while let Some(page) = pages.next().await {
                for m in page.map_err(classify)?.entities {
                    let Some(rk) = opt_str(&m, "RowKey") else {
                        continue;
                    };
                    match self
                        .entity(PENDING_PARTITION, &rk)
                        .delete()
                        .await
                        .map_err(classify)
                    {
                        Ok(_) => purged += 1,
                        Err(StoreError::NotFound) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok(purged)
        })
    }

    fn peek_pending<'a>(
        &'a self,
        state_hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<PendingRow>, StoreError>> {
        Box::pin(async move {
            self.read_entity(PENDING_PARTITION, state_hash)
                .await?
                .map(|(m, _)| pending_row(&m))
                .transpose()
        })
    }

    fn pending_of_connection<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PendingRow>, StoreError>> {
        Box::pin(async move {
            let filter = format!(
                "PartitionKey eq '{PENDING_PARTITION}' and Integration eq {} and Connection eq {}",
                odata_string(integration),
                odata_string(connection)
            );
            self.query_entities(filter)
                .await?
                .iter()
                .map(pending_row)
                .collect()
        })
    }

    fn pending_of_link<'a>(
        &'a self,
        link_hash: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PendingRow>, StoreError>> {
        Box::pin(async move {
            let filter = format!(
                "PartitionKey eq '{PENDING_PARTITION}' and LinkHash eq '{}'",
                link_hash.replace('\'', "''")
            );
            self.query_entities(filter)
                .await?
                .iter()
                .map(pending_row)
                .collect()
        })
    }

    fn list_connections(&self) -> BoxFuture<'_, Result<Vec<Versioned<ConnectionRow>>, StoreError>> {
        Box::pin(async move {
            // Every partition that is not an integration starts with `~`.
            let filter = "PartitionKey lt '~'".to_owned();
            self.query_connections(filter).await
        })
    }

    fn delete_connection<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            match self
                .entity(integration, connection)
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
    ) -> BoxFuture<'a, super::ConnectionAndCredential> {
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

    fn insert_aux<'a>(&'a self, row: &'a AuxRow) -> BoxFuture<'a, Result<Version, StoreError>> {
        Box::pin(async move {
            let r = self
                .table
                .insert::<_, Map<String, Value>>(aux_entity(row))
                .map_err(classify)?
                .await
                .map_err(classify)?;
            Ok(Version(r.etag.to_string()))
        })
    }

    fn get_aux<'a>(
        &'a self,
        kind: AuxKind,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned<AuxRow>>, StoreError>> {
        Box::pin(async move {
            match self.read_entity(aux_partition(kind), key).await? {
                Some((m, version)) => Ok(Some(Versioned {
                    value: aux_row(kind, &m)?,
                    version,
                })),
                None => Ok(None),
            }
        })
    }

    fn replace_aux<'a>(
        &'a self,
        row: &'a AuxRow,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        Box::pin(async move {
            let cond = IfMatchCondition::Etag(version.0.clone().into());
            let r = self
                .entity(aux_partition(row.kind), &row.key)
                .update(aux_entity(row), cond)
                .map_err(classify)?
                .await
                .map_err(classify)?;
            Ok(Version(r.etag.to_string()))
        })
    }

    fn delete_aux<'a>(
        &'a self,
        kind: AuxKind,
        key: &'a str,
        version: Option<&'a Version>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut delete = self.entity(aux_partition(kind), key).delete();
            if let Some(v) = version {
                delete = delete.if_match(IfMatchCondition::Etag(v.0.clone().into()));
            }
            match delete.await.map_err(classify) {
                Ok(_) => Ok(true),
                Err(StoreError::NotFound) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    fn due_aux(
        &self,
        kind: AuxKind,
        before: OffsetDateTime,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<Versioned<AuxRow>>, StoreError>> {
        Box::pin(async move {
            let filter = format!(
                "PartitionKey eq '{}' and DueAt le {}",
                aux_partition(kind),
                odata_datetime(before)
            );
            let mut pages = self
                .table
                .query()
                .filter(filter)
                .top(limit.max(1))
                .into_stream::<Map<String, Value>>();
            // One page: the rest waits for the next drain.
            let Some(page) = pages.next().await else {
                return Ok(Vec::new());
            };
            let (due, unreadable) = due_page(kind, page.map_err(classify)?.entities);
            for (key, version) in unreadable {
                // Best effort (at its version): the next drain tries again.
                let _ = self.delete_aux(kind, &key, Some(&version)).await;
            }
            Ok(due)
        })
    }
}
