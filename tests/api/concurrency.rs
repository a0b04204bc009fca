//! One refresh per connection at a time, across processes that share a store,
//! against oidc-provider with refresh-token rotation and reuse detection (a
//! second use of a refresh token revokes the whole grant).

use std::sync::Arc;

use oauth_broker::crypto::Keyring;
use oauth_broker::domain::{ConnectionId, IntegrationName, Secret};
use oauth_broker::startup::http_client;
use oauth_broker::store::sqlite::SqliteBackend;
use oauth_broker::store::table::TableBackend;
use oauth_broker::store::{Backend, Store as BrokerStore};
use serde_json::Value;
use time::{Duration, OffsetDateTime};

use crate::helpers::*;

/// The broker's own store, opened from the test with the broker's key, to
/// set up states (a token inside the margin) that would otherwise take minutes.
pub fn open_store(app: &TestApp) -> BrokerStore {
    let keys = Keyring::parse(&Secret::new(format!("k1:{}", app.encryption_key))).unwrap();
    let backend: Arc<dyn Backend> = match (&app.azurite, &app.table) {
        (Some(azurite), Some(table)) => Arc::new(
            TableBackend::connect(
                &Secret::new(azurite.connection_string()),
                table,
                http_client(),
            )
            .unwrap(),
        ),
        _ => Arc::new(SqliteBackend::open(&app.dir.path().join("data/broker.db")).unwrap()),
    };
    BrokerStore::new(backend, keys)
}

/// Moves the stored access token's expiry to `now + secs` (the token itself stays valid at the provider).
pub async fn set_expiry(app: &TestApp, conn: &str, secs: i64) {
    let store = open_store(app);
    let (i, c) = (
        IntegrationName::parse(INTEGRATION).unwrap(),
        ConnectionId::parse(conn).unwrap(),
    );
    let mut current = store.get(&i, &c).await.unwrap().expect("connection stored");
    // As if the token had been issued earlier: its issued lifetime (`expires_at - refreshed_at`,
    // which caps the refresh margin at half of it) stays as the provider set it.
    let expires_at = OffsetDateTime::now_utc() + Duration::seconds(secs);
    current.value.refreshed_at += expires_at - current.value.expires_at;
    current.value.expires_at = expires_at;
    store
        .replace(&current.value, &current.version)
        .await
        .unwrap();
}

async fn start_app(store: Store, env: &[(&str, &str)]) -> TestApp {
    let mut app = TestApp::spawn(AppOptions {
        sqlite_encryption_keys: true,
        ..AppOptions::on(store)
    })
    .await;
    if !env.is_empty() {
        app.spec
            .env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        app.restart_with_margin(DEFAULT_MARGIN_SECS).await;
    }
    app
}

/// Another broker process on the same store, keys and integrations.
async fn another_process(app: &TestApp) -> Broker {
    Broker::start(&BrokerSpec {
        port: free_port(),
        ..app.spec.clone()
    })
    .await
}

async fn oidc_config(app: &TestApp, query: &str) {
    let resp = reqwest::Client::new()
        .post(format!("{}/__config?{query}", app.oidc().issuer))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
}

async fn reset_stats(app: &TestApp) {
    let resp = reqwest::Client::new()
        .post(format!("{}/__reset", app.oidc().issuer))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
}

