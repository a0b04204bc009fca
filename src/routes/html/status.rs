//! The operators' status page: counts per integration, then every connection,
//! those that need attention first, each with a button that creates a consent
//! link and one that revokes and deletes it (behind a `<details>`
//! confirmation). No script: the forms have no `action`, so they post back to
//! the page's own URL, function key (`?code=`) included, and the key never
//! appears in the page.

use std::collections::BTreeMap;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::pages::shown;
use super::{Html, Page};
use crate::domain::condition::{Assessed, Overview};
use crate::domain::Condition;

/// The outcome of an action, shown above the overview.
#[derive(Debug)]
pub enum Notice {
    LinkCreated {
        integration: String,
        connection: String,
        url: String,
        expires_at: OffsetDateTime,
    },
    Deleted {
        integration: String,
        connection: String,
        revoked: bool,
    },
    /// The action failed; `reason` is a safe message (an API error description).
    Failed { what: &'static str, reason: String },
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// "3 h ago", "in 12 min": a rough distance for people, beside the exact time.
fn relative(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let secs = (t - now).whole_seconds();
    let n = secs.unsigned_abs();
    let amount = match n {
        0..=59 => format!("{n} s"),
        60..=3599 => format!("{} min", n / 60),
        3600..=172_799 => format!("{} h", n / 3600),
        _ => format!("{} days", n / 86_400),
    };
    if secs < 0 {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

/// "2026-11-30 18:24:03 UTC": to the second, for people.
fn readable(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn when(t: OffsetDateTime, now: OffsetDateTime) -> Html {
    Html::new()
        .markup("<time datetime=\"")
        .text(rfc3339(t))
        .markup("\">")
        .text(readable(t))
        .markup("</time> (")
        .text(relative(t, now))
        .markup(")")
}

/// What the condition means, for people.
fn meaning(c: Condition) -> &'static str {
    match c {
        Condition::ReauthorizationRequired => "Dead: the vendor no longer accepts the grant (invalid_grant). Pipelines get 409 until someone consents again.",
        Condition::Misconfigured => "The vendor rejects the integration's client credentials: check its client_id, client_secret and client_auth. The connection itself may be fine.",
        Condition::Failing => "The last refresh failed. The broker retries and serves the stored token while it is valid; if this persists, check the vendor.",
        Condition::NoRefreshToken => "The consent returned no refresh token: pipelines get the access token until it expires, then someone must consent again (add offline_access, or Google's prompt=consent).",
        Condition::RefreshTokenExpiring => "The refresh token has not been used for more than half of the time after which the vendor drops unused ones (check that the refresh timer runs), or the vendor ends this grant at a fixed age within 30 days (see \u{201c}Grant ends at the vendor\u{201d}): consent again before then.",
        Condition::Unknown => "The stored status is one this version does not know (written by a newer version?). The grant is used as if active.",
        Condition::Active => "Working: the broker keeps the grant fresh.",
    }
}

fn hidden(name: &'static str, value: &str) -> Html {
    Html::new()
        .markup("<input type=\"hidden\" name=\"")
        .markup(name)
        .markup("\" value=\"")
        .text(value)
        .markup("\">")
}

fn card(a: &Assessed, now: OffsetDateTime) -> Html {
    let r = &a.record;
    let (i, c) = (r.integration.as_str(), r.connection.as_str());
    let mut facts = Html::new()
        .markup("<dl>\n<dt>Last refresh</dt><dd>")
        .then(when(r.refreshed_at, now))
        .markup("</dd>\n<dt>Access token expires</dt><dd>");
    facts = if r.never_expires() {
        facts.markup("never (the vendor's tokens do not expire)")
    } else {
        facts.then(when(r.expires_at, now))
    }
    .markup("</dd>\n");
    if let Some(end) = r.grant_ends_at() {
        facts = facts
            .markup("<dt>Grant ends at the vendor</dt><dd>")
            .then(when(end, now))
            .markup("</dd>\n");
    }
    if let Some(e) = r.last_error.as_deref() {
        facts = facts
            .markup("<dt>Last error</dt><dd>")
            .text(crate::oauth::sanitize(e, 300))
            .markup("</dd>\n");
        if let Some(at) = r.last_error_at {
            facts = facts
                .markup("<dt>Failed at</dt><dd>")
                .then(when(at, now))
                .markup("</dd>\n");
        }
    }
    facts = facts.markup("</dl>\n");
    let section = if a.condition.needs_attention() {
        "<section class=\"conn attention\">\n<h3>"
    } else {
        "<section class=\"conn\">\n<h3>"
    };
    Html::new()
        .markup(section)
        .text(i)
        .markup(" / ")
        .text(c)
        .markup(" <span class=\"badge\">")
        .text(a.condition.as_str())
        .markup("</span></h3>\n<p>")
        .text(meaning(a.condition))
        .markup("</p>\n")
        .then(facts)
        .markup("<div class=\"actions\">\n<form method=\"post\">")
        .then(hidden("action", "consent_link"))
        .then(hidden("integration", i))
        .then(hidden("connection", c))
        .markup("<button type=\"submit\">Create consent link</button></form>\n")
        .markup("<details><summary>Revoke and delete\u{2026}</summary>\n<p>This revokes the grant at the vendor and deletes the connection ")
        .code(format!("{i}/{c}"))
        .markup(". Pipelines using it fail until someone consents again. This cannot be undone.</p>\n<form method=\"post\">")
        .then(hidden("action", "delete"))
        .then(hidden("integration", i))
        .then(hidden("connection", c))
        .markup("<button type=\"submit\" class=\"danger\">Yes, revoke and delete ")
        .text(format!("{i}/{c}"))
        .markup("</button></form>\n</details>\n</div>\n</section>\n")
}

fn notice(n: &Notice, now: OffsetDateTime) -> Html {
    match n {
        Notice::LinkCreated {
            integration,
            connection,
            url,
            expires_at,
        } => Html::new()
            .markup("<div class=\"notice\" role=\"status\">\n<p><strong>Consent link for ")
            .text(format!("{integration}/{connection}"))
            .markup("</strong>, valid until ")
            .then(when(*expires_at, now))
            .markup(". Copy it and send it to the owner of the vendor account; it works without a function key, for one consent.</p>\n")
            .markup("<label for=\"consent-link\">Consent link</label>\n<input class=\"copy\" id=\"consent-link\" type=\"text\" readonly value=\"")
            .text(url)
            .markup("\">\n</div>\n"),
        Notice::Deleted {
            integration,
            connection,
            revoked,
        } => Html::new()
            .markup("<div class=\"notice\" role=\"status\"><p>Deleted ")
            .code(format!("{integration}/{connection}"))
            .text(if *revoked {
                "; the grant was revoked at the vendor."
            } else {
                "; the integration has no revocation endpoint (or is no longer configured), so nothing was revoked at the vendor."
            })
            .markup("</p></div>\n"),
        Notice::Failed { what, reason } => Html::new()
            .markup("<div class=\"notice failed\" role=\"alert\"><p><strong>")
            .text(what)
            .markup("</strong> ")
            .text(shown_reason(reason))
            .markup("</p></div>\n"),
    }
}

fn shown_reason(reason: &str) -> String {
    crate::oauth::sanitize(reason, 500)
}

fn counts_line(per: &BTreeMap<Condition, usize>) -> Html {
    if per.is_empty() {
        return Html::of("no connections");
    }
    let mut line = Html::new();
    for (i, (c, n)) in per.iter().enumerate() {
        if i > 0 {
            line = line.text(", ");
        }
        line = line
            .markup("<span class=\"count\">")
            .text(n)
            .text(" ")
            .code(c.as_str())
            .markup("</span>");
    }
    line
}

/// `GET /api/status` as HTML; `notice` reports an action just taken.
pub fn status_page(
    o: &Overview,
    unavailable: &[(String, String)],
    now: OffsetDateTime,
    notice_of: Option<&Notice>,
) -> actix_web::HttpResponse {
    let attention: Vec<&Assessed> = o.attention().collect();
    let working: Vec<&Assessed> = o
        .connections
        .iter()
        .filter(|a| !a.condition.needs_attention())
        .collect();
    let mut page = if attention.is_empty() {
        Page::ok("Connection status")
    } else {
        Page::warning("Connection status")
    };
    page.wide = true;
    page.forms = true;
    if let Some(n) = notice_of {
        page = page.block(notice(n, now));
    }
    let total = o.connections.len();
    page = page.lead(if attention.is_empty() {
        Html::of(total).text(if total == 1 {
            " connection, all working."
        } else {
            " connections, all working."
        })
    } else {
        Html::of(attention.len())
            .text(" of ")
            .text(total)
            .text(if total == 1 {
                " connection"
            } else {
                " connections"
            })
            .text(if attention.len() == 1 {
                " needs attention."
            } else {
                " need attention."
            })
    });
    let mut table = Html::new().markup(
        "<table>\n<thead><tr><th scope=\"col\">Integration</th><th scope=\"col\">Connections by status</th></tr></thead>\n<tbody>\n",
    );
    for (name, per) in &o.by_integration {
        table = table
            .markup("<tr><td>")
            .code(name.as_str())
            .markup("</td><td>")
            .then(counts_line(per))
            .markup("</td></tr>\n");
    }
    table = table.markup("</tbody>\n</table>\n");
    page = page.heading("By integration").block(table);
    if !unavailable.is_empty() {
        let items = unavailable
            .iter()
            .map(|(name, reason)| {
                Html::new()
                    .code(shown(name))
                    .text(": unavailable, ")
                    .text(shown_reason(reason))
            })
            .collect();
        page = page.list(false, items);
    }
    if !attention.is_empty() {
        page = page.heading("Needs attention");
        for a in &attention {
            page = page.block(card(a, now));
        }
    }
    if !working.is_empty() {
        page = page.heading("Working");
        for a in &working {
            page = page.block(card(a, now));
        }
    }
    page.para(
        Html::of("The same data as JSON, for monitoring: send ")
            .code("Accept: application/json")
            .text(" or add ")
            .code("format=json")
            .text(" to the query. Times are UTC."),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        ConnectionId, ConnectionRecord, ConnectionStatus, IntegrationName, Secret, TokenSet,
    };
    use actix_web::body::MessageBody;

    #[test]
    fn the_status_page_escapes_vendor_text_and_allows_forms_to_itself_only() {
        let evil = "\"><img src=x onerror=alert(1)><script>alert(1)</script>'";
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut r = ConnectionRecord::new_grant(
            IntegrationName::parse("demo").unwrap(),
            ConnectionId::parse("c1").unwrap(),
            TokenSet {
                access_token: Secret::new("at-secret"),
                refresh_token: Some(Secret::new("rt-secret")),
            },
            "Bearer".into(),
            String::new(),
            now,
            now,
        );
        r.status = ConnectionStatus::ReauthorizationRequired;
        r.last_error = Some(evil.into());
        r.last_error_at = Some(now);
        let o = Overview::build(vec![r], [], |_| None, now);
        let notices = [
            Notice::Failed {
                what: "x",
                reason: evil.into(),
            },
            Notice::LinkCreated {
                integration: evil.into(),
                connection: evil.into(),
                url: evil.into(),
                expires_at: now,
            },
        ];
        for n in &notices {
            let resp = status_page(&o, &[(evil.into(), evil.into())], now, Some(n));
            let csp = resp
                .headers()
                .get(actix_web::http::header::CONTENT_SECURITY_POLICY)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            assert!(csp.contains("form-action 'self'"), "{csp}");
            assert!(
                csp.starts_with("default-src 'none'") && csp.contains("frame-ancestors 'none'")
            );
            let html =
                String::from_utf8(resp.into_body().try_into_bytes().unwrap().to_vec()).unwrap();
            assert!(
                !html.contains("<img") && !html.contains("<script"),
                "{html}"
            );
            assert!(
                !html.contains("at-secret") && !html.contains("rt-secret"),
                "no token on the page: {html}"
            );
            assert!(
                !html.contains(" action="),
                "forms post back to the page: {html}"
            );
            assert!(html.contains("<details>"), "{html}");
        }
    }

    #[test]
    fn relative_times_read_naturally() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let d = time::Duration::seconds;
        assert_eq!(relative(now - d(30), now), "30 s ago");
        assert_eq!(relative(now + d(600), now), "in 10 min");
        assert_eq!(relative(now - d(7200), now), "2 h ago");
        assert_eq!(relative(now - d(86_400 * 40), now), "40 days ago");
        assert_eq!(readable(now), "2023-11-14 22:13:20 UTC");
    }
}
