//! The embedded store's schema is versioned (`PRAGMA user_version`) and migrated in order: a
//! database written by an earlier version (schema 1, before `user_version` existed) opens with this
//! one, gains the new columns, and keeps serving its grants.
//!
//! `tests/fixtures/sqlite-v1/` was written by the broker as it was before the migrations (main at
//! 186d8fd), by `write_the_schema_1_fixture` below: one consented connection whose access token
//! lives ten years (so serving it needs no vendor), its key file, and the token it must serve.

use std::path::{Path, PathBuf};

use crate::helpers::*;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sqlite-v1")
}

/// Regenerates the fixture; only meaningful with the binary of the schema it stands for, so it is
/// ignored (run it with `cargo test --test api write_the_schema_1_fixture -- --ignored` on that
/// version, never on a later one).
#[tokio::test]
#[ignore]
async fn write_the_schema_1_fixture() {
    let mut app = TestApp::spawn(AppOptions {
        access_token_ttl_secs: 315_360_000,
        ..AppOptions::on(Store::Sqlite)
    })
    .await;
    app.connect("legacy").await;
    let token = app.access_token("legacy").await;
    app.stop_broker();
    let data = app.dir.path().join("data");
    {
        let db = rusqlite::Connection::open(data.join("broker.db")).unwrap();
        db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        db.pragma_update(None, "journal_mode", "DELETE").unwrap();
    }
    let out = fixture_dir();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(data.join("broker.db"), out.join("broker.db")).unwrap();
    std::fs::copy(data.join("broker.key"), out.join("broker.key")).unwrap();
    std::fs::write(
        out.join("grant.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "integration": INTEGRATION,
            "connection": "legacy",
            "access_token": token,
        }))
        .unwrap(),
    )
    .unwrap();
}

#[tokio::test]
async fn a_schema_1_database_is_migrated_and_keeps_serving_its_grant() {
    let mut app = TestApp::spawn(AppOptions {
        provider: false,
        ..AppOptions::on(Store::Sqlite)
    })
    .await;
    app.stop_broker();
    let data = app.dir.path().join("data");
    for f in ["broker.db", "broker.db-wal", "broker.db-shm", "broker.key"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    std::fs::copy(fixture_dir().join("broker.db"), data.join("broker.db")).unwrap();
    std::fs::copy(fixture_dir().join("broker.key"), data.join("broker.key")).unwrap();
    let grant: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("grant.json")).unwrap())
            .unwrap();
    let version = |data: &Path| -> i64 {
        rusqlite::Connection::open(data.join("broker.db"))
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(version(&data), 0, "the fixture predates user_version");

    let file = integrations_file("http://127.0.0.1:9", DEFAULT_MARGIN_SECS);
    std::fs::write(&app.spec.integrations_path, file.to_string()).unwrap();
    app.start_broker().await;
    let token = app.token("legacy").await;
    assert_eq!(
        token["access_token"], grant["access_token"],
        "the stored grant is served as it was"
    );
    let show = app
        .get(&format!("/api/connections/{INTEGRATION}/legacy"))
        .await;
    assert_eq!(show.status, 200, "{show:?}");
    assert_eq!(show.json()["account"], serde_json::Value::Null);
    assert_eq!(
        version(&data),
        3,
        "migrated to schema 3 (account, last_error_kind)"
    );

    // A second start finds it done, and still serves.
    app.restart_with_integrations(&file).await;
    assert_eq!(
        app.token("legacy").await["access_token"],
        grant["access_token"]
    );
    let output = app.stop_broker().text();
    assert_eq!(
        output.matches("embedded store schema migrated").count(),
        0,
        "the second start migrates nothing"
    );
}

#[tokio::test]
async fn a_database_of_a_newer_schema_is_refused_not_altered() {
    let mut app = TestApp::spawn(AppOptions {
        provider: false,
        ..AppOptions::on(Store::Sqlite)
    })
    .await;
    assert_eq!(app.health().await.status, 200);
    app.stop_broker();
    let db = app.dir.path().join("data/broker.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    app.start_broker().await;
    let health = app.health().await;
    assert_eq!(health.status, 503, "{health:?}");
    let v: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 99);
}
