//! The OAuth 2.0 client side: the authorization request (RFC 6749 §4.1.1 with
//! PKCE S256, RFC 7636), the code exchange (§4.1.3) and refresh (§6), with
//! vendor errors kept apart from transport and parse failures (§5.2).
//!
//! The authorization URL, state and PKCE pair come from the `oauth2` crate
//! (here). Token-endpoint calls are made with the shared reqwest client
//! rather than through `oauth2`'s typed client (`token_endpoint`), because
//! vendors bend the token response (`expires_in` as a string, form-encoded
//! bodies, errors with HTTP 200) in ways a strict typed parser turns into
//! lost grants; the answer is read leniently in `token_response`. What the
//! vendor says is cleaned of every value the broker sent (`redact`) before it
//! is kept. The calls made with a new access token right after consent are in
//! `after_consent`; the error type is in `error`.

mod after_consent;
mod error;
mod redact;
mod token_endpoint;
mod token_response;

use oauth2::{AuthUrl, ClientId, CsrfToken, PkceCodeChallenge, RedirectUrl};
use url::Url;

use crate::config::integrations::Integration;
use crate::domain::Secret;
use crate::vendor_body::BodyError;
pub use crate::vendor_body::MAX_BODY;
pub use after_consent::{post_consent, userinfo_account, PostConsentMetadata};
pub use error::{TokenError, MAX_DESCRIPTION};
pub use redact::Redactor;
pub use token_endpoint::{exchange_code, refresh, renew, revoke};
pub(crate) use token_response::{parse_token_response, Shape};
pub use token_response::{TokenResponse, MAX_ACCESS_TOKEN, MAX_REFRESH_TOKEN, MAX_SCOPE};

/// An authorization request ready to send the person to.
#[derive(Debug)]
pub struct AuthorizationRequest {
    pub url: Url,
    pub state: Secret,
    /// `None` when the integration disabled PKCE.
    pub pkce_verifier: Option<Secret>,
}

pub fn authorization_request(
    integration: &Integration,
    redirect_uri: &Url,
) -> AuthorizationRequest {
    let client = oauth2::basic::BasicClient::new(ClientId::new(integration.client_id.clone()))
        .set_auth_uri(AuthUrl::from_url(integration.authorization_url.clone()))
        .set_redirect_uri(RedirectUrl::from_url(redirect_uri.clone()));
    let mut req = client.authorize_url(CsrfToken::new_random);
    if !integration.scopes.is_empty() {
        // Joined here, not by oauth2, so vendors with comma separators work.
        req = req.add_extra_param("scope", integration.scope_string());
    }
    let mut verifier = None;
    if integration.pkce {
        let (challenge, v) = PkceCodeChallenge::new_random_sha256();
        verifier = Some(Secret::new(v.into_secret()));
        req = req.set_pkce_challenge(challenge);
    }
    for (k, v) in &integration.authorization_params {
        req = req.add_extra_param(k.as_str(), v.as_str());
    }
    let (url, state) = req.url();
    AuthorizationRequest {
        url,
        state: Secret::new(state.into_secret()),
        pkce_verifier: verifier,
    }
}

/// The tokens of a grant to revoke.
#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    pub access_token: &'a Secret,
    pub refresh_token: Option<&'a Secret>,
}

fn body_error(e: BodyError) -> TokenError {
    match e {
        BodyError::TooLarge => TokenError::InvalidResponse(format!(
            "the answer is larger than {} KiB",
            MAX_BODY / 1024
        )),
        BodyError::Transport(e) => TokenError::Transport(transport_reason(&e)),
    }
}

/// Describes a reqwest failure without its URL's query or any body.
fn transport_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        "request failed".into()
    }
}

/// Vendor-supplied text is kept short and printable before it is stored,
/// logged or shown (HTML escaping happens at rendering).
pub fn sanitize(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}
