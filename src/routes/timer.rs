//! The timer function `refresh-timer`: the Functions host POSTs its invocation
//! envelope to `/refresh-timer`; we run one sweep and answer with the
//! invocation response (`Outputs`, `Logs`, `ReturnValue`).

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::functions_host::InvocationRequest;

pub async fn refresh_timer(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(e) = state.check_key(&req) {
        return actix_web::ResponseError::error_response(&e);
    }
    let invocation = InvocationRequest::parse(&body);
    if invocation.timer.as_ref().is_some_and(|t| t.is_past_due) {
        tracing::info!("refresh timer is past due; sweeping now");
    }
    match state.engine.sweep().await {
        Ok(s) => HttpResponse::Ok().json(json!({
            "Outputs": {},
            "Logs": [format!("refresh sweep: {} refreshed, {} failed, {} need reauthorization", s.refreshed, s.failed, s.reauthorization_required)],
            "ReturnValue": s,
        })),
        Err(e) => {
            tracing::error!(error = %e, "refresh sweep could not list connections");
            // A non-2xx answer makes the host record the invocation as failed.
            HttpResponse::ServiceUnavailable().json(json!({
                "Outputs": {},
                "Logs": ["refresh sweep failed: the token store is unavailable"],
                "ReturnValue": {"error": "store_unavailable"},
            }))
        }
    }
}
