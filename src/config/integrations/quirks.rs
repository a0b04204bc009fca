//! The vendor-specific fields of an integration, for vendors that bend OAuth:
//! documentation and API links (`docs`, `api_base_url`), an absolute expiry
//! field (`expires_at_field`), renewal by exchanging the access token
//! (`renew`), a metadata call after consent (`post_consent`), the proxy's
//! settings, and a separate refresh endpoint (`refresh_url`, `refresh_params`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::super::error::ConfigError;
use super::super::expand::{expand_all, Ctx};
use super::super::proxy::{ProxyConfig, RawProxyAuth};
use super::build::RawIntegration;
use super::{params, url_of, PostConsent, Renew};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRenew {
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
pub(super) struct RawPostConsent {
    url: String,
    #[serde(default)]
    auth_scheme: Option<String>,
    metadata: BTreeMap<String, String>,
}

/// The vendor-specific fields, read and checked.
pub(super) struct Quirks {
    pub(super) docs: Vec<Url>,
    pub(super) api_base_url: Vec<Url>,
    pub(super) renew: Option<Renew>,
    pub(super) post_consent: Option<PostConsent>,
    pub(super) proxy: ProxyConfig,
    pub(super) refresh_url: Option<Url>,
    pub(super) refresh_params: Vec<(String, String)>,
}

impl Quirks {
    /// Reads them from `r` (taking what it needs), in the order their problems are reported.
    pub(super) fn read(ctx: &Ctx<'_>, r: &mut RawIntegration) -> Result<Self, ConfigError> {
        let docs = one_or_many(ctx, "docs", r.docs.take())?
            .iter()
            .map(|v| url_of(ctx, "docs", v))
            .collect::<Result<Vec<_>, _>>()?;
        let api_base_url = api_base_urls(ctx, r.api_base_url.clone())?;
        check_expires_at_field(ctx, r.expires_at_field.as_deref())?;
        let renew = r.renew.take().map(|n| renew(ctx, n)).transpose()?;
        let post_consent = r
            .post_consent
            .take()
            .map(|p| post_consent(ctx, p))
            .transpose()?;
        let proxy = proxy(
            ctx,
            r.api_base_url.take(),
            r.proxy_rewrite_links,
            r.proxy_auth.take(),
            &r.proxy_headers,
        )?;
        let refresh_url = r
            .refresh_url
            .as_deref()
            .map(|v| url_of(ctx, "refresh_url", v))
            .transpose()?;
        let refresh_params = params(ctx, "refresh_params", &r.refresh_params)?;
        Ok(Self {
            docs,
            api_base_url,
            renew,
            post_consent,
            proxy,
            refresh_url,
            refresh_params,
        })
    }
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

/// The fixed API bases, checked as endpoints (`{metadata.NAME}` bases are
/// filled per connection and checked by the proxy).
fn api_base_urls(ctx: &Ctx<'_>, v: Option<Value>) -> Result<Vec<Url>, ConfigError> {
    one_or_many(ctx, "api_base_url", v)?
        .into_iter()
        .filter(|v| !v.starts_with("{metadata."))
        .collect::<Vec<_>>()
        .iter()
        .map(|v| url_of(ctx, "api_base_url", v))
        .collect::<Result<Vec<_>, _>>()
}

/// `expires_at_field` names a field, and never one of the tokens.
fn check_expires_at_field(ctx: &Ctx<'_>, field: Option<&str>) -> Result<(), ConfigError> {
    if let Some(f) = field {
        if f.is_empty() || matches!(f, "access_token" | "refresh_token" | "id_token") {
            return Err(ctx.fail("expires_at_field must name the token-response field with the absolute expiry (e.g. \"expires_at\")"));
        }
    }
    Ok(())
}

/// `renew`: a grant type and parameter name, a method, and its own URL and parameters.
fn renew(ctx: &Ctx<'_>, n: RawRenew) -> Result<Renew, ConfigError> {
    let name_ok = |v: &str| {
        !v.is_empty()
            && v.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b':'))
    };
    if !name_ok(&n.grant_type) {
        return Err(
            ctx.fail("renew.grant_type must be a grant type name, e.g. \"fb_exchange_token\"")
        );
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
    Ok(Renew {
        grant_type: n.grant_type,
        token_param,
        url: n
            .url
            .as_deref()
            .map(|v| url_of(ctx, "renew.url", v))
            .transpose()?,
        get,
        params: params(ctx, "renew.params", &n.params)?,
    })
}

/// `post_consent`: JSON pointers to keep, an auth scheme, and the URL.
fn post_consent(ctx: &Ctx<'_>, p: RawPostConsent) -> Result<PostConsent, ConfigError> {
    if p.metadata.is_empty() {
        return Err(ctx.fail(
            "post_consent.metadata must name at least one field: {\"name\": \"/json/pointer\"}",
        ));
    }
    for (k, v) in &p.metadata {
        if !(v.is_empty() || v.starts_with('/')) {
            return Err(ctx.fail(format!(
                "post_consent.metadata.{k} must be a JSON pointer (\"/dc\", \"/0/tenantId\")"
            )));
        }
    }
    let auth_scheme = p.auth_scheme.unwrap_or_else(|| "Bearer".into());
    if auth_scheme.is_empty()
        || !auth_scheme
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-')
    {
        return Err(
            ctx.fail("post_consent.auth_scheme must be an HTTP auth scheme name (Bearer, OAuth)")
        );
    }
    Ok(PostConsent {
        url: url_of(ctx, "post_consent.url", &p.url)?,
        auth_scheme,
        metadata: p.metadata.into_iter().collect(),
    })
}

/// The proxy's settings, with `%NAME%` read in the bases; every problem is
/// named by its path under the integration.
fn proxy(
    ctx: &Ctx<'_>,
    mut bases: Option<Value>,
    rewrite_links: Option<bool>,
    auth: Option<RawProxyAuth>,
    headers: &BTreeMap<String, String>,
) -> Result<ProxyConfig, ConfigError> {
    if let Some(v) = bases.as_mut() {
        expand_all(ctx, "api_base_url", v)?;
    }
    super::super::proxy::parse(bases.as_ref(), rewrite_links, auth, headers).map_err(|problems| {
        let all = problems
            .into_iter()
            .map(|(at, why)| {
                ConfigError::field(&ctx.path, format!("integrations.{}.{at}", ctx.name), why)
            })
            .collect();
        ConfigError::all(all).expect("parse fails with at least one problem")
    })
}

#[cfg(test)]
mod tests {
    use super::super::file::tests::one;
    use super::super::parse;
    use crate::config::tests::env;
    use std::path::Path;
    use time::Duration;

    /// A complete integration without a template, with `extra` fields after its own.
    fn with(extra: &str) -> String {
        format!(
            r#"{{"integrations": {{"a": {{"authorization_url": "https://a.example/auth", "token_url": "https://a.example/token", "client_id": "x", "client_secret": "y"{extra}}}}}}}"#
        )
    }

    #[test]
    fn proxy_fields_are_read_and_every_problem_is_named_by_its_path() {
        let base = with;
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
    fn quirk_fields_are_parsed() {
        let base = with;
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
    }

    #[test]
    fn quirk_field_problems_name_the_field() {
        let base = with;
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
