//! Hostile vendors: absurd numbers, huge answers, echoed requests, plain-http
//! and foreign endpoints, short-lived tokens. Each answer comes from the
//! scriptable fake vendor (no real authorization server misbehaves on cue),
//! against the real broker binary on SQLite.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use base64::Engine as _;
use oauth_broker::crypto::Keyring;
use oauth_broker::domain::{ConnectionId, ConnectionRecord, IntegrationName, Secret, TokenSet};
use oauth_broker::store::sqlite::SqliteBackend;
use oauth_broker::store::table::TableBackend;
use oauth_broker::store::{Backend, Store as BrokerStore};
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};

use crate::helpers::*;
use crate::helpers::{Answer, FakeVendor};

/// The second integration: the same vendor, `expires_in` in milliseconds, credentials in the body.
const MILLIS: &str = "millis";
/// Ten years, the longest lifetime the broker believes.
const TEN_YEARS: i64 = 3650 * 86400;

struct Hostile {
    vendor: FakeVendor,
    broker: Broker,
    store: BrokerStore,
    secret: String,
    _azurite: Option<Azurite>,
    _dir: tempfile::TempDir,
}

/// A broker on SQLite with two integrations on one fake vendor: `demo` (Basic client auth) and
/// `millis` (milliseconds, client_secret_post). `extra` fields go into both.
async fn hostile(extra: Value, env: &[(&str, &str)]) -> Hostile {
    hostile_on(None, extra, env).await
}

/// [`hostile`] on Table Storage (Azurite) when `azurite` is given.
async fn hostile_on(azurite: Option<Azurite>, extra: Value, env: &[(&str, &str)]) -> Hostile {
    let vendor = FakeVendor::start();
    let dir = tempfile::tempdir().unwrap();
    // '/', '+' and '=' make every encoding of it different from the value.
    let secret = format!("hv/secret+{}=", random_hex(12));
    let mut demo = json!({
        "authorization_url": format!("{}/authorize", vendor.base),
        "token_url": vendor.token_url(),
        // The fake vendor answers any POST without a grant type as it would a code exchange.
        "revocation_url": vendor.token_url(),
        "client_id": "client", "client_secret": "%HOSTILE_SECRET%",
        "scopes": ["read"]
    });
    for (k, v) in extra.as_object().unwrap() {
        demo[k] = v.clone();
    }
    let mut millis = demo.clone();
    millis["expires_in_unit"] = json!("milliseconds");
    millis["client_auth"] = json!("post");
    let integrations = json!({"integrations": {INTEGRATION: demo, MILLIS: millis}});
    let integrations_path = dir.path().join("integrations.json");
    std::fs::write(&integrations_path, integrations.to_string()).unwrap();
    let key = format!(
        "k1:{}",
        base64::engine::general_purpose::STANDARD.encode(random_bytes(32))
    );
    let db = dir.path().join("broker.db");
    let (backend, storage, table): (Arc<dyn Backend>, String, Option<String>) = match &azurite {
        Some(azurite) => {
            let name = fresh_table_name();
            let backend = TableBackend::connect(
                &Secret::new(azurite.connection_string()),
                &name,
                oauth_broker::startup::http_client(),
            )
            .unwrap();
            (Arc::new(backend), azurite.connection_string(), Some(name))
        }
        None => (
            Arc::new(SqliteBackend::open(&db).unwrap()),
            format!("sqlite:{}", db.display()),
            None,
        ),
    };
    let store = BrokerStore::new(backend, Keyring::parse(&Secret::new(key.clone())).unwrap());
    let mut extra_env = vec![("HOSTILE_SECRET".to_owned(), secret.clone())];
    extra_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let broker = Broker::start(&BrokerSpec {
        port: 0,
        bind: "127.0.0.1".into(),
        storage,
        table,
        encryption_keys: Some(key),
        api_key: None,
        public_url: None,
        integrations_path,
        work_dir: dir.path().to_owned(),
        env: extra_env,
    })
    .await;
    Hostile {
        vendor,
        broker,
        store,
        secret,
        _azurite: azurite,
        _dir: dir,
    }
}

