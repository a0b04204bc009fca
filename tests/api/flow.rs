//! The whole vertical slice on each store: consent → token route → timer sweep, asserting on what the
//! provider saw at every step.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn consent_then_token_then_sweep_on_table_storage() {
    consent_then_token_then_sweep(Store::Table).await;
}

#[tokio::test]
async fn consent_then_token_then_sweep_on_sqlite() {
    consent_then_token_then_sweep(Store::Sqlite).await;
}

async fn consent_then_token_then_sweep(store: Store) {
    let mut app = TestApp::spawn(AppOptions::on(store)).await;
    let conn = "acme-01";

    // Nothing is stored yet.
    let missing = app.token_reply(conn, "").await;
    assert_eq!(missing.status, 404, "token before consent: {missing:?}");
    assert_eq!(missing.error_code(), "connection_not_found");

    // auth-start: 302 to the provider with the whole authorization request.
    let browser = Browser::new();
    let start = app.start_auth(&browser, conn).await;
    let location = start.location();
    assert!(
        location.starts_with(&format!("{}?", app.oidc().authorization_url())),
        "auth-start redirects to the provider's authorization endpoint: {location}"
    );
    let param = |name: &str| query_param(&location, name);
    assert_eq!(
        param("response_type").as_deref(),
        Some("code"),
        "{location}"
    );
    assert_eq!(param("client_id").as_deref(), Some(CLIENT_ID), "{location}");
    assert_eq!(
        param("redirect_uri"),
        Some(app.redirect_uri()),
        "redirect_uri is <public>/api/auth/callback: {location}"
    );
    assert_eq!(
        param("code_challenge_method").as_deref(),
        Some("S256"),
        "{location}"
    );
    assert!(
        param("code_challenge").is_some_and(|c| c.len() >= 43),
        "PKCE challenge: {location}"
    );
    let state = param("state").unwrap_or_default();
    assert!(state.len() >= 16, "a fresh, unguessable state: {location}");
    let scope = param("scope").unwrap_or_default();
    for s in SCOPES {
        assert!(
            scope.split(' ').any(|x| x == s),
            "scope {s:?} requested: {location}"
        );
    }
    let cookies = start.header_all("set-cookie");
    assert!(
        cookies.iter().any(|c| {
            let c = c.to_ascii_lowercase();
            c.contains("httponly") && c.contains("samesite=lax")
        }),
        "auth-start binds the state to the browser with an HttpOnly, SameSite=Lax cookie: {cookies:?}"
    );
    assert!(
        start.has_no_store(),
        "auth-start: Cache-Control no-store: {start:?}"
    );

    // The provider's login and consent screens, then the callback.
    let callback_url = browser.consent(&location, &app.redirect_uri()).await;
    assert_eq!(query_param(&callback_url, "state"), Some(state.clone()));
    let page = browser.get(&callback_url).await;
    assert_eq!(page.status, 200, "callback: {page:?}");
    assert!(page.is_html(), "callback answers HTML: {page:?}");
    assert!(
        page.body.contains(INTEGRATION),
        "callback page names the integration: {}",
        page.body
    );
    assert!(
        page.body.contains(conn),
        "callback page names the connection: {}",
        page.body
    );

    let stats = app.oidc().stats().await;
    assert_eq!(
        stats.authorization_codes(),
        1,
        "one code exchange: {stats:?}"
    );
    assert_eq!(stats.refreshes(), 0, "no refresh yet: {stats:?}");
    let exchange = &stats.0["last_token_request"];
    assert_eq!(
        exchange["grant_type"],
        json!("authorization_code"),
        "{stats:?}"
    );
    assert_eq!(
        exchange["client_auth"],
        json!("basic"),
        "client_auth basic: {stats:?}"
    );
    assert_eq!(
        exchange["has_code_verifier"],
        json!(true),
        "PKCE verifier sent: {stats:?}"
    );

    // The token route: the stored token, as is.
    let first = app.token(conn).await;
    let t1 = first["access_token"].as_str().unwrap().to_owned();
    assert!(
        !page.body.contains(&t1),
        "the callback page never shows a token"
    );
    assert!(
        first["expires_in"].as_i64().unwrap() <= DEFAULT_TOKEN_TTL_SECS as i64,
        "expires_in within the provider's lifetime: {first}"
    );
    assert!(
        app.oidc().is_active(&t1).await,
        "the provider knows the token"
    );
    let scope = first["scope"].as_str().unwrap();
    assert!(
        scope.split(' ').any(|s| s == "api:read"),
        "scope is what the provider granted: {first}"
    );
    let again = app.token(conn).await;
    assert_eq!(
        again["access_token"],
        json!(t1),
        "a fresh token is served from the store"
    );
    let stats = app.oidc().stats().await;
    assert_eq!(stats.authorization_codes(), 1, "{stats:?}");
    assert_eq!(
        stats.refreshes(),
        0,
        "no refresh for a fresh token: {stats:?}"
    );

    // ?force_refresh=true refreshes.
    let forced = app.token_reply(conn, "?force_refresh=true").await;
    let forced = check_token_reply(&forced, conn);
    let t2 = forced["access_token"].as_str().unwrap().to_owned();
    assert_ne!(t2, t1, "force_refresh returns a new token");
    let stats = app.oidc().stats().await;
    assert_eq!(
        stats.refreshes(),
        1,
        "force_refresh reached the provider: {stats:?}"
    );
    assert_eq!(stats.refresh_successes(), 1, "{stats:?}");
    let refresh = &stats.0["last_token_request"];
    assert_eq!(refresh["grant_type"], json!("refresh_token"), "{stats:?}");
    assert_eq!(refresh["client_auth"], json!("basic"), "{stats:?}");

    // POST /api/token, as ADF's Azure Function activity sends it.
    let body = json!({"integration": INTEGRATION, "connection": conn}).to_string();
    let posted = app.post_json("/api/token", &body).await;
    let posted = check_token_reply(&posted, conn);
    assert_eq!(
        posted["access_token"],
        json!(t2),
        "POST serves the stored token"
    );
    assert_eq!(app.oidc().stats().await.refreshes(), 1);

    // min_validity_secs beyond the token's lifetime forces a refresh.
    let body = json!({"integration": INTEGRATION, "connection": conn, "min_validity_secs": 100000})
        .to_string();
    let longer = app.post_json("/api/token", &body).await;
    let longer = check_token_reply(&longer, conn);
    let t3 = longer["access_token"].as_str().unwrap().to_owned();
    assert_ne!(t3, t2, "min_validity_secs triggers a refresh");
    assert_eq!(app.oidc().stats().await.refreshes(), 2);

    // The timer: nothing is due within a 30 s margin of a 60 s token.
    let rv = app.sweep().await;
    assert_eq!(
        rv,
        json!({"refreshed": 0, "failed": 0, "reauthorization_required": 0}),
        "a sweep leaves fresh tokens alone"
    );
    assert_eq!(app.oidc().stats().await.refreshes(), 2);

    // The operator raises the margin above the token lifetime: the next tick refreshes the
    // connection (same store, same keys, same port).
    app.restart_with_margin(3600).await;
    let rv = app.sweep().await;
    assert_eq!(
        rv,
        json!({"refreshed": 1, "failed": 0, "reauthorization_required": 0}),
        "the sweep refreshes the due connection"
    );
    let stats = app.oidc().stats().await;
    assert_eq!(
        stats.refreshes(),
        3,
        "the provider saw the sweep's refresh: {stats:?}"
    );
    assert_eq!(stats.refresh_successes(), 3, "{stats:?}");

    // Back to the normal margin: the token route serves what the sweep stored, without refreshing.
    app.restart_with_margin(DEFAULT_MARGIN_SECS).await;
    let after = app.token(conn).await;
    let t4 = after["access_token"].as_str().unwrap().to_owned();
    assert_ne!(t4, t3, "the token after the sweep is the sweep's new token");
    assert!(
        app.oidc().is_active(&t4).await,
        "the swept token is live at the provider"
    );
    let stats = app.oidc().stats().await;
    assert_eq!(
        stats.refreshes(),
        3,
        "no refresh after the sweep: {stats:?}"
    );
    assert_eq!(stats.authorization_codes(), 1, "{stats:?}");

    // Rotation was honoured: no refresh token was ever replayed.
    assert_eq!(stats.token_errors("invalid_grant"), 0, "{stats:?}");
    assert_eq!(stats.grants_revoked(), 0, "{stats:?}");

    let health = app.health().await;
    assert_eq!(health.status, 200, "{health:?}");
}
