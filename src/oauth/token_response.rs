//! The token endpoint's answer, read leniently: JSON or form-encoded, errors
//! with any status (also Graph-API style), `expires_in` as a number or a
//! string, an absolute expiry where the integration names its field, and
//! the metadata and account id the integration reads beside the tokens.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{sanitize, TokenError, MAX_BODY};
use crate::domain::{OAuthErrorCode, Secret};

/// What the token endpoint gave back.
#[derive(Debug)]
pub struct TokenResponse {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    pub token_type: String,
    /// As sent (seconds or milliseconds, see `Integration::lifetime_at`, which clamps it).
    pub expires_in: Option<f64>,
    /// The absolute expiry, when the integration names a field for it
    /// (`expires_at_field`) and the vendor sent one (ISO 8601 or epoch seconds).
    pub expires_at: Option<time::OffsetDateTime>,
    pub scope: Option<String>,
    /// The fields the integration's `token_metadata` names (never a token).
    pub metadata: BTreeMap<String, String>,
    /// An OpenID Connect id_token, when one came back (read for its account, never stored).
    pub id_token: Option<Secret>,
    /// The account id at the integration's `account.pointer` (`token_field` source).
    pub account_field: Option<String>,
}

/// The longest access token and refresh token accepted, in bytes (real ones
/// are 1–4 KB). Together they keep the sealed pair inside one Table Storage
/// property (64 KiB of UTF-16); a longer one is an invalid answer.
pub const MAX_ACCESS_TOKEN: usize = 16_000;
pub const MAX_REFRESH_TOKEN: usize = 8_000;

/// The longest `scope` kept, in characters (it is informative only: refresh never sends it).
pub const MAX_SCOPE: usize = 2048;

/// What an integration reads from a token response beyond the standard fields.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Shape<'a> {
    /// Fields kept as metadata (`token_metadata`).
    pub metadata: &'a [String],
    /// The field with an absolute expiry (`expires_at_field`).
    pub expires_at_field: Option<&'a str>,
    /// A JSON pointer to the vendor account's id (`account` from `token_field`).
    pub account_pointer: Option<&'a str>,
}

/// An absolute expiry as vendors send it: an RFC 3339 / ISO 8601 date-time
/// (`2006-01-02T15:04:05Z`, a missing offset read as UTC), or epoch seconds
/// (a number or a numeric string). Anything else is `None`.
pub(crate) fn parse_expires_at(v: &Value) -> Option<time::OffsetDateTime> {
    use time::format_description::well_known::{Iso8601, Rfc3339};
    let from_secs = |s: f64| {
        if !s.is_finite() || s <= 0.0 {
            return None;
        }
        // Far beyond any clock: the clamp (MAX_LIFETIME) takes over.
        time::OffsetDateTime::from_unix_timestamp((s as i64).min(253_402_300_799)).ok()
    };
    match v {
        Value::Number(n) => from_secs(n.as_f64()?),
        Value::String(s) => {
            let s = s.trim();
            if s.len() > 64 {
                return None;
            }
            if let Ok(secs) = s.parse::<f64>() {
                return from_secs(secs);
            }
            time::OffsetDateTime::parse(s, &Rfc3339)
                .or_else(|_| time::OffsetDateTime::parse(s, &Iso8601::DEFAULT))
                .ok()
                .or_else(|| {
                    time::PrimitiveDateTime::parse(s, &Iso8601::DEFAULT)
                        .ok()
                        .map(time::PrimitiveDateTime::assume_utc)
                })
        }
        _ => None,
    }
}

