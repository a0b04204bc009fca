//! What an operator needs to know about a connection (the status page and its
//! JSON): its *condition*, derived at read time from the stored status, the
//! last refresh error and the vendor's refresh-token idle window.
//!
//! Stored (written by the consent and the refresh engine): `active`,
//! `reauthorization_required`, `no_refresh_token`, and `unknown` for a status
//! this version does not know. Derived here, never stored:
//! - `misconfigured` / `failing`: the last refresh failed (`last_error_at`
//!   after `refreshed_at`) with `invalid_client` / `unauthorized_client`, or
//!   with anything else. The engine keeps such rows `active` on purpose (the
//!   next refresh may succeed), and a successful refresh clears the error, so
//!   deriving them needs no extra write and cannot go stale;
//! - `refresh_token_expiring`: the refresh token was last used more than half
//!   of the vendor's idle window ago (`refresh_token_idle_days`). With the
//!   keep-alive sweep running (daily by default) a healthy grant never gets
//!   there; half the window leaves the operator weeks to react. Also when the
//!   vendor ends the grant at a fixed age (`refresh_token_max_days`, stored at
//!   consent as the `refresh_token_expires_at` metadata) within 30 days: only
//!   a new consent before then keeps it going.

use std::collections::BTreeMap;

use time::{Duration, OffsetDateTime};

use super::{ConnectionRecord, ConnectionStatus, IntegrationName, OAuthErrorCode};

/// A connection's condition, most urgent first (the order of the page and the JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Condition {
    /// Dead: the vendor answered `invalid_grant`; only a new consent helps.
    ReauthorizationRequired,
    /// The vendor rejects the integration's client credentials.
    Misconfigured,
    /// The last refresh failed (transient, or an error the broker cannot classify).
    Failing,
    /// The consent returned no refresh token: works until the access token expires.
    NoRefreshToken,
    /// The refresh token has been unused for more than half the vendor's idle window.
    RefreshTokenExpiring,
    /// A stored status this version does not know.
    Unknown,
    Active,
}

impl Condition {
    pub const ALL: [Condition; 7] = [
        Self::ReauthorizationRequired,
        Self::Misconfigured,
        Self::Failing,
        Self::NoRefreshToken,
        Self::RefreshTokenExpiring,
        Self::Unknown,
        Self::Active,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReauthorizationRequired => "reauthorization_required",
            Self::Misconfigured => "misconfigured",
            Self::Failing => "failing",
            Self::NoRefreshToken => "no_refresh_token",
            Self::RefreshTokenExpiring => "refresh_token_expiring",
            Self::Unknown => "unknown",
            Self::Active => "active",
        }
    }

    pub fn needs_attention(self) -> bool {
        self != Self::Active
    }
}

/// The prefix of a stored `last_error` when the vendor answered with an OAuth
/// error (the refresh engine stores the error's text, sanitised).
const REJECTED_PREFIX: &str = "the provider answered ";

/// The OAuth error code of the last failure: from its stored kind
/// (`oauth:<code>`, see `TokenError::kind`), or, for a row stored before kinds
/// were, from its text as those versions wrote it.
pub fn last_error_code(r: &ConnectionRecord) -> Option<OAuthErrorCode> {
    match r.last_error_kind.as_deref() {
        Some(kind) => kind
            .strip_prefix("oauth:")
            .filter(|c| !c.is_empty())
            .map(OAuthErrorCode::parse),
        None => r.last_error.as_deref().and_then(error_code),
    }
}

/// The OAuth error code in a stored `last_error` text, when the vendor sent
/// one: how rows written before `last_error_kind` are read.
pub fn error_code(last_error: &str) -> Option<OAuthErrorCode> {
    let rest = last_error.strip_prefix(REJECTED_PREFIX)?;
    let code = rest.split([':', ' ']).next().filter(|c| !c.is_empty())?;
    // "the provider answered HTTP 503" is a status, not an OAuth error.
    (code != "HTTP").then(|| OAuthErrorCode::parse(code))
}

/// The condition of `r` at `now`; `idle` is the vendor's refresh-token idle
/// window, when it has one.
pub fn assess(r: &ConnectionRecord, idle: Option<Duration>, now: OffsetDateTime) -> Condition {
    assess_with(r, idle, None, now)
}

