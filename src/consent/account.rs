//! The vendor account behind a consent, and the tokens that are not kept:
//! finding the account ([`ConsentService::account_of`], a callback parameter
//! with [`callback_account`]), refusing a consent the connection's account
//! binding does not accept, and revoking tokens the broker drops (RFC 7009).

use std::collections::HashMap;

use super::{ConsentError, ConsentService};
use crate::config::{AccountConfig, Integration};
use crate::domain::account::{self as account, IdTokenError};
use crate::domain::{Account, AccountSourceKind, ConnectionId, ConnectionRecord};
use crate::oauth;

impl ConsentService {
    /// Revokes tokens the broker will not keep (RFC 7009), when the vendor has
    /// a revocation endpoint; failures are logged, never shown.
    pub(super) async fn revoke_unused(
        &self,
        integration: &Integration,
        tokens: oauth::TokenResponse,
    ) {
        let Some(url) = &integration.revocation_url else {
            return;
        };

        if let Err(e) = oauth::revoke(
            &self.http,
            integration,
            url,
            oauth::Grant {
                access_token: &tokens.access_token,
                refresh_token: tokens.refresh_token.as_ref(),
            },
            self.upstream_timeout,
        )
        .await
        {
            tracing::warn!(integration = %integration.name, error = %e, "could not revoke tokens that were not kept");
        }
    }

    /// The vendor account behind a consent's tokens: an id_token's `iss` +
    /// `sub` whenever one arrives (unless the integration opted out), else the
    /// integration's source. `Ok(None)` when there is no source or it gave
    /// nothing (logged); `Err` only for an id_token not meant for this client.
    pub(super) async fn account_of(
        &self,
        integration: &Integration,
        tokens: &oauth::TokenResponse,
        params: &HashMap<String, String>,
    ) -> Result<Option<Account>, IdTokenError> {
        if integration.account == AccountConfig::OptOut {
            return Ok(None);
        }
        if let Some(jwt) = &tokens.id_token {
            return account::from_id_token(
                jwt.expose(),
                integration.issuer.as_deref(),
                &integration.client_id,
            )
            .map(Some);
        }
        let found = match &integration.account {
            AccountConfig::Default | AccountConfig::OptOut => return Ok(None),
            AccountConfig::IdToken => None,
            AccountConfig::TokenField { .. } => tokens
                .account_field
                .clone()
                .map(|id| Account::new(id, AccountSourceKind::TokenField)),
            AccountConfig::CallbackParam { name } => callback_account(params, name),
            AccountConfig::Userinfo { url, pointer } => {
                match oauth::userinfo_account(
                    &self.http,
                    url,
                    &tokens.access_token,
                    pointer,
                    self.upstream_timeout,
                )
                .await
                {
                    Ok(id) => id.map(|id| Account::new(id, AccountSourceKind::Userinfo)),
                    Err(reason) => {
                        tracing::warn!(integration = %integration.name, reason = %reason, "the user-info request for the consent's account failed");
                        None
                    }
                }
            }
        };
        if found.is_none() {
            tracing::warn!(integration = %integration.name, "the consent's vendor account could not be determined from the integration's account source");
        }
        Ok(found)
    }

    /// A consent the connection's account binding refuses: the new tokens are
    /// revoked, `connection.account_mismatch` is emitted, the grant stays.
    pub(super) async fn refuse_account(
        &self,
        integration: &Integration,
        connection: &ConnectionId,
        tokens: oauth::TokenResponse,
        attempted: Option<Account>,
        bound: &ConnectionRecord,
    ) -> ConsentError {
        tracing::warn!(
            integration = %integration.name,
            connection = %connection,
            account = attempted.as_ref().map(|a| a.id.as_str()),
            bound_account = bound.account.as_ref().map(|a| a.id.as_str()),
            "a consent by another vendor account was refused; the connection keeps its grant and the new tokens are revoked"
        );
        self.revoke_unused(integration, tokens).await;
        self.engine
            .transitions()
            .emit_account_mismatch(
                &integration.name,
                connection,
                Some(bound.status.as_str()),
                attempted.as_ref(),
                bound.account.as_ref(),
            )
            .await;
        ConsentError::AccountMismatch {
            integration: integration.name.clone(),
            connection: connection.clone(),
            unknown: bound.account.is_none() || attempted.is_none(),
        }
    }

    /// After an allowed account change stored `record` over `previous`: the
    /// previous account's refresh token is revoked (RFC 7009). Never after a
    /// consent by the same account (or when either account is unknown): at
    /// several vendors (Google) revoking any token of a user's grant ends the
    /// app's whole authorization for that user, the new tokens included.
    pub(super) async fn revoke_replaced(
        &self,
        integration: &Integration,
        previous: &ConnectionRecord,
        record: &ConnectionRecord,
    ) {
        let (Some(before), Some(now)) = (&previous.account, &record.account) else {
            return;
        };
        if before.same_as(now) {
            return;
        }
        let Some(url) = &integration.revocation_url else {
            return;
        };
        let result = oauth::revoke(
            &self.http,
            integration,
            url,
            oauth::Grant {
                access_token: &previous.tokens.access_token,
                refresh_token: previous.tokens.refresh_token.as_ref(),
            },
            self.upstream_timeout,
        )
        .await;
        match result {
            Ok(()) => {
                tracing::info!(integration = %integration.name, connection = %record.connection, "the previous account's grant was revoked after an account change")
            }
            Err(e) => {
                tracing::warn!(integration = %integration.name, connection = %record.connection, error = %e, "could not revoke the previous account's grant after an account change")
            }
        }
    }
}

/// The account named by the callback parameter `name` (QuickBooks' `realmId`).
pub(crate) fn callback_account(params: &HashMap<String, String>, name: &str) -> Option<Account> {
    params
        .get(name)
        .and_then(|v| account::id_from_value(&serde_json::Value::String(v.clone())))
        .map(|id| Account::new(id, AccountSourceKind::CallbackParam))
}
