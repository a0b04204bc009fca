//! The proxy (`/api/proxy/{integration}/{connection}/{*path}`) through the real binary: oidc-provider
//! is the authorization server, the test API (`broker_testkit::test_api`) the vendor, whose bearer
//! tokens it checks at oidc-provider; a second test API is the "other host" that path tricks must
//! never reach. Called as ADF's REST connector calls it: HTTP Basic with a pipeline credential.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use base64::Engine as _;
use broker_testkit::entra::{Entra, Principal, Version};
use broker_testkit::test_api::{Fault, TestApi};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

struct Setup {
    app: TestApp,
    api: TestApi,
    other: TestApi,
    /// (client_id, client_secret) of connection `main`, and of `second`.
    main: (String, String),
    second: (String, String),
}

fn file(issuer: &str, api_base: &str, extra: Value) -> Value {
    let mut f = integrations_file(issuer, DEFAULT_MARGIN_SECS);
    let demo = f["integrations"][INTEGRATION].as_object_mut().unwrap();
    demo.insert("api_base_url".into(), json!(api_base));
    for (k, v) in extra.as_object().unwrap() {
        demo.insert(k.clone(), v.clone());
    }
    // The same OAuth app without an API base: the proxy is not configured for it.
    let mut bare = f["integrations"][INTEGRATION].clone();
    bare.as_object_mut().unwrap().remove("api_base_url");
    f["integrations"]["bare"] = bare;
    f
}

async fn setup(store: Store, env: &[(&str, &str)], extra: Value) -> Setup {
    let mut app = TestApp::spawn(AppOptions::on(store)).await;
    let issuer = app.oidc().issuer.clone();
    let api = TestApi::start(Some(&issuer));
    let other = TestApi::start(None);
    for (k, v) in env {
        app.spec.env.push(((*k).into(), (*v).into()));
    }
    app.restart_with_integrations(&file(&issuer, &format!("{}/v1", api.base), extra))
        .await;
    app.connect("main").await;
    app.connect("second").await;
    let main = credential(&app, "main").await;
    let second = credential(&app, "second").await;
    Setup {
        app,
        api,
        other,
        main,
        second,
    }
}

impl Setup {
    fn proxy_url(&self, conn: &str, rest: &str) -> String {
        self.app
            .url(&format!("/api/proxy/{INTEGRATION}/{conn}{rest}"))
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let reply = Reply::from(req.send().await.unwrap()).await;
        assert_no_undocumented_5xx(&reply, "proxy");
        reply
    }

    /// `method` on the proxy for `main` with its credential.
    fn req(&self, method: Method, rest: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, self.proxy_url("main", rest))
            .header("Authorization", basic(&self.main.0, &self.main.1))
    }

    async fn get(&self, rest: &str) -> Reply {
        self.send(self.req(Method::GET, rest)).await
    }
}

#[track_caller]
fn broker_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.error_code(), code, "{reply:?}");
    assert_eq!(
        reply.header("x-broker-error").as_deref(),
        Some("true"),
        "the broker's own error is marked: {reply:?}"
    );
}

/// Pages 1..=3 read by following `next` from `first`, with `get`.
async fn follow<F, Fut>(first: String, get: F) -> Vec<Value>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let mut pages = Vec::new();
    let mut url = Some(first);
    while let Some(u) = url {
        let page = get(u).await;
        url = page["next"].as_str().map(str::to_owned);
        pages.push(page);
        assert!(pages.len() <= 3, "three pages: {pages:?}");
    }
    pages
}

