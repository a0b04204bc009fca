//! Pending authorizations (a started consent: its sealed PKCE verifier and
//! what the callback trusts) and consent links, through the sealing [`Store`].
//! Both live in the backends' pending rows; a link's row key is `link-<hash>`.

use time::OffsetDateTime;

use super::{millis, BoxFuture, Store, StoreError};
use crate::domain::{ConnectionId, IntegrationName, PendingAuthorization, Secret};

/// A pending authorization as stored, keyed by the SHA-256 of its `state`.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingRow {
    pub state_hash: String,
    pub integration: String,
    pub connection: String,
    pub key_id: String,
    pub sealed_verifier: String,
    pub binding_hash: String,
    pub expires_at: OffsetDateTime,
    /// The consent link this authorization was started from, if any.
    pub link_hash: Option<String>,
}

/// Pending rows: started consents and consent links, each used up at most once.
pub trait PendingRows: Send + Sync + 'static {
    /// Stores a pending authorization (`Conflict` if the state hash exists).
    fn insert_pending<'a>(&'a self, row: &'a PendingRow) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Reads and deletes a pending authorization atomically: of concurrent
    /// callers at most one gets `Some`.
    fn take_pending<'a>(
        &'a self,
        state_hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<PendingRow>, StoreError>>;
    /// Deletes pending authorizations that expired before `before`; returns how many.
    fn purge_pending(&self, before: OffsetDateTime) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// Reads a pending row without using it up (`Ok(None)` when absent).
    fn peek_pending<'a>(
        &'a self,
        state_hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<PendingRow>, StoreError>>;
    /// The pending authorizations started from one consent link.
    fn pending_of_link<'a>(
        &'a self,
        link_hash: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PendingRow>, StoreError>>;
    /// Every pending row (consent links and consents in progress) of one
    /// connection, following continuations.
    fn pending_of_connection<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PendingRow>, StoreError>>;
}

/// A consent link an admin can send to an account owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentLink {
    pub link_hash: String,
    pub integration: IntegrationName,
    pub connection: ConnectionId,
    pub expires_at: OffsetDateTime,
    /// `None` for links created before links recorded it.
    pub created_at: Option<OffsetDateTime>,
    /// A consent through it may bind the connection to another vendor account.
    pub allow_account_change: bool,
}

/// What a link seals (an empty plaintext for links created before this was
/// recorded): authenticated with the link's fields, not secret.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct LinkFacts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_at: Option<i64>,
    #[serde(default)]
    allow_account_change: bool,
}

/// What a pending authorization seals when the consent may change accounts
/// (otherwise only the verifier, as before: a verifier never starts with `{`).
#[derive(serde::Serialize, serde::Deserialize)]
struct PendingFacts {
    v: String,
    allow_account_change: bool,
}

fn link_key(link_hash: &str) -> String {
    format!("link-{link_hash}")
}

/// A pending authorization's verifier is bound to everything the callback trusts.
pub(crate) fn aad_pending(r: &PendingRow) -> Vec<u8> {
    serde_json::to_vec(&(
        "oauth-broker/v2/pending",
        &r.state_hash,
        &r.integration,
        &r.connection,
        &r.binding_hash,
        &r.link_hash,
        millis(r.expires_at),
    ))
    .expect("serializing strings and numbers cannot fail")
}

/// A consent link seals nothing but proves its fields with the key (an empty
/// plaintext under this associated data).
pub(crate) fn aad_link(r: &PendingRow) -> Vec<u8> {
    serde_json::to_vec(&(
        "oauth-broker/v2/link",
        &r.state_hash,
        &r.integration,
        &r.connection,
        millis(r.expires_at),
    ))
    .expect("serializing strings and numbers cannot fail")
}

