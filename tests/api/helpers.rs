//! Fixtures for the black-box tests: Azurite, oidc-provider and the real `oauth-broker` binary, each a
//! child process killed on drop, plus clients that call the broker the way its callers do: the
//! Functions host forwarding HTTP requests and POSTing the timer envelope, ADF calling the token route,
//! and a browser (cookie jar, redirects followed by hand) going through the vendor's consent screens.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use url::Url;

/// Azurite's well-known account and key (public, documented by Microsoft).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The Functions host version the fixtures pretend to be.
pub const HOST_VERSION: &str = "4.1037.0";

/// The one integration every test registers, and its OAuth client at the provider.
pub const INTEGRATION: &str = "demo";
pub const CLIENT_ID: &str = "oauth-broker-demo";
/// Distinctive, so a leak is unmistakable; no `%` (Basic auth form-encodes credentials first).
pub const CLIENT_SECRET: &str = "cs-7Qm2vX9kLp4RzT8wYb3N";
pub const SCOPES: [&str; 3] = ["openid", "offline_access", "api:read"];
/// The refresh margin the integrations file uses unless a test says otherwise; below the provider's
/// default access-token lifetime (60 s), so a fresh token is not due.
pub const DEFAULT_MARGIN_SECS: u64 = 30;
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 60;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(90);

// ------------------------------------------------------------------------------------------------
// small utilities

/// Non-cryptographic randomness is enough for test names, keys and invocation ids.
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&random_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn random_hex(bytes: usize) -> String {
    random_bytes(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn uuid_ish() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A free TCP port on 127.0.0.1, never handed out twice by this process.
pub fn free_port() -> u16 {
    static USED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let used = USED.get_or_init(Default::default);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if used.lock().unwrap().insert(port) {
            return port;
        }
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where Azurite and oidc-provider are installed (`scripts/test` sets `BROKER_TEST_NODE_MODULES`).
pub fn node_modules() -> PathBuf {
    let dir = std::env::var_os("BROKER_TEST_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/support/node_modules"));
    let ready = dir.join("azurite/dist/src/table/main.js").is_file()
        && dir.join("oidc-provider/package.json").is_file();
    if !ready {
        panic!(
            "Azurite/oidc-provider not found under {}: run scripts/test (it installs Azurite and oidc-provider)",
            dir.display()
        );
    }
    dir
}

/// Every way a secret could be spelled in stored or logged bytes: itself, hex, and base64 (both
/// alphabets) at each of the three byte alignments it can have inside a longer encoded blob (the
/// characters that mix in neighbouring bytes are dropped, so each form matches wherever the secret sits).
pub fn encodings_of(secret: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let bytes = secret.as_bytes();
    let mut out = vec![
        secret.to_owned(),
        bytes.iter().map(|b| format!("{b:02x}")).collect(),
    ];
    for shift in 0..3usize {
        let mut shifted = vec![0u8; shift];
        shifted.extend_from_slice(bytes);
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let encoded = engine.encode(&shifted);
            let start = if shift == 0 { 0 } else { 4 };
            let end = encoded.len().saturating_sub(4);
            if end > start + 16 {
                out.push(encoded[start..end].to_owned());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

// ------------------------------------------------------------------------------------------------
// child processes

/// All stdout+stderr lines of a child, in arrival order (per stream).
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<Vec<String>>>);

impl Output {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    fn capture(
        &self,
        stream: impl Read + Send + 'static,
        notify: Option<mpsc::Sender<String>>,
    ) -> JoinHandle<()> {
        let lines = self.0.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\r', '\n'])
                            .to_owned();
                        lines.lock().unwrap().push(line.clone());
                        if let Some(tx) = &notify {
                            let _ = tx.send(line);
                        }
                    }
                }
            }
        })
    }
}

/// A child process that is killed (and reaped) when dropped, with its output captured.
pub struct Proc {
    name: String,
    child: Child,
    pub output: Output,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, notify_stdout: Option<mpsc::Sender<String>>) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let output = Output::default();
        let readers = vec![
            output.capture(child.stdout.take().unwrap(), notify_stdout),
            output.capture(child.stderr.take().unwrap(), None),
        ];
        Proc {
            name: name.to_owned(),
            child,
            output,
            readers,
        }
    }

    /// Panics with the captured output when the process has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "{} exited early with {status}; output:\n{}",
                self.name,
                self.output.text()
            );
        }
    }

    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills the process and waits until every line it wrote has been captured.
    pub fn stop(mut self) -> Output {
        self.kill_and_join();
        self.output.clone()
    }

    fn kill_and_join(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // The failing test's context: the tail of what this process wrote.
            let lines = self.output.lines();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "----- {} output (last {} of {} lines) -----\n{}",
                self.name,
                tail.len(),
                lines.len(),
                tail.join("\n")
            );
        }
    }
}

fn poll_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

// ------------------------------------------------------------------------------------------------
// Azurite

