//! A changed configuration ends an integration's old failures: at start every
//! ready integration's client id, secret, endpoints and client authentication
//! are fingerprinted (a keyed hash, never the values) and compared with the
//! fingerprint kept in a marker side row (`config:<integration>`; no column of
//! the connections table). When it differs, the change's time is recorded
//! there, and refresh failures from before it no longer cool a connection
//! down or make it `misconfigured`/`failing`: the first call after a fix
//! retries at once. Every instance reads the same marker, so all of them agree.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::Engine;
use crate::config::integrations::TokenBody;
use crate::config::{ClientAuth, Integration};
use crate::domain::{ConnectionRecord, IntegrationName};

#[derive(Serialize, Deserialize)]
struct Fingerprint {
    key_id: String,
    mac: String,
    /// When the configuration last changed (RFC 3339); `None`: not since it was first seen.
    changed_at: Option<String>,
}

fn marker_key(name: &IntegrationName) -> String {
    format!("config:{name}")
}

/// What identifies the client at the vendor: a change of any of it may fix a rejected client.
fn material(i: &Integration) -> Vec<u8> {
    let auth = match i.client_auth {
        ClientAuth::Basic => "basic",
        ClientAuth::Post => "post",
    };
    let body = match i.token_body {
        TokenBody::Form => "form",
        TokenBody::Json => "json",
    };
    let parts: [&str; 8] = [
        i.name.as_str(),
        &i.client_id,
        i.client_secret.expose(),
        i.authorization_url.as_str(),
        i.token_url.as_str(),
        i.revocation_url.as_ref().map_or("", |u| u.as_str()),
        auth,
        body,
    ];
    let mut out = b"oauth-broker/config-fingerprint/v1".to_vec();
    for p in parts {
        out.push(0);
        out.extend_from_slice(&(p.len() as u64).to_be_bytes());
        out.extend_from_slice(p.as_bytes());
    }
    out
}

impl Engine {
    /// At start: records each ready integration's configuration and learns when it last changed.
    pub async fn note_configuration(&self) {
        let ready = self.integrations.ready();
        let notes = ready.iter().map(|i| async move {
            if let Err(e) = self.note_one(i).await {
                tracing::warn!(integration = %i.name, error = %e, "could not compare the integration's configuration with the last one");
            }
        });
        futures::future::join_all(notes).await;
    }

    async fn note_one(&self, i: &Integration) -> Result<(), crate::store::StoreError> {
        let key = marker_key(&i.name);
        let data = material(i);
        let keys = self.store.keyring().clone();
        let current = self.store.marker_get(&key).await?;
        let (changed, previous_change) = match &current {
            None => (false, None),
            Some(v) => match serde_json::from_str::<Fingerprint>(&v.value) {
                Ok(fp) => {
                    // A removed key cannot verify: count it as a change (a retry costs little).
                    let same = keys.verify_mac(&fp.key_id, &data, &fp.mac).unwrap_or(false);
                    let at = fp
                        .changed_at
                        .and_then(|t| OffsetDateTime::parse(&t, &Rfc3339).ok());
                    (!same, at)
                }
                Err(_) => (true, None),
            },
        };
        let (key_id, mac) = keys.mac(&data);
        let changed_at = if changed {
            Some(self.clock.now())
        } else {
            previous_change
        };
        if changed || current.is_none() {
            let body = Fingerprint {
                key_id,
                mac,
                changed_at: changed_at.and_then(|t| t.format(&Rfc3339).ok()),
            };
            let body = serde_json::to_string(&body).unwrap_or_default();
            // Another instance may write the same at the same time: either write is right.
            let _ = self
                .store
                .marker_put(&key, &body, current.as_ref().map(|v| &v.version))
                .await;
        }
        if changed {
            tracing::info!(integration = %i.name, "the integration's client configuration changed: earlier refresh failures no longer hold its connections back");
            // A new breakage after this change is told again.
            self.notify.forget_misconfigured(&i.name).await;
        }
        if let Some(at) = changed_at {
            self.config_changed
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(i.name.clone(), at);
        }
        Ok(())
    }

    /// When the integration's configuration last changed, if it did.
    pub fn config_changed_at(&self, name: &IntegrationName) -> Option<OffsetDateTime> {
        self.config_changed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
    }

    /// The record as the condition and the cool-down see it: a failure from before
    /// the integration's last configuration change is forgotten.
    pub fn as_assessed(&self, mut r: ConnectionRecord) -> ConnectionRecord {
        if let (Some(changed), Some(at)) = (self.config_changed_at(&r.integration), r.last_error_at)
        {
            if at <= changed {
                r.last_error_at = None;
            }
        }
        r
    }
}
