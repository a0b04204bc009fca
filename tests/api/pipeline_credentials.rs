//! Pipeline credentials and the OAuth 2.0 token endpoint (`POST /api/oauth2/token`), called exactly
//! as ADF's REST connector calls a token endpoint with `OAuth2ClientCredential` (a form body with
//! `grant_type`, `client_id`, `client_secret`, `scope`, `resource`) and as tools that use
//! `client_secret_basic` do; the vendor is oidc-provider, whose userinfo endpoint proves the token.

use base64::Engine as _;
use oauth_broker::domain::{
    ClientId, ConnectionId, IntegrationName, PipelineCredential, Secret, SecretHash,
};
use reqwest::Method;
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};

use crate::concurrency::{open_store, set_expiry};
use crate::helpers::*;

const ENDPOINT: &str = "/api/oauth2/token";

fn credentials_path(conn: &str) -> String {
    format!("/api/connections/{INTEGRATION}/{conn}/credentials")
}

/// Creates a credential through the admin route; returns (client_id, client_secret) and the body.
async fn create_credential(app: &TestApp, conn: &str, body: Option<Value>) -> (String, String) {
    let body = body.map(|b| b.to_string());
    let reply = app
        .call(
            Method::POST,
            &credentials_path(conn),
            body.as_deref(),
            Key::Configured,
        )
        .await;
    assert_eq!(reply.status, 201, "create a credential: {reply:?}");
    assert!(reply.has_no_store(), "{reply:?}");
    let v = reply.json();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "client_id",
            "client_secret",
            "connection",
            "created_at",
            "expires_at",
            "integration"
        ],
        "the documented fields, nothing else: {v}"
    );
    assert_eq!(v["integration"], json!(INTEGRATION), "{v}");
    assert_eq!(v["connection"], json!(conn), "{v}");
    let id = v["client_id"].as_str().unwrap().to_owned();
    let secret = v["client_secret"].as_str().unwrap().to_owned();
    assert!(
        id.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
        "client_id is safe in a URL: {id}"
    );
    assert!(secret.len() >= 40, "a long random secret: {}", secret.len());
    (id, secret)
}

/// What ADF's REST connector sends to its `tokenEndpoint` (`OAuth2ClientCredential`).
async fn adf_token_request(base_url: &str, client_id: &str, secret: &str) -> Reply {
    let resp = reqwest::Client::new()
        .post(format!("{base_url}{ENDPOINT}"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", secret),
            ("scope", "api:read"),
            ("resource", "https://api.vendor.example"),
        ])
        .send()
        .await
        .expect("POST the token endpoint");
    let reply = Reply::from(resp).await;
    assert_no_undocumented_5xx(&reply, "token endpoint");
    reply
}

/// The same with `client_secret_basic` (credentials form-encoded, then base64, RFC 6749 §2.3.1).
async fn basic_token_request(base_url: &str, client_id: &str, secret: &str) -> Reply {
    let resp = reqwest::Client::new()
        .post(format!("{base_url}{ENDPOINT}"))
        .header("Authorization", basic(client_id, secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("POST the token endpoint");
    let reply = Reply::from(resp).await;
    assert_no_undocumented_5xx(&reply, "token endpoint");
    reply
}

fn basic(client_id: &str, secret: &str) -> String {
    let enc = |s: &str| -> String { url::form_urlencoded::byte_serialize(s.as_bytes()).collect() };
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            enc(client_id),
            enc(secret)
        ))
    )
}

/// Asserts an RFC 6749 §5.1 success; returns the access token.
#[track_caller]
fn check_endpoint_success(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "token endpoint: {reply:?}");
    assert!(reply.is_json(), "{reply:?}");
    assert!(reply.has_no_store(), "Cache-Control: no-store: {reply:?}");
    let v = reply.json();
    assert_eq!(v["token_type"], json!("Bearer"), "{v}");
    let expires_in = v["expires_in"].as_i64().unwrap_or(-1);
    assert!(expires_in > 0, "expires_in is the seconds left: {v}");
    v["access_token"].as_str().unwrap_or_default().to_owned()
}

/// Asserts an RFC 6749 §5.2 error with this status and code.
#[track_caller]
fn check_endpoint_error(reply: &Reply, status: u16, code: &str) -> Value {
    assert_eq!(reply.status, status, "{reply:?}");
    assert!(reply.is_json(), "{reply:?}");
    assert!(reply.has_no_store(), "{reply:?}");
    assert_eq!(reply.error_code(), code, "{reply:?}");
    let v = reply.json();
    assert!(v["error_description"].is_string(), "{v}");
    if status == 401 {
        assert!(
            reply
                .header("www-authenticate")
                .is_some_and(|h| h.starts_with("Basic")),
            "401 carries WWW-Authenticate: Basic: {reply:?}"
        );
    }
    v
}

/// The vendor's userinfo endpoint accepts the token.
async fn works_at_the_vendor(app: &TestApp, token: &str) -> bool {
    let resp = reqwest::Client::new()
        .get(format!("{}/me", app.oidc().issuer))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET userinfo");
    let ok = resp.status().is_success();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    ok && body["sub"].is_string()
}

