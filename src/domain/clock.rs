//! Time as the broker stores it: UTC at millisecond precision, identical on
//! every backend (inside Table Storage's 100 ns resolution).

use time::OffsetDateTime;

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
