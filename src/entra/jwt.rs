//! The compact JWS of an Entra access token, read without trusting it: three
//! base64url parts, a JSON header (`alg`, `kid`) and a JSON claims set. Pure
//! and bounded (a token over [`MAX_TOKEN_LEN`] is refused before any decoding),
//! so it is what the fuzz target drives. Nothing here checks a signature or a
//! claim's value; [`super::Verifier`] does that with what this returns.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

/// The longest token read. Entra's app-only access tokens are 1-2 KB; a user's
/// with many groups stays under 8 KB (the overage claim replaces long lists).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a token could not be read at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    TooLong,
    /// Not three dot-separated parts.
    Parts,
    /// A part is not base64url (unpadded, as RFC 7515 §2 says).
    Base64,
    /// The header or claims are not a JSON object of the expected shape.
    Json,
}

/// The header, as far as the broker reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    /// `crit` names extensions the verifier must understand (RFC 7515 §4.1.11):
    /// the broker understands none, so a token carrying it is refused.
    #[serde(default)]
    pub crit: Option<Value>,
}

/// `aud` is a string in Entra's tokens; RFC 7519 also allows an array.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, wanted: &str) -> bool {
        match self {
            Audience::One(a) => a == wanted,
            Audience::Many(v) => v.iter().any(|a| a == wanted),
        }
    }
}

/// A NumericDate (RFC 7519 §2): Entra writes whole seconds; a fraction is allowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NumericDate(pub i64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let n = serde_json::Number::deserialize(d)?;
        if let Some(i) = n.as_i64() {
            return Ok(Self(i));
        }
        match n.as_f64() {
            Some(f) if f.is_finite() && f.abs() < 1e15 => Ok(Self(f.floor() as i64)),
            _ => Err(D::Error::custom("a NumericDate out of range")),
        }
    }
}

/// The claims the broker reads; others (`aio`, `rh`, `uti`, `xms_*`, …) are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub iss: Option<String>,
    #[serde(default)]
    pub aud: Option<Audience>,
    #[serde(default)]
    pub tid: Option<String>,
    #[serde(default)]
    pub oid: Option<String>,
    /// The calling application (v1.0).
    #[serde(default)]
    pub appid: Option<String>,
    /// The calling application (v2.0).
    #[serde(default)]
    pub azp: Option<String>,
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    #[serde(default)]
    pub idtyp: Option<String>,
    #[serde(default)]
    pub ver: Option<String>,
    #[serde(default)]
    pub exp: Option<NumericDate>,
    #[serde(default)]
    pub nbf: Option<NumericDate>,
    #[serde(default)]
    pub iat: Option<NumericDate>,
}

/// A token split and decoded, not yet verified.
#[derive(Debug, Clone)]
pub struct Unverified<'a> {
    pub header: Header,
    pub claims: Claims,
    /// `<header>.<payload>`: what the signature covers.
    pub signing_input: &'a str,
    pub signature: Vec<u8>,
}

fn decode(part: &str) -> Result<Vec<u8>, Malformed> {
    URL_SAFE_NO_PAD.decode(part).map_err(|_| Malformed::Base64)
}

/// Splits and decodes `token`; refuses anything but a three-part compact JWS
/// whose header and claims are JSON objects of the expected types.
pub fn parse(token: &str) -> Result<Unverified<'_>, Malformed> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Malformed::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed::Parts);
    };
    if h.is_empty() || c.is_empty() {
        return Err(Malformed::Parts);
    }
    let header: Header = object(&decode(h)?)?;
    let claims: Claims = object(&decode(c)?)?;
    let signature = decode(s)?;
    Ok(Unverified {
        header,
        claims,
        signing_input: &token[..h.len() + 1 + c.len()],
        signature,
    })
}

/// A JSON object into `T`: serde would also read a struct from an array, and
/// would skip a member it ignores without checking that its text is UTF-8
/// (RFC 8259 §8.1 requires it), so the whole text is checked first.
fn object<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Malformed> {
    let text = std::str::from_utf8(bytes).map_err(|_| Malformed::Json)?;
    if !text.trim_start().starts_with('{') {
        return Err(Malformed::Json);
    }
    serde_json::from_str(text).map_err(|_| Malformed::Json)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_member_that_is_not_utf8_makes_the_json_malformed_even_where_it_is_ignored() {
        #[derive(serde::Deserialize, Debug)]
        struct Only {
            #[allow(dead_code)]
            a: i64,
        }
        assert!(object::<Only>(b"{\"a\": 1, \"x\": \"ok\"}").is_ok());
        assert!(matches!(
            object::<Only>(b"{\"a\": 1, \"x\": \"\x8c\xb0\"}"),
            Err(Malformed::Json)
        ));
    }

    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn reads_a_compact_jws_and_refuses_other_shapes() {
        let h = b64(r#"{"typ":"JWT","alg":"RS256","kid":"k1","x5t":"k1"}"#);
        let c = b64(
            r#"{"aud":"api://b","iss":"https://sts.windows.net/t/","exp":1700000000,"nbf":1699990000.5,"oid":"o","roles":["Broker.Admin"],"xms_mirid":"/x"}"#,
        );
        let token = format!("{h}.{c}.{}", b64("sig"));
        let u = parse(&token).unwrap();
        assert_eq!(u.header.alg, "RS256");
        assert_eq!(u.header.kid.as_deref(), Some("k1"));
        assert!(u.claims.aud.as_ref().unwrap().contains("api://b"));
        assert_eq!(u.claims.exp, Some(NumericDate(1_700_000_000)));
        assert_eq!(u.claims.nbf, Some(NumericDate(1_699_990_000)));
        assert_eq!(u.signing_input, format!("{h}.{c}"));
        assert_eq!(u.signature, b"sig");

        let many = b64(r#"{"aud":["x","api://b"]}"#);
        assert!(parse(&format!("{h}.{many}."))
            .unwrap()
            .claims
            .aud
            .unwrap()
            .contains("api://b"));

        for (bad, why) in [
            (String::new(), Malformed::Parts),
            (format!("{h}.{c}"), Malformed::Parts),
            (format!("{h}.{c}.x.y"), Malformed::Parts),
            (format!(".{c}.x"), Malformed::Parts),
            (format!("{h}.{c}.a+b"), Malformed::Base64),
            (format!("{h}=.{c}.x"), Malformed::Base64),
            (format!("{}.{c}.x", b64("[1]")), Malformed::Json),
            (format!("{}.{c}.x", b64(r#"{"kid":"k"}"#)), Malformed::Json),
            (
                format!("{h}.{}.x", b64(r#"{"exp":"soon"}"#)),
                Malformed::Json,
            ),
            (
                format!("{h}.{}.x", b64(r#"{"exp":1e300}"#)),
                Malformed::Json,
            ),
            (format!("{h}.{}.x", b64(r#"{"aud":7}"#)), Malformed::Json),
            ("a".repeat(MAX_TOKEN_LEN + 1), Malformed::TooLong),
        ] {
            assert_eq!(parse(&bad).unwrap_err(), why, "{bad:.80}");
        }
    }
}
