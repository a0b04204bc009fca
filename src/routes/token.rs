//! The token route: `GET /api/token/{integration}/{connection}` and
//! `POST /api/token`. Always a JSON object (ADF's Azure Function activity
//! requires one), always `Cache-Control: no-store`.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::Duration;

use super::credentials::TokenCaller;
use super::error::ApiError;
use super::front_door::{Body, JSON_BODY_LIMIT};
use super::{names, query, AppState};
use crate::domain::clock::now;
use crate::domain::{ConnectionId, ConnectionRecord, IntegrationName};
use crate::refresh::Need;

/// The token route's answer (ADF reads `access_token` and `metadata` from it).
#[derive(Serialize)]
struct TokenBody<'a> {
    access_token: &'a str,
    token_type: &'a str,
    expires_at: String,
    expires_in: i64,
    integration: &'a str,
    connection: &'a str,
    scope: &'a str,
    metadata: &'a std::collections::BTreeMap<String, String>,
}

impl<'a> From<&'a ConnectionRecord> for TokenBody<'a> {
    fn from(r: &'a ConnectionRecord) -> Self {
        Self {
            access_token: r.tokens.access_token.expose(),
            token_type: &r.token_type,
            expires_at: r.expires_at.format(&Rfc3339).unwrap_or_default(),
            expires_in: r.expires_in(now()),
            integration: r.integration.as_str(),
            connection: r.connection.as_str(),
            scope: &r.scope,
            metadata: &r.metadata,
        }
    }
}

struct TokenRequest {
    integration: IntegrationName,
    connection: ConnectionId,
    min_validity: Option<Duration>,
    force: bool,
}

/// A pipeline credential may not force a refresh: `force_refresh` and
/// `min_validity_secs` are ignored for it, and its own `min_validity` applies
/// (capped by the token's lifetime, as on the token endpoint). One pipeline
/// must not be able to spend the vendor quota of every connection of the app.
fn need(caller: &TokenCaller, r: &TokenRequest) -> Need {
    match caller {
        TokenCaller::Pipeline(_) => Need {
            min_validity: caller.min_validity(),
            force: false,
            cap_by_lifetime: true,
            ..Need::default()
        },
        // An Entra ID identity is a pipeline too: it may not force; the validity it asks for is
        // capped by the token's lifetime, so asking cannot force a refresh either.
        TokenCaller::Entra(_) => Need {
            min_validity: r.min_validity,
            force: false,
            cap_by_lifetime: true,
            ..Need::default()
        },
        TokenCaller::Admin => Need {
            min_validity: r.min_validity,
            force: r.force,
            ..Need::default()
        },
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostBody {
    integration: String,
    #[serde(default)]
    connection: Option<String>,
    #[serde(default, deserialize_with = "super::whole_seconds")]
    min_validity_secs: Option<u32>,
    #[serde(default)]
    force_refresh: Option<bool>,
}

fn flag(v: Option<&String>, name: &str) -> Result<bool, ApiError> {
    match v.map(|s| s.to_ascii_lowercase()).as_deref() {
        None | Some("false") | Some("0") | Some("") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(_) => Err(ApiError::InvalidRequest(format!(
            "{name} must be true or false"
        ))),
    }
}

pub async fn get(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let caller = TokenCaller::of(&req);
    let (integration, connection) = names(
        req.match_info().get("integration").unwrap_or_default(),
        req.match_info().get("connection").unwrap_or_default(),
    )?;
    caller.allow(&state, &integration, &connection)?;
    let prefetched = super::credentials::take_prefetched(&req);
    let q = query(&req);
    let min_validity = q
        .get("min_validity_secs")
        .map(|v| {
            v.parse::<u32>()
                .map(|s| Duration::seconds(i64::from(s)))
                .map_err(|_| {
                    ApiError::InvalidRequest(
                        "min_validity_secs must be a whole number of seconds".into(),
                    )
                })
        })
        .transpose()?;
    let force = flag(q.get("force_refresh"), "force_refresh")?;
    serve(
        &state,
        &caller,
        TokenRequest {
            integration,
            connection,
            min_validity,
            force,
        },
        prefetched,
    )
    .await
}

pub async fn post(
    req: HttpRequest,
    Body(body): Body<JSON_BODY_LIMIT>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = TokenCaller::of(&req);
    // serde would also read a struct from a JSON array; the contract is an object.
    if !body.trim_ascii_start().starts_with(b"{") {
        return Err(ApiError::InvalidRequest(
            "the body must be a JSON object {\"integration\": \"...\", \"connection\": \"...\"}"
                .into(),
        ));
    }
    let b: PostBody = serde_json::from_slice(&body).map_err(|e| {
        let why = if e.is_syntax() || e.is_eof() {
            "the body is not valid JSON".to_owned()
        } else {
            // serde's data errors name the field and expected type, never echo input values.
            format!("the body must be a JSON object {{\"integration\": \"...\", \"connection\": \"...\"}}: {}", e.to_string().split(" at line ").next().unwrap_or_default())
        };
        ApiError::InvalidRequest(why)
    })?;
    let (integration, connection) = names(
        &b.integration,
        b.connection.as_deref().unwrap_or(ConnectionId::DEFAULT),
    )?;
    caller.allow(&state, &integration, &connection)?;
    serve(
        &state,
        &caller,
        TokenRequest {
            integration,
            connection,
            min_validity: b.min_validity_secs.map(|s| Duration::seconds(i64::from(s))),
            force: b.force_refresh.unwrap_or(false)
                || flag(query(&req).get("force_refresh"), "force_refresh")?,
        },
        None,
    )
    .await
}

async fn serve(
    state: &AppState,
    caller: &TokenCaller,
    r: TokenRequest,
    prefetched: Option<crate::refresh::Prefetched>,
) -> Result<HttpResponse, ApiError> {
    let integration = state.integration(&r.integration)?;
    let fresh = match prefetched {
        Some(p) => {
            state
                .engine
                .ensure_fresh_prefetched(&integration, &r.connection, p, need(caller, &r))
                .await
        }
        None => {
            state
                .engine
                .ensure_fresh(&integration, &r.connection, need(caller, &r))
                .await
        }
    };
    let record = fresh.map_err(|e| {
        ApiError::from_refresh(e, state.consent.reauth_links(&r.integration, &r.connection))
    })?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(TokenBody::from(&record)))
}
