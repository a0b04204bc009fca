//! The OAuth 2.0 client side: the authorization request (RFC 6749 §4.1.1 with
//! PKCE S256, RFC 7636), the code exchange (§4.1.3) and refresh (§6), with
//! vendor errors kept apart from transport and parse failures (§5.2).
//!
//! The authorization URL, state and PKCE pair come from the `oauth2` crate.
//! Token-endpoint calls are made here with the shared reqwest client rather
//! than through `oauth2`'s typed client, because vendors bend the token
//! response (`expires_in` as a string, form-encoded bodies, errors with HTTP
//! 200) in ways a strict typed parser turns into lost grants.
//!
//! Over 600 lines only with its unit tests.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use oauth2::{AuthUrl, ClientId, CsrfToken, PkceCodeChallenge, RedirectUrl};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use url::Url;

use crate::config::integrations::{ClientAuth, Integration, TokenBody};
use crate::domain::{OAuthErrorCode, Secret};
pub use crate::vendor_body::MAX_BODY;
use crate::vendor_body::{read_capped, BodyError};

/// An authorization request ready to send the person to.
#[derive(Debug)]
pub struct AuthorizationRequest {
    pub url: Url,
    pub state: Secret,
    /// `None` when the integration disabled PKCE.
    pub pkce_verifier: Option<Secret>,
}

pub fn authorization_request(
    integration: &Integration,
    redirect_uri: &Url,
) -> AuthorizationRequest {
    let client = oauth2::basic::BasicClient::new(ClientId::new(integration.client_id.clone()))
        .set_auth_uri(AuthUrl::from_url(integration.authorization_url.clone()))
        .set_redirect_uri(RedirectUrl::from_url(redirect_uri.clone()));
    let mut req = client.authorize_url(CsrfToken::new_random);
    if !integration.scopes.is_empty() {
        // Joined here, not by oauth2, so vendors with comma separators work.
        req = req.add_extra_param("scope", integration.scope_string());
    }
    let mut verifier = None;
    if integration.pkce {
        let (challenge, v) = PkceCodeChallenge::new_random_sha256();
        verifier = Some(Secret::new(v.into_secret()));
        req = req.set_pkce_challenge(challenge);
    }
    for (k, v) in &integration.authorization_params {
        req = req.add_extra_param(k.as_str(), v.as_str());
    }
    let (url, state) = req.url();
    AuthorizationRequest {
        url,
        state: Secret::new(state.into_secret()),
        pkce_verifier: verifier,
    }
}

/// The tokens of a grant to revoke.
#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    pub access_token: &'a Secret,
    pub refresh_token: Option<&'a Secret>,
}

/// What the token endpoint gave back.
#[derive(Debug)]
pub struct TokenResponse {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    pub token_type: String,
    /// As sent (seconds or milliseconds, see `Integration::lifetime_at`, which clamps it).
    pub expires_in: Option<f64>,
    /// The absolute expiry, when the integration names a field for it
    /// (`expires_at_field`) and the vendor sent one (ISO 8601 or epoch seconds).
    pub expires_at: Option<time::OffsetDateTime>,
    pub scope: Option<String>,
    /// The fields the integration's `token_metadata` names (never a token).
    pub metadata: BTreeMap<String, String>,
    /// An OpenID Connect id_token, when one came back (read for its account, never stored).
    pub id_token: Option<Secret>,
    /// The account id at the integration's `account.pointer` (`token_field` source).
    pub account_field: Option<String>,
}

/// Why a token request failed. None of the variants carries a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The vendor answered with an OAuth error (RFC 6749 §5.2), whatever the status.
    #[error("the provider answered {error}{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Rejected {
        status: u16,
        error: OAuthErrorCode,
        description: Option<String>,
    },
    /// 5xx or 429 without an OAuth error body.
    #[error("the provider answered HTTP {status}")]
    Server {
        status: u16,
        /// `Retry-After` in seconds, when sent.
        retry_after: Option<u64>,
    },
    /// Connecting, sending or reading timed out or failed.
    #[error("the provider could not be reached: {0}")]
    Transport(String),
    /// A success status with a body that is not a token response.
    #[error("the provider's answer was not a token response: {0}")]
    InvalidResponse(String),
}

