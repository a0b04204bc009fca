//! The callback's side of a consent (RFC 6749 §4.1.2–4.1.3): the state and
//! the browser binding checked and used up, the issuer checked (RFC 9207), the
//! code exchanged, the vendor account checked against the connection's
//! binding, the consent link used up, and the grant stored with its metadata.

use std::collections::{BTreeMap, HashMap};

use super::{cookie_name, hash, Callback, Completed, ConsentError, ConsentService};
use crate::config::Integration;
use crate::domain::clock::now;
use crate::domain::{Account, ConnectionRecord, ConnectionStatus, PendingAuthorization, Secret};
use crate::oauth::{self, TokenResponse};
use crate::refresh::ConsentOutcome;
use crate::registry::Lookup;

/// A store failure while a consent is checked (nothing exchanged yet).
fn store_failed(e: crate::store::StoreError) -> ConsentError {
    tracing::error!(error = %e, "could not read a pending authorization");
    ConsentError::Store { grant_lost: false }
}

impl ConsentService {
    /// Completes a consent at the callback: checks the state and the browser
    /// binding, exchanges the code, uses up the consent link (if any) and
    /// stores the grant.
    pub async fn complete(&self, cb: Callback<'_>) -> Result<Completed, ConsentError> {
        let params = cb.params;
        let state_hash = params
            .get("state")
            .filter(|s| !s.is_empty())
            .map(|s| hash(Secret::new(s.clone()).expose()));

        if let Some(error) = params.get("error") {
            return Err(self.refused(&cb, state_hash.as_deref(), error).await);
        }

        let (Some(state_hash), Some(code)) =
            (state_hash, params.get("code").filter(|c| !c.is_empty()))
        else {
            return Err(ConsentError::Incomplete);
        };
        let code = Secret::new(code.clone());
        let pending = self.take_bound_pending(&cb, &state_hash).await?;
        let cookie = cookie_name(&state_hash);
        let integration = match self.engine.integration(&pending.integration) {
            Lookup::Ready(i) => i,
            _ => return Err(ConsentError::IntegrationGone(pending.integration)),
        };
        check_issuer(&integration, params.get("iss").map(String::as_str))?;
        self.check_link_usable(&pending).await?;
        let tokens = self.exchange(&integration, &code, &pending).await?;
        let (tokens, account) = self
            .accepted_account(&integration, &pending, tokens, params)
            .await?;
        let tokens = self.use_up_link(&integration, &pending, tokens).await?;
        let captured = self.metadata(&integration, &pending, &tokens, params).await;
        let missing_scopes = tokens
            .scope
            .as_deref()
            .map(|granted| missing_scopes(&integration, granted, tokens.refresh_token.is_some()));
        let record = self
            .store_grant(&integration, &pending, tokens, captured, account)
            .await?;
        Ok(Completed {
            record,
            cookie_name: cookie,
            requested_scopes: integration.scopes.clone(),
            missing_scopes,
        })
    }

    /// The vendor sent the person back without a code (RFC 6749 §4.1.2.1).
    /// Uses the state up so it cannot be replayed, but only from the browser
    /// that started the consent: someone who merely learnt the state cannot
    /// cancel it.
    async fn refused(
        &self,
        cb: &Callback<'_>,
        state_hash: Option<&str>,
        error: &str,
    ) -> ConsentError {
        let params = cb.params;
        if let Some(h) = state_hash {
            if let Ok(Some(p)) = self.store.peek_pending(h).await {
                if !bound_to_browser(cb, h, &p) {
                    tracing::warn!(integration = %p.integration, connection = %p.connection, "an error callback without the browser binding cookie; the consent stays open");
                    return ConsentError::OtherBrowser;
                }
                let _ = self.store.take_pending(h).await;
            }
        }
        let error = oauth::sanitize(error, 64);
        tracing::info!(error = %error, "consent refused at the provider");
        ConsentError::Refused {
            error,
            description: params
                .get("error_description")
                .map(|d| oauth::sanitize(d, oauth::MAX_DESCRIPTION))
                .filter(|d| !d.trim().is_empty()),
        }
    }

