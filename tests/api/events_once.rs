//! Events about states that outlast one call are told once: an integration
//! whose client credentials the vendor rejects (`integration.misconfigured`,
//! again only after it worked in between), and a connection whose refreshes
//! keep failing transiently (`connection.refresh_failing`, after the
//! configured time).

use serde_json::Value;

use crate::helpers::*;
use crate::webhooks::{assert_signed, with_webhooks, Receiver};

fn set_env(app: &mut TestApp, name: &str, value: &str) {
    app.spec.env.retain(|(k, _)| k != name);
    app.spec.env.push((name.into(), value.into()));
}

fn of_type(receiver: &Receiver, kind: &str) -> Vec<Value> {
    receiver
        .requests()
        .iter()
        .filter(|r| r.status == 200 && r.event_type() == kind)
        .map(|r| r.json())
        .collect()
}

#[tokio::test]
async fn rejected_client_credentials_are_told_once_per_breakage() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let receiver = Receiver::start(&[], 0).await;
    with_webhooks(
        &mut app,
        &[&receiver.url],
        &[("BROKER_REFRESH_COOLDOWN_SECS", "0")],
    )
    .await;
    app.connect("c1").await;
    app.connect("c2").await;

    // The client secret is rotated at the vendor but not here.
    set_env(&mut app, "DEMO_CLIENT_SECRET", "not-the-secret");
    app.restart_with_margin(DEFAULT_MARGIN_SECS).await;
    for conn in ["c1", "c2", "c1"] {
        let reply = app.token_reply(conn, "?force_refresh=true").await;
        assert_eq!(reply.error_code(), "integration_misconfigured", "{reply:?}");
    }
    let first = receiver.delivered("integration.misconfigured").await;
    assert_signed(&first);
    let e = first.json();
    assert_eq!(e["integration"], INTEGRATION);
    assert_eq!(e["error"], "invalid_client", "{e}");
    assert!(e["consent_link"].is_null(), "{e}");

    // Fixed: a refresh works again; broken again: told again.
    set_env(&mut app, "DEMO_CLIENT_SECRET", CLIENT_SECRET);
    app.restart_with_margin(DEFAULT_MARGIN_SECS).await;
    check_token_reply(&app.token_reply("c1", "?force_refresh=true").await, "c1");
    assert_eq!(
        of_type(&receiver, "integration.misconfigured").len(),
        1,
        "three rejected calls, one event"
    );
    set_env(&mut app, "DEMO_CLIENT_SECRET", "rotated-again");
    app.restart_with_margin(DEFAULT_MARGIN_SECS).await;
    let reply = app.token_reply("c2", "?force_refresh=true").await;
    assert_eq!(reply.error_code(), "integration_misconfigured", "{reply:?}");
    receiver
        .wait_until("a second integration.misconfigured", |r| {
            r.iter()
                .filter(|x| x.status == 200 && x.event_type() == "integration.misconfigured")
                .count()
                == 2
        })
        .await;
}

#[tokio::test]
async fn transient_failures_longer_than_the_threshold_are_told_once() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let receiver = Receiver::start(&[], 0).await;
    with_webhooks(
        &mut app,
        &[&receiver.url],
        &[
            ("BROKER_REFRESH_COOLDOWN_SECS", "0"),
            ("BROKER_REFRESH_FAILING_SECS", "2"),
        ],
    )
    .await;
    app.connect("c1").await;
    let good = integrations_file(&app.oidc().issuer, DEFAULT_MARGIN_SECS);
    // The vendor's token endpoint stops answering (nothing listens there).
    let mut down = good.clone();
    down["integrations"][INTEGRATION]["token_url"] = Value::from("http://127.0.0.1:9/token");
    app.restart_with_integrations(&down).await;
    let reply = app.token_reply("c1", "?force_refresh=true").await;
    assert_eq!(reply.status, 502, "{reply:?}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        of_type(&receiver, "connection.refresh_failing").is_empty(),
        "one failure is not yet an event"
    );
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    for _ in 0..2 {
        let reply = app.token_reply("c1", "?force_refresh=true").await;
        assert_eq!(reply.status, 502, "{reply:?}");
    }
    let failing = receiver.delivered("connection.refresh_failing").await;
    let e = failing.json();
    assert_eq!(e["connection"], "c1");
    assert_eq!(e["status"], "active");
    assert_eq!(e["error"], "unreachable", "{e}");

    // Recovered: the next failing spell is told again.
    app.restart_with_integrations(&good).await;
    check_token_reply(&app.token_reply("c1", "?force_refresh=true").await, "c1");
    assert_eq!(of_type(&receiver, "connection.refresh_failing").len(), 1);
    app.restart_with_integrations(&down).await;
    app.token_reply("c1", "?force_refresh=true").await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    app.token_reply("c1", "?force_refresh=true").await;
    receiver
        .wait_until("a second connection.refresh_failing", |r| {
            r.iter()
                .filter(|x| x.status == 200 && x.event_type() == "connection.refresh_failing")
                .count()
                == 2
        })
        .await;
}

