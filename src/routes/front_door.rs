//! The front door: what every request meets before a handler reads anything
//! of it. Standalone mode trusts nothing that arrives on the port:
//!
//! - the `Host` header must name this broker (its public URL, or a loopback
//!   name with the bound port), so a web page that rebinds its own host name
//!   to 127.0.0.1 cannot talk to it (DNS rebinding): [`admit`], wrapped
//!   around the whole app;
//! - protected routes want the API key (`x-functions-key` or `?code=`),
//!   checked from the head alone, before any byte of the body is read:
//!   [`require_key`], wrapped around each protected resource, so a route opts
//!   out by not being wrapped;
//! - bodies are read only by [`Body`], up to the route's limit and within
//!   [`BODY_TIMEOUT`]; a body left unread (refused request, too large, too
//!   slow, or a route that takes none) closes the connection after the answer
//!   instead of being drained: [`admit`] keeps the request's payload alive
//!   until the answer is written, which tells actix to close.
//!
//! Under the Functions host the host authenticates callers and owns the front
//! door (the handler's loopback port is unreachable from outside and forwarded
//! requests carry the app's public or custom host names), so only the body
//! limits apply.
//!
//! Depends on `domain` (the key) and `routes::error`.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::http::uri::Authority;
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, ResponseError};
use futures::future::LocalBoxFuture;
use futures::{Stream, StreamExt};
use url::Url;

use super::error::ApiError;
use super::query;
use crate::domain::secret::constant_time_eq;
use crate::domain::Secret;

/// The longest a request body may take to arrive, from the handler's first read.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Body limit of the JSON routes (`POST /api/token`, consent links): their
/// bodies are a few dozen bytes.
pub const JSON_BODY_LIMIT: usize = 4 * 1024;

/// Body limit of the timer invocation (the host's envelope is under 1 KiB).
pub const TIMER_BODY_LIMIT: usize = 16 * 1024;

/// What the front door checks, built once at start.
pub struct FrontDoor {
    /// Standalone mode: the host names requests may carry; `None` under the Functions host.
    hosts: Option<AllowedHosts>,
    /// The admin key: standalone's key; under the Functions host `BROKER_API_KEY`, checked only
    /// on the routes that are anonymous at the host (`None`: those routes take no key).
    api_key: Option<Secret>,
    /// `BROKER_TOKEN_KEYS`: keys that open the token routes and nothing else.
    token_keys: Vec<Secret>,
}

/// Which key a request presented in its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented {
    /// No `x-functions-key` header and no `?code=`.
    Nothing,
    /// The admin key.
    Admin,
    /// One of the token-only keys.
    TokenOnly,
    /// A key that is none of these (under the host: perhaps a function key, which the handler
    /// cannot verify).
    Unknown,
}

impl FrontDoor {
    /// Under the Functions host: no host check (the host owns that), function keys checked by
    /// the host on `authLevel: function` routes, and these keys by the handler on the routes
    /// that are anonymous at the host.
    pub fn functions_host(api_key: Option<Secret>, token_keys: Vec<Secret>) -> Self {
        Self {
            hosts: None,
            api_key,
            token_keys,
        }
    }

    /// Standalone: requests must name `public_url`'s host or a loopback name
    /// with `port` (the bound port), and protected routes need `api_key`.
    pub fn standalone(
        public_url: &Url,
        port: u16,
        api_key: Secret,
        token_keys: Vec<Secret>,
    ) -> Self {
        Self {
            hosts: Some(AllowedHosts::new(public_url, port)),
            api_key: Some(api_key),
            token_keys,
        }
    }

    /// Standalone mode (the broker is its own front door).
    pub fn is_standalone(&self) -> bool {
        self.hosts.is_some()
    }

