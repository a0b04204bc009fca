//! The refresh engine's events: which outcome of a consent, refresh or delete
//! is a change of state worth telling. The engine reports every outcome to its
//! [`Transitions`]; what is told goes out through [`Events`]. Each event is emitted by the
//! one process whose store write made the change, or, for states that are not
//! in a connection row, by the one that wins a conditional write of a marker:
//! - `misconfigured:<integration>`: present from the first `invalid_client`
//!   until a refresh succeeds again (of a connection that had failed, or the
//!   first success in a process since start or since it saw the rejection),
//!   so the integration gets one `integration.misconfigured` per breakage,
//!   not one per call;
//! - `failing:<integration>:<connection>`: when transient failures began, and
//!   whether `connection.refresh_failing` was sent; removed by a success;
//! - `grant_ending:<integration>:<connection>:<end>`: `connection.refresh_token_expiring`
//!   was sent for the grant the vendor ends at `<end>` (unix seconds), so one
//!   event per grant: a new consent moves the end, and with it the key.

use serde::{Deserialize, Serialize};

use super::{error_code, Events};
use crate::domain::clock::now;
use crate::domain::{
    Account, ConnectionId, ConnectionRecord, ConnectionStatus, EventType, IntegrationName,
};
use crate::oauth::TokenError;
use crate::store::{Store, StoreError};

#[derive(Serialize, Deserialize)]
struct Failing {
    /// Unix milliseconds of the first failure since the last success.
    since: i64,
    notified: bool,
}

fn misconfigured_key(integration: &IntegrationName) -> String {
    format!("misconfigured:{integration}")
}

fn grant_ending_key(
    integration: &IntegrationName,
    connection: &ConnectionId,
    end: time::OffsetDateTime,
) -> String {
    format!(
        "grant_ending:{integration}:{connection}:{}",
        end.unix_timestamp()
    )
}

fn failing_key(integration: &IntegrationName, connection: &ConnectionId) -> String {
    format!("failing:{integration}:{connection}")
}

/// A failure as events name it: the vendor's OAuth error code, else its class.
fn failure_code(err: &TokenError) -> String {
    match err {
        TokenError::Rejected { error, .. } => error_code(error.as_str()),
        TokenError::Server { status, .. } => format!("http_{status}"),
        TokenError::Transport(_) => "unreachable".into(),
        TokenError::InvalidResponse(_) => "invalid_response".into(),
    }
}

/// Where the refresh engine tells its outcomes. With `events` `None` (the CLI,
/// tests) nothing is told and no marker written; markers of states that are
/// gone are still cleared.
pub struct Transitions {
    store: Store,
    events: Option<Events>,
}

impl Transitions {
    pub fn new(store: Store, events: Option<Events>) -> Self {
        Self { store, events }
    }

    /// The event emitter, for other services (e.g. `connection.no_refresh_token`
    /// at consent): `engine.events().emit(events.event(...))`.
    pub fn events(&self) -> Option<&Events> {
        self.events.as_ref()
    }

    /// Emits `kind` about a connection with its `status` (for other services,
    /// e.g. `connection.no_refresh_token` from the consent checks). Waits for the
    /// outbox write, never for a receiver; nothing happens for an engine built without events.
    pub async fn emit_connection_event(
        &self,
        kind: EventType,
        record: &ConnectionRecord,
        status: &str,
    ) {
        self.emit(kind, record, status, None).await
    }

    async fn emit(
        &self,
        kind: EventType,
        record: &ConnectionRecord,
        status: &str,
        error: Option<String>,
    ) {
        let Some(events) = &self.events else {
            return;
        };
        let mut event = events
            .event(kind, &record.integration, Some(&record.connection))
            .with_status(status);
        event.error = error;
        event.account = record.account.clone();
        events.emit(event).await;
    }

    /// `connection.account_mismatch`: a consent by `attempted` was refused for
    /// the connection, which stays bound to `bound` (and keeps its grant).
    pub async fn emit_account_mismatch(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
        status: Option<&str>,
        attempted: Option<&Account>,
        bound: Option<&Account>,
    ) {
        let Some(events) = self.events.as_ref() else {
            return;
        };
        let mut event = events.event(
            EventType::ConnectionAccountMismatch,
            integration,
            Some(connection),
        );
        event.status = status.map(str::to_owned);
        event.error = Some(
            if attempted.is_some() {
                "account_mismatch"
            } else {
                "account_unverified"
            }
            .into(),
        );
        event.account = attempted.cloned();
        event.previous_account = bound.cloned();
        events.emit(event).await;
    }

