//! The integrations file as a whole: reading it, collecting every problem of
//! every integration, and sorting integrations into ready ones and those whose
//! endpoints come from their issuer's metadata (discovered at start).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};
use url::Url;

use super::super::error::ConfigError;
use super::super::expand::{expand, expand_all, Ctx};
use super::super::lint::lint;
use super::super::templates::apply_template;
use super::{check_endpoint, finish, Integration};
use crate::domain::IntegrationName;

/// An integration whose endpoints come from its issuer's metadata, fetched at start.
#[derive(Debug, Clone)]
pub struct Discovery {
    pub name: IntegrationName,
    pub issuer: Url,
    pub(in crate::config) value: Map<String, Value>,
}

/// What the file holds: ready integrations, and those still to be discovered.
#[derive(Debug, Default, Clone)]
pub struct Parsed {
    pub ready: BTreeMap<IntegrationName, Integration>,
    pub discover: Vec<Discovery>,
}

/// The integrations file as loaded at start.
#[derive(Debug, Clone)]
pub struct IntegrationsFile {
    pub path: PathBuf,
    /// False when the file did not exist (the broker then serves no integrations and says so).
    pub found: bool,
    pub parsed: Parsed,
}

impl IntegrationsFile {
    /// The names of every configured integration (ready or to be discovered), sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .parsed
            .ready
            .keys()
            .map(|n| n.as_str().to_owned())
            .chain(
                self.parsed
                    .discover
                    .iter()
                    .map(|d| d.name.as_str().to_owned()),
            )
            .collect();
        names.sort();
        names
    }

    /// Reads and validates the file at `path`; a missing file is no error.
    pub fn load(path: PathBuf, get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Self {
                parsed: parse(&text, &path, get)?,
                path,
                found: true,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self {
                path,
                found: false,
                parsed: Parsed::default(),
            }),
            Err(e) => Err(ConfigError::File {
                path: path.display().to_string(),
                problem: format!("cannot be read: {e}"),
            }),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    integrations: BTreeMap<String, Value>,
}

