//! Persistence of grants and pending authorizations behind one trait.
//!
//! [`Backend`] is implemented once per storage technology (Table Storage in
//! `table.rs`, SQLite in `sqlite.rs`) and deals in rows whose secrets are
//! already sealed. [`Store`] wraps a backend with the [`Keyring`], so that
//! plaintext tokens never reach a backend and the rest of the crate never sees
//! sealed blobs. Only `startup` names a concrete backend.

pub mod credentials;
pub mod identity;
mod outbox;
mod pending;
pub mod sqlite;
pub mod table;

use std::sync::Arc;

use time::OffsetDateTime;

pub use credentials::CredentialRow;
pub use outbox::OutboxEntry;
pub use pending::ConsentLink;
#[cfg(feature = "fuzzing")]
pub(crate) use pending::{aad_link, aad_pending};

use crate::crypto::Keyring;
use crate::domain::{
    ConnectionId, ConnectionRecord, ConnectionStatus, IntegrationName, Secret, TokenSet,
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
    /// `ConnectionRecord::last_error_kind`; `None` for older rows.
    pub last_error_kind: Option<String>,
    pub lease_until: Option<OffsetDateTime>,
    pub lease_owner: Option<String>,
    /// Vendor metadata captured at consent (JSON object of strings; not secret).
    pub metadata: String,
    /// The vendor account that granted it, as `{"id", "source"}` JSON; `None`
    /// for rows stored before accounts were recorded (and rows with no source).
    pub account: Option<String>,
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

/// Which kind of side row. Side rows live apart from connections: in the
/// `~outbox` and `~marker` partitions on Table Storage, in the `aux` table on
/// SQLite. They hold no token in clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuxKind {
    /// Event deliveries not yet acknowledged by their receiver.
    Outbox,
    /// Small state records shared by every instance (which events were sent).
    Marker,
}

impl AuxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbox => "outbox",
            Self::Marker => "marker",
        }
    }
}

/// A side row: a key, the instant it is next due, and an opaque body.
#[derive(Debug, Clone, PartialEq)]
pub struct AuxRow {
    pub kind: AuxKind,
    /// Characters of `[A-Za-z0-9._:-]` only.
    pub key: String,
    pub due_at: OffsetDateTime,
    pub body: String,
}

