//! The HTML of the broker's pages: a safe builder and its hardening headers.
//! The page copy (one function per situation) is in [`pages`].
//!
//! Escaping is by construction: a page is built from [`Html`], which only
//! accepts markup written in this program's source (`&'static str`) or text,
//! which it escapes on the way in. Request data is never `'static`, so it
//! cannot reach a page unescaped. Pages carry no script and no external asset;
//! their one inline `<style>` is allowed by its hash in a strict
//! Content-Security-Policy (`default-src 'none'`).
//!
//! A hand-written builder rather than a template crate: the rule "only
//! `&'static str` is markup" makes unescaped request data a type error, with no
//! template syntax in which an escape could be switched off.

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
main.wide{max-width:60rem}\
table{border-collapse:collapse;width:100%;margin:.5rem 0 1rem}\
th,td{text-align:left;padding:.4rem .5rem;border-bottom:1px solid #d0d7de;vertical-align:top}\
.conn{border:1px solid #d0d7de;border-radius:6px;padding:.75rem 1rem;margin:.75rem 0}\
.conn.attention{border-left:.4rem solid #b42318}\
.conn h3{font-size:1.05rem;margin:0 0 .35rem;overflow-wrap:anywhere}\
.conn p{margin:.35rem 0}\
.conn dl{margin:.5rem 0;padding:.6rem .8rem}\
.conn dd{overflow-wrap:anywhere}\
.count{white-space:nowrap}\
@media (max-width:34rem){.conn dl{grid-template-columns:1fr;gap:.1rem}.conn dd{margin-bottom:.4rem}thead{display:none}table,tbody,tr,td{display:block}td:first-child{border-bottom:0;padding-bottom:0}}\
.badge{display:inline-block;font-size:.85rem;font-weight:600;padding:.05rem .55rem;border-radius:999px;background:#e6f4ea;color:#14532d;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}\
.attention .badge{background:#fde8e7;color:#8a1c12}\
.actions{display:flex;flex-wrap:wrap;gap:.5rem;align-items:flex-start;margin-top:.5rem}\
.actions form{margin:0}\
button,summary{font:inherit;font-size:.95rem;padding:.35rem .8rem;border:1px solid #4b5563;border-radius:6px;background:#f6f8fa;color:#1b1b1b;cursor:pointer}\
summary{display:inline-block;list-style:none;border-color:#b42318;color:#8a1c12;background:#fff}\
summary::-webkit-details-marker{display:none}\
details p{margin:.5rem 0}\
button.danger{border-color:#b42318;background:#b42318;color:#fff}\
.notice{padding:.75rem 1rem;border:1px solid #1a7f37;border-radius:6px;background:#eef8f0;margin:1rem 0}\
.notice.failed{border-color:#b42318;background:#fde8e7}\
.notice p{margin:.25rem 0}\
summary.plain{border-color:#4b5563;color:#1b1b1b}\
.creds{margin-top:.5rem}\
.creds table{font-size:.9rem}\
form.first{margin:.5rem 0 1rem}\
input.copy{display:block;width:100%;box-sizing:border-box;margin:.4rem 0;padding:.5rem;font:.9rem ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;border:1px solid #4b5563;border-radius:4px;background:#fff;color:#1b1b1b}\
";

static CONTENT_SECURITY_POLICY: LazyLock<String> = LazyLock::new(|| csp("'none'"));

/// The status page's policy: the same, except that its forms may post to this
/// broker (`form-action 'self'`); they post back to the page's own URL.
static FORMS_CONTENT_SECURITY_POLICY: LazyLock<String> = LazyLock::new(|| csp("'self'"));

fn csp(form_action: &str) -> String {
    let hash = STANDARD.encode(Sha256::digest(STYLE.as_bytes()));
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; base-uri 'none'; form-action {form_action}; frame-ancestors 'none'"
    )
}

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
    /// A wider layout (the status page).
    wide: bool,
    /// The page has forms that post back to it.
    forms: bool,
}

impl Page {
    fn ok(title: &'static str) -> Page {
        Page {
            status: StatusCode::OK,
            tone: Tone::Ok,
            title,
            body: Html::new(),
            wide: false,
            forms: false,
        }
    }

    /// A page that reports success with a caveat the reader must act on.
    fn warning(title: &'static str) -> Page {
        Page {
            status: StatusCode::OK,
            tone: Tone::Problem,
            title,
            body: Html::new(),
            wide: false,
            forms: false,
        }
    }

    fn problem(status: StatusCode, title: &'static str) -> Page {
        Page {
            status,
            tone: Tone::Problem,
            title,
            body: Html::new(),
            wide: false,
            forms: false,
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

    /// Any block of safe HTML.
    fn block(mut self, content: Html) -> Page {
        self.body = self.body.then(content);
        self
    }

    /// The whole document.
    pub fn render(&self) -> String {
        let class = match (self.tone, self.wide) {
            (Tone::Ok, false) => "ok",
            (Tone::Problem, false) => "problem",
            (Tone::Ok, true) => "ok wide",
            (Tone::Problem, true) => "problem wide",
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
                if self.forms {
                    FORMS_CONTENT_SECURITY_POLICY.as_str()
                } else {
                    CONTENT_SECURITY_POLICY.as_str()
                },
            ))
            .insert_header((header::X_FRAME_OPTIONS, "DENY"))
            .insert_header((header::REFERRER_POLICY, "no-referrer"))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .body(html)
    }
}

mod pages;
mod status;
pub use pages::*;
pub use status::{status_page, CredentialRow, Extras, Notice, OpenLink, OpenLinks, RejectedClient};

#[cfg(test)]
mod tests {
    use super::pages::{shown, SHOWN_MAX};
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
            exchange_failed(Some(evil), Some(evil), None, evil),
            exchange_failed(None, None, Some(evil), evil),
        ] {
            let html = body(page);
            assert!(!html.contains("<img"), "{html}");
            assert!(!html.contains("<script"), "{html}");
            assert!(!html.contains("'>"), "{html}");
        }
    }

    #[test]
    fn the_consent_result_escapes_what_the_vendor_granted_and_warns_plainly() {
        let evil = "\"><img src=x onerror=alert(1)><script>alert(1)</script>'";
        let requested = vec![evil.to_owned(), "offline_access".to_owned()];
        let missing = vec![evil.to_owned()];
        for provider in [None, Some("google")] {
            let html = body(connected_grant(
                evil,
                &Granted {
                    integration: evil,
                    connection: evil,
                    scope: evil,
                    requested: &requested,
                    missing_scopes: Some(&missing),
                    no_refresh_token: Some(NoRefreshToken {
                        expires_at: evil,
                        provider,
                        offline_requested: &requested[1..],
                    }),
                },
            ));
            assert!(
                !html.contains("<img") && !html.contains("<script"),
                "{html}"
            );
            assert!(
                html.contains("<title>Connected without a refresh token"),
                "{html}"
            );
            assert!(html.contains("<dt>Not granted</dt>"), "{html}");
            assert!(html.contains("prompt=consent"), "{html}");
            assert!(
                html.contains("The broker requested <code>offline_access</code>"),
                "{html}"
            );
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
