//! `GET /api/health`: `{"status":"ok"}` when the store answers, 503 when it does not; the broker
//! starts even when Table Storage is down.

use serde_json::json;

use crate::helpers::*;

async fn health_is_ok(store: Store) {
    let app = TestApp::spawn(AppOptions {
        store,
        provider: false,
        ..AppOptions::default()
    })
    .await;
    let reply = app.health().await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json(), json!({"status": "ok"}));
}

#[tokio::test]
async fn health_is_ok_on_table_storage() {
    health_is_ok(Store::Table).await;
}

#[tokio::test]
async fn health_is_ok_on_sqlite() {
    health_is_ok(Store::Sqlite).await;
}

/// A broker pointed at Table Storage on `port`, with the demo integration (provider not running).
fn table_spec(dir: &tempfile::TempDir, port: u16) -> BrokerSpec {
    let integrations_path = dir.path().join("integrations.json");
    std::fs::write(
        &integrations_path,
        integrations_file("http://127.0.0.1:9", DEFAULT_MARGIN_SECS).to_string(),
    )
    .unwrap();
    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, random_bytes(32));
    BrokerSpec {
        port: 0,
        bind: "127.0.0.1".into(),
        storage: table_connection_string(port),
        table: Some(fresh_table_name()),
        encryption_keys: Some(format!("k1:{key}")),
        api_key: None,
        public_url: None,
        integrations_path,
        work_dir: dir.path().to_owned(),
        env: vec![
            ("DEMO_CLIENT_ID".into(), CLIENT_ID.into()),
            ("DEMO_CLIENT_SECRET".into(), CLIENT_SECRET.into()),
        ],
    }
}

#[tokio::test]
async fn health_is_503_when_table_storage_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port.
    let dead_port = free_port();
    let broker = Broker::start(&table_spec(&dir, dead_port)).await;

    let health = host_get(&broker.base_url, "/api/health", None).await;
    assert_eq!(health.status, 503, "health with the store down: {health:?}");

    let token = host_get(
        &broker.base_url,
        &format!("/api/token/{INTEGRATION}/acme"),
        broker.key(),
    )
    .await;
    assert_eq!(
        token.status, 503,
        "token route with the store down: {token:?}"
    );
    assert_eq!(token.error_code(), "store_unavailable", "{token:?}");
    assert!(
        !token.body.contains(AZURITE_KEY),
        "no storage key in the body"
    );
}

/// Table Storage is down when the broker starts (it must start anyway) and comes up later: as soon
/// as health says ok, consent and the token route work, without a restart.
#[tokio::test]
async fn a_store_that_comes_up_after_the_broker_is_usable_once_health_says_ok() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = Broker::start(&table_spec(&dir, port)).await;
    let health = host_get(&broker.base_url, "/api/health", None).await;
    assert_eq!(
        health.status, 503,
        "health before the store is up: {health:?}"
    );

    let _azurite = Azurite::start_on(port).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let health = host_get(&broker.base_url, "/api/health", None).await;
        if health.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "health never recovered after the store came up: {health:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let start = host_get(
        &broker.base_url,
        &format!("/api/auth/start/{INTEGRATION}?connection=late"),
        broker.key(),
    )
    .await;
    assert_eq!(
        start.status, 302,
        "health said ok, so consent can start: {start:?}"
    );
    let token = host_get(
        &broker.base_url,
        &format!("/api/token/{INTEGRATION}/late"),
        broker.key(),
    )
    .await;
    assert_eq!(
        token.status, 404,
        "the store answers: not found, not unavailable: {token:?}"
    );
    assert_eq!(token.error_code(), "connection_not_found", "{token:?}");
}
