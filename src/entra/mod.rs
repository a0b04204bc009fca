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
//! Here: the verifier and its checks of the token's header and signature;
//! fetching and caching the keys is in `keys`, the claim checks in `claims`.
//!
//! Depends on `config` (the settings) and `vendor_body` (capped reads).

mod claims;
pub mod jwt;
mod keys;
pub mod verified;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::entra::{EntraSettings, ADMIN_ROLE};
pub use claims::check_claims;
use claims::window;
use jwt::Malformed;
pub use keys::FetchError;
use keys::{Key, KeySet};
use verified::{Fingerprint, Lookup, Verified};

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

pub struct Verifier {
    settings: EntraSettings,
    http: reqwest::Client,
    keys: RwLock<KeySet>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    /// Tokens that passed every check, emptied at every key fetch.
    verified: Verified,
}

fn now_unix() -> i64 {
    crate::domain::clock::now().unix_timestamp()
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

#[cfg(test)]
mod tests {
    use super::*;

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
