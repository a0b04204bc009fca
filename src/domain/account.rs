//! The vendor account behind a grant, and how it is read from what a vendor
//! sends back at consent: an OpenID Connect `id_token` (`iss` + `sub`), a
//! field of the token response or of a user-info answer (a JSON pointer), or a
//! callback parameter. Pure: the user-info request itself is made by `consent`.
//!
//! An account is not a secret (it names who consented, never how); it is
//! stored with the connection, shown by the connections API, the status page
//! and events, and compared at every later consent.

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::Value;

/// The longest account id kept, in characters (real ones are ids or URLs).
pub const MAX_ACCOUNT_ID: usize = 512;

/// Where an account id came from: the wire names are a public contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountSourceKind {
    IdToken,
    TokenField,
    CallbackParam,
    Userinfo,
}

impl AccountSourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IdToken => "id_token",
            Self::TokenField => "token_field",
            Self::CallbackParam => "callback_param",
            Self::Userinfo => "userinfo",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::IdToken,
            Self::TokenField,
            Self::CallbackParam,
            Self::Userinfo,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// The vendor account that granted a connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Account {
    /// For an id_token `<iss>#<sub>` (an issuer identifier has no fragment, so
    /// the first `#` separates them); otherwise the vendor's value as text.
    pub id: String,
    /// `id_token`, `token_field`, `callback_param` or `userinfo`.
    pub source: String,
}

impl Account {
    pub fn new(id: String, kind: AccountSourceKind) -> Self {
        Self {
            id,
            source: kind.as_str().to_owned(),
        }
    }

    /// The stored form (a small JSON object).
    pub fn to_stored(&self) -> String {
        serde_json::to_string(self).expect("two strings always serialize")
    }

    /// Reads the stored form back; `None` when it is not one.
    pub fn from_stored(s: &str) -> Option<Self> {
        let a: Account = serde_json::from_str(s).ok()?;
        (!a.id.is_empty()
            && a.id.chars().count() <= MAX_ACCOUNT_ID
            && !a.id.contains(char::is_control))
        .then_some(a)
    }

    /// Whether two accounts are the same vendor account. Ids are compared as
    /// the vendor sent them; the source does not matter (a template that moves
    /// from a user-info id to the id_token changes the id anyway, and then the
    /// operator allows the change once).
    pub fn same_as(&self, other: &Account) -> bool {
        self.id == other.id
    }
}

/// Why an id_token does not name an account this integration may accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdTokenError {
    #[error("the id_token is not a JWT (three base64url parts)")]
    Malformed,
    #[error("the id_token's payload is not a JSON object")]
    NotJson,
    #[error("the id_token has no iss")]
    NoIssuer,
    #[error("the id_token's iss is not the integration's issuer")]
    WrongIssuer,
    #[error("the id_token's aud does not contain the client id")]
    WrongAudience,
    #[error("the id_token has no usable sub")]
    NoSubject,
}

/// A value at a JSON pointer as an account id: a non-empty string (control
/// characters dropped) or an integer, at most [`MAX_ACCOUNT_ID`] characters.
pub fn id_from_value(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.chars().filter(|c| !c.is_control()).collect::<String>(),
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        _ => return None,
    };
    let s = s.trim().to_owned();
    (!s.is_empty() && s.chars().count() <= MAX_ACCOUNT_ID).then_some(s)
}

/// The account id at `pointer` (RFC 6901) in `doc`.
pub fn id_at_pointer(doc: &Value, pointer: &str) -> Option<String> {
    id_from_value(doc.pointer(pointer)?)
}

/// The account of an id_token received from the token endpoint over TLS.
/// Per OIDC Core §3.1.3.7 its signature need not be checked then; `iss` must
/// equal `issuer` when the integration knows one, and `aud` must contain the
/// client id (a string or an array).
pub fn from_id_token(
    jwt: &str,
    issuer: Option<&str>,
    client_id: &str,
) -> Result<Account, IdTokenError> {
    let mut parts = jwt.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(IdTokenError::Malformed);
    };
    if payload.len() > 64 * 1024 {
        return Err(IdTokenError::Malformed);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .or_else(|_| URL_SAFE.decode(payload))
        .map_err(|_| IdTokenError::Malformed)?;
    let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(IdTokenError::NotJson);
    };
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(IdTokenError::NoIssuer)?;
    if let Some(expected) = issuer {
        if iss.trim_end_matches('/') != expected.trim_end_matches('/') {
            return Err(IdTokenError::WrongIssuer);
        }
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == client_id,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(client_id)),
        _ => false,
    };
    if !aud_ok {
        return Err(IdTokenError::WrongAudience);
    }
    let sub = claims
        .get("sub")
        .and_then(id_from_value)
        .ok_or(IdTokenError::NoSubject)?;
    let iss: String = iss.chars().filter(|c| !c.is_control()).collect();
    let id = format!("{iss}#{sub}");
    if id.chars().count() > MAX_ACCOUNT_ID {
        return Err(IdTokenError::NoSubject);
    }
    Ok(Account::new(id, AccountSourceKind::IdToken))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jwt(claims: Value) -> String {
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[test]
    fn an_id_token_names_issuer_and_subject() {
        let t = jwt(json!({"iss": "https://id.example", "sub": "alice", "aud": "app"}));
        let a = from_id_token(&t, Some("https://id.example/"), "app").unwrap();
        assert_eq!(a.id, "https://id.example#alice");
        assert_eq!(a.source, "id_token");
        let t = jwt(json!({"iss": "https://id.example", "sub": "alice", "aud": ["x", "app"]}));
        assert!(from_id_token(&t, None, "app").is_ok());
    }

    #[test]
    fn an_id_token_for_another_client_or_issuer_is_refused() {
        let t = jwt(json!({"iss": "https://id.example", "sub": "alice", "aud": "other"}));
        assert_eq!(
            from_id_token(&t, None, "app"),
            Err(IdTokenError::WrongAudience)
        );
        let t = jwt(json!({"iss": "https://evil.example", "sub": "alice", "aud": "app"}));
        assert_eq!(
            from_id_token(&t, Some("https://id.example"), "app"),
            Err(IdTokenError::WrongIssuer)
        );
        let t = jwt(json!({"iss": "https://id.example", "aud": "app"}));
        assert_eq!(from_id_token(&t, None, "app"), Err(IdTokenError::NoSubject));
        for bad in ["", "a.b", "a.b.c.d", "a.!!!.c"] {
            assert_eq!(
                from_id_token(bad, None, "app"),
                Err(IdTokenError::Malformed)
            );
        }
    }

    #[test]
    fn pointers_take_strings_and_integers_only() {
        let doc = json!({"team": {"id": "T1"}, "id": 42, "f": 1.5, "e": "", "o": {}});
        assert_eq!(id_at_pointer(&doc, "/team/id").as_deref(), Some("T1"));
        assert_eq!(id_at_pointer(&doc, "/id").as_deref(), Some("42"));
        for p in ["/f", "/e", "/o", "/missing", ""] {
            assert_eq!(id_at_pointer(&doc, p), None, "{p}");
        }
    }

    #[test]
    fn the_stored_form_round_trips_and_refuses_junk() {
        let a = Account::new("T1".into(), AccountSourceKind::TokenField);
        assert_eq!(Account::from_stored(&a.to_stored()), Some(a));
        for junk in ["", "{}", "null", "{\"id\":\"\",\"source\":\"x\"}", "[1]"] {
            assert_eq!(Account::from_stored(junk), None, "{junk}");
        }
    }
}
