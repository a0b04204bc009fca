//! A small vendor API for the proxy's tests, in process (an actix-web server on its own thread,
//! stopped on drop). No real component answers on demand with a 401 once, a 429 once or a 100 MiB
//! body, so this is a fake; but its bearer tokens are checked at oidc-provider (its `__introspect`
//! route: the token must be live there), so only a token the broker really holds opens it.
//!
//! Routes (under any prefix the test gives as the integration's `api_base_url`, e.g. `/v1`):
//! - `GET …/items?page=N` (1..=3): `{"page": N, "items": [...], "next": "<abs url>",
//!   "@odata.nextLink": "<abs url>", "escaped": "<abs url with \/>"}` and a `Link: <abs>; rel="next"`
//!   header; the last page has `null` links and no header;
//! - `… /echo` (any method): what arrived: method, path, query, headers, body (as text);
//! - `GET …/redirect`: 302 to `…/items?page=1` (absolute) with a `Set-Cookie`;
//! - `GET …/large?bytes=N`: N bytes streamed in 64 KiB chunks (`&length=1` adds a Content-Length,
//!   `&ms=M` answers after M ms);
//! - `GET …/slow?ms=N`: answers after N ms.
//! - `GET …/stall?ms=N`: a JSON answer whose body stops after its first bytes for N ms.
//!
//! Every request is recorded (method, path and query, headers, body length); [`TestApi::script`]
//! makes the next requests answer 401 or 429/503 with `Retry-After` once each.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use serde_json::{json, Value};

/// One scripted answer, taken by the next authenticated request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// 401 `invalid_token`, whatever the token.
    Unauthorized,
    /// This status (429 or 503) with `Retry-After: secs`.
    RetryAfter { status: u16, secs: u64 },
}

/// What one request brought.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    introspect: Option<String>,
    base: Mutex<String>,
    faults: Mutex<VecDeque<Fault>>,
    seen: Mutex<Vec<Seen>>,
}

pub struct TestApi {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    state: Arc<State>,
    handle: actix_web::dev::ServerHandle,
}

impl TestApi {
    /// Checks bearer tokens at `issuer`'s `__introspect` (oidc-provider); `None`: accepts any
    /// request (the "other host", which only counts what reaches it).
    pub fn start(issuer: Option<&str>) -> TestApi {
        let state = Arc::new(State {
            introspect: issuer.map(|i| format!("{i}/__introspect")),
            ..State::default()
        });
        let shared = Arc::clone(&state);
        let http = reqwest::Client::new();
        let (port, handle) = crate::util::serve_on_loopback(2, move |cfg| {
            cfg.app_data(web::Data::from(Arc::clone(&shared)))
                .app_data(web::Data::new(http.clone()))
                .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
                .default_service(web::to(handle));
        });
        let base = format!("http://127.0.0.1:{port}");
        *state.base.lock().unwrap() = base.clone();
        TestApi {
            base,
            state,
            handle,
        }
    }

