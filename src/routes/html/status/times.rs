//! Times on the status page: the exact time for machines (`datetime`), to the
//! second for people, and a rough distance ("3 h ago").

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::Html;

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// "3 h ago", "in 12 min": a rough distance for people, beside the exact time.
fn relative(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let secs = (t - now).whole_seconds();
    let n = secs.unsigned_abs();
    let amount = match n {
        0..=59 => format!("{n} s"),
        60..=3599 => format!("{} min", n / 60),
        3600..=172_799 => format!("{} h", n / 3600),
        _ => format!("{} days", n / 86_400),
    };
    if secs < 0 {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

/// "2026-11-30 18:24:03 UTC": to the second, for people.
fn readable(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

pub(super) fn when(t: OffsetDateTime, now: OffsetDateTime) -> Html {
    Html::new()
        .markup("<time datetime=\"")
        .text(rfc3339(t))
        .markup("\">")
        .text(readable(t))
        .markup("</time> (")
        .text(relative(t, now))
        .markup(")")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let d = time::Duration::seconds;
        assert_eq!(relative(now - d(30), now), "30 s ago");
        assert_eq!(relative(now + d(600), now), "in 10 min");
        assert_eq!(relative(now - d(7200), now), "2 h ago");
        assert_eq!(relative(now - d(86_400 * 40), now), "40 days ago");
        assert_eq!(readable(now), "2023-11-14 22:13:20 UTC");
    }
}