impl TokenError {
    /// The kind of failure, stored beside its text (`last_error_kind`) so that
    /// classifying a stored failure never reads the text: `oauth:<code>` (the
    /// vendor's OAuth error code), `http:<status>`, `transport` or
    /// `invalid_response`. Read back by [`crate::domain::condition`].
    pub fn kind(&self) -> String {
        match self {
            Self::Rejected { error, .. } => sanitize(&format!("oauth:{error}"), 80),
            Self::Server { status, .. } => format!("http:{status}"),
            Self::Transport(_) => "transport".into(),
            Self::InvalidResponse(_) => "invalid_response".into(),
        }
    }

    /// The OAuth error code when the vendor gave one.
    pub fn oauth_error(&self) -> Option<&OAuthErrorCode> {
        match self {
            Self::Rejected { error, .. } => Some(error),
            _ => None,
        }
    }

    /// `invalid_grant`: the grant is dead and only a new consent restores it.
    pub fn is_dead_grant(&self) -> bool {
        self.oauth_error() == Some(&OAuthErrorCode::InvalidGrant)
    }

    /// `invalid_client` / `unauthorized_client`: the integration's
    /// configuration is wrong; connections are not to blame (RFC 6749 §5.2).
    pub fn is_misconfigured(&self) -> bool {
        self.oauth_error()
            .is_some_and(OAuthErrorCode::blames_client)
    }

    /// Worth retrying: 5xx, 429, transport failures, unparsable bodies, and
    /// OAuth errors that say so (`temporarily_unavailable`, `server_error`, or any with a 5xx/429).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Server { .. } | Self::Transport(_) | Self::InvalidResponse(_) => true,
            Self::Rejected { status, error, .. } => {
                *status == 429 || *status >= 500 || error.is_temporary()
            }
        }
    }
}

pub async fn exchange_code(
    http: &reqwest::Client,
    integration: &Integration,
    code: &Secret,
    pkce_verifier: Option<&Secret>,
    redirect_uri: &Url,
    timeout: Duration,
) -> Result<TokenResponse, TokenError> {
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", "authorization_code"),
        ("code", code.expose()),
        ("redirect_uri", redirect_uri.as_str()),
    ];
    if let Some(verifier) = pkce_verifier {
        form.push(("code_verifier", verifier.expose()));
    }
    let url = &integration.token_url;
    token_request(http, integration, url, false, form, timeout).await
}

/// Refreshes a grant, at the integration's `refresh_url` when it has one, with
/// its `refresh_params`. No `scope` is sent, so the grant never widens (§6).
pub async fn refresh(
    http: &reqwest::Client,
    integration: &Integration,
    refresh_token: &Secret,
    timeout: Duration,
) -> Result<TokenResponse, TokenError> {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose()),
    ];
    for (k, v) in &integration.refresh_params {
        form.push((k.as_str(), v.as_str()));
    }
    let url = integration
        .refresh_url
        .as_ref()
        .unwrap_or(&integration.token_url);
    token_request(http, integration, url, false, form, timeout).await
}

/// Renews a grant by exchanging its current access token (`renew`, Meta's
/// `fb_exchange_token`): same answer, errors and classes as a refresh.
pub async fn renew(
    http: &reqwest::Client,
    integration: &Integration,
    renew: &crate::config::integrations::Renew,
    access_token: &Secret,
    timeout: Duration,
) -> Result<TokenResponse, TokenError> {
    let mut form = vec![
        ("grant_type", renew.grant_type.as_str()),
        (renew.token_param.as_str(), access_token.expose()),
    ];
    for (k, v) in &renew.params {
        form.push((k.as_str(), v.as_str()));
    }
    let url = renew.url.as_ref().unwrap_or(&integration.token_url);
    token_request(http, integration, url, renew.get, form, timeout).await
}

/// What a `post_consent` call gave: the named metadata found in the answer.
pub type PostConsentMetadata = BTreeMap<String, String>;

/// Calls the integration's `post_consent` URL with the new access token and
/// keeps the values its JSON pointers find (strings, numbers, booleans; cut
/// short and printable). The answer is hostile: capped in size, never
/// followed through a redirect (the shared client follows none), and any
/// failure is a reason, never a secret.
pub async fn post_consent(
    http: &reqwest::Client,
    integration: &Integration,
    access_token: &Secret,
    timeout: Duration,
) -> Result<PostConsentMetadata, String> {
    let Some(pc) = &integration.post_consent else {
        return Ok(BTreeMap::new());
    };
    let redactor = Redactor::for_request(integration, &[access_token.expose()]);
    let resp = http
        .get(pc.url.clone())
        .timeout(timeout)
        .header(reqwest::header::ACCEPT, "application/json")
        .header(
            reqwest::header::AUTHORIZATION,
            format!("{} {}", pc.auth_scheme, access_token.expose()),
        )
        .send()
        .await
        .map_err(|e| transport_reason(&e))?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(format!("the metadata call answered HTTP {status}"));
    }
    let body = read_capped(resp, MAX_BODY)
        .await
        .map_err(|e| body_error(e).to_string())?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|_| "the metadata call's answer is not JSON".to_owned())?;
    Ok(pick_metadata(&value, &pc.metadata, &redactor))
}

