//! Connection management (protected): list, show, delete (revoking at the
//! vendor), and consent links an admin can send to an account owner; plus the
//! anonymous route a consent link opens. Never a token in any answer.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use super::error::ApiError;
use super::{auth, html, query, AppState};
use crate::domain::{ConnectionId, ConnectionRecord, IntegrationName};
use crate::refresh::{now, RefreshError};
use crate::store::ConsentLink;

/// The longest a consent link may live.
const MAX_LINK_LIFETIME: Duration = Duration::days(30);

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// What an admin sees of a connection: everything but its tokens.
pub fn view(r: &ConnectionRecord) -> Value {
    json!({
        "integration": r.integration.as_str(),
        "connection": r.connection.as_str(),
        "status": r.status.as_str(),
        "expires_at": rfc3339(r.expires_at),
        "refreshed_at": rfc3339(r.refreshed_at),
        "created_at": rfc3339(r.created_at),
        "last_error": r.last_error,
        "last_error_at": r.last_error_at.map(rfc3339),
        "scope": r.scope,
        "metadata": r.metadata,
    })
}

fn no_store(mut b: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    b.insert_header((header::CACHE_CONTROL, "no-store"));
    b
}

fn names(req: &HttpRequest) -> Result<(IntegrationName, ConnectionId), ApiError> {
    let i = req.match_info().get("integration").unwrap_or_default();
    let c = req.match_info().get("connection").unwrap_or_default();
    Ok((
        IntegrationName::parse(i)
            .map_err(|e| ApiError::InvalidRequest(format!("integration: {e}")))?,
        ConnectionId::parse(c).map_err(|e| ApiError::InvalidRequest(format!("connection: {e}")))?,
    ))
}

fn store_err(e: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %e, "store failure on a connections route");
    ApiError::StoreUnavailable
}

/// `GET /api/connections`
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.check_key(&req)?;
    let all = state.engine.store().list().await.map_err(store_err)?;
    let connections: Vec<Value> = all.iter().map(view).collect();
    Ok(no_store(HttpResponse::Ok()).json(json!({ "connections": connections })))
}

/// `GET /api/connections/{integration}/{connection}`
pub async fn show(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.check_key(&req)?;
    let (i, c) = names(&req)?;
    match state.engine.store().get(&i, &c).await.map_err(store_err)? {
        Some(v) => Ok(no_store(HttpResponse::Ok()).json(view(&v.value))),
        None => Err(ApiError::ConnectionNotFound(
            "no connection with this name".into(),
        )),
    }
}

/// `DELETE /api/connections/{integration}/{connection}[?revoke=false]`
pub async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.check_key(&req)?;
    let (i, c) = names(&req)?;
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
    let authorize = state.authorize_link(i.as_str(), &c);
    let Some(integration) = state.engine.integration(&i) else {
        // The integration was removed from the file: its rows can still be deleted, without revocation.
        return match state
            .engine
            .store()
            .delete(&i, &c)
            .await
            .map_err(store_err)?
        {
            true => Ok(HttpResponse::NoContent().finish()),
            false => Err(ApiError::ConnectionNotFound(
                "no connection with this name".into(),
            )),
        };
    };
    match state.engine.delete(integration, &c, revoke).await {
        Ok(()) => Ok(HttpResponse::NoContent().finish()),
        Err(RefreshError::Upstream(e)) => Err(ApiError::Upstream(format!(
            "revoking the grant at the provider failed ({e}); the connection was kept. Retry, or delete with ?revoke=false"
        ))),
        Err(e) => Err(ApiError::from_refresh(e, authorize)),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LinkBody {
    #[serde(default)]
    expires_in_secs: Option<u32>,
}

/// `POST /api/connections/{integration}/{connection}/consent-link`: a link that
/// works without a function key, for an account owner to consent with. It is
/// a random token whose hash is stored, so it can be neither forged nor read
/// back from the store; it is used up when a consent through it completes
/// (so a mail scanner that opens it first does not burn it).
pub async fn create_link(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.check_key(&req)?;
    let (i, c) = names(&req)?;
    let b: LinkBody = if body.iter().all(u8::is_ascii_whitespace) {
        LinkBody::default()
    } else if !body.trim_ascii_start().starts_with(b"{") {
        return Err(ApiError::InvalidRequest(
            "the body must be empty or a JSON object {\"expires_in_secs\": <seconds>}".into(),
        ));
    } else {
        serde_json::from_slice(&body).map_err(|_| {
            ApiError::InvalidRequest(
                "the body must be empty or a JSON object {\"expires_in_secs\": <seconds>}".into(),
            )
        })?
    };
    if state.engine.integration(&i).is_none() {
        return Err(ApiError::IntegrationNotFound(format!(
            "no integration named {:?} is configured",
            i.as_str()
        )));
    }
    let lifetime = match b.expires_in_secs {
        Some(s) if s == 0 || Duration::seconds(i64::from(s)) > MAX_LINK_LIFETIME => {
            return Err(ApiError::InvalidRequest(
                "expires_in_secs must be between 1 and 2592000 (30 days)".into(),
            ))
        }
        Some(s) => Duration::seconds(i64::from(s)),
        None => state.consent_link_lifetime,
    };
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let token = URL_SAFE_NO_PAD.encode(nonce);
    let link = ConsentLink {
        link_hash: auth::hash(&token),
        integration: i.clone(),
        connection: c.clone(),
        expires_at: now() + lifetime,
    };
    state
        .engine
        .store()
        .insert_link(&link)
        .await
        .map_err(store_err)?;
    tracing::info!(
        integration = i.as_str(),
        connection = c.as_str(),
        "consent link created"
    );
    Ok(no_store(HttpResponse::Created()).json(json!({
        "url": format!("{}/api/auth/link?t={token}", state.public_url),
        "expires_at": rfc3339(link.expires_at),
        "integration": i.as_str(),
        "connection": c.as_str(),
    })))
}

/// `GET /api/auth/link?t=<token>` (anonymous): opens a consent link.
pub async fn open_link(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let params = query(&req);
    let Some(token) = params.get("t").filter(|t| !t.is_empty() && t.len() <= 128) else {
        return html::link_unusable();
    };
    let link = match state.engine.store().peek_link(&auth::hash(token)).await {
        Ok(Some(l)) => l,
        Ok(None) => return html::link_unusable(),
        Err(e) => {
            tracing::error!(error = %e, "could not read a consent link");
            return html::storage_unavailable(false);
        }
    };
    if link.expires_at < now() {
        return html::link_unusable();
    }
    let Some(integration) = state.engine.integration(&link.integration) else {
        return html::integration_gone(link.integration.as_str());
    };
    auth::begin(&state, integration, link.connection, Some(link.link_hash)).await
}
