//! The front door in standalone mode, attacked over raw TCP: a request without the key is refused
//! before its body is read and its connection closed; bodies are capped per route and cut off when
//! slow; connections beyond `BROKER_MAX_CONNECTIONS` wait; a `Host` that does not name the broker
//! is refused (DNS rebinding); without `BROKER_API_KEY` a key is generated and required; answers
//! carry `X-Content-Type-Options` and, behind an https public URL, `Strict-Transport-Security`.
//! Under the Functions host, forwarded requests with the app's own host names still work.

use std::time::{Duration, Instant};

use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// A standalone broker on the embedded store in `dir`, with extra settings.
fn spec(dir: &tempfile::TempDir, api_key: Option<String>, env: &[(&str, &str)]) -> BrokerSpec {
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    BrokerSpec {
        port: 0,
        bind: "127.0.0.1".into(),
        storage: format!("sqlite:{}", dir.path().join("data/broker.db").display()),
        table: None,
        encryption_keys: None,
        api_key,
        public_url: None,
        integrations_path: dir.path().join("integrations.json"),
        work_dir: dir.path().to_owned(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

async fn keyed_broker(env: &[(&str, &str)]) -> (tempfile::TempDir, Broker, String) {
    let dir = tempfile::tempdir().unwrap();
    let key = format!("front-door-{}", random_hex(16));
    let broker = Broker::start(&spec(&dir, Some(key.clone()), env)).await;
    (dir, broker, key)
}

/// One answer read off a raw connection.
#[derive(Debug)]
struct RawReply {
    status: u16,
    /// Lower-case names.
    headers: Vec<(String, String)>,
    body: String,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `error` code of a JSON error object, asserting the body is one.
    fn error_code(&self) -> String {
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "a JSON answer: {self:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"));
        assert!(
            v["error_description"].is_string(),
            "error_description: {self:?}"
        );
        v["error"].as_str().expect("an error code").to_owned()
    }
}

/// A client that writes exactly the bytes it is told to, as an attacker would.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn open(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    fn parse(&self) -> Option<RawReply> {
        let end = self.buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let body = self.buf.get(end + 4..end + 4 + len)?;
        Some(RawReply {
            status,
            headers,
            body: String::from_utf8_lossy(body).into_owned(),
        })
    }

    /// Waits up to `within` for a complete answer, sending `trickle` every 200 ms meanwhile.
    async fn reply(&mut self, within: Duration, trickle: Option<&[u8]>) -> Option<RawReply> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(r) = self.parse() {
                return Some(r);
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout(Duration::from_millis(200), self.stream.read(&mut chunk))
                .await
            {
                Ok(Ok(0)) | Ok(Err(_)) => return self.parse(),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => {
                    if let Some(t) = trickle {
                        let _ = self.stream.write_all(t).await;
                    }
                }
            }
        }
        self.parse()
    }

    /// Whether the broker closes the connection within `within`, while `trickle` is sent every
    /// 200 ms (a client that keeps sending a body nobody reads).
    async fn closed_within(&mut self, within: Duration, trickle: Option<&[u8]>) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout(Duration::from_millis(200), self.stream.read(&mut chunk))
                .await
            {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => {
                    if let Some(t) = trickle {
                        if self.stream.write_all(t).await.is_err() {
                            return true;
                        }
                    }
                }
            }
        }
        false
    }
}