/// Reads a token endpoint's answer: a vendor error whatever the status
/// (RFC 6749 §5.2, or Graph-API style), a server failure, or the tokens.
pub(crate) fn parse_token_response(
    status: u16,
    is_form: bool,
    body: &[u8],
    shape: &Shape<'_>,
) -> Result<TokenResponse, TokenError> {
    let map = fields(is_form, body);
    if let Some(m) = &map {
        vendor_error(status, m)?;
    }
    if status == 429 || status >= 500 {
        return Err(TokenError::Server {
            status,
            retry_after: None,
        });
    }
    let Some(m) = map else {
        return Err(TokenError::InvalidResponse(format!(
            "HTTP {status}, body is not a JSON object"
        )));
    };
    if !(200..300).contains(&status) {
        return Err(TokenError::InvalidResponse(format!(
            "HTTP {status} without an OAuth error"
        )));
    }
    tokens(m, shape)
}

/// The answer's fields: a JSON object, or a form-encoded body (declared so,
/// or not starting with `{`) that has an `access_token` or an `error`.
fn fields(is_form: bool, body: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Some(m),
        _ if is_form || !body.starts_with(b"{") => {
            let pairs: Map<String, Value> = form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect();
            (pairs.contains_key("access_token") || pairs.contains_key("error")).then_some(pairs)
        }
        _ => None,
    }
}

/// The string field `k`.
fn text(m: &Map<String, Value>, k: &str) -> Option<String> {
    m.get(k).and_then(Value::as_str).map(str::to_owned)
}

/// An OAuth error in the answer, whatever the status, as `Err`.
fn vendor_error(status: u16, m: &Map<String, Value>) -> Result<(), TokenError> {
    if let Some(error) = text(m, "error").filter(|e| !e.is_empty()) {
        return Err(TokenError::Rejected {
            status,
            // Whole here: the caller removes what it sent, then cuts short
            // (cutting first could leave a prefix of a secret).
            error: OAuthErrorCode::parse(&sanitize(&error, MAX_BODY)),
            description: text(m, "error_description").map(|d| sanitize(&d, MAX_BODY)),
        });
    }
    // Graph-API style (Meta): `{"error": {"message", "type", "code"}}`. Its
    // `type` stands in for the code; a 5xx/429 with it stays transient.
    if let Some(Value::Object(e)) = m.get("error") {
        let code = text(e, "type")
            .or_else(|| e.get("code").map(|c| c.to_string()))
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "error".into());
        return Err(TokenError::Rejected {
            status,
            error: OAuthErrorCode::parse(&sanitize(&code, MAX_BODY)),
            description: text(e, "message").map(|d| sanitize(&d, MAX_BODY)),
        });
    }
    Ok(())
}

/// The tokens of a successful answer, within their size limits, and what
/// the integration reads beside them (`shape`).
fn tokens(m: Map<String, Value>, shape: &Shape<'_>) -> Result<TokenResponse, TokenError> {
    let access_token = text(&m, "access_token")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenError::InvalidResponse("no access_token".into()))?;
    let refresh_token = text(&m, "refresh_token").filter(|t| !t.is_empty());
    for (name, t, max) in [
        ("access_token", Some(&access_token), MAX_ACCESS_TOKEN),
        ("refresh_token", refresh_token.as_ref(), MAX_REFRESH_TOKEN),
    ] {
        if t.is_some_and(|t| t.len() > max) {
            return Err(TokenError::InvalidResponse(format!(
                "the {name} is longer than {max} bytes"
            )));
        }
    }
    // Any number; `Integration::lifetime` clamps it to a sane range.
    let expires_in = match m.get("expires_in") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    let expires_at = shape
        .expires_at_field
        .and_then(|f| m.get(f))
        .and_then(parse_expires_at);
    Ok(TokenResponse {
        expires_at,
        access_token: Secret::new(access_token),
        refresh_token: refresh_token.map(Secret::new),
        token_type: text(&m, "token_type")
            .map(|t| sanitize(&t, 40))
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| "Bearer".into()),
        expires_in,
        scope: text(&m, "scope").map(|s| sanitize(&s, MAX_SCOPE)),
        id_token: text(&m, "id_token")
            .filter(|t| !t.is_empty() && t.len() <= MAX_ACCESS_TOKEN)
            .map(Secret::new),
        account_field: shape
            .account_pointer
            .and_then(|p| crate::domain::account::id_at_pointer(&Value::Object(m.clone()), p)),
        metadata: metadata(&m, shape.metadata),
    })
}

