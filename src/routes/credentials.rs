//! Pipeline credentials (protected): create, list, delete under
//! `/api/connections/{integration}/{connection}/credentials`; and how the
//! token route accepts them as HTTP Basic for their one connection.
//! Never a secret in any answer but the 201 that creates it.

use std::net::IpAddr;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::HttpMessage;

use super::error::ApiError;
use super::front_door::{self, Body, JSON_BODY_LIMIT};
use super::{no_store, path_names, AppState};
use crate::credentials::{AuthError, CredentialError, NewCredential};
use crate::domain::{ConnectionId, IntegrationName, PipelineCredential, Secret};

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn api_error(e: CredentialError) -> ApiError {
    match e {
        CredentialError::InvalidRequest(m) => ApiError::InvalidRequest(m),
        CredentialError::IntegrationNotFound(_) => ApiError::IntegrationNotFound(e.to_string()),
        CredentialError::NotFound => ApiError::CredentialNotFound,
        CredentialError::Store(err) => {
            tracing::error!(error = %err, "store failure on a credentials route");
            ApiError::StoreUnavailable
        }
    }
}

/// What the list shows of a credential: never its secret or hash.
#[derive(Serialize)]
struct CredentialView<'a> {
    client_id: &'a str,
    description: &'a str,
    created_at: String,
    expires_at: Option<String>,
    last_used_at: Option<String>,
}

impl<'a> From<&'a PipelineCredential> for CredentialView<'a> {
    fn from(c: &'a PipelineCredential) -> Self {
        Self {
            client_id: c.client_id.as_str(),
            description: &c.description,
            created_at: rfc3339(c.created_at),
            expires_at: c.expires_at.map(rfc3339),
            last_used_at: c.last_used_at.map(rfc3339),
        }
    }
}

#[derive(Serialize)]
struct CredentialList<'a> {
    integration: &'a str,
    connection: &'a str,
    credentials: Vec<CredentialView<'a>>,
}

/// The one answer that carries a client secret: the 201 that creates it.
#[derive(Serialize)]
struct Created<'a> {
    client_id: &'a str,
    client_secret: &'a str,
    integration: &'a str,
    connection: &'a str,
    created_at: String,
    expires_at: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    description: Option<String>,
    #[serde(default, deserialize_with = "super::whole_seconds")]
    expires_in_days: Option<u32>,
    #[serde(default, deserialize_with = "super::whole_seconds")]
    min_validity_secs: Option<u32>,
}

const CREATE_SHAPE: &str = "the body must be empty or a JSON object {\"description\": \"...\", \"expires_in_days\": <days>, \"min_validity_secs\": <seconds>}";

/// `POST /api/connections/{integration}/{connection}/credentials`
pub async fn create(
    req: HttpRequest,
    Body(body): Body<JSON_BODY_LIMIT>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (i, c) = path_names(&req)?;
    // Only a body of no bytes means the defaults: whitespace is not JSON.
    let b: CreateBody = if body.is_empty() {
        CreateBody::default()
    } else if !body.trim_ascii_start().starts_with(b"{") {
        return Err(ApiError::InvalidRequest(CREATE_SHAPE.into()));
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            // serde's data errors name the field and expected type, never echo input values.
            let why = e.to_string();
            let why = why.split(" at line ").next().unwrap_or_default();
            ApiError::InvalidRequest(if e.is_data() {
                format!("{CREATE_SHAPE}: {why}")
            } else {
                CREATE_SHAPE.into()
            })
        })?
    };
    let issued = state
        .credentials
        .create(
            &i,
            &c,
            NewCredential {
                description: b.description.unwrap_or_default(),
                expires_in_days: b.expires_in_days,
                min_validity_secs: b.min_validity_secs,
            },
        )
        .await
        .map_err(api_error)?;
    let cred = &issued.credential;
    Ok(no_store(HttpResponse::Created())
        .insert_header((header::PRAGMA, "no-cache"))
        .json(Created {
            client_id: cred.client_id.as_str(),
            client_secret: issued.secret.expose(),
            integration: i.as_str(),
            connection: c.as_str(),
            created_at: rfc3339(cred.created_at),
            expires_at: cred.expires_at.map(rfc3339),
        }))
}

/// `GET /api/connections/{integration}/{connection}/credentials`
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (i, c) = path_names(&req)?;
    let all = state.credentials.list(&i, &c).await.map_err(api_error)?;
    Ok(no_store(HttpResponse::Ok()).json(CredentialList {
        integration: i.as_str(),
        connection: c.as_str(),
        credentials: all.iter().map(CredentialView::from).collect(),
    }))
}