async fn reset_stats(app: &TestApp) {
    let resp = reqwest::Client::new()
        .post(format!("{}/__reset", app.oidc().issuer))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
}

fn keyed_app(store: Store) -> AppOptions {
    AppOptions {
        api_key: Some(format!("key-{}", random_hex(16))),
        sqlite_encryption_keys: true,
        ..AppOptions::on(store)
    }
}

#[tokio::test]
async fn an_adf_shaped_client_gets_the_vendor_token_by_post_and_basic_and_no_secret_is_kept() {
    let mut app = TestApp::spawn(keyed_app(Store::Table)).await;
    app.connect("acme").await;
    let (id, secret) = create_credential(
        &app,
        "acme",
        Some(json!({"description": "ADF LS_Acme", "expires_in_days": 30})),
    )
    .await;

    // client_secret_post, exactly as ADF sends it.
    let reply = adf_token_request(&app.base_url(), &id, &secret).await;
    let token = check_endpoint_success(&reply);
    let v = reply.json();
    let mut fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["access_token", "expires_in", "token_type"], "{v}");
    assert_eq!(
        token,
        app.access_token("acme").await,
        "the connection's current vendor token"
    );
    assert!(
        works_at_the_vendor(&app, &token).await,
        "the vendor accepts it"
    );
    assert!(
        !works_at_the_vendor(&app, &format!("{token}x")).await,
        "the vendor check can fail"
    );

    // client_secret_basic.
    let reply = basic_token_request(&app.base_url(), &id, &secret).await;
    let token = check_endpoint_success(&reply);
    assert!(works_at_the_vendor(&app, &token).await);

    // The token route takes the same credential as HTTP Basic, without the API key.
    let reply = app
        .call(Method::GET, &TestApp::token_path("acme"), None, Key::None)
        .await;
    assert_eq!(reply.status, 401, "no key, no credential: {reply:?}");
    let url = app.url(&TestApp::token_path("acme"));
    let resp = reqwest::Client::new()
        .get(&url)
        .header("Authorization", basic(&id, &secret))
        .send()
        .await
        .unwrap();
    let reply = Reply::from(resp).await;
    check_token_reply(&reply, "acme");

    // The list shows the credential without its secret.
    let list = app.get(&credentials_path("acme")).await;
    assert_eq!(list.status, 200, "{list:?}");
    assert!(list.has_no_store(), "{list:?}");
    let creds = list.json()["credentials"].as_array().cloned().unwrap();
    assert_eq!(creds.len(), 1, "{list:?}");
    assert_eq!(creds[0]["client_id"], json!(id));
    assert_eq!(creds[0]["description"], json!("ADF LS_Acme"));
    for field in ["created_at", "expires_at"] {
        assert!(creds[0][field].is_string(), "{field}: {list:?}");
    }
    assert!(creds[0].get("last_used_at").is_some(), "{list:?}");
    assert!(creds[0].get("client_secret").is_none(), "{list:?}");

    // A pipeline with its fields swapped (the secret as client id) fails, and the log must not show it.
    let swapped = adf_token_request(&app.base_url(), &secret, &id).await;
    check_endpoint_error(&swapped, 401, "invalid_client");

    // No form of the secret in the table (only its keyed hash), the list or the logs.
    let logs = app.stop_broker();
    let azurite = app.azurite.as_ref().unwrap();
    let dump = serde_json::to_string(&azurite.dump_all_tables().await).unwrap();
    let stored = azurite
        .dump_all_tables()
        .await
        .into_iter()
        .filter(|(_, e)| e["RowKey"] == json!(id))
        .count();
    assert_eq!(stored, 1, "the credential is in the table");
    for form in encodings_of(&secret) {
        assert!(!dump.contains(&form), "the table holds the client secret");
        assert!(
            !list.body.contains(&form),
            "the list shows the client secret"
        );
        if let Some(line) = logs.lines().iter().find(|l| l.contains(&form)) {
            panic!("a log line contains the client secret: {line}");
        }
    }
    let b64 = basic(&id, &secret);
    let b64 = b64.trim_start_matches("Basic ");
    assert!(
        !logs.text().contains(b64),
        "a log line contains the Basic credentials"
    );
}

#[tokio::test]
async fn a_hundred_concurrent_endpoint_calls_over_two_processes_cause_one_refresh() {
    let app = TestApp::spawn(keyed_app(Store::Table)).await;
    app.connect("c1").await;
    let before = app.access_token("c1").await;
    let (id, secret) = create_credential(&app, "c1", None).await;
    let other = Broker::start(&BrokerSpec {
        port: free_port(),
        ..app.spec.clone()
    })
    .await;
    let bases = [app.base_url(), other.base_url.clone()];
    set_expiry(&app, "c1", 5).await; // inside the 30 s margin: every caller wants a refresh
    reset_stats(&app).await;

    let calls = (0..100).map(|i| {
        let (base, id, secret) = (bases[i % 2].clone(), id.clone(), secret.clone());
        tokio::spawn(async move {
            if i % 3 == 0 {
                basic_token_request(&base, &id, &secret).await
            } else {
                adf_token_request(&base, &id, &secret).await
            }
        })
    });
    let mut tokens = std::collections::HashSet::new();
    for reply in futures::future::join_all(calls).await {
        tokens.insert(check_endpoint_success(&reply.unwrap()));
    }
    let stats = app.oidc().stats().await;
    assert_eq!(
        stats.refreshes(),
        1,
        "exactly one vendor refresh: {stats:?}"
    );
    assert_eq!(stats.grants_revoked(), 0, "{stats:?}");
    assert_eq!(tokens.len(), 1, "every caller got the same token");
    let new = tokens.into_iter().next().unwrap();
    assert_ne!(new, before, "the token was refreshed first");
    assert!(works_at_the_vendor(&app, &new).await);
}

