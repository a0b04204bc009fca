//! Entry points for the cargo-fuzz targets in `fuzz/` (run by `scripts/fuzz`).
//!
//! Each feeds arbitrary input to one parser of outside input the way the
//! broker does, reaching code that is private to its module. They are not part
//! of the broker's API and nothing in the broker calls them.
//!
//! This file holds the parsers of requests and vendor answers; `store.rs` the
//! stored rows (connections, pending rows, credentials, the outbox) read back
//! through the real store from the in-memory table.

mod store;

pub use store::*;

use std::collections::HashMap;

use actix_web::body::MessageBody;

use crate::crypto::Keyring;
use crate::domain::Secret;
use crate::oauth::{self, TokenError, TokenResponse};
pub use crate::store::memory::MemoryTable;

/// A token endpoint's answer (code exchange or refresh), as `oauth` reads it.
pub fn token_response(
    status: u16,
    is_form: bool,
    body: &[u8],
    metadata_fields: &[String],
) -> Result<TokenResponse, TokenError> {
    let shape = oauth::Shape {
        metadata: metadata_fields,
        expires_at_field: Some("expires_at"),
        account_pointer: None,
    };
    oauth::parse_token_response(status, is_form, body, &shape)
}

/// A query string as the handlers read it (`routes::query`); `None` when the
/// HTTP layer refuses such a request line before any handler runs.
pub fn query(query_string: &str) -> Option<HashMap<String, String>> {
    let uri = format!("/api/auth/callback?{query_string}");
    actix_web::http::Uri::try_from(uri.as_str()).ok()?;
    let req = actix_web::test::TestRequest::default()
        .uri(&uri)
        .to_http_request();
    Some(crate::routes::query(&req))
}

/// What the callback takes from the vendor's redirect, read as
/// `ConsentService::complete` reads it.
#[derive(Debug)]
pub struct CallbackQuery {
    /// The SHA-256 of `state`: the key of the pending row.
    pub state_hash: Option<String>,
    pub code: Option<Secret>,
    /// The vendor's error and description, as kept and shown (sanitized).
    pub error: Option<String>,
    pub description: Option<String>,
    /// The HTML page shown for the vendor's error.
    pub page: Option<String>,
}

pub fn callback(query_string: &str) -> Option<CallbackQuery> {
    let params = query(query_string)?;
    let state_hash = params
        .get("state")
        .filter(|s| !s.is_empty())
        .map(|s| crate::consent::hash(s));
    let code = params
        .get("code")
        .filter(|c| !c.is_empty())
        .map(|c| Secret::new(c.clone()));
    let error = params.get("error").map(|e| oauth::sanitize(e, 64));
    let description = params
        .get("error_description")
        .map(|d| oauth::sanitize(d, 300));
    let page = error
        .as_ref()
        .map(|e| refusal_page(e, description.as_deref()));
    Some(CallbackQuery {
        state_hash,
        code,
        error,
        description,
        page,
    })
}

/// The page the callback shows when the vendor sent an error (RFC 6749
/// §4.1.2.1), as HTML text.
pub fn refusal_page(error: &str, description: Option<&str>) -> String {
    let resp = crate::routes::html::access_not_granted(
        error,
        description,
        "https://broker.example/api/auth/callback",
    );
    let body = resp.into_body().try_into_bytes().unwrap_or_default();
    String::from_utf8_lossy(&body).into_owned()
}