pub struct Azurite {
    pub port: u16,
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl Azurite {
    pub async fn start() -> Azurite {
        Azurite::start_on(free_port()).await
    }

    /// Starts Azurite on a port chosen beforehand (e.g. one a broker already points at).
    pub async fn start_on(port: u16) -> Azurite {
        let nm = node_modules();
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("node");
        cmd.arg(nm.join("azurite/dist/src/table/main.js"))
            .args(["--tableHost", "127.0.0.1", "--tablePort"])
            .arg(port.to_string())
            .args(["--inMemoryPersistence", "--disableTelemetry", "--silent"])
            .current_dir(dir.path());
        let mut proc = Proc::spawn("azurite", cmd, None);
        let probe = format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}/Tables");
        let client = poll_client();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if client.get(&probe).send().await.is_ok() {
                break;
            }
            proc.assert_running();
            assert!(
                Instant::now() < deadline,
                "Azurite did not answer on {probe}; output:\n{}",
                proc.output.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Azurite {
            port,
            proc,
            _dir: dir,
        }
    }

    pub fn connection_string(&self) -> String {
        table_connection_string(self.port)
    }

    /// A client that reads the raw table the way an attacker with the storage key would.
    pub fn service_client(&self) -> azure_data_tables::clients::TableServiceClient {
        azure_data_tables::clients::TableServiceClientBuilder::with_location(
            azure_storage::CloudLocation::Emulator {
                address: "127.0.0.1".to_owned(),
                port: self.port,
            },
            azure_storage::StorageCredentials::emulator(),
        )
        .build()
    }

    /// Every entity of every table in the account, all properties, as JSON.
    pub async fn dump_all_tables(&self) -> Vec<(String, Value)> {
        use futures::StreamExt as _;
        let service = self.service_client();
        let mut names = Vec::new();
        let mut pages = service.list().into_stream();
        while let Some(page) = pages.next().await {
            let page = page.unwrap_or_else(|e| {
                panic!(
                    "list tables in Azurite: {e}; Azurite output:\n{}",
                    self.output()
                )
            });
            names.extend(page.tables.into_iter().map(|t| t.name));
        }
        let mut out = Vec::new();
        for name in names {
            let mut pages = service
                .table_client(name.clone())
                .query()
                .into_stream::<serde_json::Map<String, Value>>();
            while let Some(page) = pages.next().await {
                let page = page.unwrap_or_else(|e| {
                    panic!(
                        "query {name} in Azurite: {e}; Azurite output:\n{}",
                        self.output()
                    )
                });
                out.extend(
                    page.entities
                        .into_iter()
                        .map(|e| (name.clone(), Value::Object(e))),
                );
            }
        }
        out
    }

    pub fn output(&self) -> String {
        self.proc.output.text()
    }
}

/// The account-key connection string for a Table endpoint on 127.0.0.1:`port`.
pub fn table_connection_string(port: u16) -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};TableEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )
}

/// A fresh table name: alphanumeric, starting with a letter.
pub fn fresh_table_name() -> String {
    format!("t{}", random_hex(8))
}

// ------------------------------------------------------------------------------------------------
// oidc-provider

pub struct OidcOptions {
    pub redirect_uris: Vec<String>,
    pub access_token_ttl_secs: u64,
    pub token_delay_ms: u64,
}

pub struct Oidc {
    pub issuer: String,
    proc: Proc,
    http: reqwest::Client,
}

impl Oidc {
    pub async fn start(options: OidcOptions) -> Oidc {
        let script = repo_root().join("tests/support/oidc-server.mjs");
        assert!(
            script.is_file(),
            "{} is missing: it is the oidc-provider fixture",
            script.display()
        );
        let clients = json!([{
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": options.redirect_uris,
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        }]);
        let mut cmd = Command::new("node");
        cmd.arg(&script)
            .env("NODE_PATH", node_modules())
            .env("OIDC_PORT", "0")
            .env("OIDC_CLIENTS", clients.to_string())
            .env(
                "OIDC_ACCESS_TOKEN_TTL",
                options.access_token_ttl_secs.to_string(),
            )
            .env("OIDC_TOKEN_DELAY_MS", options.token_delay_ms.to_string())
            .current_dir(repo_root().join("tests/support"));
        let (tx, rx) = mpsc::channel();
        let mut proc = Proc::spawn("oidc-server.mjs", cmd, Some(tx));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let ready = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if v["ready"] == json!(true) {
                            break v;
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => proc.assert_running(),
            }
            proc.assert_running();
            assert!(
                Instant::now() < deadline,
                "oidc-server.mjs never printed its ready line; output:\n{}",
                proc.output.text()
            );
        };
        let port = ready["port"].as_u64().expect("ready line has a port") as u16;
        let issuer = ready["issuer"]
            .as_str()
            .map(|s| s.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("http://127.0.0.1:{port}"));
        Oidc {
            issuer,
            proc,
            http: reqwest::Client::builder()
                .timeout(HTTP_TIMEOUT)
                .build()
                .unwrap(),
        }
    }

    pub fn authorization_url(&self) -> String {
        format!("{}/auth", self.issuer)
    }
    pub fn revocation_url(&self) -> String {
        format!("{}/token/revocation", self.issuer)
    }

    pub async fn stats(&self) -> Stats {
        let v: Value = self
            .http
            .get(format!("{}/__stats", self.issuer))
            .send()
            .await
            .expect("GET /__stats")
            .json()
            .await
            .expect("/__stats is JSON");
        Stats(v)
    }

    pub async fn is_active(&self, token: &str) -> bool {
        let mut url = Url::parse(&format!("{}/__introspect", self.issuer)).unwrap();
        url.query_pairs_mut().append_pair("token", token);
        let v: Value = self
            .http
            .get(url)
            .send()
            .await
            .expect("GET /__introspect")
            .json()
            .await
            .expect("/__introspect is JSON");
        v["active"]
            .as_bool()
            .unwrap_or_else(|| panic!("/__introspect answered {v}"))
    }

    /// Revokes a token the way the client would (RFC 7009); for an access token oidc-provider
    /// revokes the whole grant.
    pub async fn revoke(&self, token: &str, hint: &str) {
        let resp = self
            .http
            .post(self.revocation_url())
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[("token", token), ("token_type_hint", hint)])
            .send()
            .await
            .expect("POST revocation");
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "revocation failed: {status} {body}; provider output:\n{}",
            self.output()
        );
    }

    pub fn output(&self) -> String {
        self.proc.output.text()
    }
}

