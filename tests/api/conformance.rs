//! Every template in the catalogue, through the real binary: a simulated vendor configured from
//! that template's documented behaviour (client authentication, body encoding, lifetime format or
//! no expiry, refresh tokens and their rotation, refresh endpoint and parameters, renewal by
//! exchange, Graph-API errors, token and post-consent metadata) completes a consent, a refresh (or
//! exchange) and a revocation, the stored grant and metadata are what the template promises, and
//! the vendor's answer to a grant it ended is classified as its error shape says.
//! One broker serves every template's integration against one simulator; the templates run in
//! parallel.

use serde_json::{json, Map, Value};

use crate::vendor_quirks::{document_for, Behaviour, Lifetime, SimApp, VendorSim};

fn catalogue() -> Map<String, Value> {
    serde_json::from_str(include_str!("../../src/config/providers.json")).unwrap()
}

fn strs(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => vec![],
    }
}

/// What a template documents, as the simulator and the checks need it.
struct Case {
    name: String,
    behaviour: Behaviour,
    callback_metadata: Vec<String>,
    metadata_names: Vec<String>,
    revokes: bool,
    max_days: bool,
}

fn case(name: &str, t: &Map<String, Value>) -> (Case, Value) {
    let s = |k: &str| t.get(k).and_then(Value::as_str);
    let b = |k: &str| t.get(k).and_then(Value::as_bool);
    let renew = t.get("renew").and_then(Value::as_object);
    let never = b("no_expires_in_means_never") == Some(true);
    let expects_rt = b("expects_refresh_token") != Some(false);
    let lifetime = if s("expires_at_field").is_some() {
        Lifetime::ExpiresAtIso(30 * 86_400)
    } else if never && !expects_rt {
        // Mailchimp documents `expires_in: 0`; the others send none.
        if name == "mailchimp" {
            Lifetime::Zero
        } else {
            Lifetime::Never
        }
    } else if s("expires_in_unit") == Some("milliseconds") {
        Lifetime::ExpiresInMs(3600)
    } else if t.contains_key("default_expires_in_secs") {
        Lifetime::Never
    } else {
        Lifetime::ExpiresIn(3600)
    };
    let post_consent = t.get("post_consent").and_then(Value::as_object);
    let pointers: Vec<(String, String)> = post_consent
        .and_then(|p| p.get("metadata"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let behaviour = Behaviour {
        client_auth: s("client_auth").unwrap_or("basic").into(),
        token_body: s("token_body").unwrap_or("form").into(),
        lifetime,
        refresh_tokens: renew.is_none() && expects_rt,
        rotates: b("rotates_refresh_token") == Some(true),
        refresh_path: t.contains_key("refresh_url"),
        refresh_params: t
            .get("refresh_params")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect()
            })
            .unwrap_or_default(),
        exchange: renew.map(|r| {
            let g = r["grant_type"].as_str().unwrap().to_owned();
            let p = r
                .get("token_param")
                .and_then(Value::as_str)
                .map_or(g.clone(), str::to_owned);
            let get = r.get("method").and_then(Value::as_str) == Some("GET");
            (g, p, get)
        }),
        token_fields: strs(t.get("token_metadata")),
        meta: post_consent.map(|p| {
            (
                document_for(&pointers),
                p.get("auth_scheme")
                    .and_then(Value::as_str)
                    .unwrap_or("Bearer")
                    .to_owned(),
            )
        }),
        graph_errors: renew.is_some(),
        ..Behaviour::standard()
    };
    // Integration names cannot hold '_' (adobe_sign is served as adobe-sign): the integration's
    // name is also the simulated vendor's path prefix.
    let iname = name.replace('_', "-");
    let base = format!("SIM/{iname}");
    let mut i = json!({
        "provider": name, "client_id": "client", "client_secret": "secret", "scopes": ["read"],
        "authorization_url": format!("{base}/authorize"), "token_url": format!("{base}/token"),
    });
    let defaults = t.get("defaults").and_then(Value::as_object);
    let needed: Map<String, Value> = strs(t.get("requires"))
        .into_iter()
        .filter(|r| !defaults.is_some_and(|d| d.contains_key(r)))
        .map(|r| (r, json!("example")))
        .collect();
    if !needed.is_empty() {
        i["placeholders"] = Value::Object(needed);
    }
    if t.contains_key("revocation_url") {
        i["revocation_url"] = json!(format!("{base}/revoke"));
    }
    if t.contains_key("refresh_url") {
        i["refresh_url"] = json!(format!("{base}/refresh"));
    }
    if let Some(r) = renew {
        let mut r = r.clone();
        r.insert("url".into(), json!(format!("{base}/token")));
        i["renew"] = Value::Object(r);
    }
    if let Some(p) = post_consent {
        let mut p = p.clone();
        p.insert("url".into(), json!(format!("{base}/meta")));
        i["post_consent"] = Value::Object(p);
    }
    let callback_metadata = strs(t.get("callback_metadata"));
    let mut metadata_names = callback_metadata.clone();
    metadata_names.extend(strs(t.get("token_metadata")));
    metadata_names.extend(pointers.into_iter().map(|(k, _)| k));
    (
        Case {
            name: iname,
            behaviour,
            callback_metadata,
            metadata_names,
            revokes: t.contains_key("revocation_url"),
            max_days: t.contains_key("refresh_token_max_days"),
        },
        i,
    )
}

