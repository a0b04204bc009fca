//! Failure classification (RFC 6749 §5.2), retries, cool-down and odd token
//! responses, against the scriptable fake vendor; and the sweep at scale.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use futures::StreamExt;
use oauth_broker::crypto::Keyring;
use oauth_broker::domain::{
    ConnectionId, ConnectionRecord, ConnectionStatus, IntegrationName, Secret, TokenSet,
};
use oauth_broker::startup::http_client;
use oauth_broker::store::sqlite::SqliteBackend;
use oauth_broker::store::table::TableBackend;
use oauth_broker::store::{Backend, Store as BrokerStore};
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};

use crate::helpers::*;
use crate::helpers::{Answer, FakeVendor};

struct VendorApp {
    vendor: FakeVendor,
    broker: Broker,
    spec: BrokerSpec,
    store: BrokerStore,
    _azurite: Option<Azurite>,
    _dir: tempfile::TempDir,
}

const MARGIN: i64 = 300;

async fn vendor_app(table: bool, env: &[(&str, &str)]) -> VendorApp {
    let vendor = FakeVendor::start();
    let dir = tempfile::tempdir().unwrap();
    let integrations = json!({"integrations": {INTEGRATION: {
        "authorization_url": format!("{}/authorize", vendor.base),
        "token_url": vendor.token_url(),
        "client_id": "client", "client_secret": "%VENDOR_SECRET%",
        "scopes": ["read"], "refresh_margin_secs": MARGIN, "keepalive_hours": 24
    }}});
    let integrations_path = dir.path().join("integrations.json");
    std::fs::write(&integrations_path, integrations.to_string()).unwrap();
    let key = format!(
        "k1:{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, random_bytes(32))
    );
    let (azurite, storage, table_name, backend): (_, _, _, Arc<dyn Backend>) = if table {
        let azurite = Azurite::start().await;
        let name = fresh_table_name();
        let backend = Arc::new(
            TableBackend::connect(
                &Secret::new(azurite.connection_string()),
                &name,
                http_client(),
            )
            .unwrap(),
        );
        let cs = azurite.connection_string();
        (Some(azurite), cs, Some(name), backend)
    } else {
        let db = dir.path().join("broker.db");
        let backend = Arc::new(SqliteBackend::open(&db).unwrap());
        (None, format!("sqlite:{}", db.display()), None, backend)
    };
    let store = BrokerStore::new(backend, Keyring::parse(&Secret::new(key.clone())).unwrap());
    let mut extra: Vec<(String, String)> =
        vec![("VENDOR_SECRET".into(), "vendor-secret-value".into())];
    extra.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let spec = BrokerSpec {
        port: 0,
        bind: "127.0.0.1".into(),
        storage,
        table: table_name,
        encryption_keys: Some(key),
        api_key: None,
        public_url: None,
        integrations_path,
        work_dir: dir.path().to_owned(),
        env: extra,
    };
    let broker = Broker::start(&spec).await;
    VendorApp {
        vendor,
        broker,
        spec,
        store,
        _azurite: azurite,
        _dir: dir,
    }
}

fn record(conn: &str, expires_in: i64, refresh_token: &str) -> ConnectionRecord {
    let now = OffsetDateTime::now_utc();
    let tokens = TokenSet {
        access_token: Secret::new(format!("seed-at-{conn}")),
        refresh_token: Some(Secret::new(refresh_token)),
    };
    let mut r = ConnectionRecord::new_grant(
        IntegrationName::parse(INTEGRATION).unwrap(),
        ConnectionId::parse(conn).unwrap(),
        tokens,
        "Bearer".into(),
        "read".into(),
        now + Duration::seconds(expires_in),
        now,
    );
    // Issued as a one-hour token some time ago (the refresh margin is capped at half the
    // issued lifetime, `expires_at - refreshed_at`).
    r.refreshed_at = (r.expires_at - Duration::hours(1)).min(now);
    r
}

