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
//! Over 600 lines only with its unit tests.

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
/// Renew a cached token when it expires sooner than this.
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::minutes(5);
/// After a failed renewal, keep using the still-valid cached token this long before asking again.
const RETRY_AFTER_FAILURE: StdDuration = StdDuration::from_secs(10);
/// A cached token this close to expiry is never used, even when renewal fails.
const MIN_VALIDITY: Duration = Duration::seconds(30);
const REQUEST_TIMEOUT: StdDuration = StdDuration::from_secs(10);

/// The two protocols of the App Service identity endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `IDENTITY_ENDPOINT` + `IDENTITY_HEADER`, api-version 2019-08-01.
    Identity2019,
    /// `MSI_ENDPOINT` + `MSI_SECRET`, api-version 2017-09-01.
    Msi2017,
}

impl Protocol {
    fn api_version(self) -> &'static str {
        match self {
            Self::Identity2019 => "2019-08-01",
            Self::Msi2017 => "2017-09-01",
        }
    }

    fn secret_header(self) -> &'static str {
        match self {
            Self::Identity2019 => "X-IDENTITY-HEADER",
            Self::Msi2017 => "secret",
        }
    }

    fn client_id_parameter(self) -> &'static str {
        match self {
            Self::Identity2019 => "client_id",
            Self::Msi2017 => "clientid",
        }
    }

    fn settings(self) -> (&'static str, &'static str) {
        match self {
            Self::Identity2019 => ("IDENTITY_ENDPOINT", "IDENTITY_HEADER"),
            Self::Msi2017 => ("MSI_ENDPOINT", "MSI_SECRET"),
        }
    }
}

/// One identity endpoint: its URL, the secret header value and the protocol.
#[derive(Clone)]
pub struct IdentityEndpoint {
    /// Boxed: keeps the settings enum that holds two of these small.
    url: Box<Url>,
    secret: Secret,
    protocol: Protocol,
}

impl fmt::Debug for IdentityEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityEndpoint")
            .field("url", &self.url.as_str())
            .field("secret", &self.secret)
            .field("protocol", &self.protocol)
            .finish()
    }
}

impl IdentityEndpoint {
    pub fn new(protocol: Protocol, url: &str, secret: Secret) -> Result<Self, String> {
        let (name, _) = protocol.settings();
        let url = Url::parse(url.trim()).map_err(|e| format!("{name} is not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{name} must be an http(s) URL"));
        }
        Ok(Self {
            url: Box::new(url),
            secret,
            protocol,
        })
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn url(&self) -> &str {
        self.url.as_str()
    }
}

/// The platform's identity endpoints: the current one (2019-08-01), the older
/// one (2017-09-01), or both (the older one is then the fallback).
#[derive(Debug, Clone)]
pub struct IdentityEndpoints {
    pub current: Option<IdentityEndpoint>,
    pub legacy: Option<IdentityEndpoint>,
}

