//! Handing out a credential's token: the token endpoint's [`Credentials::issue`]
//! (authenticate, then the token) and [`Credentials::token_for`] for a
//! credential already checked; `scope` and `resource` are held to the
//! integration's lists, and the connection refreshed when due.

use std::net::IpAddr;

use super::{Credentials, IssueError, CONNECTION_HINTS};
use crate::domain::{ConnectionRecord, PipelineCredential, Secret};
use crate::refresh::{Need, Prefetched, RefreshError};
use crate::registry::Lookup;

impl Credentials {
    /// The token endpoint's one call: authenticates the client presented by
    /// `source`, then hands out its connection's access token (`token_for`).
    pub async fn issue(
        &self,
        client_id: &str,
        secret: &Secret,
        source: Option<IpAddr>,
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> Result<ConnectionRecord, IssueError> {
        let hint = self
            .connection_of
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(client_id)
            .cloned();
        // With a hint both are read together; the connection's read is used only if the
        // credential verifies and still names that connection.
        let home = hint.as_ref().map(|(i, c)| (i, c));
        let (credential, prefetched) = self
            .authenticate_at(client_id, secret, source, home)
            .await?;
        if prefetched.is_none() {
            let mut hints = self.connection_of.lock().unwrap_or_else(|p| p.into_inner());
            if hints.len() >= CONNECTION_HINTS {
                hints.clear();
            }
            hints.insert(
                client_id.to_owned(),
                (
                    credential.integration.clone(),
                    credential.connection.clone(),
                ),
            );
        }
        self.token_with(&credential, scope, resource, prefetched)
            .await
    }

    /// The access token of the credential's connection, refreshed first when
    /// it is due or would not stay valid for the credential's `min_validity`
    /// (capped at half the lifetime the vendor gives its tokens, so a wish
    /// longer than a token can live does not refresh on every call).
    ///
    /// `scope` and `resource` (as the client sent them) are ignored unless the
    /// integration lists what pipelines may ask for (`pipeline_scopes`,
    /// `pipeline_resources`); then anything else is refused before any refresh.
    pub async fn token_for(
        &self,
        c: &PipelineCredential,
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> Result<ConnectionRecord, IssueError> {
        self.token_with(c, scope, resource, None).await
    }

    async fn token_with(
        &self,
        c: &PipelineCredential,
        scope: Option<&str>,
        resource: Option<&str>,
        prefetched: Option<Prefetched>,
    ) -> Result<ConnectionRecord, IssueError> {
        let integration = match self.engine.integration(&c.integration) {
            Lookup::Ready(i) => i,
            Lookup::Unavailable { .. } => return Err(IssueError::IntegrationUnavailable),
            Lookup::Unknown => return Err(IssueError::IntegrationGone(c.integration.clone())),
        };
        if let (Some(allowed), Some(scope)) = (&integration.pipeline_scopes, scope) {
            if let Some(bad) = scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .find(|s| !allowed.iter().any(|a| a == s))
            {
                return Err(IssueError::InvalidScope(bad.to_owned()));
            }
        }
        if let (Some(allowed), Some(resource)) = (&integration.pipeline_resources, resource) {
            if !allowed.iter().any(|a| a == resource) {
                return Err(IssueError::InvalidTarget);
            }
        }
        let need = Need {
            min_validity: c.min_validity,
            cap_by_lifetime: true,
            ..Need::default()
        };
        let fresh = match prefetched {
            Some(p) => {
                self.engine
                    .ensure_fresh_prefetched(&integration, &c.connection, p, need)
                    .await
            }
            None => {
                self.engine
                    .ensure_fresh(&integration, &c.connection, need)
                    .await
            }
        };
        match fresh {
            Ok(record) => Ok(record),
            Err(RefreshError::NotFound) => Err(IssueError::NoGrant {
                integration: c.integration.clone(),
                connection: c.connection.clone(),
            }),
            Err(RefreshError::ReauthorizationRequired) => Err(IssueError::DeadGrant {
                integration: c.integration.clone(),
                connection: c.connection.clone(),
            }),
            Err(e) => Err(IssueError::Refresh(e)),
        }
    }
}
