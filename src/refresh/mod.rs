//! The refresh engine: `ensure_fresh` for the token route and `sweep` for the
//! timer. It is the only place that decides to spend a refresh token.
//!
//! One refresh per connection at a time:
//! - within a process, callers for one connection queue on one async gate; the
//!   gate keeps the record its last holder obtained, so followers take the
//!   leader's result without another store read: any refresh that completed
//!   after a caller arrived serves it while its token is valid, even short of
//!   its need (asking again would only multiply refreshes);
//! - the margin is capped at half the token's issued lifetime for callers, so
//!   tokens shorter-lived than the margin are not refreshed on every call (the
//!   sweep keeps the whole margin);
//! - across processes, a lease is written into the row with a conditional
//!   write (ETag / version) before the vendor is called; callers that find a
//!   live lease wait (bounded) and re-read, never presenting the old token;
//! - the new tokens are written conditionally on the lease's version
//!   (fencing): a holder whose lease lapsed and was taken over cannot
//!   overwrite the newer grant. Retries stop while enough lease remains.
//!
//! Store round trips: callers of one connection arriving together share its
//! first read, each taking only a read that started after it arrived
//! (`coalesce`); a row already in hand (the sweep's listing, or the first read
//! when nobody in this process queues ahead) goes straight to the conditional
//! lease write, and any other decision is taken on a fresh read.
//!
//! Rotation safety: the new refresh token is persisted before the new access
//! token is handed out; when the vendor returns none the old one is kept, and
//! refresh never sends `scope` (RFC 6749 §6).
//!
//! Failures (RFC 6749 §5.2) are recorded on the row (`last_error`,
//! `last_error_at`): `invalid_grant` marks the grant dead; `invalid_client` /
//! `unauthorized_client` blame the integration, not the connection;
//! everything else transient is retried with backoff, then cools down.
//!
//! Every outcome is reported to the `events::Transitions` the engine is built
//! with, which decides what is an event (told once across instances).
//!
//! Files: this one decides (due, gate, lease); `upstream.rs` calls the vendor
//! under the lease and stores the outcome; `consent.rs` stores a completed
//! consent's grant; `sweep.rs` is the timer's pass; `config_change.rs` what a
//! changed client configuration means. Every "now" is the engine's `Clock`
//! (manual in `tests/`).

use std::collections::HashMap;

use std::sync::{Arc, Mutex};

use rand::RngCore;
use time::{Duration, OffsetDateTime};

mod config_change;
mod consent;
mod sweep;
#[cfg(test)]
mod tests;
mod upstream;

pub use consent::ConsentOutcome;

use crate::coalesce::Coalescer;
use crate::config::{Integration, RefreshPolicy};
pub use crate::domain::clock::now;
use crate::domain::clock::Clock;
use crate::domain::grant::refresh_threshold;
use crate::domain::{ConnectionId, ConnectionRecord, ConnectionStatus, IntegrationName};
use crate::oauth::TokenError;
use crate::registry::{Lookup, Registry};
use crate::store::{Store, StoreError, Versioned};

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("connection not found")]
    NotFound,
    #[error("the grant is no longer valid; a new consent is required")]
    ReauthorizationRequired,
    /// `invalid_client` / `unauthorized_client`: fix the integration.
    #[error(transparent)]
    Misconfigured(TokenError),
    #[error(transparent)]
    Upstream(TokenError),
    /// A recent refresh failed; no new attempt until the cool-down ends.
    #[error("a refresh failed {seconds_ago} s ago ({last_error}); the next attempt is allowed after the cool-down")]
    CoolingDown {
        last_error: String,
        seconds_ago: i64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("another instance is refreshing this connection and did not finish in time")]
    Busy,
}

