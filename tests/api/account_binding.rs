//! A grant belongs to one vendor account (issue 17, items 1-3), end to end at oidc-provider, whose
//! `sub` is the login typed into its form: a consent by another account is refused and its tokens
//! revoked, the connection's grant untouched; the same account may always consent again (and its
//! previous grant is left alone); an operator may allow a change, which revokes the previous
//! account's grant; a connection with no recorded account is revived when dead but not taken over
//! when active.

use serde_json::{json, Value};

use crate::helpers::*;

/// The `kind` events logged so far, once there are at least `n` (events are logged just after
/// the page is answered, so a test waits for them; 5 s at most).
async fn events_n(app: &TestApp, kind: &str, n: usize) -> Vec<Value> {
    for _ in 0..50 {
        let found = events(app, kind);
        if found.len() >= n {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    events(app, kind)
}

fn events(app: &TestApp, kind: &str) -> Vec<Value> {
    app.broker()
        .process()
        .output
        .text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            if v["fields"].is_object() {
                v["fields"].clone()
            } else {
                v
            }
        })
        .filter(|f| f["event"] == json!(kind))
        .collect()
}

async fn account_of(app: &TestApp, conn: &str) -> Value {
    let show = app
        .get(&format!("/api/connections/{INTEGRATION}/{conn}"))
        .await;
    assert_eq!(show.status, 200, "{show:?}");
    show.json()["account"].clone()
}

