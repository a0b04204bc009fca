//! Pipeline credentials: a client id and secret that a pipeline presents (to
//! the token endpoint, or as HTTP Basic on the token route) to obtain the
//! access token of exactly one connection.
//!
//! The client id is public (it sits in a linked service in clear); the secret
//! is a [`Secret`], shown once at creation and stored only as a keyed hash.

use std::fmt;

use time::{Duration, OffsetDateTime};

use super::{ConnectionId, IntegrationName, Secret};

/// Prefix of every client id (`pc_` = pipeline credential).
const ID_PREFIX: &str = "pc_";
/// Prefix of every client secret: recognisable by secret scanners.
const SECRET_PREFIX: &str = "pcs_";
/// Random bytes in a client id (base64url: 24 characters).
pub const ID_BYTES: usize = 18;
/// Random bytes in a client secret (base64url: 43 characters).
pub const SECRET_BYTES: usize = 32;

/// A pipeline credential's public identifier: `pc_` and 24 base64url
/// characters. Safe in URLs, in Table Storage keys and in HTTP Basic (no `:`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(String);

impl ClientId {
    /// Builds an id from random bytes (the caller draws them from the OS).
    pub fn from_random(bytes: &[u8; ID_BYTES]) -> Self {
        use base64::Engine as _;
        Self(format!(
            "{ID_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        ))
    }

    /// `None` for anything that is not exactly the shape the broker issues.
    pub fn parse(s: &str) -> Option<Self> {
        let body = s.strip_prefix(ID_PREFIX)?;
        let ok = body.len() == 24
            && body
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        ok.then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A new client secret from random bytes (the caller draws them from the OS).
pub fn client_secret_from_random(bytes: &[u8; SECRET_BYTES]) -> Secret {
    use base64::Engine as _;
    Secret::new(format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The stored keyed hash of a secret and the id of the key that made it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash {
    pub key_id: String,
    pub hash: String,
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretHash")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// One pipeline credential as stored (never with its secret).
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineCredential {
    pub client_id: ClientId,
    pub integration: IntegrationName,
    pub connection: ConnectionId,
    pub description: String,
    pub created_at: OffsetDateTime,
    /// `None`: it never expires (it can still be deleted).
    pub expires_at: Option<OffsetDateTime>,
    /// Updated at most every few minutes (see `credentials`).
    pub last_used_at: Option<OffsetDateTime>,
    /// Validity the handed-out access token must have; `None`: the integration's margin.
    pub min_validity: Option<Duration>,
    pub secret_hash: SecretHash,
}

impl PipelineCredential {
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }

    /// What is hashed for this credential: the secret bound to every field that
    /// decides what the credential may do (client id, integration, connection,
    /// expiry, minimum validity), so a row edited in the table (moved to another
    /// connection, its expiry pushed back) no longer verifies. Times count in
    /// milliseconds, the precision every backend stores.
    pub fn hash_input(&self, secret: &Secret) -> Vec<u8> {
        let ms = |t: OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000).to_string();
        format!(
            "oauth-broker/v2/credential\n{}\n{}\n{}\n{}\n{}\n{}",
            self.client_id.as_str(),
            self.integration.as_str(),
            self.connection.as_str(),
            self.expires_at.map(ms).unwrap_or_else(|| "-".into()),
            self.min_validity
                .map(|d| d.whole_seconds().to_string())
                .unwrap_or_else(|| "-".into()),
            secret.expose()
        )
        .into_bytes()
    }

    /// True when this credential may obtain the token of `integration`/`connection`.
    pub fn covers(&self, integration: &IntegrationName, connection: &ConnectionId) -> bool {
        &self.integration == integration && &self.connection == connection
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_round_trip_and_refuse_other_shapes() {
        let id = ClientId::from_random(&[0xfb; ID_BYTES]);
        assert!(id.as_str().starts_with("pc_"));
        assert_eq!(id.as_str().len(), 27);
        assert_eq!(ClientId::parse(id.as_str()), Some(id.clone()));
        for bad in [
            "",
            "pc_",
            "pc_short",
            "xx_AAAAAAAAAAAAAAAAAAAAAAAA",
            "pc_AAAAAAAAAAAAAAAAAAAAAAA'",
            "pc_AAAAAAAAAAAAAAAAAAAAAAA:",
            "pc_AAAAAAAAAAAAAAAAAAAAAAAAA",
            "pc_AAAAAAAAAAAAAAAAAAAAAAA/",
        ] {
            assert_eq!(ClientId::parse(bad), None, "{bad:?}");
        }
    }

    fn credential() -> PipelineCredential {
        PipelineCredential {
            client_id: ClientId::from_random(&[1; ID_BYTES]),
            integration: IntegrationName::parse("demo").unwrap(),
            connection: ConnectionId::parse("a").unwrap(),
            description: "d".into(),
            created_at: OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap(),
            expires_at: None,
            last_used_at: None,
            min_validity: None,
            secret_hash: SecretHash {
                key_id: "k1".into(),
                hash: String::new(),
            },
        }
    }

    #[test]
    fn secrets_are_prefixed_and_hashes_bind_what_the_credential_may_do() {
        let s = client_secret_from_random(&[7; SECRET_BYTES]);
        assert!(s.expose().starts_with("pcs_"));
        assert_eq!(s.expose().len(), 4 + 43);
        let base = credential();
        let input = base.hash_input(&s);
        let mut changed = Vec::new();
        let mut c = base.clone();
        c.client_id = ClientId::from_random(&[2; ID_BYTES]);
        changed.push(c);
        let mut c = base.clone();
        c.integration = IntegrationName::parse("other").unwrap();
        changed.push(c);
        let mut c = base.clone();
        c.connection = ConnectionId::parse("b").unwrap();
        changed.push(c);
        let mut c = base.clone();
        c.expires_at = Some(base.created_at + Duration::days(1));
        changed.push(c);
        let mut c = base.clone();
        c.min_validity = Some(Duration::seconds(60));
        changed.push(c);
        for c in changed {
            assert_ne!(c.hash_input(&s), input, "{c:?}");
        }
        // Neither the description nor the bookkeeping is bound.
        let mut c = base.clone();
        c.description = "renamed".into();
        c.last_used_at = Some(base.created_at);
        assert_eq!(c.hash_input(&s), input);
        // Sub-millisecond parts are not stored, so they are not hashed.
        let mut a = base.clone();
        a.expires_at = Some(base.created_at + Duration::nanoseconds(1_000_400));
        let mut b = base;
        b.expires_at = Some(a.expires_at.unwrap() - Duration::nanoseconds(400));
        assert_eq!(a.hash_input(&s), b.hash_input(&s));
    }

    #[test]
    fn debug_of_a_hash_shows_only_the_key_id() {
        let h = SecretHash {
            key_id: "k1".into(),
            hash: "c2VjcmV0LWhhc2g=".into(),
        };
        let d = format!("{h:?}");
        assert!(d.contains("k1") && !d.contains("c2VjcmV0"), "{d}");
    }
}
