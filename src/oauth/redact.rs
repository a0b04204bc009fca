//! Redaction of vendor text: every value the broker sent in a request is
//! removed from what the vendor says, in the encodings it may be echoed in.

use base64::Engine;

use super::{sanitize, TokenError, MAX_DESCRIPTION};
use crate::config::integrations::Integration;
use crate::domain::OAuthErrorCode;

/// Removes from vendor text every value the broker sent in one request (codes,
/// verifiers, tokens, the client secret, Basic credentials), raw and in the
/// encodings a vendor may echo them in (form-urlencoded, percent-encoded,
/// base64), then drops control characters and cuts it to a length.
pub struct Redactor {
    needles: Vec<String>,
}

impl Redactor {
    /// `sent`: the secret values of the request.
    pub fn new(sent: &[&str]) -> Self {
        let mut needles = Vec::new();
        for v in sent.iter().filter(|v| !v.is_empty()) {
            let form = form_encode(v);
            let pct = form.replace('+', "%20");
            for e in [form.clone(), pct.clone()] {
                needles.push(lower_hex(&e));
                needles.push(e);
            }
            needles.push((*v).to_owned());
            for engine in [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                &base64::engine::general_purpose::URL_SAFE,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ] {
                needles.push(engine.encode(v));
            }
            if let Ok(json) = serde_json::to_string(v) {
                needles.push(json.trim_matches('"').to_owned());
            }
        }
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        Self { needles }
    }

    /// For a token-endpoint request: the given values plus the client's credentials.
    pub(super) fn for_request(integration: &Integration, sent: &[&str]) -> Self {
        let basic = basic_credentials(integration);
        let raw = format!(
            "{}:{}",
            integration.client_id,
            integration.client_secret.expose()
        );
        let mut all = sent.to_vec();
        all.extend([
            integration.client_secret.expose(),
            basic.as_str(),
            raw.as_str(),
        ]);
        Self::new(&all)
    }

    /// `text` without any sent value, printable and at most `max` characters.
    pub fn clean(&self, text: &str, max: usize) -> String {
        let mut out = text.to_owned();
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), "[redacted]");
            }
        }
        sanitize(&out, max)
    }

    pub(super) fn clean_error(&self, e: TokenError) -> TokenError {
        match e {
            TokenError::Rejected {
                status,
                error,
                description,
            } => TokenError::Rejected {
                status,
                error: OAuthErrorCode::parse(&self.clean(error.as_str(), 64)),
                description: description
                    .map(|d| self.clean(&d, MAX_DESCRIPTION))
                    .filter(|d| !d.trim().is_empty()),
            },
            other => other,
        }
    }
}

/// Percent-escapes with lower-case hex digits (`%2f`), as some servers echo them.
fn lower_hex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            for _ in 0..2 {
                if let Some(h) = chars.next() {
                    out.push(h.to_ascii_lowercase());
                }
            }
        }
    }
    out
}

/// Form-urlencodes `s` (spaces as `+`).
pub(super) fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// RFC 6749 §2.3.1: each part form-urlencoded, joined by a colon (before base64).
pub(super) fn basic_credentials(integration: &Integration) -> String {
    format!(
        "{}:{}",
        form_encode(&integration.client_id),
        form_encode(integration.client_secret.expose())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    #[test]
    fn the_redactor_removes_sent_values_in_every_encoding() {
        let r = Redactor::new(&["s3cr/t+v al", "rt-123"]);
        let echoed = format!(
            "bad request: refresh_token=rt-123&x={}&y={}&z={}&w={}",
            form_encode("s3cr/t+v al"),
            STANDARD.encode("s3cr/t+v al"),
            "s3cr%2ft%2bv%20al",
            "s3cr/t+v al"
        );
        let cleaned = r.clean(&echoed, 1000);
        assert!(
            !cleaned.contains("rt-123") && !cleaned.contains("s3cr"),
            "{cleaned}"
        );
        assert!(cleaned.starts_with("bad request: refresh_token=[redacted]&x=[redacted]"));
        assert_eq!(r.clean(&"x".repeat(500), 10).chars().count(), 10);
    }
}
