//! Settings: the environment (app settings under the Functions host) and the
//! integrations file, validated once at start into typed values. Every error
//! names the setting or file position and says how to fix it, so that a
//! misconfiguration surfaces at cold start rather than in the middle of a refresh.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use time::Duration;
use url::Url;

use crate::crypto::Keyring;
use crate::domain::{IntegrationName, Secret};
use crate::integrations::{self, Discovery};
pub use crate::integrations::{ClientAuth, Integration};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{setting}: {problem}")]
    Setting {
        setting: &'static str,
        problem: String,
    },
    #[error("{path}: line {line}, column {column}: {problem}")]
    FileSyntax {
        path: String,
        line: usize,
        column: usize,
        problem: String,
    },
    #[error("{path}: integration {integration:?}: {problem}")]
    Integration {
        path: String,
        integration: String,
        problem: String,
    },
    #[error("{path}: {problem}")]
    File { path: String, problem: String },
}

fn setting_err(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Setting {
        setting,
        problem: problem.into(),
    }
}

/// Where grants are stored.
#[derive(Debug, Clone)]
pub enum StorageSettings {
    /// Azure Table Storage (or Azurite): a connection string, or `UseDevelopmentStorage=true`.
    Table {
        connection_string: Secret,
        table: String,
    },
    /// Azure Table Storage with the app's managed identity, no key:
    /// `BROKER_STORAGE__accountName` and/or `BROKER_STORAGE__tableServiceUri`
    /// (optional `BROKER_STORAGE__clientId` for a user-assigned identity), used when
    /// `BROKER_STORAGE` is unset; the same `AzureWebJobsStorage__*` settings after that.
    TableIdentity {
        account: String,
        /// The table service endpoint; `None` means `https://<account>.table.core.windows.net`.
        table_uri: Option<String>,
        client_id: Option<String>,
        table: String,
        /// The platform's `IDENTITY_ENDPOINT` and `IDENTITY_HEADER`.
        identity_endpoint: String,
        identity_header: Secret,
    },
    /// The embedded store.
    Sqlite { path: PathBuf },
}

/// How the refresh engine behaves; every value has a safe default.
#[derive(Debug, Clone)]
pub struct RefreshPolicy {
    /// How long a refresher holds a connection (`BROKER_REFRESH_LEASE_SECS`, default 60).
    pub lease: Duration,
    /// Timeout of one token-endpoint call (`BROKER_UPSTREAM_TIMEOUT_SECS`, default 15).
    pub upstream_timeout: std::time::Duration,
    /// Token-endpoint calls per refresh for transient failures (default 3).
    pub max_attempts: u32,
    /// First backoff delay; doubles each retry, with jitter (default 500 ms).
    pub backoff: std::time::Duration,
    /// The longest `Retry-After` honoured (default 10 s).
    pub retry_after_cap: std::time::Duration,
    /// After a failed refresh, no new upstream attempt for this long (`BROKER_REFRESH_COOLDOWN_SECS`, default 30).
    pub cooldown: Duration,
    /// Refreshes in flight at once during a sweep (`BROKER_SWEEP_CONCURRENCY`, default 8).
    pub sweep_concurrency: usize,
    /// A sweep starts no new refresh after this long (`BROKER_SWEEP_BUDGET_SECS`, default 240,
    /// inside the Consumption plan's 5-minute function timeout).
    pub sweep_budget: std::time::Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            lease: Duration::seconds(60),
            upstream_timeout: std::time::Duration::from_secs(15),
            max_attempts: 3,
            backoff: std::time::Duration::from_millis(500),
            retry_after_cap: std::time::Duration::from_secs(10),
            cooldown: Duration::seconds(30),
            sweep_concurrency: 8,
            sweep_budget: std::time::Duration::from_secs(240),
        }
    }
}