/// The provider's `/__stats`: what the vendor saw.
#[derive(Debug, Clone)]
pub struct Stats(pub Value);

impl Stats {
    pub fn authorization_codes(&self) -> u64 {
        self.0["token_requests"]["authorization_code"]
            .as_u64()
            .unwrap_or(0)
    }
    pub fn refreshes(&self) -> u64 {
        self.0["token_requests"]["refresh_token"]
            .as_u64()
            .unwrap_or(0)
    }
    pub fn refresh_successes(&self) -> u64 {
        self.0["refresh_success"].as_u64().unwrap_or(0)
    }
    pub fn token_errors(&self, code: &str) -> u64 {
        self.0["token_errors"][code].as_u64().unwrap_or(0)
    }
    pub fn grants_revoked(&self) -> u64 {
        self.0["grants_revoked"].as_u64().unwrap_or(0)
    }
}

// ------------------------------------------------------------------------------------------------
// the broker

/// Everything needed to (re)start the broker binary.
#[derive(Clone)]
pub struct BrokerSpec {
    pub port: u16,
    pub bind: String,
    pub storage: String,
    pub table: Option<String>,
    pub encryption_keys: Option<String>,
    pub api_key: Option<String>,
    pub public_url: Option<String>,
    pub integrations_path: PathBuf,
    pub work_dir: PathBuf,
    /// Extra settings, e.g. those the integrations file references as `%NAME%`.
    pub env: Vec<(String, String)>,
}

impl BrokerSpec {
    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_oauth-broker"));
        cmd.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        cmd.env("BROKER_PORT", self.port.to_string())
            .env("BROKER_BIND", &self.bind)
            .env("BROKER_INTEGRATIONS", &self.integrations_path)
            .env("BROKER_STORAGE", &self.storage)
            .env("BROKER_SWEEP_INTERVAL_SECS", "0")
            .env("RUST_LOG", "debug")
            .current_dir(&self.work_dir);
        let optional = [
            ("BROKER_TABLE", &self.table),
            ("BROKER_ENCRYPTION_KEYS", &self.encryption_keys),
            ("BROKER_API_KEY", &self.api_key),
            ("BROKER_PUBLIC_URL", &self.public_url),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                cmd.env(name, value);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }
}

pub struct Broker {
    pub port: u16,
    pub base_url: String,
    /// The API key protected routes want: `BROKER_API_KEY`, or the one the broker generated (read
    /// from the file its start-up log names), as a local operator would.
    pub api_key: Option<String>,
    proc: Proc,
}

/// The `api_key_file` a standalone broker logs at start when it generated its key.
fn api_key_file(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    v["api_key_file"]
        .as_str()
        .or(v["fields"]["api_key_file"].as_str())
        .map(str::to_owned)
}

/// The `addr` of a `listening` event, flattened or under `fields`.
fn listening_addr(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    let candidates = [&v, &v["fields"]];
    for c in candidates {
        if c["message"] == json!("listening") {
            if let Some(addr) = c["addr"].as_str().or(v["addr"].as_str()) {
                return Some(addr.to_owned());
            }
        }
    }
    None
}

