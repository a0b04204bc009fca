//! Persistence of grants and pending authorizations behind one trait.
//!
//! [`Backend`] is implemented once per storage technology (Table Storage in
//! `table.rs`, SQLite in `sqlite.rs`) and deals in rows whose secrets are
//! already sealed. [`Store`] wraps a backend with the [`Keyring`], so that
//! plaintext tokens never reach a backend and the rest of the crate never sees
//! sealed blobs. Only `startup` names a concrete backend.

pub mod identity;
pub mod sqlite;
pub mod table;

use std::sync::Arc;

use time::OffsetDateTime;

use crate::crypto::Keyring;
use crate::domain::{
    ConnectionId, ConnectionRecord, ConnectionStatus, IntegrationName, PendingAuthorization,
    Secret, TokenSet,
};

/// Boxed futures keep the trait object-safe without an extra crate.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// An opaque row version: an ETag on Table Storage, a counter on SQLite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(pub String);

#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub value: T,
    pub version: Version,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist (for conditional writes: it was deleted meanwhile).
    #[error("not found")]
    NotFound,
    /// A conditional write lost: the row exists (insert) or changed (replace).
    #[error("conflict: the row was changed by someone else")]
    Conflict,
    /// The store could not be reached or answered unexpectedly.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A row could not be read back (bad field, unknown key id, failed decryption).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// A connection row as stored: tokens sealed, times as instants.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionRow {
    pub integration: String,
    pub connection: String,
    pub status: String,
    pub key_id: String,
    pub sealed_tokens: String,
    pub token_type: String,
    pub scope: String,
    pub expires_at: OffsetDateTime,
    pub created_at: OffsetDateTime,
    pub refreshed_at: OffsetDateTime,
    pub last_error: Option<String>,
    pub last_error_at: Option<OffsetDateTime>,
    pub lease_until: Option<OffsetDateTime>,
    pub lease_owner: Option<String>,
    /// Vendor metadata captured at consent (JSON object of strings; not secret).
    pub metadata: String,
}

/// A pending authorization as stored, keyed by the SHA-256 of its `state`.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingRow {
    pub state_hash: String,
    pub integration: String,
    pub connection: String,
    pub key_id: String,
    pub sealed_verifier: String,
    pub binding_hash: String,
    pub expires_at: OffsetDateTime,
    /// The consent link this authorization was started from, if any.
    pub link_hash: Option<String>,
}

/// One storage technology. Every method is a point operation or a filtered
/// query; none scans all rows into memory.
pub trait Backend: Send + Sync + 'static {
    /// Creates the table if needed.
    fn init(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// A cheap round trip proving the store answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// `Ok(None)` when the connection does not exist.
    fn get_connection<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned<ConnectionRow>>, StoreError>>;
    /// Creates or replaces the row unconditionally (a new consent).
    fn upsert_connection<'a>(
        &'a self,
        row: &'a ConnectionRow,
    ) -> BoxFuture<'a, Result<Version, StoreError>>;
    /// Replaces the row only if it is still at `version`: `Conflict` when it
    /// changed, `NotFound` when it was deleted.
    fn replace_connection<'a>(
        &'a self,
        row: &'a ConnectionRow,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<Version, StoreError>>;
    /// Active connections whose access token expires before `expires_before`
    /// or that were last refreshed before `refreshed_before`, selected by a
    /// server-side filter, following continuations.
    fn list_due(
        &self,
        expires_before: OffsetDateTime,
        refreshed_before: OffsetDateTime,
    ) -> BoxFuture<'_, Result<Vec<Versioned<ConnectionRow>>, StoreError>>;
    /// Stores a pending authorization (`Conflict` if the state hash exists).
    fn insert_pending<'a>(&'a self, row: &'a PendingRow) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Reads and deletes a pending authorization atomically: of concurrent
    /// callers at most one gets `Some`.
    fn take_pending<'a>(
        &'a self,
        state_hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<PendingRow>, StoreError>>;
    /// Deletes pending authorizations that expired before `before`; returns how many.
    fn purge_pending(&self, before: OffsetDateTime) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// Reads a pending row without using it up (`Ok(None)` when absent).
    fn peek_pending<'a>(
        &'a self,
        state_hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<PendingRow>, StoreError>>;
    /// Every connection, following continuations (the admin listing; not on the token path).
    fn list_connections(&self) -> BoxFuture<'_, Result<Vec<Versioned<ConnectionRow>>, StoreError>>;
    /// Deletes a connection; `Ok(false)` when it did not exist.
    fn delete_connection<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
}

