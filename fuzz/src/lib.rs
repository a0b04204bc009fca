//! The checks behind each fuzz target: run the broker's parser of outside input on arbitrary
//! bytes and assert what must hold for every input (no panic, no secret in anything printed, safe
//! keys, escaped pages). The fuzz targets call them; so does tests/fuzz_regressions.rs, which
//! replays the corpus in fuzz/corpus/ (every crash found is kept there) on every `cargo test`.
//! Plain Rust with no libFuzzer types, so that test can include this file.

use oauth_broker::config::integrations::parse;
use oauth_broker::consent::cookie_name;
use oauth_broker::functions_host::InvocationRequest;
use oauth_broker::fuzzing;
use serde_json::Value;
use std::path::Path;
use std::sync::OnceLock;

use oauth_broker::config::integrations::MAX_LIFETIME;
use oauth_broker::config::Integration;
use time::{Duration, OffsetDateTime};

/// Two integrations whose lifetimes a token response sets: in seconds and in milliseconds.
fn lifetime_integrations() -> &'static [Integration] {
    static INTEGRATIONS: OnceLock<Vec<Integration>> = OnceLock::new();
    INTEGRATIONS.get_or_init(|| {
        let file = r#"{"integrations": {
            "s": {"authorization_url": "https://a.example/auth", "token_url": "https://a.example/token",
                  "client_id": "c", "client_secret": "s"},
            "ms": {"authorization_url": "https://a.example/auth", "token_url": "https://a.example/token",
                   "client_id": "c", "client_secret": "s", "expires_in_unit": "milliseconds"}}}"#;
        let parsed = parse(file, Path::new("integrations.json"), &|_| None)
            .unwrap_or_else(|e| panic!("the fixed integrations file parses: {e}"));
        parsed.ready.into_values().collect()
    })
}

/// The token endpoint's answer (code exchange, refresh): any status, JSON or form body.
pub fn token_response(data: &[u8]) {
    let [a, b, flags, body @ ..] = data else {
        return;
    };
    let status = u16::from_le_bytes([*a, *b]) % 600;
    let is_form = flags & 1 == 1;
    let fields = [
        "instance_url".to_owned(),
        "realmId".to_owned(),
        "refresh_token".to_owned(),
        "id_token".to_owned(),
        "n".to_owned(),
    ];
    match fuzzing::token_response(status, is_form, body, &fields) {
        Ok(r) => {
            assert!((200..300).contains(&status), "success only on a 2xx");
            assert!(!r.access_token.expose().is_empty());
            assert!(!matches!(&r.refresh_token, Some(t) if t.expose().is_empty()));
            // Tokens are never kept as metadata, and never printed.
            assert!(
                !r.metadata.contains_key("refresh_token") && !r.metadata.contains_key("id_token")
            );
            assert_eq!(format!("{:?}", r.access_token), "Secret([redacted])");
            // Whatever `expires_in` says, the lifetime believed is 1 s to 10 years and meets a clock
            // without overflow (issue 10 item 1).
            for i in lifetime_integrations() {
                let l = i.lifetime(r.expires_in);
                assert!(
                    l >= Duration::seconds(1) && l <= MAX_LIFETIME,
                    "lifetime {l}"
                );
                let _ = OffsetDateTime::now_utc().saturating_add(l);
            }
        }
        Err(e) => {
            let _ = (e.to_string(), e.is_transient(), e.is_dead_grant());
        }
    }
}

/// What every %NAME% setting expands to: it must never appear in an error.
const SETTING: &str = "setting-value-7Qm2vX9kLp4RzT8w";
/// The integrations file (and the vendor templates and %NAME% settings it pulls in).
pub fn integrations_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let get = |name: &str| (!name.ends_with('X')).then(|| SETTING.to_owned());
    if let Err(e) = parse(text, Path::new("integrations.json"), &get) {
        let message = format!("{e} {e:?}");
        assert!(
            text.contains(SETTING) || !message.contains(SETTING),
            "an error shows a setting's value: {message}"
        );
    }
}

/// The Functions host's invocation envelope POSTed to the timer function.
pub fn timer_envelope(data: &[u8]) {
    let _ = InvocationRequest::parse(data);
}

/// The vendor's redirect to /api/auth/callback: its query string, and the page shown for an error.
pub fn callback_query(data: &[u8]) {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let Some(cb) = fuzzing::callback(query) else {
        return;
    };
    if let Some(h) = &cb.state_hash {
        assert_eq!(h.len(), 43, "a SHA-256 in unpadded base64url");
        let _ = cookie_name(h);
    }
    if let Some(code) = &cb.code {
        assert_eq!(format!("{code:?}"), "Secret([redacted])");
    }
    if let (Some(error), Some(page)) = (&cb.error, &cb.page) {
        assert!(error.chars().count() <= 64);
        // Vendor text adds no markup: the page has as many '<' and '>' as the same page with every
        // character HTML gives meaning to replaced by a plain one.
        let plain = |s: &str| s.replace(['<', '>', '&', '"', '\''], "x");
        let baseline = fuzzing::refusal_page(
            &plain(error),
            cb.description.as_deref().map(plain).as_deref(),
        );
        for c in ['<', '>'] {
            assert_eq!(
                page.matches(c).count(),
                baseline.matches(c).count(),
                "vendor text shown unescaped"
            );
        }
    }
}