/// `DELETE /api/connections/{integration}/{connection}/credentials/{client_id}`
pub async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (i, c) = path_names(&req)?;
    let id = req.match_info().get("client_id").unwrap_or_default();
    state
        .credentials
        .delete(&i, &c, id)
        .await
        .map_err(api_error)?;
    Ok(HttpResponse::NoContent().finish())
}

/// Client credentials from `Authorization: Basic` (RFC 7617; each part
/// form-urlencoded first, RFC 6749 §2.3.1). `None` when the header is absent
/// or uses another scheme; `Some(Err(()))` when it is Basic but malformed.
#[allow(clippy::result_unit_err)]
pub fn basic_credentials(req: &HttpRequest) -> Option<Result<(String, Secret), ()>> {
    let value = req.headers().get(header::AUTHORIZATION)?;
    let value = value.to_str().ok()?;
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    Some(decode_basic(rest.trim()))
}

fn decode_basic(b64: &str) -> Result<(String, Secret), ()> {
    if b64.len() > 1024 {
        return Err(());
    }
    let raw = STANDARD
        .decode(b64)
        .or_else(|_| STANDARD_NO_PAD.decode(b64))
        .map_err(|_| ())?;
    let text = String::from_utf8(raw).map_err(|_| ())?;
    let (id, secret) = text.split_once(':').ok_or(())?;
    let decode = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let id = decode(id);
    let secret = Secret::new(decode(secret));
    if id.is_empty() || secret.is_empty() {
        return Err(());
    }
    Ok((id, secret))
}

/// The address a request came from (see [`crate::domain::source`]).
pub fn source(req: &HttpRequest) -> Option<IpAddr> {
    let peer = req.peer_addr().map(|a| a.ip());
    let forwarded: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .collect();
    let rule = req
        .app_data::<actix_web::web::Data<AppState>>()
        .map(|s| std::sync::Arc::clone(&s.source_rule))
        .unwrap_or_default();
    let client_ip = req.headers().get("client-ip").and_then(|v| v.to_str().ok());
    rule.client_from(peer, &forwarded, client_ip)
}

/// Who called the token route.
pub enum TokenCaller {
    /// The admin key or a token-only key (checked by the handler), or a function key (checked by
    /// the Functions host).
    Admin,
    /// A pipeline credential: its own connection only.
    Pipeline(Box<PipelineCredential>),
    /// A Microsoft Entra ID identity: the connections the integration's `callers` list for it.
    Entra(std::sync::Arc<crate::entra::EntraCaller>),
}

impl TokenCaller {
    /// 403 `forbidden` when a pipeline credential asks for another connection, or an Entra
    /// identity for a connection `callers` does not list for it (an unknown integration
    /// included, so an identity cannot probe for names).
    pub fn allow(
        &self,
        state: &AppState,
        i: &IntegrationName,
        c: &ConnectionId,
    ) -> Result<(), ApiError> {
        match self {
            Self::Pipeline(cred) if !cred.covers(i, c) => Err(ApiError::Forbidden(
                "this client credential is for another connection",
            )),
            Self::Entra(caller) => {
                let allowed = match state.engine.integration(i) {
                    crate::registry::Lookup::Ready(integration) => {
                        crate::config::callers::allows(&integration.callers, &caller.object_id, c)
                    }
                    crate::registry::Lookup::Unavailable { .. } => {
                        return state.integration(i).map(|_| ());
                    }
                    crate::registry::Lookup::Unknown => false,
                };
                tracing::info!(
                    outcome = if allowed { "allowed" } else { "forbidden" },
                    caller_oid = %caller.object_id,
                    caller_app_id = caller.app_id.as_deref().unwrap_or(""),
                    caller_roles = ?caller.roles,
                    token_version = caller.version.as_deref().unwrap_or(""),
                    integration = %i.as_str(),
                    connection = %c.as_str(),
                    "Entra ID caller on the token route"
                );
                if allowed {
                    Ok(())
                } else {
                    Err(ApiError::Forbidden(
                        "this identity is not among the integration's callers for this connection",
                    ))
                }
            }
            _ => Ok(()),
        }
    }

    /// The credential's own `min_validity`, when the request names none.
    pub fn min_validity(&self) -> Option<time::Duration> {
        match self {
            Self::Pipeline(cred) => cred.min_validity,
            Self::Admin | Self::Entra(_) => None,
        }
    }
}

