//! Reading settings: [`Env`] gives a setting's value (empty counts as unset)
//! and parses numbers in a range; [`Problems`] keeps every problem found while
//! reading goes on with a fallback.

use super::ConfigError;

/// Reads settings by name; empty values count as unset.
pub(super) struct Env<'a> {
    pub(super) get: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    pub(super) fn get(&self, name: &str) -> Option<String> {
        (self.get)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// A whole number in `range` (the one number parser of the settings);
    /// `what` completes "must be ..." in the error.
    pub(super) fn number(
        &self,
        name: &'static str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
        what: &str,
    ) -> Result<u64, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if range.contains(&n) => Ok(n),
                _ => Err(ConfigError::setting(name, format!("must be {what}"))),
            },
        }
    }

    /// A whole number of seconds in `range`, with the usual message.
    pub(super) fn seconds(
        &self,
        name: &'static str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, ConfigError> {
        let what = format!("a whole number from {} to {}", range.start(), range.end());
        self.number(name, default, range, &what)
    }
}

/// The problems found while reading the settings: each is kept and reading
/// goes on with a fallback, so one start reports every problem at once.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<ConfigError>);

impl Problems {
    /// The value, or `fallback` with the error kept.
    pub(super) fn take<T>(&mut self, r: Result<T, ConfigError>, fallback: T) -> T {
        r.unwrap_or_else(|e| {
            self.0.push(e);
            fallback
        })
    }
}
