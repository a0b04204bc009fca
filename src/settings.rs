//! Settings: the environment (app settings under the Functions host) and the
//! integrations file, validated once at start into typed values. Every error
//! names the setting or file position and says how to fix it, so that a
//! misconfiguration surfaces at cold start rather than in the middle of a refresh.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use time::Duration;
use url::Url;

use crate::crypto::Keyring;
use crate::domain::{IntegrationName, Secret};

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
    /// The embedded store.
    Sqlite { path: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with form-urlencoded credentials (RFC 6749 §2.3.1).
    Basic,
    /// `client_secret_post`: credentials in the form body.
    Post,
}

/// One OAuth app at one vendor.
#[derive(Debug, Clone)]
pub struct Integration {
    pub name: IntegrationName,
    pub authorization_url: Url,
    pub token_url: Url,
    pub revocation_url: Option<Url>,
    pub client_id: String,
    pub client_secret: Secret,
    pub scopes: Vec<String>,
    pub client_auth: ClientAuth,
    pub pkce: bool,
    pub authorization_params: Vec<(String, String)>,
    pub token_params: Vec<(String, String)>,
    pub refresh_margin: Duration,
    /// Refresh any active grant not refreshed for this long, so that vendors
    /// that expire unused refresh tokens never see one go idle.
    pub keepalive: Duration,
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
    pub integrations_path: PathBuf,
    /// True when the integrations file did not exist (a warning is logged at start).
    pub integrations_missing: bool,
    pub refresh: RefreshPolicy,
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

        let storage_spec = get("BROKER_STORAGE")
            .or_else(|| get("AzureWebJobsStorage"))
            .unwrap_or_else(|| format!("sqlite:{DEFAULT_SQLITE}"));
        let storage = if let Some(path) = storage_spec.trim().strip_prefix("sqlite:") {
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
            StorageSettings::Table {
                connection_string: Secret::new(storage_spec.trim()),
                table,
            }
        };

