//! The alert rule of `infra/alerts.bicep`, checked offline against the log lines the real broker
//! writes: under the Functions host each stdout line becomes a `traces` row whose `message` is the
//! line, unparsed. A small evaluator runs the rule's query (the few KQL operators it uses; any other
//! operator fails the test, so the evaluator grows with the query) over every line of a broker run
//! in which a grant dies, an integration's credentials are rejected and other events happen: exactly
//! those two events must come out, with the columns the rule's dimensions name.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::helpers::*;

type Row = BTreeMap<String, Value>;

/// The query of the rule (the Bicep multi-line string `eventQuery`).
fn rule_query() -> String {
    let bicep = std::fs::read_to_string(repo_root().join("infra/alerts.bicep")).unwrap();
    let start = bicep
        .find("var eventQuery = '''")
        .expect("alerts.bicep defines eventQuery")
        + "var eventQuery = '''".len();
    let len = bicep[start..].find("'''").expect("eventQuery ends");
    bicep[start..start + len].trim().to_owned()
}

fn string_literals(s: &str) -> Vec<String> {
    s.split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, x)| x.to_owned())
        .collect()
}

/// `tostring(x.f)` / `parse_json(message)` / a column name, evaluated on a row.
fn eval(expr: &str, row: &Row) -> Value {
    let expr = expr.trim();
    if let Some(inner) = expr
        .strip_prefix("parse_json(")
        .and_then(|x| x.strip_suffix(')'))
    {
        let text = eval(inner, row);
        return serde_json::from_str(text.as_str().unwrap_or_default()).unwrap_or(Value::Null);
    }
    if let Some(inner) = expr
        .strip_prefix("tostring(")
        .and_then(|x| x.strip_suffix(')'))
    {
        return match eval(inner, row) {
            Value::Null => Value::from(""),
            Value::String(s) => Value::String(s),
            other => Value::String(other.to_string()),
        };
    }
    if let Some((object, field)) = expr.split_once('.') {
        return row
            .get(object)
            .and_then(|o| o.get(field))
            .cloned()
            .unwrap_or(Value::Null);
    }
    assert!(
        expr.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "the query uses the expression {expr:?}, which this check does not evaluate; extend it"
    );
    row.get(expr).cloned().unwrap_or(Value::Null)
}

/// Runs the query over `traces` rows built from the broker's stdout lines.
fn run(query: &str, lines: &[String]) -> Vec<Row> {
    let mut steps = query.split('|').map(str::trim);
    assert_eq!(steps.next(), Some("traces"), "the query reads traces");
    let mut rows: Vec<Row> = lines
        .iter()
        .map(|l| {
            Row::from([
                ("message".to_owned(), Value::from(l.as_str())),
                ("timestamp".to_owned(), Value::from("2026-11-30T00:00:00Z")),
            ])
        })
        .collect();
    for step in steps {
        let (op, rest) = step.split_once(' ').unwrap_or((step, ""));
        match op {
            "where" => {
                if let Some((column, lit)) = rest.split_once(" startswith ") {
                    let prefix = string_literals(lit).remove(0);
                    rows.retain(|r| {
                        eval(column, r)
                            .as_str()
                            .is_some_and(|v| v.starts_with(&prefix))
                    });
                } else if let Some((column, list)) = rest.split_once(" in ") {
                    let allowed = string_literals(list);
                    rows.retain(|r| {
                        eval(column, r)
                            .as_str()
                            .is_some_and(|v| allowed.iter().any(|a| a == v))
                    });
                } else {
                    panic!("the query's `where {rest}` is not evaluated here; extend this check");
                }
            }
            "extend" => {
                let (name, expr) = rest.split_once('=').expect("extend name = expr");
                for r in &mut rows {
                    let v = eval(expr, r);
                    r.insert(name.trim().to_owned(), v);
                }
            }
            "project" => {
                rows = rows
                    .iter()
                    .map(|r| {
                        rest.split(", ")
                            .map(|item| match item.split_once('=') {
                                Some((name, expr)) => (name.trim().to_owned(), eval(expr, r)),
                                None => (item.trim().to_owned(), eval(item, r)),
                            })
                            .collect()
                    })
                    .collect();
            }
            other => {
                panic!("the query uses `{other}`, which this check does not evaluate; extend it")
            }
        }
    }
    rows
}

#[tokio::test]
async fn the_alert_rule_selects_exactly_the_dead_grant_and_the_rejected_credentials_from_real_log_lines(
) {
    let mut app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    app.connect("c1").await;
    app.connect("c2").await;
    // c1's grant dies at the vendor.
    let token = app.access_token("c1").await;
    app.oidc().revoke(&token, "access_token").await;
    let reply = app.token_reply("c1", "?force_refresh=true").await;
    assert_eq!(reply.error_code(), "reauthorization_required");
    // The integration's secret no longer works: c2's refresh is rejected.
    app.spec.env.retain(|(k, _)| k != "DEMO_CLIENT_SECRET");
    app.spec
        .env
        .push(("DEMO_CLIENT_SECRET".into(), "rotated-at-the-vendor".into()));
    let mut lines = app.restart_with_margin(DEFAULT_MARGIN_SECS).await.lines();
    let reply = app.token_reply("c2", "?force_refresh=true").await;
    assert_eq!(reply.error_code(), "integration_misconfigured");
    lines.extend(app.stop_broker().lines());
    assert!(
        lines
            .iter()
            .filter(|l| l.contains("\"event\":\"connection.created\""))
            .count()
            == 2,
        "the run has other event lines too"
    );

    let rows = run(&rule_query(), &lines);
    let got: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|r| {
            let s = |k: &str| {
                r.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            (s("event"), s("integration"), s("connection"), s("error"))
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "connection.reauthorization_required".to_owned(),
                INTEGRATION.to_owned(),
                "c1".to_owned(),
                "invalid_grant".to_owned()
            ),
            (
                "integration.misconfigured".to_owned(),
                INTEGRATION.to_owned(),
                "c2".to_owned(),
                "invalid_client".to_owned()
            ),
        ],
        "the rule's rows"
    );
    for r in &rows {
        assert!(
            r.get("event_id")
                .and_then(Value::as_str)
                .is_some_and(|id| id.starts_with("evt_")),
            "{r:?}"
        );
        assert!(r.contains_key("timestamp"));
    }
}