/// What a caller needs from a connection's access token.
#[derive(Debug, Clone, Copy, Default)]
pub struct Need {
    /// Seconds of validity wanted beyond the integration's margin.
    pub min_validity: Option<Duration>,
    /// Refresh even if the token is fresh.
    pub force: bool,
    /// Keep-alive: refresh if last refreshed before this instant.
    pub refreshed_before: Option<OffsetDateTime>,
    /// The sweep: the integration's whole margin applies, not capped by the
    /// token's lifetime (so a short-lived token is refreshed once per sweep
    /// and callers rarely wait for one).
    pub whole_margin: bool,
    /// Cap `min_validity` too at half the stored token's lifetime (pipeline
    /// credentials), so a wish longer than the vendor's tokens live does not
    /// refresh on every call.
    pub cap_by_lifetime: bool,
    /// An operator's "Refresh now": refresh even during a cool-down (once).
    pub bypass_cooldown: bool,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SweepSummary {
    pub refreshed: u32,
    pub failed: u32,
    pub reauthorization_required: u32,
}

type Key = (IntegrationName, ConnectionId);

/// A connection's read, started before the caller was authenticated
/// (beside a pipeline credential's, see `credentials`); used only once the caller is allowed
/// this connection.
pub struct Prefetched {
    key: Key,
    row: Result<Option<Versioned<ConnectionRecord>>, StoreError>,
}

impl Prefetched {
    /// A read of `integration`/`connection` made elsewhere (beside a credential's).
    pub fn from_read(
        integration: IntegrationName,
        connection: ConnectionId,
        row: Result<Option<Versioned<ConnectionRecord>>, StoreError>,
    ) -> Self {
        Self {
            key: (integration, connection),
            row,
        }
    }
}

/// One per connection while anyone in this process wants to refresh it. It
/// holds the record the last holder obtained, so callers queued behind a
/// refresh take its result without another store read.
type Gate = Arc<tokio::sync::Mutex<Option<ConnectionRecord>>>;

pub struct Engine {
    store: Store,
    http: reqwest::Client,
    integrations: Arc<Registry>,
    policy: RefreshPolicy,
    inflight: Mutex<HashMap<Key, Gate>>,
    /// The token route's reads of one connection at one moment, shared (see `coalesce`).
    reads: Coalescer<Key, Result<Option<Versioned<ConnectionRecord>>, StoreError>>,
    /// Identifies this process in leases.
    owner: String,
    /// Where changes of state are told (see `events::Transitions`).
    notify: crate::events::Transitions,
    /// When each integration's client configuration last changed (see `config_change`).
    config_changed: std::sync::RwLock<HashMap<IntegrationName, OffsetDateTime>>,
    /// Every decision's "now" (leases, cool-downs, expiry); manual in unit tests.
    clock: Clock,
}

fn std_duration(d: Duration) -> std::time::Duration {
    std::time::Duration::try_from(d).unwrap_or_default()
}

impl Engine {
    pub fn new(
        store: Store,
        http: reqwest::Client,
        integrations: Arc<Registry>,
        policy: RefreshPolicy,
        events: Option<crate::events::Events>,
    ) -> Self {
        let mut id = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut id);
        let notify = crate::events::Transitions::new(store.clone(), events);
        Self {
            store,
            http,
            integrations,
            policy,
            inflight: Mutex::new(HashMap::new()),
            reads: Coalescer::default(),
            owner: id.iter().map(|b| format!("{b:02x}")).collect(),
            notify,
            config_changed: std::sync::RwLock::new(HashMap::new()),
            clock: Clock::system(),
        }
    }

    /// The same engine reading its time from `clock` (unit tests).
    #[cfg(test)]
    pub(crate) fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Where this engine tells changes of state; other services report theirs
    /// there too (e.g. `connection.no_refresh_token` from the consent checks).
    pub fn transitions(&self) -> &crate::events::Transitions {
        &self.notify
    }

    /// Resolves an integration by name (see `registry`).
    pub fn integration(&self, name: &IntegrationName) -> Lookup {
        self.integrations.get(name)
    }

    /// True when `record` does not satisfy `need` at `now`.
    fn wants_refresh(
        &self,
        integration: &Integration,
        record: &ConnectionRecord,
        need: &Need,
        now: OffsetDateTime,
    ) -> bool {
        // A token that does not expire, with nothing to renew it with, is served as is.
        if record.never_expires()
            && record.tokens.refresh_token.is_none()
            && integration.renew.is_none()
        {
            return false;
        }
        let min_validity = match need.min_validity {
            Some(m) if need.cap_by_lifetime && record.issued_lifetime() > Duration::ZERO => {
                Some(m.min(record.issued_lifetime() / 2))
            }
            m => m,
        };
        let threshold = |min_validity: Option<Duration>| {
            if need.whole_margin {
                min_validity.map_or(integration.refresh_margin, |m| {
                    m.max(integration.refresh_margin)
                })
            } else {
                refresh_threshold(
                    integration.refresh_margin,
                    min_validity,
                    record.issued_lifetime(),
                )
            }
        };
        // Due without anyone's wish: the margin, or the keep-alive.
        if record.is_due(now, threshold(None))
            || need
                .refreshed_before
                .is_some_and(|t| record.refreshed_at < t)
        {
            return true;
        }
        if !(need.force || record.is_due(now, threshold(min_validity))) {
            return false;
        }
        // A forced refresh (force_refresh, or more validity than the stored
        // token has): at most one per BROKER_MIN_FORCED_REFRESH_SECS per
        // connection, counted from the last refresh the vendor granted (the
        // row's `refreshed_at`, so across callers and instances); inside the
        // window the current token, still valid by the margin, is served.
        let budget = self.policy.min_forced_refresh;
        if budget > Duration::ZERO
            && record
                .refreshed_at
                .checked_add(budget)
                .is_none_or(|until| until > now)
        {
            tracing::debug!(integration = %record.integration, connection = %record.connection, "forced refresh inside the budget window; serving the current token");
            return false;
        }
        true
    }

