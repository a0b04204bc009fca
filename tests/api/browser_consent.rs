//! Consent in a real browser: Debian's Chromium, headless, driven by playwright-core
//! (`tests/support/browser-consent.mjs`) from the auth-start URL through oidc-provider's login and
//! consent screens back to the broker's page (the browser fixture is `chromium` in broker-testkit).
//! Screenshots go to `target/ci-artifacts/`.

use std::path::Path;
use std::time::Instant;

use serde_json::Value;

use crate::helpers::*;

#[track_caller]
fn assert_screenshot(path: &Path) {
    let bytes = std::fs::read(path)
        .unwrap_or_else(|e| panic!("screenshot {} is missing: {e}", path.display()));
    assert!(
        bytes.len() > 1000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "screenshot {} is a non-empty PNG ({} bytes)",
        path.display(),
        bytes.len()
    );
    println!("screenshot: {} ({} bytes)", path.display(), bytes.len());
}

/// The page arrived with the hardening headers and the browser applied them without complaint.
#[track_caller]
fn assert_hardened_page(run: &BrowserRun, base_url: &str) {
    let csp = run.header("content-security-policy");
    assert!(csp.starts_with("default-src 'none'"), "CSP: {csp:?}");
    assert!(csp.contains("frame-ancestors 'none'"), "CSP: {csp:?}");
    assert_eq!(run.header("x-frame-options"), "DENY");
    assert_eq!(run.header("referrer-policy"), "no-referrer");
    assert!(run.header("content-type").starts_with("text/html"));
    assert!(run.header("cache-control").contains("no-store"));
    // A CSP violation (e.g. a style the policy does not allow) shows up as a console error; the
    // page's own error status is logged too, and is expected on an error page.
    let own_status = format!("the server responded with a status of {}", run.status());
    let complaints: Vec<&Value> = run.raw["console"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["url"].as_str().is_some_and(|u| u.starts_with(base_url)))
        .filter(|m| !m["text"].as_str().is_some_and(|t| t.contains(&own_status)))
        .collect();
    assert!(
        complaints.is_empty(),
        "the browser reported nothing on the broker's page: {complaints:?}"
    );
    let html = run.str("html").to_ascii_lowercase();
    for external in ["<script", "src=", "href=\"http", "@import", "url("] {
        assert!(
            !html.contains(external),
            "the page loads nothing ({external:?}): {html}"
        );
    }
    assert!(html.contains("<html lang=\"en\""), "{html}");
    assert!(html.contains("<main") && html.contains("<h1>"), "{html}");
}

#[tokio::test]
async fn a_person_consents_in_chromium_and_lands_on_the_success_page() {
    let started = Instant::now();
    let app = TestApp::spawn(AppOptions {
        api_key: Some(format!("key-{}", random_hex(16))),
        ..AppOptions::on(Store::Table)
    })
    .await;
    let conn = "browser-acme";
    let screenshot = artifacts_dir().join("consent-success.png");
    let _ = std::fs::remove_file(&screenshot);

    let run = run_browser(app.start_url(conn), "success", screenshot.clone()).await;

    let base = app.base_url();
    let url = run.str("url");
    assert!(
        url.starts_with(&app.redirect_uri()),
        "the browser ended on the broker's callback: {url}"
    );
    assert_eq!(run.status(), 200, "success page status: {}", run.raw);
    assert!(
        run.str("title").starts_with("Connected"),
        "title: {:?}",
        run.str("title")
    );
    assert_hardened_page(&run, &base);
    assert_screenshot(&screenshot);

    let text = run.str("text");
    let html = run.str("html");
    assert!(text.contains(INTEGRATION), "names the integration: {text}");
    assert!(text.contains(conn), "names the connection: {text}");
    assert!(
        text.contains(&format!("GET {base}/api/token/{INTEGRATION}/{conn}")),
        "gives the exact token route: {text}"
    );
    assert!(
        text.contains(&format!("token/{INTEGRATION}/{conn}")),
        "gives the ADF function name: {text}"
    );
    assert!(
        text.contains("x-functions-key"),
        "says to send a function key: {text}"
    );

    // The token route now works; its scope is what the page listed, and no token is on the page.
    let token = app.token(conn).await;
    let scope = token["scope"].as_str().unwrap();
    assert!(!scope.is_empty(), "{token}");
    for s in scope.split(' ') {
        assert!(
            html.contains(&format!("<code>{s}</code>")),
            "the page lists the granted scope {s:?}: {html}"
        );
    }
    let access = token["access_token"].as_str().unwrap();
    let code = query_param(&url, "code").expect("the callback URL had a code");
    for secret in [access, code.as_str(), CLIENT_SECRET] {
        assert!(
            !html.contains(secret) && !text.contains(secret),
            "the page shows no token, code or secret"
        );
    }
    let api_key = app.spec.api_key.clone().unwrap();
    assert!(!html.contains(&api_key), "the page shows no API key");

    println!(
        "browser consent (success): script {:?} (steps {}), whole test {:?}",
        run.wall,
        run.raw["steps"],
        started.elapsed()
    );
}

