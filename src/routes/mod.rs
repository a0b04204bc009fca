//! Thin actix handlers: parse the request, make one call into a service (the
//! refresh [`Engine`] or the [`ConsentService`]), shape the answer. No handler
//! touches the store. Paths are those the Functions host forwards (`/api/...`,
//! and `/<function-name>` for the timer).
//!
//! Depends on `refresh`, `consent`, `registry` (lookups) and `domain`.

pub mod access;
pub mod auth;
pub mod connections;
pub mod credentials;
pub mod error;
pub mod front_door;
pub mod health;
pub mod html;
pub mod oauth2;
pub mod openapi;
pub mod proxy;
pub mod status;
pub mod timer;
pub mod token;

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::{web, HttpRequest};

use crate::consent::ConsentService;
use crate::credentials::Credentials;
use crate::domain::{ConnectionId, IntegrationName};
use crate::refresh::Engine;
use crate::registry::Lookup;
use error::ApiError;

/// What every handler can reach. The key check is the front door's
/// ([`front_door::require_key`]), done before a handler runs.
pub struct AppState {
    pub engine: Arc<Engine>,
    /// The admin views and deletion.
    pub connections: crate::connections::Connections,
    pub consent: ConsentService,
    /// Consent links: make, list, end.
    pub links: crate::consent::LinkIssuer,
    /// Pipeline credentials (the token endpoint, Basic on the token route).
    pub credentials: Arc<Credentials>,
    /// The proxy's client and limits.
    pub proxy: proxy::Proxy,
    /// Microsoft Entra ID callers (`BROKER_ENTRA_*`); `None`: off.
    pub entra: Option<Arc<crate::entra::Verifier>>,
    /// How a request's source address is found (for the failure limits).
    pub source_rule: Arc<crate::domain::source::SourceRule>,
}

impl AppState {
    /// A configured, available integration, or the JSON error saying why not.
    pub fn integration(
        &self,
        name: &IntegrationName,
    ) -> Result<Arc<crate::config::Integration>, ApiError> {
        match self.engine.integration(name) {
            Lookup::Ready(i) => Ok(i),
            Lookup::Unavailable { reason } => Err(ApiError::IntegrationUnavailable(format!(
                "integration {:?} is not available yet: {reason}",
                name.as_str()
            ))),
            Lookup::Unknown => Err(ApiError::IntegrationNotFound(format!(
                "no integration named {:?} is configured",
                name.as_str()
            ))),
        }
    }
}

/// serde: an optional whole number (of seconds, of days) from 0 to
/// `u32::MAX`. JSON has one number type, so `60.0` and `6e1` are the integer 60
/// (as JSON Schema, and so the API description, says); a fraction, a negative
/// or a larger number is refused.
pub(crate) fn whole_seconds<'de, D>(d: D) -> Result<Option<u32>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error as _;
    use serde::Deserialize as _;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let whole = match n.as_u64() {
        Some(v) => u32::try_from(v).ok(),
        None => n
            .as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(f))
            .map(|f| f as u32),
    };
    whole
        .map(Some)
        .ok_or_else(|| D::Error::custom("expected a whole number from 0 to 4294967295"))
}

/// The query string as a map (last value wins; the Functions host already
/// joins repeated keys with commas).
pub fn query(req: &HttpRequest) -> HashMap<String, String> {
    form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect()
}

/// An integration name and a connection id from the request, or `invalid_request` naming which is wrong.
pub fn names(
    integration: &str,
    connection: &str,
) -> Result<(IntegrationName, ConnectionId), ApiError> {
    let i = IntegrationName::parse(integration)
        .map_err(|e| ApiError::InvalidRequest(format!("integration: {e}")))?;
    let c = ConnectionId::parse(connection)
        .map_err(|e| ApiError::InvalidRequest(format!("connection: {e}")))?;
    Ok((i, c))
}

/// [`names`] from the `{integration}` and `{connection}` path segments.
pub fn path_names(req: &HttpRequest) -> Result<(IntegrationName, ConnectionId), ApiError> {
    names(
        req.match_info().get("integration").unwrap_or_default(),
        req.match_info().get("connection").unwrap_or_default(),
    )
}