impl Store {
    pub async fn insert_pending(
        &self,
        state_hash: &str,
        p: &PendingAuthorization,
    ) -> Result<(), StoreError> {
        self.ready().await?;
        let mut row = PendingRow {
            state_hash: state_hash.to_owned(),
            integration: p.integration.as_str().to_owned(),
            connection: p.connection.as_str().to_owned(),
            key_id: String::new(),
            sealed_verifier: String::new(),
            binding_hash: p.binding_hash.clone(),
            expires_at: crate::domain::clock::to_millis(p.expires_at),
            link_hash: p.link_hash.clone(),
        };
        let verifier = p.pkce_verifier.as_ref().map_or("", |v| v.expose());
        let plain = if p.allow_account_change {
            serde_json::to_vec(&PendingFacts {
                v: verifier.to_owned(),
                allow_account_change: true,
            })
            .expect("strings serialize")
        } else {
            verifier.as_bytes().to_vec()
        };
        (row.key_id, row.sealed_verifier) = self.seal_v2(&plain, &aad_pending(&row));
        self.rows.pending.insert_pending(&row).await
    }

    pub async fn take_pending(
        &self,
        state_hash: &str,
    ) -> Result<Option<PendingAuthorization>, StoreError> {
        self.ready().await?;
        let Some(row) = self.rows.pending.take_pending(state_hash).await? else {
            return Ok(None);
        };
        self.open_pending(row).map(Some)
    }

    /// Reads a pending authorization without using it up.
    pub async fn peek_pending(
        &self,
        state_hash: &str,
    ) -> Result<Option<PendingAuthorization>, StoreError> {
        self.ready().await?;
        match self.rows.pending.peek_pending(state_hash).await? {
            Some(row) => self.open_pending(row).map(Some),
            None => Ok(None),
        }
    }

    /// The state hashes and expiry of the pending authorizations started from a consent link.
    pub async fn pending_of_link(
        &self,
        link_hash: &str,
    ) -> Result<Vec<(String, OffsetDateTime)>, StoreError> {
        self.ready().await?;
        Ok(self
            .rows
            .pending
            .pending_of_link(link_hash)
            .await?
            .into_iter()
            .map(|r| (r.state_hash, r.expires_at))
            .collect())
    }

    /// Deletes a pending authorization, whatever it holds.
    pub async fn discard_pending(&self, state_hash: &str) -> Result<(), StoreError> {
        self.ready().await?;
        self.rows.pending.take_pending(state_hash).await.map(|_| ())
    }

    fn open_pending(&self, row: PendingRow) -> Result<PendingAuthorization, StoreError> {
        let verifier = self
            .open_v2(&row.key_id, &row.sealed_verifier, &aad_pending(&row))
            .map_err(|e| {
                StoreError::Corrupt(format!(
                    "pending authorization for {}/{}: {e}",
                    row.integration, row.connection
                ))
            })?;
        let (verifier, allow_account_change) = if verifier.starts_with(b"{") {
            let f: PendingFacts = serde_json::from_slice(&verifier)
                .map_err(|_| StoreError::Corrupt("pending authorization facts".into()))?;
            (f.v, f.allow_account_change)
        } else {
            (
                String::from_utf8(verifier).map_err(|_| StoreError::Corrupt("verifier".into()))?,
                false,
            )
        };
        Ok(PendingAuthorization {
            integration: IntegrationName::parse(&row.integration)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            connection: ConnectionId::parse(&row.connection)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            // An empty sealed verifier is a flow without PKCE.
            pkce_verifier: Some(verifier).filter(|v| !v.is_empty()).map(Secret::new),
            allow_account_change,
            binding_hash: row.binding_hash,
            expires_at: row.expires_at,
            link_hash: row.link_hash,
        })
    }

    /// Records a consent link (keyed by the hash of its nonce) until it expires or is used.
    pub async fn insert_link(&self, link: &ConsentLink) -> Result<(), StoreError> {
        self.ready().await?;
        let mut row = PendingRow {
            state_hash: link_key(&link.link_hash),
            integration: link.integration.as_str().to_owned(),
            connection: link.connection.as_str().to_owned(),
            key_id: String::new(),
            sealed_verifier: String::new(),
            binding_hash: String::new(),
            expires_at: crate::domain::clock::to_millis(link.expires_at),
            link_hash: None,
        };
        let facts = LinkFacts {
            created_at: link.created_at.map(millis).map(|m| m as i64),
            allow_account_change: link.allow_account_change,
        };
        let plain = serde_json::to_vec(&facts).expect("numbers serialize");
        (row.key_id, row.sealed_verifier) = self.seal_v2(&plain, &aad_link(&row));
        self.rows.pending.insert_pending(&row).await
    }

