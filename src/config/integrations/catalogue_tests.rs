//! Checks every template of the built-in catalogue: it builds into an
//! integration with https endpoints, declares its placeholders, cites its
//! vendor's documentation and says where its account comes from.

use serde_json::{Map, Value};

use super::file::tests::one;
use super::{catalogue, parse_account, Integration};
use crate::config::tests::env;

#[test]
fn every_template_in_the_catalogue_builds_with_https_urls_and_declared_placeholders() {
    assert!(catalogue().len() >= 40);
    for (name, template) in catalogue() {
        let t = template
            .as_object()
            .unwrap_or_else(|| panic!("{name} is an object"));
        check_documentation(name, t);
        check_account(name, t);
        let requires = requires(t);
        check_placeholders_are_declared(name, t, &requires);
        let i = build(name, &requires);
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
        check_proxy(name, &i);
    }
}

/// Docs (https), whether refresh tokens rotate, and notes.
fn check_documentation(name: &str, t: &Map<String, Value>) {
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
}

/// Every template says where its account comes from, citing the vendor's
/// page, or why there is no stable identifier.
fn check_account(name: &str, t: &Map<String, Value>) {
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
}

/// The placeholders the template declares (`requires`).
fn requires(t: &Map<String, Value>) -> Vec<&str> {
    t.get("requires")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Every `{placeholder}` of the template is in `requires`.
fn check_placeholders_are_declared(name: &str, t: &Map<String, Value>, requires: &[&str]) {
    let text = serde_json::to_string(t).unwrap();
    for piece in text.split('{').skip(1) {
        if let Some(ph) = piece
            .split('}')
            .next()
            .filter(|p| p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !p.is_empty())
        {
            assert!(
                requires.contains(&ph),
                "{name}: placeholder {{{ph}}} is not declared in requires"
            );
        }
    }
}

/// An integration from the template, every placeholder filled with `example`.
fn build(name: &str, requires: &[&str]) -> Integration {
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
    one(&file.to_string(), &env(&[])).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The proxy: every template says where the API is, and every `{metadata.NAME}`
/// its bases and headers use is metadata the template captures.
fn check_proxy(name: &str, i: &Integration) {
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