async fn host_post_json(base: &str, path: &str, body: &Value, key: Option<&str>) -> Reply {
    let resp = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("x-functions-key", key.unwrap_or_default())
        .header("User-Agent", format!("Azure-Functions-Host/{HOST_VERSION}"))
        .header("X-Azure-Functions-InvocationId", uuid_ish())
        .json(body)
        .send()
        .await
        .unwrap();
    Reply::from(resp).await
}

impl VendorApp {
    /// Starts the broker again on the same store, with `secret` as the client secret's setting
    /// (on a new port), and stops the old one.
    async fn restart_with_secret(&mut self, secret: &str) {
        for (k, v) in self.spec.env.iter_mut() {
            if k == "VENDOR_SECRET" {
                secret.clone_into(v);
            }
        }
        let new = Broker::start(&self.spec).await;
        std::mem::replace(&mut self.broker, new).stop();
    }

    async fn seed(&self, r: &ConnectionRecord) {
        self.store.upsert(r).await.unwrap();
    }
    async fn stored(&self, conn: &str) -> ConnectionRecord {
        let (i, c) = (
            IntegrationName::parse(INTEGRATION).unwrap(),
            ConnectionId::parse(conn).unwrap(),
        );
        self.store.get(&i, &c).await.unwrap().expect("stored").value
    }
    async fn token(&self, conn: &str, query: &str) -> Reply {
        host_get(
            &self.broker.base_url,
            &format!("/api/token/{INTEGRATION}/{conn}{query}"),
            self.broker.key(),
        )
        .await
    }
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff_until_the_vendor_answers() {
    let app = vendor_app(false, &[]).await;
    app.seed(&record("c1", 10, "rt-0")).await;
    app.vendor
        .script([Answer::status(500), Answer::status(503), Answer::mint()]);
    let reply = app.token("c1", "").await;
    let v = check_token_reply(&reply, "c1");
    assert_eq!(v["access_token"], "at-1");
    assert_eq!(
        app.vendor.refresh_tokens_received(),
        ["rt-0", "rt-0", "rt-0"],
        "three attempts with the same token"
    );
    let times = app.vendor.refresh_times();
    assert!(
        times[2] - times[1] > times[1] - times[0] - StdDuration::from_millis(300),
        "backoff grows: {times:?}"
    );
    let stored = app.stored("c1").await;
    assert_eq!(
        stored.tokens.refresh_token.unwrap().expose(),
        "rt-1",
        "the rotated token is stored"
    );
    assert!(stored.last_error.is_none());
}

#[tokio::test]
async fn retry_after_from_a_429_is_honoured() {
    let app = vendor_app(false, &[]).await;
    app.seed(&record("c1", 10, "rt-0")).await;
    app.vendor.script([
        Answer::Raw {
            status: 429,
            content_type: "application/json",
            body: "{}".into(),
            retry_after: Some(2),
        },
        Answer::mint(),
    ]);
    check_token_reply(&app.token("c1", "").await, "c1");
    let times = app.vendor.refresh_times();
    assert_eq!(times.len(), 2);
    assert!(
        times[1] - times[0] >= StdDuration::from_millis(1900),
        "waited as told: {:?}",
        times[1] - times[0]
    );
}

#[tokio::test]
async fn a_vendor_slower_than_the_timeout_gives_502_and_the_grant_survives() {
    let app = vendor_app(
        false,
        &[
            ("BROKER_UPSTREAM_TIMEOUT_SECS", "1"),
            ("BROKER_REFRESH_LEASE_SECS", "10"),
        ],
    )
    .await;
    app.seed(&record("c1", -5, "rt-0")).await; // already expired: nothing to fall back on
    app.vendor.set_default(Answer::Slow(
        StdDuration::from_millis(2500),
        Box::new(Answer::mint()),
    ));
    let reply = app.token("c1", "").await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (502, "upstream_error"),
        "{reply:?}"
    );
    assert!(reply.body.contains("timed out"), "{reply:?}");
    assert!(app.vendor.refresh_count() >= 2, "retried within the lease");
    let stored = app.stored("c1").await;
    assert_eq!(
        stored.status,
        ConnectionStatus::Active,
        "a timeout never kills a grant"
    );
    assert_eq!(stored.tokens.refresh_token.unwrap().expose(), "rt-0");
    assert!(stored.last_error.unwrap().contains("timed out"));
    assert!(stored.lease_until.is_none(), "the lease is released");
}

