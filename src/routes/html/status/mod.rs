//! The operators' status page: counts per integration, then every connection,
//! those that need attention first, each with a button that creates a consent
//! link and one that revokes and deletes it (behind a `<details>`
//! confirmation). No script: the forms have no `action`, so they post back to
//! the page's own URL, function key (`?code=`) included, and the key never
//! appears in the page.
//!
//! Here: the page's model and its sections; a connection's card is in `card`,
//! how times are written in `times`.

use std::collections::BTreeMap;

use time::OffsetDateTime;

mod card;
mod times;

use super::pages::shown;
use super::{Html, Page};
use crate::domain::condition::{Assessed, Overview};
use crate::domain::Condition;
use card::card;
use times::when;

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

fn hidden(name: &'static str, value: &str) -> Html {
    Html::new()
        .markup("<input type=\"hidden\" name=\"")
        .markup(name)
        .markup("\" value=\"")
        .text(value)
        .markup("\">")
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
    page = page.lead(lead(attention.len(), o.connections.len()));
    page = page.heading("By integration").block(by_integration(o));
    page = first_accounts(page, o);
    if !unavailable.is_empty() {
        page = page.list(false, unavailable_items(unavailable));
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

/// The page's lead: how many of the `total` connections need attention.
fn lead(attention: usize, total: usize) -> Html {
    if attention == 0 {
        Html::of(total).text(if total == 1 {
            " connection, all working."
        } else {
            " connections, all working."
        })
    } else {
        Html::of(attention)
            .text(" of ")
            .text(total)
            .text(if total == 1 {
                " connection"
            } else {
                " connections"
            })
            .text(if attention == 1 {
                " needs attention."
            } else {
                " need attention."
            })
    }
}

/// The table of connection counts by status, one row per integration.
fn by_integration(o: &Overview) -> Html {
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
    table.markup("</tbody>\n</table>\n")
}

/// For integrations without a connection: a form each to create a first
/// consent link (nothing when every integration has one).
fn first_accounts(mut page: Page, o: &Overview) -> Page {
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
    page
}

/// The integrations that are not available, each with its reason.
fn unavailable_items(unavailable: &[(String, String)]) -> Vec<Html> {
    unavailable
        .iter()
        .map(|(name, reason)| {
            Html::new()
                .code(shown(name))
                .text(": unavailable, ")
                .text(shown_reason(reason))
        })
        .collect()
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
}
