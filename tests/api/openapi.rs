//! `openapi.json` (served at `GET /api/openapi.json`) and the routes agree: every route the broker
//! serves (its route table in `src/routes/` and every `functions/*/function.json`) is described,
//! every described operation is served with the documented security, and the served document is
//! the repository's, without a secret in it. Whether every answer matches the document is what the
//! schemathesis run (`schemathesis.rs`) checks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

const API_KEY: &str = "openapi-test-key-0123456789abcdefghijklmnop";

fn repo_document() -> Value {
    let path = repo_root().join("openapi.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} must exist: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "options", "head", "patch"];

/// `(method, path)` → operation object, for every operation in the document.
fn documented(doc: &Value) -> BTreeMap<(String, String), Value> {
    let paths = doc["paths"].as_object().expect("the document has `paths`");
    let mut out = BTreeMap::new();
    for (path, item) in paths {
        for (key, op) in item.as_object().expect("a path item is an object") {
            if METHODS.contains(&key.as_str()) {
                out.insert((key.clone(), path.clone()), op.clone());
            }
        }
    }
    out
}

/// `/api/token/{integration}/{connection}` → `/api/token/{}/{}`.
fn shape(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "{}" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
        .to_ascii_lowercase()
}

/// Every `(method, path)` the Functions host forwards: one per method of each HTTP function
/// (`/api/<route>`) and `POST /<folder>` for each timer.
fn function_routes() -> BTreeSet<(String, String)> {
    let dir = repo_root().join("functions");
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(&dir)
        .expect("functions/ exists")
        .flatten()
    {
        let manifest = entry.path().join("function.json");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
        let folder = entry.file_name().to_string_lossy().into_owned();
        for b in v["bindings"].as_array().into_iter().flatten() {
            let kind = b["type"].as_str().unwrap_or_default().to_ascii_lowercase();
            if kind == "httptrigger" {
                let route = b["route"].as_str().unwrap_or(&folder);
                for m in b["methods"].as_array().into_iter().flatten() {
                    let m = m.as_str().unwrap_or_default().to_ascii_lowercase();
                    out.insert((m, shape(&format!("/api/{}", route.trim_matches('/')))));
                }
            } else if kind == "timertrigger" {
                out.insert(("post".to_owned(), format!("/{folder}")));
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The method of a `web::<method>()` at the start of `s`, if any.
fn method_at(s: &str) -> Option<String> {
    let (m, _) = s.trim_start().strip_prefix("web::")?.split_once("()")?;
    let m = m.to_ascii_lowercase();
    METHODS.contains(&m.as_str()).then_some(m)
}

/// Every route registered in the broker's route table: `route("<path>", web::<method>()...)`, or
/// `resource("<path>")` with the methods of the `.route(web::<method>()...)` calls that follow it
/// (up to the next resource). A path whose method cannot be read is listed with `None`.
fn route_table() -> BTreeSet<(Option<String>, String)> {
    let mut files = Vec::new();
    rust_files(&repo_root().join("src/routes"), &mut files);
    let mut out = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let resources: Vec<usize> = text.match_indices("resource(").map(|(at, _)| at).collect();
        for opener in ["route(", "resource("] {
            for (at, _) in text.match_indices(opener) {
                let rest = text[at + opener.len()..].trim_start();
                let Some(rest) = rest.strip_prefix('"') else {
                    continue;
                };
                let Some(end) = rest.find('"') else { continue };
                // `{path:.*}` (a segment with a pattern) is the parameter `{path}`.
                let normalized: Vec<String> = rest[..end]
                    .split('/')
                    .map(|seg| match (seg.starts_with('{'), seg.split_once(':')) {
                        (true, Some((name, _))) => format!("{name}}}"),
                        _ => seg.to_owned(),
                    })
                    .collect();
                let normalized = normalized.join("/");
                let path = normalized.as_str();
                if !path.starts_with('/') {
                    continue;
                }
                let after = rest[end + 1..].trim_start();
                let methods: Vec<String> = if opener == "route(" {
                    after
                        .strip_prefix(',')
                        .and_then(method_at)
                        .into_iter()
                        .collect()
                } else {
                    let until = resources
                        .iter()
                        .find(|&&r| r > at)
                        .copied()
                        .unwrap_or(text.len());
                    text[at..until]
                        .match_indices(".route(")
                        .filter_map(|(r, _)| method_at(&text[at + r + ".route(".len()..]))
                        .collect()
                };
                if methods.is_empty() {
                    out.insert((None, path.to_owned()));
                }
                for m in methods {
                    out.insert((Some(m), path.to_owned()));
                }
            }
        }
    }
    out
}

#[test]
fn every_route_the_broker_serves_is_in_the_document() {
    let doc = repo_document();
    let ops = documented(&doc);
    let doc_shapes: BTreeSet<(String, String)> =
        ops.keys().map(|(m, p)| (m.clone(), shape(p))).collect();
    let doc_paths: BTreeSet<String> = ops.keys().map(|(_, p)| p.clone()).collect();

    let table = route_table();
    assert!(
        table.len() >= 10,
        "tests/api/openapi.rs no longer finds the route table in src/routes/ (found {table:?}); \
         adapt route_table() to how routes are registered now"
    );
    let mut missing = Vec::new();
    for (method, path) in &table {
        let described = match method {
            Some(m) => ops.contains_key(&(m.clone(), path.clone())),
            None => doc_paths.contains(path),
        };
        if !described {
            let m = method.as_deref().unwrap_or("<method>");
            missing.push(format!(
                "  {} {path}  (src/routes/) → add paths.\"{path}\".{m} to openapi.json",
                m.to_ascii_uppercase()
            ));
        }
    }
    for (m, s) in function_routes() {
        if !doc_shapes.contains(&(m.clone(), s.clone())) {
            missing.push(format!(
                "  {} {s}  (functions/*/function.json) → add it to openapi.json",
                m.to_ascii_uppercase()
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "\n\nROUTES MISSING FROM openapi.json (the API description served at /api/openapi.json):\n{}\n\
         Describe each route there: its parameters, request body, every status it answers and the \
         JSON or HTML it answers with (errors use #/components/responses/*). Then run \
         `scripts/test --test api schemathesis` to check the answers against the description.\n",
        missing.join("\n")
    );

    // And the other way round: nothing described that nobody serves.
    let table_shapes: BTreeSet<(String, String)> = table
        .iter()
        .filter_map(|(m, p)| Some((m.clone()?, shape(p))))
        .collect();
    for (m, p) in ops.keys() {
        assert!(
            table_shapes.contains(&(m.clone(), shape(p))),
            "openapi.json describes {} {p}, which the route table in src/routes/ does not serve",
            m.to_ascii_uppercase()
        );
        assert!(
            function_routes().contains(&(m.clone(), shape(p))),
            "openapi.json describes {} {p}, but no functions/*/function.json declares it, so the \
             Functions host would not forward it",
            m.to_ascii_uppercase()
        );
    }
}

/// What the document says about an operation's security: anonymous (`security: []`) or keyed.
/// The operation accepts an Entra ID bearer token (`entraBearer`).
fn accepts_entra(doc: &Value, op: &Value) -> bool {
    let security = op.get("security").unwrap_or(&doc["security"]);
    security
        .as_array()
        .is_some_and(|s| s.iter().any(|r| r.get("entraBearer").is_some()))
}

fn is_anonymous(doc: &Value, op: &Value) -> bool {
    let security = op.get("security").unwrap_or(&doc["security"]);
    security.as_array().is_some_and(|s| s.is_empty())
}

#[test]
fn the_document_is_openapi_3_1_with_key_schemes_and_error_objects_everywhere() {
    let doc = repo_document();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "OpenAPI 3.1: {}",
        doc["openapi"]
    );
    let schemes = &doc["components"]["securitySchemes"];
    let entra = &schemes["entraBearer"];
    assert_eq!(
        (&entra["type"], &entra["scheme"], &entra["bearerFormat"]),
        (&json!("http"), &json!("bearer"), &json!("JWT")),
        "Entra ID access tokens as HTTP Bearer: {entra}"
    );
    let keyed: BTreeSet<(String, String)> = schemes
        .as_object()
        .expect("security schemes")
        .iter()
        .filter(|(name, _)| *name != "entraBearer")
        .map(|(_, s)| {
            assert_eq!(s["type"], "apiKey", "{s}");
            (
                s["in"].as_str().unwrap().to_owned(),
                s["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        keyed,
        BTreeSet::from([
            ("header".to_owned(), "x-functions-key".to_owned()),
            ("query".to_owned(), "code".to_owned())
        ]),
        "the key travels as the x-functions-key header or the code query parameter"
    );
    let error_codes = doc["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
        .as_array()
        .expect("Error.error is an enum of the stable codes");
    assert!(error_codes.len() >= 8, "{error_codes:?}");

    let text = doc.to_string();
    for (key, op) in documented(&doc) {
        let responses = op["responses"].as_object().expect("responses");
        assert!(!responses.is_empty(), "{key:?} documents its answers");
        if !is_anonymous(&doc, &op) {
            assert!(
                responses.contains_key("401"),
                "{key:?} is protected by the key, so it documents 401"
            );
        }
        for (status, r) in responses {
            // Every $ref resolves.
            if let Some(target) = r["$ref"].as_str() {
                let ptr = target.trim_start_matches('#');
                assert!(doc.pointer(ptr).is_some(), "{key:?} {status}: {target}");
            }
        }
    }
    for (at, _) in text.match_indices("\"$ref\":\"#") {
        let target = &text[at + 8..];
        let target = &target[..target.find('"').unwrap()];
        assert!(
            doc.pointer(target.trim_start_matches('#')).is_some(),
            "dangling $ref {target}"
        );
    }
}

/// Fills a documented path with valid names (an integration that is configured).
fn fill(path: &str) -> String {
    path.split('/')
        .map(|seg| match seg {
            "{integration}" => INTEGRATION,
            s if s.starts_with('{') => "openapi-conn",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn the_broker_serves_the_repository_document_and_every_operation_with_its_security() {
    let app = TestApp::spawn(AppOptions {
        provider: false,
        api_key: Some(API_KEY.to_owned()),
        ..AppOptions::default()
    })
    .await;
    let doc = repo_document();

    // Served anonymously, identical to the repository's file, and without a secret.
    let served = app
        .call(Method::GET, "/api/openapi.json", None, Key::None)
        .await;
    assert_eq!(served.status, 200, "{served:?}");
    assert!(served.is_json(), "{served:?}");
    assert_eq!(
        served.json(),
        doc,
        "GET /api/openapi.json serves openapi.json as kept in the repository"
    );
    for secret in [API_KEY, CLIENT_SECRET, app.encryption_key.as_str()] {
        for form in encodings_of(secret) {
            assert!(!served.body.contains(&form), "the document holds a secret");
        }
    }

    let functions: BTreeMap<String, bool> = anonymous_function_routes();
    for ((method, path), op) in documented(&doc) {
        let what = format!("{} {path}", method.to_ascii_uppercase());
        let anonymous = is_anonymous(&doc, &op);
        if let Some(&fn_anonymous) = functions.get(&shape(&path)) {
            // A route that accepts Entra ID callers is anonymous at the host and the broker
            // checks its callers (tests/api/entra.rs); every other route the document protects
            // is protected by the host.
            let checked_by_the_broker = accepts_entra(&doc, &op);
            assert_eq!(
                anonymous || checked_by_the_broker,
                fn_anonymous,
                "{what}: the document's security and the function's authLevel agree"
            );
        }
        let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
        let body = (m == Method::POST).then_some("{}");
        let url = fill(&path);
        let documented_statuses: BTreeSet<u16> = op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .filter_map(|s| s.parse().ok())
            .collect();

        let keyless = app.call(m.clone(), &url, body, Key::None).await;
        if path.starts_with("/api/proxy/") {
            // Anonymous at the Functions host, authenticated by the broker itself (Basic).
            assert!(anonymous, "{what}: security [] (no function key)");
            assert_eq!(
                keyless.status, 401,
                "{what}: the broker wants a credential: {keyless:?}"
            );
        } else if anonymous {
            assert_ne!(keyless.status, 401, "{what} is anonymous: {keyless:?}");
        } else {
            assert_eq!(
                keyless.status, 401,
                "{what} needs the key, as documented: {keyless:?}"
            );
            assert_eq!(keyless.error_code(), "unauthorized", "{what}: {keyless:?}");
        }
        let keyed = app.call(m.clone(), &url, body, Key::Configured).await;
        assert!(
            documented_statuses.contains(&keyed.status),
            "{what} answered {}, which the document does not list ({documented_statuses:?}): {keyed:?}",
            keyed.status
        );
        assert!(
            !(keyed.status == 404
                && keyed.is_json()
                && !keyed.body.is_empty()
                && keyed.error_code() == "not_found"),
            "{what} is described but not served: {keyed:?}"
        );
    }
}

/// Route shape → whether its function is anonymous.
fn anonymous_function_routes() -> BTreeMap<String, bool> {
    let dir = repo_root().join("functions");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir)
        .expect("functions/ exists")
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(entry.path().join("function.json")) else {
            continue;
        };
        let v: Value = serde_json::from_str(&text).unwrap();
        for b in v["bindings"].as_array().into_iter().flatten() {
            if b["type"]
                .as_str()
                .unwrap_or_default()
                .eq_ignore_ascii_case("httptrigger")
            {
                let route = b["route"].as_str().unwrap_or_default();
                let anonymous = b["authLevel"]
                    .as_str()
                    .is_some_and(|a| a.eq_ignore_ascii_case("anonymous"));
                out.insert(
                    shape(&format!("/api/{}", route.trim_matches('/'))),
                    anonymous,
                );
            }
        }
    }
    out
}
