//! A sweep survives a panic in one connection's refresh: that connection counts as
//! `failed` and every other one is refreshed. No real component panics on cue, so the
//! panic comes from a store backend (SQLite underneath) that panics when it is asked
//! to write one connection's lease; the engine, the integration and the vendor
//! protocol are the broker's own, against the scriptable vendor.

use std::path::Path;
use std::sync::Arc;

use oauth_broker::config::integrations::parse;
use oauth_broker::config::RefreshPolicy;
use oauth_broker::crypto::Keyring;
use oauth_broker::domain::{ConnectionId, ConnectionRecord, IntegrationName, Secret, TokenSet};
use oauth_broker::refresh::{Engine, SweepSummary};
use oauth_broker::registry::Registry;
use oauth_broker::startup::http_client;
use oauth_broker::store::sqlite::SqliteBackend;
use oauth_broker::store::{
    BoxFuture, ConnectionRow, ConnectionRows, Rows, Store, StoreError, Version, Versioned,
};
use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::helpers::FakeVendor;
use crate::helpers::*;

/// SQLite's connection rows, except that writing a lease for connection `boom`
/// panics. It stands in for that one capability; the store keeps SQLite for the rest.
struct PanicsOnBoom(Arc<SqliteBackend>);

impl ConnectionRows for PanicsOnBoom {
    fn get_connection<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned<ConnectionRow>>, StoreError>> {
        self.0.get_connection(integration, connection)
    }
    fn upsert_connection<'a>(
        &'a self,
        row: &'a ConnectionRow,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        self.0.upsert_connection(row)
    }
    fn replace_connection<'a>(
        &'a self,
        row: &'a ConnectionRow,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        assert!(row.connection != "boom", "a panic in one refresh");
        self.0.replace_connection(row, version)
    }
    fn list_due(
        &self,
        expires_before: OffsetDateTime,
        refreshed_before: OffsetDateTime,
    ) -> BoxFuture<'_, Result<Vec<Versioned<ConnectionRow>>, StoreError>> {
        self.0.list_due(expires_before, refreshed_before)
    }
    fn list_connections(&self) -> BoxFuture<'_, Result<Vec<Versioned<ConnectionRow>>, StoreError>> {
        self.0.list_connections()
    }
    fn delete_connection<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.0.delete_connection(integration, connection)
    }
}

#[tokio::test]
async fn a_panic_in_one_refresh_is_that_connections_failure_and_the_sweep_goes_on() {
    let vendor = FakeVendor::start();
    let dir = tempfile::tempdir().unwrap();
    let file = json!({"integrations": {INTEGRATION: {
        "authorization_url": format!("{}/authorize", vendor.base),
        "token_url": vendor.token_url(),
        "client_id": "client", "client_secret": "secret", "scopes": ["read"]
    }}});
    let parsed = parse(&file.to_string(), Path::new("i.json"), &|_| None).unwrap();
    let sqlite = Arc::new(SqliteBackend::open(&dir.path().join("b.db")).unwrap());
    let mut rows = Rows::of(sqlite.clone());
    rows.connections = Arc::new(PanicsOnBoom(sqlite));
    let key = Keyring::parse(&Secret::new(format!(
        "k1:{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, random_bytes(32))
    )))
    .unwrap();
    let store = Store::from_rows(rows, key);
    let engine = Engine::new(
        store.clone(),
        http_client(),
        Registry::of(parsed.ready),
        RefreshPolicy {
            sweep_concurrency: 1,
            ..RefreshPolicy::default()
        },
        None,
    );
    let now = OffsetDateTime::now_utc();
    // Due (inside the 900 s margin), issued an hour ago; the panicking one sorts in the middle.
    for conn in ["a-first", "boom", "z-last"] {
        let mut r = ConnectionRecord::new_grant(
            IntegrationName::parse(INTEGRATION).unwrap(),
            ConnectionId::parse(conn).unwrap(),
            TokenSet {
                access_token: Secret::new(format!("seed-{conn}")),
                refresh_token: Some(Secret::new(format!("rt-{conn}"))),
            },
            "Bearer".into(),
            "read".into(),
            now + Duration::seconds(60),
            now,
        );
        r.refreshed_at = now - Duration::hours(1);
        store.upsert(&r).await.unwrap();
    }
    let summary = engine.sweep().await.expect("the sweep finishes");
    assert_eq!(
        summary,
        SweepSummary {
            refreshed: 2,
            failed: 1,
            reauthorization_required: 0
        }
    );
    let mut received = vendor.refresh_tokens_received();
    received.sort();
    assert_eq!(received, ["rt-a-first", "rt-z-last"]);
    // The next sweep runs as well (and meets the same panic).
    let again = engine.sweep().await.expect("the next sweep finishes");
    assert_eq!(again.failed, 1);
}
