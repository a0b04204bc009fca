//! Connections in the store: the row the backends keep ([`ConnectionRow`],
//! tokens sealed), the [`ConnectionRows`] capability, and the [`Store`]
//! methods that seal a [`ConnectionRecord`] into a row and open it again.

use time::OffsetDateTime;

use super::{millis, BoxFuture, Store, StoreError, Version, Versioned, SEALED_V2};
use crate::domain::{
    ConnectionId, ConnectionRecord, ConnectionStatus, IntegrationName, Secret, TokenSet,
};

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

/// Connection rows: point reads, conditional writes, filtered listings.
pub trait ConnectionRows: Send + Sync + 'static {
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
    /// Every connection, following continuations (the admin listing; not on the token path).
    fn list_connections(&self) -> BoxFuture<'_, Result<Vec<Versioned<ConnectionRow>>, StoreError>>;
    /// Deletes a connection; `Ok(false)` when it did not exist.
    fn delete_connection<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
}

/// Format 1: the tokens were bound to the row's identity only. Still read, so
/// grants stored before format 2 survive; every write uses format 2.
fn aad_v1(integration: &str, connection: &str) -> Vec<u8> {
    format!("oauth-broker/v1/{integration}/{connection}").into_bytes()
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
    pub async fn get(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
    ) -> Result<Option<Versioned<ConnectionRecord>>, StoreError> {
        self.ready().await?;
        match self
            .rows
            .connections
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
        self.rows
            .connections
            .upsert_connection(&self.seal(record))
            .await
    }
    pub async fn replace(
        &self,
        record: &ConnectionRecord,
        version: &Version,
    ) -> Result<Version, StoreError> {
        self.ready().await?;
        self.rows
            .connections
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
            .rows
            .connections
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
        let rows = self.rows.connections.list_connections().await?;
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
            .rows
            .credentials
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
        self.rows
            .connections
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
    pub(super) fn open(&self, row: ConnectionRow) -> Result<ConnectionRecord, StoreError> {
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
