//! `GET /api/status`: what operators and monitors see. The JSON answer counts connections by
//! status per integration and lists those needing attention, most urgent first; the HTML page
//! shows the same in the same order, in Chromium, with buttons that create a working consent
//! link and revoke-and-delete behind a confirmation. `/api/health` stays cheap and anonymous.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

/// Makes `conn` a dead grant: the vendor revokes it, the next refresh gets invalid_grant.
async fn kill(app: &TestApp, conn: &str) {
    let token = app.access_token(conn).await;
    app.oidc().revoke(&token, "access_token").await;
    let reply = app.token_reply(conn, "?force_refresh=true").await;
    assert_eq!(reply.status, 409, "{reply:?}");
}

/// A GET with the configured key and the given Accept header.
async fn get_with_accept(app: &TestApp, path: &str, accept: &str) -> Reply {
    let mut req = reqwest::Client::new()
        .get(app.url(path))
        .header("Accept", accept);
    if let Some(k) = app.broker().key() {
        req = req.header("x-functions-key", k);
    }
    let reply = Reply::from(req.send().await.unwrap()).await;
    assert_no_undocumented_5xx(&reply, path);
    reply
}

fn status_of(v: &Value, conn: &str) -> Option<String> {
    v["attention"]
        .as_array()?
        .iter()
        .find(|a| a["connection"] == json!(conn))
        .and_then(|a| a["status"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn the_status_json_counts_by_status_and_lists_the_dead_grant_first() {
    let app = TestApp::spawn(AppOptions {
        api_key: Some(format!("key-{}", random_hex(16))),
        ..AppOptions::on(Store::Table)
    })
    .await;
    for conn in ["alpha", "beta", "dead-one"] {
        app.connect(conn).await;
    }
    kill(&app, "dead-one").await;

    let reply = app.get("/api/status?format=json").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.is_json() && reply.has_no_store(), "{reply:?}");
    let v = reply.json();
    assert_eq!(v["counts"]["active"], json!(2), "{v}");
    assert_eq!(v["counts"]["reauthorization_required"], json!(1), "{v}");
    assert_eq!(v["counts"]["no_refresh_token"], json!(0), "{v}");
    assert_eq!(
        v["by_integration"][INTEGRATION]["reauthorization_required"],
        json!(1),
        "{v}"
    );
    let attention = v["attention"].as_array().unwrap();
    assert_eq!(attention.len(), 1, "{v}");
    let dead = &attention[0];
    assert_eq!(dead["integration"], json!(INTEGRATION), "{v}");
    assert_eq!(dead["connection"], json!("dead-one"), "{v}");
    assert_eq!(dead["status"], json!("reauthorization_required"), "{v}");
    assert!(
        dead["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("invalid_grant")),
        "{v}"
    );
    for field in ["refreshed_at", "expires_at"] {
        assert!(
            dead[field].as_str().is_some_and(|t| t.ends_with('Z')),
            "{field}: {v}"
        );
    }

    // Accept: application/json gives the same; a browser's Accept gets the page.
    let with_accept = get_with_accept(&app, "/api/status", "application/json").await;
    assert_eq!(with_accept.status, 200, "{with_accept:?}");
    assert_eq!(with_accept.json(), v);
    let page = get_with_accept(
        &app,
        "/api/status",
        "text/html,application/xhtml+xml,*/*;q=0.8",
    )
    .await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.is_html(), "{page:?}");
    let dead_at = page
        .body
        .find("dead-one")
        .expect("the page lists the dead grant");
    for healthy in ["alpha", "beta"] {
        let at = page.body.find(&format!("{healthy} <span")).unwrap();
        assert!(dead_at < at, "the dead grant comes first: {}", page.body);
    }

    // Protected like the connections routes; health stays anonymous and cheap.
    for path in ["/api/status", "/api/status?format=json"] {
        let anonymous = app.call(Method::GET, path, None, Key::None).await;
        assert_eq!(anonymous.status, 401, "{path}: {anonymous:?}");
        assert!(!anonymous.body.contains("dead-one"), "{anonymous:?}");
    }
    let health = app.health().await;
    assert_eq!(health.status, 200, "{health:?}");
    assert!(!health.body.contains("dead-one"), "{health:?}");

    // Another connection dies: it joins the list, ordered by integration then connection.
    kill(&app, "alpha").await;
    let v = app.get("/api/status?format=json").await.json();
    let order: Vec<&str> = v["attention"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["connection"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["alpha", "dead-one"], "{v}");
    assert_eq!(
        status_of(&v, "alpha").as_deref(),
        Some("reauthorization_required")
    );
}

#[tokio::test]
async fn rejected_credentials_read_as_misconfigured_and_an_unreachable_vendor_as_failing() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    for conn in ["creds", "down", "dead", "fine"] {
        app.connect(conn).await;
    }
    kill(&app, "dead").await;

    // The vendor rejects the client secret (invalid_client).
    let issuer = app.oidc().issuer.clone();
    let mut file = integrations_file(&issuer, DEFAULT_MARGIN_SECS);
    file["integrations"][INTEGRATION]["client_secret"] = json!("not-the-secret");
    app.restart_with_integrations(&file).await;
    let reply = app.token_reply("creds", "?force_refresh=true").await;
    assert_eq!(reply.error_code(), "integration_misconfigured", "{reply:?}");
    let v = app.get("/api/status?format=json").await.json();
    assert_eq!(
        status_of(&v, "creds").as_deref(),
        Some("misconfigured"),
        "{v}"
    );
    // Read from the failure's stored kind, not its text: reworded text is still misconfigured.
    let db = rusqlite::Connection::open(app.dir.path().join("data/broker.db")).unwrap();
    let kind: String = db
        .query_row(
            "SELECT last_error_kind FROM connections WHERE connection = 'creds'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kind, "oauth:invalid_client");
    let reworded = db
        .execute(
            "UPDATE connections SET last_error = 'the vendor disliked it' WHERE connection = 'creds'",
            [],
        )
        .unwrap();
    assert_eq!(reworded, 1);
    let v = app.get("/api/status?format=json").await.json();
    assert_eq!(
        status_of(&v, "creds").as_deref(),
        Some("misconfigured"),
        "{v}"
    );

    // The right secret again (a changed configuration: the misconfigured mark ends at start),
    // and the vendor goes away.
    app.restart_with_integrations(&integrations_file(&issuer, DEFAULT_MARGIN_SECS))
        .await;
    drop(app.oidc.take());
    let reply = app.token_reply("down", "?force_refresh=true").await;
    assert_eq!(reply.status, 502, "{reply:?}");

    let v = app.get("/api/status?format=json").await.json();
    let order: Vec<(&str, &str)> = v["attention"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["connection"].as_str().unwrap(),
                a["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [("dead", "reauthorization_required"), ("down", "failing")],
        "{v}"
    );
    assert_eq!(v["counts"]["active"], json!(2), "creds and fine: {v}");
    // Stored statuses are unchanged: only the dead grant is marked.
    for (conn, stored) in [
        ("creds", "active"),
        ("down", "active"),
        ("dead", "reauthorization_required"),
    ] {
        let shown = app
            .get(&format!("/api/connections/{INTEGRATION}/{conn}"))
            .await;
        assert_eq!(shown.json()["status"], json!(stored), "{shown:?}");
    }
}

#[tokio::test]
async fn a_row_with_an_unknown_status_and_hostile_error_text_is_listed_escaped_and_still_served() {
    let app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    app.connect("odd").await;
    let evil = "<script>alert(1)</script><img src=x onerror=alert(2)>\u{7}";
    // A newer version (or a writer to the store) left a status this one does not know.
    let db = rusqlite::Connection::open(app.dir.path().join("data/broker.db")).unwrap();
    let changed = db
        .execute(
            "UPDATE connections SET status = 'suspended', last_error = ?1 WHERE connection = 'odd'",
            [evil],
        )
        .unwrap();
    assert_eq!(changed, 1);

    let v = app.get("/api/status?format=json").await.json();
    assert_eq!(status_of(&v, "odd").as_deref(), Some("unknown"), "{v}");
    assert_eq!(v["counts"]["unknown"], json!(1), "{v}");
    let listed = &v["attention"][0]["last_error"];
    assert!(
        listed.as_str().is_some_and(|e| !e.contains('\u{7}')),
        "control characters are stripped: {v}"
    );

    let page = get_with_accept(&app, "/api/status", "text/html").await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        !page.body.contains("<script") && !page.body.contains("<img"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        page.body
    );

    // The grant is still used: the token route serves it, and a refresh makes it active.
    check_token_reply(&app.token_reply("odd", "?force_refresh=true").await, "odd");
    let shown = app
        .get(&format!("/api/connections/{INTEGRATION}/odd"))
        .await;
    assert_eq!(shown.json()["status"], json!("active"), "{shown:?}");
    let v = app.get("/api/status?format=json").await.json();
    assert_eq!(v["attention"], json!([]), "{v}");
}

#[tokio::test]
async fn the_status_page_buttons_post_back_to_it_and_refuse_other_sites() {
    let app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    app.connect("gone").await;
    let browser = Browser::new();
    let url = app.url(&format!(
        "/api/status?code={}",
        app.broker().key().expect("a standalone broker has a key")
    ));
    let form = |action: &str| {
        vec![
            ("action".to_owned(), action.to_owned()),
            ("integration".to_owned(), INTEGRATION.to_owned()),
            ("connection".to_owned(), "gone".to_owned()),
        ]
    };

    // A post another site's page made: refused, nothing changes.
    let resp = reqwest::Client::new()
        .post(&url)
        .header("Sec-Fetch-Site", "cross-site")
        .form(&form("delete"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let shown = app
        .get(&format!("/api/connections/{INTEGRATION}/gone"))
        .await;
    assert_eq!(shown.status, 200, "still there: {shown:?}");

    // A malformed form is a 400, not a 5xx.
    let bad = browser
        .post_form(&url, &[("action".to_owned(), "explode".to_owned())])
        .await;
    assert_eq!(bad.status, 400, "{bad:?}");

    // The delete button (as the page posts it): revokes at the vendor, deletes, shows the page.
    let token = app.access_token("gone").await;
    let page = browser.post_form(&url, &form("delete")).await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.is_html(), "{page:?}");
    let text = html_unescape(&page.body);
    assert!(
        text.contains("Deleted <code>demo/gone</code>; the grant was revoked at the vendor."),
        "{text}"
    );
    assert!(!app.oidc().is_active(&token).await, "revoked at the vendor");
    let shown = app
        .get(&format!("/api/connections/{INTEGRATION}/gone"))
        .await;
    assert_eq!(shown.status, 404, "{shown:?}");
}

// ------------------------------------------------------------------------------------------------
// Chromium

const CHROMIUM: &str = "/usr/bin/chromium";
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

/// Runs `browser-status.mjs`; panics with everything it printed when it fails.
async fn run_status_browser(url: String, shot: PathBuf, link_for: Option<String>) -> Value {
    assert!(
        std::path::Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: scripts/test installs Debian's chromium"
    );
    let script = repo_root().join("tests/support/browser-status.mjs");
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("node");
        cmd.arg(&script).arg(&url).arg(&shot);
        if let Some(target) = &link_for {
            cmd.arg(target);
        }
        let started = Instant::now();
        let mut child = cmd
            .env("NODE_PATH", node_modules())
            .env("CHROMIUM", CHROMIUM)
            .current_dir(repo_root().join("tests/support"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node {}: {e}", script.display()));
        // The script prints one line; wait with a deadline.
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if started.elapsed() > SCRIPT_TIMEOUT {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let raw: Value = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| {
                panic!("browser-status.mjs printed no result; stdout:\n{stdout}\nstderr:\n{stderr}")
            });
        assert!(
            out.status.success() && raw["ok"] == json!(true),
            "browser-status.mjs failed: {}\nsteps: {}\nconsole: {}\nstderr:\n{stderr}\npage:\n{}",
            raw["error"].as_str().unwrap_or_default(),
            raw["steps"],
            raw["console"],
            raw["html"].as_str().unwrap_or_default()
        );
        raw
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

#[track_caller]
fn assert_png(path: &std::path::Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() > 1000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is a PNG",
        path.display()
    );
    println!("screenshot: {} ({} bytes)", path.display(), bytes.len());
}

/// The page's hardening as the browser received it, and nothing it complained about.
#[track_caller]
fn assert_hardened(run: &Value) {
    let h = |name: &str| run["headers"][name].as_str().unwrap_or_default().to_owned();
    let csp = h("content-security-policy");
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("form-action 'self'"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(h("x-frame-options"), "DENY");
    assert_eq!(h("referrer-policy"), "no-referrer");
    assert!(h("cache-control").contains("no-store"));
    assert_eq!(run["console"], json!([]), "the browser reported nothing");
    assert_eq!(
        run["blocked"],
        json!([]),
        "the page loads nothing from elsewhere"
    );
    let html = run["html"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    for external in ["<script", "src=", "href=\"http", "@import", "url("] {
        assert!(!html.contains(external), "{external}: {html}");
    }
    assert!(
        run["phone"]["scroll_width"].as_u64() <= run["phone"]["viewport_width"].as_u64(),
        "usable on a phone: no sideways scrolling at {} px: {}",
        run["phone"]["viewport_width"],
        run["phone"]
    );
}

#[tokio::test]
async fn the_status_page_in_chromium_shows_the_dead_grant_first_and_its_consent_link_works() {
    let key = format!("key-{}", random_hex(16));
    let app = TestApp::spawn(AppOptions {
        api_key: Some(key.clone()),
        ..AppOptions::on(Store::Table)
    })
    .await;
    for conn in ["acme", "globex"] {
        app.connect(conn).await;
    }
    let status_url = app.url(&format!("/api/status?code={key}"));

    // Healthy.
    let healthy_shot = artifacts_dir().join("status-healthy.png");
    let _ = std::fs::remove_file(&healthy_shot);
    let run = run_status_browser(status_url.clone(), healthy_shot.clone(), None).await;
    assert_eq!(run["status"], json!(200), "{run}");
    assert_hardened(&run);
    assert_png(&healthy_shot);
    assert_eq!(
        run["cards"],
        json!(["demo / acme", "demo / globex"]),
        "{run}"
    );
    assert_eq!(
        run["confirm"],
        json!({"visible_before": false, "visible_after_open": true}),
        "revoke and delete asks for confirmation first: {run}"
    );
    let text = run["text"].as_str().unwrap();
    assert!(text.contains("2 connections, all working."), "{text}");

    // A dead grant: first on the page; its button makes a consent link that works.
    kill(&app, "globex").await;
    let dead_shot = artifacts_dir().join("status-dead-grant.png");
    let _ = std::fs::remove_file(&dead_shot);
    let run = run_status_browser(status_url, dead_shot.clone(), Some("demo / globex".into())).await;
    assert_hardened(&run);
    assert_png(&dead_shot);
    assert_eq!(
        run["cards"],
        json!(["demo / globex", "demo / acme"]),
        "{run}"
    );
    let text = run["text"].as_str().unwrap();
    assert!(
        text.contains("1 of 2 connections needs attention."),
        "{text}"
    );
    assert!(text.contains("reauthorization_required"), "{text}");
    assert!(
        text.contains("invalid_grant"),
        "shows the last error: {text}"
    );
    let html = run["html"].as_str().unwrap();
    let access = app.token_reply("acme", "").await.json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !html.contains(&key),
        "the page never shows the function key"
    );
    assert!(!html.contains(&access), "the page shows no token");

    let link = run["link"]["value"].as_str().unwrap_or_default().to_owned();
    assert!(
        link.starts_with(&format!("{}/api/auth/link?t=", app.base_url())),
        "the button produced a consent link: {run}"
    );
    assert_eq!(run["link"]["readonly"], json!(true), "{run}");
    assert!(
        !run["link"]["page_html"]
            .as_str()
            .unwrap_or_default()
            .contains(&key),
        "the page with the link does not show the key either"
    );
    assert_png(&artifacts_dir().join("status-dead-grant-link.png"));

    // Someone without the key opens the link and consents: the grant lives again.
    let browser = Browser::new();
    let opened = browser.get(&link).await;
    assert_eq!(opened.status, 302, "{opened:?}");
    let callback = browser
        .consent(&opened.location(), &app.redirect_uri())
        .await;
    let page = browser.get(&callback).await;
    assert_eq!(page.status, 200, "{page:?}");
    check_token_reply(&app.token_reply("globex", "").await, "globex");
    let v = app.get("/api/status?format=json").await.json();
    assert_eq!(v["attention"], json!([]), "{v}");
    assert_eq!(v["counts"]["active"], json!(2), "{v}");
}

/// Recovery in one obvious step: a rejected client is one banner naming the integration and the
/// settings its client id and secret come from, its connections are listed as affected without
/// consent buttons; "Refresh now" refreshes at once even during a cool-down; a dead grant shows no
/// access-token expiry; an integration without connections gets a form for a first consent link;
/// each connection lists its pipeline credentials (never a secret) with a delete button.
#[tokio::test]
async fn the_status_page_offers_one_obvious_step_for_each_problem() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    for conn in ["acme", "globex"] {
        app.connect(conn).await;
    }
    let key = app.broker().key().unwrap().to_owned();
    let url = app.url(&format!("/api/status?code={key}"));
    // A pipeline credential for acme.
    let created = app
        .call(
            Method::POST,
            &format!("/api/connections/{INTEGRATION}/acme/credentials"),
            Some(r#"{"description": "ADF LS_Acme"}"#),
            Key::Configured,
        )
        .await
        .json();
    let client_id = created["client_id"].as_str().unwrap().to_owned();
    let secret = created["client_secret"].as_str().unwrap().to_owned();

    // A second integration without connections, and a wrong client secret for demo
    // (a long cool-down, so only "Refresh now" can bypass it).
    let issuer = app.oidc().issuer.clone();
    let mut file = integrations_file(&issuer, DEFAULT_MARGIN_SECS);
    file["integrations"]["second"] = file["integrations"][INTEGRATION].clone();
    file["integrations"][INTEGRATION]["client_secret"] = json!("%WRONG_SECRET%");
    app.spec
        .env
        .push(("WRONG_SECRET".into(), "not-the-secret".into()));
    app.spec
        .env
        .push(("BROKER_REFRESH_COOLDOWN_SECS".into(), "3600".into()));
    app.restart_with_integrations(&file).await;
    let reply = app.token_reply("acme", "?force_refresh=true").await;
    assert_eq!(reply.error_code(), "integration_misconfigured", "{reply:?}");

    let browser = Browser::new();
    let page = browser.get(&url).await;
    assert_eq!(page.status, 200, "{page:?}");
    let html = html_unescape(&page.body);
    // One banner for the integration, naming its settings and the affected connection.
    assert_eq!(
        html.matches("The vendor rejects the client credentials of")
            .count(),
        1,
        "{html}"
    );
    assert!(html.contains("<code>%DEMO_CLIENT_ID%</code>"), "{html}");
    assert!(html.contains("<code>%WRONG_SECRET%</code>"), "{html}");
    assert!(
        html.contains("Affected connections: <code>acme</code>"),
        "{html}"
    );
    let card = |conn: &str| {
        let start = html
            .find(&format!("{INTEGRATION} / {conn} <span"))
            .unwrap_or_else(|| panic!("a card for {conn}: {html}"));
        let end = html[start..].find("</section>").unwrap() + start;
        html[start..end].to_owned()
    };
    let acme = card("acme");
    assert!(acme.contains("misconfigured"), "{acme}");
    assert!(
        !acme.contains("Create consent link"),
        "no consent button that cannot help: {acme}"
    );
    assert!(acme.contains("Refresh now"), "{acme}");
    // Its pipeline credential, never the secret, with a delete button.
    assert!(
        acme.contains(&client_id) && acme.contains("ADF LS_Acme"),
        "{acme}"
    );
    assert!(acme.contains("delete_credential"), "{acme}");
    assert!(!html.contains(&secret), "never a credential's secret");
    // The integration without connections: a form for a first consent link.
    assert!(html.contains("Connect a first account"), "{html}");
    assert!(
        html.contains("name=\"integration\" value=\"second\"")
            && html.contains("name=\"connection\""),
        "{html}"
    );

    // In Chromium: the banner, the affected card, the credentials and the first-account form.
    let shot = artifacts_dir().join("status-recovery.png");
    let _ = std::fs::remove_file(&shot);
    let run = run_status_browser(url.clone(), shot.clone(), None).await;
    assert_eq!(run["status"], json!(200), "{run}");
    assert_hardened(&run);
    assert_png(&shot);
    let text = run["text"].as_str().unwrap();
    assert!(
        text.contains("The vendor rejects the client credentials of demo"),
        "{text}"
    );
    assert!(text.contains("Connect a first account"), "{text}");

    // The fixed secret: back to the right file. Refresh now works at once, cool-down or not.
    app.spec.env.retain(|(k, _)| k != "WRONG_SECRET");
    app.spec
        .env
        .push(("WRONG_SECRET".into(), CLIENT_SECRET.into()));
    app.restart_with_integrations(&file).await;
    let url = app.url(&format!("/api/status?code={key}"));
    let form = |action: &str, conn: &str| {
        vec![
            ("action".to_owned(), action.to_owned()),
            ("integration".to_owned(), INTEGRATION.to_owned()),
            ("connection".to_owned(), conn.to_owned()),
        ]
    };
    let before = app.oidc().stats().await.refreshes();
    let page = browser.post_form(&url, &form("refresh", "globex")).await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.body.contains("Refreshed <code>demo/globex</code>"),
        "{}",
        page.body
    );
    assert_eq!(app.oidc().stats().await.refreshes(), before + 1);

    // The first consent link for the new integration, from its form.
    let page = browser
        .post_form(
            &url,
            &[
                ("action".to_owned(), "consent_link".to_owned()),
                ("integration".to_owned(), "second".to_owned()),
                ("connection".to_owned(), "first-account".to_owned()),
            ],
        )
        .await;
    assert!(
        page.body.contains("Consent link for second/first-account"),
        "{}",
        page.body
    );

    // Delete the pipeline credential: it stops working.
    let mut del = form("delete_credential", "acme");
    del.push(("client_id".to_owned(), client_id.clone()));
    let page = browser.post_form(&url, &del).await;
    assert!(
        html_unescape(&page.body).contains(&format!(
            "Deleted the pipeline credential <code>{client_id}</code>"
        )),
        "{}",
        page.body
    );
    let listed = app
        .get(&format!("/api/connections/{INTEGRATION}/acme/credentials"))
        .await
        .json();
    assert_eq!(listed["credentials"], json!([]), "{listed}");

    // A dead grant shows no access-token expiry.
    kill(&app, "globex").await;
    let html = html_unescape(&browser.get(&url).await.body);
    let start = html.find("demo / globex <span").unwrap();
    let end = html[start..].find("</section>").unwrap() + start;
    let dead = &html[start..end];
    assert!(dead.contains("reauthorization_required"), "{dead}");
    assert!(!dead.contains("Access token expires"), "{dead}");
    assert!(!dead.contains("Refresh now"), "{dead}");
}
