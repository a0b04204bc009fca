//! Connection management, consent links, vendor quirks and discovery.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::helpers::{Answer, FakeVendor};

async fn api(app: &TestApp, method: Method, path: &str, body: Option<&str>) -> Reply {
    app.call(method, path, body, Key::Configured).await
}

#[tokio::test]
async fn connections_are_listed_shown_and_deleted_with_revocation_at_the_provider() {
    let app = TestApp::spawn(AppOptions {
        api_key: Some("admin-key-1-for-the-connections-routes".into()),
        ..AppOptions::on(Store::Table)
    })
    .await;
    app.connect("acme").await;
    app.connect("globex").await;
    let token = app.access_token("acme").await;

    let list = api(&app, Method::GET, "/api/connections", None).await;
    assert_eq!(list.status, 200, "{list:?}");
    let v = list.json();
    let conns = v["connections"].as_array().expect("a connections array");
    assert_eq!(conns.len(), 2, "{v}");
    for c in conns {
        for field in [
            "integration",
            "connection",
            "status",
            "expires_at",
            "refreshed_at",
            "created_at",
            "last_error",
            "scope",
        ] {
            assert!(c.get(field).is_some(), "{field} in {c}");
        }
        assert_eq!(c["status"], "active");
    }
    assert!(!list.body.contains(&token), "never a token in the listing");
    assert_eq!(
        app.call(Method::GET, "/api/connections", None, Key::None)
            .await
            .status,
        401,
        "protected"
    );

    let one = api(
        &app,
        Method::GET,
        &format!("/api/connections/{INTEGRATION}/acme"),
        None,
    )
    .await;
    assert_eq!(
        (one.status, one.json()["connection"].clone()),
        (200, json!("acme")),
        "{one:?}"
    );
    assert!(!one.body.contains(&token));
    assert_eq!(
        api(
            &app,
            Method::GET,
            &format!("/api/connections/{INTEGRATION}/nobody"),
            None
        )
        .await
        .error_code(),
        "connection_not_found"
    );

    let del = api(
        &app,
        Method::DELETE,
        &format!("/api/connections/{INTEGRATION}/acme"),
        None,
    )
    .await;
    assert_eq!(del.status, 204, "{del:?}");
    assert!(
        !app.oidc().is_active(&token).await,
        "the grant was revoked at the provider (RFC 7009)"
    );
    let after = app.token_reply("acme", "").await;
    assert_eq!(
        (after.status, after.error_code().as_str()),
        (404, "connection_not_found")
    );
    assert_eq!(
        api(
            &app,
            Method::DELETE,
            &format!("/api/connections/{INTEGRATION}/acme"),
            None
        )
        .await
        .status,
        404
    );
    app.token("globex").await; // the other connection is untouched
}

