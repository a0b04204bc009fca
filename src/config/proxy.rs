//! What the proxy (`/api/proxy/{integration}/{connection}/{*path}`) needs of
//! an integration: where the vendor's API lives (`api_base_url`), how the
//! access token is presented (`proxy_auth`), headers built from connection
//! metadata (`proxy_headers`) and whether pagination links are rewritten
//! (`proxy_rewrite_links`). Parsed and validated with the integration.
//!
//! A base may be per connection: `{metadata.NAME}` at its start is the
//! connection's metadata value `NAME` (Salesforce `instance_url`, Zoho
//! `api_domain`), checked when a request is made (`https`, or `http` on a
//! loopback host; no user info, query or fragment).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::integrations::check_endpoint;

/// How the token goes to the vendor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyAuth {
    /// The header that carries it (`Authorization`, `X-Shopify-Access-Token`).
    pub header: String,
    /// The scheme before the token (`Zoho-oauthtoken`); `None`: the grant's
    /// `token_type` (`Bearer` when it has none); `Some("")`: the bare token.
    pub scheme: Option<String>,
}

impl Default for ProxyAuth {
    fn default() -> Self {
        Self {
            header: "Authorization".into(),
            scheme: None,
        }
    }
}

/// The proxy settings of one integration.
#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    /// Bases, first = where requests go unless the path starts with `~N`.
    /// Empty: the proxy answers `proxy_not_configured`.
    pub api_base_url: Vec<String>,
    pub rewrite_links: bool,
    pub auth: ProxyAuth,
    /// Header name → value template (`{metadata.NAME}` parts).
    pub headers: Vec<(String, String)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxyAuth {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    scheme: Option<String>,
}

const METADATA: &str = "{metadata.";

/// A metadata reference's name: letters, digits, `-`, `_`, `.`.
fn metadata_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Fills `{metadata.NAME}` references from `metadata`; `None` when one is missing.
pub fn fill_metadata(template: &str, metadata: &BTreeMap<String, String>) -> Option<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(at) = rest.find(METADATA) {
        out.push_str(&rest[..at]);
        let after = &rest[at + METADATA.len()..];
        let end = after.find('}')?;
        out.push_str(metadata.get(&after[..end])?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// A base URL as requests use it: checked, without a trailing `/`.
pub fn check_base(field: &str, value: &str) -> Result<String, String> {
    let u = Url::parse(value).map_err(|e| format!("{field} is not a URL: {e}"))?;
    check_endpoint(field, &u)?;
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!("{field} must not carry user info"));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(format!("{field} must not have a query or fragment"));
    }
    if u.as_str().contains('{') || u.as_str().contains("%7B") {
        return Err(format!("{field} still has a {{placeholder}}: {u}"));
    }
    Ok(u.as_str().trim_end_matches('/').to_owned())
}

/// One problem of the proxy fields: the field's path inside the integration
/// (`api_base_url[1]`, `proxy_auth.header`) and what is wrong.
pub(super) type Problem = (String, String);

/// Parses the proxy fields (already `%NAME%`-expanded where they are
/// settings); every problem is kept, each named by its field.
pub(super) fn parse(
    api_base_url: Option<&Value>,
    rewrite: Option<bool>,
    auth: Option<RawProxyAuth>,
    headers: &BTreeMap<String, String>,
) -> Result<ProxyConfig, Vec<Problem>> {
    let mut problems: Vec<Problem> = Vec::new();
    let raw = raw_bases(api_base_url, &mut problems);
    let bases = bases(raw, &mut problems);
    let auth = proxy_auth(auth, &mut problems);
    let hs = proxy_headers(headers, &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(ProxyConfig {
        api_base_url: bases,
        rewrite_links: rewrite.unwrap_or(true),
        auth,
        headers: hs,
    })
}

/// `api_base_url` as (path, text) pairs: one URL or a non-empty list.
fn raw_bases(api_base_url: Option<&Value>, problems: &mut Vec<Problem>) -> Vec<(String, String)> {
    let mut fail = |at: String, why: String| problems.push((at, why));
    match api_base_url {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![("api_base_url".to_owned(), s.clone())],
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let at = format!("api_base_url[{i}]");
                match v.as_str() {
                    Some(s) => Some((at, s.to_owned())),
                    None => {
                        fail(at, "expected a string (a URL)".into());
                        None
                    }
                }
            })
            .collect(),
        Some(_) => {
            fail(
                "api_base_url".into(),
                "expected a URL or a non-empty array of URLs".into(),
            );
            Vec::new()
        }
    }
}

