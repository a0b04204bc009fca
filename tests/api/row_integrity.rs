//! A writer to the table cannot change what the broker hands out: every field of a connection row
//! that does not change with its state (identity, token type, scope, expiry, metadata) is bound to
//! the sealed tokens, so a tampered row answers 503 `store_unavailable` and the log names the row.
//! Rows written before this binding (format 1) are still read. Pending authorizations and consent
//! links are bound the same way: a tampered one is refused and nothing is connected.

use oauth_broker::crypto::Keyring;
use oauth_broker::domain::Secret;
use oauth_broker::startup::http_client;
use oauth_broker::store::table::TableBackend;
use oauth_broker::store::{ConnectionRow, ConnectionRows};
use serde_json::json;

use crate::helpers::*;

fn table_backend(app: &TestApp) -> TableBackend {
    TableBackend::connect(
        &Secret::new(app.azurite.as_ref().unwrap().connection_string()),
        app.table.as_ref().unwrap(),
        http_client(),
    )
    .unwrap()
}

type Tamper = fn(&mut ConnectionRow);

/// The connection's row as stored.
async fn raw_row(backend: &TableBackend, conn: &str) -> ConnectionRow {
    backend
        .get_connection(INTEGRATION, conn)
        .await
        .unwrap()
        .expect("the row exists")
        .value
}

#[tokio::test]
async fn a_tampered_connection_row_is_refused_and_the_original_still_serves() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Table)).await;
    app.connect("acme").await;
    let good = check_token_reply(&app.token_reply("acme", "").await, "acme");
    let backend = table_backend(&app);
    let original = raw_row(&backend, "acme").await;

    let tampers: [(&str, Tamper); 6] = [
        // The account a grant is bound to: neither changed (a consent by the
        // attacker's account would then pass) nor removed (a row without one
        // may be revived by anyone).
        ("account", |r| {
            r.account = Some(r#"{"id":"http://127.0.0.1:1#mallory","source":"id_token"}"#.into())
        }),
        ("account removed", |r| r.account = None),
        ("metadata", |r| {
            r.metadata = r#"{"instance_url":"https://attacker.example"}"#.into()
        }),
        ("scope", |r| r.scope.push_str(" admin")),
        ("token_type", |r| r.token_type = "MAC".into()),
        ("expires_at", |r| r.expires_at += time::Duration::days(1)),
    ];
    for (field, tamper) in tampers {
        let mut row = original.clone();
        tamper(&mut row);
        backend.upsert_connection(&row).await.unwrap();
        let reply = app.token_reply("acme", "").await;
        assert_eq!(reply.status, 503, "tampered {field}: {reply:?}");
        assert_eq!(reply.json()["error"], json!("store_unavailable"), "{field}");
        assert!(!reply.body.contains("attacker.example"), "{reply:?}");
        let listing = app.get("/api/connections").await;
        assert_eq!(
            listing.status, 200,
            "the listing skips the row: {listing:?}"
        );
        assert!(!listing.body.contains("attacker.example"), "{listing:?}");

        // The original row, put back, serves the same token again.
        backend.upsert_connection(&original).await.unwrap();
        let again = check_token_reply(&app.token_reply("acme", "").await, "acme");
        assert_eq!(again["access_token"], good["access_token"], "{field}");
    }
    let log = app.stop_broker().text();
    assert!(
        log.lines()
            .any(|l| l.contains("corrupt row") && l.contains(&format!("{INTEGRATION}/acme"))),
        "a log line names the tampered row: {log}"
    );
}

#[tokio::test]
async fn rows_sealed_before_row_integrity_are_still_read_and_rewritten_at_their_next_refresh() {
    let app = TestApp::spawn(AppOptions::on(Store::Table)).await;
    app.connect("legacy").await;
    let good = check_token_reply(&app.token_reply("legacy", "").await, "legacy");
    let backend = table_backend(&app);
    let mut row = raw_row(&backend, "legacy").await;
    assert!(
        row.sealed_tokens.starts_with("v2."),
        "new rows use format 2"
    );

    // Re-seal the same tokens the way format 1 did (bound to the row's identity only).
    let keys = Keyring::parse(&Secret::new(app.spec.encryption_keys.clone().unwrap())).unwrap();
    let aad_v2 = |r: &ConnectionRow| {
        serde_json::to_vec(&(
            "oauth-broker/v2/connection",
            &r.integration,
            &r.connection,
            &r.token_type,
            &r.scope,
            r.expires_at.unix_timestamp_nanos() / 1_000_000,
            &r.metadata,
        ))
        .unwrap()
    };
    // Format 2 appends the account when there is one.
    let account = row.account.take().expect("the consent recorded an account");
    let mut with_account: Vec<serde_json::Value> = serde_json::from_slice(&aad_v2(&row)).unwrap();
    with_account.push(serde_json::Value::String(account));
    let plain = keys
        .open(
            &row.key_id,
            &row.sealed_tokens[3..],
            &serde_json::to_vec(&with_account).unwrap(),
        )
        .expect("format 2 binds exactly these fields");
    // Format 1 rows were written before accounts were recorded: none.
    let (key_id, sealed) = keys.seal(
        &plain,
        format!("oauth-broker/v1/{INTEGRATION}/legacy").as_bytes(),
    );
    row.key_id = key_id;
    row.sealed_tokens = sealed;
    backend.upsert_connection(&row).await.unwrap();

    let again = check_token_reply(&app.token_reply("legacy", "").await, "legacy");
    assert_eq!(again["access_token"], good["access_token"]);
    let refreshed = check_token_reply(
        &app.token_reply("legacy", "?force_refresh=true").await,
        "legacy",
    );
    assert_ne!(refreshed["access_token"], good["access_token"]);
    let rewritten = raw_row(&backend, "legacy").await;
    assert!(
        rewritten.sealed_tokens.starts_with("v2."),
        "rewritten in format 2"
    );
}

