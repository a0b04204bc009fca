//! The browser routes: `/api/auth/start/{integration}` sends the person to the
//! vendor; `/api/auth/callback` completes the consent. Failures are HTML pages
//! with the right status and a plain explanation.

use actix_web::cookie::{time::Duration as CookieDuration, Cookie, SameSite};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use time::Duration;

use super::html;
use super::{query, AppState};
use crate::domain::secret::constant_time_eq;
use crate::domain::{ConnectionId, IntegrationName, PendingAuthorization, Secret};
use crate::oauth;
use crate::refresh::now;

/// How long a started consent may take.
const PENDING_LIFETIME: Duration = Duration::minutes(10);

pub(super) fn hash(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(s.as_bytes()))
}

/// One cookie per started consent, so parallel consents in one browser work.
fn cookie_name(state_hash: &str) -> String {
    format!("ob_auth_{}", &state_hash[..16])
}

pub async fn start(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Err(e) = state.check_key(&req) {
        return actix_web::ResponseError::error_response(&e);
    }
    let raw = req.match_info().get("integration").unwrap_or_default();
    let integration_name = match IntegrationName::parse(raw) {
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
    let Some(integration) = state.engine.integration(&integration_name) else {
        return html::unknown_integration(integration_name.as_str());
    };

    begin(&state, integration, connection, None).await
}

/// Sends the person to the vendor: a fresh single-use state and PKCE pair,
/// stored server side and bound to this browser with a cookie. Shared by the
/// start route and consent links (`link_hash`).
pub(super) async fn begin(
    state: &AppState,
    integration: &crate::settings::Integration,
    connection: ConnectionId,
    link_hash: Option<String>,
) -> HttpResponse {
    let integration_name = integration.name.clone();
    let auth = oauth::authorization_request(integration, &state.redirect_uri());
    let mut binding = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut binding);
    let binding = Secret::new(URL_SAFE_NO_PAD.encode(binding));
    let state_hash = hash(auth.state.expose());
    let pending = PendingAuthorization {
        integration: integration_name.clone(),
        connection: connection.clone(),
        pkce_verifier: auth.pkce_verifier,
        binding_hash: hash(binding.expose()),
        expires_at: now() + PENDING_LIFETIME,
        link_hash,
    };
    if let Err(e) = state
        .engine
        .store()
        .insert_pending(&state_hash, &pending)
        .await
    {
        tracing::error!(integration = %integration_name, connection = %connection, error = %e, "could not store a pending authorization");
        return html::storage_unavailable(false);
    }
    tracing::info!(integration = %integration_name, connection = %connection, "consent started");
    let cookie = Cookie::build(cookie_name(&state_hash), binding.expose().to_owned())
        .path("/api/auth/callback")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(state.public_url.starts_with("https://"))
        .max_age(CookieDuration::seconds(PENDING_LIFETIME.whole_seconds()))
        .finish();
    HttpResponse::Found()
        .insert_header((header::LOCATION, auth.url.as_str()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .cookie(cookie)
        .finish()
}

pub async fn callback(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let params = query(&req);
    let state_param = params
        .get("state")
        .filter(|s| !s.is_empty())
        .map(|s| Secret::new(s.clone()));
    let state_hash = state_param.as_ref().map(|s| hash(s.expose()));

    if let Some(error) = params.get("error") {
        // The vendor sent the person back without a code (RFC 6749 §4.1.2.1).
        // Use the state up so it cannot be replayed.
        if let Some(h) = &state_hash {
            let _ = state.engine.store().take_pending(h).await;
        }
        let error = oauth::sanitize(error, 64);
        let description = params
            .get("error_description")
            .map(|d| oauth::sanitize(d, 300));
        tracing::info!(error = %error, "consent refused at the provider");
        return html::access_not_granted(
            &error,
            description.as_deref(),
            state.redirect_uri().as_str(),
        );
    }

    let (Some(state_hash), Some(code)) = (state_hash, params.get("code").filter(|c| !c.is_empty()))
    else {
        return html::callback_incomplete(state.redirect_uri().as_str());
    };
    let code = Secret::new(code.clone());
    let pending = match state.engine.store().take_pending(&state_hash).await {
        Ok(Some(p)) => p,
        Ok(None) => return html::consent_not_found(),
        Err(e) => {
            tracing::error!(error = %e, "could not read a pending authorization");
            return html::storage_unavailable(false);
        }
    };
    if pending.expires_at < now() {
        return html::consent_expired(PENDING_LIFETIME.whole_minutes());
    }
    let bound = req.cookie(&cookie_name(&state_hash)).is_some_and(|c| {
        constant_time_eq(hash(c.value()).as_bytes(), pending.binding_hash.as_bytes())
    });
    if !bound {
        tracing::warn!(integration = %pending.integration, connection = %pending.connection, "callback without the browser binding cookie");
        return html::other_browser();
    }
    let Some(integration) = state.engine.integration(&pending.integration) else {
        return html::integration_gone(pending.integration.as_str());
    };

    let tokens = match oauth::exchange_code(
        state.engine.http(),
        integration,
        &code,
        &pending.pkce_verifier,
        &state.redirect_uri(),
        state.engine.policy().upstream_timeout,
    )
    .await
    {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(integration = %pending.integration, connection = %pending.connection, error = %e, "code exchange failed");
            return html::exchange_failed(
                e.oauth_error(),
                &e.to_string(),
                state.redirect_uri().as_str(),
            );
        }
    };
    if let Some(link) = &pending.link_hash {
        match state.engine.store().consume_link(link).await {
            Ok(true) => {}
            Ok(false) => return html::consent_not_found(),
            Err(e) => {
                tracing::error!(error = %e, "could not use up a consent link");
                return html::storage_unavailable(true);
            }
        }
    }
    let captured: std::collections::BTreeMap<String, String> = integration
        .callback_metadata
        .iter()
        .filter_map(|k| Some((k.clone(), oauth::sanitize(params.get(k)?, 500))))
        .collect();
    let record = match state
        .engine
        .store_consent(integration, &pending.connection, tokens, captured)
        .await
    {
        Ok(record) => record,
        Err(e) => {
            tracing::error!(integration = %pending.integration, connection = %pending.connection, error = %e, "could not store a new grant");
            return html::storage_unavailable(true);
        }
    };
    tracing::info!(integration = %pending.integration, connection = %pending.connection, "consent completed");
    let mut resp = html::connected(
        &state.public_url,
        pending.integration.as_str(),
        pending.connection.as_str(),
        &record.scope,
    );
    let mut gone = Cookie::build(cookie_name(&state_hash), "")
        .path("/api/auth/callback")
        .finish();
    gone.make_removal();
    let _ = resp.add_cookie(&gone);
    resp
}
