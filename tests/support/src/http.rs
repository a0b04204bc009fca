//! HTTP as the broker's callers speak it: a [`Reply`] with its status, headers and body, the Functions
//! host's client and headers, and the timer envelope the host POSTs on every tick.

use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use crate::util::uuid_ish;
use crate::HTTP_TIMEOUT;

/// The Functions host version the fixtures pretend to be.
pub const HOST_VERSION: &str = "4.1037.0";

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub async fn from(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    pub fn location(&self) -> String {
        self.header("location")
            .unwrap_or_else(|| panic!("no Location header in {self:?}"))
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }

    /// The `error` code of a JSON error object, asserting the body is one.
    pub fn error_code(&self) -> String {
        let v = self.json();
        assert!(v.is_object(), "error body must be a JSON object: {self:?}");
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("error body has no string `error`: {self:?}"))
            .to_owned()
    }

    pub fn is_html(&self) -> bool {
        self.header("content-type")
            .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("text/html"))
    }

    pub fn is_json(&self) -> bool {
        self.header("content-type")
            .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("application/json"))
    }

    pub fn has_no_store(&self) -> bool {
        self.header("cache-control")
            .is_some_and(|cc| cc.to_ascii_lowercase().contains("no-store"))
    }
}

/// Headers the Functions host adds to every request it forwards or sends to the handler.
pub fn host_headers(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    req.header("User-Agent", format!("Azure-Functions-Host/{HOST_VERSION}"))
        .header("X-Azure-Functions-HostVersion", HOST_VERSION)
        .header("X-Azure-Functions-InvocationId", uuid_ish())
}

/// A GET as the Functions host forwards it, outside a [`TestApp`] (for brokers started by hand).
pub async fn host_get(base_url: &str, path: &str, key: Option<&str>) -> Reply {
    let url = format!("{base_url}{path}");
    let mut req = host_headers(host_client().get(&url));
    if let Some(key) = key {
        req = req.header("x-functions-key", key);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let reply = Reply::from(resp).await;
    assert_no_undocumented_5xx(&reply, &format!("GET {path}"));
    reply
}

/// The Functions host's client: no redirects followed, no cookies.
pub fn host_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(HTTP_TIMEOUT)
        .build()
        .unwrap()
}

/// The body the host POSTs to `/<timer function>` on every tick.
pub fn timer_envelope() -> Value {
    json!({
        "Data": {
            "timer": {
                "Schedule": {"AdjustForDST": true},
                "ScheduleStatus": {
                    "Last": "2026-01-01T00:00:00+00:00",
                    "Next": "2026-01-01T00:05:00+00:00",
                    "LastUpdated": "2026-01-01T00:00:00.0012345+00:00"
                },
                "IsPastDue": false
            }
        },
        "Metadata": {
            "sys": {
                "MethodName": "refresh-timer",
                "UtcNow": "2026-01-01T00:05:00.01Z",
                "RandGuid": uuid_ish()
            }
        }
    })
}

/// Asserts a status is not a 5xx, except the documented 502 and 503, and the proxy's 504
/// `upstream_timeout` (marked as the broker's own by `X-Broker-Error`).
#[track_caller]
pub fn assert_no_undocumented_5xx(reply: &Reply, what: &str) {
    let proxy_timeout = reply.status == 504
        && reply.header("x-broker-error").as_deref() == Some("true")
        && reply.body.contains("upstream_timeout");
    assert!(
        reply.status < 500 || reply.status == 502 || reply.status == 503 || proxy_timeout,
        "{what}: undocumented {}: {reply:?}",
        reply.status
    );
}
