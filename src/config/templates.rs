//! Vendor templates: the built-in catalogue (`providers.json`, compiled into
//! the binary) and how an integration is merged over its template, with
//! `{placeholders}` filled.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use super::error::ConfigError;
use super::expand::{expand, Ctx};

/// The built-in vendor templates.
pub fn catalogue() -> &'static Map<String, Value> {
    static CATALOGUE: OnceLock<Map<String, Value>> = OnceLock::new();
    CATALOGUE.get_or_init(|| {
        serde_json::from_str(include_str!("providers.json"))
            .expect("providers.json is validated by the unit tests")
    })
}

/// Merges the integration over its template (if it names one), filling `{placeholders}`.
pub(super) fn apply_template(
    ctx: &Ctx<'_>,
    mut own: Map<String, Value>,
) -> Result<Map<String, Value>, ConfigError> {
    let placeholders = own.remove("placeholders");
    let Some(provider) = own
        .get("provider")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        if placeholders.is_some() {
            return Err(ctx.fail("placeholders are only used with a provider template"));
        }
        return Ok(own);
    };
    let mut template = template_of(ctx, &provider)?;
    let requires = strings(template.remove("requires").as_ref());
    let defaults = template.remove("defaults");
    let values = placeholder_values(ctx, &provider, &requires, defaults, placeholders)?;
    fill(&mut template, &values);
    merge(&mut template, own);
    Ok(template)
}

/// A copy of the catalogue's template `provider`, without its documentation-only fields.
fn template_of(ctx: &Ctx<'_>, provider: &str) -> Result<Map<String, Value>, ConfigError> {
    let Some(Value::Object(template)) = catalogue().get(provider) else {
        let known: Vec<&str> = catalogue().keys().map(String::as_str).collect();
        return Err(ctx.fail(format!(
            "provider {provider:?} is not in the catalogue; known: {}",
            known.join(", ")
        )));
    };
    let mut template = template.clone();
    // Documentation only (the generated docs/vendors.md shows them).
    template.remove("notes");
    template.remove("token_rate_limit");
    template.remove("rotates_refresh_token");
    Ok(template)
}

/// The placeholder values: the template's `defaults`, then the integration's
/// `placeholders` (each one the template takes, a host name part); every
/// placeholder the template `requires` must have one.
fn placeholder_values(
    ctx: &Ctx<'_>,
    provider: &str,
    requires: &[String],
    defaults: Option<Value>,
    placeholders: Option<Value>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut values: BTreeMap<String, String> = match defaults {
        Some(Value::Object(m)) => m
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_str()?.to_owned())))
            .collect(),
        _ => BTreeMap::new(),
    };
    match placeholders {
        None => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let Some(v) = v.as_str() else {
                    return Err(ctx.fail(format!("placeholders.{k} must be a string")));
                };
                if !requires.contains(&k) {
                    return Err(ctx.fail(format!(
                        "provider {provider} has no placeholder {{{k}}}; it takes: {}",
                        requires.join(", ")
                    )));
                }
                let v = expand(ctx, &format!("placeholders.{k}"), v)?;
                if v.is_empty()
                    || !v
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
                {
                    return Err(ctx.fail(format!("placeholders.{k} must be a host name part (letters, digits, '-', '.', '_')")));
                }
                values.insert(k, v);
            }
        }
        Some(_) => {
            return Err(ctx.fail(
                "placeholders must be an object, e.g. {\"tenant\": \"contoso.onmicrosoft.com\"}",
            ))
        }
    }
    for r in requires {
        if !values.contains_key(r) {
            return Err(ctx.fail(format!("provider {provider} needs the placeholder {{{r}}}: add \"placeholders\": {{\"{r}\": \"...\"}}")));
        }
    }
    Ok(values)
}

/// The integration's own fields over the template's; objects named `*_params` are merged.
fn merge(template: &mut Map<String, Value>, own: Map<String, Value>) {
    for (k, v) in own {
        match (template.get_mut(&k), v) {
            (Some(Value::Object(base)), Value::Object(over)) if k.ends_with("_params") => {
                base.extend(over)
            }
            (_, v) => {
                template.insert(k, v);
            }
        }
    }
}

fn fill(m: &mut Map<String, Value>, values: &BTreeMap<String, String>) {
    for v in m.values_mut() {
        match v {
            Value::String(s) => {
                for (k, val) in values {
                    *s = s.replace(&format!("{{{k}}}"), val);
                }
            }
            Value::Object(o) => fill(o, values),
            _ => {}
        }
    }
}