/// The values `pointers` find in `value`: strings, numbers and booleans only,
/// without any value the broker sent, printable and at most 500 characters.
fn pick_metadata(
    value: &Value,
    pointers: &[(String, String)],
    redactor: &Redactor,
) -> PostConsentMetadata {
    pointers
        .iter()
        .filter_map(|(name, pointer)| {
            let v = match value.pointer(pointer)? {
                Value::String(v) => v.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((name.clone(), redactor.clean(&v, 500)))
        })
        .collect()
}

/// The longest access token and refresh token accepted, in bytes (real ones
/// are 1–4 KB). Together they keep the sealed pair inside one Table Storage
/// property (64 KiB of UTF-16); a longer one is an invalid answer.
pub const MAX_ACCESS_TOKEN: usize = 16_000;
pub const MAX_REFRESH_TOKEN: usize = 8_000;

/// The longest `scope` kept, in characters (it is informative only: refresh never sends it).
pub const MAX_SCOPE: usize = 2048;

/// The longest vendor description kept in an error (log, `last_error`, page).
pub const MAX_DESCRIPTION: usize = 200;

fn body_error(e: BodyError) -> TokenError {
    match e {
        BodyError::TooLarge => TokenError::InvalidResponse(format!(
            "the answer is larger than {} KiB",
            MAX_BODY / 1024
        )),
        BodyError::Transport(e) => TokenError::Transport(transport_reason(&e)),
    }
}

/// Removes from vendor text every value the broker sent in one request (codes,
/// verifiers, tokens, the client secret, Basic credentials), raw and in the
/// encodings a vendor may echo them in (form-urlencoded, percent-encoded,
/// base64), then drops control characters and cuts it to a length.
pub struct Redactor {
    needles: Vec<String>,
}

impl Redactor {
    /// `sent`: the secret values of the request.
    pub fn new(sent: &[&str]) -> Self {
        let mut needles = Vec::new();
        for v in sent.iter().filter(|v| !v.is_empty()) {
            let form = form_encode(v);
            let pct = form.replace('+', "%20");
            for e in [form.clone(), pct.clone()] {
                needles.push(lower_hex(&e));
                needles.push(e);
            }
            needles.push((*v).to_owned());
            for engine in [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                &base64::engine::general_purpose::URL_SAFE,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ] {
                needles.push(engine.encode(v));
            }
            if let Ok(json) = serde_json::to_string(v) {
                needles.push(json.trim_matches('"').to_owned());
            }
        }
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        Self { needles }
    }

    /// For a token-endpoint request: the given values plus the client's credentials.
    fn for_request(integration: &Integration, sent: &[&str]) -> Self {
        let basic = basic_credentials(integration);
        let raw = format!(
            "{}:{}",
            integration.client_id,
            integration.client_secret.expose()
        );
        let mut all = sent.to_vec();
        all.extend([
            integration.client_secret.expose(),
            basic.as_str(),
            raw.as_str(),
        ]);
        Self::new(&all)
    }

    /// `text` without any sent value, printable and at most `max` characters.
    pub fn clean(&self, text: &str, max: usize) -> String {
        let mut out = text.to_owned();
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), "[redacted]");
            }
        }
        sanitize(&out, max)
    }

    fn clean_error(&self, e: TokenError) -> TokenError {
        match e {
            TokenError::Rejected {
                status,
                error,
                description,
            } => TokenError::Rejected {
                status,
                error: OAuthErrorCode::parse(&self.clean(error.as_str(), 64)),
                description: description
                    .map(|d| self.clean(&d, MAX_DESCRIPTION))
                    .filter(|d| !d.trim().is_empty()),
            },
            other => other,
        }
    }
}

/// Percent-escapes with lower-case hex digits (`%2f`), as some servers echo them.
fn lower_hex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            for _ in 0..2 {
                if let Some(h) = chars.next() {
                    out.push(h.to_ascii_lowercase());
                }
            }
        }
    }
    out
}

fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn token_request(
    http: &reqwest::Client,
    integration: &Integration,
    url: &Url,
    get: bool,
    mut form: Vec<(&str, &str)>,
    timeout: Duration,
) -> Result<TokenResponse, TokenError> {
    // The code, verifier, refresh token, or (renewal) the access token under
    // its parameter's name are redacted from anything the vendor says.
    let renew_param = integration.renew.as_ref().map(|r| r.token_param.as_str());
    let secrets: Vec<&str> = form
        .iter()
        .filter(|(k, _)| {
            matches!(*k, "code" | "code_verifier" | "refresh_token") || Some(*k) == renew_param
        })
        .map(|(_, v)| *v)
        .collect();
    let redactor = Redactor::for_request(integration, &secrets);
    for (k, v) in &integration.token_params {
        form.push((k.as_str(), v.as_str()));
    }
    let mut req = if get {
        http.get(url.clone())
    } else {
        http.post(url.clone())
    }
    .timeout(timeout)
    .header(reqwest::header::ACCEPT, "application/json");
    match integration.client_auth {
        ClientAuth::Basic => {
            req = req.header(reqwest::header::AUTHORIZATION, basic_auth(integration));
        }
        ClientAuth::Post => {
            form.push(("client_id", integration.client_id.as_str()));
            form.push(("client_secret", integration.client_secret.expose()));
        }
    }
    req = match integration.token_body {
        _ if get => req.query(&form),
        TokenBody::Form => req.form(&form),
        TokenBody::Json => req.json(&form.iter().copied().collect::<BTreeMap<&str, &str>>()),
    };
    let resp = req
        .send()
        .await
        .map_err(|e| TokenError::Transport(transport_reason(&e)))?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let is_form = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("application/x-www-form-urlencoded") || v.starts_with("text/plain")
        });
    let body = read_capped(resp, MAX_BODY).await.map_err(body_error)?;
    let shape = Shape {
        metadata: &integration.token_metadata,
        expires_at_field: integration.expires_at_field.as_deref(),
        account_pointer: integration.account.token_pointer(),
    };
    match parse_token_response(status, is_form, &body, &shape) {
        Err(TokenError::Server { status, .. }) => Err(TokenError::Server {
            status,
            retry_after,
        }),
        Err(e) => Err(redactor.clean_error(e)),
        ok => ok,
    }
}

/// Revokes a token at the vendor (RFC 7009). A 200 means revoked (or already
/// invalid, §2.2); anything else is an error the caller decides about.
pub async fn revoke(
    http: &reqwest::Client,
    integration: &Integration,
    url: &Url,
    grant: Grant<'_>,
    timeout: Duration,
) -> Result<(), TokenError> {
    // The refresh token when there is one: revoking it ends the whole grant (RFC 7009 §2.1).
    let (token, hint) = match grant.refresh_token {
        Some(rt) => (rt, "refresh_token"),
        None => (grant.access_token, "access_token"),
    };
    let redactor = Redactor::for_request(integration, &[token.expose()]);
    let mut form: Vec<(&str, &str)> = vec![("token", token.expose()), ("token_type_hint", hint)];
    let mut req = http.post(url.clone()).timeout(timeout);
    match integration.client_auth {
        ClientAuth::Basic => {
            req = req.header(reqwest::header::AUTHORIZATION, basic_auth(integration))
        }
        ClientAuth::Post => {
            form.push(("client_id", integration.client_id.as_str()));
            form.push(("client_secret", integration.client_secret.expose()));
        }
    }
    let resp = req
        .form(&form)
        .send()
        .await
        .map_err(|e| TokenError::Transport(transport_reason(&e)))?;
    let status = resp.status().as_u16();
    if status == 200 {
        return Ok(());
    }
    let body = read_capped(resp, MAX_BODY).await.map_err(body_error)?;
    match parse_token_response(status, false, &body, &Shape::default()) {
        Err(e) => Err(redactor.clean_error(e)),
        Ok(_) => Err(TokenError::InvalidResponse(format!("HTTP {status}"))),
    }
}

