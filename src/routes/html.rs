//! The small self-contained pages shown to the person who consents.
//!
//! Escaping is by construction: a page is built from [`Html`], which only
//! accepts markup written in this program's source (`&'static str`) or text,
//! which it escapes on the way in. Request data is never `'static`, so it
//! cannot reach a page unescaped. Pages carry no script and no external asset;
//! their one inline `<style>` is allowed by its hash in a strict
//! Content-Security-Policy (`default-src 'none'`).
//!
//! All wording lives here, so the handlers call one function per situation.

use std::fmt::{self, Write as _};
use std::sync::LazyLock;

use actix_web::http::{header, StatusCode};
use actix_web::HttpResponse;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Escapes text for use in HTML content and in quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_escaped(&mut out, s);
    out
}

fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// Writes `Display` output escaped.
struct Escaping<'a>(&'a mut String);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        push_escaped(self.0, s);
        Ok(())
    }
}

/// A fragment of HTML that is safe to send as it is: only static markup from
/// this program's source and escaped text go into it.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct Html(String);

impl Html {
    pub fn new() -> Html {
        Html(String::new())
    }

    /// Escaped text.
    pub fn of(text: impl fmt::Display) -> Html {
        Html::new().text(text)
    }

    /// Trusted markup, written in this program's source.
    pub fn markup(mut self, markup: &'static str) -> Html {
        self.0.push_str(markup);
        self
    }

    /// Text, escaped.
    pub fn text(mut self, text: impl fmt::Display) -> Html {
        let _ = write!(Escaping(&mut self.0), "{text}");
        self
    }

    /// Text in `<code>`, escaped.
    pub fn code(self, text: impl fmt::Display) -> Html {
        self.markup("<code>").text(text).markup("</code>")
    }

    /// Text in `<strong>`, escaped.
    pub fn strong(self, text: impl fmt::Display) -> Html {
        self.markup("<strong>").text(text).markup("</strong>")
    }

