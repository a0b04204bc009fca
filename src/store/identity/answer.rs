//! A token answer of the identity endpoint read: the access token and its
//! expiry, as seconds (`expires_on`, `expires_in`, numbers or strings) or as
//! the older protocol's date.

use azure_core::auth::AccessToken;
use serde::Deserialize;
use serde_json::Value;
use time::{Duration, OffsetDateTime};

use super::credential_error;

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_on: Option<Value>,
    #[serde(default)]
    expires_in: Option<Value>,
}

/// The token of a successful answer from the endpoint named `name`.
pub(super) fn token(name: &str, body: &[u8]) -> Result<AccessToken, azure_core::Error> {
    let parsed: TokenResponse = serde_json::from_slice(body).map_err(|_| {
        credential_error(format!(
            "managed identity endpoint ({name}) answered without a JSON access_token"
        ))
    })?;
    if parsed.access_token.is_empty() {
        return Err(credential_error(format!(
            "managed identity endpoint ({name}) answered an empty access_token"
        )));
    }
    let now = OffsetDateTime::now_utc();
    let expires_on = parsed
        .expires_on
        .as_ref()
        .and_then(expiry)
        .or_else(|| {
            parsed
                .expires_in
                .as_ref()
                .and_then(seconds)
                .and_then(|s| now.checked_add(Duration::seconds(s)))
        })
        .ok_or_else(|| {
            credential_error(format!(
                "managed identity endpoint ({name}) answered without a usable expires_on"
            ))
        })?;
    Ok(AccessToken::new(parsed.access_token, expires_on))
}

/// Seconds as a JSON number or a string of digits (the endpoint sends strings).
fn seconds(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The 2017-09-01 protocol's `expires_on`: `MM/DD/YYYY hh:mm:ss [AM|PM] ±hh:mm`
/// (e.g. `11/30/2026 05:35:32 PM +00:00`), or seconds like the newer protocol.
fn expiry(v: &Value) -> Option<OffsetDateTime> {
    if let Some(s) = seconds(v) {
        return OffsetDateTime::from_unix_timestamp(s).ok();
    }
    let text = v.as_str()?;
    let parts: Vec<&str> = text.split_whitespace().collect();
    let (date, clock, meridiem, offset) = match parts.as_slice() {
        [d, c, o] => (*d, *c, None, *o),
        [d, c, m, o] => (*d, *c, Some(m.to_ascii_uppercase()), *o),
        _ => return None,
    };
    let numbers = |s: &str, sep: char| -> Option<Vec<i64>> {
        s.split(sep).map(|p| p.parse::<i64>().ok()).collect()
    };
    let d = numbers(date, '/')?;
    let c = numbers(clock, ':')?;
    let [month, day, year] = d.as_slice() else {
        return None;
    };
    let [mut hour, minute, second] = c.as_slice() else {
        return None;
    };
    match meridiem.as_deref() {
        None => {}
        Some("AM") if (1..=12).contains(&hour) => hour %= 12,
        Some("PM") if (1..=12).contains(&hour) => hour = hour % 12 + 12,
        Some(_) => return None,
    }
    let (sign, hm) = match offset.as_bytes().first()? {
        b'+' => (1, &offset[1..]),
        b'-' => (-1, &offset[1..]),
        _ => return None,
    };
    let o = numbers(hm, ':')?;
    let [oh, om] = o.as_slice() else {
        return None;
    };
    let month = time::Month::try_from(u8::try_from(*month).ok()?).ok()?;
    let date =
        time::Date::from_calendar_date(i32::try_from(*year).ok()?, month, u8::try_from(*day).ok()?)
            .ok()?;
    let clock = time::Time::from_hms(
        u8::try_from(hour).ok()?,
        u8::try_from(*minute).ok()?,
        u8::try_from(*second).ok()?,
    )
    .ok()?;
    let offset =
        time::UtcOffset::from_whole_seconds(i32::try_from(sign * (oh * 3600 + om * 60)).ok()?)
            .ok()?;
    Some(date.with_time(clock).assume_offset(offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_seconds_come_as_numbers_or_strings() {
        assert_eq!(
            seconds(&Value::from(1_732_881_600_i64)),
            Some(1_732_881_600)
        );
        assert_eq!(seconds(&Value::from("1732881600")), Some(1_732_881_600));
        assert_eq!(seconds(&Value::from("soon")), None);
    }

    #[test]
    fn the_older_protocol_sends_its_expiry_as_a_date() {
        let at = |s: &str| expiry(&Value::from(s)).map(OffsetDateTime::unix_timestamp);
        // 2026-11-30T17:35:32Z
        assert_eq!(at("11/30/2026 05:35:32 PM +00:00"), Some(1_796_060_132));
        assert_eq!(at("11/30/2026 17:35:32 +00:00"), Some(1_796_060_132));
        assert_eq!(at("11/30/2026 06:35:32 PM +01:00"), Some(1_796_060_132));
        assert_eq!(at("11/30/2026 12:00:00 AM +00:00"), Some(1_795_996_800));
        assert_eq!(at("1796060132"), Some(1_796_060_132));
        assert_eq!(at("13/30/2026 05:35:32 PM +00:00"), None);
        assert_eq!(at("11/30/2026 13:35:32 PM +00:00"), None);
        assert_eq!(at("tomorrow"), None);
    }
}
