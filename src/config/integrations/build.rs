//! One integration's fields, after its template was merged, turned into an
//! [`Integration`]: every group of fields checked in a fixed order, and the
//! first problem reported with the integration's name. The vendor-specific
//! fields are read by `quirks`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};
use time::Duration;
use url::Url;

use super::super::callers::Caller;
use super::super::error::ConfigError;
use super::super::expand::{expand, Ctx};
use super::super::proxy::RawProxyAuth;
use super::quirks::{Quirks, RawPostConsent, RawRenew};
use super::{
    check_endpoint, params, parse_account, url_of, AccountConfig, ClientAuth, Integration,
    TokenBody,
};
use crate::domain::{IntegrationName, Secret};

/// The fields of one integration as written (after the template was merged).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIntegration {
    #[serde(default)]
    pub(super) provider: Option<String>,
    #[serde(default)]
    pub(super) issuer: Option<String>,
    #[serde(default)]
    pub(super) require_iss: Option<bool>,
    pub(super) authorization_url: String,
    pub(super) token_url: String,
    #[serde(default)]
    pub(super) revocation_url: Option<String>,
    pub(super) client_id: String,
    pub(super) client_secret: String,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    #[serde(default)]
    pub(super) scope_separator: Option<String>,
    #[serde(default)]
    pub(super) client_auth: Option<String>,
    #[serde(default)]
    pub(super) token_body: Option<String>,
    #[serde(default)]
    pub(super) pkce: Option<bool>,
    #[serde(default)]
    pub(super) authorization_params: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) token_params: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) refresh_margin_secs: Option<u32>,
    #[serde(default)]
    pub(super) keepalive_hours: Option<u32>,
    #[serde(default)]
    pub(super) callback_metadata: Vec<String>,
    #[serde(default)]
    pub(super) token_metadata: Vec<String>,
    #[serde(default)]
    pub(super) default_expires_in_secs: Option<u32>,
    #[serde(default)]
    pub(super) expires_in_unit: Option<String>,
    #[serde(default)]
    pub(super) expects_refresh_token: Option<bool>,
    #[serde(default)]
    pub(super) refresh_token_scopes: Vec<String>,
    #[serde(default)]
    pub(super) refresh_token_idle_days: Option<u32>,
    #[serde(default)]
    pub(super) pipeline_scopes: Option<Vec<String>>,
    #[serde(default)]
    pub(super) pipeline_resources: Option<Vec<String>>,
    #[serde(default)]
    pub(super) docs: Option<Value>,
    #[serde(default)]
    pub(super) api_base_url: Option<Value>,
    #[serde(default)]
    pub(super) proxy_rewrite_links: Option<bool>,
    #[serde(default)]
    pub(super) proxy_auth: Option<RawProxyAuth>,
    #[serde(default)]
    pub(super) proxy_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) expires_at_field: Option<String>,
    #[serde(default)]
    pub(super) no_expires_in_means_never: Option<bool>,
    #[serde(default)]
    pub(super) refresh_url: Option<String>,
    #[serde(default)]
    pub(super) refresh_params: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) renew: Option<RawRenew>,
    #[serde(default)]
    pub(super) refresh_token_max_days: Option<u32>,
    #[serde(default)]
    pub(super) post_consent: Option<RawPostConsent>,
    #[serde(default)]
    pub(super) callers: Option<Value>,
}

/// `NAME` of a `%NAME%` value.
fn setting_name(v: &str) -> Option<String> {
    v.strip_prefix('%')
        .and_then(|s| s.strip_suffix('%'))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Turns one integration's merged fields into an [`Integration`]. The groups
/// of fields are read in a fixed order, and the first problem is the one
/// reported.
pub(in crate::config) fn finish(
    ctx: &Ctx<'_>,
    mut value: Map<String, Value>,
) -> Result<Integration, ConfigError> {
    let name = IntegrationName::parse(&ctx.name).map_err(|e| ctx.fail(e.to_string()))?;
    // Documentation for people (a template's reason for having no account source).
    value.remove("account_note");
    let account = parse_account(value.remove("account").as_ref()).map_err(|m| ctx.fail(m))?;
    let mut r: RawIntegration =
        serde_json::from_value(Value::Object(value)).map_err(|e| ctx.fail(e.to_string()))?;
    let wire = Wire::read(ctx, &r)?;
    // Ten years at most, so every period can be subtracted from any clock reading.
    if r.keepalive_hours.is_some_and(|h| h > 87_600) {
        return Err(ctx.fail("keepalive_hours must be at most 87600 (10 years)"));
    }
    let consent = Consent::read(ctx, &r)?;
    check_refresh_token_days(ctx, &r)?;
    let quirks = Quirks::read(ctx, &mut r)?;
    let requests = Requests::read(ctx, &r)?;
    let callers = super::super::callers::read(ctx, r.callers.as_ref())?;
    Ok(assemble(
        r,
        Checked {
            name,
            account,
            wire,
            consent,
            quirks,
            requests,
            callers,
        },
    ))
}

/// How requests are sent and answers read.
struct Wire {
    client_auth: ClientAuth,
    token_body: TokenBody,
    expires_in_ms: bool,
}

impl Wire {
    /// `client_auth`, `token_body` and `expires_in_unit`, in that order.
    fn read(ctx: &Ctx<'_>, r: &RawIntegration) -> Result<Self, ConfigError> {
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
        Ok(Self {
            client_auth,
            token_body,
            expires_in_ms,
        })
    }
}

/// Who asks for consent, what it asks for, and whose answer a callback must carry.
struct Consent {
    client_id: String,
    issuer: Option<String>,
    require_iss: bool,
    scopes: Vec<String>,
    refresh_token_scopes: Vec<String>,
}

impl Consent {
    /// `client_id`, `issuer`, `require_iss`, then the scopes.
    fn read(ctx: &Ctx<'_>, r: &RawIntegration) -> Result<Self, ConfigError> {
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
            return Err(ctx.fail(
                "require_iss needs the issuer the callback's iss is compared with: set issuer",
            ));
        }
        let (scopes, refresh_token_scopes) = scopes(ctx, r)?;
        Ok(Self {
            client_id,
            issuer,
            require_iss,
            scopes,
            refresh_token_scopes,
        })
    }
}