/// A grant whose access token expires in `expires_in` s, issued as a one-hour token.
fn record(integration: &str, conn: &str, expires_in: i64, refresh_token: &str) -> ConnectionRecord {
    let now = OffsetDateTime::now_utc();
    let mut r = ConnectionRecord::new_grant(
        IntegrationName::parse(integration).unwrap(),
        ConnectionId::parse(conn).unwrap(),
        TokenSet {
            access_token: Secret::new(format!("seed-at-{conn}")),
            refresh_token: Some(Secret::new(refresh_token)),
        },
        "Bearer".into(),
        "read".into(),
        now + Duration::seconds(expires_in),
        now,
    );
    r.refreshed_at = (r.expires_at - Duration::hours(1)).min(now);
    r
}

impl Hostile {
    fn base(&self) -> &str {
        &self.broker.base_url
    }

    async fn seed(&self, r: &ConnectionRecord) {
        self.store.upsert(r).await.unwrap();
    }

    async fn stored(&self, integration: &str, conn: &str) -> ConnectionRecord {
        let (i, c) = (
            IntegrationName::parse(integration).unwrap(),
            ConnectionId::parse(conn).unwrap(),
        );
        self.store.get(&i, &c).await.unwrap().expect("stored").value
    }

    async fn token(&self, integration: &str, conn: &str, query: &str) -> Reply {
        host_get(
            self.base(),
            &format!("/api/token/{integration}/{conn}{query}"),
            self.broker.key(),
        )
        .await
    }

    /// Runs a consent for `conn` up to the callback, which carries `code`; returns the page.
    async fn consent(&self, integration: &str, conn: &str, code: &str) -> Reply {
        let browser = Browser::new();
        let start = browser
            .get(&format!(
                "{}/api/auth/start/{integration}?connection={conn}&code={}",
                self.base(),
                self.broker.key().unwrap()
            ))
            .await;
        assert_eq!(start.status, 302, "{start:?}");
        let state = query_param(&start.location(), "state").unwrap();
        let callback = callback_url(self.base(), &[("code", code), ("state", &state)]);
        browser.get(&callback).await
    }
}

fn callback_url(base: &str, params: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(&format!("{base}/api/auth/callback")).unwrap();
    url.query_pairs_mut().extend_pairs(params);
    url.into()
}

/// `expires_in` of a token reply, checked to be within the broker's clamp.
fn clamped_expires_in(reply: &Reply, conn: &str) -> i64 {
    assert_eq!(reply.status, 200, "{conn}: {reply:?}");
    let v = reply.json();
    assert_eq!(v["connection"], conn, "{v}");
    let expires_in = v["expires_in"].as_i64().unwrap();
    assert!(
        (1..=TEN_YEARS).contains(&expires_in),
        "expires_in within 1 s..10 years: {v}"
    );
    expires_in
}

