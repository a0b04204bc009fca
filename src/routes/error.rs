//! The JSON error answer of the API routes: a stable `error` code and a safe
//! `error_description` (never a cause chain, never a secret). ADF needs a JSON
//! object body on every answer, errors included.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::refresh::RefreshError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A bearer token (Entra ID) that failed a check; the stable short reason only.
    #[error("the bearer token was not accepted ({0})")]
    InvalidToken(&'static str),
    /// Entra ID's signing keys could not be fetched, and none are cached.
    #[error("the Entra ID signing keys are unavailable; try again shortly")]
    EntraUnavailable,
    /// Authenticated, but not for this connection (a pipeline credential of another one).
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("no credential with this client id for this connection")]
    CredentialNotFound,
    #[error("no outstanding consent link with this id for this connection")]
    ConsentLinkNotFound,
    /// Too many failed authentications from this client id or source.
    #[error("too many failed authentications; retry in {retry_after_secs} s")]
    TooManyFailures { retry_after_secs: u64 },
    #[error("{0}")]
    IntegrationNotFound(String),
    /// The integration's endpoints are still being discovered.
    #[error("{0}")]
    IntegrationUnavailable(String),
    #[error("{0}")]
    ConnectionNotFound(String),
    #[error("the grant is no longer valid at the provider: create a consent link with POST {} (or the status page's button, {}) and have the account owner open it", .0.consent_link_url, .0.status_url)]
    ReauthorizationRequired(ReauthLinks),
    #[error("{0}")]
    Upstream(String),
    #[error("{0}")]
    IntegrationMisconfigured(String),
    #[error("the token store is unavailable; try again shortly")]
    StoreUnavailable,
    #[error("no such route")]
    RouteNotFound,
    /// Standalone mode: the `Host` header names neither the public URL's host nor a loopback name.
    #[error("this broker does not answer to that host name: call it at its public URL or at 127.0.0.1, localhost or [::1] with its port")]
    MisdirectedRequest,
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    RequestTimeout(String),
    /// The proxy: a path that would leave the vendor's API base.
    #[error("{0}")]
    InvalidPath(String),
    /// The proxy: the integration has no `api_base_url` (or the connection lacks what it needs).
    #[error("{0}")]
    ProxyNotConfigured(String),
    #[error("{0}")]
    UpstreamTimeout(String),
    #[error("{0}")]
    UpstreamUnreachable(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::InvalidToken(_) => "invalid_token",
            Self::EntraUnavailable => "entra_unavailable",
            Self::Forbidden(_) => "forbidden",
            Self::CredentialNotFound => "credential_not_found",
            Self::ConsentLinkNotFound => "consent_link_not_found",
            Self::TooManyFailures { .. } => "too_many_failures",
            Self::IntegrationNotFound(_) => "integration_not_found",
            Self::IntegrationUnavailable(_) => "integration_unavailable",
            Self::ConnectionNotFound(_) => "connection_not_found",
            Self::ReauthorizationRequired(_) => "reauthorization_required",
            Self::Upstream(_) => "upstream_error",
            Self::IntegrationMisconfigured(_) => "integration_misconfigured",
            Self::StoreUnavailable => "store_unavailable",
            Self::RouteNotFound => "not_found",
            Self::MisdirectedRequest => "misdirected_request",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::RequestTimeout(_) => "request_timeout",
            Self::InvalidPath(_) => "invalid_path",
            Self::ProxyNotConfigured(_) => "proxy_not_configured",
            Self::UpstreamTimeout(_) => "upstream_timeout",
            Self::UpstreamUnreachable(_) => "upstream_unreachable",
        }
    }

    /// Maps an engine failure; `links` say where to go for a dead grant.
    pub fn from_refresh(e: RefreshError, links: ReauthLinks) -> Self {
        match e {
            RefreshError::NotFound => {
                Self::ConnectionNotFound("no connection with this name; consent first".into())
            }
            RefreshError::ReauthorizationRequired => Self::ReauthorizationRequired(links),
            RefreshError::Upstream(err) => {
                Self::Upstream(format!("refreshing the token failed: {err}"))
            }
            RefreshError::CoolingDown { .. } => Self::Upstream(e.to_string()),
            RefreshError::Misconfigured(err) => Self::IntegrationMisconfigured(format!(
                "the provider rejected the integration's client credentials ({err}); check client_id, client_secret and client_auth"
            )),
            RefreshError::Busy => Self::Upstream(
                "another instance is refreshing this connection; retry shortly".into(),
            ),
            RefreshError::Store(err) => {
                tracing::error!(error = %err, "store failure on the token route");
                Self::StoreUnavailable
            }
        }
    }
}

pub use crate::consent::ReauthLinks;

/// Marks every error the broker itself answers with, so a pipeline calling
/// the proxy can tell them from the vendor's.
pub const BROKER_ERROR: &str = "x-broker-error";

/// The error object of every JSON route.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    error_description: String,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    links: Option<&'a ReauthLinks>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) | Self::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Self::EntraUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::CredentialNotFound | Self::ConsentLinkNotFound => StatusCode::NOT_FOUND,
            Self::TooManyFailures { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::IntegrationNotFound(_) | Self::ConnectionNotFound(_) | Self::RouteNotFound => {
                StatusCode::NOT_FOUND
            }
            Self::ReauthorizationRequired { .. } => StatusCode::CONFLICT,
            Self::Upstream(_) | Self::IntegrationMisconfigured(_) => StatusCode::BAD_GATEWAY,
            Self::StoreUnavailable | Self::IntegrationUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::InvalidPath(_) => StatusCode::BAD_REQUEST,
            Self::ProxyNotConfigured(_) => StatusCode::NOT_FOUND,
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamUnreachable(_) => StatusCode::BAD_GATEWAY,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let body = ErrorBody {
            error: self.code(),
            error_description: self.to_string(),
            links: match self {
                Self::ReauthorizationRequired(links) => Some(links),
                _ => None,
            },
        };
        let mut reply = HttpResponse::build(self.status_code());
        reply.insert_header((header::CACHE_CONTROL, "no-store"));
        // The broker's own answer, not a vendor's (the proxy passes those through).
        reply.insert_header((BROKER_ERROR, "true"));
        if let Self::InvalidToken(_) = self {
            // RFC 6750 §3: the challenge names the error, nothing more.
            reply.insert_header((header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\""));
        }
        if let Self::TooManyFailures { retry_after_secs } = self {
            reply.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
        }
        reply.json(body)
    }
}

/// A method the route does not take (the proxy's: GET, HEAD, POST, PUT, PATCH, DELETE).
pub async fn method_not_allowed() -> HttpResponse {
    let mut r = HttpResponse::MethodNotAllowed();
    r.insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((BROKER_ERROR, "true"))
        .insert_header((header::ALLOW, "GET, HEAD, POST, PUT, PATCH, DELETE"));
    r.json(ErrorBody {
        error: "method_not_allowed",
        error_description: "the proxy takes GET, HEAD, POST, PUT, PATCH and DELETE".into(),
        links: None,
    })
}

pub async fn not_found() -> HttpResponse {
    ApiError::RouteNotFound.error_response()
}
