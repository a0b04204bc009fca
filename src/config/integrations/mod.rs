//! The integrations file: one OAuth app per integration, optionally filled
//! from a built-in vendor template (`"provider": "xero"`, see [`templates`])
//! or from the vendor's published metadata (`"issuer"`, see [`discovery`]).
//! Explicit fields always win over the template. Validated once at start;
//! every error names the file, the integration and the field.
//!
//! This module holds the typed result ([`Integration`]) and the rules shared
//! by every part of it (endpoint URLs, token lifetimes); reading the file is
//! in `file`, turning one integration's fields into an [`Integration`] in
//! `build`, the vendor-specific fields in `quirks`, and the `account`
//! field in `account`.

mod account;
mod build;
#[cfg(test)]
mod catalogue_tests;
mod file;
mod quirks;

use std::collections::BTreeMap;

use time::Duration;
use url::Url;

use super::error::ConfigError;
use super::expand::{expand, Ctx};

pub use super::templates::catalogue;
use crate::domain::{IntegrationName, Secret};
pub(in crate::config) use account::parse_account;
pub use account::AccountConfig;
pub(in crate::config) use build::finish;
pub use file::{parse, Discovery, IntegrationsFile, Parsed};

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with form-urlencoded credentials (RFC 6749 §2.3.1).
    Basic,
    /// `client_secret_post`: credentials in the request body.
    Post,
}

/// The encoding of token-endpoint requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenBody {
    /// `application/x-www-form-urlencoded` (RFC 6749).
    Form,
    /// `application/json` (Notion).
    Json,
}

/// One OAuth app at one vendor.
#[derive(Debug, Clone)]
pub struct Integration {
    pub name: IntegrationName,
    /// The template it was built from, if any.
    pub provider: Option<String>,
    pub authorization_url: Url,
    pub token_url: Url,
    pub revocation_url: Option<Url>,
    pub client_id: String,
    pub client_secret: Secret,
    pub scopes: Vec<String>,
    pub scope_separator: String,
    pub client_auth: ClientAuth,
    pub token_body: TokenBody,
    pub pkce: bool,
    pub authorization_params: Vec<(String, String)>,
    pub token_params: Vec<(String, String)>,
    pub refresh_margin: Duration,
    /// Refresh any active grant not refreshed for this long, so that vendors
    /// that expire unused refresh tokens never see one go idle.
    pub keepalive: Duration,
    /// Callback query parameters kept with the connection (QuickBooks `realmId`).
    pub callback_metadata: Vec<String>,
    /// Token-response fields kept with the connection (Salesforce `instance_url`).
    pub token_metadata: Vec<String>,
    /// Lifetime assumed when the vendor sends no `expires_in`.
    pub default_expires_in: Duration,
    /// The vendor sends `expires_in` in milliseconds.
    pub expires_in_ms: bool,
    /// The authorization server's issuer identifier (configured, or the one its
    /// metadata declared): a callback's `iss` must equal it (RFC 9207).
    pub issuer: Option<String>,
    /// The callback must carry `iss` (the server advertises
    /// `authorization_response_iss_parameter_supported`, or `require_iss: true`).
    pub require_iss: bool,
    /// A consent that returns no refresh token is a problem (default true;
    /// false for vendors whose tokens never expire).
    pub expects_refresh_token: bool,
    /// Scopes the vendor needs before it issues a refresh token
    /// (`offline_access`); already included in `scopes`.
    pub refresh_token_scopes: Vec<String>,
    /// The vendor drops a refresh token unused for this long (Xero 60 days).
    pub refresh_token_idle: Option<Duration>,
    /// Scopes a pipeline may name at the token endpoint (`/api/oauth2/token`);
    /// `None`: any `scope` is accepted and ignored.
    pub pipeline_scopes: Option<Vec<String>>,
    /// Resources a pipeline may name there; `None`: any `resource` is accepted and ignored.
    pub pipeline_resources: Option<Vec<String>>,
    /// Where the vendor account behind a consent comes from.
    pub account: AccountConfig,
    /// The settings the client id and secret are read from (`%NAME%`), when they are.
    pub client_id_setting: Option<String>,
    pub client_secret_setting: Option<String>,
    /// The proxy's settings (`api_base_url`, `proxy_auth`, `proxy_headers`, `proxy_rewrite_links`).
    pub proxy: super::proxy::ProxyConfig,
    /// The vendor's OAuth documentation (template-level `docs`).
    pub docs: Vec<Url>,
    /// The vendor's API base URL(s), for a future proxy (validated, not used for requests).
    pub api_base_url: Vec<Url>,
    /// The token-response field holding an absolute expiry (ISO 8601 or epoch
    /// seconds) when the vendor sends it instead of `expires_in` (Square `expires_at`).
    pub expires_at_field: Option<String>,
    /// A token response without a lifetime (`expires_in` absent or 0, no
    /// `expires_at`) means the access token does not expire (Mailchimp, monday.com).
    pub no_expires_in_means_never: bool,
    /// Where refreshes go when not to the token endpoint (Adobe Acrobat Sign).
    pub refresh_url: Option<Url>,
    /// Parameters sent with refreshes only.
    pub refresh_params: Vec<(String, String)>,
    /// Tokens renewed by exchanging the access token (Meta `fb_exchange_token`)
    /// rather than by a refresh token.
    pub renew: Option<Renew>,
    /// The vendor ends a grant this long after consent, whatever its use
    /// (LinkedIn 365 days): the absolute lifetime of the refresh token.
    pub refresh_token_max: Option<Duration>,
    /// Metadata fetched from the vendor right after consent (Mailchimp's data centre).
    pub post_consent: Option<PostConsent>,
    /// Microsoft Entra ID identities that may get tokens for some connections (`callers`).
    pub callers: Vec<super::callers::Caller>,
}

