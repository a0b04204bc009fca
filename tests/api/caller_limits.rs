//! No caller can do more than its job (issue 17, items 6-7): someone hammering a victim's client id
//! with wrong secrets cannot lock the victim's correct secret out; `X-Forwarded-For` is believed
//! only from trusted proxies, so the per-source limit can be neither dodged nor aimed; forced
//! refreshes of one connection are budgeted, and pipeline credentials cannot force at all.

use base64::Engine as _;
use serde_json::Value;

use crate::helpers::*;

const ENDPOINT: &str = "/api/oauth2/token";

async fn token_endpoint(app: &TestApp, id: &str, secret: &str, forwarded: Option<&str>) -> Reply {
    let mut req = reqwest::Client::new().post(app.url(ENDPOINT)).form(&[
        ("grant_type", "client_credentials"),
        ("client_id", id),
        ("client_secret", secret),
    ]);
    if let Some(f) = forwarded {
        req = req.header("X-Forwarded-For", f);
    }
    Reply::from(req.send().await.unwrap()).await
}

fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

#[tokio::test]
async fn a_correct_secret_works_while_its_client_id_is_hammered() {
    let app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    app.connect("acme").await;
    let (id, secret) = credential(&app, "acme").await;
    let mut limited = 0;
    for _ in 0..15 {
        let r = token_endpoint(&app, &id, "pcs_wrong", None).await;
        assert!(matches!(r.status, 401 | 429), "{r:?}");
        limited += usize::from(r.status == 429);
    }
    assert!(limited > 0, "wrong secrets past the limit get 429");
    let ok = token_endpoint(&app, &id, &secret, None).await;
    assert_eq!(ok.status, 200, "the right secret is not locked out: {ok:?}");
    // The Basic token route too.
    let route = reqwest::Client::new()
        .get(app.url(&TestApp::token_path("acme")))
        .header("Authorization", basic(&id, &secret))
        .send()
        .await
        .unwrap();
    assert_eq!(route.status().as_u16(), 200);
}

/// Distinct well-formed unknown client ids, so only the per-source limit can stop them.
fn unknown_id(n: usize) -> String {
    format!("pc_{n:0>24}")
}

#[tokio::test]
async fn x_forwarded_for_cannot_dodge_the_per_source_limit() {
    let app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let mut statuses = Vec::new();
    for n in 0..40 {
        let spoofed = format!("198.51.100.{n}");
        let r = token_endpoint(&app, &unknown_id(n), "pcs_x", Some(&spoofed)).await;
        statuses.push(r.status);
    }
    assert!(
        statuses[30..].iter().all(|s| *s == 429),
        "the peer is the source whatever X-Forwarded-For says: {statuses:?}"
    );
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    app.stop_broker();
    app.spec
        .env
        .push(("BROKER_TRUSTED_PROXIES".into(), "127.0.0.1/32, ::1".into()));
    app.start_broker().await;
    // Behind the proxy, each client is counted apart ...
    for n in 0..40 {
        let client = format!("198.51.100.{n}");
        let r = token_endpoint(&app, &unknown_id(n), "pcs_x", Some(&client)).await;
        assert_eq!(r.status, 401, "client {n}: {r:?}");
    }
    // ... and one client is limited whatever it prepends itself.
    let mut statuses = Vec::new();
    for n in 0..35 {
        let forged = format!("192.0.2.{n}, 203.0.113.7");
        let r = token_endpoint(&app, &unknown_id(100 + n), "pcs_x", Some(&forged)).await;
        statuses.push(r.status);
    }
    assert!(statuses[30..].iter().all(|s| *s == 429), "{statuses:?}");
}

async fn refreshes(app: &TestApp) -> u64 {
    app.oidc().stats().await.refreshes()
}

#[tokio::test]
async fn forced_refreshes_are_budgeted_per_connection_and_pipelines_cannot_force() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    app.stop_broker();
    app.spec
        .env
        .push(("BROKER_MIN_FORCED_REFRESH_SECS".into(), "3".into()));
    app.start_broker().await;
    app.connect("acme").await;
    let (id, secret) = credential(&app, "acme").await;
    // Inside the window after the consent: nobody forces a refresh.
    for q in ["?force_refresh=true", "?min_validity_secs=4294967295"] {
        for _ in 0..5 {
            check_token_reply(&app.token_reply("acme", q).await, "acme");
        }
    }
    assert_eq!(refreshes(&app).await, 0, "inside the budget window");

    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    // A pipeline credential's force_refresh is ignored even outside the window.
    let piped = reqwest::Client::new()
        .get(app.url(&format!(
            "{}?force_refresh=true&min_validity_secs=86400",
            TestApp::token_path("acme")
        )))
        .header("Authorization", basic(&id, &secret))
        .send()
        .await
        .unwrap();
    assert_eq!(piped.status().as_u16(), 200);
    assert_eq!(refreshes(&app).await, 0, "pipelines cannot force");

    // 20 admin callers outside the window: one refresh, every one served.
    let mut tokens = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let v: Value = check_token_reply(
            &app.token_reply("acme", "?force_refresh=true").await,
            "acme",
        );
        tokens.insert(v["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(refreshes(&app).await, 1, "one forced refresh per window");
    assert_eq!(
        tokens.len(),
        1,
        "every caller got the newest token: {tokens:?}"
    );
}

#[tokio::test]
async fn under_the_functions_host_the_front_ends_client_ip_is_the_source() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    // As the Functions host starts it (the token endpoint is anonymous at the host).
    app.spec.env.push((
        "FUNCTIONS_CUSTOMHANDLER_PORT".into(),
        app.spec.port.to_string(),
    ));
    app.restart_with_margin(DEFAULT_MARGIN_SECS).await;
    let post = |client_ip: &str, forwarded: String, n: usize| {
        let req = reqwest::Client::new()
            .post(app.url(ENDPOINT))
            .header("client-ip", client_ip)
            .header("X-Forwarded-For", forwarded)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", unknown_id(n).as_str()),
                ("client_secret", "pcs_x"),
            ]);
        async move { Reply::from(req.send().await.unwrap()).await.status }
    };
    // One client behind the front end, whatever it writes into X-Forwarded-For, is limited ...
    let mut statuses = Vec::new();
    for n in 0..40 {
        statuses.push(post("203.0.113.7:50000", format!("198.51.100.{n}"), n).await);
    }
    assert!(
        statuses[30..].iter().all(|s| *s == 429),
        "client-ip is the source under the host: {statuses:?}"
    );
    // ... and another client is not.
    assert_eq!(
        post("203.0.113.8:50001", "203.0.113.7".into(), 200).await,
        401,
        "another client-ip is another source"
    );
}
