//! The proxy's pure rules, apart from any I/O so they can be fuzzed: which
//! request paths may reach the vendor ([`check_path`]), which headers cross
//! in either direction ([`forward_request_header`], [`forward_response_header`]),
//! and how pagination links under the vendor's API base are rewritten to the
//! proxy ([`Rewriter`]). The route itself is `routes::proxy`.

/// Why a path was refused (the `invalid_path` description).
pub type PathError = &'static str;

/// A checked request path: which of the integration's bases it goes to, and
/// the raw (still percent-encoded) path to append to that base: empty, or
/// starting with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPath {
    pub base: usize,
    pub path: String,
}

/// Bytes a path segment may hold as sent (RFC 3986 `pchar` without `@`).
fn allowed_raw(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'%'
        )
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A segment's bytes with percent-encoding undone, or `None` for a bad escape.
fn decode(seg: &str) -> Option<Vec<u8>> {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = hex(*b.get(i + 1)?)?;
            let lo = hex(*b.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Checks the raw path after `/api/proxy/{integration}/{connection}` (empty or
/// starting with `/`), for an integration with `bases` API bases. Refused:
/// `.`/`..` segments in any encoding, `%2f`/`%5c` (an encoded `/` or `\`)
/// inside a segment, backslashes, empty segments (`//`), `@`, a scheme or host
/// (`:` in the first segment, `://`), control characters and bad escapes.
/// A first segment `~N` (N ≥ 1) picks the integration's N-th extra base.
pub fn check_path(raw: &str, bases: usize) -> Result<CheckedPath, PathError> {
    if raw.is_empty() {
        return Ok(CheckedPath {
            base: 0,
            path: String::new(),
        });
    }
    let Some(tail) = raw.strip_prefix('/') else {
        return Err("the path must start with /");
    };
    if raw.len() > 4096 {
        return Err("the path is longer than 4096 bytes");
    }
    if raw.contains("://") {
        return Err("a URL (scheme and host) in the path");
    }
    let segments: Vec<&str> = tail.split('/').collect();
    let last = segments.len() - 1;
    let mut base = 0;
    let mut skip_first = false;
    for (n, seg) in segments.iter().enumerate() {
        if seg.is_empty() {
            if n == last && n > 0 {
                break; // a trailing slash
            }
            if n == 0 && last == 0 {
                break; // the path "/"
            }
            return Err("an empty path segment (//)");
        }
        if let Some(b) = seg.bytes().find(|c| !allowed_raw(*c)) {
            return Err(match b {
                b'\\' => "a backslash in the path",
                b'@' => "an @ in the path",
                _ => "a character that must be percent-encoded in the path",
            });
        }
        let Some(decoded) = decode(seg) else {
            return Err("a bad percent-escape in the path");
        };
        if decoded == b"." || decoded == b".." {
            return Err("a . or .. segment in the path");
        }
        for c in &decoded {
            match c {
                b'/' => return Err("an encoded / (%2f) inside a path segment"),
                b'\\' => return Err("an encoded \\ (%5c) inside a path segment"),
                0..=0x1f | 0x7f => return Err("a control character in the path"),
                _ => {}
            }
        }
        if n == 0 {
            if decoded.contains(&b':') {
                return Err("a scheme or host (:) in the first path segment");
            }
            if let Some(num) = seg.strip_prefix('~') {
                let k: usize = num
                    .parse()
                    .ok()
                    .filter(|k| *k >= 1 && *k < bases && num.bytes().all(|c| c.is_ascii_digit()))
                    .ok_or("~N must name one of the integration's extra API bases (1, 2, …)")?;
                base = k;
                skip_first = true;
            }
        }
    }
    let path = if skip_first {
        tail.split_once('/')
            .map(|(_, rest)| format!("/{rest}"))
            .unwrap_or_default()
    } else {
        raw.to_owned()
    };
    Ok(CheckedPath { base, path })
}

/// The query string without the Functions host's `code` parameter (a key,
/// never for the vendor); everything else exactly as sent.
pub fn filter_query(raw: &str) -> String {
    raw.split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            let name: String = form_urlencoded::parse(name.as_bytes())
                .map(|(k, _)| k.into_owned())
                .collect();
            !pair.is_empty() && !name.eq_ignore_ascii_case("code")
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// RFC 9110 §7.6.1 hop-by-hop fields (plus the historic `Keep-Alive`,
/// `Proxy-Connection`), which belong to one connection and never cross.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The field names a `Connection` header lists (also hop-by-hop).
pub fn connection_options<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    values
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether a request header (lower-case name) goes on to the vendor. Never:
/// hop-by-hop fields, `Host`, the caller's credentials (`Authorization`,
/// `x-functions-key`, `Cookie`), forwarding information (`Forwarded`,
/// `X-Forwarded-*`, the front end's `client-ip`, `X-ARR-*`, `X-Original-*`,
/// `X-WAWS-*`, `Disguised-Host`) and the Functions host's own headers; nor
/// `Content-Length`, which the broker sets from the body it sends.
pub fn forward_request_header(name: &str, connection: &[String]) -> bool {
    let n = name;
    !(HOP_BY_HOP.contains(&n)
        || connection.iter().any(|c| c == n)
        || matches!(
            n,
            "host"
                | "authorization"
                | "x-functions-key"
                | "cookie"
                | "forwarded"
                | "content-length"
                | "client-ip"
                | "x-client-ip"
                | "x-client-port"
                | "x-real-ip"
                | "disguised-host"
                | "was-default-hostname"
                | "x-site-deployment-id"
                | "x-ms-client-principal"
                | "x-ms-client-principal-id"
                | "x-ms-client-principal-name"
                | "x-ms-client-principal-idp"
                | "x-broker-base-url"
        )
        || n.starts_with("x-forwarded-")
        || n.starts_with("x-azure-")
        || n.starts_with("x-arr-")
        || n.starts_with("x-original-")
        || n.starts_with("x-waws-"))
}

/// Whether a vendor's response header goes back to the caller: not
/// hop-by-hop fields, not `Set-Cookie` (the broker is no browser session),
/// not `Content-Length` (the broker sets it from the body it sends).
pub fn forward_response_header(name: &str, connection: &[String]) -> bool {
    !(HOP_BY_HOP.contains(&name)
        || connection.iter().any(|c| c == name)
        || matches!(name, "set-cookie" | "set-cookie2" | "content-length"))
}

/// `Retry-After` as delta-seconds (RFC 9110 §10.2.3); an HTTP date is not
/// waited for (passed through).
pub fn retry_after_secs(value: &str) -> Option<u64> {
    let v = value.trim();
    if v.is_empty() || v.len() > 10 || !v.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Rewrites absolute URLs under the integration's API bases to the proxy:
/// `base[0]…` → `proxy…`, `base[k]…` → `proxy/~k…`.
pub struct Rewriter {
    /// (base, its replacement), longest base first.
    pairs: Vec<(String, String)>,
}

/// Whether `rest` (what follows a base) starts at a URL boundary: the end,
/// `/`, `?`, `#`, the string's closing quote, or JSON's escaped `\/`.
fn boundary(rest: &[u8]) -> bool {
    match rest.first() {
        None | Some(b'/' | b'?' | b'#' | b'"') => true,
        Some(b'\\') => rest.get(1) == Some(&b'/'),
        _ => false,
    }
}

impl Rewriter {
    /// `bases` resolved for the connection (no trailing `/`); `proxy` is the
    /// connection's proxy URL (no trailing `/`).
    pub fn new(bases: &[String], proxy: &str) -> Self {
        let mut pairs: Vec<(String, String)> = bases
            .iter()
            .enumerate()
            .filter(|(_, b)| !b.is_empty())
            .map(|(k, b)| {
                let to = if k == 0 {
                    proxy.to_owned()
                } else {
                    format!("{proxy}/~{k}")
                };
                (b.clone(), to)
            })
            .collect();
        pairs.sort_by_key(|(b, _)| std::cmp::Reverse(b.len()));
        Self { pairs }
    }

    /// One URL (a `Location`, a `Link` target): rewritten when under a base.
    pub fn url(&self, url: &str) -> Option<String> {
        self.pairs.iter().find_map(|(from, to)| {
            let rest = url.strip_prefix(from.as_str())?;
            boundary(rest.as_bytes()).then(|| format!("{to}{rest}"))
        })
    }

    /// A `Link` header value (RFC 8288): each `<target>` under a base rewritten.
    pub fn link_header(&self, value: &str) -> Option<String> {
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        let mut changed = false;
        while let Some(open) = rest.find('<') {
            let Some(close) = rest[open..].find('>') else {
                break;
            };
            let target = &rest[open + 1..open + close];
            out.push_str(&rest[..=open]);
            match self.url(target) {
                Some(t) => {
                    out.push_str(&t);
                    changed = true;
                }
                None => out.push_str(target),
            }
            out.push('>');
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        changed.then_some(out)
    }

    /// A JSON text: every string that starts with a base (plain or with `/`
    /// escaped as `\/`) at a URL boundary. `None` when nothing changed.
    /// Works on the bytes as sent (formatting, numbers and other strings are
    /// kept exactly); a string value that merely contains a base elsewhere is
    /// left alone.
    pub fn json(&self, body: &[u8]) -> Option<Vec<u8>> {
        let escaped: Vec<(Vec<u8>, Vec<u8>)> = self
            .pairs
            .iter()
            .map(|(f, t)| {
                (
                    f.replace('/', "\\/").into_bytes(),
                    t.replace('/', "\\/").into_bytes(),
                )
            })
            .collect();
        let mut out: Vec<u8> = Vec::new();
        let mut copied = 0;
        let mut i = 0;
        let mut in_string = false;
        while i < body.len() {
            let c = body[i];
            if in_string {
                match c {
                    b'\\' => i += 2,
                    b'"' => {
                        in_string = false;
                        i += 1;
                    }
                    _ => i += 1,
                }
                continue;
            }
            if c != b'"' {
                i += 1;
                continue;
            }
            in_string = true;
            let start = i + 1;
            let at = &body[start.min(body.len())..];
            let hit = self
                .pairs
                .iter()
                .zip(&escaped)
                .find_map(|((f, t), (ef, et))| {
                    if at.starts_with(f.as_bytes()) && boundary(&at[f.len()..]) {
                        Some((f.len(), t.as_bytes()))
                    } else if at.starts_with(ef) && boundary(&at[ef.len()..]) {
                        Some((ef.len(), et.as_slice()))
                    } else {
                        None
                    }
                });
            if let Some((len, to)) = hit {
                out.extend_from_slice(&body[copied..start]);
                out.extend_from_slice(to);
                copied = start + len;
                i = start + len;
            } else {
                i = start;
            }
        }
        if copied == 0 {
            return None;
        }
        out.extend_from_slice(&body[copied..]);
        Some(out)
    }
}

/// Whether a `Content-Type` is JSON (`application/json`, `…+json`).
pub fn is_json(content_type: &str) -> bool {
    let t = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    t == "application/json" || (t.starts_with("application/") && t.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_tricks_are_refused() {
        for bad in [
            "/..",
            "/a/../b",
            "/a/%2e%2e/b",
            "/a/%2E%2e",
            "/.%2E/x",
            "/a/./b",
            "/%2e",
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "//evil.example/x",
            "/a//b",
            "/user@evil.example",
            "/http:evil.example",
            "/https://evil.example/",
            "/a/http://evil.example",
            "/%68ttp%3a",
            "/a%zz",
            "/a%0d%0aX: y",
            "/a b",
            "/~1/x",
            "/~0/x",
            "noslash",
        ] {
            assert!(check_path(bad, 1).is_err(), "{bad:?}");
        }
        for (ok, path) in [
            ("", ""),
            ("/", "/"),
            ("/v1/items", "/v1/items"),
            ("/v1/items/", "/v1/items/"),
            ("/v1/values:batchGet", "/v1/values:batchGet"),
            ("/users/a%40b.example", "/users/a%40b.example"),
            ("/a..b/.c", "/a..b/.c"),
        ] {
            assert_eq!(check_path(ok, 1).unwrap().path, path, "{ok:?}");
        }
        assert_eq!(
            check_path("/~1/files/x", 2).unwrap(),
            CheckedPath {
                base: 1,
                path: "/files/x".into()
            }
        );
    }

    #[test]
    fn the_key_parameter_is_dropped_from_the_query() {
        assert_eq!(filter_query("a=1&code=k&b=%20"), "a=1&b=%20");
        assert_eq!(filter_query("Code=x"), "");
        assert_eq!(filter_query("codes=1"), "codes=1");
    }

    #[test]
    fn headers_are_filtered() {
        let conn = vec!["x-secret-hop".to_owned()];
        for dropped in [
            "authorization",
            "cookie",
            "x-functions-key",
            "host",
            "forwarded",
            "x-forwarded-for",
            "connection",
            "te",
            "x-secret-hop",
            "transfer-encoding",
        ] {
            assert!(!forward_request_header(dropped, &conn), "{dropped}");
        }
        for kept in ["accept", "content-type", "if-none-match", "xero-tenant-id"] {
            assert!(forward_request_header(kept, &conn), "{kept}");
        }
        assert!(!forward_response_header("set-cookie", &[]));
        assert!(forward_response_header("link", &[]));
    }

    #[test]
    fn links_under_the_base_are_rewritten() {
        let r = Rewriter::new(
            &[
                "https://api.example.com/v1".into(),
                "https://up.example.com".into(),
            ],
            "https://broker/api/proxy/i/c",
        );
        let body = br#"{"next":"https://api.example.com/v1/items?page=2","esc":"https:\/\/api.example.com\/v1\/x","other":"https://api.example.com/v10/x","text":"see https://api.example.com/v1","up":"https://up.example.com/f","evil":"https://api.example.com.evil/v1"}"#;
        let out = String::from_utf8(r.json(body).unwrap()).unwrap();
        assert!(
            out.contains(r#""next":"https://broker/api/proxy/i/c/items?page=2""#),
            "{out}"
        );
        assert!(
            out.contains(r#""esc":"https:\/\/broker\/api\/proxy\/i\/c\/x""#),
            "{out}"
        );
        assert!(
            out.contains(r#""other":"https://api.example.com/v10/x""#),
            "{out}"
        );
        assert!(
            out.contains(r#""text":"see https://api.example.com/v1""#),
            "{out}"
        );
        assert!(
            out.contains(r#""up":"https://broker/api/proxy/i/c/~1/f""#),
            "{out}"
        );
        assert!(
            out.contains(r#""evil":"https://api.example.com.evil/v1""#),
            "{out}"
        );
        assert_eq!(r.json(br#"{"a":"b"}"#), None);
        assert_eq!(
            r.link_header(
                r#"<https://api.example.com/v1/x?p=2>; rel="next", <https://else/>; rel="x""#
            )
            .unwrap(),
            r#"<https://broker/api/proxy/i/c/x?p=2>; rel="next", <https://else/>; rel="x""#
        );
    }
}
