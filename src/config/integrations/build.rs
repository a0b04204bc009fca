//! One integration's fields, after its template was merged, turned into an
//! [`Integration`]: every field checked in a fixed order, and the first
//! problem reported with the integration's name.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};
use time::Duration;
use url::Url;

use super::super::error::ConfigError;
use super::super::expand::{expand, expand_all, Ctx};
use super::{
    check_endpoint, parse_account, ClientAuth, Integration, PostConsent, Renew, TokenBody,
};
use crate::domain::{IntegrationName, Secret};

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
    proxy_auth: Option<super::super::proxy::RawProxyAuth>,
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

/// `NAME` of a `%NAME%` value.
fn setting_name(v: &str) -> Option<String> {
    v.strip_prefix('%')
        .and_then(|s| s.strip_suffix('%'))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

pub(in crate::config) fn finish(
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
    let proxy = super::super::proxy::parse(
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
        callers: super::super::callers::read(ctx, r.callers.as_ref())?,
        account,
        name,
    })
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
}
