//! Consent as a service: starting an authorization (state, PKCE, browser
//! binding), completing it at the callback (RFC 6749 §4.1.2–4.1.3), and
//! using up the consent links an admin sends to an account owner (made in
//! `links`, which the events use too). Routes turn the typed
//! [`ConsentError`] into pages; nothing here knows about HTTP responses.
//!
//! Here: starting a consent and opening a link; the callback's checks and the
//! grant's storing are in `callback`, the vendor account and the revocation
//! of tokens that are not kept in `account`.
//!
//! State and links are stored only as their SHA-256 (base64url), so neither
//! can be read back from storage; the PKCE verifier is stored sealed.
//!
//! Depends on `domain`, `config`, `oauth`, `store`, `registry` and `refresh`
//! (which stores the grant).

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use time::Duration;
use url::Url;

use crate::config::Integration;
use crate::domain::account::IdTokenError;
use crate::domain::clock::now;
use crate::domain::{
    ConnectionId, ConnectionRecord, IntegrationName, PendingAuthorization, Secret,
};
use crate::oauth::{self, TokenError};
use crate::refresh::Engine;
use crate::registry::Lookup;
use crate::store::Store;

mod account;
mod callback;
mod links;
// For the fuzzing entry points (`crate::fuzzing`), the only caller outside `account`.
#[cfg(feature = "fuzzing")]
pub(crate) use account::callback_account;
pub use links::{link_id, CreatedLink, LinkIssuer};

/// How long a started consent may take.
pub const PENDING_LIFETIME: Duration = Duration::minutes(10);

/// The longest a consent link may live.
pub const MAX_LINK_LIFETIME: Duration = Duration::days(30);

/// Consents in progress through one consent link at most; opening it again
/// replaces the oldest (a mail scanner's visit, typically), so reopening a link
/// never grows the store.
pub const MAX_PENDING_PER_LINK: usize = 3;

/// SHA-256, base64url: how state, bindings and link tokens are stored.
pub fn hash(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(s.as_bytes()))
}

fn random_token() -> Secret {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    Secret::new(URL_SAFE_NO_PAD.encode(bytes))
}

/// The browser-binding cookie of one started consent (one per consent, so
/// parallel consents in one browser work).
pub fn cookie_name(state_hash: &str) -> String {
    format!("ob_auth_{}", &state_hash[..16])
}

/// Why a consent step did not go through. None of the variants carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    #[error("no integration named {0:?} is configured")]
    UnknownIntegration(IntegrationName),
    #[error("integration {name:?} is unavailable: {reason}")]
    IntegrationUnavailable {
        name: IntegrationName,
        reason: String,
    },
    /// The integration of a started consent was removed from the configuration.
    #[error("integration {0:?} is no longer configured")]
    IntegrationGone(IntegrationName),
    /// The vendor sent the person back with an error (RFC 6749 §4.1.2.1); sanitised.
    #[error("the provider did not grant access: {error}")]
    Refused {
        error: String,
        description: Option<String>,
    },
    #[error("the callback lacks its state or code")]
    Incomplete,
    #[error("no such consent in progress")]
    NotFound,
    #[error("the consent took too long")]
    Expired,
    #[error("the callback came to a different browser than the one that started the consent")]
    OtherBrowser,
    /// RFC 9207: the callback's `iss` is not the integration's issuer (or is
    /// missing where the server always sends it): a possible mix-up attack.
    #[error("the callback's issuer does not match the integration's")]
    IssuerMismatch,
    #[error("the consent link is unknown, used up or expired")]
    LinkUnusable,
    /// The connection's grant belongs to another vendor account (`unknown`:
    /// the grant has no account and is active, or the new one could not be
    /// told); nothing was stored and the new grant was revoked.
    #[error("the connection is bound to another vendor account")]
    AccountMismatch {
        integration: IntegrationName,
        connection: ConnectionId,
        unknown: bool,
    },
    /// The token response's id_token was not for this client or issuer.
    #[error("the id_token cannot be accepted: {0}")]
    AccountUnverifiable(IdTokenError),
    #[error("the code exchange failed: {0}")]
    Exchange(TokenError),
    /// The store failed; `grant_lost` when a code had already been exchanged.
    #[error("the store is unavailable")]
    Store { grant_lost: bool },
}

/// A consent ready to send the person to the vendor.
#[derive(Debug)]
pub struct Started {
    pub authorization_url: Url,
    /// The hash of the consent's `state` (its key in the store).
    pub state_hash: String,
    /// Name and value of the browser-binding cookie.
    pub cookie_name: String,
    pub cookie_value: Secret,
    pub cookie_lifetime: Duration,
}

