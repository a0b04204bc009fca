//! XSS attempts in every value a page shows or could show: the callback's `error`,
//! `error_description`, `state` and `code`, the start route's integration name and `connection`, and
//! what the vendor answers to a code exchange (its `error`, its `error_description`, a non-JSON body).
//! Each comes back escaped (or not at all): no markup but the page's own, no attribute but its own,
//! under a Content-Security-Policy that runs no script anyway.

use serde_json::json;

use crate::helpers::*;
use crate::helpers::{Answer, FakeVendor};

const PAYLOADS: [&str; 5] = [
    "<script>alert(1)</script>",
    "\"><img src=x onerror=alert(1)>",
    "'-alert(1)-'",
    "</code></p><svg onload=alert(1)>",
    "&lt;b&gt;x&#39;",
];

/// The page's own markup: every tag and attribute a page may carry.
const TAGS: &[&str] = &[
    "!doctype", "html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "p", "dl",
    "dt", "dd", "ul", "ol", "li", "code", "strong", "footer",
];
const ATTRIBUTES: &[&str] = &["lang", "charset", "name", "content", "class"];

/// How the payload travels.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// In the path or query of a GET, as a link a person opens.
    Link {
        path: fn(&str) -> String,
        reflected: bool,
    },
    /// In the vendor's answer to the code exchange of a real consent.
    Vendor(fn(&str) -> Answer),
}

struct Case {
    what: &'static str,
    via: Via,
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Percent-encodes everything but unreserved characters, for a path segment.
fn enc_path(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn cases() -> Vec<Case> {
    let link = |what, path: fn(&str) -> String, reflected| Case {
        what,
        via: Via::Link { path, reflected },
    };
    vec![
        link(
            "callback error",
            |p| format!("/api/auth/callback?error={}", enc(p)),
            true,
        ),
        link(
            "callback error_description",
            |p| {
                format!(
                    "/api/auth/callback?error=access_denied&error_description={}",
                    enc(p)
                )
            },
            true,
        ),
        link(
            "callback error, error_description and state",
            |p| {
                format!(
                    "/api/auth/callback?error={0}&error_description={0}&state={0}",
                    enc(p)
                )
            },
            true,
        ),
        link(
            "callback state",
            |p| format!("/api/auth/callback?code=abc&state={}", enc(p)),
            false,
        ),
        link(
            "callback code and state",
            |p| format!("/api/auth/callback?code={0}&state={0}", enc(p)),
            false,
        ),
        link(
            "callback state without code",
            |p| format!("/api/auth/callback?state={}", enc(p)),
            false,
        ),
        link(
            "start route integration name",
            |p| format!("/api/auth/start/{}", enc_path(p)),
            true,
        ),
        link(
            "start route integration name and connection",
            |p| format!("/api/auth/start/{}?connection={}", enc_path(p), enc(p)),
            true,
        ),
        link(
            "start route connection",
            |p| format!("/api/auth/start/{INTEGRATION}?connection={}", enc(p)),
            true,
        ),
        link(
            "start route connection, unknown integration",
            |p| format!("/api/auth/start/no-such-integration?connection={}", enc(p)),
            true,
        ),
        Case {
            what: "vendor error code on the code exchange",
            via: Via::Vendor(|p| Answer::Raw {
                status: 400,
                content_type: "application/json",
                body: json!({"error": p}).to_string(),
                retry_after: None,
            }),
        },
        Case {
            what: "vendor error_description on the code exchange",
            via: Via::Vendor(|p| Answer::Raw {
                status: 400,
                content_type: "application/json",
                body: json!({"error": "invalid_grant", "error_description": p}).to_string(),
                retry_after: None,
            }),
        },
        Case {
            what: "vendor HTML body on the code exchange",
            via: Via::Vendor(|p| Answer::Raw {
                status: 200,
                content_type: "text/html",
                body: format!("<html><body>{p}</body></html>"),
                retry_after: None,
            }),
        },
        Case {
            what: "vendor error with a 500",
            via: Via::Vendor(|p| Answer::Raw {
                status: 500,
                content_type: "application/json",
                body: json!({"error": p, "error_description": p}).to_string(),
                retry_after: None,
            }),
        },
    ]
}

/// HTML-escaped as the pages escape text.
fn escaped(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Every tag in `html` (outside `<style>`), as (name, attribute names and values).
fn tags(html: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        rest = &rest[lt + 1..];
        let end = rest.find('>').unwrap_or(rest.len());
        let inside = &rest[..end];
        rest = &rest[end.min(rest.len())..];
        let closing = inside.starts_with('/');
        let inside = inside.trim_start_matches('/');
        let name_len = inside
            .find(|c: char| c.is_whitespace() || c == '/')
            .unwrap_or(inside.len());
        let name = inside[..name_len].to_ascii_lowercase();
        let attrs = parse_attributes(&inside[name_len..]);
        if name == "style" && !closing {
            // Skip the style sheet: it is the page's own constant text.
            if let Some(close) = rest.find("</style>") {
                rest = &rest[close..];
            }
        }
        out.push((name, attrs));
    }
    out
}

/// Attribute names and values of one tag (`a="b" c='d' e=f g`).
fn parse_attributes(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let name_len = rest
            .find(|c: char| c.is_whitespace() || c == '=' || c == '/')
            .unwrap_or(rest.len());
        let name = rest[..name_len].to_ascii_lowercase();
        rest = rest[name_len..].trim_start();
        let mut value = String::new();
        if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start();
            let (v, tail) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let body = &after[1..];
                    let close = body.find(q).unwrap_or(body.len());
                    (&body[..close], &body[(close + 1).min(body.len())..])
                }
                _ => {
                    let stop = after.find(char::is_whitespace).unwrap_or(after.len());
                    (&after[..stop], &after[stop..])
                }
            };
            value = v.to_owned();
            rest = tail;
        }
        if !name.is_empty() {
            out.push((name, value));
        }
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
    }
    out
}