    /// The consent in progress under `state_hash`, used up. Looked up, its
    /// expiry and browser binding checked, and only then used up: someone who
    /// learns a state cannot cancel the consent.
    async fn take_bound_pending(
        &self,
        cb: &Callback<'_>,
        state_hash: &str,
    ) -> Result<PendingAuthorization, ConsentError> {
        let pending = match self.store.peek_pending(state_hash).await {
            Ok(Some(p)) => p,
            Ok(None) => return Err(ConsentError::NotFound),
            Err(e) => return Err(store_failed(e)),
        };
        if pending.expires_at < now() {
            return Err(ConsentError::Expired);
        }
        if !bound_to_browser(cb, state_hash, &pending) {
            tracing::warn!(integration = %pending.integration, connection = %pending.connection, "callback without the browser binding cookie");
            return Err(ConsentError::OtherBrowser);
        }
        // Single use under races: of concurrent callbacks one takes it.
        match self.store.take_pending(state_hash).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(ConsentError::NotFound),
            Err(e) => Err(store_failed(e)),
        }
    }

    /// A consent link must still be usable when its consent comes back.
    async fn check_link_usable(&self, pending: &PendingAuthorization) -> Result<(), ConsentError> {
        let Some(link) = &pending.link_hash else {
            return Ok(());
        };
        match self.store.peek_link(link).await {
            Ok(Some(l)) if l.expires_at >= now() => Ok(()),
            Ok(Some(_)) => Err(ConsentError::LinkUnusable),
            // Used up by another consent (or deleted).
            Ok(None) => Err(ConsentError::NotFound),
            Err(e) => Err(store_failed(e)),
        }
    }

    /// The code exchanged for tokens (RFC 6749 §4.1.3, with the PKCE verifier).
    async fn exchange(
        &self,
        integration: &Integration,
        code: &Secret,
        pending: &PendingAuthorization,
    ) -> Result<TokenResponse, ConsentError> {
        oauth::exchange_code(
            &self.http,
            integration,
            code,
            pending.pkce_verifier.as_ref(),
            &self.redirect_uri,
            self.upstream_timeout,
        )
        .await
        .map_err(|e| {
            tracing::warn!(integration = %pending.integration, connection = %pending.connection, error = %e, "code exchange failed");
            ConsentError::Exchange(e)
        })
    }

    /// The consent's vendor account, once the connection's account binding
    /// accepts it; otherwise the tokens are revoked. Checked before the link
    /// is used up: a refused consent leaves it usable for the account owner it
    /// was meant for.
    async fn accepted_account(
        &self,
        integration: &Integration,
        pending: &PendingAuthorization,
        tokens: TokenResponse,
        params: &HashMap<String, String>,
    ) -> Result<(TokenResponse, Option<Account>), ConsentError> {
        let account = match self.account_of(integration, &tokens, params).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(integration = %pending.integration, connection = %pending.connection, error = %e, "the token response's id_token cannot be accepted; revoking this consent's tokens");
                self.revoke_unused(integration, tokens).await;
                return Err(ConsentError::AccountUnverifiable(e));
            }
        };
        match self
            .engine
            .check_consent_account(
                &pending.integration,
                &pending.connection,
                account.as_ref(),
                pending.allow_account_change,
            )
            .await
        {
            Ok(Ok(())) => Ok((tokens, account)),
            Ok(Err(bound)) => Err(self
                .refuse_account(integration, &pending.connection, tokens, account, &bound)
                .await),
            Err(e) => Err(store_failed(e)),
        }
    }

    /// Uses up the consent's link (if any); when that fails the tokens are
    /// revoked, not just dropped.
    async fn use_up_link(
        &self,
        integration: &Integration,
        pending: &PendingAuthorization,
        tokens: TokenResponse,
    ) -> Result<TokenResponse, ConsentError> {
        let Some(link) = &pending.link_hash else {
            return Ok(tokens);
        };
        match self.store.consume_link(link).await {
            Ok(true) => Ok(tokens),
            Ok(false) => {
                // Another browser completed a consent through this link first:
                // these tokens are not kept, so they are revoked, not just dropped.
                tracing::warn!(integration = %pending.integration, connection = %pending.connection, "a consent link was used up by another consent; revoking this consent's tokens");
                self.revoke_unused(integration, tokens).await;
                Err(ConsentError::NotFound)
            }
            Err(e) => {
                tracing::error!(error = %e, "could not use up a consent link");
                self.revoke_unused(integration, tokens).await;
                Err(ConsentError::Store { grant_lost: true })
            }
        }
    }

    /// The connection's metadata: the callback parameters the integration
    /// names, then what its post-consent call finds.
    async fn metadata(
        &self,
        integration: &Integration,
        pending: &PendingAuthorization,
        tokens: &TokenResponse,
        params: &HashMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut captured: BTreeMap<String, String> = integration
            .callback_metadata
            .iter()
            .filter_map(|k| Some((k.clone(), oauth::sanitize(params.get(k)?, 500))))
            .collect();
        if integration.post_consent.is_some() {
            // The grant is kept whatever this call gives: losing it would be worse
            // than missing metadata (a new consent fetches it again).
            match oauth::post_consent(
                &self.http,
                integration,
                &tokens.access_token,
                self.upstream_timeout,
            )
            .await
            {
                Ok(found) => captured.extend(found),
                Err(reason) => {
                    tracing::warn!(integration = %pending.integration, connection = %pending.connection, reason = %reason, "the post-consent metadata call failed; the grant is stored without that metadata")
                }
            }
        }
        captured
    }

    /// Stores the grant (unless the write finds the connection bound to another
    /// account meanwhile: then the tokens are revoked), then revokes the
    /// previous account's grant after an account change and emits
    /// `connection.no_refresh_token` when due.
    async fn store_grant(
        &self,
        integration: &Integration,
        pending: &PendingAuthorization,
        tokens: TokenResponse,
        captured: BTreeMap<String, String>,
        account: Option<Account>,
    ) -> Result<ConnectionRecord, ConsentError> {
        // Kept for a refusal found only at the write (the row changed meanwhile).
        let unkept = unkept(&tokens);
        let outcome = self
            .engine
            .store_consent(
                integration,
                &pending.connection,
                tokens,
                captured,
                account.clone(),
                pending.allow_account_change,
            )
            .await
            .map_err(|e| {
                tracing::error!(integration = %pending.integration, connection = %pending.connection, error = %e, "could not store a new grant");
                ConsentError::Store { grant_lost: true }
            })?;
        let (record, replaced) = match outcome {
            ConsentOutcome::Stored { record, replaced } => (record, replaced),
            ConsentOutcome::Refused { bound } => {
                return Err(self
                    .refuse_account(integration, &pending.connection, unkept, account, &bound)
                    .await)
            }
        };
        tracing::info!(
            integration = %pending.integration,
            connection = %pending.connection,
            status = record.status.as_str(),
            account = record.account.as_ref().map(|a| a.id.as_str()),
            "consent completed"
        );
        if let Some(previous) = &replaced {
            self.revoke_replaced(integration, previous, &record).await;
        }
        if record.status == ConnectionStatus::NoRefreshToken {
            self.emit_no_refresh_token(&record).await;
        }
        Ok(record)
    }

    /// The `connection.no_refresh_token` event: a consent returned no refresh
    /// token for an integration that expects one (a log line with
    /// `"event": "connection.no_refresh_token"`, and a webhook; see `events`).
    async fn emit_no_refresh_token(&self, record: &ConnectionRecord) {
        self.engine
            .transitions()
            .emit_connection_event(
                crate::domain::EventType::ConnectionNoRefreshToken,
                record,
                record.status.as_str(),
            )
            .await;
    }
}

