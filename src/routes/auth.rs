//! The browser routes: `/api/auth/start/{integration}` and `/api/auth/link`
//! send the person to the vendor; `/api/auth/callback` completes the consent.
//! Each makes one call into the [`ConsentService`](crate::consent) and turns
//! its answer into a redirect or an HTML page with the right status.

use actix_web::cookie::{time::Duration as CookieDuration, Cookie, SameSite};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::html;
use super::{query, AppState};
use crate::consent::{Callback, ConsentError, Started, PENDING_LIFETIME};
use crate::domain::{ConnectionId, ConnectionStatus, IntegrationName};
use crate::oauth::TokenError;
use time::format_description::well_known::Rfc3339;

/// `GET /api/auth/start/{integration}?connection=<id>` (protected).
pub async fn start(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(moved) = to_public_host(&req, &state) {
        return moved;
    }
    let raw = req.match_info().get("integration").unwrap_or_default();
    let integration = match IntegrationName::parse(raw) {
        Ok(n) => n,
        Err(e) => return html::invalid_integration_name(raw, e),
    };
    let params = query(&req);
    let raw_connection = params
        .get("connection")
        .map_or(ConnectionId::DEFAULT, String::as_str);
    let connection = match ConnectionId::parse(raw_connection) {
        Ok(c) => c,
        Err(e) => return html::invalid_connection(raw_connection, e),
    };
    let allow_account_change = match params.get("allow_account_change").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return html::invalid_parameter("allow_account_change", "it must be true or false")
        }
    };
    match state
        .consent
        .begin(&integration, connection, allow_account_change)
        .await
    {
        Ok(started) => {
            note_host(&req, &state, &started).await;
            redirect(&state, started)
        }
        Err(e) => page(&state, e),
    }
}

/// The request's `host:port` (lower case; the public URL's default port when the
/// `Host` header has none).
fn request_authority(req: &HttpRequest, state: &AppState) -> Option<String> {
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    let authority: actix_web::http::uri::Authority = host.parse().ok()?;
    let port = authority.port_u16().or_else(|| {
        url::Url::parse(state.consent.public_base())
            .ok()?
            .port_or_known_default()
    })?;
    Some(format!("{}:{port}", authority.host().to_ascii_lowercase()))
}

/// Standalone on loopback: a consent started at another name of this broker than
/// the public URL's (`localhost` for `127.0.0.1`, say) is sent to the public URL first, with
/// the same path and query, before any cookie is set, so that the binding cookie
/// is set on the host the vendor sends the browser back to.
fn to_public_host(req: &HttpRequest, state: &AppState) -> Option<HttpResponse> {
    let standalone = req
        .app_data::<web::Data<crate::routes::front_door::FrontDoor>>()
        .is_some_and(|d| d.is_standalone());
    // Only when the public URL is itself a loopback name: behind a TLS proxy (a
    // public URL elsewhere) a request at a loopback name is what a proxy that
    // rewrites `Host` sends (nginx's default), and a redirect would loop. Other
    // names than these two are refused by the front door (421).
    let public_is_loopback = url::Url::parse(state.consent.public_base())
        .is_ok_and(|u| crate::config::integrations::is_loopback(&u));
    if !standalone || !public_is_loopback {
        return None;
    }
    let here = request_authority(req, state)?;
    if here == state.consent.public_authority() {
        return None;
    }
    let target = format!(
        "{}{}",
        state.consent.public_base(),
        req.uri().path_and_query().map_or("", |pq| pq.as_str())
    );
    Some(
        HttpResponse::Found()
            .insert_header((header::LOCATION, target))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::REFERRER_POLICY, "no-referrer"))
            .finish(),
    )
}

/// Under the Functions host a consent may start on another host than the public
/// URL's: noted, so that a missing cookie at the callback can be explained.
async fn note_host(req: &HttpRequest, state: &AppState, started: &Started) {
    if let Some(here) = request_authority(req, state) {
        if here != state.consent.public_authority() {
            state
                .consent
                .note_start_host(&started.state_hash, &here)
                .await;
        }
    }
}

/// `GET /api/auth/link?t=<token>` (anonymous): opens a consent link.
pub async fn open_link(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(moved) = to_public_host(&req, &state) {
        return moved;
    }
    let token = query(&req).remove("t").unwrap_or_default();
    match state.consent.open_link(&token).await {
        Ok(started) => {
            note_host(&req, &state, &started).await;
            redirect(&state, started)
        }
        Err(e) => page(&state, e),
    }
}

