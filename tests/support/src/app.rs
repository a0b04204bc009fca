//! The whole application under test: one broker with its own oidc-provider, store (Azurite or a
//! SQLite file) and temp dir ([`TestApp`]), called the way its callers call it: the Functions host
//! forwarding requests and POSTing the timer, ADF calling the token route, a person consenting.

use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};

use crate::azurite::{fresh_table_name, Azurite};
use crate::broker::{Broker, BrokerSpec};
use crate::browser::Browser;
use crate::http::{assert_no_undocumented_5xx, host_client, host_headers, timer_envelope, Reply};
use crate::oidc::{Oidc, OidcOptions};
use crate::process::Output;
use crate::util::{free_port, query_param, random_bytes};

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

    /// Starts the broker again after [`Self::stop_broker`] (same port, store, keys and file).
    pub async fn start_broker(&mut self) {
        assert!(self.broker.is_none(), "the broker is already running");
        self.broker = Some(Broker::start(&self.spec).await);
        self.host = host_client();
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

    /// A consent for `conn` by the provider account `login`, from auth start (`extra` appended to
    /// its query, e.g. `&allow_account_change=true`); the callback page, whatever its status.
    pub async fn consent_as(&self, conn: &str, login: &str, extra: &str) -> Reply {
        let browser = Browser::as_user(login);
        let url = format!("{}{extra}", self.start_url(conn));
        let start = browser.get(&url).await;
        assert_eq!(start.status, 302, "auth-start redirects: {start:?}");
        let callback = browser
            .consent(&start.location(), &self.redirect_uri())
            .await;
        browser.get(&callback).await
    }

    /// A consent through the keyless consent link `link` by the provider account `login`; the
    /// callback page, whatever its status.
    pub async fn consent_through_link_as(&self, link: &str, login: &str) -> Reply {
        let browser = Browser::as_user(login);
        let opened = browser.get(link).await;
        assert_eq!(opened.status, 302, "the link starts a consent: {opened:?}");
        let callback = browser
            .consent(&opened.location(), &self.redirect_uri())
            .await;
        browser.get(&callback).await
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
