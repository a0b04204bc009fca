//! A grant the vendor no longer honours (invalid_grant) turns into 409 reauthorization_required, the
//! sweep does not hammer the vendor with it, and a new consent heals the connection.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_revoked_grant_answers_409_reauthorization_required_and_the_sweep_leaves_it_alone() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Table)).await;
    let conn = "globex";
    app.connect(conn).await;
    let token = app.access_token(conn).await;

    // The user (or the vendor) revokes the grant; oidc-provider revokes every token of it.
    app.oidc().revoke(&token, "access_token").await;
    assert!(
        !app.oidc().is_active(&token).await,
        "revocation took effect"
    );

    let reply = app.token_reply(conn, "?force_refresh=true").await;
    assert_eq!(reply.status, 409, "refresh of a revoked grant: {reply:?}");
    assert!(reply.is_json(), "{reply:?}");
    assert_eq!(reply.error_code(), "reauthorization_required");
    let body = reply.json();
    let authorize_url = body["authorize_url"].as_str().unwrap_or_default();
    assert!(
        authorize_url.ends_with(&format!("/api/auth/start/{INTEGRATION}?connection={conn}")),
        "authorize_url points at the start route for the connection: {body}"
    );
    assert!(body["error_description"].is_string(), "{body}");
    // What an operator can use: the consent-link route to POST to, and the status page.
    assert_eq!(
        body["consent_link_url"],
        format!(
            "{}/api/connections/{INTEGRATION}/{conn}/consent-link",
            app.base_url()
        ),
        "{body}"
    );
    assert_eq!(
        body["status_url"],
        format!("{}/api/status", app.base_url()),
        "{body}"
    );
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.contains("POST ") && description.contains("/consent-link"),
        "{description}"
    );
    let link = app
        .call(
            reqwest::Method::POST,
            &format!("/api/connections/{INTEGRATION}/{conn}/consent-link"),
            None,
            Key::Configured,
        )
        .await;
    assert_eq!(link.status, 201, "the route it names works: {link:?}");
    let stats = app.oidc().stats().await;
    assert_eq!(stats.refreshes(), 1, "one refresh attempt: {stats:?}");
    assert_eq!(stats.token_errors("invalid_grant"), 1, "{stats:?}");

    // A tick with the normal margin: the connection is not due or is counted as needing consent.
    assert_sweep_skips_the_dead_grant(&app).await;

    // Even when everything is due, the sweep does not retry a grant the vendor rejected.
    app.restart_with_margin(3600).await;
    assert_sweep_skips_the_dead_grant(&app).await;
    let stats = app.oidc().stats().await;
    assert_eq!(
        stats.refreshes(),
        1,
        "no new refresh attempt for a connection that needs consent: {stats:?}"
    );

    // The token route keeps saying so, as JSON, without a 5xx.
    let reply = app.token_reply(conn, "").await;
    assert_eq!(reply.status, 409, "{reply:?}");
    assert_eq!(reply.error_code(), "reauthorization_required");

    // A new consent heals the connection.
    app.restart_with_margin(DEFAULT_MARGIN_SECS).await;
    app.connect(conn).await;
    let healed = app.access_token(conn).await;
    assert_ne!(healed, token);
    assert!(app.oidc().is_active(&healed).await);
}

/// A sweep neither refreshes nor counts as failed a grant the vendor rejected.
async fn assert_sweep_skips_the_dead_grant(app: &TestApp) {
    let rv = app.sweep().await;
    assert_eq!(
        rv["failed"],
        json!(0),
        "a dead grant is not a failure: {rv}"
    );
    assert_eq!(rv["refreshed"], json!(0), "{rv}");
    assert!(
        rv["reauthorization_required"].as_u64().unwrap() <= 1,
        "{rv}"
    );
}
