//! The integrations file: one OAuth app per integration, optionally filled
//! from a built-in vendor template (`"provider": "xero"`, see [`templates`])
//! or from the vendor's published metadata (`"issuer"`, see [`discovery`]).
//! Explicit fields always win over the template. Validated once at start;
//! every error names the file, the integration and the field.
//!
//! Over 600 lines with its unit tests (about 230 of them): the file format and
//! its validation are one piece, and its tests read best beside it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};
use time::Duration;
use url::Url;

use super::error::ConfigError;
use super::expand::{expand, expand_all, Ctx};
use super::lint::lint;
use super::templates::apply_template;
pub use super::templates::catalogue;
use crate::domain::{IntegrationName, Secret};

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with form-urlencoded credentials (RFC 6749 §2.3.1).
    Basic,
    /// `client_secret_post`: credentials in the request body.
    Post,
}

/// The encoding of token-endpoint requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenBody {
    /// `application/x-www-form-urlencoded` (RFC 6749).
    Form,
    /// `application/json` (Notion).
    Json,
}

/// How the vendor account behind a consent is found (field `account`; the
/// format is shared with the vendor catalogue, see README "Configure").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountConfig {
    /// No `account` field: an id_token's `iss` + `sub` when one arrives, else none.
    Default,
    /// `"account": null`: no account is recorded, not even from an id_token.
    OptOut,
    /// `{"from": "id_token"}`.
    IdToken,
    /// `{"from": "token_field", "pointer": "/team/id"}`: a JSON pointer into the token response.
    TokenField { pointer: String },
    /// `{"from": "callback_param", "name": "realmId"}`.
    CallbackParam { name: String },
    /// `{"from": "userinfo", "url": …, "pointer": "/id"}`: a GET with the new access token.
    Userinfo { url: Url, pointer: String },
}

impl AccountConfig {
    /// The token-response pointer, when that is the source.
    pub fn token_pointer(&self) -> Option<&str> {
        match self {
            Self::TokenField { pointer } => Some(pointer),
            _ => None,
        }
    }
}

/// Reads an `account` value (after the template was merged).
pub(super) fn parse_account(v: Option<&Value>) -> Result<AccountConfig, String> {
    let obj = match v {
        None => return Ok(AccountConfig::Default),
        Some(Value::Null) => return Ok(AccountConfig::OptOut),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(
                "account must be an object such as {\"from\": \"id_token\"}, or null".into(),
            )
        }
    };
    let text = |k: &str| -> Result<Option<String>, String> {
        match obj.get(k) {
            None => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(format!("account.{k} must be a non-empty string")),
        }
    };
    let need = |k: &str| -> Result<String, String> {
        text(k)?.ok_or_else(|| format!("account.{k} is missing"))
    };
    let pointer = || -> Result<String, String> {
        let p = need("pointer")?;
        if !p.starts_with('/') {
            return Err(format!(
                "account.pointer must be a JSON pointer starting with '/' (RFC 6901); it is {p:?}"
            ));
        }
        // Never a token or secret as an account id (a pointer at
        // `/authed_user/access_token` would store a token in clear).
        if p.split('/').any(|seg| {
            let seg = seg.to_ascii_lowercase();
            seg.contains("token") || seg.contains("secret") || seg.contains("password")
        }) {
            return Err(format!(
                "account.pointer must not point at a token or secret; it is {p:?}"
            ));
        }
        Ok(p)
    };
    let from = need("from")?;
    let allowed: &[&str] = match from.as_str() {
        "id_token" => &["from", "docs"],
        "token_field" => &["from", "pointer", "docs"],
        "callback_param" => &["from", "name", "docs"],
        "userinfo" => &["from", "url", "pointer", "docs"],
        other => {
            return Err(format!(
                "account.from is {other:?}; use \"id_token\", \"token_field\", \"callback_param\" or \"userinfo\""
            ))
        }
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!(
            "account.{k} is not a field of an account from {from}"
        ));
    }
    text("docs")?;
    Ok(match from.as_str() {
        "id_token" => AccountConfig::IdToken,
        "token_field" => AccountConfig::TokenField {
            pointer: pointer()?,
        },
        "callback_param" => {
            let name = need("name")?;
            if matches!(
                name.as_str(),
                "code" | "state" | "iss" | "error" | "error_description" | "error_uri"
            ) {
                return Err(format!(
                    "account.name {name:?} is an OAuth parameter, not an account"
                ));
            }
            AccountConfig::CallbackParam { name }
        }
        _ => {
            let url = need("url")?;
            let url = Url::parse(&url).map_err(|e| format!("account.url is not a URL: {e}"))?;
            check_endpoint("account.url", &url)?;
            AccountConfig::Userinfo {
                url,
                pointer: pointer()?,
            }
        }
    })
}

