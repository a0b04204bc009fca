//! Across a full flow at `RUST_LOG=debug` (consent, token reads, forced and swept refreshes, a failed
//! code exchange), nothing the broker writes to stdout or stderr contains a token, the client secret, an
//! authorization code, a state, the API key, the storage key or the encryption key.

use base64::Engine as _;
use serde_json::Value;

use crate::helpers::*;

/// True when some JSON object in the tree has `key` equal to the string `value`.
fn has_field(v: &Value, key: &str, value: &str) -> bool {
    match v {
        Value::Object(map) => map
            .iter()
            .any(|(k, x)| (k == key && x == value) || has_field(x, key, value)),
        Value::Array(items) => items.iter().any(|x| has_field(x, key, value)),
        _ => false,
    }
}

#[tokio::test]
async fn no_secret_reaches_the_logs() {
    let api_key = format!("key-{}", random_hex(16));
    let mut app = TestApp::spawn(AppOptions {
        store: Store::Table,
        api_key: Some(api_key.clone()),
        ..AppOptions::default()
    })
    .await;
    let conn = "acme";
    let mut secrets: Vec<(String, String)> = vec![
        ("client secret".into(), CLIENT_SECRET.into()),
        ("API key".into(), api_key.clone()),
        ("storage account key".into(), AZURITE_KEY.into()),
        ("encryption key".into(), app.encryption_key.clone()),
        (
            "Basic credentials".into(),
            base64::engine::general_purpose::STANDARD
                .encode(format!("{CLIENT_ID}:{CLIENT_SECRET}")),
        ),
    ];

    // Consent.
    let consent = app.connect(conn).await;
    secrets.push(("state".into(), consent.state.clone()));
    secrets.push(("authorization code".into(), consent.code.clone()));

    // Token reads and refreshes.
    let mut tokens = vec![app.access_token(conn).await];
    let forced = app.token_reply(conn, "?force_refresh=true").await;
    tokens.push(
        check_token_reply(&forced, conn)["access_token"]
            .as_str()
            .unwrap()
            .into(),
    );
    let body = serde_json::json!({"integration": INTEGRATION, "connection": conn, "min_validity_secs": 100000});
    let longer = app.post_json("/api/token", &body.to_string()).await;
    tokens.push(
        check_token_reply(&longer, conn)["access_token"]
            .as_str()
            .unwrap()
            .into(),
    );

    // A failed code exchange.
    let browser = Browser::new();
    let broken = app.consent_until_callback(&browser, "broken").await;
    secrets.push(("state".into(), broken.state.clone()));
    secrets.push(("authorization code".into(), broken.code.clone()));
    let tampered = format!("{}x", broken.code);
    let reply = browser
        .get(&with_query_param(&broken.callback_url, "code", &tampered))
        .await;
    assert_eq!(reply.status, 502, "{reply:?}");
    secrets.push(("tampered authorization code".into(), tampered));

    // The sweep refreshes (after the operator widened the margin).
    let mut logs = app.restart_with_margin(3600).await.lines();
    let rv = app.sweep().await;
    assert_eq!(rv["refreshed"], 1, "{rv}");
    tokens.push(app.access_token(conn).await);
    logs.extend(app.stop_broker().lines());

    for t in &tokens {
        secrets.push(("access token".into(), t.clone()));
    }
    assert!(!logs.is_empty(), "the broker logs");
    let text = logs.join("\n");
    for (what, secret) in &secrets {
        assert!(!secret.is_empty(), "{what} is known to the test");
        for form in encodings_of(secret) {
            if let Some(line) = logs.iter().find(|l| l.contains(&form)) {
                panic!("a log line contains the {what}: {line}");
            }
        }
    }
    assert!(
        !text.contains("SharedKey"),
        "a log line contains a Table Storage Authorization header (azure_core debug logging): {}",
        logs.iter().find(|l| l.contains("SharedKey")).unwrap()
    );

    // Log lines are JSON events carrying the connection as a field.
    let events: Vec<Value> = logs
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!events.is_empty(), "stdout carries JSON lines:\n{text}");
    assert!(
        events.iter().any(|e| has_field(e, "connection", conn)),
        "events name the connection as a field:\n{text}"
    );
    assert!(
        events
            .iter()
            .any(|e| has_field(e, "integration", INTEGRATION)),
        "events name the integration as a field:\n{text}"
    );
}