/// `docs/vendors.md`: the catalogue for people, generated from `providers.json`
/// (a unit test keeps the file equal; `UPDATE_VENDORS_DOC=1 cargo test --lib
/// vendors_doc` rewrites it).
pub fn vendors_markdown() -> String {
    let mut out = String::from(VENDORS_HEAD);
    out.push_str("| provider | placeholders | refresh | quirks handled | documentation |\n|---|---|---|---|---|\n");
    for (name, t) in catalogue() {
        let Some(t) = t.as_object() else { continue };
        let docs = strings(t.get("docs"));
        out.push_str(&format!(
            "| [`{name}`](#{name}) | {} | {} | {} | {} |\n",
            cell(&placeholders(t)),
            cell(&refresh_summary(t)),
            cell(&quirks(t).join("; ")),
            docs.first()
                .map(|d| format!("[{}]({d})", host_of(d)))
                .unwrap_or_default()
        ));
    }
    out.push_str("\n## The templates\n");
    for (name, t) in catalogue() {
        let Some(t) = t.as_object() else { continue };
        template_section(&mut out, name, t);
    }
    out.push_str(VENDORS_TAIL);
    out
}

/// One template's section of `docs/vendors.md`.
fn template_section(out: &mut String, name: &str, t: &Map<String, Value>) {
    out.push_str(&format!("\n### {name}\n\n"));
    if let Some(n) = t.get("notes").and_then(Value::as_str) {
        out.push_str(&format!("{}\n\n", capitalise(n)));
    }
    let field = |k: &str| t.get(k).and_then(Value::as_str);
    for (label, k) in [
        ("Authorization", "authorization_url"),
        ("Token", "token_url"),
        ("Refresh", "refresh_url"),
        ("Revocation", "revocation_url"),
    ] {
        if let Some(u) = field(k) {
            out.push_str(&format!("- {label} endpoint: `{u}`\n"));
        }
    }
    proxy_lines(out, t);
    out.push_str(&format!("- Placeholders: {}\n", placeholders(t)));
    out.push_str(&format!("- Refresh: {}\n", refresh_summary(t)));
    for q in quirks(t) {
        out.push_str(&format!("- {q}\n"));
    }
    if let Some(limit) = field("token_rate_limit") {
        out.push_str(&format!("- Token endpoint limit: {limit}\n"));
    }
    match (t.get("account"), field("account_note")) {
        (Some(Value::Object(a)), _) => out.push_str(&format!("- Account: {}\n", account(a))),
        (_, Some(note)) => out.push_str(&format!("- Account: none documented ({note})\n")),
        _ => {}
    }
    let docs: Vec<String> = strings(t.get("docs"))
        .iter()
        .map(|d| format!("<{d}>"))
        .collect();
    out.push_str(&format!("- Source: {}\n", docs.join(", ")));
}

/// The API base and how the proxy presents the token and fills headers.
fn proxy_lines(out: &mut String, t: &Map<String, Value>) {
    let bases = strings(t.get("api_base_url"));
    if !bases.is_empty() {
        let list: Vec<String> = bases.iter().map(|b| format!("`{b}`")).collect();
        out.push_str(&format!("- API base: {}\n", list.join(", ")));
    }
    if let Some(Value::Object(a)) = t.get("proxy_auth") {
        let header = a
            .get("header")
            .and_then(Value::as_str)
            .unwrap_or("Authorization");
        let value = match a.get("scheme").and_then(Value::as_str) {
            Some("") => "<token>".to_owned(),
            Some(s) => format!("{s} <token>"),
            None => "<token_type> <token>".to_owned(),
        };
        out.push_str(&format!("- Proxy sends the token as `{header}: {value}`\n"));
    }
    if let Some(Value::Object(h)) = t.get("proxy_headers") {
        for (k, v) in h {
            if let Some(v) = v.as_str() {
                out.push_str(&format!(
                    "- Proxy adds `{k}: {v}` when the caller sends no `{k}`\n"
                ));
            }
        }
    }
}

const VENDORS_HEAD: &str = "# Vendor templates

<!-- Generated from src/config/providers.json by `config::templates::vendors_markdown`; a unit test
keeps this file equal to it. Edit providers.json, then run
`UPDATE_VENDORS_DOC=1 cargo test --lib vendors_doc` to rewrite it. -->

