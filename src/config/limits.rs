//! The tunable limits: how the refresh engine behaves (`BROKER_REFRESH_*`,
//! `BROKER_UPSTREAM_TIMEOUT_SECS`, `BROKER_SWEEP_*`,
//! `BROKER_MIN_FORCED_REFRESH_SECS`) and the proxy's limits
//! (`BROKER_PROXY_*`). Every value has a safe default.

use time::Duration;

use super::env::{Env, Problems};
use super::{seconds, ConfigError};

/// How the refresh engine behaves; every value has a safe default.
#[derive(Debug, Clone)]
pub struct RefreshPolicy {
    /// How long a refresher holds a connection (`BROKER_REFRESH_LEASE_SECS`, default 60).
    pub lease: Duration,
    /// Timeout of one token-endpoint call (`BROKER_UPSTREAM_TIMEOUT_SECS`, default 15).
    pub upstream_timeout: std::time::Duration,
    /// Token-endpoint calls per refresh for transient failures (default 3).
    pub max_attempts: u32,
    /// First backoff delay; doubles each retry, with jitter (default 500 ms).
    pub backoff: std::time::Duration,
    /// The longest `Retry-After` honoured (default 10 s).
    pub retry_after_cap: std::time::Duration,
    /// After a failed refresh, no new upstream attempt for this long (`BROKER_REFRESH_COOLDOWN_SECS`, default 30).
    pub cooldown: Duration,
    /// Refreshes in flight at once during a sweep (`BROKER_SWEEP_CONCURRENCY`, default 8).
    pub sweep_concurrency: usize,
    /// A sweep starts no new refresh after this long (`BROKER_SWEEP_BUDGET_SECS`, default 240,
    /// inside the Consumption plan's 5-minute function timeout).
    pub sweep_budget: std::time::Duration,
    /// Forced refreshes of one connection at most this often, across callers
    /// and instances (`BROKER_MIN_FORCED_REFRESH_SECS`, default 60; zero: no budget).
    pub min_forced_refresh: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            lease: Duration::seconds(60),
            upstream_timeout: std::time::Duration::from_secs(15),
            max_attempts: 3,
            backoff: std::time::Duration::from_millis(500),
            retry_after_cap: std::time::Duration::from_secs(10),
            cooldown: Duration::seconds(30),
            sweep_concurrency: 8,
            sweep_budget: std::time::Duration::from_secs(240),
            min_forced_refresh: Duration::seconds(60),
        }
    }
}

impl RefreshPolicy {
    pub(super) fn load(env: &Env<'_>, p: &mut Problems) -> Self {
        let d = Self::default();
        let default_timeout = d.upstream_timeout.as_secs();
        let default_lease = d.lease.whole_seconds().unsigned_abs();
        let timeout = p.take(
            env.seconds("BROKER_UPSTREAM_TIMEOUT_SECS", default_timeout, 1..=120),
            default_timeout,
        );
        let lease = p.take(
            env.seconds("BROKER_REFRESH_LEASE_SECS", default_lease, 2..=3600),
            default_lease,
        );
        if lease < timeout + 2 {
            p.0.push(ConfigError::setting(
                "BROKER_REFRESH_LEASE_SECS",
                format!("({lease}) must exceed BROKER_UPSTREAM_TIMEOUT_SECS ({timeout}) by at least 2 seconds, so a refresh always finishes inside its lease"),
            ));
        }
        Self {
            lease: seconds(lease),
            upstream_timeout: std::time::Duration::from_secs(timeout),
            cooldown: seconds(p.take(
                env.seconds("BROKER_REFRESH_COOLDOWN_SECS", 30, 0..=86_400),
                30,
            )),
            sweep_concurrency: p.take(env.seconds("BROKER_SWEEP_CONCURRENCY", 8, 1..=256), 8)
                as usize,
            sweep_budget: std::time::Duration::from_secs(p.take(
                env.seconds("BROKER_SWEEP_BUDGET_SECS", 240, 1..=86_400),
                240,
            )),
            min_forced_refresh: seconds(p.take(
                env.seconds("BROKER_MIN_FORCED_REFRESH_SECS", 60, 0..=86_400),
                60,
            )),
            ..d
        }
    }
}

/// The proxy's limits.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// `BROKER_PROXY_TIMEOUT_SECS` (default 120, at most 225: under the 230 s
    /// the Azure front end allows a request).
    pub timeout: std::time::Duration,
    /// `BROKER_PROXY_RETRY_MAX_SECS` (default 30): the longest `Retry-After` waited for.
    pub retry_max: std::time::Duration,
    /// `BROKER_PROXY_REWRITE_MAX_BYTES` (default 16 MiB): larger JSON answers pass unmodified.
    pub rewrite_max_bytes: usize,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            timeout: std::time::Duration::from_secs(120),
            retry_max: std::time::Duration::from_secs(30),
            rewrite_max_bytes: 16 * 1024 * 1024,
        }
    }
}

impl ProxySettings {
    pub(super) fn load(env: &Env<'_>, p: &mut Problems) -> Self {
        let d = Self::default();
        let timeout = p.take(
            env.number(
                "BROKER_PROXY_TIMEOUT_SECS",
                d.timeout.as_secs(),
                1..=225,
                "a whole number of seconds from 1 to 225 (the Azure front end ends a request after 230 s)",
            ),
            d.timeout.as_secs(),
        );
        let retry_max = p.take(
            env.number(
                "BROKER_PROXY_RETRY_MAX_SECS",
                d.retry_max.as_secs(),
                0..=225,
                "a whole number of seconds from 0 (never wait) to 225",
            ),
            d.retry_max.as_secs(),
        );
        let rewrite_max_bytes = p.take(
            env.number(
                "BROKER_PROXY_REWRITE_MAX_BYTES",
                d.rewrite_max_bytes as u64,
                0..=256 * 1024 * 1024,
                "a whole number of bytes from 0 (never rewrite) to 268435456 (256 MiB)",
            ),
            d.rewrite_max_bytes as u64,
        ) as usize;
        Self {
            timeout: std::time::Duration::from_secs(timeout),
            retry_max: std::time::Duration::from_secs(retry_max),
            rewrite_max_bytes,
        }
    }
}
