//! Managed identity tokens for Table Storage, from the App Service / Azure
//! Functions identity endpoint (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`):
//!
//! ```text
//! GET $IDENTITY_ENDPOINT?resource=https://storage.azure.com/&api-version=2019-08-01[&client_id=<uami>]
//! X-IDENTITY-HEADER: $IDENTITY_HEADER
//! → {"access_token": "…", "expires_on": "1732881600", "resource": "…", "token_type": "Bearer", …}
//! ```
//!
//! The token is cached per resource and renewed [`DEFAULT_RENEW_BEFORE`] ahead
//! of its expiry. One fetch runs at a time (callers wait for it rather than
//! stampede the endpoint); when a renewal fails while the cached token is still
//! valid, the cached token keeps being used and the endpoint is not asked again
//! for [`RETRY_AFTER_FAILURE`]. The token never reaches a log line or an error.
//! azure_storage calls [`TokenCredential::get_token`] for every request and
//! sends `Authorization: Bearer <token>`.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration as StdDuration, Instant};

use azure_core::auth::{AccessToken, TokenCredential};
use azure_core::error::{Error, ErrorKind};
use serde::Deserialize;
use serde_json::Value;
use time::{Duration, OffsetDateTime};
use tokio::sync::Mutex;
use url::Url;

use crate::domain::Secret;

/// The resource (audience) of Azure Storage tokens.
pub const STORAGE_RESOURCE: &str = "https://storage.azure.com/";
const API_VERSION: &str = "2019-08-01";
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
}

/// A [`TokenCredential`] backed by the App Service managed identity endpoint.
pub struct ManagedIdentityCredential {
    http: reqwest::Client,
    endpoint: Url,
    header: Secret,
    client_id: Option<String>,
    renew_before: Duration,
    cache: Mutex<Cache>,
}

impl fmt::Debug for ManagedIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedIdentityCredential")
            .field("endpoint", &self.endpoint.as_str())
            .field("header", &self.header)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_on: Option<Value>,
    #[serde(default)]
    expires_in: Option<Value>,
}

/// Seconds as a JSON number or a string of digits (the endpoint sends strings).
fn seconds(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn credential_error(message: String) -> Error {
    Error::message(ErrorKind::Credential, message)
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
        let endpoint = Url::parse(endpoint.trim())
            .map_err(|e| format!("IDENTITY_ENDPOINT is not a URL ({e})"))?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err("IDENTITY_ENDPOINT must be an http(s) URL".into());
        }
        Ok(Self {
            http,
            endpoint,
            header,
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
        match self.fetch(resource).await {
            Ok(t) => {
                tracing::info!(
                    resource,
                    expires_on = %t.expires_on,
                    user_assigned = self.client_id.is_some(),
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

    async fn fetch(&self, resource: &str) -> azure_core::Result<AccessToken> {
        let mut url = self.endpoint.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("resource", resource);
            q.append_pair("api-version", API_VERSION);
            if let Some(id) = &self.client_id {
                q.append_pair("client_id", id);
            }
        }
        let response = self
            .http
            .get(url)
            .header("X-IDENTITY-HEADER", self.header.expose())
            .header("Accept", "application/json")
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| {
                credential_error(format!(
                    "managed identity endpoint unreachable ({})",
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
        let body = response.bytes().await.map_err(|_| {
            credential_error("managed identity endpoint: the answer could not be read".into())
        })?;
        if !status.is_success() {
            // Error answers carry no token; show their explanation (bounded) for diagnosis.
            let detail = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| {
                    ["error_description", "message", "Message", "error"]
                        .iter()
                        .find_map(|k| v.get(*k).and_then(Value::as_str).map(str::to_owned))
                })
                .unwrap_or_default();
            let detail: String = detail.chars().take(300).collect();
            return Err(credential_error(format!(
                "managed identity endpoint answered {}{}{}",
                status.as_u16(),
                if detail.is_empty() { "" } else { ": " },
                detail
            )));
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            credential_error(
                "managed identity endpoint answered without a JSON access_token".into(),
            )
        })?;
        if parsed.access_token.is_empty() {
            return Err(credential_error(
                "managed identity endpoint answered an empty access_token".into(),
            ));
        }
        let now = OffsetDateTime::now_utc();
        let expires_on = parsed
            .expires_on
            .as_ref()
            .and_then(seconds)
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
            .or_else(|| {
                parsed
                    .expires_in
                    .as_ref()
                    .and_then(seconds)
                    .map(|s| now + Duration::seconds(s))
            })
            .ok_or_else(|| {
                credential_error(
                    "managed identity endpoint answered without a usable expires_on".into(),
                )
            })?;
        Ok(AccessToken::new(parsed.access_token, expires_on))
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
    fn expiry_seconds_come_as_numbers_or_strings() {
        assert_eq!(
            seconds(&Value::from(1_732_881_600_i64)),
            Some(1_732_881_600)
        );
        assert_eq!(seconds(&Value::from("1732881600")), Some(1_732_881_600));
        assert_eq!(seconds(&Value::from("soon")), None);
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
