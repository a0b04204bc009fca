//! Checks of one integration's own JSON object before it is merged and read,
//! so every problem is found at once and named by its path
//! (`integrations.acme.scopes: expected an array of strings`): field types,
//! unknown and missing fields, settings written the shell's way (`${VAR}`,
//! `$VAR`) or left unterminated (`%VAR`), and every `%NAME%` whose setting is
//! not set (collected, so that one message lists all of them).

use serde_json::{Map, Value};

use super::error::ConfigError;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Bool,
    Whole,
    Strings,
    StringMap,
    /// Checked by the reader itself (a nested object or several shapes).
    Any,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::Str => "expected a string",
            Kind::Bool => "expected true or false",
            Kind::Whole => "expected a whole number",
            Kind::Strings => "expected an array of strings",
            Kind::StringMap => "expected an object whose values are strings",
            Kind::Any => "",
        }
    }

    fn accepts(self, v: &Value) -> bool {
        match self {
            Kind::Str => v.is_string(),
            Kind::Bool => v.is_boolean(),
            Kind::Whole => v.as_u64().is_some_and(|n| n <= u64::from(u32::MAX)),
            Kind::Strings => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
            Kind::StringMap => v
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_string)),
            Kind::Any => true,
        }
    }
}

/// Every field an integration may set, with its JSON type.
const FIELDS: &[(&str, Kind)] = &[
    ("provider", Kind::Str),
    ("placeholders", Kind::StringMap),
    ("issuer", Kind::Str),
    ("require_iss", Kind::Bool),
    ("authorization_url", Kind::Str),
    ("token_url", Kind::Str),
    ("revocation_url", Kind::Str),
    ("client_id", Kind::Str),
    ("client_secret", Kind::Str),
    ("scopes", Kind::Strings),
    ("scope_separator", Kind::Str),
    ("client_auth", Kind::Str),
    ("token_body", Kind::Str),
    ("pkce", Kind::Bool),
    ("authorization_params", Kind::StringMap),
    ("token_params", Kind::StringMap),
    ("refresh_margin_secs", Kind::Whole),
    ("keepalive_hours", Kind::Whole),
    ("callback_metadata", Kind::Strings),
    ("token_metadata", Kind::Strings),
    ("default_expires_in_secs", Kind::Whole),
    ("expires_in_unit", Kind::Str),
    ("expects_refresh_token", Kind::Bool),
    ("refresh_token_scopes", Kind::Strings),
    ("refresh_token_idle_days", Kind::Whole),
    ("pipeline_scopes", Kind::Strings),
    ("pipeline_resources", Kind::Strings),
    ("docs", Kind::Any),
    ("api_base_url", Kind::Any),
    ("proxy_rewrite_links", Kind::Bool),
    ("proxy_auth", Kind::Any),
    ("proxy_headers", Kind::StringMap),
    ("expires_at_field", Kind::Str),
    ("no_expires_in_means_never", Kind::Bool),
    ("refresh_url", Kind::Str),
    ("refresh_params", Kind::StringMap),
    ("renew", Kind::Any),
    ("refresh_token_max_days", Kind::Whole),
    ("post_consent", Kind::Any),
    ("callers", Kind::Any),
    ("account", Kind::Any),
];

/// A `%NAME%` whose setting is not set, and the field that refers to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingSetting {
    pub setting: String,
    pub field: String,
}

/// What is wrong with one integration's own object.
#[derive(Default)]
pub(super) struct Findings {
    pub problems: Vec<ConfigError>,
    pub missing: Vec<MissingSetting>,
}

impl Findings {
    pub(super) fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.missing.is_empty()
    }
}

