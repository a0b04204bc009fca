//! `GET /api/status` (protected): every connection's condition for operators,
//! as an HTML page or, with `Accept: application/json` or `?format=json`, as
//! JSON for monitoring (same order). `POST /api/status` takes the page's
//! buttons (form fields `action` = `consent_link` | `refresh` | `delete` |
//! `delete_credential`, `integration`, `connection`, and `client_id` for a
//! credential) and answers the page again with the outcome on top.
//!
//! The forms post back to the page's own URL, so the function key travels
//! in `?code=` as it did for the page, never inside the page. A POST that a
//! browser marks as coming from another site (`Sec-Fetch-Site`) is refused, so
//! a page elsewhere cannot press the buttons even for a browser that holds
//! the key.

use std::collections::BTreeMap;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::connections::delete_connection;
use super::error::ApiError;
use super::front_door::{Body, JSON_BODY_LIMIT};
use super::html::{self, Notice};
use super::{no_store, query, AppState};
use crate::consent::ConsentError;
use crate::domain::clock::now;
use crate::domain::condition::Overview;
use crate::domain::{Condition, ConnectionId, IntegrationName};
use crate::registry::Lookup;

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

#[derive(Serialize)]
struct StatusJson<'a> {
    counts: BTreeMap<&'static str, usize>,
    by_integration: BTreeMap<&'a str, BTreeMap<&'static str, usize>>,
    attention: Vec<AttentionJson<'a>>,
}

#[derive(Serialize)]
struct AttentionJson<'a> {
    integration: &'a str,
    connection: &'a str,
    status: &'static str,
    last_error: Option<String>,
    last_error_at: Option<String>,
    refreshed_at: String,
    expires_at: String,
    /// When the vendor ends the grant whatever its use (`refresh_token_max_days`).
    grant_ends_at: Option<String>,
}

/// Every condition with its count (zeros included, so monitors can compare).
fn all_counts(per: &BTreeMap<Condition, usize>) -> BTreeMap<&'static str, usize> {
    Condition::ALL
        .iter()
        .map(|c| (c.as_str(), per.get(c).copied().unwrap_or(0)))
        .collect()
}

fn json(o: &Overview) -> StatusJson<'_> {
    StatusJson {
        counts: all_counts(&o.counts()),
        by_integration: o
            .by_integration
            .iter()
            .map(|(name, per)| (name.as_str(), all_counts(per)))
            .collect(),
        attention: o
            .attention()
            .map(|a| AttentionJson {
                integration: a.record.integration.as_str(),
                connection: a.record.connection.as_str(),
                status: a.condition.as_str(),
                last_error: a
                    .record
                    .last_error
                    .as_deref()
                    .map(|e| crate::oauth::sanitize(e, 300)),
                last_error_at: a.record.last_error_at.map(rfc3339),
                refreshed_at: rfc3339(a.record.refreshed_at),
                expires_at: rfc3339(a.record.expires_at),
                grant_ends_at: a.record.grant_ends_at().map(rfc3339),
            })
            .collect(),
    }
}

fn wants_json(req: &HttpRequest) -> bool {
    match query(req).get("format").map(String::as_str) {
        Some("json") => return true,
        Some(_) => return false,
        None => {}
    }
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',')
                .any(|m| m.trim().starts_with("application/json"))
        })
}

async fn overview(state: &AppState) -> Result<Overview, ApiError> {
    state.connections.overview().await.map_err(|e| {
        tracing::error!(error = %e, "store failure on the status route");
        ApiError::StoreUnavailable
    })
}

/// The outstanding consent links of every connection shown (a few store
/// queries at a time; a failure leaves that connection's list out).
async fn open_links(state: &AppState, o: &Overview) -> html::OpenLinks {
    use futures::StreamExt as _;
    futures::stream::iter(o.connections.iter().map(|a| {
        let (i, c) = (a.record.integration.clone(), a.record.connection.clone());
        async move {
            let links = state.links.list(&i, &c).await.ok()?;
            let open: Vec<html::OpenLink> = links
                .into_iter()
                .map(|(l, n)| html::OpenLink {
                    id: crate::consent::link_id(&l.link_hash),
                    expires_at: l.expires_at,
                    consents_in_progress: n,
                    allow_account_change: l.allow_account_change,
                })
                .collect();
            Some(((i.as_str().to_owned(), c.as_str().to_owned()), open))
        }
    }))
    .buffer_unordered(8)
    .filter_map(|x| async move { x })
    .collect()
    .await
}

