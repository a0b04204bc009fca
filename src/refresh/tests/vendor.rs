//! A token endpoint for the engine's unit tests: one loopback listener that
//! answers each refresh with the next scripted reply (or the default one),
//! records what it was sent, and can hold its first answer until released.
//! Faults no real authorization server produces on cue are the point here;
//! the real one (oidc-provider) is in the API suite.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// One answer: status and JSON body.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    /// A successful refresh: `access`, a lifetime, and `refresh` when given (rotation).
    pub fn tokens(access: &str, refresh: Option<&str>, expires_in: u32) -> Self {
        let mut body = serde_json::json!({
            "access_token": access, "token_type": "Bearer", "expires_in": expires_in
        });
        if let Some(r) = refresh {
            body["refresh_token"] = r.into();
        }
        Self {
            status: 200,
            body: body.to_string(),
        }
    }

    /// An RFC 6749 §5.2 error.
    pub fn error(status: u16, code: &str) -> Self {
        Self {
            status,
            body: serde_json::json!({ "error": code }).to_string(),
        }
    }
}

#[derive(Default)]
struct State {
    script: VecDeque<Reply>,
    default: Option<Reply>,
    /// The form bodies received, in order.
    forms: Vec<Vec<(String, String)>>,
    /// While set, the next request waits for it before being answered.
    hold: Option<oneshot::Receiver<()>>,
}

#[derive(Clone)]
pub struct Vendor {
    pub token_url: String,
    state: Arc<Mutex<State>>,
}

impl Vendor {
    /// Listens on 127.0.0.1 (a free port) until the test's runtime ends.
    pub async fn start(default: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(State {
            default: Some(default),
            ..State::default()
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(answer(socket, shared.clone()));
            }
        });
        Self {
            token_url: format!("http://127.0.0.1:{port}/token"),
            state,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers the next request with `reply` (before the default).
    pub fn then(&self, reply: Reply) {
        self.lock().script.push_back(reply);
    }

    /// Holds the next request's answer until the returned sender is used (or dropped).
    pub fn hold_next(&self) -> oneshot::Sender<()> {
        let (tx, rx) = oneshot::channel();
        self.lock().hold = Some(rx);
        tx
    }

    /// How many token requests arrived.
    pub fn calls(&self) -> usize {
        self.lock().forms.len()
    }

    /// The refresh tokens presented, in order.
    pub fn refresh_tokens(&self) -> Vec<String> {
        self.forms_field("refresh_token")
    }

    /// The values of one form field over every request (absent ones skipped).
    pub fn forms_field(&self, name: &str) -> Vec<String> {
        self.lock()
            .forms
            .iter()
            .filter_map(|f| f.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
            .collect()
    }
}

async fn answer(mut socket: tokio::net::TcpStream, state: Arc<Mutex<State>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let body_at = loop {
        let Ok(n) = socket.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..body_at]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < body_at + length {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let form = form_urlencoded::parse(&buf[body_at..body_at + length])
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let (reply, hold) = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        s.forms.push(form);
        let reply = s.script.pop_front().or_else(|| s.default.clone());
        (reply, s.hold.take())
    };
    if let Some(hold) = hold {
        let _ = hold.await;
    }
    let reply = reply.unwrap_or(Reply::error(500, "server_error"));
    let text = format!(
        "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        reply.status,
        reply.body.len(),
        reply.body
    );
    let _ = socket.write_all(text.as_bytes()).await;
    let _ = socket.shutdown().await;
}