impl RefreshPolicy {
    fn load(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let num =
            |name: &'static str, default: u64, min: u64, max: u64| -> Result<u64, ConfigError> {
                match get(name) {
                    None => Ok(default),
                    Some(v) => match v.trim().parse::<u64>() {
                        Ok(n) if (min..=max).contains(&n) => Ok(n),
                        _ => Err(setting_err(
                            name,
                            format!("must be a whole number from {min} to {max}"),
                        )),
                    },
                }
            };
        let d = Self::default();
        let timeout = num(
            "BROKER_UPSTREAM_TIMEOUT_SECS",
            d.upstream_timeout.as_secs(),
            1,
            120,
        )?;
        let lease = num(
            "BROKER_REFRESH_LEASE_SECS",
            d.lease.whole_seconds() as u64,
            2,
            3600,
        )?;
        if lease < timeout + 2 {
            return Err(setting_err(
                "BROKER_REFRESH_LEASE_SECS",
                format!("({lease}) must exceed BROKER_UPSTREAM_TIMEOUT_SECS ({timeout}) by at least 2 seconds, so a refresh always finishes inside its lease"),
            ));
        }
        Ok(Self {
            lease: Duration::seconds(lease as i64),
            upstream_timeout: std::time::Duration::from_secs(timeout),
            cooldown: Duration::seconds(num("BROKER_REFRESH_COOLDOWN_SECS", 30, 0, 86_400)? as i64),
            sweep_concurrency: num("BROKER_SWEEP_CONCURRENCY", 8, 1, 256)? as usize,
            sweep_budget: std::time::Duration::from_secs(num(
                "BROKER_SWEEP_BUDGET_SECS",
                240,
                1,
                86_400,
            )?),
            ..d
        })
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Started by the Functions host (`FUNCTIONS_CUSTOMHANDLER_PORT` set).
    pub host_mode: bool,
    /// `BROKER_PUBLIC_URL`, or `https://$WEBSITE_HOSTNAME`; `None` means "the address we bound".
    pub public_url: Option<String>,
    /// Standalone mode only: the key protected routes require.
    pub api_key: Option<Secret>,
    /// Standalone mode only: how often the refresh sweep runs.
    pub sweep_interval: Option<std::time::Duration>,
    pub storage: StorageSettings,
    pub keys: Keyring,
    pub integrations: BTreeMap<IntegrationName, Integration>,
    /// Integrations whose endpoints come from their issuer's metadata (fetched at start).
    pub discover: Vec<Discovery>,
    pub integrations_path: PathBuf,
    /// True when the integrations file did not exist (a warning is logged at start).
    pub integrations_missing: bool,
    pub refresh: RefreshPolicy,
    /// Default lifetime of consent links (`BROKER_CONSENT_LINK_TTL_SECS`, default 24 h).
    pub consent_link_lifetime: Duration,
}

const DEFAULT_SQLITE: &str = ".broker/broker.db";
const DEFAULT_TABLE: &str = "oauthbroker";

impl Settings {
    /// Reads every setting through `env` (the process environment in `main`).
    pub fn load(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());

        let host_port = get("FUNCTIONS_CUSTOMHANDLER_PORT");
        let host_mode = host_port.is_some();
        let (listen, api_key, sweep_interval) = if let Some(port) = host_port {
            let port: u16 = port.trim().parse().map_err(|_| {
                setting_err("FUNCTIONS_CUSTOMHANDLER_PORT", "must be a port number")
            })?;
            (
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                None,
                None,
            )
        } else {
            let port: u16 = match get("BROKER_PORT") {
                Some(p) => p
                    .trim()
                    .parse()
                    .map_err(|_| setting_err("BROKER_PORT", "must be a port number (0-65535)"))?,
                None => 7071,
            };
            let bind: IpAddr = match get("BROKER_BIND") {
                Some(b) => b.trim().parse().map_err(|_| {
                    setting_err(
                        "BROKER_BIND",
                        "must be an IP address such as 127.0.0.1 or 0.0.0.0",
                    )
                })?,
                None => IpAddr::V4(Ipv4Addr::LOCALHOST),
            };
            let api_key = get("BROKER_API_KEY").map(Secret::new);
            if api_key.is_none() && !bind.is_loopback() {
                return Err(setting_err(
                    "BROKER_API_KEY",
                    format!("is required when BROKER_BIND ({bind}) is not a loopback address: without it anyone who can reach the port can read tokens. Set BROKER_API_KEY to a long random value, or bind to 127.0.0.1"),
                ));
            }
            let secs: u64 = match get("BROKER_SWEEP_INTERVAL_SECS") {
                Some(s) => s.trim().parse().map_err(|_| {
                    setting_err(
                        "BROKER_SWEEP_INTERVAL_SECS",
                        "must be a whole number of seconds (0 = never)",
                    )
                })?,
                None => 300,
            };
            let sweep = (secs > 0).then(|| std::time::Duration::from_secs(secs));
            (SocketAddr::new(bind, port), api_key, sweep)
        };

