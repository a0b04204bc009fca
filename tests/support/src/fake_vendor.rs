//! The fake vendor, in process (an actix-web server on its own thread, stopped on drop): a
//! scriptable token endpoint for what oidc-provider cannot do: 5xx, 429
//! with Retry-After, slow answers, non-JSON bodies, `invalid_client`, token
//! responses without a refresh token or with odd `expires_in`. It records
//! every refresh it receives and the most refreshes in flight at once.
//!
//! Refresh tokens starting with `dead-` always get `invalid_grant`; those
//! starting with `down-` always get a 500; others follow the script, then mint
//! a fresh token pair. Code exchanges follow their own script, then mint.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

/// One scripted answer to a refresh.
#[derive(Clone, Debug)]
pub enum Answer {
    /// A fresh `access_token` + `refresh_token`, `expires_in` as given (`Null` = omitted).
    Mint {
        expires_in: Value,
        with_refresh_token: bool,
    },
    /// Status, content type and raw body, with an optional `Retry-After`.
    Raw {
        status: u16,
        content_type: &'static str,
        body: String,
        retry_after: Option<u64>,
    },
    /// Sleep first, then answer.
    Slow(Duration, Box<Answer>),
    /// An OAuth error whose `error_description` echoes the request: its body and
    /// its `Authorization` header (as some vendors do).
    Echo { status: u16, error: &'static str },
    /// A 200 JSON token response of about `bytes` bytes (one huge `access_token`),
    /// streamed in chunks without a `Content-Length`.
    Chunked { bytes: usize },
}

impl Answer {
    pub fn mint() -> Answer {
        Answer::Mint {
            expires_in: json!(3600),
            with_refresh_token: true,
        }
    }
    pub fn oauth_error(status: u16, error: &str) -> Answer {
        Answer::Raw {
            status,
            content_type: "application/json",
            body: json!({"error": error, "error_description": format!("scripted {error}")})
                .to_string(),
            retry_after: None,
        }
    }
    pub fn status(status: u16) -> Answer {
        Answer::Raw {
            status,
            content_type: "text/html",
            body: "<html>oops</html>".into(),
            retry_after: None,
        }
    }
}

#[derive(Default)]
struct State {
    script: Mutex<VecDeque<Answer>>,
    code_script: Mutex<VecDeque<Answer>>,
    default: Mutex<Option<Answer>>,
    code_requests: Mutex<Vec<Vec<(String, String)>>>,
    minted: AtomicU32,
    access_token_padding: AtomicU32,
    in_flight: AtomicU32,
    max_in_flight: AtomicU32,
    refreshes: Mutex<Vec<(Instant, String)>>,
    echoed: Mutex<Vec<String>>,
    metadata: Mutex<Option<String>>,
}

pub struct FakeVendor {
    pub base: String,
    state: Arc<State>,
    handle: actix_web::dev::ServerHandle,
}

impl FakeVendor {
    pub fn start() -> FakeVendor {
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        let (port, handle) = crate::util::serve_on_loopback(2, move |cfg| {
            cfg.app_data(web::Data::from(Arc::clone(&shared)))
                .route("/token", web::post().to(token))
                .route(
                    "/.well-known/oauth-authorization-server",
                    web::get().to(metadata),
                );
        });
        FakeVendor {
            base: format!("http://127.0.0.1:{port}"),
            state,
            handle,
        }
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.base)
    }

    /// Answers for the next refreshes, in order.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state.script.lock().unwrap().extend(answers);
    }

    /// Answers for the next authorization-code exchanges, in order (then: mint).
    pub fn script_code_exchanges(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state.code_script.lock().unwrap().extend(answers);
    }

    /// The answer once the script is spent (default: mint).
    pub fn set_default(&self, answer: Answer) {
        *self.state.default.lock().unwrap() = Some(answer);
    }

    /// The form fields of each code exchange (without the code, verifier and secret),
    /// plus `(content-type)` and `(client-auth)` (`basic`, `post` or `none`).
    pub fn code_requests(&self) -> Vec<Vec<(String, String)>> {
        self.state.code_requests.lock().unwrap().clone()
    }

    /// Refresh tokens received, in arrival order.
    pub fn refresh_tokens_received(&self) -> Vec<String> {
        self.state
            .refreshes
            .lock()
            .unwrap()
            .iter()
            .map(|(_, t)| t.clone())
            .collect()
    }

    pub fn refresh_times(&self) -> Vec<Instant> {
        self.state
            .refreshes
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| *t)
            .collect()
    }

    pub fn refresh_count(&self) -> usize {
        self.state.refreshes.lock().unwrap().len()
    }

    /// What `Answer::Echo` answers echoed, in order (the raw request as the vendor saw it).
    pub fn echoed(&self) -> Vec<String> {
        self.state.echoed.lock().unwrap().clone()
    }

    /// The body served as RFC 8414 metadata at `/.well-known/oauth-authorization-server`
    /// (404 until set).
    pub fn set_metadata(&self, body: String) {
        *self.state.metadata.lock().unwrap() = Some(body);
    }

    pub fn max_in_flight(&self) -> u32 {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Forgets the refreshes received and the most in flight (the script and counters stay).
    pub fn reset(&self) {
        self.state.refreshes.lock().unwrap().clear();
        self.state.max_in_flight.store(0, Ordering::SeqCst);
    }

    /// Pads every minted access token with this many characters (a typical vendor's JWT is ~1 KB).
    pub fn pad_access_tokens(&self, len: u32) {
        self.state.access_token_padding.store(len, Ordering::SeqCst);
    }
}