/// The account id at `pointer` in the vendor's user-info answer to a GET
/// with the new access token (`Authorization: Bearer`). Redirects are not
/// followed and the answer is read up to 64 KiB; any failure is a reason
/// (without the token), never a panic.
pub async fn userinfo_account(
    http: &reqwest::Client,
    url: &Url,
    access_token: &Secret,
    pointer: &str,
    timeout: Duration,
) -> Result<Option<String>, String> {
    let resp = http
        .get(url.clone())
        .timeout(timeout)
        .header(reqwest::header::ACCEPT, "application/json")
        .bearer_auth(access_token.expose())
        // GitHub's API refuses requests without a User-Agent.
        .header(reqwest::header::USER_AGENT, "oauth-broker")
        .send()
        .await
        .map_err(|e| transport_reason(&e))?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(format!("the user-info request answered HTTP {status}"));
    }
    let body = read_capped(resp, MAX_BODY).await.map_err(|e| match e {
        BodyError::TooLarge => "the user-info answer is too large".to_owned(),
        BodyError::Transport(e) => transport_reason(&e),
    })?;
    let doc: Value =
        serde_json::from_slice(&body).map_err(|_| "the user-info answer is not JSON".to_owned())?;
    Ok(crate::domain::account::id_at_pointer(&doc, pointer))
}

fn basic_auth(integration: &Integration) -> String {
    format!("Basic {}", STANDARD.encode(basic_credentials(integration)))
}

/// RFC 6749 §2.3.1: each part form-urlencoded, joined by a colon (before base64).
fn basic_credentials(integration: &Integration) -> String {
    format!(
        "{}:{}",
        form_encode(&integration.client_id),
        form_encode(integration.client_secret.expose())
    )
}

/// Describes a reqwest failure without its URL's query or any body.
fn transport_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        "request failed".into()
    }
}

/// What an integration reads from a token response beyond the standard fields.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Shape<'a> {
    /// Fields kept as metadata (`token_metadata`).
    pub metadata: &'a [String],
    /// The field with an absolute expiry (`expires_at_field`).
    pub expires_at_field: Option<&'a str>,
    /// A JSON pointer to the vendor account's id (`account` from `token_field`).
    pub account_pointer: Option<&'a str>,
}

/// An absolute expiry as vendors send it: an RFC 3339 / ISO 8601 date-time
/// (`2006-01-02T15:04:05Z`, a missing offset read as UTC), or epoch seconds
/// (a number or a numeric string). Anything else is `None`.
pub(crate) fn parse_expires_at(v: &Value) -> Option<time::OffsetDateTime> {
    use time::format_description::well_known::{Iso8601, Rfc3339};
    let from_secs = |s: f64| {
        if !s.is_finite() || s <= 0.0 {
            return None;
        }
        // Far beyond any clock: the clamp (MAX_LIFETIME) takes over.
        time::OffsetDateTime::from_unix_timestamp((s as i64).min(253_402_300_799)).ok()
    };
    match v {
        Value::Number(n) => from_secs(n.as_f64()?),
        Value::String(s) => {
            let s = s.trim();
            if s.len() > 64 {
                return None;
            }
            if let Ok(secs) = s.parse::<f64>() {
                return from_secs(secs);
            }
            time::OffsetDateTime::parse(s, &Rfc3339)
                .or_else(|_| time::OffsetDateTime::parse(s, &Iso8601::DEFAULT))
                .ok()
                .or_else(|| {
                    time::PrimitiveDateTime::parse(s, &Iso8601::DEFAULT)
                        .ok()
                        .map(time::PrimitiveDateTime::assume_utc)
                })
        }
        _ => None,
    }
}

