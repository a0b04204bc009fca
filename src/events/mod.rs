//! Events and their delivery: every change of state of a connection or an
//! integration is one JSON log line (`"event": "<type>"`, the input of the
//! Azure Monitor alert) and, when `BROKER_WEBHOOK_URL` is set, one signed POST
//! per receiver, delivered at least once from an outbox in the store.
//!
//! Delivery:
//! - [`Events::emit`] logs the line, writes one outbox entry per receiver
//!   (already claimed by this process: due only when the claim lapses) and
//!   hands the entries to a spawned task; the caller waits for the store
//!   write, never for a receiver;
//! - a failed attempt (connection error, 10 s timeout, non-2xx) is rescheduled
//!   `BROKER_WEBHOOK_RETRY_SECS` later, doubling up to an hour, and abandoned
//!   (with an error line) at the first failure 24 hours after the event;
//! - [`Events::drain`] delivers what is due: the background dispatcher calls it
//!   (standalone, and under the Functions host while the instance lives), and
//!   so does every timer invocation, which the host keeps alive until it
//!   answers. Each entry is claimed with a conditional write first, so two
//!   instances never deliver the same entry at once; a crash mid-delivery lets
//!   the claim lapse (30 s) and the entry is delivered again, with the same id.
//!
//! Nothing here logs a receiver's URL (a Teams or Slack URL is a credential),
//! a consent link, or more than a bounded, sanitised snippet of an answer.
//!
//! Depends on `domain`, `config` and `store`. The bodies receivers get are in
//! `format`, the signature in `signing`; this file is the outbox delivery.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use futures::StreamExt;
use time::Duration;

use crate::config::{EventSettings, WebhookReceiver};
use crate::domain::clock::now;
use crate::domain::{ConnectionId, Event, EventType, IntegrationName, Secret};
use crate::store::{OutboxEntry, Store, StoreError, Versioned};

mod format;
mod signing;
mod transitions;
use format::body_for;
pub use format::{error_code, json_body, new_event_id, slack_body, teams_body};
pub use signing::signature;
pub use transitions::Transitions;

/// One delivery attempt's limit.
pub const DELIVERY_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// How long an instance holds an entry it is delivering.
const CLAIM: Duration = Duration::seconds(30);
/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::hours(1);
/// Failed deliveries are retried for at least this long after the event.
pub const RETRY_FOR: Duration = Duration::hours(24);
/// Entries delivered at once by one drain.
const CONCURRENCY: usize = 8;
/// Bytes of a receiver's answer read (and at most 120 characters logged).
const ANSWER_BYTES: usize = 512;

/// Makes keyless consent links for `connection.reauthorization_required`
/// (`consent::LinkIssuer` implements it).
#[async_trait::async_trait]
pub trait ConsentLinks: Send + Sync {
    async fn consent_link(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
    ) -> Option<Secret>;
}

/// What one drain did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DrainSummary {
    pub delivered: u32,
    pub failed: u32,
}

#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    http: reqwest::Client,
    settings: EventSettings,
    /// `None`: events carry no consent link (the CLI, tests).
    links: Option<Arc<dyn ConsentLinks>>,
    /// Integrations whose `misconfigured` marker this process has cleared
    /// since it last saw their credentials rejected (see [`Events::suspect`]).
    cleared: std::sync::Mutex<std::collections::HashSet<IntegrationName>>,
}

/// The delay before attempt `attempts + 1`: `first`, doubling, at most an hour.
pub fn backoff(first: StdDuration, attempts: u32) -> Duration {
    let first = Duration::try_from(first).unwrap_or(Duration::seconds(10));
    let factor = 1i32 << attempts.saturating_sub(1).min(20);
    (first * factor).min(MAX_BACKOFF)
}

/// Replaces every consent-link token of `payload` found in `text` (a receiver
/// that echoes its request must not put the link into the log).
fn redact(text: &str, payload: &str) -> String {
    let mut out = text.to_owned();
    let mut rest = payload;
    while let Some(at) = rest.find("link?t=") {
        let token: String = rest[at + 7..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '%'))
            .collect();
        if token.len() >= 8 {
            out = out.replace(&token, "[redacted]");
        }
        rest = &rest[at + 7..];
    }
    out
}