#[tokio::test]
async fn a_tampered_row_in_the_embedded_store_is_refused_too() {
    let app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    app.connect("acme").await;
    check_token_reply(&app.token_reply("acme", "").await, "acme");
    let db = rusqlite::Connection::open(app.dir.path().join("data/broker.db")).unwrap();
    let changed = db
        .execute(
            "UPDATE connections SET metadata = ?1 WHERE connection = 'acme'",
            [r#"{"instance_url":"https://attacker.example"}"#],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let reply = app.token_reply("acme", "").await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.json()["error"], json!("store_unavailable"));
    assert!(!reply.body.contains("attacker.example"));
}

#[tokio::test]
async fn a_pending_authorization_redirected_to_another_connection_connects_nothing() {
    let app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let browser = Browser::new();
    let consent = app.consent_until_callback(&browser, "mine").await;
    let db = rusqlite::Connection::open(app.dir.path().join("data/broker.db")).unwrap();
    let changed = db
        .execute("UPDATE pending SET connection = 'victim'", [])
        .unwrap();
    assert_eq!(changed, 1, "one pending authorization");

    let page = browser.get(&consent.callback_url).await;
    assert_eq!(page.status, 503, "{page:?}");
    for conn in ["mine", "victim"] {
        let reply = app
            .get(&format!("/api/connections/{INTEGRATION}/{conn}"))
            .await;
        assert_eq!(reply.status, 404, "{conn} was not connected: {reply:?}");
    }
    assert_eq!(
        app.oidc().stats().await.authorization_codes(),
        0,
        "no code was exchanged"
    );
}

#[tokio::test]
async fn a_consent_link_redirected_to_another_connection_does_not_open() {
    let app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let created = app
        .post_json(
            &format!("/api/connections/{INTEGRATION}/mine/consent-link"),
            "{}",
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let url = created.json()["url"].as_str().unwrap().to_owned();
    let db = rusqlite::Connection::open(app.dir.path().join("data/broker.db")).unwrap();
    let changed = db
        .execute(
            "UPDATE pending SET connection = 'victim' WHERE state_hash LIKE 'link-%'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1, "one consent link");
    let page = Browser::new().get(&url).await;
    assert_eq!(page.status, 503, "a tampered link is refused: {page:?}");
    let pending: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM pending WHERE state_hash NOT LIKE 'link-%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(pending, 0, "no consent was started");
}

#[tokio::test]
async fn a_status_this_version_does_not_know_survives_a_failed_refresh_verbatim() {
    // A newer version may store a status this one does not know ("suspended", say). Using the
    // grant and writing the row back (a lease, a failed refresh) must keep it as it was, so a
    // downgrade and upgrade lose nothing.
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    app.connect("acme").await;
    let db = rusqlite::Connection::open(app.dir.path().join("data/broker.db")).unwrap();
    let status = |db: &rusqlite::Connection| -> String {
        db.query_row(
            "SELECT status FROM connections WHERE connection = 'acme'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(
        db.execute(
            "UPDATE connections SET status = 'suspended' WHERE connection = 'acme'",
            []
        )
        .unwrap(),
        1
    );
    let listed = app.get("/api/connections/demo/acme").await;
    assert_eq!(listed.json()["status"], json!("suspended"), "{listed:?}");

    // The vendor goes away: a forced refresh takes the lease, fails, and writes the row back.
    drop(app.oidc.take());
    let reply = app.token_reply("acme", "?force_refresh=true").await;
    assert_eq!(reply.status, 502, "{reply:?}");
    assert_eq!(
        status(&db),
        "suspended",
        "the unknown status is kept verbatim"
    );
    let listed = app.get("/api/connections/demo/acme").await;
    assert_eq!(listed.json()["status"], json!("suspended"), "{listed:?}");
    assert!(
        listed.json()["last_error"].is_string(),
        "the failure is recorded: {listed:?}"
    );
}