pub(crate) fn parse_token_response(
    status: u16,
    is_form: bool,
    body: &[u8],
    shape: &Shape<'_>,
) -> Result<TokenResponse, TokenError> {
    let metadata_fields = shape.metadata;
    let account_pointer = shape.account_pointer;
    let map: Option<Map<String, Value>> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Some(m),
        _ if is_form || !body.starts_with(b"{") => {
            let pairs: Map<String, Value> = form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect();
            (pairs.contains_key("access_token") || pairs.contains_key("error")).then_some(pairs)
        }
        _ => None,
    };
    let text =
        |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
    if let Some(m) = &map {
        if let Some(error) = text(m, "error").filter(|e| !e.is_empty()) {
            return Err(TokenError::Rejected {
                status,
                // Whole here: the caller removes what it sent, then cuts short
                // (cutting first could leave a prefix of a secret).
                error: OAuthErrorCode::parse(&sanitize(&error, MAX_BODY)),
                description: text(m, "error_description").map(|d| sanitize(&d, MAX_BODY)),
            });
        }
        // Graph-API style (Meta): `{"error": {"message", "type", "code"}}`. Its
        // `type` stands in for the code; a 5xx/429 with it stays transient.
        if let Some(Value::Object(e)) = m.get("error") {
            let code = text(e, "type")
                .or_else(|| e.get("code").map(|c| c.to_string()))
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "error".into());
            return Err(TokenError::Rejected {
                status,
                error: OAuthErrorCode::parse(&sanitize(&code, MAX_BODY)),
                description: text(e, "message").map(|d| sanitize(&d, MAX_BODY)),
            });
        }
    }
    if status == 429 || status >= 500 {
        return Err(TokenError::Server {
            status,
            retry_after: None,
        });
    }
    let Some(m) = map else {
        return Err(TokenError::InvalidResponse(format!(
            "HTTP {status}, body is not a JSON object"
        )));
    };
    if !(200..300).contains(&status) {
        return Err(TokenError::InvalidResponse(format!(
            "HTTP {status} without an OAuth error"
        )));
    }
    let access_token = text(&m, "access_token")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenError::InvalidResponse("no access_token".into()))?;
    let refresh_token = text(&m, "refresh_token").filter(|t| !t.is_empty());
    for (name, t, max) in [
        ("access_token", Some(&access_token), MAX_ACCESS_TOKEN),
        ("refresh_token", refresh_token.as_ref(), MAX_REFRESH_TOKEN),
    ] {
        if t.is_some_and(|t| t.len() > max) {
            return Err(TokenError::InvalidResponse(format!(
                "the {name} is longer than {max} bytes"
            )));
        }
    }
    // Any number; `Integration::lifetime` clamps it to a sane range.
    let expires_in = match m.get("expires_in") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    let expires_at = shape
        .expires_at_field
        .and_then(|f| m.get(f))
        .and_then(parse_expires_at);
    Ok(TokenResponse {
        expires_at,
        access_token: Secret::new(access_token),
        refresh_token: refresh_token.map(Secret::new),
        token_type: text(&m, "token_type")
            .map(|t| sanitize(&t, 40))
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| "Bearer".into()),
        expires_in,
        scope: text(&m, "scope").map(|s| sanitize(&s, MAX_SCOPE)),
        id_token: text(&m, "id_token")
            .filter(|t| !t.is_empty() && t.len() <= MAX_ACCESS_TOKEN)
            .map(Secret::new),
        account_field: account_pointer
            .and_then(|p| crate::domain::account::id_at_pointer(&Value::Object(m.clone()), p)),
        metadata: metadata_fields
            .iter()
            .filter(|f| !matches!(f.as_str(), "access_token" | "refresh_token" | "id_token"))
            .filter_map(|f| match m.get(f)? {
                Value::String(v) => Some((f.clone(), sanitize(v, 500))),
                Value::Number(n) => Some((f.clone(), n.to_string())),
                Value::Bool(b) => Some((f.clone(), b.to_string())),
                _ => None,
            })
            .collect(),
    })
}

