//! Consent links: keyless links an operator sends to an account owner, made
//! by the connections API, the CLI, the status page and the events (a
//! `connection.reauthorization_required` event carries one). A link is a
//! random token whose SHA-256 alone is stored; it is used up by the consent
//! that completes through it (`super::ConsentService`).
//!
//! Needs only the store, the registry and the public URL, so it exists before
//! the refresh engine and the events that the engine is built with.

use std::sync::Arc;

use time::Duration;
use url::Url;

use super::{hash, join, random_token, ready, ConsentError};
use crate::domain::clock::now;
use crate::domain::{ConnectionId, IntegrationName, Secret};
use crate::registry::Registry;
use crate::store::{ConsentLink, Store};

/// A link just made: its URL (a secret until it is used up) and its row.
#[derive(Debug)]
pub struct CreatedLink {
    pub url: String,
    pub link: ConsentLink,
}

/// A consent link's public id: the first 22 characters (132 bits) of its
/// hash. It names the link for listing and ending it; it cannot open it.
pub fn link_id(link_hash: &str) -> String {
    format!("cl_{}", &link_hash[..22.min(link_hash.len())])
}

/// Makes, lists and ends the consent links of connections.
#[derive(Clone)]
pub struct LinkIssuer {
    registry: Arc<Registry>,
    store: Store,
    public_url: Url,
    lifetime: Duration,
}

impl LinkIssuer {
    /// Links under `public_url`, valid for `lifetime` unless asked otherwise.
    pub fn new(registry: Arc<Registry>, store: Store, public_url: Url, lifetime: Duration) -> Self {
        Self {
            registry,
            store,
            public_url,
            lifetime,
        }
    }

    /// A consent link that works without a function key. It is a random token
    /// whose hash is stored, so it can be neither forged nor read back from the
    /// store; it is used up when a consent through it completes (so a mail
    /// scanner that opens it first does not burn it). `None` lifetime: the default.
    /// `allow_account_change`: a consent through it may bind the connection
    /// to another vendor account.
    pub async fn create(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
        lifetime: Option<Duration>,
        allow_account_change: bool,
    ) -> Result<CreatedLink, ConsentError> {
        ready(self.registry.get(integration), integration)?;
        let token = random_token();
        let at = now();
        let link = ConsentLink {
            link_hash: hash(token.expose()),
            integration: integration.clone(),
            connection: connection.clone(),
            expires_at: at + lifetime.unwrap_or(self.lifetime),
            created_at: Some(crate::domain::clock::to_millis(at)),
            allow_account_change,
        };
        self.store.insert_link(&link).await.map_err(|e| {
            tracing::error!(error = %e, "could not store a consent link");
            ConsentError::Store { grant_lost: false }
        })?;
        tracing::info!(
            integration = integration.as_str(),
            connection = connection.as_str(),
            allow_account_change,
            "consent link created"
        );
        let mut url = join(&self.public_url, "api/auth/link");
        url.query_pairs_mut().append_pair("t", token.expose());
        Ok(CreatedLink {
            url: url.into(),
            link,
        })
    }

    /// The outstanding consent links of a connection, with the consents in
    /// progress through each (never a token: links are stored as hashes).
    pub async fn list(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
    ) -> Result<Vec<(ConsentLink, usize)>, ConsentError> {
        ready(self.registry.get(integration), integration)?;
        self.store
            .links_of(integration, connection)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "could not list consent links");
                ConsentError::Store { grant_lost: false }
            })
    }

    /// Ends the consent link `id` (see [`link_id`]) of a connection, and the
    /// consents in progress through it; `Ok(false)` when there is no such link.
    pub async fn end(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
        id: &str,
    ) -> Result<bool, ConsentError> {
        let links = self.list(integration, connection).await?;
        let Some((link, _)) = links.iter().find(|(l, _)| {
            crate::domain::secret::constant_time_eq(link_id(&l.link_hash).as_bytes(), id.as_bytes())
        }) else {
            return Ok(false);
        };
        let ended = self.store.end_link(&link.link_hash).await.map_err(|e| {
            tracing::error!(error = %e, "could not end a consent link");
            ConsentError::Store { grant_lost: false }
        })?;
        if ended {
            tracing::info!(integration = integration.as_str(), connection = connection.as_str(), link = %id, "consent link ended");
        }
        Ok(ended)
    }
}

/// Keyless consent links for `connection.reauthorization_required` events
/// (default lifetime, `BROKER_CONSENT_LINK_TTL_SECS`).
#[async_trait::async_trait]
impl crate::events::ConsentLinks for LinkIssuer {
    async fn consent_link(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
    ) -> Option<Secret> {
        match self.create(integration, connection, None, false).await {
            Ok(created) => Some(Secret::new(created.url)),
            Err(e) => {
                tracing::warn!(integration = integration.as_str(), connection = connection.as_str(), error = %e, "no consent link for the event");
                None
            }
        }
    }
}