async fn link(app: &TestApp, conn: &str, body: &str) -> String {
    let created = app
        .post_json(
            &format!("/api/connections/{INTEGRATION}/{conn}/consent-link"),
            body,
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    created.json()["url"].as_str().unwrap().to_owned()
}

fn id_token_account(app: &TestApp, login: &str) -> Value {
    json!({"id": format!("{}#{login}", app.oidc().issuer), "source": "id_token"})
}

async fn another_account_cannot_take_over(store: Store) {
    let app = TestApp::spawn(AppOptions::on(store)).await;
    let page = app.consent_as("acme", "alice", "").await;
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(
        account_of(&app, "acme").await,
        id_token_account(&app, "alice")
    );
    let alices = app.access_token("acme").await;
    let revoked_before = app.oidc().stats().await.grants_revoked();

    // Mallory holds a consent link and completes it with her own account.
    let url = link(&app, "acme", "").await;
    let page = app.consent_through_link_as(&url, "mallory").await;
    assert_eq!(page.status, 409, "another account is refused: {page:?}");
    assert!(
        page.body.contains("another account"),
        "the page says why: {}",
        page.body
    );
    let stats = app.oidc().stats().await;
    assert_eq!(stats.authorization_codes(), 2, "{stats:?}");
    assert_eq!(
        stats.grants_revoked(),
        revoked_before + 1,
        "mallory's new grant was revoked at the vendor: {stats:?}"
    );
    // The connection still serves alice's grant, which still works at the vendor.
    assert_eq!(app.access_token("acme").await, alices);
    assert!(
        app.oidc().is_active(&alices).await,
        "alice's grant is alive"
    );
    assert_eq!(
        account_of(&app, "acme").await,
        id_token_account(&app, "alice")
    );
    let mismatch = events_n(&app, "connection.account_mismatch", 1).await;
    assert_eq!(mismatch.len(), 1, "one connection.account_mismatch event");
    assert_eq!(mismatch[0]["connection"], json!("acme"));
    assert_eq!(
        mismatch[0]["account"],
        json!(format!("{}#mallory", app.oidc().issuer)),
        "the attempted account: {}",
        mismatch[0]
    );

    // The refused consent did not use the link up: alice can still use it.
    let page = app.consent_through_link_as(&url, "alice").await;
    assert_eq!(
        page.status, 200,
        "the same account consents again: {page:?}"
    );
    assert_ne!(app.access_token("acme").await, alices);
    assert!(events(&app, "connection.account_changed").is_empty());
}

#[tokio::test]
async fn another_account_cannot_take_over_a_connection_sqlite() {
    another_account_cannot_take_over(Store::Sqlite).await;
}

#[tokio::test]
async fn another_account_cannot_take_over_a_connection_table() {
    another_account_cannot_take_over(Store::Table).await;
}

#[tokio::test]
async fn the_same_account_consents_again_and_nothing_of_its_grant_is_revoked() {
    let app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    assert_eq!(app.consent_as("acme", "alice", "").await.status, 200);
    let first = app.access_token("acme").await;
    let revoked_before = app.oidc().stats().await.grants_revoked();
    assert_eq!(app.consent_as("acme", "alice", "").await.status, 200);
    let second = app.access_token("acme").await;
    assert_ne!(second, first);
    assert_eq!(
        app.oidc().stats().await.grants_revoked(),
        revoked_before,
        "no revocation after a same-account consent"
    );
    // The new grant works at the vendor, access and refresh token alike.
    assert!(
        app.oidc().is_active(&second).await,
        "the new access token is live"
    );
    let refreshed = app.token_reply("acme", "?force_refresh=true").await;
    let refreshed = check_token_reply(&refreshed, "acme");
    assert_eq!(app.oidc().stats().await.refresh_successes(), 1);
    assert!(
        app.oidc()
            .is_active(refreshed["access_token"].as_str().unwrap())
            .await
    );
}

async fn an_allowed_change(store: Store) {
    let app = TestApp::spawn(AppOptions::on(store)).await;
    assert_eq!(app.consent_as("acme", "alice", "").await.status, 200);
    let alices = app.access_token("acme").await;

    let url = link(&app, "acme", r#"{"allow_account_change": true}"#).await;
    let page = app.consent_through_link_as(&url, "bob").await;
    assert_eq!(page.status, 200, "the operator allowed a change: {page:?}");
    assert_eq!(
        account_of(&app, "acme").await,
        id_token_account(&app, "bob")
    );
    let bobs = app.access_token("acme").await;
    assert!(app.oidc().is_active(&bobs).await);
    assert!(
        !app.oidc().is_active(&alices).await,
        "the previous account's grant was revoked at the vendor"
    );
    let changed = events_n(&app, "connection.account_changed", 1).await;
    assert_eq!(changed.len(), 1, "one connection.account_changed");

    // Auth start (keyed) takes the same permission as a query parameter.
    assert_eq!(app.consent_as("acme", "carol", "").await.status, 409);
    let page = app
        .consent_as("acme", "carol", "&allow_account_change=true")
        .await;
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(
        account_of(&app, "acme").await,
        id_token_account(&app, "carol")
    );
    assert!(!app.oidc().is_active(&bobs).await);
    assert_eq!(
        events_n(&app, "connection.account_changed", 2).await.len(),
        2
    );
}

#[tokio::test]
async fn an_operator_may_allow_an_account_change_sqlite() {
    an_allowed_change(Store::Sqlite).await;
}

#[tokio::test]
async fn an_operator_may_allow_an_account_change_table() {
    an_allowed_change(Store::Table).await;
}

#[tokio::test]
async fn the_account_changed_event_names_both_accounts() {
    // The event line (and the webhook body built from the same event) names both accounts.
    let app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    assert_eq!(app.consent_as("acme", "alice", "").await.status, 200);
    let page = app
        .consent_as("acme", "bob", "&allow_account_change=true")
        .await;
    assert_eq!(page.status, 200);
    let changed = events_n(&app, "connection.account_changed", 1).await;
    assert_eq!(changed.len(), 1);
    assert_eq!(
        changed[0]["previous_account"],
        json!(format!("{}#alice", app.oidc().issuer))
    );
    assert_eq!(
        changed[0]["account"],
        json!(format!("{}#bob", app.oidc().issuer))
    );
}

#[tokio::test]
async fn a_connection_without_an_account_is_revived_but_not_taken_over() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let mut file = integrations_file(&app.oidc().issuer, DEFAULT_MARGIN_SECS);
    file["integrations"][INTEGRATION]["account"] = Value::Null;
    app.restart_with_integrations(&file).await;

    assert_eq!(app.consent_as("acme", "alice", "").await.status, 200);
    assert_eq!(account_of(&app, "acme").await, Value::Null);
    let alices = app.access_token("acme").await;
    // Active, and nobody can tell whose: another consent would replace a working grant.
    let page = app.consent_as("acme", "mallory", "").await;
    assert_eq!(page.status, 409, "{page:?}");
    assert_eq!(app.access_token("acme").await, alices);

    // Dead (revoked at the vendor): a consent may revive it, and says it could not verify.
    app.oidc().revoke(&alices, "access_token").await;
    let dead = app.token_reply("acme", "?force_refresh=true").await;
    assert_eq!(dead.status, 409, "{dead:?}");
    let page = app.consent_as("acme", "alice", "").await;
    assert_eq!(page.status, 200, "a dead grant is revived: {page:?}");
    let recovered = events_n(&app, "connection.recovered", 1).await;
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0]["account_verified"], json!(false));
    check_token_reply(&app.token_reply("acme", "").await, "acme");
}
