//! Pipeline credentials in the store: the row type the backends keep, and the
//! [`Store`] methods that turn rows into domain values (and back). A row holds
//! the secret only as a keyed hash (see `crypto::Keyring::mac`).

use time::{Duration, OffsetDateTime};

use super::{BoxFuture, ConnectionRow, ConnectionRows, Store, StoreError, Versioned};
use crate::domain::{
    ClientId, ConnectionId, ConnectionRecord, IntegrationName, PipelineCredential, SecretHash,
};

/// A connection's row and a credential's, read together ([`Backend::get_connection_and_credential`]).
/// Each read fails on its own (an unreadable connection row does not hide the credential).
pub type ConnectionAndCredential = (
    Result<Option<Versioned<ConnectionRow>>, StoreError>,
    Result<Option<CredentialRow>, StoreError>,
);

/// [`CredentialRows::get_connection_and_credential`] as two reads at once: for
/// a backend that cannot read both in one query (SQLite, the memory table).
pub(crate) fn two_reads<'a, B: ConnectionRows + CredentialRows + ?Sized>(
    backend: &'a B,
    integration: &'a str,
    connection: &'a str,
    client_id: &'a str,
) -> BoxFuture<'a, ConnectionAndCredential> {
    Box::pin(async move {
        futures::join!(
            backend.get_connection(integration, connection),
            backend.get_credential(client_id)
        )
    })
}

/// Pipeline credential rows, by client id and by connection.
pub trait CredentialRows: Send + Sync + 'static {
    /// Stores a pipeline credential (`Conflict` if the client id exists).
    fn insert_credential<'a>(
        &'a self,
        row: &'a CredentialRow,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// A point read by client id; `Ok(None)` when absent.
    fn get_credential<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<CredentialRow>, StoreError>>;
    /// The integration and connection the credential `client_id` belongs to, also when only
    /// part of it is left (what a deletion checks, so that a deletion cut short can be retried).
    fn credential_home<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<(String, String)>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .get_credential(client_id)
                .await?
                .map(|c| (c.integration, c.connection)))
        })
    }
    /// The connection `(integration, connection)` and the credential `client_id` (whichever
    /// connection that credential belongs to): what authenticating a pipeline for a connection
    /// needs. SQLite makes two reads at once; Table Storage keeps a credential beside its
    /// connection and answers both with one range query.
    fn get_connection_and_credential<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, ConnectionAndCredential>;
    /// The credentials of one connection (a filtered query, following continuations).
    fn list_credentials<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CredentialRow>, StoreError>>;
    /// Sets `last_used_at` (and the hash, when given) of an existing
    /// credential; `NotFound` when it was deleted (it is never re-created).
    fn touch_credential<'a>(
        &'a self,
        client_id: &'a str,
        last_used_at: OffsetDateTime,
        rehashed: Option<&'a crate::domain::SecretHash>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Deletes one credential; `Ok(false)` when it did not exist.
    fn delete_credential<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Deletes every credential of a connection; returns how many.
    fn delete_credentials_of<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
}

/// A connection's record and a credential, each read or failed on its own ([`Store::get_with_credential`]).
pub type ConnectionAndCredentialRead = (
    Result<Option<Versioned<ConnectionRecord>>, StoreError>,
    Result<Option<PipelineCredential>, StoreError>,
);

/// A pipeline credential as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialRow {
    pub client_id: String,
    pub integration: String,
    pub connection: String,
    pub description: String,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub last_used_at: Option<OffsetDateTime>,
    pub min_validity_secs: Option<i64>,
    pub key_id: String,
    pub secret_hash: String,
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("credential row: {what}"))
}

fn to_row(c: &PipelineCredential) -> CredentialRow {
    CredentialRow {
        client_id: c.client_id.as_str().to_owned(),
        integration: c.integration.as_str().to_owned(),
        connection: c.connection.as_str().to_owned(),
        description: c.description.clone(),
        created_at: c.created_at,
        expires_at: c.expires_at,
        last_used_at: c.last_used_at,
        min_validity_secs: c.min_validity.map(|d| d.whole_seconds()),
        key_id: c.secret_hash.key_id.clone(),
        secret_hash: c.secret_hash.hash.clone(),
    }
}

