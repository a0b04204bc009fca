//! The Functions host's view of the app: `host.json`, `local.settings.sample.json` and every
//! `functions/*/function.json` agree with the contract and with the routes the broker serves.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

fn read_json(rel: &str) -> Value {
    let path = repo_root().join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} must exist: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

struct Function {
    folder: String,
    manifest: Value,
}

fn functions() -> Vec<Function> {
    let dir = repo_root().join("functions");
    let mut out: Vec<Function> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{} must exist: {e}", dir.display()))
        .flatten()
        .filter(|e| e.path().join("function.json").is_file())
        .map(|e| {
            let folder = e.file_name().to_string_lossy().into_owned();
            let manifest = read_json(&format!("functions/{folder}/function.json"));
            Function { folder, manifest }
        })
        .collect();
    out.sort_by(|a, b| a.folder.cmp(&b.folder));
    assert!(!out.is_empty(), "functions/ holds one folder per function");
    out
}

fn bindings(f: &Function) -> Vec<Value> {
    f.manifest["bindings"]
        .as_array()
        .unwrap_or_else(|| panic!("functions/{}: `bindings` is an array", f.folder))
        .clone()
}

fn lower(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_ascii_lowercase()
}

/// `token/{integration}/{connection}` → `token/{}/{}` (placeholder names and constraints dropped).
fn route_shape(route: &str) -> String {
    route
        .trim_matches('/')
        .split('/')
        .map(|seg| if seg.starts_with('{') { "{}" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
        .to_ascii_lowercase()
}

/// Fills placeholders with valid names.
fn fill_route(route: &str) -> String {
    route
        .trim_matches('/')
        .split('/')
        .map(|seg| {
            if seg.starts_with('{') {
                if seg.to_ascii_lowercase().contains("integration") {
                    INTEGRATION.to_owned()
                } else {
                    "manifest-conn".to_owned()
                }
            } else {
                seg.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The routes a caller without a function key must reach: health, the API
/// description, the vendor's redirect back, consent links (whose token is the
/// credential) and the OAuth 2.0 token endpoint (the broker authenticates the
/// client itself); and the routes that accept Microsoft Entra ID callers, who
/// hold no function key: the token routes and the admin routes (the broker
/// checks their callers itself: `tests/api/entra.rs` runs it as the host
/// calls it). Only `auth/start` (opened in a browser with a key) stays
/// `authLevel: function`.
fn is_anonymous_route(shape: &str) -> bool {
    shape == "health"
        || shape == "openapi.json"
        || shape.starts_with("auth/callback")
        || shape == "auth/link"
        || shape == "oauth2/token"
        // The proxy: the handler authenticates the pipeline credential itself (Basic), and a
        // function key on the URL would be lost on ADF's absolute next-page links.
        || shape.starts_with("proxy/")
        || is_checked_by_the_broker(shape)
}

/// The routes anonymous at the host whose callers the broker checks (Entra ID token, pipeline
/// credential, BROKER_API_KEY or a token key).
pub(crate) fn is_checked_by_the_broker(shape: &str) -> bool {
    shape == "token/{}/{}"
        || shape == "token"
        || shape == "status"
        || shape == "connections"
        || shape.starts_with("connections/")
}

#[test]
fn host_json_configures_the_custom_handler() {
    let host = read_json("host.json");
    assert_eq!(host["version"], json!("2.0"), "{host}");
    assert_eq!(
        host["customHandler"]["description"]["defaultExecutablePath"],
        json!("oauth-broker"),
        "{host}"
    );
    assert_eq!(
        host["customHandler"]["enableForwardingHttpRequest"],
        json!(true),
        "{host}"
    );
    assert_eq!(
        host["extensions"]["http"]["routePrefix"],
        json!("api"),
        "{host}"
    );
    assert_eq!(
        host["extensionBundle"]["id"],
        json!("Microsoft.Azure.Functions.ExtensionBundle"),
        "{host}"
    );
    assert_eq!(
        host["extensionBundle"]["version"],
        json!("[4.*, 5.0.0)"),
        "{host}"
    );
}

/// The level the host logs a category at: the longest configured prefix wins, else `default`
/// (host.json `logging.logLevel`).
fn host_log_level(host: &Value, category: &str) -> String {
    let levels = host["logging"]["logLevel"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for (prefix, level) in &levels {
        let matches = prefix != "default"
            && (category == prefix || category.starts_with(&format!("{prefix}.")));
        if matches && best.as_ref().is_none_or(|(len, _)| prefix.len() > *len) {
            best = Some((prefix.len(), level.as_str().unwrap_or("").to_owned()));
        }
    }
    best.map(|(_, l)| l).unwrap_or_else(|| {
        levels
            .get("default")
            .and_then(Value::as_str)
            .unwrap_or("Information")
            .to_owned()
    })
}

#[test]
fn host_json_keeps_the_broker_lines_and_drops_per_invocation_host_traces() {
    // The broker's stdout lines are the host's category Host.Function.Console, at Information; the
    // alert (tests/api/alert_query.rs, infra/alerts.bicep) reads them from `traces`.
    let host = read_json("host.json");
    assert_eq!(
        host_log_level(&host, "Host.Function.Console"),
        "Information",
        "{host}"
    );
    // "Executing/Executed 'Functions.token'" per invocation: not ingested.
    for category in [
        "Function.token",
        "Function.token-post",
        "Function.refresh-timer",
    ] {
        let level = host_log_level(&host, category);
        assert!(
            ["Warning", "Error", "Critical", "None"].contains(&level.as_str()),
            "{category} is logged at {level}: {host}"
        );
    }
    let excluded = host["logging"]["applicationInsights"]["samplingSettings"]["excludedTypes"]
        .as_str()
        .unwrap_or("");
    assert!(excluded.split(';').any(|t| t.trim() == "Trace"), "{host}");
}

#[test]
fn local_settings_sample_sets_the_runtime_storage_and_schedule() {
    let settings = read_json("local.settings.sample.json");
    let values = &settings["Values"];
    assert_eq!(
        values["FUNCTIONS_WORKER_RUNTIME"],
        json!("custom"),
        "{settings}"
    );
    assert_eq!(
        values["AzureWebJobsStorage"],
        json!("UseDevelopmentStorage=true"),
        "{settings}"
    );
    let schedule = values["BROKER_REFRESH_SCHEDULE"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(
        schedule.split_whitespace().count(),
        6,
        "BROKER_REFRESH_SCHEDULE is a 6-field NCRONTAB expression: {settings}"
    );
    // With AzureWebJobsStorage as the store (Table Storage), the broker refuses to start without keys.
    assert!(
        values.get("BROKER_ENCRYPTION_KEYS").is_some(),
        "the sample names BROKER_ENCRYPTION_KEYS, required with Table Storage: {settings}"
    );
}

#[test]
fn every_function_json_is_a_plain_http_or_the_refresh_timer() {
    let mut http_routes = BTreeSet::new();
    let mut timers = Vec::new();
    for f in functions() {
        let b = bindings(&f);
        let triggers: Vec<&Value> = b
            .iter()
            .filter(|x| lower(&x["type"]).ends_with("trigger"))
            .collect();
        assert_eq!(
            triggers.len(),
            1,
            "functions/{}: exactly one trigger: {}",
            f.folder,
            f.manifest
        );
        let trigger = triggers[0];
        match lower(&trigger["type"]).as_str() {
            "httptrigger" => {
                assert_eq!(b.len(), 2, "functions/{}: one httpTrigger in + one http out, nothing else (or the host stops forwarding): {}", f.folder, f.manifest);
                assert_eq!(lower(&trigger["direction"]), "in", "functions/{}", f.folder);
                let out: Vec<&Value> = b
                    .iter()
                    .filter(|x| lower(&x["type"]) == "http" && lower(&x["direction"]) == "out")
                    .collect();
                assert_eq!(
                    out.len(),
                    1,
                    "functions/{}: one http output: {}",
                    f.folder,
                    f.manifest
                );
                let route = trigger["route"]
                    .as_str()
                    .unwrap_or_else(|| panic!("functions/{}: a route", f.folder));
                let shape = route_shape(route);
                let auth = trigger["authLevel"]
                    .as_str()
                    .unwrap_or("function")
                    .to_ascii_lowercase();
                let expected = if is_anonymous_route(&shape) {
                    "anonymous"
                } else {
                    "function"
                };
                assert_eq!(
                    auth, expected,
                    "functions/{}: authLevel for route {route}",
                    f.folder
                );
                let methods: Vec<String> = trigger["methods"]
                    .as_array()
                    .unwrap_or_else(|| panic!("functions/{}: list its methods", f.folder))
                    .iter()
                    .map(lower)
                    .collect();
                for m in methods {
                    http_routes.insert((m, shape.clone()));
                }
            }
            "timertrigger" => {
                assert_eq!(
                    b.len(),
                    1,
                    "functions/{}: the timer has only its trigger: {}",
                    f.folder,
                    f.manifest
                );
                assert_eq!(lower(&trigger["direction"]), "in", "functions/{}", f.folder);
                assert_eq!(
                    trigger["schedule"],
                    json!("%BROKER_REFRESH_SCHEDULE%"),
                    "functions/{}",
                    f.folder
                );
                timers.push(f.folder.clone());
            }
            other => panic!("functions/{}: unexpected trigger {other}", f.folder),
        }
    }
    assert_eq!(
        timers,
        vec!["refresh-timer".to_owned()],
        "one timer function, named refresh-timer"
    );
    let contract = [
        ("get", "auth/start/{}"),
        ("get", "auth/callback"),
        ("get", "token/{}/{}"),
        ("post", "token"),
        ("get", "health"),
        ("post", "oauth2/token"),
        ("get", "connections/{}/{}/credentials"),
        ("post", "connections/{}/{}/credentials"),
        ("delete", "connections/{}/{}/credentials/{}"),
        ("get", "proxy/{}/{}/{}"),
        ("head", "proxy/{}/{}/{}"),
        ("post", "proxy/{}/{}/{}"),
        ("put", "proxy/{}/{}/{}"),
        ("patch", "proxy/{}/{}/{}"),
        ("delete", "proxy/{}/{}/{}"),
    ];
    for (m, shape) in contract {
        assert!(
            http_routes.contains(&(m.to_owned(), shape.to_owned())),
            "a function serves {m} /api/{shape}; functions declare {http_routes:?}"
        );
    }
}

#[tokio::test]
async fn every_function_json_matches_a_route_the_broker_serves() {
    let app = TestApp::spawn(AppOptions {
        provider: false,
        ..AppOptions::default()
    })
    .await;
    for f in functions() {
        let b = bindings(&f);
        let Some(trigger) = b.iter().find(|x| lower(&x["type"]).ends_with("trigger")) else {
            panic!("functions/{}: no trigger", f.folder);
        };
        if lower(&trigger["type"]) == "timertrigger" {
            // The host POSTs the invocation envelope to /<function folder name>.
            let reply = app
                .post_json(&format!("/{}", f.folder), &timer_envelope().to_string())
                .await;
            assert_eq!(reply.status, 200, "timer functions/{}: {reply:?}", f.folder);
            assert!(reply.json()["ReturnValue"].is_object(), "{reply:?}");
            continue;
        }
        let route = trigger["route"].as_str().unwrap_or(&f.folder);
        let path = format!("/api/{}", fill_route(route));
        let methods: Vec<String> = trigger["methods"]
            .as_array()
            .map(|m| m.iter().map(lower).collect())
            .unwrap_or_else(|| vec!["get".into()]);
        for m in methods {
            let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes()).unwrap();
            let body = (method == Method::POST).then(|| {
                json!({"integration": INTEGRATION, "connection": "manifest-conn"}).to_string()
            });
            let reply = app
                .call(method.clone(), &path, body.as_deref(), Key::Configured)
                .await;
            let what = format!("functions/{} → {method} {path}", f.folder);
            assert_no_undocumented_5xx(&reply, &what);
            assert_ne!(
                reply.status, 405,
                "{what}: the broker serves this method: {reply:?}"
            );
            if reply.status == 404 && method == Method::HEAD {
                // A HEAD answer has no body: the broker's JSON error shows in its headers.
                assert!(reply.is_json(), "{what}: {reply:?}");
            } else if reply.status == 404 {
                assert!(
                    reply.is_json() && reply.json().is_object() || reply.is_html() && !reply.body.is_empty(),
                    "{what}: a 404 from the broker's own logic (JSON error or HTML page), not an unknown route: {reply:?}"
                );
            }
        }
    }
}