#[tokio::test]
async fn bad_credentials_get_invalid_client_and_never_reach_the_vendor() {
    let app = TestApp::spawn(keyed_app(Store::Sqlite)).await;
    app.connect("a").await;
    app.connect("b").await;
    let (id, secret) = create_credential(&app, "a", None).await;
    let (revoked_id, revoked_secret) = create_credential(&app, "a", None).await;
    let reply = app
        .call(
            Method::DELETE,
            &format!("{}/{revoked_id}", credentials_path("a")),
            None,
            Key::Configured,
        )
        .await;
    assert_eq!(reply.status, 204, "{reply:?}");

    // An expired credential: written with its expiry in the past (waiting a day is not a test).
    let store = open_store(&app);
    let expired_id = ClientId::parse(&format!("pc_{}", "E".repeat(24))).unwrap();
    let expired_secret = Secret::new(format!("pcs_{}", random_hex(20)));
    let now = OffsetDateTime::now_utc();
    let mut expired = PipelineCredential {
        client_id: expired_id.clone(),
        integration: IntegrationName::parse(INTEGRATION).unwrap(),
        connection: ConnectionId::parse("a").unwrap(),
        description: String::new(),
        created_at: now - Duration::days(2),
        expires_at: Some(now - Duration::seconds(1)),
        last_used_at: None,
        min_validity: None,
        secret_hash: SecretHash {
            key_id: String::new(),
            hash: String::new(),
        },
    };
    let (key_id, hash) = store.keyring().mac(&expired.hash_input(&expired_secret));
    expired.secret_hash = SecretHash { key_id, hash };
    store.insert_credential(&expired).await.unwrap();

    // A credential for a, moved to connection b in the table by someone with write access to it.
    let (moved_id, moved_secret) = create_credential(&app, "a", None).await;
    let moved_client = ClientId::parse(&moved_id).unwrap();
    let mut moved = store.get_credential(&moved_client).await.unwrap().unwrap();
    moved.connection = ConnectionId::parse("b").unwrap();
    assert!(store.delete_credential(&moved_client).await.unwrap());
    store.insert_credential(&moved).await.unwrap();

    set_expiry(&app, "a", 5).await; // a good credential would refresh now
    reset_stats(&app).await;
    let unknown = format!("pc_{}", "x".repeat(24));
    let cases = [
        ("wrong secret", id.clone(), format!("{secret}x")),
        ("unknown client id", unknown.clone(), secret.clone()),
        (
            "malformed client id",
            "not-a-client".to_owned(),
            secret.clone(),
        ),
        (
            "revoked credential",
            revoked_id.clone(),
            revoked_secret.clone(),
        ),
        (
            "expired credential",
            expired_id.as_str().to_owned(),
            expired_secret.expose().to_owned(),
        ),
        (
            "another credential's secret",
            revoked_id.clone(),
            secret.clone(),
        ),
        (
            "a credential moved to another connection in the table",
            moved_id.clone(),
            moved_secret.clone(),
        ),
    ];
    let mut bodies = std::collections::HashSet::new();
    for (what, cid, csecret) in &cases {
        for reply in [
            adf_token_request(&app.base_url(), cid, csecret).await,
            basic_token_request(&app.base_url(), cid, csecret).await,
        ] {
            check_endpoint_error(&reply, 401, "invalid_client");
            bodies.insert(reply.body.clone());
            assert!(!reply.body.contains(cid.as_str()), "{what}: {reply:?}");
        }
        // Basic on the token route fails alike.
        let resp = reqwest::Client::new()
            .get(app.url(&TestApp::token_path("a")))
            .header("Authorization", basic(cid, csecret))
            .send()
            .await
            .unwrap();
        let reply = Reply::from(resp).await;
        assert_eq!(reply.status, 401, "{what} on the token route: {reply:?}");
        assert_eq!(reply.error_code(), "unauthorized", "{reply:?}");
    }
    assert_eq!(
        bodies.len(),
        1,
        "every failure answers the same body, so client ids cannot be probed: {bodies:?}"
    );
    let stats = app.oidc().stats().await;
    assert_eq!(
        stats.refreshes(),
        0,
        "no failure reached the vendor: {stats:?}"
    );

    // A credential for connection a cannot obtain b's token on any route.
    let b_path = TestApp::token_path("b");
    let resp = reqwest::Client::new()
        .get(app.url(&b_path))
        .header("Authorization", basic(&id, &secret))
        .send()
        .await
        .unwrap();
    let reply = Reply::from(resp).await;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.error_code(), "forbidden");
    assert!(!reply.body.contains("access_token"), "{reply:?}");
    let key = app.spec.api_key.clone().unwrap();
    for with_key in [false, true] {
        let mut req = reqwest::Client::new()
            .post(app.url("/api/token"))
            .header("Authorization", basic(&id, &secret))
            .json(&json!({"integration": INTEGRATION, "connection": "b"}));
        if with_key {
            // The credential's scope holds even next to a valid key.
            req = req.header("x-functions-key", &key);
        }
        let reply = Reply::from(req.send().await.unwrap()).await;
        assert_eq!(reply.status, 403, "with key {with_key}: {reply:?}");
        assert_eq!(reply.error_code(), "forbidden");
    }
    // The credential is not a key for the admin routes.
    for (method, path) in [
        (Method::GET, credentials_path("a")),
        (Method::GET, "/api/connections".to_owned()),
        (Method::DELETE, "/api/connections/demo/a".to_owned()),
    ] {
        let resp = reqwest::Client::new()
            .request(method.clone(), app.url(&path))
            .header("Authorization", basic(&id, &secret))
            .send()
            .await
            .unwrap();
        let reply = Reply::from(resp).await;
        assert_eq!(reply.status, 401, "{method} {path}: {reply:?}");
    }
    // And its own connection still works (a refresh was due).
    let token = check_endpoint_success(&adf_token_request(&app.base_url(), &id, &secret).await);
    assert!(works_at_the_vendor(&app, &token).await);

    // Deleting the connection kills its credentials.
    let reply = app
        .call(
            Method::DELETE,
            "/api/connections/demo/a?revoke=false",
            None,
            Key::Configured,
        )
        .await;
    assert_eq!(reply.status, 204, "{reply:?}");
    let reply = adf_token_request(&app.base_url(), &id, &secret).await;
    check_endpoint_error(&reply, 401, "invalid_client");
    let list = app.get(&credentials_path("a")).await;
    assert_eq!(list.json()["credentials"], json!([]), "{list:?}");
    // A new consent under the same name does not revive them.
    app.connect("a").await;
    let reply = adf_token_request(&app.base_url(), &id, &secret).await;
    check_endpoint_error(&reply, 401, "invalid_client");
}

