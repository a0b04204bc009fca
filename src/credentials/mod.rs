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
//!   index entry read too at a process's first use of it: see `store/table/credentials.rs`).
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
//! Here: the types and the admin's calls (create, list, delete);
//! authentication is in `auth`, handing out a token in `issue`, the failure
//! limits in `limiter`.
//!
//! Depends on the domain, the store and the refresh engine; handlers call it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rand::RngCore;
use time::Duration;

use crate::coalesce::Coalescer;
use crate::domain::clock::now;
use crate::domain::credential::{self, client_secret_from_random};
use crate::domain::{
    ClientId, ConnectionId, IntegrationName, PipelineCredential, Secret, SecretHash,
};
use crate::refresh::{Engine, RefreshError};
use crate::registry::Lookup;
use crate::store::credentials::ConnectionAndCredentialRead;
use crate::store::{Store, StoreError};

mod auth;
mod issue;
mod limiter;
use limiter::Limiter;

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
        check_request(&request)?;
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
            let (c, secret) = generated(
                store.keyring(),
                integration,
                connection,
                &request,
                created_at,
            );
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
}

/// Refuses a request outside the limits: a description too long or with
/// control characters, a lifetime or `min_validity_secs` out of range.
fn check_request(request: &NewCredential) -> Result<(), CredentialError> {
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
    Ok(())
}

/// A new credential with a random client id and secret, its secret's keyed
/// hash made with the keyring's current key; the secret beside it.
fn generated(
    keys: &crate::crypto::Keyring,
    integration: &IntegrationName,
    connection: &ConnectionId,
    request: &NewCredential,
    created_at: time::OffsetDateTime,
) -> (PipelineCredential, Secret) {
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
    let (key_id, hash) = keys.mac(&c.hash_input(&secret));
    c.secret_hash = SecretHash { key_id, hash };
    (c, secret)
}