/// Rows come back through the same rules as requests: a tampered row does not
/// become a credential for another shape of name.
fn from_row(r: CredentialRow) -> Result<PipelineCredential, StoreError> {
    Ok(PipelineCredential {
        client_id: ClientId::parse(&r.client_id).ok_or_else(|| corrupt("client id"))?,
        integration: IntegrationName::parse(&r.integration)
            .map_err(|_| corrupt("integration name"))?,
        connection: ConnectionId::parse(&r.connection).map_err(|_| corrupt("connection id"))?,
        description: r.description,
        created_at: r.created_at,
        expires_at: r.expires_at,
        last_used_at: r.last_used_at,
        min_validity: match r.min_validity_secs {
            None => None,
            Some(s) if (0..=i64::from(u32::MAX)).contains(&s) => Some(Duration::seconds(s)),
            Some(_) => return Err(corrupt("min validity")),
        },
        secret_hash: SecretHash {
            key_id: r.key_id,
            hash: r.secret_hash,
        },
    })
}

impl Store {
    /// Stores a new credential (`Conflict` if its client id exists).
    pub async fn insert_credential(&self, c: &PipelineCredential) -> Result<(), StoreError> {
        self.ready().await?;
        self.rows.credentials.insert_credential(&to_row(c)).await
    }

    /// `Ok(None)` when no credential has this client id.
    pub async fn get_credential(
        &self,
        client_id: &ClientId,
    ) -> Result<Option<PipelineCredential>, StoreError> {
        self.ready().await?;
        self.rows
            .credentials
            .get_credential(client_id.as_str())
            .await?
            .map(from_row)
            .transpose()
    }

    /// The connection and the credential `client_id` (whichever connection that
    /// credential belongs to), read together: one round trip on Table Storage.
    pub async fn get_with_credential(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
        client_id: &ClientId,
    ) -> ConnectionAndCredentialRead {
        if let Err(e) = self.ready().await {
            return (Err(e.clone()), Err(e));
        }
        let (row, credential) = self
            .rows
            .credentials
            .get_connection_and_credential(
                integration.as_str(),
                connection.as_str(),
                client_id.as_str(),
            )
            .await;
        let row = row.and_then(|r| {
            r.map(|v| {
                Ok(Versioned {
                    value: self.open(v.value)?,
                    version: v.version,
                })
            })
            .transpose()
        });
        (row, credential.and_then(|c| c.map(from_row).transpose()))
    }

    /// The credentials of one connection, oldest first (unreadable rows are skipped and logged).
    pub async fn list_credentials(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
    ) -> Result<Vec<PipelineCredential>, StoreError> {
        self.ready().await?;
        let rows = self
            .rows
            .credentials
            .list_credentials(integration.as_str(), connection.as_str())
            .await?;
        let mut out: Vec<PipelineCredential> = rows
            .into_iter()
            .filter_map(|r| match from_row(r) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "skipping a credential row that cannot be read");
                    None
                }
            })
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.client_id).cmp(&(b.created_at, &b.client_id)));
        Ok(out)
    }

    /// Records a use (and, after a key rotation, the hash under the current
    /// key). Never re-creates a deleted credential: `NotFound` then.
    pub async fn touch_credential(
        &self,
        client_id: &ClientId,
        last_used_at: OffsetDateTime,
        rehashed: Option<&SecretHash>,
    ) -> Result<(), StoreError> {
        self.ready().await?;
        self.rows
            .credentials
            .touch_credential(client_id.as_str(), last_used_at, rehashed)
            .await
    }

    /// Whether the credential `client_id`, or what is left of it, belongs to the connection.
    pub async fn credential_belongs_to(
        &self,
        client_id: &ClientId,
        integration: &IntegrationName,
        connection: &ConnectionId,
    ) -> Result<bool, StoreError> {
        self.ready().await?;
        Ok(self
            .rows
            .credentials
            .credential_home(client_id.as_str())
            .await?
            .is_some_and(|(i, c)| i == integration.as_str() && c == connection.as_str()))
    }

    /// Deletes one credential; `Ok(false)` when it did not exist.
    pub async fn delete_credential(&self, client_id: &ClientId) -> Result<bool, StoreError> {
        self.ready().await?;
        self.rows
            .credentials
            .delete_credential(client_id.as_str())
            .await
    }
}
