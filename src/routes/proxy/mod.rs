//! `/api/proxy/{integration}/{connection}/{*path}` (GET, HEAD, POST, PUT,
//! PATCH, DELETE): the request goes on to `<api_base_url><path>?<query>` with
//! the connection's current access token, and the vendor's answer comes back,
//! both bodies streamed. See `crate::proxy` for the rules (paths, headers,
//! link rewriting) and docs/data-factory.md for what a pipeline sees.
//!
//! Who may call ([`require_credential`]): a pipeline credential of this
//! connection as HTTP Basic, an Entra ID identity the integration's `callers`
//! list for it, or a key the broker verifies itself (`BROKER_API_KEY`, a token
//! key of `BROKER_TOKEN_KEYS`). The function is `anonymous` at the Functions
//! host, which cannot tell the handler which function key matched, so a
//! function key alone never opens it.
//!
//! Here: the names and path checked, the caller let in, the connection made
//! fresh and the upstream URL built ([`upstream_url`]); then `upload` reads the
//! request body, `exchange` sends it (again after a 401 or a 429/503) and
//! `relay` hands the vendor's answer back and writes the log line.

mod exchange;
mod relay;
mod upload;

use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use url::Url;

use super::credentials::{self, TokenCaller};
use super::error::ApiError;

use super::{names, AppState};
use crate::config::proxy::{check_base, fill_metadata};
use crate::config::{Integration, ProxySettings};
use crate::domain::{ConnectionId, ConnectionRecord, IntegrationName};
use crate::proxy::{check_path, filter_query, CheckedPath, Rewriter};
use crate::refresh::Need;
use exchange::{request_headers, Exchange};
use relay::relay;
use upload::upload;

/// A body up to this size is kept, so the request can be sent again (after a
/// 401 and a refresh, or a 429/503).
pub const REPLAY_LIMIT: usize = 1024 * 1024;
/// Attempts after a 429/503 with `Retry-After`, at most.
const RATE_RETRIES: u32 = 3;

/// The proxy's HTTP client and limits (built once at start).
pub struct Proxy {
    client: reqwest::Client,
    settings: ProxySettings,
}

impl Proxy {
    /// No overall time-out on the client (bodies stream for as long as they
    /// take; [`ProxySettings::timeout`] bounds each wait), redirects never followed.
    pub fn new(settings: ProxySettings) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .expect("the HTTP client configuration is static");
        Self { client, settings }
    }
}

/// Around the proxy route (anonymous at the Functions host): the broker checks
/// the caller itself, as on the token routes: a pipeline credential of the
/// connection as `Authorization: Basic`, an Entra ID identity listed in the
/// integration's `callers`, or a key the broker verifies (`BROKER_API_KEY`,
/// or a token key of `BROKER_TOKEN_KEYS`, which may fetch every token anyway).
pub async fn require_credential(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    credentials::require_key_or_credential(req, next).await
}

/// The request's parts after `/api/proxy/`: raw integration, connection, and the rest.
fn split_path(path: &str) -> Option<(&str, &str, &str)> {
    let rest = path.strip_prefix("/api/proxy/")?;
    let (i, rest) = rest.split_once('/')?;
    match rest.find('/') {
        Some(at) => Some((i, &rest[..at], &rest[at..])),
        None => Some((i, rest, "")),
    }
}

/// What one proxied request did (the log line).
struct Outcome {
    method: Method,
    integration: String,
    connection: String,
    status: u16,
    upstream_ms: u128,
    bytes_in: u64,
    bytes_out: u64,
    retries: u32,
    error: Option<&'static str>,
    /// This request's line is written by the answer's body, which holds the
    /// real outcome (see `relay`): this one is a placeholder, never logged.
    handed_over: bool,
}

impl Outcome {
    fn log(&self) {
        tracing::info!(
            method = %self.method,
            integration = %self.integration,
            connection = %self.connection,
            status = self.status,
            upstream_ms = self.upstream_ms as u64,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            retries = self.retries,
            error = self.error.unwrap_or(""),
            "proxied request"
        );
    }
}

/// The connection's API bases with `{metadata.…}` filled and checked.
fn bases(i: &Integration, record: &ConnectionRecord) -> Result<Vec<String>, ApiError> {
    i.proxy
        .api_base_url
        .iter()
        .map(|b| {
            let filled = fill_metadata(b, &record.metadata).ok_or_else(|| {
                ApiError::ProxyNotConfigured(
                    "this connection lacks the metadata its integration's api_base_url needs (consent again)".into(),
                )
            })?;
            check_base("api_base_url", &filled).map_err(|_| {
                ApiError::ProxyNotConfigured(
                    "this connection's API base from its metadata is not an https URL".into(),
                )
            })
        })
        .collect()
}

/// The upstream URL: `base` + checked path + the query without `code`; it
/// must still name the base's origin and lie under its path.
pub(crate) fn upstream_url(base: &str, path: &str, query: &str) -> Result<Url, ApiError> {
    if query.contains('#') {
        return Err(ApiError::InvalidPath(
            "a # in the query (a fragment is never sent)".into(),
        ));
    }
    let q = filter_query(query);
    let text = if q.is_empty() {
        format!("{base}{path}")
    } else {
        format!("{base}{path}?{q}")
    };
    let invalid =
        || ApiError::InvalidPath("the path does not stay under the vendor's API base".into());
    let url = Url::parse(&text).map_err(|_| invalid())?;
    let b = Url::parse(base).map_err(|_| invalid())?;
    let under = url.origin() == b.origin()
        && url.username().is_empty()
        && url.password().is_none()
        && url.fragment().is_none()
        && url.path().starts_with(b.path().trim_end_matches('/'));
    if !under {
        return Err(invalid());
    }
    Ok(url)
}