#[tokio::test]
async fn a_grant_revoked_at_the_vendor_is_invalid_grant_on_the_endpoint_and_409_on_the_token_route()
{
    let app = TestApp::spawn(keyed_app(Store::Sqlite)).await;
    app.connect("globex").await;
    let token = app.access_token("globex").await;
    let (id, secret) = create_credential(&app, "globex", None).await;
    app.oidc().revoke(&token, "access_token").await;
    set_expiry(&app, "globex", 5).await; // due: the endpoint refreshes, and the vendor says no

    let reply = adf_token_request(&app.base_url(), &id, &secret).await;
    let v = check_endpoint_error(&reply, 400, "invalid_grant");
    let description = v["error_description"].as_str().unwrap();
    assert!(
        description.contains("consent again") && description.contains("globex"),
        "tells the operator to consent again: {description}"
    );
    assert!(
        description
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\'),
        "error_description uses RFC 6749's character set: {description}"
    );
    let connection = app.get("/api/connections/demo/globex").await;
    assert_eq!(
        connection.json()["status"],
        json!("reauthorization_required"),
        "{connection:?}"
    );
    let reply = app.token_reply("globex", "").await;
    assert_eq!(reply.status, 409, "{reply:?}");
    assert_eq!(reply.error_code(), "reauthorization_required");
    // Again on the endpoint: the same answer, without another vendor call.
    let refreshes = app.oidc().stats().await.refreshes();
    let reply = basic_token_request(&app.base_url(), &id, &secret).await;
    check_endpoint_error(&reply, 400, "invalid_grant");
    assert_eq!(app.oidc().stats().await.refreshes(), refreshes);
}

/// (what, Content-Type, body, Authorization, status, error code)
type Case<'a> = (
    &'a str,
    Option<&'a str>,
    String,
    Option<String>,
    u16,
    &'a str,
);

