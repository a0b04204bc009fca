//! The claim checks, once the signature verified: issuer (v2.0 or v1.0 of
//! the tenant), audience, tenant, lifetime (with [`SKEW_SECS`] of skew both
//! ways) and object id.

use crate::config::entra::EntraSettings;

use super::verified::Window;
use super::{jwt, Check, EntraCaller, VerifyError, SKEW_SECS};

/// When a token may be used: `exp` and `nbf` widened by the skew; `None` without `exp`.
pub(super) fn window(c: &jwt::Claims) -> Option<Window> {
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
    use url::Url;

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
}