#[tokio::test]
async fn absurd_lifetimes_from_a_vendor_are_clamped_at_consent_and_at_refresh() {
    let app = hostile(json!({}), &[]).await;
    let absurd = [
        json!(1e300),
        json!(u64::MAX),
        json!(i64::MAX),
        json!(-5),
        json!(-1e300),
        json!("1e300"),
        json!("9223372036854775807"),
        json!("soon"),
    ];
    for (n, expires_in) in absurd.iter().enumerate() {
        for integration in [INTEGRATION, MILLIS] {
            let what = format!("{integration}: expires_in {expires_in}");
            let conn = format!("c{n}");
            app.vendor.script_code_exchanges([Answer::Mint {
                expires_in: expires_in.clone(),
                with_refresh_token: true,
            }]);
            let page = app.consent(integration, &conn, "code-1").await;
            assert_eq!(page.status, 200, "{what}: the consent completes: {page:?}");
            let reply = app.token(integration, &conn, "").await;
            let lifetime = clamped_expires_in(&reply, &conn);
            let negative = expires_in.as_f64().is_some_and(|v| v < 0.0) || expires_in == "soon";
            if negative {
                assert!(lifetime <= 3600, "{what}: the default applies: {lifetime}");
            }

            // The same number at a refresh (a due grant, still valid).
            let rconn = format!("r{n}");
            app.seed(&record(
                integration,
                &rconn,
                60,
                &format!("rt-{integration}-{n}"),
            ))
            .await;
            app.vendor.script([Answer::Mint {
                expires_in: expires_in.clone(),
                with_refresh_token: true,
            }]);
            let reply = app.token(integration, &rconn, "").await;
            clamped_expires_in(&reply, &rconn);
            let stored = app.stored(integration, &rconn).await;
            assert!(
                stored.refreshed_at > OffsetDateTime::now_utc() - Duration::minutes(1),
                "{what}: the refresh was stored"
            );
        }
    }
}

#[tokio::test]
async fn the_standalone_sweep_goes_on_after_any_vendor_answer() {
    let app = hostile(json!({}), &[("BROKER_SWEEP_INTERVAL_SECS", "1")]).await;
    app.vendor.script([Answer::Mint {
        expires_in: json!(1e300),
        with_refresh_token: true,
    }]);
    app.seed(&record(INTEGRATION, "first", 60, "rt-first"))
        .await;
    let wait_for = |token: &'static str| {
        let vendor = &app.vendor;
        async move {
            let deadline = Instant::now() + StdDuration::from_secs(15);
            while !vendor.refresh_tokens_received().iter().any(|t| t == token) {
                assert!(
                    Instant::now() < deadline,
                    "the sweep never refreshed {token}: {:?}",
                    vendor.refresh_tokens_received()
                );
                tokio::time::sleep(StdDuration::from_millis(100)).await;
            }
        }
    };
    wait_for("rt-first").await;
    // A grant that becomes due later is still refreshed by a later sweep.
    app.seed(&record(INTEGRATION, "later", 60, "rt-later"))
        .await;
    wait_for("rt-later").await;
    let first = app.stored(INTEGRATION, "first").await;
    assert!(
        first.expires_at - OffsetDateTime::now_utc() <= Duration::seconds(TEN_YEARS),
        "the absurd lifetime was clamped"
    );
    let health = host_get(app.base(), "/api/health", None).await;
    assert_eq!(health.status, 200, "{health:?}");
}

/// Every spelling of `value` a page, log line or stored field could carry.
fn spellings(value: &str) -> Vec<String> {
    let form: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
    let mut all = encodings_of(value);
    all.push(form.replace('+', "%20"));
    all.push(form);
    all.push(base64::engine::general_purpose::STANDARD.encode(value));
    all.retain(|s| s.len() >= 6);
    all
}

fn assert_free_of(what: &str, text: &str, secrets: &[(String, String)]) {
    for (name, value) in secrets {
        for s in spellings(value) {
            assert!(
                !text.contains(&s),
                "{what} carries the {name} (as {s:?}):\n{text}"
            );
        }
    }
}

/// The values a request carried, read from what the vendor echoed.
fn sent_values(echo: &str) -> Vec<(String, String)> {
    let (body, auth) = echo.split_once(" authorization: ").unwrap();
    let mut out: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "code" | "code_verifier" | "refresh_token" | "client_secret"
            )
        })
        .collect();
    if let Some(b64) = auth.strip_prefix("Basic ") {
        out.push(("Basic credentials".into(), b64.to_owned()));
    }
    out
}