/// A completed consent.
#[derive(Debug)]
pub struct Completed {
    pub record: ConnectionRecord,
    /// The binding cookie to remove.
    pub cookie_name: String,
    /// What was asked for (the integration's scopes, refresh-token scopes included).
    pub requested_scopes: Vec<String>,
    /// Scopes requested but not granted; `None` when the vendor did not say
    /// which scopes it granted. Scopes that only ask for a refresh token
    /// (`offline_access`) are not missing when one came back: vendors often
    /// leave them out of the answer.
    pub missing_scopes: Option<Vec<String>>,
}

/// Where an operator goes to bring a dead grant back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReauthLinks {
    /// `POST` here (with the key) for a keyless consent link to send the account owner.
    pub consent_link_url: String,
    /// The status page (its button makes the same link).
    pub status_url: String,
    /// The keyed start route (kept for existing callers; in a browser it needs `?code=`).
    pub authorize_url: String,
}

/// The callback's query, as the vendor sent it.
pub struct Callback<'a> {
    pub params: &'a HashMap<String, String>,
    /// Reads a cookie of the request by name.
    pub cookie: &'a dyn Fn(&str) -> Option<String>,
}

#[derive(Clone)]
pub struct ConsentService {
    engine: Arc<Engine>,
    store: Store,
    http: reqwest::Client,
    upstream_timeout: std::time::Duration,
    public_url: Url,
    redirect_uri: Url,
}

impl ConsentService {
    pub fn new(
        engine: Arc<Engine>,
        store: Store,
        http: reqwest::Client,
        upstream_timeout: std::time::Duration,
        public_url: Url,
    ) -> Self {
        let redirect_uri = join(&public_url, "api/auth/callback");
        Self {
            engine,
            store,
            http,
            upstream_timeout,
            public_url,
            redirect_uri,
        }
    }

    /// `<public URL>/api/auth/callback`, registered at every vendor.
    pub fn redirect_uri(&self) -> &Url {
        &self.redirect_uri
    }

    /// Where a person consents again for a connection (needs the function key).
    pub fn authorize_link(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
    ) -> String {
        let mut url = join(&self.public_url, &format!("api/auth/start/{integration}"));
        url.query_pairs_mut()
            .append_pair("connection", connection.as_str());
        url.into()
    }

    /// Where an operator goes when a connection's grant is dead.
    pub fn reauth_links(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
    ) -> ReauthLinks {
        ReauthLinks {
            consent_link_url: join(
                &self.public_url,
                &format!("api/connections/{integration}/{connection}/consent-link"),
            )
            .into(),
            status_url: join(&self.public_url, "api/status").into(),
            authorize_url: self.authorize_link(integration, connection),
        }
    }

    fn integration(&self, name: &IntegrationName) -> Result<Arc<Integration>, ConsentError> {
        ready(self.engine.integration(name), name)
    }

    /// Starts a consent: a fresh single-use state and PKCE pair, stored server
    /// side and bound to this browser with a cookie.
    /// `allow_account_change`: the consent may bind the connection to another
    /// vendor account than its current one.
    pub async fn begin(
        &self,
        integration: &IntegrationName,
        connection: ConnectionId,
        allow_account_change: bool,
    ) -> Result<Started, ConsentError> {
        let integration = self.integration(integration)?;
        self.begin_with(&integration, connection, None, allow_account_change)
            .await
    }

    async fn begin_with(
        &self,
        integration: &Integration,
        connection: ConnectionId,
        link_hash: Option<String>,
        allow_account_change: bool,
    ) -> Result<Started, ConsentError> {
        let auth = oauth::authorization_request(integration, &self.redirect_uri);
        let binding = random_token();
        let state_hash = hash(auth.state.expose());
        let pending = PendingAuthorization {
            integration: integration.name.clone(),
            connection: connection.clone(),
            pkce_verifier: auth.pkce_verifier,
            binding_hash: hash(binding.expose()),
            expires_at: now() + PENDING_LIFETIME,
            link_hash,
            allow_account_change,
        };
        if let Err(e) = self.store.insert_pending(&state_hash, &pending).await {
            tracing::error!(integration = %integration.name, connection = %connection, error = %e, "could not store a pending authorization");
            return Err(ConsentError::Store { grant_lost: false });
        }
        tracing::info!(integration = %integration.name, connection = %connection, "consent started");
        Ok(Started {
            authorization_url: auth.url,
            cookie_name: cookie_name(&state_hash),
            state_hash,
            cookie_value: binding,
            cookie_lifetime: PENDING_LIFETIME,
        })
    }

