//! The timer function `refresh-timer`: the Functions host POSTs its invocation
//! envelope to `/refresh-timer`; we run one sweep, deliver the events that are
//! due (see `events`), and answer with the invocation response (`Outputs`,
//! `Logs`, `ReturnValue`).

use actix_web::{web, HttpResponse};
use serde::Serialize;

use super::front_door::{Body, TIMER_BODY_LIMIT};
use super::AppState;
use crate::functions_host::InvocationRequest;
use crate::refresh::SweepSummary;

/// How long a timer invocation spends delivering due events after its sweep.
const EVENT_DRAIN_BUDGET: std::time::Duration = std::time::Duration::from_secs(20);
/// No delivery batch starts this long after the invocation began: a batch
/// takes at most one 10 s delivery timeout, inside the 5-minute function timeout.
const EVENT_DRAIN_UNTIL: std::time::Duration = std::time::Duration::from_secs(270);

/// The custom-handler invocation response.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct InvocationResponse {
    outputs: Empty,
    logs: Vec<String>,
    return_value: SweepResult,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
#[serde(untagged)]
enum SweepResult {
    Done(SweepSummary),
    Failed { error: &'static str },
}

pub async fn refresh_timer(
    Body(body): Body<TIMER_BODY_LIMIT>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let invocation = InvocationRequest::parse(&body);
    if invocation.timer.as_ref().is_some_and(|t| t.is_past_due) {
        tracing::info!("refresh timer is past due; sweeping now");
    }
    let started = std::time::Instant::now();
    let swept = state.engine.sweep().await;
    // The invocation keeps the instance alive: deliver what is due (events of
    // this sweep included) before answering, inside the function timeout.
    let mut logs = Vec::new();
    if let Some(events) = state.engine.transitions().events() {
        let budget = EVENT_DRAIN_UNTIL
            .saturating_sub(started.elapsed())
            .min(EVENT_DRAIN_BUDGET);
        let d = events.drain(budget).await;
        if d.delivered + d.failed > 0 {
            logs.push(format!(
                "events: {} delivered, {} failed (retried later)",
                d.delivered, d.failed
            ));
        }
    }
    match swept {
        Ok(s) => HttpResponse::Ok().json(InvocationResponse {
            outputs: Empty {},
            logs: std::iter::once(format!(
                "refresh sweep: {} refreshed, {} failed, {} need reauthorization",
                s.refreshed, s.failed, s.reauthorization_required
            ))
            .chain(logs)
            .collect(),
            return_value: SweepResult::Done(s),
        }),
        Err(e) => {
            tracing::error!(error = %e, "refresh sweep could not list connections");
            // A non-2xx answer makes the host record the invocation as failed.
            HttpResponse::ServiceUnavailable().json(InvocationResponse {
                outputs: Empty {},
                logs: vec!["refresh sweep failed: the token store is unavailable".into()],
                return_value: SweepResult::Failed {
                    error: "store_unavailable",
                },
            })
        }
    }
}
