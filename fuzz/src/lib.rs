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

/// Splits at the first two NUL bytes: three parts (missing ones empty).
fn three(data: &[u8]) -> [&[u8]; 3] {
    let mut parts = data.splitn(3, |&b| b == 0);
    [(); 3].map(|_| parts.next().unwrap_or_default())
}

/// A JSON object, or an empty one for empty input; `None` for anything else.
fn object(bytes: &[u8]) -> Option<serde_json::Map<String, Value>> {
    if bytes.is_empty() {
        return Some(serde_json::Map::new());
    }
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// A secret of the input never shows in what is printed about the outcome: it occurs there no
/// more often than another secret of its length does when the same input is read with that one
/// instead (the secret may also be part of text that is printed anyway).
fn not_printed<T: std::fmt::Debug>(secret: &str, first: &T, again: impl Fn(&str) -> T) {
    if secret.len() < 8 {
        return;
    }
    let other: String = secret
        .chars()
        .map(|c| if c == 'q' { 'z' } else { 'q' })
        .collect();
    let (a, b) = (format!("{first:?}"), format!("{:?}", again(&other)));
    assert!(
        a.matches(secret).count() <= b.matches(secret).count(),
        "the secret is printed"
    );
}

/// `POST /api/oauth2/token`: its form (grant_type, client_id, client_secret, scope, resource) and
/// client authentication. Input: the Content-Type value, a NUL, the Authorization value, a NUL, the
/// body (an empty header part: no such header).
pub fn token_form(data: &[u8]) {
    let [ct, auth, body] = three(data);
    let header = |p: &[u8]| (!p.is_empty()).then(|| p.to_vec());
    let (ct, auth) = (header(ct), header(auth));
    let Some(read) = fuzzing::token_form(ct.as_deref(), auth.as_deref(), body) else {
        return;
    };
    // The form as a client wrote it; empty values count as absent.
    let pairs: Vec<(String, String)> = form_urlencoded::parse(body)
        .into_owned()
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let basic = auth.as_deref().and_then(fuzzing::basic).flatten();
    match read {
        Ok((id, secret, scope, resource)) => {
            let ct = String::from_utf8_lossy(ct.as_deref().unwrap_or_default()).to_string();
            assert!(
                ct.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded"),
                "a body that is not a form was read as one"
            );
            let mut names: Vec<&str> = pairs.iter().map(|(n, _)| n.as_str()).collect();
            names.sort_unstable();
            let before = names.len();
            names.dedup();
            assert_eq!(before, names.len(), "a repeated parameter was accepted");
            assert_eq!(get("grant_type").as_deref(), Some("client_credentials"));
            assert_eq!((scope, resource), (get("scope"), get("resource")));
            assert!(!id.is_empty() && !secret.expose().is_empty());
            assert_eq!(format!("{secret:?}"), "Secret([redacted])");
            match basic {
                // HTTP Basic: its id and secret, never a posted secret as well.
                Some(Ok((bid, bsecret))) => {
                    assert_eq!((&id, secret.expose()), (&bid, bsecret.expose()));
                    assert_eq!(get("client_secret"), None, "two authentication methods");
                    assert!(get("client_id").is_none_or(|p| p == bid));
                }
                Some(Err(())) => panic!("malformed Basic credentials were accepted"),
                None => {
                    assert_eq!(Some(id), get("client_id"));
                    assert_eq!(Some(secret.expose().to_owned()), get("client_secret"));
                }
            }
        }
        Err((status, answer)) => {
            // RFC 6749 §5.2: a JSON object of exactly error and error_description.
            let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&answer) else {
                panic!("the error answer is not a JSON object: {answer}");
            };
            let error = m.get("error").and_then(Value::as_str).unwrap_or_default();
            assert!(m.len() == 2 && m.get("error_description").is_some_and(Value::is_string));
            match error {
                "invalid_client" => assert_eq!(status, 401),
                "invalid_request" | "unsupported_grant_type" => assert_eq!(status, 400),
                other => panic!("unexpected error code {other} ({status})"),
            }
            // Never the secret presented (posted or Basic): the answer is the same with another.
            let other = |v: &str| {
                if v.is_empty() {
                    String::new()
                } else {
                    format!("other-{}", v.len())
                }
            };
            let body2: String = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form_urlencoded::parse(body).map(|(k, v)| {
                    let v = if k == "client_secret" {
                        other(&v)
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                }))
                .finish();
            let auth2 = match &basic {
                Some(Ok((id, secret))) => {
                    Some(fuzzing::basic_header(id, &other(secret.expose())).into_bytes())
                }
                _ => auth.clone(),
            };
            if auth2
                .as_ref()
                .is_some_and(|a| a.len() > 1024 + "Basic ".len())
            {
                return;
            }
            match fuzzing::token_form(ct.as_deref(), auth2.as_deref(), body2.as_bytes()) {
                Some(Err(again)) => {
                    assert_eq!(again, (status, answer), "the answer depends on the secret")
                }
                other => panic!("another secret changed the outcome: {other:?}"),
            }
        }
    }
}

