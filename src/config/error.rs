//! The one error type of configuration: every variant names the setting or
//! the file position and says how to fix it.

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{setting}: {problem}")]
    Setting {
        setting: &'static str,
        problem: String,
    },
    #[error("{path}: line {line}, column {column}: {problem}")]
    FileSyntax {
        path: String,
        line: usize,
        column: usize,
        problem: String,
    },
    #[error("{path}: integration {integration:?}: {problem}")]
    Integration {
        path: String,
        integration: String,
        problem: String,
    },
    #[error("{path}: {problem}")]
    File { path: String, problem: String },
    /// A field of the integrations file, by its path (`integrations.acme.scopes`).
    #[error("{path}: {at}: {problem}")]
    Field {
        path: String,
        at: String,
        problem: String,
    },
    /// Every `%NAME%` of the integrations file whose setting is not set, in one message.
    #[error("{path}: {}", missing_settings(.missing))]
    MissingSettings {
        path: String,
        missing: Vec<super::lint::MissingSetting>,
    },
    /// Several problems, each on its own line.
    #[error("{} problems:\n{}", .0.len(), .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Many(Vec<ConfigError>),
}

fn missing_settings(missing: &[super::lint::MissingSetting]) -> String {
    let list: Vec<String> = missing
        .iter()
        .map(|m| format!("{} ({})", m.setting, m.field))
        .collect();
    format!(
        "{} setting{} not set: {}. Set {} in the environment (app settings under the Functions host)",
        list.len(),
        if list.len() == 1 { " is" } else { "s are" },
        list.join(", "),
        if list.len() == 1 { "it" } else { "them" },
    )
}

impl ConfigError {
    pub fn field(path: &str, at: String, problem: impl Into<String>) -> Self {
        Self::Field {
            path: path.to_owned(),
            at,
            problem: problem.into(),
        }
    }

    /// One error for `errors`: the only one, or all of them.
    pub fn all(mut errors: Vec<ConfigError>) -> Option<Self> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(Self::Many(
                errors
                    .into_iter()
                    .flat_map(|e| match e {
                        Self::Many(v) => v,
                        e => vec![e],
                    })
                    .collect(),
            )),
        }
    }

    /// Each problem on its own (a `Many` split up).
    pub fn problems(&self) -> Vec<&ConfigError> {
        match self {
            Self::Many(v) => v.iter().collect(),
            e => vec![e],
        }
    }

    pub fn setting(setting: &'static str, problem: impl Into<String>) -> Self {
        Self::Setting {
            setting,
            problem: problem.into(),
        }
    }
}
