//! Logs: one JSON object per event on stdout when stdout is not a terminal
//! (the Functions host turns stdout lines into Information logs, and the alert
//! rule reads their fields), human-readable lines when it is one; the setting
//! `BROKER_LOG_FORMAT` (`json` or `text`) overrides the guess. The filter comes
//! from `RUST_LOG` (default `info`, with actix's start-up chatter below it), but
//! the Azure SDK crates are capped at `info` whatever it says: azure_core 0.21
//! prints the `Authorization` header in clear at debug level.

use std::io::IsTerminal;

use tracing::Level;
use tracing_subscriber::filter::{EnvFilter, FilterFn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line (machines: the Functions host, App Insights).
    Json,
    /// One readable line per event (a person at a terminal).
    Text,
}

impl Format {
    /// `BROKER_LOG_FORMAT` if set (`json` or `text`), else text on a terminal
    /// and JSON otherwise. An unknown value is an error naming the setting.
    pub fn choose(setting: Option<&str>, terminal: bool) -> Result<Self, String> {
        match setting.map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(if terminal { Self::Text } else { Self::Json }),
            Some(s) if s.eq_ignore_ascii_case("json") => Ok(Self::Json),
            Some(s) if s.eq_ignore_ascii_case("text") => Ok(Self::Text),
            Some(s) => Err(format!(
                "BROKER_LOG_FORMAT: is {s:?}; use \"json\" or \"text\" (default: text on a terminal, json otherwise)"
            )),
        }
    }

    /// The format for this process's stdout.
    pub fn from_env() -> Result<Self, String> {
        Self::choose(
            std::env::var("BROKER_LOG_FORMAT").ok().as_deref(),
            std::io::stdout().is_terminal(),
        )
    }
}

/// True for events that may be logged: azure_* crates only at info or above.
pub fn allowed(target: &str, level: &Level) -> bool {
    !(target.starts_with("azure_") && *level > Level::INFO)
}

/// The default filter: info, but actix's start-up lines ("starting N workers",
/// "Actix runtime found") only as warnings and above.
const DEFAULT_FILTER: &str = "info,actix_server=warn,actix_web=warn";

pub fn init(format: Format) {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let allowed = FilterFn::new(|m| allowed(m.target(), m.level()));
    let fmt = match format {
        Format::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stdout)
            .with_filter(allowed)
            .boxed(),
        Format::Text => tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(std::io::stdout().is_terminal())
            .with_writer(std::io::stdout)
            .with_filter(allowed)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(env)
        .with(fmt)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_debug_is_never_allowed() {
        assert!(!allowed("azure_core::policies::transport", &Level::DEBUG));
        assert!(!allowed("azure_storage", &Level::TRACE));
        assert!(allowed("azure_core", &Level::INFO));
        assert!(allowed("oauth_broker::refresh", &Level::DEBUG));
    }

    #[test]
    fn the_format_follows_the_setting_then_the_terminal() {
        assert_eq!(Format::choose(None, true), Ok(Format::Text));
        assert_eq!(Format::choose(None, false), Ok(Format::Json));
        assert_eq!(Format::choose(Some("json"), true), Ok(Format::Json));
        assert_eq!(Format::choose(Some("TEXT"), false), Ok(Format::Text));
        assert_eq!(Format::choose(Some(""), false), Ok(Format::Json));
        assert!(Format::choose(Some("yaml"), false)
            .unwrap_err()
            .starts_with("BROKER_LOG_FORMAT"));
    }
}
