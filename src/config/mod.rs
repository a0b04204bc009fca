//! Configuration, validated once at start into typed values: the
//! environment (app settings under the Functions host) here, the integrations
//! file and vendor templates in [`integrations`], one error type in
//! [`error`]. Every error names the setting or file position and says how to
//! fix it, so a misconfiguration surfaces at cold start rather than in the
//! middle of a refresh.
//!
//! Loading is pure: it reads settings and the integrations file, nothing else.
//! What has side effects (creating the embedded store's key file, fetching an
//! issuer's metadata) is done by `startup`.
//!
//! Depends on `domain` and `crypto` only.
//!
//! Over 600 lines only with its unit tests.

pub mod callers;
pub mod discovery;
pub mod entra;
pub mod error;
pub mod events;
mod expand;
pub mod integrations;
pub mod lint;
pub mod proxy;
pub mod templates;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use time::Duration;
use url::Url;

use crate::crypto::Keyring;
use crate::domain::Secret;
pub use entra::EntraSettings;
pub use error::ConfigError;
pub use events::{EventSettings, WebhookFormat, WebhookReceiver};
pub use integrations::{AccountConfig, ClientAuth, Integration, IntegrationsFile};
pub use proxy::{ProxyAuth, ProxyConfig};

/// Reads settings by name; empty values count as unset.
struct Env<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.get)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// A whole number in `range` (the one number parser of the settings);
    /// `what` completes "must be ..." in the error.
    fn number(
        &self,
        name: &'static str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
        what: &str,
    ) -> Result<u64, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if range.contains(&n) => Ok(n),
                _ => Err(ConfigError::setting(name, format!("must be {what}"))),
            },
        }
    }

    /// A whole number of seconds in `range`, with the usual message.
    fn seconds(
        &self,
        name: &'static str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, ConfigError> {
        let what = format!("a whole number from {} to {}", range.start(), range.end());
        self.number(name, default, range, &what)
    }
}

/// The problems found while reading the settings: each is kept and reading
/// goes on with a fallback, so one start reports every problem at once.
#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    /// The value, or `fallback` with the error kept.
    fn take<T>(&mut self, r: Result<T, ConfigError>, fallback: T) -> T {
        r.unwrap_or_else(|e| {
            self.0.push(e);
            fallback
        })
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
        identity: IdentityStorage,
        table: String,
    },
    /// The embedded store.
    Sqlite { path: PathBuf },
}

/// Identity-based Table Storage: which account, and the platform's identity endpoint.
#[derive(Debug, Clone)]
pub struct IdentityStorage {
    pub account: String,
    /// The table service endpoint; `None` means `https://<account>.table.core.windows.net`.
    pub table_uri: Option<String>,
    /// A user-assigned identity's client id; `None` for the system-assigned one.
    pub client_id: Option<String>,
    /// The platform's `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` and/or `MSI_ENDPOINT` + `MSI_SECRET`.
    pub endpoints: crate::store::identity::IdentityEndpoints,
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
    /// Forced refreshes of one connection at most this often, across callers
    /// and instances (`BROKER_MIN_FORCED_REFRESH_SECS`, default 60; zero: no budget).
    pub min_forced_refresh: Duration,
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
            min_forced_refresh: Duration::seconds(60),
        }
    }
}

impl RefreshPolicy {
    fn load(env: &Env<'_>, p: &mut Problems) -> Self {
        let d = Self::default();
        let default_timeout = d.upstream_timeout.as_secs();
        let default_lease = d.lease.whole_seconds().unsigned_abs();
        let timeout = p.take(
            env.seconds("BROKER_UPSTREAM_TIMEOUT_SECS", default_timeout, 1..=120),
            default_timeout,
        );
        let lease = p.take(
            env.seconds("BROKER_REFRESH_LEASE_SECS", default_lease, 2..=3600),
            default_lease,
        );
        if lease < timeout + 2 {
            p.0.push(ConfigError::setting(
                "BROKER_REFRESH_LEASE_SECS",
                format!("({lease}) must exceed BROKER_UPSTREAM_TIMEOUT_SECS ({timeout}) by at least 2 seconds, so a refresh always finishes inside its lease"),
            ));
        }
        Self {
            lease: seconds(lease),
            upstream_timeout: std::time::Duration::from_secs(timeout),
            cooldown: seconds(p.take(
                env.seconds("BROKER_REFRESH_COOLDOWN_SECS", 30, 0..=86_400),
                30,
            )),
            sweep_concurrency: p.take(env.seconds("BROKER_SWEEP_CONCURRENCY", 8, 1..=256), 8)
                as usize,
            sweep_budget: std::time::Duration::from_secs(p.take(
                env.seconds("BROKER_SWEEP_BUDGET_SECS", 240, 1..=86_400),
                240,
            )),
            min_forced_refresh: seconds(p.take(
                env.seconds("BROKER_MIN_FORCED_REFRESH_SECS", 60, 0..=86_400),
                60,
            )),
            ..d
        }
    }
}