impl Events {
    /// `links`: where `connection.reauthorization_required` gets its consent link.
    pub fn new(
        store: Store,
        http: reqwest::Client,
        settings: EventSettings,
        links: Option<Arc<dyn ConsentLinks>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                http,
                settings,
                links,
                cleared: Default::default(),
            }),
        }
    }

    /// This process saw `integration`'s credentials rejected: its next success
    /// clears the integration's marker (see `transitions`).
    pub fn suspect(&self, integration: &IntegrationName) {
        self.cleared_set().remove(integration);
    }

    /// True the first time after start, or after [`Events::suspect`], that a
    /// refresh of `integration` succeeds here: time to clear its marker.
    pub fn take_suspect(&self, integration: &IntegrationName) -> bool {
        self.cleared_set().insert(integration.clone())
    }

    fn cleared_set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<IntegrationName>> {
        self.inner.cleared.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn settings(&self) -> &EventSettings {
        &self.inner.settings
    }

    /// A new event of `kind`, now, with a fresh id.
    pub fn event(
        &self,
        kind: EventType,
        integration: &IntegrationName,
        connection: Option<&ConnectionId>,
    ) -> Event {
        let at = now();
        Event::new(
            new_event_id(at),
            kind,
            at,
            integration.clone(),
            connection.cloned(),
        )
    }

    /// Emits an event: one log line, and one outbox entry per receiver whose
    /// delivery starts in the background. Waits for the store, never for a
    /// receiver. A `connection.reauthorization_required` or
    /// `connection.refresh_token_expiring` event gets a fresh consent link when
    /// receivers are configured.
    pub async fn emit(&self, mut event: Event) {
        let receivers = &self.inner.settings.receivers;
        if matches!(
            event.kind,
            EventType::ConnectionReauthorizationRequired
                | EventType::ConnectionRefreshTokenExpiring
        ) && event.consent_link.is_none()
            && !receivers.is_empty()
        {
            if let (Some(links), Some(c)) = (&self.inner.links, &event.connection) {
                event.consent_link = links.consent_link(&event.integration, c).await;
            }
        }
        tracing::info!(
            event = event.kind.as_str(),
            event_id = %event.id,
            integration = event.integration.as_str(),
            connection = event.connection.as_ref().map(ConnectionId::as_str),
            status = event.status.as_deref(),
            error = event.error.as_deref(),
            consent_link = event.consent_link.is_some(),
            account = event.account.as_ref().map(|a| a.id.as_str()),
            previous_account = event.previous_account.as_ref().map(|a| a.id.as_str()),
            account_verified = event.account_verified,
            receivers = receivers.len(),
            "event"
        );
        let at = now();
        let mut claimed = Vec::new();
        for r in receivers {
            let body = body_for(r.format, &event).to_string();
            let entry = OutboxEntry {
                key: format!("{}.{}", event.id, r.id),
                event_id: event.id.clone(),
                event_type: event.kind.as_str().to_owned(),
                receiver: r.id.clone(),
                occurred_at: event.occurred_at,
                next_attempt_at: at + CLAIM,
                attempts: 0,
                last_error: None,
                payload: Secret::new(body),
            };
            match self.add(&entry).await {
                Ok(version) => claimed.push(Versioned {
                    value: entry,
                    version,
                }),
                Err(e) => {
                    tracing::error!(event_type = event.kind.as_str(), event_id = %event.id, receiver = %r.id, error = %e, "could not put an event into the outbox; it is not delivered")
                }
            }
        }
        if !claimed.is_empty() {
            let this = self.clone();
            tokio::spawn(async move {
                futures::stream::iter(claimed)
                    .for_each_concurrent(CONCURRENCY, |v| async {
                        this.deliver(v).await;
                    })
                    .await;
            });
        }
    }

    /// Writes an outbox entry, retrying a store failure briefly.
    async fn add(&self, entry: &OutboxEntry) -> Result<crate::store::Version, StoreError> {
        let mut delay = StdDuration::from_millis(200);
        let mut tries = 0;
        loop {
            tries += 1;
            match self.inner.store.outbox_add(entry).await {
                Err(StoreError::Unavailable(_)) if tries < 3 => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                other => return other,
            }
        }
    }

    /// Delivers due entries (claiming each first), a batch at a time, until
    /// none is due or `budget` has passed; no batch starts after the budget,
    /// and one batch takes at most one delivery timeout plus store calls.
    pub async fn drain(&self, budget: StdDuration) -> DrainSummary {
        let mut summary = DrainSummary::default();
        if self.inner.settings.receivers.is_empty() {
            return summary;
        }
        let started = tokio::time::Instant::now();
        while started.elapsed() < budget {
            // One batch is delivered all at once, well inside the claims it takes.
            let due = match self.inner.store.outbox_due(now(), CONCURRENCY as u32).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the event outbox");
                    return summary;
                }
            };
            if due.is_empty() {
                return summary;
            }
            let mut claimed = Vec::new();
            for v in due {
                let mut entry = v.value.clone();
                entry.next_attempt_at = now() + CLAIM;
                match self.inner.store.outbox_update(&entry, &v.version).await {
                    Ok(version) => claimed.push(Versioned {
                        value: entry,
                        version,
                    }),
                    // Another instance claimed or finished it.
                    Err(StoreError::Conflict | StoreError::NotFound) => {}
                    Err(e) => tracing::warn!(error = %e, "could not claim an outbox entry"),
                }
            }
            if claimed.is_empty() {
                // Due entries that others hold, or a store that does not answer: later.
                return summary;
            }
            let results: Vec<bool> = futures::stream::iter(claimed)
                .map(|v| self.deliver(v))
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            for ok in results {
                if ok {
                    summary.delivered += 1;
                } else {
                    summary.failed += 1;
                }
            }
        }
        summary
    }

    /// Delivers entries as they fall due, for as long as the process lives.
    pub fn spawn_dispatcher(&self) {
        if self.inner.settings.receivers.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                this.drain(StdDuration::from_secs(60)).await;
                tokio::time::sleep(this.inner.settings.retry).await;
            }
        });
    }

    fn receiver(&self, id: &str) -> Option<&WebhookReceiver> {
        self.inner.settings.receivers.iter().find(|r| r.id == id)
    }

    /// One attempt at one claimed entry; true when the receiver took it.
    async fn deliver(&self, v: Versioned<OutboxEntry>) -> bool {
        let Versioned {
            value: mut entry,
            version,
        } = v;
        let store = &self.inner.store;
        let Some(receiver) = self.receiver(&entry.receiver) else {
            tracing::warn!(event_type = %entry.event_type, event_id = %entry.event_id, receiver = %entry.receiver, "dropping an outbox entry for a receiver that is no longer configured");
            let _ = store.outbox_remove(&entry.key, &version).await;
            return false;
        };
        entry.attempts += 1;
        let started = std::time::Instant::now();
        let outcome = self.post(receiver, &entry).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        let (ev, id, rid, host) = (
            entry.event_type.clone(),
            entry.event_id.clone(),
            receiver.id.as_str(),
            receiver.host.as_str(),
        );
        match outcome {
            Ok(status) => {
                tracing::info!(event_type = %ev, event_id = %id, receiver = rid, host, status, attempts = entry.attempts, duration_ms, "event delivered");
                if let Err(e) = store.outbox_remove(&entry.key, &version).await {
                    // Delivered, but may be delivered again (receivers de-duplicate on the id).
                    tracing::warn!(event_id = %id, error = %e, "could not remove a delivered event from the outbox");
                }
                true
            }
            Err(problem) => {
                let at = now();
                if at - entry.occurred_at >= RETRY_FOR {
                    tracing::error!(event_type = %ev, event_id = %id, receiver = rid, host, attempts = entry.attempts, error = %problem, "event delivery abandoned after 24 hours of failures");
                    let _ = store.outbox_remove(&entry.key, &version).await;
                    return false;
                }
                let wait = backoff(self.inner.settings.retry, entry.attempts);
                entry.next_attempt_at = at + wait;
                entry.last_error = Some(problem.clone());
                tracing::warn!(event_type = %ev, event_id = %id, receiver = rid, host, attempts = entry.attempts, duration_ms, error = %problem, retry_in_secs = wait.whole_seconds(), "event delivery failed; it will be retried");
                match store.outbox_update(&entry, &version).await {
                    Ok(_) | Err(StoreError::Conflict | StoreError::NotFound) => {}
                    // The claim lapses and the entry is retried anyway.
                    Err(e) => {
                        tracing::warn!(event_id = %id, error = %e, "could not reschedule an event delivery")
                    }
                }
                false
            }
        }
    }

    /// POSTs the entry's body; `Ok(status)` on 2xx, else why not (no secret,
    /// a bounded and sanitised snippet of the answer at most).
    async fn post(&self, receiver: &WebhookReceiver, entry: &OutboxEntry) -> Result<u16, String> {
        let body = entry.payload.expose().as_bytes().to_vec();
        let mut req = self
            .inner
            .http
            .post(receiver.url.expose())
            .timeout(DELIVERY_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Broker-Event-Id", &entry.event_id)
            .header("X-Broker-Event-Type", &entry.event_type);
        if let Some(secret) = &receiver.secret {
            req = req.header(
                "X-Broker-Signature",
                signature(secret, now().unix_timestamp(), &body),
            );
        }
        let mut resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Err("timed out".into()),
            Err(e) if e.is_connect() => return Err("could not connect".into()),
            Err(_) => return Err("the request failed".into()),
        };
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(status);
        }
        let mut answer = Vec::new();
        while answer.len() < ANSWER_BYTES {
            match resp.chunk().await {
                Ok(Some(c)) => answer.extend_from_slice(&c),
                _ => break,
            }
        }
        answer.truncate(ANSWER_BYTES);
        let snippet = crate::oauth::sanitize(&String::from_utf8_lossy(&answer), 120);
        let snippet = redact(&snippet, entry.payload.expose());
        Err(if snippet.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {snippet}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_delay_up_to_an_hour() {
        let first = StdDuration::from_secs(10);
        let secs: Vec<i64> = (1..=11)
            .map(|n| backoff(first, n).whole_seconds())
            .collect();
        assert_eq!(
            secs,
            [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
        );
    }

    #[test]
    fn an_echoed_consent_link_is_redacted() {
        let payload = r#"{"consent_link":"https://b.example/api/auth/link?t=AbCdEf123456_-xyz"}"#;
        let echoed = "bad request: https://b.example/api/auth/link?t=AbCdEf123456_-xyz";
        let out = redact(echoed, payload);
        assert!(!out.contains("AbCdEf123456"), "{out}");
    }
}
