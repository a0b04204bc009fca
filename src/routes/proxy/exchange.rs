//! The exchange with the vendor: the headers that go on ([`request_headers`]),
//! each attempt sent with the connection's current token, and the attempts
//! after the first: once after a 401 with a renewed token, and after a 429/503
//! whose `Retry-After` fits the limits ([`Exchange::run`]).

use std::time::Duration;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::HttpRequest;
use reqwest::header::{HeaderMap, HeaderName as RqName, HeaderValue as RqValue};
use url::Url;

use super::upload::Upload;
use super::{Outcome, RATE_RETRIES};
use crate::config::proxy::fill_metadata;
use crate::config::Integration;
use crate::domain::{ConnectionId, ConnectionRecord, IntegrationName};
use crate::proxy::{connection_options, forward_request_header, retry_after_secs};
use crate::routes::error::ApiError;
use crate::routes::AppState;

/// The headers that go on: the caller's minus the filtered ones (and minus
/// `Accept-Encoding` when links are rewritten), then the integration's
/// templates for those the caller did not send.
pub(super) fn request_headers(
    req: &HttpRequest,
    integration: &Integration,
    record: &ConnectionRecord,
    rewrite: bool,
) -> HeaderMap {
    let conn_opts = connection_options(
        req.headers()
            .get_all(header::CONNECTION)
            .filter_map(|v| v.to_str().ok()),
    );
    let mut headers = HeaderMap::new();
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
    headers
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

/// One proxied request on its way to the vendor: what every attempt sends,
/// and for which connection.
pub(super) struct Exchange<'a> {
    pub(super) state: &'a AppState,
    pub(super) integration: &'a Integration,
    pub(super) i: &'a IntegrationName,
    pub(super) c: &'a ConnectionId,
    pub(super) method: reqwest::Method,
    pub(super) url: Url,
    pub(super) headers: HeaderMap,
    pub(super) body: Upload,
    pub(super) deadline: tokio::time::Instant,
}

impl Exchange<'_> {
    /// Sends the request until the vendor's answer is the one the caller gets:
    /// after a 401, once more with a renewed token (if the body can be sent
    /// again); after a 429/503, again once the wait it asks for is over
    /// ([`RATE_RETRIES`] times at most). Each attempt after the first counts
    /// in `outcome.retries`.
    pub(super) async fn run(
        &mut self,
        mut record: ConnectionRecord,
        outcome: &mut Outcome,
    ) -> Result<reqwest::Response, ApiError> {
        let mut refreshed = false;
        let mut rate_retries = 0;
        loop {
            let resp = self.send(&record).await?;
            let status = resp.status().as_u16();
            if status == 401 && !refreshed && self.body.replayable() {
                refreshed = true;
                let Some(renewed) = self.renewed(&record).await? else {
                    return Ok(resp);
                };
                drop(resp);
                record = renewed;
                outcome.retries += 1;
                continue;
            }
            if let Some(wait) = self.rate_wait(&resp, status, rate_retries) {
                drop(resp);
                tokio::time::sleep(wait).await;
                rate_retries += 1;
                outcome.retries += 1;
                continue;
            }
            return Ok(resp);
        }
    }

    /// One attempt with `record`'s token, within the deadline.
    async fn send(&mut self, record: &ConnectionRecord) -> Result<reqwest::Response, ApiError> {
        let proxy = &self.state.proxy;
        let (auth_name, auth_value) = token_header(self.integration, record)?;
        let mut h = self.headers.clone();
        h.insert(auth_name, auth_value);
        let mut rb = proxy
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(h);
        rb = match &mut self.body {
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
        let sent = tokio::time::timeout_at(self.deadline, rb.send()).await;
        match sent {
            Err(_) => Err(ApiError::UpstreamTimeout(format!(
                "the vendor did not answer within {} s",
                proxy.settings.timeout.as_secs()
            ))),
            Ok(Err(e)) if e.is_timeout() => Err(ApiError::UpstreamTimeout(
                "the vendor did not answer in time".into(),
            )),
            Ok(Err(e)) if e.is_connect() => Err(ApiError::UpstreamUnreachable(
                "the vendor's API could not be reached".into(),
            )),
            Ok(Err(_)) => Err(ApiError::UpstreamUnreachable(
                "the exchange with the vendor's API failed".into(),
            )),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// After a 401: the connection refreshed, or `None` when sending again
    /// cannot help.
    async fn renewed(
        &self,
        record: &ConnectionRecord,
    ) -> Result<Option<ConnectionRecord>, ApiError> {
        let renewed = self
            .state
            .engine
            .refresh_rejected(self.integration, record)
            .await
            .map_err(|e| {
                ApiError::from_refresh(e, self.state.consent.reauth_links(self.i, self.c))
            })?;
        // The engine may hand back the very token the vendor refused (the refresh budget
        // was spent, or the vendor renewed it unchanged): sending it again cannot help, so
        // the vendor's 401 goes back to the caller as it is.
        if renewed.tokens.access_token.expose() == record.tokens.access_token.expose() {
            return Ok(None);
        }
        Ok(Some(renewed))
    }

    /// After a 429/503: how long to wait before the next attempt, when the
    /// answer's `Retry-After` says so, the wait is within `retry_max` and ends
    /// before the deadline, retries are left, and the request can be sent
    /// again: it has no body, or its body was kept. A streamed body is gone
    /// once sent, whatever the method (a GET may carry one too), so that 429
    /// is the caller's to retry.
    fn rate_wait(
        &self,
        resp: &reqwest::Response,
        status: u16,
        rate_retries: u32,
    ) -> Option<Duration> {
        if !(matches!(status, 429 | 503) && rate_retries < RATE_RETRIES && self.body.replayable()) {
            return None;
        }
        let wait = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(retry_after_secs)
            .map(Duration::from_secs);
        let wait = wait.filter(|w| *w <= self.state.proxy.settings.retry_max)?;
        (tokio::time::Instant::now() + wait < self.deadline).then_some(wait)
    }
}
