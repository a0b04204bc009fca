//! One refresh under a held lease: the token endpoint called (with retries
//! inside the lease), then the outcome stored conditionally on the lease's
//! version (fencing) before anything is handed out.

use rand::Rng;
use time::{Duration, OffsetDateTime};

use super::{Engine, RefreshError};
use crate::config::Integration;
use crate::domain::scope;
use crate::domain::{ConnectionRecord, ConnectionStatus, TokenSet};
use crate::oauth::{self, TokenError, TokenResponse};
use crate::store::{StoreError, Versioned};

/// Time kept in hand after the last upstream call for the final store write.
const WRITE_MARGIN: Duration = Duration::seconds(2);

/// What a grant is renewed with: its refresh token, or (`renew`) an exchange
/// of its current access token.
pub(super) enum Renewal {
    Refresh(crate::domain::Secret),
    Exchange(crate::config::integrations::Renew, crate::domain::Secret),
}

/// How a refresh's vendor call went, for its log line.
#[derive(Clone, Copy)]
struct Done {
    attempts: u32,
    duration_ms: u64,
}

impl Engine {
    /// Calls the token endpoint, retrying transient failures with exponential
    /// backoff and jitter while the lease leaves room for another attempt.
    async fn call_vendor(
        &self,
        integration: &Integration,
        with: &Renewal,
        lease_until: OffsetDateTime,
    ) -> (Result<TokenResponse, TokenError>, u32) {
        let timeout =
            Duration::try_from(self.policy.upstream_timeout).unwrap_or(Duration::seconds(15));
        let mut attempt = 0;
        let mut delay = self.policy.backoff;
        loop {
            attempt += 1;
            let result = match with {
                Renewal::Refresh(rt) => {
                    oauth::refresh(&self.http, integration, rt, self.policy.upstream_timeout).await
                }
                Renewal::Exchange(renew, at) => {
                    oauth::renew(
                        &self.http,
                        integration,
                        renew,
                        at,
                        self.policy.upstream_timeout,
                    )
                    .await
                }
            };
            let err = match result {
                Err(e) if e.is_transient() && attempt < self.policy.max_attempts => e,
                other => return (other, attempt),
            };
            let retry_after = match &err {
                TokenError::Server {
                    retry_after: Some(s),
                    ..
                } => Some(std::time::Duration::from_secs(*s).min(self.policy.retry_after_cap)),
                _ => None,
            };
            let jitter = rand::thread_rng().gen_range(0..=delay.as_millis() as u64 / 2);
            let wait = retry_after.unwrap_or(delay + std::time::Duration::from_millis(jitter));
            // Another attempt must finish, and be stored, inside the lease.
            let next_done = self.clock.now()
                + Duration::try_from(wait).unwrap_or_default()
                + timeout
                + WRITE_MARGIN;
            if next_done > lease_until {
                return (Err(err), attempt);
            }
            tracing::info!(integration = integration.name.as_str(), attempt, error = %err, wait_ms = wait.as_millis() as u64, "transient refresh failure; retrying");
            tokio::time::sleep(wait).await;
            delay *= 2;
        }
    }
    /// Refreshes the leased grant once (with retries inside the lease) and
    /// stores the outcome under the lease before anything is handed out.
    pub(super) async fn refresh_leased(
        &self,
        integration: &Integration,
        leased: Versioned<ConnectionRecord>,
        force: bool,
    ) -> Result<ConnectionRecord, RefreshError> {
        let started = std::time::Instant::now();
        let Some(renewal) = self.renewal_of(integration, &leased.value) else {
            return self.nothing_to_renew_with(&leased, force).await;
        };
        let lease_until = leased.value.lease_until.unwrap_or_else(|| self.clock.now());
        let (outcome, attempts) = self.call_vendor(integration, &renewal, lease_until).await;
        let done = Done {
            attempts,
            duration_ms: started.elapsed().as_millis() as u64,
        };
        match outcome {
            Ok(resp) => {
                self.store_refreshed(integration, &leased, renewal, resp, done)
                    .await
            }
            Err(err) => self.store_failure(&leased, err, force, done).await,
        }
    }

    /// What the grant is renewed with, if anything.
    fn renewal_of(&self, integration: &Integration, record: &ConnectionRecord) -> Option<Renewal> {
        match (&record.tokens.refresh_token, &integration.renew) {
            (Some(rt), _) => Some(Renewal::Refresh(rt.clone())),
            // An expired token cannot be exchanged (Meta): only a new consent helps.
            (None, Some(renew)) if record.expires_in(self.clock.now()) > 0 => Some(
                Renewal::Exchange(renew.clone(), record.tokens.access_token.clone()),
            ),
            (None, _) => None,
        }
    }