/// HTTP Basic client credentials (the Authorization header of the token routes). Input: a mode
/// byte; then either a raw header value (mode even) or a client id, a newline and a secret, which
/// are encoded as a client does (RFC 6749 §2.3.1) and must decode to exactly themselves.
pub fn basic_credentials(data: &[u8]) {
    let [mode, rest @ ..] = data else {
        return;
    };
    if mode % 2 == 0 {
        let Some(read) = fuzzing::basic(rest) else {
            return;
        };
        let value = String::from_utf8_lossy(rest);
        if let Some(r) = &read {
            assert!(
                value
                    .trim()
                    .get(..6)
                    .is_some_and(|s| s.eq_ignore_ascii_case("basic ")),
                "not Basic, yet read as Basic"
            );
            if let Ok((id, secret)) = r {
                assert!(!id.is_empty() && !secret.expose().is_empty());
                assert_eq!(format!("{secret:?}"), "Secret([redacted])");
            }
        }
        return;
    }
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (id, secret) = text.split_once('\n').unwrap_or((text, ""));
    let header = fuzzing::basic_header(id, secret);
    let read = fuzzing::basic(header.as_bytes())
        .expect("an encoded header is a valid header value")
        .expect("and Basic");
    let fits = header.len() - "Basic ".len() <= 1024;
    match read {
        Ok((rid, rsecret)) => {
            assert!(fits, "an over-long value was read");
            assert_eq!((rid.as_str(), rsecret.expose()), (id, secret));
        }
        Err(()) => assert!(
            !fits || id.is_empty() || secret.is_empty(),
            "well-formed credentials refused: {id:?}"
        ),
    }
}

