//! Who may call the routes that accept Microsoft Entra ID callers, checked by
//! the handler from the request head before any byte of the body is read. Under
//! the Functions host these routes are `authLevel: anonymous` (an Entra caller
//! has no function key), so the handler requires some verified caller itself:
//!
//! | route | accepts |
//! |---|---|
//! | token routes (`GET /api/token/…`, `POST /api/token`) | an Entra token whose `oid` the integration's `callers` lists for the connection; a pipeline credential (Basic, its own connection; [`super::credentials`]); the admin key; a token-only key (`BROKER_TOKEN_KEYS`) |
//! | admin routes (connections, consent links, credentials, status page) | an Entra token with the app role `Broker.Admin`; the admin key |
//!
//! The admin key is standalone mode's key, or `BROKER_API_KEY` under the host.
//! A bearer token is only read when Entra callers are on (`BROKER_ENTRA_TENANT_ID`);
//! a token that fails any check is refused (401 `invalid_token`) whatever key
//! comes with it.
//!
//! Depends on `entra`, `config::callers` and the front door.

use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest};

use super::error::ApiError;
use super::front_door::{refuse, FrontDoor};
use super::AppState;
use crate::entra::{bearer, Check, EntraCaller, VerifyError};

/// The Entra caller a request was authenticated as (a request extension).
#[derive(Clone)]
pub struct AuthenticatedEntra(pub Arc<EntraCaller>);

/// The Entra caller of this request, if it was one.
pub fn entra_caller(req: &HttpRequest) -> Option<Arc<EntraCaller>> {
    req.extensions()
        .get::<AuthenticatedEntra>()
        .map(|e| Arc::clone(&e.0))
}

/// The request's bearer token, when Entra callers are on and it carries one.
/// `Err` is the answer for a token that is not accepted.
async fn entra(
    req: &ServiceRequest,
    state: &AppState,
) -> Option<Result<Arc<EntraCaller>, ApiError>> {
    let verifier = state.entra.as_ref()?;
    let value = req.headers().get(header::AUTHORIZATION)?;
    let token = match value.to_str().ok().and_then(bearer)? {
        Ok(t) => t,
        Err(()) => {
            return Some(Err(refused(
                req,
                Check::Malformed(crate::entra::jwt::Malformed::Parts),
            )))
        }
    };
    Some(match verifier.verify(token).await {
        Ok(caller) => Ok(caller),
        Err(VerifyError::Invalid(check)) => Err(refused(req, check)),
        Err(VerifyError::KeysUnavailable) => {
            tracing::error!(
                path = %req.path(),
                "an Entra ID token could not be verified: the tenant's signing keys are unavailable"
            );
            Err(ApiError::EntraUnavailable)
        }
    })
}

/// The log line of a refused token (the check, never the token) and the answer.
fn refused(req: &ServiceRequest, check: Check) -> ApiError {
    tracing::warn!(
        outcome = "invalid_token",
        check = check.name(),
        path = %req.path(),
        "an Entra ID token was refused"
    );
    ApiError::InvalidToken(check.reason())
}

fn state_of(req: &ServiceRequest) -> web::Data<AppState> {
    req.app_data::<web::Data<AppState>>()
        .expect("the app state is registered in startup")
        .clone()
}

fn door_of(req: &ServiceRequest) -> web::Data<FrontDoor> {
    req.app_data::<web::Data<FrontDoor>>()
        .expect("the front door is registered in startup")
        .clone()
}

async fn pass(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    next.call(req)
        .await
        .map(ServiceResponse::map_into_boxed_body)
}

/// Around the token routes (after a pipeline credential was ruled out): an
/// Entra caller (its access to the connection is decided by the handler, which
/// knows the connection), the admin key or a token-only key.
pub async fn require_token_caller(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let state = state_of(&req);
    match entra(&req, &state).await {
        Some(Ok(caller)) => {
            req.extensions_mut().insert(AuthenticatedEntra(caller));
            return pass(req, next).await;
        }
        Some(Err(e)) => return Ok(refuse(req, &e)),
        None => {}
    }
    let door = door_of(&req);
    match door.refusal(door.presented(req.request()), false) {
        None => pass(req, next).await,
        Some(e) => Ok(refuse(req, &e)),
    }
}

/// Around the admin routes: an Entra caller with the app role `Broker.Admin`, or the admin key.
pub async fn require_admin(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let state = state_of(&req);
    match entra(&req, &state).await {
        Some(Ok(caller)) if caller.is_admin() => {
            tracing::info!(outcome = "allowed", caller_oid = %caller.object_id, caller_app_id = caller.app_id.as_deref().unwrap_or(""), path = %req.path(), "Entra ID admin caller");
            req.extensions_mut().insert(AuthenticatedEntra(caller));
            return pass(req, next).await;
        }
        Some(Ok(caller)) => {
            tracing::warn!(outcome = "forbidden", caller_oid = %caller.object_id, caller_app_id = caller.app_id.as_deref().unwrap_or(""), caller_roles = ?caller.roles, path = %req.path(), "an Entra ID caller without the Broker.Admin role asked for an admin route");
            let e = ApiError::Forbidden(
                "this identity lacks the app role Broker.Admin, which the admin routes require",
            );
            return Ok(refuse(req, &e));
        }
        Some(Err(e)) => return Ok(refuse(req, &e)),
        None => {}
    }
    let door = door_of(&req);
    match door.refusal(door.presented(req.request()), true) {
        None => pass(req, next).await,
        Some(e) => Ok(refuse(req, &e)),
    }
}
