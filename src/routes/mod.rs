//! Thin actix handlers: parse the request, make one call into a service (the
//! refresh [`Engine`] or the [`ConsentService`]), shape the answer. No handler
//! touches the store. Paths are those the Functions host forwards (`/api/...`,
//! and `/<function-name>` for the timer).
//!
//! Depends on `refresh`, `consent`, `registry` (lookups) and `domain`.

pub mod auth;
pub mod connections;
pub mod error;
pub mod health;
pub mod html;
pub mod status;
pub mod timer;
pub mod token;

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::{web, HttpRequest};

use crate::consent::ConsentService;
use crate::domain::secret::constant_time_eq;
use crate::domain::{IntegrationName, Secret};
use crate::refresh::Engine;
use crate::registry::Lookup;
use error::ApiError;

/// What every handler can reach.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub consent: ConsentService,
    /// Standalone mode's key; `None` under the host or when unset on loopback.
    pub api_key: Option<Secret>,
}

impl AppState {
    /// Standalone mode: protected routes need the key as `x-functions-key` or `?code=`.
    pub fn check_key(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let Some(expected) = &self.api_key else {
            return Ok(());
        };
        let given = req
            .headers()
            .get("x-functions-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| query(req).remove("code"));
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), expected.expose().as_bytes()) => Ok(()),
            Some(_) => Err(ApiError::Unauthorized("the key is not valid")),
            None => Err(ApiError::Unauthorized(
                "this route needs a key: send it as the x-functions-key header or the code query parameter",
            )),
        }
    }

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

/// The query string as a map (last value wins; the Functions host already
/// joins repeated keys with commas).
pub fn query(req: &HttpRequest) -> HashMap<String, String> {
    form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect()
}

/// `Cache-Control: no-store` on a response builder (every API answer carries it).
pub fn no_store(mut b: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    b.insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"));
    b
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/auth/start/{integration}", web::get().to(auth::start))
        .route("/api/auth/callback", web::get().to(auth::callback))
        .route(
            "/api/token/{integration}/{connection}",
            web::get().to(token::get),
        )
        .route("/api/token", web::post().to(token::post))
        .route("/api/health", web::get().to(health::health))
        .route("/api/status", web::get().to(status::get))
        .route("/api/status", web::post().to(status::post))
        .route("/api/auth/link", web::get().to(auth::open_link))
        .route("/api/connections", web::get().to(connections::list))
        .route(
            "/api/connections/{integration}/{connection}",
            web::get().to(connections::show),
        )
        .route(
            "/api/connections/{integration}/{connection}",
            web::delete().to(connections::delete),
        )
        .route(
            "/api/connections/{integration}/{connection}/consent-link",
            web::post().to(connections::create_link),
        )
        .route("/refresh-timer", web::post().to(timer::refresh_timer))
        .default_service(web::to(error::not_found));
}