Name a vendor with `\"provider\"` in an integration and the broker fills the endpoints, client
authentication, PKCE, scope separator, required extra parameters, the metadata to capture and the
vendor's quirks from this catalogue (compiled into the binary). Fields you set explicitly win over
the template (objects named `*_params` are merged). Each template cites the vendor's own
documentation it was checked against; vendors change, so a template's notes say what was true then.

```json
{\"integrations\": {
  \"tickets\": {\"provider\": \"zendesk\", \"placeholders\": {\"subdomain\": \"acme\"},
              \"client_id\": \"%ZENDESK_ID%\", \"client_secret\": \"%ZENDESK_SECRET%\", \"scopes\": [\"read\"]}
}}
```

Quirk fields a template (or any integration) may carry, beside those in
[the configuration guide](configuration.md#vendor-templates): `expires_at_field` (the token-response field with an
absolute expiry, ISO 8601 or epoch seconds, used when `expires_in` is missing),
`no_expires_in_means_never` (no lifetime, or `expires_in: 0`, means the token does not expire: it is
served as is, never refreshed, and the status page says *never*), `refresh_url` and `refresh_params`
(refreshes go elsewhere, with extra parameters), `renew` (`{\"grant_type\": \"fb_exchange_token\",
\"token_param\": …, \"method\": \"GET\", \"url\": …, \"params\": {…}}`: a grant without a refresh token
is renewed by exchanging its still-valid access token, scheduled, single-flighted and classified
like a refresh), `refresh_token_max_days` (the vendor ends the grant this long after consent
whatever its use: stored as the `refresh_token_expires_at` metadata, shown on the status page, and
told once per grant by `connection.refresh_token_expiring` 30 days before the end, or in the
second half of a shorter grant), `post_consent` (`{\"url\", \"auth_scheme\", \"metadata\": {\"name\":
\"/json/pointer\"}}`: one GET with the new access token right after consent, its answer capped at
64 KiB, never followed through a redirect, and kept as metadata; a failed call keeps the grant
without that metadata), `docs` and `api_base_url` (a URL or a list; https; `{metadata.NAME}` at its
start is the connection's metadata, e.g. Salesforce's `instance_url`: where the
[proxy](data-factory.md#the-proxy-pipelines-call-the-vendor-through-the-broker) sends requests),
`proxy_auth` / `proxy_headers` (how the proxy presents the token, and headers it fills from
metadata). `account` /
`account_note` name the vendor's account identifier (for account binding).

";

const VENDORS_TAIL: &str = "
## Vendors that do not need the broker, or that it does not cover

- **ServiceTitan** and other client-credentials-only APIs: there is no consent and no refresh token;
  Data Factory's REST connector gets the token itself (authentication type *OAuth2 Client
  Credential*), so no template is offered.
- **Stripe Connect**: a platform reads its connected accounts with its own secret key and the
  `Stripe-Account` header; Stripe documents Connect OAuth as legacy, so no template is offered.
- **Amazon Selling Partner API** website authorization returns `spapi_oauth_code` (not `code`) to
  the redirect URI and its consent starts from Seller Central; the `amazon` template covers Login
  with Amazon (Amazon Ads), not that flow.
";

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => {
            f.to_uppercase().chain(c).collect::<String>() + if s.ends_with('.') { "" } else { "." }
        }
        None => String::new(),
    }
}

fn host_of(u: &str) -> String {
    url::Url::parse(u)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| u.to_owned())
}

fn placeholders(t: &Map<String, Value>) -> String {
    let defaults = t.get("defaults").and_then(Value::as_object);
    let list: Vec<String> = strings(t.get("requires"))
        .iter()
        .map(
            |r| match defaults.and_then(|d| d.get(r)).and_then(Value::as_str) {
                Some(d) => format!("`{{{r}}}` (default `{d}`)"),
                None => format!("`{{{r}}}`"),
            },
        )
        .collect();
    if list.is_empty() {
        "—".into()
    } else {
        list.join(", ")
    }
}