#[tokio::test]
async fn malformed_token_requests_get_the_documented_errors() {
    let app = TestApp::spawn(keyed_app(Store::Sqlite)).await;
    app.connect("m").await;
    let (id, secret) = create_credential(&app, "m", None).await;
    let form = |pairs: &[(&str, &str)]| -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    };
    let good = [
        ("grant_type", "client_credentials"),
        ("client_id", id.as_str()),
        ("client_secret", secret.as_str()),
    ];
    let form_type = "application/x-www-form-urlencoded";
    let cases: Vec<Case> = vec![
        (
            "JSON body",
            Some("application/json"),
            json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret})
                .to_string(),
            None,
            400,
            "invalid_request",
        ),
        (
            "no content type",
            None,
            form(&good),
            None,
            400,
            "invalid_request",
        ),
        (
            "no grant_type",
            Some(form_type),
            form(&good[1..]),
            None,
            400,
            "invalid_request",
        ),
        (
            "authorization_code grant",
            Some(form_type),
            form(&[("grant_type", "authorization_code"), good[1], good[2]]),
            None,
            400,
            "unsupported_grant_type",
        ),
        (
            "refresh_token grant",
            Some(form_type),
            form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", "x"),
                good[1],
                good[2],
            ]),
            None,
            400,
            "unsupported_grant_type",
        ),
        (
            "repeated parameter",
            Some(form_type),
            format!("{}&client_id={id}", form(&good)),
            None,
            400,
            "invalid_request",
        ),
        (
            "Basic and client_secret",
            Some(form_type),
            form(&good),
            Some(basic(&id, &secret)),
            400,
            "invalid_request",
        ),
        (
            "no client authentication",
            Some(form_type),
            form(&good[..1]),
            None,
            401,
            "invalid_client",
        ),
        (
            "client_id without secret",
            Some(form_type),
            form(&good[..2]),
            None,
            401,
            "invalid_client",
        ),
        (
            "malformed Basic",
            Some(form_type),
            form(&good[..1]),
            Some("Basic !!!not-base64".into()),
            401,
            "invalid_client",
        ),
        (
            "Basic without colon",
            Some(form_type),
            form(&good[..1]),
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(&id)
            )),
            401,
            "invalid_client",
        ),
        (
            "invalid UTF-8",
            Some(form_type),
            "grant_type=%FF%FE&client_id=%C3".into(),
            None,
            400,
            "unsupported_grant_type",
        ),
    ];
    for (what, content_type, body, authorization, status, code) in cases {
        let mut req = reqwest::Client::new()
            .post(app.url(ENDPOINT))
            .body(body.clone());
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        let reply = Reply::from(req.send().await.unwrap()).await;
        assert_no_undocumented_5xx(&reply, what);
        assert_eq!(reply.status, status, "{what}: {reply:?}");
        assert_eq!(reply.error_code(), code, "{what}: {reply:?}");
        assert!(!reply.body.contains(&secret), "{what}: {reply:?}");
    }
    let reply = app.call(Method::GET, ENDPOINT, None, Key::None).await;
    assert!(reply.status == 404 || reply.status == 405, "{reply:?}");

    // The credentials routes: bad input is a 4xx and nothing is stored.
    let bad_bodies = [
        ("not JSON", "{".to_owned(), 400),
        ("only whitespace", " ".to_owned(), 400),
        ("an array", "[]".to_owned(), 400),
        ("unknown field", json!({"scope": "x"}).to_string(), 400),
        ("zero days", json!({"expires_in_days": 0}).to_string(), 400),
        (
            "too many days",
            json!({"expires_in_days": 100000}).to_string(),
            400,
        ),
        (
            "negative days",
            json!({"expires_in_days": -1}).to_string(),
            400,
        ),
        (
            "huge min validity",
            json!({"min_validity_secs": 1_000_000}).to_string(),
            400,
        ),
        (
            "control characters",
            json!({"description": "a\nb"}).to_string(),
            400,
        ),
        (
            "long description",
            json!({"description": "d".repeat(201)}).to_string(),
            400,
        ),
    ];
    for (what, body, status) in bad_bodies {
        let reply = app
            .call(
                Method::POST,
                &credentials_path("m"),
                Some(&body),
                Key::Configured,
            )
            .await;
        assert_eq!(reply.status, status, "{what}: {reply:?}");
        assert_eq!(reply.error_code(), "invalid_request", "{what}");
    }
    let reply = app
        .call(
            Method::POST,
            "/api/connections/nope/m/credentials",
            None,
            Key::Configured,
        )
        .await;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(reply.error_code(), "integration_not_found");
    let reply = app
        .call(
            Method::POST,
            "/api/connections/demo/bad%20name/credentials",
            None,
            Key::Configured,
        )
        .await;
    assert_eq!(reply.status, 400, "{reply:?}");
    for (what, path) in [
        (
            "unknown id",
            format!("{}/pc_{}", credentials_path("m"), "z".repeat(24)),
        ),
        (
            "malformed id",
            format!("{}/whatever", credentials_path("m")),
        ),
        (
            "another connection's id",
            format!("{}/{id}", credentials_path("other")),
        ),
    ] {
        let reply = app.call(Method::DELETE, &path, None, Key::Configured).await;
        assert_eq!(reply.status, 404, "{what}: {reply:?}");
        assert_eq!(reply.error_code(), "credential_not_found", "{what}");
    }
    for (method, key) in [
        (Method::GET, Key::None),
        (Method::POST, Key::Header("wrong".into())),
    ] {
        let reply = app.call(method, &credentials_path("m"), None, key).await;
        assert_eq!(reply.status, 401, "{reply:?}");
    }
    let list = app.get(&credentials_path("m")).await;
    let creds = list.json()["credentials"].as_array().cloned().unwrap();
    assert_eq!(
        creds.len(),
        1,
        "only the one good credential exists: {list:?}"
    );
    check_endpoint_success(&adf_token_request(&app.base_url(), &id, &secret).await);
}

