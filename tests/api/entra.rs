//! Callers with no secret: Microsoft Entra ID access tokens (Data Factory's managed identity, a
//! service principal), verified against a stand-in for Entra on loopback (`broker_testkit::entra`:
//! metadata, a rotating key set, tokens shaped like Entra's v1.0 and v2.0 ones), through the real
//! binary, standalone and as the Functions host calls it.

use std::time::Duration;

use broker_testkit::entra::{Entra, Principal, Signer, Version};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

/// The broker's application ID URI and client id: both forms are accepted.
const APP_ID_URI: &str = "api://oauth-broker-test";
const APP_CLIENT_ID: &str = "5b3c1d2e-0000-4000-8000-0000000000b7";

fn entra_env(entra: &Entra) -> Vec<(String, String)> {
    vec![
        ("BROKER_ENTRA_TENANT_ID".into(), entra.tenant.clone()),
        (
            "BROKER_ENTRA_AUDIENCE".into(),
            format!("{APP_ID_URI},{APP_CLIENT_ID}"),
        ),
        ("BROKER_ENTRA_AUTHORITY".into(), entra.authority.clone()),
    ]
}

/// The test integrations file with `callers`.
fn with_callers(app: &TestApp, callers: Value) -> Value {
    let mut file = integrations_file(&app.oidc().issuer, DEFAULT_MARGIN_SECS);
    file["integrations"][INTEGRATION]["callers"] = callers;
    file
}

/// A broker (SQLite, keyed) with connections `acme` and `contoso`, restarted with Entra ID callers
/// on and `callers` in its integrations file.
async fn app_with_entra(entra: &Entra, callers: Value) -> TestApp {
    let mut app = TestApp::spawn(AppOptions {
        api_key: Some(format!("key-{}", random_hex(16))),
        sqlite_encryption_keys: true,
        ..AppOptions::default()
    })
    .await;
    app.connect("acme").await;
    app.connect("contoso").await;
    app.spec.env.extend(entra_env(entra));
    let file = with_callers(&app, callers);
    app.restart_with_integrations(&file).await;
    wait_for_keys(entra, 1).await;
    app
}

/// Until the broker has fetched the key set `n` times (the first is the prefetch at start).
async fn wait_for_keys(entra: &Entra, n: u32) {
    for _ in 0..200 {
        if entra.jwks_fetches() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the broker fetched the key set {} times, not {n}",
        entra.jwks_fetches()
    );
}

async fn bearer_call(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<&str>,
    token: &str,
) -> Reply {
    let mut req = host_headers(reqwest::Client::new().request(method, app.url(path)))
        .header("Authorization", format!("Bearer {token}"));
    if let Some(b) = body {
        req = req
            .header("Content-Type", "application/json")
            .body(b.to_owned());
    }
    let reply = Reply::from(req.send().await.unwrap()).await;
    assert_no_undocumented_5xx(&reply, path);
    reply
}

async fn token_get(app: &TestApp, conn: &str, token: &str) -> Reply {
    bearer_call(app, Method::GET, &TestApp::token_path(conn), None, token).await
}

async fn works_at_the_vendor(app: &TestApp, token: &str) -> bool {
    let resp = reqwest::Client::new()
        .get(format!("{}/me", app.oidc().issuer))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let ok = resp.status().is_success();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    ok && body["sub"].is_string()
}

#[track_caller]
fn assert_invalid_token(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 401, "{what}: {reply:?}");
    assert_eq!(reply.error_code(), "invalid_token", "{what}: {reply:?}");
    assert_eq!(
        reply.header("www-authenticate").as_deref(),
        Some("Bearer error=\"invalid_token\""),
        "{what}: RFC 6750 challenge: {reply:?}"
    );
}