#[tokio::test]
async fn unparsable_bodies_are_transient_and_a_still_valid_token_is_served_instead() {
    let app = vendor_app(false, &[]).await;
    app.seed(&record("c1", 60, "rt-0")).await; // inside the margin but still valid
    app.vendor.set_default(Answer::Raw {
        status: 200,
        content_type: "text/html",
        body: "<html>maintenance</html>".into(),
        retry_after: None,
    });
    let v = check_token_reply(&app.token("c1", "").await, "c1");
    assert_eq!(
        v["access_token"], "seed-at-c1",
        "the valid stored token is served"
    );
    assert_eq!(app.vendor.refresh_count(), 3);
    let stored = app.stored("c1").await;
    assert!(stored.last_error.unwrap().contains("not a token response"));
    assert!(stored.last_error_at.is_some());
}

#[tokio::test]
async fn invalid_client_blames_the_integration_not_the_connection() {
    let app = vendor_app(false, &[]).await;
    app.seed(&record("c1", -5, "rt-0")).await;
    app.vendor
        .script([Answer::oauth_error(401, "invalid_client")]);
    let reply = app.token("c1", "").await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (502, "integration_misconfigured"),
        "{reply:?}"
    );
    assert_eq!(app.vendor.refresh_count(), 1, "not retried");
    let stored = app.stored("c1").await;
    assert_eq!(
        stored.status,
        ConnectionStatus::Active,
        "the connection is not marked dead"
    );
    assert_eq!(stored.tokens.refresh_token.unwrap().expose(), "rt-0");
}

#[tokio::test]
async fn a_changed_client_configuration_ends_the_cool_down_and_the_misconfigured_mark_at_start() {
    let mut app = vendor_app(false, &[("BROKER_REFRESH_COOLDOWN_SECS", "3600")]).await;
    app.seed(&record("c1", -5, "rt-0")).await;
    app.vendor
        .script([Answer::oauth_error(401, "invalid_client")]);
    let reply = app.token("c1", "").await;
    assert_eq!(reply.error_code(), "integration_misconfigured", "{reply:?}");
    let view = |app: &VendorApp| {
        let base = app.broker.base_url.clone();
        let key = app.broker.key().map(str::to_owned);
        async move {
            host_get(
                &base,
                &format!("/api/connections/{INTEGRATION}/c1"),
                key.as_deref(),
            )
            .await
            .json()
        }
    };
    let shown = view(&app).await;
    assert_eq!(
        (shown["status"].as_str(), shown["condition"].as_str()),
        (Some("active"), Some("misconfigured")),
        "{shown}"
    );
    let listed = host_get(&app.broker.base_url, "/api/connections", app.broker.key())
        .await
        .json();
    assert_eq!(
        listed["connections"][0]["condition"], "misconfigured",
        "{listed}"
    );

    // The same configuration after a restart: the cool-down holds, nobody calls the vendor.
    app.restart_with_secret("vendor-secret-value").await;
    let calls = app.vendor.refresh_count();
    let reply = app.token("c1", "").await;
    assert_eq!(
        reply.error_code(),
        "upstream_error",
        "still cooling down: {reply:?}"
    );
    assert_eq!(app.vendor.refresh_count(), calls);
    assert_eq!(view(&app).await["condition"], "misconfigured");

    // The operator fixes the secret and restarts: the first call retries at once and works.
    app.restart_with_secret("the-fixed-secret").await;
    assert_eq!(
        view(&app).await["condition"],
        "active",
        "no longer misconfigured"
    );
    let reply = app.token("c1", "").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        app.vendor.refresh_count(),
        calls + 1,
        "one refresh, at once"
    );
}