async fn paging_equals_direct(s: &Setup) {
    let token = s.app.access_token("main").await;
    let direct = follow(format!("{}/v1/items?page=1", s.api.base), |u| {
        let token = token.clone();
        async move {
            reqwest::Client::new()
                .get(u)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    })
    .await;
    let proxy_prefix = s.proxy_url("main", "");
    let cred = basic(&s.main.0, &s.main.1);
    let through = follow(s.proxy_url("main", "/items?page=1"), |u| {
        let cred = cred.clone();
        let prefix = proxy_prefix.clone();
        async move {
            assert!(
                u.starts_with(&prefix),
                "the next link stays on the proxy: {u}"
            );
            let r = reqwest::Client::new()
                .get(&u)
                .header("Authorization", cred)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert!(r.headers().get("x-broker-error").is_none());
            r.json::<Value>().await.unwrap()
        }
    })
    .await;
    assert_eq!(direct.len(), 3);
    assert_eq!(through.len(), 3);
    for (d, t) in direct.iter().zip(&through) {
        assert_eq!(d["items"], t["items"], "the same pages");
        assert_eq!(d["page"], t["page"]);
        assert_eq!(
            t["elsewhere"], d["elsewhere"],
            "a URL elsewhere is left alone"
        );
        for field in ["next", "@odata.nextLink", "escaped", "self"] {
            match d[field].as_str() {
                None => assert!(t[field].is_null()),
                Some(du) => assert_eq!(
                    t[field].as_str().unwrap(),
                    du.replace(&format!("{}/v1", s.api.base), &proxy_prefix),
                    "{field} rewritten to the proxy"
                ),
            }
        }
    }
    // The Link header too.
    let r = s.get("/items?page=2").await;
    assert_eq!(
        r.header("link").unwrap(),
        format!("<{proxy_prefix}/items?page=3>; rel=\"next\"")
    );
}

#[tokio::test]
async fn pages_through_the_proxy_equal_the_pages_fetched_directly_on_sqlite() {
    let s = setup(Store::Sqlite, &[], json!({})).await;
    paging_equals_direct(&s).await;
}

#[tokio::test]
async fn pages_through_the_proxy_equal_the_pages_fetched_directly_on_table_storage() {
    let s = setup(Store::Table, &[], json!({})).await;
    paging_equals_direct(&s).await;
    let r = s.get("/items?page=1").await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn link_rewriting_can_be_turned_off() {
    let s = setup(Store::Sqlite, &[], json!({"proxy_rewrite_links": false})).await;
    let r = s.get("/items?page=1").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json()["next"].as_str().unwrap(),
        format!("{}/v1/items?page=2", s.api.base)
    );
}

#[tokio::test]
async fn the_callers_credentials_keys_cookies_and_forwarding_headers_never_reach_the_vendor() {
    let s = setup(Store::Sqlite, &[], json!({})).await;
    let token = s.app.access_token("main").await;
    s.api.clear();
    let r = s
        .send(
            s.req(Method::POST, "/echo?keep=1&code=the-function-key")
                .header("Cookie", "broker_session=s3cr3t")
                .header("x-functions-key", "the-function-key")
                .header("X-Forwarded-For", "203.0.113.9")
                .header("X-Forwarded-Host", "evil.example")
                .header("Forwarded", "for=203.0.113.9")
                .header("Connection", "x-hop-secret")
                .header("x-hop-secret", "hop")
                .header("Proxy-Authorization", "Basic eDp5")
                .header("X-Custom", "kept")
                .header("Content-Type", "text/plain")
                .body("hello vendor"),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("set-cookie").is_none(),
        "Set-Cookie is dropped: {r:?}"
    );
    let seen = s.api.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let seen = &seen[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(
        seen.path_and_query, "/v1/echo?keep=1",
        "code= is removed: {seen:?}"
    );
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {token}").as_str()),
        "the broker's token replaces the caller's Basic credential"
    );
    for gone in [
        "cookie",
        "x-functions-key",
        "x-forwarded-for",
        "x-forwarded-host",
        "forwarded",
        "x-hop-secret",
        "proxy-authorization",
    ] {
        assert!(
            seen.header(gone).is_none(),
            "{gone} reached the vendor: {seen:?}"
        );
    }
    assert_eq!(seen.header("x-custom"), Some("kept"));
    assert_eq!(r.json()["body"], json!("hello vendor"));
    for value in [s.main.1.as_str(), "s3cr3t", "the-function-key"] {
        assert!(
            !seen.headers.iter().any(|(_, v)| v.contains(value)),
            "{value} reached the vendor"
        );
    }

    // PUT, PATCH, DELETE carry their bodies; HEAD answers without one.
    for m in [Method::PUT, Method::PATCH, Method::DELETE] {
        let r = s
            .send(s.req(m.clone(), "/echo").body(format!("body of {m}")))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["method"], json!(m.as_str()));
        assert_eq!(r.json()["body"], json!(format!("body of {m}")));
    }
    let r = s.send(s.req(Method::HEAD, "/items?page=1")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.is_empty());
    assert_eq!(s.api.seen().last().unwrap().method, "HEAD");

    // One log line per request, without the query string or any header value.
    let count = |log: &str| {
        log.lines()
            .filter(|l| l.contains("proxied request"))
            .count()
    };
    let log = s.app.broker().process().text_when(|l| count(l) >= 5);
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("proxied request"))
        .collect();
    assert_eq!(lines.len(), 5, "one line per request: {log}");
    for l in &lines {
        for field in [
            "method",
            "integration",
            "connection",
            "status",
            "upstream_ms",
            "bytes_in",
            "bytes_out",
            "retries",
        ] {
            assert!(l.contains(field), "{field} in {l}");
        }
    }
    for secret in [
        "keep=1",
        "the-function-key",
        "s3cr3t",
        "203.0.113.9",
        token.as_str(),
        s.main.1.as_str(),
    ] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