#[tokio::test]
async fn a_person_who_cancels_at_the_vendor_lands_on_the_error_page() {
    let started = Instant::now();
    let app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let conn = "browser-abort";
    let screenshot = artifacts_dir().join("consent-abort.png");
    let _ = std::fs::remove_file(&screenshot);

    let run = run_browser(app.start_url(conn), "abort", screenshot.clone()).await;

    let url = run.str("url");
    assert!(
        url.starts_with(&app.redirect_uri()),
        "the browser ended on the broker's callback: {url}"
    );
    assert_eq!(
        query_param(&url, "error").as_deref(),
        Some("access_denied"),
        "{url}"
    );
    assert_eq!(run.status(), 400, "error page status: {}", run.raw);
    assert!(
        run.str("title").starts_with("Access was not granted"),
        "title: {:?}",
        run.str("title")
    );
    let text = run.str("text");
    assert!(text.contains("Access was not granted"), "{text}");
    assert!(text.contains("access_denied"), "names the error: {text}");
    assert!(
        text.contains("declined or cancelled"),
        "says what happened: {text}"
    );
    assert!(
        text.contains("Open the consent link again"),
        "says what to do: {text}"
    );
    assert_hardened_page(&run, &app.base_url());
    assert_screenshot(&screenshot);

    let missing = app.token_reply(conn, "").await;
    assert_eq!(missing.status, 404, "nothing was stored: {missing:?}");

    println!(
        "browser consent (abort): script {:?} (steps {}), whole test {:?}",
        run.wall,
        run.raw["steps"],
        started.elapsed()
    );
}

/// No localhost trap: a person who opens the consent at `localhost` (as the Core Tools docs do)
/// while the public URL says `127.0.0.1` completes it in Chromium: the broker sends the browser to
/// the public URL before setting its cookie, so the vendor's callback finds it.
#[tokio::test]
async fn a_consent_started_at_localhost_completes_in_chromium() {
    let app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let conn = "browser-localhost";
    let start = app
        .start_url(conn)
        .replacen("http://127.0.0.1:", "http://localhost:", 1);
    assert!(start.starts_with("http://localhost:"), "{start}");
    let screenshot = artifacts_dir().join("consent-from-localhost.png");
    let _ = std::fs::remove_file(&screenshot);

    let run = run_browser(start, "success", screenshot.clone()).await;

    assert!(
        run.str("url").starts_with(&app.redirect_uri()),
        "the browser ended on the broker's callback: {}",
        run.raw
    );
    assert_eq!(run.status(), 200, "success page: {}", run.raw);
    assert!(
        run.str("title").starts_with("Connected"),
        "title: {:?}",
        run.str("title")
    );
    assert_screenshot(&screenshot);
    app.token(conn).await;
}