/// The store the rest of the crate uses: a backend plus sealing.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    keys: Keyring,
    /// Set once `init` has succeeded; every operation first makes sure of it,
    /// so a store that comes up after the broker is used as soon as it answers.
    ready: Arc<tokio::sync::OnceCell<()>>,
}

/// A consent link an admin can send to an account owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentLink {
    pub link_hash: String,
    pub integration: IntegrationName,
    pub connection: ConnectionId,
    pub expires_at: OffsetDateTime,
}

fn link_key(link_hash: &str) -> String {
    format!("link-{link_hash}")
}

fn link_row(l: &ConsentLink) -> PendingRow {
    PendingRow {
        state_hash: link_key(&l.link_hash),
        integration: l.integration.as_str().to_owned(),
        connection: l.connection.as_str().to_owned(),
        key_id: String::new(),
        sealed_verifier: String::new(),
        binding_hash: String::new(),
        expires_at: l.expires_at,
        link_hash: None,
    }
}

fn link_from_row(r: PendingRow) -> Result<ConsentLink, StoreError> {
    Ok(ConsentLink {
        link_hash: r.state_hash.trim_start_matches("link-").to_owned(),
        integration: IntegrationName::parse(&r.integration)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        connection: ConnectionId::parse(&r.connection)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        expires_at: r.expires_at,
    })
}