        let public_url = match get("BROKER_PUBLIC_URL") {
            Some(u) => {
                let parsed = Url::parse(u.trim()).map_err(|e| {
                    setting_err(
                        "BROKER_PUBLIC_URL",
                        format!("is not a URL ({e}); example: https://my-broker.azurewebsites.net"),
                    )
                })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(setting_err("BROKER_PUBLIC_URL", "must be an http(s) URL"));
                }
                Some(u.trim().trim_end_matches('/').to_owned())
            }
            None => get("WEBSITE_HOSTNAME").map(|h| format!("https://{}", h.trim())),
        };

        let identity = identity_storage(&get)?;
        let storage_spec = get("BROKER_STORAGE")
            .or_else(|| get("AzureWebJobsStorage"))
            .unwrap_or_else(|| format!("sqlite:{DEFAULT_SQLITE}"));
        let sqlite_path = match identity {
            Some(_) => None,
            None => storage_spec.trim().strip_prefix("sqlite:"),
        };
        let storage = if let Some(path) = sqlite_path {
            if path.is_empty() {
                return Err(setting_err(
                    "BROKER_STORAGE",
                    "sqlite: needs a path, e.g. sqlite:.broker/broker.db",
                ));
            }
            StorageSettings::Sqlite {
                path: PathBuf::from(path),
            }
        } else {
            let table = get("BROKER_TABLE").unwrap_or_else(|| DEFAULT_TABLE.to_owned());
            let valid = table.len() >= 3
                && table.len() <= 63
                && table.as_bytes()[0].is_ascii_alphabetic()
                && table.bytes().all(|c| c.is_ascii_alphanumeric())
                && !table.eq_ignore_ascii_case("tables");
            if !valid {
                return Err(setting_err(
                    "BROKER_TABLE",
                    "must be 3-63 letters and digits, starting with a letter (Table Storage rules)",
                ));
            }
            match identity {
                Some(mut id) => {
                    if let StorageSettings::TableIdentity { table: t, .. } = &mut id {
                        *t = table;
                    }
                    id
                }
                None => StorageSettings::Table {
                    connection_string: Secret::new(storage_spec.trim()),
                    table,
                },
            }
        };

        let keys = match (get("BROKER_ENCRYPTION_KEYS"), &storage) {
            (Some(spec), _) => Keyring::parse(&Secret::new(spec)).map_err(|e| setting_err("BROKER_ENCRYPTION_KEYS", e.to_string()))?,
            (None, StorageSettings::Sqlite { path }) => embedded_keyring(path)?,
            (None, StorageSettings::Table { .. } | StorageSettings::TableIdentity { .. }) => {
                return Err(setting_err(
                    "BROKER_ENCRYPTION_KEYS",
                    "is required with Table Storage: set it to <key-id>:<base64 of 32 random bytes>, e.g. k1:$(openssl rand -base64 32); keep it in Key Vault",
                ))
            }
        };

        let integrations_path =
            PathBuf::from(get("BROKER_INTEGRATIONS").unwrap_or_else(|| "integrations.json".into()));
        let (integrations, integrations_missing) = match std::fs::read_to_string(&integrations_path)
        {
            Ok(text) => (integrations::parse(&text, &integrations_path, &get)?, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Default::default(), true),
            Err(e) => {
                return Err(ConfigError::File {
                    path: integrations_path.display().to_string(),
                    problem: format!("cannot be read: {e}"),
                })
            }
        };

        let refresh = RefreshPolicy::load(&get)?;
        let consent_link_lifetime = match get("BROKER_CONSENT_LINK_TTL_SECS") {
            None => Duration::hours(24),
            Some(v) => match v.trim().parse::<u32>() {
                Ok(n) if (60..=2_592_000).contains(&n) => Duration::seconds(i64::from(n)),
                _ => {
                    return Err(setting_err(
                        "BROKER_CONSENT_LINK_TTL_SECS",
                        "must be a whole number of seconds from 60 to 2592000 (30 days)",
                    ))
                }
            },
        };
        Ok(Self {
            refresh,
            consent_link_lifetime,
            listen,
            host_mode,
            public_url,
            api_key,
            sweep_interval,
            storage,
            keys,
            integrations: integrations.ready,
            discover: integrations.discover,
            integrations_path,
            integrations_missing,
        })
    }
}

