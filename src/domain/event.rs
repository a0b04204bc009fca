//! Events: a change of state of a connection or an integration, as webhook
//! receivers and the log are told about it. Pure: no I/O (the `events`
//! module stores, signs and delivers them).

use time::OffsetDateTime;

use super::{Account, ConnectionId, IntegrationName, Secret};

/// What happened. The wire names (`as_str`) are a public contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// The first consent of a connection.
    ConnectionCreated,
    /// The vendor answered `invalid_grant`: only a new consent restores the grant.
    ConnectionReauthorizationRequired,
    /// A new consent restored a grant that needed one.
    ConnectionRecovered,
    /// The connection was deleted (through the API).
    ConnectionDeleted,
    /// Refreshes have failed transiently for longer than the configured time.
    ConnectionRefreshFailing,
    /// A consent returned no refresh token (the grant cannot be kept alive).
    ConnectionNoRefreshToken,
    /// A consent by another vendor account than the connection's was refused.
    ConnectionAccountMismatch,
    /// A consent the operator allowed to change accounts bound the connection to another one.
    ConnectionAccountChanged,
    /// The vendor rejected the integration's client credentials (`invalid_client`)
    /// after they had worked: once per breakage, not once per call.
    IntegrationMisconfigured,
    /// The vendor ends the grant at a fixed age (`refresh_token_max_days`)
    /// within 30 days: once per grant.
    ConnectionRefreshTokenExpiring,
}

impl EventType {
    pub const ALL: [EventType; 10] = [
        Self::ConnectionCreated,
        Self::ConnectionReauthorizationRequired,
        Self::ConnectionRecovered,
        Self::ConnectionDeleted,
        Self::ConnectionRefreshFailing,
        Self::ConnectionNoRefreshToken,
        Self::ConnectionAccountMismatch,
        Self::ConnectionAccountChanged,
        Self::IntegrationMisconfigured,
        Self::ConnectionRefreshTokenExpiring,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionCreated => "connection.created",
            Self::ConnectionReauthorizationRequired => "connection.reauthorization_required",
            Self::ConnectionRecovered => "connection.recovered",
            Self::ConnectionDeleted => "connection.deleted",
            Self::ConnectionRefreshFailing => "connection.refresh_failing",
            Self::ConnectionNoRefreshToken => "connection.no_refresh_token",
            Self::ConnectionAccountMismatch => "connection.account_mismatch",
            Self::ConnectionAccountChanged => "connection.account_changed",
            Self::IntegrationMisconfigured => "integration.misconfigured",
            Self::ConnectionRefreshTokenExpiring => "connection.refresh_token_expiring",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// A one-line summary for chat receivers (Teams, Slack).
    pub fn headline(self) -> &'static str {
        match self {
            Self::ConnectionCreated => "A connection was created",
            Self::ConnectionReauthorizationRequired => {
                "A connection needs a new consent: the vendor no longer accepts its grant"
            }
            Self::ConnectionRecovered => "A connection was restored by a new consent",
            Self::ConnectionDeleted => "A connection was deleted",
            Self::ConnectionRefreshFailing => "Refreshing a connection has been failing",
            Self::ConnectionNoRefreshToken => {
                "A consent returned no refresh token: the connection stops working when its access token expires"
            }
            Self::ConnectionAccountMismatch => {
                "A consent by another vendor account was refused: the connection keeps its grant"
            }
            Self::ConnectionAccountChanged => {
                "A connection was bound to another vendor account (the operator allowed it)"
            }
            Self::IntegrationMisconfigured => {
                "The vendor rejects the integration's client credentials (invalid_client)"
            }
            Self::ConnectionRefreshTokenExpiring => {
                "A connection's grant ends soon at the vendor whatever its use: consent again before then"
            }
        }
    }
}

/// One event. It carries no token, code or secret: the consent link is a
/// keyless link to consent again (a [`Secret`], so it is never logged; it
/// goes only into the signed webhook body).
#[derive(Debug, Clone)]
pub struct Event {
    /// Stable across retries and instances: receivers de-duplicate on it.
    pub id: String,
    pub kind: EventType,
    pub occurred_at: OffsetDateTime,
    pub integration: IntegrationName,
    pub connection: Option<ConnectionId>,
    /// The connection's status after the event (`active`, `reauthorization_required`, `deleted`).
    pub status: Option<String>,
    /// The vendor's error code (or a short class of failure), sanitised.
    pub error: Option<String>,
    pub consent_link: Option<Secret>,
    /// The vendor account of the connection after the event; for
    /// `connection.account_mismatch` the account that tried to consent.
    pub account: Option<Account>,
    /// `connection.account_changed`: the account before; `connection.account_mismatch`:
    /// the account the connection stays bound to.
    pub previous_account: Option<Account>,
    /// At a consent that replaced a grant: whether the new account was checked
    /// against the replaced grant's (false: that grant had no account to compare).
    pub account_verified: Option<bool>,
}

impl Event {
    /// An event of `kind` about `integration` (and `connection`), identified by `id`.
    pub fn new(
        id: String,
        kind: EventType,
        occurred_at: OffsetDateTime,
        integration: IntegrationName,
        connection: Option<ConnectionId>,
    ) -> Self {
        Self {
            id,
            kind,
            occurred_at,
            integration,
            connection,
            status: None,
            error: None,
            consent_link: None,
            account: None,
            previous_account: None,
            account_verified: None,
        }
    }

    pub fn with_status(mut self, status: impl Into<String>) -> Self {
        self.status = Some(status.into());
        self
    }

    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("connection.nope"), None);
        assert_eq!(
            EventType::ConnectionNoRefreshToken.as_str(),
            "connection.no_refresh_token"
        );
    }
}
