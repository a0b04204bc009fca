//! Identity-based Table Storage: `BROKER_STORAGE__accountName` / `__tableServiceUri` with the App
//! Service managed identity endpoint (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`).
//!
//! - The credential against a local fake of the identity endpoint: the request it makes (resource,
//!   api-version, client_id, `X-IDENTITY-HEADER`), caching, renewal before expiry, riding out a failed
//!   renewal on a still-valid token, and errors that never show the header or a token.
//! - `Settings::load` choosing identity-based storage, and its start-up errors.
//! - Real Azurite with `--oauth basic` over HTTPS (a throwaway CA made with `openssl`): create, write,
//!   read and delete with nothing but the bearer token; Azurite rejects a token for the wrong audience.
//! - The real binary wired through settings and startup, against the fake identity endpoint and a fake
//!   table endpoint (the binary trusts only public CAs, and Azurite refuses bearer tokens over HTTP):
//!   health answers 200 with `Authorization: Bearer <token>` on every storage call and one token fetch.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use azure_core::auth::TokenCredential;
use base64::Engine as _;
use oauth_broker::config::{IdentityStorage, Settings, StorageSettings};
use oauth_broker::domain::Secret;
use oauth_broker::store::identity::{ManagedIdentityCredential, STORAGE_RESOURCE};
use oauth_broker::store::table::TableBackend;
use oauth_broker::store::{Backend, PendingRow, StoreError};
use serde_json::{json, Value};

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
        &format!("http://127.0.0.1:{}/msi/token", closed_port()),
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

fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
                    identity_endpoint,
                    identity_header,
                },
            table,
        } => {
            assert_eq!(account, "brokerstore1");
            assert_eq!(table_uri, &None);
            assert_eq!(client_id.as_deref(), Some(CLIENT_ID));
            assert_eq!(table, "grants");
            assert_eq!(identity_endpoint, PLATFORM[0].1);
            assert_eq!(identity_header.expose(), IDENTITY_HEADER);
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

fn node_modules() -> PathBuf {
    let dir = std::env::var_os("BROKER_TEST_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/node_modules")
        });
    assert!(
        dir.join("azurite/dist/src/table/main.js").is_file(),
        "Azurite not found under {}: run scripts/test (it installs the test fixtures)",
        dir.display()
    );
    dir
}

/// A throwaway CA and a server certificate for 127.0.0.1 signed by it (rustls accepts no self-signed
/// leaf as its own anchor, so two certificates).
struct TestPki {
    _dir: tempfile::TempDir,
    ca_pem: Vec<u8>,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command is needed to make a test certificate (Debian: apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_pki() -> TestPki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend_from_slice(&ec);
    ca.extend_from_slice(&[
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=oauth-broker test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(d, &ca);
    let mut csr = vec!["req"];
    csr.extend_from_slice(&ec);
    csr.extend_from_slice(&[
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(d, &csr);
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
    );
    TestPki {
        ca_pem: std::fs::read(d.join("ca.pem")).unwrap(),
        cert: d.join("leaf.pem"),
        key: d.join("leaf.key"),
        _dir: dir,
    }
}

struct Azurite {
    child: Child,
    port: u16,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_azurite_https_oauth(pki: &TestPki) -> Azurite {
    let nm = node_modules();
    let port = closed_port();
    let child = Command::new("node")
        .arg(nm.join("azurite/dist/src/table/main.js"))
        .args(["--tableHost", "127.0.0.1", "--tablePort", &port.to_string()])
        .args(["--inMemoryPersistence", "--disableTelemetry", "--silent"])
        .args(["--oauth", "basic"])
        .arg("--cert")
        .arg(&pki.cert)
        .arg("--key")
        .arg(&pki.key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node is needed to run Azurite");
    let azurite = Azurite { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "Azurite did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    azurite
}

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
    let pki = make_pki();
    let azurite = start_azurite_https_oauth(&pki);
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
    backend
        .insert_pending(&pending_row("0123abcd"))
        .await
        .expect("insert an entity");
    let taken = backend
        .take_pending("0123abcd")
        .await
        .expect("read + delete");
    assert_eq!(taken, Some(pending_row("0123abcd")));
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

struct Broker {
    child: Child,
    port: u16,
    output: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_broker(dir: &Path, env: &[(&str, String)]) -> Broker {
    let port = closed_port();
    let output = dir.join(format!("broker-{port}.log"));
    let log = std::fs::File::create(&output).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oauth-broker"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("BROKER_PORT", port.to_string())
        .env("BROKER_SWEEP_INTERVAL_SECS", "0")
        .env("BROKER_INTEGRATIONS", dir.join("none.json"))
        .env("BROKER_ENCRYPTION_KEYS", KEYS)
        .env("RUST_LOG", "debug")
        .current_dir(dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    Broker {
        child,
        port,
        output,
    }
}

async fn health(broker: &Broker) -> u16 {
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/api/health", broker.port);
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
    );
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
    let log = std::fs::read_to_string(&broker.output).unwrap();
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
    );
    assert_eq!(health(&broker).await, 503);
    assert!(fake.issued().is_empty());
    assert!(
        table.requests().is_empty(),
        "no storage call without a token"
    );
    let output = broker.output.clone();
    drop(broker);
    let log = std::fs::read_to_string(output).unwrap();
    assert!(log.contains("managed identity"), "{log}");
    assert!(!log.contains(wrong), "the identity header reached the log");
}
