//! Event settings: the webhook receivers (`BROKER_WEBHOOK_URL`), the signing
//! secret (`BROKER_WEBHOOK_SECRET`), the first retry delay
//! (`BROKER_WEBHOOK_RETRY_SECS`) and when failing refreshes become an event
//! (`BROKER_REFRESH_FAILING_SECS`).
//!
//! A receiver URL is a secret (a Teams or Slack webhook URL is its own
//! credential): it is kept as a [`Secret`] and logged only by host and id.

use sha2::{Digest, Sha256};
use url::Url;

use super::{ConfigError, Env};
use crate::domain::Secret;

/// How a receiver wants its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// The event as a signed JSON object.
    Json,
    /// A Microsoft Teams incoming webhook or Workflows URL: an Adaptive Card message.
    Teams,
    /// A Slack incoming webhook: `{"text": …}`.
    Slack,
}

/// One webhook receiver.
#[derive(Debug, Clone)]
pub struct WebhookReceiver {
    /// Where to POST (without a `format=` suffix).
    pub url: Secret,
    pub format: WebhookFormat,
    /// A short stable id (a hash of the URL): names the receiver in the outbox and in logs.
    pub id: String,
    /// The URL's host, for logs.
    pub host: String,
    /// Signs this receiver's deliveries (`X-Broker-Signature`): its own, so
    /// no receiver can sign events for another. `None`: unsigned (Teams, Slack).
    pub secret: Option<Secret>,
}

/// Events and their delivery.
#[derive(Debug, Clone)]
pub struct EventSettings {
    pub receivers: Vec<WebhookReceiver>,
    /// Delay before the first retry of a failed delivery; doubles up to an hour.
    pub retry: std::time::Duration,
    /// Transient refresh failures for this long make a `connection.refresh_failing` event.
    pub refresh_failing_after: time::Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            receivers: Vec::new(),
            retry: std::time::Duration::from_secs(10),
            refresh_failing_after: time::Duration::hours(6),
        }
    }
}

const FORMATS: [(&str, WebhookFormat); 3] = [
    ("json", WebhookFormat::Json),
    ("teams", WebhookFormat::Teams),
    ("slack", WebhookFormat::Slack),
];

