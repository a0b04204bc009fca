//! Logs for a person and for the host: readable lines on a terminal (a pseudo-terminal here, made
//! by util-linux's `script`), JSON lines in a pipe (as the Functions host reads stdout), and
//! `BROKER_LOG_FORMAT` overriding the guess. With the default filter actix's start-up lines stay
//! below info, and the start-up lines name the integrations, the redirect URI and the key file, and
//! give a curl command that works when pasted into a shell.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

struct Started {
    child: Child,
    lines: Vec<String>,
    port: u16,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_integrations(dir: &Path) {
    std::fs::write(
        dir.join("integrations.json"),
        r#"{"integrations": {
            "demo": {"authorization_url": "http://127.0.0.1:9/auth", "token_url": "http://127.0.0.1:9/token",
                     "client_id": "id", "client_secret": "%DEMO_SECRET%", "scopes": ["read"]},
            "zeta": {"authorization_url": "http://127.0.0.1:9/auth", "token_url": "http://127.0.0.1:9/token",
                     "client_id": "id", "client_secret": "s", "scopes": ["read"]}
        }}"#,
    )
    .unwrap();
}

/// Starts the broker in `dir` (on a pseudo-terminal when `tty`), with RUST_LOG unset, and collects
/// its output up to and including the `listening` line.
fn start(dir: &Path, tty: bool, format: Option<&str>) -> Started {
    let port = free_port();
    let exe = broker_exe();
    let mut cmd = if tty {
        // script -q: no banner; -e: its exit status; -f: flush at once; -c: the command.
        let mut c = Command::new("script");
        c.args(["-qefc", &exe.display().to_string(), "/dev/null"]);
        c
    } else {
        Command::new(&exe)
    };
    cmd.env_clear()
        .current_dir(dir)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("BROKER_PORT", port.to_string())
        .env("BROKER_SWEEP_INTERVAL_SECS", "0")
        .env("DEMO_SECRET", "cs-never-logged-5f2a")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(f) = format {
        cmd.env("BROKER_LOG_FORMAT", f);
    }
    let mut child = cmd.spawn().expect("the broker (or script) starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                let done = line.contains("listening");
                lines.push(line);
                if done {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "no `listening` line within 60 s; output:\n{}",
                    lines.join("\n")
                );
            }
        }
    }
    Started { child, lines, port }
}

fn assert_start_up_lines(s: &Started, dir: &Path) {
    let all = s.lines.join("\n");
    let key_file = dir.join(".broker/api.key").canonicalize().unwrap();
    assert!(
        all.contains("demo, zeta"),
        "the integrations are named:\n{all}"
    );
    assert!(
        all.contains(&format!("http://127.0.0.1:{}/api/auth/callback", s.port)),
        "the redirect URI:\n{all}"
    );
    assert!(
        all.contains(&key_file.display().to_string()),
        "the key file:\n{all}"
    );
    assert!(!all.contains("cs-never-logged-5f2a"), "no secret:\n{all}");
    for actix in ["starting", "Actix runtime found", "workers"] {
        assert!(
            !all.contains(actix),
            "actix's start-up lines stay below info ({actix}):\n{all}"
        );
    }
}

/// The paste-able command of a text start-up line: from `KEY=` to the end.
fn pasteable(lines: &[String]) -> String {
    let line = lines
        .iter()
        .find(|l| l.contains("KEY=$(cat "))
        .unwrap_or_else(|| panic!("a KEY=$(cat …) line in:\n{}", lines.join("\n")));
    line[line.find("KEY=").unwrap()..].to_owned()
}

#[test]
fn on_a_terminal_lines_are_for_a_person_and_the_curl_works_when_pasted() {
    let dir = tempfile::tempdir().unwrap();
    write_integrations(dir.path());
    let s = start(dir.path(), true, None);
    for line in &s.lines {
        assert!(
            !line.trim_start().starts_with('{'),
            "text, not JSON, on a terminal: {line}"
        );
    }
    assert_start_up_lines(&s, dir.path());
    // What a person copies from the terminal, run by a shell: authenticated (not 401), and it names
    // the first real integration's default connection, which is not consented yet.
    let command = pasteable(&s.lines);
    assert!(
        command.contains(&format!(
            "curl -H \"x-functions-key: $KEY\" http://127.0.0.1:{}/api/token/demo/default",
            s.port
        )),
        "{command}"
    );
    let out = Command::new("bash")
        .args(["-c", &format!("{command} -s -w ' %{{http_code}}'")])
        .current_dir(dir.path())
        .output()
        .expect("bash runs");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("connection_not_found") && said.ends_with(" 404"),
        "the pasted command authenticates: {said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn in_a_pipe_lines_are_json_with_their_fields() {
    let dir = tempfile::tempdir().unwrap();
    write_integrations(dir.path());
    let s = start(dir.path(), false, None);
    let mut listening = None;
    for line in &s.lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("every line in a pipe is JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        if v["message"] == "listening" {
            listening = Some(v);
        }
    }
    let listening = listening.expect("a listening line");
    assert_eq!(listening["addr"], format!("127.0.0.1:{}", s.port));
    assert_eq!(listening["integrations"], 2);
    assert_eq!(listening["integration_names"], "demo, zeta");
    assert_eq!(
        listening["redirect_uri"],
        format!("http://127.0.0.1:{}/api/auth/callback", s.port)
    );
    assert_start_up_lines(&s, dir.path());
}

#[test]
fn broker_log_format_overrides_the_guess() {
    let dir = tempfile::tempdir().unwrap();
    write_integrations(dir.path());
    let text = start(dir.path(), false, Some("text"));
    assert!(
        text.lines.iter().all(|l| !l.starts_with('{')),
        "{:?}",
        text.lines
    );
    drop(text);
    let json = start(dir.path(), true, Some("json"));
    assert!(
        json.lines
            .iter()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "{:?}",
        json.lines
    );
}

#[test]
fn an_unknown_log_format_stops_the_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(broker_exe())
        .env_clear()
        .current_dir(dir.path())
        .env("BROKER_LOG_FORMAT", "yaml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("BROKER_LOG_FORMAT"),
        "{out:?}"
    );
}

#[test]
fn an_ipv6_loopback_bind_starts_with_a_bracketed_redirect_uri() {
    // BROKER_BIND=::1 without BROKER_PUBLIC_URL: the public URL is made from the bound address
    // (this panicked at start before: "http://::1:7071" is no URL).
    let dir = tempfile::tempdir().unwrap();
    write_integrations(dir.path());
    let port = free_port();
    let mut child = Command::new(broker_exe())
        .env_clear()
        .current_dir(dir.path())
        .env("BROKER_BIND", "::1")
        .env("BROKER_PORT", port.to_string())
        .env("BROKER_SWEEP_INTERVAL_SECS", "0")
        .env("DEMO_SECRET", "s")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut listening = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let v: Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"] == "listening" {
            listening = Some(v);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let listening = listening.expect("the broker listens on ::1");
    assert_eq!(
        listening["redirect_uri"],
        format!("http://[::1]:{port}/api/auth/callback"),
        "{listening}"
    );
}
