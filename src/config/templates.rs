//! Vendor templates: the built-in catalogue (`providers.json`, compiled into
//! the binary) and how an integration is merged over its template, with
//! `{placeholders}` filled.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use super::error::ConfigError;
use super::expand::{expand, Ctx};

/// The built-in vendor templates.
pub fn catalogue() -> &'static Map<String, Value> {
    static CATALOGUE: OnceLock<Map<String, Value>> = OnceLock::new();
    CATALOGUE.get_or_init(|| {
        serde_json::from_str(include_str!("providers.json"))
            .expect("providers.json is validated by the unit tests")
    })
}

/// Merges the integration over its template (if it names one), filling `{placeholders}`.
pub(super) fn apply_template(
    ctx: &Ctx<'_>,
    mut own: Map<String, Value>,
) -> Result<Map<String, Value>, ConfigError> {
    let placeholders = own.remove("placeholders");
    let Some(provider) = own
        .get("provider")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        if placeholders.is_some() {
            return Err(ctx.fail("placeholders are only used with a provider template"));
        }
        return Ok(own);
    };
    let Some(Value::Object(template)) = catalogue().get(&provider) else {
        let known: Vec<&str> = catalogue().keys().map(String::as_str).collect();
        return Err(ctx.fail(format!(
            "provider {provider:?} is not in the catalogue; known: {}",
            known.join(", ")
        )));
    };
    let mut template = template.clone();
    // Documentation only (the generated docs/vendors.md shows them).
    template.remove("notes");
    template.remove("token_rate_limit");
    template.remove("rotates_refresh_token");
    // The account binding (issue 17) is parsed once its parser is on main;
    // until then the templates carry it in the agreed format and it is dropped here.
    template.remove("account");
    template.remove("account_note");
    let requires: Vec<String> = match template.remove("requires") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    let mut values: BTreeMap<String, String> = match template.remove("defaults") {
        Some(Value::Object(m)) => m
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_str()?.to_owned())))
            .collect(),
        _ => BTreeMap::new(),
    };
    match placeholders {
        None => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let Some(v) = v.as_str() else {
                    return Err(ctx.fail(format!("placeholders.{k} must be a string")));
                };
                if !requires.contains(&k) {
                    return Err(ctx.fail(format!(
                        "provider {provider} has no placeholder {{{k}}}; it takes: {}",
                        requires.join(", ")
                    )));
                }
                let v = expand(ctx, &format!("placeholders.{k}"), v)?;
                if v.is_empty()
                    || !v
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
                {
                    return Err(ctx.fail(format!("placeholders.{k} must be a host name part (letters, digits, '-', '.', '_')")));
                }
                values.insert(k, v);
            }
        }
        Some(_) => {
            return Err(ctx.fail(
                "placeholders must be an object, e.g. {\"tenant\": \"contoso.onmicrosoft.com\"}",
            ))
        }
    }
    for r in &requires {
        if !values.contains_key(r) {
            return Err(ctx.fail(format!("provider {provider} needs the placeholder {{{r}}}: add \"placeholders\": {{\"{r}\": \"...\"}}")));
        }
    }
    fill(&mut template, &values);
    for (k, v) in own {
        match (template.get_mut(&k), v) {
            (Some(Value::Object(base)), Value::Object(over)) if k.ends_with("_params") => {
                base.extend(over)
            }
            (_, v) => {
                template.insert(k, v);
            }
        }
    }
    Ok(template)
}

fn fill(m: &mut Map<String, Value>, values: &BTreeMap<String, String>) {
    for v in m.values_mut() {
        match v {
            Value::String(s) => {
                for (k, val) in values {
                    *s = s.replace(&format!("{{{k}}}"), val);
                }
            }
            Value::Object(o) => fill(o, values),
            _ => {}
        }
    }
}