/// A consent link's token as GET /api/auth/link?t= receives it.
pub fn consent_link(data: &[u8]) {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(key) = fuzzing::consent_link(query) {
        // The lookup key is a hash: always safe as a Table Storage key.
        assert_eq!(key.len(), 43);
        assert!(key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }
}

/// A row read back from the store (Table Storage entity), read as a connection, a pending
/// authorization and a consent link. Input: an entity as JSON, a NUL byte, then the plaintext that
/// a property set to "seal" is sealed from (so decoding after decryption is reached).
pub fn stored_row(data: &[u8]) {
    let (entity_text, plaintext) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(Value::Object(entity)) = serde_json::from_slice::<Value>(entity_text) else {
        return;
    };
    let read = fuzzing::stored_row(entity, plaintext);
    // A sealed token never shows in anything printed about the row.
    let tokens: Vec<String> = match serde_json::from_slice::<Value>(plaintext) {
        Ok(Value::Object(t)) => ["a", "r"]
            .iter()
            .filter_map(|k| t.get(*k)?.as_str().map(str::to_owned))
            .filter(|t| t.len() >= 12 && !String::from_utf8_lossy(entity_text).contains(t.as_str()))
            .collect(),
        _ => Vec::new(),
    };
    let printed = format!("{read:?}");
    for t in &tokens {
        assert!(!printed.contains(t.as_str()), "a sealed token is printed");
    }
    if let Ok(Some(r)) = &read.connection {
        assert!(!r.integration.as_str().is_empty() && !r.connection.as_str().is_empty());
    }
}

/// The proxy's path check (`/api/proxy/{integration}/{connection}<path>?<query>`): whatever the
/// input, an accepted path yields a URL on the chosen base's origin, under its path, with no `.` or
/// `..` segment, no user info, and no `code` parameter.
pub fn proxy_path(data: &[u8]) {
    if let Err(e) = check_proxy_path(data) {
        panic!("{e}");
    }
}

fn check_proxy_path(data: &[u8]) -> Result<(), String> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(());
    };
    let (path, query) = text.split_once('?').unwrap_or((text, ""));
    let bases = ["https://api.example.com/v1", "https://upload.example.com"];
    let Ok((k, url)) = fuzzing::proxy_upstream(path, query, &bases) else {
        return Ok(());
    };
    // (host, path prefix) of each base: the URL must name that host and lie under that path.
    let expected = [("api.example.com", "/v1"), ("upload.example.com", "")][k];
    if url.scheme() != "https" || url.host_str() != Some(expected.0) || url.port().is_some() {
        return Err(format!("{path:?} left the origin: {url}"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{path:?} added user info: {url}"));
    }
    if !url.path().starts_with(expected.1) {
        return Err(format!("{path:?} left the base path: {url}"));
    }
    for seg in url.path_segments().into_iter().flatten() {
        let lower = seg.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "." | ".." | "%2e" | "%2e%2e" | ".%2e" | "%2e."
        ) {
            return Err(format!("{path:?} kept a dot segment: {url}"));
        }
    }
    if url
        .query_pairs()
        .any(|(k, _)| k.eq_ignore_ascii_case("code"))
    {
        return Err(format!("the code parameter reached the vendor: {url}"));
    }
    Ok(())
}

/// The proxy's link rewriter: a valid JSON body stays valid JSON with the same shape; each string
/// is unchanged or was a URL under a base (at a boundary) now under the proxy with the same rest.
/// A `Link` header is rewritten without panicking.
pub fn link_rewriter(data: &[u8]) {
    if let Err(e) = check_link_rewriter(data) {
        panic!("{e}");
    }
}

fn check_link_rewriter(data: &[u8]) -> Result<(), String> {
    let bases = vec![
        "https://api.example.com/v1".to_owned(),
        "https://up.example.com".to_owned(),
    ];
    let proxy = "https://broker.example/api/proxy/i/c";
    let (out, _header) = fuzzing::rewrite_links(&bases, proxy, data);
    let Some(out) = out else {
        return Ok(());
    };
    let Ok(before) = serde_json::from_slice::<Value>(data) else {
        return Ok(());
    };
    let after: Value =
        serde_json::from_slice(&out).map_err(|e| format!("valid JSON became invalid: {e}"))?;
    same_shape(&before, &after, &bases, proxy)
}

fn same_shape(a: &Value, b: &Value, bases: &[String], proxy: &str) -> Result<(), String> {
    match (a, b) {
        (Value::String(x), Value::String(y)) if x == y => Ok(()),
        (Value::String(x), Value::String(y)) => {
            let ok = bases.iter().enumerate().any(|(k, base)| {
                let to = if k == 0 {
                    proxy.to_owned()
                } else {
                    format!("{proxy}/~{k}")
                };
                x.strip_prefix(base.as_str()).is_some_and(|rest| {
                    (rest.is_empty() || rest.starts_with(['/', '?', '#']))
                        && *y == format!("{to}{rest}")
                })
            });
            ok.then_some(())
                .ok_or_else(|| format!("{x:?} was rewritten to {y:?}"))
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .try_for_each(|(p, q)| same_shape(p, q, bases, proxy)),
        (Value::Object(x), Value::Object(y)) if x.len() == y.len() => {
            x.iter().zip(y).try_for_each(|((kx, p), (ky, q))| {
                if kx != ky {
                    return Err(format!("key {kx:?} became {ky:?}"));
                }
                same_shape(p, q, bases, proxy)
            })
        }
        (x, y) if x == y => Ok(()),
        (x, y) => Err(format!("{x} became {y}")),
    }
}