    /// Another safe fragment.
    pub fn then(mut self, other: Html) -> Html {
        self.0.push_str(&other.0);
        self
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The pages' only style sheet; the CSP allows exactly this text by its hash.
/// Colours meet WCAG AA contrast on white; the pages read fine without it.
const STYLE: &str = "\
:root{color-scheme:light}\
body{margin:0;background:#fff;color:#1b1b1b;font:1rem/1.55 system-ui,-apple-system,\"Segoe UI\",Roboto,\"Noto Sans\",sans-serif}\
main{max-width:42rem;margin:2.5rem auto;padding:0 1.25rem}\
h1{font-size:1.6rem;line-height:1.25;margin:0 0 1rem;padding:.1rem 0 .1rem .8rem;border-left:.4rem solid #6b7280}\
.ok h1{border-color:#1a7f37}\
.problem h1{border-color:#b42318}\
h2{font-size:1.1rem;margin:1.75rem 0 .5rem}\
.lead{font-size:1.1rem}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.4rem 1.25rem;margin:1rem 0;padding:1rem;background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px}\
dt{font-weight:600}\
dd{margin:0;min-width:0}\
code.request{display:block;width:fit-content;max-width:100%;box-sizing:border-box;margin:.4rem 0 .2rem;padding:.45rem .7rem}\
ul.scopes{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:.35rem}\
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,\"Liberation Mono\",monospace;font-size:.92em;background:#eef1f4;padding:.1rem .3rem;border-radius:4px;overflow-wrap:anywhere}\
ol,ul{padding-left:1.4rem}\
li{margin:.35rem 0}\
footer{margin-top:2.5rem;padding-top:.75rem;border-top:1px solid #d0d7de;font-size:.875rem;color:#4b5563}\
";

static CONTENT_SECURITY_POLICY: LazyLock<String> = LazyLock::new(|| {
    let hash = STANDARD.encode(Sha256::digest(STYLE.as_bytes()));
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
});

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tone {
    Ok,
    Problem,
}

/// One page: a title (the `<title>` and the `<h1>`), then blocks of [`Html`].
#[derive(Debug)]
pub struct Page {
    status: StatusCode,
    tone: Tone,
    title: &'static str,
    body: Html,
}

impl Page {
    fn ok(title: &'static str) -> Page {
        Page {
            status: StatusCode::OK,
            tone: Tone::Ok,
            title,
            body: Html::new(),
        }
    }

    fn problem(status: StatusCode, title: &'static str) -> Page {
        Page {
            status,
            tone: Tone::Problem,
            title,
            body: Html::new(),
        }
    }

    fn lead(mut self, content: Html) -> Page {
        self.body = self
            .body
            .markup("<p class=\"lead\">")
            .then(content)
            .markup("</p>\n");
        self
    }

    fn para(mut self, content: Html) -> Page {
        self.body = self.body.markup("<p>").then(content).markup("</p>\n");
        self
    }

    fn heading(mut self, text: &'static str) -> Page {
        self.body = self.body.markup("<h2>").markup(text).markup("</h2>\n");
        self
    }

    fn facts(mut self, rows: Vec<(&'static str, Html)>) -> Page {
        self.body = self.body.markup("<dl>\n");
        for (name, value) in rows {
            self.body = self
                .body
                .markup("<dt>")
                .markup(name)
                .markup("</dt><dd>")
                .then(value)
                .markup("</dd>\n");
        }
        self.body = self.body.markup("</dl>\n");
        self
    }

    fn list(mut self, ordered: bool, items: Vec<Html>) -> Page {
        self.body = self.body.markup(if ordered { "<ol>\n" } else { "<ul>\n" });
        for item in items {
            self.body = self.body.markup("<li>").then(item).markup("</li>\n");
        }
        self.body = self
            .body
            .markup(if ordered { "</ol>\n" } else { "</ul>\n" });
        self
    }

    /// The whole document.
    pub fn render(&self) -> String {
        let class = match self.tone {
            Tone::Ok => "ok",
            Tone::Problem => "problem",
        };
        Html::new()
            .markup("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n")
            .markup("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n")
            .markup("<meta name=\"robots\" content=\"noindex\">\n<title>")
            .markup(self.title)
            .markup(" \u{b7} oauth-broker</title>\n<style>")
            .markup(STYLE)
            .markup("</style>\n</head>\n<body>\n<main class=\"")
            .markup(class)
            .markup("\">\n<h1>")
            .markup(self.title)
            .markup("</h1>\n")
            .then(self.body.clone())
            .markup("<footer><p>oauth-broker \u{2014} connects data pipelines to vendor APIs with OAuth 2.0.</p></footer>\n")
            .markup("</main>\n</body>\n</html>\n")
            .0
    }

    pub fn into_response(self) -> HttpResponse {
        let html = self.render();
        HttpResponse::build(self.status)
            .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((
                header::CONTENT_SECURITY_POLICY,
                CONTENT_SECURITY_POLICY.as_str(),
            ))
            .insert_header((header::X_FRAME_OPTIONS, "DENY"))
            .insert_header((header::REFERRER_POLICY, "no-referrer"))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .body(html)
    }
}

// ------------------------------------------------------------------------------------------------
// the pages

/// An error page for a situation without its own function below: what happened, then what to do.
pub fn problem(
    status: StatusCode,
    title: &'static str,
    what_happened: Html,
    what_to_do: Vec<Html>,
) -> HttpResponse {
    Page::problem(status, title)
        .lead(what_happened)
        .heading("What to do")
        .list(false, what_to_do)
        .into_response()
}

/// Names and codes from the request or the vendor are cut to this many characters when shown.
const SHOWN_MAX: usize = 80;
/// Sentences from the vendor (error descriptions) are cut to this many.
const SHOWN_LONG_MAX: usize = 500;

/// A name or code from the request or the vendor, as shown: no control characters, cut short.
fn shown(raw: &str) -> String {
    cut(raw, SHOWN_MAX)
}

/// A sentence from the vendor, as shown.
fn shown_long(raw: &str) -> String {
    cut(raw, SHOWN_LONG_MAX)
}

fn cut(raw: &str, max: usize) -> String {
    let mut out: String = raw.chars().filter(|c| !c.is_control()).take(max).collect();
    if raw.chars().filter(|c| !c.is_control()).count() > max {
        out.push('\u{2026}');
    }
    out
}

fn start_again() -> Html {
    Html::of("Open the consent link again (or ask whoever sent it for a new one) and approve access at the vendor.")
}

fn redirect_uri_check(redirect_uri: &str) -> Html {
    Html::of("Check that the redirect URI registered for this app at the vendor is exactly ")
        .code(redirect_uri)
        .text(" (same scheme, host, path, no trailing slash).")
}

/// Success: the grant is stored.
pub fn connected(
    public_url: &str,
    integration: &str,
    connection: &str,
    scope: &str,
) -> HttpResponse {
    let scopes: Vec<&str> = scope
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .collect();
    let granted = if scopes.is_empty() {
        Html::of("The vendor did not list any scopes.")
    } else {
        let mut list = Html::new().markup("<ul class=\"scopes\">");
        for s in scopes {
            list = list.markup("<li>").code(s).markup("</li>");
        }
        list.markup("</ul>")
    };
    let token_url = format!(
        "{}/api/token/{integration}/{connection}",
        public_url.trim_end_matches('/')
    );
    Page::ok("Connected")
        .lead(
            Html::of("The broker now holds a grant for integration ")
                .strong(integration)
                .text(", connection ")
                .strong(connection)
                .text(". It refreshes the access token by itself, so pipelines always get a valid one."),
        )
        .facts(vec![
            ("Integration", Html::new().code(integration)),
            ("Connection", Html::new().code(connection)),
            ("Scopes granted", granted),
        ])
        .heading("What to do next")
        .list(
            true,
            vec![
                Html::of("In Azure Data Factory, get the access token with a Web activity that sends a function key in the ")
                    .code("x-functions-key")
                    .text(" header:")
                    .markup("<code class=\"request\">")
                    .text(format!("GET {token_url}"))
                    .markup("</code>"),
                Html::of("Or use an Azure Function activity with the function name ")
                    .code(format!("token/{integration}/{connection}"))
                    .text(" and method ")
                    .code("GET")
                    .text("."),
                Html::of("The answer is JSON; pass its ")
                    .code("access_token")
                    .text(" to the vendor's API as ")
                    .code("Authorization: Bearer \u{2026}")
                    .text("."),
            ],
        )
        .para(Html::of(
            "You can close this window. Consent is needed again only if the grant is revoked or expires at the vendor.",
        ))
        .into_response()
}

/// The integration name in a start link does not parse.
pub fn invalid_integration_name(raw: &str, reason: impl fmt::Display) -> HttpResponse {
    invalid_link_part("integration ", raw, "an integration name", reason)
}

/// The `connection` parameter of a start link does not parse.
pub fn invalid_connection(raw: &str, reason: impl fmt::Display) -> HttpResponse {
    invalid_link_part("connection ", raw, "a connection id", reason)
}

fn invalid_link_part(
    what: &'static str,
    raw: &str,
    kind: &'static str,
    reason: impl fmt::Display,
) -> HttpResponse {
    Page::problem(StatusCode::BAD_REQUEST, "This consent link is not valid")
        .lead(
            Html::of("The link names the ")
                .text(what)
                .code(shown(raw))
                .text(", which cannot be ")
                .text(kind)
                .text(": ")
                .text(reason)
                .text("."),
        )
        .heading("What to do")
        .list(
            false,
            vec![Html::of(
                "Check that the whole link was copied, or ask whoever sent it for a new one.",
            )],
        )
        .into_response()
}

/// A start link (or a pending consent) names an integration this broker does not have.
pub fn unknown_integration(name: &str) -> HttpResponse {
    Page::problem(StatusCode::NOT_FOUND, "Unknown integration")
        .lead(
            Html::of("This broker has no integration named ")
                .code(shown(name))
                .text("."),
        )
        .heading("What to do")
        .list(
            false,
            vec![
                Html::of("Check the link, or ask whoever sent it for a new one."),
                Html::of("If you run the broker: add the integration to ")
                    .code("integrations.json")
                    .text(" and deploy it, then start the consent again."),
            ],
        )
        .into_response()
}

/// The store did not answer.
pub fn storage_unavailable(grant_lost: bool) -> HttpResponse {
    let what = if grant_lost {
        "The vendor granted access, but the broker's storage did not answer, so the grant was not saved."
    } else {
        "The broker's storage did not answer, so the consent could not go on."
    };
    Page::problem(StatusCode::SERVICE_UNAVAILABLE, "Please try again")
        .lead(Html::of(what))
        .heading("What to do")
        .list(
            false,
            vec![
                Html::of("Wait a minute, then open the consent link again."),
                Html::of("If this keeps happening, tell whoever runs the broker: its storage is unreachable."),
            ],
        )
        .into_response()
}

/// The vendor sent the person back with an `error` (RFC 6749 section 4.1.2.1).
pub fn access_not_granted(
    error: &str,
    description: Option<&str>,
    redirect_uri: &str,
) -> HttpResponse {
    let mut facts = vec![("Error", Html::new().code(shown(error)))];
    if let Some(d) = description.filter(|d| !d.trim().is_empty()) {
        facts.push(("The vendor said", Html::of(shown_long(d))));
    }
    let (lead, todo) = match error {
        "access_denied" => (
            Html::of("The vendor did not grant access: consent was declined or cancelled at the vendor's site."),
            vec![
                start_again(),
                Html::of("If you were not allowed to approve it, ask the vendor account's administrator to approve this app or grant you the needed permissions."),
            ],
        ),
        "temporarily_unavailable" | "server_error" => (
            Html::of("The vendor could not handle the request just now."),
            vec![Html::of("Wait a few minutes, then open the consent link again.")],
        ),
        _ => (
            Html::of("The vendor refused the request, so no access was granted."),
            vec![
                start_again(),
                Html::of("If it happens again, ask the vendor account's administrator whether this app may be authorised, and ask whoever runs the broker to check the integration's client id and scopes."),
                redirect_uri_check(redirect_uri),
            ],
        ),
    };
    Page::problem(StatusCode::BAD_REQUEST, "Access was not granted")
        .lead(lead)
        .facts(facts)
        .heading("What to do")
        .list(false, todo)
        .into_response()
}

/// The callback came without a code or state.
pub fn callback_incomplete(redirect_uri: &str) -> HttpResponse {
    Page::problem(StatusCode::BAD_REQUEST, "This consent cannot be completed")
        .lead(Html::of(
            "The vendor sent you back here without an authorization code or without the consent's state, so there is nothing to complete.",
        ))
        .heading("What to do")
        .list(
            false,
            vec![start_again(), redirect_uri_check(redirect_uri)],
        )
        .into_response()
}

/// No pending consent for this state: expired and swept, or already completed.
/// A consent link that is unknown, expired or already used.
pub fn link_unusable() -> HttpResponse {
    Page::problem(StatusCode::GONE, "This consent link cannot be used")
        .lead(Html::of(
            "The link is not valid any more: it has expired, or a consent through it was already completed.",
        ))
        .heading("What to do")
        .list(
            false,
            vec![Html::of(
                "Ask the person who sent you the link for a new one.",
            )],
        )
        .into_response()
}

pub fn consent_not_found() -> HttpResponse {
    Page::problem(StatusCode::BAD_REQUEST, "This consent has already ended")
        .lead(Html::of(
            "This consent has expired or was already completed (a page reloaded after connecting lands here too).",
        ))
        .heading("What to do")
        .list(
            false,
            vec![Html::of(
                "If the connection is not working yet, open the consent link again and approve access.",
            )],
        )
        .into_response()
}

/// The consent took longer than it may.
pub fn consent_expired(minutes: i64) -> HttpResponse {
    Page::problem(StatusCode::BAD_REQUEST, "This consent has expired")
        .lead(
            Html::of("A consent must be completed within ")
                .text(minutes)
                .text(" minutes of opening the link; this one took longer."),
        )
        .heading("What to do")
        .list(false, vec![start_again()])
        .into_response()
}

/// The callback arrived without the cookie set by the start route.
pub fn other_browser() -> HttpResponse {
    Page::problem(StatusCode::BAD_REQUEST, "Please finish in the same browser")
        .lead(Html::of(
            "This consent was started in a different browser, or this browser blocked the broker's cookie, so the broker cannot tell that it is yours.",
        ))
        .heading("What to do")
        .list(
            false,
            vec![Html::of(
                "Open the consent link again in this browser, allow cookies for this site, and complete the consent here without switching browsers.",
            )],
        )
        .into_response()
}

/// The pending consent names an integration that was removed meanwhile.
pub fn integration_gone(name: &str) -> HttpResponse {
    Page::problem(StatusCode::NOT_FOUND, "Unknown integration")
        .lead(
            Html::of("The integration ")
                .code(shown(name))
                .text(" was removed from this broker while the consent was in progress."),
        )
        .heading("What to do")
        .list(
            false,
            vec![Html::of(
                "Ask whoever runs the broker whether the integration still exists, then start the consent again from a new link.",
            )],
        )
        .into_response()
}

/// The code exchange failed: `oauth_error` is the vendor's error code, if it sent one.
pub fn exchange_failed(
    oauth_error: Option<&str>,
    detail: &str,
    redirect_uri: &str,
) -> HttpResponse {
    let mut facts = Vec::new();
    if let Some(code) = oauth_error {
        facts.push(("Error", Html::new().code(shown(code))));
    }
    facts.push(("Details", Html::of(shown_long(detail))));
    let what = match oauth_error {
        Some(_) => "You approved access, but the vendor refused to exchange the authorization code for tokens.",
        None => "You approved access, but the vendor's token endpoint failed, so the broker got no tokens.",
    };
    Page::problem(StatusCode::BAD_GATEWAY, "The connection could not be completed")
        .lead(Html::of(what))
        .facts(facts)
        .heading("What to do")
        .list(
            false,
            vec![
                start_again(),
                Html::of("If it fails again, ask whoever runs the broker to check the integration's client id and client secret."),
                redirect_uri_check(redirect_uri),
            ],
        )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape(r#"<script>alert("x&'y")</script>"#),
            "&lt;script&gt;alert(&quot;x&amp;&#39;y&quot;)&lt;/script&gt;"
        );
        assert_eq!(
            Html::of("<b>").code("\"'").as_str(),
            "&lt;b&gt;<code>&quot;&#39;</code>"
        );
    }

    fn body(resp: HttpResponse) -> String {
        let bytes = resp.into_body().try_into_bytes().unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn the_style_is_allowed_by_its_hash_and_nothing_else_is() {
        let csp = CONTENT_SECURITY_POLICY.as_str();
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        let page = body(consent_not_found());
        let style = page
            .split("<style>")
            .nth(1)
            .and_then(|s| s.split("</style>").next())
            .unwrap();
        let hash = STANDARD.encode(Sha256::digest(style.as_bytes()));
        assert!(csp.contains(&format!("'sha256-{hash}'")), "{csp}");
    }

    #[test]
    fn pages_escape_every_value_they_show() {
        let evil = "\"><img src=x onerror=alert(1)><script>alert(1)</script>'";
        for page in [
            connected(evil, evil, evil, evil),
            invalid_integration_name(evil, "x"),
            invalid_connection(evil, "x"),
            unknown_integration(evil),
            access_not_granted(evil, Some(evil), evil),
            access_not_granted("access_denied", Some(evil), evil),
            callback_incomplete(evil),
            integration_gone(evil),
            exchange_failed(Some(evil), evil, evil),
            exchange_failed(None, evil, evil),
        ] {
            let html = body(page);
            assert!(!html.contains("<img"), "{html}");
            assert!(!html.contains("<script"), "{html}");
            assert!(!html.contains("'>"), "{html}");
        }
    }

    #[test]
    fn pages_are_hardened_and_uncached() {
        let resp = connected("https://b.example", "demo", "default", "read write");
        let h = |name| {
            resp.headers()
                .get(name)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(h(header::X_FRAME_OPTIONS), "DENY");
        assert_eq!(h(header::REFERRER_POLICY), "no-referrer");
        assert_eq!(h(header::CACHE_CONTROL), "no-store");
        assert_eq!(h(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(h(header::CONTENT_SECURITY_POLICY), *CONTENT_SECURITY_POLICY);
        let html = body(resp);
        assert!(
            html.contains(
                "<code class=\"request\">GET https://b.example/api/token/demo/default</code>"
            ),
            "{html}"
        );
        assert!(html.contains("<code>token/demo/default</code>"), "{html}");
        assert!(
            html.contains("<li><code>read</code></li><li><code>write</code></li>"),
            "{html}"
        );
    }

    #[test]
    fn shown_values_are_cut_short() {
        assert_eq!(shown("a\u{7}b"), "ab");
        let long = "x".repeat(200);
        assert_eq!(shown(&long).chars().count(), SHOWN_MAX + 1);
    }
}
