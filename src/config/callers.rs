//! `callers` of an integration: which Microsoft Entra ID identities (by object
//! id) may get tokens, and use the proxy, for which of its connections.
//!
//! ```json
//! "callers": [
//!   {"object_id": "<guid>", "connections": ["acme", "contoso"]},
//!   {"object_id": "<guid>", "connections": "*"}
//! ]
//! ```
//!
//! Read with the rest of the integrations file, so an identity's access is
//! never kept longer than the file's contents are.

use serde_json::Value;

use super::entra::is_guid;
use super::error::ConfigError;
use super::expand::{expand, Ctx};
use crate::domain::ConnectionId;

/// The connections one identity may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connections {
    /// `"*"`: every connection of the integration.
    All,
    Only(Vec<ConnectionId>),
}

/// One entry of `callers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The identity's object id (the `oid` claim), lower case.
    pub object_id: String,
    pub connections: Connections,
}

impl Caller {
    pub fn covers(&self, connection: &ConnectionId) -> bool {
        match &self.connections {
            Connections::All => true,
            Connections::Only(list) => list.contains(connection),
        }
    }
}

/// Whether the identity `object_id` may reach `connection`, by `callers`.
pub fn allows(callers: &[Caller], object_id: &str, connection: &ConnectionId) -> bool {
    callers
        .iter()
        .any(|c| c.object_id.eq_ignore_ascii_case(object_id) && c.covers(connection))
}

/// The shape `callers` must have, said when it has another.
const SHAPE: &str = "expected an array of {\"object_id\": \"<guid>\", \"connections\": [\"<connection>\", …] or \"*\"}";

/// The path of a field under this integration's `callers` (`rest` is `[0].object_id` …).
fn at(ctx: &Ctx<'_>, rest: &str) -> String {
    format!("integrations.{}.callers{rest}", ctx.name)
}

/// A problem at `rest` under `callers`.
fn fail(ctx: &Ctx<'_>, rest: &str, problem: String) -> ConfigError {
    ConfigError::field(&ctx.path, at(ctx, rest), problem)
}