    /// A consent stored `record`, replacing `previous` (if any).
    pub(crate) async fn on_consent(
        &self,
        previous: Option<&ConnectionRecord>,
        record: &ConnectionRecord,
    ) {
        let status = record.status.as_str();
        match previous {
            None => {
                self.emit(EventType::ConnectionCreated, record, status, None)
                    .await
            }
            Some(p) => {
                if p.last_error.is_some() {
                    self.clear_failure_markers(p).await;
                }
                if p.grant_ends_at() != record.grant_ends_at() {
                    self.forget_grant_end(p).await;
                }
                let same =
                    matches!((&p.account, &record.account), (Some(a), Some(b)) if a.same_as(b));
                let Some(events) = self.events.as_ref() else {
                    return;
                };
                // Another account (allowed by the operator), or an active grant
                // of unknown account replaced: the binding changed.
                if !same && (p.account.is_some() || !p.status.is_dead()) {
                    let mut event = events
                        .event(
                            EventType::ConnectionAccountChanged,
                            &record.integration,
                            Some(&record.connection),
                        )
                        .with_status(status);
                    event.account = record.account.clone();
                    event.previous_account = p.account.clone();
                    event.account_verified = Some(false);
                    events.emit(event).await;
                }
                // A dead grant (or one that could not be kept alive) works again.
                if p.status.is_dead() && record.status == ConnectionStatus::Active {
                    let mut event = events
                        .event(
                            EventType::ConnectionRecovered,
                            &record.integration,
                            Some(&record.connection),
                        )
                        .with_status(status);
                    event.account = record.account.clone();
                    event.previous_account = p.account.clone();
                    event.account_verified = Some(same);
                    events.emit(event).await;
                }
            }
        }
    }

    /// A refresh succeeded on a connection whose previous state was `previous`.
    pub(crate) async fn on_refreshed(&self, previous: &ConnectionRecord) {
        let suspect = self
            .events
            .as_ref()
            .is_some_and(|e| e.take_suspect(&previous.integration));
        if previous.last_error.is_some() {
            self.clear_failure_markers(previous).await;
        } else if suspect {
            self.forget(&misconfigured_key(&previous.integration)).await;
        }
    }

    /// A refresh failed with `err`; `recorded`: this process's write of the
    /// outcome into the row won (it made the change of state).
    pub(crate) async fn on_failure(
        &self,
        record: &ConnectionRecord,
        err: &TokenError,
        recorded: bool,
    ) {
        if err.is_dead_grant() {
            if recorded {
                self.emit(
                    EventType::ConnectionReauthorizationRequired,
                    record,
                    ConnectionStatus::ReauthorizationRequired.as_str(),
                    Some(failure_code(err)),
                )
                .await;
                if record.last_error.is_some() {
                    self.forget(&failing_key(&record.integration, &record.connection))
                        .await;
                }
            }
        } else if err.is_misconfigured() {
            self.misconfigured(record, err).await;
        } else {
            self.failing(record, err).await;
        }
    }

    /// `connection.refresh_token_expiring`, once per grant: when the vendor
    /// ends `record`'s grant at a fixed age within the warning window, for the
    /// process that creates the grant's marker.
    pub(crate) async fn check_grant_end(
        &self,
        record: &ConnectionRecord,
        max: Option<time::Duration>,
    ) {
        if self.events.as_ref().is_none() || !record.grant_ending(now(), max) {
            return;
        }
        let Some(end) = record.grant_ends_at() else {
            return;
        };
        let key = grant_ending_key(&record.integration, &record.connection, end);
        match self.store.marker_put(&key, "{}", None).await {
            Ok(_) => {
                self.emit(
                    EventType::ConnectionRefreshTokenExpiring,
                    record,
                    record.status.as_str(),
                    None,
                )
                .await
            }
            Err(StoreError::Conflict) => {}
            Err(e) => tracing::warn!(marker = %key, error = %e, "could not record an event marker"),
        }
    }

