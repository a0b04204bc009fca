//! Tokens are encrypted at rest: the raw table (every property of every entity) and the raw SQLite
//! database (every column of every row, and the bytes of every file beside it) never hold a token in
//! any common encoding.

use rusqlite::types::ValueRef;

use crate::helpers::*;

/// Consents, reads the token, forces a refresh; returns every access token the broker handed out.
async fn tokens_after_consent_and_refresh(app: &TestApp, conn: &str) -> Vec<String> {
    app.connect(conn).await;
    let first = app.access_token(conn).await;
    let refreshed = app.token_reply(conn, "?force_refresh=true").await;
    let second = check_token_reply(&refreshed, conn)["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(first, second);
    vec![first, second]
}

fn needles(tokens: &[String]) -> Vec<String> {
    let mut all: Vec<String> = tokens.iter().flat_map(|t| encodings_of(t)).collect();
    all.extend(encodings_of(CLIENT_SECRET));
    all
}

#[tokio::test]
async fn the_table_holds_no_plaintext_token() {
    let app = TestApp::spawn(AppOptions::on(Store::Table)).await;
    let tokens = tokens_after_consent_and_refresh(&app, "acme").await;

    let entities = app.azurite.as_ref().unwrap().dump_all_tables().await;
    assert!(
        entities
            .iter()
            .any(|(table, _)| Some(table) == app.table.as_ref()),
        "the broker stores its rows in BROKER_TABLE: {entities:?}"
    );
    let raw = serde_json::to_string(&entities).unwrap();
    for needle in needles(&tokens) {
        assert!(
            !raw.contains(&needle),
            "the raw table contains a token or secret ({} chars) in clear",
            needle.len()
        );
    }
}

#[tokio::test]
async fn the_sqlite_database_holds_no_plaintext_token() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let tokens = tokens_after_consent_and_refresh(&app, "acme").await;
    let needles = needles(&tokens);

    // Every column of every row of every table, read while the broker runs.
    let db = app.dir.path().join("data/broker.db");
    assert!(db.is_file(), "the database is at the BROKER_STORAGE path");
    let cells = {
        let conn = rusqlite::Connection::open_with_flags(
            &db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .expect("open the broker's database read-only");
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut cells: Vec<Vec<u8>> = Vec::new();
        for table in &tables {
            let sql = format!("SELECT * FROM \"{}\"", table.replace('"', "\"\""));
            let mut stmt = conn.prepare(&sql).unwrap();
            let columns = stmt.column_count();
            let mut rows = stmt.query([]).unwrap();
            while let Some(row) = rows.next().unwrap() {
                for i in 0..columns {
                    let bytes = match row.get_ref(i).unwrap() {
                        ValueRef::Null => Vec::new(),
                        ValueRef::Integer(n) => n.to_string().into_bytes(),
                        ValueRef::Real(x) => x.to_string().into_bytes(),
                        ValueRef::Text(t) | ValueRef::Blob(t) => t.to_vec(),
                    };
                    cells.push(bytes);
                }
            }
        }
        cells
    };
    assert!(!cells.is_empty(), "the database holds the connection's row");
    for cell in &cells {
        for needle in &needles {
            assert!(
                !contains_bytes(cell, needle.as_bytes()),
                "a database cell contains a token or secret ({} chars) in clear",
                needle.len()
            );
        }
    }

    // The raw bytes of every file the broker wrote (database, WAL, journal, generated key file),
    // before and after the broker stops (a checkpoint may move pages).
    for phase in ["running", "stopped"] {
        if phase == "stopped" {
            app.stop_broker();
        }
        let files = read_all_files(app.dir.path());
        assert!(files.iter().any(|(p, _)| p.ends_with("data/broker.db")));
        for (path, bytes) in &files {
            for needle in &needles {
                assert!(
                    !contains_bytes(bytes, needle.as_bytes()),
                    "{} ({phase}) contains a token or secret ({} chars) in clear",
                    path.display(),
                    needle.len()
                );
            }
        }
    }
}
