//! What an event looks like on the way out: its id, the error codes it may
//! carry, and the bodies each kind of receiver gets (JSON, a Teams Adaptive
//! Card, a Slack message). Pure functions: nothing here sends or stores.

use rand::RngCore;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::WebhookFormat;
use crate::domain::{ConnectionId, Event, Secret};

/// A new event id: `evt_`, the time in milliseconds (12 hex digits, so ids sort
/// by time) and 64 random bits.
pub fn new_event_id(at: OffsetDateTime) -> String {
    let mut r = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut r);
    let ms = (at.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
    let rand: String = r.iter().map(|b| format!("{b:02x}")).collect();
    format!("evt_{ms:012x}{rand}")
}

/// A vendor error code or failure class as events carry it: `[A-Za-z0-9_.:-]`,
/// at most 64 characters (safe in chat markup and log queries).
pub fn error_code(raw: &str) -> String {
    raw.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
        .take(64)
        .collect()
}

/// The event as receivers get it (JSON receivers).
pub fn json_body(e: &Event) -> Value {
    json!({
        "id": e.id,
        "type": e.kind.as_str(),
        "occurred_at": e.occurred_at.format(&Rfc3339).unwrap_or_default(),
        "integration": e.integration.as_str(),
        "connection": e.connection.as_ref().map(ConnectionId::as_str),
        "status": e.status,
        "error": e.error,
        "consent_link": e.consent_link.as_ref().map(Secret::expose),
        "account": e.account,
        "previous_account": e.previous_account,
        "account_verified": e.account_verified,
    })
}

fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The facts of an event, for chat receivers.
fn facts(e: &Event) -> Vec<(&'static str, String)> {
    let mut f = vec![("Integration", e.integration.as_str().to_owned())];
    if let Some(c) = &e.connection {
        f.push(("Connection", c.as_str().to_owned()));
    }
    if let Some(s) = &e.status {
        f.push(("Status", s.clone()));
    }
    if let Some(err) = &e.error {
        f.push(("Error", err.clone()));
    }
    if let Some(a) = &e.account {
        f.push(("Account", a.id.clone()));
    }
    if let Some(a) = &e.previous_account {
        f.push(("Previous account", a.id.clone()));
    }
    f.push(("Event", format!("{} {}", e.kind.as_str(), e.id)));
    f
}

/// A Teams message: one Adaptive Card (incoming webhooks and Workflows accept it).
pub fn teams_body(e: &Event) -> Value {
    let facts: Vec<Value> = facts(e)
        .into_iter()
        .map(|(k, v)| json!({"title": k, "value": v}))
        .collect();
    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": true,
             "text": format!("oauth-broker: {}", e.kind.headline())},
            {"type": "FactSet", "facts": facts}
        ]
    });
    if let Some(link) = &e.consent_link {
        card["actions"] =
            json!([{"type": "Action.OpenUrl", "title": "Consent again", "url": link.expose()}]);
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card
        }]
    })
}

/// A Slack message (`text` with mrkdwn).
pub fn slack_body(e: &Event) -> Value {
    let mut text = format!("*oauth-broker: {}*", slack_escape(e.kind.headline()));
    for (k, v) in facts(e) {
        text.push_str(&format!("\n{k}: `{}`", slack_escape(&v)));
    }
    if let Some(link) = &e.consent_link {
        text.push_str(&format!(
            "\n<{}|Consent again> (the link expires; it works once)",
            slack_escape(link.expose())
        ));
    }
    json!({ "text": text })
}

pub(super) fn body_for(format: WebhookFormat, e: &Event) -> Value {
    match format {
        WebhookFormat::Json => json_body(e),
        WebhookFormat::Teams => teams_body(e),
        WebhookFormat::Slack => slack_body(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventType, IntegrationName};

    #[test]
    fn error_codes_keep_only_a_safe_alphabet() {
        assert_eq!(error_code("invalid_grant"), "invalid_grant");
        assert_eq!(error_code("x](http://evil)<b>"), "xhttp:evilb");
        assert_eq!(error_code(&"a".repeat(100)).len(), 64);
    }

    #[test]
    fn chat_bodies_carry_the_facts_and_the_link() {
        let mut e = Event::new(
            "evt_1".into(),
            EventType::ConnectionReauthorizationRequired,
            OffsetDateTime::UNIX_EPOCH,
            IntegrationName::parse("xero").unwrap(),
            Some(ConnectionId::parse("acme").unwrap()),
        )
        .with_status("reauthorization_required")
        .with_error("invalid_grant");
        e.consent_link = Some(Secret::new("https://b.example/api/auth/link?t=abc"));
        let teams = teams_body(&e).to_string();
        assert!(teams.contains("AdaptiveCard") && teams.contains("acme"));
        assert!(teams.contains("Action.OpenUrl") && teams.contains("link?t=abc"));
        let slack = slack_body(&e)["text"].as_str().unwrap().to_owned();
        assert!(
            slack.contains("`invalid_grant`")
                && slack.contains("<https://b.example/api/auth/link?t=abc|Consent again>")
        );
        let json = json_body(&e);
        for k in [
            "id",
            "type",
            "occurred_at",
            "integration",
            "connection",
            "status",
            "error",
            "consent_link",
            "account",
            "previous_account",
            "account_verified",
        ] {
            assert!(json.get(k).is_some(), "{k} in {json}");
        }
        assert_eq!(json["occurred_at"], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn event_ids_sort_by_time() {
        let a = new_event_id(OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap());
        let b = new_event_id(OffsetDateTime::from_unix_timestamp(1_700_000_001).unwrap());
        assert!(
            a < b && a.starts_with("evt_") && a.len() == 4 + 12 + 16,
            "{a} {b}"
        );
    }
}
