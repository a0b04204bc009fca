//! Configuration, validated once at start into typed values: the
//! environment (app settings under the Functions host) read here into
//! [`Settings`], a group of settings per submodule (`server`, `storage`,
//! `keys`, `limits`, [`events`], [`entra`], read through `env`), the
//! integrations file and vendor templates in [`integrations`], one error type
//! in [`error`]. Every error names the setting or file position and says how
//! to fix it, so a misconfiguration surfaces at cold start rather than in the
//! middle of a refresh.
//!
//! Loading is pure: it reads settings and the integrations file, nothing else.
//! What has side effects (creating the embedded store's key file, fetching an
//! issuer's metadata) is done by `startup`.
//!
//! Depends on `domain` and `crypto`, and on `store::identity` for the
//! platform's identity endpoints.

pub mod callers;
pub mod discovery;
pub mod entra;
mod env;
pub mod error;
pub mod events;
mod expand;
pub mod integrations;
mod keys;
mod limits;
pub mod lint;
pub mod proxy;
mod server;
mod storage;
pub mod templates;

use std::net::SocketAddr;
use std::path::PathBuf;

use time::Duration;
use url::Url;

use crate::domain::Secret;
pub use entra::EntraSettings;
use env::{Env, Problems};
pub use error::ConfigError;
pub use events::{EventSettings, WebhookFormat, WebhookReceiver};
pub use integrations::{AccountConfig, ClientAuth, Integration, IntegrationsFile};
pub use keys::{check_api_key, ApiKeySource, KeySource, MIN_API_KEY_LEN};
pub use limits::{ProxySettings, RefreshPolicy};
pub use proxy::{ProxyAuth, ProxyConfig};
pub use storage::{IdentityStorage, StorageSettings};

/// A number of seconds already range-checked to fit.
fn seconds(n: u64) -> Duration {
    Duration::seconds(i64::try_from(n).unwrap_or(i64::MAX))
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Started by the Functions host (`FUNCTIONS_CUSTOMHANDLER_PORT` set).
    pub host_mode: bool,
    /// `BROKER_PUBLIC_URL`, or `https://$WEBSITE_HOSTNAME`; `None` means "the address we bound".
    pub public_url: Option<Url>,
    /// The admin key. Standalone: the key every protected route requires (configured or
    /// generated). Under the Functions host: `BROKER_API_KEY` when set, checked by the handler on
    /// the routes that are anonymous at the host (`None`: those routes accept no key).
    pub api_key: Option<ApiKeySource>,
    /// `BROKER_TOKEN_KEYS`: keys that open the token routes and nothing else (Data Factory's, when
    /// it does not use its managed identity), checked by the handler in both modes.
    pub token_keys: Vec<Secret>,
    /// Concurrent connections served at most (`BROKER_MAX_CONNECTIONS`, default 256); further
    /// connections wait in the listen backlog.
    pub max_connections: usize,
    /// Standalone: open connections per source address (`BROKER_MAX_CONNECTIONS_PER_SOURCE`).
    pub max_connections_per_source: usize,
    /// Standalone mode only: how often the refresh sweep runs.
    pub sweep_interval: Option<std::time::Duration>,
    pub storage: StorageSettings,
    pub keys: KeySource,
    /// The integrations file: ready integrations and those to discover at start.
    pub integrations: IntegrationsFile,
    pub refresh: RefreshPolicy,
    /// Default lifetime of consent links (`BROKER_CONSENT_LINK_TTL_SECS`, default 24 h).
    pub consent_link_lifetime: Duration,
    /// Webhook receivers and event thresholds (`BROKER_WEBHOOK_*`).
    pub events: EventSettings,
    /// Microsoft Entra ID callers (`BROKER_ENTRA_*`); `None`: off.
    pub entra: Option<EntraSettings>,
    /// Standalone: proxies whose `X-Forwarded-For` names the client
    /// (`BROKER_TRUSTED_PROXIES`, addresses or CIDR blocks; default none).
    pub trusted_proxies: Vec<crate::domain::source::IpBlock>,
    /// What is allowed but probably wrong (an http public URL on a public host), logged at start.
    pub warnings: Vec<String>,
    /// The proxy's limits (`BROKER_PROXY_*`).
    pub proxy: ProxySettings,
}