/// How an access token is renewed by exchange (`renew`).
#[derive(Debug, Clone)]
pub struct Renew {
    /// The `grant_type` sent (`fb_exchange_token`).
    pub grant_type: String,
    /// The parameter carrying the current access token (default: the grant type's name).
    pub token_param: String,
    /// Where the exchange goes (default: the token endpoint).
    pub url: Option<Url>,
    /// `GET` with a query (Meta documents GET) or `POST` with a form (default).
    pub get: bool,
    pub params: Vec<(String, String)>,
}

/// A vendor call made with the new access token right after consent, whose
/// JSON answer gives metadata kept with the connection (`post_consent`).
#[derive(Debug, Clone)]
pub struct PostConsent {
    pub url: Url,
    /// The `Authorization` scheme (default `Bearer`; Mailchimp documents `OAuth`).
    pub auth_scheme: String,
    /// Metadata name -> JSON pointer (RFC 6901) into the answer.
    pub metadata: Vec<(String, String)>,
}

impl Integration {
    /// The scopes as the vendor wants them in one parameter.
    pub fn scope_string(&self) -> String {
        self.scopes.join(&self.scope_separator)
    }

    /// The lifetime a token response announces, per this vendor's conventions,
    /// clamped to [`MAX_LIFETIME`]; below one second, not a number or absent, the
    /// integration's default applies. The result can be added to any clock reading.
    pub fn lifetime(&self, expires_in: Option<f64>) -> Duration {
        self.lifetime_at(expires_in, None, time::OffsetDateTime::UNIX_EPOCH)
    }

    /// The lifetime of a token received at `now`: `expires_in` (seconds or
    /// milliseconds) when it is at least one second; else the absolute expiry
    /// (`expires_at_field`) when it is at least a second after `now`; else
    /// [`MAX_LIFETIME`] ("does not expire") when the template says a missing
    /// lifetime means so; else the integration's default. Always within
    /// 1 s ..= [`MAX_LIFETIME`].
    pub fn lifetime_at(
        &self,
        expires_in: Option<f64>,
        expires_at: Option<time::OffsetDateTime>,
        now: time::OffsetDateTime,
    ) -> Duration {
        let secs = expires_in.map(|v| if self.expires_in_ms { v / 1000.0 } else { v });
        if let Some(s) = secs.filter(|s| *s >= 1.0) {
            // `as` saturates; the clamp keeps it far inside the calendar.
            return Duration::seconds((s as i64).min(MAX_LIFETIME.whole_seconds()));
        }
        if let Some(left) = expires_at.map(|at| at - now) {
            if left >= Duration::SECOND {
                return left.min(MAX_LIFETIME);
            }
        }
        if self.no_expires_in_means_never {
            return MAX_LIFETIME;
        }
        self.default_expires_in.min(MAX_LIFETIME)
    }
}

/// The longest token lifetime believed, whatever a vendor announces; a token
/// stored with it "does not expire" (see `ConnectionRecord::never_expires`).
pub const MAX_LIFETIME: Duration = crate::domain::grant::NEVER_EXPIRES;

/// Loopback hosts, where plain `http` is allowed (local testing).
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// `https`, or `http` on a loopback host; otherwise why not.
pub fn check_endpoint(field: &str, url: &Url) -> Result<(), String> {
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        _ => Err(format!(
            "{field} must be an https URL (http only on a loopback host: 127.0.0.0/8, ::1, localhost); it is {url}"
        )),
    }
}

/// A URL field: its `%NAME%` read, an endpoint (see [`check_endpoint`]) with
/// no `{placeholder}` left.
fn url_of(ctx: &Ctx<'_>, field: &str, v: &str) -> Result<Url, ConfigError> {
    let v = expand(ctx, field, v)?;
    let u = Url::parse(&v).map_err(|e| ctx.fail(format!("{field} is not a URL: {e}")))?;
    check_endpoint(field, &u).map_err(|m| ctx.fail(m))?;
    if u.as_str().contains('{') || u.as_str().contains("%7B") {
        return Err(ctx.fail(format!("{field} still has a {{placeholder}}: {u}")));
    }
    Ok(u)
}