/// `Cache-Control: no-store` on a response builder (every API answer carries it).
pub fn no_store(mut b: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    b.insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"));
    b
}

/// The routes. Those the Functions host protects are wrapped in
/// [`front_door::require_key`] (standalone mode's key, checked before the body
/// is read); those that accept Entra ID callers in [`access::require_admin`]
/// or, the token routes, [`credentials::require_key_or_credential`] (checked
/// by the handler in both modes: they are anonymous at the host); the
/// anonymous ones (health, the API description, the callback the vendor sends
/// the browser to, consent links, the token endpoint) are not.
///
/// Long: it is the route table, one entry per path with its guard; split up,
/// the paths and the guards that protect them could no longer be read together.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // Routes the Functions host protects with a function key (and standalone, the admin key).
    let key = || from_fn(front_door::require_key);
    // Routes that accept Entra ID callers: anonymous at the host, checked here in both modes.
    let admin = || from_fn(access::require_admin);
    cfg.service(
        web::resource("/api/auth/start/{integration}")
            .wrap(key())
            .route(web::get().to(auth::start)),
    )
    .service(web::resource("/api/auth/callback").route(web::get().to(auth::callback)))
    .service(
        web::resource("/api/token/{integration}/{connection}")
            .wrap(from_fn(credentials::require_key_or_credential))
            .route(web::get().to(token::get)),
    )
    .service(
        web::resource("/api/token")
            .wrap(from_fn(credentials::require_key_or_credential))
            .route(web::post().to(token::post)),
    )
    .service(web::resource("/api/health").route(web::get().to(health::health)))
    .service(web::resource("/api/openapi.json").route(web::get().to(openapi::document)))
    .service(
        web::resource("/api/status")
            .wrap(admin())
            .route(web::get().to(status::get))
            .route(web::post().to(status::post)),
    )
    .service(web::resource("/api/auth/link").route(web::get().to(auth::open_link)))
    .service(
        web::resource("/api/connections")
            .wrap(admin())
            .route(web::get().to(connections::list)),
    )
    .service(
        web::resource("/api/connections/{integration}/{connection}")
            .wrap(admin())
            .route(web::get().to(connections::show))
            .route(web::delete().to(connections::delete)),
    )
    .service(
        web::resource("/api/connections/{integration}/{connection}/consent-link")
            .wrap(admin())
            .route(web::post().to(connections::create_link)),
    )
    .service(
        web::resource("/api/connections/{integration}/{connection}/consent-links")
            .wrap(admin())
            .route(web::get().to(connections::list_links)),
    )
    .service(
        web::resource("/api/connections/{integration}/{connection}/consent-links/{id}")
            .wrap(admin())
            .route(web::delete().to(connections::end_link)),
    )
    .service(
        web::resource("/api/connections/{integration}/{connection}/credentials")
            .wrap(admin())
            .route(web::get().to(credentials::list))
            .route(web::post().to(credentials::create)),
    )
    .service(
        web::resource("/api/connections/{integration}/{connection}/credentials/{client_id}")
            .wrap(admin())
            .route(web::delete().to(credentials::delete)),
    )
    // Anonymous at the Functions host: the broker authenticates the caller itself.
    .service(
        web::resource("/api/proxy/{integration}/{connection}/{path:.*}")
            .wrap(from_fn(proxy::require_credential))
            .route(web::get().to(proxy::handle))
            .route(web::head().to(proxy::handle))
            .route(web::post().to(proxy::handle))
            .route(web::put().to(proxy::handle))
            .route(web::patch().to(proxy::handle))
            .route(web::delete().to(proxy::handle))
            .default_service(web::to(error::method_not_allowed)),
    )
    // Anonymous: the broker authenticates the client itself (RFC 6749 §2.3).
    .service(web::resource("/api/oauth2/token").route(web::post().to(oauth2::token)))
    .service(
        web::resource("/refresh-timer")
            .wrap(key())
            .route(web::post().to(timer::refresh_timer)),
    )
    .default_service(web::to(error::not_found));
}