/// One OAuth app at one vendor.
#[derive(Debug, Clone)]
pub struct Integration {
    pub name: IntegrationName,
    /// The template it was built from, if any.
    pub provider: Option<String>,
    pub authorization_url: Url,
    pub token_url: Url,
    pub revocation_url: Option<Url>,
    pub client_id: String,
    pub client_secret: Secret,
    pub scopes: Vec<String>,
    pub scope_separator: String,
    pub client_auth: ClientAuth,
    pub token_body: TokenBody,
    pub pkce: bool,
    pub authorization_params: Vec<(String, String)>,
    pub token_params: Vec<(String, String)>,
    pub refresh_margin: Duration,
    /// Refresh any active grant not refreshed for this long, so that vendors
    /// that expire unused refresh tokens never see one go idle.
    pub keepalive: Duration,
    /// Callback query parameters kept with the connection (QuickBooks `realmId`).
    pub callback_metadata: Vec<String>,
    /// Token-response fields kept with the connection (Salesforce `instance_url`).
    pub token_metadata: Vec<String>,
    /// Lifetime assumed when the vendor sends no `expires_in`.
    pub default_expires_in: Duration,
    /// The vendor sends `expires_in` in milliseconds.
    pub expires_in_ms: bool,
    /// The authorization server's issuer identifier (configured, or the one its
    /// metadata declared): a callback's `iss` must equal it (RFC 9207).
    pub issuer: Option<String>,
    /// The callback must carry `iss` (the server advertises
    /// `authorization_response_iss_parameter_supported`, or `require_iss: true`).
    pub require_iss: bool,
    /// A consent that returns no refresh token is a problem (default true;
    /// false for vendors whose tokens never expire).
    pub expects_refresh_token: bool,
    /// Scopes the vendor needs before it issues a refresh token
    /// (`offline_access`); already included in `scopes`.
    pub refresh_token_scopes: Vec<String>,
    /// The vendor drops a refresh token unused for this long (Xero 60 days).
    pub refresh_token_idle: Option<Duration>,
    /// Scopes a pipeline may name at the token endpoint (`/api/oauth2/token`);
    /// `None`: any `scope` is accepted and ignored.
    pub pipeline_scopes: Option<Vec<String>>,
    /// Resources a pipeline may name there; `None`: any `resource` is accepted and ignored.
    pub pipeline_resources: Option<Vec<String>>,
    /// Where the vendor account behind a consent comes from.
    pub account: AccountConfig,
    /// The settings the client id and secret are read from (`%NAME%`), when they are.
    pub client_id_setting: Option<String>,
    pub client_secret_setting: Option<String>,
    /// The proxy's settings (`api_base_url`, `proxy_auth`, `proxy_headers`, `proxy_rewrite_links`).
    pub proxy: super::proxy::ProxyConfig,
    /// The vendor's OAuth documentation (template-level `docs`).
    pub docs: Vec<Url>,
    /// The vendor's API base URL(s), for a future proxy (validated, not used for requests).
    pub api_base_url: Vec<Url>,
    /// The token-response field holding an absolute expiry (ISO 8601 or epoch
    /// seconds) when the vendor sends it instead of `expires_in` (Square `expires_at`).
    pub expires_at_field: Option<String>,
    /// A token response without a lifetime (`expires_in` absent or 0, no
    /// `expires_at`) means the access token does not expire (Mailchimp, monday.com).
    pub no_expires_in_means_never: bool,
    /// Where refreshes go when not to the token endpoint (Adobe Acrobat Sign).
    pub refresh_url: Option<Url>,
    /// Parameters sent with refreshes only.
    pub refresh_params: Vec<(String, String)>,
    /// Tokens renewed by exchanging the access token (Meta `fb_exchange_token`)
    /// rather than by a refresh token.
    pub renew: Option<Renew>,
    /// The vendor ends a grant this long after consent, whatever its use
    /// (LinkedIn 365 days): the absolute lifetime of the refresh token.
    pub refresh_token_max: Option<Duration>,
    /// Metadata fetched from the vendor right after consent (Mailchimp's data centre).
    pub post_consent: Option<PostConsent>,
    /// Microsoft Entra ID identities that may get tokens for some connections (`callers`).
    pub callers: Vec<super::callers::Caller>,
}

/// How an access token is renewed by exchange (`renew`).
#[derive(Debug, Clone)]
pub struct Renew {
    /// The `grant_type` sent (`fb_exchange_token`).
    pub grant_type: String,
    /// The parameter carrying the current access token (default: the grant type's name).
    pub token_param: String,
    /// Where the exchange goes (default: the token endpoint).
    pub url: Option<Url>,
    /// `GET` with a query (Meta documents GET) or `POST` with a form (default).
    pub get: bool,
    pub params: Vec<(String, String)>,
}

/// A vendor call made with the new access token right after consent, whose
/// JSON answer gives metadata kept with the connection (`post_consent`).
#[derive(Debug, Clone)]
pub struct PostConsent {
    pub url: Url,
    /// The `Authorization` scheme (default `Bearer`; Mailchimp documents `OAuth`).
    pub auth_scheme: String,
    /// Metadata name -> JSON pointer (RFC 6901) into the answer.
    pub metadata: Vec<(String, String)>,
}

impl Integration {
    /// The scopes as the vendor wants them in one parameter.
    pub fn scope_string(&self) -> String {
        self.scopes.join(&self.scope_separator)
    }

    /// The lifetime a token response announces, per this vendor's conventions,
    /// clamped to [`MAX_LIFETIME`]; below one second, not a number or absent, the
    /// integration's default applies. The result can be added to any clock reading.
    pub fn lifetime(&self, expires_in: Option<f64>) -> Duration {
        self.lifetime_at(expires_in, None, time::OffsetDateTime::UNIX_EPOCH)
    }

    /// The lifetime of a token received at `now`: `expires_in` (seconds or
    /// milliseconds) when it is at least one second; else the absolute expiry
    /// (`expires_at_field`) when it is at least a second after `now`; else
    /// [`MAX_LIFETIME`] ("does not expire") when the template says a missing
    /// lifetime means so; else the integration's default. Always within
    /// 1 s ..= [`MAX_LIFETIME`].
    pub fn lifetime_at(
        &self,
        expires_in: Option<f64>,
        expires_at: Option<time::OffsetDateTime>,
        now: time::OffsetDateTime,
    ) -> Duration {
        let secs = expires_in.map(|v| if self.expires_in_ms { v / 1000.0 } else { v });
        if let Some(s) = secs.filter(|s| *s >= 1.0) {
            // `as` saturates; the clamp keeps it far inside the calendar.
            return Duration::seconds((s as i64).min(MAX_LIFETIME.whole_seconds()));
        }
        if let Some(left) = expires_at.map(|at| at - now) {
            if left >= Duration::SECOND {
                return left.min(MAX_LIFETIME);
            }
        }
        if self.no_expires_in_means_never {
            return MAX_LIFETIME;
        }
        self.default_expires_in.min(MAX_LIFETIME)
    }
}

/// The longest token lifetime believed, whatever a vendor announces; a token
/// stored with it "does not expire" (see `ConnectionRecord::never_expires`).
pub const MAX_LIFETIME: Duration = crate::domain::grant::NEVER_EXPIRES;

/// Loopback hosts, where plain `http` is allowed (local testing).
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// `https`, or `http` on a loopback host; otherwise why not.
pub fn check_endpoint(field: &str, url: &Url) -> Result<(), String> {
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        _ => Err(format!(
            "{field} must be an https URL (http only on a loopback host: 127.0.0.0/8, ::1, localhost); it is {url}"
        )),
    }
}

/// An integration whose endpoints come from its issuer's metadata, fetched at start.
#[derive(Debug, Clone)]
pub struct Discovery {
    pub name: IntegrationName,
    pub issuer: Url,
    pub(super) value: Map<String, Value>,
}

/// What the file holds: ready integrations, and those still to be discovered.
#[derive(Debug, Default, Clone)]
pub struct Parsed {
    pub ready: BTreeMap<IntegrationName, Integration>,
    pub discover: Vec<Discovery>,
}

/// The integrations file as loaded at start.
#[derive(Debug, Clone)]
pub struct IntegrationsFile {
    pub path: PathBuf,
    /// False when the file did not exist (the broker then serves no integrations and says so).
    pub found: bool,
    pub parsed: Parsed,
}

