//! A vendor simulator, in process (actix-web on its own thread, stopped on drop): one server
//! playing many vendors at once, each under its own path prefix (`/<vendor>/token`, `/refresh`,
//! `/revoke`, `/meta`) and each with the documented behaviour of one template: how the client
//! must authenticate and encode its requests, how lifetimes are announced (`expires_in`,
//! milliseconds, an ISO 8601 `expires_at`, none at all), whether refresh tokens are issued and
//! rotated (a rotated-away token gets `invalid_grant`, as real rotating vendors answer), where
//! refreshes go, renewal by exchange, the token-response fields kept as metadata, and a
//! post-consent metadata document. It checks every request against that behaviour and answers
//! `invalid_client` / `invalid_request` when the broker gets it wrong, so a test passes only if
//! the broker spoke to the vendor as its template says. Every request is recorded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

/// How a vendor announces an access token's lifetime.
#[derive(Clone, Debug, PartialEq)]
pub enum Lifetime {
    /// `expires_in` in seconds.
    ExpiresIn(i64),
    /// `expires_in` in milliseconds (this many seconds, times 1000).
    ExpiresInMs(i64),
    /// `expires_at` as an ISO 8601 instant this many seconds ahead (Square).
    ExpiresAtIso(i64),
    /// `expires_at` as epoch seconds this many seconds ahead.
    ExpiresAtEpoch(i64),
    /// No lifetime at all (the token does not expire).
    Never,
    /// `expires_in: 0` (Mailchimp: the token does not expire).
    Zero,
}

/// One simulated vendor.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// `basic` or `post`: how the client must authenticate.
    pub client_auth: String,
    /// `form` or `json`: how token requests must be encoded.
    pub token_body: String,
    pub client_id: String,
    pub client_secret: String,
    pub lifetime: Lifetime,
    /// Refresh tokens are issued at consent.
    pub refresh_tokens: bool,
    /// Every refresh returns a new refresh token and invalidates the old one.
    pub rotates: bool,
    /// Refreshes must arrive at `/refresh` rather than `/token`.
    pub refresh_path: bool,
    /// Parameters every refresh must carry.
    pub refresh_params: Vec<(String, String)>,
    /// Renewal by exchange: grant type, token parameter, GET or not.
    pub exchange: Option<(String, String, bool)>,
    /// Extra fields in every token response (`field` -> `value-of-field`).
    pub token_fields: Vec<String>,
    /// The JSON served at `/meta` to the current access token, and the auth scheme it expects.
    pub meta: Option<(Value, String)>,
    /// Errors as Graph-API objects (`{"error": {"message", "type", "code"}}`).
    pub graph_errors: bool,
    /// How long a refresh or exchange takes to answer.
    pub delay: std::time::Duration,
}

impl Behaviour {
    /// An RFC 6749 vendor: Basic auth, form bodies, one-hour tokens, rotating refresh tokens.
    pub fn standard() -> Behaviour {
        Behaviour {
            client_auth: "basic".into(),
            token_body: "form".into(),
            client_id: "client".into(),
            client_secret: "secret".into(),
            lifetime: Lifetime::ExpiresIn(3600),
            refresh_tokens: true,
            rotates: true,
            refresh_path: false,
            refresh_params: vec![],
            exchange: None,
            token_fields: vec![],
            meta: None,
            graph_errors: false,
            delay: std::time::Duration::ZERO,
        }
    }
}

/// One request a vendor received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `code`, `refresh`, `exchange`, `revoke`, `meta`, or `rejected`.
    pub kind: String,
    /// `/token`, `/refresh`, … (without the vendor prefix).
    pub path: String,
    pub method: String,
    /// The request's fields without secrets (code, verifier, client secret, tokens).
    pub fields: Vec<(String, String)>,
    /// The token presented (refresh token, exchanged or revoked token, or bearer), if any.
    pub token: Option<String>,
    /// Why it was refused, for `rejected`.
    pub problem: Option<String>,
}

