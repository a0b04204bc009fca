//! Connection management: the admin views, "Refresh now", and deletion with
//! revocation at the vendor (RFC 7009). The routes reach the store only
//! through these (the token path goes through the refresh engine).
//!
//! Depends on the store, the registry, `oauth` and the refresh engine (for
//! refreshes, the condition the engine assesses, and the events it tells).

use std::sync::Arc;

use crate::config::Integration;
use crate::domain::clock::now;
use crate::domain::condition::Overview;
use crate::domain::{ConnectionId, ConnectionRecord, IntegrationName, OAuthErrorCode};
use crate::oauth;
use crate::refresh::{Engine, Need, RefreshError};
use crate::registry::{Lookup, Registry};
use crate::store::{Store, StoreError};

/// The connections of every integration, as operators manage them.
pub struct Connections {
    engine: Arc<Engine>,
    store: Store,
    http: reqwest::Client,
    integrations: Arc<Registry>,
    /// The bound of a revocation call.
    upstream_timeout: std::time::Duration,
}

impl Connections {
    pub fn new(
        engine: Arc<Engine>,
        store: Store,
        http: reqwest::Client,
        integrations: Arc<Registry>,
        upstream_timeout: std::time::Duration,
    ) -> Self {
        Self {
            engine,
            store,
            http,
            integrations,
            upstream_timeout,
        }
    }

    /// Integrations still waiting for their issuer's metadata.
    pub fn unavailable_integrations(&self) -> Vec<(IntegrationName, String)> {
        self.integrations.unavailable()
    }

    /// A cheap round trip proving the store answers (the health route).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    /// Every connection (the admin listing; never on the token path).
    pub async fn connections(&self) -> Result<Vec<ConnectionRecord>, StoreError> {
        self.store.list().await
    }

    /// Every connection with its condition, most urgent first (the status page).
    pub async fn overview(&self) -> Result<Overview, StoreError> {
        let records: Vec<ConnectionRecord> = self
            .store
            .list()
            .await?
            .into_iter()
            .map(|r| self.engine.as_assessed(r))
            .collect();
        let configured = self
            .integrations
            .ready()
            .into_iter()
            .map(|i| i.name.clone())
            .chain(self.integrations.unavailable().into_iter().map(|(n, _)| n));
        Ok(Overview::build_with(
            records,
            configured,
            |name| match self.integrations.get(name) {
                Lookup::Ready(i) => (i.refresh_token_idle, i.refresh_token_max),
                _ => (None, None),
            },
            now(),
        ))
    }

    /// An operator's "Refresh now": refreshes even a fresh token, and even during
    /// a cool-down (once: a failure starts a new one).
    pub async fn refresh_now(
        &self,
        integration: &Integration,
        connection: &ConnectionId,
    ) -> Result<ConnectionRecord, RefreshError> {
        let need = Need {
            force: true,
            bypass_cooldown: true,
            ..Need::default()
        };
        self.engine
            .ensure_fresh(integration, connection, need)
            .await
    }

    /// One connection, whatever its status (the admin view).
    pub async fn connection(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        Ok(self
            .store
            .get(integration, connection)
            .await?
            .map(|v| v.value))
    }

    /// Deletes a connection of an integration that is no longer configured
    /// (nothing to revoke with); `Ok(false)` when it did not exist.
    pub async fn delete_orphan(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
    ) -> Result<bool, StoreError> {
        let deleted = self.store.delete(integration, connection).await?;
        if deleted {
            self.engine
                .transitions()
                .on_deleted(integration, connection)
                .await;
        }
        Ok(deleted)
    }

    /// Deletes a connection, first revoking its grant at the vendor (RFC 7009)
    /// when the integration has a revocation URL and `revoke` is true. A vendor
    /// that cannot be reached keeps the connection, so the delete can be
    /// retried; a vendor that says the token is already invalid does not.
    pub async fn delete(
        &self,
        integration: &Integration,
        connection: &ConnectionId,
        revoke: bool,
    ) -> Result<(), RefreshError> {
        let record = self
            .store
            .get(&integration.name, connection)
            .await?
            .ok_or(RefreshError::NotFound)?
            .value;
        if let (true, Some(url)) = (revoke, &integration.revocation_url) {
            match oauth::revoke(
                &self.http,
                integration,
                url,
                oauth::Grant {
                    access_token: &record.tokens.access_token,
                    refresh_token: record.tokens.refresh_token.as_ref(),
                },
                self.upstream_timeout,
            )
            .await
            {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.oauth_error(),
                        Some(OAuthErrorCode::InvalidToken | OAuthErrorCode::InvalidGrant)
                    ) => {}
                Err(e) if e.is_misconfigured() => return Err(RefreshError::Misconfigured(e)),
                Err(e) => return Err(RefreshError::Upstream(e)),
            }
        }
        let deleted = self.store.delete(&integration.name, connection).await?;
        tracing::info!(
            integration = integration.name.as_str(),
            connection = connection.as_str(),
            revoked = revoke && integration.revocation_url.is_some(),
            "connection deleted"
        );
        // Of concurrent deletes, the one that removed the row tells.
        if deleted {
            self.engine.transitions().forget_grant_end(&record).await;
            self.engine
                .transitions()
                .on_deleted(&integration.name, connection)
                .await;
        }
        Ok(())
    }
}