/// `GET /api/auth/callback` (anonymous; the state and the binding cookie authenticate it).
pub async fn callback(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let params = query(&req);
    let cookie = |name: &str| req.cookie(name).map(|c| c.value().to_owned());
    match state
        .consent
        .complete(Callback {
            params: &params,
            cookie: &cookie,
        })
        .await
    {
        Ok(done) => {
            let r = &done.record;
            let expires_at = r.expires_at.format(&Rfc3339).unwrap_or_default();
            let integration = state.integration(&r.integration).ok();
            // The scopes that were asked for to get a refresh token.
            let offline_requested: Vec<String> = integration
                .as_ref()
                .map(|i| {
                    i.scopes
                        .iter()
                        .filter(|s| i.refresh_token_scopes.contains(s) || *s == "offline_access")
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let no_refresh_token =
                (r.status == ConnectionStatus::NoRefreshToken).then(|| html::NoRefreshToken {
                    expires_at: &expires_at,
                    provider: integration.as_ref().and_then(|i| i.provider.as_deref()),
                    offline_requested: &offline_requested,
                });
            let mut resp = html::connected_grant(
                state.consent.public_base(),
                &html::Granted {
                    integration: r.integration.as_str(),
                    connection: r.connection.as_str(),
                    scope: &r.scope,
                    requested: &done.requested_scopes,
                    missing_scopes: done.missing_scopes.as_deref(),
                    no_refresh_token,
                },
            );
            let mut gone = Cookie::build(done.cookie_name, "")
                .path("/api/auth/callback")
                .finish();
            gone.make_removal();
            let _ = resp.add_cookie(&gone);
            resp
        }
        Err(ConsentError::OtherBrowser) => {
            let started_on = match params.get("state") {
                Some(s) => state.consent.take_start_host(s).await,
                None => None,
            };
            let ended_on = request_authority(&req, &state);
            match (started_on, ended_on) {
                (Some(a), Some(b)) if a != b => html::other_browser(Some((&a, &b))),
                _ => html::other_browser(None),
            }
        }
        Err(e) => page(&state, e),
    }
}

/// Sends the browser to the vendor with its binding cookie.
fn redirect(state: &AppState, started: Started) -> HttpResponse {
    let cookie = Cookie::build(
        started.cookie_name,
        started.cookie_value.expose().to_owned(),
    )
    .path("/api/auth/callback")
    .http_only(true)
    .same_site(SameSite::Lax)
    .secure(state.consent.is_https())
    .max_age(CookieDuration::seconds(
        started.cookie_lifetime.whole_seconds(),
    ))
    .finish();
    HttpResponse::Found()
        .insert_header((header::LOCATION, started.authorization_url.as_str()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .cookie(cookie)
        .finish()
}

/// The page for a consent that did not go through.
fn page(state: &AppState, e: ConsentError) -> HttpResponse {
    let redirect_uri = state.consent.redirect_uri().as_str();
    match e {
        ConsentError::UnknownIntegration(name) => html::unknown_integration(name.as_str()),
        ConsentError::IntegrationUnavailable { name, .. } => {
            html::integration_unavailable(name.as_str())
        }
        ConsentError::IntegrationGone(name) => html::integration_gone(name.as_str()),
        ConsentError::Refused { error, description } => {
            html::access_not_granted(&error, description.as_deref(), redirect_uri)
        }
        ConsentError::Incomplete => html::callback_incomplete(redirect_uri),
        ConsentError::NotFound => html::consent_not_found(),
        ConsentError::Expired => html::consent_expired(PENDING_LIFETIME.whole_minutes()),
        ConsentError::OtherBrowser => html::other_browser(None),
        ConsentError::IssuerMismatch => html::issuer_mismatch(),
        ConsentError::LinkUnusable => html::link_unusable(),
        ConsentError::AccountMismatch {
            integration,
            connection,
            unknown,
        } => html::account_mismatch(integration.as_str(), connection.as_str(), unknown),
        ConsentError::AccountUnverifiable(e) => html::account_unverifiable(&e.to_string()),
        // The vendor's words (already stripped of what the broker sent, and cut
        // short) are shown apart from the broker's, labelled as the vendor's.
        ConsentError::Exchange(TokenError::Rejected {
            error, description, ..
        }) => html::exchange_failed(
            Some(error.as_str()),
            description.as_deref(),
            None,
            redirect_uri,
        ),
        ConsentError::Exchange(err) => {
            html::exchange_failed(None, None, Some(&err.to_string()), redirect_uri)
        }
        ConsentError::Store { grant_lost } => html::storage_unavailable(grant_lost),
    }
}
