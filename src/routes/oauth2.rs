//! `POST /api/oauth2/token`: the broker as an OAuth 2.0 token endpoint for
//! the client credentials grant (RFC 6749 §4.4), so that a REST connector
//! configured with `OAuth2ClientCredential` (ADF, Synapse, Fabric, Power
//! Query, …) obtains the vendor access token of one connection by itself.
//!
//! Anonymous at the Functions host: the broker authenticates the client
//! (a pipeline credential) itself, by `client_secret_basic` or
//! `client_secret_post` (RFC 6749 §2.3.1). Answers follow §5.1 and §5.2
//! exactly; `scope` and `resource` are accepted and ignored unless the
//! integration lists what pipelines may ask for (then `invalid_scope`, or
//! RFC 8707's `invalid_target`, for anything else).

use std::collections::HashMap;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;

use super::credentials::{basic_credentials, source};
use super::error::ApiError;
use super::front_door::Body;
use super::AppState;

/// Body limit of the token endpoint: the form ADF sends is a few hundred bytes.
pub const FORM_BODY_LIMIT: usize = 4 * 1024;
use crate::credentials::{AuthError, IssueError};
use crate::domain::clock::now;
use crate::domain::Secret;
use crate::refresh::RefreshError;

/// RFC 6749 §5.1: exactly these fields (the vendor's token, "Bearer", seconds left).
#[derive(Serialize)]
struct Success<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: i64,
}

/// RFC 6749 §5.2.
#[derive(Serialize)]
struct ErrorBody {
    error: &'static str,
    error_description: String,
}

/// An RFC 6749 §5.2 error answer. Descriptions are fixed texts plus names,
/// never a secret and never a cause chain.
#[derive(Debug)]
pub(crate) enum OAuthError {
    InvalidRequest(&'static str),
    InvalidClient,
    UnsupportedGrantType,
    InvalidGrant(String),
    InvalidScope,
    InvalidTarget,
    TemporarilyUnavailable(&'static str),
    SlowDown(u64),
}

impl OAuthError {
    pub(crate) fn response(&self) -> HttpResponse {
        let (status, code, description) = match self {
            Self::InvalidRequest(d) => (StatusCode::BAD_REQUEST, "invalid_request", d.to_string()),
            Self::InvalidClient => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed".to_owned(),
            ),
            Self::UnsupportedGrantType => (
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only grant_type=client_credentials is supported".to_owned(),
            ),
            Self::InvalidGrant(d) => (StatusCode::BAD_REQUEST, "invalid_grant", d.clone()),
            Self::InvalidScope => (
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "a requested scope is not in the integration's pipeline_scopes".to_owned(),
            ),
            Self::InvalidTarget => (
                StatusCode::BAD_REQUEST,
                "invalid_target",
                "the requested resource is not in the integration's pipeline_resources".to_owned(),
            ),
            Self::TemporarilyUnavailable(d) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                d.to_string(),
            ),
            Self::SlowDown(secs) => (
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                format!("too many failed client authentications; retry in {secs} s"),
            ),
        };
        let mut reply = HttpResponse::build(status);
        reply
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::PRAGMA, "no-cache"));
        match self {
            Self::InvalidClient => {
                reply.insert_header((header::WWW_AUTHENTICATE, "Basic realm=\"oauth-broker\""));
            }
            Self::SlowDown(secs) => {
                reply.insert_header((header::RETRY_AFTER, secs.to_string()));
            }
            _ => {}
        }
        reply.json(ErrorBody {
            error: code,
            error_description: description,
        })
    }
}

/// The form parameters, refusing repeats (RFC 6749 §3.2) and treating empty
/// values as absent.
fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(body) {
        if v.is_empty() {
            continue;
        }
        if out.insert(k.into_owned(), v.into_owned()).is_some() {
            return Err(OAuthError::InvalidRequest(
                "a parameter is repeated; send each parameter once",
            ));
        }
    }
    Ok(out)
}

