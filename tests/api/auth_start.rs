//! auth-start builds the redirect URI from the public URL: `BROKER_PUBLIC_URL`, else the address the
//! broker actually listens on.

use crate::helpers::*;

#[tokio::test]
async fn redirect_uri_defaults_to_the_actual_port_when_broker_port_is_zero() {
    let app = TestApp::spawn(AppOptions {
        provider: false,
        port_zero: true,
        ..AppOptions::default()
    })
    .await;
    assert_ne!(app.broker().port, 0);
    let start = app.start_auth(&Browser::new(), "default").await;
    let redirect_uri = query_param(&start.location(), "redirect_uri");
    assert_eq!(
        redirect_uri,
        Some(format!(
            "http://127.0.0.1:{}/api/auth/callback",
            app.broker().port
        )),
        "{start:?}"
    );
}

#[tokio::test]
async fn redirect_uri_follows_broker_public_url() {
    let app = TestApp::spawn(AppOptions {
        provider: false,
        public_url: Some("https://broker.example.test".into()),
        ..AppOptions::default()
    })
    .await;
    let start = app.start_auth(&Browser::new(), "default").await;
    let redirect_uri = query_param(&start.location(), "redirect_uri");
    assert_eq!(
        redirect_uri.as_deref(),
        Some("https://broker.example.test/api/auth/callback"),
        "{start:?}"
    );
}

#[tokio::test]
async fn every_auth_start_issues_a_fresh_state() {
    let app = TestApp::spawn(AppOptions {
        provider: false,
        ..AppOptions::default()
    })
    .await;
    let browser = Browser::new();
    let a = query_param(&app.start_auth(&browser, "one").await.location(), "state");
    let b = query_param(&app.start_auth(&browser, "one").await.location(), "state");
    assert!(a.is_some() && b.is_some());
    assert_ne!(a, b, "state is single-use and fresh per start");
}