impl Broker {
    /// Starts the binary and waits for its `listening` event; panics (with its output) if it exits.
    pub async fn start(spec: &BrokerSpec) -> Broker {
        let (tx, rx) = mpsc::channel();
        let mut proc = Proc::spawn("oauth-broker", spec.command(), Some(tx));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut key_file = None;
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    if let Some(file) = api_key_file(&line) {
                        key_file = Some(spec.work_dir.join(file));
                    }
                    if let Some(addr) = listening_addr(&line) {
                        break addr;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(50))
                }
            }
            proc.assert_running();
            assert!(
                Instant::now() < deadline,
                "the broker never logged a `listening` event with an `addr` field; output:\n{}",
                proc.output.text()
            );
        };
        let port: u16 = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unparsable listening addr {addr:?}"));
        if spec.port != 0 {
            assert_eq!(port, spec.port, "the broker listens on BROKER_PORT");
        }
        let api_key = spec.api_key.clone().or_else(|| {
            key_file.map(|f| {
                std::fs::read_to_string(&f)
                    .unwrap_or_else(|e| panic!("the generated key file {}: {e}", f.display()))
                    .trim()
                    .to_owned()
            })
        });
        Broker {
            port,
            base_url: format!("http://127.0.0.1:{port}"),
            api_key,
            proc,
        }
    }

    /// Runs a broker that is expected to refuse to start; returns its exit status and output.
    /// Panics if it is still running (or listening) after the start-up timeout.
    pub async fn run_expecting_exit(spec: &BrokerSpec) -> (ExitStatus, String) {
        let (tx, rx) = mpsc::channel();
        let mut proc = Proc::spawn("oauth-broker", spec.command(), Some(tx));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = proc.exit_status() {
                let output = proc.stop();
                return (status, output.text());
            }
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
                if listening_addr(&line).is_some() {
                    let output = proc.stop();
                    panic!(
                        "the broker started listening but should have refused to start; output:\n{}",
                        output.text()
                    );
                }
            }
            if Instant::now() > deadline {
                let output = proc.stop();
                panic!(
                    "the broker neither exited nor listened; output:\n{}",
                    output.text()
                );
            }
        }
    }

    /// The key for protected routes (see [`Broker::api_key`]).
    pub fn key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    /// Stops the broker and returns everything it wrote.
    pub fn stop(self) -> Output {
        self.proc.stop()
    }
}

// ------------------------------------------------------------------------------------------------
// HTTP replies

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub async fn from(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    pub fn location(&self) -> String {
        self.header("location")
            .unwrap_or_else(|| panic!("no Location header in {self:?}"))
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }

    /// The `error` code of a JSON error object, asserting the body is one.
    pub fn error_code(&self) -> String {
        let v = self.json();
        assert!(v.is_object(), "error body must be a JSON object: {self:?}");
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("error body has no string `error`: {self:?}"))
            .to_owned()
    }

    pub fn is_html(&self) -> bool {
        self.header("content-type")
            .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("text/html"))
    }

    pub fn is_json(&self) -> bool {
        self.header("content-type")
            .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("application/json"))
    }

    pub fn has_no_store(&self) -> bool {
        self.header("cache-control")
            .is_some_and(|cc| cc.to_ascii_lowercase().contains("no-store"))
    }
}

/// Headers the Functions host adds to every request it forwards or sends to the handler.
fn host_headers(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    req.header("User-Agent", format!("Azure-Functions-Host/{HOST_VERSION}"))
        .header("X-Azure-Functions-HostVersion", HOST_VERSION)
        .header("X-Azure-Functions-InvocationId", uuid_ish())
}

/// A GET as the Functions host forwards it, outside a [`TestApp`] (for brokers started by hand).
pub async fn host_get(base_url: &str, path: &str, key: Option<&str>) -> Reply {
    let url = format!("{base_url}{path}");
    let mut req = host_headers(host_client().get(&url));
    if let Some(key) = key {
        req = req.header("x-functions-key", key);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let reply = Reply::from(resp).await;
    assert_no_undocumented_5xx(&reply, &format!("GET {path}"));
    reply
}

/// The Functions host's client: no redirects followed, no cookies.
fn host_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(HTTP_TIMEOUT)
        .build()
        .unwrap()
}

/// The body the host POSTs to `/<timer function>` on every tick.
pub fn timer_envelope() -> Value {
    json!({
        "Data": {
            "timer": {
                "Schedule": {"AdjustForDST": true},
                "ScheduleStatus": {
                    "Last": "2026-01-01T00:00:00+00:00",
                    "Next": "2026-01-01T00:05:00+00:00",
                    "LastUpdated": "2026-01-01T00:00:00.0012345+00:00"
                },
                "IsPastDue": false
            }
        },
        "Metadata": {
            "sys": {
                "MethodName": "refresh-timer",
                "UtcNow": "2026-01-01T00:05:00.01Z",
                "RandGuid": uuid_ish()
            }
        }
    })
}

// ------------------------------------------------------------------------------------------------
// a browser: cookie jar, redirects by hand, HTML forms

pub struct Browser {
    client: reqwest::Client,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Browser {
        Browser {
            client: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .timeout(HTTP_TIMEOUT)
                .build()
                .unwrap(),
        }
    }