fn is_form(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// The RFC 6749 answer for a failure of the service.
fn oauth_error(state: &AppState, e: IssueError) -> OAuthError {
    let unavailable = "the token store is unavailable; try again shortly";
    match e {
        IssueError::Auth(AuthError::InvalidClient) => OAuthError::InvalidClient,
        IssueError::Auth(AuthError::RateLimited { retry_after_secs }) => {
            OAuthError::SlowDown(retry_after_secs)
        }
        IssueError::Auth(AuthError::Store(_)) => OAuthError::TemporarilyUnavailable(unavailable),
        IssueError::IntegrationGone(i) => OAuthError::InvalidGrant(format!(
            "integration {i} is no longer configured in the broker; this credential cannot be used"
        )),
        IssueError::IntegrationUnavailable => OAuthError::TemporarilyUnavailable(
            "the integration is not available yet (its provider metadata is being fetched); try again shortly",
        ),
        IssueError::InvalidScope(_) => OAuthError::InvalidScope,
        IssueError::InvalidTarget => OAuthError::InvalidTarget,
        IssueError::NoGrant {
            integration: i,
            connection: c,
        } => OAuthError::InvalidGrant(format!(
            "connection {i}/{c} has no grant: an operator must consent first (a consent link: POST {})",
            state.consent.reauth_links(&i, &c).consent_link_url
        )),
        IssueError::DeadGrant {
            integration: i,
            connection: c,
        } => OAuthError::InvalidGrant(format!(
            "the grant of connection {i}/{c} is no longer valid at the provider: an operator must consent again (a consent link: POST {})",
            state.consent.reauth_links(&i, &c).consent_link_url
        )),
        IssueError::Refresh(RefreshError::Misconfigured(_)) => OAuthError::TemporarilyUnavailable(
            "the provider rejected the integration's client credentials; an operator must fix the integration",
        ),
        IssueError::Refresh(RefreshError::Store(err)) => {
            tracing::error!(error = %err, "store failure on the token endpoint");
            OAuthError::TemporarilyUnavailable(unavailable)
        }
        IssueError::Refresh(_) => OAuthError::TemporarilyUnavailable(
            "the provider could not refresh the access token; try again shortly",
        ),
    }
}

/// `POST /api/oauth2/token`
pub async fn token(
    req: HttpRequest,
    body: Result<Body<FORM_BODY_LIMIT>, ApiError>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let body = match body {
        Ok(Body(b)) => b,
        Err(e) => return e.error_response(),
    };
    match issue(&req, &body, &state).await {
        Ok(reply) => reply,
        Err(e) => e.response(),
    }
}

/// What a token request presents, read from its headers and form before any
/// credential is looked at: the client's id and secret (by exactly one
/// method), and the `scope` and `resource` it asks for.
#[derive(Debug)]
pub(crate) struct ClientRequest {
    pub client_id: String,
    pub secret: Secret,
    pub scope: Option<String>,
    pub resource: Option<String>,
}

/// Reads a token request (RFC 6749 §4.4.2, client authentication §2.3.1);
/// the error is the §5.2 answer.
pub(crate) fn read_request(req: &HttpRequest, body: &[u8]) -> Result<ClientRequest, OAuthError> {
    if !is_form(req) {
        return Err(OAuthError::InvalidRequest(
            "the body must be application/x-www-form-urlencoded (RFC 6749 section 4.4.2)",
        ));
    }
    let mut form = parse_form(body)?;
    match form.get("grant_type").map(String::as_str) {
        None => {
            return Err(OAuthError::InvalidRequest(
                "grant_type is missing; send grant_type=client_credentials",
            ))
        }
        Some("client_credentials") => {}
        Some(_) => return Err(OAuthError::UnsupportedGrantType),
    }
    let posted_secret = form.remove("client_secret").map(Secret::new);
    let posted_id = form.remove("client_id");
    let (client_id, secret) = match (basic_credentials(req), posted_id, posted_secret) {
        (Some(_), _, Some(_)) => {
            return Err(OAuthError::InvalidRequest(
                "use one client authentication method: HTTP Basic or client_secret in the body, not both",
            ))
        }
        (Some(Err(())), _, None) => return Err(OAuthError::InvalidClient),
        (Some(Ok((id, secret))), posted, None) => {
            if posted.is_some_and(|p| p != id) {
                return Err(OAuthError::InvalidRequest(
                    "client_id in the body differs from the one in the Authorization header",
                ));
            }
            (id, secret)
        }
        (None, Some(id), Some(secret)) => (id, secret),
        (None, _, _) => return Err(OAuthError::InvalidClient),
    };
    Ok(ClientRequest {
        client_id,
        secret,
        scope: form.remove("scope"),
        resource: form.remove("resource"),
    })
}

async fn issue(
    req: &HttpRequest,
    body: &[u8],
    state: &AppState,
) -> Result<HttpResponse, OAuthError> {
    let ClientRequest {
        client_id,
        secret,
        scope,
        resource,
    } = read_request(req, body)?;
    let record = state
        .credentials
        .issue(
            &client_id,
            &secret,
            source(req),
            scope.as_deref(),
            resource.as_deref(),
        )
        .await
        .map_err(|e| oauth_error(state, e))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(Success {
            access_token: record.tokens.access_token.expose(),
            token_type: "Bearer",
            expires_in: record.expires_in(now()),
        }))
}
