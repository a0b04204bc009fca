//! Connection management (protected): list, show, delete (revoking at the
//! vendor), and consent links an admin can send to an account owner. Never a
//! token in any answer.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use super::error::ApiError;
use super::front_door::{Body, JSON_BODY_LIMIT};
use super::{no_store, path_names, query, AppState};
use crate::consent::{ConsentError, MAX_LINK_LIFETIME};
use crate::domain::{Account, ConnectionId, ConnectionRecord, IntegrationName};
use crate::refresh::RefreshError;
use crate::registry::Lookup;

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// What an admin sees of a connection: everything but its tokens.
#[derive(Serialize)]
pub struct ConnectionView<'a> {
    integration: &'a str,
    connection: &'a str,
    status: &'a str,
    /// The status page's condition (`status` plus what is derived from the last refresh).
    condition: &'static str,
    expires_at: String,
    refreshed_at: String,
    created_at: String,
    last_error: Option<&'a str>,
    last_error_at: Option<String>,
    scope: &'a str,
    metadata: &'a BTreeMap<String, String>,
    /// The vendor account that granted it: `{"id", "source"}`, or null.
    account: Option<&'a Account>,
}

impl<'a> ConnectionView<'a> {
    fn of(state: &AppState, r: &'a ConnectionRecord) -> Self {
        let idle = match state.engine.integration(&r.integration) {
            Lookup::Ready(i) => i.refresh_token_idle,
            _ => None,
        };
        Self {
            integration: r.integration.as_str(),
            connection: r.connection.as_str(),
            status: r.status.as_str(),
            condition: crate::domain::condition::assess(
                &state.engine.as_assessed(r.clone()),
                idle,
                crate::domain::clock::now(),
            )
            .as_str(),
            expires_at: rfc3339(r.expires_at),
            refreshed_at: rfc3339(r.refreshed_at),
            created_at: rfc3339(r.created_at),
            last_error: r.last_error.as_deref(),
            last_error_at: r.last_error_at.map(rfc3339),
            scope: &r.scope,
            metadata: &r.metadata,
            account: r.account.as_ref(),
        }
    }
}

#[derive(Serialize)]
struct ConnectionList<'a> {
    connections: Vec<ConnectionView<'a>>,
}

#[derive(Serialize)]
struct LinkView<'a> {
    url: &'a str,
    expires_at: String,
    integration: &'a str,
    connection: &'a str,
    id: String,
    created_at: Option<String>,
    allow_account_change: bool,
}

fn store_err(e: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %e, "store failure on a connections route");
    ApiError::StoreUnavailable
}

fn not_found() -> ApiError {
    ApiError::ConnectionNotFound("no connection with this name".into())
}

/// `GET /api/connections`
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let all = state.connections.connections().await.map_err(store_err)?;
    Ok(no_store(HttpResponse::Ok()).json(ConnectionList {
        connections: all.iter().map(|r| ConnectionView::of(&state, r)).collect(),
    }))
}

/// `GET /api/connections/{integration}/{connection}`
pub async fn show(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (i, c) = path_names(&req)?;
    match state
        .connections
        .connection(&i, &c)
        .await
        .map_err(store_err)?
    {
        Some(r) => Ok(no_store(HttpResponse::Ok()).json(ConnectionView::of(&state, &r))),
        None => Err(not_found()),
    }
}

