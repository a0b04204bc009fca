//! The generic vendor quirks a template can declare, each through the real binary against the
//! vendor simulator behaving that way: an absolute `expires_at`, tokens that do not expire,
//! a separate refresh endpoint with refresh-only parameters, renewal by exchange, a grant the
//! vendor ends at a fixed age, and metadata fetched after consent (a hostile answer included).

use std::time::Duration as StdDuration;

use serde_json::{json, Value};

pub use broker_testkit::vendor_sim::{document_for, Behaviour, Lifetime, VendorSim};

use crate::helpers::*;
use crate::webhooks::Receiver;

/// One broker serving integrations against one simulator.
pub struct SimApp {
    pub sim: VendorSim,
    pub broker: Broker,
    key: String,
    dir: tempfile::TempDir,
}

impl SimApp {
    /// A broker on the embedded store with `integrations` (an object of integrations).
    pub async fn start(sim: VendorSim, integrations: Value, env: &[(&str, &str)]) -> SimApp {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("integrations.json");
        std::fs::write(&path, json!({ "integrations": integrations }).to_string()).unwrap();
        let key = format!(
            "k1:{}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, random_bytes(32))
        );
        let broker = Broker::start(&BrokerSpec {
            port: 0,
            bind: "127.0.0.1".into(),
            storage: format!("sqlite:{}", dir.path().join("b.db").display()),
            table: None,
            encryption_keys: Some(key.clone()),
            api_key: None,
            public_url: None,
            integrations_path: path,
            work_dir: dir.path().to_owned(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .await;
        SimApp {
            sim,
            broker,
            key,
            dir,
        }
    }

    /// Writes `record` into the broker's store (as another instance would).
    pub async fn seed(&self, record: &oauth_broker::domain::ConnectionRecord) {
        use oauth_broker::crypto::Keyring;
        use oauth_broker::domain::Secret;
        let backend = std::sync::Arc::new(
            oauth_broker::store::sqlite::SqliteBackend::open(&self.dir.path().join("b.db"))
                .unwrap(),
        );
        let store = oauth_broker::store::Store::new(
            backend,
            Keyring::parse(&Secret::new(self.key.clone())).unwrap(),
        );
        store.upsert(record).await.unwrap();
    }

    /// Ages the last refresh of `integration`'s connections by `hours` in the store (the
    /// row's state, not bound to its sealed tokens), as if the keep-alive period had passed.
    pub fn age_last_refresh(&self, integration: &str, hours: i64) {
        let db = rusqlite::Connection::open(self.dir.path().join("b.db")).unwrap();
        db.execute(
            "UPDATE connections SET refreshed_at = refreshed_at - ?1 WHERE integration = ?2",
            rusqlite::params![hours * 3_600_000, integration],
        )
        .unwrap();
    }

    /// Runs a consent of `connection` to its end (the vendor's authorize page is skipped: the
    /// callback comes back with a code and `extra` query parameters). Returns the callback page.
    pub async fn consent(&self, integration: &str, connection: &str, extra: &str) -> Reply {
        self.consent_allowing(integration, connection, "", extra)
            .await
    }

    /// A consent whose auth-start query gets `start_extra` (`&allow_account_change=true`).
    pub async fn consent_allowing(
        &self,
        integration: &str,
        connection: &str,
        start_extra: &str,
        extra: &str,
    ) -> Reply {
        let browser = Browser::new();
        let start = browser
            .get(&format!(
                "{}/api/auth/start/{integration}?connection={connection}&code={}{start_extra}",
                self.broker.base_url,
                self.broker.key().unwrap()
            ))
            .await;
        assert_eq!(start.status, 302, "{integration}: {start:?}");
        let state = query_param(&start.location(), "state").unwrap();
        browser
            .get(&format!(
                "{}/api/auth/callback?code=the-code&state={state}{extra}",
                self.broker.base_url
            ))
            .await
    }

    pub async fn token(&self, integration: &str, connection: &str, query: &str) -> Reply {
        host_get(
            &self.broker.base_url,
            &format!("/api/token/{integration}/{connection}{query}"),
            self.broker.key(),
        )
        .await
    }

    pub async fn connection(&self, integration: &str, connection: &str) -> Value {
        let r = host_get(
            &self.broker.base_url,
            &format!("/api/connections/{integration}/{connection}"),
            self.broker.key(),
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
        r.json()
    }

    pub async fn delete(&self, integration: &str, connection: &str) -> Reply {
        let resp = host_headers(host_client().delete(format!(
            "{}/api/connections/{integration}/{connection}",
            self.broker.base_url
        )))
        .header("x-functions-key", self.broker.key().unwrap())
        .send()
        .await
        .unwrap();
        Reply::from(resp).await
    }

    /// One timer tick; its `ReturnValue`.
    pub async fn sweep(&self) -> Value {
        let resp =
            host_headers(host_client().post(format!("{}/refresh-timer", self.broker.base_url)))
                .header("x-functions-key", self.broker.key().unwrap())
                .json(&timer_envelope())
                .send()
                .await
                .unwrap();
        let reply = Reply::from(resp).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.json()["ReturnValue"].clone()
    }

    pub async fn status(&self) -> Value {
        host_get(
            &self.broker.base_url,
            "/api/status?format=json",
            self.broker.key(),
        )
        .await
        .json()
    }

    pub async fn status_page(&self) -> String {
        html_unescape(
            &host_get(&self.broker.base_url, "/api/status", self.broker.key())
                .await
                .body,
        )
    }
}

/// An integration of the simulator's `vendor` with `extra` fields.
fn integration(sim: &VendorSim, vendor: &str, extra: Value) -> Value {
    let mut i = json!({
        "authorization_url": sim.url(vendor, "authorize"),
        "token_url": sim.url(vendor, "token"),
        "revocation_url": sim.url(vendor, "revoke"),
        "client_id": "client", "client_secret": "secret",
        "scopes": ["read"]
    });
    for (k, v) in extra.as_object().unwrap() {
        i[k] = v.clone();
    }
    i
}

fn expires_in(reply: &Reply) -> i64 {
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()["expires_in"].as_i64().unwrap()
}

#[tokio::test]
async fn an_absolute_expires_at_is_read_as_iso_8601_or_epoch_seconds() {
    let sim = VendorSim::start();
    for (vendor, lifetime) in [
        ("iso", Lifetime::ExpiresAtIso(30 * 86_400)),
        ("epoch", Lifetime::ExpiresAtEpoch(7_200)),
        ("ignored", Lifetime::ExpiresAtIso(30 * 86_400)),
    ] {
        sim.add(
            vendor,
            Behaviour {
                lifetime,
                ..Behaviour::standard()
            },
        );
    }
    let integrations = json!({
        "iso": integration(&sim, "iso", json!({"expires_at_field": "expires_at"})),
        "epoch": integration(&sim, "epoch", json!({"expires_at_field": "expires_at"})),
        // Without the template's word, expires_at is not believed: the default hour applies.
        "ignored": integration(&sim, "ignored", json!({})),
    });
    let app = SimApp::start(sim, integrations, &[]).await;
    for (i, low, high) in [
        ("iso", 30 * 86_400 - 60, 30 * 86_400),
        ("epoch", 7_140, 7_200),
        ("ignored", 3_540, 3_600),
    ] {
        assert_eq!(app.consent(i, "c1", "").await.status, 200, "{i}");
        let e = expires_in(&app.token(i, "c1", "").await);
        assert!((low..=high).contains(&e), "{i} after consent: {e}");
        let e = expires_in(&app.token(i, "c1", "?force_refresh=true").await);
        assert!((low..=high).contains(&e), "{i} after a refresh: {e}");
        assert_eq!(app.sim.seen_of(i, "refresh").len(), 1, "{i}");
    }
}

#[tokio::test]
async fn tokens_that_do_not_expire_are_served_as_is_and_never_refreshed_or_swept() {
    let sim = VendorSim::start();
    for (vendor, lifetime) in [("zero", Lifetime::Zero), ("absent", Lifetime::Never)] {
        sim.add(
            vendor,
            Behaviour {
                lifetime,
                refresh_tokens: false,
                ..Behaviour::standard()
            },
        );
    }
    sim.add(
        "hourly",
        Behaviour {
            lifetime: Lifetime::Never,
            refresh_tokens: false,
            ..Behaviour::standard()
        },
    );
    let never = json!({"no_expires_in_means_never": true, "expects_refresh_token": false});
    let integrations = json!({
        "zero": integration(&sim, "zero", never.clone()),
        "absent": integration(&sim, "absent", never),
        // The same answer without the template's word: the default hour applies.
        "hourly": integration(&sim, "hourly", json!({"expects_refresh_token": false})),
    });
    let app = SimApp::start(sim, integrations, &[]).await;
    for i in ["zero", "absent", "hourly"] {
        assert_eq!(app.consent(i, "c1", "").await.status, 200, "{i}");
    }
    for i in ["zero", "absent"] {
        let first = app.token(i, "c1", "").await;
        assert!(expires_in(&first) > 9 * 365 * 86_400, "{i}: {first:?}");
        let forced = app
            .token(i, "c1", "?force_refresh=true&min_validity_secs=86400")
            .await;
        assert_eq!(forced.status, 200, "{i}: {forced:?}");
        assert_eq!(forced.json()["access_token"], first.json()["access_token"]);
        assert!(
            app.sim.seen_of(i, "refresh").is_empty(),
            "{i}: nothing to refresh with"
        );
        let c = app.connection(i, "c1").await;
        assert_eq!(c["status"], "active", "{i}: {c}");
    }
    assert!(expires_in(&app.token("hourly", "c1", "").await) <= 3600);
    // Past the keep-alive period: listed by the sweep, and still nothing to do.
    app.age_last_refresh("zero", 48);
    app.age_last_refresh("absent", 48);
    let swept = app.sweep().await;
    assert_eq!(
        (swept["refreshed"].as_u64(), swept["failed"].as_u64()),
        (Some(0), Some(0)),
        "a token that does not expire is neither due nor a failure: {swept}"
    );
    let status = app.status().await;
    assert_eq!(status["counts"]["active"], 3, "{status}");
    assert_eq!(status["attention"], json!([]), "{status}");
    let page = app.status_page().await;
    assert!(
        page.contains("never (the vendor's tokens do not expire)"),
        "{page}"
    );
}

#[tokio::test]
async fn refreshes_go_to_the_refresh_url_with_the_refresh_params() {
    let sim = VendorSim::start();
    sim.add(
        "adobe",
        Behaviour {
            refresh_path: true,
            refresh_params: vec![("scope_hint".into(), "keep".into())],
            ..Behaviour::standard()
        },
    );
    let i = integration(
        &sim,
        "adobe",
        json!({"refresh_url": sim.url("adobe", "refresh"), "refresh_params": {"scope_hint": "keep"}}),
    );
    let app = SimApp::start(sim, json!({ "adobe": i }), &[]).await;
    assert_eq!(app.consent("adobe", "c1", "").await.status, 200);
    let code = &app.sim.seen_of("adobe", "code")[0];
    assert!(
        !code.fields.iter().any(|(k, _)| k == "scope_hint"),
        "refresh-only: {code:?}"
    );
    for n in 2..=3 {
        let r = app.token("adobe", "c1", "?force_refresh=true").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["access_token"], format!("adobe-at-{n}"));
    }
    let refreshes = app.sim.seen_of("adobe", "refresh");
    assert_eq!(refreshes.len(), 2, "{:?}", app.sim.seen("adobe"));
    assert!(refreshes.iter().all(|s| s.path == "/refresh"));
    assert_eq!(
        refreshes[1].token.as_deref(),
        Some("adobe-rt-2"),
        "the rotated refresh token was kept"
    );
    assert!(app.sim.seen_of("adobe", "rejected").is_empty());
}

fn meta_like() -> Behaviour {
    Behaviour {
        client_auth: "post".into(),
        refresh_tokens: false,
        lifetime: Lifetime::ExpiresIn(3600),
        exchange: Some(("fb_exchange_token".into(), "fb_exchange_token".into(), true)),
        graph_errors: true,
        delay: StdDuration::from_millis(500),
        ..Behaviour::standard()
    }
}

#[tokio::test]
async fn tokens_renewed_by_exchange_are_exchanged_once_before_expiry_and_fail_like_refreshes() {
    let sim = VendorSim::start();
    sim.add("meta", meta_like());
    let i = integration(
        &sim,
        "meta",
        json!({
            // No expects_refresh_token: false: renewal by exchange needs no refresh token.
            "client_auth": "post",
            "renew": {"grant_type": "fb_exchange_token", "method": "GET"},
            "refresh_margin_secs": 900
        }),
    );
    let app = SimApp::start(
        sim,
        json!({ "meta": i }),
        &[("BROKER_REFRESH_COOLDOWN_SECS", "0")],
    )
    .await;
    assert_eq!(app.consent("meta", "c1", "").await.status, 200);
    let c = app.connection("meta", "c1").await;
    assert_eq!(c["status"], "active", "no refresh token is expected: {c}");

    // Eight callers that all need more than the token has left: one exchange.
    let calls = (0..8).map(|_| app.token("meta", "c1", "?min_validity_secs=7200"));
    let replies = futures::future::join_all(calls).await;
    for r in &replies {
        assert_eq!(r.status, 200, "{r:?}");
    }
    let exchanges = app.sim.seen_of("meta", "exchange");
    assert_eq!(exchanges.len(), 1, "single flight: {exchanges:?}");
    assert_eq!(exchanges[0].method, "GET");
    assert_eq!(
        exchanges[0].token.as_deref(),
        Some("meta-at-1"),
        "the current token is exchanged"
    );
    assert!(exchanges[0]
        .fields
        .contains(&("client_id".into(), "client".into())));
    assert_eq!(replies[0].json()["access_token"], "meta-at-2");

    // The vendor ends the grant: its Graph-API error is recorded, never a dead grant by guess,
    // and the still-valid token is served.
    app.sim.end_grants("meta");
    let r = app.token("meta", "c1", "?min_validity_secs=7200").await;
    assert_eq!(r.status, 200, "served while valid: {r:?}");
    let c = app.connection("meta", "c1").await;
    assert!(
        c["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("OAuthException"),
        "{c}"
    );
    assert_eq!(c["status"], "active", "{c}");
    let forced = app.token("meta", "c1", "?force_refresh=true").await;
    assert_eq!(
        forced.status, 502,
        "a forced renewal that fails says so: {forced:?}"
    );
    assert!(
        !forced.body.contains("meta-at-"),
        "no token in an error: {forced:?}"
    );
}

#[tokio::test]
async fn a_grant_the_vendor_ends_at_a_fixed_age_is_warned_about_once() {
    use oauth_broker::domain::{ConnectionId, ConnectionRecord, IntegrationName, Secret, TokenSet};
    let receiver = Receiver::start(&[], 0).await;
    let sim = VendorSim::start();
    sim.add(
        "linkedin",
        Behaviour {
            rotates: false,
            ..Behaviour::standard()
        },
    );
    let i = integration(&sim, "linkedin", json!({"refresh_token_max_days": 365}));
    let app = SimApp::start(
        sim,
        json!({ "linkedin": i }),
        &[
            ("BROKER_WEBHOOK_URL", receiver.url.as_str()),
            ("BROKER_WEBHOOK_SECRET", crate::webhooks::WEBHOOK_SECRET),
        ],
    )
    .await;
    // A consent starts the vendor's clock: the grant ends 365 days from now.
    assert_eq!(app.consent("linkedin", "fresh", "").await.status, 200);
    let token = app.token("linkedin", "fresh", "").await;
    let ends = token.json()["metadata"]["refresh_token_expires_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    let ends_at = time::OffsetDateTime::parse(&ends, rfc3339).unwrap();
    let hours = (ends_at - time::OffsetDateTime::now_utc()).whole_hours();
    assert!((364 * 24..=365 * 24).contains(&hours), "{ends}");
    let refreshed = app.token("linkedin", "fresh", "?force_refresh=true").await;
    assert_eq!(
        refreshed.json()["metadata"]["refresh_token_expires_at"],
        ends,
        "a refresh does not move the vendor's end of the grant"
    );

    // A grant consented 345 days ago (written as another instance would): 20 days left.
    let now = time::OffsetDateTime::now_utc();
    let mut old = ConnectionRecord::new_grant(
        IntegrationName::parse("linkedin").unwrap(),
        ConnectionId::parse("old").unwrap(),
        TokenSet {
            access_token: Secret::new("linkedin-at-old"),
            refresh_token: Some(Secret::new("linkedin-rt-old")),
        },
        "Bearer".into(),
        "read".into(),
        now + time::Duration::days(30),
        now,
    );
    let end = now + time::Duration::days(20);
    old.metadata.insert(
        "refresh_token_expires_at".into(),
        end.format(rfc3339).unwrap(),
    );
    app.seed(&old).await;
    app.sim.accept_refresh_token("linkedin", "linkedin-rt-old");
    for _ in 0..3 {
        let r = app.token("linkedin", "old", "?force_refresh=true").await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    app.sweep().await;
    let e = receiver
        .delivered("connection.refresh_token_expiring")
        .await
        .json();
    assert_eq!(
        (e["integration"].as_str(), e["connection"].as_str()),
        (Some("linkedin"), Some("old")),
        "{e}"
    );
    assert!(
        e["consent_link"]
            .as_str()
            .is_some_and(|l| l.contains("/api/auth/link")),
        "a link to consent again before the end: {e}"
    );
    tokio::time::sleep(StdDuration::from_millis(500)).await;
    let sent: Vec<Value> = receiver
        .requests()
        .iter()
        .filter(|r| r.status == 200 && r.event_type() == "connection.refresh_token_expiring")
        .map(|r| r.json())
        .collect();
    assert_eq!(
        sent.len(),
        1,
        "one event per grant, however many refreshes and sweeps; none for the fresh grant: {sent:?}"
    );
    let status = app.status().await;
    let attention = &status["attention"];
    assert_eq!(attention.as_array().map(Vec::len), Some(1), "{status}");
    assert_eq!(attention[0]["connection"], "old", "{status}");
    assert_eq!(attention[0]["status"], "refresh_token_expiring", "{status}");
    let shown = attention[0]["grant_ends_at"].as_str().unwrap();
    let shown = time::OffsetDateTime::parse(shown, rfc3339).unwrap();
    assert!((shown - end).abs() < time::Duration::seconds(1), "{status}");
    assert!(app.status_page().await.contains("Grant ends at the vendor"));

    // A new consent starts a new grant: the warning is gone, and would come again for it. The
    // seeded row has no account, so replacing its active grant needs an allowed account change.
    assert_eq!(
        app.consent_allowing("linkedin", "old", "&allow_account_change=true", "")
            .await
            .status,
        200
    );
    assert_eq!(app.status().await["attention"], json!([]));
}

#[tokio::test]
async fn post_consent_metadata_is_fetched_and_a_hostile_answer_never_costs_the_grant() {
    let sim = VendorSim::start();
    let pointers = vec![
        ("dc".to_owned(), "/dc".to_owned()),
        ("api_endpoint".to_owned(), "/login/api_endpoint".to_owned()),
        ("tenant".to_owned(), "/tenants/0/id".to_owned()),
    ];
    sim.add(
        "chimp",
        Behaviour {
            lifetime: Lifetime::Zero,
            refresh_tokens: false,
            meta: Some((document_for(&pointers), "OAuth".into())),
            ..Behaviour::standard()
        },
    );
    let i = integration(
        &sim,
        "chimp",
        json!({
            "no_expires_in_means_never": true, "expects_refresh_token": false,
            "post_consent": {"url": sim.url("chimp", "meta"), "auth_scheme": "OAuth",
                "metadata": {"dc": "/dc", "api_endpoint": "/login/api_endpoint", "tenant": "/tenants/0/id", "absent": "/nope"}}
        }),
    );
    let app = SimApp::start(sim, json!({ "chimp": i }), &[]).await;
    assert_eq!(app.consent("chimp", "c1", "").await.status, 200);
    let meta = app.sim.seen_of("chimp", "meta");
    assert_eq!(
        meta[0].token.as_deref(),
        Some("chimp-at-1"),
        "called with the new token"
    );
    let v = app.token("chimp", "c1", "").await.json();
    assert_eq!(
        v["metadata"],
        json!({"dc": "value-of-dc", "api_endpoint": "value-of-api_endpoint", "tenant": "value-of-tenant"}),
        "{v}"
    );

    let hostile = [
        (
            200,
            "application/json",
            format!("{{\"dc\": \"{}\"}}", "x".repeat(100_000)),
            None,
        ),
        (
            302,
            "text/plain",
            String::new(),
            Some(app.sim.url("chimp", "meta")),
        ),
        (200, "text/html", "<html>not json</html>".to_owned(), None),
        (
            500,
            "application/json",
            "{\"dc\": \"us1\"}".to_owned(),
            None,
        ),
        // Echoes the token it was called with (the sixth consent's).
        (
            200,
            "application/json",
            "{\"dc\": \"chimp-at-6\"}".to_owned(),
            None,
        ),
    ];
    for (n, (status, ct, body, location)) in hostile.into_iter().enumerate() {
        let conn = format!("h{n}");
        app.sim.override_meta("chimp", status, ct, body, location);
        let page = app.consent("chimp", &conn, "").await;
        assert_eq!(page.status, 200, "{conn}: the grant is kept: {page:?}");
        let v = app.token("chimp", &conn, "").await.json();
        assert!(v["access_token"].as_str().is_some(), "{conn}: {v}");
        let dc = v["metadata"]["dc"].as_str().unwrap_or_default().to_owned();
        assert!(
            !dc.contains("at-"),
            "{conn}: a token echoed back is not kept as metadata: {v}"
        );
        if n < 4 {
            assert!(
                v["metadata"].get("dc").is_none(),
                "{conn}: nothing kept from a refused answer: {v}"
            );
        }
    }
    let follows = app.sim.seen_of("chimp", "meta").len();
    assert_eq!(
        follows, 6,
        "one call per consent, the redirect not followed"
    );
}

#[tokio::test]
async fn quirk_fields_that_would_send_tokens_in_clear_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    for (field, value) in [
        (
            "post_consent",
            json!({"url": "http://example.com/meta", "metadata": {"dc": "/dc"}}),
        ),
        ("refresh_url", json!("http://example.com/refresh")),
        (
            "renew",
            json!({"grant_type": "fb_exchange_token", "url": "http://example.com/x"}),
        ),
        (
            "docs",
            json!(["https://ok.example/", "javascript:alert(1)"]),
        ),
        ("api_base_url", json!("http://api.example.com")),
    ] {
        let path = dir.path().join(format!("{field}.json"));
        let mut i = json!({
            "authorization_url": "https://a.example/auth", "token_url": "https://a.example/token",
            "client_id": "c", "client_secret": "s"
        });
        i[field] = value;
        std::fs::write(&path, json!({"integrations": {"x": i}}).to_string()).unwrap();
        let (status, output) = Broker::run_expecting_exit(&BrokerSpec {
            port: 0,
            bind: "127.0.0.1".into(),
            storage: format!("sqlite:{}", dir.path().join("b.db").display()),
            table: None,
            encryption_keys: None,
            api_key: None,
            public_url: None,
            integrations_path: path,
            work_dir: dir.path().to_owned(),
            env: vec![],
        })
        .await;
        assert!(!status.success(), "{field}: {output}");
        assert!(
            output.contains(field),
            "{field}: the error names the field: {output}"
        );
    }
}
