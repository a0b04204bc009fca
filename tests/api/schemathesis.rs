//! schemathesis (property-based API testing from the OpenAPI document) against a live broker:
//! standalone with a key, on Azurite, with two consented connections at oidc-provider. Every
//! response must be no 5xx and match `openapi.json` (status, content type, headers, body schema);
//! schema-violating requests must be refused and schema-valid ones accepted; a method a path does
//! not serve must get 405 with a correct `Allow`. Afterwards nothing
//! stored may have changed that a request was not meant to change.
//!
//! Two passes: one where schemathesis generates everything (names included, so nearly every name
//! is unknown), and one with the path names fixed to a consented connection so the success answers
//! are exercised too (DELETE left out there: deleting that connection is meant to change the store).
//! `scripts/test` installs schemathesis (pinned) into a venv and sets `BROKER_TEST_SCHEMATHESIS`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

const API_KEY: &str = "schemathesis-key-0123456789abcdefghijklmnop";
/// The connection the second pass names in every path.
const TARGET: &str = "st-target";
/// A connection no generated request names: its row must come out byte for byte unchanged.
const BYSTANDER: &str = "st-bystander";
/// Test cases per operation and pass (schemathesis adds its coverage cases on top).
const EXAMPLES: &str = "200";

fn schemathesis() -> PathBuf {
    let st = std::env::var_os("BROKER_TEST_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/schemathesis-venv/bin/st"));
    assert!(
        st.is_file(),
        "schemathesis not found at {}: run scripts/test (it installs schemathesis into a venv under target/)",
        st.display()
    );
    st
}

struct Pass {
    requests: usize,
    test_cases: u64,
    /// Every request and response, as schemathesis recorded them (the key filtered out).
    cassette: String,
}

struct Running {
    name: String,
    child: std::process::Child,
    cassette: PathBuf,
    report: PathBuf,
    started: Instant,
}

