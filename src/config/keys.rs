//! The broker's keys: the admin API key (`BROKER_API_KEY`, or a key generated
//! into a file beside the embedded store), the token keys that open the token
//! routes only (`BROKER_TOKEN_KEYS`), and the encryption keys
//! (`BROKER_ENCRYPTION_KEYS`, or the embedded store's key file).

use std::path::PathBuf;

use super::env::{Env, Problems};
use super::storage::{StorageSettings, DEFAULT_SQLITE};
use super::{beside, ConfigError};
use crate::crypto::Keyring;
use crate::domain::Secret;

/// The generated API key's file name, beside the embedded store.
const API_KEY_FILE: &str = "api.key";

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

/// A configured `BROKER_API_KEY`; a key too short is a problem kept in `p`.
pub(super) fn configured_api_key(key: Secret, p: &mut Problems) -> ApiKeySource {
    if let Err(e) = check_api_key(&key, "the key") {
        p.0.push(ConfigError::setting("BROKER_API_KEY", e));
    }
    ApiKeySource::Configured(key)
}

/// The generated API key lives beside the embedded store (or where it would be).
pub(super) fn place_key_file(
    api_key: Option<ApiKeySource>,
    storage: &StorageSettings,
) -> Option<ApiKeySource> {
    api_key.map(|k| match k {
        ApiKeySource::File(_) => ApiKeySource::File(match storage {
            StorageSettings::Sqlite { path } => beside(path, API_KEY_FILE),
            _ => beside(std::path::Path::new(DEFAULT_SQLITE), API_KEY_FILE),
        }),
        configured => configured,
    })
}

/// `BROKER_ENCRYPTION_KEYS`, or the embedded store's key file; Table Storage needs the setting.
pub(super) fn encryption_keys(
    env: &Env<'_>,
    storage: &StorageSettings,
    p: &mut Problems,
) -> KeySource {
    match (env.get("BROKER_ENCRYPTION_KEYS"), storage) {
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
    }
}

/// `BROKER_TOKEN_KEYS`: comma-separated keys, each as long as an API key must be.
pub(super) fn token_keys(env: &Env<'_>, p: &mut Problems) -> Vec<Secret> {
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

#[cfg(test)]
mod tests {
    use super::super::tests::env;
    use super::super::Settings;
    use super::*;

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