#[tokio::test]
async fn vendor_text_never_carries_what_the_broker_sent() {
    let app = hostile(json!({}), &[]).await;
    let mut secrets = vec![("client secret".to_owned(), app.secret.clone())];
    let mut pages = Vec::new();
    for (integration, auth) in [(INTEGRATION, "Basic"), (MILLIS, "post")] {
        let code = format!("code-{}", random_hex(12));
        app.vendor.script_code_exchanges([Answer::Echo {
            status: 400,
            error: "invalid_request",
        }]);
        let page = app.consent(integration, "echo", &code).await;
        let echoed = app.vendor.echoed().pop().expect("the vendor echoed");
        let sent = sent_values(&echoed);
        let names: Vec<&str> = sent.iter().map(|(k, _)| k.as_str()).collect();
        assert!(
            names.contains(&"code") && names.contains(&"code_verifier"),
            "{auth}: {names:?}"
        );
        secrets.extend(sent);
        assert!(page.is_html() && page.status >= 400, "{page:?}");
        let text = html_unescape(&page.body);
        assert!(
            text.contains("invalid_request"),
            "the code is shown: {text}"
        );
        assert!(
            text.contains("The vendor said") && text.contains("bad request"),
            "the vendor's words are shown as the vendor's: {text}"
        );
        pages.push(text);
    }
    // A refresh whose error echoes the refresh token: stored as last_error, listed by the API.
    let rt = format!("rt-echo-{}", random_hex(12));
    app.seed(&record(INTEGRATION, "refresh", 60, &rt)).await;
    app.vendor.script([Answer::Echo {
        status: 400,
        error: "invalid_request",
    }]);
    let reply = app.token(INTEGRATION, "refresh", "").await;
    assert_eq!(
        reply.status, 200,
        "the still-valid token is served: {reply:?}"
    );
    secrets.extend(sent_values(&app.vendor.echoed().pop().unwrap()));
    assert!(secrets.iter().any(|(_, v)| *v == rt));
    let stored = app.stored(INTEGRATION, "refresh").await;
    let last_error = stored.last_error.expect("the failure is recorded");
    assert!(last_error.contains("invalid_request"), "{last_error}");
    let listed = host_get(app.base(), "/api/connections", app.broker.key()).await;
    assert_eq!(listed.status, 200);
    assert!(listed.body.contains("invalid_request"), "{listed:?}");

    // A revocation whose error echoes the token: the 502 of the delete route.
    let revoked = format!("rt-revoke-{}", random_hex(12));
    app.seed(&record(INTEGRATION, "revoked", 600, &revoked))
        .await;
    app.vendor.script_code_exchanges([Answer::Echo {
        status: 400,
        error: "invalid_request",
    }]);
    let delete = reqwest::Client::new()
        .delete(format!(
            "{}/api/connections/{INTEGRATION}/revoked",
            app.base()
        ))
        .header("x-functions-key", app.broker.key().unwrap())
        .send()
        .await
        .unwrap();
    let delete = Reply::from(delete).await;
    assert_eq!(delete.status, 502, "the connection is kept: {delete:?}");
    assert!(delete.body.contains("invalid_request"), "{delete:?}");
    let echoed = app.vendor.echoed().pop().unwrap();
    assert!(
        echoed.contains(&revoked),
        "the vendor echoed the token: {echoed}"
    );
    secrets.push(("revoked refresh token".into(), revoked));

    for (n, page) in pages.iter().enumerate() {
        assert_free_of(&format!("consent page {n}"), page, &secrets);
    }
    assert_free_of("DELETE /api/connections", &delete.body, &secrets);
    assert_free_of("last_error", &last_error, &secrets);
    assert_free_of("GET /api/connections", &listed.body, &secrets);
    let Hostile { broker, .. } = app;
    assert_free_of("the broker's log", &broker.stop().text(), &secrets);
}

