//! A browser at the HTTP level (cookie jar, redirects followed by hand, HTML forms filled in as a
//! person would) that goes through the vendor's login and consent screens, and the small HTML form
//! parser it uses.

use url::Url;

use crate::http::{assert_no_undocumented_5xx, host_headers, Reply};
use crate::HTTP_TIMEOUT;

pub struct Browser {
    client: reqwest::Client,
    /// The login the provider's login form gets (oidc-provider's `sub` is the login).
    login: String,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Browser {
        Browser::as_user("tester")
    }

    /// A fresh browser whose person signs in at the provider as `login` (its `sub` there).
    pub fn as_user(login: &str) -> Browser {
        Browser {
            client: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .timeout(HTTP_TIMEOUT)
                .build()
                .unwrap(),
            login: login.to_owned(),
        }
    }

    /// A GET as the host would forward it (the host adds its headers; the provider ignores them).
    pub async fn get(&self, url: &str) -> Reply {
        let resp = host_headers(self.client.get(url))
            .header("Accept", "text/html")
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let reply = Reply::from(resp).await;
        assert_no_undocumented_5xx(&reply, &format!("GET {url}"));
        reply
    }

    pub async fn post_form(&self, url: &str, fields: &[(String, String)]) -> Reply {
        let resp = self
            .client
            .post(url)
            .header("Accept", "text/html")
            .form(fields)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        Reply::from(resp).await
    }

    /// Follows the provider's login and consent screens from `authorize_url` until the provider
    /// redirects to `redirect_uri`; returns that full callback URL (not yet called).
    pub async fn consent(&self, authorize_url: &str, redirect_uri: &str) -> String {
        let mut reply = self.get(authorize_url).await;
        let mut url = Url::parse(authorize_url).unwrap();
        let mut trail = vec![format!("GET {url}")];
        for _ in 0..20 {
            match reply.status {
                301 | 302 | 303 | 307 | 308 => {
                    let next = url.join(&reply.location()).unwrap();
                    if next.as_str().starts_with(redirect_uri) {
                        return next.to_string();
                    }
                    trail.push(format!("{} -> GET {next}", reply.status));
                    url = next;
                    reply = self.get(url.as_str()).await;
                }
                200 => {
                    let forms = parse_forms(&reply.body);
                    let form = forms
                        .iter()
                        .find(|f| f.method.eq_ignore_ascii_case("post"))
                        .unwrap_or_else(|| {
                            panic!(
                                "no POST form on {url}; trail {trail:#?}; page:\n{}",
                                reply.body
                            )
                        });
                    let action = url.join(&form.action).unwrap();
                    let fields: Vec<(String, String)> = form
                        .fields
                        .iter()
                        .map(|(k, v)| match k.as_str() {
                            "login" => (k.clone(), self.login.clone()),
                            _ => (k.clone(), v.clone()),
                        })
                        .collect();
                    trail.push(format!("200 -> POST {action} {fields:?}"));
                    reply = self.post_form(action.as_str(), &fields).await;
                    url = action;
                }
                _ => panic!(
                    "unexpected {} from the provider at {url}; trail {trail:#?}; body:\n{}",
                    reply.status, reply.body
                ),
            }
        }
        panic!("consent did not reach {redirect_uri}; trail {trail:#?}");
    }
}

/// An HTML form: resolved later against the page URL; `fields` already filled in as a user would.
#[derive(Debug, Clone)]
pub struct Form {
    pub action: String,
    pub method: String,
    pub fields: Vec<(String, String)>,
}

/// A small, forgiving form parser: `<form action method>` and its `<input>`s (hidden ones as they
/// are, text and password filled with dummy credentials: the dev interactions accept any login).
pub fn parse_forms(html: &str) -> Vec<Form> {
    let lower = html.to_ascii_lowercase();
    let mut forms = Vec::new();
    let mut pos = 0;
    while let Some(start) = lower[pos..].find("<form").map(|i| i + pos) {
        let Some(tag_end) = lower[start..].find('>').map(|i| i + start) else {
            break;
        };
        let attrs = parse_attrs(&html[start + 5..tag_end]);
        let end = lower[tag_end..]
            .find("</form")
            .map(|i| i + tag_end)
            .unwrap_or(html.len());
        let inner = &html[tag_end + 1..end];
        let inner_lower = &lower[tag_end + 1..end];
        let mut fields = Vec::new();
        let mut ipos = 0;
        while let Some(istart) = inner_lower[ipos..].find("<input").map(|i| i + ipos) {
            let iend = inner_lower[istart..]
                .find('>')
                .map(|i| i + istart)
                .unwrap_or(inner.len());
            let a = parse_attrs(&inner[istart + 6..iend]);
            ipos = iend;
            let get = |k: &str| a.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let Some(name) = get("name") else { continue };
            let kind = get("type")
                .unwrap_or_else(|| "text".into())
                .to_ascii_lowercase();
            let value = get("value").unwrap_or_default();
            let value = match kind.as_str() {
                "hidden" => value,
                "password" if value.is_empty() => "any-password".into(),
                "text" | "email" if value.is_empty() => "tester".into(),
                "submit" | "button" | "checkbox" | "radio" | "image" | "reset" => continue,
                _ => value,
            };
            fields.push((name, value));
        }
        let get = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        forms.push(Form {
            action: get("action").unwrap_or_default(),
            method: get("method").unwrap_or_else(|| "get".into()),
            fields,
        });
        pos = end.max(tag_end + 1);
    }
    forms
}

fn parse_attrs(s: &str) -> Vec<(String, String)> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i].is_ascii_whitespace() || b[*i] == b'/') {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        let ns = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'/' {
            i += 1;
        }
        let name = s[ns..i].to_ascii_lowercase();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let q = b[i];
                i += 1;
                let vs = i;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                value = s[vs..i].to_owned();
                i = (i + 1).min(b.len());
            } else {
                let vs = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                value = s[vs..i].to_owned();
            }
        }
        if !name.is_empty() {
            out.push((name, html_unescape(&value)));
        }
    }
    out
}

pub fn html_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest[..rest.len().min(12)].find(';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ if entity.starts_with("#x") || entity.starts_with("#X") => {
                u32::from_str_radix(&entity[2..], 16)
                    .ok()
                    .and_then(char::from_u32)
            }
            _ if entity.starts_with('#') => entity[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}