/// A number of seconds already range-checked to fit.
fn seconds(n: u64) -> Duration {
    Duration::seconds(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Where standalone mode's API key comes from.
#[derive(Debug, Clone)]
pub enum ApiKeySource {
    /// `BROKER_API_KEY` (at least [`MIN_API_KEY_LEN`] characters).
    Configured(Secret),
    /// Generated at first start into this file beside the embedded store (mode 0600), then read back.
    File(PathBuf),
}

/// The shortest API key accepted: a key is the only thing between a caller and the tokens.
pub const MIN_API_KEY_LEN: usize = 32;

/// Checks an API key's length; the message says how to make a good one.
pub fn check_api_key(key: &Secret, origin: &str) -> Result<(), String> {
    // App Service leaves a Key Vault reference it cannot resolve as the literal text, which names
    // the vault and secret and is no secret at all: never a key.
    if key
        .expose()
        .trim_start()
        .starts_with("@Microsoft.KeyVault(")
    {
        return Err(format!(
            "{origin} is a Key Vault reference the platform did not resolve (the secret is missing, or the app's identity may not read it); it is never taken as a key"
        ));
    }
    let len = key.expose().chars().count();
    if len < MIN_API_KEY_LEN {
        return Err(format!(
            "{origin} is {len} characters long; it must have at least {MIN_API_KEY_LEN}. Generate one with: openssl rand -base64 32"
        ));
    }
    Ok(())
}

/// Where the encryption keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// `BROKER_ENCRYPTION_KEYS`.
    Configured(Keyring),
    /// The embedded store's key file at this path, created at start when absent.
    File(PathBuf),
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

/// The proxy's limits.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// `BROKER_PROXY_TIMEOUT_SECS` (default 120, at most 225: under the 230 s
    /// the Azure front end allows a request).
    pub timeout: std::time::Duration,
    /// `BROKER_PROXY_RETRY_MAX_SECS` (default 30): the longest `Retry-After` waited for.
    pub retry_max: std::time::Duration,
    /// `BROKER_PROXY_REWRITE_MAX_BYTES` (default 16 MiB): larger JSON answers pass unmodified.
    pub rewrite_max_bytes: usize,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            timeout: std::time::Duration::from_secs(120),
            retry_max: std::time::Duration::from_secs(30),
            rewrite_max_bytes: 16 * 1024 * 1024,
        }
    }
}

impl ProxySettings {
    fn load(env: &Env<'_>, p: &mut Problems) -> Self {
        let d = Self::default();
        let timeout = p.take(
            env.number(
                "BROKER_PROXY_TIMEOUT_SECS",
                d.timeout.as_secs(),
                1..=225,
                "a whole number of seconds from 1 to 225 (the Azure front end ends a request after 230 s)",
            ),
            d.timeout.as_secs(),
        );
        let retry_max = p.take(
            env.number(
                "BROKER_PROXY_RETRY_MAX_SECS",
                d.retry_max.as_secs(),
                0..=225,
                "a whole number of seconds from 0 (never wait) to 225",
            ),
            d.retry_max.as_secs(),
        );
        let rewrite_max_bytes = p.take(
            env.number(
                "BROKER_PROXY_REWRITE_MAX_BYTES",
                d.rewrite_max_bytes as u64,
                0..=256 * 1024 * 1024,
                "a whole number of bytes from 0 (never rewrite) to 268435456 (256 MiB)",
            ),
            d.rewrite_max_bytes as u64,
        ) as usize;
        Self {
            timeout: std::time::Duration::from_secs(timeout),
            retry_max: std::time::Duration::from_secs(retry_max),
            rewrite_max_bytes,
        }
    }
}