#[tokio::test]
async fn a_consent_link_works_without_a_key_survives_a_mail_scanner_and_is_used_up_by_the_consent()
{
    let app = TestApp::spawn(AppOptions {
        api_key: Some("admin-key-2-for-the-consent-link-route".into()),
        ..AppOptions::on(Store::Sqlite)
    })
    .await;
    let path = format!("/api/connections/{INTEGRATION}/acme/consent-link");
    assert_eq!(
        app.call(Method::POST, &path, None, Key::None).await.status,
        401,
        "creating a link is protected"
    );
    let created = api(&app, Method::POST, &path, None).await;
    assert_eq!(created.status, 201, "{created:?}");
    let link = created.json()["url"].as_str().unwrap().to_owned();
    assert!(
        link.starts_with(&app.base_url()) && !link.contains("admin-key-2"),
        "{link}"
    );
    assert!(created.json()["expires_at"].is_string());

    // A mail scanner fetches the link first: that must not burn it.
    let scanner = Browser::new();
    let scanned = scanner.get(&link).await;
    assert_eq!(scanned.status, 302, "{scanned:?}");

    // The account owner opens it (no key), consents, and lands on the success page.
    let owner = Browser::new();
    let opened = owner.get(&link).await;
    assert_eq!(opened.status, 302, "{opened:?}");
    assert!(
        opened.location().starts_with(&app.oidc().issuer),
        "straight to the vendor"
    );
    let callback = owner.consent(&opened.location(), &app.redirect_uri()).await;
    let page = owner.get(&callback).await;
    assert_eq!(page.status, 200, "{page:?}");
    app.token("acme").await;

    // Used up: opening it again, or completing the scanner's started consent, fails.
    let again = Browser::new().get(&link).await;
    assert_eq!(again.status, 410, "{again:?}");
    assert!(again.is_html());
    let late = scanner
        .consent(&scanned.location(), &app.redirect_uri())
        .await;
    assert_eq!(
        scanner.get(&late).await.status,
        400,
        "a second consent through a used link fails"
    );

    // Expiry.
    let short = api(&app, Method::POST, &path, Some(r#"{"expires_in_secs": 1}"#)).await;
    let short_link = short.json()["url"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    assert_eq!(
        Browser::new().get(&short_link).await.status,
        410,
        "an expired link is refused"
    );
    for bad in [
        r#"{"expires_in_secs": 0}"#,
        r#"{"expires_in_secs": 99999999}"#,
        "[]",
        r#"{"x":1}"#,
        " ",
        "\n",
    ] {
        let r = api(&app, Method::POST, &path, Some(bad)).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "invalid_request"),
            "{bad}: {r:?}"
        );
    }
    let unknown = api(
        &app,
        Method::POST,
        "/api/connections/nope/acme/consent-link",
        None,
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        Browser::new()
            .get(&format!("{}/api/auth/link?t=forged", app.base_url()))
            .await
            .status,
        410
    );
}

/// A broker on the embedded store in `dir` with the given integrations file.
async fn broker_with(dir: &tempfile::TempDir, integrations: &Value) -> Broker {
    std::fs::write(
        dir.path().join("integrations.json"),
        integrations.to_string(),
    )
    .unwrap();
    Broker::start(&BrokerSpec {
        port: 0,
        bind: "127.0.0.1".into(),
        storage: format!("sqlite:{}", dir.path().join("b.db").display()),
        table: None,
        encryption_keys: None,
        api_key: None,
        public_url: None,
        integrations_path: dir.path().join("integrations.json"),
        work_dir: dir.path().to_owned(),
        env: vec![],
    })
    .await
}

/// A vendor with the quirks of QuickBooks, Salesforce and GitHub at once.
#[tokio::test]
async fn vendor_quirks_are_handled_and_metadata_is_returned_with_the_token() {
    let vendor = FakeVendor::start();
    let dir = tempfile::tempdir().unwrap();
    let integrations = json!({"integrations": {"quirky": {
        "authorization_url": format!("{}/authorize", vendor.base),
        "token_url": vendor.token_url(),
        "client_id": "client", "client_secret": "secret",
        "scopes": ["read", "write"], "scope_separator": ",",
        "callback_metadata": ["realmId"], "token_metadata": ["instance_url"],
        "expires_in_unit": "milliseconds", "refresh_margin_secs": 60
    }}});
    let broker = broker_with(&dir, &integrations).await;
    // The code exchange answers form-encoded (GitHub without Accept: application/json).
    vendor.script_code_exchanges([Answer::Raw {
        status: 200,
        content_type: "application/x-www-form-urlencoded",
        body: "access_token=at-form&refresh_token=rt-form&token_type=bearer&expires_in=7200000&scope=read%2Cwrite&instance_url=https%3A%2F%2Fna1.example.com".into(),
        retry_after: None,
    }]);
    let browser = Browser::new();
    let start = browser
        .get(&format!(
            "{}/api/auth/start/quirky?connection=co1&code={}",
            broker.base_url,
            broker.key().unwrap()
        ))
        .await;
    assert_eq!(start.status, 302, "{start:?}");
    let location = start.location();
    assert_eq!(
        query_param(&location, "scope").as_deref(),
        Some("read,write"),
        "comma separator: {location}"
    );
    let state = query_param(&location, "state").unwrap();
    let callback = format!(
        "{}/api/auth/callback?code=c0de&state={state}&realmId=9130355&iss=x",
        broker.base_url
    );
    let page = browser.get(&callback).await;
    assert_eq!(page.status, 200, "{page:?}");
    let sent = &vendor.code_requests()[0];
    assert!(
        sent.contains(&("grant_type".into(), "authorization_code".into())),
        "{sent:?}"
    );
    assert!(
        sent.iter()
            .any(|(k, v)| k == "redirect_uri" && v.ends_with("/api/auth/callback")),
        "{sent:?}"
    );

    let reply = host_get(&broker.base_url, "/api/token/quirky/co1", broker.key()).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let v = reply.json();
    assert_eq!(v["access_token"], "at-form");
    assert_eq!(
        v["metadata"],
        json!({"realmId": "9130355", "instance_url": "https://na1.example.com"})
    );
    assert_eq!(v["scope"], "read write");
    let expires_in = v["expires_in"].as_i64().unwrap();
    assert!(
        (7190..=7200).contains(&expires_in),
        "milliseconds understood: {expires_in}"
    );
    let conn = host_get(
        &broker.base_url,
        "/api/connections/quirky/co1",
        broker.key(),
    )
    .await;
    assert_eq!(conn.json()["metadata"]["realmId"], "9130355");

    // A refresh keeps the callback metadata and updates the token metadata.
    vendor.script([Answer::Raw {
        status: 200,
        content_type: "application/json",
        body: r#"{"access_token":"at-2","expires_in":3600000,"instance_url":"https://na2.example.com"}"#.into(),
        retry_after: None,
    }]);
    let r = host_get(
        &broker.base_url,
        "/api/token/quirky/co1?force_refresh=true",
        broker.key(),
    )
    .await;
    let v: Value = r.json();
    assert_eq!(v["access_token"], "at-2");
    assert_eq!(
        v["metadata"],
        json!({"realmId": "9130355", "instance_url": "https://na2.example.com"})
    );
    assert_eq!(
        vendor.refresh_tokens_received(),
        ["rt-form"],
        "the old refresh token is kept when none is sent"
    );
}

#[tokio::test]
async fn an_integration_with_only_an_issuer_discovers_its_endpoints() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let issuer = app.oidc().issuer.clone();
    let file = json!({"integrations": {INTEGRATION: {
        "issuer": issuer, "client_id": "%DEMO_CLIENT_ID%", "client_secret": "%DEMO_CLIENT_SECRET%",
        "scopes": SCOPES, "refresh_margin_secs": DEFAULT_MARGIN_SECS
    }}});
    app.restart_with_integrations(&file).await;
    // Discovery runs in the background once the port is bound.
    crate::discovery::wait_until_discovered(&app).await;
    app.connect("d1").await;
    app.token("d1").await;
    let stats = app.oidc().stats().await;
    assert_eq!(
        stats.authorization_codes(),
        1,
        "the discovered token endpoint was used"
    );
}

