//! The command line, through the real binary: `--help` and `--version` print and exit without
//! touching anything (no `.broker/`, no port); `check` reports every problem at once with field
//! paths; `connections` lists integrations and connections with their condition and never a token;
//! `consent-link` makes a link that works like the API's.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

/// Runs the broker binary with `args` in `dir`, with only `env` (and PATH) set; fails the test if
/// it does not exit within 30 s (it would be serving).
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(broker_exe());
    cmd.env_clear()
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the broker binary starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("its output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("its output");
            panic!(
                "oauth-broker {args:?} did not exit within 30 s (is it serving?): {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_and_version_print_and_exit_touching_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A port the broker would have to bind if it started: it is taken, so serving would fail loudly,
    // and the test checks it stays free of any new listener of ours.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    drop(held);
    let env = [("BROKER_PORT", port.as_str())];
    for (args, expect) in [
        (&["--help"][..], "Usage: oauth-broker [COMMAND]"),
        (&["-h"][..], "Usage: oauth-broker [COMMAND]"),
        (&["--version"][..], "oauth-broker 0.1"),
        (&["-V"][..], "oauth-broker 0.1"),
        (&["help"][..], "Usage: oauth-broker [COMMAND]"),
        (&["check", "--help"][..], "Usage: oauth-broker check"),
        (
            &["connections", "--help"][..],
            "Usage: oauth-broker connections",
        ),
        (
            &["consent-link", "--help"][..],
            "Usage: oauth-broker consent-link",
        ),
    ] {
        let out = run(dir.path(), args, &env);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(
            text(&out.stdout).contains(expect),
            "{args:?}: {}",
            text(&out.stdout)
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{args:?} created {left:?}");
        // Nothing listens on the port it would have served on.
        assert!(
            TcpListener::bind(format!("127.0.0.1:{port}")).is_ok(),
            "{args:?} left something listening"
        );
    }
    // The help names every command.
    let help = text(&run(dir.path(), &["--help"], &env).stdout);
    for command in ["check", "connections", "consent-link"] {
        assert!(help.contains(command), "{help}");
    }
    // A mistyped command is refused (exit 2), not served.
    let out = run(dir.path(), &["serve-please"], &env);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[test]
fn check_reports_every_problem_at_once_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("integrations.json"),
        r#"{"integrations": {
            "acme": {"provider": "xero", "client_id": "%ACME_ID%", "client_secret": "%ACME_SECRET%", "scopes": "openid read"},
            "beta": {"provider": "hubspot", "client_id": "%BETA_ID%", "client_secret": "${BETA_SECRET}"},
            "gamma": {"authorization_url": "https://id.example.com/auth", "client_id": "g", "client_secret": "$GAMMA_SECRET", "pkce": "yes"}
        }}"#,
    )
    .unwrap();
    let out = run(
        dir.path(),
        &["check"],
        &[
            ("BROKER_PORT", "seventy"),
            ("BROKER_SWEEP_CONCURRENCY", "0"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    for problem in [
        "BROKER_PORT: must be a port number",
        "BROKER_SWEEP_CONCURRENCY: must be a whole number from 1 to 256",
        "3 settings are not set: ACME_ID (integrations.acme.client_id), ACME_SECRET (integrations.acme.client_secret), BETA_ID (integrations.beta.client_id)",
        "integrations.acme.scopes: expected an array of strings",
        "integrations.beta.client_secret: \"${BETA_SECRET}\" is not read from a setting: write %BETA_SECRET% to read a setting",
        "integrations.gamma.client_secret: \"$GAMMA_SECRET\" is not read from a setting: write %GAMMA_SECRET% to read a setting",
        "integrations.gamma.pkce: expected true or false",
        "integrations.gamma.token_url: is required",
    ] {
        assert!(err.contains(problem), "{problem}\nin:\n{err}");
    }
    assert!(err.starts_with("oauth-broker: 8 problems found:"), "{err}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().count() == 1,
        "check creates nothing"
    );

    // Fixed, it says so and exits 0, naming what it found; an http public URL on a public host is a
    // warning.
    std::fs::write(
        dir.path().join("integrations.json"),
        r#"{"integrations": {"acme": {"provider": "xero", "client_id": "%ACME_ID%", "client_secret": "%ACME_SECRET%", "scopes": ["openid"]}}}"#,
    )
    .unwrap();
    let out = run(
        dir.path(),
        &["check"],
        &[
            ("ACME_ID", "id"),
            ("ACME_SECRET", "secret"),
            ("BROKER_PUBLIC_URL", "http://broker.example.com"),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let said = text(&out.stdout);
    assert!(said.contains("the configuration is valid"), "{said}");
    assert!(said.contains("acme"), "{said}");
    assert!(
        said.contains("http://broker.example.com/api/auth/callback"),
        "{said}"
    );
    assert!(
        said.contains("warning: BROKER_PUBLIC_URL (http://broker.example.com) is http"),
        "{said}"
    );
    assert!(
        !said.contains("secret"),
        "no setting's value is printed: {said}"
    );
}

/// The settings a TestApp's broker runs with, for a command run beside it.
fn app_env(app: &TestApp) -> Vec<(String, String)> {
    let mut env = vec![
        ("BROKER_STORAGE".to_owned(), app.spec.storage.clone()),
        (
            "BROKER_INTEGRATIONS".to_owned(),
            app.spec.integrations_path.display().to_string(),
        ),
        ("BROKER_PORT".to_owned(), app.spec.port.to_string()),
    ];
    env.extend(app.spec.env.iter().cloned());
    env
}

#[tokio::test]
async fn connections_and_consent_link_read_the_servers_settings_and_store() {
    let app = TestApp::spawn(AppOptions::default()).await;
    app.connect("c1").await;
    let token = app.access_token("c1").await;
    let env = app_env(&app);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    let out = run(app.dir.path(), &["connections", "--json"], &env);
    assert!(out.status.success(), "{out:?}");
    let listed: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let conns = listed["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1, "{listed}");
    assert_eq!(conns[0]["integration"], INTEGRATION);
    assert_eq!(conns[0]["connection"], "c1");
    assert_eq!(conns[0]["condition"], "active");
    assert_eq!(conns[0]["status"], "active");
    assert_eq!(listed["integrations"][0]["integration"], INTEGRATION);
    let table = run(app.dir.path(), &["connections"], &env);
    assert!(table.status.success(), "{table:?}");
    let table = text(&table.stdout);
    assert!(table.contains("c1") && table.contains("active"), "{table}");
    for output in [text(&out.stdout), table] {
        assert!(!output.contains(&token), "never a token: {output}");
    }

    // The CLI's link opens a consent for its connection, as the API's does.
    let out = run(
        app.dir.path(),
        &["consent-link", INTEGRATION, "c2", "--expires-in", "600"],
        &env,
    );
    assert!(out.status.success(), "{out:?}");
    let link = text(&out.stdout).trim().to_owned();
    assert!(
        link.starts_with(&format!("{}/api/auth/link?t=", app.base_url())),
        "{link}"
    );
    let opened = Browser::new().get(&link).await;
    assert_eq!(opened.status, 302, "{opened:?}");
    assert!(
        opened.location().starts_with(&app.oidc().issuer),
        "{opened:?}"
    );

    // An unknown integration is named, with the configured ones.
    let out = run(app.dir.path(), &["consent-link", "nope", "c2"], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no integration \"nope\""),
        "{out:?}"
    );
}

#[test]
fn connections_without_a_store_creates_none() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("integrations.json"),
        r#"{"integrations": {"acme": {"provider": "hubspot", "client_id": "a", "client_secret": "b"}}}"#,
    )
    .unwrap();
    let out = run(dir.path(), &["connections"], &[]);
    assert!(out.status.success(), "{out:?}");
    let said = text(&out.stdout);
    assert!(said.contains("acme: 0 connections"), "{said}");
    assert!(
        said.contains("oauth-broker consent-link acme <connection-id>"),
        "{said}"
    );
    assert!(!dir.path().join(".broker").exists(), "no store created");
}
