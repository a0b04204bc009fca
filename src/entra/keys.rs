//! The tenant's signing keys: fetched from the OpenID metadata's `jwks_uri`
//! (which must be on the authority's host), kept in a map by `kid`, fetched
//! again for an unknown `kid` at most once per [`REFETCH_INTERVAL`], and
//! renewed in the background once older than [`MAX_KEY_AGE`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use url::Url;

use super::{
    Check, Verifier, VerifyError, FETCH_TIMEOUT, MAX_KEYS, MAX_KEY_AGE, REFETCH_INTERVAL,
    RETRY_UNAVAILABLE,
};

/// One published key.
#[derive(Debug)]
pub(super) enum Key {
    /// Big-endian modulus (no leading zeros) and exponent.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Published under this `kid` but not an RSA signing key for RS256.
    Unusable,
}

#[derive(Default)]
pub(super) struct KeySet {
    keys: HashMap<String, Arc<Key>>,
    /// When the set was last fetched successfully.
    fetched_at: Option<Instant>,
    /// When an unknown `kid` last made the broker fetch it.
    unknown_refetch_at: Option<Instant>,
    /// When a fetch last failed while nothing was cached.
    failed_at: Option<Instant>,
    /// A background renewal is running.
    renewing: bool,
}

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

/// Why the keys could not be fetched (logged, never shown to a caller).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{what}: {problem}")]
    Bad { what: &'static str, problem: String },
}

fn bad(what: &'static str, problem: impl Into<String>) -> FetchError {
    FetchError::Bad {
        what,
        problem: problem.into(),
    }
}

/// One JWK of the set, or `None` when it has no usable `kid`.
fn read_jwk(v: &serde_json::Value) -> Option<(String, Key)> {
    let kid = v.get("kid")?.as_str()?.to_owned();
    if kid.is_empty() || kid.len() > 256 {
        return None;
    }
    let s = |name: &str| v.get(name).and_then(serde_json::Value::as_str);
    let usable = s("kty") == Some("RSA")
        && s("use").is_none_or(|u| u == "sig")
        && s("alg").is_none_or(|a| a == "RS256");
    let decoded = |name: &str| s(name).and_then(|x| URL_SAFE_NO_PAD.decode(x).ok());
    let key = match (usable, decoded("n"), decoded("e")) {
        (true, Some(n), Some(e)) if !n.is_empty() && !e.is_empty() => {
            let strip = |b: Vec<u8>| {
                let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
                b[first..].to_vec()
            };
            Key::Rsa {
                n: strip(n),
                e: strip(e),
            }
        }
        _ => Key::Unusable,
    };
    Some((kid, key))
}