#[derive(Default)]
struct VendorState {
    behaviour: Option<Behaviour>,
    n: u32,
    /// Refresh tokens that still work.
    live_refresh: Vec<String>,
    /// The newest access token.
    access: Option<String>,
    seen: Vec<Seen>,
    /// Answer the next `/meta` with this (status, content type, body, location).
    meta_override: Option<(u16, String, String, Option<String>)>,
}

#[derive(Default)]
struct State {
    vendors: Mutex<BTreeMap<String, VendorState>>,
}

pub struct VendorSim {
    pub base: String,
    state: Arc<State>,
    handle: actix_web::dev::ServerHandle,
}

impl VendorSim {
    pub fn start() -> VendorSim {
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        let (port, handle) = crate::util::serve_on_loopback(2, move |cfg| {
            cfg.app_data(web::Data::from(Arc::clone(&shared)))
                .app_data(web::PayloadConfig::new(1 << 20))
                .route("/{vendor}/{endpoint}", web::to(handle));
        });
        VendorSim {
            base: format!("http://127.0.0.1:{port}"),
            state,
            handle,
        }
    }

    /// Plays `vendor` with `behaviour` from now on.
    pub fn add(&self, vendor: &str, behaviour: Behaviour) {
        self.state.vendors.lock().unwrap().insert(
            vendor.into(),
            VendorState {
                behaviour: Some(behaviour),
                ..VendorState::default()
            },
        );
    }

    /// `<base>/<vendor>/<endpoint>`.
    pub fn url(&self, vendor: &str, endpoint: &str) -> String {
        format!("{}/{vendor}/{endpoint}", self.base)
    }

    /// Everything `vendor` received, in order.
    pub fn seen(&self, vendor: &str) -> Vec<Seen> {
        self.state
            .vendors
            .lock()
            .unwrap()
            .get(vendor)
            .map(|v| v.seen.clone())
            .unwrap_or_default()
    }

    /// The requests of one kind.
    pub fn seen_of(&self, vendor: &str, kind: &str) -> Vec<Seen> {
        self.seen(vendor)
            .into_iter()
            .filter(|s| s.kind == kind)
            .collect()
    }

    /// The next `/meta` answer of `vendor`, instead of its document.
    pub fn override_meta(
        &self,
        vendor: &str,
        status: u16,
        content_type: &str,
        body: String,
        location: Option<String>,
    ) {
        if let Some(v) = self.state.vendors.lock().unwrap().get_mut(vendor) {
            v.meta_override = Some((status, content_type.into(), body, location));
        }
    }

    /// Makes `token` a working refresh token of `vendor` (a grant from before this run).
    pub fn accept_refresh_token(&self, vendor: &str, token: &str) {
        if let Some(v) = self.state.vendors.lock().unwrap().get_mut(vendor) {
            v.live_refresh.push(token.into());
        }
    }

    /// Kills every refresh token of `vendor` (the vendor ended the grant).
    pub fn end_grants(&self, vendor: &str) {
        if let Some(v) = self.state.vendors.lock().unwrap().get_mut(vendor) {
            v.live_refresh.clear();
            v.access = None;
        }
    }
}

impl Drop for VendorSim {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

fn error(b: &Behaviour, status: u16, code: &str, description: &str) -> HttpResponse {
    let body = if b.graph_errors {
        json!({"error": {"message": description, "type": code, "code": 190}})
    } else {
        json!({"error": code, "error_description": description})
    };
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).json(body)
}

async fn handle(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<State>,
    body: web::Bytes,
) -> HttpResponse {
    let (vendor, endpoint) = path.into_inner();
    let (resp, delay) = answer(&req, &vendor, &endpoint, &state, &body);
    if !delay.is_zero() {
        actix_web::rt::time::sleep(delay).await;
    }
    resp
}

