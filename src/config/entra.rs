//! Microsoft Entra ID callers: `BROKER_ENTRA_TENANT_ID` (enables them),
//! `BROKER_ENTRA_AUDIENCE` (the broker's application ID URI and/or client id,
//! comma-separated) and `BROKER_ENTRA_AUTHORITY` (default
//! `https://login.microsoftonline.com`). Which identity may reach which
//! connection is in the integrations file (`callers`), not here.

use url::Url;

use super::{ConfigError, Env, Problems};

/// The public cloud's authority.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";

/// The app role that opens the admin routes to an Entra caller.
pub const ADMIN_ROLE: &str = "Broker.Admin";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraSettings {
    /// The tenant id, lower case (a GUID: the `tid` claim is always one).
    pub tenant: String,
    /// Accepted `aud` values, as configured (compared exactly, as Entra writes them).
    pub audiences: Vec<String>,
    /// `https://login.microsoftonline.com`, without a trailing slash.
    pub authority: Url,
}

impl EntraSettings {
    /// `<authority>/<tenant>/v2.0`: the v2.0 tokens' issuer, and where the metadata is.
    pub fn v2_issuer(&self) -> String {
        format!(
            "{}/{}/v2.0",
            self.authority.as_str().trim_end_matches('/'),
            self.tenant
        )
    }

    /// `https://sts.windows.net/<tenant>/`: the v1.0 tokens' issuer (managed identities get v1.0
    /// tokens unless the broker's app registration asks for v2.0).
    pub fn v1_issuer(&self) -> String {
        format!("https://sts.windows.net/{}/", self.tenant)
    }

    /// `<authority>/<tenant>/v2.0/.well-known/openid-configuration`.
    pub fn metadata_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.v2_issuer())
    }
}

/// Whether `s` is a GUID in its usual 8-4-4-4-12 hex form.
pub fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

const TENANT: &str = "BROKER_ENTRA_TENANT_ID";
const AUDIENCE: &str = "BROKER_ENTRA_AUDIENCE";
const AUTHORITY: &str = "BROKER_ENTRA_AUTHORITY";

/// Reads the three settings; `None` when Entra callers are off (no tenant). Every problem is
/// kept in `p`.
pub(super) fn load(env: &Env<'_>, p: &mut Problems) -> Option<EntraSettings> {
    let Some(tenant) = env.get(TENANT) else {
        for other in [AUDIENCE, AUTHORITY] {
            if env.get(other).is_some() {
                p.0.push(ConfigError::setting(
                    other,
                    format!("is set but {TENANT} is not: set the tenant id to accept Entra ID callers, or remove {other}"),
                ));
            }
        }
        return None;
    };
    let mut ok = true;
    if !is_guid(&tenant) {
        ok = false;
        p.0.push(ConfigError::setting(
            TENANT,
            "must be the tenant id, a GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47 (az account show --query tenantId -o tsv); a domain name is not accepted, because tokens name the tenant by id",
        ));
    }
    let audiences: Vec<String> = env
        .get(AUDIENCE)
        .map(|v| {
            v.split(',')
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if audiences.is_empty() {
        ok = false;
        p.0.push(ConfigError::setting(
            AUDIENCE,
            format!("is required with {TENANT}: the broker's application ID URI (api://…) and/or its client id, comma-separated — the resource Data Factory asks its token for"),
        ));
    }
    let authority = match env.get(AUTHORITY) {
        None => Url::parse(DEFAULT_AUTHORITY).ok(),
        Some(a) => match Url::parse(a.trim_end_matches('/')) {
            Err(e) => {
                p.0.push(ConfigError::setting(
                    AUTHORITY,
                    format!("is not a URL ({e}); example: {DEFAULT_AUTHORITY}"),
                ));
                None
            }
            Ok(u) if u.query().is_some() || u.fragment().is_some() || u.path() != "/" => {
                p.0.push(ConfigError::setting(
                    AUTHORITY,
                    format!("must be a bare host URL such as {DEFAULT_AUTHORITY} (no path, query or fragment)"),
                ));
                None
            }
            Ok(u) => match super::integrations::check_endpoint("the authority", &u) {
                Ok(()) => Some(u),
                Err(m) => {
                    p.0.push(ConfigError::setting(AUTHORITY, m));
                    None
                }
            },
        },
    };
    match authority {
        Some(authority) if ok => Some(EntraSettings {
            tenant: tenant.to_ascii_lowercase(),
            audiences,
            authority,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::env;
    use super::super::Settings;
    use super::*;

    const T: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

    fn load_with(pairs: &[(&str, &str)]) -> Result<Option<EntraSettings>, String> {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite:{}/b.db", dir.path().display());
        let mut all = vec![("BROKER_STORAGE", db.as_str())];
        all.extend_from_slice(pairs);
        Settings::load(&env(&all))
            .map(|s| s.entra)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn off_without_a_tenant_and_read_with_one() {
        assert_eq!(load_with(&[]).unwrap(), None);
        let s = load_with(&[
            (TENANT, &T.to_ascii_uppercase()),
            (
                AUDIENCE,
                " api://oauth-broker-acme , 0f1e2d3c-0000-4000-8000-000000000001,",
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.tenant, T);
        assert_eq!(
            s.audiences,
            [
                "api://oauth-broker-acme",
                "0f1e2d3c-0000-4000-8000-000000000001"
            ]
        );
        assert_eq!(
            s.v2_issuer(),
            format!("https://login.microsoftonline.com/{T}/v2.0")
        );
        assert_eq!(s.v1_issuer(), format!("https://sts.windows.net/{T}/"));
        assert_eq!(
            s.metadata_url(),
            format!("https://login.microsoftonline.com/{T}/v2.0/.well-known/openid-configuration")
        );
        let s = load_with(&[
            (TENANT, T),
            (AUDIENCE, "api://b"),
            (AUTHORITY, "http://127.0.0.1:4567/"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.v2_issuer(), format!("http://127.0.0.1:4567/{T}/v2.0"));
    }

    #[test]
    fn every_problem_is_named_by_its_setting() {
        let e = load_with(&[
            (TENANT, "contoso.onmicrosoft.com"),
            (AUTHORITY, "http://login.example.com"),
        ])
        .unwrap_err();
        for part in [
            "BROKER_ENTRA_TENANT_ID: must be the tenant id",
            "BROKER_ENTRA_AUDIENCE: is required",
            "BROKER_ENTRA_AUTHORITY",
        ] {
            assert!(e.contains(part), "{part} in {e}");
        }
        let e = load_with(&[(AUDIENCE, "api://b")]).unwrap_err();
        assert!(
            e.starts_with("BROKER_ENTRA_AUDIENCE: is set but BROKER_ENTRA_TENANT_ID is not"),
            "{e}"
        );
        let e = load_with(&[
            (TENANT, T),
            (AUDIENCE, "a"),
            (AUTHORITY, "https://login.example.com/x"),
        ])
        .unwrap_err();
        assert!(e.contains("bare host URL"), "{e}");
    }

    #[test]
    fn guids() {
        assert!(is_guid(T) && is_guid(&T.to_ascii_uppercase()));
        for bad in [
            "",
            "72f988bf86f141af91ab2d7cd011db47",
            "72f988bf-86f1-41af-91ab-2d7cd011db4",
            "g2f988bf-86f1-41af-91ab-2d7cd011db47",
        ] {
            assert!(!is_guid(bad), "{bad}");
        }
    }
}