impl IdentityEndpoints {
    /// From the platform's settings `IDENTITY_ENDPOINT`, `IDENTITY_HEADER`,
    /// `MSI_ENDPOINT` and `MSI_SECRET`. At least one complete pair is needed; the
    /// error names the setting to fix.
    pub fn from_settings(
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, (&'static str, String)> {
        let value = |n: &str| get(n).filter(|v| !v.trim().is_empty());
        let pair =
            |protocol: Protocol| -> Result<Option<IdentityEndpoint>, (&'static str, String)> {
                let (endpoint, secret) = protocol.settings();
                match (value(endpoint), value(secret)) {
                    (Some(e), Some(s)) => IdentityEndpoint::new(protocol, &e, Secret::new(s))
                        .map(Some)
                        .map_err(|m| (endpoint, m.trim_start_matches(endpoint).trim().to_owned())),
                    _ => Ok(None),
                }
            };
        let found = Self {
            current: pair(Protocol::Identity2019)?,
            legacy: pair(Protocol::Msi2017)?,
        };
        if found.current.is_some() || found.legacy.is_some() {
            return Ok(found);
        }
        // Neither pair is complete: name what is missing.
        for protocol in [Protocol::Identity2019, Protocol::Msi2017] {
            let (endpoint, secret) = protocol.settings();
            if value(endpoint).is_some() {
                return Err((
                    secret,
                    format!("is not set, though {endpoint} is: both come from the platform's managed identity"),
                ));
            }
        }
        Err((
            "IDENTITY_ENDPOINT",
            "is not set (nor MSI_ENDPOINT), and storage uses the app's managed identity: enable a managed identity on the Function App (Azure then sets IDENTITY_ENDPOINT and IDENTITY_HEADER), or set BROKER_STORAGE to a connection string".into(),
        ))
    }
}

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

/// The 2017-09-01 protocol's `expires_on`: `MM/DD/YYYY hh:mm:ss [AM|PM] ±hh:mm`
/// (e.g. `11/30/2026 05:35:32 PM +00:00`), or seconds like the newer protocol.
fn expiry(v: &Value) -> Option<OffsetDateTime> {
    if let Some(s) = seconds(v) {
        return OffsetDateTime::from_unix_timestamp(s).ok();
    }
    let text = v.as_str()?;
    let parts: Vec<&str> = text.split_whitespace().collect();
    let (date, clock, meridiem, offset) = match parts.as_slice() {
        [d, c, o] => (*d, *c, None, *o),
        [d, c, m, o] => (*d, *c, Some(m.to_ascii_uppercase()), *o),
        _ => return None,
    };
    let numbers = |s: &str, sep: char| -> Option<Vec<i64>> {
        s.split(sep).map(|p| p.parse::<i64>().ok()).collect()
    };
    let d = numbers(date, '/')?;
    let c = numbers(clock, ':')?;
    let [month, day, year] = d.as_slice() else {
        return None;
    };
    let [mut hour, minute, second] = c.as_slice() else {
        return None;
    };
    match meridiem.as_deref() {
        None => {}
        Some("AM") if (1..=12).contains(&hour) => hour %= 12,
        Some("PM") if (1..=12).contains(&hour) => hour = hour % 12 + 12,
        Some(_) => return None,
    }
    let (sign, hm) = match offset.as_bytes().first()? {
        b'+' => (1, &offset[1..]),
        b'-' => (-1, &offset[1..]),
        _ => return None,
    };
    let o = numbers(hm, ':')?;
    let [oh, om] = o.as_slice() else {
        return None;
    };
    let month = time::Month::try_from(u8::try_from(*month).ok()?).ok()?;
    let date =
        time::Date::from_calendar_date(i32::try_from(*year).ok()?, month, u8::try_from(*day).ok()?)
            .ok()?;
    let clock = time::Time::from_hms(
        u8::try_from(hour).ok()?,
        u8::try_from(*minute).ok()?,
        u8::try_from(*second).ok()?,
    )
    .ok()?;
    let offset =
        time::UtcOffset::from_whole_seconds(i32::try_from(sign * (oh * 3600 + om * 60)).ok()?)
            .ok()?;
    Some(date.with_time(clock).assume_offset(offset))
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

    async fn fetch_from(
        &self,
        endpoint: &IdentityEndpoint,
        resource: &str,
    ) -> Result<AccessToken, FetchError> {
        let protocol = endpoint.protocol;
        let (name, _) = protocol.settings();
        let mut url = (*endpoint.url).clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("resource", resource);
            q.append_pair("api-version", protocol.api_version());
            if let Some(id) = &self.client_id {
                q.append_pair(protocol.client_id_parameter(), id);
            }
        }
        let response = self
            .http
            .get(url)
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
            return Err(FetchError {
                status: Some(status.as_u16()),
                error: credential_error(format!(
                    "managed identity endpoint ({name}, api-version {}) answered {}{}{}",
                    protocol.api_version(),
                    status.as_u16(),
                    if detail.is_empty() { "" } else { ": " },
                    detail
                )),
            });
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            credential_error(format!(
                "managed identity endpoint ({name}) answered without a JSON access_token"
            ))
        })?;
        if parsed.access_token.is_empty() {
            return Err(credential_error(format!(
                "managed identity endpoint ({name}) answered an empty access_token"
            ))
            .into());
        }
        let now = OffsetDateTime::now_utc();
        let expires_on = parsed
            .expires_on
            .as_ref()
            .and_then(expiry)
            .or_else(|| {
                parsed
                    .expires_in
                    .as_ref()
                    .and_then(seconds)
                    .and_then(|s| now.checked_add(Duration::seconds(s)))
            })
            .ok_or_else(|| {
                credential_error(format!(
                    "managed identity endpoint ({name}) answered without a usable expires_on"
                ))
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
    fn the_older_protocol_sends_its_expiry_as_a_date() {
        let at = |s: &str| expiry(&Value::from(s)).map(OffsetDateTime::unix_timestamp);
        // 2026-11-30T17:35:32Z
        assert_eq!(at("11/30/2026 05:35:32 PM +00:00"), Some(1_796_060_132));
        assert_eq!(at("11/30/2026 17:35:32 +00:00"), Some(1_796_060_132));
        assert_eq!(at("11/30/2026 06:35:32 PM +01:00"), Some(1_796_060_132));
        assert_eq!(at("11/30/2026 12:00:00 AM +00:00"), Some(1_795_996_800));
        assert_eq!(at("1796060132"), Some(1_796_060_132));
        assert_eq!(at("13/30/2026 05:35:32 PM +00:00"), None);
        assert_eq!(at("11/30/2026 13:35:32 PM +00:00"), None);
        assert_eq!(at("tomorrow"), None);
    }

    #[test]
    fn settings_pick_the_complete_pairs() {
        let from = |pairs: &[(&str, &str)]| {
            let m: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            IdentityEndpoints::from_settings(&move |k: &str| m.get(k).cloned())
        };
        let both = from(&[
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/a"),
            ("IDENTITY_HEADER", "h"),
            ("MSI_ENDPOINT", "http://127.0.0.1:1/b"),
            ("MSI_SECRET", "s"),
        ])
        .unwrap();
        assert_eq!(both.current.unwrap().protocol(), Protocol::Identity2019);
        assert_eq!(both.legacy.unwrap().protocol(), Protocol::Msi2017);
        let legacy = from(&[
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/a"),
            ("MSI_ENDPOINT", "http://127.0.0.1:1/b"),
            ("MSI_SECRET", "s"),
        ])
        .unwrap();
        assert!(legacy.current.is_none());
        assert_eq!(legacy.legacy.unwrap().url(), "http://127.0.0.1:1/b");
        let (name, _) = from(&[("IDENTITY_ENDPOINT", "http://127.0.0.1:1/a")]).unwrap_err();
        assert_eq!(name, "IDENTITY_HEADER");
        let (name, _) = from(&[("MSI_ENDPOINT", "http://127.0.0.1:1/b")]).unwrap_err();
        assert_eq!(name, "MSI_SECRET");
        let (name, _) = from(&[]).unwrap_err();
        assert_eq!(name, "IDENTITY_ENDPOINT");
        let (name, why) = from(&[("MSI_ENDPOINT", "ftp://x/"), ("MSI_SECRET", "s")]).unwrap_err();
        assert_eq!(
            (name, why.as_str()),
            ("MSI_ENDPOINT", "must be an http(s) URL")
        );
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
