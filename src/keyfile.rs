//! Files the standalone broker keeps beside its embedded store, created at
//! start when absent, readable by the owner only (mode 0600): the encryption
//! key file and, when `BROKER_API_KEY` is unset, the API key file. Side
//! effects of start-up, kept out of `config` (which only reads).

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;

use crate::config::{check_api_key, ConfigError};
use crate::crypto::Keyring;
use crate::domain::Secret;

/// The embedded store's keyring from `path`, generating the file on first start.
pub fn load_or_create_keyring(path: &Path) -> Result<Keyring, ConfigError> {
    let err = |problem: String| ConfigError::setting("BROKER_ENCRYPTION_KEYS", problem);
    let spec = match read_or_create(path, || Keyring::generate_spec("local1")) {
        Ok(spec) => spec,
        Err(e) => {
            return Err(err(format!(
                "unset, and the key file {} cannot be read or created: {e}",
                path.display()
            )))
        }
    };
    Keyring::parse(&spec).map_err(|e| err(format!("key file {}: {e}", path.display())))
}

/// Standalone mode's API key from `path`, generating it (32 random bytes,
/// base64url: 43 characters, safe in a query string) on first start.
pub fn load_or_create_api_key(path: &Path) -> Result<Secret, ConfigError> {
    let err = |problem: String| ConfigError::setting("BROKER_API_KEY", problem);
    let key = read_or_create(path, || {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Secret::new(URL_SAFE_NO_PAD.encode(bytes))
    })
    .map_err(|e| {
        err(format!(
            "is unset, and the key file {} cannot be read or created: {e}. Set BROKER_API_KEY, or make the directory writable",
            path.display()
        ))
    })?;
    check_api_key(
        &key,
        &format!("is unset, and the key in {}", path.display()),
    )
    .map_err(|e| {
        err(format!(
            "{e}, or delete the file to have a new one generated"
        ))
    })?;
    Ok(key)
}

/// The trimmed contents of `path`; when it does not exist, writes `fresh()` to it
/// first (creating its directory), so the first start and every later one agree.
pub fn read_or_create(path: &Path, fresh: impl FnOnce() -> Secret) -> std::io::Result<Secret> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Secret::new(s.trim())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let value = fresh();
            match write_private(path, value.expose()) {
                Ok(()) => Ok(value),
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Ok(Secret::new(std::fs::read_to_string(path)?.trim()))
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
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
mod tests {
    use super::*;

    #[test]
    fn the_api_key_file_is_generated_private_long_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.key");
        let first = load_or_create_api_key(&path).unwrap();
        assert!(first.expose().len() >= 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(load_or_create_api_key(&path).unwrap(), first);
        std::fs::write(&path, "short\n").unwrap();
        let err = load_or_create_api_key(&path).unwrap_err().to_string();
        assert!(
            err.contains("at least 32") && !err.contains("short\n"),
            "{err}"
        );
    }

    #[test]
    fn the_key_file_is_created_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("broker.key");
        let first = load_or_create_keyring(&path).unwrap();
        assert!(path.exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = load_or_create_keyring(&path).unwrap();
        let (key_id, sealed) = first.seal(b"x", b"aad");
        assert_eq!(second.open(&key_id, &sealed, b"aad").unwrap(), b"x");
    }
}