fn aad(integration: &str, connection: &str) -> Vec<u8> {
    format!("oauth-broker/v1/{integration}/{connection}").into_bytes()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SealedTokens {
    a: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<String>,
}

impl Store {
    pub fn new(backend: Arc<dyn Backend>, keys: Keyring) -> Self {
        Self {
            backend,
            keys,
            ready: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    /// Creates the table on first use (concurrent callers share one attempt;
    /// a failed attempt is retried by the next caller).
    pub async fn ready(&self) -> Result<(), StoreError> {
        self.ready
            .get_or_try_init(|| self.backend.init())
            .await
            .map(|_| ())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.ready().await?;
        self.backend.ping().await
    }

    pub async fn get(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
    ) -> Result<Option<Versioned<ConnectionRecord>>, StoreError> {
        self.ready().await?;
        match self
            .backend
            .get_connection(integration.as_str(), connection.as_str())
            .await?
        {
            None => Ok(None),
            Some(v) => Ok(Some(Versioned {
                value: self.open(v.value)?,
                version: v.version,
            })),
        }
    }

    pub async fn upsert(&self, record: &ConnectionRecord) -> Result<Version, StoreError> {
        self.ready().await?;
        self.backend.upsert_connection(&self.seal(record)).await
    }

    pub async fn replace(
        &self,
        record: &ConnectionRecord,
        version: &Version,
    ) -> Result<Version, StoreError> {
        self.ready().await?;
        self.backend
            .replace_connection(&self.seal(record), version)
            .await
    }

    pub async fn list_due(
        &self,
        expires_before: OffsetDateTime,
        refreshed_before: OffsetDateTime,
    ) -> Result<Vec<Versioned<ConnectionRecord>>, StoreError> {
        self.ready().await?;
        let rows = self
            .backend
            .list_due(expires_before, refreshed_before)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for v in rows {
            match self.open(v.value) {
                Ok(value) => out.push(Versioned {
                    value,
                    version: v.version,
                }),
                Err(e) => {
                    tracing::error!(error = %e, "skipping a connection row that cannot be read")
                }
            }
        }
        Ok(out)
    }

    pub async fn insert_pending(
        &self,
        state_hash: &str,
        p: &PendingAuthorization,
    ) -> Result<(), StoreError> {
        self.ready().await?;
        let (key_id, sealed_verifier) = self.keys.seal(
            p.pkce_verifier
                .as_ref()
                .map_or(&[][..], |v| v.expose().as_bytes()),
            &aad("pending", state_hash),
        );
        let row = PendingRow {
            state_hash: state_hash.to_owned(),
            integration: p.integration.as_str().to_owned(),
            connection: p.connection.as_str().to_owned(),
            key_id,
            sealed_verifier,
            binding_hash: p.binding_hash.clone(),
            expires_at: p.expires_at,
            link_hash: p.link_hash.clone(),
        };
        self.backend.insert_pending(&row).await
    }

    pub async fn take_pending(
        &self,
        state_hash: &str,
    ) -> Result<Option<PendingAuthorization>, StoreError> {
        self.ready().await?;
        let Some(row) = self.backend.take_pending(state_hash).await? else {
            return Ok(None);
        };
        let verifier = self
            .keys
            .open(
                &row.key_id,
                &row.sealed_verifier,
                &aad("pending", state_hash),
            )
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Some(PendingAuthorization {
            integration: IntegrationName::parse(&row.integration)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            connection: ConnectionId::parse(&row.connection)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            // An empty sealed verifier is a flow without PKCE.
            pkce_verifier: Some(
                String::from_utf8(verifier).map_err(|_| StoreError::Corrupt("verifier".into()))?,
            )
            .filter(|v| !v.is_empty())
            .map(Secret::new),
            binding_hash: row.binding_hash,
            expires_at: row.expires_at,
            link_hash: row.link_hash,
        }))
    }

    /// Records a consent link (keyed by the hash of its nonce) until it expires or is used.
    pub async fn insert_link(&self, link: &ConsentLink) -> Result<(), StoreError> {
        self.ready().await?;
        self.backend.insert_pending(&link_row(link)).await
    }

    /// The consent link, if it exists and has not been used up.
    pub async fn peek_link(&self, link_hash: &str) -> Result<Option<ConsentLink>, StoreError> {
        self.ready().await?;
        self.backend
            .peek_pending(&link_key(link_hash))
            .await?
            .map(link_from_row)
            .transpose()
    }

    /// Uses a consent link up; `Ok(false)` if it was already used (or never existed).
    pub async fn consume_link(&self, link_hash: &str) -> Result<bool, StoreError> {
        self.ready().await?;
        Ok(self
            .backend
            .take_pending(&link_key(link_hash))
            .await?
            .is_some())
    }

    /// Every connection (for the admin listing).
    pub async fn list(&self) -> Result<Vec<ConnectionRecord>, StoreError> {
        self.ready().await?;
        let rows = self.backend.list_connections().await?;
        let mut out = Vec::with_capacity(rows.len());
        for v in rows {
            match self.open(v.value) {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::error!(error = %e, "skipping a connection row that cannot be read")
                }
            }
        }
        Ok(out)
    }

    pub async fn delete(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
    ) -> Result<bool, StoreError> {
        self.ready().await?;
        self.backend
            .delete_connection(integration.as_str(), connection.as_str())
            .await
    }

    pub async fn purge_pending(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        self.ready().await?;
        self.backend.purge_pending(before).await
    }

    fn seal(&self, r: &ConnectionRecord) -> ConnectionRow {
        let plain = SealedTokens {
            a: r.tokens.access_token.expose().to_owned(),
            r: r.tokens
                .refresh_token
                .as_ref()
                .map(|t| t.expose().to_owned()),
        };
        let json = serde_json::to_vec(&plain).expect("serializing strings cannot fail");
        let (key_id, sealed_tokens) = self
            .keys
            .seal(&json, &aad(r.integration.as_str(), r.connection.as_str()));
        ConnectionRow {
            integration: r.integration.as_str().to_owned(),
            connection: r.connection.as_str().to_owned(),
            status: r.status.as_str().to_owned(),
            key_id,
            sealed_tokens,
            token_type: r.token_type.clone(),
            scope: r.scope.clone(),
            expires_at: r.expires_at,
            created_at: r.created_at,
            refreshed_at: r.refreshed_at,
            last_error: r.last_error.clone(),
            last_error_at: r.last_error_at,
            lease_until: r.lease_until,
            lease_owner: r.lease_owner.clone(),
            metadata: serde_json::to_string(&r.metadata).unwrap_or_else(|_| "{}".into()),
        }
    }

    fn open(&self, row: ConnectionRow) -> Result<ConnectionRecord, StoreError> {
        let corrupt = |what: &str| {
            StoreError::Corrupt(format!("{}/{}: {what}", row.integration, row.connection))
        };
        let json = self
            .keys
            .open(
                &row.key_id,
                &row.sealed_tokens,
                &aad(&row.integration, &row.connection),
            )
            .map_err(|e| corrupt(&e.to_string()))?;
        let t: SealedTokens =
            serde_json::from_slice(&json).map_err(|_| corrupt("sealed tokens are not readable"))?;
        Ok(ConnectionRecord {
            integration: IntegrationName::parse(&row.integration)
                .map_err(|_| corrupt("integration name"))?,
            connection: ConnectionId::parse(&row.connection)
                .map_err(|_| corrupt("connection id"))?,
            status: ConnectionStatus::parse(&row.status).ok_or_else(|| corrupt("status"))?,
            tokens: TokenSet {
                access_token: Secret::new(t.a),
                refresh_token: t.r.map(Secret::new),
            },
            token_type: row.token_type,
            scope: row.scope,
            expires_at: row.expires_at,
            created_at: row.created_at,
            refreshed_at: row.refreshed_at,
            last_error: row.last_error,
            last_error_at: row.last_error_at,
            lease_until: row.lease_until,
            lease_owner: row.lease_owner,
            metadata: serde_json::from_str(&row.metadata).unwrap_or_default(),
        })
    }
}