#[tokio::test]
async fn failed_authentications_are_limited_per_client_id_and_per_source() {
    let mut app = TestApp::spawn(keyed_app(Store::Sqlite)).await;
    // The test's sources are named by X-Forwarded-For: behind a proxy the broker trusts.
    app.stop_broker();
    app.spec
        .env
        .push(("BROKER_TRUSTED_PROXIES".into(), "127.0.0.1/32, ::1".into()));
    app.start_broker().await;
    app.connect("r").await;
    let (id, secret) = create_credential(&app, "r", None).await;
    let (other_id, other_secret) = create_credential(&app, "r", None).await;
    let from = |ip: String, client: &str, s: &str| {
        let req = reqwest::Client::new()
            .post(app.url(ENDPOINT))
            .header("X-Forwarded-For", ip)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client),
                ("client_secret", s),
            ]);
        async move { Reply::from(req.send().await.unwrap()).await }
    };
    // Per client id: wrong secrets from many sources.
    let wrong = format!("{secret}-wrong");
    let mut limited = None;
    for n in 0..40 {
        let reply = from(format!("198.51.100.{n}"), &id, &wrong).await;
        assert_no_undocumented_5xx(&reply, "rate limit");
        if reply.status == 429 {
            limited = Some(n);
            break;
        }
        check_endpoint_error(&reply, 401, "invalid_client");
    }
    let n = limited.expect("failures per client id are limited");
    assert!(n >= 5, "a few mistakes are allowed before the limit: {n}");
    let reply = from("198.51.100.200".into(), &id, &wrong).await;
    assert_eq!(
        reply.status, 429,
        "the client id is cooling down for wrong secrets: {reply:?}"
    );
    assert!(reply.header("retry-after").is_some(), "{reply:?}");
    // The correct secret is never refused for someone else's failures (issue 17).
    check_endpoint_success(&from("198.51.100.202".into(), &id, &secret).await);
    // Another client id from a fresh source is not affected.
    check_endpoint_success(&from("198.51.100.201".into(), &other_id, &other_secret).await);

    // Per source: unknown client ids from one address.
    let mut limited = None;
    for n in 0..100 {
        let unknown = format!("pc_{:0>24}", n);
        let reply = from("203.0.113.9".into(), &unknown, "pcs_guess").await;
        if reply.status == 429 {
            limited = Some(n);
            break;
        }
        check_endpoint_error(&reply, 401, "invalid_client");
    }
    assert!(limited.is_some(), "failures per source are limited");
    let reply = from("203.0.113.9".into(), &other_id, "pcs_guess").await;
    assert_eq!(reply.status, 429, "the source is cooling down: {reply:?}");
    // A correct secret from the cooling source still works.
    check_endpoint_success(&from("203.0.113.9".into(), &other_id, &other_secret).await);
    check_endpoint_success(&from("203.0.113.10".into(), &other_id, &other_secret).await);
}