/// Checks `own` (the integration `name` as written in the file at `path`).
pub(super) fn lint(
    path: &str,
    name: &str,
    own: &Map<String, Value>,
    get: &dyn Fn(&str) -> Option<String>,
) -> Findings {
    let mut f = Findings::default();
    let at = |field: &str| format!("integrations.{name}.{field}");
    for (key, value) in own {
        let field_path = at(key);
        match FIELDS.iter().find(|(k, _)| k == key) {
            None => f.problems.push(ConfigError::field(
                path,
                field_path.clone(),
                format!(
                    "unknown field; the fields are: {}",
                    FIELDS
                        .iter()
                        .map(|(k, _)| *k)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            Some((_, kind)) if !kind.accepts(value) => {
                f.problems.push(ConfigError::field(
                    path,
                    field_path.clone(),
                    kind.expected(),
                ));
                continue;
            }
            Some(_) => {}
        }
        strings(path, &field_path, value, get, &mut f);
    }
    let has = |k: &str| own.contains_key(k);
    let from_elsewhere = has("provider") || has("issuer");
    for required in ["client_id", "client_secret"] {
        if !has(required) {
            f.problems.push(ConfigError::field(
                path,
                at(required),
                "is required (write \"%SETTING_NAME%\" to read it from a setting)",
            ));
        }
    }
    if !from_elsewhere {
        for required in ["authorization_url", "token_url"] {
            if !has(required) {
                f.problems.push(ConfigError::field(
                    path,
                    at(required),
                    "is required (or name a \"provider\" template, or an \"issuer\" to discover it from)",
                ));
            }
        }
    }
    f
}

/// Every string inside `v`: settings syntax and missing settings.
fn strings(
    path: &str,
    at: &str,
    v: &Value,
    get: &dyn Fn(&str) -> Option<String>,
    f: &mut Findings,
) {
    match v {
        Value::String(s) => match setting_ref(s) {
            Ref::Setting(name) => {
                let set = get(name).is_some_and(|v| !v.trim().is_empty());
                if !set {
                    f.missing.push(MissingSetting {
                        setting: name.to_owned(),
                        field: at.to_owned(),
                    });
                }
            }
            Ref::Foreign(name) => f.problems.push(ConfigError::field(
                path,
                at.to_owned(),
                format!("{s:?} is not read from a setting: write %{name}% to read a setting"),
            )),
            Ref::Literal => {}
        },
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                strings(path, &format!("{at}[{i}]"), x, get, f);
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                strings(path, &format!("{at}.{k}"), x, get, f);
            }
        }
        _ => {}
    }
}

enum Ref<'a> {
    /// `%NAME%`
    Setting(&'a str),
    /// `${NAME}`, `$NAME` or `%NAME` (unterminated): meant as a setting, written another way.
    Foreign(&'a str),
    Literal,
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// How a whole string value refers to a setting, if it does.
fn setting_ref(s: &str) -> Ref<'_> {
    if let Some(inner) = s.strip_prefix('%').and_then(|x| x.strip_suffix('%')) {
        if !inner.is_empty() {
            return Ref::Setting(inner);
        }
    }
    if let Some(inner) = s.strip_prefix("${").and_then(|x| x.strip_suffix('}')) {
        if is_name(inner) {
            return Ref::Foreign(inner);
        }
    }
    for prefix in ["$", "%"] {
        if let Some(inner) = s.strip_prefix(prefix) {
            if is_name(inner) {
                return Ref::Foreign(inner);
            }
        }
    }
    Ref::Literal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings(json: &str, set: &[&str]) -> Vec<String> {
        let own: Map<String, Value> = serde_json::from_str(json).unwrap();
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        let get = move |k: &str| set.iter().any(|s| s == k).then(|| "v".to_owned());
        let f = lint("i.json", "acme", &own, &get);
        let mut out: Vec<String> = f.problems.iter().map(ToString::to_string).collect();
        out.extend(
            f.missing
                .iter()
                .map(|m| format!("missing {} at {}", m.setting, m.field)),
        );
        out
    }

    #[test]
    fn every_problem_is_named_by_its_path() {
        let out = findings(
            r#"{"provider": "xero", "scopes": "openid read", "pkce": "yes",
                "client_id": "${ACME_ID}", "client_secret": "$ACME_SECRET",
                "token_params": {"audience": "%AUD"}, "colour": "blue"}"#,
            &[],
        );
        let want = [
            "i.json: integrations.acme.scopes: expected an array of strings",
            "i.json: integrations.acme.pkce: expected true or false",
            "i.json: integrations.acme.client_id: \"${ACME_ID}\" is not read from a setting: write %ACME_ID% to read a setting",
            "i.json: integrations.acme.client_secret: \"$ACME_SECRET\" is not read from a setting: write %ACME_SECRET% to read a setting",
            "i.json: integrations.acme.token_params.audience: \"%AUD\" is not read from a setting: write %AUD% to read a setting",
            "i.json: integrations.acme.colour: unknown field",
        ];
        for w in want {
            assert!(out.iter().any(|o| o.starts_with(w)), "{w} in {out:#?}");
        }
        assert_eq!(out.len(), want.len(), "{out:#?}");
    }

    #[test]
    fn every_missing_setting_is_collected_and_set_ones_pass() {
        let out = findings(
            r#"{"authorization_url": "https://a.example/auth", "token_url": "%TOKEN_URL%",
                "client_id": "%ID%", "client_secret": "%SECRET%", "scopes": ["%SCOPE%", "read"]}"#,
            &["ID"],
        );
        assert_eq!(
            out,
            [
                "missing SECRET at integrations.acme.client_secret",
                "missing SCOPE at integrations.acme.scopes[0]",
                "missing TOKEN_URL at integrations.acme.token_url",
            ]
        );
    }

    #[test]
    fn required_fields_are_named_and_literals_with_dollars_pass() {
        let out = findings(r#"{"client_secret": "pa$$word", "scopes": []}"#, &[]);
        assert_eq!(out.len(), 3, "{out:#?}");
        for f in ["client_id", "authorization_url", "token_url"] {
            assert!(
                out.iter()
                    .any(|o| o.contains(&format!("integrations.acme.{f}: is required"))),
                "{f}: {out:#?}"
            );
        }
        assert!(findings(
            r#"{"provider": "x", "client_id": "a", "client_secret": "100%"}"#,
            &[]
        )
        .is_empty());
    }
}