/// Starts one schemathesis pass. One worker per process: schemathesis' worker threads trip a
/// CPython 3.11 bug (`AST constructor recursion depth mismatch`), so the passes run as two
/// processes side by side instead.
fn start_pass(app: &TestApp, name: &str, extra_config: &str, extra_args: &[&str]) -> Running {
    let dir = app.dir.path().join(format!("schemathesis-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let base =
        std::fs::read_to_string(repo_root().join("tests/support/schemathesis.toml")).unwrap();
    let config = dir.join("schemathesis.toml");
    std::fs::write(&config, format!("{base}\n{extra_config}")).unwrap();
    let cassette = dir.join("cassette.yaml");
    let report = dir.join("report.json");
    let started = Instant::now();
    let child = Command::new(schemathesis())
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(app.url("/api/openapi.json"))
        .args(["-H", &format!("x-functions-key: {API_KEY}")])
        .args(["--checks", "all"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", EXAMPLES])
        .args(["--workers", "1"])
        .args(["--seed", &random_u64().to_string()])
        .args(["--generation-with-security-parameters", "false"])
        .args(["--generation-database", "none"])
        .args(["--request-timeout", "30"])
        .args(["--report", "vcr,json"])
        .arg("--report-vcr-path")
        .arg(&cassette)
        .arg("--report-json-path")
        .arg(&report)
        .args(["--no-color", "--output-truncate", "false"])
        .args(extra_args)
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run schemathesis: {e}"));
    Running {
        name: name.to_owned(),
        child,
        cassette,
        report,
        started,
    }
}

/// Waits for a pass; panics with its report when it found anything.
fn finish_pass(pass: Running) -> Pass {
    let Running {
        name,
        child,
        cassette,
        report,
        started,
    } = pass;
    let out = child.wait_with_output().expect("schemathesis ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis ({name} pass) found problems (exit {}):\n{stdout}\n{stderr}",
        out.status
    );
    let cassette = std::fs::read_to_string(&cassette).expect("schemathesis wrote its cassette");
    let requests = cassette.matches("\n- id: ").count();
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("the JSON report")).unwrap();
    let test_cases = report["test_cases"]["generated"].as_u64().unwrap_or(0);
    assert_eq!(
        report["test_cases"]["with_failures"],
        json!(0),
        "{name} pass: {report}"
    );
    assert_eq!(
        report["operations"]["errored"],
        json!(0),
        "{name} pass: {report}"
    );
    eprintln!(
        "schemathesis {name} pass: {requests} requests, {test_cases} test cases in {:.0?}",
        started.elapsed()
    );
    Pass {
        requests,
        test_cases,
        cassette,
    }
}

/// The broker's table: `(PartitionKey, RowKey)` → every property.
async fn rows(app: &TestApp) -> BTreeMap<(String, String), Value> {
    let azurite = app.azurite.as_ref().expect("Azurite");
    let table = app.table.clone().expect("a table");
    azurite
        .dump_all_tables()
        .await
        .into_iter()
        .filter(|(t, _)| *t == table)
        .map(|(_, row)| {
            let key = (
                row["PartitionKey"].as_str().unwrap_or_default().to_owned(),
                row["RowKey"].as_str().unwrap_or_default().to_owned(),
            );
            (key, row)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_5xx_no_mismatch_with_the_document_and_no_unintended_store_change() {
    let app = TestApp::spawn(AppOptions {
        store: Store::Table,
        api_key: Some(API_KEY.to_owned()),
        // Nothing is due for refresh during the run unless a request asks for it.
        access_token_ttl_secs: 3600,
        ..AppOptions::default()
    })
    .await;
    app.connect(TARGET).await;
    app.connect(BYSTANDER).await;
    let bystander_token = app.access_token(BYSTANDER).await;
    let before = rows(&app).await;
    let key = |c: &str| (INTEGRATION.to_owned(), c.to_owned());
    assert!(before.contains_key(&key(TARGET)) && before.contains_key(&key(BYSTANDER)));

    let generated = start_pass(&app, "generated", "", &[]);
    let consented = start_pass(
        &app,
        "consented",
        &format!(
            "[parameters]\n\"path.integration\" = \"{INTEGRATION}\"\n\"path.connection\" = \"{TARGET}\"\n"
        ),
        &["--exclude-method", "DELETE"],
    );
    let (generated, consented) = (finish_pass(generated), finish_pass(consented));
    // The second pass did reach the consented connection's success answers.
    let served_tokens = consented
        .cassette
        .split("\n- id: ")
        .filter(|i| i.contains(&format!("/api/token/{INTEGRATION}/{TARGET}")))
        .filter(|i| i.contains("code: '200'"))
        .count();
    assert!(
        served_tokens > 10,
        "the consented pass got {served_tokens} tokens for {TARGET}"
    );
    let requests = generated.requests + consented.requests;
    eprintln!(
        "schemathesis: {requests} requests ({} test cases) in total",
        generated.test_cases + consented.test_cases
    );
    assert!(
        requests >= 3000,
        "several thousand requests, not {requests}"
    );

    let after = rows(&app).await;
    // Nothing was removed: no generated request names a stored row but the target (answers are
    // not mined for names, see schemathesis.toml), and the second pass sends no DELETE; pending
    // authorizations live 10 minutes, so no sweep purges them.
    for k in before.keys() {
        assert!(after.contains_key(k), "row {k:?} disappeared");
    }
    // The only rows added are pending authorizations and consent links (auth/start, auth/link,
    // consent-link, a status-page button) and pipeline credentials (their POST: an index entry
    // and the credential beside its connection, `<connection>!<client id>`): never a connection.
    for k in after.keys().filter(|k| !before.contains_key(*k)) {
        assert!(
            k.0 == "~pending" || k.0 == "~credential" || k.1.contains("!pc_"),
            "an unexpected new row {k:?}"
        );
    }
    // The bystander's row is untouched, property for property (its ETag and Timestamp included).
    if before[&key(BYSTANDER)] != after[&key(BYSTANDER)] {
        let naming: Vec<String> = [&generated.cassette, &consented.cassette]
            .iter()
            .flat_map(|c| c.split("\n- id: "))
            .filter(|i| i.contains(BYSTANDER))
            .map(|i| i.chars().take(3000).collect())
            .collect();
        panic!(
            "{BYSTANDER} changed though no request was meant to change it:\nbefore {}\nafter  {}\nrequests naming it: {naming:#?}",
            before[&key(BYSTANDER)],
            after[&key(BYSTANDER)],
        );
    }
    // The target may have been refreshed (force_refresh, min_validity_secs) but is the same grant.
    let (b, a) = (&before[&key(TARGET)], &after[&key(TARGET)]);
    for field in ["Status", "CreatedAt", "Scope", "Metadata", "TokenType"] {
        assert_eq!(b[field], a[field], "{TARGET}: {field} changed");
    }
    assert_eq!(a["Status"], json!("active"));
    // Both grants still work.
    let target_token = app.access_token(TARGET).await;
    assert!(
        app.oidc().is_active(&target_token).await,
        "{TARGET}'s grant was lost"
    );
    assert_eq!(app.access_token(BYSTANDER).await, bystander_token);
    assert!(app.oidc().is_active(&bystander_token).await);
    let reply = app
        .call(Method::GET, "/api/connections", None, Key::Configured)
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

/// Found by schemathesis: JSON Schema (and so the document) counts `60.0` as the integer 60, and
/// the broker refused it with a 400.
#[tokio::test]
async fn whole_seconds_written_as_json_decimals_are_accepted_and_fractions_refused() {
    let app = TestApp::spawn(AppOptions {
        api_key: Some(API_KEY.to_owned()),
        ..AppOptions::default()
    })
    .await;
    app.connect("decimals").await;
    for v in ["60.0", "6e1", "0.0"] {
        let body = format!(
            r#"{{"integration": "{INTEGRATION}", "connection": "decimals", "min_validity_secs": {v}}}"#
        );
        let reply = app.post_json("/api/token", &body).await;
        check_token_reply(&reply, "decimals");
    }
    let path = format!("/api/connections/{INTEGRATION}/decimals/consent-link");
    let reply = app.post_json(&path, r#"{"expires_in_secs": 175.0}"#).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    for (v, what) in [
        ("1.5", "a fraction"),
        ("-1.0", "a negative"),
        ("4294967296.0", "beyond u32"),
        ("1e300", "far beyond u32"),
    ] {
        let body = format!(
            r#"{{"integration": "{INTEGRATION}", "connection": "decimals", "min_validity_secs": {v}}}"#
        );
        let reply = app.post_json("/api/token", &body).await;
        assert_eq!(reply.status, 400, "{what}: {reply:?}");
        assert_eq!(reply.error_code(), "invalid_request", "{what}: {reply:?}");
        let reply = app
            .post_json(&path, &format!(r#"{{"expires_in_secs": {v}}}"#))
            .await;
        assert_eq!(reply.status, 400, "{what}: {reply:?}");
    }
}