    fn open_link(&self, link_hash: &str, r: PendingRow) -> Result<ConsentLink, StoreError> {
        let corrupt = |what: String| {
            StoreError::Corrupt(format!(
                "consent link for {}/{}: {what}",
                r.integration, r.connection
            ))
        };
        let plain = self
            .open_v2(&r.key_id, &r.sealed_verifier, &aad_link(&r))
            .map_err(|e| corrupt(e.to_string()))?;
        let facts: LinkFacts = if plain.is_empty() {
            LinkFacts::default()
        } else {
            serde_json::from_slice(&plain).map_err(|_| corrupt("link facts".into()))?
        };
        Ok(ConsentLink {
            created_at: facts.created_at.and_then(|m| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(m) * 1_000_000).ok()
            }),
            allow_account_change: facts.allow_account_change,
            link_hash: link_hash.to_owned(),
            integration: IntegrationName::parse(&r.integration)
                .map_err(|e| corrupt(e.to_string()))?,
            connection: ConnectionId::parse(&r.connection).map_err(|e| corrupt(e.to_string()))?,
            expires_at: r.expires_at,
        })
    }

    /// The consent link, if it exists and has not been used up.
    pub async fn peek_link(&self, link_hash: &str) -> Result<Option<ConsentLink>, StoreError> {
        self.ready().await?;
        self.rows
            .pending
            .peek_pending(&link_key(link_hash))
            .await?
            .map(|r| self.open_link(link_hash, r))
            .transpose()
    }

    /// Uses a consent link up; `Ok(false)` if it was already used (or never existed).
    pub async fn consume_link(&self, link_hash: &str) -> Result<bool, StoreError> {
        self.ready().await?;
        Ok(self
            .rows
            .pending
            .take_pending(&link_key(link_hash))
            .await?
            .is_some())
    }

    /// The consent links of a connection that are not used up, each with the
    /// number of consents in progress through it (unexpired ones).
    pub async fn links_of(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
    ) -> Result<Vec<(ConsentLink, usize)>, StoreError> {
        self.ready().await?;
        let rows = self
            .rows
            .pending
            .pending_of_connection(integration.as_str(), connection.as_str())
            .await?;
        let at = crate::domain::clock::now();
        let mut links = Vec::new();
        for r in &rows {
            let Some(hash) = r.state_hash.strip_prefix("link-") else {
                continue;
            };
            match self.open_link(hash, r.clone()) {
                Ok(link) => {
                    let in_progress = rows
                        .iter()
                        .filter(|p| p.link_hash.as_deref() == Some(hash) && p.expires_at >= at)
                        .count();
                    links.push((link, in_progress));
                }
                Err(e) => {
                    tracing::error!(error = %e, "skipping a consent link that cannot be read")
                }
            }
        }
        links.sort_by_key(|(l, _)| l.expires_at);
        Ok(links)
    }

    /// Ends one consent link (and the consents in progress through it).
    /// `Ok(false)` when it is not there (used up, ended, or never existed).
    pub async fn end_link(&self, link_hash: &str) -> Result<bool, StoreError> {
        self.ready().await?;
        let taken = self
            .rows
            .pending
            .take_pending(&link_key(link_hash))
            .await?
            .is_some();
        for p in self.rows.pending.pending_of_link(link_hash).await? {
            self.rows.pending.take_pending(&p.state_hash).await?;
        }
        Ok(taken)
    }

    /// Ends every consent link and consent in progress of a connection; returns how many.
    pub(super) async fn end_pending_of(
        &self,
        integration: &IntegrationName,
        connection: &ConnectionId,
    ) -> Result<u64, StoreError> {
        let rows = self
            .rows
            .pending
            .pending_of_connection(integration.as_str(), connection.as_str())
            .await?;
        let mut ended = 0;
        for r in rows {
            if self
                .rows
                .pending
                .take_pending(&r.state_hash)
                .await?
                .is_some()
            {
                ended += 1;
            }
        }
        Ok(ended)
    }

    pub async fn purge_pending(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        self.ready().await?;
        self.rows.pending.purge_pending(before).await
    }
}
