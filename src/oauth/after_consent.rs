//! Vendor calls made with the new access token right after consent: the
//! user-info request that finds the account (`account` from `userinfo`), and
//! the `post_consent` call whose answer gives metadata kept with the
//! connection.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use url::Url;

use super::redact::Redactor;
use super::{body_error, transport_reason};
use crate::config::integrations::Integration;
use crate::domain::Secret;
use crate::vendor_body::{read_capped, BodyError, MAX_BODY};

/// What a `post_consent` call gave: the named metadata found in the answer.
pub type PostConsentMetadata = BTreeMap<String, String>;

/// Calls the integration's `post_consent` URL with the new access token and
/// keeps the values its JSON pointers find (strings, numbers, booleans; cut
/// short and printable). The answer is hostile: capped in size, never
/// followed through a redirect (the shared client follows none), and any
/// failure is a reason, never a secret.
pub async fn post_consent(
    http: &reqwest::Client,
    integration: &Integration,
    access_token: &Secret,
    timeout: Duration,
) -> Result<PostConsentMetadata, String> {
    let Some(pc) = &integration.post_consent else {
        return Ok(BTreeMap::new());
    };
    let redactor = Redactor::for_request(integration, &[access_token.expose()]);
    let resp = http
        .get(pc.url.clone())
        .timeout(timeout)
        .header(reqwest::header::ACCEPT, "application/json")
        .header(
            reqwest::header::AUTHORIZATION,
            format!("{} {}", pc.auth_scheme, access_token.expose()),
        )
        .send()
        .await
        .map_err(|e| transport_reason(&e))?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(format!("the metadata call answered HTTP {status}"));
    }
    let body = read_capped(resp, MAX_BODY)
        .await
        .map_err(|e| body_error(e).to_string())?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|_| "the metadata call's answer is not JSON".to_owned())?;
    Ok(pick_metadata(&value, &pc.metadata, &redactor))
}

/// The values `pointers` find in `value`: strings, numbers and booleans only,
/// without any value the broker sent, printable and at most 500 characters.
fn pick_metadata(
    value: &Value,
    pointers: &[(String, String)],
    redactor: &Redactor,
) -> PostConsentMetadata {
    pointers
        .iter()
        .filter_map(|(name, pointer)| {
            let v = match value.pointer(pointer)? {
                Value::String(v) => v.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((name.clone(), redactor.clean(&v, 500)))
        })
        .collect()
}

/// The account id at `pointer` in the vendor's user-info answer to a GET
/// with the new access token (`Authorization: Bearer`). Redirects are not
/// followed and the answer is read up to 64 KiB; any failure is a reason
/// (without the token), never a panic.
pub async fn userinfo_account(
    http: &reqwest::Client,
    url: &Url,
    access_token: &Secret,
    pointer: &str,
    timeout: Duration,
) -> Result<Option<String>, String> {
    let resp = http
        .get(url.clone())
        .timeout(timeout)
        .header(reqwest::header::ACCEPT, "application/json")
        .bearer_auth(access_token.expose())
        // GitHub's API refuses requests without a User-Agent.
        .header(reqwest::header::USER_AGENT, "oauth-broker")
        .send()
        .await
        .map_err(|e| transport_reason(&e))?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(format!("the user-info request answered HTTP {status}"));
    }
    let body = read_capped(resp, MAX_BODY).await.map_err(|e| match e {
        BodyError::TooLarge => "the user-info answer is too large".to_owned(),
        BodyError::Transport(e) => transport_reason(&e),
    })?;
    let doc: Value =
        serde_json::from_slice(&body).map_err(|_| "the user-info answer is not JSON".to_owned())?;
    Ok(crate::domain::account::id_at_pointer(&doc, pointer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_consent_metadata_keeps_only_scalars_found_by_the_pointers_and_never_a_token() {
        let doc = serde_json::json!({"dc": "us6", "login": {"id": 42, "ok": true},
            "tenants": [{"tenantId": "t-1"}], "obj": {"a": 1}, "echo": "Bearer at-123", "long": "x".repeat(900)});
        let p = |n: &str, ptr: &str| (n.to_owned(), ptr.to_owned());
        let got = pick_metadata(
            &doc,
            &[
                p("dc", "/dc"),
                p("id", "/login/id"),
                p("ok", "/login/ok"),
                p("tenant", "/tenants/0/tenantId"),
                p("obj", "/obj"),
                p("missing", "/nope"),
                p("echo", "/echo"),
                p("long", "/long"),
            ],
            &Redactor::new(&["at-123"]),
        );
        assert_eq!(got["dc"], "us6");
        assert_eq!(got["id"], "42");
        assert_eq!(got["ok"], "true");
        assert_eq!(got["tenant"], "t-1");
        assert!(!got.contains_key("obj") && !got.contains_key("missing"));
        assert_eq!(got["echo"], "Bearer [redacted]");
        assert_eq!(got["long"].len(), 500);
    }
}
