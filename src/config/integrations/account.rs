//! The `account` field: how the vendor account behind a consent is found
//! (an id_token, a token-response field, a callback parameter or a user-info
//! call), read after the template was merged.

use serde_json::{Map, Value};
use url::Url;

use super::check_endpoint;

/// How the vendor account behind a consent is found (field `account`; the
/// format is shared with the vendor catalogue, see README "Configure").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountConfig {
    /// No `account` field: an id_token's `iss` + `sub` when one arrives, else none.
    Default,
    /// `"account": null`: no account is recorded, not even from an id_token.
    OptOut,
    /// `{"from": "id_token"}`.
    IdToken,
    /// `{"from": "token_field", "pointer": "/team/id"}`: a JSON pointer into the token response.
    TokenField { pointer: String },
    /// `{"from": "callback_param", "name": "realmId"}`.
    CallbackParam { name: String },
    /// `{"from": "userinfo", "url": …, "pointer": "/id"}`: a GET with the new access token.
    Userinfo { url: Url, pointer: String },
}

impl AccountConfig {
    /// The token-response pointer, when that is the source.
    pub fn token_pointer(&self) -> Option<&str> {
        match self {
            Self::TokenField { pointer } => Some(pointer),
            _ => None,
        }
    }
}

/// Reads an `account` value (after the template was merged).
pub(in crate::config) fn parse_account(v: Option<&Value>) -> Result<AccountConfig, String> {
    let obj = match v {
        None => return Ok(AccountConfig::Default),
        Some(Value::Null) => return Ok(AccountConfig::OptOut),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(
                "account must be an object such as {\"from\": \"id_token\"}, or null".into(),
            )
        }
    };
    let from = need(obj, "from")?;
    let allowed = allowed_fields(&from)?;
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!(
            "account.{k} is not a field of an account from {from}"
        ));
    }
    text(obj, "docs")?;
    Ok(match from.as_str() {
        "id_token" => AccountConfig::IdToken,
        "token_field" => AccountConfig::TokenField {
            pointer: pointer(obj)?,
        },
        "callback_param" => callback_param(obj)?,
        _ => userinfo(obj)?,
    })
}

/// The fields an account from `from` may have; an unknown source is refused.
fn allowed_fields(from: &str) -> Result<&'static [&'static str], String> {
    Ok(match from {
        "id_token" => &["from", "docs"],
        "token_field" => &["from", "pointer", "docs"],
        "callback_param" => &["from", "name", "docs"],
        "userinfo" => &["from", "url", "pointer", "docs"],
        other => {
            return Err(format!(
                "account.from is {other:?}; use \"id_token\", \"token_field\", \"callback_param\" or \"userinfo\""
            ))
        }
    })
}

/// The field `k`, when present: a non-empty string.
fn text(obj: &Map<String, Value>, k: &str) -> Result<Option<String>, String> {
    match obj.get(k) {
        None => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(format!("account.{k} must be a non-empty string")),
    }
}

/// The field `k`, which must be present: a non-empty string.
fn need(obj: &Map<String, Value>, k: &str) -> Result<String, String> {
    text(obj, k)?.ok_or_else(|| format!("account.{k} is missing"))
}

/// `pointer`: a JSON pointer, never at a token or secret.
fn pointer(obj: &Map<String, Value>) -> Result<String, String> {
    let p = need(obj, "pointer")?;
    if !p.starts_with('/') {
        return Err(format!(
            "account.pointer must be a JSON pointer starting with '/' (RFC 6901); it is {p:?}"
        ));
    }
    // Never a token or secret as an account id (a pointer at
    // `/authed_user/access_token` would store a token in clear).
    if p.split('/').any(|seg| {
        let seg = seg.to_ascii_lowercase();
        seg.contains("token") || seg.contains("secret") || seg.contains("password")
    }) {
        return Err(format!(
            "account.pointer must not point at a token or secret; it is {p:?}"
        ));
    }
    Ok(p)
}

/// `{"from": "callback_param", "name": …}`: any parameter but OAuth's own.
fn callback_param(obj: &Map<String, Value>) -> Result<AccountConfig, String> {
    let name = need(obj, "name")?;
    if matches!(
        name.as_str(),
        "code" | "state" | "iss" | "error" | "error_description" | "error_uri"
    ) {
        return Err(format!(
            "account.name {name:?} is an OAuth parameter, not an account"
        ));
    }
    Ok(AccountConfig::CallbackParam { name })
}

/// `{"from": "userinfo", "url": …, "pointer": …}`: an endpoint, then the pointer.
fn userinfo(obj: &Map<String, Value>) -> Result<AccountConfig, String> {
    let url = need(obj, "url")?;
    let url = Url::parse(&url).map_err(|e| format!("account.url is not a URL: {e}"))?;
    check_endpoint("account.url", &url)?;
    Ok(AccountConfig::Userinfo {
        url,
        pointer: pointer(obj)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_sources_are_validated() {
        let ok = |v: Value| parse_account(Some(&v));
        assert_eq!(parse_account(None), Ok(AccountConfig::Default));
        assert_eq!(ok(Value::Null), Ok(AccountConfig::OptOut));
        assert_eq!(
            ok(serde_json::json!({"from": "token_field", "pointer": "/team/id"})),
            Ok(AccountConfig::TokenField {
                pointer: "/team/id".into()
            })
        );
        for bad in [
            serde_json::json!("id_token"),
            serde_json::json!({"from": "magic"}),
            serde_json::json!({"from": "token_field"}),
            serde_json::json!({"from": "token_field", "pointer": "team"}),
            serde_json::json!({"from": "token_field", "pointer": "/authed_user/access_token"}),
            serde_json::json!({"from": "callback_param", "name": "code"}),
            serde_json::json!({"from": "userinfo", "url": "http://api.example.com/me", "pointer": "/id"}),
            serde_json::json!({"from": "id_token", "pointer": "/x"}),
        ] {
            assert!(ok(bad.clone()).is_err(), "{bad}");
        }
    }
}