const DEFAULT_SQLITE: &str = ".broker/broker.db";
const DEFAULT_TABLE: &str = "oauthbroker";
/// The generated API key's file name, beside the embedded store.
const API_KEY_FILE: &str = "api.key";

impl Settings {
    /// Reads every setting through `env` (the process environment in `main`).
    pub fn load(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env { get };
        let mut p = Problems::default();

        let host_port = env.get("FUNCTIONS_CUSTOMHANDLER_PORT");
        let host_mode = host_port.is_some();
        let (listen, api_key, sweep_interval) = if host_mode {
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
            let api_key = env.get("BROKER_API_KEY").map(Secret::new).map(|key| {
                if let Err(e) = check_api_key(&key, "the key") {
                    p.0.push(ConfigError::setting("BROKER_API_KEY", e));
                }
                ApiKeySource::Configured(key)
            });
            (
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port as u16),
                api_key,
                None,
            )
        } else {
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
            let api_key = match env.get("BROKER_API_KEY").map(Secret::new) {
                Some(key) => {
                    if let Err(e) = check_api_key(&key, "the key") {
                        p.0.push(ConfigError::setting("BROKER_API_KEY", e));
                    }
                    ApiKeySource::Configured(key)
                }
                None if !bind.is_loopback() => {
                    p.0.push(ConfigError::setting(
                        "BROKER_API_KEY",
                        format!("is required when BROKER_BIND ({bind}) is not a loopback address: without it anyone who can reach the port can read tokens. Set BROKER_API_KEY to a long random value (openssl rand -base64 32), or bind to 127.0.0.1"),
                    ));
                    ApiKeySource::File(PathBuf::new())
                }
                // Loopback without a key: one is generated beside the embedded store's files.
                None => ApiKeySource::File(PathBuf::new()),
            };
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
            (SocketAddr::new(bind, port as u16), Some(api_key), sweep)
        };

        let public_url = match env.get("BROKER_PUBLIC_URL") {
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
        };

        let table = |p: &mut Problems| -> String {
            let table = env
                .get("BROKER_TABLE")
                .unwrap_or_else(|| DEFAULT_TABLE.to_owned());
            let valid = table.len() >= 3
                && table.len() <= 63
                && table.as_bytes()[0].is_ascii_alphabetic()
                && table.bytes().all(|c| c.is_ascii_alphanumeric())
                && !table.eq_ignore_ascii_case("tables");
            if !valid {
                p.0.push(ConfigError::setting(
                    "BROKER_TABLE",
                    "must be 3-63 letters and digits, starting with a letter (Table Storage rules)",
                ));
            }
            table
        };
        let default_sqlite = || StorageSettings::Sqlite {
            path: PathBuf::from(DEFAULT_SQLITE),
        };
        let identity = p.take(identity_storage(&env), None);
        let storage = match identity {
            Some(identity) => StorageSettings::TableIdentity {
                identity,
                table: table(&mut p),
            },
            None => {
                let spec = env
                    .get("BROKER_STORAGE")
                    .or_else(|| env.get("AzureWebJobsStorage"))
                    .unwrap_or_else(|| format!("sqlite:{DEFAULT_SQLITE}"));
                match spec.strip_prefix("sqlite:") {
                    Some("") => {
                        p.0.push(ConfigError::setting(
                            "BROKER_STORAGE",
                            "sqlite: needs a path, e.g. sqlite:.broker/broker.db",
                        ));
                        default_sqlite()
                    }
                    Some(path) => StorageSettings::Sqlite {
                        path: PathBuf::from(path),
                    },
                    None => StorageSettings::Table {
                        connection_string: Secret::new(spec),
                        table: table(&mut p),
                    },
                }
            }
        };

