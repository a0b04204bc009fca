//! Thin actix handlers: parse the request, make one call into the engine or
//! store, shape the answer. Paths are those the Functions host forwards
//! (`/api/...`, and `/<function-name>` for the timer).

pub mod auth;
pub mod connections;
pub mod error;
pub mod health;
pub mod html;
pub mod timer;
pub mod token;

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::{web, HttpRequest};

use crate::domain::secret::constant_time_eq;
use crate::domain::{ConnectionId, Secret};
use crate::refresh::Engine;
use error::ApiError;

/// What every handler can reach.
pub struct AppState {
    pub engine: Arc<Engine>,
    /// Standalone mode's key; `None` under the host or when unset on loopback.
    pub api_key: Option<Secret>,
    /// Base of redirect URIs and links, without a trailing slash.
    pub public_url: String,
    /// Default lifetime of consent links (`BROKER_CONSENT_LINK_TTL_SECS`).
    pub consent_link_lifetime: time::Duration,
}

impl AppState {
    pub fn redirect_uri(&self) -> url::Url {
        url::Url::parse(&format!("{}/api/auth/callback", self.public_url))
            .expect("public URL validated at start")
    }

    pub fn authorize_link(&self, integration: &str, connection: &ConnectionId) -> String {
        format!(
            "{}/api/auth/start/{integration}?connection={connection}",
            self.public_url
        )
    }

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
}

/// The query string as a map (last value wins; the Functions host already
/// joins repeated keys with commas).
pub fn query(req: &HttpRequest) -> HashMap<String, String> {
    form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect()
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
        .route("/api/auth/link", web::get().to(connections::open_link))
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