/// `DELETE /api/connections/{integration}/{connection}[?revoke=false]`
pub async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (i, c) = path_names(&req)?;
    let revoke = match query(&req)
        .get("revoke")
        .map(|v| v.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("true") | Some("1") => true,
        Some("false") | Some("0") => false,
        Some(_) => {
            return Err(ApiError::InvalidRequest(
                "revoke must be true or false".into(),
            ))
        }
    };
    delete_connection(&state, &i, &c, revoke).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Deletes a connection (revoking it at the vendor when `revoke` and the
/// integration can); the connection of a removed integration is deleted without revocation.
pub(super) async fn delete_connection(
    state: &AppState,
    i: &IntegrationName,
    c: &ConnectionId,
    revoke: bool,
) -> Result<(), ApiError> {
    let integration = match state.engine.integration(i) {
        // An unavailable integration answers 503: revocation needs its endpoints.
        Lookup::Ready(_) | Lookup::Unavailable { .. } => state.integration(i)?,
        Lookup::Unknown => {
            // The integration was removed from the file: its rows can still be deleted, without revocation.
            return match state
                .connections
                .delete_orphan(i, c)
                .await
                .map_err(store_err)?
            {
                true => Ok(()),
                false => Err(not_found()),
            };
        }
    };
    match state.connections.delete(&integration, c, revoke).await {
        Ok(()) => Ok(()),
        Err(RefreshError::Upstream(e)) => Err(ApiError::Upstream(format!(
            "revoking the grant at the provider failed ({e}); the connection was kept. Retry, or delete with ?revoke=false"
        ))),
        Err(e) => Err(ApiError::from_refresh(e, state.consent.reauth_links(i, c))),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LinkBody {
    #[serde(default, deserialize_with = "super::whole_seconds")]
    expires_in_secs: Option<u32>,
    /// A consent through the link may bind the connection to another vendor account.
    #[serde(default)]
    allow_account_change: bool,
}

fn link_error(e: ConsentError) -> ApiError {
    match e {
        ConsentError::UnknownIntegration(_) => ApiError::IntegrationNotFound(e.to_string()),
        ConsentError::IntegrationUnavailable { .. } => {
            ApiError::IntegrationUnavailable(e.to_string())
        }
        _ => ApiError::StoreUnavailable,
    }
}

/// One outstanding consent link, as an admin sees it: never its token.
#[derive(Serialize)]
struct OutstandingLink {
    id: String,
    created_at: Option<String>,
    expires_at: String,
    consents_in_progress: usize,
    allow_account_change: bool,
}

#[derive(Serialize)]
struct OutstandingLinks<'a> {
    integration: &'a str,
    connection: &'a str,
    consent_links: Vec<OutstandingLink>,
}

/// `GET /api/connections/{integration}/{connection}/consent-links`: the
/// connection's links that are not used up (expired ones included until the
/// purge removes them; `expires_at` says which).
pub async fn list_links(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (i, c) = path_names(&req)?;
    let links = state.links.list(&i, &c).await.map_err(link_error)?;
    Ok(no_store(HttpResponse::Ok()).json(OutstandingLinks {
        integration: i.as_str(),
        connection: c.as_str(),
        consent_links: links
            .into_iter()
            .map(|(l, n)| OutstandingLink {
                id: crate::consent::link_id(&l.link_hash),
                created_at: l.created_at.map(rfc3339),
                expires_at: rfc3339(l.expires_at),
                consents_in_progress: n,
                allow_account_change: l.allow_account_change,
            })
            .collect(),
    }))
}

/// `DELETE /api/connections/{integration}/{connection}/consent-links/{id}`:
/// ends one link (204); opening it afterwards answers 410.
pub async fn end_link(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (i, c) = path_names(&req)?;
    let id = req.match_info().get("id").unwrap_or_default();
    if id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
    {
        // No link has such an id (ids are cl_ and base64url characters).
        return Err(ApiError::ConsentLinkNotFound);
    }
    match state.links.end(&i, &c, id).await.map_err(link_error)? {
        true => Ok(no_store(HttpResponse::NoContent()).finish()),
        false => Err(ApiError::ConsentLinkNotFound),
    }
}

/// `POST /api/connections/{integration}/{connection}/consent-link`: a link
/// that works without a function key, for an account owner to consent with.
pub async fn create_link(
    req: HttpRequest,
    Body(body): Body<JSON_BODY_LIMIT>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (i, c) = path_names(&req)?;
    // Only a body of no bytes means the defaults: whitespace is not JSON.
    let b: LinkBody = if body.is_empty() {
        LinkBody::default()
    } else if !body.trim_ascii_start().starts_with(b"{") {
        return Err(ApiError::InvalidRequest(
            "the body must be empty or a JSON object {\"expires_in_secs\": <seconds>, \"allow_account_change\": <bool>}".into(),
        ));
    } else {
        serde_json::from_slice(&body).map_err(|_| {
            ApiError::InvalidRequest(
                "the body must be empty or a JSON object {\"expires_in_secs\": <seconds>, \"allow_account_change\": <bool>}".into(),
            )
        })?
    };
    state.integration(&i)?;
    let lifetime = match b.expires_in_secs {
        Some(s) if s == 0 || Duration::seconds(i64::from(s)) > MAX_LINK_LIFETIME => {
            return Err(ApiError::InvalidRequest(
                "expires_in_secs must be between 1 and 2592000 (30 days)".into(),
            ))
        }
        Some(s) => Some(Duration::seconds(i64::from(s))),
        None => None,
    };
    let created = state
        .links
        .create(&i, &c, lifetime, b.allow_account_change)
        .await
        .map_err(|e| match e {
            ConsentError::UnknownIntegration(_) => ApiError::IntegrationNotFound(e.to_string()),
            ConsentError::IntegrationUnavailable { .. } => {
                ApiError::IntegrationUnavailable(e.to_string())
            }
            _ => ApiError::StoreUnavailable,
        })?;
    Ok(no_store(HttpResponse::Created()).json(LinkView {
        url: &created.url,
        expires_at: rfc3339(created.link.expires_at),
        integration: i.as_str(),
        connection: c.as_str(),
        id: crate::consent::link_id(&created.link.link_hash),
        created_at: created.link.created_at.map(rfc3339),
        allow_account_change: created.link.allow_account_change,
    }))
}
