//! Standalone mode with `BROKER_API_KEY`: protected routes want the key like a function key
//! (`x-functions-key` header or `?code=`); the callback and health stay anonymous; a non-loopback bind
//! without a key refuses to start.

use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

struct Route {
    name: &'static str,
    method: Method,
    path: &'static str,
    body: Option<String>,
    /// Status once the key is accepted (no consent has happened, no provider is needed).
    ok_status: u16,
}

fn protected_routes() -> Vec<Route> {
    vec![
        Route {
            name: "auth-start",
            method: Method::GET,
            path: "/api/auth/start/demo?connection=keyed",
            body: None,
            ok_status: 302,
        },
        Route {
            name: "token (GET)",
            method: Method::GET,
            path: "/api/token/demo/keyed",
            body: None,
            ok_status: 404,
        },
        Route {
            name: "token (POST)",
            method: Method::POST,
            path: "/api/token",
            body: Some(json!({"integration": "demo", "connection": "keyed"}).to_string()),
            ok_status: 404,
        },
        Route {
            name: "refresh-timer",
            method: Method::POST,
            path: "/refresh-timer",
            body: Some(timer_envelope().to_string()),
            ok_status: 200,
        },
    ]
}

#[tokio::test]
async fn protected_routes_require_the_api_key_in_standalone_mode() {
    let key = format!("key-{}", random_hex(16));
    let app = TestApp::spawn(AppOptions {
        provider: false,
        api_key: Some(key.clone()),
        ..AppOptions::default()
    })
    .await;
    let wrong = format!("wrong-{}", random_hex(16));

    for route in protected_routes() {
        let refusals = [
            ("no key", Key::None),
            ("wrong x-functions-key", Key::Header(wrong.clone())),
            ("wrong ?code=", Key::Query(wrong.clone())),
            ("empty x-functions-key", Key::Header(String::new())),
        ];
        for (case, k) in refusals {
            let reply = app
                .call(route.method.clone(), route.path, route.body.as_deref(), k)
                .await;
            assert_eq!(reply.status, 401, "{} with {case}: {reply:?}", route.name);
            let v = reply.json();
            assert!(
                v.is_object(),
                "{} with {case}: a JSON object: {reply:?}",
                route.name
            );
            assert!(
                v["error"].is_string(),
                "{} with {case}: {reply:?}",
                route.name
            );
            assert!(!reply.body.contains(&key), "the key is never echoed");
        }
        let accepted = [
            ("x-functions-key", Key::Header(key.clone())),
            ("?code=", Key::Query(key.clone())),
        ];
        for (case, k) in accepted {
            let reply = app
                .call(route.method.clone(), route.path, route.body.as_deref(), k)
                .await;
            assert_eq!(
                reply.status, route.ok_status,
                "{} with the key as {case}: {reply:?}",
                route.name
            );
        }
    }

    // Anonymous routes.
    let health = app.call(Method::GET, "/api/health", None, Key::None).await;
    assert_eq!(health.status, 200, "health is anonymous: {health:?}");
    let callback = app
        .call(
            Method::GET,
            "/api/auth/callback?code=abc&state=def",
            None,
            Key::None,
        )
        .await;
    assert_eq!(
        callback.status, 400,
        "the callback is anonymous (the vendor redirects the browser there without a key): {callback:?}"
    );
}

fn standalone_spec(dir: &tempfile::TempDir, bind: &str, api_key: Option<String>) -> BrokerSpec {
    BrokerSpec {
        port: 0,
        bind: bind.to_owned(),
        storage: format!("sqlite:{}", dir.path().join("broker.db").display()),
        table: None,
        encryption_keys: None,
        api_key,
        public_url: None,
        integrations_path: dir.path().join("integrations.json"),
        work_dir: dir.path().to_owned(),
        env: vec![],
    }
}

#[tokio::test]
async fn a_non_loopback_bind_without_an_api_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (status, output) =
        Broker::run_expecting_exit(&standalone_spec(&dir, "0.0.0.0", None)).await;
    assert!(!status.success(), "exit status {status}; output:\n{output}");
    assert!(
        output.contains("BROKER_API_KEY"),
        "the message names BROKER_API_KEY; output:\n{output}"
    );
}

#[tokio::test]
async fn a_non_loopback_bind_with_an_api_key_serves() {
    let dir = tempfile::tempdir().unwrap();
    let key = format!("key-{}", random_hex(16));
    let broker = Broker::start(&standalone_spec(&dir, "0.0.0.0", Some(key.clone()))).await;
    let health = host_get(&broker.base_url, "/api/health", None).await;
    assert_eq!(health.status, 200, "{health:?}");
    let token = host_get(&broker.base_url, "/api/token/demo/x", None).await;
    assert_eq!(token.status, 401, "still protected: {token:?}");
    // No integrations file: the broker starts anyway (infrastructure before the first integration)
    // and says the integration does not exist.
    let token = host_get(&broker.base_url, "/api/token/demo/x", Some(&key)).await;
    assert_eq!(token.status, 404, "unknown integration: {token:?}");
    assert!(token.error_code().len() > 1, "{token:?}");
}