/// Extra request parameters (`token_params`, …), each value's `%NAME%` read.
fn params(
    ctx: &Ctx<'_>,
    field: &str,
    m: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, ConfigError> {
    m.iter()
        .map(|(k, v)| Ok((k.clone(), expand(ctx, &format!("{field}.{k}"), v)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::env;
    use file::tests::{one, GOOD};
    use std::path::Path;

    #[test]
    fn lifetimes_follow_the_vendor_conventions() {
        let mut i = one(GOOD, &env(&[("XERO_ID", "a"), ("XERO_SECRET", "b")])).unwrap();
        assert_eq!(i.lifetime(Some(1800.0)), Duration::seconds(1800));
        assert_eq!(i.lifetime(None), Duration::seconds(3600));
        i.expires_in_ms = true;
        assert_eq!(i.lifetime(Some(1_800_000.0)), Duration::seconds(1800));
    }

    #[test]
    fn an_absolute_expiry_or_no_expiry_applies_where_the_template_says_so() {
        let mut i = one(GOOD, &env(&[("XERO_ID", "a"), ("XERO_SECRET", "b")])).unwrap();
        let now = time::OffsetDateTime::from_unix_timestamp(1_000_000_000).unwrap();
        let at = Some(now + Duration::days(30));
        assert_eq!(i.lifetime_at(None, at, now), Duration::days(30));
        assert_eq!(
            i.lifetime_at(Some(60.0), at, now),
            Duration::seconds(60),
            "expires_in wins when both come"
        );
        assert_eq!(
            i.lifetime_at(None, Some(now - Duration::hours(1)), now),
            Duration::seconds(3600),
            "an expiry in the past is not believed: the default applies"
        );
        assert_eq!(
            i.lifetime_at(None, Some(now + Duration::days(99_999)), now),
            MAX_LIFETIME
        );
        assert_eq!(i.lifetime_at(Some(0.0), None, now), Duration::seconds(3600));
        i.no_expires_in_means_never = true;
        for e in [None, Some(0.0), Some(-1.0), Some(f64::NAN)] {
            assert_eq!(i.lifetime_at(e, None, now), MAX_LIFETIME, "{e:?}");
        }
        assert_eq!(
            i.lifetime_at(Some(7200.0), None, now),
            Duration::seconds(7200)
        );
    }

    #[test]
    fn any_announced_lifetime_is_clamped_and_can_meet_a_clock() {
        let mut i = one(GOOD, &env(&[("XERO_ID", "a"), ("XERO_SECRET", "b")])).unwrap();
        let now = time::OffsetDateTime::now_utc();
        for ms in [false, true] {
            i.expires_in_ms = ms;
            for v in [
                1e300,
                f64::MAX,
                i64::MAX as f64,
                u64::MAX as f64,
                f64::INFINITY,
            ] {
                assert_eq!(i.lifetime(Some(v)), MAX_LIFETIME, "{v}");
                let _ = now + i.lifetime(Some(v));
            }
            for v in [-1.0, -1e300, 0.0, 0.5e-3, f64::NAN, f64::NEG_INFINITY] {
                assert_eq!(i.lifetime(Some(v)), Duration::seconds(3600), "{v}");
            }
        }
    }

    #[test]
    fn endpoints_must_be_https_except_on_loopback() {
        let file = |url: &str| {
            format!(
                r#"{{"integrations": {{"a": {{"authorization_url": "https://a.example/auth", "token_url": "{url}", "client_id": "x", "client_secret": "y"}}}}}}"#
            )
        };
        for bad in [
            "http://example.com/token",
            "http://169.254.169.254/token",
            "ftp://example.com/token",
            "http://127.0.0.1.example.com/token",
        ] {
            let err = parse(&file(bad), Path::new("i.json"), &env(&[]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("token_url") && err.contains("https"),
                "{bad}: {err}"
            );
        }
        for good in [
            "https://example.com/token",
            "http://127.0.0.1:8080/token",
            "http://127.8.9.10/token",
            "http://[::1]:9/token",
            "http://localhost:9/token",
        ] {
            parse(&file(good), Path::new("i.json"), &env(&[]))
                .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for text in [
            r#"{"integrations": {"d": {"issuer": "http://idp.example.com", "client_id": "id", "client_secret": "s"}}}"#,
            r#"{"integrations": {"d": {"issuer": "http://idp.example.com", "authorization_url": "https://a.example/auth", "token_url": "https://a.example/token", "client_id": "id", "client_secret": "s"}}}"#,
        ] {
            let err = parse(text, Path::new("i.json"), &env(&[]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("issuer") && err.contains("https"), "{err}");
        }
    }
}