/// The bases checked: a `{metadata.NAME}` start followed by a path, or an
/// endpoint URL (see [`check_base`]); trailing `/` removed.
fn bases(raw: Vec<(String, String)>, problems: &mut Vec<Problem>) -> Vec<String> {
    let mut fail = |at: String, why: String| problems.push((at, why));
    let mut bases = Vec::new();
    for (at, b) in raw {
        if let Some(after) = b.strip_prefix(METADATA) {
            let Some((name, tail)) = after.split_once('}') else {
                fail(at, format!("{b:?}: unclosed {{metadata.…}}"));
                continue;
            };
            if !metadata_name_ok(name) || tail.contains('{') || tail.contains('?') {
                fail(
                    at,
                    format!("{b:?}: {{metadata.NAME}} may only start the URL, followed by a path"),
                );
                continue;
            }
            bases.push(b.trim_end_matches('/').to_owned());
        } else {
            match check_base("api_base_url", &b) {
                Ok(b) => bases.push(b),
                Err(why) => fail(at, why),
            }
        }
    }
    bases
}

/// `proxy_auth`: a header name and a one-word scheme (default `Authorization`, the token type).
fn proxy_auth(auth: Option<RawProxyAuth>, problems: &mut Vec<Problem>) -> ProxyAuth {
    let mut fail = |at: String, why: String| problems.push((at, why));
    match auth {
        None => ProxyAuth::default(),
        Some(a) => {
            let header = a.header.unwrap_or_else(|| "Authorization".into());
            if actix_web::http::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
                fail(
                    "proxy_auth.header".into(),
                    format!("{header:?} is not a header name"),
                );
            }
            if a.scheme.as_deref().is_some_and(|s| {
                !s.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            }) {
                fail(
                    "proxy_auth.scheme".into(),
                    "must be a single word (letters, digits, -_.), or \"\" for the bare token"
                        .into(),
                );
            }
            ProxyAuth {
                header,
                scheme: a.scheme,
            }
        }
    }
}

/// `proxy_headers`: valid header names and values (templates are filled per request).
fn proxy_headers(
    headers: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> Vec<(String, String)> {
    let mut hs = Vec::new();
    for (k, v) in headers {
        if actix_web::http::header::HeaderName::from_bytes(k.as_bytes()).is_err()
            || actix_web::http::header::HeaderValue::from_str(v).is_err()
        {
            problems.push((format!("proxy_headers.{k}"), "is not a valid header".into()));
        }
        hs.push((k.clone(), v.clone()));
    }
    hs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bases_are_checked_and_trimmed() {
        let p = parse(
            Some(&json!([
                "https://api.example.com/v1/",
                "{metadata.instance_url}/services"
            ])),
            None,
            None,
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(
            p.api_base_url,
            [
                "https://api.example.com/v1",
                "{metadata.instance_url}/services"
            ]
        );
        assert!(p.rewrite_links);
        for bad in [
            json!("http://api.example.com"),
            json!("https://u:p@api.example.com"),
            json!("https://api.example.com/?x=1"),
            json!([]),
            json!(3),
            json!("https://{shop}.example.com"),
            json!("https://x.example.com/{metadata.a}"),
        ] {
            assert!(
                parse(Some(&bad), None, None, &BTreeMap::new()).is_err(),
                "{bad}"
            );
        }
        assert!(parse(
            Some(&json!("http://127.0.0.1:9/api")),
            None,
            None,
            &BTreeMap::new()
        )
        .is_ok());
    }

    #[test]
    fn metadata_fills_or_is_missing() {
        let m: BTreeMap<String, String> = [("a".to_owned(), "https://x".to_owned())].into();
        assert_eq!(
            fill_metadata("{metadata.a}/v1", &m).as_deref(),
            Some("https://x/v1")
        );
        assert_eq!(fill_metadata("{metadata.b}", &m), None);
        assert_eq!(fill_metadata("plain", &m).as_deref(), Some("plain"));
    }
}
