//! Identity-based Table Storage: `BROKER_STORAGE__accountName` / `__tableServiceUri` with the App
//! Service managed identity endpoint (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`).
//!
//! - The credential against a local fake of the identity endpoint: the request it makes (resource,
//!   api-version, client_id, `X-IDENTITY-HEADER`), caching, renewal before expiry, riding out a failed
//!   renewal on a still-valid token, and errors that never show the header or a token.
//! - The fallback to the older protocol (`MSI_ENDPOINT` + `MSI_SECRET`, api-version 2017-09-01, header
//!   `secret`, `clientid`, a date as `expires_on`) when `IDENTITY_*` are absent or the 2019-08-01 call
//!   answers 400, against a fake that speaks both protocols; also through settings and the real binary.
//! - `Settings::load` choosing identity-based storage, and its start-up errors.
//! - Real Azurite with `--oauth basic` over HTTPS (a throwaway CA made with `openssl`): create, write,
//!   read and delete with nothing but the bearer token; Azurite rejects a token for the wrong audience.
//! - The real binary wired through settings and startup, against the fake identity endpoint and a fake
//!   table endpoint (the binary trusts only public CAs, and Azurite refuses bearer tokens over HTTP):
//!   health answers 200 with `Authorization: Bearer <token>` on every storage call and one token fetch.
//!
//! The fakes of the identity endpoint and of a Table Storage endpoint (a tiny HTTP server) are here,
//! the only place they are used; Azurite, the certificates and the broker process are the shared
//! fixtures.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use azure_core::auth::TokenCredential;
use base64::Engine as _;
use oauth_broker::config::{IdentityStorage, Settings, StorageSettings};
use oauth_broker::domain::Secret;
use oauth_broker::store::identity::{
    IdentityEndpoint, IdentityEndpoints, ManagedIdentityCredential, Protocol, STORAGE_RESOURCE,
};
use oauth_broker::store::table::TableBackend;
use oauth_broker::store::{Lifecycle, PendingRow, PendingRows, StoreError};
use serde_json::{json, Value};

use crate::helpers::{free_port, Azurite, Broker, BrokerSpec, TestPki};

const IDENTITY_HEADER: &str = "idh-5bW8qZ2mK7xR4tY9";
const CLIENT_ID: &str = "7f1c2d3e-0000-4000-8000-00000000c1d0";
const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ------------------------------------------------------------------------------------------------
// a tiny HTTP/1.1 server (one thread per connection, `Connection: close`)

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    headers: HashMap<String, String>,
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

struct FakeServer {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl FakeServer {
    fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let log = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (handler, log) = (Arc::clone(&handler), Arc::clone(&log));
                std::thread::spawn(move || {
                    let _ = serve_one(stream, &*handler, &log);
                });
            }
        });
        Self { port, requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn serve_one(
    stream: TcpStream,
    handler: &Handler,
    log: &Mutex<Vec<Request>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    let url = url::Url::parse(&format!("http://x{target}")).unwrap();
    let request = Request {
        method,
        path: url.path().to_owned(),
        query: url.query_pairs().into_owned().collect(),
        headers,
    };
    log.lock().unwrap().push(request.clone());
    let response = handler(&request);
    let mut out = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        response.body.len()
    );
    for (k, v) in &response.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&response.body);
    let mut stream = stream;
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

// ------------------------------------------------------------------------------------------------
// the fake identity endpoint

