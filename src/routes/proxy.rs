//! `/api/proxy/{integration}/{connection}/{*path}` (GET, HEAD, POST, PUT,
//! PATCH, DELETE): the request goes on to `<api_base_url><path>?<query>` with
//! the connection's current access token, and the vendor's answer comes back,
//! both bodies streamed. See `crate::proxy` for the rules (paths, headers,
//! link rewriting) and docs/data-factory.md for what a pipeline sees.
//!
//! Who may call: a pipeline credential of this connection as HTTP Basic
//! ([`require_credential`]), or, standalone only, the API key. The function is
//! `anonymous` at the Functions host, which cannot tell the handler which key
//! matched, so under the host only a pipeline credential opens it.

use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody, SizedStream};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use futures::{Stream, StreamExt};
use reqwest::header::{HeaderName as RqName, HeaderValue as RqValue};
use url::Url;

use super::credentials::{self, TokenCaller};
use super::error::ApiError;

use super::{names, AppState};
use crate::config::proxy::{check_base, fill_metadata};
use crate::config::{Integration, ProxySettings};
use crate::domain::ConnectionRecord;
use crate::proxy::{
    check_path, connection_options, filter_query, forward_request_header, forward_response_header,
    is_json, retry_after_secs, Rewriter,
};
use crate::refresh::Need;

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

/// The request body as the broker will send it.
enum Upload {
    None,
    /// Read whole (≤ [`REPLAY_LIMIT`]): can be sent again.
    Kept(Bytes),
    /// Longer or of unknown length: sent once, streamed.
    Stream {
        body: Option<reqwest::Body>,
        length: Option<u64>,
    },
}

impl Upload {
    fn replayable(&self) -> bool {
        !matches!(self, Upload::Stream { .. })
    }
}

