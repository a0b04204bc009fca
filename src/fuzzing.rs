//! Entry points for the cargo-fuzz targets in `fuzz/` (run by `scripts/fuzz`).
//!
//! Each feeds arbitrary input to one parser of outside input the way the
//! broker does, reaching code that is private to its module. They are not part
//! of the broker's API and nothing in the broker calls them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use actix_web::body::MessageBody;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::crypto::Keyring;
use crate::domain::{
    ConnectionId, ConnectionRecord, IntegrationName, PendingAuthorization, PipelineCredential,
    Secret,
};
use crate::oauth::{self, TokenError, TokenResponse};
use crate::store::memory::time_of;
pub use crate::store::memory::MemoryTable;
use crate::store::{table, AuxKind, ConsentLink, Store, StoreError, Versioned};

/// A token endpoint's answer (code exchange or refresh), as `oauth` reads it.
pub fn token_response(
    status: u16,
    is_form: bool,
    body: &[u8],
    metadata_fields: &[String],
) -> Result<TokenResponse, TokenError> {
    let shape = oauth::Shape {
        metadata: metadata_fields,
        expires_at_field: Some("expires_at"),
        account_pointer: None,
    };
    oauth::parse_token_response(status, is_form, body, &shape)
}

/// A query string as the handlers read it (`routes::query`); `None` when the
/// HTTP layer refuses such a request line before any handler runs.
pub fn query(query_string: &str) -> Option<HashMap<String, String>> {
    let uri = format!("/api/auth/callback?{query_string}");
    actix_web::http::Uri::try_from(uri.as_str()).ok()?;
    let req = actix_web::test::TestRequest::default()
        .uri(&uri)
        .to_http_request();
    Some(crate::routes::query(&req))
}

/// What the callback takes from the vendor's redirect, read as
/// `ConsentService::complete` reads it.
#[derive(Debug)]
pub struct CallbackQuery {
    /// The SHA-256 of `state`: the key of the pending row.
    pub state_hash: Option<String>,
    pub code: Option<Secret>,
    /// The vendor's error and description, as kept and shown (sanitized).
    pub error: Option<String>,
    pub description: Option<String>,
    /// The HTML page shown for the vendor's error.
    pub page: Option<String>,
}

pub fn callback(query_string: &str) -> Option<CallbackQuery> {
    let params = query(query_string)?;
    let state_hash = params
        .get("state")
        .filter(|s| !s.is_empty())
        .map(|s| crate::consent::hash(s));
    let code = params
        .get("code")
        .filter(|c| !c.is_empty())
        .map(|c| Secret::new(c.clone()));
    let error = params.get("error").map(|e| oauth::sanitize(e, 64));
    let description = params
        .get("error_description")
        .map(|d| oauth::sanitize(d, 300));
    let page = error
        .as_ref()
        .map(|e| refusal_page(e, description.as_deref()));
    Some(CallbackQuery {
        state_hash,
        code,
        error,
        description,
        page,
    })
}

/// The page the callback shows when the vendor sent an error (RFC 6749
/// §4.1.2.1), as HTML text.
pub fn refusal_page(error: &str, description: Option<&str>) -> String {
    let resp = crate::routes::html::access_not_granted(
        error,
        description,
        "https://broker.example/api/auth/callback",
    );
    let body = resp.into_body().try_into_bytes().unwrap_or_default();
    String::from_utf8_lossy(&body).into_owned()
}