/// A connection's row and a credential's, read together ([`Backend::get_connection_and_credential`]).
/// Each read fails on its own (an unreadable connection row does not hide the credential).
pub type ConnectionAndCredential = (
    Result<Option<Versioned<ConnectionRow>>, StoreError>,
    Result<Option<CredentialRow>, StoreError>,
);

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
    /// The pending authorizations started from one consent link.
    fn pending_of_link<'a>(
        &'a self,
        link_hash: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PendingRow>, StoreError>>;
    /// Every pending row (consent links and consents in progress) of one
    /// connection, following continuations.
    fn pending_of_connection<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PendingRow>, StoreError>>;
    /// Every connection, following continuations (the admin listing; not on the token path).
    fn list_connections(&self) -> BoxFuture<'_, Result<Vec<Versioned<ConnectionRow>>, StoreError>>;
    /// Deletes a connection; `Ok(false)` when it did not exist.
    fn delete_connection<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
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
    /// needs. By default two reads at once; Table Storage keeps a credential beside its
    /// connection and answers both with one range query.
    fn get_connection_and_credential<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, ConnectionAndCredential> {
        Box::pin(async move {
            futures::join!(
                self.get_connection(integration, connection),
                self.get_credential(client_id)
            )
        })
    }
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
    /// Creates a side row; `Conflict` when its key exists.
    fn insert_aux<'a>(&'a self, row: &'a AuxRow) -> BoxFuture<'a, Result<Version, StoreError>>;
    /// `Ok(None)` when the side row does not exist.
    fn get_aux<'a>(
        &'a self,
        kind: AuxKind,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned<AuxRow>>, StoreError>>;
    /// Replaces a side row only if it is still at `version` (`Conflict` /
    /// `NotFound` as for connections): how an instance claims an outbox entry.
    fn replace_aux<'a>(
        &'a self,
        row: &'a AuxRow,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<Version, StoreError>>;
    /// Deletes a side row (only at `version` when given: `Conflict` if it
    /// changed); `Ok(false)` when it did not exist.
    fn delete_aux<'a>(
        &'a self,
        kind: AuxKind,
        key: &'a str,
        version: Option<&'a Version>,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Up to `limit` side rows of `kind` due at or before `before`, earliest first
    /// where the backend can order (one page, a server-side filter).
    fn due_aux(
        &self,
        kind: AuxKind,
        before: OffsetDateTime,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<Versioned<AuxRow>>, StoreError>>;
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

/// Sealed values written since row integrity (format 2) start with this; the
/// base64 of format 1 never contains a dot.
pub(crate) const SEALED_V2: &str = "v2.";

/// Format 1: the tokens were bound to the row's identity only. Still read, so
/// grants stored before format 2 survive; every write uses format 2.
fn aad_v1(integration: &str, connection: &str) -> Vec<u8> {
    format!("oauth-broker/v1/{integration}/{connection}").into_bytes()
}

fn millis(t: OffsetDateTime) -> i128 {
    crate::domain::clock::to_millis(t).unix_timestamp_nanos() / 1_000_000
}

/// Format 2 of a connection row: the sealed tokens are bound to every field
/// that does not change with the row's state (identity, token type, scope,
/// expiry, metadata), so a writer to the table cannot change any of them
/// without the row failing to open. Status, errors, leases and times of the
/// last refresh are state, not bound (see docs/security.md).
///
/// The account the grant belongs to is bound too, when there is one: it is
/// appended only then, so rows written before accounts existed (which have
/// none) open as before, and a writer can neither add, change nor remove the
/// account of a row without the row failing to open.
pub(crate) fn aad_connection(r: &ConnectionRow) -> Vec<u8> {
    match &r.account {
        None => serde_json::to_vec(&(
            "oauth-broker/v2/connection",
            &r.integration,
            &r.connection,
            &r.token_type,
            &r.scope,
            millis(r.expires_at),
            &r.metadata,
        )),
        Some(account) => serde_json::to_vec(&(
            "oauth-broker/v2/connection",
            &r.integration,
            &r.connection,
            &r.token_type,
            &r.scope,
            millis(r.expires_at),
            &r.metadata,
            account,
        )),
    }
    .expect("serializing strings and numbers cannot fail")
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
    /// The keys (for the keyed hashes of credential secrets).
    pub fn keyring(&self) -> &Keyring {
        &self.keys
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
    /// Deletes a connection and, first, every pipeline credential of it (so a
    /// failure leaves the connection in place and the delete can be retried,
    /// and a later consent under the same name never revives an old credential).
    /// `Ok(false)` when the connection did not exist.
    pub async fn delete(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
    ) -> Result<bool, StoreError> {
        self.ready().await?;
        // Its consent links and consents in progress first: none of them may
        // create the connection again once it is deleted.
        let ended = self.end_pending_of(integration, connection).await?;
        if ended > 0 {
            tracing::info!(
                integration = integration.as_str(),
                connection = connection.as_str(),
                ended,
                "consent links and consents in progress of a deleted connection ended"
            );
        }
        let removed = self
            .backend
            .delete_credentials_of(integration.as_str(), connection.as_str())
            .await?;
        if removed > 0 {
            tracing::info!(
                integration = integration.as_str(),
                connection = connection.as_str(),
                credentials = removed,
                "pipeline credentials of a deleted connection removed"
            );
        }
        self.backend
            .delete_connection(integration.as_str(), connection.as_str())
            .await
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
        let mut row = ConnectionRow {
            integration: r.integration.as_str().to_owned(),
            connection: r.connection.as_str().to_owned(),
            status: r.status.as_str().to_owned(),
            key_id: String::new(),
            sealed_tokens: String::new(),
            token_type: r.token_type.clone(),
            scope: r.scope.clone(),
            expires_at: crate::domain::clock::to_millis(r.expires_at),
            created_at: r.created_at,
            refreshed_at: r.refreshed_at,
            last_error: r.last_error.clone(),
            last_error_at: r.last_error_at,
            last_error_kind: r.last_error_kind.clone(),
            lease_until: r.lease_until,
            lease_owner: r.lease_owner.clone(),
            metadata: serde_json::to_string(&r.metadata).unwrap_or_else(|_| "{}".into()),
            account: r.account.as_ref().map(crate::domain::Account::to_stored),
        };
        (row.key_id, row.sealed_tokens) = self.seal_v2(&json, &aad_connection(&row));
        row
    }
    /// Seals in format 2 (the value carries the `v2.` mark).
    fn seal_v2(&self, plaintext: &[u8], aad: &[u8]) -> (String, String) {
        let (key_id, sealed) = self.keys.seal(plaintext, aad);
        (key_id, format!("{SEALED_V2}{sealed}"))
    }
    /// Opens a format-2 value; anything else is refused.
    fn open_v2(
        &self,
        key_id: &str,
        sealed: &str,
        aad: &[u8],
    ) -> Result<Vec<u8>, crate::crypto::CryptoError> {
        let sealed = sealed
            .strip_prefix(SEALED_V2)
            .ok_or(crate::crypto::CryptoError::Corrupt)?;
        self.keys.open(key_id, sealed, aad)
    }
    fn open(&self, row: ConnectionRow) -> Result<ConnectionRecord, StoreError> {
        let corrupt = |what: &str| {
            StoreError::Corrupt(format!("{}/{}: {what}", row.integration, row.connection))
        };
        let opened = match row.sealed_tokens.strip_prefix(SEALED_V2) {
            Some(_) => self.open_v2(&row.key_id, &row.sealed_tokens, &aad_connection(&row)),
            // Format 1 (written before row integrity): identity only; rewritten
            // in format 2 at its next refresh.
            None => self.keys.open(
                &row.key_id,
                &row.sealed_tokens,
                &aad_v1(&row.integration, &row.connection),
            ),
        };
        let json = opened.map_err(|e| corrupt(&e.to_string()))?;
        let t: SealedTokens =
            serde_json::from_slice(&json).map_err(|_| corrupt("sealed tokens are not readable"))?;
        Ok(ConnectionRecord {
            integration: IntegrationName::parse(&row.integration)
                .map_err(|_| corrupt("integration name"))?,
            connection: ConnectionId::parse(&row.connection)
                .map_err(|_| corrupt("connection id"))?,
            status: ConnectionStatus::read(&row.status),
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
            last_error_kind: row.last_error_kind,
            lease_until: row.lease_until,
            lease_owner: row.lease_owner,
            metadata: serde_json::from_str(&row.metadata)
                .map_err(|_| corrupt("metadata is not a JSON object of strings"))?,
            account: match &row.account {
                None => None,
                Some(a) => Some(
                    crate::domain::Account::from_stored(a)
                        .ok_or_else(|| corrupt("account is not an {\"id\", \"source\"} object"))?,
                ),
            },
        })
    }
}