/// Parses the integrations file text. `get` reads settings for `%NAME%` values.
pub fn parse(
    text: &str,
    path: &Path,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Parsed, ConfigError> {
    let path_s = path.display().to_string();
    let raw: RawFile = serde_json::from_str(text).map_err(|e| ConfigError::FileSyntax {
        path: path_s.clone(),
        line: e.line(),
        column: e.column(),
        problem: e
            .to_string()
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .to_owned(),
    })?;
    let mut parsed = Parsed::default();
    // Every integration is read, and every problem of every one is kept, so one
    // start (or `oauth-broker check`) reports them all.
    let mut problems = Vec::new();
    let mut missing = Vec::new();
    for (name, value) in raw.integrations {
        let ctx = Ctx {
            path: path_s.clone(),
            name: name.clone(),
            get,
        };
        let Value::Object(own) = value else {
            problems.push(ConfigError::field(
                &path_s,
                format!("integrations.{name}"),
                "expected an object",
            ));
            continue;
        };
        let findings = lint(&path_s, &name, &own, get);
        if !findings.is_clean() {
            problems.extend(findings.problems);
            missing.extend(findings.missing);
            continue;
        }
        if let Err(e) = read_one(&ctx, own, &mut parsed) {
            problems.push(e);
        }
    }
    if !missing.is_empty() {
        problems.insert(
            0,
            ConfigError::MissingSettings {
                path: path_s,
                missing,
            },
        );
    }
    if let Some(e) = ConfigError::all(problems) {
        return Err(e);
    }
    Ok(parsed)
}

/// Reads one integration that passed [`lint`] into `parsed`.
fn read_one(
    ctx: &Ctx<'_>,
    own: Map<String, Value>,
    parsed: &mut Parsed,
) -> Result<(), ConfigError> {
    let name = ctx.name.clone();
    let merged = apply_template(ctx, own)?;
    let needs_discovery =
        !merged.contains_key("authorization_url") || !merged.contains_key("token_url");
    match merged.get("issuer").and_then(Value::as_str) {
        Some(issuer) if needs_discovery => {
            let issuer = expand(ctx, "issuer", issuer)?;
            let issuer =
                Url::parse(&issuer).map_err(|e| ctx.fail(format!("issuer is not a URL: {e}")))?;
            check_endpoint("issuer", &issuer).map_err(|m| ctx.fail(m))?;
            // Settings are read now, so discovery at start needs no environment.
            let mut value = Value::Object(merged);
            expand_all(ctx, "", &mut value)?;
            let Value::Object(value) = value else {
                unreachable!()
            };
            let name = IntegrationName::parse(&name).map_err(|e| ctx.fail(e.to_string()))?;
            parsed.discover.push(Discovery {
                name,
                issuer,
                value,
            });
        }
        _ => {
            let i = finish(ctx, merged)?;
            parsed.ready.insert(i.name.clone(), i);
        }
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::tests::env;
    use crate::config::ClientAuth;
    use time::Duration;

    /// The one integration of `text`, which must be ready (not left for discovery).
    pub(in crate::config::integrations) fn one(
        text: &str,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Integration, ConfigError> {
        let p = parse(text, Path::new("i.json"), get)?;
        assert!(p.discover.is_empty());
        Ok(p.ready.into_values().next().expect("one integration"))
    }

    /// A complete integration without a template, reading its client from settings.
    pub(in crate::config::integrations) const GOOD: &str = r#"{"integrations": {"xero": {
        "authorization_url": "https://login.xero.com/identity/connect/authorize",
        "token_url": "https://identity.xero.com/connect/token",
        "client_id": "%XERO_ID%", "client_secret": "%XERO_SECRET%",
        "scopes": ["offline_access", "accounting.transactions"],
        "authorization_params": {"prompt": "consent"}
    }}}"#;

    #[test]
    fn expands_settings_and_applies_defaults() {
        let get = env(&[("XERO_ID", "id1"), ("XERO_SECRET", "sec")]);
        let x = one(GOOD, &get).unwrap();
        assert_eq!(x.client_id, "id1");
        assert_eq!(x.client_secret.expose(), "sec");
        assert_eq!(x.client_auth, ClientAuth::Basic);
        assert!(x.pkce);
        assert_eq!(x.refresh_margin, Duration::seconds(900));
        assert_eq!(x.keepalive, Duration::hours(24));
        assert_eq!(x.scope_string(), "offline_access accounting.transactions");
        assert_eq!(
            x.authorization_params,
            vec![("prompt".into(), "consent".into())]
        );
        assert!(!format!("{x:?}").contains("sec\""));
    }

    #[test]
    fn a_missing_setting_is_named() {
        let err = one(GOOD, &env(&[("XERO_ID", "id1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("XERO_SECRET") && err.contains("xero"), "{err}");
    }

    #[test]
    fn a_malformed_file_names_line_and_problem() {
        let text = "{\"integrations\": {\n  \"a\": {\"token_url\": }\n}}";
        let err = parse(text, Path::new("i.json"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("i.json: line 2,"), "{err}");
        let text = r#"{"integrations": {"a": {"authorization_url": "https://a", "token_url": "https://b", "client_id": "x", "client_secret": "y", "scopez": []}}}"#;
        let err = parse(text, Path::new("i.json"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("scopez"), "{err}");
        let text = r#"{"integrations": {"Bad_Name": {"authorization_url": "https://a", "token_url": "https://b", "client_id": "x", "client_secret": "y"}}}"#;
        let err = parse(text, Path::new("i.json"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("Bad_Name"), "{err}");
    }

    #[test]
    fn an_issuer_without_endpoints_is_left_for_discovery() {
        let text = r#"{"integrations": {"d": {"issuer": "https://idp.example.com", "client_id": "id", "client_secret": "s"}}}"#;
        let p = parse(text, Path::new("i.json"), &env(&[])).unwrap();
        assert!(p.ready.is_empty());
        assert_eq!(p.discover[0].issuer.as_str(), "https://idp.example.com/");
    }

    #[test]
    fn the_shipped_sample_file_is_valid() {
        let any = |_: &str| Some("x".to_owned());
        let p = parse(
            include_str!("../../../integrations.sample.json"),
            Path::new("integrations.sample.json"),
            &any,
        )
        .unwrap();
        assert_eq!(p.ready.len(), 4);
    }
}
