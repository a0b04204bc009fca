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
    LinkEnded {
        integration: String,
        connection: String,
    },
    Refreshed {
        integration: String,
        connection: String,
        expires_at: OffsetDateTime,
    },
    CredentialDeleted {
        integration: String,
        connection: String,
        client_id: String,
    },
    /// The action failed; `reason` is a safe message (an API error description).
    Failed { what: &'static str, reason: String },
}

/// An outstanding consent link of a connection, as the page lists it (never its token).
#[derive(Debug, Clone)]
pub struct OpenLink {
    pub id: String,
    pub expires_at: OffsetDateTime,
    pub consents_in_progress: usize,
    pub allow_account_change: bool,
}

/// Outstanding links by (integration, connection).
pub type OpenLinks = BTreeMap<(String, String), Vec<OpenLink>>;

/// A pipeline credential as the page lists it: never its secret.
#[derive(Debug)]
pub struct CredentialRow {
    pub client_id: String,
    pub description: String,
    pub created_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
    pub expires_at: Option<OffsetDateTime>,
}

/// An integration whose client credentials the vendor rejects.
#[derive(Debug)]
pub struct RejectedClient {
    pub integration: String,
    /// The settings its client id and secret come from (`%NAME%`), when they do.
    pub client_id_setting: Option<String>,
    pub client_secret_setting: Option<String>,
    /// Its connections that the rejection stops.
    pub affected: Vec<String>,
}