/// The tokens to revoke should the grant be refused at the write.
fn unkept(tokens: &TokenResponse) -> TokenResponse {
    TokenResponse {
        access_token: tokens.access_token.clone(),
        refresh_token: tokens.refresh_token.clone(),
        token_type: String::new(),
        expires_in: None,
        expires_at: None,
        scope: None,
        metadata: BTreeMap::new(),
        id_token: None,
        account_field: None,
    }
}

/// Requested scopes the vendor did not grant (`granted` as the vendor sent it).
fn missing_scopes(
    integration: &Integration,
    granted: &str,
    got_refresh_token: bool,
) -> Vec<String> {
    let granted = crate::domain::scope::normalize(granted);
    let granted: Vec<&str> = granted.split_whitespace().collect();
    integration
        .scopes
        .iter()
        .filter(|s| !granted.contains(&s.as_str()))
        .filter(|s| {
            !(got_refresh_token
                && (integration.refresh_token_scopes.contains(s) || s.as_str() == "offline_access"))
        })
        .cloned()
        .collect()
}

/// Whether the callback came to the browser that started the consent (its
/// binding cookie hashes to the stored binding).
fn bound_to_browser(cb: &Callback<'_>, state_hash: &str, pending: &PendingAuthorization) -> bool {
    (cb.cookie)(&cookie_name(state_hash)).is_some_and(|value| {
        crate::domain::secret::constant_time_eq(
            hash(&value).as_bytes(),
            pending.binding_hash.as_bytes(),
        )
    })
}

/// RFC 9207 §2.4: when the integration knows its issuer, a callback's `iss`
/// must equal it exactly; when the server always sends `iss`, it must be there.
fn check_issuer(integration: &Integration, iss: Option<&str>) -> Result<(), ConsentError> {
    match (&integration.issuer, iss) {
        (Some(expected), Some(got)) if expected == got => Ok(()),
        (Some(_), Some(_)) => {
            tracing::warn!(integration = %integration.name, "the callback's iss is not the integration's issuer; no code exchange (RFC 9207)");
            Err(ConsentError::IssuerMismatch)
        }
        (_, None) if integration.require_iss => {
            tracing::warn!(integration = %integration.name, "the callback lacks iss, which this issuer always sends; no code exchange (RFC 9207)");
            Err(ConsentError::IssuerMismatch)
        }
        _ => Ok(()),
    }
}