#[tokio::test]
async fn after_a_failure_the_cool_down_keeps_callers_off_the_vendor() {
    let app = vendor_app(false, &[("BROKER_REFRESH_COOLDOWN_SECS", "60")]).await;
    app.seed(&record("c1", -5, "rt-0")).await;
    app.vendor.set_default(Answer::status(500));
    assert_eq!(app.token("c1", "").await.status, 502);
    let attempts = app.vendor.refresh_count();
    assert_eq!(attempts, 3, "one refresh = bounded retries");
    let calls = (0..20).map(|_| app.token("c1", ""));
    for reply in futures::future::join_all(calls).await {
        assert_eq!(
            (reply.status, reply.error_code().as_str()),
            (502, "upstream_error"),
            "{reply:?}"
        );
        assert!(reply.body.contains("cool-down"), "{reply:?}");
    }
    assert_eq!(
        app.vendor.refresh_count(),
        attempts,
        "no upstream attempt during the cool-down"
    );
    // A new consent is the way out of a cool-down; here: the operator's fix plus time.
}

#[tokio::test]
async fn a_200_with_an_error_body_is_an_error() {
    let app = vendor_app(false, &[]).await;
    app.seed(&record("c1", -5, "rt-0")).await;
    app.vendor.script([Answer::Raw {
        status: 200,
        content_type: "application/json",
        body: r#"{"error":"bad_refresh_token"}"#.into(),
        retry_after: None,
    }]);
    let reply = app.token("c1", "").await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (502, "upstream_error"),
        "{reply:?}"
    );
    assert!(reply.body.contains("bad_refresh_token"));
    assert_eq!(
        app.vendor.refresh_count(),
        1,
        "a definite refusal is not retried"
    );
}

#[tokio::test]
async fn invalid_grant_marks_the_grant_dead_and_nobody_tries_it_again() {
    let app = vendor_app(false, &[]).await;
    app.seed(&record("c1", -5, "dead-0")).await;
    let reply = app.token("c1", "").await;
    assert_eq!(reply.status, 409, "{reply:?}");
    assert_eq!(
        reply.json()["authorize_url"],
        json!(format!(
            "{}/api/auth/start/{INTEGRATION}?connection=c1",
            app.broker.base_url
        ))
    );
    let stored = app.stored("c1").await;
    assert_eq!(stored.status, ConnectionStatus::ReauthorizationRequired);
    assert!(stored.last_error.unwrap().contains("invalid_grant"));
    assert_eq!(app.token("c1", "?force_refresh=true").await.status, 409);
    assert_eq!(
        app.vendor.refresh_count(),
        1,
        "a dead grant is never presented again"
    );
    // A new consent for the same connection restores it.
    app.seed(&record("c1", 3600, "rt-new")).await;
    check_token_reply(&app.token("c1", "").await, "c1");
}

#[tokio::test]
async fn a_refresh_without_a_new_refresh_token_keeps_the_old_one() {
    let app = vendor_app(false, &[]).await;
    app.seed(&record("c1", 10, "rt-0")).await;
    app.vendor.script([
        Answer::Mint {
            expires_in: json!(3600),
            with_refresh_token: false,
        },
        Answer::Mint {
            expires_in: json!(3600),
            with_refresh_token: false,
        },
    ]);
    check_token_reply(&app.token("c1", "").await, "c1");
    check_token_reply(&app.token("c1", "?force_refresh=true").await, "c1");
    assert_eq!(app.vendor.refresh_tokens_received(), ["rt-0", "rt-0"]);
    assert_eq!(
        app.stored("c1")
            .await
            .tokens
            .refresh_token
            .unwrap()
            .expose(),
        "rt-0"
    );
}

