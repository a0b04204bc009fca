//! Small utilities shared by every fixture: randomness for names and keys, free ports, where the
//! repository and the Node fixtures are, URL query helpers, and searching bytes for a secret in any
//! of its encodings.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use url::Url;

/// Non-cryptographic randomness is enough for test names, keys and invocation ids.
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&random_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn random_hex(bytes: usize) -> String {
    random_bytes(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn uuid_ish() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A free TCP port on 127.0.0.1, never handed out twice by this process.
///
/// Chosen below the kernel's ephemeral range (`ip_local_port_range`), from which
/// every outgoing connection and every port-0 bind takes its port: a port picked
/// there could be taken by some client's connection between this check and the
/// server's own bind (seen as "Address already in use" under a loaded suite).
pub fn free_port() -> u16 {
    static USED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let used = USED.get_or_init(Default::default);
    let below_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|start| *start > 12_000)
        .map(|start| (10_000u16, start - 1));
    loop {
        let port = match below_ephemeral {
            Some((lo, hi)) => lo + (random_u64() % u64::from(hi - lo)) as u16,
            None => TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("bind 127.0.0.1:0")
                .port(),
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && used.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// The repository's root directory (this crate is `tests/support`).
pub fn repo_root() -> PathBuf {
    support_dir()
        .parent()
        .and_then(Path::parent)
        .expect("tests/support is two levels below the repository root")
        .to_owned()
}

/// `tests/support`: this crate, the Node fixtures' package.json and scripts.
pub fn support_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where Azurite and oidc-provider are installed (`scripts/test` sets `BROKER_TEST_NODE_MODULES`).
pub fn node_modules() -> PathBuf {
    let dir = std::env::var_os("BROKER_TEST_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| support_dir().join("node_modules"));
    let ready = dir.join("azurite/dist/src/table/main.js").is_file()
        && dir.join("oidc-provider/package.json").is_file();
    if !ready {
        panic!(
            "Azurite/oidc-provider not found under {}: run scripts/test or scripts/bench (they install Azurite and oidc-provider)",
            dir.display()
        );
    }
    dir
}

/// Every way a secret could be spelled in stored or logged bytes: itself, hex, and base64 (both
/// alphabets) at each of the three byte alignments it can have inside a longer encoded blob (the
/// characters that mix in neighbouring bytes are dropped, so each form matches wherever the secret sits).
pub fn encodings_of(secret: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let bytes = secret.as_bytes();
    let mut out = vec![
        secret.to_owned(),
        bytes.iter().map(|b| format!("{b:02x}")).collect(),
    ];
    for shift in 0..3usize {
        let mut shifted = vec![0u8; shift];
        shifted.extend_from_slice(bytes);
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let encoded = engine.encode(&shifted);
            let start = if shift == 0 { 0 } else { 4 };
            let end = encoded.len().saturating_sub(4);
            if end > start + 16 {
                out.push(encoded[start..end].to_owned());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The value of one query parameter of `url`.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `url` with query parameter `name` replaced by `value`.
pub fn with_query_param(url: &str, name: &str, value: &str) -> String {
    let mut parsed = Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| {
            if k == name {
                (k.into_owned(), value.to_owned())
            } else {
                (k.into_owned(), v.into_owned())
            }
        })
        .collect();
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    parsed.to_string()
}

/// Recursively reads every regular file below `dir`.
pub fn read_all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn encodings_of_finds_a_secret_base64_encoded_inside_a_larger_blob() {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let secret = "tok_Zr8HqW2mXbY9pLk3VnC7sD1fGtR5uJ0e";
    for prefix in ["", "a", "ab", "abc", "{\"access_token\":\""] {
        let blob = format!("{prefix}{secret}\",\"refresh\":\"x\"}}");
        for encoded in [STANDARD.encode(&blob), URL_SAFE_NO_PAD.encode(&blob)] {
            assert!(
                encodings_of(secret).iter().any(|e| encoded.contains(e)),
                "prefix {prefix:?}: {encoded}"
            );
        }
    }
    let unrelated = STANDARD.encode("tok_something_else_entirely_0123456789");
    assert!(!encodings_of(secret).iter().any(|e| unrelated.contains(e)));
}

/// Serves an actix-web app made by `configure` (its routes and app data) on 127.0.0.1 at a free
/// port, in a thread with its own actix system: the port, and a handle that stops it. The
/// in-process fakes (vendor, Entra ID, test API) all start this way.
pub fn serve_on_loopback<F>(workers: usize, configure: F) -> (u16, actix_web::dev::ServerHandle)
where
    F: Fn(&mut actix_web::web::ServiceConfig) + Send + Clone + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = actix_web::HttpServer::new(move || {
                actix_web::App::new().configure(configure.clone())
            })
            .workers(workers)
            .bind(("127.0.0.1", 0))
            .unwrap();
            let port = server.addrs()[0].port();
            let server = server.run();
            tx.send((port, server.handle())).unwrap();
            let _ = server.await;
        })
    });
    rx.recv().unwrap()
}
