//! How the broker is reached: started by the Functions host
//! (`FUNCTIONS_CUSTOMHANDLER_PORT`) or standalone (`BROKER_PORT`,
//! `BROKER_BIND`, `BROKER_SWEEP_INTERVAL_SECS`) and whether it then needs an
//! admin key, its public URL (`BROKER_PUBLIC_URL`, else `WEBSITE_HOSTNAME`),
//! the connection limits (`BROKER_MAX_CONNECTIONS*`) and the proxies trusted
//! to name the client (`BROKER_TRUSTED_PROXIES`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use url::Url;

use super::env::{Env, Problems};
use super::keys::{configured_api_key, ApiKeySource};
use super::{integrations, ConfigError};
use crate::domain::Secret;

/// Where the broker listens, by mode, and what its admin key is.
pub(super) struct Listening {
    pub(super) host_mode: bool,
    pub(super) listen: SocketAddr,
    pub(super) api_key: Option<ApiKeySource>,
    pub(super) sweep_interval: Option<std::time::Duration>,
}

impl Listening {
    /// Under the Functions host when it set `FUNCTIONS_CUSTOMHANDLER_PORT`, else standalone.
    pub(super) fn load(env: &Env<'_>, p: &mut Problems) -> Self {
        if env.get("FUNCTIONS_CUSTOMHANDLER_PORT").is_some() {
            Self::under_host(env, p)
        } else {
            Self::standalone(env, p)
        }
    }

    /// Loopback at the host's port; no sweep (the host's timer runs it).
    fn under_host(env: &Env<'_>, p: &mut Problems) -> Self {
        let port = p.take(
            env.number(
                "FUNCTIONS_CUSTOMHANDLER_PORT",
                0,
                0..=65_535,
                "a port number",
            ),
            0,
        );
        // Under the host, BROKER_API_KEY is the admin key the handler itself checks on the
        // routes that are anonymous at the host (they accept Entra ID callers); unset, those
        // routes open to no key at all.
        let api_key = env
            .get("BROKER_API_KEY")
            .map(Secret::new)
            .map(|key| configured_api_key(key, p));
        Self {
            host_mode: true,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port as u16),
            api_key,
            sweep_interval: None,
        }
    }

    /// `BROKER_BIND`:`BROKER_PORT`, an admin key always, and the sweep's interval.
    fn standalone(env: &Env<'_>, p: &mut Problems) -> Self {
        let port = p.take(
            env.number("BROKER_PORT", 7071, 0..=65_535, "a port number (0-65535)"),
            7071,
        );
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let bind: IpAddr = match env.get("BROKER_BIND") {
            Some(b) => p.take(
                b.parse().map_err(|_| {
                    ConfigError::setting(
                        "BROKER_BIND",
                        "must be an IP address such as 127.0.0.1 or 0.0.0.0",
                    )
                }),
                loopback,
            ),
            None => loopback,
        };
        let api_key = standalone_api_key(env, bind, p);
        let secs = p.take(
            env.number(
                "BROKER_SWEEP_INTERVAL_SECS",
                300,
                0..=u64::from(u32::MAX),
                "a whole number of seconds (0 = never)",
            ),
            300,
        );
        let sweep = (secs > 0).then(|| std::time::Duration::from_secs(secs));
        Self {
            host_mode: false,
            listen: SocketAddr::new(bind, port as u16),
            api_key: Some(api_key),
            sweep_interval: sweep,
        }
    }
}

/// Standalone: `BROKER_API_KEY`, required off loopback; on loopback without
/// one, a key is generated beside the embedded store's files.
fn standalone_api_key(env: &Env<'_>, bind: IpAddr, p: &mut Problems) -> ApiKeySource {
    match env.get("BROKER_API_KEY").map(Secret::new) {
        Some(key) => configured_api_key(key, p),
        None if !bind.is_loopback() => {
            p.0.push(ConfigError::setting(
                "BROKER_API_KEY",
                format!("is required when BROKER_BIND ({bind}) is not a loopback address: without it anyone who can reach the port can read tokens. Set BROKER_API_KEY to a long random value (openssl rand -base64 32), or bind to 127.0.0.1"),
            ));
            ApiKeySource::File(PathBuf::new())
        }
        // Loopback without a key: one is generated beside the embedded store's files.
        None => ApiKeySource::File(PathBuf::new()),
    }
}

/// `BROKER_PUBLIC_URL`, else `https://$WEBSITE_HOSTNAME`, else none.
pub(super) fn configured_public_url(env: &Env<'_>, p: &mut Problems) -> Option<Url> {
    match env.get("BROKER_PUBLIC_URL") {
        Some(u) => p.take(public_url("BROKER_PUBLIC_URL", &u, "").map(Some), None),
        None => match env.get("WEBSITE_HOSTNAME") {
            Some(h) => p.take(
                public_url(
                    "WEBSITE_HOSTNAME",
                    &format!("https://{h}"),
                    " (a host name such as my-broker.azurewebsites.net)",
                )
                .map(Some),
                None,
            ),
            None => None,
        },
    }
}

