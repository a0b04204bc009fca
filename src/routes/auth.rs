//! The browser routes: `/api/auth/start/{integration}` sends the person to the
//! vendor; `/api/auth/callback` completes the consent. Failures are HTML pages
//! with the right status and a plain explanation.

use actix_web::cookie::{time::Duration as CookieDuration, Cookie, SameSite};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use time::Duration;

use super::html::page;
use super::{query, AppState};
use crate::domain::secret::constant_time_eq;
use crate::domain::{ConnectionId, IntegrationName, PendingAuthorization, Secret};
use crate::oauth;
use crate::refresh::now;

/// How long a started consent may take.
const PENDING_LIFETIME: Duration = Duration::minutes(10);

fn hash(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(s.as_bytes()))
}

/// One cookie per started consent, so parallel consents in one browser work.
fn cookie_name(state_hash: &str) -> String {
    format!("ob_auth_{}", &state_hash[..16])
}

fn bad_request(msg: impl Into<String>) -> HttpResponse {
    page(
        StatusCode::BAD_REQUEST,
        "This consent link is not valid",
        &[msg.into()],
    )
}

pub async fn start(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Err(e) = state.check_key(&req) {
        return actix_web::ResponseError::error_response(&e);
    }
    let raw = req.match_info().get("integration").unwrap_or_default();
    let integration_name = match IntegrationName::parse(raw) {
        Ok(n) => n,
        Err(e) => {
            return bad_request(format!(
                "The integration name in the link is not valid: {e}."
            ))
        }
    };
    let params = query(&req);
    let connection = match ConnectionId::parse(
        params
            .get("connection")
            .map_or(ConnectionId::DEFAULT, String::as_str),
    ) {
        Ok(c) => c,
        Err(e) => return bad_request(format!("The connection parameter is not valid: {e}.")),
    };
    let Some(integration) = state.engine.integration(&integration_name) else {
        return page(
            StatusCode::NOT_FOUND,
            "Unknown integration",
            &[format!("There is no integration named \"{integration_name}\" in this broker. Check the link, or add the integration to integrations.json.")],
        );
    };

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
    };
    if let Err(e) = state
        .engine
        .store()
        .insert_pending(&state_hash, &pending)
        .await
    {
        tracing::error!(integration = %integration_name, connection = %connection, error = %e, "could not store a pending authorization");
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Please try again",
            &[
                "The broker's storage did not answer. Wait a moment and open the link again."
                    .into(),
            ],
        );
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
        let mut lines = vec![format!(
            "The provider did not grant access (error: {error})."
        )];
        if let Some(d) = params.get("error_description") {
            lines.push(format!("The provider said: {}", oauth::sanitize(d, 300)));
        }
        lines.push(if error == "access_denied" {
            "Consent was declined or cancelled. To connect, open the consent link again and approve access.".into()
        } else {
            "Open the consent link again; if this repeats, ask the vendor account's administrator.".into()
        });
        tracing::info!(error = %error, "consent refused at the provider");
        return page(StatusCode::BAD_REQUEST, "Access was not granted", &lines);
    }

    let (Some(state_hash), Some(code)) = (state_hash, params.get("code").filter(|c| !c.is_empty()))
    else {
        return bad_request("The callback is missing its code or state. Start the consent again from the broker's link.");
    };
    let code = Secret::new(code.clone());
    let pending = match state.engine.store().take_pending(&state_hash).await {
        Ok(Some(p)) => p,
        Ok(None) => return bad_request("This consent has expired or was already completed. Start the consent again from the broker's link."),
        Err(e) => {
            tracing::error!(error = %e, "could not read a pending authorization");
            return page(StatusCode::SERVICE_UNAVAILABLE, "Please try again", &["The broker's storage did not answer. Start the consent again in a moment.".into()]);
        }
    };
    if pending.expires_at < now() {
        return bad_request("This consent took longer than 10 minutes and has expired. Start the consent again from the broker's link.");
    }
    let bound = req.cookie(&cookie_name(&state_hash)).is_some_and(|c| {
        constant_time_eq(hash(c.value()).as_bytes(), pending.binding_hash.as_bytes())
    });
    if !bound {
        tracing::warn!(integration = %pending.integration, connection = %pending.connection, "callback without the browser binding cookie");
        return bad_request("This consent was started in a different browser (or cookies are blocked). Open the consent link again in this browser.");
    }
    let Some(integration) = state.engine.integration(&pending.integration) else {
        return page(
            StatusCode::NOT_FOUND,
            "Unknown integration",
            &[format!(
                "The integration \"{}\" is no longer configured in this broker.",
                pending.integration
            )],
        );
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
            let what = match e.oauth_error() {
                Some(code) => format!(
                    "The provider refused to exchange the authorization code (error: {code})."
                ),
                None => format!("The provider's token endpoint failed: {e}."),
            };
            return page(
                StatusCode::BAD_GATEWAY,
                "The connection could not be completed",
                &[what, format!("Check the client id and secret, and that the redirect URI registered at the vendor is exactly {}. Then start the consent again.", state.redirect_uri())],
            );
        }
    };
    if let Err(e) = state
        .engine
        .store_consent(integration, &pending.connection, tokens)
        .await
    {
        tracing::error!(integration = %pending.integration, connection = %pending.connection, error = %e, "could not store a new grant");
        return page(StatusCode::SERVICE_UNAVAILABLE, "Please try again", &["The broker's storage did not answer, so the grant was not saved. Start the consent again in a moment.".into()]);
    }
    tracing::info!(integration = %pending.integration, connection = %pending.connection, "consent completed");
    let mut resp = page(
        StatusCode::OK,
        "Connected",
        &[
            format!("Integration \"{}\", connection \"{}\" is connected.", pending.integration, pending.connection),
            format!("Pipelines can now get an access token from /api/token/{}/{}. You can close this window.", pending.integration, pending.connection),
        ],
    );
    let mut gone = Cookie::build(cookie_name(&state_hash), "")
        .path("/api/auth/callback")
        .finish();
    gone.make_removal();
    let _ = resp.add_cookie(&gone);
    resp
}
