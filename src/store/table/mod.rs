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
//! This file holds the client, the entity helpers and [`Lifecycle`]; each
//! capability's entities and operations are in a file of their own
//! (`connections.rs`, `pending.rs`, `credentials.rs`, `outbox.rs`).

mod connections;
mod credentials;
mod outbox;
mod pending;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use azure_core::error::ErrorKind;
use azure_core::{ExponentialRetryOptions, RetryOptions, StatusCode, TransportOptions};
use azure_data_tables::clients::TableServiceClientBuilder;
use azure_data_tables::prelude::*;
use azure_storage::{CloudLocation, ConnectionString};
use futures::StreamExt;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use connections::{connection_entity, connection_row};
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use credentials::{credential_entity, credential_row, CREDENTIAL_PARTITION};
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use outbox::{aux_entity, aux_partition, aux_row, due_page};
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use pending::{pending_entity, pending_row, PENDING_PARTITION};

use super::{BoxFuture, Lifecycle, StoreError, Version};
use crate::domain::Secret;
use pending::PENDING_PARTITION as PING_PARTITION;

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

/// An OData string literal (quotes doubled).
fn odata_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
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

impl Lifecycle for TableBackend {
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
                .entity(PING_PARTITION, "ping")
                .get::<Map<String, Value>>()
                .await
                .map_err(classify)
            {
                Ok(_) | Err(StoreError::NotFound) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }
}
