//! The real `oauth-broker` executable as a child process: everything it is started with
//! ([`BrokerSpec`]: port, bind, store, keys, integrations file, extra settings), ready once it logs
//! its `listening` event, or run to see it refuse to start.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::process::{Output, Proc};
use crate::STARTUP_TIMEOUT;

/// Everything needed to (re)start the broker binary.
#[derive(Clone)]
pub struct BrokerSpec {
    pub port: u16,
    pub bind: String,
    /// `BROKER_STORAGE`; the broker reads an empty value as unset (then the identity-based
    /// `BROKER_STORAGE__*` settings, given in `env`, apply).
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

/// The `oauth-broker` executable cargo built beside the running test or bench executable: tests run
/// from `target/<profile>/deps/`, the bench from `target/<profile>/`, and cargo puts the broker in
/// `target/<profile>/` (the path it gives integration tests as `CARGO_BIN_EXE_oauth-broker`).
/// Panics when it is not there.
pub fn broker_exe() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running executable");
    let mut dir = exe.parent().expect("the executable's directory").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let broker = dir.join("oauth-broker");
    assert!(
        broker.is_file(),
        "{} is missing: build it first (cargo build --bin oauth-broker, with --release for the bench)",
        broker.display()
    );
    broker
}

impl BrokerSpec {
    /// The command that starts the broker with these settings and nothing else from this process's
    /// environment but `PATH`; `env` comes last, so it can override `RUST_LOG` (default `debug`).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(broker_exe());
        cmd.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        cmd.env("BROKER_PORT", self.port.to_string())
            .env("BROKER_BIND", &self.bind)
            .env("BROKER_INTEGRATIONS", &self.integrations_path)
            .env("BROKER_STORAGE", &self.storage)
            .env("BROKER_SWEEP_INTERVAL_SECS", "0")
            // Tests force refreshes back to back; the budget's own tests set it (`env` wins).
            .env("BROKER_MIN_FORCED_REFRESH_SECS", "0")
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
        Broker::listening_on(spec, &addr, key_file, proc)
    }

    fn listening_on(
        spec: &BrokerSpec,
        addr: &str,
        key_file: Option<PathBuf>,
        proc: Proc,
    ) -> Broker {
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

    /// Like [`Broker::start`], with everything it writes going straight to the file `log` (read
    /// back to find the `listening` event).
    pub async fn start_logged(spec: &BrokerSpec, log: &Path) -> Broker {
        let mut proc = Proc::spawn_logged("oauth-broker", spec.command(), log);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let addr = loop {
            let text = proc.text();
            if let Some(addr) = text.lines().find_map(listening_addr) {
                let key_file = text
                    .lines()
                    .find_map(api_key_file)
                    .map(|f| spec.work_dir.join(f));
                break (addr, key_file);
            }
            proc.assert_running();
            assert!(
                Instant::now() < deadline,
                "the broker never logged a `listening` event with an `addr` field; output:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Broker::listening_on(spec, &addr.0, addr.1, proc)
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

    /// The process (its PID, memory, output).
    pub fn process(&self) -> &Proc {
        &self.proc
    }

    /// Stops the broker and returns everything it wrote.
    pub fn stop(self) -> Output {
        self.proc.stop()
    }
}