    /// Opens a consent link: starts a consent for its connection.
    pub async fn open_link(&self, token: &str) -> Result<Started, ConsentError> {
        if token.is_empty() || token.len() > 128 {
            return Err(ConsentError::LinkUnusable);
        }
        let link = match self.store.peek_link(&hash(token)).await {
            Ok(Some(l)) => l,
            Ok(None) => return Err(ConsentError::LinkUnusable),
            Err(e) => {
                tracing::error!(error = %e, "could not read a consent link");
                return Err(ConsentError::Store { grant_lost: false });
            }
        };
        if link.expires_at < now() {
            return Err(ConsentError::LinkUnusable);
        }
        let integration = match self.engine.integration(&link.integration) {
            Lookup::Ready(i) => i,
            Lookup::Unavailable { reason } => {
                return Err(ConsentError::IntegrationUnavailable {
                    name: link.integration,
                    reason,
                })
            }
            Lookup::Unknown => return Err(ConsentError::IntegrationGone(link.integration)),
        };
        self.make_room_for_pending(&link.link_hash).await?;
        let allow = link.allow_account_change;
        self.begin_with(&integration, link.connection, Some(link.link_hash), allow)
            .await
    }

    /// Keeps at most [`MAX_PENDING_PER_LINK`] - 1 consents in progress for a
    /// link before a new one starts: expired ones go, then the oldest.
    async fn make_room_for_pending(&self, link_hash: &str) -> Result<(), ConsentError> {
        let store_failed = |e: crate::store::StoreError| {
            tracing::error!(error = %e, "could not list the consents of a consent link");
            ConsentError::Store { grant_lost: false }
        };
        let mut pending = self
            .store
            .pending_of_link(link_hash)
            .await
            .map_err(store_failed)?;
        pending.sort_by_key(|(_, expires_at)| *expires_at);
        let at = now();
        let expired = pending.iter().filter(|(_, e)| *e < at).count();
        let excess = (pending.len() - expired + 1).saturating_sub(MAX_PENDING_PER_LINK);
        for (state_hash, _) in pending.iter().take(expired + excess) {
            self.store
                .discard_pending(state_hash)
                .await
                .map_err(store_failed)?;
        }
        Ok(())
    }

    /// Notes the host a consent was started on when it is not the public URL's
    /// (the browser keeps the binding cookie there), so the callback's page can
    /// name both if the cookie is missing. A small side row, best effort.
    pub async fn note_start_host(&self, state_hash: &str, host: &str) {
        let key = start_host_key(state_hash);
        let host: String = host.chars().filter(|c| !c.is_control()).take(255).collect();
        if let Err(e) = self.store.marker_put(&key, &host, None).await {
            tracing::warn!(error = %e, "could not note the host a consent started on");
        }
    }

    /// The host a consent was started on, if it was noted (and forgets it).
    pub async fn take_start_host(&self, state: &str) -> Option<String> {
        if state.is_empty() || state.len() > 512 {
            return None;
        }
        let key = start_host_key(&hash(state));
        let found = self.store.marker_get(&key).await.ok().flatten()?;
        let _ = self.store.marker_delete(&key).await;
        Some(found.value)
    }

    /// The public URL's host and port (`host:port`, the port always given).
    pub fn public_authority(&self) -> String {
        authority_of(&self.public_url)
    }

    /// Whether the public URL is https (cookies are then `Secure`).
    pub fn is_https(&self) -> bool {
        self.public_url.scheme() == "https"
    }

    /// The public URL without a trailing slash, for pages.
    pub fn public_base(&self) -> &str {
        self.public_url.as_str().trim_end_matches('/')
    }
}

fn start_host_key(state_hash: &str) -> String {
    format!("consent-start-host:{state_hash}")
}

/// `host:port` of a URL, the port always given (lower-case host).
pub fn authority_of(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    match url.port_or_known_default() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

/// An integration ready for consent, or why not.
fn ready(lookup: Lookup, name: &IntegrationName) -> Result<Arc<Integration>, ConsentError> {
    match lookup {
        Lookup::Ready(i) => Ok(i),
        Lookup::Unavailable { reason } => Err(ConsentError::IntegrationUnavailable {
            name: name.clone(),
            reason,
        }),
        Lookup::Unknown => Err(ConsentError::UnknownIntegration(name.clone())),
    }
}

/// `base` (the public URL, which may have a path) joined with `path`.
fn join(base: &Url, path: &str) -> Url {
    let mut u = base.clone();
    let joined = format!("{}/{path}", base.path().trim_end_matches('/'));
    u.set_path(&joined);
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_keep_the_public_urls_path() {
        let base = Url::parse("https://example.com/broker/").unwrap();
        assert_eq!(
            join(&base, "api/auth/callback").as_str(),
            "https://example.com/broker/api/auth/callback"
        );
        let base = Url::parse("http://127.0.0.1:7071").unwrap();
        assert_eq!(
            join(&base, "api/auth/callback").as_str(),
            "http://127.0.0.1:7071/api/auth/callback"
        );
    }
}
