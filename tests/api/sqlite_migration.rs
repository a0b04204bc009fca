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
