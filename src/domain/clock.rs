//! Time as the broker stores it: UTC at millisecond precision, identical on
//! every backend (inside Table Storage's 100 ns resolution).

use time::OffsetDateTime;

/// Where the refresh engine reads the time: the system's clock in the product;
/// in unit tests a manual one, moved by the test, so that leases, cool-downs
/// and token lifetimes are exercised without waiting for them.
#[derive(Clone, Default)]
pub struct Clock {
    #[cfg(test)]
    manual: Option<std::sync::Arc<std::sync::Mutex<OffsetDateTime>>>,
}

impl Clock {
    /// The system's clock ([`now`]).
    pub fn system() -> Self {
        Self::default()
    }

    /// The current time at millisecond precision.
    pub fn now(&self) -> OffsetDateTime {
        #[cfg(test)]
        if let Some(at) = &self.manual {
            return *at.lock().unwrap_or_else(|p| p.into_inner());
        }
        now()
    }

    /// A clock that stands at `at` until [`Clock::advance`] moves it.
    #[cfg(test)]
    pub fn manual(at: OffsetDateTime) -> Self {
        Self {
            manual: Some(std::sync::Arc::new(std::sync::Mutex::new(to_millis(at)))),
        }
    }

    /// Moves a manual clock (and every clone of it) forward by `by`.
    #[cfg(test)]
    pub fn advance(&self, by: time::Duration) {
        if let Some(at) = &self.manual {
            let mut at = at.lock().unwrap_or_else(|p| p.into_inner());
            *at = to_millis(*at + by);
        }
    }
}

/// Current time at millisecond precision.
pub fn now() -> OffsetDateTime {
    to_millis(OffsetDateTime::now_utc())
}

/// `t` in UTC, truncated to whole milliseconds.
pub fn to_millis(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(t)
}

/// `t` as RFC 3339 (UTC, as stored).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// An RFC 3339 instant written by [`rfc3339`]; `None` for anything else.
pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_to_milliseconds_in_utc() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789)
            .unwrap()
            .to_offset(time::macros::offset!(+2));
        let m = to_millis(t);
        assert_eq!(m.nanosecond(), 123_000_000);
        assert_eq!(m.offset(), time::UtcOffset::UTC);
        assert_eq!(m.unix_timestamp(), 1_700_000_000);
    }
}
