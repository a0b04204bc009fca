//! The refresh engine: `ensure_fresh` for the token route and `sweep` for the
//! timer. It is the only place that decides to spend a refresh token.
//!
//! One refresh per connection at a time:
//! - within a process, callers for one connection queue on one async mutex and
//!   re-read the row after acquiring it, so followers reuse the leader's result;
//! - across processes, a lease is written into the row with a conditional
//!   write (ETag / version) before the vendor is called, and the new tokens are
//!   written conditionally on the lease's version (fencing): a holder whose
//!   lease lapsed and was taken over cannot overwrite the newer grant.
//! The new refresh token is persisted before the new access token is handed
//! out; when the vendor returns none, the old one is kept (RFC 6749 §6).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use rand::RngCore;
use time::{Duration, OffsetDateTime};

use crate::domain::{ConnectionId, ConnectionRecord, ConnectionStatus, IntegrationName, TokenSet};
use crate::oauth::{self, TokenError, TokenResponse};
use crate::settings::Integration;
use crate::store::{Store, StoreError, Versioned};

/// How long a refresher may hold a connection: longer than the vendor timeout
/// plus two store writes.
const LEASE: Duration = Duration::seconds(45);
/// Expiry assumed when the vendor sends no `expires_in`.
const DEFAULT_EXPIRES_IN: i64 = 3600;
/// Bounded concurrency of the sweep.
const SWEEP_CONCURRENCY: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("connection not found")]
    NotFound,
    #[error("the grant is no longer valid; a new consent is required")]
    ReauthorizationRequired,
    #[error(transparent)]
    Upstream(TokenError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("another instance is refreshing this connection and did not finish in time")]
    Busy,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SweepSummary {
    pub refreshed: u32,
    pub failed: u32,
    pub reauthorization_required: u32,
}

type Key = (IntegrationName, ConnectionId);

pub struct Engine {
    store: Store,
    http: reqwest::Client,
    integrations: Arc<BTreeMap<IntegrationName, Integration>>,
    inflight: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    /// Identifies this process in leases.
    owner: String,
}

/// Current time at millisecond precision (what every backend stores).
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(t)
}

impl Engine {
    pub fn new(
        store: Store,
        http: reqwest::Client,
        integrations: Arc<BTreeMap<IntegrationName, Integration>>,
    ) -> Self {
        let mut id = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut id);
        Self {
            store,
            http,
            integrations,
            inflight: Mutex::new(HashMap::new()),
            owner: id.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn integration(&self, name: &IntegrationName) -> Option<&Integration> {
        self.integrations.get(name)
    }

    /// Stores the grant from a completed consent, replacing any earlier grant
    /// of the same connection (and restoring it to `active`).
    pub async fn store_consent(
        &self,
        integration: &Integration,
        connection: &ConnectionId,
        resp: TokenResponse,
    ) -> Result<ConnectionRecord, StoreError> {
        let now = now();
        let created_at = match self.store.get(&integration.name, connection).await? {
            Some(existing) => existing.value.created_at,
            None => now,
        };
        let record = ConnectionRecord {
            integration: integration.name.clone(),
            connection: connection.clone(),
            status: ConnectionStatus::Active,
            expires_at: now + Duration::seconds(resp.expires_in.unwrap_or(DEFAULT_EXPIRES_IN)),
            scope: resp.scope.unwrap_or_else(|| integration.scopes.join(" ")),
            token_type: resp.token_type,
            tokens: TokenSet {
                access_token: resp.access_token,
                refresh_token: resp.refresh_token,
            },
            created_at,
            refreshed_at: now,
            last_error: None,
            last_error_at: None,
            lease_until: None,
            lease_owner: None,
        };
        self.store.upsert(&record).await?;
        Ok(record)
    }

    /// Returns the connection with an access token valid for at least
    /// `max(margin, min_validity)`, refreshing first when needed (or when forced).
    pub async fn ensure_fresh(
        &self,
        integration: &Integration,
        connection: &ConnectionId,
        min_validity: Option<Duration>,
        force: bool,
    ) -> Result<ConnectionRecord, RefreshError> {
        let threshold = min_validity.map_or(integration.refresh_margin, |m| {
            m.max(integration.refresh_margin)
        });
        let first = self.read(integration, connection).await?;
        if !force && !first.value.is_due(now(), threshold) {
            return Ok(first.value);
        }

        let gate = self.gate(&integration.name, connection);
        let _turn = gate.lock().await;
        let current = self.read(integration, connection).await?;
        // A refresh finished while we queued: its result is what we wanted.
        if current.value.refreshed_at > first.value.refreshed_at
            && !current.value.is_due(now(), threshold)
        {
            return Ok(current.value);
        }
        let result = self
            .refresh_locked(integration, current, threshold, force)
            .await;
        drop(_turn);
        self.release_gate(&integration.name, connection, &gate);
        result
    }

    async fn read(
        &self,
        integration: &Integration,
        connection: &ConnectionId,
    ) -> Result<Versioned<ConnectionRecord>, RefreshError> {
        let v = self
            .store
            .get(&integration.name, connection)
            .await?
            .ok_or(RefreshError::NotFound)?;
        if v.value.status == ConnectionStatus::ReauthorizationRequired {
            return Err(RefreshError::ReauthorizationRequired);
        }
        Ok(v)
    }

    fn gate(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
    ) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((integration.clone(), connection.clone()))
            .or_default()
            .clone()
    }