    /// A GET as the host would forward it (the host adds its headers; the provider ignores them).
    pub async fn get(&self, url: &str) -> Reply {
        let resp = host_headers(self.client.get(url))
            .header("Accept", "text/html")
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let reply = Reply::from(resp).await;
        assert_no_undocumented_5xx(&reply, &format!("GET {url}"));
        reply
    }

    pub async fn post_form(&self, url: &str, fields: &[(String, String)]) -> Reply {
        let resp = self
            .client
            .post(url)
            .header("Accept", "text/html")
            .form(fields)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        Reply::from(resp).await
    }

    /// Follows the provider's login and consent screens from `authorize_url` until the provider
    /// redirects to `redirect_uri`; returns that full callback URL (not yet called).
    pub async fn consent(&self, authorize_url: &str, redirect_uri: &str) -> String {
        let mut reply = self.get(authorize_url).await;
        let mut url = Url::parse(authorize_url).unwrap();
        let mut trail = vec![format!("GET {url}")];
        for _ in 0..20 {
            match reply.status {
                301 | 302 | 303 | 307 | 308 => {
                    let next = url.join(&reply.location()).unwrap();
                    if next.as_str().starts_with(redirect_uri) {
                        return next.to_string();
                    }
                    trail.push(format!("{} -> GET {next}", reply.status));
                    url = next;
                    reply = self.get(url.as_str()).await;
                }
                200 => {
                    let forms = parse_forms(&reply.body);
                    let form = forms
                        .iter()
                        .find(|f| f.method.eq_ignore_ascii_case("post"))
                        .unwrap_or_else(|| {
                            panic!(
                                "no POST form on {url}; trail {trail:#?}; page:\n{}",
                                reply.body
                            )
                        });
                    let action = url.join(&form.action).unwrap();
                    trail.push(format!("200 -> POST {action} {:?}", form.fields));
                    reply = self.post_form(action.as_str(), &form.fields).await;
                    url = action;
                }
                _ => panic!(
                    "unexpected {} from the provider at {url}; trail {trail:#?}; body:\n{}",
                    reply.status, reply.body
                ),
            }
        }
        panic!("consent did not reach {redirect_uri}; trail {trail:#?}");
    }
}

/// An HTML form: resolved later against the page URL; `fields` already filled in as a user would.
#[derive(Debug, Clone)]
pub struct Form {
    pub action: String,
    pub method: String,
    pub fields: Vec<(String, String)>,
}

/// A small, forgiving form parser: `<form action method>` and its `<input>`s (hidden ones as they
/// are, text and password filled with dummy credentials: the dev interactions accept any login).
pub fn parse_forms(html: &str) -> Vec<Form> {
    let lower = html.to_ascii_lowercase();
    let mut forms = Vec::new();
    let mut pos = 0;
    while let Some(start) = lower[pos..].find("<form").map(|i| i + pos) {
        let Some(tag_end) = lower[start..].find('>').map(|i| i + start) else {
            break;
        };
        let attrs = parse_attrs(&html[start + 5..tag_end]);
        let end = lower[tag_end..]
            .find("</form")
            .map(|i| i + tag_end)
            .unwrap_or(html.len());
        let inner = &html[tag_end + 1..end];
        let inner_lower = &lower[tag_end + 1..end];
        let mut fields = Vec::new();
        let mut ipos = 0;
        while let Some(istart) = inner_lower[ipos..].find("<input").map(|i| i + ipos) {
            let iend = inner_lower[istart..]
                .find('>')
                .map(|i| i + istart)
                .unwrap_or(inner.len());
            let a = parse_attrs(&inner[istart + 6..iend]);
            ipos = iend;
            let get = |k: &str| a.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let Some(name) = get("name") else { continue };
            let kind = get("type")
                .unwrap_or_else(|| "text".into())
                .to_ascii_lowercase();
            let value = get("value").unwrap_or_default();
            let value = match kind.as_str() {
                "hidden" => value,
                "password" if value.is_empty() => "any-password".into(),
                "text" | "email" if value.is_empty() => "tester".into(),
                "submit" | "button" | "checkbox" | "radio" | "image" | "reset" => continue,
                _ => value,
            };
            fields.push((name, value));
        }
        let get = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        forms.push(Form {
            action: get("action").unwrap_or_default(),
            method: get("method").unwrap_or_else(|| "get".into()),
            fields,
        });
        pos = end.max(tag_end + 1);
    }
    forms
}

fn parse_attrs(s: &str) -> Vec<(String, String)> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i].is_ascii_whitespace() || b[*i] == b'/') {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        let ns = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'/' {
            i += 1;
        }
        let name = s[ns..i].to_ascii_lowercase();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let q = b[i];
                i += 1;
                let vs = i;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                value = s[vs..i].to_owned();
                i = (i + 1).min(b.len());
            } else {
                let vs = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                value = s[vs..i].to_owned();
            }
        }
        if !name.is_empty() {
            out.push((name, html_unescape(&value)));
        }
    }
    out
}