#[tokio::test]
async fn an_allowed_identity_gets_tokens_that_work_at_the_vendor_for_its_connections_only() {
    let entra = Entra::start();
    let adf = Principal::data_factory("adf-acme");
    let sp = Principal::service_principal();
    let app = app_with_entra(
        &entra,
        json!([
            {"object_id": adf.object_id(), "connections": ["acme"], "description": "ADF prod"},
            {"object_id": sp.object_id().to_ascii_uppercase(), "connections": "*"}
        ]),
    )
    .await;

    // Data Factory's managed identity, a v1.0 token for the application ID URI (what its Web
    // activity gets with authentication MSI and resource api://…), and no key at all.
    let v1 = entra.token(Version::V1, &adf, APP_ID_URI, &[]);
    let reply = token_get(&app, "acme", &v1).await;
    let body = check_token_reply(&reply, "acme");
    assert!(
        works_at_the_vendor(&app, body["access_token"].as_str().unwrap()).await,
        "the token works at the vendor (oidc-provider)"
    );
    let post = bearer_call(
        &app,
        Method::POST,
        "/api/token",
        Some(&json!({"integration": INTEGRATION, "connection": "acme"}).to_string()),
        &v1,
    )
    .await;
    check_token_reply(&post, "acme");

    // The same identity, another connection; an integration that does not exist: 403 both.
    for path in [
        TestApp::token_path("contoso"),
        "/api/token/nosuch/acme".to_owned(),
    ] {
        let r = bearer_call(&app, Method::GET, &path, None, &v1).await;
        assert_eq!(r.status, 403, "{path}: {r:?}");
        assert_eq!(r.error_code(), "forbidden", "{r:?}");
    }
    let r = bearer_call(
        &app,
        Method::POST,
        "/api/token",
        Some(&json!({"integration": INTEGRATION, "connection": "contoso"}).to_string()),
        &v1,
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");

    // A service principal with a v2.0 token for the client id: every connection ("*").
    let v2 = entra.token(Version::V2, &sp, APP_CLIENT_ID, &[]);
    for conn in ["acme", "contoso"] {
        check_token_reply(&token_get(&app, conn, &v2).await, conn);
    }
    // A valid token of an identity nobody listed.
    let stranger = entra.token(
        Version::V2,
        &Principal::service_principal(),
        APP_CLIENT_ID,
        &[],
    );
    assert_eq!(token_get(&app, "acme", &stranger).await.status, 403);

    // The decision is logged with the caller's object id and app id, never the token.
    let logged = |log: &str| {
        log.lines().any(|l| {
            l.contains("Entra ID caller on the token route")
                && l.contains(adf.object_id())
                && l.contains(adf.client_id())
                && l.contains("\"forbidden\"")
        })
    };
    let log = app.broker().process().text_when(logged);
    assert!(logged(&log), "{log}");
    for t in [&v1, &v2, &stranger] {
        let signature = t.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "no token in the log");
    }
}