/// What the fake identity endpoint answers next.
#[derive(Clone)]
enum Issue {
    /// A token valid for this many seconds; `expires_on` as a string (as App Service sends it) or a number.
    Token { ttl: i64, as_string: bool },
    /// A JWT Azurite accepts (`--oauth basic` checks issuer, audience and lifetime, not the signature).
    Jwt { ttl: i64, audience: &'static str },
    /// An error status.
    Fail(u16),
}

struct FakeIdentity {
    server: FakeServer,
    next: Arc<Mutex<Issue>>,
    issued: Arc<Mutex<Vec<String>>>,
}

fn jwt(audience: &str, ttl: i64) -> String {
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let t = now();
    format!(
        "{}.{}.{}",
        b64(json!({"alg": "RS256", "typ": "JWT"})),
        b64(json!({
            "aud": audience,
            "iss": "https://sts.windows.net/00000000-0000-4000-8000-000000000001/",
            "iat": t - 60, "nbf": t - 60, "exp": t + ttl,
            "oid": "00000000-0000-4000-8000-0000000000aa",
            "xms_mirid": "fake-identity", "nonce": now_nanos(),
        })),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b"not-a-signature")
    )
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

impl FakeIdentity {
    /// Checks the request exactly as the App Service endpoint would, then answers per `next`.
    fn start(first: Issue) -> Self {
        let next = Arc::new(Mutex::new(first));
        let issued = Arc::new(Mutex::new(Vec::new()));
        let (n, i) = (Arc::clone(&next), Arc::clone(&issued));
        let server = FakeServer::start(move |r| {
            if r.method != "GET" || r.path != "/msi/token" {
                return Response::json(404, json!({"error": "not_found"}));
            }
            if r.headers.get("x-identity-header").map(String::as_str) != Some(IDENTITY_HEADER) {
                return Response::json(
                    401,
                    json!({"error": "unauthorized", "error_description": "X-IDENTITY-HEADER is missing or wrong"}),
                );
            }
            if r.query.get("api-version").map(String::as_str) != Some("2019-08-01")
                || r.query.get("resource").map(String::as_str) != Some(STORAGE_RESOURCE)
            {
                return Response::json(
                    400,
                    json!({"error": "invalid_request", "error_description": "bad resource or api-version"}),
                );
            }
            let (token, expires_on) = match n.lock().unwrap().clone() {
                Issue::Fail(status) => {
                    return Response::json(
                        status,
                        json!({"error": "unavailable", "error_description": "identity service down"}),
                    )
                }
                Issue::Token { ttl, as_string } => {
                    let token = format!("fake-token-{}", now_nanos());
                    let exp = now() + ttl;
                    (
                        token,
                        if as_string {
                            json!(exp.to_string())
                        } else {
                            json!(exp)
                        },
                    )
                }
                Issue::Jwt { ttl, audience } => {
                    (jwt(audience, ttl), json!((now() + ttl).to_string()))
                }
            };
            i.lock().unwrap().push(token.clone());
            Response::json(
                200,
                json!({
                    "access_token": token, "expires_on": expires_on, "resource": STORAGE_RESOURCE,
                    "token_type": "Bearer", "client_id": r.query.get("client_id").cloned().unwrap_or_default(),
                }),
            )
        });
        Self {
            server,
            next,
            issued,
        }
    }

    fn endpoint(&self) -> String {
        self.server.url("/msi/token")
    }

    fn set(&self, issue: Issue) {
        *self.next.lock().unwrap() = issue;
    }

    fn issued(&self) -> Vec<String> {
        self.issued.lock().unwrap().clone()
    }

    fn credential(&self, header: &str, client_id: Option<&str>) -> ManagedIdentityCredential {
        ManagedIdentityCredential::new(
            reqwest::Client::new(),
            &self.endpoint(),
            Secret::new(header),
            client_id.map(str::to_owned),
        )
        .unwrap()
    }
}

// ------------------------------------------------------------------------------------------------
// the credential

#[tokio::test]
async fn the_credential_asks_the_identity_endpoint_as_documented_and_caches_the_token() {
    let fake = FakeIdentity::start(Issue::Token {
        ttl: 3600,
        as_string: true,
    });
    let cred = fake.credential(IDENTITY_HEADER, Some(CLIENT_ID));
    let first = cred.get_token(&[STORAGE_SCOPE]).await.unwrap();
    let second = cred.get_token(&[STORAGE_SCOPE]).await.unwrap();
    assert_eq!(first.token.secret(), second.token.secret());
    assert_eq!(fake.issued(), vec![first.token.secret().to_owned()]);
    let expected = now() + 3600;
    assert!((first.expires_on.unix_timestamp() - expected).abs() <= 2);

    let requests = fake.server.requests();
    assert_eq!(requests.len(), 1, "one fetch for two calls: {requests:?}");
    let r = &requests[0];
    assert_eq!(r.path, "/msi/token");
    assert_eq!(r.query["resource"], "https://storage.azure.com/");
    assert_eq!(r.query["api-version"], "2019-08-01");
    assert_eq!(r.query["client_id"], CLIENT_ID);
    assert_eq!(r.headers["x-identity-header"], IDENTITY_HEADER);

    // Without a client id (system-assigned identity), no client_id parameter.
    let system = fake.credential(IDENTITY_HEADER, None);
    system.get_token(&[STORAGE_SCOPE]).await.unwrap();
    assert!(!fake.server.requests()[1].query.contains_key("client_id"));

    // clear_cache forgets the token.
    cred.clear_cache().await.unwrap();
    let third = cred.get_token(&[STORAGE_SCOPE]).await.unwrap();
    assert_ne!(third.token.secret(), first.token.secret());
}

#[tokio::test]
async fn a_token_close_to_expiry_is_renewed_and_numeric_expires_on_works() {
    // Two minutes left is inside the five-minute renewal margin: every call fetches a new one.
    let fake = FakeIdentity::start(Issue::Token {
        ttl: 120,
        as_string: false,
    });
    let cred = fake.credential(IDENTITY_HEADER, None);
    let a = cred.get_token(&[STORAGE_SCOPE]).await.unwrap();
    let b = cred.get_token(&[STORAGE_SCOPE]).await.unwrap();
    assert_ne!(a.token.secret(), b.token.secret());
    assert_eq!(fake.issued().len(), 2);
    assert!((a.expires_on.unix_timestamp() - (now() + 120)).abs() <= 2);

    // A long-lived token is then cached again.
    fake.set(Issue::Token {
        ttl: 7200,
        as_string: false,
    });
    let c = cred.get_token(&[STORAGE_SCOPE]).await.unwrap();
    let d = cred.get_token(&[STORAGE_SCOPE]).await.unwrap();
    assert_eq!(c.token.secret(), d.token.secret());
    assert_eq!(fake.issued().len(), 3);

    // A custom margin.
    let eager = fake
        .credential(IDENTITY_HEADER, None)
        .with_renew_before(time::Duration::hours(3));
    eager.get_token(&[STORAGE_SCOPE]).await.unwrap();
    eager.get_token(&[STORAGE_SCOPE]).await.unwrap();
    assert_eq!(fake.issued().len(), 5);
}

#[tokio::test]
async fn a_failed_renewal_keeps_using_the_still_valid_token_without_hammering_the_endpoint() {
    let fake = FakeIdentity::start(Issue::Token {
        ttl: 120,
        as_string: true,
    });
    let cred = fake.credential(IDENTITY_HEADER, None);
    let good = cred.get_token(&[STORAGE_SCOPE]).await.unwrap();
    fake.set(Issue::Fail(500));
    let during_outage = cred.get_token(&[STORAGE_SCOPE]).await.unwrap();
    assert_eq!(during_outage.token.secret(), good.token.secret());
    let asked = fake.server.requests().len();
    assert_eq!(asked, 2, "one failed renewal attempt");
    for _ in 0..5 {
        let again = cred.get_token(&[STORAGE_SCOPE]).await.unwrap();
        assert_eq!(again.token.secret(), good.token.secret());
    }
    assert_eq!(
        fake.server.requests().len(),
        asked,
        "no new attempt within the quiet period after a failure"
    );
}

#[tokio::test]
async fn without_a_usable_token_the_error_says_why_and_shows_no_secret() {
    let fake = FakeIdentity::start(Issue::Fail(503));
    let err = fake
        .credential(IDENTITY_HEADER, None)
        .get_token(&[STORAGE_SCOPE])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("503") && err.contains("identity service down"),
        "{err}"
    );