pub fn html_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest[..rest.len().min(12)].find(';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ if entity.starts_with("#x") || entity.starts_with("#X") => {
                u32::from_str_radix(&entity[2..], 16)
                    .ok()
                    .and_then(char::from_u32)
            }
            _ if entity.starts_with('#') => entity[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The value of one query parameter of `url`.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `url` with query parameter `name` replaced by `value`.
pub fn with_query_param(url: &str, name: &str, value: &str) -> String {
    let mut parsed = Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| {
            if k == name {
                (k.into_owned(), value.to_owned())
            } else {
                (k.into_owned(), v.into_owned())
            }
        })
        .collect();
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    parsed.to_string()
}

// ------------------------------------------------------------------------------------------------
// the whole application under test

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Table,
    Sqlite,
}

pub struct AppOptions {
    pub store: Store,
    /// Start oidc-provider; without it the integration points at a port where nothing listens.
    pub provider: bool,
    pub api_key: Option<String>,
    pub access_token_ttl_secs: u64,
    pub refresh_margin_secs: u64,
    pub public_url: Option<String>,
    /// Pass `BROKER_PORT=0` instead of a pre-picked port (redirect URIs then cannot be registered
    /// at the provider in advance).
    pub port_zero: bool,
    /// `BROKER_ENCRYPTION_KEYS` for the embedded store (Table Storage always gets one).
    pub sqlite_encryption_keys: bool,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            store: Store::Sqlite,
            provider: true,
            api_key: None,
            access_token_ttl_secs: DEFAULT_TOKEN_TTL_SECS,
            refresh_margin_secs: DEFAULT_MARGIN_SECS,
            public_url: None,
            port_zero: false,
            sqlite_encryption_keys: false,
        }
    }
}

impl AppOptions {
    pub fn on(store: Store) -> AppOptions {
        AppOptions {
            store,
            ..AppOptions::default()
        }
    }
}

/// How a request presents the API key.
#[derive(Clone, Debug)]
pub enum Key {
    /// The broker's key (`BROKER_API_KEY`, or the generated one) as `x-functions-key`, as ADF does.
    Configured,
    None,
    Header(String),
    Query(String),
}

/// One broker with its own provider, store and temp dir.
pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub azurite: Option<Azurite>,
    pub oidc: Option<Oidc>,
    broker: Option<Broker>,
    pub spec: BrokerSpec,
    pub table: Option<String>,
    pub encryption_key: String,
    host: reqwest::Client,
}

pub fn integrations_file(issuer: &str, margin: u64) -> Value {
    json!({
        "integrations": {
            INTEGRATION: {
                "authorization_url": format!("{issuer}/auth"),
                "token_url": format!("{issuer}/token"),
                "revocation_url": format!("{issuer}/token/revocation"),
                "client_id": "%DEMO_CLIENT_ID%",
                "client_secret": "%DEMO_CLIENT_SECRET%",
                "scopes": SCOPES,
                "client_auth": "basic",
                "refresh_margin_secs": margin
            }
        }
    })
}