#[tokio::test]
async fn a_token_failing_any_check_is_refused_with_invalid_token_and_the_log_names_the_check() {
    let entra = Entra::start();
    let adf = Principal::data_factory("adf-acme");
    // A key of another type published under its own kid.
    entra.publish_extra(json!({"kty": "EC", "use": "sig", "kid": "ec-key", "crv": "P-256",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}));
    let app = app_with_entra(
        &entra,
        json!([{"object_id": adf.object_id(), "connections": "*"}]),
    )
    .await;

    let good = entra.claims(Version::V1, &adf, APP_ID_URI, &[]);
    let now = good["iat"].as_i64().unwrap();
    let changed = |field: &str, value: Value| {
        let mut c = good.clone();
        c[field] = value;
        entra.sign(&c, &Signer::Key(0))
    };
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "wrong audience",
            changed("aud", json!("api://another-app")),
            "aud",
            "claims",
        ),
        (
            "wrong issuer",
            changed(
                "iss",
                json!("https://sts.windows.net/00000000-0000-0000-0000-000000000000/"),
            ),
            "iss",
            "claims",
        ),
        (
            "v2 issuer of another authority",
            changed(
                "iss",
                json!(format!("https://login.example.com/{}/v2.0", entra.tenant)),
            ),
            "iss",
            "claims",
        ),
        (
            "wrong tenant",
            changed("tid", json!("00000000-0000-0000-0000-000000000000")),
            "tid",
            "claims",
        ),
        (
            "expired beyond the skew",
            changed("exp", json!(now - 301)),
            "exp",
            "lifetime",
        ),
        (
            "not yet valid beyond the skew",
            changed("nbf", json!(now + 600)),
            "nbf",
            "lifetime",
        ),
        (
            "alg none",
            entra.sign(&good, &Signer::None),
            "alg",
            "signature",
        ),
        (
            "HS256 keyed with the public key",
            entra.sign(&good, &Signer::Hs256WithPublicKey(0)),
            "alg",
            "signature",
        ),
        (
            "PS256",
            entra.sign(&good, &Signer::Alg("PS256", 0)),
            "alg",
            "signature",
        ),
        (
            "no kid",
            entra.sign(&good, &Signer::NoKid(0)),
            "kid",
            "signature",
        ),
        (
            "kid of a key of another type",
            entra.sign(&good, &Signer::KeyWithKid(0, "ec-key".into())),
            "key_type",
            "signature",
        ),
        (
            "signed with another key under the published kid",
            entra.sign(&good, &Signer::KeyWithKid(2, entra.key(0).kid.clone())),
            "signature",
            "signature",
        ),
        (
            "claims edited after signing",
            {
                let t = entra.sign(&good, &Signer::Key(0));
                let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
                let mut c = good.clone();
                c["oid"] = json!(Principal::service_principal().object_id());
                use base64::Engine as _;
                parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.to_string());
                parts.join(".")
            },
            "signature",
            "signature",
        ),
        (
            "not a JWT",
            "opaque-token-value".into(),
            "malformed",
            "malformed",
        ),
    ];
    for (what, token, check, reason) in &cases {
        let reply = token_get(&app, "acme", token).await;
        assert_invalid_token(&reply, what);
        assert_eq!(
            reply.json()["error_description"],
            json!(format!("the bearer token was not accepted ({reason})")),
            "{what}: the stable short reason only"
        );
        let names_the_check = |log: &str| {
            log.lines().any(|l| {
                l.contains("an Entra ID token was refused")
                    && l.contains(&format!("\"check\":\"{check}\""))
            })
        };
        let log = app.broker().process().text_when(names_the_check);
        assert!(
            names_the_check(&log),
            "{what}: the log names the check {check}: {log}"
        );
        let tail = token.rsplit('.').next().unwrap_or(token);
        assert!(
            tail.len() < 8 || !log.contains(tail),
            "{what}: the token is not logged"
        );
        assert!(
            !log.contains(token.as_str()),
            "{what}: the token is not logged"
        );
    }
    // A refused token is refused whatever key comes with it, and on the admin routes too.
    let wrong = &cases[0].1;
    let req = host_headers(reqwest::Client::new().get(app.url(&TestApp::token_path("acme"))))
        .header("Authorization", format!("Bearer {wrong}"))
        .header("x-functions-key", app.broker().key().unwrap());
    assert_invalid_token(
        &Reply::from(req.send().await.unwrap()).await,
        "with the admin key",
    );
    assert_invalid_token(
        &bearer_call(&app, Method::GET, "/api/connections", None, wrong).await,
        "admin route",
    );
    // Inside the 5 minutes of skew both ways: accepted.
    let mut edge = good.clone();
    edge["exp"] = json!(now - 240);
    edge["nbf"] = json!(now + 240);
    check_token_reply(
        &token_get(&app, "acme", &entra.sign(&edge, &Signer::Key(0))).await,
        "acme",
    );
    // None of the refused tokens made the broker fetch keys: only an unknown kid may (below).
    assert_eq!(entra.jwks_fetches(), 1);
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_keys_once_a_minute_and_a_rotated_in_key_is_accepted() {
    let entra = Entra::start();
    let adf = Principal::data_factory("adf-acme");
    let app = app_with_entra(
        &entra,
        json!([{"object_id": adf.object_id(), "connections": ["acme"]}]),
    )
    .await;
    let claims = entra.claims(Version::V1, &adf, APP_ID_URI, &[]);
    check_token_reply(
        &token_get(&app, "acme", &entra.sign(&claims, &Signer::Key(0))).await,
        "acme",
    );
    assert_eq!(
        entra.jwks_fetches(),
        1,
        "a cached key: no fetch on the hot path"
    );

    // Entra rolls its keys over: key 1 replaces key 0.
    entra.publish(&[1]);
    let rotated = entra.sign(&claims, &Signer::Key(1));
    check_token_reply(&token_get(&app, "acme", &rotated).await, "acme");
    assert_eq!(
        entra.jwks_fetches(),
        2,
        "the unknown kid made the broker fetch the keys again"
    );
    // Again: cached now.
    check_token_reply(&token_get(&app, "acme", &rotated).await, "acme");
    // The retired key is gone from the set; a key never published is unknown: both refused, and
    // within the minute neither fetches again. RS256 signing is deterministic, so the retired
    // key's token is the very token accepted (and kept as verified) above: the fetch forgot it.
    for (what, signer) in [
        ("retired key", Signer::Key(0)),
        ("unknown key", Signer::Key(2)),
    ] {
        let reply = token_get(&app, "acme", &entra.sign(&claims, &signer)).await;
        assert_invalid_token(&reply, what);
    }
    for _ in 0..5 {
        let t = entra.sign(
            &claims,
            &Signer::KeyWithKid(2, format!("kid-{}", random_hex(4))),
        );
        assert_invalid_token(&token_get(&app, "acme", &t).await, "random kid");
    }
    assert_eq!(entra.jwks_fetches(), 2, "at most one refetch a minute");
    let log = app
        .broker()
        .process()
        .text_when(|l| l.contains("\"check\":\"unknown_kid\""));
    assert!(log.contains("\"check\":\"unknown_kid\""), "{log}");
}