/// Reads `callers` (absent: nobody). `%NAME%` values are read from settings.
pub(super) fn read(ctx: &Ctx<'_>, value: Option<&Value>) -> Result<Vec<Caller>, ConfigError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let Value::Array(entries) = value else {
        return Err(fail(ctx, "", SHAPE.into()));
    };
    let mut out: Vec<Caller> = Vec::new();
    let mut problems = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let here = format!("[{i}]");
        let Value::Object(m) = entry else {
            problems.push(fail(ctx, &here, SHAPE.into()));
            continue;
        };
        for key in m.keys() {
            if !matches!(key.as_str(), "object_id" | "connections" | "description") {
                problems.push(fail(
                    ctx,
                    &format!("{here}.{key}"),
                    "unknown field; the fields are: object_id, connections, description".into(),
                ));
            }
        }
        let object_id = object_id(ctx, &here, m.get("object_id"), &mut problems);
        let connections = connections(ctx, &here, m.get("connections"), &mut problems);
        if let (Some(object_id), Some(connections)) = (object_id, connections) {
            if out.iter().any(|c| c.object_id == object_id) {
                problems.push(fail(
                    ctx,
                    &format!("{here}.object_id"),
                    format!(
                        "{object_id} is listed twice: give it one entry with all its connections"
                    ),
                ));
                continue;
            }
            out.push(Caller {
                object_id,
                connections,
            });
        }
    }
    match ConfigError::all(problems) {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The entry's `object_id`, a GUID in lower case; `None` with the problem kept.
fn object_id(
    ctx: &Ctx<'_>,
    here: &str,
    value: Option<&Value>,
    problems: &mut Vec<ConfigError>,
) -> Option<String> {
    match value {
        Some(Value::String(s)) => match expand(ctx, &at(ctx, &format!("{here}.object_id")), s) {
            Ok(v) if is_guid(v.trim()) => Some(v.trim().to_ascii_lowercase()),
            Ok(_) => {
                problems.push(fail(
                    ctx,
                    &format!("{here}.object_id"),
                    "must be the identity's object id, a GUID (for Data Factory: az datafactory show --query identity.principalId)".into(),
                ));
                None
            }
            Err(e) => {
                problems.push(e);
                None
            }
        },
        _ => {
            problems.push(fail(
                ctx,
                &format!("{here}.object_id"),
                "is required: the identity's object id (a GUID)".into(),
            ));
            None
        }
    }
}

/// The entry's `connections`: `"*"` or a non-empty list of connection ids;
/// `None` with the problem kept (a bad id is a problem, the others are kept).
fn connections(
    ctx: &Ctx<'_>,
    here: &str,
    value: Option<&Value>,
    problems: &mut Vec<ConfigError>,
) -> Option<Connections> {
    match value {
        Some(Value::String(s)) if s == "*" => Some(Connections::All),
        Some(Value::Array(list)) if !list.is_empty() => {
            let mut ids = Vec::new();
            for (j, c) in list.iter().enumerate() {
                match c.as_str().map(ConnectionId::parse) {
                    Some(Ok(id)) => ids.push(id),
                    Some(Err(e)) => problems.push(fail(
                        ctx,
                        &format!("{here}.connections[{j}]"),
                        e.to_string(),
                    )),
                    None => problems.push(fail(
                        ctx,
                        &format!("{here}.connections[{j}]"),
                        "expected a connection id (a string)".into(),
                    )),
                }
            }
            Some(Connections::Only(ids))
        }
        _ => {
            problems.push(fail(
                ctx,
                &format!("{here}.connections"),
                "is required: a non-empty array of connection ids, or \"*\" for every connection"
                    .into(),
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::IntegrationName;

    const A: &str = "9a1b2c3d-0000-4000-8000-00000000000a";
    const B: &str = "9A1B2C3D-0000-4000-8000-00000000000B";

    fn file(callers: &str) -> String {
        format!(
            r#"{{"integrations": {{"acme": {{"authorization_url": "https://a.example/auth",
                "token_url": "https://a.example/token", "client_id": "c", "client_secret": "s",
                "callers": {callers}}}}}}}"#
        )
    }

    fn parse(callers: &str, get: &dyn Fn(&str) -> Option<String>) -> Result<Vec<Caller>, String> {
        super::super::integrations::parse(&file(callers), std::path::Path::new("i.json"), get)
            .map(|p| {
                p.ready[&IntegrationName::parse("acme").unwrap()]
                    .callers
                    .clone()
            })
            .map_err(|e| e.to_string())
    }

    fn conn(s: &str) -> ConnectionId {
        ConnectionId::parse(s).unwrap()
    }

    #[test]
    fn callers_name_identities_and_their_connections() {
        let get = |k: &str| (k == "ADF_OID").then(|| B.to_owned());
        let callers = parse(
            &format!(
                r#"[{{"object_id": "{A}", "connections": ["acme", "contoso"], "description": "ADF prod"}},
                    {{"object_id": "%ADF_OID%", "connections": "*"}}]"#
            ),
            &get,
        )
        .unwrap();
        assert_eq!(callers.len(), 2);
        assert!(allows(&callers, A, &conn("acme")));
        assert!(allows(&callers, &A.to_ascii_uppercase(), &conn("contoso")));
        assert!(!allows(&callers, A, &conn("other")));
        assert!(allows(&callers, &B.to_ascii_lowercase(), &conn("anything")));
        assert!(!allows(
            &callers,
            "00000000-0000-4000-8000-000000000000",
            &conn("acme")
        ));
        assert!(parse("[]", &|_| None).unwrap().is_empty());
    }

    #[test]
    fn every_problem_is_named_by_its_path() {
        let e = parse(
            &format!(
                r#"[{{"object_id": "adf-prod", "connections": []}},
                    {{"connections": ["bad name!"], "colour": 1}},
                    "x",
                    {{"object_id": "{A}", "connections": "*"}},
                    {{"object_id": "{A}", "connections": ["acme"]}}]"#
            ),
            &|_| None,
        )
        .unwrap_err();
        for part in [
            "integrations.acme.callers[0].object_id: must be the identity's object id",
            "integrations.acme.callers[0].connections: is required",
            "integrations.acme.callers[1].object_id: is required",
            "integrations.acme.callers[1].connections[0]:",
            "integrations.acme.callers[1].colour: unknown field",
            "integrations.acme.callers[2]: expected an array",
            "integrations.acme.callers[4].object_id: 9a1b2c3d-0000-4000-8000-00000000000a is listed twice",
        ] {
            assert!(e.contains(part), "{part} in {e}");
        }
        let e = parse(r#"{"object_id": "x"}"#, &|_| None).unwrap_err();
        assert!(
            e.contains("integrations.acme.callers: expected an array"),
            "{e}"
        );
        let e = parse(r#"[{"object_id": "%NOPE%", "connections": "*"}]"#, &|_| {
            None
        })
        .unwrap_err();
        assert!(
            e.contains("NOPE (integrations.acme.callers[0].object_id)"),
            "{e}"
        );
    }
}