async fn one_refresh_for_many_concurrent_callers_across_processes(store: Store) {
    let app = start_app(store, &[]).await;
    app.connect("c1").await;
    let before = app.access_token("c1").await;
    let others = [another_process(&app).await, another_process(&app).await];
    let bases: Vec<String> = std::iter::once(app.base_url())
        .chain(others.iter().map(|b| b.base_url.clone()))
        .collect();
    set_expiry(&app, "c1", 5).await; // inside the 30 s margin: every caller wants a refresh
    reset_stats(&app).await;

    let path = TestApp::token_path("c1");
    let key = app.broker().key().map(str::to_owned);
    let calls = (0..150).map(|i| {
        let (base, path, key) = (bases[i % bases.len()].clone(), path.clone(), key.clone());
        tokio::spawn(async move { host_get(&base, &path, key.as_deref()).await })
    });
    let replies = futures::future::join_all(calls).await;
    let mut tokens = std::collections::HashSet::new();
    for reply in replies {
        let reply = reply.unwrap();
        let v = check_token_reply(&reply, "c1");
        tokens.insert(v["access_token"].as_str().unwrap().to_owned());
    }
    let stats = app.oidc().stats().await;
    assert_eq!(
        stats.refreshes(),
        1,
        "the provider served exactly one refresh: {:?}",
        stats.0
    );
    assert_eq!(stats.refresh_successes(), 1, "{:?}", stats.0);
    assert_eq!(
        stats.grants_revoked(),
        0,
        "no grant was revoked: {:?}",
        stats.0
    );
    assert_eq!(
        tokens.len(),
        1,
        "every caller got the same new token: {tokens:?}"
    );
    let new = tokens.into_iter().next().unwrap();
    assert_ne!(new, before, "the token was refreshed");
    assert!(
        app.oidc().is_active(&new).await,
        "the new token is live at the provider"
    );

    // A later forced refresh, on another process, still works: the grant is intact.
    let forced = host_get(
        &bases[1],
        &format!("{path}?force_refresh=true"),
        app.broker().key(),
    )
    .await;
    let forced = check_token_reply(&forced, "c1")["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(forced, new);
    assert!(app.oidc().is_active(&forced).await);
    let stats = app.oidc().stats().await;
    assert_eq!(
        (stats.refreshes(), stats.grants_revoked()),
        (2, 0),
        "{:?}",
        stats.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_refresh_for_150_concurrent_callers_across_three_processes_on_table_storage() {
    one_refresh_for_many_concurrent_callers_across_processes(Store::Table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_refresh_for_150_concurrent_callers_across_three_processes_on_one_sqlite_file() {
    one_refresh_for_many_concurrent_callers_across_processes(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresher_killed_while_holding_the_lease_is_taken_over_after_the_lease_lapses() {
    // A short lease so the takeover happens within the test; the vendor answers slowly.
    let mut app = start_app(
        Store::Table,
        &[
            ("BROKER_REFRESH_LEASE_SECS", "4"),
            ("BROKER_UPSTREAM_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    app.connect("c1").await;
    let survivor = another_process(&app).await;
    set_expiry(&app, "c1", 5).await;
    reset_stats(&app).await;
    // The vendor is slow, and (like a vendor the request never reached) ignores
    // a request whose caller died before it was processed.
    oidc_config(&app, "token_delay_ms=1500&drop_abandoned=1").await;

    let victim_url = app.url(&TestApp::token_path("c1"));
    let victim_key = app.broker().key().unwrap_or_default().to_owned();
    let doomed = tokio::spawn(async move {
        reqwest::Client::new()
            .get(victim_url)
            .header("x-functions-key", victim_key)
            .send()
            .await
    });
    // Wait until the victim holds the lease, then SIGKILL it mid-refresh.
    let store = open_store(&app);
    let (i, c) = (
        IntegrationName::parse(INTEGRATION).unwrap(),
        ConnectionId::parse("c1").unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let row = store.get(&i, &c).await.unwrap().unwrap().value;
        if row.lease_owner.is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first process never took the lease"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // ... and its refresh request has reached the vendor (counted on arrival; it answers in 1.5 s).
    while app.oidc().stats().await.refreshes() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first process never called the vendor"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let victim_output = app.stop_broker(); // SIGKILL
    assert!(
        doomed.await.unwrap().is_err(),
        "the killed process never answered"
    );
    assert!(
        !victim_output.text().contains("\"outcome\":\"refreshed\""),
        "killed before it finished"
    );

    let leased = store.get(&i, &c).await.unwrap().unwrap().value;
    assert!(
        leased.lease_until.is_some(),
        "the dead holder's lease is still in the row"
    );
    let reply = host_get(
        &survivor.base_url,
        &TestApp::token_path("c1"),
        survivor.key(),
    )
    .await;
    let token = check_token_reply(&reply, "c1")["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        app.oidc().is_active(&token).await,
        "the survivor's token is live"
    );
    let after = store.get(&i, &c).await.unwrap().unwrap().value;
    assert!(
        after.lease_until.is_none() && after.last_error.is_none(),
        "lease released, no error recorded"
    );

    let stats = app.oidc().stats().await;
    assert_eq!(
        stats.0["abandoned"],
        Value::from(1),
        "the victim's request died with it: {:?}",
        stats.0
    );
    assert_eq!(stats.refresh_successes(), 1, "{:?}", stats.0);
    assert_eq!(stats.grants_revoked(), 0, "{:?}", stats.0);

    oidc_config(&app, "token_delay_ms=0").await;
    let forced = host_get(
        &survivor.base_url,
        &format!("{}?force_refresh=true", TestApp::token_path("c1")),
        survivor.key(),
    )
    .await;
    let forced = check_token_reply(&forced, "c1")["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        app.oidc().is_active(&forced).await,
        "the connection stays usable"
    );
}
