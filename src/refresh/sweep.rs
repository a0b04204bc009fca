//! The keep-alive sweep (the timer function, or the standalone interval):
//! refreshes every connection that is due, with bounded concurrency and a time
//! budget, and purges expired pending authorizations.

use std::collections::BTreeMap;
use std::sync::Arc;

use std::panic::AssertUnwindSafe;

use futures::{FutureExt, StreamExt};
use time::{Duration, OffsetDateTime};

use super::{Engine, Need, RefreshError, SweepSummary};
use crate::config::Integration;
use crate::domain::{ConnectionRecord, IntegrationName};
use crate::store::{StoreError, Versioned};

/// The integrations served, by name.
type Served = BTreeMap<IntegrationName, Arc<Integration>>;

impl Engine {
    /// Refreshes every active connection whose access token expires within its
    /// integration's margin, or that was not refreshed within its keep-alive
    /// period. One failure never stops the others; concurrency is bounded, and
    /// no new refresh starts after the sweep's time budget.
    pub async fn sweep(&self) -> Result<SweepSummary, StoreError> {
        let start = self.clock.now();
        let started = tokio::time::Instant::now();
        let integrations: Served = self
            .integrations
            .ready()
            .into_iter()
            .map(|i| (i.name.clone(), i))
            .collect();
        let due = self.list_for_sweep(&integrations, start).await?;
        let listed = due.len();
        let budget = self.policy.sweep_budget;
        let integrations = &integrations;
        let results: Vec<Option<Result<bool, RefreshError>>> = futures::stream::iter(due)
            .map(|row| async move {
                if started.elapsed() > budget {
                    return None;
                }
                self.sweep_one(integrations.get(&row.value.integration)?, row)
                    .await
            })
            .buffer_unordered(self.policy.sweep_concurrency)
            .collect()
            .await;
        let summary = tally(results);
        if started.elapsed() > budget {
            tracing::warn!(
                listed,
                budget_secs = budget.as_secs(),
                "sweep budget spent; the remaining connections wait for the next run"
            );
        }
        match self.store.purge_pending(start).await {
            Ok(n) if n > 0 => tracing::info!(purged = n, "expired pending authorizations removed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not purge expired pending authorizations"),
        }
        tracing::info!(
            listed,
            refreshed = summary.refreshed,
            failed = summary.failed,
            reauthorization_required = summary.reauthorization_required,
            duration_ms = started.elapsed().as_millis() as u64,
            "sweep finished"
        );
        Ok(summary)
    }

    /// The rows any integration may find due at `start`: one server-side filter
    /// with the widest margin and the shortest keep-alive.
    async fn list_for_sweep(
        &self,
        integrations: &Served,
        start: OffsetDateTime,
    ) -> Result<Vec<Versioned<ConnectionRecord>>, StoreError> {
        let widest_margin = integrations
            .values()
            .map(|i| i.refresh_margin)
            .max()
            .unwrap_or(Duration::ZERO);
        let shortest_keepalive = integrations
            .values()
            .map(|i| i.keepalive)
            .min()
            .unwrap_or(Duration::days(3650));
        self.store
            .list_due(start + widest_margin, start - shortest_keepalive)
            .await
    }

    /// One listed row: `None` when it is not due after all, else whether it was
    /// refreshed (`Ok(false)`: it failed, a panic included).
    async fn sweep_one(
        &self,
        integration: &Integration,
        row: Versioned<ConnectionRecord>,
    ) -> Option<Result<bool, RefreshError>> {
        self.notify
            .check_grant_end(&row.value, integration.refresh_token_max)
            .await;
        let need = Need {
            refreshed_before: Some(self.clock.now() - integration.keepalive),
            whole_margin: true,
            ..Need::default()
        };
        if !self.wants_refresh(integration, &row.value, &need, self.clock.now()) {
            return None;
        }
        let before = row.value.refreshed_at;
        let connection = row.value.connection.clone();
        // The listed row goes straight to the conditional lease write. A
        // panic in one refresh is that connection's failure, not the sweep's.
        let refresh = AssertUnwindSafe(self.ensure_fresh_from(integration, row, need));
        match refresh.catch_unwind().await {
            Ok(r) => Some(r.map(|r| r.refreshed_at > before)),
            Err(_) => {
                // The payload is not logged: it could quote a value.
                tracing::error!(
                    integration = integration.name.as_str(),
                    connection = connection.as_str(),
                    outcome = "panicked",
                    "a refresh panicked; counted as failed, the sweep goes on"
                );
                Some(Ok(false))
            }
        }
    }
}

/// The sweep's counts from each row's outcome (a connection deleted meanwhile counts nowhere).
fn tally(results: Vec<Option<Result<bool, RefreshError>>>) -> SweepSummary {
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
    summary
}