    /// Nothing to refresh with: serve what we have while it lasts (for ever
    /// when it does not expire).
    async fn nothing_to_renew_with(
        &self,
        leased: &Versioned<ConnectionRecord>,
        force: bool,
    ) -> Result<ConnectionRecord, RefreshError> {
        let record = &leased.value;
        self.release_lease(leased).await;
        if record.expires_in(self.clock.now()) > 0 && (!force || record.never_expires()) {
            return Ok(record.clone());
        }
        tracing::warn!(
            integration = record.integration.as_str(),
            connection = record.connection.as_str(),
            outcome = "no_refresh_token",
            "the grant has no refresh token and its access token expired"
        );
        Err(RefreshError::ReauthorizationRequired)
    }

    /// The vendor's new tokens, written conditionally on the lease's version:
    /// handed out only once stored; a lapsed holder's write loses (fencing).
    async fn store_refreshed(
        &self,
        integration: &Integration,
        leased: &Versioned<ConnectionRecord>,
        renewal: Renewal,
        resp: TokenResponse,
        done: Done,
    ) -> Result<ConnectionRecord, RefreshError> {
        let record = &leased.value;
        let (iname, cid) = (record.integration.as_str(), record.connection.as_str());
        let Done {
            attempts,
            duration_ms,
        } = done;
        let now = self.clock.now();
        let mut next = record.unleased();
        let kept = match renewal {
            Renewal::Refresh(rt) => Some(rt),
            Renewal::Exchange(..) => None,
        };
        next.tokens = TokenSet {
            access_token: resp.access_token,
            refresh_token: resp.refresh_token.or(kept),
        };
        next.expires_at =
            now.saturating_add(integration.lifetime_at(resp.expires_in, resp.expires_at, now));
        next.metadata.extend(resp.metadata);
        if let Some(scope) = resp.scope {
            next.scope = scope::normalize(&scope);
        }
        next.token_type = resp.token_type;
        // A refresh that worked proves the grant alive (an unknown status included).
        next.status = ConnectionStatus::Active;
        next.refreshed_at = now;
        next.last_error = None;
        next.last_error_at = None;
        next.last_error_kind = None;
        match self.store.replace(&next, &leased.version).await {
            Ok(_) => {
                tracing::info!(
                    integration = iname,
                    connection = cid,
                    outcome = "refreshed",
                    attempts,
                    duration_ms,
                    "refresh"
                );
                self.notify.on_refreshed(record).await;
                self.notify
                    .check_grant_end(&next, integration.refresh_token_max)
                    .await;
                Ok(next)
            }
            Err(StoreError::Conflict) => {
                // Fenced: our lease lapsed and someone else wrote. Theirs stands.
                tracing::error!(integration = iname, connection = cid, outcome = "fenced", attempts, duration_ms, "refresh finished after its lease was taken over; the newer grant in the store is kept");
                Ok(self.read(integration, &record.connection).await?.value)
            }
            Err(StoreError::NotFound) => Err(RefreshError::NotFound),
            Err(e) => {
                tracing::error!(integration = iname, connection = cid, outcome = "store_failed", attempts, duration_ms, error = %e, "the refreshed grant could not be stored");
                Err(e.into())
            }
        }
    }

    /// A failed refresh, recorded on the row (`invalid_grant` ends the grant);
    /// the stored token is served while valid unless the caller forced.
    async fn store_failure(
        &self,
        leased: &Versioned<ConnectionRecord>,
        err: TokenError,
        force: bool,
        done: Done,
    ) -> Result<ConnectionRecord, RefreshError> {
        let record = &leased.value;
        let (iname, cid) = (record.integration.as_str(), record.connection.as_str());
        let Done {
            attempts,
            duration_ms,
        } = done;
        let now = self.clock.now();
        let mut next = record.unleased();
        next.last_error = Some(oauth::sanitize(&err.to_string(), 300));
        next.last_error_at = Some(now);
        next.last_error_kind = Some(err.kind());
        let outcome = if err.is_dead_grant() {
            next.status = ConnectionStatus::ReauthorizationRequired;
            "reauthorization_required"
        } else if err.is_misconfigured() {
            "integration_misconfigured"
        } else {
            "failed"
        };
        tracing::warn!(integration = iname, connection = cid, outcome, attempts, duration_ms, error = %err, "refresh");
        let recorded = match self.store.replace(&next, &leased.version).await {
            Ok(_) => true,
            Err(StoreError::Conflict) => false,
            Err(e) => {
                tracing::error!(integration = iname, connection = cid, error = %e, "the refresh failure could not be recorded");
                false
            }
        };
        self.notify.on_failure(record, &err, recorded).await;
        if err.is_dead_grant() {
            Err(RefreshError::ReauthorizationRequired)
        } else if !force && record.expires_in(now) > 0 {
            tracing::warn!(
                integration = iname,
                connection = cid,
                outcome = "served_stale",
                "serving the stored access token, still valid, after a failed refresh"
            );
            Ok(next)
        } else if err.is_misconfigured() {
            Err(RefreshError::Misconfigured(err))
        } else {
            Err(RefreshError::Upstream(err))
        }
    }

    async fn release_lease(&self, leased: &Versioned<ConnectionRecord>) {
        let r = leased.value.unleased();
        if let Err(e) = self.store.replace(&r, &leased.version).await {
            tracing::warn!(error = %e, "could not release a lease; it lapses by itself");
        }
    }
}