/// `X-Forwarded-For`, `client-ip` and the trusted-proxy rule (`SourceRule::client_from`). Input: a
/// flags byte (bit 0: under the Functions host; bits 1-2: no peer, an IPv4 peer, an IPv6 peer, an
/// IPv4-mapped IPv6 peer, from the next 4 or 16 bytes; bit 3: a `client-ip` header), then text: the
/// trusted blocks (whitespace-separated) on the first line, the `client-ip` value on the next when
/// bit 3 is set, one X-Forwarded-For header value per further line.
pub fn forwarded_for(data: &[u8]) {
    use oauth_broker::domain::source::{parse_forwarded, IpBlock, SourceRule};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let [flags, rest @ ..] = data else {
        return;
    };
    let (peer, rest): (Option<IpAddr>, &[u8]) = match (flags >> 1) & 3 {
        0 => (None, rest),
        1 | 3 if rest.len() >= 4 => {
            let v4 = Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]);
            let ip = match (flags >> 1) & 3 {
                1 => IpAddr::V4(v4),
                _ => IpAddr::V6(v4.to_ipv6_mapped()),
            };
            (Some(ip), &rest[4..])
        }
        2 if rest.len() >= 16 => {
            let b: [u8; 16] = rest[..16].try_into().expect("16 bytes");
            (Some(IpAddr::V6(Ipv6Addr::from(b))), &rest[16..])
        }
        _ => return,
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut lines = text.split('\n');
    let blocks: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let client_ip = match flags & 8 {
        0 => None,
        _ => Some(lines.next().unwrap_or_default()),
    };
    let headers: Vec<&str> = lines.collect();
    let mut trusted = Vec::new();
    for b in &blocks {
        if let Some(block) = IpBlock::parse(b) {
            // A block holds its own address (and the IPv4-mapped form of an IPv4 one).
            let addr: IpAddr = b
                .split('/')
                .next()
                .unwrap_or_default()
                .trim()
                .parse()
                .expect("parsed");
            assert!(block.contains(addr), "{b} does not contain its own address");
            if let IpAddr::V4(v4) = addr {
                assert!(block.contains(IpAddr::V6(v4.to_ipv6_mapped())));
            }
            trusted.push(block);
        }
    }
    let is_trusted = |ip: IpAddr| trusted.iter().any(|b| b.contains(ip));
    let functions_host = flags & 1 == 1;
    let rule = SourceRule {
        trusted_proxies: trusted.clone(),
        functions_host,
    };
    let got = rule.client_from(peer, &headers, client_ip);
    if client_ip.is_none() {
        assert_eq!(got, rule.client(peer, &headers));
    }
    // The entries from the right (the nearest hop first), as far as the rule looks.
    let entries: Vec<&str> = headers
        .iter()
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .take(32)
        .collect();
    if functions_host {
        // The platform's front end sets client-ip to the client's address (overwriting what a
        // client sent), and appends it to X-Forwarded-For: client-ip, else the last entry, else
        // the peer.
        let expected = client_ip
            .and_then(parse_forwarded)
            .or_else(|| entries.first().and_then(|e| parse_forwarded(e)))
            .or(peer);
        assert_eq!(got, expected);
        return;
    }
    let Some(peer) = peer else {
        assert_eq!(got, None, "an address without a peer");
        return;
    };
    if trusted.is_empty() || !is_trusted(peer) {
        assert_eq!(got, Some(peer), "a header believed from an untrusted peer");
        return;
    }
    let got = got.expect("a peer gives an address");
    // The client is what the last trusted hop saw: the walk passes only trusted
    // hops, stops at the first untrusted or unreadable entry, and never looks further left.
    let mut walked = vec![peer];
    for e in &entries {
        let Some(ip) = parse_forwarded(e) else { break };
        walked.push(ip);
        if !is_trusted(ip) {
            break;
        }
    }
    assert_eq!(
        Some(&got),
        walked.last(),
        "peer {peer}, trusted {blocks:?}, headers {headers:?}"
    );
    assert!(walked[..walked.len() - 1].iter().all(|ip| is_trusted(*ip)));
}