#[tokio::test]
async fn the_admin_role_reaches_the_admin_routes_and_a_pipeline_identity_does_not() {
    let entra = Entra::start();
    let adf = Principal::data_factory("adf-acme");
    let ops = Principal::service_principal();
    let app = app_with_entra(
        &entra,
        json!([{"object_id": adf.object_id(), "connections": ["acme"]}]),
    )
    .await;
    let admin = entra.token(Version::V2, &ops, APP_CLIENT_ID, &["Broker.Admin"]);
    let pipeline = entra.token(Version::V1, &adf, APP_ID_URI, &[]);
    let other_role = entra.token(Version::V2, &ops, APP_CLIENT_ID, &["Broker.Reader"]);

    let list = bearer_call(&app, Method::GET, "/api/connections", None, &admin).await;
    assert_eq!(list.status, 200, "{list:?}");
    let names: Vec<String> = list.json()["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["connection"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        names.contains(&"acme".to_owned()) && names.contains(&"contoso".to_owned()),
        "{list:?}"
    );
    let show = bearer_call(
        &app,
        Method::GET,
        &format!("/api/connections/{INTEGRATION}/acme"),
        None,
        &admin,
    )
    .await;
    assert_eq!(show.status, 200, "{show:?}");
    let link = bearer_call(
        &app,
        Method::POST,
        &format!("/api/connections/{INTEGRATION}/acme/consent-link"),
        Some(""),
        &admin,
    )
    .await;
    assert_eq!(link.status, 201, "{link:?}");
    let status = bearer_call(&app, Method::GET, "/api/status?format=json", None, &admin).await;
    assert_eq!(status.status, 200, "{status:?}");

    for (who, token) in [
        ("pipeline identity", &pipeline),
        ("another role", &other_role),
    ] {
        for (method, path) in [
            (Method::GET, "/api/connections".to_owned()),
            (
                Method::GET,
                format!("/api/connections/{INTEGRATION}/acme/credentials"),
            ),
            (
                Method::POST,
                format!("/api/connections/{INTEGRATION}/acme/consent-link"),
            ),
            (
                Method::DELETE,
                format!("/api/connections/{INTEGRATION}/acme"),
            ),
            (Method::GET, "/api/status?format=json".to_owned()),
        ] {
            let r = bearer_call(
                &app,
                method.clone(),
                &path,
                (method == Method::POST).then_some(""),
                token,
            )
            .await;
            assert_eq!(r.status, 403, "{who} {method} {path}: {r:?}");
            assert_eq!(r.error_code(), "forbidden", "{r:?}");
        }
    }
    // The admin role manages; it does not open the token route for connections callers do not list.
    let r = token_get(&app, "acme", &admin).await;
    assert_eq!(r.status, 403, "{r:?}");
    // The pipeline identity still gets its token; the connection was not deleted.
    check_token_reply(&token_get(&app, "acme", &pipeline).await, "acme");
}