fn head(method: &str, path: &str, host: &str, extra: &[String]) -> Vec<u8> {
    let mut h = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for line in extra {
        h.push_str(line);
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

const GENEROUS: Duration = Duration::from_secs(8);

#[tokio::test]
async fn a_request_without_the_key_is_refused_before_its_body_arrives_and_its_connection_closed() {
    let (_dir, broker, _key) = keyed_broker(&[]).await;
    let host = format!("127.0.0.1:{}", broker.port);

    // A declared body well under the old 256 KiB limit, never sent.
    let mut c = Raw::open(broker.port).await;
    c.send(&head(
        "POST",
        "/api/token",
        &host,
        &[
            "Content-Type: application/json".into(),
            "Content-Length: 200000".into(),
        ],
    ))
    .await;
    let reply = c
        .reply(GENEROUS, None)
        .await
        .expect("an answer without waiting for the body");
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.error_code(), "unauthorized");
    assert!(
        c.closed_within(GENEROUS, Some(b"{")).await,
        "the connection is closed, not kept open for the rest of the body"
    );

    // A chunked body trickled one chunk at a time, on a protected route and on an anonymous one.
    for (method, path, status) in [("POST", "/api/token", 401), ("GET", "/api/health", 200)] {
        let mut c = Raw::open(broker.port).await;
        c.send(&head(
            method,
            path,
            &host,
            &["Transfer-Encoding: chunked".into()],
        ))
        .await;
        let reply = c
            .reply(GENEROUS, Some(b"1\r\n \r\n"))
            .await
            .unwrap_or_else(|| panic!("{method} {path}: an answer while the body trickles"));
        assert_eq!(reply.status, status, "{method} {path}: {reply:?}");
        assert!(
            c.closed_within(GENEROUS, Some(b"1\r\n \r\n")).await,
            "{method} {path}: the connection is closed rather than the trickled body drained"
        );
    }
}

#[tokio::test]
async fn bodies_over_the_route_limit_are_refused_with_a_json_413() {
    let (_dir, broker, key) = keyed_broker(&[]).await;
    let host = format!("127.0.0.1:{}", broker.port);
    let keyed = format!("x-functions-key: {key}");

    // Declared too large: refused before anything is read.
    let mut c = Raw::open(broker.port).await;
    c.send(&head(
        "POST",
        "/api/token",
        &host,
        &[keyed.clone(), "Content-Length: 100000".into()],
    ))
    .await;
    let reply = c.reply(GENEROUS, None).await.expect("an answer");
    assert_eq!(reply.status, 413, "{reply:?}");
    assert_eq!(reply.error_code(), "payload_too_large");
    assert!(c.closed_within(GENEROUS, Some(b" ")).await);

    // Chunked, without a length: cut off once past the limit (a valid JSON object padded to
    // 20 KiB, over every route's limit).
    let padded = format!(
        r#"{{"integration": "demo", "connection": "big"{}}}"#,
        " ".repeat(20 * 1024)
    );
    for (path, what) in [
        ("/api/token", "token"),
        ("/api/connections/demo/big/consent-link", "consent link"),
        ("/refresh-timer", "timer"),
    ] {
        let mut c = Raw::open(broker.port).await;
        let mut request = head(
            "POST",
            path,
            &host,
            &[keyed.clone(), "Transfer-Encoding: chunked".into()],
        );
        request.extend(format!("{:x}\r\n{padded}\r\n0\r\n\r\n", padded.len()).bytes());
        c.send(&request).await;
        let reply = c.reply(GENEROUS, None).await.expect("an answer");
        assert_eq!(reply.status, 413, "{what}: {reply:?}");
        assert_eq!(reply.error_code(), "payload_too_large", "{what}");
    }

    // The same request under the limit is served.
    let reply = host_post(
        &broker,
        "/api/token",
        r#"{"integration": "demo", "connection": "small"}"#,
    )
    .await;
    assert_eq!(reply.status, 404, "served: {reply:?}");
}

async fn host_post(broker: &Broker, path: &str, body: &str) -> Reply {
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", broker.base_url))
        .header("x-functions-key", broker.key().unwrap())
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    Reply::from(resp).await
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off_with_a_json_408() {
    let (_dir, broker, key) = keyed_broker(&[]).await;
    let host = format!("127.0.0.1:{}", broker.port);
    let mut c = Raw::open(broker.port).await;
    c.send(&head(
        "POST",
        "/api/token",
        &host,
        &[
            format!("x-functions-key: {key}"),
            "Content-Length: 4000".into(),
        ],
    ))
    .await;
    // One byte every 200 ms: 4000 bytes would take 13 minutes.
    let reply = c
        .reply(Duration::from_secs(40), Some(b" "))
        .await
        .expect("the slow body is cut off");
    assert_eq!(reply.status, 408, "{reply:?}");
    assert_eq!(reply.error_code(), "request_timeout");
    assert!(c.closed_within(GENEROUS, Some(b" ")).await);
}

#[tokio::test]
async fn connections_beyond_broker_max_connections_wait_until_one_closes() {
    let (_dir, broker, key) = keyed_broker(&[("BROKER_MAX_CONNECTIONS", "2")]).await;
    let host = format!("127.0.0.1:{}", broker.port);
    // Two authenticated requests whose bodies have not arrived yet hold both connections.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut c = Raw::open(broker.port).await;
        c.send(&head(
            "POST",
            "/api/token",
            &host,
            &[
                format!("x-functions-key: {key}"),
                "Content-Length: 100".into(),
            ],
        ))
        .await;
        holders.push(c);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut third = Raw::open(broker.port).await;
    third.send(&head("GET", "/api/health", &host, &[])).await;
    let early = third.reply(Duration::from_secs(2), None).await;
    assert!(
        early.is_none(),
        "a third connection is not served while two are open: {early:?}"
    );
    drop(holders);
    let reply = third
        .reply(GENEROUS, None)
        .await
        .expect("served once a connection closed");
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test]
async fn a_host_header_that_does_not_name_the_broker_is_refused_with_a_json_421() {
    let dir = tempfile::tempdir().unwrap();
    let key = format!("front-door-{}", random_hex(16));
    let mut s = spec(&dir, Some(key.clone()), &[]);
    s.public_url = Some("https://broker.example.test".into());
    let broker = Broker::start(&s).await;
    let port = broker.port;
    let keyed = format!("x-functions-key: {key}");

    // A page whose host name was rebound to 127.0.0.1 sends its own name; even with the key
    // (a browser that learnt it) nothing is answered but the refusal.
    for (host, path, extra) in [
        (format!("rebind.example:{port}"), "/api/health", vec![]),
        (
            format!("rebind.example:{port}"),
            "/api/token/demo/x",
            vec![keyed.clone()],
        ),
        (
            format!("127.0.0.1.nip.example:{port}"),
            "/api/connections",
            vec![keyed.clone()],
        ),
        (format!("127.0.0.1:{}", port + 1), "/api/health", vec![]),
        ("broker.example.test:8443".to_owned(), "/api/health", vec![]),
    ] {
        let mut c = Raw::open(port).await;
        c.send(&head("GET", path, &host, &extra)).await;
        let reply = c.reply(GENEROUS, None).await.expect("an answer");
        assert_eq!(reply.status, 421, "Host {host}: {reply:?}");
        assert_eq!(reply.error_code(), "misdirected_request", "Host {host}");
        assert!(!reply.body.contains("rebind"), "the Host is not echoed");
    }
    // No Host at all (HTTP/1.0).
    let mut c = Raw::open(port).await;
    c.send(b"GET /api/health HTTP/1.0\r\n\r\n").await;
    let reply = c.reply(GENEROUS, None).await.expect("an answer");
    assert!(matches!(reply.status, 400 | 421), "no Host: {reply:?}");
    reply.error_code();

    // The loopback names with the port, and the public URL's host, are served.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
        format!("[::1]:{port}"),
        "broker.example.test".to_owned(),
        "broker.example.test:443".to_owned(),
    ] {
        let mut c = Raw::open(port).await;
        c.send(&head(
            "GET",
            "/api/token/demo/x",
            &host,
            std::slice::from_ref(&keyed),
        ))
        .await;
        let reply = c.reply(GENEROUS, None).await.expect("an answer");
        assert_eq!(reply.status, 404, "Host {host}: {reply:?}");
        assert_eq!(reply.error_code(), "integration_not_found", "Host {host}");
    }
}

const HOST_MODE_KEY: &str = "host-mode-key-0123456789abcdef0123456789";

#[tokio::test]
async fn under_the_functions_host_forwarded_requests_with_the_apps_host_names_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut s = spec(&dir, None, &[]);
    s.env.extend([
        ("FUNCTIONS_CUSTOMHANDLER_PORT".to_owned(), port.to_string()),
        (
            "WEBSITE_HOSTNAME".to_owned(),
            "front-door-test.azurewebsites.net".to_owned(),
        ),
        // The token route is anonymous at the host (it accepts Entra ID callers): the broker
        // checks its own key there (tests/api/entra.rs), whatever host name the request carries.
        ("BROKER_API_KEY".to_owned(), HOST_MODE_KEY.to_owned()),
    ]);
    let broker = Broker::start(&s).await;
    assert_eq!(broker.port, port, "the host's port");
    for host in [
        "front-door-test.azurewebsites.net",
        "tokens.contoso.example",
        "127.0.0.1",
    ] {
        let mut c = Raw::open(port).await;
        c.send(&head(
            "GET",
            "/api/token/demo/x",
            host,
            &[
                "X-Azure-Functions-InvocationId: 1".into(),
                format!("x-functions-key: {HOST_MODE_KEY}"),
            ],
        ))
        .await;
        let reply = c.reply(GENEROUS, None).await.expect("an answer");
        assert_eq!(reply.status, 404, "Host {host}: served: {reply:?}");
        assert_eq!(
            reply.header("strict-transport-security"),
            Some("max-age=31536000"),
            "the app's URL is https"
        );
    }
    assert!(
        !dir.path().join("data/api.key").exists(),
        "no key is generated under the host"
    );
}