impl Drop for FakeVendor {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

async fn token(
    req: actix_web::HttpRequest,
    state: web::Data<State>,
    body: web::Bytes,
) -> HttpResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    // Form-encoded per RFC 6749, or JSON (Notion).
    let form: Vec<(String, String)> =
        match serde_json::from_slice::<serde_json::Map<String, Value>>(&body) {
            Ok(m) => m
                .into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
                .collect(),
            Err(_) => url::form_urlencoded::parse(&body).into_owned().collect(),
        };
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let grant = field("grant_type").unwrap_or_default();
    let refresh_token = field("refresh_token").unwrap_or_default();
    let answer = if grant == "refresh_token" {
        state
            .refreshes
            .lock()
            .unwrap()
            .push((Instant::now(), refresh_token.clone()));
        if refresh_token.starts_with("dead-") {
            Answer::oauth_error(400, "invalid_grant")
        } else if refresh_token.starts_with("down-") {
            Answer::status(500)
        } else {
            let scripted = state.script.lock().unwrap().pop_front();
            scripted
                .or_else(|| state.default.lock().unwrap().clone())
                .unwrap_or_else(Answer::mint)
        }
    } else {
        let mut seen = form.clone();
        seen.retain(|(k, _)| k != "code" && k != "code_verifier" && k != "client_secret");
        // How it was sent, as pseudo-fields (the credentials themselves are not kept).
        seen.push(("(content-type)".into(), header("content-type")));
        let auth = header("authorization");
        seen.push((
            "(client-auth)".into(),
            if auth.starts_with("Basic ") {
                "basic".into()
            } else if form.iter().any(|(k, _)| k == "client_secret") {
                "post".into()
            } else {
                "none".into()
            },
        ));
        state.code_requests.lock().unwrap().push(seen);
        let scripted = state.code_script.lock().unwrap().pop_front();
        scripted.unwrap_or_else(Answer::mint)
    };
    let echo = format!(
        "{} authorization: {}",
        String::from_utf8_lossy(&body),
        header("authorization")
    );
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let resp = respond(&state, answer, echo).await;
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    resp
}

async fn metadata(state: web::Data<State>) -> HttpResponse {
    match state.metadata.lock().unwrap().clone() {
        Some(body) => HttpResponse::Ok()
            .content_type("application/json")
            .body(body),
        None => HttpResponse::NotFound().finish(),
    }
}

async fn respond(state: &State, answer: Answer, echo: String) -> HttpResponse {
    let mut answer = answer;
    loop {
        match answer {
            Answer::Echo { status, error } => {
                state.echoed.lock().unwrap().push(echo.clone());
                let body =
                    json!({"error": error, "error_description": format!("bad request: {echo}")});
                return HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                    .json(body);
            }
            Answer::Chunked { bytes } => {
                let chunk = web::Bytes::from(vec![b'a'; 16 * 1024]);
                let n = bytes / chunk.len();
                let body = futures::stream::iter(
                    std::iter::once(web::Bytes::from_static(b"{\"access_token\":\""))
                        .chain(std::iter::repeat(chunk).take(n))
                        .chain(std::iter::once(web::Bytes::from_static(b"\"}")))
                        .map(Ok::<_, actix_web::Error>),
                );
                return HttpResponse::Ok()
                    .content_type("application/json")
                    .streaming(body);
            }
            Answer::Slow(d, inner) => {
                actix_web::rt::time::sleep(d).await;
                answer = *inner;
            }
            Answer::Mint {
                expires_in,
                with_refresh_token,
            } => {
                let n = state.minted.fetch_add(1, Ordering::SeqCst) + 1;
                let padding = state.access_token_padding.load(Ordering::SeqCst) as usize;
                let access_token = if padding == 0 {
                    format!("at-{n}")
                } else {
                    format!("at-{n}-{}", "y".repeat(padding))
                };
                let mut body = json!({"access_token": access_token, "token_type": "Bearer"});
                if with_refresh_token {
                    body["refresh_token"] = json!(format!("rt-{n}"));
                }
                if !expires_in.is_null() {
                    body["expires_in"] = expires_in;
                }
                return HttpResponse::Ok().json(body);
            }
            Answer::Raw {
                status,
                content_type,
                body,
                retry_after,
            } => {
                let mut b =
                    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
                b.content_type(content_type);
                if let Some(s) = retry_after {
                    b.insert_header(("Retry-After", s.to_string()));
                }
                return b.body(body);
            }
        }
    }
}