#[tokio::test]
async fn a_callback_error_description_is_shown_short_and_as_the_vendors_words() {
    let app = hostile(json!({}), &[]).await;
    let browser = Browser::new();
    let claim = format!(
        "Your broker was compromised. Call +1 555 0100 now. {}",
        "x".repeat(2000)
    );
    let url = callback_url(
        app.base(),
        &[("error", "access_denied"), ("error_description", &claim)],
    );
    let page = browser.get(&url).await;
    assert_eq!(page.status, 400, "{page:?}");
    let text = html_unescape(&page.body);
    assert!(text.contains("The vendor said"), "{text}");
    assert!(text.contains("Your broker was compromised"), "{text}");
    assert!(
        !text.contains(&"x".repeat(160)),
        "the vendor's words are cut short"
    );
}

#[tokio::test]
async fn vendor_answers_are_capped_and_an_oversized_one_costs_nothing() {
    let app = hostile(json!({}), &[]).await;
    let raw = |body: String| Answer::Raw {
        status: 200,
        content_type: "application/json",
        body,
        retry_after: None,
    };
    let cases = [
        ("streamed", Answer::Chunked { bytes: 8 << 20 }, "64 KiB"),
        (
            "announced",
            raw(json!({"access_token": "a".repeat(1 << 20)}).to_string()),
            "64 KiB",
        ),
        (
            "longtoken",
            raw(json!({"access_token": "a".repeat(16_001), "refresh_token": "r"}).to_string()),
            "16000 bytes",
        ),
        (
            "longrefresh",
            raw(json!({"access_token": "a", "refresh_token": "r".repeat(8_001)}).to_string()),
            "8000 bytes",
        ),
    ];
    for (conn, answer, why) in cases {
        let rt = format!("rt-{conn}");
        app.seed(&record(INTEGRATION, conn, 60, &rt)).await;
        app.vendor.set_default(answer);
        let reply = app.token(INTEGRATION, conn, "").await;
        let v = check_token_reply(&reply, conn);
        assert_eq!(
            v["access_token"],
            format!("seed-at-{conn}"),
            "{conn}: the stored, still-valid token is served"
        );
        let stored = app.stored(INTEGRATION, conn).await;
        assert_eq!(
            stored.tokens.refresh_token.unwrap().expose(),
            rt,
            "{conn}: the grant is unchanged"
        );
        assert!(
            stored
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains(why)),
            "{conn}: {:?}",
            stored.last_error
        );
    }
    // Long informative fields are kept short.
    app.vendor.set_default(raw(
        json!({"access_token": "at-long-fields", "refresh_token": "rt-long-fields",
               "scope": "s ".repeat(10_000), "token_type": "T".repeat(20_000), "expires_in": 3600})
        .to_string(),
    ));
    app.seed(&record(INTEGRATION, "fields", 60, "rt-fields"))
        .await;
    let reply = app.token(INTEGRATION, "fields", "").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let v = reply.json();
    assert_eq!(v["access_token"], "at-long-fields");
    assert!(
        v["token_type"].as_str().unwrap().len() <= 40,
        "token_type cut: {}",
        reply.body.len()
    );
    let stored = app.stored(INTEGRATION, "fields").await;
    assert!(
        stored.scope.len() <= 2048,
        "scope cut: {}",
        stored.scope.len()
    );
    assert!(stored.token_type.len() <= 40);
}