    fake.set(Issue::Token {
        ttl: 3600,
        as_string: true,
    });
    let wrong = "wrong-header-Qp3Lm8Zt";
    let err = fake
        .credential(wrong, None)
        .get_token(&[STORAGE_SCOPE])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("401"), "{err}");
    assert!(
        !err.contains(wrong) && !err.contains(IDENTITY_HEADER),
        "{err}"
    );
    assert!(fake.issued().is_empty());

    let unreachable = ManagedIdentityCredential::new(
        reqwest::Client::new(),
        &format!("http://127.0.0.1:{}/msi/token", free_port()),
        Secret::new(IDENTITY_HEADER),
        None,
    )
    .unwrap()
    .get_token(&[STORAGE_SCOPE])
    .await
    .unwrap_err()
    .to_string();
    assert!(unreachable.contains("unreachable"), "{unreachable}");
}

// ------------------------------------------------------------------------------------------------
// settings

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn load(pairs: &[(&str, &str)]) -> Result<Settings, String> {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-integrations.json");
    let mut m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    m.entry("BROKER_INTEGRATIONS".into())
        .or_insert_with(|| missing.display().to_string());
    Settings::load(&move |k: &str| m.get(k).cloned()).map_err(|e| e.to_string())
}

const PLATFORM: [(&str, &str); 2] = [
    ("IDENTITY_ENDPOINT", "http://127.0.0.1:41234/msi/token"),
    ("IDENTITY_HEADER", IDENTITY_HEADER),
];

fn with_platform<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = PLATFORM.to_vec();
    v.extend_from_slice(pairs);
    v
}

