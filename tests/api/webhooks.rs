//! Events and webhooks against the real binary and oidc-provider: a local
//! receiver (the user's system, so written here) gets signed events, at least
//! once, across failures, restarts and several broker processes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::concurrency::{open_store, set_expiry};
use crate::helpers::*;

pub const WEBHOOK_SECRET: &str = "whsec-test-3kQ9vL2pX7mN4rT8";

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request target (path and query).
    pub target: String,
    pub headers: HashMap<String, String>,
    pub body: String,
    pub status: u16,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
    pub fn event_type(&self) -> String {
        self.json()["type"].as_str().unwrap_or_default().to_owned()
    }
    pub fn event_id(&self) -> String {
        self.json()["id"].as_str().unwrap_or_default().to_owned()
    }
}

#[derive(Default)]
struct ReceiverState {
    /// Statuses to answer, in order; 200 once it is empty.
    script: VecDeque<u16>,
    /// Answer the first `n` requests of every event id with 500.
    fail_first_per_event: usize,
    /// Never answer: hold every request open until the sender gives up.
    hang: bool,
    /// Event types of the requests whose sender hung up while we held them (`hang`).
    abandoned: Vec<String>,
    requests: Vec<Received>,
}

/// A webhook receiver on 127.0.0.1 (minimal HTTP/1.1, one request per connection).
pub struct Receiver {
    pub url: String,
    state: Arc<Mutex<ReceiverState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Request = (String, HashMap<String, String>, String);

async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
    let target = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or_default()
        .to_owned();
    Some((target, headers, body))
}

impl Receiver {
    pub async fn start(script: &[u16], fail_first_per_event: usize) -> Receiver {
        Self::spawn(script, fail_first_per_event, false).await
    }

    /// A receiver that takes each request and never answers (a stuck system).
    pub async fn hanging() -> Receiver {
        Self::spawn(&[], 0, true).await
    }

