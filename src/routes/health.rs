//! `GET /api/health`: anonymous and cheap; 200 when the store answers, 503
//! otherwise. Integrations still waiting for their issuer's metadata are
//! listed (`integrations_unavailable`) without changing the status: the
//! broker serves every other integration meanwhile.

use actix_web::{web, HttpResponse};
use serde::Serialize;

use super::{no_store, AppState};

#[derive(Serialize)]
struct Health {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    integrations_unavailable: Vec<Unavailable>,
}

#[derive(Serialize)]
struct Unavailable {
    integration: String,
    reason: String,
}

pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let integrations_unavailable = state
        .connections
        .unavailable_integrations()
        .into_iter()
        .map(|(name, reason)| Unavailable {
            integration: name.as_str().to_owned(),
            reason,
        })
        .collect();
    match state.connections.ping().await {
        Ok(()) => no_store(HttpResponse::Ok()).json(Health {
            status: "ok",
            error: None,
            integrations_unavailable,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "health check: store unavailable");
            no_store(HttpResponse::ServiceUnavailable()).json(Health {
                status: "unavailable",
                error: Some("store_unavailable"),
                integrations_unavailable,
            })
        }
    }
}