#[test]
fn settings_choose_identity_based_table_storage() {
    let s = load(&with_platform(&[
        ("BROKER_STORAGE__accountName", "brokerstore1"),
        ("BROKER_STORAGE__clientId", CLIENT_ID),
        ("BROKER_ENCRYPTION_KEYS", KEYS),
        ("BROKER_TABLE", "grants"),
    ]))
    .unwrap();
    match &s.storage {
        StorageSettings::TableIdentity {
            identity:
                IdentityStorage {
                    account,
                    table_uri,
                    client_id,
                    endpoints: identity,
                },
            table,
        } => {
            assert_eq!(account, "brokerstore1");
            assert_eq!(table_uri, &None);
            assert_eq!(client_id.as_deref(), Some(CLIENT_ID));
            assert_eq!(table, "grants");
            let current = identity.current.as_ref().unwrap();
            assert_eq!(current.url(), PLATFORM[0].1);
            assert_eq!(current.protocol(), Protocol::Identity2019);
            assert!(identity.legacy.is_none());
        }
        other => panic!("expected TableIdentity, got {other:?}"),
    }
    assert!(!format!("{:?}", s.storage).contains(IDENTITY_HEADER));

    // A table service URI alone: the account comes from it (public or path-style), default table.
    let s = load(&with_platform(&[
        (
            "BROKER_STORAGE__tableServiceUri",
            "https://brokerstore2.table.core.windows.net/",
        ),
        ("BROKER_ENCRYPTION_KEYS", KEYS),
    ]))
    .unwrap();
    let StorageSettings::TableIdentity {
        identity:
            IdentityStorage {
                account,
                table_uri,
                client_id,
                ..
            },
        table,
    } = &s.storage
    else {
        panic!("{:?}", s.storage)
    };
    assert_eq!(account, "brokerstore2");
    assert_eq!(
        table_uri.as_deref(),
        Some("https://brokerstore2.table.core.windows.net")
    );
    assert_eq!((client_id, table.as_str()), (&None, "oauthbroker"));
    let s = load(&with_platform(&[
        (
            "BROKER_STORAGE__tableServiceUri",
            "http://127.0.0.1:10002/devstoreaccount1",
        ),
        ("BROKER_STORAGE__credential", "managedidentity"),
        ("BROKER_ENCRYPTION_KEYS", KEYS),
    ]))
    .unwrap();
    assert!(
        matches!(&s.storage, StorageSettings::TableIdentity { identity: IdentityStorage { account, .. }, .. } if account == "devstoreaccount1")
    );

    // BROKER_STORAGE wins over the identity settings; they win over AzureWebJobsStorage.
    let s = load(&with_platform(&[
        ("BROKER_STORAGE", "UseDevelopmentStorage=true"),
        ("BROKER_STORAGE__accountName", "brokerstore1"),
        ("BROKER_ENCRYPTION_KEYS", KEYS),
    ]))
    .unwrap();
    assert!(matches!(s.storage, StorageSettings::Table { .. }));
    let s = load(&with_platform(&[
        ("AzureWebJobsStorage", "UseDevelopmentStorage=true"),
        ("BROKER_STORAGE__accountName", "brokerstore1"),
        ("BROKER_ENCRYPTION_KEYS", KEYS),
    ]))
    .unwrap();
    assert!(matches!(s.storage, StorageSettings::TableIdentity { .. }));

    // Identity-based host storage (AzureWebJobsStorage__*) is the last fallback before SQLite.
    let s = load(&with_platform(&[
        ("AzureWebJobsStorage__accountName", "hoststore1"),
        ("AzureWebJobsStorage__credential", "managedidentity"),
        ("AzureWebJobsStorage__clientId", CLIENT_ID),
        ("BROKER_ENCRYPTION_KEYS", KEYS),
    ]))
    .unwrap();
    assert!(
        matches!(&s.storage, StorageSettings::TableIdentity { identity: IdentityStorage { account, client_id: Some(c), .. }, .. } if account == "hoststore1" && c == CLIENT_ID)
    );
}

#[test]
fn identity_based_storage_refuses_to_start_without_what_it_needs() {
    let err = load(&with_platform(&[(
        "BROKER_STORAGE__accountName",
        "brokerstore1",
    )]))
    .unwrap_err();
    assert!(err.starts_with("BROKER_ENCRYPTION_KEYS"), "{err}");

    let err = load(&[
        ("BROKER_STORAGE__accountName", "brokerstore1"),
        ("BROKER_ENCRYPTION_KEYS", KEYS),
    ])
    .unwrap_err();
    assert!(
        err.starts_with("IDENTITY_ENDPOINT") && err.contains("managed identity"),
        "{err}"
    );

    let err = load(&with_platform(&[
        ("BROKER_STORAGE__accountName", "Not_An_Account"),
        ("BROKER_ENCRYPTION_KEYS", KEYS),
    ]))
    .unwrap_err();
    assert!(err.starts_with("BROKER_STORAGE__accountName"), "{err}");

    let err = load(&with_platform(&[
        ("BROKER_STORAGE__tableServiceUri", "not a url"),
        ("BROKER_ENCRYPTION_KEYS", KEYS),
    ]))
    .unwrap_err();
    assert!(err.starts_with("BROKER_STORAGE__tableServiceUri"), "{err}");

    let err = load(&with_platform(&[
        ("BROKER_STORAGE__accountName", "brokerstore1"),
        ("BROKER_STORAGE__credential", "clientsecret"),
        ("BROKER_ENCRYPTION_KEYS", KEYS),
    ]))
    .unwrap_err();
    assert!(err.starts_with("BROKER_STORAGE__credential"), "{err}");
}

// ------------------------------------------------------------------------------------------------
// real Azurite over HTTPS with --oauth basic

fn pending_row(state_hash: &str) -> PendingRow {
    let t = time::OffsetDateTime::from_unix_timestamp(now() + 600).unwrap();
    PendingRow {
        state_hash: state_hash.to_owned(),
        integration: "demo".into(),
        connection: "acme".into(),
        key_id: "k1".into(),
        sealed_verifier: "c2VhbGVk".into(),
        binding_hash: "b1nd".into(),
        expires_at: t,
        link_hash: None,
    }
}

