//! The platform's identity endpoints: the two protocols (2019-08-01 and the
//! older 2017-09-01), one endpoint with its secret header value (redacted in
//! `Debug`), and both read from the platform's settings.

use std::fmt;

use url::Url;

use crate::domain::Secret;

/// The two protocols of the App Service identity endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `IDENTITY_ENDPOINT` + `IDENTITY_HEADER`, api-version 2019-08-01.
    Identity2019,
    /// `MSI_ENDPOINT` + `MSI_SECRET`, api-version 2017-09-01.
    Msi2017,
}

impl Protocol {
    pub(super) fn api_version(self) -> &'static str {
        match self {
            Self::Identity2019 => "2019-08-01",
            Self::Msi2017 => "2017-09-01",
        }
    }

    pub(super) fn secret_header(self) -> &'static str {
        match self {
            Self::Identity2019 => "X-IDENTITY-HEADER",
            Self::Msi2017 => "secret",
        }
    }

    pub(super) fn client_id_parameter(self) -> &'static str {
        match self {
            Self::Identity2019 => "client_id",
            Self::Msi2017 => "clientid",
        }
    }

    pub(super) fn settings(self) -> (&'static str, &'static str) {
        match self {
            Self::Identity2019 => ("IDENTITY_ENDPOINT", "IDENTITY_HEADER"),
            Self::Msi2017 => ("MSI_ENDPOINT", "MSI_SECRET"),
        }
    }
}

/// One identity endpoint: its URL, the secret header value and the protocol.
#[derive(Clone)]
pub struct IdentityEndpoint {
    /// Boxed: keeps the settings enum that holds two of these small.
    pub(super) url: Box<Url>,
    pub(super) secret: Secret,
    pub(super) protocol: Protocol,
}

impl fmt::Debug for IdentityEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityEndpoint")
            .field("url", &self.url.as_str())
            .field("secret", &self.secret)
            .field("protocol", &self.protocol)
            .finish()
    }
}

impl IdentityEndpoint {
    pub fn new(protocol: Protocol, url: &str, secret: Secret) -> Result<Self, String> {
        let (name, _) = protocol.settings();
        let url = Url::parse(url.trim()).map_err(|e| format!("{name} is not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{name} must be an http(s) URL"));
        }
        Ok(Self {
            url: Box::new(url),
            secret,
            protocol,
        })
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn url(&self) -> &str {
        self.url.as_str()
    }
}

/// The platform's identity endpoints: the current one (2019-08-01), the older
/// one (2017-09-01), or both (the older one is then the fallback).
#[derive(Debug, Clone)]
pub struct IdentityEndpoints {
    pub current: Option<IdentityEndpoint>,
    pub legacy: Option<IdentityEndpoint>,
}

impl IdentityEndpoints {
    /// From the platform's settings `IDENTITY_ENDPOINT`, `IDENTITY_HEADER`,
    /// `MSI_ENDPOINT` and `MSI_SECRET`. At least one complete pair is needed; the
    /// error names the setting to fix.
    pub fn from_settings(
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, (&'static str, String)> {
        let value = |n: &str| get(n).filter(|v| !v.trim().is_empty());
        let pair =
            |protocol: Protocol| -> Result<Option<IdentityEndpoint>, (&'static str, String)> {
                let (endpoint, secret) = protocol.settings();
                match (value(endpoint), value(secret)) {
                    (Some(e), Some(s)) => IdentityEndpoint::new(protocol, &e, Secret::new(s))
                        .map(Some)
                        .map_err(|m| (endpoint, m.trim_start_matches(endpoint).trim().to_owned())),
                    _ => Ok(None),
                }
            };
        let found = Self {
            current: pair(Protocol::Identity2019)?,
            legacy: pair(Protocol::Msi2017)?,
        };
        if found.current.is_some() || found.legacy.is_some() {
            return Ok(found);
        }
        // Neither pair is complete: name what is missing.
        for protocol in [Protocol::Identity2019, Protocol::Msi2017] {
            let (endpoint, secret) = protocol.settings();
            if value(endpoint).is_some() {
                return Err((
                    secret,
                    format!("is not set, though {endpoint} is: both come from the platform's managed identity"),
                ));
            }
        }
        Err((
            "IDENTITY_ENDPOINT",
            "is not set (nor MSI_ENDPOINT), and storage uses the app's managed identity: enable a managed identity on the Function App (Azure then sets IDENTITY_ENDPOINT and IDENTITY_HEADER), or set BROKER_STORAGE to a connection string".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn settings_pick_the_complete_pairs() {
        let from = |pairs: &[(&str, &str)]| {
            let m: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            IdentityEndpoints::from_settings(&move |k: &str| m.get(k).cloned())
        };
        let both = from(&[
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/a"),
            ("IDENTITY_HEADER", "h"),
            ("MSI_ENDPOINT", "http://127.0.0.1:1/b"),
            ("MSI_SECRET", "s"),
        ])
        .unwrap();
        assert_eq!(both.current.unwrap().protocol(), Protocol::Identity2019);
        assert_eq!(both.legacy.unwrap().protocol(), Protocol::Msi2017);
        let legacy = from(&[
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/a"),
            ("MSI_ENDPOINT", "http://127.0.0.1:1/b"),
            ("MSI_SECRET", "s"),
        ])
        .unwrap();
        assert!(legacy.current.is_none());
        assert_eq!(legacy.legacy.unwrap().url(), "http://127.0.0.1:1/b");
        let (name, _) = from(&[("IDENTITY_ENDPOINT", "http://127.0.0.1:1/a")]).unwrap_err();
        assert_eq!(name, "IDENTITY_HEADER");
        let (name, _) = from(&[("MSI_ENDPOINT", "http://127.0.0.1:1/b")]).unwrap_err();
        assert_eq!(name, "MSI_SECRET");
        let (name, _) = from(&[]).unwrap_err();
        assert_eq!(name, "IDENTITY_ENDPOINT");
        let (name, why) = from(&[("MSI_ENDPOINT", "ftp://x/"), ("MSI_SECRET", "s")]).unwrap_err();
        assert_eq!(
            (name, why.as_str()),
            ("MSI_ENDPOINT", "must be an http(s) URL")
        );
    }
}
