//! The edges of the consent flow: a learned state cannot cancel a consent, a consent link must
//! still be usable when its consent comes back, the loser of a race on one link gets its tokens
//! revoked, reopening a link never grows the store, and a callback from the wrong issuer is
//! refused before any code exchange (RFC 9207).

use serde_json::json;

use crate::helpers::*;

fn pending_rows(app: &TestApp) -> i64 {
    let db = rusqlite::Connection::open(app.dir.path().join("data/broker.db")).unwrap();
    db.query_row(
        "SELECT COUNT(*) FROM pending WHERE state_hash NOT LIKE 'link-%'",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

async fn consent_link(app: &TestApp, conn: &str, body: &str) -> String {
    let created = app
        .post_json(
            &format!("/api/connections/{INTEGRATION}/{conn}/consent-link"),
            body,
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    created.json()["url"].as_str().unwrap().to_owned()
}

/// Opens a consent link in `browser` and consents at the provider; the callback URL, not yet called.
async fn consent_through_link(app: &TestApp, browser: &Browser, link: &str) -> String {
    let opened = browser.get(link).await;
    assert_eq!(opened.status, 302, "the link starts a consent: {opened:?}");
    browser
        .consent(&opened.location(), &app.redirect_uri())
        .await
}

#[tokio::test]
async fn someone_who_learns_the_state_cannot_cancel_the_consent() {
    let app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let browser = Browser::new();
    let consent = app.consent_until_callback(&browser, "c1").await;

    // Another browser (no binding cookie) replays the callback URL first.
    let stranger = Browser::new().get(&consent.callback_url).await;
    assert_eq!(stranger.status, 400, "{stranger:?}");

    let page = browser.get(&consent.callback_url).await;
    assert_eq!(
        page.status, 200,
        "the real browser still completes: {page:?}"
    );
    check_token_reply(&app.token_reply("c1", "").await, "c1");
}

#[tokio::test]
async fn a_consent_link_that_expires_before_the_callback_is_refused_there() {
    let app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let link = consent_link(&app, "late", r#"{"expires_in_secs": 2}"#).await;
    let browser = Browser::new();
    let callback = consent_through_link(&app, &browser, &link).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;

    let page = browser.get(&callback).await;
    assert_eq!(page.status, 410, "the expired link is refused: {page:?}");
    assert_eq!(
        app.oidc().stats().await.authorization_codes(),
        0,
        "no code was exchanged"
    );
    let show = app
        .get(&format!("/api/connections/{INTEGRATION}/late"))
        .await;
    assert_eq!(show.status, 404, "{show:?}");
}

#[tokio::test]
async fn the_loser_of_a_race_on_one_consent_link_has_its_tokens_revoked() {
    let app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let link = consent_link(&app, "raced", "").await;
    let (first, second) = (Browser::new(), Browser::new());
    let first_callback = consent_through_link(&app, &first, &link).await;
    let second_callback = consent_through_link(&app, &second, &link).await;

    // Slow code exchanges, so that both callbacks pass every check before either uses the link up.
    let config = format!("{}/__config?token_delay_ms=800", app.oidc().issuer);
    let set = reqwest::Client::new().post(&config).send().await.unwrap();
    assert!(set.status().is_success());
    let (a, b) = tokio::join!(first.get(&first_callback), second.get(&second_callback));
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(
        statuses,
        [200, 400],
        "one wins, one finds the link used up: {a:?} {b:?}"
    );
    let winner_token = app.access_token("raced").await;

    let stats = app.oidc().stats().await;
    assert_eq!(
        stats.authorization_codes(),
        2,
        "both codes were exchanged: {stats:?}"
    );
    assert_eq!(
        stats.grants_revoked(),
        1,
        "the loser's grant was revoked at the provider: {stats:?}"
    );
    assert!(
        app.oidc().is_active(&winner_token).await,
        "the winner's grant is untouched"
    );
    assert_eq!(app.access_token("raced").await, winner_token);
}

#[tokio::test]
async fn reopening_a_consent_link_keeps_at_most_three_consents_in_progress() {
    let app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let link = consent_link(&app, "many", "").await;
    for _ in 0..10 {
        let opened = Browser::new().get(&link).await;
        assert_eq!(opened.status, 302, "{opened:?}");
    }
    assert_eq!(pending_rows(&app), 3);

    // The newest consent still completes.
    let browser = Browser::new();
    let callback = consent_through_link(&app, &browser, &link).await;
    assert_eq!(pending_rows(&app), 3);
    let page = browser.get(&callback).await;
    assert_eq!(page.status, 200, "{page:?}");
}

#[tokio::test]
async fn a_callback_from_another_issuer_is_refused_before_any_code_exchange() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let issuer = app.oidc().issuer.clone();
    let mut file = integrations_file(&issuer, DEFAULT_MARGIN_SECS);
    // The integration trusts another issuer than the one that will answer (a mix-up).
    file["integrations"][INTEGRATION]["issuer"] = json!("http://127.0.0.1:9/elsewhere");
    app.restart_with_integrations(&file).await;
    let browser = Browser::new();
    let consent = app.consent_until_callback(&browser, "mixed").await;
    assert!(
        query_param(&consent.callback_url, "iss").is_some(),
        "the provider sends iss: {}",
        consent.callback_url
    );
    let page = browser.get(&consent.callback_url).await;
    assert_eq!(page.status, 400, "{page:?}");
    assert_eq!(app.oidc().stats().await.authorization_codes(), 0);

    // With the right issuer the same flow connects.
    file["integrations"][INTEGRATION]["issuer"] = json!(issuer);
    app.restart_with_integrations(&file).await;
    app.connect("mixed").await;
    check_token_reply(&app.token_reply("mixed", "").await, "mixed");
}

#[tokio::test]
async fn a_discovered_issuer_that_always_sends_iss_must_send_it() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let issuer = app.oidc().issuer.clone();
    let file = json!({"integrations": {INTEGRATION: {
        "issuer": issuer, "client_id": "%DEMO_CLIENT_ID%", "client_secret": "%DEMO_CLIENT_SECRET%",
        "scopes": SCOPES, "refresh_margin_secs": DEFAULT_MARGIN_SECS
    }}});
    app.restart_with_integrations(&file).await;
    crate::discovery::wait_until_discovered(&app).await;
    let browser = Browser::new();
    let consent = app.consent_until_callback(&browser, "noiss").await;
    let without_iss = {
        let mut url = url::Url::parse(&consent.callback_url).unwrap();
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "iss")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.query_pairs_mut().clear().extend_pairs(kept);
        url.to_string()
    };
    let page = browser.get(&without_iss).await;
    assert_eq!(page.status, 400, "{page:?}");
    assert_eq!(app.oidc().stats().await.authorization_codes(), 0);
}

#[tokio::test]
async fn someone_who_learns_the_state_cannot_cancel_with_an_error_callback() {
    let app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let browser = Browser::new();
    let consent = app.consent_until_callback(&browser, "c1").await;

    // A stranger (no binding cookie) sends the state back with an error first.
    let forged = format!(
        "{}?state={}&error=access_denied",
        app.redirect_uri(),
        consent.state
    );
    let stranger = Browser::new().get(&forged).await;
    assert_eq!(stranger.status, 400, "{stranger:?}");
    assert_eq!(pending_rows(&app), 1, "the consent is still in progress");

    let page = browser.get(&consent.callback_url).await;
    assert_eq!(
        page.status, 200,
        "the real browser still completes: {page:?}"
    );
    check_token_reply(&app.token_reply("c1", "").await, "c1");
}