    fn release_gate(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
        gate: &Arc<tokio::sync::Mutex<()>>,
    ) {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        // Two references: the map's and ours. Nobody else waits: forget it.
        if Arc::strong_count(gate) == 2 {
            map.remove(&(integration.clone(), connection.clone()));
        }
    }

    /// Runs with this process's gate held: takes the cross-process lease,
    /// calls the vendor once, and stores the outcome under the lease.
    async fn refresh_locked(
        &self,
        integration: &Integration,
        mut current: Versioned<ConnectionRecord>,
        threshold: Duration,
        force: bool,
    ) -> Result<ConnectionRecord, RefreshError> {
        let started = std::time::Instant::now();
        let first_refreshed_at = current.value.refreshed_at;
        let wait_deadline = tokio::time::Instant::now()
            + std::time::Duration::from_secs(LEASE.whole_seconds() as u64 + 5);
        let leased = loop {
            let now = now();
            if current.value.refreshed_at > first_refreshed_at
                && !current.value.is_due(now, threshold)
            {
                return Ok(current.value);
            }
            if current.value.is_leased(now)
                && current.value.lease_owner.as_deref() != Some(&self.owner)
            {
                if tokio::time::Instant::now() > wait_deadline {
                    return Err(RefreshError::Busy);
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                current = self.read(integration, &current.value.connection).await?;
                continue;
            }
            let mut lease = current.value.clone();
            lease.lease_until = Some(now + LEASE);
            lease.lease_owner = Some(self.owner.clone());
            match self.store.replace(&lease, &current.version).await {
                Ok(version) => {
                    break Versioned {
                        value: lease,
                        version,
                    }
                }
                Err(StoreError::Conflict) => {
                    current = self.read(integration, &current.value.connection).await?;
                }
                Err(StoreError::NotFound) => return Err(RefreshError::NotFound),
                Err(e) => return Err(e.into()),
            }
        };

        let record = &leased.value;
        let Some(refresh_token) = record.tokens.refresh_token.clone() else {
            // Nothing to refresh with: serve what we have while it lasts.
            self.release_lease(&leased).await;
            if record.expires_in(now()) > 0 && !force {
                return Ok(record.clone());
            }
            return Err(RefreshError::ReauthorizationRequired);
        };

        let outcome = oauth::refresh(&self.http, integration, &refresh_token).await;
        let now = now();
        let mut next = record.clone();
        next.lease_until = None;
        next.lease_owner = None;
        let ms = started.elapsed().as_millis() as u64;
        let (integration_name, connection_id) =
            (record.integration.as_str(), record.connection.as_str());
        match outcome {
            Ok(resp) => {
                next.tokens = TokenSet {
                    access_token: resp.access_token,
                    refresh_token: resp.refresh_token.or(Some(refresh_token)),
                };
                next.expires_at =
                    now + Duration::seconds(resp.expires_in.unwrap_or(DEFAULT_EXPIRES_IN));
                if let Some(scope) = resp.scope {
                    next.scope = scope;
                }
                next.token_type = resp.token_type;
                next.refreshed_at = now;
                next.last_error = None;
                next.last_error_at = None;
                match self.store.replace(&next, &leased.version).await {
                    Ok(_) => {
                        tracing::info!(
                            integration = integration_name,
                            connection = connection_id,
                            outcome = "refreshed",
                            duration_ms = ms,
                            "refresh"
                        );
                        Ok(next)
                    }
                    Err(StoreError::Conflict) => {
                        // Fenced: our lease lapsed and someone else wrote. Theirs stands.
                        tracing::error!(integration = integration_name, connection = connection_id, outcome = "fenced", duration_ms = ms, "refresh finished after the lease lapsed; the newer grant in the store is kept");
                        Ok(self.read(integration, &record.connection).await?.value)
                    }
                    Err(StoreError::NotFound) => Err(RefreshError::NotFound),
                    Err(e) => {
                        tracing::error!(integration = integration_name, connection = connection_id, outcome = "store_failed", error = %e, "the refreshed grant could not be stored");
                        Err(e.into())
                    }
                }
            }
            Err(err) => {
                next.last_error = Some(oauth::sanitize(&err.to_string(), 300));
                next.last_error_at = Some(now);
                let dead = err.is_dead_grant();
                if dead {
                    next.status = ConnectionStatus::ReauthorizationRequired;
                }
                tracing::warn!(integration = integration_name, connection = connection_id, outcome = if dead { "reauthorization_required" } else { "failed" }, error = %err, duration_ms = ms, "refresh");
                match self.store.replace(&next, &leased.version).await {
                    Ok(_) | Err(StoreError::Conflict) => {}
                    Err(e) => {
                        tracing::error!(integration = integration_name, connection = connection_id, error = %e, "the refresh failure could not be recorded")
                    }
                }
                if dead {
                    Err(RefreshError::ReauthorizationRequired)
                } else if !force && record.expires_in(now) > 0 {
                    tracing::warn!(
                        integration = integration_name,
                        connection = connection_id,
                        "serving the stored access token, still valid, after a failed refresh"
                    );
                    Ok(next)
                } else {
                    Err(RefreshError::Upstream(err))
                }
            }
        }
    }

    async fn release_lease(&self, leased: &Versioned<ConnectionRecord>) {
        let mut r = leased.value.clone();
        r.lease_until = None;
        r.lease_owner = None;
        if let Err(e) = self.store.replace(&r, &leased.version).await {
            tracing::warn!(error = %e, "could not release a lease; it lapses by itself");
        }
    }

    /// Refreshes every active connection whose access token expires within its
    /// integration's margin. One failure never stops the others.
    pub async fn sweep(&self) -> Result<SweepSummary, StoreError> {
        let start = now();
        let widest = self
            .integrations
            .values()
            .map(|i| i.refresh_margin)
            .max()
            .unwrap_or(Duration::ZERO);
        let due = self.store.list_due(start + widest).await?;
        let results: Vec<Option<Result<bool, RefreshError>>> = futures::stream::iter(due)
            .map(|row| async move {
                let rec = row.value;
                let integration = self.integrations.get(&rec.integration)?;
                if !rec.is_due(now(), integration.refresh_margin) {
                    return None;
                }
                let before = rec.refreshed_at;
                Some(
                    self.ensure_fresh(integration, &rec.connection, None, false)
                        .await
                        .map(|r| r.refreshed_at > before),
                )
            })
            .buffer_unordered(SWEEP_CONCURRENCY)
            .collect()
            .await;
        let mut summary = SweepSummary::default();
        for r in results.into_iter().flatten() {
            match r {
                Ok(true) => summary.refreshed += 1,
                Ok(false) => summary.failed += 1,
                Err(RefreshError::ReauthorizationRequired) => summary.reauthorization_required += 1,
                Err(RefreshError::NotFound) => {}
                Err(_) => summary.failed += 1,
            }
        }
        match self.store.purge_pending(start).await {
            Ok(n) if n > 0 => tracing::info!(purged = n, "expired pending authorizations removed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not purge expired pending authorizations"),
        }
        tracing::info!(
            refreshed = summary.refreshed,
            failed = summary.failed,
            reauthorization_required = summary.reauthorization_required,
            "sweep finished"
        );
        Ok(summary)
    }
}