impl Verifier {
    /// Fetches the keys in the background (at start), so the first caller meets a warm cache.
    pub fn spawn_prefetch(self: &Arc<Self>) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let _guard = me.fetching.lock().await;
            if let Err(e) = me.fetch().await {
                tracing::warn!(error = %e, metadata = %me.settings.metadata_url(), "Entra ID signing keys could not be fetched at start; the first Entra caller tries again");
            }
        });
    }

    fn cached(&self, kid: &str) -> Option<Arc<Key>> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys
            .get(kid)
            .cloned()
    }

    /// Fetches metadata and key set and replaces the cached set (keys Entra
    /// no longer publishes are dropped). The caller holds `fetching`.
    async fn fetch(&self) -> Result<usize, FetchError> {
        let meta_url = self.settings.metadata_url();
        let meta: Metadata = self.get_json(&meta_url, "metadata").await?;
        if meta.issuer.trim_end_matches('/') != self.settings.v2_issuer() {
            return Err(bad(
                "metadata",
                format!(
                    "its issuer is {:?}, not {:?}",
                    meta.issuer,
                    self.settings.v2_issuer()
                ),
            ));
        }
        let jwks_uri = Url::parse(&meta.jwks_uri)
            .map_err(|e| bad("metadata", format!("jwks_uri is not a URL: {e}")))?;
        crate::config::integrations::check_endpoint("jwks_uri", &jwks_uri)
            .map_err(|m| bad("metadata", m))?;
        if jwks_uri.host_str() != self.settings.authority.host_str()
            || jwks_uri.port_or_known_default() != self.settings.authority.port_or_known_default()
        {
            return Err(bad("metadata", "jwks_uri is not on the authority's host"));
        }
        let set: JwkSet = self.get_json(jwks_uri.as_str(), "key set").await?;
        let keys: HashMap<String, Arc<Key>> = set
            .keys
            .iter()
            .take(MAX_KEYS)
            .filter_map(read_jwk)
            .map(|(k, v)| (k, Arc::new(v)))
            .collect();
        let count = keys.len();
        let mut w = self.keys.write().unwrap_or_else(|p| p.into_inner());
        w.keys = keys;
        w.fetched_at = Some(Instant::now());
        drop(w);
        self.verified.clear();
        tracing::info!(keys = count, "Entra ID signing keys fetched");
        Ok(count)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        what: &'static str,
    ) -> Result<T, FetchError> {
        let resp = self
            .http
            .get(url)
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| bad(what, format!("request failed: {e}")))?;
        if !resp.status().is_success() {
            return Err(bad(what, format!("HTTP {}", resp.status().as_u16())));
        }
        let body = crate::vendor_body::read_capped(resp, crate::vendor_body::MAX_BODY)
            .await
            .map_err(|e| match e {
                crate::vendor_body::BodyError::TooLarge => bad(what, "larger than 64 KiB"),
                crate::vendor_body::BodyError::Transport(e) => bad(what, e.to_string()),
            })?;
        serde_json::from_slice(&body).map_err(|e| bad(what, format!("not the expected JSON: {e}")))
    }

    /// The key for `kid`: cached, or after a refetch when an unknown `kid` may
    /// still make one (at most once per [`REFETCH_INTERVAL`]; the first fetch,
    /// when nothing is cached, is not counted).
    pub(super) async fn key(self: &Arc<Self>, kid: &str) -> Result<Arc<Key>, VerifyError> {
        if let Some(k) = self.cached(kid) {
            self.renew_if_old();
            return Ok(k);
        }
        let _guard = self.fetching.lock().await;
        if let Some(k) = self.cached(kid) {
            return Ok(k);
        }
        let (loaded, may_refetch, failed_recently) = {
            let r = self.keys.read().unwrap_or_else(|p| p.into_inner());
            (
                r.fetched_at.is_some(),
                r.unknown_refetch_at
                    .is_none_or(|t| t.elapsed() >= REFETCH_INTERVAL),
                r.failed_at.is_some_and(|t| t.elapsed() < RETRY_UNAVAILABLE),
            )
        };
        if loaded && !may_refetch {
            return Err(VerifyError::Invalid(Check::UnknownKey));
        }
        // Entra unreachable and nothing cached: callers are not queued behind one timeout each.
        if !loaded && failed_recently {
            return Err(VerifyError::KeysUnavailable);
        }
        if loaded {
            self.keys
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .unknown_refetch_at = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "Entra ID signing keys could not be fetched");
                if !loaded {
                    self.keys
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .failed_at = Some(Instant::now());
                    return Err(VerifyError::KeysUnavailable);
                }
            }
        }
        self.cached(kid)
            .ok_or(VerifyError::Invalid(Check::UnknownKey))
    }

    /// Renews a day-old key set in the background (the caller is served from the cache).
    pub(super) fn renew_if_old(self: &Arc<Self>) {
        let old = |k: &KeySet| k.fetched_at.is_some_and(|t| t.elapsed() >= MAX_KEY_AGE);
        if !old(&self.keys.read().unwrap_or_else(|p| p.into_inner())) {
            return;
        }
        {
            let mut w = self.keys.write().unwrap_or_else(|p| p.into_inner());
            if !old(&w) || w.renewing {
                return;
            }
            w.renewing = true;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let _guard = me.fetching.lock().await;
            if let Err(e) = me.fetch().await {
                tracing::warn!(error = %e, "renewing the Entra ID signing keys failed; the cached keys stay in use");
            }
            me.keys.write().unwrap_or_else(|p| p.into_inner()).renewing = false;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_entries_other_than_rsa_signing_keys_are_unusable() {
        let rsa =
            serde_json::json!({"kty": "RSA", "use": "sig", "kid": "a", "n": "AAEC", "e": "AQAB"});
        let (kid, key) = read_jwk(&rsa).unwrap();
        assert_eq!(kid, "a");
        assert!(
            matches!(key, Key::Rsa { ref n, .. } if n == &[1, 2]),
            "leading zeros stripped"
        );
        for other in [
            serde_json::json!({"kty": "EC", "kid": "b", "crv": "P-256", "x": "AA", "y": "AA"}),
            serde_json::json!({"kty": "RSA", "use": "enc", "kid": "c", "n": "AQ", "e": "AQAB"}),
            serde_json::json!({"kty": "RSA", "alg": "RS512", "kid": "d", "n": "AQ", "e": "AQAB"}),
            serde_json::json!({"kty": "oct", "kid": "e", "k": "AQAB"}),
            serde_json::json!({"kty": "RSA", "kid": "f", "n": "!!", "e": "AQAB"}),
        ] {
            assert!(
                matches!(read_jwk(&other), Some((_, Key::Unusable))),
                "{other}"
            );
        }
        assert!(read_jwk(&serde_json::json!({"kty": "RSA", "n": "AQ", "e": "AQAB"})).is_none());
    }
}
