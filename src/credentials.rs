//! Pipeline credentials: a client id and secret scoped to one connection, so
//! a pipeline can obtain that connection's access token (through the OAuth 2.0
//! token endpoint, or HTTP Basic on the token route) and nothing else.
//!
//! - The secret is 32 random bytes, shown once; the store keeps only its
//!   HMAC-SHA256 under a key derived from the encryption keyring (with the key
//!   id, so hashes survive a rotation; a hash made with an older key is
//!   rewritten under the current one on the next use).
//! - Every authentication reads the credential from the store (shared by
//!   concurrent callers of one client id, but only ever a read that started
//!   after the caller arrived), so a deleted credential stops working at once
//!   on every instance. When the request names its connection (the token
//!   routes, the proxy, the token endpoint once it has seen a client id), that
//!   connection is read in the same store call: one range query on Table
//!   Storage, where the credential is kept beside its connection (and its
//!   index entry read too at a process's first use of it: see `store/table.rs`).
//! - Unknown, deleted, expired and wrong credentials fail alike, with one
//!   answer and the same secret work (a keyed hash is computed even when there
//!   is nothing to compare it with). On Table Storage a client id in use can be
//!   found one store read sooner than an unknown one; that tells nothing
//!   without its secret (client ids are not secret: they sit in pipeline
//!   configuration), and the secret is compared in constant time.
//! - Failed authentications are counted per client id and per source address
//!   (per instance, in a fixed window); past the limit, failures answer 429.
//!   The secret is always checked first: a correct one is never refused for
//!   failures someone else caused.
//!
//! Depends on the domain, the store and the refresh engine; handlers call it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rand::RngCore;
use time::Duration;

use crate::coalesce::Coalescer;
use crate::domain::clock::now;
use crate::domain::credential::{self, client_secret_from_random};
use crate::domain::{
    ClientId, ConnectionId, ConnectionRecord, IntegrationName, PipelineCredential, Secret,
    SecretHash,
};
use crate::refresh::{Engine, Need, Prefetched, RefreshError};
use crate::registry::Lookup;
use crate::store::credentials::ConnectionAndCredentialRead;
use crate::store::{Store, StoreError};

/// Longest description kept with a credential.
pub const MAX_DESCRIPTION: usize = 200;
/// Longest lifetime a credential may be given.
pub const MAX_EXPIRES_IN_DAYS: u32 = 3650;
/// Largest `min_validity_secs` a credential may ask for (one day).
pub const MAX_MIN_VALIDITY_SECS: u32 = 86_400;
/// `last_used_at` is written at most this often per credential.
const TOUCH_EVERY: Duration = Duration::minutes(5);
/// Failed authentications allowed per client id, and per source, in one window.
const FAILURES_PER_CLIENT: u32 = 10;
const FAILURES_PER_SOURCE: u32 = 30;
const WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Entries each limiter table may hold (bounded memory under a flood of ids).
const LIMITER_CAPACITY: usize = 10_000;

/// What an admin asks for when creating a credential.
#[derive(Debug, Clone, Default)]
pub struct NewCredential {
    pub description: String,
    pub expires_in_days: Option<u32>,
    pub min_validity_secs: Option<u32>,
}

/// A credential just created, with its secret (shown to the admin once).
#[derive(Debug)]
pub struct Issued {
    pub credential: PipelineCredential,
    pub secret: Secret,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("no integration named {0:?} is configured")]
    IntegrationNotFound(String),
    #[error("no credential with this client id for this connection")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why an authentication failed. `InvalidClient` deliberately carries no reason.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("client authentication failed")]
    InvalidClient,
    #[error("too many failed authentications; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error(transparent)]
    Store(StoreError),
}

/// Why the token of an authenticated credential could not be handed out.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The client could not be authenticated (or is rate limited).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The credential's integration was removed from the integrations file.
    #[error("integration {0} is no longer configured")]
    IntegrationGone(IntegrationName),
    /// The connection was never consented (or was deleted and consented to nothing since).
    #[error("connection {integration}/{connection} has no grant")]
    NoGrant {
        integration: IntegrationName,
        connection: ConnectionId,
    },
    /// The vendor said `invalid_grant`: only a new consent restores it.
    #[error("the grant of connection {integration}/{connection} is no longer valid")]
    DeadGrant {
        integration: IntegrationName,
        connection: ConnectionId,
    },
    /// The integration's endpoints are still being discovered.
    #[error("the integration of this credential is not available yet")]
    IntegrationUnavailable,
    /// A `scope` outside the integration's `pipeline_scopes`.
    #[error("scope {0} is not allowed for this integration")]
    InvalidScope(String),
    /// A `resource` outside the integration's `pipeline_resources`.
    #[error("resource is not allowed for this integration")]
    InvalidTarget,
    #[error(transparent)]
    Refresh(#[from] RefreshError),
}

