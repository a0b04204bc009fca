//! oidc-provider (`tests/support/oidc-server.mjs`): a strict OAuth 2.0 / OpenID Connect
//! authorization server with PKCE, rotating refresh tokens and revocation, started as a child
//! process with the one test client registered; `/__stats` tells what it saw.

use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use url::Url;

use crate::app::{CLIENT_ID, CLIENT_SECRET};
use crate::process::Proc;
use crate::util::{node_modules, support_dir};
use crate::{HTTP_TIMEOUT, STARTUP_TIMEOUT};

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
        let script = support_dir().join("oidc-server.mjs");
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
            .current_dir(support_dir());
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