/// What the page shows besides the overview: the integrations whose client is
/// rejected (once each, naming its settings) and every connection's pipeline
/// credentials (never a secret).
async fn extras(state: &AppState, o: &Overview) -> html::Extras {
    let mut rejected: BTreeMap<&IntegrationName, Vec<String>> = BTreeMap::new();
    for a in &o.connections {
        if a.condition == Condition::Misconfigured {
            rejected
                .entry(&a.record.integration)
                .or_default()
                .push(a.record.connection.as_str().to_owned());
        }
    }
    let rejected = rejected
        .into_iter()
        .map(|(name, affected)| {
            let (id, secret) = match state.engine.integration(name) {
                Lookup::Ready(i) => (i.client_id_setting.clone(), i.client_secret_setting.clone()),
                _ => (None, None),
            };
            html::RejectedClient {
                integration: name.as_str().to_owned(),
                client_id_setting: id,
                client_secret_setting: secret,
                affected,
            }
        })
        .collect();
    let lists = o.connections.iter().map(|a| async move {
        let r = &a.record;
        let listed = state
            .credentials
            .list(&r.integration, &r.connection)
            .await
            .unwrap_or_default();
        let rows: Vec<html::CredentialRow> = listed
            .into_iter()
            .map(|k| html::CredentialRow {
                client_id: k.client_id.as_str().to_owned(),
                description: k.description,
                created_at: k.created_at,
                last_used_at: k.last_used_at,
                expires_at: k.expires_at,
            })
            .collect();
        (
            (
                r.integration.as_str().to_owned(),
                r.connection.as_str().to_owned(),
            ),
            rows,
        )
    });
    let credentials = futures::future::join_all(lists)
        .await
        .into_iter()
        .filter(|(_, rows)| !rows.is_empty())
        .collect();
    html::Extras {
        rejected,
        credentials,
        links: html::OpenLinks::default(),
    }
}

async fn page(state: &AppState, o: &Overview, notice: Option<&Notice>) -> HttpResponse {
    let unavailable: Vec<(String, String)> = state
        .connections
        .unavailable_integrations()
        .into_iter()
        .map(|(n, r)| (n.as_str().to_owned(), r))
        .collect();
    let mut extras = extras(state, o).await;
    extras.links = open_links(state, o).await;
    html::status_page(o, &unavailable, now(), notice, &extras)
}

/// `GET /api/status[?format=json]`
pub async fn get(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let o = overview(&state).await?;
    if wants_json(&req) {
        return Ok(no_store(HttpResponse::Ok()).json(json(&o)));
    }
    Ok(page(&state, &o, None).await)
}

/// `POST /api/status` with the form of a button on the page.
pub async fn post(
    req: HttpRequest,
    Body(body): Body<JSON_BODY_LIMIT>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    refuse_other_sites(&req)?;
    let form: BTreeMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let bad = || {
        ApiError::InvalidRequest(
            "expected the form of a status page button: action (consent_link, refresh, delete, delete_credential or end_link), integration, connection (and client_id or link)"
                .into(),
        )
    };
    let i = IntegrationName::parse(field("integration")).map_err(|_| bad())?;
    let c = ConnectionId::parse(field("connection")).map_err(|_| bad())?;
    let notice = match field("action") {
        "consent_link" => create_link(&state, &i, &c).await,
        "end_link" => end_link(&state, &i, &c, field("link")).await,
        "delete" => delete(&state, &i, &c).await,
        "refresh" => refresh(&state, &i, &c).await,
        "delete_credential" => delete_credential(&state, &i, &c, field("client_id")).await,
        _ => return Err(bad()),
    };
    let o = overview(&state).await?;
    Ok(page(&state, &o, Some(&notice)).await)
}