impl Settings {
    /// Reads every setting through `env` (the process environment in `main`).
    /// Every problem is kept and reported together; the groups are read in a
    /// fixed order, which is the order of the problems.
    pub fn load(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env { get };
        let mut p = Problems::default();
        let listening = server::Listening::load(&env, &mut p);
        let public_url = server::configured_public_url(&env, &mut p);
        let storage = storage::load(&env, &mut p);
        let keys = keys::encryption_keys(&env, &storage, &mut p);
        let api_key = keys::place_key_file(listening.api_key, &storage);
        let (max_connections, max_connections_per_source) = server::connection_limits(&env, &mut p);
        let integrations = integrations_file(&env, &mut p);
        let refresh = RefreshPolicy::load(&env, &mut p);
        let consent_link_lifetime = seconds(p.take(
            env.number(
                "BROKER_CONSENT_LINK_TTL_SECS",
                86_400,
                60..=2_592_000,
                "a whole number of seconds from 60 to 2592000 (30 days)",
            ),
            86_400,
        ));
        let events = p.take(EventSettings::load(&env), EventSettings::default());
        let proxy = ProxySettings::load(&env, &mut p);
        let entra = entra::load(&env, &mut p);
        let token_keys = keys::token_keys(&env, &mut p);
        let trusted_proxies = p.take(server::trusted_proxies(&env), Vec::new());
        if let Some(e) = ConfigError::all(p.0) {
            return Err(e);
        }
        let warnings = server::warnings(public_url.as_ref());
        Ok(Self {
            proxy,
            trusted_proxies,
            refresh,
            consent_link_lifetime,
            events,
            entra,
            token_keys,
            listen: listening.listen,
            host_mode: listening.host_mode,
            public_url,
            api_key,
            max_connections,
            max_connections_per_source,
            sweep_interval: listening.sweep_interval,
            storage,
            keys,
            integrations,
            warnings,
        })
    }
}

/// The integrations file at `BROKER_INTEGRATIONS` (default `integrations.json`).
fn integrations_file(env: &Env<'_>, p: &mut Problems) -> IntegrationsFile {
    let integrations_path = PathBuf::from(
        env.get("BROKER_INTEGRATIONS")
            .unwrap_or_else(|| "integrations.json".into()),
    );
    p.take(
        IntegrationsFile::load(integrations_path.clone(), &|k| env.get(k)),
        IntegrationsFile {
            path: integrations_path,
            found: true,
            parsed: Default::default(),
        },
    )
}

/// A file beside the embedded database.
pub fn beside(db: &std::path::Path, name: &str) -> PathBuf {
    db.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .join(name)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Settings from a list of pairs, as `Settings::load` reads them (shared by the crate's tests).
    pub(crate) fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("i.json");
        std::fs::write(
            &file,
            r#"{"integrations": {
                "acme": {"provider": "xero", "client_id": "%ACME_ID%", "client_secret": "%ACME_SECRET%", "scopes": "openid read"},
                "beta": {"provider": "hubspot", "client_id": "%BETA_ID%", "client_secret": "${BETA_SECRET}"}
            }}"#,
        )
        .unwrap();
        let err = Settings::load(&env(&[
            ("BROKER_STORAGE", "sqlite:"),
            ("BROKER_PORT", "http"),
            ("BROKER_INTEGRATIONS", file.to_str().unwrap()),
        ]))
        .unwrap_err();
        let all: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
        let text = err.to_string();
        for part in [
            "BROKER_PORT: must be a port number",
            "BROKER_STORAGE: sqlite: needs a path",
            "integrations.acme.scopes: expected an array of strings",
            "integrations.beta.client_secret: \"${BETA_SECRET}\" is not read from a setting: write %BETA_SECRET% to read a setting",
            "3 settings are not set: ACME_ID (integrations.acme.client_id), ACME_SECRET (integrations.acme.client_secret), BETA_ID (integrations.beta.client_id)",
        ] {
            assert!(text.contains(part), "{part} in {text}");
        }
        // The missing settings are one problem of the five.
        assert_eq!(all.len(), 5, "{all:#?}");
    }
}