/// Polls `/api/health` until `integration` is listed unavailable with a reason containing `part`.
async fn unavailable_because(base: &str, integration: &str, part: &str) -> String {
    let deadline = Instant::now() + StdDuration::from_secs(10);
    loop {
        let health = host_get(base, "/api/health", None).await.json();
        let reason = health["integrations_unavailable"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|u| u["integration"] == integration)
            .and_then(|u| u["reason"].as_str())
            .map(str::to_owned);
        if let Some(r) = reason.as_ref().filter(|r| r.contains(part)) {
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{integration} is not unavailable because of {part:?}: {health}"
        );
        tokio::time::sleep(StdDuration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn discovered_endpoints_must_be_https_on_the_issuers_host() {
    let vendors: Vec<FakeVendor> = (0..4).map(|_| FakeVendor::start()).collect();
    let meta = |v: &FakeVendor, token_endpoint: &str| {
        json!({"issuer": v.base, "authorization_endpoint": format!("{}/authorize", v.base),
               "token_endpoint": token_endpoint})
    };
    vendors[0].set_metadata(
        meta(
            &vendors[0],
            "http://169.254.169.254/metadata/identity/oauth2/token",
        )
        .to_string(),
    );
    vendors[1].set_metadata(meta(&vendors[1], "https://elsewhere.example/token").to_string());
    let mut big = meta(&vendors[2], &vendors[2].token_url());
    big["padding"] = json!("p".repeat(100 * 1024));
    vendors[2].set_metadata(big.to_string());
    // The control: a well-behaved issuer on loopback is discovered.
    vendors[3].set_metadata(meta(&vendors[3], &vendors[3].token_url()).to_string());

    let dir = tempfile::tempdir().unwrap();
    let names = ["imds", "elsewhere", "huge", "fine"];
    let integrations: serde_json::Map<String, Value> = names
        .iter()
        .zip(&vendors)
        .map(|(n, v)| {
            (
                n.to_string(),
                json!({"issuer": v.base, "client_id": "c", "client_secret": "s"}),
            )
        })
        .collect();
    let integrations_path = dir.path().join("integrations.json");
    std::fs::write(
        &integrations_path,
        json!({ "integrations": integrations }).to_string(),
    )
    .unwrap();
    let broker = Broker::start(&BrokerSpec {
        port: 0,
        bind: "127.0.0.1".into(),
        storage: format!("sqlite:{}", dir.path().join("broker.db").display()),
        table: None,
        encryption_keys: None,
        api_key: None,
        public_url: None,
        integrations_path,
        work_dir: dir.path().to_owned(),
        env: vec![],
    })
    .await;
    let base = broker.base_url.clone();
    let imds = unavailable_because(&base, "imds", "token_endpoint").await;
    assert!(imds.contains("https"), "{imds}");
    unavailable_because(&base, "elsewhere", "issuer's host").await;
    unavailable_because(&base, "huge", "metadata").await;
    let reply = host_get(&base, "/api/token/imds/c1", broker.key()).await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.error_code(), "integration_unavailable");
    let health = host_get(&base, "/api/health", None).await.json();
    assert!(
        !health.to_string().contains("\"fine\""),
        "the well-behaved issuer is discovered: {health}"
    );
}

#[tokio::test]
async fn configured_endpoints_must_be_https_outside_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "token_url",
            json!({"authorization_url": "https://a.example/authorize", "token_url": "http://a.example/token"}),
        ),
        (
            "authorization_url",
            json!({"authorization_url": "http://a.example/authorize", "token_url": "https://a.example/token"}),
        ),
        (
            "revocation_url",
            json!({"authorization_url": "https://a.example/authorize", "token_url": "https://a.example/token", "revocation_url": "http://169.254.169.254/revoke"}),
        ),
        ("issuer", json!({"issuer": "http://idp.example"})),
        (
            "issuer",
            json!({"issuer": "http://idp.example", "authorization_url": "https://a.example/authorize", "token_url": "https://a.example/token"}),
        ),
    ];
    for (field, mut integration) in cases {
        integration["client_id"] = json!("c");
        integration["client_secret"] = json!("s");
        let integrations_path = dir.path().join(format!("{field}.json"));
        std::fs::write(
            &integrations_path,
            json!({"integrations": {"plain": integration}}).to_string(),
        )
        .unwrap();
        let (status, output) = Broker::run_expecting_exit(&BrokerSpec {
            port: 0,
            bind: "127.0.0.1".into(),
            storage: format!("sqlite:{}", dir.path().join("broker.db").display()),
            table: None,
            encryption_keys: None,
            api_key: None,
            public_url: None,
            integrations_path,
            work_dir: dir.path().to_owned(),
            env: vec![],
        })
        .await;
        assert!(!status.success());
        assert!(
            output.contains(field) && output.contains("https"),
            "{field}: {output}"
        );
    }
}

