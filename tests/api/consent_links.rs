//! Consent links die with their connection and can be listed and ended (issue 17, item 4): a link
//! created before `DELETE /api/connections/…` cannot re-create the connection, an operator sees a
//! connection's outstanding links (never their tokens) and ends one through the API or the status
//! page, on both stores.

use serde_json::json;

use crate::helpers::*;

async fn link(app: &TestApp, conn: &str, body: &str) -> serde_json::Value {
    let created = app
        .post_json(
            &format!("/api/connections/{INTEGRATION}/{conn}/consent-link"),
            body,
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    created.json()
}

async fn links_die_with_their_connection(store: Store) {
    let app = TestApp::spawn(AppOptions::on(store)).await;
    app.connect("gone").await;
    let later = link(&app, "gone", "").await;
    let url = later["url"].as_str().unwrap().to_owned();
    // A consent through another link is in progress when the connection is deleted.
    let racing = link(&app, "gone", "").await;
    let browser = Browser::new();
    let opened = browser.get(racing["url"].as_str().unwrap()).await;
    assert_eq!(opened.status, 302);
    let callback = browser
        .consent(&opened.location(), &app.redirect_uri())
        .await;

    let deleted = app
        .call(
            reqwest::Method::DELETE,
            &format!("/api/connections/{INTEGRATION}/gone"),
            None,
            Key::Configured,
        )
        .await;
    assert_eq!(deleted.status, 204, "{deleted:?}");

    let opened = Browser::new().get(&url).await;
    assert_eq!(
        opened.status, 410,
        "a link of a deleted connection: {opened:?}"
    );
    let page = browser.get(&callback).await;
    assert_ne!(
        page.status, 200,
        "the consent in progress ends too: {page:?}"
    );
    let shown = app
        .get(&format!("/api/connections/{INTEGRATION}/gone"))
        .await;
    assert_eq!(shown.status, 404, "not re-created: {shown:?}");
    let listed = app
        .get(&format!(
            "/api/connections/{INTEGRATION}/gone/consent-links"
        ))
        .await;
    assert_eq!(listed.json()["consent_links"], json!([]), "{listed:?}");
}

#[tokio::test]
async fn links_die_with_their_connection_sqlite() {
    links_die_with_their_connection(Store::Sqlite).await;
}

#[tokio::test]
async fn links_die_with_their_connection_table() {
    links_die_with_their_connection(Store::Table).await;
}

async fn links_are_listed_and_ended(store: Store) {
    let app = TestApp::spawn(AppOptions::on(store)).await;
    let plain = link(&app, "acme", "").await;
    let changing = link(&app, "acme", r#"{"allow_account_change": true}"#).await;
    // One consent in progress through the first link.
    let opened = Browser::new().get(plain["url"].as_str().unwrap()).await;
    assert_eq!(opened.status, 302);

    let path = format!("/api/connections/{INTEGRATION}/acme/consent-links");
    let listed = app.get(&path).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    for created in [&plain, &changing] {
        let token = created["url"].as_str().unwrap().split("t=").nth(1).unwrap();
        assert!(
            !listed.body.contains(token),
            "never a link's token: {listed:?}"
        );
    }
    let v = listed.json();
    let items = v["consent_links"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{v}");
    let find = |id: &serde_json::Value| {
        items
            .iter()
            .find(|l| l["id"] == *id)
            .unwrap_or_else(|| panic!("{id} listed: {v}"))
            .clone()
    };
    let p = find(&plain["id"]);
    assert_eq!(p["consents_in_progress"], json!(1), "{p}");
    assert_eq!(p["allow_account_change"], json!(false));
    assert_eq!(p["expires_at"], plain["expires_at"]);
    assert!(p["created_at"].is_string(), "{p}");
    assert_eq!(find(&changing["id"])["allow_account_change"], json!(true));

    let end_path = format!("{path}/{}", plain["id"].as_str().unwrap());
    let ended = app
        .call(reqwest::Method::DELETE, &end_path, None, Key::Configured)
        .await;
    assert_eq!(ended.status, 204, "{ended:?}");
    let opened = Browser::new().get(plain["url"].as_str().unwrap()).await;
    assert_eq!(opened.status, 410, "an ended link: {opened:?}");
    let again = app
        .call(reqwest::Method::DELETE, &end_path, None, Key::Configured)
        .await;
    assert_eq!(again.status, 404, "{again:?}");
    assert_eq!(again.json()["error"], json!("consent_link_not_found"));
    let left = app.get(&path).await.json();
    assert_eq!(left["consent_links"].as_array().unwrap().len(), 1, "{left}");
    // The other link still works.
    let page = app
        .consent_through_link_as(changing["url"].as_str().unwrap(), "alice")
        .await;
    assert_eq!(page.status, 200, "{page:?}");
}

#[tokio::test]
async fn links_are_listed_and_ended_sqlite() {
    links_are_listed_and_ended(Store::Sqlite).await;
}

#[tokio::test]
async fn links_are_listed_and_ended_table() {
    links_are_listed_and_ended(Store::Table).await;
}

#[tokio::test]
async fn the_status_page_lists_a_connections_links_and_ends_one() {
    let app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    app.connect("acme").await;
    let created = link(&app, "acme", "").await;
    let id = created["id"].as_str().unwrap().to_owned();
    let url = app.url(&format!(
        "/api/status?code={}",
        app.broker().key().expect("a standalone broker has a key")
    ));
    let browser = Browser::new();
    let page = browser.get(&url).await;
    assert_eq!(page.status, 200);
    let forms = parse_forms(&page.body);
    let end = forms
        .iter()
        .find(|f| {
            f.fields
                .iter()
                .any(|(k, v)| k == "action" && v == "end_link")
        })
        .unwrap_or_else(|| panic!("an end button: {}", page.body));
    assert!(
        end.fields.iter().any(|(k, v)| k == "link" && *v == id),
        "{end:?}"
    );
    let token = created["url"].as_str().unwrap().split("t=").nth(1).unwrap();
    assert!(
        !page.body.contains(token),
        "never a link's token on the page"
    );

    let done = browser.post_form(&url, &end.fields).await;
    assert_eq!(done.status, 200, "{done:?}");
    assert!(done.body.contains("Ended a consent link"), "{}", done.body);
    let opened = Browser::new().get(created["url"].as_str().unwrap()).await;
    assert_eq!(opened.status, 410);
}