    /// The key from the head: `x-functions-key`, else `?code=`, compared in constant time with
    /// every key the broker knows.
    pub fn presented(&self, req: &HttpRequest) -> Presented {
        let given = req
            .headers()
            .get("x-functions-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| query(req).remove("code"));
        let Some(g) = given else {
            return Presented::Nothing;
        };
        let matches = |k: &Secret| constant_time_eq(g.as_bytes(), k.expose().as_bytes());
        // Every key is compared, so the time does not tell which kind matched.
        let admin = self.api_key.as_ref().is_some_and(matches);
        let token = self
            .token_keys
            .iter()
            .fold(false, |acc, k| matches(k) | acc);
        match (admin, token) {
            (true, _) => Presented::Admin,
            (false, true) => Presented::TokenOnly,
            _ => Presented::Unknown,
        }
    }

    /// What the refusal of `presented` on a route that wants `admin` (else a token route) says.
    pub fn refusal(&self, presented: Presented, admin: bool) -> Option<ApiError> {
        match presented {
            Presented::Admin => None,
            Presented::TokenOnly if !admin => None,
            Presented::TokenOnly => Some(ApiError::Forbidden(
                "this key opens only the token routes",
            )),
            Presented::Nothing => Some(ApiError::Unauthorized(
                "this route needs a key: send it as the x-functions-key header or the code query parameter",
            )),
            Presented::Unknown if !self.is_standalone() => Some(ApiError::Unauthorized(
                "the key is not valid: under the Functions host this route is checked by the broker (BROKER_API_KEY, or a token key of BROKER_TOKEN_KEYS on the token routes), not by function keys",
            )),
            Presented::Unknown => Some(ApiError::Unauthorized("the key is not valid")),
        }
    }

    /// The key on a route the host checks (`authLevel: function`): standalone, the admin key;
    /// under the host, nothing (the host did).
    fn check_key(&self, req: &HttpRequest) -> Result<(), ApiError> {
        if !self.is_standalone() {
            return Ok(());
        }
        match self.refusal(self.presented(req), true) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

/// The `Host` values standalone mode answers to.
#[derive(Debug)]
struct AllowedHosts {
    /// Lower-case host (IPv6 in brackets), its port, and whether the port may be omitted.
    names: Vec<(String, u16, bool)>,
}

impl AllowedHosts {
    fn new(public_url: &Url, port: u16) -> Self {
        let mut names: Vec<(String, u16, bool)> = ["127.0.0.1", "localhost", "[::1]"]
            .into_iter()
            .map(|h| (h.to_owned(), port, port == 80))
            .collect();
        if let (Some(host), Some(public_port)) =
            (public_url.host_str(), public_url.port_or_known_default())
        {
            let default = match public_url.scheme() {
                "https" => 443,
                _ => 80,
            };
            names.push((
                host.to_ascii_lowercase(),
                public_port,
                public_port == default,
            ));
        }
        Self { names }
    }

    /// Whether a `Host` header value names this broker.
    fn allows(&self, value: &str) -> bool {
        let Ok(authority) = Authority::from_str(value) else {
            return false;
        };
        if authority.as_str().contains('@') {
            return false;
        }
        let host = authority.host().to_ascii_lowercase();
        let port = authority.port_u16();
        self.names.iter().any(|(name, p, may_omit)| {
            *name == host
                && match port {
                    Some(given) => given == *p,
                    None => *may_omit,
                }
        })
    }
}

/// The request's payload, shared between the handler (which may read it
/// through [`Body`]) and the front door, which keeps it alive until the answer
/// is written when it was not read to its end: actix then closes the
/// connection after the answer; had the payload been dropped, actix would
/// drain a chunked body for as long as the client cares to send it.
#[derive(Clone)]
struct SharedPayload(Rc<SharedInner>);

struct SharedInner {
    payload: RefCell<Payload>,
    finished: Cell<bool>,
}

impl SharedPayload {
    fn new(payload: Payload) -> Self {
        Self(Rc::new(SharedInner {
            payload: RefCell::new(payload),
            finished: Cell::new(false),
        }))
    }
}

impl Stream for SharedPayload {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.0.payload.borrow_mut().poll_next_unpin(cx);
        if matches!(next, Poll::Ready(None)) {
            self.0.finished.set(true);
        }
        next
    }
}

/// An answer's body that holds the unread request payload until it is written.
struct KeepUnread {
    body: BoxBody,
    _unread: SharedPayload,
}

impl MessageBody for KeepUnread {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

/// The answer, holding `unread` until it is written (see [`SharedPayload`]).
fn keeping(res: ServiceResponse<BoxBody>, unread: SharedPayload) -> ServiceResponse<BoxBody> {
    res.map_body(|_, body| {
        BoxBody::new(KeepUnread {
            body,
            _unread: unread,
        })
    })
}

/// Whether the request announces a body.
fn has_body(req: &HttpRequest) -> bool {
    let h = req.headers();
    if h.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    match h.get(header::CONTENT_LENGTH) {
        None => false,
        Some(v) => v.to_str().map_or(true, |v| v.trim() != "0"),
    }
}

/// An early answer: the error, and the connection closed when a body was announced.
pub(crate) fn refuse(req: ServiceRequest, e: &ApiError) -> ServiceResponse<BoxBody> {
    let (http, payload) = req.into_parts();
    let mut resp = e.error_response();
    if !has_body(&http) {
        return ServiceResponse::new(http, resp);
    }
    resp.head_mut().set_connection_type(ConnectionType::Close);
    keeping(
        ServiceResponse::new(http, resp),
        SharedPayload::new(payload),
    )
}

/// Around the whole app: the `Host` check (standalone mode), and the request's
/// payload kept until the answer is written when it was not read to its end.
pub async fn admit(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let door = req
        .app_data::<web::Data<FrontDoor>>()
        .expect("the front door is registered in startup")
        .clone();
    if let Some(hosts) = &door.hosts {
        let mut values = req.headers().get_all(header::HOST);
        let verdict = match (values.next(), values.next()) {
            (Some(v), None) => match v.to_str() {
                Ok(v) if hosts.allows(v) => Ok(()),
                _ => Err(ApiError::MisdirectedRequest),
            },
            (None, _) => Err(ApiError::InvalidRequest(
                "the request has no Host header".into(),
            )),
            (Some(_), Some(_)) => Err(ApiError::InvalidRequest(
                "the request has more than one Host header".into(),
            )),
        };
        if let Err(e) = verdict {
            return Ok(refuse(req, &e));
        }
    }
    if !has_body(req.request()) {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    }
    let shared = SharedPayload::new(req.take_payload());
    req.set_payload(Payload::Stream {
        payload: Box::pin(shared.clone()),
    });
    let res = next.call(req).await?.map_into_boxed_body();
    if shared.0.finished.get() {
        return Ok(res);
    }
    Ok(keeping(res, shared))
}

/// Around each resource the host protects (`authLevel: function`): standalone, the admin key,
/// from the head alone; under the host, nothing more.
pub async fn require_key(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let door = req
        .app_data::<web::Data<FrontDoor>>()
        .expect("the front door is registered in startup")
        .clone();
    if let Err(e) = door.check_key(req.request()) {
        return Ok(refuse(req, &e));
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_boxed_body)
}

/// A request body of at most `LIMIT` bytes that arrived within [`BODY_TIMEOUT`].
/// A declared length over the limit is refused before anything is read.
pub struct Body<const LIMIT: usize>(pub Bytes);

impl<const LIMIT: usize> FromRequest for Body<LIMIT> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let too_large = || {
            ApiError::PayloadTooLarge(format!(
                "the body must not exceed {LIMIT} bytes on this route"
            ))
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > LIMIT as u64) {
            let e = too_large();
            return Box::pin(async move { Err(e) });
        }
        let mut payload = payload.take();
        Box::pin(async move {
            let read = async {
                let mut buf = BytesMut::new();
                while let Some(chunk) = payload.next().await {
                    let chunk = chunk.map_err(|_| {
                        ApiError::InvalidRequest("the body could not be read".into())
                    })?;
                    if buf.len() + chunk.len() > LIMIT {
                        return Err(too_large());
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(buf.freeze())
            };
            match tokio::time::timeout(BODY_TIMEOUT, read).await {
                Ok(body) => body.map(Body),
                Err(_) => Err(ApiError::RequestTimeout(format!(
                    "the body did not arrive within {} seconds",
                    BODY_TIMEOUT.as_secs()
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(public: &str, port: u16) -> AllowedHosts {
        AllowedHosts::new(&Url::parse(public).unwrap(), port)
    }

    #[test]
    fn loopback_names_with_the_bound_port_and_the_public_host_are_allowed() {
        let h = hosts("https://broker.example.com", 7071);
        for ok in [
            "127.0.0.1:7071",
            "localhost:7071",
            "LOCALHOST:7071",
            "[::1]:7071",
            "broker.example.com",
            "Broker.Example.com:443",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example:7071",
            "127.0.0.1:7072",
            "127.0.0.1",
            "localhost",
            "broker.example.com:7071",
            "broker.example.com.evil:443",
            "user@127.0.0.1:7071",
            "127.0.0.2:7071",
            "",
            "127.0.0.1:7071/x",
        ] {
            assert!(!h.allows(bad), "{bad}");
        }
        let h = hosts("http://10.0.0.5:8080", 8080);
        assert!(h.allows("10.0.0.5:8080"));
        assert!(!h.allows("10.0.0.5"));
        let h = hosts("http://127.0.0.1:80", 80);
        assert!(h.allows("localhost") && h.allows("127.0.0.1:80"));
    }
}