/// [`assess`], knowing also the vendor's fixed grant lifetime (`max`), which
/// narrows the warning before the grant ends (see `ConnectionRecord::grant_ending`).
pub fn assess_with(
    r: &ConnectionRecord,
    idle: Option<Duration>,
    max: Option<Duration>,
    now: OffsetDateTime,
) -> Condition {
    match &r.status {
        ConnectionStatus::ReauthorizationRequired => return Condition::ReauthorizationRequired,
        ConnectionStatus::NoRefreshToken => return Condition::NoRefreshToken,
        ConnectionStatus::Active | ConnectionStatus::Unknown(_) => {}
    }
    let failed_since_refresh = r.last_error_at.is_some_and(|at| at > r.refreshed_at);
    if failed_since_refresh {
        let blames_client = last_error_code(r).is_some_and(|c| c.blames_client());
        return if blames_client {
            Condition::Misconfigured
        } else {
            Condition::Failing
        };
    }
    if let Some(idle) = idle {
        if r.tokens.refresh_token.is_some() && now - r.refreshed_at > idle / 2 {
            return Condition::RefreshTokenExpiring;
        }
    }
    // The vendor ends the grant at a fixed age (refresh_token_max_days) soon.
    if r.grant_ending(now, max) {
        return Condition::RefreshTokenExpiring;
    }
    if matches!(r.status, ConnectionStatus::Unknown(_)) {
        return Condition::Unknown;
    }
    Condition::Active
}

/// One connection and its condition.
#[derive(Debug, Clone)]
pub struct Assessed {
    pub record: ConnectionRecord,
    pub condition: Condition,
}

/// Every connection assessed, most urgent first, with counts.
#[derive(Debug, Clone, Default)]
pub struct Overview {
    /// Sorted by condition (most urgent first), then integration, then connection.
    pub connections: Vec<Assessed>,
    /// Per integration (every configured one, and any with connections), per condition.
    pub by_integration: BTreeMap<IntegrationName, BTreeMap<Condition, usize>>,
}

impl Overview {
    /// `configured`: every configured integration (listed even without
    /// connections); `idle`: an integration's refresh-token idle window.
    pub fn build(
        records: Vec<ConnectionRecord>,
        configured: impl IntoIterator<Item = IntegrationName>,
        idle: impl Fn(&IntegrationName) -> Option<Duration>,
        now: OffsetDateTime,
    ) -> Overview {
        Self::build_with(records, configured, |n| (idle(n), None), now)
    }

    /// [`Overview::build`] with each integration's idle window and fixed grant lifetime.
    pub fn build_with(
        records: Vec<ConnectionRecord>,
        configured: impl IntoIterator<Item = IntegrationName>,
        limits: impl Fn(&IntegrationName) -> (Option<Duration>, Option<Duration>),
        now: OffsetDateTime,
    ) -> Overview {
        let mut by_integration: BTreeMap<IntegrationName, BTreeMap<Condition, usize>> = configured
            .into_iter()
            .map(|n| (n, BTreeMap::new()))
            .collect();
        let mut connections: Vec<Assessed> = records
            .into_iter()
            .map(|record| {
                let (idle, max) = limits(&record.integration);
                let condition = assess_with(&record, idle, max, now);
                *by_integration
                    .entry(record.integration.clone())
                    .or_default()
                    .entry(condition)
                    .or_default() += 1;
                Assessed { record, condition }
            })
            .collect();
        connections.sort_by(|a, b| {
            (a.condition, &a.record.integration, &a.record.connection).cmp(&(
                b.condition,
                &b.record.integration,
                &b.record.connection,
            ))
        });
        Overview {
            connections,
            by_integration,
        }
    }

    /// Connections per condition over every integration.
    pub fn counts(&self) -> BTreeMap<Condition, usize> {
        let mut all = BTreeMap::new();
        for per in self.by_integration.values() {
            for (c, n) in per {
                *all.entry(*c).or_default() += n;
            }
        }
        all
    }

