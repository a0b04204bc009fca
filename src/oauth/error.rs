//! Why a token request failed ([`TokenError`]), and how a failure is
//! classified: a dead grant, a misconfigured integration, or worth retrying.

use crate::domain::OAuthErrorCode;

use super::sanitize;

/// The longest vendor description kept in an error (log, `last_error`, page).
pub const MAX_DESCRIPTION: usize = 200;

/// Why a token request failed. None of the variants carries a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The vendor answered with an OAuth error (RFC 6749 §5.2), whatever the status.
    #[error("the provider answered {error}{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Rejected {
        status: u16,
        error: OAuthErrorCode,
        description: Option<String>,
    },
    /// 5xx or 429 without an OAuth error body.
    #[error("the provider answered HTTP {status}")]
    Server {
        status: u16,
        /// `Retry-After` in seconds, when sent.
        retry_after: Option<u64>,
    },
    /// Connecting, sending or reading timed out or failed.
    #[error("the provider could not be reached: {0}")]
    Transport(String),
    /// A success status with a body that is not a token response.
    #[error("the provider's answer was not a token response: {0}")]
    InvalidResponse(String),
}

impl TokenError {
    /// The kind of failure, stored beside its text (`last_error_kind`) so that
    /// classifying a stored failure never reads the text: `oauth:<code>` (the
    /// vendor's OAuth error code), `http:<status>`, `transport` or
    /// `invalid_response`. Read back by [`crate::domain::condition`].
    pub fn kind(&self) -> String {
        match self {
            Self::Rejected { error, .. } => sanitize(&format!("oauth:{error}"), 80),
            Self::Server { status, .. } => format!("http:{status}"),
            Self::Transport(_) => "transport".into(),
            Self::InvalidResponse(_) => "invalid_response".into(),
        }
    }

    /// The OAuth error code when the vendor gave one.
    pub fn oauth_error(&self) -> Option<&OAuthErrorCode> {
        match self {
            Self::Rejected { error, .. } => Some(error),
            _ => None,
        }
    }

    /// `invalid_grant`: the grant is dead and only a new consent restores it.
    pub fn is_dead_grant(&self) -> bool {
        self.oauth_error() == Some(&OAuthErrorCode::InvalidGrant)
    }

    /// `invalid_client` / `unauthorized_client`: the integration's
    /// configuration is wrong; connections are not to blame (RFC 6749 §5.2).
    pub fn is_misconfigured(&self) -> bool {
        self.oauth_error()
            .is_some_and(OAuthErrorCode::blames_client)
    }

    /// Worth retrying: 5xx, 429, transport failures, unparsable bodies, and
    /// OAuth errors that say so (`temporarily_unavailable`, `server_error`, or any with a 5xx/429).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Server { .. } | Self::Transport(_) | Self::InvalidResponse(_) => true,
            Self::Rejected { status, error, .. } => {
                *status == 429 || *status >= 500 || error.is_temporary()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status page reads the class of a refresh failure back from the text
    /// the engine stores (`sanitize(err.to_string())`): this pins the two together.
    #[test]
    fn a_stored_refresh_error_keeps_its_oauth_code() {
        use crate::domain::condition::error_code;
        let stored = |e: TokenError| sanitize(&e.to_string(), 300);
        let rejected = |error| TokenError::Rejected {
            status: 401,
            error,
            description: Some("client secret expired".into()),
        };
        assert_eq!(
            error_code(&stored(rejected(OAuthErrorCode::InvalidClient))),
            Some(OAuthErrorCode::InvalidClient)
        );
        assert_eq!(
            error_code(&stored(TokenError::Rejected {
                status: 400,
                error: OAuthErrorCode::UnauthorizedClient,
                description: None,
            })),
            Some(OAuthErrorCode::UnauthorizedClient)
        );
        assert_eq!(
            error_code(&stored(TokenError::Server {
                status: 503,
                retry_after: None
            })),
            None
        );
        assert_eq!(
            error_code(&stored(TokenError::Transport("timed out".into()))),
            None
        );
    }
}