/// Vendor-supplied text is kept short and printable before it is stored,
/// logged or shown (HTML escaping happens at rendering).
pub fn sanitize(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status page reads the class of a refresh failure back from the text
    /// the engine stores (`sanitize(err.to_string())`): this pins the two together.
    #[test]
    fn a_stored_refresh_error_keeps_its_oauth_code() {
        use crate::domain::condition::error_code;
        let stored = |e: TokenError| sanitize(&e.to_string(), 300);
        let rejected = |error| TokenError::Rejected {
            status: 401,
            error,
            description: Some("client secret expired".into()),
        };
        assert_eq!(
            error_code(&stored(rejected(OAuthErrorCode::InvalidClient))),
            Some(OAuthErrorCode::InvalidClient)
        );
        assert_eq!(
            error_code(&stored(TokenError::Rejected {
                status: 400,
                error: OAuthErrorCode::UnauthorizedClient,
                description: None,
            })),
            Some(OAuthErrorCode::UnauthorizedClient)
        );
        assert_eq!(
            error_code(&stored(TokenError::Server {
                status: 503,
                retry_after: None
            })),
            None
        );
        assert_eq!(
            error_code(&stored(TokenError::Transport("timed out".into()))),
            None
        );
    }

    #[test]
    fn parses_standard_and_bent_token_responses() {
        let r = parse_token_response(200, false, br#"{"access_token":"a","token_type":"bearer","expires_in":"3600","refresh_token":"r","scope":"x y"}"#, &Shape::default()).unwrap();
        assert_eq!(r.access_token.expose(), "a");
        assert_eq!(r.refresh_token.unwrap().expose(), "r");
        assert_eq!(r.expires_in, Some(3600.0));
        let r = parse_token_response(
            200,
            true,
            b"access_token=a&token_type=bearer&scope=repo",
            &Shape::default(),
        )
        .unwrap();
        assert_eq!(r.access_token.expose(), "a");
        assert!(r.refresh_token.is_none() && r.expires_in.is_none());
    }

    #[test]
    fn an_absolute_expiry_is_read_as_iso_8601_or_epoch_seconds() {
        let at = |v: Value| parse_expires_at(&v).map(|t| t.unix_timestamp());
        assert_eq!(
            at(serde_json::json!("2006-01-02T15:04:05Z")),
            Some(1_136_214_245)
        );
        assert_eq!(
            at(serde_json::json!("2006-01-02T17:04:05+02:00")),
            Some(1_136_214_245)
        );
        assert_eq!(
            at(serde_json::json!("2006-01-02T15:04:05")),
            Some(1_136_214_245),
            "no offset: UTC"
        );
        assert_eq!(at(serde_json::json!(1_136_214_245)), Some(1_136_214_245));
        assert_eq!(at(serde_json::json!("1136214245")), Some(1_136_214_245));
        for bad in [
            serde_json::json!("tomorrow"),
            serde_json::json!(""),
            serde_json::json!(-5),
            serde_json::json!(0),
            serde_json::json!(null),
            serde_json::json!({"a": 1}),
            serde_json::json!("9".repeat(100)),
        ] {
            assert_eq!(at(bad.clone()), None, "{bad}");
        }
        // Far future is kept far (the lifetime clamp applies later), never a panic.
        assert!(at(serde_json::json!(1e300)).is_some());
        let shape = Shape {
            metadata: &[],
            expires_at_field: Some("expires_at"),
            account_pointer: None,
        };
        let r = parse_token_response(
            200,
            false,
            br#"{"access_token":"a","expires_at":"2030-01-01T00:00:00Z"}"#,
            &shape,
        )
        .unwrap();
        assert_eq!(r.expires_at.unwrap().unix_timestamp(), 1_893_456_000);
        assert!(r.expires_in.is_none());
        let r = parse_token_response(
            200,
            false,
            br#"{"access_token":"a","expires_at":"2030-01-01T00:00:00Z"}"#,
            &Shape::default(),
        )
        .unwrap();
        assert!(
            r.expires_at.is_none(),
            "only where the integration names the field"
        );
    }

    #[test]
    fn classifies_errors() {
        let e = parse_token_response(
            400,
            false,
            br#"{"error":"invalid_grant","error_description":"grant request is invalid"}"#,
            &Shape::default(),
        )
        .unwrap_err();
        assert!(e.is_dead_grant() && !e.is_transient() && !e.is_misconfigured());
        let e = parse_token_response(
            401,
            false,
            br#"{"error":"invalid_client"}"#,
            &Shape::default(),
        )
        .unwrap_err();
        assert!(e.is_misconfigured() && !e.is_transient());
        let e = parse_token_response(
            503,
            false,
            br#"{"error":"temporarily_unavailable"}"#,
            &Shape::default(),
        )
        .unwrap_err();
        assert!(e.is_transient());
        let e = parse_token_response(
            200,
            false,
            br#"{"error":"bad_verification_code"}"#,
            &Shape::default(),
        )
        .unwrap_err();
        assert_eq!(
            e.oauth_error(),
            Some(&OAuthErrorCode::Other("bad_verification_code".into()))
        );
        assert!(matches!(
            parse_token_response(503, false, b"<html>", &Shape::default()),
            Err(TokenError::Server { status: 503, .. })
        ));
        assert!(matches!(
            parse_token_response(200, false, b"{\"token_type\":\"x\"}", &Shape::default()),
            Err(TokenError::InvalidResponse(_))
        ));
        assert!(matches!(
            parse_token_response(200, false, b"<html>", &Shape::default()),
            Err(TokenError::InvalidResponse(_))
        ));
    }

    #[test]
    fn post_consent_metadata_keeps_only_scalars_found_by_the_pointers_and_never_a_token() {
        let doc = serde_json::json!({"dc": "us6", "login": {"id": 42, "ok": true},
            "tenants": [{"tenantId": "t-1"}], "obj": {"a": 1}, "echo": "Bearer at-123", "long": "x".repeat(900)});
        let p = |n: &str, ptr: &str| (n.to_owned(), ptr.to_owned());
        let got = pick_metadata(
            &doc,
            &[
                p("dc", "/dc"),
                p("id", "/login/id"),
                p("ok", "/login/ok"),
                p("tenant", "/tenants/0/tenantId"),
                p("obj", "/obj"),
                p("missing", "/nope"),
                p("echo", "/echo"),
                p("long", "/long"),
            ],
            &Redactor::new(&["at-123"]),
        );
        assert_eq!(got["dc"], "us6");
        assert_eq!(got["id"], "42");
        assert_eq!(got["ok"], "true");
        assert_eq!(got["tenant"], "t-1");
        assert!(!got.contains_key("obj") && !got.contains_key("missing"));
        assert_eq!(got["echo"], "Bearer [redacted]");
        assert_eq!(got["long"].len(), 500);
    }

    #[test]
    fn graph_api_error_objects_are_vendor_errors() {
        let e = parse_token_response(
            400,
            false,
            br#"{"error":{"message":"Error validating access token: Session has expired","type":"OAuthException","code":190}}"#,
            &Shape::default(),
        )
        .unwrap_err();
        assert_eq!(
            e.oauth_error(),
            Some(&OAuthErrorCode::Other("OAuthException".into()))
        );
        assert!(!e.is_transient() && !e.is_dead_grant());
        assert!(e.to_string().contains("Session has expired"));
        let e = parse_token_response(500, false, br#"{"error":{"code":2}}"#, &Shape::default())
            .unwrap_err();
        assert!(e.is_transient());
    }

    #[test]
    fn only_named_metadata_is_kept_and_never_a_token() {
        let body = br#"{"access_token":"a","refresh_token":"r","instance_url":"https://x.my.salesforce.com","issued_at":"1","n":5}"#;
        let fields = [
            "instance_url".to_owned(),
            "n".to_owned(),
            "refresh_token".to_owned(),
        ];
        let shape = Shape {
            metadata: &fields,
            expires_at_field: None,
            account_pointer: None,
        };
        let r = parse_token_response(200, false, body, &shape).unwrap();
        assert_eq!(r.metadata.len(), 2);
        assert_eq!(r.metadata["instance_url"], "https://x.my.salesforce.com");
        assert_eq!(r.metadata["n"], "5");
    }

    #[test]
    fn the_redactor_removes_sent_values_in_every_encoding() {
        let r = Redactor::new(&["s3cr/t+v al", "rt-123"]);
        let echoed = format!(
            "bad request: refresh_token=rt-123&x={}&y={}&z={}&w={}",
            form_encode("s3cr/t+v al"),
            STANDARD.encode("s3cr/t+v al"),
            "s3cr%2ft%2bv%20al",
            "s3cr/t+v al"
        );
        let cleaned = r.clean(&echoed, 1000);
        assert!(
            !cleaned.contains("rt-123") && !cleaned.contains("s3cr"),
            "{cleaned}"
        );
        assert!(cleaned.starts_with("bad request: refresh_token=[redacted]&x=[redacted]"));
        assert_eq!(r.clean(&"x".repeat(500), 10).chars().count(), 10);
    }

    #[test]
    fn oversized_tokens_are_refused_and_long_fields_cut() {
        let big = "a".repeat(MAX_ACCESS_TOKEN + 1);
        let body = serde_json::json!({"access_token": big}).to_string();
        assert!(matches!(
            parse_token_response(200, false, body.as_bytes(), &Shape::default()),
            Err(TokenError::InvalidResponse(_))
        ));
        let body = serde_json::json!({"access_token": "a", "scope": "s ".repeat(5000), "token_type": "t".repeat(5000)}).to_string();
        let r = parse_token_response(200, false, body.as_bytes(), &Shape::default()).unwrap();
        assert_eq!(r.scope.unwrap().chars().count(), MAX_SCOPE);
        assert_eq!(r.token_type.chars().count(), 40);
    }

    #[test]
    fn errors_never_carry_the_token() {
        let e = parse_token_response(
            200,
            false,
            br#"{"refresh_token":"SECRET123"}"#,
            &Shape::default(),
        )
        .unwrap_err();
        assert!(!format!("{e} {e:?}").contains("SECRET123"));
    }
}