#[tokio::test]
async fn short_lived_tokens_and_unmeetable_needs_cost_one_refresh() {
    // Tokens that live 60 s against the default 900 s margin; each refresh takes 1.5 s.
    let app = hostile(json!({}), &[]).await;
    app.vendor.set_default(Answer::Slow(
        StdDuration::from_millis(1500),
        Box::new(Answer::Mint {
            expires_in: json!(60),
            with_refresh_token: true,
        }),
    ));
    for (conn, query) in [("margin", ""), ("need", "?min_validity_secs=3600")] {
        let before = app.vendor.refresh_count();
        app.seed(&record(INTEGRATION, conn, 10, &format!("rt-{conn}")))
            .await;
        let calls = (0..50).map(|_| {
            let (base, path, key) = (
                app.base().to_owned(),
                format!("/api/token/{INTEGRATION}/{conn}{query}"),
                app.broker.key().map(str::to_owned),
            );
            tokio::spawn(async move { host_get(&base, &path, key.as_deref()).await })
        });
        let mut tokens = HashSet::new();
        for reply in futures::future::join_all(calls).await {
            let v = check_token_reply(&reply.unwrap(), conn);
            tokens.insert(v["access_token"].as_str().unwrap().to_owned());
        }
        assert_eq!(
            app.vendor.refresh_count() - before,
            1,
            "{conn}: 50 parallel callers, one refresh"
        );
        assert_eq!(tokens.len(), 1, "{conn}: one token: {tokens:?}");
    }
    // Within the token's first half-life, calls with the default margin do not refresh.
    let before = app.vendor.refresh_count();
    for _ in 0..20 {
        check_token_reply(&app.token(INTEGRATION, "margin", "").await, "margin");
    }
    assert_eq!(
        app.vendor.refresh_count(),
        before,
        "no refresh in the first half of a 60 s token"
    );
}

#[tokio::test]
async fn tokens_at_the_caps_fit_one_table_storage_property() {
    // Table Storage refuses a string property over 64 KiB of UTF-16 (Azurite too): the caps keep
    // the sealed pair below it, so a vendor's largest accepted tokens are stored, not lost.
    let app = hostile_on(Some(Azurite::start().await), json!({}), &[]).await;
    let (access, refresh) = ("a".repeat(16_000), "r".repeat(8_000));
    app.vendor.script([Answer::Raw {
        status: 200,
        content_type: "application/json",
        body: json!({"access_token": access, "refresh_token": refresh, "expires_in": 3600})
            .to_string(),
        retry_after: None,
    }]);
    app.seed(&record(INTEGRATION, "big", 60, "rt-big")).await;
    let v = check_token_reply(&app.token(INTEGRATION, "big", "").await, "big");
    assert_eq!(v["access_token"], access);
    let stored = app.stored(INTEGRATION, "big").await;
    assert_eq!(stored.tokens.refresh_token.unwrap().expose(), refresh);
}

#[tokio::test]
async fn a_far_future_failure_time_in_a_row_does_not_panic_the_token_route() {
    // State fields are not sealed (see Security): a row may carry any instant the calendar holds.
    let app = hostile(json!({}), &[]).await;
    let mut r = record(INTEGRATION, "future", 60, "rt-future");
    r.last_error = Some("an earlier failure".into());
    r.last_error_at = Some(time::PrimitiveDateTime::MAX.assume_utc());
    app.seed(&r).await;
    let v = check_token_reply(&app.token(INTEGRATION, "future", "").await, "future");
    assert_eq!(
        v["access_token"], "seed-at-future",
        "cooling down: the valid token is served"
    );
}
