//! `%NAME%` values: any string of the integrations file of that form is read
//! from the setting `NAME`, with errors that name the file, integration and field.

use serde_json::Value;

use super::error::ConfigError;

/// Where in the file a value is being read, and how settings are read.
pub(super) struct Ctx<'a> {
    pub(super) path: String,
    pub(super) name: String,
    pub(super) get: &'a dyn Fn(&str) -> Option<String>,
}

impl Ctx<'_> {
    pub(super) fn fail(&self, problem: impl Into<String>) -> ConfigError {
        ConfigError::Integration {
            path: self.path.clone(),
            integration: self.name.clone(),
            problem: problem.into(),
        }
    }
}

pub(super) fn expand_all(ctx: &Ctx<'_>, at: &str, v: &mut Value) -> Result<(), ConfigError> {
    match v {
        Value::String(s) => *s = expand(ctx, at, s)?,
        Value::Array(a) => {
            for x in a {
                expand_all(ctx, at, x)?;
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                expand_all(ctx, &path, x)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `%NAME%` reads the setting NAME; anything else is literal.
pub(super) fn expand(ctx: &Ctx<'_>, field: &str, v: &str) -> Result<String, ConfigError> {
    match v.strip_prefix('%').and_then(|s| s.strip_suffix('%')) {
        Some(setting) if !setting.is_empty() => (ctx.get)(setting).ok_or_else(|| {
            ctx.fail(format!(
                "{field} refers to the setting {setting}, which is not set (add it to the app settings / environment)"
            ))
        }),
        _ => Ok(v.to_owned()),
    }
}