impl IntegrationsFile {
    /// The names of every configured integration (ready or to be discovered), sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .parsed
            .ready
            .keys()
            .map(|n| n.as_str().to_owned())
            .chain(
                self.parsed
                    .discover
                    .iter()
                    .map(|d| d.name.as_str().to_owned()),
            )
            .collect();
        names.sort();
        names
    }

    /// Reads and validates the file at `path`; a missing file is no error.
    pub fn load(path: PathBuf, get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Self {
                parsed: parse(&text, &path, get)?,
                path,
                found: true,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self {
                path,
                found: false,
                parsed: Parsed::default(),
            }),
            Err(e) => Err(ConfigError::File {
                path: path.display().to_string(),
                problem: format!("cannot be read: {e}"),
            }),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    integrations: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntegration {
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    require_iss: Option<bool>,
    authorization_url: String,
    token_url: String,
    #[serde(default)]
    revocation_url: Option<String>,
    client_id: String,
    client_secret: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    scope_separator: Option<String>,
    #[serde(default)]
    client_auth: Option<String>,
    #[serde(default)]
    token_body: Option<String>,
    #[serde(default)]
    pkce: Option<bool>,
    #[serde(default)]
    authorization_params: BTreeMap<String, String>,
    #[serde(default)]
    token_params: BTreeMap<String, String>,
    #[serde(default)]
    refresh_margin_secs: Option<u32>,
    #[serde(default)]
    keepalive_hours: Option<u32>,
    #[serde(default)]
    callback_metadata: Vec<String>,
    #[serde(default)]
    token_metadata: Vec<String>,
    #[serde(default)]
    default_expires_in_secs: Option<u32>,
    #[serde(default)]
    expires_in_unit: Option<String>,
    #[serde(default)]
    expects_refresh_token: Option<bool>,
    #[serde(default)]
    refresh_token_scopes: Vec<String>,
    #[serde(default)]
    refresh_token_idle_days: Option<u32>,
    #[serde(default)]
    pipeline_scopes: Option<Vec<String>>,
    #[serde(default)]
    pipeline_resources: Option<Vec<String>>,
    #[serde(default)]
    docs: Option<Value>,
    #[serde(default)]
    api_base_url: Option<Value>,
    #[serde(default)]
    proxy_rewrite_links: Option<bool>,
    #[serde(default)]
    proxy_auth: Option<super::proxy::RawProxyAuth>,
    #[serde(default)]
    proxy_headers: BTreeMap<String, String>,
    #[serde(default)]
    expires_at_field: Option<String>,
    #[serde(default)]
    no_expires_in_means_never: Option<bool>,
    #[serde(default)]
    refresh_url: Option<String>,
    #[serde(default)]
    refresh_params: BTreeMap<String, String>,
    #[serde(default)]
    renew: Option<RawRenew>,
    #[serde(default)]
    refresh_token_max_days: Option<u32>,
    #[serde(default)]
    post_consent: Option<RawPostConsent>,
    #[serde(default)]
    callers: Option<Value>,
}

/// A URL or a list of URLs (`docs`, `api_base_url`).
fn one_or_many(ctx: &Ctx<'_>, field: &str, v: Option<Value>) -> Result<Vec<String>, ConfigError> {
    let bad = || ctx.fail(format!("{field} must be a URL or a list of URLs"));
    match v {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s]),
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(bad()),
            })
            .collect(),
        Some(_) => Err(bad()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRenew {
    grant_type: String,
    #[serde(default)]
    token_param: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostConsent {
    url: String,
    #[serde(default)]
    auth_scheme: Option<String>,
    metadata: BTreeMap<String, String>,
}

/// Parses the integrations file text. `get` reads settings for `%NAME%` values.
pub fn parse(
    text: &str,
    path: &Path,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Parsed, ConfigError> {
    let path_s = path.display().to_string();
    let raw: RawFile = serde_json::from_str(text).map_err(|e| ConfigError::FileSyntax {
        path: path_s.clone(),
        line: e.line(),
        column: e.column(),
        problem: e
            .to_string()
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .to_owned(),
    })?;
    let mut parsed = Parsed::default();
    // Every integration is read, and every problem of every one is kept, so one
    // start (or `oauth-broker check`) reports them all.
    let mut problems = Vec::new();
    let mut missing = Vec::new();
    for (name, value) in raw.integrations {
        let ctx = Ctx {
            path: path_s.clone(),
            name: name.clone(),
            get,
        };
        let Value::Object(own) = value else {
            problems.push(ConfigError::field(
                &path_s,
                format!("integrations.{name}"),
                "expected an object",
            ));
            continue;
        };
        let findings = lint(&path_s, &name, &own, get);
        if !findings.is_clean() {
            problems.extend(findings.problems);
            missing.extend(findings.missing);
            continue;
        }
        if let Err(e) = read_one(&ctx, own, &mut parsed) {
            problems.push(e);
        }
    }
    if !missing.is_empty() {
        problems.insert(
            0,
            ConfigError::MissingSettings {
                path: path_s,
                missing,
            },
        );
    }
    if let Some(e) = ConfigError::all(problems) {
        return Err(e);
    }
    Ok(parsed)
}

/// Reads one integration that passed [`lint`] into `parsed`.
fn read_one(
    ctx: &Ctx<'_>,
    own: Map<String, Value>,
    parsed: &mut Parsed,
) -> Result<(), ConfigError> {
    let name = ctx.name.clone();
    let merged = apply_template(ctx, own)?;
    let needs_discovery =
        !merged.contains_key("authorization_url") || !merged.contains_key("token_url");
    match merged.get("issuer").and_then(Value::as_str) {
        Some(issuer) if needs_discovery => {
            let issuer = expand(ctx, "issuer", issuer)?;
            let issuer =
                Url::parse(&issuer).map_err(|e| ctx.fail(format!("issuer is not a URL: {e}")))?;
            check_endpoint("issuer", &issuer).map_err(|m| ctx.fail(m))?;
            // Settings are read now, so discovery at start needs no environment.
            let mut value = Value::Object(merged);
            expand_all(ctx, "", &mut value)?;
            let Value::Object(value) = value else {
                unreachable!()
            };
            let name = IntegrationName::parse(&name).map_err(|e| ctx.fail(e.to_string()))?;
            parsed.discover.push(Discovery {
                name,
                issuer,
                value,
            });
        }
        _ => {
            let i = finish(ctx, merged)?;
            parsed.ready.insert(i.name.clone(), i);
        }
    }
    Ok(())
}

/// `NAME` of a `%NAME%` value.
fn setting_name(v: &str) -> Option<String> {
    v.strip_prefix('%')
        .and_then(|s| s.strip_suffix('%'))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

pub(super) fn finish(
    ctx: &Ctx<'_>,
    mut value: Map<String, Value>,
) -> Result<Integration, ConfigError> {
    let name = IntegrationName::parse(&ctx.name).map_err(|e| ctx.fail(e.to_string()))?;
    // Documentation for people (a template's reason for having no account source).
    value.remove("account_note");
    let account = parse_account(value.remove("account").as_ref()).map_err(|m| ctx.fail(m))?;
    let r: RawIntegration =
        serde_json::from_value(Value::Object(value)).map_err(|e| ctx.fail(e.to_string()))?;
    let url_of = |field: &str, v: &str| -> Result<Url, ConfigError> {
        let v = expand(ctx, field, v)?;
        let u = Url::parse(&v).map_err(|e| ctx.fail(format!("{field} is not a URL: {e}")))?;
        check_endpoint(field, &u).map_err(|m| ctx.fail(m))?;
        if u.as_str().contains('{') || u.as_str().contains("%7B") {
            return Err(ctx.fail(format!("{field} still has a {{placeholder}}: {u}")));
        }
        Ok(u)
    };
    let client_auth = match r
        .client_auth
        .as_deref()
        .map(|v| expand(ctx, "client_auth", v))
        .transpose()?
        .as_deref()
    {
        None | Some("basic") => ClientAuth::Basic,
        Some("post") => ClientAuth::Post,
        Some(other) => {
            return Err(ctx.fail(format!(
                "client_auth is {other:?}; use \"basic\" (default) or \"post\""
            )))
        }
    };
    let token_body = match r.token_body.as_deref() {
        None | Some("form") => TokenBody::Form,
        Some("json") => TokenBody::Json,
        Some(other) => {
            return Err(ctx.fail(format!(
                "token_body is {other:?}; use \"form\" (default) or \"json\""
            )))
        }
    };
    let expires_in_ms = match r.expires_in_unit.as_deref() {
        None | Some("seconds") => false,
        Some("milliseconds") => true,
        Some(other) => {
            return Err(ctx.fail(format!(
                "expires_in_unit is {other:?}; use \"seconds\" or \"milliseconds\""
            )))
        }
    };
    let params =
        |field: &str, m: &BTreeMap<String, String>| -> Result<Vec<(String, String)>, ConfigError> {
            m.iter()
                .map(|(k, v)| Ok((k.clone(), expand(ctx, &format!("{field}.{k}"), v)?)))
                .collect()
        };
    // Ten years at most, so every period can be subtracted from any clock reading.
    if r.keepalive_hours.is_some_and(|h| h > 87_600) {
        return Err(ctx.fail("keepalive_hours must be at most 87600 (10 years)"));
    }
    let client_id = expand(ctx, "client_id", &r.client_id)?;
    if client_id.is_empty() {
        return Err(ctx.fail("client_id is empty"));
    }
    let issuer = r
        .issuer
        .as_deref()
        .map(|v| expand(ctx, "issuer", v))
        .transpose()?;
    // An issuer identifier is an https URL (RFC 8414 §2), or loopback for local testing.
    if let Some(i) = &issuer {
        let u = Url::parse(i).map_err(|e| ctx.fail(format!("issuer is not a URL: {e}")))?;
        check_endpoint("issuer", &u).map_err(|m| ctx.fail(m))?;
    }
    let require_iss = r.require_iss.unwrap_or(false);
    if require_iss && issuer.is_none() {
        return Err(ctx
            .fail("require_iss needs the issuer the callback's iss is compared with: set issuer"));
    }
    let refresh_token_scopes: Vec<String> = r
        .refresh_token_scopes
        .iter()
        .map(|s| expand(ctx, "refresh_token_scopes", s))
        .collect::<Result<_, _>>()?;
    let mut scopes: Vec<String> = r
        .scopes
        .iter()
        .map(|s| expand(ctx, "scopes", s))
        .collect::<Result<_, _>>()?;
    // An explicit `scopes` never has to repeat what the vendor needs for a refresh token.
    for s in &refresh_token_scopes {
        if !scopes.contains(s) {
            scopes.push(s.clone());
        }
    }
    if r.refresh_token_idle_days
        .is_some_and(|d| !(1..=3650).contains(&d))
    {
        return Err(ctx.fail(
            "refresh_token_idle_days must be between 1 and 3650 (leave it out when the vendor does not expire unused refresh tokens)",
        ));
    }
    if r.refresh_token_max_days
        .is_some_and(|d| !(1..=3650).contains(&d))
    {
        return Err(ctx.fail(
            "refresh_token_max_days must be between 1 and 3650 (leave it out when the vendor does not end grants at a fixed age)",
        ));
    }
    let docs = one_or_many(ctx, "docs", r.docs)?
        .iter()
        .map(|v| url_of("docs", v))
        .collect::<Result<Vec<_>, _>>()?;
    let proxy_bases = r.api_base_url.clone();
    let api_base_url = one_or_many(ctx, "api_base_url", r.api_base_url)?
        .into_iter()
        // `{metadata.NAME}` bases are filled per connection and checked by the proxy.
        .filter(|v| !v.starts_with("{metadata."))
        .collect::<Vec<_>>()
        .iter()
        .map(|v| url_of("api_base_url", v))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(f) = &r.expires_at_field {
        if f.is_empty() || matches!(f.as_str(), "access_token" | "refresh_token" | "id_token") {
            return Err(ctx.fail("expires_at_field must name the token-response field with the absolute expiry (e.g. \"expires_at\")"));
        }
    }
    let renew = match r.renew {
        None => None,
        Some(n) => {
            let name_ok = |v: &str| {
                !v.is_empty()
                    && v.bytes().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b':')
                    })
            };
            if !name_ok(&n.grant_type) {
                return Err(ctx.fail(
                    "renew.grant_type must be a grant type name, e.g. \"fb_exchange_token\"",
                ));
            }
            let token_param = n.token_param.unwrap_or_else(|| n.grant_type.clone());
            if !name_ok(&token_param) {
                return Err(ctx.fail("renew.token_param must be a parameter name"));
            }
            let get = match n.method.as_deref() {
                None | Some("POST" | "post") => false,
                Some("GET" | "get") => true,
                Some(other) => {
                    return Err(ctx.fail(format!(
                        "renew.method is {other:?}; use \"POST\" (default) or \"GET\""
                    )))
                }
            };
            Some(Renew {
                grant_type: n.grant_type,
                token_param,
                url: n
                    .url
                    .as_deref()
                    .map(|v| url_of("renew.url", v))
                    .transpose()?,
                get,
                params: params("renew.params", &n.params)?,
            })
        }
    };
    let post_consent = match r.post_consent {
        None => None,
        Some(p) => {
            if p.metadata.is_empty() {
                return Err(ctx.fail("post_consent.metadata must name at least one field: {\"name\": \"/json/pointer\"}"));
            }
            for (k, v) in &p.metadata {
                if !(v.is_empty() || v.starts_with('/')) {
                    return Err(ctx.fail(format!("post_consent.metadata.{k} must be a JSON pointer (\"/dc\", \"/0/tenantId\")")));
                }
            }
            let auth_scheme = p.auth_scheme.unwrap_or_else(|| "Bearer".into());
            if auth_scheme.is_empty()
                || !auth_scheme
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
            {
                return Err(ctx.fail(
                    "post_consent.auth_scheme must be an HTTP auth scheme name (Bearer, OAuth)",
                ));
            }
            Some(PostConsent {
                url: url_of("post_consent.url", &p.url)?,
                auth_scheme,
                metadata: p.metadata.into_iter().collect(),
            })
        }
    };
    let mut proxy_bases = proxy_bases;
    if let Some(v) = proxy_bases.as_mut() {
        expand_all(ctx, "api_base_url", v)?;
    }
    let proxy = super::proxy::parse(
        proxy_bases.as_ref(),
        r.proxy_rewrite_links,
        r.proxy_auth,
        &r.proxy_headers,
    )
    .map_err(|problems| {
        let all = problems
            .into_iter()
            .map(|(at, why)| {
                ConfigError::field(&ctx.path, format!("integrations.{}.{at}", ctx.name), why)
            })
            .collect();
        ConfigError::all(all).expect("parse fails with at least one problem")
    })?;
    Ok(Integration {
        proxy,
        docs,
        api_base_url,
        expires_at_field: r.expires_at_field,
        no_expires_in_means_never: r.no_expires_in_means_never.unwrap_or(false),
        refresh_url: r
            .refresh_url
            .as_deref()
            .map(|v| url_of("refresh_url", v))
            .transpose()?,
        refresh_params: params("refresh_params", &r.refresh_params)?,
        renew,
        refresh_token_max: r
            .refresh_token_max_days
            .map(|d| Duration::days(i64::from(d))),
        post_consent,
        issuer,
        require_iss,
        expects_refresh_token: r.expects_refresh_token.unwrap_or(true),
        refresh_token_scopes,
        refresh_token_idle: r
            .refresh_token_idle_days
            .map(|d| Duration::days(i64::from(d))),
        authorization_url: url_of("authorization_url", &r.authorization_url)?,
        token_url: url_of("token_url", &r.token_url)?,
        revocation_url: r
            .revocation_url
            .as_deref()
            .map(|v| url_of("revocation_url", v))
            .transpose()?,
        client_id,
        client_secret: Secret::new(expand(ctx, "client_secret", &r.client_secret)?),
        scopes,
        scope_separator: r.scope_separator.unwrap_or_else(|| " ".into()),
        client_auth,
        token_body,
        pkce: r.pkce.unwrap_or(true),
        authorization_params: params("authorization_params", &r.authorization_params)?,
        token_params: params("token_params", &r.token_params)?,
        refresh_margin: Duration::seconds(i64::from(r.refresh_margin_secs.unwrap_or(900))),
        keepalive: Duration::hours(i64::from(r.keepalive_hours.unwrap_or(24).max(1))),
        callback_metadata: r.callback_metadata,
        token_metadata: r.token_metadata,
        default_expires_in: Duration::seconds(i64::from(
            r.default_expires_in_secs.unwrap_or(3600).max(1),
        )),
        expires_in_ms,
        pipeline_scopes: r.pipeline_scopes,
        pipeline_resources: r.pipeline_resources,
        client_id_setting: setting_name(&r.client_id),
        client_secret_setting: setting_name(&r.client_secret),
        provider: r.provider,
        callers: super::callers::read(ctx, r.callers.as_ref())?,
        account,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::env;

    fn one(text: &str, get: &dyn Fn(&str) -> Option<String>) -> Result<Integration, ConfigError> {
        let p = parse(text, Path::new("i.json"), get)?;
        assert!(p.discover.is_empty());
        Ok(p.ready.into_values().next().expect("one integration"))
    }

    const GOOD: &str = r#"{"integrations": {"xero": {
        "authorization_url": "https://login.xero.com/identity/connect/authorize",
        "token_url": "https://identity.xero.com/connect/token",
        "client_id": "%XERO_ID%", "client_secret": "%XERO_SECRET%",
        "scopes": ["offline_access", "accounting.transactions"],
        "authorization_params": {"prompt": "consent"}
    }}}"#;

    #[test]
    fn expands_settings_and_applies_defaults() {
        let get = env(&[("XERO_ID", "id1"), ("XERO_SECRET", "sec")]);
        let x = one(GOOD, &get).unwrap();
        assert_eq!(x.client_id, "id1");
        assert_eq!(x.client_secret.expose(), "sec");
        assert_eq!(x.client_auth, ClientAuth::Basic);
        assert!(x.pkce);
        assert_eq!(x.refresh_margin, Duration::seconds(900));
        assert_eq!(x.keepalive, Duration::hours(24));
        assert_eq!(x.scope_string(), "offline_access accounting.transactions");
        assert_eq!(
            x.authorization_params,
            vec![("prompt".into(), "consent".into())]
        );
        assert!(!format!("{x:?}").contains("sec\""));
    }

    #[test]
    fn a_missing_setting_is_named() {
        let err = one(GOOD, &env(&[("XERO_ID", "id1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("XERO_SECRET") && err.contains("xero"), "{err}");
    }

    #[test]
    fn a_malformed_file_names_line_and_problem() {
        let text = "{\"integrations\": {\n  \"a\": {\"token_url\": }\n}}";
        let err = parse(text, Path::new("i.json"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("i.json: line 2,"), "{err}");
        let text = r#"{"integrations": {"a": {"authorization_url": "https://a", "token_url": "https://b", "client_id": "x", "client_secret": "y", "scopez": []}}}"#;
        let err = parse(text, Path::new("i.json"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("scopez"), "{err}");
        let text = r#"{"integrations": {"Bad_Name": {"authorization_url": "https://a", "token_url": "https://b", "client_id": "x", "client_secret": "y"}}}"#;
        let err = parse(text, Path::new("i.json"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("Bad_Name"), "{err}");
    }

    #[test]
    fn account_sources_are_validated() {
        let ok = |v: Value| parse_account(Some(&v));
        assert_eq!(parse_account(None), Ok(AccountConfig::Default));
        assert_eq!(ok(Value::Null), Ok(AccountConfig::OptOut));
        assert_eq!(
            ok(serde_json::json!({"from": "token_field", "pointer": "/team/id"})),
            Ok(AccountConfig::TokenField {
                pointer: "/team/id".into()
            })
        );
        for bad in [
            serde_json::json!("id_token"),
            serde_json::json!({"from": "magic"}),
            serde_json::json!({"from": "token_field"}),
            serde_json::json!({"from": "token_field", "pointer": "team"}),
            serde_json::json!({"from": "token_field", "pointer": "/authed_user/access_token"}),
            serde_json::json!({"from": "callback_param", "name": "code"}),
            serde_json::json!({"from": "userinfo", "url": "http://api.example.com/me", "pointer": "/id"}),
            serde_json::json!({"from": "id_token", "pointer": "/x"}),
        ] {
            assert!(ok(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_template_in_the_catalogue_builds_with_https_urls_and_declared_placeholders() {
        assert!(catalogue().len() >= 40);
        for (name, template) in catalogue() {
            let t = template
                .as_object()
                .unwrap_or_else(|| panic!("{name} is an object"));
            let docs = match t.get("docs") {
                Some(Value::String(s)) => vec![s.as_str()],
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            assert!(
                !docs.is_empty(),
                "{name} cites its vendor's documentation (docs)"
            );
            for d in docs {
                assert!(d.starts_with("https://"), "{name}: {d}");
            }
            assert!(
                t.contains_key("account") != t.contains_key("account_note"),
                "{name} names its account identifier (account) or says why not (account_note)"
            );
            assert!(
                t.get("rotates_refresh_token")
                    .is_some_and(Value::is_boolean),
                "{name} says whether its refresh tokens rotate"
            );
            assert!(
                t.get("notes")
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.is_empty()),
                "{name} has notes"
            );
            // Every template says where its account comes from, citing the
            // vendor's page, or why there is no stable identifier.
            match (t.get("account"), t.get("account_note")) {
                (Some(Value::Object(a)), None) => {
                    assert!(
                        a.get("docs")
                            .and_then(Value::as_str)
                            .is_some_and(|d| d.starts_with("https://")),
                        "{name}: account cites its docs"
                    );
                    parse_account(t.get("account")).unwrap_or_else(|e| panic!("{name}: {e}"));
                }
                (None, Some(Value::String(n))) if !n.is_empty() => {}
                _ => panic!("{name}: needs either an account source or an account_note"),
            }
            let requires: Vec<&str> = t
                .get("requires")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let text = serde_json::to_string(t).unwrap();
            for piece in text.split('{').skip(1) {
                if let Some(ph) = piece.split('}').next().filter(|p| {
                    p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !p.is_empty()
                }) {
                    assert!(
                        requires.contains(&ph),
                        "{name}: placeholder {{{ph}}} is not declared in requires"
                    );
                }
            }
            let placeholders: Map<String, Value> = requires
                .iter()
                .map(|r| (r.to_string(), Value::String("example".into())))
                .collect();
            let file = serde_json::json!({"integrations": {"x": {"provider": name, "client_id": "id", "client_secret": "s", "placeholders": placeholders}}});
            let file = if requires.is_empty() {
                serde_json::json!({"integrations": {"x": {"provider": name, "client_id": "id", "client_secret": "s"}}})
            } else {
                file
            };
            let i = one(&file.to_string(), &env(&[])).unwrap_or_else(|e| panic!("{name}: {e}"));
            for u in [
                Some(&i.authorization_url),
                Some(&i.token_url),
                i.revocation_url.as_ref(),
            ]
            .into_iter()
            .flatten()
            {
                assert_eq!(u.scheme(), "https", "{name}: {u}");
            }
            assert_eq!(i.provider.as_deref(), Some(name.as_str()));
            // The proxy: every template says where the API is, and every `{metadata.NAME}` its
            // bases and headers use is metadata the template captures.
            assert!(
                !i.proxy.api_base_url.is_empty(),
                "{name} sets api_base_url (the proxy needs it)"
            );
            let captured: Vec<&str> = i
                .callback_metadata
                .iter()
                .chain(&i.token_metadata)
                .map(String::as_str)
                .chain(
                    i.post_consent
                        .iter()
                        .flat_map(|p| p.metadata.iter().map(|(k, _)| k.as_str())),
                )
                .collect();
            let templates = i
                .proxy
                .api_base_url
                .iter()
                .chain(i.proxy.headers.iter().map(|(_, v)| v));
            for t in templates {
                for piece in t.split("{metadata.").skip(1) {
                    let used = piece.split('}').next().unwrap_or_default();
                    assert!(
                        captured.contains(&used),
                        "{name}: {t} uses metadata {used:?}, which the template does not capture ({captured:?})"
                    );
                }
            }
        }
    }

    #[test]
    fn templates_fill_placeholders_and_explicit_fields_win() {
        let text = r#"{"integrations": {"ms": {"provider": "microsoft", "client_id": "id", "client_secret": "s",
            "placeholders": {"tenant": "contoso.onmicrosoft.com"}, "scopes": ["offline_access", "User.Read"],
            "client_auth": "basic", "authorization_params": {"prompt": "select_account"}}}}"#;
        let i = one(text, &env(&[])).unwrap();
        assert_eq!(
            i.token_url.as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(i.client_auth, ClientAuth::Basic, "explicit field wins");
        assert_eq!(
            i.authorization_params,
            vec![("prompt".into(), "select_account".into())]
        );
        let text = r#"{"integrations": {"z": {"provider": "zoho", "client_id": "id", "client_secret": "s", "scopes": ["a", "b"]}}}"#;
        let z = one(text, &env(&[])).unwrap();
        assert_eq!(z.scope_string(), "a,b");
        assert_eq!(
            z.token_url.host_str(),
            Some("accounts.zoho.com"),
            "default placeholder"
        );
        assert_eq!(z.callback_metadata, ["accounts-server", "location"]);
        let text = r#"{"integrations": {"s": {"provider": "shopify", "client_id": "id", "client_secret": "s"}}}"#;
        let err = parse(text, Path::new("i.json"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("{shop}") && err.contains("placeholders"),
            "{err}"
        );
        let text = r#"{"integrations": {"s": {"provider": "shopify", "client_id": "id", "client_secret": "s", "placeholders": {"shop": "evil.com/x?"}}}}"#;
        assert!(
            parse(text, Path::new("i.json"), &env(&[])).is_err(),
            "placeholders cannot inject URL parts"
        );
        let text = r#"{"integrations": {"s": {"provider": "nope", "client_id": "id", "client_secret": "s"}}}"#;
        let err = parse(text, Path::new("i.json"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("xero"), "lists the known providers: {err}");
    }

    #[test]
    fn templates_add_the_scopes_a_refresh_token_needs_without_repeating_them() {
        let text = r#"{"integrations": {"ms": {"provider": "microsoft", "client_id": "id", "client_secret": "s", "scopes": ["User.Read"]}}}"#;
        let ms = one(text, &env(&[])).unwrap();
        assert_eq!(ms.scopes, ["User.Read", "offline_access"]);
        assert_eq!(ms.refresh_token_idle, Some(Duration::days(90)));
        assert!(ms.expects_refresh_token);
        let text = r#"{"integrations": {"x": {"provider": "xero", "client_id": "id", "client_secret": "s", "scopes": ["offline_access", "openid"]}}}"#;
        assert_eq!(
            one(text, &env(&[])).unwrap().scopes,
            ["offline_access", "openid"],
            "an explicit offline_access is not repeated"
        );
        let text = r#"{"integrations": {"x": {"provider": "xero", "client_id": "id", "client_secret": "s", "scopes": ["a"], "refresh_token_scopes": []}}}"#;
        assert_eq!(
            one(text, &env(&[])).unwrap().scopes,
            ["a"],
            "an explicit empty list opts out"
        );
        let text = r#"{"integrations": {"g": {"provider": "github", "client_id": "id", "client_secret": "s"}}}"#;
        let gh = one(text, &env(&[])).unwrap();
        assert!(
            !gh.expects_refresh_token,
            "GitHub OAuth App tokens never expire"
        );
        assert!(gh.refresh_token_scopes.is_empty() && gh.refresh_token_idle.is_none());
        let text = r#"{"integrations": {"o": {"authorization_url": "https://a.example/auth", "token_url": "https://a.example/token", "client_id": "id", "client_secret": "s", "refresh_token_idle_days": 0}}}"#;
        assert!(parse(text, Path::new("i.json"), &env(&[])).is_err());
        let text = text.replace(
            "\"refresh_token_idle_days\": 0",
            "\"refresh_token_idle_days\": 3651",
        );
        assert!(parse(&text, Path::new("i.json"), &env(&[])).is_err());
        let text = text.replace("3651", "3650");
        assert!(parse(&text, Path::new("i.json"), &env(&[])).is_ok());
    }

    #[test]
    fn an_issuer_without_endpoints_is_left_for_discovery() {
        let text = r#"{"integrations": {"d": {"issuer": "https://idp.example.com", "client_id": "id", "client_secret": "s"}}}"#;
        let p = parse(text, Path::new("i.json"), &env(&[])).unwrap();
        assert!(p.ready.is_empty());
        assert_eq!(p.discover[0].issuer.as_str(), "https://idp.example.com/");
    }

    #[test]
    fn the_shipped_sample_file_is_valid() {
        let any = |_: &str| Some("x".to_owned());
        let p = parse(
            include_str!("../../integrations.sample.json"),
            Path::new("integrations.sample.json"),
            &any,
        )
        .unwrap();
        assert_eq!(p.ready.len(), 4);
    }

    #[test]
    fn lifetimes_follow_the_vendor_conventions() {
        let mut i = one(GOOD, &env(&[("XERO_ID", "a"), ("XERO_SECRET", "b")])).unwrap();
        assert_eq!(i.lifetime(Some(1800.0)), Duration::seconds(1800));
        assert_eq!(i.lifetime(None), Duration::seconds(3600));
        i.expires_in_ms = true;
        assert_eq!(i.lifetime(Some(1_800_000.0)), Duration::seconds(1800));
    }

    #[test]
    fn an_absolute_expiry_or_no_expiry_applies_where_the_template_says_so() {
        let mut i = one(GOOD, &env(&[("XERO_ID", "a"), ("XERO_SECRET", "b")])).unwrap();
        let now = time::OffsetDateTime::from_unix_timestamp(1_000_000_000).unwrap();
        let at = Some(now + Duration::days(30));
        assert_eq!(i.lifetime_at(None, at, now), Duration::days(30));
        assert_eq!(
            i.lifetime_at(Some(60.0), at, now),
            Duration::seconds(60),
            "expires_in wins when both come"
        );
        assert_eq!(
            i.lifetime_at(None, Some(now - Duration::hours(1)), now),
            Duration::seconds(3600),
            "an expiry in the past is not believed: the default applies"
        );
        assert_eq!(
            i.lifetime_at(None, Some(now + Duration::days(99_999)), now),
            MAX_LIFETIME
        );
        assert_eq!(i.lifetime_at(Some(0.0), None, now), Duration::seconds(3600));
        i.no_expires_in_means_never = true;
        for e in [None, Some(0.0), Some(-1.0), Some(f64::NAN)] {
            assert_eq!(i.lifetime_at(e, None, now), MAX_LIFETIME, "{e:?}");
        }
        assert_eq!(
            i.lifetime_at(Some(7200.0), None, now),
            Duration::seconds(7200)
        );
    }

    #[test]
    fn proxy_fields_are_read_and_every_problem_is_named_by_its_path() {
        let base = |extra: &str| {
            format!(
                r#"{{"integrations": {{"a": {{"authorization_url": "https://a.example/auth", "token_url": "https://a.example/token", "client_id": "x", "client_secret": "y"{extra}}}}}}}"#
            )
        };
        let i = one(
            &base(
                r#", "api_base_url": ["https://api.a.example/v1/", "{metadata.api_domain}/crm"], "proxy_rewrite_links": false,
                "proxy_auth": {"header": "X-Token", "scheme": ""}, "proxy_headers": {"X-Tenant": "{metadata.tenant}"}"#,
            ),
            &env(&[]),
        )
        .unwrap();
        assert_eq!(
            i.proxy.api_base_url,
            ["https://api.a.example/v1", "{metadata.api_domain}/crm"]
        );
        assert!(!i.proxy.rewrite_links);
        assert_eq!(i.proxy.auth.header, "X-Token");
        assert_eq!(i.proxy.auth.scheme.as_deref(), Some(""));
        assert_eq!(
            i.proxy.headers,
            vec![("X-Tenant".into(), "{metadata.tenant}".into())]
        );
        let err = one(
            &base(
                r#", "proxy_auth": {"header": "X Token", "scheme": "two words"}, "proxy_headers": {"Bad Name": "v"}"#,
            ),
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        for at in [
            "integrations.a.proxy_auth.header",
            "integrations.a.proxy_auth.scheme",
            "integrations.a.proxy_headers.Bad Name",
        ] {
            assert!(err.contains(at), "{at} in {err}");
        }
        let err = one(&base(r#", "proxy_rewrite_links": "no""#), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("integrations.a.proxy_rewrite_links: expected true or false"),
            "{err}"
        );
    }

    #[test]
    fn quirk_fields_are_parsed_and_validated() {
        let base = |extra: &str| {
            format!(
                r#"{{"integrations": {{"a": {{"authorization_url": "https://a.example/auth", "token_url": "https://a.example/token", "client_id": "x", "client_secret": "y"{extra}}}}}}}"#
            )
        };
        let i = one(
            &base(
                r#", "docs": "https://a.example/docs", "api_base_url": ["https://api.a.example", "http://127.0.0.1:9/api"],
                "expires_at_field": "expires_at", "no_expires_in_means_never": true,
                "refresh_url": "https://a.example/refresh", "refresh_params": {"k": "v"},
                "renew": {"grant_type": "fb_exchange_token", "method": "GET", "params": {"p": "q"}},
                "refresh_token_max_days": 365,
                "post_consent": {"url": "https://a.example/meta", "auth_scheme": "OAuth", "metadata": {"dc": "/dc", "tenant": "/0/tenantId"}}"#,
            ),
            &env(&[]),
        )
        .unwrap();
        assert_eq!(i.docs[0].as_str(), "https://a.example/docs");
        assert_eq!(i.api_base_url.len(), 2);
        assert_eq!(i.expires_at_field.as_deref(), Some("expires_at"));
        assert!(i.no_expires_in_means_never);
        assert_eq!(i.refresh_url.unwrap().as_str(), "https://a.example/refresh");
        assert_eq!(i.refresh_params, vec![("k".into(), "v".into())]);
        let r = i.renew.unwrap();
        assert_eq!(
            (r.grant_type.as_str(), r.token_param.as_str(), r.get),
            ("fb_exchange_token", "fb_exchange_token", true)
        );
        assert_eq!(r.params, vec![("p".into(), "q".into())]);
        assert_eq!(i.refresh_token_max, Some(Duration::days(365)));
        let pc = i.post_consent.unwrap();
        assert_eq!(pc.auth_scheme, "OAuth");
        assert_eq!(pc.metadata.len(), 2);
        for (bad, field) in [
            (r#", "docs": "http://a.example/docs""#, "docs"),
            (r#", "docs": 5"#, "docs"),
            (r#", "api_base_url": "ftp://a.example""#, "api_base_url"),
            (
                r#", "api_base_url": ["https://ok.example", "http://evil.example"]"#,
                "api_base_url",
            ),
            (r#", "refresh_url": "http://a.example/r""#, "refresh_url"),
            (r#", "refresh_token_max_days": 0"#, "refresh_token_max_days"),
            (r#", "renew": {"grant_type": "a b"}"#, "renew.grant_type"),
            (
                r#", "renew": {"grant_type": "x", "method": "PUT"}"#,
                "renew.method",
            ),
            (
                r#", "renew": {"grant_type": "x", "url": "http://a.example"}"#,
                "renew.url",
            ),
            (r#", "renew": {"grant_type": "x", "extra": 1}"#, "extra"),
            (
                r#", "post_consent": {"url": "http://a.example/m", "metadata": {"dc": "/dc"}}"#,
                "post_consent.url",
            ),
            (
                r#", "post_consent": {"url": "https://a.example/m", "metadata": {}}"#,
                "post_consent.metadata",
            ),
            (
                r#", "post_consent": {"url": "https://a.example/m", "metadata": {"dc": "dc"}}"#,
                "pointer",
            ),
            (
                r#", "post_consent": {"url": "https://a.example/m", "auth_scheme": "Bearer x", "metadata": {"dc": "/dc"}}"#,
                "auth_scheme",
            ),
            (
                r#", "expires_at_field": "refresh_token""#,
                "expires_at_field",
            ),
        ] {
            let err = parse(&base(bad), Path::new("i.json"), &env(&[]))
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{bad}: {err}");
        }
    }

    #[test]
    fn any_announced_lifetime_is_clamped_and_can_meet_a_clock() {
        let mut i = one(GOOD, &env(&[("XERO_ID", "a"), ("XERO_SECRET", "b")])).unwrap();
        let now = time::OffsetDateTime::now_utc();
        for ms in [false, true] {
            i.expires_in_ms = ms;
            for v in [
                1e300,
                f64::MAX,
                i64::MAX as f64,
                u64::MAX as f64,
                f64::INFINITY,
            ] {
                assert_eq!(i.lifetime(Some(v)), MAX_LIFETIME, "{v}");
                let _ = now + i.lifetime(Some(v));
            }
            for v in [-1.0, -1e300, 0.0, 0.5e-3, f64::NAN, f64::NEG_INFINITY] {
                assert_eq!(i.lifetime(Some(v)), Duration::seconds(3600), "{v}");
            }
        }
    }

    #[test]
    fn endpoints_must_be_https_except_on_loopback() {
        let file = |url: &str| {
            format!(
                r#"{{"integrations": {{"a": {{"authorization_url": "https://a.example/auth", "token_url": "{url}", "client_id": "x", "client_secret": "y"}}}}}}"#
            )
        };
        for bad in [
            "http://example.com/token",
            "http://169.254.169.254/token",
            "ftp://example.com/token",
            "http://127.0.0.1.example.com/token",
        ] {
            let err = parse(&file(bad), Path::new("i.json"), &env(&[]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("token_url") && err.contains("https"),
                "{bad}: {err}"
            );
        }
        for good in [
            "https://example.com/token",
            "http://127.0.0.1:8080/token",
            "http://127.8.9.10/token",
            "http://[::1]:9/token",
            "http://localhost:9/token",
        ] {
            parse(&file(good), Path::new("i.json"), &env(&[]))
                .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for text in [
            r#"{"integrations": {"d": {"issuer": "http://idp.example.com", "client_id": "id", "client_secret": "s"}}}"#,
            r#"{"integrations": {"d": {"issuer": "http://idp.example.com", "authorization_url": "https://a.example/auth", "token_url": "https://a.example/token", "client_id": "id", "client_secret": "s"}}}"#,
        ] {
            let err = parse(text, Path::new("i.json"), &env(&[]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("issuer") && err.contains("https"), "{err}");
        }
    }
}
