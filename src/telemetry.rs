//! Logs: one JSON object per event on stdout (the Functions host turns stdout
//! lines into Information logs). The filter comes from `RUST_LOG` (default
//! `info`), but the Azure SDK crates are capped at `info` whatever it says:
//! azure_core 0.21 prints the `Authorization` header in clear at debug level.

use tracing::Level;
use tracing_subscriber::filter::{EnvFilter, FilterFn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// True for events that may be logged: azure_* crates only at info or above.
pub fn allowed(target: &str, level: &Level) -> bool {
    !(target.starts_with("azure_") && *level > Level::INFO)
}

pub fn init() {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(std::io::stdout)
        .with_filter(FilterFn::new(|m| allowed(m.target(), m.level())));
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
}