/// The settings of one identity-based storage connection (`<prefix>__<property>`).
struct IdentityNames {
    account: &'static str,
    uri: &'static str,
    client_id: &'static str,
    credential: &'static str,
}

const BROKER_IDENTITY: IdentityNames = IdentityNames {
    account: "BROKER_STORAGE__accountName",
    uri: "BROKER_STORAGE__tableServiceUri",
    client_id: "BROKER_STORAGE__clientId",
    credential: "BROKER_STORAGE__credential",
};

/// Identity-based host storage, the last fallback before the embedded store.
const HOST_IDENTITY: IdentityNames = IdentityNames {
    account: "AzureWebJobsStorage__accountName",
    uri: "AzureWebJobsStorage__tableServiceUri",
    client_id: "AzureWebJobsStorage__clientId",
    credential: "AzureWebJobsStorage__credential",
};

/// Identity-based Table Storage, when `BROKER_STORAGE` is unset and
/// `BROKER_STORAGE__accountName` or `__tableServiceUri` is set (or, when
/// `AzureWebJobsStorage` is unset too, the same `AzureWebJobsStorage__*` settings
/// that identity-based host storage uses). The table name is filled in by the caller.
fn identity_storage(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<StorageSettings>, ConfigError> {
    let has = |n: &IdentityNames| get(n.account).is_some() || get(n.uri).is_some();
    let names = if get("BROKER_STORAGE").is_some() {
        return Ok(None);
    } else if has(&BROKER_IDENTITY) {
        BROKER_IDENTITY
    } else if get("AzureWebJobsStorage").is_none() && has(&HOST_IDENTITY) {
        HOST_IDENTITY
    } else {
        return Ok(None);
    };
    let setting = |name: &str| get(name).map(|v| v.trim().to_owned());
    if let Some(credential) = setting(names.credential) {
        if !credential.eq_ignore_ascii_case("managedidentity") {
            return Err(setting_err(
                names.credential,
                format!("is {credential:?}; the only supported value is managedidentity"),
            ));
        }
    }
    let table_uri = match setting(names.uri) {
        Some(u) => {
            let parsed = Url::parse(&u).map_err(|e| {
                setting_err(
                    names.uri,
                    format!(
                        "is not a URL ({e}); example: https://<account>.table.core.windows.net"
                    ),
                )
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(setting_err(names.uri, "must be an https URL"));
            }
            Some((parsed, u.trim_end_matches('/').to_owned()))
        }
        None => None,
    };
    let account = match (setting(names.account), &table_uri) {
        (Some(a), _) => a,
        (None, Some((u, _))) => account_of(u).ok_or_else(|| {
            setting_err(
                names.account,
                format!(
                    "is needed: the storage account name cannot be read from {}",
                    names.uri
                ),
            )
        })?,
        (None, None) => unreachable!("has() checked one of them"),
    };
    let valid_account = (3..=24).contains(&account.len())
        && account
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !valid_account {
        return Err(setting_err(
            names.account,
            "must be a storage account name: 3-24 lowercase letters and digits",
        ));
    }
    let identity_endpoint = get("IDENTITY_ENDPOINT").ok_or_else(|| {
        setting_err(
            "IDENTITY_ENDPOINT",
            format!(
                "is not set, and {} / {} use the app's managed identity: enable a managed identity on the Function App (Azure then sets IDENTITY_ENDPOINT and IDENTITY_HEADER), or set BROKER_STORAGE to a connection string",
                names.account, names.uri
            ),
        )
    })?;
    let identity_header = get("IDENTITY_HEADER").map(Secret::new).ok_or_else(|| {
        setting_err(
            "IDENTITY_HEADER",
            "is not set, though IDENTITY_ENDPOINT is: both come from the platform's managed identity",
        )
    })?;
    Ok(Some(StorageSettings::TableIdentity {
        account,
        table_uri: table_uri.map(|(_, u)| u),
        client_id: setting(names.client_id),
        table: String::new(),
        identity_endpoint: identity_endpoint.trim().to_owned(),
        identity_header,
    }))
}

/// `https://<account>.table.core.windows.net` → account; path-style (`http://127.0.0.1:10002/<account>`) → account.
fn account_of(uri: &Url) -> Option<String> {
    let host = uri.host_str()?;
    match host.split_once('.') {
        Some((first, rest)) if rest.starts_with("table.") => Some(first.to_owned()),
        _ => uri
            .path_segments()?
            .next()
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    }
}

/// The embedded store's key file beside the database, created on first start.
fn embedded_keyring(db: &Path) -> Result<Keyring, ConfigError> {
    let dir = db
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let path = dir.join("broker.key");
    let err = |problem: String| setting_err("BROKER_ENCRYPTION_KEYS", problem);
    let spec = match std::fs::read_to_string(&path) {
        Ok(s) => Secret::new(s.trim()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| {
                err(format!(
                    "unset, and the key file directory {} cannot be created: {e}",
                    dir.display()
                ))
            })?;
            let spec = Keyring::generate_spec("local1");
            write_private(&path, spec.expose()).map_err(|e| {
                err(format!(
                    "unset, and the key file {} cannot be written: {e}",
                    path.display()
                ))
            })?;
            spec
        }
        Err(e) => {
            return Err(err(format!(
                "unset, and the key file {} cannot be read: {e}",
                path.display()
            )))
        }
    };
    Keyring::parse(&spec).map_err(|e| err(format!("key file {}: {e}", path.display())))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")
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
    fn standalone_on_a_public_address_needs_an_api_key() {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite:{}/b.db", dir.path().display());
        let err = Settings::load(&env(&[("BROKER_BIND", "0.0.0.0"), ("BROKER_STORAGE", &db)]))
            .unwrap_err();
        assert!(err.to_string().contains("BROKER_API_KEY"));
        let ok = Settings::load(&env(&[
            ("BROKER_BIND", "0.0.0.0"),
            ("BROKER_STORAGE", &db),
            ("BROKER_API_KEY", "k"),
        ]))
        .unwrap();
        assert!(ok.api_key.is_some());
    }

    #[test]
    fn table_storage_requires_encryption_keys() {
        let err =
            Settings::load(&env(&[("BROKER_STORAGE", "UseDevelopmentStorage=true")])).unwrap_err();
        assert!(
            err.to_string().starts_with("BROKER_ENCRYPTION_KEYS"),
            "{err}"
        );
        let err = Settings::load(&env(&[(
            "AzureWebJobsStorage",
            "UseDevelopmentStorage=true",
        )]))
        .unwrap_err();
        assert!(
            err.to_string().starts_with("BROKER_ENCRYPTION_KEYS"),
            "{err}"
        );
    }

    #[test]
    fn host_mode_listens_on_loopback_at_the_host_port_without_keys_or_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite:{}/b.db", dir.path().display());
        let s = Settings::load(&env(&[
            ("FUNCTIONS_CUSTOMHANDLER_PORT", "34567"),
            ("BROKER_STORAGE", &db),
            ("BROKER_API_KEY", "k"),
            ("WEBSITE_HOSTNAME", "x.azurewebsites.net"),
        ]))
        .unwrap();
        assert!(s.host_mode);
        assert_eq!(s.listen.to_string(), "127.0.0.1:34567");
        assert!(s.api_key.is_none() && s.sweep_interval.is_none());
        assert_eq!(s.public_url.as_deref(), Some("https://x.azurewebsites.net"));
        assert!(s.integrations_missing);
        assert!(dir.path().join("broker.key").exists());
    }
}
