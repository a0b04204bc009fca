//! The stored grant of a connection and the pure decisions made about it.

use std::collections::BTreeMap;

use time::{Duration, OffsetDateTime};

use super::{Account, ConnectionId, IntegrationName, Secret};

/// The lifetime stored for an access token that does not expire (the vendor
/// says so, or announces ten years or more): no refresh is ever due for it.
pub const NEVER_EXPIRES: Duration = Duration::days(3650);

/// The metadata field with the instant the vendor ends the grant whatever its
/// use (consent + `refresh_token_max_days`, LinkedIn's 365 days).
pub const GRANT_ENDS_AT: &str = "refresh_token_expires_at";

/// How long before [`GRANT_ENDS_AT`] the status page and the
/// `connection.refresh_token_expiring` event warn.
pub const GRANT_END_WARNING: Duration = Duration::days(30);

/// The tokens of one grant. Only ever stored sealed (see `crypto`).
#[derive(Debug, Clone)]
pub struct TokenSet {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
}

/// Whether a grant can still be refreshed: the status stored with the row.
///
/// Only what the broker learnt from the vendor is stored; "failing" and
/// "misconfigured" are read from `last_error` / `last_error_at` instead (see
/// [`condition`](super::condition)), so a successful refresh clears them with
/// no extra write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionStatus {
    Active,
    /// The vendor answered `invalid_grant`: only a new consent restores it.
    ReauthorizationRequired,
    /// The consent returned no refresh token although the integration expects
    /// one: the access token is served while it lasts, then a new consent is needed.
    NoRefreshToken,
    /// A status this version does not know (written by a newer version, or
    /// edited), kept verbatim so that writing the row back (a lease, a failed
    /// refresh) never loses it: treated like `active` (the grant is used and
    /// refreshed, and a successful refresh stores `active`), and listed for
    /// attention.
    Unknown(String),
}

impl ConnectionStatus {
    /// What is stored: an unknown status as it was read.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Active => "active",
            Self::ReauthorizationRequired => "reauthorization_required",
            Self::NoRefreshToken => "no_refresh_token",
            Self::Unknown(s) => s,
        }
    }

    /// A status this version writes; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "reauthorization_required" => Some(Self::ReauthorizationRequired),
            "no_refresh_token" => Some(Self::NoRefreshToken),
            _ => None,
        }
    }

    /// The grant cannot be kept alive: only a new consent restores it.
    pub fn is_dead(&self) -> bool {
        matches!(self, Self::ReauthorizationRequired | Self::NoRefreshToken)
    }

    /// A stored status as read back: an unknown one is [`Self::Unknown`], not an error.
    pub fn read(s: &str) -> Self {
        Self::parse(s).unwrap_or_else(|| Self::Unknown(s.to_owned()))
    }
}

/// One connection: a consented grant of one integration.
#[derive(Debug, Clone)]
pub struct ConnectionRecord {
    pub integration: IntegrationName,
    pub connection: ConnectionId,
    pub status: ConnectionStatus,
    pub tokens: TokenSet,
    pub token_type: String,
    pub scope: String,
    pub expires_at: OffsetDateTime,
    pub created_at: OffsetDateTime,
    pub refreshed_at: OffsetDateTime,
    pub last_error: Option<String>,
    pub last_error_at: Option<OffsetDateTime>,
    /// What kind of failure `last_error` describes, as [`crate::oauth::TokenError::kind`]
    /// stores it (`oauth:<code>`, `http:<status>`, `transport`, `invalid_response`), so that
    /// classifying it never reads the text; `None` for rows stored before it existed.
    pub last_error_kind: Option<String>,
    /// A refresh in progress somewhere holds the row until this instant.
    pub lease_until: Option<OffsetDateTime>,
    pub lease_owner: Option<String>,
    /// Vendor metadata captured at consent (QuickBooks `realmId`, Salesforce
    /// `instance_url`, …): returned by the token route, never secret.
    pub metadata: BTreeMap<String, String>,
    /// The vendor account that granted it (`None`: no source, or a row stored
    /// before accounts were recorded; it gains one at its next consent).
    pub account: Option<Account>,
}

