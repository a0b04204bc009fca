//! Consents that cannot silently go wrong: vendor templates ask for the scope a refresh token
//! needs, a consent that brings no refresh token says so (page, status, event) while the token
//! route serves the access token it got, and the success page shows what was granted.

use serde_json::{json, Value};

use crate::helpers::*;

/// The scope parameter of an authorization redirect, split.
fn requested_scopes(location: &str) -> Vec<String> {
    query_param(location, "scope")
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_microsoft_template_integration_asks_for_offline_access_without_listing_it() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let mut file = integrations_file(&app.oidc().issuer, DEFAULT_MARGIN_SECS);
    file["integrations"]["graph"] = json!({
        "provider": "microsoft", "placeholders": {"tenant": "contoso.onmicrosoft.com"},
        "client_id": "graph-id", "client_secret": "graph-secret",
        "scopes": ["https://graph.microsoft.com/User.Read"]
    });
    file["integrations"]["graph-explicit"] = json!({
        "provider": "microsoft",
        "client_id": "graph-id", "client_secret": "graph-secret",
        "scopes": ["offline_access", "User.Read"]
    });
    app.restart_with_integrations(&file).await;

    let start = Browser::new()
        .get(&app.url(&format!(
            "/api/auth/start/graph?connection=c1&code={}",
            app.broker().key().unwrap()
        )))
        .await;
    assert_eq!(start.status, 302, "{start:?}");
    let location = start.location();
    assert!(
        location.starts_with(
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize?"
        ),
        "{location}"
    );
    assert_eq!(
        requested_scopes(&location),
        ["https://graph.microsoft.com/User.Read", "offline_access"],
        "the template adds offline_access: {location}"
    );

    let start = Browser::new()
        .get(&app.url(&format!(
            "/api/auth/start/graph-explicit?connection=c1&code={}",
            app.broker().key().unwrap()
        )))
        .await;
    assert_eq!(start.status, 302, "{start:?}");
    assert_eq!(
        requested_scopes(&start.location()),
        ["offline_access", "User.Read"],
        "an explicit offline_access is sent once"
    );
}

/// Tells the provider whether its code grant issues refresh tokens.
async fn issue_refresh_tokens(app: &TestApp, issue: bool) {
    let url = format!(
        "{}/__config?issue_refresh_token={}",
        app.oidc().issuer,
        u8::from(issue)
    );
    let v: Value = reqwest::Client::new()
        .post(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["issue_refresh_token"], json!(issue), "{v}");
}

#[tokio::test]
async fn a_consent_without_a_refresh_token_warns_marks_the_connection_and_still_serves_the_token() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Table)).await;
    issue_refresh_tokens(&app, false).await;
    let conn = "no-rt";
    let browser = Browser::new();
    let consent = app.consent_until_callback(&browser, conn).await;
    let page = browser.get(&consent.callback_url).await;

    assert_eq!(page.status, 200, "the consent did complete: {page:?}");
    assert!(page.is_html(), "{page:?}");
    let text = html_unescape(&page.body);
    assert!(
        text.contains("<title>Connected without a refresh token"),
        "{text}"
    );
    assert!(text.contains("sent no refresh token"), "says so: {text}");
    assert!(
        text.contains("offline_access") && text.contains("prompt=consent"),
        "names the likely causes: {text}"
    );
    assert!(
        text.contains("expects_refresh_token"),
        "says how to silence it for vendors that never expire: {text}"
    );

    let shown = app
        .get(&format!("/api/connections/{INTEGRATION}/{conn}"))
        .await;
    assert_eq!(shown.status, 200, "{shown:?}");
    assert_eq!(
        shown.json()["status"],
        json!("no_refresh_token"),
        "{shown:?}"
    );

    // The token route serves the access token it got while it lasts.
    let token = app.token(conn).await;
    let access = token["access_token"].as_str().unwrap();
    assert!(app.oidc().is_active(access).await);
    assert!(!page.body.contains(access), "the page shows no token");

    // The status JSON lists it for attention.
    let status = app.get("/api/status?format=json").await;
    assert_eq!(status.status, 200, "{status:?}");
    let v = status.json();
    assert_eq!(v["attention"][0]["connection"], json!(conn), "{v}");
    assert_eq!(
        v["attention"][0]["status"],
        json!("no_refresh_token"),
        "{v}"
    );
    assert_eq!(v["counts"]["no_refresh_token"], json!(1), "{v}");

    // The event is emitted once, naming the connection and nothing secret.
    let output = app.stop_broker().text();
    assert!(!output.contains(access), "no token in the log");
    let events: Vec<Value> = output
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            if v["fields"].is_object() {
                v["fields"].clone()
            } else {
                v
            }
        })
        .filter(|f| f["event"] == json!("connection.no_refresh_token"))
        .collect();
    assert_eq!(events.len(), 1, "one event: {output}");
    assert_eq!(events[0]["connection"], json!(conn), "{}", events[0]);
    assert_eq!(
        events[0]["integration"],
        json!(INTEGRATION),
        "{}",
        events[0]
    );
}