#[tokio::test]
async fn without_an_api_key_a_loopback_broker_generates_one_and_requires_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(&dir, None, &[]);
    let broker = Broker::start(&s).await;
    let file = dir.path().join("data/api.key");
    let key = std::fs::read_to_string(&file)
        .expect("the key file beside the embedded store")
        .trim()
        .to_owned();
    assert!(key.len() >= 32, "a long key: {} characters", key.len());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "readable by the owner only");
    }

    let refused = host_get(&broker.base_url, "/api/token/demo/x", None).await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(refused.error_code(), "unauthorized");
    let served = host_get(&broker.base_url, "/api/token/demo/x", Some(&key)).await;
    assert_eq!(served.status, 404, "{served:?}");
    let health = host_get(&broker.base_url, "/api/health", None).await;
    assert_eq!(health.status, 200, "health stays anonymous: {health:?}");

    let output = broker.stop().text();
    assert!(
        output.contains(&file.display().to_string()),
        "the start-up log says where the key is:\n{output}"
    );
    assert!(
        output.contains("KEY=$(cat ")
            && output.contains("x-functions-key: $KEY")
            && output.contains("/api/token/"),
        "and how to call the token route with it:\n{output}"
    );
    assert!(!output.contains(&key), "never the key itself");

    // The same key after a restart.
    let again = Broker::start(&s).await;
    assert_eq!(again.key(), Some(key.as_str()));
    let served = host_get(&again.base_url, "/api/token/demo/x", Some(&key)).await;
    assert_eq!(served.status, 404, "{served:?}");
}