    /// Faults for the next requests, in order.
    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.faults.lock().unwrap().extend(faults);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn requests(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    pub fn clear(&self) {
        self.state.seen.lock().unwrap().clear();
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

fn query(req: &HttpRequest, name: &str) -> Option<String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn handle(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<State>,
    http: web::Data<reqwest::Client>,
) -> HttpResponse {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    state.seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path_and_query: path_and_query.clone(),
        headers: headers.clone(),
        body_len: body.len(),
    });
    if let Some(url) = &state.introspect {
        let token = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        let active = !token.is_empty() && introspect(&http, url, &token).await;
        if !active {
            return HttpResponse::Unauthorized()
                .insert_header(("WWW-Authenticate", "Bearer error=\"invalid_token\""))
                .json(json!({"error": "invalid_token"}));
        }
    }
    let fault = state.faults.lock().unwrap().pop_front();
    match fault {
        Some(Fault::Unauthorized) => {
            return HttpResponse::Unauthorized()
                .insert_header(("WWW-Authenticate", "Bearer error=\"invalid_token\""))
                .json(json!({"error": "invalid_token", "scripted": true}))
        }
        Some(Fault::RetryAfter { status, secs }) => {
            return HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                .insert_header(("Retry-After", secs.to_string()))
                .json(json!({"error": "slow_down"}))
        }
        None => {}
    }
    let base = state.base.lock().unwrap().clone();
    let path = req.path();
    let prefix = path
        .rfind('/')
        .map(|at| &path[..at])
        .unwrap_or_default()
        .to_owned();
    let last = path.rsplit('/').next().unwrap_or_default();
    match last {
        "items" => {
            let page: u32 = query(&req, "page")
                .and_then(|p| p.parse().ok())
                .unwrap_or(1);
            let next = (page < 3).then(|| format!("{base}{prefix}/items?page={}", page + 1));
            let v = json!({
                "page": page,
                "items": [format!("item-{page}-a"), format!("item-{page}-b")],
                "next": next,
                "@odata.nextLink": next,
                "self": format!("{base}{prefix}/items?page={page}"),
                "elsewhere": "https://elsewhere.example/v1/items",
            });
            let mut text = v.to_string();
            // JSON's optional `\/` escaping, as PHP and some Java encoders write it.
            let escaped = next
                .as_ref()
                .map(|n| format!("\"{}\"", n.replace('/', "\\/")))
                .unwrap_or_else(|| "null".into());
            text.insert_str(text.len() - 1, &format!(",\"escaped\":{escaped}"));
            let mut r = HttpResponse::Ok();
            r.content_type("application/json");
            if let Some(n) = &next {
                r.insert_header(("Link", format!("<{n}>; rel=\"next\"")));
            }
            r.body(text)
        }
        "echo" => HttpResponse::Ok()
            .insert_header(("Set-Cookie", "vendor_session=abc; Path=/"))
            .json(json!({
                "method": req.method().as_str(),
                "path_and_query": path_and_query,
                "headers": headers.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
                "body": String::from_utf8_lossy(&body),
                "body_len": body.len(),
            })),
        "redirect" => HttpResponse::Found()
            .insert_header(("Location", format!("{base}{prefix}/items?page=1")))
            .insert_header(("Set-Cookie", "vendor_session=abc; Path=/"))
            .finish(),
        "large" => {
            let total: usize = query(&req, "bytes")
                .and_then(|b| b.parse().ok())
                .unwrap_or(1024);
            if let Some(ms) = query(&req, "ms").and_then(|m| m.parse::<u64>().ok()) {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let chunk = web::Bytes::from(vec![b'x'; 64 * 1024]);
            let chunks = futures::stream::unfold(total, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let n = left.min(chunk.len());
                    Some((Ok::<_, std::io::Error>(chunk.slice(..n)), left - n))
                }
            });
            let mut r = HttpResponse::Ok();
            r.content_type("application/octet-stream");
            if query(&req, "length").is_some() {
                r.no_chunking(total as u64);
            }
            r.streaming(chunks)
        }
        "slow" => {
            let ms: u64 = query(&req, "ms").and_then(|b| b.parse().ok()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            HttpResponse::Ok().json(json!({"slept_ms": ms}))
        }
        "stall" => {
            let ms: u64 = query(&req, "ms").and_then(|b| b.parse().ok()).unwrap_or(0);
            let first = futures::stream::once(async {
                Ok::<_, std::io::Error>(web::Bytes::from_static(b"{\"items\": ["))
            });
            let rest = futures::stream::once(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, std::io::Error>(web::Bytes::from_static(b"]}"))
            });
            HttpResponse::Ok()
                .content_type("application/json")
                .streaming(first.chain(rest))
        }
        _ => HttpResponse::NotFound().json(json!({"error": "no_such_resource"})),
    }
}

async fn introspect(http: &reqwest::Client, url: &str, token: &str) -> bool {
    let Ok(resp) = http.get(url).query(&[("token", token)]).send().await else {
        return false;
    };
    resp.json::<Value>()
        .await
        .ok()
        .and_then(|v| v["active"].as_bool())
        .unwrap_or(false)
}