/// The answer, and how long to wait before giving it (a renewal's delay).
fn answer(
    req: &HttpRequest,
    vendor: &str,
    endpoint: &str,
    state: &State,
    body: &[u8],
) -> (HttpResponse, std::time::Duration) {
    let none = std::time::Duration::ZERO;
    let vendor = vendor.to_owned();
    let endpoint = endpoint.to_owned();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let content_type = header("content-type");
    let is_json = content_type.starts_with("application/json");
    let fields: Vec<(String, String)> = if req.method() == actix_web::http::Method::GET {
        url::form_urlencoded::parse(req.query_string().as_bytes())
            .into_owned()
            .collect()
    } else if is_json {
        serde_json::from_slice::<Map<String, Value>>(body)
            .map(|m| {
                m.into_iter()
                    .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        url::form_urlencoded::parse(body).into_owned().collect()
    };
    let field = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut vendors = state.vendors.lock().unwrap();
    let Some(v) = vendors.get_mut(&vendor) else {
        return (HttpResponse::NotFound().finish(), none);
    };
    let b = v.behaviour.clone().expect("a behaviour");
    let method = req.method().to_string();
    let mut seen = Seen {
        kind: String::new(),
        path: format!("/{endpoint}"),
        method: method.clone(),
        fields: vec![],
        token: None,
        problem: None,
    };
    let reject = |v: &mut VendorState, mut seen: Seen, problem: String| {
        seen.kind = "rejected".into();
        seen.problem = Some(problem);
        v.seen.push(seen);
    };

    if endpoint == "meta" {
        let auth = header("authorization");
        seen.kind = "meta".into();
        seen.token = auth.split_once(' ').map(|(_, t)| t.to_owned());
        v.seen.push(seen);
        if let Some((status, ct, body, location)) = v.meta_override.take() {
            let mut r = HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
            r.content_type(ct);
            if let Some(l) = location {
                r.insert_header(("Location", l));
            }
            return (r.body(body), none);
        }
        let Some((doc, scheme)) = &b.meta else {
            return (HttpResponse::NotFound().finish(), none);
        };
        let expected = format!("{scheme} {}", v.access.clone().unwrap_or_default());
        if v.access.is_none() || auth != expected {
            return (HttpResponse::Unauthorized().finish(), none);
        }
        return (HttpResponse::Ok().json(doc), none);
    }

    // Client authentication, as the template says.
    let basic = header("authorization");
    let auth_ok = match b.client_auth.as_str() {
        "basic" => {
            use base64::Engine;
            let want = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", b.client_id, b.client_secret));
            basic == format!("Basic {want}") && field("client_secret").is_none()
        }
        _ => {
            field("client_id").as_deref() == Some(b.client_id.as_str())
                && field("client_secret").as_deref() == Some(b.client_secret.as_str())
                && basic.is_empty()
        }
    };
    let token = field("token")
        .or_else(|| field("refresh_token"))
        .or_else(|| b.exchange.as_ref().and_then(|(_, param, _)| field(param)));
    seen.token = token.clone();
    let mut kept = fields.clone();
    kept.retain(|(k, _)| {
        !matches!(
            k.as_str(),
            "code" | "code_verifier" | "client_secret" | "refresh_token" | "token"
        ) && !b.exchange.as_ref().is_some_and(|(_, p, _)| p == k)
    });
    seen.fields = kept;
    if !auth_ok {
        reject(v, seen, format!("client auth is not {}", b.client_auth));
        return (
            error(&b, 401, "invalid_client", "client authentication failed"),
            none,
        );
    }

    if endpoint == "revoke" {
        seen.kind = "revoke".into();
        if let Some(t) = &token {
            v.live_refresh.retain(|r| r != t);
            if v.access.as_ref() == Some(t) {
                v.access = None;
            }
        }
        v.seen.push(seen);
        return (HttpResponse::Ok().finish(), none);
    }

    // The body encoding applies to POSTed token requests.
    if method == "POST" {
        let json_wanted = b.token_body == "json";
        if json_wanted != is_json {
            reject(v, seen, format!("body is not {}", b.token_body));
            return (
                error(&b, 400, "invalid_request", "unexpected body encoding"),
                none,
            );
        }
    }
    let grant = field("grant_type").unwrap_or_default();
    let kind = match grant.as_str() {
        "authorization_code" => "code",
        "refresh_token" => "refresh",
        g if b.exchange.as_ref().is_some_and(|(gt, _, _)| gt == g) => "exchange",
        _ => {
            reject(v, seen, format!("grant_type {grant:?}"));
            return (
                error(&b, 400, "unsupported_grant_type", "unknown grant type"),
                none,
            );
        }
    };
    seen.kind = kind.into();
    let path_ok = match kind {
        "refresh" => (endpoint == "refresh") == b.refresh_path,
        "exchange" => endpoint == "token" && (method == "GET") == b.exchange.as_ref().unwrap().2,
        _ => endpoint == "token" && method == "POST",
    };
    if !path_ok {
        let problem = format!("{kind} at {method} /{endpoint}");
        reject(v, seen, problem);
        return (error(&b, 400, "invalid_request", "wrong endpoint"), none);
    }
    match kind {
        "refresh" => {
            let t = token.clone().unwrap_or_default();
            if !v.live_refresh.contains(&t) {
                v.seen.push(seen);
                return (
                    error(&b, 400, "invalid_grant", "refresh token is invalid"),
                    none,
                );
            }
            for (k, want) in &b.refresh_params {
                if field(k).as_deref() != Some(want.as_str()) {
                    let problem = format!("refresh without {k}={want}");
                    reject(v, seen, problem);
                    return (
                        error(&b, 400, "invalid_request", "missing refresh parameter"),
                        none,
                    );
                }
            }
        }
        "exchange" if token.is_none() || token != v.access => {
            v.seen.push(seen);
            return (
                error(&b, 400, "OAuthException", "Session has expired"),
                none,
            );
        }
        _ => {}
    }
    v.seen.push(seen);
    v.n += 1;
    let n = v.n;
    let access = format!("{vendor}-at-{n}");
    let mut resp = json!({"access_token": access, "token_type": "bearer"});
    v.access = Some(access);
    let issue_refresh = match kind {
        "code" => b.refresh_tokens,
        "refresh" => b.rotates,
        _ => false,
    };
    if issue_refresh {
        let rt = format!("{vendor}-rt-{n}");
        if kind == "refresh" {
            let old = token.unwrap_or_default();
            v.live_refresh.retain(|r| *r != old);
        }
        v.live_refresh.push(rt.clone());
        resp["refresh_token"] = json!(rt);
    }
    let now = time::OffsetDateTime::now_utc();
    match &b.lifetime {
        Lifetime::ExpiresIn(s) => resp["expires_in"] = json!(s),
        Lifetime::ExpiresInMs(s) => resp["expires_in"] = json!(s * 1000),
        Lifetime::ExpiresAtIso(s) => {
            let at = now + time::Duration::seconds(*s);
            resp["expires_at"] = json!(at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap());
        }
        Lifetime::ExpiresAtEpoch(s) => resp["expires_at"] = json!(now.unix_timestamp() + s),
        Lifetime::Never => {}
        Lifetime::Zero => resp["expires_in"] = json!(0),
    }
    for f in &b.token_fields {
        resp[f] = json!(format!("value-of-{f}"));
    }
    (HttpResponse::Ok().json(resp), b.delay)
}

/// A JSON document in which each pointer finds `value-of-<name>` (objects, and arrays for
/// numeric segments), for `post_consent` metadata.
pub fn document_for(pointers: &[(String, String)]) -> Value {
    let mut doc = Value::Null;
    for (name, pointer) in pointers {
        let mut at = &mut doc;
        for seg in pointer.split('/').skip(1) {
            if let Ok(i) = seg.parse::<usize>() {
                if !at.is_array() {
                    *at = json!([]);
                }
                let a = at.as_array_mut().unwrap();
                while a.len() <= i {
                    a.push(Value::Null);
                }
                at = &mut a[i];
            } else {
                if !at.is_object() {
                    *at = json!({});
                }
                at = at
                    .as_object_mut()
                    .unwrap()
                    .entry(seg.to_owned())
                    .or_insert(Value::Null);
            }
        }
        *at = json!(format!("value-of-{name}"));
    }
    doc
}