#[tokio::test]
async fn credentials_survive_an_encryption_key_rotation_and_move_to_the_new_key() {
    let mut app = TestApp::spawn(keyed_app(Store::Table)).await;
    app.connect("rot").await;
    let (id, secret) = create_credential(&app, "rot", None).await;
    assert_eq!(key_id_of(&app, &id).await, "k1");

    // A new key in front; the old one still listed.
    let old = app.spec.encryption_keys.clone().unwrap();
    let new_key = base64::engine::general_purpose::STANDARD.encode(random_bytes(32));
    app.spec.encryption_keys = Some(format!("k2:{new_key},{old}"));
    app.restart_with_margin(DEFAULT_MARGIN_SECS).await;
    check_endpoint_success(&adf_token_request(&app.base_url(), &id, &secret).await);
    let mut moved = false;
    for _ in 0..50 {
        if key_id_of(&app, &id).await == "k2" {
            moved = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(moved, "the hash was rewritten under the new key on use");
    let list = app.get(&credentials_path("rot")).await;
    assert!(
        list.json()["credentials"][0]["last_used_at"].is_string(),
        "the use is recorded: {list:?}"
    );
    // Re-seal the grant under the new key too, then drop the old key: the credential still works.
    let forced = app.token_reply("rot", "?force_refresh=true").await;
    check_token_reply(&forced, "rot");
    app.spec.encryption_keys = Some(format!("k2:{new_key}"));
    app.restart_with_margin(DEFAULT_MARGIN_SECS).await;
    let token = check_endpoint_success(&adf_token_request(&app.base_url(), &id, &secret).await);
    assert!(works_at_the_vendor(&app, &token).await);
    check_endpoint_error(
        &adf_token_request(&app.base_url(), &id, &format!("{secret}x")).await,
        401,
        "invalid_client",
    );
}

/// The key id stored with a credential's hash, read from the raw table.
async fn key_id_of(app: &TestApp, id: &str) -> String {
    let rows = app.azurite.as_ref().unwrap().dump_all_tables().await;
    let row = rows
        .into_iter()
        .find(|(_, e)| e["RowKey"] == json!(id))
        .expect("the credential row");
    row.1["KeyId"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn scope_and_resource_are_ignored_unless_the_integration_lists_them() {
    let mut app = TestApp::spawn(keyed_app(Store::Sqlite)).await;
    app.connect("s").await;
    let (id, secret) = create_credential(&app, "s", None).await;
    let ask = |app: &TestApp, scope: &str, resource: &str| {
        reqwest::Client::new().post(app.url(ENDPOINT)).form(&[
            ("grant_type", "client_credentials"),
            ("client_id", id.as_str()),
            ("client_secret", secret.as_str()),
            ("scope", scope),
            ("resource", resource),
        ])
    };
    let send =
        |req: reqwest::RequestBuilder| async move { Reply::from(req.send().await.unwrap()).await };
    check_endpoint_success(
        &send(ask(
            &app,
            "anything:at-all other",
            "https://anywhere.example",
        ))
        .await,
    );

    let mut file = integrations_file(&app.oidc().issuer, DEFAULT_MARGIN_SECS);
    file["integrations"][INTEGRATION]["pipeline_scopes"] = json!(["api:read", "openid"]);
    file["integrations"][INTEGRATION]["pipeline_resources"] = json!(["https://api.vendor.example"]);
    app.restart_with_integrations(&file).await;
    check_endpoint_success(&send(ask(&app, "api:read openid", "https://api.vendor.example")).await);
    check_endpoint_success(&send(ask(&app, "", "")).await);
    check_endpoint_error(
        &send(ask(&app, "api:read admin", "")).await,
        400,
        "invalid_scope",
    );
    check_endpoint_error(
        &send(ask(&app, "", "https://other.example")).await,
        400,
        "invalid_target",
    );
}

#[tokio::test]
async fn under_the_functions_host_the_endpoint_authenticates_itself_and_basic_stays_scoped() {
    let mut app = TestApp::spawn(AppOptions {
        sqlite_encryption_keys: true,
        ..AppOptions::on(Store::Sqlite)
    })
    .await;
    app.connect("h1").await;
    app.connect("h2").await;
    let (id, secret) = create_credential(&app, "h1", None).await;
    // As the Functions host starts it: the port from FUNCTIONS_CUSTOMHANDLER_PORT, no key of its own
    // (the host checks function keys; the token endpoint is anonymous there).
    app.spec.env.push((
        "FUNCTIONS_CUSTOMHANDLER_PORT".into(),
        app.spec.port.to_string(),
    ));
    app.restart_with_margin(DEFAULT_MARGIN_SECS).await;

    let anonymous = reqwest::Client::new()
        .post(app.url(ENDPOINT))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    check_endpoint_error(&Reply::from(anonymous).await, 401, "invalid_client");
    check_endpoint_error(
        &adf_token_request(&app.base_url(), &id, &format!("{secret}x")).await,
        401,
        "invalid_client",
    );
    let token = check_endpoint_success(&adf_token_request(&app.base_url(), &id, &secret).await);
    assert!(works_at_the_vendor(&app, &token).await);

    // The token route (authLevel function: the host let the request through) with the credential
    // as Basic: its own connection only.
    for (conn, status) in [("h1", 200), ("h2", 403)] {
        let req =
            host_headers_for_test(reqwest::Client::new().get(app.url(&TestApp::token_path(conn))))
                .header("x-functions-key", "checked-by-the-host")
                .header("Authorization", basic(&id, &secret));
        let reply = Reply::from(req.send().await.unwrap()).await;
        assert_eq!(reply.status, status, "{conn}: {reply:?}");
    }
}

/// The headers the Functions host adds to a forwarded request.
fn host_headers_for_test(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    req.header("User-Agent", format!("Azure-Functions-Host/{HOST_VERSION}"))
        .header("X-Azure-Functions-HostVersion", HOST_VERSION)
        .header("X-Azure-Functions-InvocationId", uuid_ish())
}

#[tokio::test]
async fn a_credential_asking_more_validity_than_a_token_lives_does_not_refresh_on_every_call() {
    let app = TestApp::spawn(keyed_app(Store::Sqlite)).await;
    app.connect("long").await;
    // The provider's tokens live 60 s; this credential wants an hour: capped at half the lifetime.
    let (id, secret) =
        create_credential(&app, "long", Some(json!({"min_validity_secs": 3600}))).await;
    reset_stats(&app).await;
    let first = check_endpoint_success(&adf_token_request(&app.base_url(), &id, &secret).await);
    let second = check_endpoint_success(&adf_token_request(&app.base_url(), &id, &secret).await);
    assert_eq!(first, second, "the second call reuses the token");
    let refreshes = app.oidc().stats().await.refreshes();
    assert_eq!(
        refreshes, 0,
        "a fresh 60 s token satisfies the wish capped at 30 s (uncapped, every call would refresh)"
    );
}

/// A Basic call of the token route for `conn`.
async fn basic_token_route(app: &TestApp, conn: &str, id: &str, secret: &str) -> Reply {
    let resp = reqwest::Client::new()
        .get(app.url(&TestApp::token_path(conn)))
        .header("Authorization", basic(id, secret))
        .send()
        .await
        .unwrap();
    Reply::from(resp).await
}

/// On Table Storage a credential is kept beside its connection (one range query reads both) with an
/// index entry by client id. A credential stored before that layout (only the `~credential` entity,
/// as earlier versions wrote it) keeps working; a credential whose own entity is gone (a deletion
/// cut off after its first write) works nowhere, though its index entry remains.
#[tokio::test]
async fn credentials_of_the_earlier_layout_work_and_a_half_deleted_one_fails() {
    let app = TestApp::spawn(keyed_app(Store::Table)).await;
    app.connect("lay").await;
    let (legacy, legacy_secret) = create_credential(&app, "lay", None).await;
    let (cut, cut_secret) = create_credential(&app, "lay", None).await;
    let (revoked, revoked_secret) = create_credential(&app, "lay", None).await;
    let azurite = app.azurite.as_ref().unwrap();
    let table = azurite
        .service_client()
        .table_client(app.table.as_ref().unwrap());
    let rows = azurite.dump_all_tables().await;
    let entity = |pk: &str, rk: &str| -> Value {
        rows.iter()
            .find(|(_, e)| e["PartitionKey"] == json!(pk) && e["RowKey"] == json!(rk))
            .unwrap_or_else(|| panic!("no entity {pk}/{rk}: {rows:?}"))
            .1
            .clone()
    };
    // The layout: the credential beside its connection, an index entry pointing at it.
    let beside = entity("demo", &format!("lay!{legacy}"));
    assert_eq!(beside["ClientId"], json!(legacy));
    assert!(beside["SecretHash"].is_string(), "{beside}");
    assert_eq!(entity("~credential", &legacy)["Colocated"], json!(true));

    // `legacy` back to the earlier layout: the index entry is the credential, nothing beside.
    let delete = |pk: String, rk: String| {
        let table = table.clone();
        async move {
            table
                .partition_key_client(pk)
                .entity_client(rk)
                .delete()
                .await
                .unwrap();
        }
    };
    delete("demo".into(), format!("lay!{legacy}")).await;
    let mut earlier = entity("~credential", &legacy);
    let earlier = earlier.as_object_mut().unwrap();
    earlier.retain(|k, _| !k.starts_with("odata.") && k != "Timestamp" && k != "Colocated");
    table
        .partition_key_client("~credential")
        .entity_client(legacy.as_str())
        .insert_or_replace(Value::Object(earlier.clone()))
        .unwrap()
        .await
        .unwrap();
    // `cut`: its entity beside the connection deleted, its index entry left.
    delete("demo".into(), format!("lay!{cut}")).await;
    // `revoked`: deleted by the earlier version, which deletes only the `~credential` entity.
    delete("~credential".into(), revoked.clone()).await;

    check_token_reply(
        &basic_token_route(&app, "lay", &legacy, &legacy_secret).await,
        "lay",
    );
    let token =
        check_endpoint_success(&adf_token_request(&app.base_url(), &legacy, &legacy_secret).await);
    assert!(works_at_the_vendor(&app, &token).await);

    let reply = basic_token_route(&app, "lay", &cut, &cut_secret).await;
    assert_eq!(reply.status, 401, "a half-deleted credential: {reply:?}");
    check_endpoint_error(
        &adf_token_request(&app.base_url(), &cut, &cut_secret).await,
        401,
        "invalid_client",
    );
    // (Also what a creation cut short before its index entry leaves.)
    let reply = basic_token_route(&app, "lay", &revoked, &revoked_secret).await;
    assert_eq!(
        reply.status, 401,
        "deleted by the earlier version: {reply:?}"
    );
    check_endpoint_error(
        &adf_token_request(&app.base_url(), &revoked, &revoked_secret).await,
        401,
        "invalid_client",
    );
    // Neither half is listed (nothing can use them), the earlier one is.
    let list = app.get(&credentials_path("lay")).await;
    let body = list.json();
    let listed: Vec<&str> = body["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(listed, [legacy.as_str()], "{list:?}");
    // A deletion cut short (the credential beside its connection gone, its index entry left) can
    // be retried, and then it is whole.
    let path = format!("{}/{cut}", credentials_path("lay"));
    let retried = app.call(Method::DELETE, &path, None, Key::Configured).await;
    assert_eq!(retried.status, 204, "{retried:?}");
    assert!(
        !azurite
            .dump_all_tables()
            .await
            .iter()
            .any(|(_, e)| e["RowKey"] == json!(cut)),
        "the index entry of {cut} is gone"
    );
    let again = app.call(Method::DELETE, &path, None, Key::Configured).await;
    assert_eq!(again.status, 404, "{again:?}");
    // Deleting the connection removes what is left of each.
    let gone = app
        .call(
            Method::DELETE,
            "/api/connections/demo/lay",
            None,
            Key::Configured,
        )
        .await;
    assert_eq!(gone.status, 204, "{gone:?}");
    let left = azurite.dump_all_tables().await;
    for id in [&legacy, &cut, &revoked] {
        assert!(
            !left.iter().any(|(_, e)| e["RowKey"] == json!(id)
                || e["RowKey"] == json!(format!("lay!{id}"))),
            "{id} is gone: {left:?}"
        );
    }
}