#[tokio::test]
async fn a_vendor_401_refreshes_once_and_the_caller_sees_200() {
    // No forced-refresh budget: the connection was consented a moment ago (see the next test).
    let s = setup(
        Store::Sqlite,
        &[("BROKER_MIN_FORCED_REFRESH_SECS", "0")],
        json!({}),
    )
    .await;
    let before = s.app.oidc().stats().await.refreshes();
    let old = s.app.access_token("main").await;
    s.api.clear();
    s.api.script([Fault::Unauthorized]);
    let r = s.get("/items?page=1").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        s.app.oidc().stats().await.refreshes(),
        before + 1,
        "exactly one refresh"
    );
    let seen = s.api.seen();
    assert_eq!(seen.len(), 2, "the request and its one retry: {seen:?}");
    let new = s.app.access_token("main").await;
    assert_ne!(old, new);
    assert_eq!(
        seen[1].header("authorization"),
        Some(format!("Bearer {new}").as_str())
    );

    // A body over 1 MiB is not kept: the 401 is passed through, nothing refreshed.
    let before = s.app.oidc().stats().await.refreshes();
    s.api.script([Fault::Unauthorized]);
    let big = vec![b'a'; 1024 * 1024 + 10];
    let r = s.send(s.req(Method::POST, "/echo").body(big)).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.header("x-broker-error").is_none(),
        "the vendor's 401: {r:?}"
    );
    assert_eq!(s.app.oidc().stats().await.refreshes(), before);

    // A body up to 1 MiB is kept and sent again.
    s.api.script([Fault::Unauthorized]);
    let r = s
        .send(s.req(Method::POST, "/echo").body(vec![b'k'; 1000]))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["body_len"], json!(1000));
}

#[tokio::test]
async fn a_vendor_401_inside_the_forced_refresh_budget_is_passed_back_unrefreshed() {
    // The budget (issue 17) counts from the last refresh the vendor granted: the consent a moment
    // ago. The engine then hands back the refused token, so the vendor's 401 goes back as it is,
    // and neither the vendor's token endpoint nor its API is asked again.
    let s = setup(
        Store::Sqlite,
        &[("BROKER_MIN_FORCED_REFRESH_SECS", "3600")],
        json!({}),
    )
    .await;
    let before = s.app.oidc().stats().await.refreshes();
    let old = s.app.access_token("main").await;
    s.api.clear();
    s.api.script([Fault::Unauthorized]);
    let r = s.get("/items?page=1").await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.header("x-broker-error").is_none(),
        "the vendor's 401: {r:?}"
    );
    assert_eq!(s.app.oidc().stats().await.refreshes(), before, "no refresh");
    assert_eq!(s.api.requests(), 1, "no retry with the refused token");
    assert_eq!(s.app.access_token("main").await, old);
    // The next request (the vendor accepts the token again) goes through.
    assert_eq!(s.get("/items?page=1").await.status, 200);
}

#[tokio::test]
async fn a_429_with_a_short_retry_after_is_waited_for_and_a_long_one_passed_through() {
    let s = setup(
        Store::Sqlite,
        &[("BROKER_PROXY_RETRY_MAX_SECS", "5")],
        json!({}),
    )
    .await;
    s.api.clear();
    s.api.script([Fault::RetryAfter {
        status: 429,
        secs: 1,
    }]);
    let t = Instant::now();
    let r = s.get("/items?page=1").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(t.elapsed() >= Duration::from_secs(1));
    assert_eq!(s.api.requests(), 2);

    s.api.clear();
    s.api.script([Fault::RetryAfter {
        status: 503,
        secs: 60,
    }]);
    let r = s.get("/items?page=1").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("retry-after").as_deref(), Some("60"));
    assert!(r.header("x-broker-error").is_none());
    assert_eq!(s.api.requests(), 1, "not retried");
}

