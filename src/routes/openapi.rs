//! `GET /api/openapi.json` (anonymous): the OpenAPI 3.1 description of the
//! HTTP API. The document is `openapi.json` at the repository root, compiled
//! in; it holds no setting and no secret. `tests/api/openapi.rs` checks that it
//! and the served routes agree.

use actix_web::http::header;
use actix_web::HttpResponse;

/// The document, exactly as kept in the repository.
pub const DOCUMENT: &str = include_str!("../../openapi.json");

pub async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(DOCUMENT)
}
