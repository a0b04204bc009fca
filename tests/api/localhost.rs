//! No localhost trap: a consent started at another name of the broker than its public URL's host
//! (`localhost` for `127.0.0.1`) would set the browser-binding cookie on that name, and the vendor
//! sends the browser back to the public URL, where the cookie is not sent. Standalone, the broker
//! first redirects such a start to the public URL (same path and query, no cookie); under the
//! Functions host it cannot, and the cookie-mismatch page names both hosts. The whole consent
//! started at localhost in Chromium is in `browser_consent.rs`.

use crate::helpers::*;

fn at_localhost(url: &str) -> String {
    url.replacen("http://127.0.0.1:", "http://localhost:", 1)
}

#[tokio::test]
async fn standalone_a_start_at_localhost_is_sent_to_the_public_url_before_any_cookie() {
    let app = TestApp::spawn(AppOptions {
        provider: false,
        ..AppOptions::default()
    })
    .await;
    let start = app.start_url("c1");
    let browser = Browser::new();
    let reply = browser.get(&at_localhost(&start)).await;
    assert_eq!(reply.status, 302, "{reply:?}");
    assert_eq!(
        reply.location(),
        start,
        "same path and query, at the public URL"
    );
    assert!(
        reply.header_all("set-cookie").is_empty(),
        "no cookie before the redirect: {reply:?}"
    );
    // At the public URL it starts the consent as always: to the vendor, with the cookie.
    let reply = browser.get(&reply.location()).await;
    assert_eq!(reply.status, 302);
    assert!(
        reply.location().starts_with("http://127.0.0.1:9/auth"),
        "{reply:?}"
    );
    assert!(!reply.header_all("set-cookie").is_empty(), "{reply:?}");

    // A consent link opened at localhost goes the same way.
    let link = app
        .call(
            reqwest::Method::POST,
            "/api/connections/demo/c2/consent-link",
            None,
            Key::Configured,
        )
        .await
        .json()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let reply = Browser::new().get(&at_localhost(&link)).await;
    assert_eq!(reply.status, 302, "{reply:?}");
    assert_eq!(reply.location(), link);
    assert!(reply.header_all("set-cookie").is_empty(), "{reply:?}");
}

#[tokio::test]
async fn under_the_functions_host_the_cookie_mismatch_page_names_both_hosts() {
    let mut app = TestApp::spawn(AppOptions::default()).await;
    app.spec.env.push((
        "FUNCTIONS_CUSTOMHANDLER_PORT".into(),
        app.spec.port.to_string(),
    ));
    app.restart_with_margin(DEFAULT_MARGIN_SECS).await;
    let port = app.broker().port;
    let browser = Browser::new();
    // The host does not redirect (it owns the front door): the consent starts at localhost.
    let start = at_localhost(&app.url("/api/auth/start/demo?connection=c1"));
    let reply = browser.get(&start).await;
    assert_eq!(reply.status, 302, "{reply:?}");
    let callback = browser
        .consent(&reply.location(), &app.redirect_uri())
        .await;
    assert!(callback.starts_with("http://127.0.0.1:"), "{callback}");
    let page = browser.get(&callback).await;
    assert_eq!(page.status, 400, "{page:?}");
    let text = html_unescape(&page.body);
    assert!(
        text.contains(&format!("started on <code>localhost:{port}</code>"))
            && text.contains(&format!("came back to <code>127.0.0.1:{port}</code>")),
        "names both hosts: {text}"
    );

    // A consent in one browser that simply lost its cookie keeps the general page.
    let reply = Browser::new()
        .get(&app.url("/api/auth/start/demo?connection=c2"))
        .await;
    let callback = Browser::new()
        .consent(&reply.location(), &app.redirect_uri())
        .await;
    let page = Browser::new().get(&callback).await;
    assert_eq!(page.status, 400);
    assert!(
        page.body.contains("started in a different browser"),
        "{}",
        page.body
    );
}

#[tokio::test]
async fn behind_a_proxy_a_start_at_a_loopback_name_is_not_redirected() {
    // A public URL elsewhere: the broker sits behind a TLS proxy, which may send the upstream's
    // loopback name as Host (nginx's default). Redirecting would loop; the consent starts as always.
    let app = TestApp::spawn(AppOptions {
        provider: false,
        public_url: Some("https://broker.example.test".into()),
        ..AppOptions::default()
    })
    .await;
    let reply = Browser::new().get(&app.start_url("c1")).await;
    assert_eq!(reply.status, 302, "{reply:?}");
    assert!(
        reply.location().starts_with("http://127.0.0.1:9/auth"),
        "{reply:?}"
    );
}