/// A pipeline credential's row read back from the table (hostile contents), then authenticated
/// with. Input: the entity as JSON, a NUL, the secret, a NUL, a JSON object of properties a table
/// writer sets afterwards (`null` removes one). `"SecretHash": "seal"` is replaced by the keyed hash
/// the broker makes for the row as it reads then: only such a row, untouched in what the hash binds,
/// may authenticate.
pub fn credential_row(data: &[u8]) {
    use oauth_broker::domain::clock::now;
    let [entity_text, secret, tamper_text] = three(data);
    let (Some(entity), Some(tamper), Ok(secret)) = (
        object(entity_text),
        object(tamper_text),
        std::str::from_utf8(secret),
    ) else {
        return;
    };
    let read = fuzzing::credential_row(entity.clone(), secret, &tamper);
    not_printed(secret, &read, |s| {
        fuzzing::credential_row(entity.clone(), s, &tamper)
    });
    let ms = |t: Option<time::OffsetDateTime>| t.map(|t| t.unix_timestamp_nanos() / 1_000_000);
    match &read.authenticated {
        Ok(c) => {
            let s = read
                .sealed
                .as_ref()
                .expect("only a row whose hash the broker made authenticates");
            // What the credential may do is what it was issued for.
            assert_eq!(c.client_id.as_str(), read.client_id);
            assert_eq!(
                (
                    &c.client_id,
                    &c.integration,
                    &c.connection,
                    ms(c.expires_at),
                    c.min_validity
                ),
                (
                    &s.client_id,
                    &s.integration,
                    &s.connection,
                    ms(s.expires_at),
                    s.min_validity
                ),
                "a tampered row authenticated"
            );
            assert!(!c.is_expired(now()), "an expired credential authenticated");
        }
        Err(e) => {
            // Not vacuous: a row the broker wrote, untouched and unexpired, authenticates.
            if let (true, Some(s)) = (tamper.is_empty(), &read.sealed) {
                assert!(
                    s.is_expired(now()),
                    "an untouched credential is refused: {e}"
                );
            }
        }
    }
    if let Some(Ok(Some(c))) = &read.got {
        assert_eq!(c.client_id.as_str(), read.client_id);
    }
    if let Some(Ok(listed)) = &read.listed {
        let first = listed.first();
        assert!(listed
            .iter()
            .all(|c| first.is_some_and(|f| c.covers(&f.integration, &f.connection))));
    }
}

/// An event outbox row and a marker read back from the table (hostile contents). Input: the
/// entity as JSON, a NUL, the payload, a NUL, a JSON object of properties a table writer sets
/// afterwards (`Body.<field>` for a field of the stored body; `null` removes). A `Body` holding a
/// JSON object with `"s": "seal"` is written through the real store with the payload sealed. A drain
/// delivers only what the broker sealed, unchanged in what the seal binds; it removes a due row it
/// cannot use; one row never stops the drain (a well-formed entry beside it is delivered).
pub fn outbox_row(data: &[u8]) {
    let [entity_text, payload, tamper_text] = three(data);
    let (Some(entity), Some(tamper), Ok(payload)) = (
        object(entity_text),
        object(tamper_text),
        std::str::from_utf8(payload),
    ) else {
        return;
    };
    let read = fuzzing::outbox_row(entity.clone(), payload, &tamper);
    not_printed(payload, &read, |p| {
        fuzzing::outbox_row(entity.clone(), p, &tamper)
    });
    let due = match &read.due {
        Ok(due) => due,
        Err(e) => panic!("one row stopped the drain: {e}"),
    };
    let ms = |t: time::OffsetDateTime| t.unix_timestamp_nanos() / 1_000_000;
    for v in due {
        let e = &v.value;
        let w = if e.key == fuzzing::GOOD_OUTBOX_KEY {
            read.good.as_ref().expect("the good entry was written")
        } else {
            read.written
                .as_ref()
                .expect("only an entry the broker sealed is delivered")
        };
        assert_eq!(
            (
                &e.key,
                &e.event_id,
                &e.event_type,
                &e.receiver,
                ms(e.occurred_at)
            ),
            (
                &w.key,
                &w.event_id,
                &w.event_type,
                &w.receiver,
                ms(w.occurred_at)
            ),
            "a tampered entry was delivered"
        );
        assert_eq!(e.payload.expose(), w.payload.expose());
    }
    if read.good.is_some() {
        assert!(
            due.iter().any(|v| v.value.key == fuzzing::GOOD_OUTBOX_KEY),
            "the well-formed entry beside the row was not delivered"
        );
    }
    let delivered = due.iter().any(|v| v.value.key == read.key);
    if read.due_row && read.key != fuzzing::GOOD_OUTBOX_KEY && !delivered {
        assert!(
            !read.left.contains(&read.key),
            "a due row the drain cannot use stays in the outbox"
        );
    }
    // A marker the broker cannot read is replaced (or deleted and made again).
    match &read.marker_after {
        Ok(Some(v)) => assert_eq!(v.value, "{}"),
        other => panic!("a hostile marker could not be replaced: {other:?}"),
    }
}