#[tokio::test]
async fn a_notion_style_vendor_gets_json_token_requests_with_basic_auth() {
    let vendor = FakeVendor::start();
    let dir = tempfile::tempdir().unwrap();
    let integrations = json!({"integrations": {"notes": {
        "provider": "notion",
        "authorization_url": format!("{}/authorize", vendor.base),
        "token_url": vendor.token_url(),
        "client_id": "client", "client_secret": "secret"
    }}});
    let broker = broker_with(&dir, &integrations).await;
    vendor.script_code_exchanges([Answer::Raw {
        status: 200,
        content_type: "application/json",
        body: r#"{"access_token":"at-n","token_type":"bearer","workspace_id":"ws-1","bot_id":"b-1","owner":{"type":"user"}}"#.into(),
        retry_after: None,
    }]);
    let browser = Browser::new();
    let start = browser
        .get(&format!(
            "{}/api/auth/start/notes?connection=w1&code={}",
            broker.base_url,
            broker.key().unwrap()
        ))
        .await;
    let location = start.location();
    assert_eq!(
        query_param(&location, "owner").as_deref(),
        Some("user"),
        "template parameter: {location}"
    );
    let state = query_param(&location, "state").unwrap();
    let page = browser
        .get(&format!(
            "{}/api/auth/callback?code=c&state={state}",
            broker.base_url
        ))
        .await;
    assert_eq!(page.status, 200, "{page:?}");
    let sent = &vendor.code_requests()[0];
    assert!(
        sent.contains(&("(content-type)".into(), "application/json".into())),
        "{sent:?}"
    );
    assert!(
        sent.contains(&("(client-auth)".into(), "basic".into())),
        "{sent:?}"
    );
    let v = host_get(&broker.base_url, "/api/token/notes/w1", broker.key())
        .await
        .json();
    assert_eq!(
        v["metadata"],
        json!({"workspace_id": "ws-1", "bot_id": "b-1"})
    );
    let expires_in = v["expires_in"].as_i64().unwrap();
    assert!(
        (3590..=3600).contains(&expires_in),
        "no expires_in: the default lifetime applies ({expires_in})"
    );
}