#[tokio::test]
async fn table_storage_works_with_only_the_managed_identity_token_on_azurite() {
    let pki = TestPki::new();
    let azurite = Azurite::start_https_oauth(&pki);
    let fake = FakeIdentity::start(Issue::Jwt {
        ttl: 3600,
        audience: "https://storage.azure.com",
    });
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pki.ca_pem).unwrap())
        .build()
        .unwrap();
    let table_uri = format!("https://127.0.0.1:{}/devstoreaccount1", azurite.port);
    let table = format!("ident{}", now_nanos() % 1_000_000_000);
    let credential = ManagedIdentityCredential::new(
        http.clone(),
        &fake.endpoint(),
        Secret::new(IDENTITY_HEADER),
        Some(CLIENT_ID.into()),
    )
    .unwrap();
    let backend = TableBackend::connect_with_identity(
        "devstoreaccount1",
        Some(&table_uri),
        Arc::new(credential),
        &table,
        http.clone(),
    );

    backend
        .init()
        .await
        .expect("create the table with a bearer token");
    backend.ping().await.expect("point read");
    // One row, built once: its expiry is read from the clock, which may tick between two calls.
    let row = pending_row("0123abcd");
    backend
        .insert_pending(&row)
        .await
        .expect("insert an entity");
    let taken = backend
        .take_pending("0123abcd")
        .await
        .expect("read + delete");
    assert_eq!(taken, Some(row));
    assert_eq!(backend.take_pending("0123abcd").await.unwrap(), None);
    assert_eq!(
        fake.issued().len(),
        1,
        "one token for every call: the credential caches it"
    );

    // Azurite really checks the token: one for another audience is refused (403 → unavailable).
    let wrong = FakeIdentity::start(Issue::Jwt {
        ttl: 3600,
        audience: "https://vault.azure.net",
    });
    let refused = TableBackend::connect_with_identity(
        "devstoreaccount1",
        Some(&table_uri),
        Arc::new(
            ManagedIdentityCredential::new(
                http.clone(),
                &wrong.endpoint(),
                Secret::new(IDENTITY_HEADER),
                None,
            )
            .unwrap(),
        ),
        &table,
        http,
    );
    match refused.ping().await {
        Err(StoreError::Unavailable(why)) => assert!(why.contains("403"), "{why}"),
        other => panic!("expected 403 for a token of another audience, got {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------------
// the binary, end to end through settings and startup

/// The broker with nothing but the keys and `env`: no `BROKER_STORAGE` (empty is unset to the
/// broker) and an integrations file that does not exist.
async fn start_broker(dir: &Path, env: &[(&str, String)]) -> Broker {
    Broker::start(&BrokerSpec {
        port: free_port(),
        bind: "127.0.0.1".into(),
        storage: String::new(),
        table: None,
        encryption_keys: Some(KEYS.into()),
        api_key: None,
        public_url: None,
        integrations_path: dir.join("none.json"),
        work_dir: dir.to_owned(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    })
    .await
}

async fn health(broker: &Broker) -> u16 {
    let client = reqwest::Client::new();
    let url = format!("{}/api/health", broker.base_url);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(&url).send().await {
            return r.status().as_u16();
        }
        assert!(Instant::now() < deadline, "the broker did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Answers like Table Storage for what health needs: the table exists, the probed entity does not.
fn fake_table() -> FakeServer {
    FakeServer::start(|r| {
        let error = |status, code: &str| Response {
            status,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("x-ms-error-code".into(), code.into()),
            ],
            body:
                json!({"odata.error": {"code": code, "message": {"lang": "en-US", "value": code}}})
                    .to_string(),
        };
        if !r
            .headers
            .get("authorization")
            .is_some_and(|a| a.starts_with("Bearer "))
        {
            return error(403, "AuthorizationFailure");
        }
        if r.method == "POST" && r.path.ends_with("/Tables") {
            error(409, "TableAlreadyExists")
        } else {
            error(404, "ResourceNotFound")
        }
    })
}

#[tokio::test]
async fn the_broker_reads_table_storage_with_its_managed_identity() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeIdentity::start(Issue::Token {
        ttl: 86_400,
        as_string: true,
    });
    let table = fake_table();
    let broker = start_broker(
        dir.path(),
        &[
            (
                "BROKER_STORAGE__tableServiceUri",
                table.url("/devstoreaccount1"),
            ),
            ("BROKER_STORAGE__clientId", CLIENT_ID.into()),
            ("IDENTITY_ENDPOINT", fake.endpoint()),
            ("IDENTITY_HEADER", IDENTITY_HEADER.into()),
        ],
    )
    .await;
    assert_eq!(health(&broker).await, 200);
    for _ in 0..3 {
        assert_eq!(health(&broker).await, 200);
    }
    let issued = fake.issued();
    assert_eq!(issued.len(), 1, "one token fetch for every storage call");
    let calls = table.requests();
    assert!(calls.len() >= 4, "{calls:?}");
    for c in &calls {
        assert_eq!(
            c.headers.get("authorization"),
            Some(&format!("Bearer {}", issued[0])),
            "{c:?}"
        );
        assert!(c.path.starts_with("/devstoreaccount1/"), "{c:?}");
    }
    assert_eq!(fake.server.requests()[0].query["client_id"], CLIENT_ID);
    let log = broker.stop().text();
    assert!(
        !log.contains(&issued[0]) && !log.contains(IDENTITY_HEADER),
        "the token or the identity header reached the log"
    );
}

#[tokio::test]
async fn a_refused_identity_makes_health_503_and_leaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeIdentity::start(Issue::Token {
        ttl: 86_400,
        as_string: true,
    });
    let table = fake_table();
    let wrong = "wrong-header-Zx81Kq";
    let broker = start_broker(
        dir.path(),
        &[
            ("BROKER_STORAGE__accountName", "devstoreaccount1".into()),
            (
                "BROKER_STORAGE__tableServiceUri",
                table.url("/devstoreaccount1"),
            ),
            ("IDENTITY_ENDPOINT", fake.endpoint()),
            ("IDENTITY_HEADER", wrong.into()),
        ],
    )
    .await;
    assert_eq!(health(&broker).await, 503);
    assert!(fake.issued().is_empty());
    assert!(
        table.requests().is_empty(),
        "no storage call without a token"
    );
    let log = broker.stop().text();
    assert!(log.contains("managed identity"), "{log}");
    assert!(!log.contains(wrong), "the identity header reached the log");
}

// ------------------------------------------------------------------------------------------------
// the older protocol: MSI_ENDPOINT + MSI_SECRET, api-version 2017-09-01

const MSI_SECRET: &str = "msi-secret-Vb7Rt2Lq9Xw4";

/// A fake of a platform that speaks both protocols, each on its own path, checked as App Service
/// checks them: `/identity/token` (2019-08-01, `X-IDENTITY-HEADER`, `client_id`) and `/msi/legacy`
/// (2017-09-01, `secret`, `clientid`, `expires_on` as a date). With `refuse_2019`, the newer path
/// answers 400 to everything (a platform that does not offer that api-version).
struct FakeBothProtocols {
    server: FakeServer,
    issued: Arc<Mutex<Vec<(String, String)>>>,
}

impl FakeBothProtocols {
    fn start(refuse_2019: bool) -> Self {
        let issued = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&issued);
        let server = FakeServer::start(move |r| {
            let bad = |why: &str| {
                Response::json(
                    400,
                    json!({"error": "invalid_request", "error_description": why}),
                )
            };
            if r.method != "GET"
                || r.query.get("resource").map(String::as_str) != Some(STORAGE_RESOURCE)
            {
                return bad("bad method or resource");
            }
            let api = r.query.get("api-version").map(String::as_str);
            let (protocol, expires_on) = match r.path.as_str() {
                "/identity/token" => {
                    if refuse_2019 {
                        return bad("api-version 2019-08-01 is not supported here");
                    }
                    if api != Some("2019-08-01") || r.query.contains_key("clientid") {
                        return bad("this endpoint speaks 2019-08-01 with client_id");
                    }
                    if r.headers.get("x-identity-header").map(String::as_str)
                        != Some(IDENTITY_HEADER)
                    {
                        return Response::json(401, json!({"error": "unauthorized"}));
                    }
                    ("2019", json!((now() + 3600).to_string()))
                }
                "/msi/legacy" => {
                    if api != Some("2017-09-01") || r.query.contains_key("client_id") {
                        return bad("this endpoint speaks 2017-09-01 with clientid");
                    }
                    if r.headers.get("secret").map(String::as_str) != Some(MSI_SECRET)
                        || r.headers.contains_key("x-identity-header")
                    {
                        return Response::json(401, json!({"error": "unauthorized"}));
                    }
                    // As the 2017-09-01 protocol sends it: a date, 12-hour clock, UTC offset.
                    let exp = time::OffsetDateTime::from_unix_timestamp(now() + 3600).unwrap();
                    let f = time::macros::format_description!(
                        "[month]/[day]/[year] [hour repr:12]:[minute]:[second] [period] +00:00"
                    );
                    ("2017", json!(exp.format(&f).unwrap()))
                }
                _ => return Response::json(404, json!({"error": "not_found"})),
            };
            let token = format!("fake-{protocol}-token-{}", now_nanos());
            log.lock()
                .unwrap()
                .push((protocol.to_owned(), token.clone()));
            Response::json(
                200,
                json!({"access_token": token, "expires_on": expires_on, "resource": STORAGE_RESOURCE, "token_type": "Bearer"}),
            )
        });
        Self { server, issued }
    }

    fn issued(&self) -> Vec<(String, String)> {
        self.issued.lock().unwrap().clone()
    }

    fn protocols_asked(&self) -> Vec<String> {
        self.server
            .requests()
            .iter()
            .map(|r| r.path.clone())
            .collect()
    }

    fn endpoints(&self, current: bool, legacy: bool) -> IdentityEndpoints {
        IdentityEndpoints {
            current: current.then(|| {
                IdentityEndpoint::new(
                    Protocol::Identity2019,
                    &self.server.url("/identity/token"),
                    Secret::new(IDENTITY_HEADER),
                )
                .unwrap()
            }),
            legacy: legacy.then(|| {
                IdentityEndpoint::new(
                    Protocol::Msi2017,
                    &self.server.url("/msi/legacy"),
                    Secret::new(MSI_SECRET),
                )
                .unwrap()
            }),
        }
    }

    fn credential(
        &self,
        current: bool,
        legacy: bool,
        client_id: Option<&str>,
    ) -> ManagedIdentityCredential {
        ManagedIdentityCredential::with_endpoints(
            reqwest::Client::new(),
            self.endpoints(current, legacy),
            client_id.map(str::to_owned),
        )
        .unwrap()
    }
}

#[tokio::test]
async fn with_only_msi_endpoint_the_credential_speaks_2017_09_01() {
    let fake = FakeBothProtocols::start(false);
    let cred = fake.credential(false, true, Some(CLIENT_ID));
    let t = cred.get_token(&[STORAGE_SCOPE]).await.unwrap();
    let again = cred.get_token(&[STORAGE_SCOPE]).await.unwrap();
    assert_eq!(t.token.secret(), again.token.secret(), "cached");
    assert_eq!(
        fake.issued(),
        vec![("2017".to_owned(), t.token.secret().to_owned())]
    );
    // The date-form expires_on was read: about an hour from now (second precision).
    assert!(
        (t.expires_on.unix_timestamp() - (now() + 3600)).abs() <= 2,
        "{:?}",
        t.expires_on
    );
    let requests = fake.server.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.query["api-version"], "2017-09-01");
    assert_eq!(r.query["clientid"], CLIENT_ID);
    assert!(!r.query.contains_key("client_id"));
    assert_eq!(r.headers["secret"], MSI_SECRET);
    assert!(!r.headers.contains_key("x-identity-header"));
}