        let keys = match (env.get("BROKER_ENCRYPTION_KEYS"), &storage) {
            (Some(spec), _) => match Keyring::parse(&Secret::new(spec)) {
                Ok(k) => KeySource::Configured(k),
                Err(e) => {
                    p.0.push(ConfigError::setting(
                        "BROKER_ENCRYPTION_KEYS",
                        e.to_string(),
                    ));
                    KeySource::File(PathBuf::new())
                }
            },
            (None, StorageSettings::Sqlite { path }) => KeySource::File(beside(path, "broker.key")),
            (None, StorageSettings::Table { .. } | StorageSettings::TableIdentity { .. }) => {
                p.0.push(ConfigError::setting(
                    "BROKER_ENCRYPTION_KEYS",
                    "is required with Table Storage: set it to <key-id>:<base64 of 32 random bytes>, e.g. k1:$(openssl rand -base64 32); keep it in Key Vault",
                ));
                KeySource::File(PathBuf::new())
            }
        };

        // The generated API key lives beside the embedded store (or where it would be).
        let api_key = api_key.map(|k| match k {
            ApiKeySource::File(_) => ApiKeySource::File(match &storage {
                StorageSettings::Sqlite { path } => beside(path, API_KEY_FILE),
                _ => beside(std::path::Path::new(DEFAULT_SQLITE), API_KEY_FILE),
            }),
            configured => configured,
        });
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

        let integrations_path = PathBuf::from(
            env.get("BROKER_INTEGRATIONS")
                .unwrap_or_else(|| "integrations.json".into()),
        );
        let integrations = p.take(
            IntegrationsFile::load(integrations_path.clone(), &|k| env.get(k)),
            IntegrationsFile {
                path: integrations_path,
                found: true,
                parsed: Default::default(),
            },
        );

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
        let token_keys = token_keys(&env, &mut p);
        let trusted_proxies = p.take(trusted_proxies(&env), Vec::new());
        if let Some(e) = ConfigError::all(p.0) {
            return Err(e);
        }
        let mut warnings = Vec::new();
        if let Some(u) = &public_url {
            if u.scheme() == "http" && !integrations::is_loopback(u) {
                warnings.push(format!(
                    "BROKER_PUBLIC_URL ({}) is http on a host that is not loopback: browsers and vendors reach the broker over plain HTTP there, so consent codes and cookies travel unencrypted, and most vendors refuse an http redirect URI. Put the broker behind a TLS proxy and set an https BROKER_PUBLIC_URL",
                    u.as_str().trim_end_matches('/')
                ));
            }
        }
        Ok(Self {
            proxy,
            trusted_proxies,
            refresh,
            consent_link_lifetime,
            events,
            entra,
            token_keys,
            listen,
            host_mode,
            public_url,
            api_key,
            max_connections,
            max_connections_per_source,
            sweep_interval,
            storage,
            keys,
            integrations,
            warnings,
        })
    }
}

/// `BROKER_TOKEN_KEYS`: comma-separated keys, each as long as an API key must be.
fn token_keys(env: &Env<'_>, p: &mut Problems) -> Vec<Secret> {
    let Some(v) = env.get("BROKER_TOKEN_KEYS") else {
        return Vec::new();
    };
    let keys: Vec<Secret> = v
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(Secret::new)
        .collect();
    for (i, k) in keys.iter().enumerate() {
        if let Err(e) = check_api_key(k, &format!("key {}", i + 1)) {
            p.0.push(ConfigError::setting("BROKER_TOKEN_KEYS", e));
        }
    }
    keys
}