#[tokio::test]
async fn a_consent_with_a_refresh_token_is_active_and_a_new_consent_clears_no_refresh_token() {
    let app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    issue_refresh_tokens(&app, false).await;
    app.connect("heal").await;
    issue_refresh_tokens(&app, true).await;
    let browser = Browser::new();
    let consent = app.consent_until_callback(&browser, "heal").await;
    let page = browser.get(&consent.callback_url).await;
    assert_eq!(page.status, 200, "{page:?}");
    let text = html_unescape(&page.body);
    assert!(
        text.contains("<title>Connected \u{b7}"),
        "no warning when a refresh token came, even though the provider left offline_access out of the granted scope: {text}"
    );
    assert!(!text.contains("refresh token"), "{text}");
    let shown = app
        .get(&format!("/api/connections/{INTEGRATION}/heal"))
        .await;
    assert_eq!(shown.json()["status"], json!("active"), "{shown:?}");
}

#[tokio::test]
async fn the_success_page_warns_when_the_vendor_grants_fewer_scopes_than_requested() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let mut file = integrations_file(&app.oidc().issuer, DEFAULT_MARGIN_SECS);
    // oidc-provider drops scopes it does not know.
    file["integrations"][INTEGRATION]["scopes"] = json!(["openid", "api:read", "api:write"]);
    app.restart_with_integrations(&file).await;
    let browser = Browser::new();
    let consent = app.consent_until_callback(&browser, "fewer").await;
    let page = browser.get(&consent.callback_url).await;
    assert_eq!(page.status, 200, "{page:?}");
    let text = html_unescape(&page.body);
    assert!(
        text.contains("<title>Connected with fewer scopes than requested"),
        "{text}"
    );
    assert!(
        text.contains(
            "<dt>Not granted</dt><dd><ul class=\"scopes\"><li><code>api:write</code></li></ul>"
        ),
        "lists the scope not granted: {text}"
    );
    let token = app.token("fewer").await;
    let granted = token["scope"].as_str().unwrap();
    assert!(!granted.contains("api:write"), "{token}");
    for s in granted.split(' ') {
        assert!(
            text.contains(&format!("<li><code>{s}</code></li>")),
            "lists the granted scope {s}: {text}"
        );
    }
}

#[tokio::test]
async fn an_openid_provider_that_advertises_offline_access_gets_it_requested() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let issuer = app.oidc().issuer.clone();
    let file = json!({"integrations": {INTEGRATION: {
        "issuer": issuer, "client_id": "%DEMO_CLIENT_ID%", "client_secret": "%DEMO_CLIENT_SECRET%",
        "scopes": ["openid", "api:read"], "refresh_margin_secs": DEFAULT_MARGIN_SECS
    }}});
    app.restart_with_integrations(&file).await;
    crate::discovery::wait_until_discovered(&app).await;
    let start = app.start_auth(&Browser::new(), "oidc").await;
    assert_eq!(
        requested_scopes(&start.location()),
        ["openid", "api:read", "offline_access"],
        "oidc-provider lists offline_access in scopes_supported: {}",
        start.location()
    );
}