#[tokio::test]
async fn with_both_the_2019_endpoint_is_used_and_a_400_falls_back_to_msi_endpoint_for_good() {
    // A platform that answers the newer protocol: the older endpoint is never asked.
    let fake = FakeBothProtocols::start(false);
    let cred = fake.credential(true, true, Some(CLIENT_ID));
    cred.get_token(&[STORAGE_SCOPE]).await.unwrap();
    assert_eq!(fake.protocols_asked(), vec!["/identity/token"]);
    assert_eq!(fake.server.requests()[0].query["client_id"], CLIENT_ID);

    // A platform whose newer endpoint answers 400: one 400, then the older endpoint, and from then
    // on only the older endpoint (no 400 per renewal).
    let fake = FakeBothProtocols::start(true);
    let cred = fake
        .credential(true, true, Some(CLIENT_ID))
        .with_renew_before(time::Duration::hours(2)); // every call renews
    let first = cred.get_token(&[STORAGE_SCOPE]).await.unwrap();
    assert_eq!(
        fake.issued(),
        vec![("2017".to_owned(), first.token.secret().to_owned())]
    );
    assert_eq!(
        fake.protocols_asked(),
        vec!["/identity/token", "/msi/legacy"]
    );
    let second = cred.get_token(&[STORAGE_SCOPE]).await.unwrap();
    assert_ne!(first.token.secret(), second.token.secret());
    assert_eq!(
        fake.protocols_asked(),
        vec!["/identity/token", "/msi/legacy", "/msi/legacy"]
    );
    assert_eq!(fake.server.requests()[1].query["clientid"], CLIENT_ID);
}