/// The keyring the stored-row entry points seal and open with (a fixed test key).
pub fn test_keyring() -> Keyring {
    Keyring::parse(&Secret::new(
        "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ))
    .expect("a valid key spec")
}

/// The row key a consent link's token is looked up by, as
/// `GET /api/auth/link?t=` reads it (`None`: unusable without a lookup).
pub fn consent_link(query_string: &str) -> Option<String> {
    let token = query(query_string)?.remove("t").unwrap_or_default();
    if token.is_empty() || token.len() > 128 {
        return None;
    }
    Some(crate::consent::hash(&token))
}

/// The proxy's path check and the upstream URL built from it (`routes::proxy`):
/// the raw path after `/api/proxy/{integration}/{connection}` and the query
/// string, against `bases`; the chosen base's index and the URL, or why not.
pub fn proxy_upstream(
    raw_path: &str,
    query: &str,
    bases: &[&str],
) -> Result<(usize, url::Url), String> {
    let checked = crate::proxy::check_path(raw_path, bases.len()).map_err(str::to_owned)?;
    let url = crate::routes::proxy::upstream_url(bases[checked.base], &checked.path, query)
        .map_err(|e| e.to_string())?;
    Ok((checked.base, url))
}

/// The proxy's link rewriter on a JSON body and on a `Link` header value.
pub fn rewrite_links(
    bases: &[String],
    proxy: &str,
    body: &[u8],
) -> (Option<Vec<u8>>, Option<String>) {
    let r = crate::proxy::Rewriter::new(bases, proxy);
    let header = std::str::from_utf8(body)
        .ok()
        .and_then(|s| r.link_header(s));
    (r.json(body), header)
}

/// An `Authorization` header value as the Entra check reads it: the Bearer
/// token, split and decoded (`entra::jwt::parse`), then the claim checks
/// against a fixed tenant and audience at `now` (the signature cannot verify
/// on fuzzed input, so it is skipped to reach the claims). `None`: not Bearer.
pub fn entra_authorization(
    value: &str,
    now: i64,
) -> Option<Result<crate::entra::EntraCaller, crate::entra::VerifyError>> {
    use crate::entra::{Check, VerifyError};
    let token = match crate::entra::bearer(value)? {
        Ok(t) => t,
        Err(()) => {
            return Some(Err(VerifyError::Invalid(Check::Malformed(
                crate::entra::jwt::Malformed::Parts,
            ))))
        }
    };
    let u = match crate::entra::jwt::parse(token) {
        Ok(u) => u,
        Err(m) => return Some(Err(VerifyError::Invalid(Check::Malformed(m)))),
    };
    Some(crate::entra::check_claims(
        &entra_settings(),
        &u.claims,
        now,
    ))
}

/// The tenant and audiences [`entra_authorization`] checks against.
pub fn entra_settings() -> crate::config::EntraSettings {
    crate::config::EntraSettings {
        tenant: ENTRA_TENANT.into(),
        audiences: vec!["api://oauth-broker".into(), ENTRA_CLIENT.into()],
        authority: url::Url::parse("https://login.microsoftonline.com").expect("a fixed URL"),
    }
}

pub const ENTRA_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const ENTRA_CLIENT: &str = "0f1e2d3c-0000-4000-8000-000000000001";

/// A token endpoint's answer read for the consent's account: the account id
/// at `pointer` (a `token_field` source) and the `id_token`, as
/// `ConsentService::complete` reads them.
pub fn token_account(body: &[u8], pointer: &str) -> Result<TokenResponse, TokenError> {
    let shape = oauth::Shape {
        metadata: &[],
        expires_at_field: None,
        account_pointer: Some(pointer),
    };
    oauth::parse_token_response(200, false, body, &shape)
}

/// The account a callback parameter names (`account` from `callback_param`),
/// read from the vendor's redirect as the callback reads it; `None` when the
/// HTTP layer refuses such a request line.
pub fn callback_account(query_string: &str, name: &str) -> Option<Option<crate::domain::Account>> {
    let params = query(query_string)?;
    Some(crate::consent::callback_account(&params, name))
}

fn request_with(
    headers: &[(actix_web::http::header::HeaderName, Option<&[u8]>)],
) -> Option<actix_web::HttpRequest> {
    let mut req = actix_web::test::TestRequest::post().uri("/api/oauth2/token");
    for (name, value) in headers {
        if let Some(v) = value {
            let v = actix_web::http::header::HeaderValue::from_bytes(v).ok()?;
            req = req.insert_header((name.clone(), v));
        }
    }
    Some(req.to_http_request())
}

/// What the token endpoint read from a request: the client id, secret,
/// `scope` and `resource`.
pub type ClientRequest = (String, Secret, Option<String>, Option<String>);

/// `POST /api/oauth2/token` as the handler reads it before any credential is
/// looked at: `Ok` what the client presented, `Err` the status and JSON body
/// of the RFC 6749 §5.2 answer. `None` when the HTTP layer refuses such
/// header values before any handler runs.
pub fn token_form(
    content_type: Option<&[u8]>,
    authorization: Option<&[u8]>,
    body: &[u8],
) -> Option<Result<ClientRequest, (u16, String)>> {
    use actix_web::http::header;
    let req = request_with(&[
        (header::CONTENT_TYPE, content_type),
        (header::AUTHORIZATION, authorization),
    ])?;
    Some(match crate::routes::oauth2::read_request(&req, body) {
        Ok(r) => Ok((r.client_id, r.secret, r.scope, r.resource)),
        Err(e) => {
            let resp = e.response();
            let status = resp.status().as_u16();
            let body = resp.into_body().try_into_bytes().unwrap_or_default();
            Err((status, String::from_utf8_lossy(&body).into_owned()))
        }
    })
}

/// The client credentials an `Authorization` header carries, as the token
/// routes read them: `Some(None)` no Basic credentials, `Some(Some(Err))`
/// Basic but malformed; `None` when the HTTP layer refuses the value.
#[allow(clippy::type_complexity)]
pub fn basic(authorization: &[u8]) -> Option<Option<Result<(String, Secret), ()>>> {
    let req = request_with(&[(actix_web::http::header::AUTHORIZATION, Some(authorization))])?;
    Some(crate::routes::credentials::basic_credentials(&req))
}

/// The `Authorization` value a client sends for `id` and `secret` per
/// RFC 6749 §2.3.1 (each part form-urlencoded, then RFC 7617 Basic).
pub fn basic_header(id: &str, secret: &str) -> String {
    use base64::Engine as _;
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    )
}
