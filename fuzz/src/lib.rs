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

/// An `Authorization` header value as the Entra ID check reads it (Bearer token, JWT header and
/// claims). A token is accepted only with this tenant's issuer, an accepted audience, the tenant,
/// a lifetime around the fixed clock and a GUID object id; the caller is that object id.
pub fn entra_token(data: &[u8]) {
    const NOW: i64 = 1_800_000_000;
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let Some(Ok(caller)) = fuzzing::entra_authorization(value, NOW) else {
        return;
    };
    let token = value
        .trim()
        .split_once(' ')
        .map(|(_, t)| t.trim())
        .unwrap_or_default();
    let claims = token.split('.').nth(1).unwrap_or_default();
    use base64::Engine as _;
    let claims: Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .expect("an accepted token's claims decode");
    let iss = claims["iss"].as_str().unwrap_or_default();
    assert!(
        iss == format!("https://sts.windows.net/{}/", fuzzing::ENTRA_TENANT)
            || iss
                == format!(
                    "https://login.microsoftonline.com/{}/v2.0",
                    fuzzing::ENTRA_TENANT
                ),
        "accepted issuer {iss}"
    );
    assert!(claims["tid"]
        .as_str()
        .is_some_and(|t| t.eq_ignore_ascii_case(fuzzing::ENTRA_TENANT)));
    let exp = claims["exp"].as_f64().expect("an accepted token has exp");
    assert!(exp >= (NOW - 300) as f64);
    assert!(
        caller.object_id.len() == 36 && !caller.object_id.bytes().any(|b| b.is_ascii_uppercase())
    );
}
