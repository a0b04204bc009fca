//! Files the standalone broker keeps beside its embedded store, created at
//! start when absent, readable by the owner only (mode 0600): the encryption
//! key file. Side effects of start-up, kept out of `config` (which only reads).

use std::path::Path;

use crate::config::ConfigError;
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