    /// Forgets the grant-end marker of a grant that is gone (deleted or replaced).
    pub(crate) async fn forget_grant_end(&self, record: &ConnectionRecord) {
        if let Some(end) = record.grant_ends_at() {
            self.forget(&grant_ending_key(
                &record.integration,
                &record.connection,
                end,
            ))
            .await;
        }
    }

    /// A connection was deleted.
    pub(crate) async fn on_deleted(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
    ) {
        let Some(events) = self.events.as_ref() else {
            return;
        };
        self.forget(&failing_key(integration, connection)).await;
        let event = events
            .event(EventType::ConnectionDeleted, integration, Some(connection))
            .with_status("deleted");
        events.emit(event).await;
    }

    async fn clear_failure_markers(&self, previous: &ConnectionRecord) {
        self.forget(&failing_key(&previous.integration, &previous.connection))
            .await;
        self.forget(&misconfigured_key(&previous.integration)).await;
    }

    /// Clears the integration's `integration.misconfigured` marker.
    pub(crate) async fn forget_misconfigured(&self, integration: &IntegrationName) {
        self.forget(&misconfigured_key(integration)).await;
    }

    async fn forget(&self, key: &str) {
        if let Err(e) = self.store.marker_delete(key).await {
            tracing::warn!(marker = key, error = %e, "could not clear an event marker");
        }
    }

    /// `integration.misconfigured`, once: for the process that creates the marker.
    async fn misconfigured(&self, record: &ConnectionRecord, err: &TokenError) {
        let Some(events) = self.events.as_ref() else {
            return;
        };
        events.suspect(&record.integration);
        let key = misconfigured_key(&record.integration);
        match self.store.marker_put(&key, "{}", None).await {
            Ok(_) => {
                self.emit(
                    EventType::IntegrationMisconfigured,
                    record,
                    record.status.as_str(),
                    Some(failure_code(err)),
                )
                .await
            }
            Err(StoreError::Conflict) => {}
            Err(e) => tracing::warn!(marker = %key, error = %e, "could not record an event marker"),
        }
    }

    /// `connection.refresh_failing`, once, when transient failures have lasted
    /// longer than the configured time.
    async fn failing(&self, record: &ConnectionRecord, err: &TokenError) {
        let Some(events) = self.events.as_ref() else {
            return;
        };
        let key = failing_key(&record.integration, &record.connection);
        let at = now();
        let at_ms = (at.unix_timestamp_nanos() / 1_000_000) as i64;
        let threshold = events.settings().refresh_failing_after;
        for _ in 0..3 {
            let current = match self.store.marker_get(&key).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(marker = %key, error = %e, "could not read an event marker");
                    return;
                }
            };
            let (state, version) = match current {
                None => {
                    let first = Failing {
                        since: at_ms,
                        notified: false,
                    };
                    let value = serde_json::to_string(&first).unwrap_or_default();
                    match self.store.marker_put(&key, &value, None).await {
                        Ok(version) => (first, version),
                        Err(StoreError::Conflict) => continue,
                        Err(e) => {
                            tracing::warn!(marker = %key, error = %e, "could not record an event marker");
                            return;
                        }
                    }
                }
                Some(v) => match serde_json::from_str::<Failing>(&v.value) {
                    Ok(state) => (state, v.version),
                    Err(_) => {
                        self.forget(&key).await;
                        continue;
                    }
                },
            };
            let failing_for = time::Duration::milliseconds(at_ms - state.since);
            if state.notified || failing_for < threshold {
                return;
            }
            let value = serde_json::to_string(&Failing {
                notified: true,
                ..state
            })
            .unwrap_or_default();
            match self.store.marker_put(&key, &value, Some(&version)).await {
                Ok(_) => {
                    let mut error = failure_code(err);
                    error.truncate(64);
                    self.emit(
                        EventType::ConnectionRefreshFailing,
                        record,
                        record.status.as_str(),
                        Some(error),
                    )
                    .await;
                    return;
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => {
                    tracing::warn!(marker = %key, error = %e, "could not record an event marker");
                    return;
                }
            }
        }
    }
}
