//! A completed consent's grant into the store: whether the vendor account may
//! replace the connection's grant, decided and written in one conditional step.

use std::collections::BTreeMap;

use super::Engine;
use crate::config::Integration;
use crate::domain::grant::{consent_may_replace, GRANT_ENDS_AT};
use crate::domain::scope;
use crate::domain::{
    Account, ConnectionId, ConnectionRecord, ConnectionStatus, IntegrationName, TokenSet,
};
use crate::oauth::TokenResponse;
use crate::store::StoreError;

/// What became of a completed consent's grant.
#[derive(Debug)]
pub enum ConsentOutcome {
    /// Stored; `replaced` is the grant it replaced, if any.
    Stored {
        record: ConnectionRecord,
        replaced: Option<Box<ConnectionRecord>>,
    },
    /// Not stored: the connection's grant (`bound`, unchanged) belongs to
    /// another vendor account, or has none and is active.
    Refused { bound: ConnectionRecord },
}

impl Engine {
    /// Whether a consent by `account` may replace the connection's grant now:
    /// `Err(bound)` (the account the connection is bound to, if any, and its
    /// status) when it may not. Checked before a consent link is used up, and
    /// again, conditionally, when the grant is stored.
    pub async fn check_consent_account(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
        account: Option<&Account>,
        allow_account_change: bool,
    ) -> Result<Result<(), ConnectionRecord>, StoreError> {
        Ok(match self.store.get(integration, connection).await? {
            Some(p) if !consent_may_replace(&p.value, account, allow_account_change) => {
                Err(p.value)
            }
            _ => Ok(()),
        })
    }
    /// Stores the grant of a completed consent, unless the connection's grant
    /// belongs to another vendor account (see [`consent_may_replace`]): the
    /// decision and the write are one conditional step (the row's version), so
    /// a change between them is decided again on a fresh read.
    pub async fn store_consent(
        &self,
        integration: &Integration,
        connection: &ConnectionId,
        resp: TokenResponse,
        mut metadata: BTreeMap<String, String>,
        account: Option<Account>,
        allow_account_change: bool,
    ) -> Result<ConsentOutcome, StoreError> {
        metadata.extend(resp.metadata);
        let scope = resp
            .scope
            .map(|s| scope::normalize(&s))
            .unwrap_or_else(|| scope::join(&integration.scopes));
        let tokens = TokenSet {
            access_token: resp.access_token,
            refresh_token: resp.refresh_token,
        };
        for _ in 0..8 {
            let now = self.clock.now();
            let previous = self.store.get(&integration.name, connection).await?;
            if let Some(p) = &previous {
                if !consent_may_replace(&p.value, account.as_ref(), allow_account_change) {
                    return Ok(ConsentOutcome::Refused {
                        bound: p.value.clone(),
                    });
                }
            }
            let expires_at =
                now.saturating_add(integration.lifetime_at(resp.expires_in, resp.expires_at, now));
            let mut record_metadata = metadata.clone();
            if let Some(max) = integration.refresh_token_max {
                // The vendor's clock for the grant starts now, whatever an earlier grant said.
                record_metadata.insert(
                    GRANT_ENDS_AT.into(),
                    crate::domain::clock::rfc3339(now.saturating_add(max)),
                );
            }
            let mut record = ConnectionRecord::new_grant(
                integration.name.clone(),
                connection.clone(),
                tokens.clone(),
                resp.token_type.clone(),
                scope.clone(),
                expires_at,
                now,
            );
            record.created_at = previous.as_ref().map_or(now, |p| p.value.created_at);
            record.metadata = record_metadata;
            record.account = account.clone();
            // A grant renewed by exchange (`renew`) needs no refresh token.
            if record.tokens.refresh_token.is_none()
                && integration.expects_refresh_token
                && integration.renew.is_none()
            {
                record.status = ConnectionStatus::NoRefreshToken;
            }
            let written = match &previous {
                None => self.store.upsert(&record).await,
                Some(p) => self.store.replace(&record, &p.version).await,
            };
            match written {
                Ok(_) => {}
                // Changed or deleted since the read (a refresh, another consent): decide again.
                Err(StoreError::Conflict | StoreError::NotFound) => continue,
                Err(e) => return Err(e),
            }
            let previous = previous.map(|p| p.value);
            self.notify.on_consent(previous.as_ref(), &record).await;
            return Ok(ConsentOutcome::Stored {
                record,
                replaced: previous.map(Box::new),
            });
        }
        Err(StoreError::Conflict)
    }
}