#[tokio::test]
async fn a_400_without_msi_endpoint_or_any_other_error_does_not_fall_back_and_leaks_nothing() {
    // 400 and no older endpoint: the error says so.
    let fake = FakeBothProtocols::start(true);
    let err = fake
        .credential(true, false, None)
        .get_token(&[STORAGE_SCOPE])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("400") && err.contains("IDENTITY_ENDPOINT"),
        "{err}"
    );
    assert_eq!(fake.protocols_asked(), vec!["/identity/token"]);

    // A 401 from the newer endpoint (a wrong header) is not a reason to switch protocols.
    let fake = FakeBothProtocols::start(false);
    let mut endpoints = fake.endpoints(true, true);
    endpoints.current = Some(
        IdentityEndpoint::new(
            Protocol::Identity2019,
            &fake.server.url("/identity/token"),
            Secret::new("wrong-header-Hn4Kp"),
        )
        .unwrap(),
    );
    let cred =
        ManagedIdentityCredential::with_endpoints(reqwest::Client::new(), endpoints, None).unwrap();
    let err = cred
        .get_token(&[STORAGE_SCOPE])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("401"), "{err}");
    assert_eq!(fake.protocols_asked(), vec!["/identity/token"]);

    // Both refuse: the error names both, and neither secret.
    let fake = FakeBothProtocols::start(true);
    let mut endpoints = fake.endpoints(true, true);
    endpoints.legacy = Some(
        IdentityEndpoint::new(
            Protocol::Msi2017,
            &fake.server.url("/msi/legacy"),
            Secret::new("wrong-secret-Qz8Wm"),
        )
        .unwrap(),
    );
    let cred =
        ManagedIdentityCredential::with_endpoints(reqwest::Client::new(), endpoints, None).unwrap();
    let err = cred
        .get_token(&[STORAGE_SCOPE])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("400") && err.contains("MSI_ENDPOINT") && err.contains("401"),
        "{err}"
    );
    for secret in [IDENTITY_HEADER, MSI_SECRET, "wrong-secret-Qz8Wm"] {
        assert!(!err.contains(secret), "{err}");
    }
    assert!(!format!("{cred:?}").contains(MSI_SECRET));
    assert!(fake.issued().is_empty());
}