#[tokio::test]
async fn a_breakage_is_told_again_after_a_fix_even_when_the_failed_connection_is_gone() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let receiver = Receiver::start(&[], 0).await;
    with_webhooks(
        &mut app,
        &[&receiver.url],
        &[("BROKER_REFRESH_COOLDOWN_SECS", "0")],
    )
    .await;
    app.connect("c1").await;
    app.connect("c2").await;
    set_env(&mut app, "DEMO_CLIENT_SECRET", "not-the-secret");
    app.restart_with_margin(DEFAULT_MARGIN_SECS).await;
    let reply = app.token_reply("c1", "?force_refresh=true").await;
    assert_eq!(reply.error_code(), "integration_misconfigured", "{reply:?}");
    receiver.delivered("integration.misconfigured").await;
    // The only connection that saw the rejection is deleted; the secret is fixed; another
    // connection (which never failed) refreshes; then the secret breaks again.
    let reply = app
        .call(
            reqwest::Method::DELETE,
            &format!("/api/connections/{INTEGRATION}/c1?revoke=false"),
            None,
            Key::Configured,
        )
        .await;
    assert_eq!(reply.status, 204, "{reply:?}");
    set_env(&mut app, "DEMO_CLIENT_SECRET", CLIENT_SECRET);
    app.restart_with_margin(DEFAULT_MARGIN_SECS).await;
    check_token_reply(&app.token_reply("c2", "?force_refresh=true").await, "c2");
    set_env(&mut app, "DEMO_CLIENT_SECRET", "broken-again");
    app.restart_with_margin(DEFAULT_MARGIN_SECS).await;
    let reply = app.token_reply("c2", "?force_refresh=true").await;
    assert_eq!(reply.error_code(), "integration_misconfigured", "{reply:?}");
    receiver
        .wait_until("a second integration.misconfigured", |r| {
            r.iter()
                .filter(|x| x.status == 200 && x.event_type() == "integration.misconfigured")
                .count()
                == 2
        })
        .await;
}

/// oidc-provider issues refresh tokens (or not) from now on.
async fn issue_refresh_tokens(app: &TestApp, issue: bool) {
    let url = format!(
        "{}/__config?issue_refresh_token={}",
        app.oidc().issuer,
        u8::from(issue)
    );
    let resp = reqwest::Client::new().post(url).send().await.unwrap();
    assert!(resp.status().is_success());
}

#[tokio::test]
async fn a_consent_without_a_refresh_token_is_told_and_a_new_one_with_it_recovers() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let receiver = Receiver::start(&[], 0).await;
    with_webhooks(&mut app, &[&receiver.url], &[]).await;
    issue_refresh_tokens(&app, false).await;
    app.connect("nort").await;
    let told = receiver.delivered("connection.no_refresh_token").await;
    assert_signed(&told);
    let e = told.json();
    assert_eq!(
        (e["connection"].as_str(), e["status"].as_str()),
        (Some("nort"), Some("no_refresh_token")),
        "{e}"
    );
    let created = receiver.delivered("connection.created").await.json();
    assert_eq!(created["status"], "no_refresh_token", "{created}");

    issue_refresh_tokens(&app, true).await;
    app.connect("nort").await;
    let recovered = receiver.delivered("connection.recovered").await.json();
    assert_eq!(recovered["status"], "active", "{recovered}");
    assert_eq!(of_type(&receiver, "connection.no_refresh_token").len(), 1);
}
