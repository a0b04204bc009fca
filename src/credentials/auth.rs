//! Authenticating a pipeline credential: the secret checked first (in
//! constant time, with the same work for unknown ids: [`burn`]), then the
//! failure limits; a use is recorded off the request path at most every
//! few minutes, and a hash under an older key rewritten under the current one.

use std::net::IpAddr;
use std::time::Instant;

use super::{AuthError, Credentials, LIMITER_CAPACITY, TOUCH_EVERY};
use crate::domain::clock::now;
use crate::domain::{
    ClientId, ConnectionId, IntegrationName, PipelineCredential, Secret, SecretHash,
};
use crate::refresh::Prefetched;
use crate::store::StoreError;

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

impl Credentials {
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
