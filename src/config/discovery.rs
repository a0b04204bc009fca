//! Integrations configured with only an `issuer`: their endpoints come from
//! the issuer's metadata (RFC 8414 §3, then OpenID Connect Discovery), fetched
//! by `registry` in the background after start.

use std::path::Path;

use serde_json::{Map, Value};

use super::error::ConfigError;
use super::expand::Ctx;
use super::integrations::{check_endpoint, finish, Discovery, Integration};

/// Fills the endpoints of `d` from its issuer's metadata (RFC 8414 §3, then
/// OpenID Connect Discovery), keeping every field the file set explicitly.
pub async fn discover(
    http: &reqwest::Client,
    d: Discovery,
    path: &Path,
) -> Result<Integration, ConfigError> {
    // Settings were expanded when the file was read: discovery needs none.
    // The reason is shown by /api/health: what the issuer sent is cut short.
    let fail = |problem: &str| ConfigError::Integration {
        path: path.display().to_string(),
        integration: d.name.as_str().to_owned(),
        problem: problem
            .chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect(),
    };
    let base = d.issuer.as_str().trim_end_matches('/');
    let meta = fetch_metadata(http, base).await.ok_or_else(|| fail(&format!("no authorization server metadata at {base}/.well-known/oauth-authorization-server or /.well-known/openid-configuration")))?;
    if meta
        .get("issuer")
        .and_then(Value::as_str)
        .map(|i| i.trim_end_matches('/'))
        != Some(base)
    {
        return Err(fail(
            "the metadata's issuer does not match the configured issuer (RFC 8414 §3.3)",
        ));
    }
    let mut value = d.value;
    adopt_issuer(&mut value, &meta);
    adopt_endpoints(&mut value, &meta, &d.issuer, &fail)?;
    adopt_preferences(&mut value, &meta);
    let no_settings = |_: &str| None;
    let ctx = Ctx {
        path: path.display().to_string(),
        name: d.name.as_str().to_owned(),
        get: &no_settings,
    };
    finish(&ctx, value)
}

/// The first metadata document found (RFC 8414 §3, then OpenID Connect
/// Discovery) that is a JSON object.
async fn fetch_metadata(http: &reqwest::Client, base: &str) -> Option<Map<String, Value>> {
    for well_known in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let url = format!("{base}{well_known}");
        match http
            .get(&url)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                let body = crate::vendor_body::read_capped(r, crate::vendor_body::MAX_BODY).await;
                if let Ok(Value::Object(m)) = body
                    .map_err(|_| ())
                    .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|_| ()))
                {
                    return Some(m);
                }
            }
            _ => continue,
        }
    }
    None
}

/// The issuer as the metadata states it, and `require_iss` when the server
/// says it sends `iss` (unless the file set it).
fn adopt_issuer(value: &mut Map<String, Value>, meta: &Map<String, Value>) {
    // RFC 9207: the callback's iss is compared with the issuer as the metadata states it.
    if let Some(declared) = meta.get("issuer").and_then(Value::as_str) {
        value.insert("issuer".into(), Value::String(declared.to_owned()));
    }
    if !value.contains_key("require_iss")
        && meta.get("authorization_response_iss_parameter_supported") == Some(&Value::Bool(true))
    {
        value.insert("require_iss".into(), Value::Bool(true));
    }
}

/// The endpoints the file did not set, each checked to be on the issuer's host.
fn adopt_endpoints(
    value: &mut Map<String, Value>,
    meta: &Map<String, Value>,
    issuer: &url::Url,
    fail: &dyn Fn(&str) -> ConfigError,
) -> Result<(), ConfigError> {
    for (field, key) in [
        ("authorization_url", "authorization_endpoint"),
        ("token_url", "token_endpoint"),
        ("revocation_url", "revocation_endpoint"),
    ] {
        if let (false, Some(v)) = (
            value.contains_key(field),
            meta.get(key).and_then(Value::as_str),
        ) {
            // A discovered endpoint is https (or loopback) and on the issuer's
            // host; anything else must be set explicitly in the file.
            let url = url::Url::parse(v)
                .map_err(|_| fail(&format!("the discovered {key} is not a URL")))?;
            check_endpoint(&format!("the discovered {key}"), &url).map_err(|m| fail(&m))?;
            if url.host_str() != issuer.host_str()
                || url.port_or_known_default() != issuer.port_or_known_default()
            {
                return Err(fail(&format!(
                    "the discovered {key} {url} is not on the issuer's host {}; set {field} explicitly to use it",
                    issuer.host_str().unwrap_or_default()
                )));
            }
            value.insert(field.into(), Value::String(v.to_owned()));
        }
    }
    Ok(())
}

/// What the server supports, where the file did not choose: `client_auth`
/// post when it takes no Basic, no PKCE without S256, and `offline_access`.
fn adopt_preferences(value: &mut Map<String, Value>, meta: &Map<String, Value>) {
    let methods = |k: &str| -> Vec<String> {
        meta.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    if !value.contains_key("client_auth") {
        let auth = methods("token_endpoint_auth_methods_supported");
        if !auth.is_empty()
            && !auth.iter().any(|m| m == "client_secret_basic")
            && auth.iter().any(|m| m == "client_secret_post")
        {
            value.insert("client_auth".into(), Value::String("post".into()));
        }
    }
    if !value.contains_key("pkce") {
        let pkce = methods("code_challenge_methods_supported");
        if !pkce.is_empty() && !pkce.iter().any(|m| m == "S256") {
            value.insert("pkce".into(), Value::Bool(false));
        }
    }
    // OpenID providers that advertise offline_access issue a refresh token only
    // when it is requested (OpenID Connect Core §11); Google, which needs
    // access_type=offline instead, does not advertise it.
    if !value.contains_key("refresh_token_scopes")
        && methods("scopes_supported")
            .iter()
            .any(|s| s == "offline_access")
    {
        value.insert(
            "refresh_token_scopes".into(),
            Value::Array(vec![Value::String("offline_access".into())]),
        );
    }
}
