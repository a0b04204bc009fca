//! Bad input of every kind answers the documented status with the documented body (a JSON error object
//! on the API routes, an HTML page on the browser routes), stores nothing, and leaves the service
//! healthy and the existing connection untouched.

use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

#[derive(Clone, Copy, Debug)]
enum Body {
    /// A JSON error object with one of these `error` codes.
    Json(&'static [&'static str]),
    Html,
}

struct Case {
    what: &'static str,
    method: Method,
    path: String,
    body: Option<String>,
    /// Allowed statuses (usually one).
    status: &'static [u16],
    expect: Body,
}

const INVALID: Body = Body::Json(&["invalid_request"]);
const NOT_FOUND: Body = Body::Json(&["connection_not_found"]);

fn get(what: &'static str, path: String, status: u16, expect: Body) -> Case {
    let status: &'static [u16] = match status {
        400 => &[400],
        404 => &[404],
        _ => unreachable!(),
    };
    Case {
        what,
        method: Method::GET,
        path,
        body: None,
        status,
        expect,
    }
}

fn post(what: &'static str, body: &str, status: &'static [u16], expect: Body) -> Case {
    Case {
        what,
        method: Method::POST,
        path: "/api/token".into(),
        body: Some(body.to_owned()),
        status,
        expect,
    }
}

