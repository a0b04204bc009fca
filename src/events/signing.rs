//! Signing a webhook delivery: `X-Broker-Signature`, which a receiver checks
//! with its own secret (docs/operations.md, "Events").

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::Secret;

/// `X-Broker-Signature` for `body` at unix time `t`:
/// `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &Secret, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v1={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_time_dot_body() {
        // RFC 4231 test case 2 shape: key "Jefe"; here the message is "<t>.<body>".
        let s = signature(&Secret::new("Jefe"), 0, b"what do ya want for nothing?");
        assert!(s.starts_with("t=0,v1="), "{s}");
        assert_eq!(s.len(), "t=0,v1=".len() + 64);
        let direct = {
            let mut m = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
            m.update(b"0.what do ya want for nothing?");
            m.finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        assert_eq!(s, format!("t=0,v1={direct}"));
    }
}
