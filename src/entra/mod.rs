//! Microsoft Entra ID callers: an `Authorization: Bearer <jwt>` access token,
//! verified against the tenant's published signing keys. The keys come from
//! `<authority>/<tenant>/v2.0/.well-known/openid-configuration` and its
//! `jwks_uri`, fetched once at start (in the background) and kept; a token
//! whose `kid` is not among them makes the broker fetch them again, at most
//! once a minute, and the set is renewed in the background once a day. So the
//! hot path is a map lookup and one RS256 signature check: no network.
//!
//! Checks, each with the name the log line gives it ([`Check::name`]): the token
//! reads as a compact JWS (`malformed`); `alg` is RS256 (`alg`; `none`, HS*,
//! PS*, ES* refused) with no `crit` (`crit`); its `kid` names a published RSA
//! signing key (`kid`, `unknown_kid`, `key_type`); the signature verifies
//! (`signature`); `iss` is the v2.0 or v1.0 issuer of the tenant (`iss`); `aud`
//! is one of the configured audiences (`aud`); `tid` is the tenant (`tid`);
//! `exp`/`nbf` hold with 5 minutes of skew (`exp`, `nbf`); `oid` is there
//! (`oid`). The caller is its `oid`.
//!
//! A token that passed every check is kept ([`verified`]) until its `exp`, so
//! a caller reusing its token pays for the signature once; its lifetime is
//! still checked at every use.
//!
//! Depends on `config` (the settings) and `vendor_body` (capped reads).

pub mod jwt;
pub mod verified;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use url::Url;

use crate::config::entra::{EntraSettings, ADMIN_ROLE};
use jwt::Malformed;
use verified::{Fingerprint, Lookup, Verified, Window};

/// Tolerated clock difference for `exp` and `nbf`.
pub const SKEW_SECS: i64 = 300;
/// An unknown `kid` refetches the keys at most this often.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(60);
/// The key set is renewed in the background when older than this.
pub const MAX_KEY_AGE: Duration = Duration::from_secs(24 * 3600);
/// While nothing is cached, a failed fetch is retried by callers at most this often.
const RETRY_UNAVAILABLE: Duration = Duration::from_secs(10);
/// Timeout of one metadata or key-set request.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// More keys than this in one set is not Entra's (it publishes a handful).
const MAX_KEYS: usize = 64;

/// A verified Entra caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraCaller {
    /// `oid`: the object id of the managed identity or service principal (lower case).
    pub object_id: String,
    /// `appid` (v1.0) or `azp` (v2.0): the calling application's client id.
    pub app_id: Option<String>,
    /// `roles`: the app roles granted to the caller on the broker's app.
    pub roles: Vec<String>,
    /// `ver`: "1.0" or "2.0".
    pub version: Option<String>,
}

impl EntraCaller {
    /// Carries the `Broker.Admin` app role.
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == ADMIN_ROLE)
    }
}

/// The check a token failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Malformed(Malformed),
    Algorithm,
    Critical,
    KeyId,
    UnknownKey,
    KeyType,
    Signature,
    Issuer,
    Audience,
    Tenant,
    Expired,
    NotYetValid,
    ObjectId,
}

impl Check {
    /// What the log line names: the exact check.
    pub fn name(self) -> &'static str {
        match self {
            Check::Malformed(_) => "malformed",
            Check::Algorithm => "alg",
            Check::Critical => "crit",
            Check::KeyId => "kid",
            Check::UnknownKey => "unknown_kid",
            Check::KeyType => "key_type",
            Check::Signature => "signature",
            Check::Issuer => "iss",
            Check::Audience => "aud",
            Check::Tenant => "tid",
            Check::Expired => "exp",
            Check::NotYetValid => "nbf",
            Check::ObjectId => "oid",
        }
    }

    /// What the caller is told: a stable short reason, coarser than the check.
    pub fn reason(self) -> &'static str {
        match self {
            Check::Malformed(_) => "malformed",
            Check::Algorithm
            | Check::Critical
            | Check::KeyId
            | Check::UnknownKey
            | Check::KeyType
            | Check::Signature => "signature",
            Check::Issuer | Check::Audience | Check::Tenant | Check::ObjectId => "claims",
            Check::Expired | Check::NotYetValid => "lifetime",
        }
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// The token failed a check: 401 `invalid_token`.
    Invalid(Check),
    /// The tenant's keys could not be fetched and none are cached: 503.
    KeysUnavailable,
}

/// One published key.
#[derive(Debug)]
enum Key {
    /// Big-endian modulus (no leading zeros) and exponent.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Published under this `kid` but not an RSA signing key for RS256.
    Unusable,
}