impl ConnectionRecord {
    /// A grant just obtained at `now`: active, no error, no lease, no metadata.
    pub fn new_grant(
        integration: IntegrationName,
        connection: ConnectionId,
        tokens: TokenSet,
        token_type: String,
        scope: String,
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            integration,
            connection,
            status: ConnectionStatus::Active,
            tokens,
            token_type,
            scope,
            expires_at,
            created_at: now,
            refreshed_at: now,
            last_error: None,
            last_error_at: None,
            last_error_kind: None,
            lease_until: None,
            lease_owner: None,
            metadata: BTreeMap::new(),
            account: None,
        }
    }

    /// Seconds of validity left at `now` (never negative).
    pub fn expires_in(&self, now: OffsetDateTime) -> i64 {
        (self.expires_at - now).whole_seconds().max(0)
    }

    /// True when the access token expires within `margin` of `now`.
    pub fn is_due(&self, now: OffsetDateTime, margin: Duration) -> bool {
        self.expires_at - now <= margin
    }

    /// The lifetime the access token had when it was issued: `refreshed_at` is
    /// when the broker stored it, and `expires_at` is that instant plus the
    /// lifetime the vendor announced (consent and refresh both set them so).
    pub fn issued_lifetime(&self) -> Duration {
        self.expires_at - self.refreshed_at
    }

    /// The access token does not expire (stored with [`NEVER_EXPIRES`]).
    pub fn never_expires(&self) -> bool {
        self.issued_lifetime() >= NEVER_EXPIRES
    }

    /// When the vendor ends this grant whatever its use, if it does.
    pub fn grant_ends_at(&self) -> Option<OffsetDateTime> {
        self.metadata
            .get(GRANT_ENDS_AT)
            .and_then(|s| super::clock::parse_rfc3339(s))
    }

    /// The vendor ends this grant soon after `now`: within [`GRANT_END_WARNING`],
    /// or within half of `max` (the vendor's fixed grant lifetime) when that is shorter.
    pub fn grant_ending(&self, now: OffsetDateTime, max: Option<Duration>) -> bool {
        let window = max.map_or(GRANT_END_WARNING, |m: Duration| {
            (m / 2_i32).min(GRANT_END_WARNING)
        });
        self.grant_ends_at().is_some_and(|end| end - now <= window)
    }

    /// True when another refresher holds a lease that has not lapsed.
    pub fn is_leased(&self, now: OffsetDateTime) -> bool {
        matches!(self.lease_until, Some(until) if until > now)
    }

    /// When the last refresh failed, if that was after the last success and
    /// less than `cooldown` before `now`: no new attempt until it has passed.
    pub fn cooling_down_since(
        &self,
        now: OffsetDateTime,
        cooldown: Duration,
    ) -> Option<OffsetDateTime> {
        self.last_error_at
            .filter(|at| *at > self.refreshed_at && at.saturating_add(cooldown) > now)
    }

    /// This record with a lease held by `owner` until `until`.
    pub fn leased(&self, owner: &str, until: OffsetDateTime) -> Self {
        Self {
            lease_until: Some(until),
            lease_owner: Some(owner.to_owned()),
            ..self.clone()
        }
    }

    /// This record with no lease.
    pub fn unleased(&self) -> Self {
        Self {
            lease_until: None,
            lease_owner: None,
            ..self.clone()
        }
    }
}

/// How much validity a caller's token must have left before a refresh is
/// worth it. The margin is capped at half the token's issued lifetime, so a
/// vendor whose tokens live shorter than the margin (Keycloak's 5 minutes
/// against the 900 s default) is not refreshed on every call. A caller's
/// `min_validity` applies as asked, even one no token could meet (callers
/// waiting together share one refresh, see `refresh`). A lifetime that is not
/// positive (a row written by hand) leaves the margin uncapped.
pub fn refresh_threshold(
    margin: Duration,
    min_validity: Option<Duration>,
    issued_lifetime: Duration,
) -> Duration {
    let margin = if issued_lifetime > Duration::ZERO {
        margin.min(issued_lifetime / 2)
    } else {
        margin
    };
    min_validity.map_or(margin, |m| m.max(margin))
}

