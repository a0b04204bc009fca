//! Slow clients (issue 17, item 9): one address holding hundreds of connections that trickle a
//! request body to the anonymous token endpoint cannot use up the server's connection slots:
//! past `BROKER_MAX_CONNECTIONS_PER_SOURCE` its connections are answered 429 and closed at once,
//! and health checks and callers from other addresses are served as usual.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::*;

const SLOW: usize = 400;

/// A connection from `from` that sends a request head announcing a body, one byte of it, and
/// then nothing more.
async fn slow_client(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    let mut stream = socket.connect(to).await?;
    let head = format!(
        "POST /api/oauth2/token HTTP/1.1\r\nHost: {to}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 4000\r\n\r\ng"
    );
    // A refused connection may already be closed: its write can fail, which is its answer.
    let _ = stream.write_all(head.as_bytes()).await;
    Ok(stream)
}

/// What the server did with a slow connection: `true` when it refused it (429, or closed it
/// without a word). An admitted connection is still open, or was answered 408 when its body
/// did not come in time.
async fn was_refused(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await {
        Err(_) => false, // still held open, waiting for the body
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(n)) => {
            let text = String::from_utf8_lossy(&buf[..n]);
            if text.starts_with("HTTP/1.1 408") {
                return false;
            }
            assert!(
                text.starts_with("HTTP/1.1 429") && text.contains("too_many_connections"),
                "a refused connection is told why: {text}"
            );
            true
        }
    }
}

#[tokio::test]
async fn one_address_holding_slow_connections_cannot_starve_health_checks_or_other_callers() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    // Fewer slots than slow connections: without the per-source cap the slow address holds
    // every slot, and the health check waits for the 10 s body time-out to free one.
    app.stop_broker();
    app.spec
        .env
        .push(("BROKER_MAX_CONNECTIONS".into(), "128".into()));
    app.start_broker().await;
    app.connect("slow").await;
    let to: SocketAddr = app
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();

    // 400 slow connections from 127.0.0.2: more than the server's 128 connection slots.
    let mut held = Vec::new();
    for _ in 0..SLOW {
        if let Ok(s) = slow_client("127.0.0.2", to).await {
            held.push(s);
        }
    }
    assert!(
        held.len() >= SLOW - 10,
        "the attack connected: {}",
        held.len()
    );

    // Another address is served at once: health and a token.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = Instant::now();
    let health = client
        .get(app.url("/api/health"))
        .send()
        .await
        .expect("a health check is answered while one address holds slow connections");
    eprintln!(
        "health check during {SLOW} slow connections: {} in {:?}",
        health.status(),
        started.elapsed()
    );
    assert_eq!(health.status(), 200);
    check_token_reply(&app.token_reply("slow", "").await, "slow");

    // The slow address kept at most its share; the rest were refused, not queued.
    let mut refused = 0;
    for s in &mut held {
        if was_refused(s).await {
            refused += 1;
        }
    }
    let kept = held.len() - refused;
    eprintln!("slow connections kept open: {kept}, refused: {refused}");
    assert!(kept <= 64, "at most the per-source cap stays open: {kept}");
    assert!(kept >= 32, "the cap admits its share, not nothing: {kept}");

    // When the slow address lets go, it can connect again.
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = slow_client("127.0.0.2", to).await.unwrap();
    assert!(
        !was_refused(&mut again).await,
        "a freed place is used again"
    );
}

#[tokio::test]
async fn the_per_source_cap_is_a_setting_and_refusals_are_logged_without_secrets() {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    app.stop_broker();
    app.spec
        .env
        .push(("BROKER_MAX_CONNECTIONS_PER_SOURCE".into(), "3".into()));
    app.start_broker().await;
    let to: SocketAddr = app
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(slow_client("127.0.0.3", to).await.unwrap());
    }
    let mut refused = 0;
    for s in &mut held {
        if was_refused(s).await {
            refused += 1;
        }
    }
    assert_eq!(refused, 3, "three kept, three refused");
    let out = app.stop_broker();
    let log = out.lines().join("\n");
    assert!(
        log.contains("too many open connections from this address") && log.contains("127.0.0.3"),
        "{log}"
    );
}
