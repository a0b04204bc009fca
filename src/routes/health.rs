//! `GET /api/health`: anonymous; 200 when the store answers, 503 otherwise.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;

pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    match state.engine.store().ping().await {
        Ok(()) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(json!({"status": "ok"})),
        Err(e) => {
            tracing::warn!(error = %e, "health check: store unavailable");
            HttpResponse::ServiceUnavailable()
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .json(json!({"status": "unavailable", "error": "store_unavailable"}))
        }
    }
}