#[derive(Default)]
struct KeySet {
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

pub struct Verifier {
    settings: EntraSettings,
    http: reqwest::Client,
    keys: RwLock<KeySet>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    /// Tokens that passed every check, emptied at every key fetch.
    verified: Verified,
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

fn now_unix() -> i64 {
    crate::domain::clock::now().unix_timestamp()
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
    pub fn new(settings: EntraSettings, http: reqwest::Client) -> Arc<Self> {
        Arc::new(Self {
            settings,
            http,
            keys: RwLock::new(KeySet::default()),
            fetching: tokio::sync::Mutex::new(()),
            verified: Verified::default(),
        })
    }

    pub fn settings(&self) -> &EntraSettings {
        &self.settings
    }

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
    async fn key(self: &Arc<Self>, kid: &str) -> Result<Arc<Key>, VerifyError> {
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
    fn renew_if_old(self: &Arc<Self>) {
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

    /// Verifies a bearer token (or finds it verified earlier and still inside its lifetime).
    pub async fn verify(self: &Arc<Self>, token: &str) -> Result<Arc<EntraCaller>, VerifyError> {
        let invalid = VerifyError::Invalid;
        let now = now_unix();
        let print = Fingerprint::of(token);
        match self.verified.lookup(print, now) {
            Lookup::Valid(caller) => {
                self.renew_if_old();
                return Ok(caller);
            }
            Lookup::Outside { expired: true } => return Err(invalid(Check::Expired)),
            Lookup::Outside { expired: false } => return Err(invalid(Check::NotYetValid)),
            Lookup::Unknown => {}
        }
        let u = jwt::parse(token).map_err(|m| invalid(Check::Malformed(m)))?;
        if u.header.alg != "RS256" {
            return Err(invalid(Check::Algorithm));
        }
        if u.header.crit.is_some() {
            return Err(invalid(Check::Critical));
        }
        let kid = u.header.kid.as_deref().ok_or(invalid(Check::KeyId))?;
        let key = self.key(kid).await?;
        let Key::Rsa { n, e } = key.as_ref() else {
            return Err(invalid(Check::KeyType));
        };
        ring::signature::RsaPublicKeyComponents {
            n: n.as_slice(),
            e: e.as_slice(),
        }
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            u.signing_input.as_bytes(),
            &u.signature,
        )
        .map_err(|_| invalid(Check::Signature))?;
        let caller = Arc::new(check_claims(&self.settings, &u.claims, now)?);
        if let Some(window) = window(&u.claims) {
            self.verified
                .insert(print, Arc::clone(&caller), window, now);
        }
        Ok(caller)
    }
}

/// The token of an `Authorization: Bearer <token>` header value (RFC 6750
/// §2.1: the scheme in any case, then a b64token); `None` for another scheme.
/// `Some(Err(()))`: Bearer, but no well-formed token after it.
#[allow(clippy::result_unit_err)]
pub fn bearer(value: &str) -> Option<Result<&str, ()>> {
    let value = value.trim_matches([' ', '\t']);
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_start_matches(' ');
    let body = token.trim_end_matches('=');
    let ok = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    Some(if ok { Ok(token) } else { Err(()) })
}

/// When a token may be used: `exp` and `nbf` widened by the skew; `None` without `exp`.
fn window(c: &jwt::Claims) -> Option<Window> {
    Some(Window {
        until: c.exp?.0.saturating_add(SKEW_SECS),
        from: c.nbf.map(|n| n.0.saturating_sub(SKEW_SECS)),
    })
}

/// The claim checks, after the signature verified.
pub fn check_claims(
    s: &EntraSettings,
    c: &jwt::Claims,
    now: i64,
) -> Result<EntraCaller, VerifyError> {
    let invalid = VerifyError::Invalid;
    let iss = c.iss.as_deref().unwrap_or_default();
    if iss != s.v2_issuer() && iss != s.v1_issuer() {
        return Err(invalid(Check::Issuer));
    }
    let aud_ok = c
        .aud
        .as_ref()
        .is_some_and(|a| s.audiences.iter().any(|want| a.contains(want)));
    if !aud_ok {
        return Err(invalid(Check::Audience));
    }
    if !c
        .tid
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case(&s.tenant))
    {
        return Err(invalid(Check::Tenant));
    }
    let lifetime = window(c).ok_or(invalid(Check::Expired))?;
    if now > lifetime.until {
        return Err(invalid(Check::Expired));
    }
    if !lifetime.holds(now) {
        return Err(invalid(Check::NotYetValid));
    }
    let oid = c
        .oid
        .as_deref()
        .filter(|o| crate::config::entra::is_guid(o))
        .ok_or(invalid(Check::ObjectId))?;
    Ok(EntraCaller {
        object_id: oid.to_ascii_lowercase(),
        app_id: c.appid.clone().or_else(|| c.azp.clone()),
        roles: c.roles.clone().unwrap_or_default(),
        version: c.ver.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const OID: &str = "9a1b2c3d-0000-4000-8000-00000000000a";

    fn settings() -> EntraSettings {
        EntraSettings {
            tenant: T.into(),
            audiences: vec![
                "api://broker".into(),
                "0f1e2d3c-0000-4000-8000-000000000001".into(),
            ],
            authority: Url::parse("https://login.microsoftonline.com").unwrap(),
        }
    }

    fn claims(v: serde_json::Value) -> jwt::Claims {
        serde_json::from_value(v).unwrap()
    }

    fn good(now: i64) -> serde_json::Value {
        serde_json::json!({
            "iss": format!("https://sts.windows.net/{T}/"), "aud": "api://broker", "tid": T,
            "oid": OID, "appid": "c1", "roles": ["Broker.Admin"], "ver": "1.0",
            "iat": now, "nbf": now, "exp": now + 3600,
        })
    }

    #[test]
    fn claims_are_checked_one_by_one_with_five_minutes_of_skew() {
        let s = settings();
        let now = 1_800_000_000;
        let caller = check_claims(&s, &claims(good(now)), now).unwrap();
        assert_eq!(caller.object_id, OID);
        assert_eq!(caller.app_id.as_deref(), Some("c1"));
        assert!(caller.is_admin());

        let mut v2 = good(now);
        v2["iss"] = serde_json::json!(format!("https://login.microsoftonline.com/{T}/v2.0"));
        v2["aud"] = serde_json::json!("0f1e2d3c-0000-4000-8000-000000000001");
        v2.as_object_mut().unwrap().remove("appid");
        v2["azp"] = serde_json::json!("c2");
        v2["roles"] = serde_json::json!([]);
        let caller = check_claims(&s, &claims(v2), now).unwrap();
        assert_eq!(caller.app_id.as_deref(), Some("c2"));
        assert!(!caller.is_admin());

        let cases: Vec<(&str, serde_json::Value, Check)> = vec![
            (
                "iss",
                serde_json::json!("https://sts.windows.net/other/"),
                Check::Issuer,
            ),
            (
                "iss",
                serde_json::json!(format!("https://login.microsoftonline.com/{T}/")),
                Check::Issuer,
            ),
            ("aud", serde_json::json!("api://other"), Check::Audience),
            ("aud", serde_json::json!(["api://other"]), Check::Audience),
            (
                "tid",
                serde_json::json!("00000000-0000-0000-0000-000000000000"),
                Check::Tenant,
            ),
            (
                "exp",
                serde_json::json!(now - SKEW_SECS - 1),
                Check::Expired,
            ),
            (
                "nbf",
                serde_json::json!(now + SKEW_SECS + 1),
                Check::NotYetValid,
            ),
            ("oid", serde_json::json!("not-a-guid"), Check::ObjectId),
        ];
        for (field, value, check) in cases {
            let mut c = good(now);
            c[field] = value;
            assert_eq!(
                check_claims(&s, &claims(c), now),
                Err(VerifyError::Invalid(check)),
                "{field}"
            );
        }
        for missing in ["iss", "aud", "tid", "exp", "oid"] {
            let mut c = good(now);
            c.as_object_mut().unwrap().remove(missing);
            assert!(check_claims(&s, &claims(c), now).is_err(), "{missing}");
        }
        // Inside the skew both ways.
        let mut c = good(now);
        c["exp"] = serde_json::json!(now - SKEW_SECS);
        c["nbf"] = serde_json::json!(now + SKEW_SECS);
        assert!(check_claims(&s, &claims(c), now).is_ok());
    }

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

    #[test]
    fn bearer_tokens_are_read_from_the_header_value() {
        assert_eq!(bearer("Bearer abc.def.ghi"), Some(Ok("abc.def.ghi")));
        assert_eq!(bearer("bearer  a-b_c~d+e/f=="), Some(Ok("a-b_c~d+e/f==")));
        assert_eq!(bearer("Basic eDp5"), None);
        assert_eq!(bearer("Bearerx abc"), None);
        for bad in [
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearer a\"b",
            "Bearer ==",
            "Bearer a=b",
        ] {
            assert_eq!(bearer(bad), Some(Err(())), "{bad:?}");
        }
    }

    #[test]
    fn reasons_are_coarser_than_checks() {
        assert_eq!(Check::Audience.reason(), "claims");
        assert_eq!(Check::Audience.name(), "aud");
        assert_eq!(Check::UnknownKey.reason(), "signature");
        assert_eq!(Check::Expired.reason(), "lifetime");
    }
}