/// `BROKER_TRUSTED_PROXIES`: addresses or CIDR blocks, comma-separated.
fn trusted_proxies(env: &Env<'_>) -> Result<Vec<crate::domain::source::IpBlock>, ConfigError> {
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

/// A file beside the embedded database.
pub fn beside(db: &std::path::Path, name: &str) -> PathBuf {
    db.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .join(name)
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
/// that identity-based host storage uses).
fn identity_storage(env: &Env<'_>) -> Result<Option<IdentityStorage>, ConfigError> {
    let get = |name: &str| env.get(name);
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
            return Err(ConfigError::setting(
                names.credential,
                format!("is {credential:?}; the only supported value is managedidentity"),
            ));
        }
    }
    let table_uri = match setting(names.uri) {
        Some(u) => {
            let parsed = Url::parse(&u).map_err(|e| {
                ConfigError::setting(
                    names.uri,
                    format!(
                        "is not a URL ({e}); example: https://<account>.table.core.windows.net"
                    ),
                )
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(ConfigError::setting(names.uri, "must be an https URL"));
            }
            Some((parsed, u.trim_end_matches('/').to_owned()))
        }
        None => None,
    };
    let account = match (setting(names.account), &table_uri) {
        (Some(a), _) => a,
        (None, Some((u, _))) => account_of(u).ok_or_else(|| {
            ConfigError::setting(
                names.account,
                format!(
                    "is needed: the storage account name cannot be read from {}",
                    names.uri
                ),
            )
        })?,
        (None, None) => return Ok(None),
    };
    let valid_account = (3..=24).contains(&account.len())
        && account
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !valid_account {
        return Err(ConfigError::setting(
            names.account,
            "must be a storage account name: 3-24 lowercase letters and digits",
        ));
    }
    let endpoints = crate::store::identity::IdentityEndpoints::from_settings(&get)
        .map_err(|(name, problem)| ConfigError::setting(name, problem))?;
    Ok(Some(IdentityStorage {
        account,
        table_uri: table_uri.map(|(_, u)| u),
        client_id: setting(names.client_id),
        endpoints,
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
    fn an_api_key_shorter_than_32_characters_is_refused_with_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite:{}/b.db", dir.path().display());
        let short = "0123456789abcdef0123456789abcde";
        let err = Settings::load(&env(&[("BROKER_STORAGE", &db), ("BROKER_API_KEY", short)]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("BROKER_API_KEY"), "{err}");
        assert!(
            err.contains("31 characters") && err.contains("at least 32"),
            "{err}"
        );
        assert!(err.contains("openssl rand"), "says how to make one: {err}");
        assert!(!err.contains(short), "the key is not echoed: {err}");
        let ok = format!("{short}f");
        let s = Settings::load(&env(&[("BROKER_STORAGE", &db), ("BROKER_API_KEY", &ok)])).unwrap();
        assert!(matches!(s.api_key, Some(ApiKeySource::Configured(_))));
    }

    #[test]
    fn loopback_without_a_key_gets_a_generated_key_file_beside_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite:{}/data/b.db", dir.path().display());
        let s = Settings::load(&env(&[("BROKER_STORAGE", &db)])).unwrap();
        assert!(
            matches!(&s.api_key, Some(ApiKeySource::File(p)) if p == &dir.path().join("data").join("api.key")),
            "{:?}",
            s.api_key
        );
        assert_eq!(s.max_connections, 256);
        assert_eq!(s.max_connections_per_source, 64);
        let err = Settings::load(&env(&[
            ("BROKER_STORAGE", &db),
            ("BROKER_MAX_CONNECTIONS", "0"),
        ]))
        .unwrap_err();
        assert!(
            err.to_string().starts_with("BROKER_MAX_CONNECTIONS"),
            "{err}"
        );
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

    #[test]
    fn under_the_host_the_admin_key_and_token_keys_are_the_handler_s_and_checked_for_length() {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite:{}/b.db", dir.path().display());
        let admin = "a-0123456789abcdef0123456789abcdef";
        let t1 = "t-0123456789abcdef0123456789abcdef";
        let t2 = "u-0123456789abcdef0123456789abcdef";
        let s = Settings::load(&env(&[
            ("FUNCTIONS_CUSTOMHANDLER_PORT", "34567"),
            ("BROKER_STORAGE", &db),
            ("BROKER_API_KEY", admin),
            ("BROKER_TOKEN_KEYS", &format!("{t1}, {t2},")),
        ]))
        .unwrap();
        assert!(matches!(&s.api_key, Some(ApiKeySource::Configured(k)) if k.expose() == admin));
        let keys: Vec<&str> = s.token_keys.iter().map(Secret::expose).collect();
        assert_eq!(keys, [t1, t2]);
        let err = Settings::load(&env(&[
            ("FUNCTIONS_CUSTOMHANDLER_PORT", "34567"),
            ("BROKER_STORAGE", &db),
            ("BROKER_API_KEY", "short"),
            ("BROKER_TOKEN_KEYS", &format!("{t1},tiny")),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("BROKER_API_KEY: the key is 5 characters"),
            "{err}"
        );
        assert!(
            err.contains("BROKER_TOKEN_KEYS: key 2 is 4 characters"),
            "{err}"
        );
        assert!(
            !err.contains("tiny") && !err.contains("short"),
            "keys are not echoed: {err}"
        );
    }
}