async fn run(app: &SimApp, c: &Case) -> Result<(), String> {
    let n = c.name.as_str();
    let fail = |what: String| Err(format!("{n}: {what}"));
    let extra: String = c
        .callback_metadata
        .iter()
        .map(|k| format!("&{k}=value-of-{k}"))
        .collect();
    let page = app.consent(n, "c1", &extra).await;
    if page.status != 200 {
        return fail(format!("consent: {page:?}"));
    }
    let r = app.token(n, "c1", "").await;
    if r.status != 200 {
        return fail(format!("token after consent: {r:?}"));
    }
    let v = r.json();
    if v["access_token"] != format!("{n}-at-1") {
        return fail(format!("the consent's token is served: {v}"));
    }
    for m in &c.metadata_names {
        if v["metadata"][m] != format!("value-of-{m}") {
            return fail(format!("metadata {m} is kept: {v}"));
        }
    }
    if c.max_days && !v["metadata"]["refresh_token_expires_at"].is_string() {
        return fail(format!("the grant's end is stored: {v}"));
    }
    let lifetime = v["expires_in"].as_i64().unwrap_or(-1);
    let ok = match c.behaviour.lifetime {
        Lifetime::ExpiresAtIso(s) => (s - 120..=s).contains(&lifetime),
        Lifetime::Never | Lifetime::Zero => {
            lifetime > 9 * 365 * 86_400 || (c.behaviour.refresh_tokens && lifetime <= 3600)
        }
        _ => (3500..=3600).contains(&lifetime),
    };
    if !ok {
        return fail(format!(
            "lifetime {lifetime} for {:?}",
            c.behaviour.lifetime
        ));
    }
    let conn = app.connection(n, "c1").await;
    if conn["status"] != "active" {
        return fail(format!("status after consent: {conn}"));
    }

    // Two refreshes (or exchanges): the second proves a rotated token was kept.
    let renews = c.behaviour.refresh_tokens || c.behaviour.exchange.is_some();
    for round in 2..=3 {
        let r = app.token(n, "c1", "?force_refresh=true").await;
        if r.status != 200 {
            return fail(format!("refresh {round}: {r:?}"));
        }
        let want = if renews {
            format!("{n}-at-{round}")
        } else {
            format!("{n}-at-1")
        };
        if r.json()["access_token"] != want {
            return fail(format!("refresh {round} serves {want}: {r:?}"));
        }
        for m in &c.metadata_names {
            if r.json()["metadata"][m] != format!("value-of-{m}") {
                return fail(format!("metadata {m} survives a refresh: {r:?}"));
            }
        }
    }
    let kind = if c.behaviour.exchange.is_some() {
        "exchange"
    } else {
        "refresh"
    };
    let seen = app.sim.seen_of(n, kind);
    if seen.len() != usize::from(renews) * 2 {
        return fail(format!("{kind}es seen: {:?}", app.sim.seen(n)));
    }
    if c.behaviour.refresh_tokens {
        let second = seen[1].token.clone().unwrap_or_default();
        let want = if c.behaviour.rotates {
            format!("{n}-rt-2")
        } else {
            format!("{n}-rt-1")
        };
        if second != want {
            return fail(format!("the second refresh presents {want}, not {second}"));
        }
    }
    if let Some((_, param, _)) = &c.behaviour.exchange {
        if seen[1].token.as_deref() != Some(&format!("{n}-at-2")) {
            return fail(format!(
                "the current token is exchanged as {param}: {seen:?}"
            ));
        }
    }

    let deleted = app.delete(n, "c1").await;
    if !(200..300).contains(&deleted.status) {
        return fail(format!("delete: {deleted:?}"));
    }
    let revoked = app.sim.seen_of(n, "revoke");
    if c.revokes {
        let want = if c.behaviour.refresh_tokens {
            let rt = if c.behaviour.rotates { 3 } else { 1 };
            format!("{n}-rt-{rt}")
        } else if renews {
            format!("{n}-at-3")
        } else {
            format!("{n}-at-1")
        };
        if revoked.len() != 1 || revoked[0].token.as_deref() != Some(want.as_str()) {
            return fail(format!("one revocation of {want}: {revoked:?}"));
        }
    } else if !revoked.is_empty() {
        return fail(format!("no revocation endpoint, none called: {revoked:?}"));
    }

    // The vendor ends the grant: its error shape is classified as the template promises.
    if app.consent(n, "c2", &extra).await.status != 200 {
        return fail("second consent".into());
    }
    app.sim.end_grants(n);
    let r = app.token(n, "c2", "?force_refresh=true").await;
    let c2 = app.connection(n, "c2").await;
    let (want_status, want_conn) = if c.behaviour.refresh_tokens {
        // invalid_grant: dead, only a new consent helps.
        (409, "reauthorization_required")
    } else if renews {
        // A Graph-API error is the vendor's word but not invalid_grant: never dead by guess.
        (502, "active")
    } else {
        (200, "active")
    };
    if r.status != want_status || c2["status"] != want_conn {
        return fail(format!(
            "after the vendor ended the grant: {want_status}/{want_conn} expected: {r:?} {c2}"
        ));
    }
    let rejected = app.sim.seen_of(n, "rejected");
    if !rejected.is_empty() {
        return fail(format!("the vendor refused requests: {rejected:?}"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_template_completes_consent_refresh_and_revocation_as_it_documents() {
    let sim = VendorSim::start();
    let mut integrations = Map::new();
    let mut cases = Vec::new();
    for (name, t) in catalogue() {
        let (c, i) = case(&name, t.as_object().unwrap());
        let i: Value =
            serde_json::from_str(&i.to_string().replace("SIM/", &format!("{}/", sim.base)))
                .unwrap();
        sim.add(&c.name, c.behaviour.clone());
        integrations.insert(c.name.clone(), i);
        cases.push(c);
    }
    assert!(cases.len() >= 40, "{}", cases.len());
    let app = SimApp::start(sim, Value::Object(integrations), &[]).await;
    let results = futures::future::join_all(cases.iter().map(|c| run(&app, c))).await;
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let status = app.status().await;
    let dead = cases.iter().filter(|c| c.behaviour.refresh_tokens).count();
    assert_eq!(
        status["counts"]["reauthorization_required"], dead,
        "{status}"
    );
}
