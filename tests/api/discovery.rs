//! Integrations configured with only an `issuer` are discovered after the broker listens: an
//! issuer that never answers neither delays nor stops the start (the Functions host gives a custom
//! handler about 30 s), its integration answers 503 `integration_unavailable` until discovery
//! succeeds, `/api/health` names it, and every other integration is served meanwhile.

use serde_json::json;

use crate::helpers::*;

/// Waits (up to 30 s) until `/api/health` lists no integration as unavailable.
pub async fn wait_until_discovered(app: &TestApp) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let health = app.health().await;
        assert_eq!(health.status, 200, "{health:?}");
        if health.json().get("integrations_unavailable").is_none() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "discovery did not finish: {health:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_issuer_that_never_answers_leaves_only_its_own_integration_unavailable() {
    // Accepts connections and never answers a byte.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().take(64) {
            held.push(conn);
        }
    });

    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let issuer = app.oidc().issuer.clone();
    let mut file = integrations_file(&issuer, DEFAULT_MARGIN_SECS);
    file["integrations"]["silent"] = json!({
        "issuer": format!("http://127.0.0.1:{port}"),
        "client_id": "id", "client_secret": "secret", "scopes": ["openid"]
    });
    app.restart_with_integrations(&file).await;

    let health = app.health().await;
    assert_eq!(health.status, 200, "{health:?}");
    let unavailable = &health.json()["integrations_unavailable"];
    assert_eq!(unavailable[0]["integration"], json!("silent"), "{health:?}");
    assert!(unavailable[0]["reason"].is_string(), "{health:?}");

    let token = app.get("/api/token/silent/c1").await;
    assert_eq!(token.status, 503, "{token:?}");
    assert_eq!(token.json()["error"], json!("integration_unavailable"));
    let link = app
        .post_json("/api/connections/silent/c1/consent-link", "")
        .await;
    assert_eq!(link.status, 503, "{link:?}");
    let start = Browser::new()
        .get(&app.url(&format!(
            "/api/auth/start/silent?connection=c1&code={}",
            app.broker().key().unwrap()
        )))
        .await;
    assert_eq!(start.status, 503, "a page says to try again: {start:?}");

    // The other integration works as usual.
    app.connect("c1").await;
    check_token_reply(&app.token_reply("c1", "").await, "c1");
}