    /// Returns the connection with an access token that satisfies `need`,
    /// refreshing first when it does not.
    pub async fn ensure_fresh(
        &self,
        integration: &Integration,
        connection: &ConnectionId,
        need: Need,
    ) -> Result<ConnectionRecord, RefreshError> {
        let key = (integration.name.clone(), connection.clone());
        let (store, (i, c)) = (self.store.clone(), key.clone());
        let first = self
            .reads
            .read(&key, move || async move { store.get(&i, &c).await })
            .await;
        let first = Self::usable(first?)?;
        self.ensure_fresh_from(integration, first, need).await
    }

    /// `ensure_fresh` from a [`Prefetched`] read (of this connection; any other is ignored).
    pub async fn ensure_fresh_prefetched(
        &self,
        integration: &Integration,
        connection: &ConnectionId,
        prefetched: Prefetched,
        need: Need,
    ) -> Result<ConnectionRecord, RefreshError> {
        if prefetched.key.0 != integration.name || &prefetched.key.1 != connection {
            return self.ensure_fresh(integration, connection, need).await;
        }
        let first = Self::usable(prefetched.row?)?;
        self.ensure_fresh_from(integration, first, need).await
    }

    /// The vendor refused `rejected`'s access token (the proxy's 401): a
    /// forced refresh of the connection, unless the stored grant was already
    /// refreshed since `rejected` was read (another request's 401 got there
    /// first) and is still valid. Same single flight and lease as every refresh.
    pub async fn refresh_rejected(
        &self,
        integration: &Integration,
        rejected: &ConnectionRecord,
    ) -> Result<ConnectionRecord, RefreshError> {
        let key = (integration.name.clone(), rejected.connection.clone());
        let (store, (i, c)) = (self.store.clone(), key.clone());
        let first = self
            .reads
            .read(&key, move || async move { store.get(&i, &c).await })
            .await;
        let first = Self::usable(first?)?;
        if first.value.refreshed_at > rejected.refreshed_at
            && first.value.tokens.access_token.expose() != rejected.tokens.access_token.expose()
            && first.value.expires_in(self.clock.now()) > 0
        {
            return Ok(first.value);
        }
        let need = Need {
            force: true,
            ..Need::default()
        };
        self.ensure_fresh_from(integration, first, need).await
    }

    /// `ensure_fresh` for a row the caller has already read (the sweep's
    /// listing): its version is only ever offered to a conditional write.
    async fn ensure_fresh_from(
        &self,
        integration: &Integration,
        first: Versioned<ConnectionRecord>,
        need: Need,
    ) -> Result<ConnectionRecord, RefreshError> {
        if !self.wants_refresh(integration, &first.value, &need, self.clock.now()) {
            return Ok(first.value);
        }
        let connection = &first.value.connection;
        let gate = self.gate(&integration.name, connection);
        // Nobody in this process is ahead of us: the row we hold may go straight to
        // the conditional lease write (a changed row only loses it, then is re-read).
        let (mut last, known) = match gate.try_lock() {
            Ok(last) => (last, Some(first.clone())),
            Err(_) => (gate.lock().await, None),
        };
        // A refresh that completed after this caller arrived (its first read
        // began after arrival) is taken whenever its token is valid, even when it
        // falls short of this caller's need (forced or not): the vendor just issued
        // the best token it gives, and asking again would multiply refreshes.
        let result = match last.as_ref() {
            Some(r)
                if r.refreshed_at > first.value.refreshed_at
                    && r.expires_in(self.clock.now()) > 0 =>
            {
                Ok(r.clone())
            }
            _ => {
                let result = self
                    .refresh_gated(
                        integration,
                        connection,
                        first.value.refreshed_at,
                        &need,
                        known,
                    )
                    .await;
                *last = result.as_ref().ok().cloned();
                result
            }
        };
        drop(last);
        self.release_gate(&integration.name, connection, &gate);
        result
    }