fn cases(conn: &str) -> Vec<Case> {
    let long_integration = "a".repeat(64);
    let max_integration = format!("n{}", "a".repeat(62));
    let long_conn = "c".repeat(129);
    let max_conn = format!("z{}", "c".repeat(127));
    let token = |i: &str, c: &str| format!("/api/token/{i}/{c}");
    let body = |v: serde_json::Value| v.to_string();
    vec![
        // GET /api/token/{integration}/{connection}
        get(
            "integration with an uppercase letter",
            token("Demo", conn),
            400,
            INVALID,
        ),
        get(
            "integration with an underscore",
            token("de_mo", conn),
            400,
            INVALID,
        ),
        get(
            "integration starting with a hyphen",
            token("-demo", conn),
            400,
            INVALID,
        ),
        get(
            "integration with a space",
            token("de%20mo", conn),
            400,
            INVALID,
        ),
        get(
            "integration of 64 characters",
            token(&long_integration, conn),
            400,
            INVALID,
        ),
        get(
            "connection starting with a dot",
            token(INTEGRATION, ".acme"),
            400,
            INVALID,
        ),
        get(
            "connection with an @",
            token(INTEGRATION, "ac@me"),
            400,
            INVALID,
        ),
        get(
            "connection with a space",
            token(INTEGRATION, "ac%20me"),
            400,
            INVALID,
        ),
        get(
            "connection with a quote",
            token(INTEGRATION, "ac%27me"),
            400,
            INVALID,
        ),
        get(
            "connection with a non-ASCII letter",
            token(INTEGRATION, "ac%C3%A9me"),
            400,
            INVALID,
        ),
        get(
            "connection of 129 characters",
            token(INTEGRATION, &long_conn),
            400,
            INVALID,
        ),
        get(
            "unknown integration",
            token("nope", conn),
            404,
            Body::Json(&[]),
        ),
        get(
            "unknown integration of 63 characters",
            token(&max_integration, conn),
            404,
            Body::Json(&[]),
        ),
        get(
            "unknown connection",
            token(INTEGRATION, "nobody"),
            404,
            NOT_FOUND,
        ),
        get(
            "unknown connection of 128 characters",
            token(INTEGRATION, &max_conn),
            404,
            NOT_FOUND,
        ),
        get(
            "force_refresh that is not a boolean",
            format!("{}?force_refresh=maybe", token(INTEGRATION, conn)),
            400,
            INVALID,
        ),
        // POST /api/token
        post(
            "invalid JSON",
            r#"{"integration": "demo","#,
            &[400],
            INVALID,
        ),
        post("an empty body", "", &[400], INVALID),
        post(
            "a JSON array",
            &body(json!([{"integration": INTEGRATION, "connection": conn}])),
            &[400],
            INVALID,
        ),
        post(
            "a JSON array of the field values (serde would read it as the struct)",
            &body(json!([INTEGRATION, conn])),
            &[400],
            INVALID,
        ),
        post("a JSON string", r#""demo/acme""#, &[400], INVALID),
        post("JSON null", "null", &[400], INVALID),
        post("an empty object", "{}", &[400], INVALID),
        post(
            "a missing integration",
            &body(json!({"connection": conn})),
            &[400],
            INVALID,
        ),
        // `default` is the documented default connection id; it does not exist here.
        post(
            "a missing connection",
            &body(json!({"integration": INTEGRATION})),
            &[400, 404],
            Body::Json(&["invalid_request", "connection_not_found"]),
        ),
        post(
            "an integration that is a number",
            &body(json!({"integration": 5, "connection": conn})),
            &[400],
            INVALID,
        ),
        post(
            "a connection that is an array",
            &body(json!({"integration": INTEGRATION, "connection": [conn]})),
            &[400],
            INVALID,
        ),
        post(
            "a connection that is null",
            &body(json!({"integration": INTEGRATION, "connection": null})),
            &[400, 404],
            Body::Json(&["invalid_request", "connection_not_found"]),
        ),
        post(
            "force_refresh that is a string",
            &body(json!({"integration": INTEGRATION, "connection": conn, "force_refresh": "yes"})),
            &[400],
            INVALID,
        ),
        post(
            "min_validity_secs that is a string",
            &body(
                json!({"integration": INTEGRATION, "connection": conn, "min_validity_secs": "100"}),
            ),
            &[400],
            INVALID,
        ),
        post(
            "min_validity_secs that is a fraction",
            &body(
                json!({"integration": INTEGRATION, "connection": conn, "min_validity_secs": 1.5}),
            ),
            &[400],
            INVALID,
        ),
        post(
            "an integration with an uppercase letter",
            &body(json!({"integration": "Demo", "connection": conn})),
            &[400],
            INVALID,
        ),
        post(
            "a connection of 129 characters",
            &body(json!({"integration": INTEGRATION, "connection": long_conn})),
            &[400],
            INVALID,
        ),
        post(
            "a connection with a quote",
            &body(json!({"integration": INTEGRATION, "connection": "o'brien"})),
            &[400],
            INVALID,
        ),
        post(
            "an unknown connection",
            &body(json!({"integration": INTEGRATION, "connection": "nobody"})),
            &[404],
            NOT_FOUND,
        ),
        post(
            "an unknown integration",
            &body(json!({"integration": "nope", "connection": conn})),
            &[404],
            Body::Json(&[]),
        ),
        // Browser routes answer HTML.
        get(
            "auth-start for an integration with an uppercase letter",
            "/api/auth/start/Demo?connection=x".into(),
            400,
            Body::Html,
        ),
        get(
            "auth-start for an unknown integration",
            "/api/auth/start/nope?connection=x".into(),
            404,
            Body::Html,
        ),
        get(
            "auth-start for a connection starting with a hyphen",
            "/api/auth/start/demo?connection=-x".into(),
            400,
            Body::Html,
        ),
        get(
            "auth-start for a connection of 129 characters",
            format!("/api/auth/start/demo?connection={long_conn}"),
            400,
            Body::Html,
        ),
        get(
            "callback without any parameter",
            "/api/auth/callback".into(),
            400,
            Body::Html,
        ),
        get(
            "callback without state",
            "/api/auth/callback?code=abc".into(),
            400,
            Body::Html,
        ),
        get(
            "callback without code",
            format!("/api/auth/callback?state={}", random_hex(16)),
            400,
            Body::Html,
        ),
        get(
            "callback with an unknown state",
            format!("/api/auth/callback?code=abc&state={}", random_hex(16)),
            400,
            Body::Html,
        ),
    ]
}

#[track_caller]
fn check(case_what: &str, reply: &Reply, status: &[u16], expect: Body) {
    assert_no_undocumented_5xx(reply, case_what);
    assert!(
        status.contains(&reply.status),
        "{case_what}: expected {status:?}, got {}: {reply:?}",
        reply.status
    );
    match expect {
        Body::Json(codes) => {
            assert!(reply.is_json(), "{case_what}: a JSON body: {reply:?}");
            let code = reply.error_code();
            assert!(
                codes.is_empty() || codes.contains(&code.as_str()),
                "{case_what}: error {code:?}, expected one of {codes:?}: {reply:?}"
            );
            assert!(
                reply.json()["error_description"].is_string(),
                "{case_what}: error_description: {reply:?}"
            );
        }
        Body::Html => {
            assert!(reply.is_html(), "{case_what}: an HTML page: {reply:?}");
            assert!(
                !reply.body.trim().is_empty(),
                "{case_what}: a plain explanation"
            );
        }
    }
}

async fn entity_count(app: &TestApp) -> usize {
    app.azurite
        .as_ref()
        .expect("this test runs on Table Storage")
        .dump_all_tables()
        .await
        .len()
}

async fn assert_unchanged(app: &TestApp, what: &str, conn: &str, token: &str) {
    let health = app.health().await;
    assert_eq!(health.status, 200, "after {what}: health {health:?}");
    assert_eq!(health.json(), json!({"status": "ok"}), "after {what}");
    let now = app.access_token(conn).await;
    assert_eq!(
        now, token,
        "after {what}: the stored connection is untouched"
    );
}

#[tokio::test]
async fn bad_input_answers_the_documented_error_and_stores_nothing() {
    let app = TestApp::spawn(AppOptions::on(Store::Table)).await;
    let conn = "acme";
    app.connect(conn).await;
    let token = app.access_token(conn).await;
    let before = entity_count(&app).await;

    for case in cases(conn) {
        let reply = app
            .call(
                case.method.clone(),
                &case.path,
                case.body.as_deref(),
                Key::Configured,
            )
            .await;
        check(case.what, &reply, case.status, case.expect);
        assert_unchanged(&app, case.what, conn, &token).await;
    }
    assert_eq!(entity_count(&app).await, before, "bad input stored nothing");

    let stats = app.oidc().stats().await;
    assert_eq!(
        stats.refreshes(),
        0,
        "no bad input reached the provider: {stats:?}"
    );
    assert_eq!(stats.authorization_codes(), 1, "{stats:?}");
}

#[tokio::test]
async fn callback_failures_answer_html_with_the_right_status_and_store_nothing() {
    let app = TestApp::spawn(AppOptions::on(Store::Table)).await;
    let conn = "acme";
    app.connect(conn).await;
    let token = app.access_token(conn).await;

    // A replayed callback: the first use succeeds, the second is refused.
    {
        let what = "a replayed state";
        let browser = Browser::new();
        let consent = app.consent_until_callback(&browser, "replay").await;
        let first = browser.get(&consent.callback_url).await;
        assert_eq!(first.status, 200, "{what}: the first use: {first:?}");
        let second = browser.get(&consent.callback_url).await;
        check(what, &second, &[400], Body::Html);
        assert!(
            !second.body.contains(&consent.code),
            "{what}: no code on the page"
        );
        assert_unchanged(&app, what, conn, &token).await;
    }

    // The callback reached from another browser (no state cookie).
    {
        let what = "a state without its cookie";
        let browser = Browser::new();
        let consent = app.consent_until_callback(&browser, "nocookie").await;
        let stranger = Browser::new().get(&consent.callback_url).await;
        check(what, &stranger, &[400], Body::Html);
        let missing = app.token_reply("nocookie", "").await;
        assert_eq!(missing.status, 404, "{what}: nothing stored: {missing:?}");
        assert_unchanged(&app, what, conn, &token).await;
    }

    // The provider reports an error; its description is shown escaped, if at all.
    {
        let what = "access_denied with a script in the description";
        let browser = Browser::new();
        let start = app.start_auth(&browser, "denied").await;
        let state = query_param(&start.location(), "state").unwrap();
        let mut url = url::Url::parse(&app.url("/api/auth/callback")).unwrap();
        url.query_pairs_mut()
            .append_pair("error", "access_denied")
            .append_pair("error_description", "<script>alert(1)</script>")
            .append_pair("state", &state)
            .append_pair("iss", &app.oidc().issuer);
        let reply = browser.get(url.as_str()).await;
        check(what, &reply, &[400], Body::Html);
        assert!(
            !reply.body.to_ascii_lowercase().contains("<script>alert(1)"),
            "{what}: the description is HTML-escaped: {}",
            reply.body
        );
        assert!(
            reply.body.contains("access_denied"),
            "{what}: names the error: {}",
            reply.body
        );
        let missing = app.token_reply("denied", "").await;
        assert_eq!(missing.status, 404, "{what}: nothing stored: {missing:?}");
        assert_unchanged(&app, what, conn, &token).await;
    }

    // The provider rejects the code exchange.
    {
        let what = "a tampered code";
        let browser = Browser::new();
        let consent = app.consent_until_callback(&browser, "tampered").await;
        let tampered = format!("{}x", consent.code);
        let url = with_query_param(&consent.callback_url, "code", &tampered);
        let reply = browser.get(&url).await;
        check(what, &reply, &[502], Body::Html);
        assert!(
            reply.body.contains("invalid_grant"),
            "{what}: the page names the provider's error code: {}",
            reply.body
        );
        assert!(
            !reply.body.contains(&consent.code),
            "{what}: no code on the page"
        );
        let missing = app.token_reply("tampered", "").await;
        assert_eq!(missing.status, 404, "{what}: nothing stored: {missing:?}");
        let stats = app.oidc().stats().await;
        assert_eq!(stats.token_errors("invalid_grant"), 1, "{what}: {stats:?}");
        assert_unchanged(&app, what, conn, &token).await;
    }

    // Extra parameters (the provider's `iss`, anything else) are tolerated.
    {
        let what = "extra callback parameters";
        let browser = Browser::new();
        let consent = app.consent_until_callback(&browser, "extra").await;
        let mut url = url::Url::parse(&consent.callback_url).unwrap();
        if query_param(url.as_str(), "iss").is_none() {
            url.query_pairs_mut().append_pair("iss", &app.oidc().issuer);
        }
        url.query_pairs_mut()
            .append_pair("session_state", "abc")
            .append_pair("utm_source", "mail");
        let reply = browser.get(url.as_str()).await;
        assert_eq!(reply.status, 200, "{what}: {reply:?}");
        app.token("extra").await;
        assert_unchanged(&app, what, conn, &token).await;
    }

    let stats = app.oidc().stats().await;
    assert_eq!(stats.refreshes(), 0, "{stats:?}");
}