fn refresh_summary(t: &Map<String, Value>) -> String {
    let num = |k: &str| t.get(k).and_then(Value::as_u64);
    if let Some(r) = t.get("renew").and_then(Value::as_object) {
        let g = r.get("grant_type").and_then(Value::as_str).unwrap_or("?");
        return format!("exchange of the access token (`{g}`)");
    }
    let expects = t.get("expects_refresh_token").and_then(Value::as_bool) != Some(false);
    let never = t.get("no_expires_in_means_never").and_then(Value::as_bool) == Some(true);
    let mut parts = Vec::new();
    if expects {
        parts.push(
            match t.get("rotates_refresh_token").and_then(Value::as_bool) {
                Some(true) => "refresh token, rotating",
                Some(false) => "refresh token, reused",
                None => "refresh token",
            }
            .to_owned(),
        );
    } else if never {
        parts.push("none needed (tokens without a lifetime do not expire)".into());
    } else {
        parts.push("refresh token when the vendor sends one".into());
    }
    if let Some(d) = num("refresh_token_idle_days") {
        parts.push(format!("dies after {d} days unused"));
    }
    if let Some(d) = num("refresh_token_max_days") {
        parts.push(format!("grant ends {d} days after consent"));
    }
    parts.join("; ")
}

fn quirks(t: &Map<String, Value>) -> Vec<String> {
    let s = |k: &str| t.get(k).and_then(Value::as_str);
    let b = |k: &str| t.get(k).and_then(Value::as_bool);
    let list = |k: &str| strings(t.get(k));
    let mut q = Vec::new();
    q.push(match s("client_auth") {
        Some("post") => "client credentials in the request body".to_owned(),
        _ => "HTTP Basic client authentication".to_owned(),
    });
    if s("token_body") == Some("json") {
        q.push("JSON token requests".into());
    }
    if b("pkce") == Some(false) {
        q.push("no PKCE".into());
    }
    if let Some(sep) = s("scope_separator") {
        q.push(format!("scopes separated by `{sep}`"));
    }
    let rts = list("refresh_token_scopes");
    if !rts.is_empty() {
        q.push(format!("`{}` added to the scopes", rts.join("`, `")));
    }
    if let Some(Value::Object(p)) = t.get("authorization_params") {
        let kv: Vec<String> = p
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        q.push(format!("authorization parameters `{}`", kv.join("&")));
    }
    if let Some(f) = s("expires_at_field") {
        q.push(format!("absolute expiry read from `{f}`"));
    }
    if let Some(secs) = t.get("default_expires_in_secs").and_then(Value::as_u64) {
        q.push(format!("no expires_in: {secs} s assumed"));
    }
    if b("no_expires_in_means_never") == Some(true) {
        q.push("no expires_in (or 0): does not expire".into());
    }
    if s("refresh_url").is_some() {
        q.push("refreshes at their own endpoint".into());
    }
    let cb = list("callback_metadata");
    if !cb.is_empty() {
        q.push(format!("callback metadata `{}`", cb.join("`, `")));
    }
    let tm = list("token_metadata");
    if !tm.is_empty() {
        q.push(format!("token metadata `{}`", tm.join("`, `")));
    }
    if let Some(Value::Object(pc)) = t.get("post_consent") {
        let names: Vec<&String> = pc
            .get("metadata")
            .and_then(Value::as_object)
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        q.push(format!(
            "after consent: `{}` from {}",
            names.join("`, `"),
            pc.get("url").and_then(Value::as_str).unwrap_or_default()
        ));
    }
    if s("revocation_url").is_none() {
        q.push("no revocation endpoint (deleting forgets the grant only)".into());
    }
    q
}

fn account(a: &Map<String, Value>) -> String {
    let s = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or_default();
    match s("from") {
        "id_token" => "the id_token's issuer and subject".into(),
        "token_field" => format!("token-response field `{}`", s("pointer")),
        "callback_param" => format!("callback parameter `{}`", s("name")),
        "userinfo" => format!("`{}` of GET {}", s("pointer"), s("url")),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn vendors_doc_is_generated_from_the_catalogue() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/vendors.md");
        let want = super::vendors_markdown();
        if std::env::var_os("UPDATE_VENDORS_DOC").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "docs/vendors.md differs from providers.json: run `UPDATE_VENDORS_DOC=1 cargo test --lib vendors_doc`"
        );
        for name in super::catalogue().keys() {
            assert!(want.contains(&format!("\n### {name}\n")), "{name}");
        }
    }

    #[test]
    fn the_configuration_guide_points_to_the_generated_vendor_list_instead_of_copying_it() {
        let readme = include_str!("../../docs/configuration.md");
        assert!(readme.contains("(vendors.md)"));
        for name in super::catalogue().keys() {
            assert!(
                !readme.contains(&format!("| `{name}` |")),
                "docs/configuration.md copies the {name} row: keep the table in docs/vendors.md only"
            );
        }
    }
}
