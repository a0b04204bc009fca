//! The fuzz targets' checks (fuzz/src/lib.rs) on every input kept in fuzz/corpus/: the seed corpus
//! and every input that once crashed a target (named `crash-*`), so a regression fails
//! `cargo test` without cargo-fuzz. scripts/fuzz runs the targets themselves.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{} must exist: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "{} holds a seed corpus", dir.display());
    out
}

fn replay(target: &str, check: fn(&[u8])) {
    for (path, bytes) in corpus(target) {
        let outcome = std::panic::catch_unwind(|| check(&bytes));
        assert!(outcome.is_ok(), "{target}: {} fails again", path.display());
    }
}

#[test]
fn token_response_corpus() {
    replay("token_response", checks::token_response);
}

#[test]
fn integrations_file_corpus() {
    replay("integrations_file", checks::integrations_file);
}

#[test]
fn timer_envelope_corpus() {
    replay("timer_envelope", checks::timer_envelope);
}

#[test]
fn callback_query_corpus() {
    replay("callback_query", checks::callback_query);
}

#[test]
fn entra_token_corpus() {
    replay("entra_token", checks::entra_token);
}

#[test]
fn consent_link_corpus() {
    replay("consent_link", checks::consent_link);
}

#[test]
fn stored_row_corpus() {
    replay("stored_row", checks::stored_row);
}

#[test]
fn token_form_corpus() {
    replay("token_form", checks::token_form);
}

#[test]
fn basic_credentials_corpus() {
    replay("basic_credentials", checks::basic_credentials);
}

#[test]
fn forwarded_for_corpus() {
    replay("forwarded_for", checks::forwarded_for);
}

#[test]
fn credential_row_corpus() {
    replay("credential_row", checks::credential_row);
}

#[test]
fn outbox_row_corpus() {
    replay("outbox_row", checks::outbox_row);
}

#[test]
fn account_corpus() {
    replay("account", checks::account);
}

/// The checks are not vacuous: the sealed seed rows decode (so the fuzzer starts past decryption).
#[test]
fn the_sealed_seed_rows_decode_past_decryption() {
    use oauth_broker::fuzzing::stored_row;
    for (name, field) in [
        ("connection", "connection"),
        ("pending", "pending"),
        ("link", "link"),
    ] {
        let (_, bytes) = corpus("stored_row")
            .into_iter()
            .find(|(p, _)| p.ends_with(name))
            .unwrap_or_else(|| panic!("fuzz/corpus/stored_row/{name}"));
        let nul = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let serde_json::Value::Object(entity) = serde_json::from_slice(&bytes[..nul]).unwrap()
        else {
            panic!("{name} is an object")
        };
        let read = stored_row(entity, bytes.get(nul + 1..).unwrap_or_default());
        match field {
            "connection" => {
                let r = read.connection.expect("the seed connection decodes");
                let r = r.expect("and exists");
                assert_eq!(r.tokens.access_token.expose(), "at-0123456789abcdef");
            }
            "pending" => {
                let p = read.pending.expect("the seed pending row decodes");
                assert!(p.expect("and exists").pkce_verifier.is_some());
            }
            _ => {
                let l = read.link.expect("the seed consent link decodes");
                assert_eq!(l.expect("and exists").connection.as_str(), "acme");
            }
        }
    }
}

#[test]
fn proxy_path_corpus() {
    replay("proxy_path", checks::proxy_path);
}

#[test]
fn link_rewriter_corpus() {
    replay("link_rewriter", checks::link_rewriter);
}

/// The proxy checks are not vacuous: a seed path is accepted and one link is rewritten.
#[test]
fn the_proxy_seeds_reach_past_the_checks() {
    use oauth_broker::fuzzing::{proxy_upstream, rewrite_links};
    let (k, url) = proxy_upstream(
        "/v2/items",
        "page=2&code=k",
        &["https://api.example.com/v1"],
    )
    .unwrap();
    assert_eq!(
        (k, url.as_str()),
        (0, "https://api.example.com/v1/v2/items?page=2")
    );
    let (body, header) = rewrite_links(
        &["https://api.example.com/v1".to_owned()],
        "https://b/api/proxy/i/c",
        br#"{"next":"https://api.example.com/v1/x"}"#,
    );
    assert_eq!(
        body.unwrap(),
        br#"{"next":"https://b/api/proxy/i/c/x"}"#.to_vec()
    );
    assert!(header.is_none());
}

/// The seeds reach the claim checks' accepting end (a corpus the checks only ever refuse would
/// assert nothing about accepted tokens).
#[test]
fn entra_token_seeds_reach_acceptance() {
    for seed in ["v1", "v2", "aud_array", "float_dates"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus/entra_token")
            .join(seed);
        let text = std::fs::read_to_string(&path).unwrap();
        let got = oauth_broker::fuzzing::entra_authorization(&text, 1_800_000_000);
        assert!(matches!(got, Some(Ok(_))), "{seed}: {got:?}");
    }
    let none = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/entra_token/none"),
    )
    .unwrap();
    // alg is checked before the claims in the verifier; the claims of this seed are fine.
    assert!(matches!(
        oauth_broker::fuzzing::entra_authorization(&none, 1_800_000_000),
        Some(Ok(_))
    ));
}