    async fn spawn(script: &[u16], fail_first_per_event: usize, hang: bool) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/broker", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(ReceiverState {
            script: script.iter().copied().collect(),
            fail_first_per_event,
            hang,
            abandoned: Vec::new(),
            requests: Vec::new(),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let Some((target, headers, body)) = read_request(&mut stream).await else {
                        return;
                    };
                    let status = {
                        let mut s = shared.lock().unwrap();
                        let id = serde_json::from_str::<Value>(&body)
                            .ok()
                            .and_then(|v| v["id"].as_str().map(str::to_owned))
                            .unwrap_or_default();
                        let seen = s.requests.iter().filter(|r| r.event_id() == id).count();
                        let status = match s.script.pop_front() {
                            Some(code) => code,
                            None if seen < s.fail_first_per_event => 500,
                            None => 200,
                        };
                        s.requests.push(Received {
                            target,
                            headers,
                            body,
                            status,
                            at: Instant::now(),
                        });
                        if s.hang {
                            None
                        } else {
                            Some(status)
                        }
                    };
                    let Some(status) = status else {
                        // Hold the request until the sender hangs up.
                        let mut sink = [0u8; 256];
                        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                        let mut s = shared.lock().unwrap();
                        let kind = s
                            .requests
                            .last()
                            .map(Received::event_type)
                            .unwrap_or_default();
                        s.abandoned.push(kind);
                        return;
                    };
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Receiver { url, state, task }
    }

    /// The event types of the held requests the sender gave up on (`hanging` receivers).
    pub fn abandoned(&self) -> Vec<String> {
        self.state.lock().unwrap().abandoned.clone()
    }

    pub fn requests(&self) -> Vec<Received> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Waits until `done` holds for the requests received so far (at most 60 s).
    pub async fn wait_until(
        &self,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.requests();
            if done(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver never got {what}; it got: {:#?}",
                r.iter()
                    .map(|x| (x.status, x.body.clone()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for a successful delivery of an event of `kind`; returns it.
    pub async fn delivered(&self, kind: &str) -> Received {
        let r = self
            .wait_until(kind, |r| {
                r.iter().any(|x| x.status == 200 && x.event_type() == kind)
            })
            .await;
        r.into_iter()
            .find(|x| x.status == 200 && x.event_type() == kind)
            .unwrap()
    }
}

/// Checks `X-Broker-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` the way
/// docs/operations.md tells receivers to: recompute, compare, and refuse an old timestamp.
#[track_caller]
pub fn assert_signed(r: &Received) {
    assert_signed_with(r, WEBHOOK_SECRET);
}

/// Whether `r`'s signature verifies with `secret` (timestamp not checked).
pub fn signed_with(r: &Received, secret: &str) -> bool {
    let Some(header) = r.headers.get("x-broker-signature") else {
        return false;
    };
    let part = |k: &str| {
        header
            .split(',')
            .find_map(|p| p.strip_prefix(&format!("{k}=")).map(str::to_owned))
    };
    let (Some(t), Some(v1)) = (part("t"), part("v1")) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", r.body).as_bytes());
    mac.verify_slice(&hex_bytes(&v1)).is_ok()
}

/// [`assert_signed`] with a receiver's own secret.
#[track_caller]
pub fn assert_signed_with(r: &Received, secret: &str) {
    let header = r
        .headers
        .get("x-broker-signature")
        .unwrap_or_else(|| panic!("no X-Broker-Signature: {r:?}"));
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = Some(x.to_owned()),
            Some(("v1", x)) => v1 = Some(x.to_owned()),
            _ => {}
        }
    }
    let (t, v1) = (t.expect("t="), v1.expect("v1="));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", r.body).as_bytes());
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, expected, "the signature verifies: {header}");
    let age = time::OffsetDateTime::now_utc().unix_timestamp() - t.parse::<i64>().unwrap();
    assert!((-5..300).contains(&age), "a fresh timestamp: {header}");
    // A body changed in transit does not verify.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{} ", r.body).as_bytes());
    assert!(mac.verify_slice(&hex_bytes(&v1)).is_err());
}

fn hex_bytes(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

/// The secret of the `i`-th receiver when several JSON receivers each have their own.
pub fn receiver_secret(i: usize) -> String {
    if i == 0 {
        WEBHOOK_SECRET.to_owned()
    } else {
        format!("{WEBHOOK_SECRET}-{i}")
    }
}

fn is_chat(url: &str) -> bool {
    url.ends_with("format=teams") || url.ends_with("format=slack")
}

/// Restarts the app's broker with webhooks to `receivers` and `extra` settings: one
/// `BROKER_WEBHOOK_SECRET` for a single JSON receiver, else `BROKER_WEBHOOK_SECRETS`
/// ([`receiver_secret`] for each JSON receiver, none for Teams or Slack).
pub async fn with_webhooks(app: &mut TestApp, receivers: &[&str], extra: &[(&str, &str)]) {
    app.spec
        .env
        .push(("BROKER_WEBHOOK_URL".into(), receivers.join(",")));
    if receivers.iter().filter(|u| !is_chat(u)).count() > 1 {
        let secrets: Vec<String> = receivers
            .iter()
            .enumerate()
            .map(|(i, u)| {
                if is_chat(u) {
                    String::new()
                } else {
                    receiver_secret(i)
                }
            })
            .collect();
        app.spec
            .env
            .push(("BROKER_WEBHOOK_SECRETS".into(), secrets.join(",")));
    } else {
        app.spec
            .env
            .push(("BROKER_WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into()));
    }
    app.spec
        .env
        .extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    app.restart_with_margin(DEFAULT_MARGIN_SECS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_reaches_the_webhook_within_one_sweep_with_a_consent_link_that_recovers_it()
{
    let mut app = TestApp::spawn(AppOptions::on(Store::Table)).await;
    let receiver = Receiver::start(&[], 0).await;
    with_webhooks(&mut app, &[&receiver.url], &[]).await;
    let conn = "globex";
    app.connect(conn).await;
    let created = receiver.delivered("connection.created").await;
    assert_signed(&created);
    let c = created.json();
    assert_eq!(
        (
            c["integration"].as_str(),
            c["connection"].as_str(),
            c["status"].as_str()
        ),
        (Some(INTEGRATION), Some(conn), Some("active")),
        "{c}"
    );
    assert_eq!(
        created.headers.get("x-broker-event-id"),
        Some(&created.event_id())
    );

    // The grant is revoked at the vendor; its token falls due; one sweep finds out.
    let token = app.access_token(conn).await;
    app.oidc().revoke(&token, "access_token").await;
    set_expiry(&app, conn, 5).await;
    let rv = app.sweep().await;
    assert_eq!(rv["reauthorization_required"], 1, "{rv}");
    let dead = receiver
        .delivered("connection.reauthorization_required")
        .await;
    assert_signed(&dead);
    let d = dead.json();
    for k in [
        "id",
        "type",
        "occurred_at",
        "integration",
        "connection",
        "status",
        "error",
        "consent_link",
    ] {
        assert!(d.get(k).is_some(), "{k} in {d}");
    }
    assert_eq!(d["status"], "reauthorization_required", "{d}");
    assert_eq!(d["error"], "invalid_grant", "the vendor's error code: {d}");
    assert_eq!(d["connection"], conn);
    assert_ne!(d["id"], c["id"]);
    let occurred = d["occurred_at"].as_str().unwrap();
    time::OffsetDateTime::parse(occurred, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("occurred_at {occurred:?}: {e}"));
    let link = d["consent_link"].as_str().unwrap().to_owned();
    assert!(
        link.starts_with(&format!("{}/api/auth/link?t=", app.base_url())),
        "a keyless consent link: {link}"
    );
    for secret in [CLIENT_SECRET, &token] {
        assert!(
            !encodings_of(secret).iter().any(|e| dead.body.contains(e)),
            "no secret in the event"
        );
    }

    // The link works without a key: consenting through it heals the connection.
    let browser = Browser::new();
    let opened = browser.get(&link).await;
    assert_eq!(opened.status, 302, "{opened:?}");
    let callback = browser
        .consent(&opened.location(), &app.redirect_uri())
        .await;
    let page = browser.get(&callback).await;
    assert_eq!(page.status, 200, "{page:?}");
    let recovered = receiver.delivered("connection.recovered").await;
    assert_signed(&recovered);
    assert_eq!(recovered.json()["connection"], conn);
    assert_eq!(recovered.json()["status"], "active");
    let healed = app.access_token(conn).await;
    assert!(app.oidc().is_active(&healed).await);

    // Deleting it is an event too; and every event was also a log line.
    let reply = app
        .call(
            reqwest::Method::DELETE,
            &format!("/api/connections/{INTEGRATION}/{conn}"),
            None,
            Key::Configured,
        )
        .await;
    assert_eq!(reply.status, 204, "{reply:?}");
    receiver.delivered("connection.deleted").await;
    let out = app.stop_broker().text();
    for kind in [
        "connection.created",
        "connection.reauthorization_required",
        "connection.recovered",
        "connection.deleted",
    ] {
        let lines: Vec<Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == kind)
            .collect();
        assert_eq!(lines.len(), 1, "one log line for {kind}");
        assert_eq!(lines[0]["integration"], INTEGRATION);
        assert_eq!(lines[0]["connection"], conn);
    }
    let link_token = query_param(&link, "t").unwrap();
    assert!(
        !out.contains(&link_token),
        "the consent link is never logged"
    );
    assert!(
        !out.contains(&receiver.url),
        "the receiver's URL is never logged"
    );
    assert!(
        !out.contains(WEBHOOK_SECRET),
        "the signing secret is never logged"
    );
}

#[tokio::test]
async fn a_receiver_that_fails_twice_gets_the_event_on_the_third_try() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let receiver = Receiver::start(&[500, 503], 0).await;
    with_webhooks(
        &mut app,
        &[&receiver.url],
        &[("BROKER_WEBHOOK_RETRY_SECS", "1")],
    )
    .await;
    app.connect("acme").await;
    let r = receiver
        .wait_until("a third attempt", |r| r.len() >= 3)
        .await;
    let statuses: Vec<u16> = r.iter().map(|x| x.status).collect();
    assert_eq!(statuses, [500, 503, 200]);
    assert!(
        r.iter().all(|x| x.body == r[0].body),
        "the same event each time"
    );
    assert_eq!(r[0].event_type(), "connection.created");
    for x in &r {
        assert_signed(x);
    }
    // The retry waited the configured delay, then twice that.
    assert!(
        r[1].at - r[0].at >= Duration::from_millis(900),
        "{:?}",
        r[1].at - r[0].at
    );
    assert!(
        r[2].at - r[1].at >= Duration::from_millis(1900),
        "{:?}",
        r[2].at - r[1].at
    );
    // Delivered: the outbox is empty and nothing more arrives.
    let store = open_store(&app);
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.outbox_due(later, 10).await.unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the delivered entry leaves the outbox"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.requests().len(), 3);
}

#[tokio::test]
async fn an_event_survives_a_broker_restart_between_failure_and_retry() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Table)).await;
    let receiver = Receiver::start(&[500], 0).await;
    with_webhooks(
        &mut app,
        &[&receiver.url],
        &[("BROKER_WEBHOOK_RETRY_SECS", "3")],
    )
    .await;
    app.connect("acme").await;
    receiver
        .wait_until("a first attempt", |r| !r.is_empty())
        .await;
    // Wait until the failure is recorded in the outbox, then kill the broker.
    let store = open_store(&app);
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(2);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let due = store.outbox_due(later, 10).await.unwrap();
        if due.iter().any(|v| v.value.attempts == 1) {
            break;
        }
        assert!(Instant::now() < deadline, "the failed attempt is recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop_broker();
    assert_eq!(receiver.requests().len(), 1);
    let _restarted = Broker::start(&BrokerSpec {
        port: free_port(),
        ..app.spec.clone()
    })
    .await;
    let r = receiver.wait_until("the retry", |r| r.len() >= 2).await;
    assert_eq!(r[1].status, 200);
    assert_eq!(r[1].event_id(), r[0].event_id(), "the same event, by id");
    assert_eq!(r[1].body, r[0].body);
    assert_signed(&r[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_broker_processes_deliver_each_event_once() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Table)).await;
    // Every event's first attempt fails, so both processes' dispatchers race for its retry.
    let receiver = Receiver::start(&[], 1).await;
    with_webhooks(
        &mut app,
        &[&receiver.url],
        &[("BROKER_WEBHOOK_RETRY_SECS", "1")],
    )
    .await;
    let other = Broker::start(&BrokerSpec {
        port: free_port(),
        ..app.spec.clone()
    })
    .await;
    let conns = ["c1", "c2", "c3"];
    for c in conns {
        app.connect(c).await;
    }
    let r = receiver
        .wait_until("three deliveries", |r| {
            r.iter().filter(|x| x.status == 200).count() >= 3
        })
        .await;
    // Give a double delivery time to show up: both dispatchers poll every second.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let r2 = receiver.requests();
    let mut per_event: HashMap<String, (usize, usize)> = HashMap::new();
    for x in &r2 {
        let e = per_event.entry(x.event_id()).or_default();
        if x.status == 200 {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    assert_eq!(per_event.len(), 3, "{per_event:?}");
    for (id, (ok, failed)) in &per_event {
        assert_eq!(
            (*ok, *failed),
            (1, 1),
            "event {id}: delivered once after one failure"
        );
    }
    assert!(r.len() <= r2.len());
    let store = open_store(&app);
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(2);
    assert!(store.outbox_due(later, 10).await.unwrap().is_empty());
    drop(other);
}

#[tokio::test]
async fn teams_and_slack_receivers_get_readable_messages() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let teams = Receiver::start(&[], 0).await;
    let slack = Receiver::start(&[], 0).await;
    let teams_url = format!("{}?format=teams", teams.url);
    let slack_url = format!("{}?format=slack", slack.url);
    with_webhooks(&mut app, &[&teams_url, &slack_url], &[]).await;
    app.connect("acme").await;
    let t = teams
        .wait_until("a Teams message", |r| r.iter().any(|x| x.status == 200))
        .await;
    let card = t[0].json();
    assert_eq!(card["type"], "message", "{card}");
    let content = &card["attachments"][0]["content"];
    assert_eq!(
        card["attachments"][0]["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(content["type"], "AdaptiveCard", "{card}");
    assert!(t[0].body.contains("acme") && t[0].body.contains("connection.created"));
    let s = slack
        .wait_until("a Slack message", |r| r.iter().any(|x| x.status == 200))
        .await;
    let text = s[0].json()["text"].as_str().unwrap().to_owned();
    assert!(
        text.contains("created") && text.contains("`acme`"),
        "{text}"
    );
    assert_eq!(
        s[0].headers.get("x-broker-event-type").map(String::as_str),
        Some("connection.created")
    );
    // The format suffix is the broker's, not sent to the receiver.
    assert_eq!(s[0].target, "/hooks/broker");
    assert_eq!(t[0].target, "/hooks/broker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_receiver_delays_neither_the_token_answer_nor_the_other_receivers() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let stuck = Receiver::hanging().await;
    let fine = Receiver::start(&[], 0).await;
    with_webhooks(&mut app, &[&stuck.url, &fine.url], &[]).await;
    app.connect("acme").await;
    fine.delivered("connection.created").await;
    stuck
        .wait_until("the held delivery", |r| !r.is_empty())
        .await;

    // The grant dies; the 409 comes back while the stuck receiver still holds its deliveries
    // (the broker gives up on a delivery only after 10 s), and the other receiver gets the event.
    let token = app.access_token("acme").await;
    app.oidc().revoke(&token, "access_token").await;
    let reply = app.token_reply("acme", "?force_refresh=true").await;
    assert_eq!(reply.error_code(), "reauthorization_required");
    assert!(
        !stuck
            .abandoned()
            .contains(&"connection.reauthorization_required".to_owned()),
        "the token answer did not wait for the stuck receiver to time out"
    );
    fine.delivered("connection.reauthorization_required").await;
    // The broker gives up on the stuck deliveries by itself (its 10 s timeout).
    let deadline = Instant::now() + Duration::from_secs(30);
    while stuck.abandoned().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the broker times out stuck deliveries"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_receiver_gets_deliveries_only_its_own_secret_verifies() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let a = Receiver::start(&[], 0).await;
    let b = Receiver::start(&[], 0).await;
    with_webhooks(&mut app, &[&a.url, &b.url], &[]).await;
    app.connect("acme").await;
    let got_a = a.delivered("connection.created").await;
    let got_b = b.delivered("connection.created").await;
    assert_signed_with(&got_a, &receiver_secret(0));
    assert_signed_with(&got_b, &receiver_secret(1));
    // Neither receiver holds what signs for the other: a forged event fails the other's check.
    assert!(!signed_with(&got_a, &receiver_secret(1)));
    assert!(!signed_with(&got_b, &receiver_secret(0)));
}

#[tokio::test]
async fn one_secret_for_several_json_receivers_is_refused_at_start() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    app.stop_broker();
    app.spec.env.push((
        "BROKER_WEBHOOK_URL".into(),
        "https://a.example/h,https://b.example/h".into(),
    ));
    app.spec
        .env
        .push(("BROKER_WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into()));
    let (status, output) = Broker::run_expecting_exit(&app.spec).await;
    assert!(!status.success());
    assert!(output.contains("BROKER_WEBHOOK_SECRETS"), "{output}");
    assert!(
        !output.contains(WEBHOOK_SECRET),
        "the secret is never echoed: {output}"
    );
}