/// The keyring the stored-row entry points seal and open with (a fixed test key).
pub fn test_keyring() -> Keyring {
    Keyring::parse(&Secret::new(
        "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ))
    .expect("a valid key spec")
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

/// Replaces a text property set to `"seal"` with `plaintext` sealed as the
/// store writes it (format 2, bound to the row's fields, under the test key),
/// as a writer holding the key would: the decoding after decryption is then
/// reached too. `aad` sees the entity as decoded; `None` leaves it as it is.
fn seal_marked(
    entity: &mut Map<String, Value>,
    property: &str,
    plaintext: &[u8],
    aad: impl FnOnce(&Map<String, Value>) -> Option<Vec<u8>>,
) {
    if entity.get(property).and_then(Value::as_str) != Some("seal") {
        return;
    }
    let Some(aad) = aad(entity) else { return };
    let (key_id, sealed) = test_keyring().seal(plaintext, &aad);
    entity.insert("KeyId".into(), Value::String(key_id));
    entity.insert(
        property.into(),
        Value::String(format!("{}{sealed}", crate::store::SEALED_V2)),
    );
}

fn text<'a>(m: &'a Map<String, Value>, k: &str) -> &'a str {
    m.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// What the store makes of one stored entity, read every way the broker reads
/// rows: as a connection (point read and listing), as a pending authorization,
/// and as a consent link.
#[derive(Debug)]
pub struct StoredRow {
    pub connection: Result<Option<ConnectionRecord>, StoreError>,
    pub listed: Result<Vec<ConnectionRecord>, StoreError>,
    pub pending: Result<Option<PendingAuthorization>, StoreError>,
    pub link: Result<Option<ConsentLink>, StoreError>,
}

/// Reads `entity` back through the real [`Store`] (its unsealing and checks)
/// over a backend that holds only it. `SealedTokens` / `SealedVerifier` equal
/// to `"seal"` are replaced by `plaintext` sealed for the row's identity.
pub fn stored_row(entity: Map<String, Value>, plaintext: &[u8]) -> StoredRow {
    let mut as_connection = entity.clone();
    seal_marked(&mut as_connection, "SealedTokens", plaintext, |m| {
        table::connection_row(m)
            .ok()
            .map(|r| crate::store::connections::aad_connection(&r))
    });
    let mut as_pending = entity;
    let is_link = text(&as_pending, "RowKey").starts_with("link-");
    let sealed = if is_link { &[][..] } else { plaintext };
    seal_marked(&mut as_pending, "SealedVerifier", sealed, |m| {
        table::pending_row(m).ok().map(|r| match is_link {
            true => crate::store::aad_link(&r),
            false => crate::store::aad_pending(&r),
        })
    });
    let state_hash = text(&as_pending, "RowKey").to_owned();
    let link_hash = state_hash
        .strip_prefix("link-")
        .unwrap_or(&state_hash)
        .to_owned();

    // Each row under its own keys (as Table Storage keeps it; missing keys
    // read as "fuzz"), where `get`, `take_pending` and `peek_link` look.
    let at = |k: &str| {
        Some(text(&as_connection, k))
            .filter(|s| !s.is_empty())
            .unwrap_or("fuzz")
            .to_owned()
    };
    let (pk, rk) = (at("PartitionKey"), at("RowKey"));
    let connections = MemoryTable::new();
    connections.plant(&pk, &rk, as_connection);
    let connections = Store::new(connections, test_keyring());
    let pendings = MemoryTable::new();
    pendings.plant(table::PENDING_PARTITION, &state_hash, as_pending);
    let pendings = Store::new(pendings, test_keyring());
    let names = (IntegrationName::parse(&pk), ConnectionId::parse(&rk));
    runtime().block_on(async {
        // The link is peeked before the pending row is taken (which removes it).
        let link = pendings.peek_link(&link_hash).await;
        StoredRow {
            // Only names of the broker's shape are ever looked up.
            connection: match names {
                (Ok(i), Ok(c)) => connections.get(&i, &c).await.map(|v| v.map(|v| v.value)),
                _ => Ok(None),
            },
            listed: connections.list().await,
            pending: pendings.take_pending(&state_hash).await,
            link,
        }
    })
}

/// The row key a consent link's token is looked up by, as
/// `GET /api/auth/link?t=` reads it (`None`: unusable without a lookup).
pub fn consent_link(query_string: &str) -> Option<String> {
    let token = query(query_string)?.remove("t").unwrap_or_default();
    if token.is_empty() || token.len() > 128 {
        return None;
    }
    Some(crate::consent::hash(&token))
}

/// The proxy's path check and the upstream URL built from it (`routes::proxy`):
/// the raw path after `/api/proxy/{integration}/{connection}` and the query
/// string, against `bases`; the chosen base's index and the URL, or why not.
pub fn proxy_upstream(
    raw_path: &str,
    query: &str,
    bases: &[&str],
) -> Result<(usize, url::Url), String> {
    let checked = crate::proxy::check_path(raw_path, bases.len()).map_err(str::to_owned)?;
    let url = crate::routes::proxy::upstream_url(bases[checked.base], &checked.path, query)
        .map_err(|e| e.to_string())?;
    Ok((checked.base, url))
}

/// The proxy's link rewriter on a JSON body and on a `Link` header value.
pub fn rewrite_links(
    bases: &[String],
    proxy: &str,
    body: &[u8],
) -> (Option<Vec<u8>>, Option<String>) {
    let r = crate::proxy::Rewriter::new(bases, proxy);
    let header = std::str::from_utf8(body)
        .ok()
        .and_then(|s| r.link_header(s));
    (r.json(body), header)
}

/// An `Authorization` header value as the Entra check reads it: the Bearer
/// token, split and decoded (`entra::jwt::parse`), then the claim checks
/// against a fixed tenant and audience at `now` (the signature cannot verify
/// on fuzzed input, so it is skipped to reach the claims). `None`: not Bearer.
pub fn entra_authorization(
    value: &str,
    now: i64,
) -> Option<Result<crate::entra::EntraCaller, crate::entra::VerifyError>> {
    use crate::entra::{Check, VerifyError};
    let token = match crate::entra::bearer(value)? {
        Ok(t) => t,
        Err(()) => {
            return Some(Err(VerifyError::Invalid(Check::Malformed(
                crate::entra::jwt::Malformed::Parts,
            ))))
        }
    };
    let u = match crate::entra::jwt::parse(token) {
        Ok(u) => u,
        Err(m) => return Some(Err(VerifyError::Invalid(Check::Malformed(m)))),
    };
    Some(crate::entra::check_claims(
        &entra_settings(),
        &u.claims,
        now,
    ))
}

/// The tenant and audiences [`entra_authorization`] checks against.
pub fn entra_settings() -> crate::config::EntraSettings {
    crate::config::EntraSettings {
        tenant: ENTRA_TENANT.into(),
        audiences: vec!["api://oauth-broker".into(), ENTRA_CLIENT.into()],
        authority: url::Url::parse("https://login.microsoftonline.com").expect("a fixed URL"),
    }
}

pub const ENTRA_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const ENTRA_CLIENT: &str = "0f1e2d3c-0000-4000-8000-000000000001";

/// A token endpoint's answer read for the consent's account: the account id
/// at `pointer` (a `token_field` source) and the `id_token`, as
/// `ConsentService::complete` reads them.
pub fn token_account(body: &[u8], pointer: &str) -> Result<TokenResponse, TokenError> {
    let shape = oauth::Shape {
        metadata: &[],
        expires_at_field: None,
        account_pointer: Some(pointer),
    };
    oauth::parse_token_response(200, false, body, &shape)
}

/// The account a callback parameter names (`account` from `callback_param`),
/// read from the vendor's redirect as the callback reads it; `None` when the
/// HTTP layer refuses such a request line.
pub fn callback_account(query_string: &str, name: &str) -> Option<Option<crate::domain::Account>> {
    let params = query(query_string)?;
    Some(crate::consent::callback_account(&params, name))
}

fn request_with(
    headers: &[(actix_web::http::header::HeaderName, Option<&[u8]>)],
) -> Option<actix_web::HttpRequest> {
    let mut req = actix_web::test::TestRequest::post().uri("/api/oauth2/token");
    for (name, value) in headers {
        if let Some(v) = value {
            let v = actix_web::http::header::HeaderValue::from_bytes(v).ok()?;
            req = req.insert_header((name.clone(), v));
        }
    }
    Some(req.to_http_request())
}

/// What the token endpoint read from a request: the client id, secret,
/// `scope` and `resource`.
pub type ClientRequest = (String, Secret, Option<String>, Option<String>);

/// `POST /api/oauth2/token` as the handler reads it before any credential is
/// looked at: `Ok` what the client presented, `Err` the status and JSON body
/// of the RFC 6749 §5.2 answer. `None` when the HTTP layer refuses such
/// header values before any handler runs.
pub fn token_form(
    content_type: Option<&[u8]>,
    authorization: Option<&[u8]>,
    body: &[u8],
) -> Option<Result<ClientRequest, (u16, String)>> {
    use actix_web::http::header;
    let req = request_with(&[
        (header::CONTENT_TYPE, content_type),
        (header::AUTHORIZATION, authorization),
    ])?;
    Some(match crate::routes::oauth2::read_request(&req, body) {
        Ok(r) => Ok((r.client_id, r.secret, r.scope, r.resource)),
        Err(e) => {
            let resp = e.response();
            let status = resp.status().as_u16();
            let body = resp.into_body().try_into_bytes().unwrap_or_default();
            Err((status, String::from_utf8_lossy(&body).into_owned()))
        }
    })
}

/// The client credentials an `Authorization` header carries, as the token
/// routes read them: `Some(None)` no Basic credentials, `Some(Some(Err))`
/// Basic but malformed; `None` when the HTTP layer refuses the value.
#[allow(clippy::type_complexity)]
pub fn basic(authorization: &[u8]) -> Option<Option<Result<(String, Secret), ()>>> {
    let req = request_with(&[(actix_web::http::header::AUTHORIZATION, Some(authorization))])?;
    Some(crate::routes::credentials::basic_credentials(&req))
}

/// The `Authorization` value a client sends for `id` and `secret` per
/// RFC 6749 §2.3.1 (each part form-urlencoded, then RFC 7617 Basic).
pub fn basic_header(id: &str, secret: &str) -> String {
    use base64::Engine as _;
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    )
}

/// Applies `tamper` to an entity as a writer to the table would: each property
/// set (`null` removes it).
fn apply(entity: &mut Map<String, Value>, tamper: &Map<String, Value>) {
    for (k, v) in tamper {
        match v {
            Value::Null => {
                entity.remove(k);
            }
            v => {
                entity.insert(k.clone(), v.clone());
            }
        }
    }
}

/// An engine for [`crate::credentials::Credentials`] (authentication never
/// reaches it: it holds no integration and an empty store).
fn engine() -> Arc<crate::refresh::Engine> {
    static ENGINE: OnceLock<Arc<crate::refresh::Engine>> = OnceLock::new();
    Arc::clone(ENGINE.get_or_init(|| {
        Arc::new(crate::refresh::Engine::new(
            Store::new(MemoryTable::new(), test_keyring()),
            reqwest::Client::new(),
            crate::registry::Registry::of(BTreeMap::new()),
            crate::config::RefreshPolicy::default(),
            None,
        ))
    }))
}

/// What the broker makes of a pipeline credential's row read back from the table.
#[derive(Debug)]
pub struct CredentialRead {
    /// The credential as it read when its hash was made (`SecretHash: "seal"`).
    pub sealed: Option<PipelineCredential>,
    /// The client id the row ended up under (its RowKey after tampering).
    pub client_id: String,
    /// The point read by that client id (`None`: not a client id's shape).
    pub got: Option<Result<Option<PipelineCredential>, StoreError>>,
    /// The listing of the connection the row names (`None`: names not valid).
    pub listed: Option<Result<Vec<PipelineCredential>, StoreError>>,
    /// Authenticating as that client id with `secret`.
    pub authenticated: Result<PipelineCredential, crate::credentials::AuthError>,
}

/// A `~credential` entity read back through the real [`Store`] and the real
/// authentication ([`crate::credentials::Credentials::authenticate`]). A
/// `SecretHash` of `"seal"` is replaced by the keyed hash of `secret` for the
/// credential as the row reads then (as the broker writes it); `tamper` is
/// applied afterwards (a table writer's edit; a changed RowKey moves the row).
pub fn credential_row(
    mut entity: Map<String, Value>,
    secret: &str,
    tamper: &Map<String, Value>,
) -> CredentialRead {
    let secret = Secret::new(secret.to_owned());
    let table = MemoryTable::new();
    let store = Store::new(table.clone(), test_keyring());
    let credentials = crate::credentials::Credentials::new(engine(), store.clone());
    runtime().block_on(async {
        let mut sealed = None;
        let rk = text(&entity, "RowKey").to_owned();
        if text(&entity, "SecretHash") == "seal" {
            table.plant(table::CREDENTIAL_PARTITION, &rk, entity.clone());
            if let Some(id) = crate::domain::ClientId::parse(&rk) {
                if let Ok(Some(c)) = store.get_credential(&id).await {
                    let (key_id, hash) = store.keyring().mac(&c.hash_input(&secret));
                    entity.insert("KeyId".into(), Value::String(key_id));
                    entity.insert("SecretHash".into(), Value::String(hash));
                    sealed = Some(c);
                }
            }
            table.remove(table::CREDENTIAL_PARTITION, &rk);
        }
        apply(&mut entity, tamper);
        let client_id = text(&entity, "RowKey").to_owned();
        let names = (
            IntegrationName::parse(text(&entity, "Integration")),
            ConnectionId::parse(text(&entity, "Connection")),
        );
        table.plant(table::CREDENTIAL_PARTITION, &client_id, entity);
        let got = match crate::domain::ClientId::parse(&client_id) {
            Some(id) => Some(store.get_credential(&id).await),
            None => None,
        };
        let listed = match names {
            (Ok(i), Ok(c)) => Some(store.list_credentials(&i, &c).await),
            _ => None,
        };
        let authenticated = credentials.authenticate(&client_id, &secret, None).await;
        CredentialRead {
            sealed,
            client_id,
            got,
            listed,
            authenticated,
        }
    })
}

/// An outbox entry's body fields as the fuzzer names them (the broker's own
/// stored form, `store::outbox`, is private): what is sealed when `s` is "seal".
#[derive(serde::Deserialize)]
struct BodyFields {
    e: String,
    t: String,
    r: String,
    o: i64,
    #[serde(default)]
    n: u32,
    #[serde(default)]
    x: Option<String>,
}

/// The key of the well-formed entry every drain must still deliver.
pub const GOOD_OUTBOX_KEY: &str = "0000000000000-good.r0";

/// What the broker makes of an outbox row (and of the same entity as a marker).
#[derive(Debug)]
pub struct OutboxRead {
    /// The entry written through the real store when the body said `"s": "seal"`.
    pub written: Option<crate::store::OutboxEntry>,
    /// The well-formed entry written next to it (`None` if the keys collide).
    pub good: Option<crate::store::OutboxEntry>,
    /// The key the fuzzer's row ended up under.
    pub key: String,
    /// Whether the row was due at the drain (its DueAt a date before the drain's time).
    pub due_row: bool,
    /// One drain of the outbox.
    pub due: Result<Vec<Versioned<crate::store::OutboxEntry>>, StoreError>,
    /// The outbox keys still in the table after the drain.
    pub left: Vec<String>,
    /// The same entity read as a marker.
    pub marker: Result<Option<Versioned<String>>, StoreError>,
    /// The marker after the broker's recovery: replaced at its version when
    /// it read, deleted and created again when it did not.
    pub marker_after: Result<Option<Versioned<String>>, StoreError>,
}

/// The instant every outbox drain of the fuzz target runs at.
pub fn drain_time() -> OffsetDateTime {
    time::macros::datetime!(2999-12-31 00:00 UTC)
}

/// An `~outbox` entity read back through the real [`Store`] by a drain
/// (`outbox_due`), next to a well-formed entry, and the same entity as a
/// marker. A `Body` that is a JSON object with `"s": "seal"` is written
/// through the real store instead (its fields sealed with `payload` for the
/// entity's RowKey and DueAt); `tamper` is applied afterwards: properties of
/// the entity, and `Body.<field>` for fields of the stored body.
pub fn outbox_row(
    mut entity: Map<String, Value>,
    payload: &str,
    tamper: &Map<String, Value>,
) -> OutboxRead {
    use crate::store::OutboxEntry;
    let table = MemoryTable::new();
    let store = Store::new(table.clone(), test_keyring());
    let outbox = table::aux_partition(AuxKind::Outbox);
    runtime().block_on(async {
        let rk = text(&entity, "RowKey").to_owned();
        let good = OutboxEntry {
            key: GOOD_OUTBOX_KEY.into(),
            event_id: "0000000000000-good".into(),
            event_type: "connection.reauthorization_required".into(),
            receiver: "r0".into(),
            occurred_at: time::macros::datetime!(2026-12-01 00:00 UTC),
            next_attempt_at: time::macros::datetime!(2026-12-01 00:00 UTC),
            attempts: 0,
            last_error: None,
            payload: Secret::new("{\"type\":\"connection.reauthorization_required\"}"),
        };
        let good = (rk != GOOD_OUTBOX_KEY).then_some(good);
        if let Some(g) = &good {
            store
                .outbox_add(g)
                .await
                .expect("the memory table takes a new entry");
        }
        let fields = entity
            .get("Body")
            .and_then(Value::as_str)
            .and_then(|b| serde_json::from_str::<Map<String, Value>>(b).ok())
            .filter(|b| b.get("s").and_then(Value::as_str) == Some("seal"))
            .and_then(|b| serde_json::from_value::<BodyFields>(Value::Object(b)).ok());
        let mut written = None;
        if let (Some(f), Ok(row)) = (fields, {
            let mut probe = entity.clone();
            probe.insert("Body".into(), Value::String(String::new()));
            table::aux_row(AuxKind::Outbox, &probe)
        }) {
            let occurred = OffsetDateTime::from_unix_timestamp_nanos(i128::from(f.o) * 1_000_000);
            if let (Ok(occurred_at), true) = (occurred, rk != GOOD_OUTBOX_KEY) {
                let e = OutboxEntry {
                    key: row.key.clone(),
                    event_id: f.e,
                    event_type: f.t,
                    receiver: f.r,
                    occurred_at,
                    next_attempt_at: row.due_at,
                    attempts: f.n,
                    last_error: f.x,
                    payload: Secret::new(payload.to_owned()),
                };
                if store.outbox_add(&e).await.is_ok() {
                    let stored = table.entity(outbox, &row.key).unwrap_or_default();
                    // The fuzzer's other properties stay (a sealed row with extra junk).
                    for (k, v) in stored {
                        entity.insert(k, v);
                    }
                    table.remove(outbox, &row.key);
                    written = Some(e);
                }
            }
        }
        let (body_tamper, tamper): (Map<String, Value>, Map<String, Value>) = tamper
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .partition(|(k, _)| k.starts_with("Body."));
        if !body_tamper.is_empty() {
            if let Some(Ok(Value::Object(mut b))) = entity
                .get("Body")
                .and_then(Value::as_str)
                .map(serde_json::from_str::<Value>)
            {
                let fields: Map<String, Value> = body_tamper
                    .into_iter()
                    .map(|(k, v)| (k["Body.".len()..].to_owned(), v))
                    .collect();
                apply(&mut b, &fields);
                entity.insert("Body".into(), Value::String(Value::Object(b).to_string()));
            }
        }
        apply(&mut entity, &tamper);
        let key = text(&entity, "RowKey").to_owned();
        let due_row = time_of(&entity, "DueAt").is_some_and(|t| t <= drain_time());
        table.plant(table::aux_partition(AuxKind::Marker), &key, entity.clone());
        if key != GOOD_OUTBOX_KEY {
            table.plant(outbox, &key, entity);
        }
        let due = store.outbox_due(drain_time(), 100).await;
        let left = table
            .keys()
            .into_iter()
            .filter(|(pk, _)| pk == outbox)
            .map(|(_, rk)| rk)
            .collect();
        let marker = store.marker_get(&key).await;
        let recovered = match &marker {
            Ok(Some(v)) => store
                .marker_put(&key, "{}", Some(&v.version))
                .await
                .map(|_| ()),
            _ => match store.marker_delete(&key).await {
                Ok(_) => store.marker_put(&key, "{}", None).await.map(|_| ()),
                Err(e) => Err(e),
            },
        };
        let marker_after = match recovered {
            Ok(()) => store.marker_get(&key).await,
            Err(e) => Err(e),
        };
        OutboxRead {
            written,
            good,
            key,
            due_row,
            due,
            left,
            marker,
            marker_after,
        }
    })
}