/// The account behind a consent. Input: a mode byte, then text: (0) an id_token, a newline, the
/// integration's issuer (empty: none), a newline, its client id; (1) the issuer, the client id and
/// the id_token's claims (JSON), one per line, made into an unsigned JWT; (2) a JSON pointer, a
/// newline and a token response (a `token_field` source); (3) a JSON pointer, a newline and a
/// user-info answer; (4) a parameter name, a newline and the callback's query string.
pub fn account(data: &[u8]) {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use oauth_broker::domain::account::{from_id_token, id_at_pointer};
    let [mode, rest @ ..] = data else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut lines = text.splitn(3, '\n');
    let (a, b, c) = (
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
    );
    match mode % 5 {
        0 => id_token(a, Some(b).filter(|s| !s.is_empty()), c),
        1 => {
            let jwt = format!("eyJhbGciOiJub25lIn0.{}.", URL_SAFE_NO_PAD.encode(c));
            id_token(&jwt, Some(a).filter(|s| !s.is_empty()), b);
        }
        2 => {
            let body = text.split_once('\n').map_or("", |(_, b)| b);
            if let Ok(r) = fuzzing::token_account(body.as_bytes(), a) {
                if let Some(id) = &r.account_field {
                    stored_account(id, "token_field");
                    let doc: Value = serde_json::from_str(body).expect("a JSON answer");
                    assert!(doc.pointer(a).is_some(), "an account from nowhere");
                }
                if let Some(jwt) = &r.id_token {
                    id_token(jwt.expose(), None, "client");
                }
            }
        }
        3 => {
            let body = text.split_once('\n').map_or("", |(_, b)| b);
            if let Ok(doc) = serde_json::from_str::<Value>(body) {
                if let Some(id) = id_at_pointer(&doc, a) {
                    stored_account(&id, "userinfo");
                }
            }
        }
        _ => {
            let query = text.split_once('\n').map_or("", |(_, q)| q);
            if let Some(Some(account)) = fuzzing::callback_account(query, a) {
                assert_eq!(account.source, "callback_param");
                stored_account(&account.id, "callback_param");
            }
        }
    }

    fn id_token(jwt: &str, issuer: Option<&str>, client_id: &str) {
        let Ok(account) = from_id_token(jwt, issuer, client_id) else {
            return;
        };
        assert_eq!(account.source, "id_token");
        stored_account(&account.id, "id_token");
        // What was accepted is what the claims say.
        let payload = jwt.split('.').nth(1).expect("three parts");
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(payload))
            .expect("a base64url payload");
        let claims: Value = serde_json::from_slice(&bytes).expect("JSON claims");
        let iss = claims["iss"].as_str().expect("an iss");
        if let Some(expected) = issuer {
            assert_eq!(iss.trim_end_matches('/'), expected.trim_end_matches('/'));
        }
        match &claims["aud"] {
            Value::String(a) => assert_eq!(a, client_id),
            Value::Array(a) => assert!(a.iter().any(|v| v.as_str() == Some(client_id))),
            other => panic!("accepted an aud of {other}"),
        }
        let iss: String = iss.chars().filter(|c| !c.is_control()).collect();
        assert!(account.id.starts_with(&format!("{iss}#")));
    }

    /// An account the broker accepts can be stored with the connection and read back: otherwise
    /// the connection row it is bound into could not be opened after the consent.
    fn stored_account(id: &str, source: &str) {
        use oauth_broker::domain::account::MAX_ACCOUNT_ID;
        use oauth_broker::domain::Account;
        assert!(!id.is_empty() && id.chars().count() <= MAX_ACCOUNT_ID);
        assert!(
            !id.contains(char::is_control),
            "a control character in {id:?}"
        );
        let a = Account {
            id: id.to_owned(),
            source: source.to_owned(),
        };
        assert_eq!(Account::from_stored(&a.to_stored()), Some(a));
    }
}