/// The connection's read started beside the credential's ([`require_key_or_credential`]).
#[derive(Clone)]
struct PrefetchedRow(std::rc::Rc<std::cell::RefCell<Option<crate::refresh::Prefetched>>>);

/// The read of the path's connection made while authenticating, once (a pipeline caller only).
pub fn take_prefetched(req: &HttpRequest) -> Option<crate::refresh::Prefetched> {
    req.extensions()
        .get::<PrefetchedRow>()
        .and_then(|p| p.0.borrow_mut().take())
}

/// The credential a token-route request was authenticated with (set by
/// [`require_key_or_credential`]).
#[derive(Clone)]
struct AuthenticatedPipeline(Box<PipelineCredential>);

impl TokenCaller {
    /// Who the front door let through: a pipeline credential, else the key holder.
    pub fn of(req: &HttpRequest) -> Self {
        if let Some(caller) = super::access::entra_caller(req) {
            return Self::Entra(caller);
        }
        match req.extensions().get::<AuthenticatedPipeline>() {
            Some(p) => Self::Pipeline(p.0.clone()),
            None => Self::Admin,
        }
    }
}

/// Verifies a Basic credential; the connection the path names is read with it (one round trip
/// on Table Storage), and the handler uses that read only if the credential covers it.
async fn authenticate(
    req: &ServiceRequest,
    state: &AppState,
    id: &str,
    secret: &Secret,
) -> Result<PipelineCredential, AuthError> {
    let home = super::path_names(req.request()).ok();
    let (credential, prefetched) = state
        .credentials
        .authenticate_at(
            id,
            secret,
            source(req.request()),
            home.as_ref().map(|(i, c)| (i, c)),
        )
        .await?;
    if let Some(pre) = prefetched {
        req.extensions_mut()
            .insert(PrefetchedRow(std::rc::Rc::new(std::cell::RefCell::new(
                Some(pre),
            ))));
    }
    Ok(credential)
}

/// Around the token routes, in place of [`front_door::require_key`]: a
/// request with `Authorization: Basic` is a pipeline credential, checked here
/// from the head (before any byte of the body is read, whatever key comes
/// with it) and handed to the handler; any other request needs an Entra ID
/// token or a key ([`super::access::require_token_caller`]).
pub async fn require_key_or_credential(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(basic) = basic_credentials(req.request()) else {
        return super::access::require_token_caller(req, next).await;
    };
    let state = req
        .app_data::<web::Data<AppState>>()
        .expect("the app state is registered in startup")
        .clone();
    let verdict = match basic {
        Err(()) => Err(ApiError::Unauthorized(
            "the Authorization header is not valid HTTP Basic credentials (base64 of client_id:client_secret)",
        )),
        Ok((id, secret)) => match authenticate(&req, &state, &id, &secret).await {
            Ok(c) => Ok(c),
            Err(AuthError::InvalidClient) => Err(ApiError::Unauthorized(
                "the client credentials are not valid",
            )),
            Err(AuthError::RateLimited { retry_after_secs }) => {
                Err(ApiError::TooManyFailures { retry_after_secs })
            }
            Err(AuthError::Store(_)) => Err(ApiError::StoreUnavailable),
        },
    };
    match verdict {
        Ok(c) => {
            req.extensions_mut()
                .insert(AuthenticatedPipeline(Box::new(c)));
            next.call(req)
                .await
                .map(ServiceResponse::map_into_boxed_body)
        }
        Err(e) => Ok(front_door::refuse(req, &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded_after_base64() {
        let enc = STANDARD.encode("pc_a%2Bb:s%3Ac+d");
        let (id, secret) = decode_basic(&enc).unwrap();
        assert_eq!(id, "pc_a+b");
        assert_eq!(secret.expose(), "s:c d");
        for bad in [
            "",
            "!!!",
            &STANDARD.encode("nocolon"),
            &STANDARD.encode(":x"),
        ] {
            assert!(decode_basic(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn forwarded_addresses_parse_with_or_without_port() {
        use crate::domain::source::parse_forwarded;
        assert_eq!(
            parse_forwarded(" 203.0.113.7:5123"),
            "203.0.113.7".parse().ok()
        );
        assert_eq!(
            parse_forwarded("[2001:db8::1]:443"),
            "2001:db8::1".parse().ok()
        );
        assert_eq!(parse_forwarded("2001:db8::1"), "2001:db8::1".parse().ok());
        assert_eq!(parse_forwarded("unknown"), None);
    }
}
