//! Managed identity tokens for Table Storage, from the App Service / Azure
//! Functions identity endpoint (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`):
//!
//! ```text
//! GET $IDENTITY_ENDPOINT?resource=https://storage.azure.com/&api-version=2019-08-01[&client_id=<uami>]
//! X-IDENTITY-HEADER: $IDENTITY_HEADER
//! → {"access_token": "…", "expires_on": "1732881600", "resource": "…", "token_type": "Bearer", …}
//! ```
//!
//! or, where the platform offers only the older protocol (`MSI_ENDPOINT` +
//! `MSI_SECRET`, when `IDENTITY_*` are absent, or when the 2019-08-01 call
//! answers 400):
//!
//! ```text
//! GET $MSI_ENDPOINT?resource=https://storage.azure.com/&api-version=2017-09-01[&clientid=<uami>]
//! secret: $MSI_SECRET
//! → {"access_token": "…", "expires_on": "11/30/2026 05:35:32 PM +00:00", …}
//! ```
//!
//! After one 400 from the 2019-08-01 endpoint that the older one answered, the
//! credential keeps using the older one.
//!
//! The token is cached per resource and renewed [`DEFAULT_RENEW_BEFORE`] ahead
//! of its expiry. One fetch runs at a time (callers wait for it rather than
//! stampede the endpoint); when a renewal fails while the cached token is still
//! valid, the cached token keeps being used and the endpoint is not asked again
//! for [`RETRY_AFTER_FAILURE`]. The token never reaches a log line or an error.
//! azure_storage calls [`TokenCredential::get_token`] for every request and
//! sends `Authorization: Bearer <token>`.
//!
//! Here: the credential, its cache and the requests; the endpoints and their
//! settings are in `endpoint`, reading a token answer in `answer`.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration as StdDuration, Instant};

use azure_core::auth::{AccessToken, TokenCredential};
use azure_core::error::{Error, ErrorKind};
use serde_json::Value;
use time::{Duration, OffsetDateTime};
use tokio::sync::Mutex;
use url::Url;

use crate::domain::Secret;

mod answer;
mod endpoint;
pub use endpoint::{IdentityEndpoint, IdentityEndpoints, Protocol};

/// The resource (audience) of Azure Storage tokens.
pub const STORAGE_RESOURCE: &str = "https://storage.azure.com/";
/// Renew a cached token when it expires sooner than this.
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::minutes(5);
/// After a failed renewal, keep using the still-valid cached token this long before asking again.
const RETRY_AFTER_FAILURE: StdDuration = StdDuration::from_secs(10);
/// A cached token this close to expiry is never used, even when renewal fails.
const MIN_VALIDITY: Duration = Duration::seconds(30);
const REQUEST_TIMEOUT: StdDuration = StdDuration::from_secs(10);

#[derive(Default)]
struct Cache {
    tokens: HashMap<String, AccessToken>,
    /// No new fetch before this instant (set after a failure while a valid token is cached).
    quiet_until: Option<Instant>,
    /// The 2019-08-01 endpoint answered 400 and the 2017-09-01 one answered: use that one.
    legacy_only: bool,
}

/// A [`TokenCredential`] backed by the App Service managed identity endpoint.
pub struct ManagedIdentityCredential {
    http: reqwest::Client,
    endpoints: IdentityEndpoints,
    client_id: Option<String>,
    renew_before: Duration,
    cache: Mutex<Cache>,
}

impl fmt::Debug for ManagedIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedIdentityCredential")
            .field("endpoints", &self.endpoints)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

fn credential_error(message: String) -> Error {
    Error::message(ErrorKind::Credential, message)
}

/// A failed fetch: the HTTP status when the endpoint answered, and the error.
struct FetchError {
    status: Option<u16>,
    error: Error,
}

impl From<Error> for FetchError {
    fn from(error: Error) -> Self {
        Self {
            status: None,
            error,
        }
    }
}