impl TestApp {
    pub async fn spawn(options: AppOptions) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let port = if options.port_zero { 0 } else { free_port() };
        let public = options
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{port}"));
        let oidc = if options.provider {
            Some(
                Oidc::start(OidcOptions {
                    redirect_uris: vec![format!("{public}/api/auth/callback")],
                    access_token_ttl_secs: options.access_token_ttl_secs,
                    token_delay_ms: 0,
                })
                .await,
            )
        } else {
            None
        };
        let issuer = oidc
            .as_ref()
            .map(|o| o.issuer.clone())
            .unwrap_or_else(|| "http://127.0.0.1:9".to_owned());
        let integrations_path = dir.path().join("integrations.json");
        std::fs::write(
            &integrations_path,
            serde_json::to_vec_pretty(&integrations_file(&issuer, options.refresh_margin_secs))
                .unwrap(),
        )
        .unwrap();
        let encryption_key = base64::engine::general_purpose::STANDARD.encode(random_bytes(32));
        let (azurite, storage, table, keys) = match options.store {
            Store::Table => {
                let azurite = Azurite::start().await;
                let cs = azurite.connection_string();
                (
                    Some(azurite),
                    cs,
                    Some(fresh_table_name()),
                    Some(format!("k1:{encryption_key}")),
                )
            }
            Store::Sqlite => {
                std::fs::create_dir_all(dir.path().join("data")).unwrap();
                let db = dir.path().join("data/broker.db");
                let keys = options
                    .sqlite_encryption_keys
                    .then(|| format!("k1:{encryption_key}"));
                (None, format!("sqlite:{}", db.display()), None, keys)
            }
        };
        let spec = BrokerSpec {
            port,
            bind: "127.0.0.1".into(),
            storage,
            table: table.clone(),
            encryption_keys: keys,
            api_key: options.api_key.clone(),
            public_url: options.public_url.clone(),
            integrations_path,
            work_dir: dir.path().to_owned(),
            env: vec![
                ("DEMO_CLIENT_ID".into(), CLIENT_ID.into()),
                ("DEMO_CLIENT_SECRET".into(), CLIENT_SECRET.into()),
            ],
        };
        let broker = Broker::start(&spec).await;
        TestApp {
            dir,
            azurite,
            oidc,
            broker: Some(broker),
            spec,
            table,
            encryption_key,
            host: host_client(),
        }
    }

    pub fn broker(&self) -> &Broker {
        self.broker.as_ref().expect("broker running")
    }

    pub fn oidc(&self) -> &Oidc {
        self.oidc
            .as_ref()
            .expect("this app was started without a provider")
    }

    pub fn base_url(&self) -> String {
        self.broker().base_url.clone()
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base_url())
    }

    pub fn redirect_uri(&self) -> String {
        let public = self
            .spec
            .public_url
            .clone()
            .unwrap_or_else(|| self.base_url());
        format!("{}/api/auth/callback", public.trim_end_matches('/'))
    }

    /// Stops the broker (all its output captured) and returns its output.
    pub fn stop_broker(&mut self) -> Output {
        self.broker.take().expect("broker running").stop()
    }

    /// Restarts the broker on the same port, store and keys with a different refresh margin, as an
    /// operator editing `integrations.json` would.
    pub async fn restart_with_margin(&mut self, margin: u64) -> Output {
        let old = self.stop_broker();
        let issuer = self
            .oidc
            .as_ref()
            .map(|o| o.issuer.clone())
            .unwrap_or_else(|| "http://127.0.0.1:9".to_owned());
        std::fs::write(
            &self.spec.integrations_path,
            serde_json::to_vec_pretty(&integrations_file(&issuer, margin)).unwrap(),
        )
        .unwrap();
        self.broker = Some(Broker::start(&self.spec).await);
        // Pooled keep-alive connections went to the old process.
        self.host = host_client();
        old
    }

    /// Restarts the broker on the same port, store and keys with another integrations file.
    pub async fn restart_with_integrations(&mut self, file: &Value) -> Output {
        let old = self.stop_broker();
        std::fs::write(&self.spec.integrations_path, file.to_string()).unwrap();
        self.broker = Some(Broker::start(&self.spec).await);
        self.host = host_client();
        old
    }

    fn with_key(&self, key: &Key, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match key {
            Key::Configured => match self.broker().key() {
                Some(k) => req.header("x-functions-key", k),
                None => req,
            },
            Key::None | Key::Query(_) => req,
            Key::Header(k) => req.header("x-functions-key", k),
        }
    }

    fn keyed_path(path: &str, key: &Key) -> String {
        match key {
            Key::Query(k) => {
                let sep = if path.contains('?') { '&' } else { '?' };
                let enc: String = url::form_urlencoded::byte_serialize(k.as_bytes()).collect();
                format!("{path}{sep}code={enc}")
            }
            _ => path.to_owned(),
        }
    }

    /// A request as the Functions host forwards it (or as a standalone caller sends it).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        json_body: Option<&str>,
        key: Key,
    ) -> Reply {
        let url = self.url(&Self::keyed_path(path, &key));
        let mut req = host_headers(self.host.request(method.clone(), &url));
        req = self.with_key(&key, req);
        if let Some(body) = json_body {
            req = req
                .header("Content-Type", "application/json")
                .body(body.to_owned());
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let reply = Reply::from(resp).await;
        assert_no_undocumented_5xx(&reply, &format!("{method} {path}"));
        reply
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None, Key::Configured).await
    }

    pub async fn post_json(&self, path: &str, body: &str) -> Reply {
        self.call(Method::POST, path, Some(body), Key::Configured)
            .await
    }

    pub async fn health(&self) -> Reply {
        self.call(Method::GET, "/api/health", None, Key::None).await
    }

    /// The host's timer tick.
    pub async fn timer(&self) -> Reply {
        self.post_json("/refresh-timer", &timer_envelope().to_string())
            .await
    }

    /// Runs the sweep and returns its `ReturnValue`, asserting the envelope shape.
    pub async fn sweep(&self) -> Value {
        let reply = self.timer().await;
        assert_eq!(reply.status, 200, "timer invocation: {reply:?}");
        let v = reply.json();
        assert_eq!(v["Outputs"], json!({}), "timer Outputs: {v}");
        assert!(v["Logs"].is_array(), "timer Logs is an array: {v}");
        let rv = v["ReturnValue"].clone();
        for k in ["refreshed", "failed", "reauthorization_required"] {
            assert!(rv[k].is_u64(), "ReturnValue.{k} is a count: {v}");
        }
        rv
    }

    pub fn token_path(conn: &str) -> String {
        format!("/api/token/{INTEGRATION}/{conn}")
    }

    pub async fn token_reply(&self, conn: &str, query: &str) -> Reply {
        self.get(&format!("{}{query}", Self::token_path(conn)))
            .await
    }

    /// GET the token route and check the success shape; returns the JSON.
    pub async fn token(&self, conn: &str) -> Value {
        let reply = self.token_reply(conn, "").await;
        check_token_reply(&reply, conn)
    }

    pub async fn access_token(&self, conn: &str) -> String {
        self.token(conn).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The auth-start URL for `conn` as a person opens it: the API key (if any) as `?code=`.
    pub fn start_url(&self, conn: &str) -> String {
        let path = format!("/api/auth/start/{INTEGRATION}?connection={conn}");
        self.url(&Self::keyed_path(&path, &self.query_key()))
    }

    /// Starts consent for `conn` in `browser`; returns the auth-start reply (a 302).
    pub async fn start_auth(&self, browser: &Browser, conn: &str) -> Reply {
        let url = self.start_url(conn);
        let reply = browser.get(&url).await;
        assert_eq!(
            reply.status, 302,
            "auth-start should redirect to the provider: {reply:?}"
        );
        reply
    }

    /// Browsers cannot send headers: the API key travels as `?code=` like a function key.
    fn query_key(&self) -> Key {
        match self.broker().key() {
            Some(k) => Key::Query(k.to_owned()),
            None => Key::None,
        }
    }

    /// Start → provider login and consent → the callback URL (not yet called).
    pub async fn consent_until_callback(&self, browser: &Browser, conn: &str) -> Consent {
        let start = self.start_auth(browser, conn).await;
        let authorize_url = start.location();
        let state = query_param(&authorize_url, "state").expect("state in the authorize URL");
        let callback_url = browser.consent(&authorize_url, &self.redirect_uri()).await;
        // The provider redirects to the public URL; the browser reaches the broker there.
        let code = query_param(&callback_url, "code").unwrap_or_default();
        Consent {
            state,
            code,
            callback_url,
        }
    }

    /// A complete consent for `conn` in a fresh browser; asserts the callback page is a 200.
    pub async fn connect(&self, conn: &str) -> Consent {
        let browser = Browser::new();
        let consent = self.consent_until_callback(&browser, conn).await;
        let page = browser.get(&consent.callback_url).await;
        assert_eq!(page.status, 200, "callback after consent: {page:?}");
        consent
    }
}