fn public_url(setting: &'static str, value: &str, hint: &str) -> Result<Url, ConfigError> {
    let parsed = Url::parse(value.trim_end_matches('/')).map_err(|e| {
        ConfigError::setting(
            setting,
            format!("is not a URL ({e}){hint}; example: https://my-broker.azurewebsites.net"),
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ConfigError::setting(setting, "must be an http(s) URL"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(ConfigError::setting(
            setting,
            "must not have a query or fragment",
        ));
    }
    Ok(parsed)
}

/// What is allowed but probably wrong: an http public URL on a public host.
pub(super) fn warnings(public_url: Option<&Url>) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(u) = public_url {
        if u.scheme() == "http" && !integrations::is_loopback(u) {
            warnings.push(format!(
                "BROKER_PUBLIC_URL ({}) is http on a host that is not loopback: browsers and vendors reach the broker over plain HTTP there, so consent codes and cookies travel unencrypted, and most vendors refuse an http redirect URI. Put the broker behind a TLS proxy and set an https BROKER_PUBLIC_URL",
                u.as_str().trim_end_matches('/')
            ));
        }
    }
    warnings
}

/// `BROKER_MAX_CONNECTIONS` (default 256) and `BROKER_MAX_CONNECTIONS_PER_SOURCE` (default 64).
pub(super) fn connection_limits(env: &Env<'_>, p: &mut Problems) -> (usize, usize) {
    let max_connections = p.take(
        env.number(
            "BROKER_MAX_CONNECTIONS",
            256,
            1..=65_536,
            "a whole number from 1 to 65536",
        ),
        256,
    ) as usize;
    let max_connections_per_source = p.take(
        env.number(
            "BROKER_MAX_CONNECTIONS_PER_SOURCE",
            64,
            1..=65_536,
            "a whole number from 1 to 65536",
        ),
        64,
    ) as usize;
    (max_connections, max_connections_per_source)
}

/// `BROKER_TRUSTED_PROXIES`: addresses or CIDR blocks, comma-separated.
pub(super) fn trusted_proxies(
    env: &Env<'_>,
) -> Result<Vec<crate::domain::source::IpBlock>, ConfigError> {
    let Some(list) = env.get("BROKER_TRUSTED_PROXIES") else {
        return Ok(Vec::new());
    };
    list.split(',')
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            crate::domain::source::IpBlock::parse(e).ok_or_else(|| {
                ConfigError::setting(
                    "BROKER_TRUSTED_PROXIES",
                    format!(
                        "{:?} is not an IP address or CIDR block (such as 10.0.0.0/8 or ::1)",
                        e.trim()
                    ),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::env;
    use super::super::{KeySource, Settings};
    use url::Url;

    #[test]
    fn an_http_public_url_on_a_public_host_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite:{}/b.db", dir.path().display());
        let load = |url: &str| {
            Settings::load(&env(&[("BROKER_STORAGE", &db), ("BROKER_PUBLIC_URL", url)]))
                .unwrap()
                .warnings
        };
        let w = load("http://broker.example.com");
        assert!(
            w.len() == 1 && w[0].contains("http://broker.example.com"),
            "{w:?}"
        );
        assert!(load("http://localhost:7071").is_empty());
        assert!(load("https://broker.example.com").is_empty());
    }

    #[test]
    fn standalone_on_a_public_address_needs_an_api_key() {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite:{}/b.db", dir.path().display());
        let err = Settings::load(&env(&[("BROKER_BIND", "0.0.0.0"), ("BROKER_STORAGE", &db)]))
            .unwrap_err();
        assert!(err.to_string().contains("BROKER_API_KEY"));
        let ok = Settings::load(&env(&[
            ("BROKER_BIND", "0.0.0.0"),
            ("BROKER_STORAGE", &db),
            ("BROKER_API_KEY", "k-0123456789abcdef0123456789abcdef"),
        ]))
        .unwrap();
        assert!(ok.api_key.is_some());
    }

    #[test]
    fn host_mode_listens_on_loopback_at_the_host_port_without_keys_or_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite:{}/b.db", dir.path().display());
        let s = Settings::load(&env(&[
            ("FUNCTIONS_CUSTOMHANDLER_PORT", "34567"),
            ("BROKER_STORAGE", &db),
            ("WEBSITE_HOSTNAME", "x.azurewebsites.net"),
        ]))
        .unwrap();
        assert!(s.host_mode);
        assert_eq!(s.listen.to_string(), "127.0.0.1:34567");
        assert!(s.api_key.is_none() && s.sweep_interval.is_none());
        assert!(s.token_keys.is_empty());
        assert_eq!(
            s.public_url.as_ref().map(Url::as_str),
            Some("https://x.azurewebsites.net/")
        );
        assert!(!s.integrations.found);
        // The key file is created at start (startup), beside the database.
        assert!(matches!(&s.keys, KeySource::File(p) if p == &dir.path().join("broker.key")));
    }
}