/// An authorization started at `/api/auth/start` and not yet completed.
#[derive(Debug, Clone)]
pub struct PendingAuthorization {
    pub integration: IntegrationName,
    pub connection: ConnectionId,
    /// `None` when the integration does not use PKCE.
    pub pkce_verifier: Option<Secret>,
    /// SHA-256 (base64url) of the browser-binding cookie value.
    pub binding_hash: String,
    pub expires_at: OffsetDateTime,
    /// Hash of the consent link it was started from; completing it uses the link up.
    pub link_hash: Option<String>,
    /// The operator allowed this consent to bind the connection to another
    /// vendor account (`allow_account_change` on the link or at auth start).
    pub allow_account_change: bool,
}

/// Whether a consent by `new` may replace the grant `previous`:
/// - the same account always may (that is how a dead grant is revived);
/// - another account, or one that cannot be told, only when the operator allowed an account change;
/// - a grant with no account (no source, or stored before accounts were recorded) may be
///   revived when dead, but an active one is not replaced unless allowed.
pub fn consent_may_replace(
    previous: &ConnectionRecord,
    new: Option<&Account>,
    allow_account_change: bool,
) -> bool {
    if allow_account_change {
        return true;
    }
    match (&previous.account, new) {
        (Some(bound), Some(new)) => bound.same_as(new),
        (Some(_), None) => false,
        (None, _) => previous.status.is_dead(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(expires_at: OffsetDateTime) -> ConnectionRecord {
        ConnectionRecord::new_grant(
            IntegrationName::parse("demo").unwrap(),
            ConnectionId::parse("c1").unwrap(),
            TokenSet {
                access_token: Secret::new("a"),
                refresh_token: None,
            },
            "Bearer".into(),
            String::new(),
            expires_at,
            expires_at,
        )
    }

    #[test]
    fn due_when_expiry_is_within_the_margin() {
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let r = record(now + Duration::seconds(100));
        assert!(r.is_due(now, Duration::seconds(100)));
        assert!(r.is_due(now, Duration::seconds(900)));
        assert!(!r.is_due(now, Duration::seconds(99)));
        assert_eq!(r.expires_in(now), 100);
        assert_eq!(r.expires_in(now + Duration::seconds(500)), 0);
    }

    #[test]
    fn the_threshold_is_capped_by_the_token_lifetime() {
        let s = Duration::seconds;
        // A long-lived token: the margin and any meetable need apply as set.
        assert_eq!(refresh_threshold(s(900), None, s(3600)), s(900));
        assert_eq!(refresh_threshold(s(900), Some(s(2000)), s(3600)), s(2000));
        assert_eq!(refresh_threshold(s(900), Some(s(60)), s(3600)), s(900));
        // A 5-minute token against the 900 s margin: refresh in its second half only.
        assert_eq!(refresh_threshold(s(900), None, s(300)), s(150));
        // A caller's need applies as asked, even one no token could meet.
        assert_eq!(refresh_threshold(s(900), Some(s(3600)), s(300)), s(3600));
        assert_eq!(refresh_threshold(s(900), Some(s(100)), s(300)), s(150));
        // No usable lifetime: as before.
        assert_eq!(refresh_threshold(s(900), Some(s(1000)), s(0)), s(1000));
        assert_eq!(refresh_threshold(s(900), None, s(-5)), s(900));
    }

    #[test]
    fn status_round_trips() {
        for s in [
            ConnectionStatus::Active,
            ConnectionStatus::ReauthorizationRequired,
        ] {
            assert_eq!(ConnectionStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(ConnectionStatus::parse("x"), None);
    }

    #[test]
    fn every_written_status_reads_back_and_others_read_as_unknown() {
        for s in [
            ConnectionStatus::Active,
            ConnectionStatus::ReauthorizationRequired,
            ConnectionStatus::NoRefreshToken,
        ] {
            assert_eq!(ConnectionStatus::read(s.as_str()), s);
        }
        for other in ["suspended", "", "Active", "unknown"] {
            assert_eq!(
                ConnectionStatus::read(other),
                ConnectionStatus::Unknown(other.to_owned())
            );
            assert_eq!(
                ConnectionStatus::read(other).as_str(),
                other,
                "kept verbatim"
            );
        }
    }
}
