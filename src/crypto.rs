//! Sealing of secrets at rest: AES-256-GCM with a random 96-bit nonce, the
//! row's identity as associated data (a sealed blob moved to another row does
//! not open), and a key id stored beside each blob so keys can rotate: the
//! first key of `BROKER_ENCRYPTION_KEYS` seals, every listed key opens.
//!
//! The same keys also key the hashes of pipeline credential secrets: each
//! key yields a separate HMAC-SHA256 key (HKDF-Expand with its own label), so
//! a stored hash can be checked only with the keyring, and it names the key id
//! it was made with, so it keeps verifying through a rotation.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// The HKDF-Expand label of the credential-hash key (RFC 5869, one block).
const MAC_LABEL: &[u8] = b"oauth-broker/v1/credential-hash";

use crate::domain::Secret;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("no key with id {0:?} is configured in BROKER_ENCRYPTION_KEYS (was the key removed after rotation?)")]
    UnknownKey(String),
    #[error(
        "a sealed value did not open: it is corrupt, was moved to another row, or the key is wrong"
    )]
    Corrupt,
}

#[derive(Debug, thiserror::Error)]
#[error("BROKER_ENCRYPTION_KEYS: {0}")]
pub struct KeyParseError(String);

/// The configured keys; the first one seals.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(String, Aes256Gcm)>,
    /// Per key id, in the same order: the derived HMAC key for credential hashes.
    macs: Vec<[u8; 32]>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Keyring")
            .field("key_ids", &ids)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// Parses `<key-id>:<base64 of 32 bytes>[,<key-id>:<base64>...]`.
    pub fn parse(spec: &Secret) -> Result<Self, KeyParseError> {
        let mut keys = Vec::new();
        let mut macs = Vec::new();
        for item in spec
            .expose()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let (id, b64) = item.split_once(':').ok_or_else(|| {
                KeyParseError(
                    "each key is <key-id>:<base64 of 32 bytes>; an entry has no ':'".into(),
                )
            })?;
            let id = id.trim();
            if id.is_empty()
                || id.len() > 64
                || !id
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            {
                return Err(KeyParseError(format!(
                    "key id {id:?} must be 1-64 characters of A-Z, a-z, 0-9, '-', '_', '.'"
                )));
            }
            let bytes = STANDARD
                .decode(b64.trim())
                .or_else(|_| URL_SAFE_NO_PAD.decode(b64.trim()))
                .map_err(|_| KeyParseError(format!("key {id:?} is not valid base64")))?;
            if bytes.len() != 32 {
                return Err(KeyParseError(format!(
                    "key {id:?} decodes to {} bytes; AES-256 needs exactly 32 (generate one with: openssl rand -base64 32)",
                    bytes.len()
                )));
            }
            if keys.iter().any(|(k, _)| k == id) {
                return Err(KeyParseError(format!("key id {id:?} is listed twice")));
            }
            let cipher = Aes256Gcm::new_from_slice(&bytes).expect("length checked above");
            keys.push((id.to_owned(), cipher));
            macs.push(derive_mac_key(&bytes));
        }
        if keys.is_empty() {
            return Err(KeyParseError("no key given".into()));
        }
        Ok(Self { keys, macs })
    }

    /// A fresh random key spec `<id>:<base64>` for the embedded store's key file.
    pub fn generate_spec(id: &str) -> Secret {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Secret::new(format!("{id}:{}", STANDARD.encode(key)))
    }

    /// Seals `plaintext` bound to `aad`; returns (key id, base64 of nonce||ciphertext).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> (String, String) {
        let (id, cipher) = &self.keys[0];
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut blob = Vec::with_capacity(12 + ct.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ct);
        (id.clone(), STANDARD.encode(blob))
    }

    /// The keyed hash of `data` with the sealing key: (key id, base64 of HMAC-SHA256).
    pub fn mac(&self, data: &[u8]) -> (String, String) {
        (
            self.keys[0].0.clone(),
            STANDARD.encode(mac_with(&self.macs[0], data)),
        )
    }

    /// True when `expected` (base64) is the keyed hash of `data` under `key_id`,
    /// compared in constant time. An unknown key id is an error (a removed key).
    pub fn verify_mac(
        &self,
        key_id: &str,
        data: &[u8],
        expected: &str,
    ) -> Result<bool, CryptoError> {
        let i = self
            .keys
            .iter()
            .position(|(id, _)| id == key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))?;
        let expected = STANDARD
            .decode(expected)
            .map_err(|_| CryptoError::Corrupt)?;
        let mut m =
            <HmacSha256 as Mac>::new_from_slice(&self.macs[i]).expect("HMAC takes any key length");
        m.update(data);
        Ok(m.verify_slice(&expected).is_ok())
    }

    /// The id of the key that seals and hashes now (the first listed).
    pub fn current_key_id(&self) -> &str {
        &self.keys[0].0
    }

    pub fn open(&self, key_id: &str, sealed: &str, aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let cipher = self
            .keys
            .iter()
            .find(|(id, _)| id == key_id)
            .map(|(_, c)| c)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))?;
        let blob = STANDARD.decode(sealed).map_err(|_| CryptoError::Corrupt)?;
        if blob.len() < 12 + 16 {
            return Err(CryptoError::Corrupt);
        }
        let (nonce, ct) = blob.split_at(12);
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| CryptoError::Corrupt)
    }
}

