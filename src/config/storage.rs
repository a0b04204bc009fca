//! Where grants are stored: `BROKER_STORAGE` (else `AzureWebJobsStorage`,
//! else the embedded store) as a Table Storage connection string or
//! `sqlite:<path>`; Table Storage with the app's managed identity
//! (`BROKER_STORAGE__*`, or the host's `AzureWebJobsStorage__*`); and the
//! table's name (`BROKER_TABLE`).

use std::path::PathBuf;

use url::Url;

use super::env::{Env, Problems};
use super::ConfigError;
use crate::domain::Secret;

/// The embedded store's database when none is configured.
pub(super) const DEFAULT_SQLITE: &str = ".broker/broker.db";
const DEFAULT_TABLE: &str = "oauthbroker";

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

/// Reads where grants are stored; problems are kept in `p` and reading goes
/// on with the embedded store.
pub(super) fn load(env: &Env<'_>, p: &mut Problems) -> StorageSettings {
    let default_sqlite = || StorageSettings::Sqlite {
        path: PathBuf::from(DEFAULT_SQLITE),
    };
    let identity = p.take(identity_storage(env), None);
    match identity {
        Some(identity) => StorageSettings::TableIdentity {
            identity,
            table: table(env, p),
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
                    table: table(env, p),
                },
            }
        }
    }
}

/// `BROKER_TABLE` (default `oauthbroker`), checked against Table Storage's rules.
fn table(env: &Env<'_>, p: &mut Problems) -> String {
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