#[test]
fn settings_take_msi_endpoint_when_identity_endpoint_is_absent() {
    let s = load(&[
        ("BROKER_STORAGE__accountName", "brokerstore1"),
        ("BROKER_ENCRYPTION_KEYS", KEYS),
        ("MSI_ENDPOINT", "http://127.0.0.1:41234/msi/legacy"),
        ("MSI_SECRET", MSI_SECRET),
    ])
    .unwrap();
    let StorageSettings::TableIdentity {
        identity: IdentityStorage {
            endpoints: identity,
            ..
        },
        ..
    } = &s.storage
    else {
        panic!("{:?}", s.storage)
    };
    assert!(identity.current.is_none());
    assert_eq!(
        identity.legacy.as_ref().unwrap().protocol(),
        Protocol::Msi2017
    );
    assert!(!format!("{:?}", s.storage).contains(MSI_SECRET));

    // Both pairs: the newer one first, the older one kept as the fallback.
    let s = load(&with_platform(&[
        ("BROKER_STORAGE__accountName", "brokerstore1"),
        ("BROKER_ENCRYPTION_KEYS", KEYS),
        ("MSI_ENDPOINT", "http://127.0.0.1:41234/msi/legacy"),
        ("MSI_SECRET", MSI_SECRET),
    ]))
    .unwrap();
    let StorageSettings::TableIdentity {
        identity: IdentityStorage {
            endpoints: identity,
            ..
        },
        ..
    } = &s.storage
    else {
        panic!("{:?}", s.storage)
    };
    assert!(identity.current.is_some() && identity.legacy.is_some());

    // Half a pair is named.
    let err = load(&[
        ("BROKER_STORAGE__accountName", "brokerstore1"),
        ("BROKER_ENCRYPTION_KEYS", KEYS),
        ("MSI_ENDPOINT", "http://127.0.0.1:41234/msi/legacy"),
    ])
    .unwrap_err();
    assert!(err.starts_with("MSI_SECRET"), "{err}");
}

#[tokio::test]
async fn the_broker_reads_table_storage_through_msi_endpoint_when_the_2019_call_answers_400() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeBothProtocols::start(true);
    let table = fake_table();
    let broker = start_broker(
        dir.path(),
        &[
            (
                "BROKER_STORAGE__tableServiceUri",
                table.url("/devstoreaccount1"),
            ),
            ("BROKER_STORAGE__clientId", CLIENT_ID.into()),
            ("IDENTITY_ENDPOINT", fake.server.url("/identity/token")),
            ("IDENTITY_HEADER", IDENTITY_HEADER.into()),
            ("MSI_ENDPOINT", fake.server.url("/msi/legacy")),
            ("MSI_SECRET", MSI_SECRET.into()),
        ],
    )
    .await;
    assert_eq!(health(&broker).await, 200);
    assert_eq!(health(&broker).await, 200);
    let issued = fake.issued();
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0].0, "2017");
    assert_eq!(
        fake.protocols_asked(),
        vec!["/identity/token", "/msi/legacy"]
    );
    let calls = table.requests();
    assert!(!calls.is_empty());
    for c in &calls {
        assert_eq!(
            c.headers.get("authorization"),
            Some(&format!("Bearer {}", issued[0].1)),
            "{c:?}"
        );
    }
    let log = broker.stop().text();
    assert!(log.contains("2017-09-01"), "the fallback is logged: {log}");
    for secret in [issued[0].1.as_str(), IDENTITY_HEADER, MSI_SECRET] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}