impl ManagedIdentityCredential {
    /// `endpoint` and `header` are the platform's `IDENTITY_ENDPOINT` and
    /// `IDENTITY_HEADER`; `client_id` selects a user-assigned identity.
    pub fn new(
        http: reqwest::Client,
        endpoint: &str,
        header: Secret,
        client_id: Option<String>,
    ) -> Result<Self, String> {
        let endpoints = IdentityEndpoints {
            current: Some(IdentityEndpoint::new(
                Protocol::Identity2019,
                endpoint,
                header,
            )?),
            legacy: None,
        };
        Self::with_endpoints(http, endpoints, client_id)
    }

    /// A credential on the platform's endpoints (see [`IdentityEndpoints::from_settings`]):
    /// the current protocol first, the older one when the current is absent or answers 400.
    pub fn with_endpoints(
        http: reqwest::Client,
        endpoints: IdentityEndpoints,
        client_id: Option<String>,
    ) -> Result<Self, String> {
        if endpoints.current.is_none() && endpoints.legacy.is_none() {
            return Err("no managed identity endpoint (IDENTITY_ENDPOINT or MSI_ENDPOINT)".into());
        }
        Ok(Self {
            http,
            endpoints,
            client_id: client_id.filter(|c| !c.trim().is_empty()),
            renew_before: DEFAULT_RENEW_BEFORE,
            cache: Mutex::new(Cache::default()),
        })
    }

    /// Renew cached tokens when they expire sooner than `margin` (default five minutes).
    pub fn with_renew_before(mut self, margin: Duration) -> Self {
        self.renew_before = margin;
        self
    }

    /// A token for `resource` (e.g. [`STORAGE_RESOURCE`]), from the cache when it is fresh enough.
    pub async fn token_for(&self, resource: &str) -> azure_core::Result<AccessToken> {
        let mut cache = self.cache.lock().await;
        let now = OffsetDateTime::now_utc();
        let cached = cache.tokens.get(resource).cloned();
        if let Some(t) = &cached {
            let quiet = cache.quiet_until.is_some_and(|q| Instant::now() < q);
            if t.expires_on - now > self.renew_before
                || (quiet && t.expires_on - now > MIN_VALIDITY)
            {
                return Ok(t.clone());
            }
        }
        match self.fetch(resource, &mut cache).await {
            Ok((t, protocol)) => {
                tracing::info!(
                    resource,
                    expires_on = %t.expires_on,
                    user_assigned = self.client_id.is_some(),
                    api_version = protocol.api_version(),
                    "managed identity token acquired"
                );
                cache.tokens.insert(resource.to_owned(), t.clone());
                cache.quiet_until = None;
                Ok(t)
            }
            Err(e) => match cached {
                Some(t) if t.expires_on - now > MIN_VALIDITY => {
                    tracing::warn!(
                        resource,
                        error = %e,
                        expires_on = %t.expires_on,
                        "managed identity token renewal failed; using the cached token until it expires"
                    );
                    cache.quiet_until = Some(Instant::now() + RETRY_AFTER_FAILURE);
                    Ok(t)
                }
                _ => {
                    tracing::error!(resource, error = %e, "managed identity token unavailable");
                    Err(e)
                }
            },
        }
    }

    /// The current endpoint, unless it answered 400 before and the older one did not;
    /// on a 400 from the current endpoint, the older one.
    async fn fetch(
        &self,
        resource: &str,
        cache: &mut Cache,
    ) -> azure_core::Result<(AccessToken, Protocol)> {
        let current = self
            .endpoints
            .current
            .as_ref()
            .filter(|_| !cache.legacy_only);
        let Some(current) = current else {
            let legacy = self
                .endpoints
                .legacy
                .as_ref()
                .or(self.endpoints.current.as_ref());
            let legacy = legacy.expect("with_endpoints checked that one endpoint exists");
            return self
                .fetch_from(legacy, resource)
                .await
                .map(|t| (t, legacy.protocol))
                .map_err(|e| e.error);
        };
        match self.fetch_from(current, resource).await {
            Ok(t) => Ok((t, current.protocol)),
            Err(FetchError {
                status: Some(400),
                error,
            }) if self.endpoints.legacy.is_some() => {
                let legacy = self.endpoints.legacy.as_ref().expect("checked");
                tracing::warn!(
                    error = %error,
                    "the managed identity endpoint (api-version 2019-08-01) answered 400; trying MSI_ENDPOINT (api-version 2017-09-01)"
                );
                match self.fetch_from(legacy, resource).await {
                    Ok(t) => {
                        cache.legacy_only = true;
                        Ok((t, legacy.protocol))
                    }
                    Err(e) => Err(credential_error(format!(
                        "{error}; then MSI_ENDPOINT: {}",
                        e.error
                    ))),
                }
            }
            Err(e) => Err(e.error),
        }
    }