/// Every method the route accepts.
pub async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let started = Instant::now();
    let mut outcome = Outcome {
        method: req.method().clone(),
        integration: String::new(),
        connection: String::new(),
        status: 0,
        upstream_ms: 0,
        bytes_in: 0,
        bytes_out: 0,
        retries: 0,
        error: None,
        handed_over: false,
    };
    match serve(&req, payload, &state, &mut outcome, started).await {
        Ok(resp) => resp,
        Err(e) => {
            outcome.status = e.status_code().as_u16();
            outcome.error = Some(e.code());
            if !outcome.handed_over {
                outcome.log();
            }
            e.error_response()
        }
    }
}

/// The request from its path to the vendor's answer: the caller let in
/// first, then the connection made fresh, the request sent, the answer relayed.
async fn serve(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    outcome: &mut Outcome,
    started: Instant,
) -> Result<HttpResponse, ApiError> {
    let proxy = &state.proxy;
    let deadline = tokio::time::Instant::from_std(started) + proxy.settings.timeout;
    let (i, c, tail) = plain_names(req.uri().path())?;
    outcome.integration = i.as_str().to_owned();
    outcome.connection = c.as_str().to_owned();
    TokenCaller::of(req).allow(state, &i, &c)?;
    let integration = state.integration(&i)?;
    let checked = proxied_path(&integration, &i, tail)?;
    let record = fresh(req, state, &integration, &i, &c).await?;
    let bases = bases(&integration, &record)?;
    let url = upstream_url(&bases[checked.base], &checked.path, req.query_string())?;
    let rewrite = integration.proxy.rewrite_links;
    let headers = request_headers(req, &integration, &record, rewrite);
    let bytes_in = Rc::new(std::cell::Cell::new(0u64));
    let body = upload(req, payload, deadline, Rc::clone(&bytes_in)).await?;
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
        .map_err(|_| ApiError::InvalidRequest("unsupported method".into()))?;
    let mut exchange = Exchange {
        state,
        integration: &integration,
        i: &i,
        c: &c,
        method,
        url,
        headers,
        body,
        deadline,
    };
    let upstream_started = Instant::now();
    let resp = exchange.run(record, outcome).await?;
    outcome.upstream_ms = upstream_started.elapsed().as_millis();
    outcome.status = resp.status().as_u16();
    outcome.bytes_in = bytes_in.get();
    let rewriter = rewrite.then(|| {
        Rewriter::new(
            &bases,
            &format!(
                "{}/api/proxy/{}/{}",
                state.consent.public_base(),
                i.as_str(),
                c.as_str()
            ),
        )
    });
    relay(req, resp, rewriter, &proxy.settings, deadline, outcome).await
}

/// The integration, connection and rest of the request's path, the names
/// written plainly (no percent-encoding).
fn plain_names(path: &str) -> Result<(IntegrationName, ConnectionId, &str), ApiError> {
    let (raw_i, raw_c, tail) = split_path(path).ok_or_else(|| {
        ApiError::InvalidPath("the path is /api/proxy/{integration}/{connection}/…".into())
    })?;
    let (i, c) = names(raw_i, raw_c)?;
    if i.as_str() != raw_i || c.as_str() != raw_c {
        return Err(ApiError::InvalidRequest(
            "integration and connection must be written plainly (no percent-encoding)".into(),
        ));
    }
    Ok((i, c, tail))
}

/// The path after the connection, checked against the integration's API bases
/// (which it must have).
fn proxied_path(
    integration: &Integration,
    i: &IntegrationName,
    tail: &str,
) -> Result<CheckedPath, ApiError> {
    if integration.proxy.api_base_url.is_empty() {
        return Err(ApiError::ProxyNotConfigured(format!(
            "integration {:?} has no api_base_url: the proxy does not know where its API is",
            i.as_str()
        )));
    }
    check_path(tail, integration.proxy.api_base_url.len())
        .map_err(|why| ApiError::InvalidPath(format!("the path is refused: {why}")))
}

/// The connection with a fresh access token (from the row the credential
/// check already read, when it did).
async fn fresh(
    req: &HttpRequest,
    state: &AppState,
    integration: &Integration,
    i: &IntegrationName,
    c: &ConnectionId,
) -> Result<ConnectionRecord, ApiError> {
    let fresh = match credentials::take_prefetched(req) {
        Some(p) => {
            state
                .engine
                .ensure_fresh_prefetched(integration, c, p, Need::default())
                .await
        }
        None => {
            state
                .engine
                .ensure_fresh(integration, c, Need::default())
                .await
        }
    };
    fresh.map_err(|e| ApiError::from_refresh(e, state.consent.reauth_links(i, c)))
}

/// What stays in the handler once the real outcome went to the answer's body.
fn blank() -> Outcome {
    Outcome {
        method: Method::GET,
        integration: String::new(),
        connection: String::new(),
        status: 0,
        upstream_ms: 0,
        bytes_in: 0,
        bytes_out: 0,
        retries: 0,
        error: None,
        handed_over: true,
    }
}
