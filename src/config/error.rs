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
}

impl ConfigError {
    pub fn setting(setting: &'static str, problem: impl Into<String>) -> Self {
        Self::Setting {
            setting,
            problem: problem.into(),
        }
    }
}
