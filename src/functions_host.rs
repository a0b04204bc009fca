//! The Functions host's invocation envelope for non-HTTP triggers
//! (`{"Data": {...}, "Metadata": {...}}`), typed and tolerant of unknown
//! fields. Only what the broker uses is read; nothing of it is logged raw.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope {
    #[serde(default)]
    data: Data,
}

#[derive(Debug, Default, Deserialize)]
struct Data {
    #[serde(default)]
    timer: Option<TimerInfo>,
}

/// The timer trigger's value.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TimerInfo {
    #[serde(default)]
    pub is_past_due: bool,
}

#[derive(Debug, Default)]
pub struct InvocationRequest {
    pub timer: Option<TimerInfo>,
}

impl InvocationRequest {
    /// Parses leniently: an empty or unexpected body still runs the function.
    pub fn parse(body: &[u8]) -> Self {
        let env: Envelope = serde_json::from_slice(body).unwrap_or_default();
        Self {
            timer: env.data.timer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_timer_envelope() {
        let body = br#"{"Data":{"timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":null,"IsPastDue":true}},"Metadata":{"sys":{"MethodName":"refresh-timer"}}}"#;
        assert!(InvocationRequest::parse(body).timer.unwrap().is_past_due);
        assert!(InvocationRequest::parse(b"").timer.is_none());
    }
}