/// What the page shows besides the overview.
#[derive(Debug, Default)]
pub struct Extras {
    pub rejected: Vec<RejectedClient>,
    /// Per (integration, connection).
    pub credentials: BTreeMap<(String, String), Vec<CredentialRow>>,
    /// Outstanding consent links per (integration, connection).
    pub links: OpenLinks,
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

fn open_links(i: &str, c: &str, links: &[OpenLink], now: OffsetDateTime) -> Html {
    let mut out = Html::new()
        .markup("<details><summary>Open consent links (")
        .text(links.len())
        .markup(")</summary>\n<ul>\n");
    for l in links {
        out = out
            .markup("<li>")
            .code(&l.id)
            .text(if l.expires_at < now {
                ", expired "
            } else {
                ", valid until "
            })
            .then(when(l.expires_at, now))
            .text(format!(
                ", {} consent{} in progress{}",
                l.consents_in_progress,
                if l.consents_in_progress == 1 { "" } else { "s" },
                if l.allow_account_change {
                    ", may change the account"
                } else {
                    ""
                }
            ))
            .markup(" <form method=\"post\" class=\"inline\">")
            .then(hidden("action", "end_link"))
            .then(hidden("integration", i))
            .then(hidden("connection", c))
            .then(hidden("link", &l.id))
            .markup("<button type=\"submit\">End this link</button></form></li>\n");
    }
    out.markup("</ul>\n</details>\n")
}

fn button(action: &'static str, i: &str, c: &str, label: &str) -> Html {
    Html::new()
        .markup("<form method=\"post\">")
        .then(hidden("action", action))
        .then(hidden("integration", i))
        .then(hidden("connection", c))
        .markup("<button type=\"submit\">")
        .text(label)
        .markup("</button></form>\n")
}

fn credentials_list(i: &str, c: &str, creds: &[CredentialRow], now: OffsetDateTime) -> Html {
    if creds.is_empty() {
        return Html::new();
    }
    let mut out = Html::new()
        .markup("<details class=\"creds\" open><summary class=\"plain\">Pipeline credentials (");
    out = out.text(creds.len()).markup(")</summary>\n<table>\n<thead><tr><th scope=\"col\">Client id</th><th scope=\"col\">Description</th><th scope=\"col\">Created</th><th scope=\"col\">Last used</th><th scope=\"col\">Expires</th><th scope=\"col\"></th></tr></thead>\n<tbody>\n");
    for k in creds {
        out = out
            .markup("<tr><td>")
            .code(k.client_id.as_str())
            .markup("</td><td>")
            .text(shown(&k.description))
            .markup("</td><td>")
            .then(when(k.created_at, now))
            .markup("</td><td>")
            .then(match k.last_used_at {
                Some(t) => when(t, now),
                None => Html::of("never"),
            })
            .markup("</td><td>")
            .then(match k.expires_at {
                Some(t) => when(t, now),
                None => Html::of("never"),
            })
            .markup("</td><td><form method=\"post\">")
            .then(hidden("action", "delete_credential"))
            .then(hidden("integration", i))
            .then(hidden("connection", c))
            .then(hidden("client_id", &k.client_id))
            .markup("<button type=\"submit\" class=\"danger\">Delete</button></form></td></tr>\n");
    }
    out.markup("</tbody>\n</table>\n</details>\n")
}

fn card(a: &Assessed, now: OffsetDateTime, creds: &[CredentialRow], links: &OpenLinks) -> Html {
    let r = &a.record;
    let (i, c) = (r.integration.as_str(), r.connection.as_str());
    let own_links = links
        .get(&(i.to_owned(), c.to_owned()))
        .filter(|l| !l.is_empty());
    let dead = a.condition == Condition::ReauthorizationRequired;
    let rejected = a.condition == Condition::Misconfigured;
    let mut facts = Html::new()
        .markup("<dl>\n<dt>Last refresh</dt><dd>")
        .then(when(r.refreshed_at, now))
        .markup("</dd>\n");
    // A dead grant's access token is of no use: its expiry would only mislead.
    if !dead {
        facts = facts.markup("<dt>Access token expires</dt><dd>");
        facts = if r.never_expires() {
            facts.markup("never (the vendor's tokens do not expire)")
        } else {
            facts.then(when(r.expires_at, now))
        }
        .markup("</dd>\n");
    }
    facts = facts
        .markup("<dt>Vendor account</dt><dd>")
        .then(match &r.account {
            Some(acc) => Html::new()
                .code(crate::oauth::sanitize(&acc.id, 200))
                .text(format!(" ({})", acc.source)),
            None => Html::of("not recorded (it is at the next consent)"),
        })
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
    let mut actions = Html::new().markup("<div class=\"actions\">\n");
    if !dead {
        actions = actions.then(button("refresh", i, c, "Refresh now"));
    }
    if rejected {
        // Neither a consent nor a deletion fixes a rejected client: the banner above says what does.
        actions = actions.markup("<p>Affected by the integration's rejected client credentials (see above); a new consent does not help.</p>\n");
    } else {
        actions = actions
            .then(button("consent_link", i, c, "Create consent link"))
            .markup("<details><summary>Revoke and delete\u{2026}</summary>\n<p>This revokes the grant at the vendor and deletes the connection ")
            .code(format!("{i}/{c}"))
            .markup(". Pipelines using it fail until someone consents again. This cannot be undone.</p>\n<form method=\"post\">")
            .then(hidden("action", "delete"))
            .then(hidden("integration", i))
            .then(hidden("connection", c))
            .markup("<button type=\"submit\" class=\"danger\">Yes, revoke and delete ")
            .text(format!("{i}/{c}"))
            .markup("</button></form>\n</details>\n");
    }
    actions = actions.markup("</div>\n");
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
        .then(own_links.map_or_else(Html::new, |l| open_links(i, c, l, now)))
        .then(actions)
        .then(credentials_list(i, c, creds, now))
        .markup("</section>\n")
}

fn banner(r: &RejectedClient) -> Html {
    let setting = |s: &Option<String>, field: &str| match s {
        Some(name) => Html::new().code(format!("%{name}%")),
        None => Html::new()
            .text("its ")
            .code(field)
            .text(" in the integrations file"),
    };
    let mut affected = Html::new();
    for (n, c) in r.affected.iter().enumerate() {
        if n > 0 {
            affected = affected.text(", ");
        }
        affected = affected.code(c.as_str());
    }
    Html::new()
        .markup("<div class=\"notice failed\" role=\"alert\">\n<p><strong>The vendor rejects the client credentials of ")
        .code(r.integration.as_str())
        .markup("</strong> (invalid_client / unauthorized_client). Its client id comes from ")
        .then(setting(&r.client_id_setting, "client_id"))
        .text(" and its secret from ")
        .then(setting(&r.client_secret_setting, "client_secret"))
        .text(": fix them (and client_auth) in the app settings, then restart the broker; the first call after that retries at once.")
        .markup("</p>\n<p>")
        .text("Affected connections: ")
        .then(affected)
        .markup("</p>\n</div>\n")
}

fn first_connection_form(integration: &str) -> Html {
    Html::new()
        .markup("<form method=\"post\" class=\"first\">")
        .then(hidden("action", "consent_link"))
        .then(hidden("integration", integration))
        .markup("<label for=\"first-")
        .text(integration)
        .markup("\">Connection id for a first account at ")
        .code(integration)
        .markup("</label>\n<input class=\"copy\" id=\"first-")
        .text(integration)
        .markup("\" name=\"connection\" type=\"text\" required maxlength=\"128\" pattern=\"[A-Za-z0-9][A-Za-z0-9._\\-]{0,127}\" value=\"default\">\n<button type=\"submit\">Create consent link</button></form>\n")
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
        Notice::LinkEnded {
            integration,
            connection,
        } => Html::new()
            .markup("<div class=\"notice\" role=\"status\"><p>Ended a consent link of ")
            .code(format!("{integration}/{connection}"))
            .text(": opening it now says it cannot be used.")
            .markup("</p></div>\n"),
        Notice::Refreshed {
            integration,
            connection,
            expires_at,
        } => Html::new()
            .markup("<div class=\"notice\" role=\"status\"><p>Refreshed ")
            .code(format!("{integration}/{connection}"))
            .text("; the new access token expires ")
            .then(when(*expires_at, now))
            .markup(".</p></div>\n"),
        Notice::CredentialDeleted {
            integration,
            connection,
            client_id,
        } => Html::new()
            .markup("<div class=\"notice\" role=\"status\"><p>Deleted the pipeline credential ")
            .code(client_id.as_str())
            .text(" of ")
            .code(format!("{integration}/{connection}"))
            .text("; it stopped working at once.")
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
    extras: &Extras,
) -> actix_web::HttpResponse {
    let creds_of = |a: &Assessed| -> &[CredentialRow] {
        extras
            .credentials
            .get(&(
                a.record.integration.as_str().to_owned(),
                a.record.connection.as_str().to_owned(),
            ))
            .map_or(&[], Vec::as_slice)
    };
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
    for r in &extras.rejected {
        page = page.block(banner(r));
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
    let empty: Vec<&str> = o
        .by_integration
        .iter()
        .filter(|(_, per)| per.is_empty())
        .map(|(n, _)| n.as_str())
        .collect();
    if !empty.is_empty() {
        page = page.heading("Connect a first account").para(Html::of(
            "These integrations have no connection yet. Name the connection (one per vendor account) and create a consent link to send to the account's owner.",
        ));
        for name in empty {
            page = page.block(first_connection_form(name));
        }
    }
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
            page = page.block(card(a, now, creds_of(a), &extras.links));
        }
    }
    if !working.is_empty() {
        page = page.heading("Working");
        for a in &working {
            page = page.block(card(a, now, creds_of(a), &extras.links));
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
            let resp = status_page(
                &o,
                &[(evil.into(), evil.into())],
                now,
                Some(n),
                &Extras::default(),
            );
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