    async fn read(
        &self,
        integration: &Integration,
        connection: &ConnectionId,
    ) -> Result<Versioned<ConnectionRecord>, RefreshError> {
        Self::usable(self.store.get(&integration.name, connection).await?)
    }

    fn usable(
        row: Option<Versioned<ConnectionRecord>>,
    ) -> Result<Versioned<ConnectionRecord>, RefreshError> {
        let v = row.ok_or(RefreshError::NotFound)?;
        if v.value.status == ConnectionStatus::ReauthorizationRequired {
            return Err(RefreshError::ReauthorizationRequired);
        }
        Ok(v)
    }

    fn gate(&self, integration: &IntegrationName, connection: &ConnectionId) -> Gate {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((integration.clone(), connection.clone()))
            .or_default()
            .clone()
    }

    fn release_gate(&self, integration: &IntegrationName, connection: &ConnectionId, gate: &Gate) {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        // Two references: the map's and ours. Nobody else waits: forget it.
        if Arc::strong_count(gate) == 2 {
            map.remove(&(integration.clone(), connection.clone()));
        }
    }

    /// Runs with this process's gate held: waits out other holders, takes the
    /// lease, refreshes once (with retries), stores the outcome under the lease.
    async fn refresh_gated(
        &self,
        integration: &Integration,
        connection: &ConnectionId,
        seen_refreshed_at: OffsetDateTime,
        need: &Need,
        known: Option<Versioned<ConnectionRecord>>,
    ) -> Result<ConnectionRecord, RefreshError> {
        let wait_deadline = tokio::time::Instant::now()
            + std_duration(self.policy.lease)
            + std::time::Duration::from_secs(5);
        // A row read before the gate serves only when its next step is the
        // conditional lease write; any other decision is taken on a fresh read.
        let at = self.clock.now();
        let known = known.filter(|v| {
            let r = &v.value;
            r.refreshed_at == seen_refreshed_at
                && !r.is_leased(at)
                && self.cooling_down_since(r, at, need).is_none()
        });
        let mut current = match known {
            Some(v) => v,
            None => self.read(integration, connection).await?,
        };
        let leased = loop {
            let now = self.clock.now();
            let rec = &current.value;
            // Someone refreshed while we queued or waited: take its token while valid
            // (see `ensure_fresh_from`).
            if rec.refreshed_at > seen_refreshed_at && rec.expires_in(now) > 0 {
                return Ok(current.value);
            }
            if rec.is_leased(now) && rec.lease_owner.as_deref() != Some(&self.owner) {
                if tokio::time::Instant::now() > wait_deadline {
                    return Err(RefreshError::Busy);
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                current = self.read(integration, connection).await?;
                continue;
            }
            if let Some(at) = self.cooling_down_since(rec, now, need) {
                return self.cooling_down(rec, at, now);
            }
            let lease = rec.leased(&self.owner, now + self.policy.lease);
            match self.store.replace(&lease, &current.version).await {
                Ok(version) => {
                    break Versioned {
                        value: lease,
                        version,
                    }
                }
                Err(StoreError::Conflict) => current = self.read(integration, connection).await?,
                Err(StoreError::NotFound) => return Err(RefreshError::NotFound),
                Err(e) => return Err(e.into()),
            }
        };
        self.refresh_leased(integration, leased, need.force).await
    }

    /// When the connection's cool-down began, if it is in one: not for a failure
    /// from before its integration's configuration changed, nor for an
    /// operator's "Refresh now".
    fn cooling_down_since(
        &self,
        rec: &ConnectionRecord,
        now: OffsetDateTime,
        need: &Need,
    ) -> Option<OffsetDateTime> {
        if need.bypass_cooldown {
            return None;
        }
        let at = rec.cooling_down_since(now, self.policy.cooldown)?;
        match self.config_changed_at(&rec.integration) {
            Some(changed) if at <= changed => None,
            _ => Some(at),
        }
    }

    /// During a cool-down: serve the stored token while it is valid, else fail fast.
    fn cooling_down(
        &self,
        rec: &ConnectionRecord,
        at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<ConnectionRecord, RefreshError> {
        if rec.expires_in(now) > 0 {
            tracing::warn!(integration = rec.integration.as_str(), connection = rec.connection.as_str(), outcome = "cooling_down", "serving the stored access token, still valid, during the cool-down after a failed refresh");
            return Ok(rec.clone());
        }
        Err(RefreshError::CoolingDown {
            last_error: rec.last_error.clone().unwrap_or_default(),
            seconds_ago: (now - at).whole_seconds(),
        })
    }
}