/// Reads up to [`REPLAY_LIMIT`] bytes; a longer body continues as a stream fed
/// by a local task (the request payload cannot leave its worker thread).
async fn upload(
    req: &HttpRequest,
    mut payload: web::Payload,
    deadline: tokio::time::Instant,
    counted: Rc<std::cell::Cell<u64>>,
) -> Result<Upload, ApiError> {
    let h = req.headers();
    let length = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = h.contains_key(header::TRANSFER_ENCODING);
    if !chunked && length.unwrap_or(0) == 0 {
        return Ok(Upload::None);
    }
    let unreadable = || ApiError::InvalidRequest("the request body could not be read".into());
    let mut kept = BytesMut::new();
    if length.is_none_or(|n| n <= REPLAY_LIMIT as u64) {
        loop {
            let next = tokio::time::timeout_at(deadline, payload.next())
                .await
                .map_err(|_| {
                    ApiError::RequestTimeout("the request body did not arrive in time".into())
                })?;
            match next {
                None => {
                    counted.set(kept.len() as u64);
                    return Ok(Upload::Kept(kept.freeze()));
                }
                Some(Err(_)) => return Err(unreadable()),
                Some(Ok(chunk)) => {
                    kept.extend_from_slice(&chunk);
                    if kept.len() > REPLAY_LIMIT {
                        break;
                    }
                }
            }
        }
    }
    // Streamed: what was read first, then the rest as it arrives.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let first = kept.freeze();
    counted.set(first.len() as u64);
    actix_web::rt::spawn(async move {
        if !first.is_empty() && tx.send(Ok(first)).await.is_err() {
            return;
        }
        loop {
            let next = tokio::time::timeout_at(deadline, payload.next()).await;
            let item = match next {
                Err(_) => Err(std::io::Error::other(
                    "the request body did not arrive in time",
                )),
                Ok(None) => return,
                Ok(Some(Err(_))) => {
                    Err(std::io::Error::other("the request body could not be read"))
                }
                Ok(Some(Ok(chunk))) => {
                    counted.set(counted.get() + chunk.len() as u64);
                    Ok(chunk)
                }
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(Upload::Stream {
        body: Some(reqwest::Body::wrap_stream(stream)),
        length,
    })
}

/// The token as the vendor wants it: (header, value).
fn token_header(i: &Integration, record: &ConnectionRecord) -> Result<(RqName, RqValue), ApiError> {
    let auth = &i.proxy.auth;
    let token = record.tokens.access_token.expose();
    let value = match auth.scheme.as_deref() {
        Some("") => token.to_owned(),
        Some(s) => format!("{s} {token}"),
        None => {
            let t = record.token_type.trim();
            let scheme = if t.is_empty() || t.eq_ignore_ascii_case("bearer") {
                "Bearer"
            } else {
                t
            };
            format!("{scheme} {token}")
        }
    };
    let name = RqName::from_bytes(auth.header.as_bytes()).map_err(|_| {
        ApiError::IntegrationMisconfigured("proxy_auth.header is not a header name".into())
    })?;
    let mut value = RqValue::from_str(&value).map_err(|_| {
        ApiError::Upstream("the stored access token cannot be sent in a header".into())
    })?;
    value.set_sensitive(true);
    Ok((name, value))
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
    };
    match serve(&req, payload, &state, &mut outcome, started).await {
        Ok(resp) => resp,
        Err(e) => {
            outcome.status = e.status_code().as_u16();
            outcome.error = Some(e.code());
            outcome.log();
            e.error_response()
        }
    }
}

async fn serve(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    outcome: &mut Outcome,
    started: Instant,
) -> Result<HttpResponse, ApiError> {
    let proxy = &state.proxy;
    let deadline = tokio::time::Instant::from_std(started) + proxy.settings.timeout;
    let (raw_i, raw_c, tail) = split_path(req.uri().path()).ok_or_else(|| {
        ApiError::InvalidPath("the path is /api/proxy/{integration}/{connection}/…".into())
    })?;
    let (i, c) = names(raw_i, raw_c)?;
    if i.as_str() != raw_i || c.as_str() != raw_c {
        return Err(ApiError::InvalidRequest(
            "integration and connection must be written plainly (no percent-encoding)".into(),
        ));
    }
    outcome.integration = i.as_str().to_owned();
    outcome.connection = c.as_str().to_owned();
    TokenCaller::of(req).allow(state, &i, &c)?;
    let integration = state.integration(&i)?;
    if integration.proxy.api_base_url.is_empty() {
        return Err(ApiError::ProxyNotConfigured(format!(
            "integration {:?} has no api_base_url: the proxy does not know where its API is",
            i.as_str()
        )));
    }
    let checked = check_path(tail, integration.proxy.api_base_url.len())
        .map_err(|why| ApiError::InvalidPath(format!("the path is refused: {why}")))?;
    let authorize = || state.consent.reauth_links(&i, &c);
    let fresh = match credentials::take_prefetched(req) {
        Some(p) => {
            state
                .engine
                .ensure_fresh_prefetched(&integration, &c, p, Need::default())
                .await
        }
        None => {
            state
                .engine
                .ensure_fresh(&integration, &c, Need::default())
                .await
        }
    };
    let mut record = fresh.map_err(|e| ApiError::from_refresh(e, authorize()))?;
    let bases = bases(&integration, &record)?;
    let url = upstream_url(&bases[checked.base], &checked.path, req.query_string())?;
    let rewrite = integration.proxy.rewrite_links;

    // The headers that go on: the caller's minus the filtered ones, then the template's.
    let conn_opts = connection_options(
        req.headers()
            .get_all(header::CONNECTION)
            .filter_map(|v| v.to_str().ok()),
    );
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in req.headers() {
        let n = name.as_str();
        if forward_request_header(n, &conn_opts) && !(rewrite && n == "accept-encoding") {
            if let (Ok(n), Ok(v)) = (
                RqName::from_bytes(name.as_str().as_bytes()),
                RqValue::from_bytes(value.as_bytes()),
            ) {
                headers.append(n, v);
            }
        }
    }
    for (name, template) in &integration.proxy.headers {
        let Ok(name) = RqName::from_bytes(name.as_bytes()) else {
            continue;
        };
        if headers.contains_key(&name) {
            continue;
        }
        if let Some(v) =
            fill_metadata(template, &record.metadata).and_then(|v| RqValue::from_str(&v).ok())
        {
            headers.insert(name, v);
        }
    }
    let bytes_in = Rc::new(std::cell::Cell::new(0u64));
    let mut body = upload(req, payload, deadline, Rc::clone(&bytes_in)).await?;
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
        .map_err(|_| ApiError::InvalidRequest("unsupported method".into()))?;

    let mut refreshed = false;
    let mut rate_retries = 0;
    let upstream_started = Instant::now();
    let resp = loop {
        let (auth_name, auth_value) = token_header(&integration, &record)?;
        let mut h = headers.clone();
        h.insert(auth_name, auth_value);
        let mut rb = proxy.client.request(method.clone(), url.clone()).headers(h);
        rb = match &mut body {
            Upload::None => rb,
            Upload::Kept(b) => rb.body(b.clone()),
            Upload::Stream { body, length } => {
                if let Some(n) = length {
                    rb = rb.header(reqwest::header::CONTENT_LENGTH, *n);
                }
                rb.body(
                    body.take()
                        .unwrap_or_else(|| reqwest::Body::from(Bytes::new())),
                )
            }
        };
        let sent = tokio::time::timeout_at(deadline, rb.send()).await;
        let resp = match sent {
            Err(_) => {
                return Err(ApiError::UpstreamTimeout(format!(
                    "the vendor did not answer within {} s",
                    proxy.settings.timeout.as_secs()
                )))
            }
            Ok(Err(e)) if e.is_timeout() => {
                return Err(ApiError::UpstreamTimeout(
                    "the vendor did not answer in time".into(),
                ))
            }
            Ok(Err(e)) if e.is_connect() => {
                return Err(ApiError::UpstreamUnreachable(
                    "the vendor's API could not be reached".into(),
                ))
            }
            Ok(Err(_)) => {
                return Err(ApiError::UpstreamUnreachable(
                    "the exchange with the vendor's API failed".into(),
                ))
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        if status == 401 && !refreshed && body.replayable() {
            refreshed = true;
            let renewed = state
                .engine
                .refresh_rejected(&integration, &record)
                .await
                .map_err(|e| ApiError::from_refresh(e, authorize()))?;
            // The engine may hand back the very token the vendor refused (the refresh budget
            // was spent, or the vendor renewed it unchanged): sending it again cannot help, so
            // the vendor's 401 goes back to the caller as it is.
            if renewed.tokens.access_token.expose() == record.tokens.access_token.expose() {
                break resp;
            }
            drop(resp);
            record = renewed;
            outcome.retries += 1;
            continue;
        }
        if matches!(status, 429 | 503)
            && rate_retries < RATE_RETRIES
            && (matches!(method, reqwest::Method::GET | reqwest::Method::HEAD) || body.replayable())
        {
            let wait = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(retry_after_secs)
                .map(Duration::from_secs);
            if let Some(wait) = wait.filter(|w| *w <= proxy.settings.retry_max) {
                if tokio::time::Instant::now() + wait < deadline {
                    drop(resp);
                    tokio::time::sleep(wait).await;
                    rate_retries += 1;
                    outcome.retries += 1;
                    continue;
                }
            }
        }
        break resp;
    };
    outcome.upstream_ms = upstream_started.elapsed().as_millis();
    outcome.status = resp.status().as_u16();
    outcome.bytes_in = bytes_in.get();

    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut reply = HttpResponse::build(status);
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
    let resp_opts = connection_options(
        resp.headers()
            .get_all(reqwest::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    for (name, value) in resp.headers() {
        let n = name.as_str();
        if !forward_response_header(n, &resp_opts) {
            continue;
        }
        let rewritten = match (&rewriter, n) {
            (Some(r), "link") => value.to_str().ok().and_then(|v| r.link_header(v)),
            (Some(r), "location" | "content-location") => {
                value.to_str().ok().and_then(|v| r.url(v))
            }
            _ => None,
        };
        let Ok(name) = HeaderName::from_bytes(n.as_bytes()) else {
            continue;
        };
        let value = match rewritten {
            Some(v) => HeaderValue::from_str(&v).ok(),
            None => HeaderValue::from_bytes(value.as_bytes()).ok(),
        };
        if let Some(v) = value {
            reply.append_header((name, v));
        }
    }
    let length = resp.content_length();
    if req.method() == Method::HEAD
        || matches!(status.as_u16(), 204 | 304)
        || status.is_informational()
    {
        // No body; a HEAD answer keeps the length the vendor announced.
        let log = LogOnDrop(Some(std::mem::replace(outcome, blank())));
        let body = Counted::new(futures::stream::empty(), log);
        return Ok(match (req.method() == Method::HEAD, length) {
            (true, Some(n)) => reply.body(SizedStream::new(n, body)),
            _ => reply.body(()),
        });
    }
    let encoded = resp
        .headers()
        .get(reqwest::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.trim().eq_ignore_ascii_case("identity"));
    let json = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json);
    let max = proxy.settings.rewrite_max_bytes;
    let idle = proxy.settings.timeout;
    let mut upstream = resp.bytes_stream().boxed();
    let log = LogOnDrop(Some(std::mem::replace(outcome, blank())));
    if let Some(r) = rewriter.filter(|_| json && !encoded && length.is_none_or(|n| n <= max as u64))
    {
        // Read up to the limit; a longer body passes unmodified.
        let mut buf = BytesMut::new();
        let mut over = false;
        while let Some(chunk) = tokio::time::timeout_at(deadline, upstream.next())
            .await
            .map_err(|_| {
                ApiError::UpstreamTimeout("the vendor's answer did not arrive in time".into())
            })?
        {
            let chunk = chunk.map_err(|_| {
                ApiError::UpstreamUnreachable("the vendor's answer broke off".into())
            })?;
            buf.extend_from_slice(&chunk);
            if buf.len() > max {
                over = true;
                break;
            }
        }
        if !over {
            let out = r
                .json(&buf)
                .map(Bytes::from)
                .unwrap_or_else(|| buf.freeze());
            let n = out.len() as u64;
            let body = Counted::new(futures::stream::iter([Ok::<_, std::io::Error>(out)]), log);
            return Ok(reply.body(SizedStream::new(n, body)));
        }
        let head = futures::stream::iter([Ok::<_, std::io::Error>(buf.freeze())]);
        let body = Counted::new(head.chain(idle_bounded(upstream, idle)), log);
        return Ok(match length {
            Some(n) => reply.body(SizedStream::new(n, body)),
            None => reply.streaming(body),
        });
    }
    let body = Counted::new(idle_bounded(upstream, idle), log);
    Ok(match length {
        Some(n) => reply.body(SizedStream::new(n, body)),
        None => reply.streaming(body),
    })
}

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
    }
}

type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>>>>;

/// The vendor's body, each pause bounded by `idle`.
fn idle_bounded(
    upstream: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    idle: Duration,
) -> Chunks {
    Box::pin(futures::stream::unfold(
        Some(upstream),
        move |s| async move {
            let mut s = s?;
            match tokio::time::timeout(idle, s.next()).await {
                Err(_) => Some((
                    Err(std::io::Error::other("the vendor's answer stalled")),
                    None,
                )),
                Ok(None) => None,
                Ok(Some(Err(_))) => Some((
                    Err(std::io::Error::other("the vendor's answer broke off")),
                    None,
                )),
                Ok(Some(Ok(b))) => Some((Ok(b), Some(s))),
            }
        },
    ))
}

/// Writes the request's log line once its answer is done (or abandoned).
struct LogOnDrop(Option<Outcome>);

impl Drop for LogOnDrop {
    fn drop(&mut self) {
        if let Some(o) = self.0.take() {
            o.log();
        }
    }
}

/// A body that counts the bytes it hands out, for the log line.
struct Counted<S> {
    inner: Pin<Box<S>>,
    log: LogOnDrop,
}

impl<S> Counted<S> {
    fn new(inner: S, log: LogOnDrop) -> Self {
        Self {
            inner: Box::pin(inner),
            log,
        }
    }
}

impl<S: Stream<Item = Result<Bytes, std::io::Error>>> Stream for Counted<S> {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let next = this.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(b))) = &next {
            if let Some(o) = this.log.0.as_mut() {
                o.bytes_out += b.len() as u64;
            }
        }
        next
    }
}

impl<S> Unpin for Counted<S> {}
