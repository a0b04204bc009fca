//! The vendor's answer on its way back: its status, the headers that cross
//! (links under the API base rewritten to the proxy when the integration
//! asks), and its body, streamed with each pause bounded, or read whole and
//! rewritten when it is JSON and small enough. The request's log line is
//! written once the body is done ([`LogOnDrop`]).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::SizedStream;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::web::{Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use futures::{Stream, StreamExt};

use super::{blank, Outcome};
use crate::config::ProxySettings;
use crate::proxy::{connection_options, forward_response_header, is_json, Rewriter};
use crate::routes::error::ApiError;

/// The vendor's body as reqwest hands it out.
type Upstream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The vendor's answer as the caller gets it. `rewriter`: links to rewrite,
/// if the integration asks.
pub(super) async fn relay(
    req: &HttpRequest,
    resp: reqwest::Response,
    rewriter: Option<Rewriter>,
    settings: &ProxySettings,
    deadline: tokio::time::Instant,
    outcome: &mut Outcome,
) -> Result<HttpResponse, ApiError> {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut reply = HttpResponse::build(status);
    copy_headers(&mut reply, &resp, rewriter.as_ref());
    let length = resp.content_length();
    if req.method() == Method::HEAD
        || matches!(status.as_u16(), 204 | 304)
        || status.is_informational()
    {
        return Ok(bodiless(
            reply,
            req.method() == Method::HEAD,
            length,
            outcome,
        ));
    }
    let max = settings.rewrite_max_bytes;
    let rewritable = is_rewritable(&resp, length, max);
    let idle = settings.timeout;
    let upstream = resp.bytes_stream().boxed();
    let log = LogOnDrop(Some(std::mem::replace(outcome, blank())));
    if let Some(r) = rewriter.filter(|_| rewritable) {
        return rewritten(reply, &r, upstream, length, settings, deadline, log).await;
    }
    let body = Counted::new(idle_bounded(upstream, idle), log);
    Ok(sized_or_streamed(reply, length, body))
}

/// The vendor's headers that cross to the caller; with a `rewriter`, `Link`,
/// `Location` and `Content-Location` point to the proxy.
fn copy_headers(
    reply: &mut HttpResponseBuilder,
    resp: &reqwest::Response,
    rewriter: Option<&Rewriter>,
) {
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
        let rewritten = match (rewriter, n) {
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
}

/// An answer without a body (HEAD, 204, 304, 1xx); a HEAD answer keeps the
/// length the vendor announced.
fn bodiless(
    mut reply: HttpResponseBuilder,
    head: bool,
    length: Option<u64>,
    outcome: &mut Outcome,
) -> HttpResponse {
    let log = LogOnDrop(Some(std::mem::replace(outcome, blank())));
    let body = Counted::new(futures::stream::empty(), log);
    match (head, length) {
        (true, Some(n)) => reply.body(SizedStream::new(n, body)),
        _ => reply.body(()),
    }
}

/// Whether the body may be rewritten: JSON, not content-encoded, and not
/// announced longer than `max`.
fn is_rewritable(resp: &reqwest::Response, length: Option<u64>, max: usize) -> bool {
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
    json && !encoded && length.is_none_or(|n| n <= max as u64)
}

/// A JSON body with its links rewritten: read up to the limit; a longer body
/// passes unmodified (what was read, then the rest as it comes).
async fn rewritten(
    mut reply: HttpResponseBuilder,
    r: &Rewriter,
    mut upstream: Upstream,
    length: Option<u64>,
    settings: &ProxySettings,
    deadline: tokio::time::Instant,
    mut log: LogOnDrop,
) -> Result<HttpResponse, ApiError> {
    let (buf, over) = match read_up_to(&mut upstream, settings.rewrite_max_bytes, deadline).await {
        Ok(read) => read,
        Err(e) => {
            // The caller gets this error, not the vendor's status: the line says so.
            log.fail(&e);
            return Err(e);
        }
    };
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
    let body = Counted::new(head.chain(idle_bounded(upstream, settings.timeout)), log);
    Ok(sized_or_streamed(reply, length, body))
}

/// Reads the vendor's body until it ends or passes `max` bytes (then `true`:
/// over), all of it before the deadline.
async fn read_up_to(
    upstream: &mut Upstream,
    max: usize,
    deadline: tokio::time::Instant,
) -> Result<(BytesMut, bool), ApiError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = tokio::time::timeout_at(deadline, upstream.next())
        .await
        .map_err(|_| {
            ApiError::UpstreamTimeout("the vendor's answer did not arrive in time".into())
        })?
    {
        let chunk = chunk
            .map_err(|_| ApiError::UpstreamUnreachable("the vendor's answer broke off".into()))?;
        buf.extend_from_slice(&chunk);
        if buf.len() > max {
            return Ok((buf, true));
        }
    }
    Ok((buf, false))
}

/// A body of the announced length, or streamed when none was announced.
fn sized_or_streamed<S>(
    mut reply: HttpResponseBuilder,
    length: Option<u64>,
    body: S,
) -> HttpResponse
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + 'static,
{
    match length {
        Some(n) => reply.body(SizedStream::new(n, body)),
        None => reply.streaming(body),
    }
}

type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>>>>;

/// The vendor's body, each pause bounded by `idle`.
fn idle_bounded(upstream: Upstream, idle: Duration) -> Chunks {
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

impl LogOnDrop {
    /// The answer became the broker's error `e` after all.
    fn fail(&mut self, e: &ApiError) {
        if let Some(o) = &mut self.0 {
            o.status = actix_web::ResponseError::status_code(e).as_u16();
            o.error = Some(e.code());
        }
    }
}

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