/// The receiver id of a URL: 12 hex digits of its SHA-256.
pub fn receiver_id(url: &str) -> String {
    Sha256::digest(url.as_bytes())[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Parses one receiver: `https://…[?|&]format=teams|slack|json`; without the
/// suffix, Teams and Slack are recognised by host.
fn receiver(raw: &str) -> Result<WebhookReceiver, ConfigError> {
    let bad = |problem: String| ConfigError::setting("BROKER_WEBHOOK_URL", problem);
    let mut url = raw;
    let mut format = None;
    for (name, f) in FORMATS {
        for sep in ['?', '&'] {
            if let Some(stripped) = raw.strip_suffix(&format!("{sep}format={name}")) {
                url = stripped;
                format = Some(f);
            }
        }
    }
    let parsed = Url::parse(url).map_err(|e| {
        bad(format!(
            "an entry is not a URL ({e}); example: https://example.com/hooks/broker"
        ))
    })?;
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => {
            return Err(bad(format!(
                "the entry for {host} must be an https URL (events carry consent links); http is allowed only for 127.0.0.1/localhost"
            )))
        }
    }
    let format = format.unwrap_or_else(|| {
        if host == "hooks.slack.com" {
            WebhookFormat::Slack
        } else if host.ends_with(".webhook.office.com") || host.ends_with(".api.powerplatform.com")
        {
            // Not *.logic.azure.com: Teams Workflows there share the host with every
            // Logic App HTTP trigger, which wants the JSON event (`?format=teams` says otherwise).
            WebhookFormat::Teams
        } else {
            WebhookFormat::Json
        }
    });
    Ok(WebhookReceiver {
        id: receiver_id(url),
        url: Secret::new(url),
        format,
        host,
        secret: None,
    })
}

impl EventSettings {
    /// Reads the event settings; the first problem found is the error.
    pub(super) fn load(env: &Env<'_>) -> Result<Self, ConfigError> {
        let entries: Vec<String> = env
            .get("BROKER_WEBHOOK_URL")
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let single = env.get("BROKER_WEBHOOK_SECRET").map(Secret::new);
        let per = secrets_per_receiver(env, single.is_some(), entries.len())?;
        let receivers = receivers(&entries, per.as_deref(), single.as_ref())?;
        if single.as_ref().is_some_and(|s| s.expose().len() < 16) {
            return Err(short_secret("BROKER_WEBHOOK_SECRET"));
        }
        check_json_secrets(&receivers, per.is_some())?;
        let retry = env.seconds("BROKER_WEBHOOK_RETRY_SECS", 10, 1..=3600)?;
        let failing = env.seconds("BROKER_REFRESH_FAILING_SECS", 21_600, 1..=2_592_000)?;
        Ok(Self {
            receivers,
            retry: std::time::Duration::from_secs(retry),
            refresh_failing_after: super::seconds(failing),
        })
    }
}

/// BROKER_WEBHOOK_SECRETS: one secret per BROKER_WEBHOOK_URL entry, same order,
/// comma-separated; an entry may be empty for a Teams or Slack receiver.
fn secrets_per_receiver(
    env: &Env<'_>,
    single: bool,
    entries: usize,
) -> Result<Option<Vec<String>>, ConfigError> {
    let per: Option<Vec<String>> = env
        .get("BROKER_WEBHOOK_SECRETS")
        .map(|list| list.split(',').map(|s| s.trim().to_owned()).collect());
    if per.is_some() && single {
        return Err(ConfigError::setting(
            "BROKER_WEBHOOK_SECRETS",
            "is set together with BROKER_WEBHOOK_SECRET: set one of them (BROKER_WEBHOOK_SECRETS gives each receiver its own)",
        ));
    }
    if let Some(per) = &per {
        if per.len() != entries {
            return Err(ConfigError::setting(
                "BROKER_WEBHOOK_SECRETS",
                format!(
                    "has {} entries and BROKER_WEBHOOK_URL {}: give one secret per receiver, in the same order (empty for a Teams or Slack receiver)",
                    per.len(),
                    entries
                ),
            ));
        }
    }
    Ok(per)
}

/// A webhook secret that is too short, in the setting `name`.
fn short_secret(name: &'static str) -> ConfigError {
    ConfigError::setting(
        name,
        "each secret must be at least 16 characters; generate one with openssl rand -hex 32",
    )
}

/// The receivers of `entries`, each with its secret (its own from `per`, or
/// the `single` one for a JSON receiver); a repeated receiver is kept once.
fn receivers(
    entries: &[String],
    per: Option<&[String]>,
    single: Option<&Secret>,
) -> Result<Vec<WebhookReceiver>, ConfigError> {
    let mut receivers: Vec<WebhookReceiver> = Vec::new();
    for (n, raw) in entries.iter().enumerate() {
        let mut r = receiver(raw)?;
        r.secret = match (per, single) {
            (Some(per), _) => Some(per[n].clone())
                .filter(|s| !s.is_empty())
                .map(Secret::new),
            (None, Some(s)) if r.format == WebhookFormat::Json => Some(s.clone()),
            _ => None,
        };
        if r.secret.as_ref().is_some_and(|s| s.expose().len() < 16) {
            return Err(short_secret(if per.is_some() {
                "BROKER_WEBHOOK_SECRETS"
            } else {
                "BROKER_WEBHOOK_SECRET"
            }));
        }
        if !receivers.iter().any(|x| x.id == r.id) {
            receivers.push(r);
        }
    }
    Ok(receivers)
}

/// Every JSON receiver has a secret, and one nobody else has.
fn check_json_secrets(receivers: &[WebhookReceiver], per: bool) -> Result<(), ConfigError> {
    if let Some(r) = receivers
        .iter()
        .find(|r| r.format == WebhookFormat::Json && r.secret.is_none())
    {
        return Err(ConfigError::setting(
            if per { "BROKER_WEBHOOK_SECRETS" } else { "BROKER_WEBHOOK_SECRET" },
            format!("is required for the JSON receiver on {}: every delivery to it is signed (X-Broker-Signature). Generate one with openssl rand -hex 32 and give it to the receiver", r.host),
        ));
    }
    let json: Vec<&WebhookReceiver> = receivers
        .iter()
        .filter(|r| r.format == WebhookFormat::Json)
        .collect();
    if !per && json.len() > 1 {
        return Err(ConfigError::setting(
            "BROKER_WEBHOOK_SECRET",
            "signs for one JSON receiver only: with one secret for several, each receiver could sign events for the others. Give each its own in BROKER_WEBHOOK_SECRETS (one per BROKER_WEBHOOK_URL entry, same order)",
        ));
    }
    for (i, a) in json.iter().enumerate() {
        if json[i + 1..]
            .iter()
            .any(|b| a.secret.as_ref().map(Secret::expose) == b.secret.as_ref().map(Secret::expose))
        {
            return Err(ConfigError::setting(
                "BROKER_WEBHOOK_SECRETS",
                "gives two JSON receivers the same secret: each could sign events for the other; give each its own",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<EventSettings, ConfigError> {
        let get = crate::config::tests::env(pairs);
        EventSettings::load(&Env { get: &get })
    }

    #[test]
    fn each_json_receiver_has_its_own_secret() {
        let two = "https://a.example/h,https://b.example/h";
        // One secret for two JSON receivers: each could sign for the other.
        let err = load(&[
            ("BROKER_WEBHOOK_URL", two),
            ("BROKER_WEBHOOK_SECRET", "0123456789abcdef"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("BROKER_WEBHOOK_SECRETS"), "{err}");
        assert!(!err.contains("0123456789abcdef"), "{err}");
        for (secrets, ok) in [
            ("0123456789abcdef,fedcba9876543210", true),
            ("0123456789abcdef,0123456789abcdef", false),
            ("0123456789abcdef", false),
            ("0123456789abcdef,", false),
            ("0123456789abcdef,short", false),
        ] {
            let r = load(&[
                ("BROKER_WEBHOOK_URL", two),
                ("BROKER_WEBHOOK_SECRETS", secrets),
            ]);
            assert_eq!(r.is_ok(), ok, "{secrets}: {:?}", r.err());
        }
        let s = load(&[
            ("BROKER_WEBHOOK_URL", two),
            (
                "BROKER_WEBHOOK_SECRETS",
                "0123456789abcdef,fedcba9876543210",
            ),
        ])
        .unwrap();
        assert_eq!(
            s.receivers[1].secret.as_ref().unwrap().expose(),
            "fedcba9876543210"
        );
        // One JSON receiver and a Slack one: the single secret signs the JSON one only.
        let s = load(&[
            (
                "BROKER_WEBHOOK_URL",
                "https://a.example/h,https://hooks.slack.com/services/T/B/x",
            ),
            ("BROKER_WEBHOOK_SECRET", "0123456789abcdef"),
        ])
        .unwrap();
        assert!(s.receivers[0].secret.is_some() && s.receivers[1].secret.is_none());
    }

    #[test]
    fn receivers_are_recognised_by_suffix_or_host() {
        let s = load(&[
            (
                "BROKER_WEBHOOK_URL",
                "https://example.com/hook, https://hooks.slack.com/services/T/B/x ,https://prod-1.westeurope.logic.azure.com/workflows/abc?api-version=2016-06-01&sig=s&format=teams,https://prod-2.westeurope.logic.azure.com/workflows/def?sig=s,https://x.webhook.office.com/webhookb2/abc,https://chat.example.com/in?format=slack,http://127.0.0.1:9/x&format=teams",
            ),
            (
                "BROKER_WEBHOOK_SECRETS",
                "0123456789abcdef,,,fedcba9876543210,,,",
            ),
        ])
        .unwrap();
        let formats: Vec<_> = s.receivers.iter().map(|r| r.format).collect();
        assert_eq!(
            formats,
            [
                WebhookFormat::Json,
                WebhookFormat::Slack,
                WebhookFormat::Teams,
                WebhookFormat::Json,
                WebhookFormat::Teams,
                WebhookFormat::Slack,
                WebhookFormat::Teams
            ]
        );
        assert_eq!(
            s.receivers[2].url.expose(),
            "https://prod-1.westeurope.logic.azure.com/workflows/abc?api-version=2016-06-01&sig=s"
        );
        assert_eq!(s.receivers[5].url.expose(), "https://chat.example.com/in");
        assert_eq!(s.receivers[6].url.expose(), "http://127.0.0.1:9/x");
        assert_eq!(s.retry.as_secs(), 10);
        assert_eq!(s.refresh_failing_after, time::Duration::hours(6));
    }

    #[test]
    fn a_json_receiver_needs_a_secret_and_https() {
        let err = load(&[("BROKER_WEBHOOK_URL", "https://example.com/hook")]).unwrap_err();
        assert!(
            err.to_string().starts_with("BROKER_WEBHOOK_SECRET"),
            "{err}"
        );
        // Chat receivers do not verify signatures: no secret needed.
        assert!(load(&[("BROKER_WEBHOOK_URL", "https://hooks.slack.com/services/x")]).is_ok());
        let err = load(&[
            ("BROKER_WEBHOOK_URL", "http://example.com/hook"),
            ("BROKER_WEBHOOK_SECRET", "0123456789abcdef"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("https"), "{err}");
        let err = load(&[
            ("BROKER_WEBHOOK_URL", "https://example.com/hook"),
            ("BROKER_WEBHOOK_SECRET", "short"),
        ])
        .unwrap_err();
        assert!(
            !err.to_string().contains("short"),
            "never echoes the secret: {err}"
        );
    }
}