/// The reason an authentication failed, for the log only (never the response).
#[derive(Debug, Clone, Copy)]
enum Failure {
    Malformed,
    Unknown,
    WrongSecret,
    Expired,
    KeyRemoved,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed_client_id",
            Self::Unknown => "unknown_client_id",
            Self::WrongSecret => "wrong_secret",
            Self::Expired => "expired",
            Self::KeyRemoved => "hash_key_removed",
        }
    }
}

pub struct Credentials {
    engine: Arc<Engine>,
    store: Store,
    by_client: Limiter,
    by_source: Limiter,
    /// When this process last recorded a use of each credential, so a burst
    /// of calls writes `last_used_at` once.
    touched: Mutex<HashMap<ClientId, Instant>>,
    /// Concurrent authentications of one client id share a point read that
    /// started after each of them arrived (see `coalesce`): a deletion that
    /// completed before a request arrived is always seen by it.
    reads: Coalescer<ClientId, Result<Option<PipelineCredential>, StoreError>>,
    /// The same for authentications that name their connection: its read and
    /// the credential's, made together ([`Store::get_with_credential`]).
    paired: Coalescer<(ClientId, IntegrationName, ConnectionId), ConnectionAndCredentialRead>,
    /// Which connection each client id was last seen to belong to (a fact that
    /// never changes for a credential; not its validity, which is read every
    /// time): the token endpoint starts that connection's read beside the
    /// credential's. Bounded; cleared when full.
    connection_of: Mutex<HashMap<String, (IntegrationName, ConnectionId)>>,
}

/// Entries kept in `Credentials::connection_of` at most.
const CONNECTION_HINTS: usize = 10_000;

impl Credentials {
    pub fn new(engine: Arc<Engine>, store: Store) -> Self {
        Self {
            engine,
            store,
            by_client: Limiter::new(FAILURES_PER_CLIENT),
            by_source: Limiter::new(FAILURES_PER_SOURCE),
            touched: Mutex::new(HashMap::new()),
            reads: Coalescer::default(),
            paired: Coalescer::default(),
            connection_of: Mutex::new(HashMap::new()),
        }
    }