#[track_caller]
fn check_page(what: &str, payload: &str, reply: &Reply, reflected: bool) {
    let ctx = format!("{what} with {payload:?}");
    assert_no_undocumented_5xx(reply, &ctx);
    assert!(reply.status >= 400, "{ctx}: an error page: {reply:?}");
    assert!(reply.is_html(), "{ctx}: an HTML page: {reply:?}");
    let csp = reply.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.starts_with("default-src 'none'") && !csp.contains("script-src"),
        "{ctx}: CSP runs no script: {csp:?}"
    );
    assert_eq!(reply.header("x-frame-options").as_deref(), Some("DENY"));

    let body = &reply.body;
    let lower = body.to_ascii_lowercase();
    for raw in [payload, "<script", "<img", "<svg"] {
        assert!(
            !lower.contains(&raw.to_ascii_lowercase()),
            "{ctx}: {raw:?} comes back raw:\n{body}"
        );
    }
    for (tag, attrs) in tags(body) {
        assert!(
            TAGS.contains(&tag.as_str()),
            "{ctx}: a tag the page does not have: <{tag} {attrs:?}>:\n{body}"
        );
        for (name, value) in attrs {
            assert!(
                ATTRIBUTES.contains(&name.as_str()) || (tag == "!doctype" && name == "html"),
                "{ctx}: an attribute the page does not have: <{tag} {name}={value:?}>:\n{body}"
            );
            assert!(
                !value.contains("alert"),
                "{ctx}: request data inside an attribute: <{tag} {name}={value:?}>:\n{body}"
            );
        }
    }
    if reflected {
        // The value is shown, escaped (percent-encoded slashes may survive path decoding).
        let shown = escaped(payload);
        assert!(
            body.contains(&shown) || body.contains(&shown.replace('/', "%2F")),
            "{ctx}: the value is shown escaped as {shown:?}:\n{body}"
        );
    }
}

#[tokio::test]
async fn xss_attempts_in_every_reflected_value_come_back_escaped() {
    let vendor = FakeVendor::start();
    let dir = tempfile::tempdir().unwrap();
    let integrations = json!({"integrations": {INTEGRATION: {
        "authorization_url": format!("{}/authorize", vendor.base),
        "token_url": vendor.token_url(),
        "client_id": "client", "client_secret": "%XSS_VENDOR_SECRET%",
        "scopes": ["read"]
    }}});
    let integrations_path = dir.path().join("integrations.json");
    std::fs::write(&integrations_path, integrations.to_string()).unwrap();
    let broker = Broker::start(&BrokerSpec {
        port: 0,
        bind: "127.0.0.1".into(),
        storage: format!("sqlite:{}", dir.path().join("broker.db").display()),
        table: None,
        encryption_keys: None,
        api_key: None,
        public_url: None,
        integrations_path,
        work_dir: dir.path().to_owned(),
        env: vec![("XSS_VENDOR_SECRET".into(), "xss-vendor-secret".into())],
    })
    .await;
    let base = broker.base_url.clone();

    let mut checked = 0;
    for case in cases() {
        for payload in PAYLOADS {
            match case.via {
                Via::Link { path, reflected } => {
                    let browser = Browser::new();
                    let mut url = format!("{base}{}", path(payload));
                    if url.contains("/api/auth/start/") {
                        // A person opening auth-start brings the key as ?code=.
                        let sep = if url.contains('?') { '&' } else { '?' };
                        url = format!("{url}{sep}code={}", broker.key().unwrap());
                    }
                    let reply = browser.get(&url).await;
                    check_page(case.what, payload, &reply, reflected);
                }
                Via::Vendor(answer) => {
                    vendor.script_code_exchanges([answer(payload)]);
                    let browser = Browser::new();
                    let start = browser
                        .get(&format!(
                            "{base}/api/auth/start/{INTEGRATION}?connection=xss&code={}",
                            broker.key().unwrap()
                        ))
                        .await;
                    assert_eq!(start.status, 302, "{}: auth-start: {start:?}", case.what);
                    let state = query_param(&start.location(), "state").unwrap();
                    let reply = browser
                        .get(&format!(
                            "{base}/api/auth/callback?code=c0de&state={}",
                            enc(&state)
                        ))
                        .await;
                    // The vendor's words need not be shown, but whatever is shown is escaped.
                    check_page(case.what, payload, &reply, false);
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, cases().len() * PAYLOADS.len());
    let missing = host_get(
        &base,
        &format!("/api/token/{INTEGRATION}/xss"),
        broker.key(),
    )
    .await;
    assert_eq!(
        missing.status, 404,
        "no failed exchange stored a grant: {missing:?}"
    );
    drop(broker);
}