/// HKDF-Expand (RFC 5869) of one block with the key as PRK: the key is already
/// 32 uniformly random bytes, so no extract step is needed.
fn derive_mac_key(key: &[u8]) -> [u8; 32] {
    let mut info = MAC_LABEL.to_vec();
    info.push(1);
    mac_with(key, &info)
}

fn mac_with(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(spec: &str) -> Keyring {
        Keyring::parse(&Secret::new(spec)).unwrap()
    }

    #[test]
    fn seals_and_opens_with_the_row_identity() {
        let k = Keyring::parse(&Keyring::generate_spec("k1")).unwrap();
        let (id, blob) = k.seal(b"top secret", b"demo/c1");
        assert_eq!(id, "k1");
        assert!(!blob.contains("top secret"));
        assert_eq!(k.open(&id, &blob, b"demo/c1").unwrap(), b"top secret");
        assert!(matches!(
            k.open(&id, &blob, b"demo/c2"),
            Err(CryptoError::Corrupt)
        ));
        assert!(matches!(
            k.open("k9", &blob, b"demo/c1"),
            Err(CryptoError::UnknownKey(_))
        ));
    }

    #[test]
    fn rotation_seals_with_the_first_and_opens_with_any() {
        let old = Keyring::generate_spec("old");
        let new = Keyring::generate_spec("new");
        let before = ring(old.expose());
        let (id, blob) = before.seal(b"x", b"");
        let after = ring(&format!("{},{}", new.expose(), old.expose()));
        assert_eq!(after.open(&id, &blob, b"").unwrap(), b"x");
        assert_eq!(after.seal(b"y", b"").0, "new");
    }

    #[test]
    fn bad_specs_are_refused_without_echoing_key_material() {
        for bad in ["", "nocolon", "k1:notbase64!!", "k1:AAAA", "bad id:AAAA", "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="] {
            let err = Keyring::parse(&Secret::new(bad)).unwrap_err().to_string();
            assert!(!err.contains("AAAA"), "{err}");
        }
    }

    #[test]
    fn keyed_hashes_verify_across_a_rotation_and_only_with_the_key() {
        let old = Keyring::generate_spec("old");
        let new = Keyring::generate_spec("new");
        let before = ring(old.expose());
        let (id, h) = before.mac(b"client/secret");
        assert_eq!(id, "old");
        assert!(before.verify_mac(&id, b"client/secret", &h).unwrap());
        assert!(!before.verify_mac(&id, b"client/secreT", &h).unwrap());
        let after = ring(&format!("{},{}", new.expose(), old.expose()));
        assert!(after.verify_mac(&id, b"client/secret", &h).unwrap());
        assert_eq!(after.current_key_id(), "new");
        let (id2, h2) = after.mac(b"client/secret");
        assert_eq!(id2, "new");
        assert_ne!(h2, h, "each key hashes differently");
        let other = Keyring::parse(&Keyring::generate_spec("old")).unwrap();
        assert!(!other.verify_mac(&id, b"client/secret", &h).unwrap());
        assert!(matches!(
            new_only(&new).verify_mac("old", b"client/secret", &h),
            Err(CryptoError::UnknownKey(_))
        ));
        // The hash key is not the sealing key: the raw key never hashes to the stored value.
        let raw = STANDARD
            .decode(old.expose().split_once(':').unwrap().1)
            .unwrap();
        assert_ne!(STANDARD.encode(mac_with(&raw, b"client/secret")), h);
    }

    fn new_only(spec: &Secret) -> Keyring {
        ring(spec.expose())
    }

    #[test]
    fn debug_lists_only_key_ids() {
        let spec = Keyring::generate_spec("k1");
        let dbg = format!("{:?}", ring(spec.expose()));
        assert!(dbg.contains("k1"));
        assert!(!dbg.contains(spec.expose().split_once(':').unwrap().1));
    }
}
