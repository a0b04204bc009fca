//! One connection's card on the status page: its condition and what it
//! means, the facts (last refresh, expiry, vendor account, last error), its
//! open consent links, the actions (refresh, consent link, revoke and delete)
//! and its pipeline credentials.

use time::OffsetDateTime;

use super::{hidden, when, CredentialRow, OpenLink, OpenLinks};
use crate::domain::condition::Assessed;
use crate::domain::{Condition, ConnectionRecord};
use crate::routes::html::pages::shown;
use crate::routes::html::Html;

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

/// A connection's card: name and condition, facts, open links, actions and
/// pipeline credentials.
pub(super) fn card(
    a: &Assessed,
    now: OffsetDateTime,
    creds: &[CredentialRow],
    links: &OpenLinks,
) -> Html {
    let r = &a.record;
    let (i, c) = (r.integration.as_str(), r.connection.as_str());
    let own_links = links
        .get(&(i.to_owned(), c.to_owned()))
        .filter(|l| !l.is_empty());
    let dead = a.condition == Condition::ReauthorizationRequired;
    let rejected = a.condition == Condition::Misconfigured;
    let facts = facts(r, dead, now);
    let section = if a.condition.needs_attention() {
        "<section class=\"conn attention\">\n<h3>"
    } else {
        "<section class=\"conn\">\n<h3>"
    };
    let actions = actions(i, c, dead, rejected);
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

/// The facts about a connection: last refresh, access token expiry (not for
/// a `dead` grant), vendor account, when the grant ends, the last error.
fn facts(r: &ConnectionRecord, dead: bool, now: OffsetDateTime) -> Html {
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
    facts.markup("</dl>\n")
}

/// A connection's buttons: refresh (not for a `dead` grant), then a consent
/// link and revoke-and-delete, or, for a `rejected` client, why neither helps.
fn actions(i: &str, c: &str, dead: bool, rejected: bool) -> Html {
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
    actions.markup("</div>\n")
}