        let keys = match (get("BROKER_ENCRYPTION_KEYS"), &storage) {
            (Some(spec), _) => Keyring::parse(&Secret::new(spec)).map_err(|e| setting_err("BROKER_ENCRYPTION_KEYS", e.to_string()))?,
            (None, StorageSettings::Sqlite { path }) => embedded_keyring(path)?,
            (None, StorageSettings::Table { .. }) => {
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
            Ok(text) => (parse_integrations(&text, &integrations_path, &get)?, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (BTreeMap::new(), true),
            Err(e) => {
                return Err(ConfigError::File {
                    path: integrations_path.display().to_string(),
                    problem: format!("cannot be read: {e}"),
                })
            }
        };

        let refresh = RefreshPolicy::load(&get)?;
        Ok(Self {
            refresh,
            listen,
            host_mode,
            public_url,
            api_key,
            sweep_interval,
            storage,
            keys,
            integrations,
            integrations_path,
            integrations_missing,
        })
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    integrations: BTreeMap<String, RawIntegration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntegration {
    authorization_url: String,
    token_url: String,
    #[serde(default)]
    revocation_url: Option<String>,
    client_id: String,
    client_secret: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    client_auth: Option<String>,
    #[serde(default)]
    pkce: Option<bool>,
    #[serde(default)]
    authorization_params: BTreeMap<String, String>,
    #[serde(default)]
    token_params: BTreeMap<String, String>,
    #[serde(default)]
    refresh_margin_secs: Option<u32>,
    #[serde(default)]
    keepalive_hours: Option<u32>,
}

/// Parses the integrations file text. `get` reads settings for `%NAME%` values.
pub fn parse_integrations(
    text: &str,
    path: &Path,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<IntegrationName, Integration>, ConfigError> {
    let path_s = path.display().to_string();
    let raw: RawFile = serde_json::from_str(text).map_err(|e| ConfigError::FileSyntax {
        path: path_s.clone(),
        line: e.line(),
        column: e.column(),
        problem: e
            .to_string()
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .to_owned(),
    })?;
    let mut out = BTreeMap::new();
    for (name, r) in raw.integrations {
        let fail = |problem: String| ConfigError::Integration {
            path: path_s.clone(),
            integration: name.clone(),
            problem,
        };
        let parsed_name = IntegrationName::parse(&name).map_err(|e| fail(e.to_string()))?;
        let expand = |field: &str, v: &str| -> Result<String, ConfigError> {
            match v.strip_prefix('%').and_then(|s| s.strip_suffix('%')) {
                Some(setting) if !setting.is_empty() => get(setting).ok_or_else(|| {
                    fail(format!(
                        "{field} refers to the setting {setting}, which is not set (add it to the app settings / environment)"
                    ))
                }),
                _ => Ok(v.to_owned()),
            }
        };
        let url_of = |field: &str, v: &str| -> Result<Url, ConfigError> {
            let v = expand(field, v)?;
            let u = Url::parse(&v).map_err(|e| fail(format!("{field} is not a URL: {e}")))?;
            if !matches!(u.scheme(), "https" | "http") {
                return Err(fail(format!("{field} must be an https URL")));
            }
            Ok(u)
        };
        let client_auth = match r
            .client_auth
            .as_deref()
            .map(|v| expand("client_auth", v))
            .transpose()?
            .as_deref()
        {
            None | Some("basic") => ClientAuth::Basic,
            Some("post") => ClientAuth::Post,
            Some(other) => {
                return Err(fail(format!(
                    "client_auth is {other:?}; use \"basic\" (default) or \"post\""
                )))
            }
        };
        let params = |field: &str,
                      m: &BTreeMap<String, String>|
         -> Result<Vec<(String, String)>, ConfigError> {
            m.iter()
                .map(|(k, v)| Ok((k.clone(), expand(&format!("{field}.{k}"), v)?)))
                .collect()
        };
        let client_id = expand("client_id", &r.client_id)?;
        if client_id.is_empty() {
            return Err(fail("client_id is empty".into()));
        }
        let integration = Integration {
            authorization_url: url_of("authorization_url", &r.authorization_url)?,
            token_url: url_of("token_url", &r.token_url)?,
            revocation_url: r
                .revocation_url
                .as_deref()
                .map(|v| url_of("revocation_url", v))
                .transpose()?,
            client_id,
            client_secret: Secret::new(expand("client_secret", &r.client_secret)?),
            scopes: r
                .scopes
                .iter()
                .map(|s| expand("scopes", s))
                .collect::<Result<_, _>>()?,
            client_auth,
            pkce: r.pkce.unwrap_or(true),
            authorization_params: params("authorization_params", &r.authorization_params)?,
            token_params: params("token_params", &r.token_params)?,
            refresh_margin: Duration::seconds(i64::from(r.refresh_margin_secs.unwrap_or(900))),
            keepalive: Duration::hours(i64::from(r.keepalive_hours.unwrap_or(24).max(1))),
            name: parsed_name.clone(),
        };
        out.insert(parsed_name, integration);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const GOOD: &str = r#"{"integrations": {"xero": {
        "authorization_url": "https://login.xero.com/identity/connect/authorize",
        "token_url": "https://identity.xero.com/connect/token",
        "client_id": "%XERO_ID%", "client_secret": "%XERO_SECRET%",
        "scopes": ["offline_access", "accounting.transactions"],
        "authorization_params": {"prompt": "consent"}
    }}}"#;

    #[test]
    fn expands_settings_and_applies_defaults() {
        let get = env(&[("XERO_ID", "id1"), ("XERO_SECRET", "sec")]);
        let m = parse_integrations(GOOD, Path::new("i.json"), &get).unwrap();
        let x = &m[&IntegrationName::parse("xero").unwrap()];
        assert_eq!(x.client_id, "id1");
        assert_eq!(x.client_secret.expose(), "sec");
        assert_eq!(x.client_auth, ClientAuth::Basic);
        assert!(x.pkce);
        assert_eq!(x.refresh_margin, Duration::seconds(900));
        assert_eq!(
            x.authorization_params,
            vec![("prompt".into(), "consent".into())]
        );
        assert!(!format!("{x:?}").contains("sec\""));
    }

    #[test]
    fn a_missing_setting_is_named() {
        let get = env(&[("XERO_ID", "id1")]);
        let err = parse_integrations(GOOD, Path::new("i.json"), &get)
            .unwrap_err()
            .to_string();
        assert!(err.contains("XERO_SECRET") && err.contains("xero"), "{err}");
    }

    #[test]
    fn a_malformed_file_names_line_and_problem() {
        let text = "{\"integrations\": {\n  \"a\": {\"token_url\": }\n}}";
        let err = parse_integrations(text, Path::new("i.json"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("i.json: line 2,"), "{err}");
        let text = r#"{"integrations": {"a": {"authorization_url": "https://a", "token_url": "https://b", "client_id": "x", "client_secret": "y", "scopez": []}}}"#;
        let err = parse_integrations(text, Path::new("i.json"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("scopez"), "{err}");
        let text = r#"{"integrations": {"Bad_Name": {"authorization_url": "https://a", "token_url": "https://b", "client_id": "x", "client_secret": "y"}}}"#;
        let err = parse_integrations(text, Path::new("i.json"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("Bad_Name"), "{err}");
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