/// `scopes` with the `refresh_token_scopes` added that it lacks, and those.
fn scopes(ctx: &Ctx<'_>, r: &RawIntegration) -> Result<(Vec<String>, Vec<String>), ConfigError> {
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
    Ok((scopes, refresh_token_scopes))
}

/// `refresh_token_idle_days` and `refresh_token_max_days` are within ten years.
fn check_refresh_token_days(ctx: &Ctx<'_>, r: &RawIntegration) -> Result<(), ConfigError> {
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
    Ok(())
}

/// Where the OAuth requests go and what they carry.
struct Requests {
    authorization_url: Url,
    token_url: Url,
    revocation_url: Option<Url>,
    client_secret: Secret,
    authorization_params: Vec<(String, String)>,
    token_params: Vec<(String, String)>,
}

impl Requests {
    /// The endpoints, the client secret, then the extra parameters.
    fn read(ctx: &Ctx<'_>, r: &RawIntegration) -> Result<Self, ConfigError> {
        Ok(Self {
            authorization_url: url_of(ctx, "authorization_url", &r.authorization_url)?,
            token_url: url_of(ctx, "token_url", &r.token_url)?,
            revocation_url: r
                .revocation_url
                .as_deref()
                .map(|v| url_of(ctx, "revocation_url", v))
                .transpose()?,
            client_secret: Secret::new(expand(ctx, "client_secret", &r.client_secret)?),
            authorization_params: params(ctx, "authorization_params", &r.authorization_params)?,
            token_params: params(ctx, "token_params", &r.token_params)?,
        })
    }
}

/// What [`finish`] read and checked, before it becomes an [`Integration`].
struct Checked {
    name: IntegrationName,
    account: AccountConfig,
    wire: Wire,
    consent: Consent,
    quirks: Quirks,
    requests: Requests,
    callers: Vec<Caller>,
}

/// The integration: the checked groups, and the plain fields of `r` with their defaults.
fn assemble(r: RawIntegration, c: Checked) -> Integration {
    let days = |d: u32| Duration::days(i64::from(d));
    Integration {
        proxy: c.quirks.proxy,
        docs: c.quirks.docs,
        api_base_url: c.quirks.api_base_url,
        expires_at_field: r.expires_at_field,
        no_expires_in_means_never: r.no_expires_in_means_never.unwrap_or(false),
        refresh_url: c.quirks.refresh_url,
        refresh_params: c.quirks.refresh_params,
        renew: c.quirks.renew,
        refresh_token_max: r.refresh_token_max_days.map(days),
        post_consent: c.quirks.post_consent,
        issuer: c.consent.issuer,
        require_iss: c.consent.require_iss,
        expects_refresh_token: r.expects_refresh_token.unwrap_or(true),
        refresh_token_scopes: c.consent.refresh_token_scopes,
        refresh_token_idle: r.refresh_token_idle_days.map(days),
        authorization_url: c.requests.authorization_url,
        token_url: c.requests.token_url,
        revocation_url: c.requests.revocation_url,
        client_id: c.consent.client_id,
        client_secret: c.requests.client_secret,
        scopes: c.consent.scopes,
        scope_separator: r.scope_separator.unwrap_or_else(|| " ".into()),
        client_auth: c.wire.client_auth,
        token_body: c.wire.token_body,
        pkce: r.pkce.unwrap_or(true),
        authorization_params: c.requests.authorization_params,
        token_params: c.requests.token_params,
        refresh_margin: Duration::seconds(i64::from(r.refresh_margin_secs.unwrap_or(900))),
        keepalive: Duration::hours(i64::from(r.keepalive_hours.unwrap_or(24).max(1))),
        callback_metadata: r.callback_metadata,
        token_metadata: r.token_metadata,
        default_expires_in: Duration::seconds(i64::from(
            r.default_expires_in_secs.unwrap_or(3600).max(1),
        )),
        expires_in_ms: c.wire.expires_in_ms,
        pipeline_scopes: r.pipeline_scopes,
        pipeline_resources: r.pipeline_resources,
        client_id_setting: setting_name(&r.client_id),
        client_secret_setting: setting_name(&r.client_secret),
        provider: r.provider,
        callers: c.callers,
        account: c.account,
        name: c.name,
    }
}

#[cfg(test)]
mod tests {
    use super::super::file::tests::one;
    use super::super::parse;
    use super::*;
    use crate::config::tests::env;
    use std::path::Path;

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
}