#[tokio::test]
async fn a_429_after_a_streamed_body_is_passed_back_not_sent_again_without_its_body() {
    // A body over the replay limit is streamed to the vendor once: it cannot be sent again, so
    // a 429 is the caller's to retry, whatever the method (a GET with a body included).
    let s = setup(
        Store::Sqlite,
        &[("BROKER_PROXY_RETRY_MAX_SECS", "5")],
        json!({}),
    )
    .await;
    let body = vec![b'x'; 2 * 1024 * 1024];
    for method in [Method::GET, Method::POST] {
        s.api.clear();
        s.api.script([Fault::RetryAfter {
            status: 429,
            secs: 1,
        }]);
        let r = s
            .send(s.req(method.clone(), "/echo").body(body.clone()))
            .await;
        assert_eq!(r.status, 429, "{method}: {r:?}");
        assert_eq!(r.header("retry-after").as_deref(), Some("1"), "{method}");
        let seen = s.api.seen();
        assert_eq!(seen.len(), 1, "{method}: not sent again");
        assert_eq!(
            seen[0].body_len,
            body.len(),
            "{method}: the whole body, once"
        );
    }
}

#[tokio::test]
async fn a_json_answer_that_stalls_while_it_is_rewritten_is_one_504_and_one_log_line() {
    // The body is read whole to rewrite its links; it stops past the proxy's timeout.
    let s = setup(
        Store::Sqlite,
        &[("BROKER_PROXY_TIMEOUT_SECS", "2")],
        json!({}),
    )
    .await;
    let r = s.get("/stall?ms=5000").await;
    broker_error(&r, 504, "upstream_timeout");
    let log = s
        .app
        .broker()
        .process()
        .text_when(|l| l.contains("\"error\":\"upstream_timeout\""));
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("proxied request"))
        .collect();
    assert_eq!(lines.len(), 1, "one line for the one request: {lines:#?}");
    for field in [
        "\"status\":504",
        "\"error\":\"upstream_timeout\"",
        "\"integration\":\"demo\"",
        "\"connection\":\"main\"",
    ] {
        assert!(lines[0].contains(field), "{field} in {}", lines[0]);
    }
}

