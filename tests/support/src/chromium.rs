//! A real browser: Debian's Chromium, headless, driven by playwright-core
//! (`tests/support/browser-consent.mjs`) from an auth-start URL through the vendor's login and
//! consent screens to the broker's page. It fails (never skips) when Chromium or playwright-core is
//! missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{node_modules, repo_root, support_dir};

const CHROMIUM: &str = "/usr/bin/chromium";
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

/// Fails (never skips) when the browser is missing.
pub fn chromium() -> &'static str {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: the real-browser consent test needs Debian's chromium package; \
         scripts/test installs it (apt-get install -y chromium)"
    );
    CHROMIUM
}

pub fn playwright_ready() -> PathBuf {
    let nm = node_modules();
    assert!(
        nm.join("playwright-core/package.json").is_file(),
        "playwright-core not found under {}: run scripts/test (npm ci in tests/support installs it)",
        nm.display()
    );
    nm
}

pub fn artifacts_dir() -> PathBuf {
    let dir = repo_root().join("target/ci-artifacts");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// What the script saw; `raw` is its whole JSON line.
pub struct BrowserRun {
    pub raw: Value,
    pub wall: Duration,
}

impl BrowserRun {
    pub fn str(&self, key: &str) -> String {
        self.raw[key].as_str().unwrap_or_default().to_owned()
    }
    pub fn status(&self) -> u64 {
        self.raw["status"].as_u64().unwrap_or(0)
    }
    pub fn header(&self, name: &str) -> String {
        self.raw["headers"][name]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Runs `browser-consent.mjs` and returns its result line, panicking with everything it printed
/// when it fails.
pub async fn run_browser(
    start_url: String,
    outcome: &'static str,
    screenshot: PathBuf,
) -> BrowserRun {
    let executable = chromium();
    let nm = playwright_ready();
    let script = support_dir().join("browser-consent.mjs");
    tokio::task::spawn_blocking(move || {
        let out_dir = tempfile::tempdir().unwrap();
        let stdout_path = out_dir.path().join("stdout");
        let stderr_path = out_dir.path().join("stderr");
        let started = Instant::now();
        let mut child = Command::new("node")
            .arg(&script)
            .arg(&start_url)
            .arg(outcome)
            .arg(&screenshot)
            .env("NODE_PATH", &nm)
            .env("CHROMIUM", executable)
            .current_dir(support_dir())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node {}: {e}", script.display()));
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > SCRIPT_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "browser-consent.mjs ({outcome}) still running after {SCRIPT_TIMEOUT:?}; stdout:\n{}\nstderr:\n{}",
                    std::fs::read_to_string(&stdout_path).unwrap_or_default(),
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let wall = started.elapsed();
        let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let line = stdout.lines().rev().find(|l| l.starts_with('{'));
        let raw: Value = line
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| {
                panic!("browser-consent.mjs ({outcome}) printed no result line ({status}); stdout:\n{stdout}\nstderr:\n{stderr}")
            });
        assert!(
            status.success() && raw["ok"] == Value::Bool(true),
            "browser-consent.mjs ({outcome}) failed ({status}): {}\nsteps: {}\nurl: {}\nfailure screenshot: {}\nconsole: {}\nstderr:\n{stderr}\npage:\n{}",
            raw["error"].as_str().unwrap_or_default(),
            raw["steps"],
            raw["url"],
            raw["screenshot"],
            raw["console"],
            raw["html"].as_str().unwrap_or_default(),
        );
        BrowserRun { raw, wall }
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}
