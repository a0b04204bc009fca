//! Calls to the vendor's token endpoint (code exchange, refresh, renewal by
//! exchange) and its revocation endpoint (RFC 7009), with the client's
//! credentials as the integration wants them.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use url::Url;

use super::redact::{basic_credentials, Redactor};
use super::{
    body_error, parse_token_response, transport_reason, Grant, Shape, TokenError, TokenResponse,
};
use crate::config::integrations::{ClientAuth, Integration, TokenBody};
use crate::domain::Secret;
use crate::vendor_body::{read_capped, MAX_BODY};

pub async fn exchange_code(
    http: &reqwest::Client,
    integration: &Integration,
    code: &Secret,
    pkce_verifier: Option<&Secret>,
    redirect_uri: &Url,
    timeout: Duration,
) -> Result<TokenResponse, TokenError> {
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", "authorization_code"),
        ("code", code.expose()),
        ("redirect_uri", redirect_uri.as_str()),
    ];
    if let Some(verifier) = pkce_verifier {
        form.push(("code_verifier", verifier.expose()));
    }
    let url = &integration.token_url;
    token_request(http, integration, url, false, form, timeout).await
}

/// Refreshes a grant, at the integration's `refresh_url` when it has one, with
/// its `refresh_params`. No `scope` is sent, so the grant never widens (§6).
pub async fn refresh(
    http: &reqwest::Client,
    integration: &Integration,
    refresh_token: &Secret,
    timeout: Duration,
) -> Result<TokenResponse, TokenError> {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose()),
    ];
    for (k, v) in &integration.refresh_params {
        form.push((k.as_str(), v.as_str()));
    }
    let url = integration
        .refresh_url
        .as_ref()
        .unwrap_or(&integration.token_url);
    token_request(http, integration, url, false, form, timeout).await
}

/// Renews a grant by exchanging its current access token (`renew`, Meta's
/// `fb_exchange_token`): same answer, errors and classes as a refresh.
pub async fn renew(
    http: &reqwest::Client,
    integration: &Integration,
    renew: &crate::config::integrations::Renew,
    access_token: &Secret,
    timeout: Duration,
) -> Result<TokenResponse, TokenError> {
    let mut form = vec![
        ("grant_type", renew.grant_type.as_str()),
        (renew.token_param.as_str(), access_token.expose()),
    ];
    for (k, v) in &renew.params {
        form.push((k.as_str(), v.as_str()));
    }
    let url = renew.url.as_ref().unwrap_or(&integration.token_url);
    token_request(http, integration, url, renew.get, form, timeout).await
}

async fn token_request(
    http: &reqwest::Client,
    integration: &Integration,
    url: &Url,
    get: bool,
    mut form: Vec<(&str, &str)>,
    timeout: Duration,
) -> Result<TokenResponse, TokenError> {
    // The code, verifier, refresh token, or (renewal) the access token under
    // its parameter's name are redacted from anything the vendor says.
    let renew_param = integration.renew.as_ref().map(|r| r.token_param.as_str());
    let secrets: Vec<&str> = form
        .iter()
        .filter(|(k, _)| {
            matches!(*k, "code" | "code_verifier" | "refresh_token") || Some(*k) == renew_param
        })
        .map(|(_, v)| *v)
        .collect();
    let redactor = Redactor::for_request(integration, &secrets);
    for (k, v) in &integration.token_params {
        form.push((k.as_str(), v.as_str()));
    }
    let mut req = if get {
        http.get(url.clone())
    } else {
        http.post(url.clone())
    }
    .timeout(timeout)
    .header(reqwest::header::ACCEPT, "application/json");
    match integration.client_auth {
        ClientAuth::Basic => {
            req = req.header(reqwest::header::AUTHORIZATION, basic_auth(integration));
        }
        ClientAuth::Post => {
            form.push(("client_id", integration.client_id.as_str()));
            form.push(("client_secret", integration.client_secret.expose()));
        }
    }
    req = match integration.token_body {
        _ if get => req.query(&form),
        TokenBody::Form => req.form(&form),
        TokenBody::Json => req.json(&form.iter().copied().collect::<BTreeMap<&str, &str>>()),
    };
    let resp = req
        .send()
        .await
        .map_err(|e| TokenError::Transport(transport_reason(&e)))?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let is_form = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("application/x-www-form-urlencoded") || v.starts_with("text/plain")
        });
    let body = read_capped(resp, MAX_BODY).await.map_err(body_error)?;
    let shape = Shape {
        metadata: &integration.token_metadata,
        expires_at_field: integration.expires_at_field.as_deref(),
        account_pointer: integration.account.token_pointer(),
    };
    match parse_token_response(status, is_form, &body, &shape) {
        Err(TokenError::Server { status, .. }) => Err(TokenError::Server {
            status,
            retry_after,
        }),
        Err(e) => Err(redactor.clean_error(e)),
        ok => ok,
    }
}

/// Revokes a token at the vendor (RFC 7009). A 200 means revoked (or already
/// invalid, §2.2); anything else is an error the caller decides about.
pub async fn revoke(
    http: &reqwest::Client,
    integration: &Integration,
    url: &Url,
    grant: Grant<'_>,
    timeout: Duration,
) -> Result<(), TokenError> {
    // The refresh token when there is one: revoking it ends the whole grant (RFC 7009 §2.1).
    let (token, hint) = match grant.refresh_token {
        Some(rt) => (rt, "refresh_token"),
        None => (grant.access_token, "access_token"),
    };
    let redactor = Redactor::for_request(integration, &[token.expose()]);
    let mut form: Vec<(&str, &str)> = vec![("token", token.expose()), ("token_type_hint", hint)];
    let mut req = http.post(url.clone()).timeout(timeout);
    match integration.client_auth {
        ClientAuth::Basic => {
            req = req.header(reqwest::header::AUTHORIZATION, basic_auth(integration))
        }
        ClientAuth::Post => {
            form.push(("client_id", integration.client_id.as_str()));
            form.push(("client_secret", integration.client_secret.expose()));
        }
    }
    let resp = req
        .form(&form)
        .send()
        .await
        .map_err(|e| TokenError::Transport(transport_reason(&e)))?;
    let status = resp.status().as_u16();
    if status == 200 {
        return Ok(());
    }
    let body = read_capped(resp, MAX_BODY).await.map_err(body_error)?;
    match parse_token_response(status, false, &body, &Shape::default()) {
        Err(e) => Err(redactor.clean_error(e)),
        Ok(_) => Err(TokenError::InvalidResponse(format!("HTTP {status}"))),
    }
}

fn basic_auth(integration: &Integration) -> String {
    format!("Basic {}", STANDARD.encode(basic_credentials(integration)))
}