/// Sends a request line exactly as written (HTTP clients normalise `..` and `%2e`).
fn raw_get(base: &str, target: &str, auth: &str) -> (u16, String) {
    let addr = base.trim_start_matches("http://").to_owned();
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        sock,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = sock.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn every_path_trick_is_refused_and_reaches_no_server() {
    let s = setup(Store::Sqlite, &[], json!({})).await;
    s.api.clear();
    let other = s.other.base.trim_start_matches("http://").to_owned();
    let tricks = [
        "/../../other".to_owned(),
        "/v2/../../x".to_owned(),
        "/%2e%2e/x".to_owned(),
        "/%2E%2e/%2e%2E/x".to_owned(),
        "/.%2e/x".to_owned(),
        "/a/./b".to_owned(),
        "/a%2f..%2fb".to_owned(),
        "/a%2F..".to_owned(),
        "/a%5c..%5cb".to_owned(),
        "/a\\..\\b".to_owned(),
        format!("//{other}/items"),
        "/a//b".to_owned(),
        format!("/@{other}/items"),
        format!("/x@{other}/items"),
        format!("/http://{other}/items"),
        format!("/http:%2f%2f{other}/items"),
        format!("/https:{other}"),
        "/%zz".to_owned(),
        "/a%00b".to_owned(),
    ];
    let auth = basic(&s.main.0, &s.main.1);
    let base = s.app.base_url();
    for t in &tricks {
        let target = format!("/api/proxy/{INTEGRATION}/main{t}");
        let b = base.clone();
        let a = auth.clone();
        let (status, text) = tokio::task::spawn_blocking(move || raw_get(&b, &target, &a))
            .await
            .unwrap();
        assert_eq!(status, 400, "{t}: {text}");
        assert!(
            text.contains("invalid_path") || text.contains("invalid_request"),
            "{t}: {text}"
        );
        assert!(
            text.to_ascii_lowercase().contains("x-broker-error: true"),
            "{t}: {text}"
        );
    }
    assert_eq!(s.api.requests(), 0, "no request reached the vendor");
    assert_eq!(s.other.requests(), 0, "no request reached the other host");
}

#[tokio::test]
async fn callers_errors_redirects_and_limits() {
    let s = setup(
        Store::Sqlite,
        &[("BROKER_PROXY_TIMEOUT_SECS", "2")],
        json!({}),
    )
    .await;
    // Another connection's credential: 403; a wrong secret or none: 401.
    let r = s
        .send(
            reqwest::Client::new()
                .get(s.proxy_url("main", "/items"))
                .header("Authorization", basic(&s.second.0, &s.second.1)),
        )
        .await;
    broker_error(&r, 403, "forbidden");
    let r = s
        .send(
            reqwest::Client::new()
                .get(s.proxy_url("main", "/items"))
                .header("Authorization", basic(&s.main.0, "wrong")),
        )
        .await;
    broker_error(&r, 401, "unauthorized");
    let r = s
        .send(reqwest::Client::new().get(s.proxy_url("main", "/items")))
        .await;
    broker_error(&r, 401, "unauthorized");
    // Standalone, the API key opens every connection.
    let r = s
        .app
        .call(
            Method::GET,
            &format!("/api/proxy/{INTEGRATION}/second/items"),
            None,
            Key::Configured,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = s
        .app
        .call(
            Method::GET,
            &format!("/api/proxy/{INTEGRATION}/nobody/items"),
            None,
            Key::Configured,
        )
        .await;
    broker_error(&r, 404, "connection_not_found");
    let r = s
        .app
        .call(
            Method::GET,
            "/api/proxy/bare/main/items",
            None,
            Key::Configured,
        )
        .await;
    broker_error(&r, 404, "proxy_not_configured");

    // A redirect is passed back (to the proxy), never followed; Set-Cookie dropped.
    s.api.clear();
    let r = s
        .send(
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap()
                .get(s.proxy_url("main", "/redirect"))
                .header("Authorization", basic(&s.main.0, &s.main.1)),
        )
        .await;
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(r.location(), s.proxy_url("main", "/items?page=1"));
    assert!(r.header("set-cookie").is_none());
    assert_eq!(s.api.requests(), 1, "the redirect was not followed");

    // A large body streams through whole.
    let r = s
        .req(Method::GET, "/large?bytes=20971520&length=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(20_971_520));
    let mut n = 0usize;
    let mut stream = r.bytes_stream();
    use futures::StreamExt as _;
    while let Some(c) = stream.next().await {
        n += c.unwrap().len();
    }
    assert_eq!(n, 20_971_520);

    // A vendor slower than BROKER_PROXY_TIMEOUT_SECS: 504.
    let r = s.get("/slow?ms=4000").await;
    broker_error(&r, 504, "upstream_timeout");

    // A dead grant: 409 with the consent link.
    let token = s.app.access_token("main").await;
    s.app.oidc().revoke(&token, "access_token").await;
    let r = s.get("/items").await;
    broker_error(&r, 409, "reauthorization_required");
    assert!(r.json()["authorize_url"].is_string(), "{r:?}");
}

#[tokio::test]
async fn an_unreachable_vendor_is_502() {
    let mut app = TestApp::spawn(AppOptions::default()).await;
    let issuer = app.oidc().issuer.clone();
    let dead = format!("http://127.0.0.1:{}/v1", free_port());
    app.restart_with_integrations(&file(&issuer, &dead, json!({})))
        .await;
    app.connect("main").await;
    let (id, secret) = credential(&app, "main").await;
    let r = Reply::from(
        reqwest::Client::new()
            .get(app.url(&format!("/api/proxy/{INTEGRATION}/main/items")))
            .header("Authorization", basic(&id, &secret))
            .send()
            .await
            .unwrap(),
    )
    .await;
    broker_error(&r, 502, "upstream_unreachable");
}

#[tokio::test]
async fn under_the_functions_host_only_a_pipeline_credential_opens_the_proxy() {
    let mut s = setup(Store::Sqlite, &[], json!({})).await;
    // As the Functions host starts it: the port from FUNCTIONS_CUSTOMHANDLER_PORT, no key of its
    // own. The function is anonymous, so the host lets every request through: the broker decides.
    let port = s.app.spec.port.to_string();
    s.app
        .spec
        .env
        .push(("FUNCTIONS_CUSTOMHANDLER_PORT".into(), port));
    let issuer = s.app.oidc().issuer.clone();
    s.app
        .restart_with_integrations(&file(&issuer, &format!("{}/v1", s.api.base), json!({})))
        .await;
    let host = |req: reqwest::RequestBuilder| {
        req.header("User-Agent", format!("Azure-Functions-Host/{HOST_VERSION}"))
            .header("X-Azure-Functions-HostVersion", HOST_VERSION)
            .header("X-Azure-Functions-InvocationId", uuid_ish())
    };
    s.api.clear();
    // A function key (whatever its value) is no credential here: the host never checked it.
    for key in ["checked-by-nobody", ""] {
        let mut req = host(reqwest::Client::new().get(s.proxy_url("main", "/items?page=1")));
        if !key.is_empty() {
            req = req.header("x-functions-key", key);
        }
        broker_error(&s.send(req).await, 401, "unauthorized");
    }
    let wrong = host(
        reqwest::Client::new()
            .get(s.proxy_url("main", "/items?page=1"))
            .header("Authorization", basic(&s.main.0, &format!("{}x", s.main.1))),
    );
    broker_error(&s.send(wrong).await, 401, "unauthorized");
    let other = host(
        reqwest::Client::new()
            .get(s.proxy_url("main", "/items?page=1"))
            .header("Authorization", basic(&s.second.0, &s.second.1)),
    );
    broker_error(&s.send(other).await, 403, "forbidden");
    assert_eq!(s.api.requests(), 0, "no refused request reached the vendor");

    // The connection's own credential, with the host's headers and a function key beside it.
    let r = s
        .send(host(s.req(Method::GET, "/echo")).header("x-functions-key", "checked-by-nobody"))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.api.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    for gone in [
        "x-functions-key",
        "x-azure-functions-hostversion",
        "x-azure-functions-invocationid",
    ] {
        assert!(
            seen[0].header(gone).is_none(),
            "{gone} reached the vendor: {:?}",
            seen[0]
        );
    }
}

#[tokio::test]
async fn an_entra_identity_uses_the_proxy_for_its_listed_connections_only() {
    // Data Factory's managed identity, as its REST connector authenticates against the proxy
    // (authenticationType ManagedServiceIdentity, aadResourceId = the broker's audience).
    let entra = Entra::start();
    let adf = Principal::data_factory("adf-main");
    let audience = "api://oauth-broker-proxy-test";
    let env = [
        ("BROKER_ENTRA_TENANT_ID", entra.tenant.as_str()),
        ("BROKER_ENTRA_AUDIENCE", audience),
        ("BROKER_ENTRA_AUTHORITY", entra.authority.as_str()),
    ];
    let callers = json!({"callers": [{"object_id": adf.object_id(), "connections": ["main"]}]});
    let s = setup(Store::Sqlite, &env, callers).await;
    let vendor_token = s.app.access_token("main").await;
    let identity = entra.token(Version::V1, &adf, audience, &[]);
    let with = |conn: &str, token: &str| {
        reqwest::Client::new()
            .get(s.proxy_url(conn, "/echo"))
            .bearer_auth(token)
    };
    s.api.clear();

    let r = s.send(with("main", &identity)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.api.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {vendor_token}").as_str()),
        "the vendor gets the connection's token, not the identity's"
    );
    let signature = identity.rsplit('.').next().unwrap();
    assert!(
        !format!("{seen:?}").contains(signature),
        "the Entra token never reaches the vendor"
    );

    // The same identity on a connection it is not listed for; a token for another audience.
    broker_error(&s.send(with("second", &identity)).await, 403, "forbidden");
    let elsewhere = entra.token(Version::V1, &adf, "api://another-app", &[]);
    let r = s.send(with("main", &elsewhere)).await;
    broker_error(&r, 401, "invalid_token");
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some("Bearer error=\"invalid_token\""),
        "{r:?}"
    );
    assert_eq!(s.api.requests(), 1, "no refused request reached the vendor");
}