/// The fields `token_metadata` names (never a token): strings cut short,
/// numbers and booleans as text.
fn metadata(m: &Map<String, Value>, fields: &[String]) -> BTreeMap<String, String> {
    fields
        .iter()
        .filter(|f| !matches!(f.as_str(), "access_token" | "refresh_token" | "id_token"))
        .filter_map(|f| match m.get(f)? {
            Value::String(v) => Some((f.clone(), sanitize(v, 500))),
            Value::Number(n) => Some((f.clone(), n.to_string())),
            Value::Bool(b) => Some((f.clone(), b.to_string())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_standard_and_bent_token_responses() {
        let r = parse_token_response(200, false, br#"{"access_token":"a","token_type":"bearer","expires_in":"3600","refresh_token":"r","scope":"x y"}"#, &Shape::default()).unwrap();
        assert_eq!(r.access_token.expose(), "a");
        assert_eq!(r.refresh_token.unwrap().expose(), "r");
        assert_eq!(r.expires_in, Some(3600.0));
        let r = parse_token_response(
            200,
            true,
            b"access_token=a&token_type=bearer&scope=repo",
            &Shape::default(),
        )
        .unwrap();
        assert_eq!(r.access_token.expose(), "a");
        assert!(r.refresh_token.is_none() && r.expires_in.is_none());
    }

    #[test]
    fn an_absolute_expiry_is_read_as_iso_8601_or_epoch_seconds() {
        let at = |v: Value| parse_expires_at(&v).map(|t| t.unix_timestamp());
        assert_eq!(
            at(serde_json::json!("2006-01-02T15:04:05Z")),
            Some(1_136_214_245)
        );
        assert_eq!(
            at(serde_json::json!("2006-01-02T17:04:05+02:00")),
            Some(1_136_214_245)
        );
        assert_eq!(
            at(serde_json::json!("2006-01-02T15:04:05")),
            Some(1_136_214_245),
            "no offset: UTC"
        );
        assert_eq!(at(serde_json::json!(1_136_214_245)), Some(1_136_214_245));
        assert_eq!(at(serde_json::json!("1136214245")), Some(1_136_214_245));
        for bad in [
            serde_json::json!("tomorrow"),
            serde_json::json!(""),
            serde_json::json!(-5),
            serde_json::json!(0),
            serde_json::json!(null),
            serde_json::json!({"a": 1}),
            serde_json::json!("9".repeat(100)),
        ] {
            assert_eq!(at(bad.clone()), None, "{bad}");
        }
        // Far future is kept far (the lifetime clamp applies later), never a panic.
        assert!(at(serde_json::json!(1e300)).is_some());
        let shape = Shape {
            metadata: &[],
            expires_at_field: Some("expires_at"),
            account_pointer: None,
        };
        let r = parse_token_response(
            200,
            false,
            br#"{"access_token":"a","expires_at":"2030-01-01T00:00:00Z"}"#,
            &shape,
        )
        .unwrap();
        assert_eq!(r.expires_at.unwrap().unix_timestamp(), 1_893_456_000);
        assert!(r.expires_in.is_none());
        let r = parse_token_response(
            200,
            false,
            br#"{"access_token":"a","expires_at":"2030-01-01T00:00:00Z"}"#,
            &Shape::default(),
        )
        .unwrap();
        assert!(
            r.expires_at.is_none(),
            "only where the integration names the field"
        );
    }

    #[test]
    fn classifies_errors() {
        let e = parse_token_response(
            400,
            false,
            br#"{"error":"invalid_grant","error_description":"grant request is invalid"}"#,
            &Shape::default(),
        )
        .unwrap_err();
        assert!(e.is_dead_grant() && !e.is_transient() && !e.is_misconfigured());
        let e = parse_token_response(
            401,
            false,
            br#"{"error":"invalid_client"}"#,
            &Shape::default(),
        )
        .unwrap_err();
        assert!(e.is_misconfigured() && !e.is_transient());
        let e = parse_token_response(
            503,
            false,
            br#"{"error":"temporarily_unavailable"}"#,
            &Shape::default(),
        )
        .unwrap_err();
        assert!(e.is_transient());
        let e = parse_token_response(
            200,
            false,
            br#"{"error":"bad_verification_code"}"#,
            &Shape::default(),
        )
        .unwrap_err();
        assert_eq!(
            e.oauth_error(),
            Some(&OAuthErrorCode::Other("bad_verification_code".into()))
        );
        assert!(matches!(
            parse_token_response(503, false, b"<html>", &Shape::default()),
            Err(TokenError::Server { status: 503, .. })
        ));
        assert!(matches!(
            parse_token_response(200, false, b"{\"token_type\":\"x\"}", &Shape::default()),
            Err(TokenError::InvalidResponse(_))
        ));
        assert!(matches!(
            parse_token_response(200, false, b"<html>", &Shape::default()),
            Err(TokenError::InvalidResponse(_))
        ));
    }

    #[test]
    fn graph_api_error_objects_are_vendor_errors() {
        let e = parse_token_response(
            400,
            false,
            br#"{"error":{"message":"Error validating access token: Session has expired","type":"OAuthException","code":190}}"#,
            &Shape::default(),
        )
        .unwrap_err();
        assert_eq!(
            e.oauth_error(),
            Some(&OAuthErrorCode::Other("OAuthException".into()))
        );
        assert!(!e.is_transient() && !e.is_dead_grant());
        assert!(e.to_string().contains("Session has expired"));
        let e = parse_token_response(500, false, br#"{"error":{"code":2}}"#, &Shape::default())
            .unwrap_err();
        assert!(e.is_transient());
    }

    #[test]
    fn only_named_metadata_is_kept_and_never_a_token() {
        let body = br#"{"access_token":"a","refresh_token":"r","instance_url":"https://x.my.salesforce.com","issued_at":"1","n":5}"#;
        let fields = [
            "instance_url".to_owned(),
            "n".to_owned(),
            "refresh_token".to_owned(),
        ];
        let shape = Shape {
            metadata: &fields,
            expires_at_field: None,
            account_pointer: None,
        };
        let r = parse_token_response(200, false, body, &shape).unwrap();
        assert_eq!(r.metadata.len(), 2);
        assert_eq!(r.metadata["instance_url"], "https://x.my.salesforce.com");
        assert_eq!(r.metadata["n"], "5");
    }

    #[test]
    fn oversized_tokens_are_refused_and_long_fields_cut() {
        let big = "a".repeat(MAX_ACCESS_TOKEN + 1);
        let body = serde_json::json!({"access_token": big}).to_string();
        assert!(matches!(
            parse_token_response(200, false, body.as_bytes(), &Shape::default()),
            Err(TokenError::InvalidResponse(_))
        ));
        let body = serde_json::json!({"access_token": "a", "scope": "s ".repeat(5000), "token_type": "t".repeat(5000)}).to_string();
        let r = parse_token_response(200, false, body.as_bytes(), &Shape::default()).unwrap();
        assert_eq!(r.scope.unwrap().chars().count(), MAX_SCOPE);
        assert_eq!(r.token_type.chars().count(), 40);
    }

    #[test]
    fn errors_never_carry_the_token() {
        let e = parse_token_response(
            200,
            false,
            br#"{"refresh_token":"SECRET123"}"#,
            &Shape::default(),
        )
        .unwrap_err();
        assert!(!format!("{e} {e:?}").contains("SECRET123"));
    }
}