    /// One token request to `endpoint` and its answer read.
    async fn fetch_from(
        &self,
        endpoint: &IdentityEndpoint,
        resource: &str,
    ) -> Result<AccessToken, FetchError> {
        let protocol = endpoint.protocol;
        let (name, _) = protocol.settings();
        let response = self
            .http
            .get(self.request_url(endpoint, resource))
            .header(protocol.secret_header(), endpoint.secret.expose())
            .header("Accept", "application/json")
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| {
                credential_error(format!(
                    "managed identity endpoint ({name}) unreachable ({})",
                    if e.is_timeout() {
                        "timed out".to_owned()
                    } else if e.is_connect() {
                        "connection failed".to_owned()
                    } else {
                        "request failed".to_owned()
                    }
                ))
            })?;
        let status = response.status();
        // The platform's endpoint, but read bounded all the same (a token answer is ~2 KiB).
        let body = crate::vendor_body::read_capped(response, crate::vendor_body::MAX_BODY)
            .await
            .map_err(|_| {
                credential_error(format!(
                    "managed identity endpoint ({name}): the answer could not be read, or was over 64 KiB"
                ))
            })?;
        if !status.is_success() {
            return Err(refusal(protocol, status.as_u16(), &body));
        }
        Ok(answer::token(name, &body)?)
    }

    /// `endpoint`'s URL with the resource, the api-version and, for a
    /// user-assigned identity, its client id.
    fn request_url(&self, endpoint: &IdentityEndpoint, resource: &str) -> Url {
        let protocol = endpoint.protocol;
        let mut url = (*endpoint.url).clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("resource", resource);
            q.append_pair("api-version", protocol.api_version());
            if let Some(id) = &self.client_id {
                q.append_pair(protocol.client_id_parameter(), id);
            }
        }
        url
    }
}

/// An error answer (`status`): it carries no token; its explanation (bounded)
/// is shown for diagnosis.
fn refusal(protocol: Protocol, status: u16, body: &[u8]) -> FetchError {
    let (name, _) = protocol.settings();
    let detail = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            ["error_description", "message", "Message", "error"]
                .iter()
                .find_map(|k| v.get(*k).and_then(Value::as_str).map(str::to_owned))
        })
        .unwrap_or_default();
    let detail: String = detail.chars().take(300).collect();
    FetchError {
        status: Some(status),
        error: credential_error(format!(
            "managed identity endpoint ({name}, api-version {}) answered {}{}{}",
            protocol.api_version(),
            status,
            if detail.is_empty() { "" } else { ": " },
            detail
        )),
    }
}

/// The scope azure_storage asks for is `<resource>/.default`; the identity endpoint wants the resource.
fn resource_of(scope: &str) -> &str {
    scope.strip_suffix(".default").unwrap_or(scope)
}

#[async_trait::async_trait]
impl TokenCredential for ManagedIdentityCredential {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        let scope = scopes.first().copied().unwrap_or(STORAGE_RESOURCE);
        self.token_for(resource_of(scope)).await
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        *self.cache.lock().await = Cache::default();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storage_scope_maps_to_the_storage_resource() {
        assert_eq!(
            resource_of("https://storage.azure.com/.default"),
            STORAGE_RESOURCE
        );
        assert_eq!(resource_of(STORAGE_RESOURCE), STORAGE_RESOURCE);
    }

    #[test]
    fn debug_redacts_the_identity_header() {
        let c = ManagedIdentityCredential::new(
            reqwest::Client::new(),
            "http://127.0.0.1:1/msi/token",
            Secret::new("header-value-xyz"),
            None,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("header-value-xyz"));
    }
}