/// A POST that the browser marks as coming from another site
/// (`Sec-Fetch-Site` other than `same-origin` or `none`) is refused.
fn refuse_other_sites(req: &HttpRequest) -> Result<(), ApiError> {
    let site = req
        .headers()
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok());
    if site.is_some_and(|s| s != "same-origin" && s != "none") {
        tracing::warn!(
            sec_fetch_site = site.unwrap_or_default(),
            "status page action from another site refused"
        );
        return Err(ApiError::InvalidRequest(
            "status page actions are only accepted from the status page itself".into(),
        ));
    }
    Ok(())
}

/// A consent link failure as the page says it (a store failure as the API does).
fn link_failure(e: ConsentError) -> String {
    match e {
        ConsentError::Store { .. } => ApiError::StoreUnavailable.to_string(),
        other => other.to_string(),
    }
}

/// `action=consent_link`: a new consent link for the connection.
async fn create_link(state: &AppState, i: &IntegrationName, c: &ConnectionId) -> Notice {
    match state.links.create(i, c, None, false).await {
        Ok(created) => Notice::LinkCreated {
            integration: i.as_str().to_owned(),
            connection: c.as_str().to_owned(),
            url: created.url,
            expires_at: created.link.expires_at,
        },
        Err(e) => Notice::Failed {
            what: "No consent link was created:",
            reason: link_failure(e),
        },
    }
}

/// `action=end_link`: ends the connection's consent link `link`.
async fn end_link(state: &AppState, i: &IntegrationName, c: &ConnectionId, link: &str) -> Notice {
    match state.links.end(i, c, link).await {
        Ok(true) => Notice::LinkEnded {
            integration: i.as_str().to_owned(),
            connection: c.as_str().to_owned(),
        },
        Ok(false) => Notice::Failed {
            what: "No consent link was ended:",
            reason: ApiError::ConsentLinkNotFound.to_string(),
        },
        Err(e) => Notice::Failed {
            what: "No consent link was ended:",
            reason: link_failure(e),
        },
    }
}

/// `action=delete`: revokes (where the integration can) and deletes the connection.
async fn delete(state: &AppState, i: &IntegrationName, c: &ConnectionId) -> Notice {
    let revocable = matches!(
        state.engine.integration(i),
        Lookup::Ready(ref integ) if integ.revocation_url.is_some()
    );
    match delete_connection(state, i, c, true).await {
        Ok(()) => Notice::Deleted {
            integration: i.as_str().to_owned(),
            connection: c.as_str().to_owned(),
            revoked: revocable,
        },
        Err(e) => Notice::Failed {
            what: "The connection was not deleted:",
            reason: e.to_string(),
        },
    }
}

/// `action=refresh`: refreshes the connection now.
async fn refresh(state: &AppState, i: &IntegrationName, c: &ConnectionId) -> Notice {
    let result = match state.integration(i) {
        Ok(integration) => state
            .connections
            .refresh_now(&integration, c)
            .await
            .map_err(|e| ApiError::from_refresh(e, state.consent.reauth_links(i, c))),
        Err(e) => Err(e),
    };
    match result {
        Ok(record) => Notice::Refreshed {
            integration: i.as_str().to_owned(),
            connection: c.as_str().to_owned(),
            expires_at: record.expires_at,
        },
        Err(e) => Notice::Failed {
            what: "The refresh failed:",
            reason: e.to_string(),
        },
    }
}

/// `action=delete_credential`: deletes the connection's pipeline credential `client_id`.
async fn delete_credential(
    state: &AppState,
    i: &IntegrationName,
    c: &ConnectionId,
    client_id: &str,
) -> Notice {
    match state.credentials.delete(i, c, client_id).await {
        Ok(()) => Notice::CredentialDeleted {
            integration: i.as_str().to_owned(),
            connection: c.as_str().to_owned(),
            client_id: client_id.to_owned(),
        },
        Err(e) => Notice::Failed {
            what: "The pipeline credential was not deleted:",
            reason: e.to_string(),
        },
    }
}