pub struct Consent {
    pub state: String,
    pub code: String,
    pub callback_url: String,
}

/// Asserts the token route's success shape; returns the JSON.
#[track_caller]
pub fn check_token_reply(reply: &Reply, conn: &str) -> Value {
    assert_eq!(reply.status, 200, "token route: {reply:?}");
    assert!(reply.is_json(), "token route answers JSON: {reply:?}");
    assert!(
        reply.has_no_store(),
        "token route sets Cache-Control: no-store: {reply:?}"
    );
    let v = reply.json();
    let token = v["access_token"].as_str().unwrap_or_default();
    assert!(!token.is_empty(), "access_token: {v}");
    assert!(
        v["token_type"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("bearer")),
        "token_type: {v}"
    );
    let expires_at = v["expires_at"].as_str().unwrap_or_default();
    let parsed =
        time::OffsetDateTime::parse(expires_at, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("expires_at {expires_at:?} is not RFC 3339 ({e}): {v}"));
    assert!(parsed.offset().is_utc(), "expires_at is UTC: {v}");
    let expires_in = v["expires_in"]
        .as_i64()
        .unwrap_or_else(|| panic!("expires_in is an integer: {v}"));
    assert!(expires_in > 0, "expires_in is positive: {v}");
    let drift = (parsed - time::OffsetDateTime::now_utc()).whole_seconds() - expires_in;
    assert!(
        drift.abs() <= 5,
        "expires_in ({expires_in}) agrees with expires_at ({expires_at}): {v}"
    );
    assert_eq!(v["integration"], json!(INTEGRATION), "integration: {v}");
    assert_eq!(v["connection"], json!(conn), "connection: {v}");
    assert!(v["scope"].is_string(), "scope is a string: {v}");
    v
}

/// Asserts a status is not a 5xx, except the documented 502 and 503.
#[track_caller]
pub fn assert_no_undocumented_5xx(reply: &Reply, what: &str) {
    assert!(
        reply.status < 500 || reply.status == 502 || reply.status == 503,
        "{what}: undocumented {}: {reply:?}",
        reply.status
    );
}

/// Recursively reads every regular file below `dir`.
pub fn read_all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn encodings_of_finds_a_secret_base64_encoded_inside_a_larger_blob() {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let secret = "tok_Zr8HqW2mXbY9pLk3VnC7sD1fGtR5uJ0e";
    for prefix in ["", "a", "ab", "abc", "{\"access_token\":\""] {
        let blob = format!("{prefix}{secret}\",\"refresh\":\"x\"}}");
        for encoded in [STANDARD.encode(&blob), URL_SAFE_NO_PAD.encode(&blob)] {
            assert!(
                encodings_of(secret).iter().any(|e| encoded.contains(e)),
                "prefix {prefix:?}: {encoded}"
            );
        }
    }
    let unrelated = STANDARD.encode("tok_something_else_entirely_0123456789");
    assert!(!encodings_of(secret).iter().any(|e| unrelated.contains(e)));
}