#[tokio::test]
async fn an_api_key_shorter_than_32_characters_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let short = format!("short-{}", random_hex(12)); // 30 characters
    let (status, output) = Broker::run_expecting_exit(&spec(&dir, Some(short.clone()), &[])).await;
    assert!(!status.success(), "exit status {status}; output:\n{output}");
    assert!(
        output.contains("BROKER_API_KEY") && output.contains("at least 32"),
        "the message names the setting and the rule:\n{output}"
    );
    assert!(
        output.contains("openssl rand"),
        "and says how to make one:\n{output}"
    );
    assert!(!output.contains(&short), "the key is not echoed:\n{output}");
}

#[tokio::test]
async fn answers_carry_nosniff_and_an_https_public_url_gets_hsts() {
    let app = TestApp::spawn(AppOptions {
        provider: false,
        ..AppOptions::default()
    })
    .await;
    for (what, reply) in [
        ("health", app.health().await),
        ("a JSON error", app.get("/api/token/demo/nobody").await),
        ("no such route", app.get("/api/nothing-here").await),
        (
            "a refused key",
            app.call(Method::GET, "/api/connections", None, Key::None)
                .await,
        ),
    ] {
        assert_eq!(
            reply.header("x-content-type-options").as_deref(),
            Some("nosniff"),
            "{what}: {reply:?}"
        );
        assert_eq!(
            reply.header("strict-transport-security"),
            None,
            "{what}: no HSTS over plain http"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(&dir, None, &[]);
    s.public_url = Some("https://broker.example.test".into());
    let broker = Broker::start(&s).await;
    for path in ["/api/health", "/api/token/demo/x"] {
        let reply = host_get(&broker.base_url, path, broker.key()).await;
        assert_eq!(
            reply.header("strict-transport-security").as_deref(),
            Some("max-age=31536000"),
            "{path}: {reply:?}"
        );
        assert_eq!(
            reply.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
    }
}