    /// Creates a credential for `integration`/`connection`. The connection
    /// need not exist yet (a deployment may hand out credentials before
    /// consent); the integration must be configured.
    pub async fn create(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
        request: NewCredential,
    ) -> Result<Issued, CredentialError> {
        if request.description.chars().count() > MAX_DESCRIPTION
            || request.description.chars().any(char::is_control)
        {
            return Err(CredentialError::InvalidRequest(format!(
                "description must be at most {MAX_DESCRIPTION} characters, without control characters"
            )));
        }
        if let Some(d) = request.expires_in_days {
            if d == 0 || d > MAX_EXPIRES_IN_DAYS {
                return Err(CredentialError::InvalidRequest(format!(
                    "expires_in_days must be between 1 and {MAX_EXPIRES_IN_DAYS}"
                )));
            }
        }
        if request
            .min_validity_secs
            .is_some_and(|s| s > MAX_MIN_VALIDITY_SECS)
        {
            return Err(CredentialError::InvalidRequest(format!(
                "min_validity_secs must be between 0 and {MAX_MIN_VALIDITY_SECS}"
            )));
        }
        // Configured is enough: one still being discovered gets its credentials too.
        if let Lookup::Unknown = self.engine.integration(integration) {
            return Err(CredentialError::IntegrationNotFound(
                integration.as_str().to_owned(),
            ));
        }
        let created_at = now();
        let store = &self.store;
        // 144 random bits make a clash practically impossible; a clash is still refused by the store.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut id = [0u8; credential::ID_BYTES];
            let mut secret = [0u8; credential::SECRET_BYTES];
            rand::rngs::OsRng.fill_bytes(&mut id);
            rand::rngs::OsRng.fill_bytes(&mut secret);
            let client_id = ClientId::from_random(&id);
            let secret = client_secret_from_random(&secret);
            let mut c = PipelineCredential {
                client_id,
                integration: integration.clone(),
                connection: connection.clone(),
                description: request.description.clone(),
                created_at,
                expires_at: request
                    .expires_in_days
                    .map(|d| created_at + Duration::days(i64::from(d))),
                last_used_at: None,
                min_validity: request
                    .min_validity_secs
                    .map(|s| Duration::seconds(i64::from(s))),
                secret_hash: SecretHash {
                    key_id: String::new(),
                    hash: String::new(),
                },
            };
            let (key_id, hash) = store.keyring().mac(&c.hash_input(&secret));
            c.secret_hash = SecretHash { key_id, hash };
            match store.insert_credential(&c).await {
                Ok(()) => {
                    tracing::info!(
                        integration = integration.as_str(),
                        connection = connection.as_str(),
                        client_id = c.client_id.as_str(),
                        "pipeline credential created"
                    );
                    return Ok(Issued {
                        credential: c,
                        secret,
                    });
                }
                Err(StoreError::Conflict) if attempts < 3 => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The credentials of a connection (never their secrets or hashes' values
    /// outside the store).
    pub async fn list(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
    ) -> Result<Vec<PipelineCredential>, CredentialError> {
        Ok(self.store.list_credentials(integration, connection).await?)
    }

    /// Deletes a credential of this connection; `NotFound` for an unknown id
    /// or one that belongs to another connection.
    pub async fn delete(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
        client_id: &str,
    ) -> Result<(), CredentialError> {
        let id = ClientId::parse(client_id).ok_or(CredentialError::NotFound)?;
        let store = &self.store;
        // Also what a deletion cut short left, so that it can be retried.
        if !store
            .credential_belongs_to(&id, integration, connection)
            .await?
        {
            return Err(CredentialError::NotFound);
        }
        if !store.delete_credential(&id).await? {
            return Err(CredentialError::NotFound);
        }
        tracing::info!(
            integration = integration.as_str(),
            connection = connection.as_str(),
            client_id = id.as_str(),
            "pipeline credential deleted"
        );
        Ok(())
    }

    /// Checks a client id and secret presented by `source`.
    pub async fn authenticate(
        &self,
        client_id: &str,
        secret: &Secret,
        source: Option<IpAddr>,
    ) -> Result<PipelineCredential, AuthError> {
        self.authenticate_at(client_id, secret, source, None)
            .await
            .map(|(c, _)| c)
    }

    /// [`Credentials::authenticate`] for a request about `home` (an integration
    /// and connection): that connection is read together with the credential
    /// and its read handed back, for use only if the credential covers it.
    pub async fn authenticate_at(
        &self,
        client_id: &str,
        secret: &Secret,
        source: Option<IpAddr>,
        home: Option<(&IntegrationName, &ConnectionId)>,
    ) -> Result<(PipelineCredential, Option<Prefetched>), AuthError> {
        let client_key: String = client_id.chars().take(64).collect();
        let source_key = source.map(|s| s.to_string()).unwrap_or_default();
        // Only an id of the shape the broker issues is logged: a secret pasted
        // into the client id field by mistake must not reach the log.
        let shown = ClientId::parse(client_id)
            .map(|c| c.to_string())
            .unwrap_or_else(|| "(malformed)".to_owned());
        // The secret is checked first, whatever the limits say: failures of
        // others (anyone can send wrong secrets for a client id, which is not
        // secret) never lock out the right one. Only failures are limited.
        match self.check(client_id, secret, home).await {
            Ok(c) => Ok(c),
            Err(Ok(failure)) => {
                let retry = self
                    .by_client
                    .blocked(&client_key)
                    .max(self.by_source.blocked(&source_key));
                self.by_client.fail(&client_key);
                self.by_source.fail(&source_key);
                if let Some(retry_after_secs) = retry {
                    tracing::warn!(
                        client_id = %shown,
                        source = %source_key,
                        outcome = "rate_limited",
                        "client authentication failed, past the failure limit"
                    );
                    return Err(AuthError::RateLimited { retry_after_secs });
                }
                tracing::warn!(
                    client_id = %shown,
                    source = %source_key,
                    outcome = failure.as_str(),
                    "client authentication failed"
                );
                Err(AuthError::InvalidClient)
            }
            Err(Err(e)) => {
                tracing::error!(error = %e, "store failure while authenticating a client");
                Err(AuthError::Store(e))
            }
        }
    }

    /// `Err(Ok(_))`: the credentials are not good; `Err(Err(_))`: the store failed.
    async fn check(
        &self,
        client_id: &str,
        secret: &Secret,
        home: Option<(&IntegrationName, &ConnectionId)>,
    ) -> Result<(PipelineCredential, Option<Prefetched>), Result<Failure, StoreError>> {
        let store = &self.store;
        let keys = store.keyring();
        let Some(id) = ClientId::parse(client_id) else {
            burn(keys, client_id, secret);
            return Err(Ok(Failure::Malformed));
        };
        let (found, prefetched) = match home {
            None => {
                let (store, key) = (store.clone(), id.clone());
                let read = move || async move { store.get_credential(&key).await };
                (self.reads.read(&id, read).await, None)
            }
            Some((i, c)) => {
                let key = (id.clone(), i.clone(), c.clone());
                let (store, (id, i, c)) = (store.clone(), key.clone());
                let read = move || async move { store.get_with_credential(&i, &c, &id).await };
                let (row, found) = self.paired.read(&key, read).await;
                let (_, i, c) = key;
                (found, Some(Prefetched::from_read(i, c, row)))
            }
        };
        let Some(c) = found.map_err(Err)? else {
            burn(keys, client_id, secret);
            return Err(Ok(Failure::Unknown));
        };
        let input = c.hash_input(secret);
        match keys.verify_mac(&c.secret_hash.key_id, &input, &c.secret_hash.hash) {
            Ok(true) => {}
            Ok(false) => return Err(Ok(Failure::WrongSecret)),
            Err(_) => {
                burn(keys, client_id, secret);
                return Err(Ok(Failure::KeyRemoved));
            }
        }
        let at = now();
        if c.is_expired(at) {
            return Err(Ok(Failure::Expired));
        }
        // Checked: the stored instant comes from the table (hostile); a far-future one never panics.
        let stale = c
            .last_used_at
            .is_none_or(|t| t.checked_add(TOUCH_EVERY).is_some_and(|next| next < at));
        let rehash = (c.secret_hash.key_id != keys.current_key_id()).then(|| {
            let (key_id, hash) = keys.mac(&input);
            SecretHash { key_id, hash }
        });
        if (stale || rehash.is_some()) && self.first_touch(&id) {
            // Off the request path: bookkeeping never delays or fails a token.
            let store = store.clone();
            let id = id.clone();
            tokio::spawn(async move {
                if let Err(e) = store.touch_credential(&id, at, rehash.as_ref()).await {
                    tracing::debug!(client_id = id.as_str(), error = %e, "could not record a credential's use");
                }
            });
        }
        Ok((c, prefetched))
    }

    /// The token endpoint's one call: authenticates the client presented by
    /// `source`, then hands out its connection's access token (`token_for`).
    pub async fn issue(
        &self,
        client_id: &str,
        secret: &Secret,
        source: Option<IpAddr>,
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> Result<ConnectionRecord, IssueError> {
        let hint = self
            .connection_of
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(client_id)
            .cloned();
        // With a hint both are read together; the connection's read is used only if the
        // credential verifies and still names that connection.
        let home = hint.as_ref().map(|(i, c)| (i, c));
        let (credential, prefetched) = self
            .authenticate_at(client_id, secret, source, home)
            .await?;
        if prefetched.is_none() {
            let mut hints = self.connection_of.lock().unwrap_or_else(|p| p.into_inner());
            if hints.len() >= CONNECTION_HINTS {
                hints.clear();
            }
            hints.insert(
                client_id.to_owned(),
                (
                    credential.integration.clone(),
                    credential.connection.clone(),
                ),
            );
        }
        self.token_with(&credential, scope, resource, prefetched)
            .await
    }

    /// The access token of the credential's connection, refreshed first when
    /// it is due or would not stay valid for the credential's `min_validity`
    /// (capped at half the lifetime the vendor gives its tokens, so a wish
    /// longer than a token can live does not refresh on every call).
    ///
    /// `scope` and `resource` (as the client sent them) are ignored unless the
    /// integration lists what pipelines may ask for (`pipeline_scopes`,
    /// `pipeline_resources`); then anything else is refused before any refresh.
    pub async fn token_for(
        &self,
        c: &PipelineCredential,
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> Result<ConnectionRecord, IssueError> {
        self.token_with(c, scope, resource, None).await
    }

    async fn token_with(
        &self,
        c: &PipelineCredential,
        scope: Option<&str>,
        resource: Option<&str>,
        prefetched: Option<Prefetched>,
    ) -> Result<ConnectionRecord, IssueError> {
        let integration = match self.engine.integration(&c.integration) {
            Lookup::Ready(i) => i,
            Lookup::Unavailable { .. } => return Err(IssueError::IntegrationUnavailable),
            Lookup::Unknown => return Err(IssueError::IntegrationGone(c.integration.clone())),
        };
        if let (Some(allowed), Some(scope)) = (&integration.pipeline_scopes, scope) {
            if let Some(bad) = scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .find(|s| !allowed.iter().any(|a| a == s))
            {
                return Err(IssueError::InvalidScope(bad.to_owned()));
            }
        }
        if let (Some(allowed), Some(resource)) = (&integration.pipeline_resources, resource) {
            if !allowed.iter().any(|a| a == resource) {
                return Err(IssueError::InvalidTarget);
            }
        }
        let need = Need {
            min_validity: c.min_validity,
            cap_by_lifetime: true,
            ..Need::default()
        };
        let fresh = match prefetched {
            Some(p) => {
                self.engine
                    .ensure_fresh_prefetched(&integration, &c.connection, p, need)
                    .await
            }
            None => {
                self.engine
                    .ensure_fresh(&integration, &c.connection, need)
                    .await
            }
        };
        match fresh {
            Ok(record) => Ok(record),
            Err(RefreshError::NotFound) => Err(IssueError::NoGrant {
                integration: c.integration.clone(),
                connection: c.connection.clone(),
            }),
            Err(RefreshError::ReauthorizationRequired) => Err(IssueError::DeadGrant {
                integration: c.integration.clone(),
                connection: c.connection.clone(),
            }),
            Err(e) => Err(IssueError::Refresh(e)),
        }
    }
}

impl Credentials {
    /// True when this process has not recorded a use of `id` recently.
    fn first_touch(&self, id: &ClientId) -> bool {
        let mut map = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        let every = std::time::Duration::try_from(TOUCH_EVERY).unwrap_or_default();
        if map.get(id).is_some_and(|t| t.elapsed() < every) {
            return false;
        }
        if map.len() >= LIMITER_CAPACITY {
            map.retain(|_, t| t.elapsed() < every);
        }
        map.insert(id.clone(), Instant::now());
        true
    }
}

/// The same keyed hash a real check computes, for a request with nothing to
/// compare against: unknown and known client ids cost the same.
/// The work of checking a secret when there is nothing to check it against
/// (an unknown, malformed or unverifiable client id): the same hash input
/// and the same constant-time verification as a known credential, so the
/// answer takes as long (see the README's Security section for the figures).
fn burn(keys: &crate::crypto::Keyring, client_id: &str, secret: &Secret) {
    /// Base64 of 32 zero bytes: a hash no input produces.
    const NO_HASH: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let input = format!(
        "oauth-broker/v2/credential\n{}\n{}\n{}\n-\n-\n{}",
        client_id.get(..client_id.len().min(64)).unwrap_or_default(),
        "stand-in-integration",
        "stand-in-connection",
        secret.expose()
    );
    let r = keys.verify_mac(keys.current_key_id(), input.as_bytes(), NO_HASH);
    std::hint::black_box(r.ok());
}

/// Failures per key in fixed windows.
struct Limiter {
    max: u32,
    entries: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Limiter {
    fn new(max: u32) -> Self {
        Self {
            max,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds until `key` may try again, when it is over the limit.
    fn blocked(&self, key: &str) -> Option<u64> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (start, n) = map.get(key)?;
        let elapsed = start.elapsed();
        (*n >= self.max && elapsed < WINDOW).then(|| (WINDOW - elapsed).as_secs().max(1))
    }

    fn fail(&self, key: &str) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= LIMITER_CAPACITY && !map.contains_key(key) {
            map.retain(|_, (start, _)| start.elapsed() < WINDOW);
            if map.len() >= LIMITER_CAPACITY {
                // Flooded with distinct keys: the per-source table still counts.
                return;
            }
        }
        let entry = map.entry(key.to_owned()).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_blocks_after_max_failures_and_only_that_key() {
        let l = Limiter::new(3);
        for _ in 0..2 {
            l.fail("a");
        }
        assert_eq!(l.blocked("a"), None);
        l.fail("a");
        let retry = l.blocked("a").expect("blocked after 3 failures");
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(l.blocked("b"), None);
    }

    #[test]
    fn the_limiter_stays_bounded() {
        let l = Limiter::new(1);
        for i in 0..(LIMITER_CAPACITY + 50) {
            l.fail(&format!("k{i}"));
        }
        assert!(l.entries.lock().unwrap().len() <= LIMITER_CAPACITY);
    }
}