/// The host forwards a request as it came (no key of its own), so a route that is anonymous at
/// the host must be refused by the broker unless it carries a caller the broker verifies.
#[tokio::test]
async fn under_the_host_the_broker_checks_every_anonymous_route_and_a_token_key_opens_only_the_token_routes(
) {
    let entra = Entra::start();
    let adf = Principal::data_factory("adf-acme");
    let admin_key = format!("admin-{}", random_hex(16));
    let token_key = format!("token-{}", random_hex(16));
    let mut app = TestApp::spawn(AppOptions {
        api_key: Some(admin_key.clone()),
        sqlite_encryption_keys: true,
        ..AppOptions::default()
    })
    .await;
    app.connect("acme").await;
    app.spec.env.extend(entra_env(&entra));
    app.spec.env.push((
        "FUNCTIONS_CUSTOMHANDLER_PORT".into(),
        app.spec.port.to_string(),
    ));
    app.spec.env.push((
        "BROKER_TOKEN_KEYS".into(),
        format!("old-{},{token_key}", random_hex(16)),
    ));
    let file = with_callers(
        &app,
        json!([{"object_id": adf.object_id(), "connections": ["acme"]}]),
    );
    app.restart_with_integrations(&file).await;
    wait_for_keys(&entra, 1).await;

    let routes = [
        (Method::GET, TestApp::token_path("acme"), true),
        (Method::POST, "/api/token".to_owned(), true),
        (Method::GET, "/api/connections".to_owned(), false),
        (
            Method::GET,
            format!("/api/connections/{INTEGRATION}/acme"),
            false,
        ),
        (
            Method::POST,
            format!("/api/connections/{INTEGRATION}/acme/consent-link"),
            false,
        ),
        (
            Method::GET,
            format!("/api/connections/{INTEGRATION}/acme/credentials"),
            false,
        ),
        (
            Method::POST,
            format!("/api/connections/{INTEGRATION}/acme/credentials"),
            false,
        ),
        (
            Method::DELETE,
            format!("/api/connections/{INTEGRATION}/acme/credentials/pc_nosuch"),
            false,
        ),
        (Method::GET, "/api/status?format=json".to_owned(), false),
        // Last: it ends the connection.
        (
            Method::DELETE,
            format!("/api/connections/{INTEGRATION}/acme"),
            false,
        ),
    ];
    let body = json!({"integration": INTEGRATION, "connection": "acme"}).to_string();
    for (method, path, token_route) in &routes {
        let send = |key: Key| {
            let b = (*method == Method::POST).then(|| {
                if *token_route {
                    body.clone()
                } else {
                    String::new()
                }
            });
            let app = &app;
            let method = method.clone();
            let path = path.clone();
            async move { app.call(method, &path, b.as_deref(), key).await }
        };
        let what = format!("{method} {path}");
        {
            let none = send(Key::None).await;
            assert_eq!(none.status, 401, "{what} without a key: {none:?}");
            let function_key =
                send(Key::Header(format!("host-function-key-{}", random_hex(8)))).await;
            assert_eq!(
                function_key.status, 401,
                "{what} with a key the broker does not know: {function_key:?}"
            );
            let by_token_key = send(Key::Header(token_key.clone())).await;
            if *token_route {
                check_token_reply(&by_token_key, "acme");
                check_token_reply(&send(Key::Query(token_key.clone())).await, "acme");
                let entra_reply = bearer_call(
                    &app,
                    method.clone(),
                    path,
                    Some(&body),
                    &entra.token(Version::V1, &adf, APP_ID_URI, &[]),
                )
                .await;
                check_token_reply(&entra_reply, "acme");
            } else {
                assert_eq!(
                    by_token_key.status, 403,
                    "{what}: a token key opens only the token routes: {by_token_key:?}"
                );
                assert_eq!(by_token_key.error_code(), "forbidden");
            }
        }
        let by_admin = send(Key::Header(admin_key.clone())).await;
        assert!(
            ![401, 403].contains(&by_admin.status) && by_admin.status < 500,
            "{what} with BROKER_API_KEY: {by_admin:?}"
        );
    }
    // The host still protects auth/start with its function keys: the broker does not check it.
    let start = app
        .call(
            Method::GET,
            &format!("/api/auth/start/{INTEGRATION}?connection=x"),
            None,
            Key::None,
        )
        .await;
    assert_eq!(start.status, 302, "{start:?}");
}

#[tokio::test]
async fn without_entra_settings_a_bearer_token_is_no_caller() {
    let app = TestApp::spawn(AppOptions {
        api_key: Some(format!("key-{}", random_hex(16))),
        ..AppOptions::default()
    })
    .await;
    app.connect("acme").await;
    let entra = Entra::start();
    let token = entra.token(Version::V1, &Principal::data_factory("x"), APP_ID_URI, &[]);
    let r = token_get(&app, "acme", &token).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        r.error_code(),
        "unauthorized",
        "the key is still required: {r:?}"
    );
    assert_eq!(entra.metadata_fetches(), 0);
}