#[tokio::test]
async fn expires_in_missing_or_sent_as_a_string_is_understood() {
    let app = vendor_app(false, &[]).await;
    for (conn, expires_in, expected) in [
        ("missing", Value::Null, 3600),
        ("string", json!("7200"), 7200),
        ("number", json!(5400), 5400),
    ] {
        app.seed(&record(conn, 10, "rt-0")).await;
        app.vendor.script([Answer::Mint {
            expires_in,
            with_refresh_token: true,
        }]);
        let v = check_token_reply(&app.token(conn, "").await, conn);
        let got = v["expires_in"].as_i64().unwrap();
        assert!(
            (expected - 5..=expected).contains(&got),
            "{conn}: expires_in {got}, expected about {expected}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sweep_refreshes_exactly_the_due_connections_with_bounded_concurrency() {
    let app = vendor_app(true, &[("BROKER_SWEEP_CONCURRENCY", "5")]).await;
    app.vendor.set_default(Answer::Slow(
        StdDuration::from_millis(20),
        Box::new(Answer::mint()),
    ));
    let mut seeds = Vec::new();
    for i in 0..2000 {
        let conn = format!("c{i:04}");
        let r = match i % 20 {
            0..=5 => record(&conn, 60, &format!("rt-due-{i}")), // inside the 300 s margin
            6 => {
                let mut r = record(&conn, 7200, &format!("rt-idle-{i}")); // keep-alive: idle for 30 h
                r.refreshed_at = OffsetDateTime::now_utc() - Duration::hours(30);
                r
            }
            7 => {
                let mut r = record(&conn, -60, &format!("rt-x-{i}"));
                r.status = ConnectionStatus::ReauthorizationRequired;
                r
            }
            8 if i % 40 == 8 => record(&conn, 60, &format!("dead-{i}")), // due, and the vendor says invalid_grant
            8 => record(&conn, 60, &format!("down-{i}")), // due, and the vendor is down for it
            _ => record(&conn, 7200, &format!("rt-fresh-{i}")),
        };
        seeds.push(r);
    }
    futures::stream::iter(seeds.iter())
        .for_each_concurrent(16, |r| app.seed(r))
        .await;

    let reply = host_post_json(
        &app.broker.base_url,
        "/refresh-timer",
        &timer_envelope(),
        app.broker.key(),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let rv = reply.json()["ReturnValue"].clone();
    // 600 due + 100 idle refreshed; 50 dead at the vendor; 50 failing; 100 already dead and skipped.
    assert_eq!(
        rv,
        json!({"refreshed": 700, "failed": 50, "reauthorization_required": 50}),
        "{reply:?}"
    );
    let received = app.vendor.refresh_tokens_received();
    assert!(
        received
            .iter()
            .all(|t| !t.starts_with("rt-fresh-") && !t.starts_with("rt-x-")),
        "only due connections reach the vendor"
    );
    assert_eq!(
        received
            .iter()
            .filter(|t| t.starts_with("rt-due-") || t.starts_with("rt-idle-"))
            .count(),
        700,
        "each due grant refreshed once"
    );
    assert!(
        app.vendor.max_in_flight() <= 5,
        "concurrency limit: {}",
        app.vendor.max_in_flight()
    );
    assert!(
        app.vendor.max_in_flight() > 1,
        "the sweep does run in parallel"
    );
    assert_eq!(
        app.stored("c0007").await.status,
        ConnectionStatus::ReauthorizationRequired
    );
    assert_eq!(
        app.stored("c0008").await.status,
        ConnectionStatus::ReauthorizationRequired,
        "vendor said invalid_grant"
    );
    assert_eq!(
        app.stored("c0028").await.status,
        ConnectionStatus::Active,
        "a failing vendor does not kill a grant"
    );
    assert_eq!(
        app.stored("c0019")
            .await
            .tokens
            .refresh_token
            .unwrap()
            .expose(),
        "rt-fresh-19",
        "not due: untouched"
    );

    // A second run finds nothing new to refresh (the failing ones are cooling down).
    let again = host_post_json(
        &app.broker.base_url,
        "/refresh-timer",
        &timer_envelope(),
        app.broker.key(),
    )
    .await;
    assert_eq!(
        again.json()["ReturnValue"]["refreshed"],
        json!(0),
        "{again:?}"
    );
}