    /// The connections that need attention, most urgent first.
    pub fn attention(&self) -> impl Iterator<Item = &Assessed> {
        self.connections
            .iter()
            .filter(|a| a.condition.needs_attention())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ConnectionId, IntegrationName, Secret, TokenSet};

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000 + secs).unwrap()
    }

    fn record() -> ConnectionRecord {
        ConnectionRecord::new_grant(
            IntegrationName::parse("demo").unwrap(),
            ConnectionId::parse("c1").unwrap(),
            TokenSet {
                access_token: Secret::new("a"),
                refresh_token: Some(Secret::new("r")),
            },
            "Bearer".into(),
            String::new(),
            at(3600),
            at(0),
        )
    }

    #[test]
    fn stored_statuses_come_first() {
        let mut r = record();
        r.status = ConnectionStatus::ReauthorizationRequired;
        r.last_error = Some("the provider answered invalid_client".into());
        r.last_error_at = Some(at(10));
        assert_eq!(assess(&r, None, at(20)), Condition::ReauthorizationRequired);
        r.status = ConnectionStatus::NoRefreshToken;
        assert_eq!(assess(&r, None, at(20)), Condition::NoRefreshToken);
    }

    #[test]
    fn a_failure_after_the_last_refresh_is_failing_or_misconfigured() {
        let mut r = record();
        r.last_error = Some("the provider answered HTTP 503".into());
        r.last_error_at = Some(at(10));
        assert_eq!(assess(&r, None, at(20)), Condition::Failing);
        r.last_error = Some("the provider answered unauthorized_client: nope".into());
        assert_eq!(assess(&r, None, at(20)), Condition::Misconfigured);
        // Refreshed since: the error is history.
        r.refreshed_at = at(15);
        assert_eq!(assess(&r, None, at(20)), Condition::Active);
    }

    #[test]
    fn the_stored_kind_classifies_a_failure_whatever_its_text_says() {
        let mut r = record();
        r.last_error_at = Some(at(10));
        // Reworded text, typed kind: the kind decides.
        r.last_error = Some("Xero said no to the client".into());
        r.last_error_kind = Some("oauth:invalid_client".into());
        assert_eq!(assess(&r, None, at(20)), Condition::Misconfigured);
        // Text that reads like a client error, kind of a server fault: failing.
        r.last_error = Some("the provider answered invalid_client".into());
        r.last_error_kind = Some("http:503".into());
        assert_eq!(assess(&r, None, at(20)), Condition::Failing);
        for kind in [
            "transport",
            "invalid_response",
            "oauth:",
            "oauth:invalid_grant",
            "later:x",
        ] {
            r.last_error_kind = Some(kind.into());
            assert_eq!(assess(&r, None, at(20)), Condition::Failing, "{kind}");
        }
        // A row stored before kinds existed is read by its text, as before.
        r.last_error_kind = None;
        assert_eq!(assess(&r, None, at(20)), Condition::Misconfigured);
    }

    #[test]
    fn every_token_error_has_a_kind_that_classifies_as_its_text_did() {
        use crate::oauth::TokenError;
        let errors = [
            TokenError::Rejected {
                status: 401,
                error: OAuthErrorCode::InvalidClient,
                description: Some("bad secret".into()),
            },
            TokenError::Rejected {
                status: 400,
                error: OAuthErrorCode::UnauthorizedClient,
                description: None,
            },
            TokenError::Rejected {
                status: 400,
                error: OAuthErrorCode::Other("weird\ncode".into()),
                description: None,
            },
            TokenError::Server {
                status: 503,
                retry_after: Some(3),
            },
            TokenError::Transport("timed out".into()),
            TokenError::InvalidResponse("no access_token".into()),
        ];
        for e in errors {
            let mut by_kind = record();
            by_kind.last_error_at = Some(at(10));
            by_kind.last_error = Some("reworded".into());
            by_kind.last_error_kind = Some(e.kind());
            let mut by_text = record();
            by_text.last_error_at = Some(at(10));
            by_text.last_error = Some(crate::oauth::sanitize(&e.to_string(), 300));
            assert_eq!(
                assess(&by_kind, None, at(20)),
                assess(&by_text, None, at(20)),
                "{e}"
            );
            assert!(!e.kind().chars().any(char::is_control), "{e}");
        }
    }

    #[test]
    fn an_idle_refresh_token_warns_after_half_its_window() {
        let r = record();
        let idle = Some(Duration::days(60));
        assert_eq!(
            assess(&r, idle, at(0) + Duration::days(30)),
            Condition::Active
        );
        assert_eq!(
            assess(&r, idle, at(0) + Duration::days(31)),
            Condition::RefreshTokenExpiring
        );
        assert_eq!(
            assess(&r, None, at(0) + Duration::days(400)),
            Condition::Active
        );
        let mut unknown = record();
        unknown.status = ConnectionStatus::Unknown("suspended".into());
        assert_eq!(assess(&unknown, idle, at(10)), Condition::Unknown);
    }

    #[test]
    fn a_grant_the_vendor_ends_at_a_fixed_age_warns_thirty_days_before() {
        let mut r = record();
        assert_eq!(assess(&r, None, at(10)), Condition::Active);
        let end = at(0) + Duration::days(365);
        r.metadata.insert(
            crate::domain::grant::GRANT_ENDS_AT.into(),
            crate::domain::clock::rfc3339(end),
        );
        // Refreshed daily, never idle: only the fixed end matters.
        let fresh = |mut r: ConnectionRecord, t: OffsetDateTime| {
            r.refreshed_at = t;
            r
        };
        let t = end - Duration::days(31);
        assert_eq!(assess(&fresh(r.clone(), t), None, t), Condition::Active);
        let t = end - Duration::days(29);
        assert_eq!(
            assess(&fresh(r.clone(), t), None, t),
            Condition::RefreshTokenExpiring
        );
        // A 7-day grant (NetSuite) warns in its second half, not from the start.
        let short = fresh(r.clone(), end - Duration::days(6));
        let max = Some(Duration::days(7));
        assert_eq!(
            assess_with(&short, None, max, end - Duration::days(6)),
            Condition::Active
        );
        assert_eq!(
            assess_with(&short, None, max, end - Duration::days(3)),
            Condition::RefreshTokenExpiring
        );
        r.metadata.insert(
            crate::domain::grant::GRANT_ENDS_AT.into(),
            "not a date".into(),
        );
        assert_eq!(assess(&fresh(r, t), None, t), Condition::Active);
    }

    #[test]
    fn error_codes_are_read_from_the_stored_text() {
        assert_eq!(
            error_code("the provider answered invalid_client: bad secret"),
            Some(OAuthErrorCode::InvalidClient)
        );
        assert_eq!(
            error_code("the provider answered invalid_grant"),
            Some(OAuthErrorCode::InvalidGrant)
        );
        assert_eq!(error_code("the provider answered HTTP 502"), None);
        assert_eq!(error_code("the provider could not be reached: x"), None);
    }

    #[test]
    fn the_overview_puts_attention_first_and_counts_every_integration() {
        let named = |i: &str, c: &str, status| {
            let mut r = record();
            r.integration = IntegrationName::parse(i).unwrap();
            r.connection = ConnectionId::parse(c).unwrap();
            r.status = status;
            r
        };
        let o = Overview::build(
            vec![
                named("b", "ok", ConnectionStatus::Active),
                named("a", "ok", ConnectionStatus::Active),
                named("b", "dead", ConnectionStatus::ReauthorizationRequired),
                named("a", "nort", ConnectionStatus::NoRefreshToken),
            ],
            [IntegrationName::parse("quiet").unwrap()],
            |_| None,
            at(10),
        );
        let order: Vec<String> = o
            .connections
            .iter()
            .map(|a| format!("{}/{}", a.record.integration, a.record.connection))
            .collect();
        assert_eq!(order, ["b/dead", "a/nort", "a/ok", "b/ok"]);
        assert_eq!(o.attention().count(), 2);
        assert_eq!(o.counts()[&Condition::Active], 2);
        assert!(o.by_integration[&IntegrationName::parse("quiet").unwrap()].is_empty());
        assert_eq!(
            o.by_integration[&IntegrationName::parse("b").unwrap()]
                [&Condition::ReauthorizationRequired],
            1
        );
    }

    #[test]
    fn conditions_sort_most_urgent_first() {
        let mut all = Condition::ALL;
        all.reverse();
        all.sort();
        assert_eq!(all, Condition::ALL);
        assert!(!Condition::Active.needs_attention());
    }
}
