//! Fuzzing entry points for stored rows: a hostile entity planted in the
//! in-memory table (`store::memory`), or one written through the real store
//! and then tampered with, read back the way the broker reads it.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::test_keyring;
use crate::domain::{
    ConnectionId, ConnectionRecord, IntegrationName, PendingAuthorization, PipelineCredential,
    Secret,
};
use crate::store::memory::{time_of, MemoryTable};
use crate::store::{table, AuxKind, ConsentLink, Store, StoreError, Versioned};

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
    let table = MemoryTable::new();
    let store = Store::new(table.clone(), test_keyring());
    let outbox = table::aux_partition(AuxKind::Outbox);
    runtime().block_on(async {
        let rk = text(&entity, "RowKey").to_owned();
        let good = (rk != GOOD_OUTBOX_KEY).then(good_outbox_entry);
        if let Some(g) = &good {
            store
                .outbox_add(g)
                .await
                .expect("the memory table takes a new entry");
        }
        let written = seal_outbox_body(&store, &table, &mut entity, payload).await;
        tamper_outbox(&mut entity, tamper);
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
        let marker_after = recover_marker(&store, &key, &marker).await;
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

/// The well-formed entry written beside the fuzzer's.
fn good_outbox_entry() -> crate::store::OutboxEntry {
    crate::store::OutboxEntry {
        key: GOOD_OUTBOX_KEY.into(),
        event_id: "0000000000000-good".into(),
        event_type: "connection.reauthorization_required".into(),
        receiver: "r0".into(),
        occurred_at: time::macros::datetime!(2026-12-01 00:00 UTC),
        next_attempt_at: time::macros::datetime!(2026-12-01 00:00 UTC),
        attempts: 0,
        last_error: None,
        payload: Secret::new("{\"type\":\"connection.reauthorization_required\"}"),
    }
}

/// A `Body` with `"s": "seal"` written through the real store instead: the
/// sealed entity's properties replace the fuzzer's (its other properties stay).
async fn seal_outbox_body(
    store: &Store,
    table: &MemoryTable,
    entity: &mut Map<String, Value>,
    payload: &str,
) -> Option<crate::store::OutboxEntry> {
    let outbox = table::aux_partition(AuxKind::Outbox);
    let fields = entity
        .get("Body")
        .and_then(Value::as_str)
        .and_then(|b| serde_json::from_str::<Map<String, Value>>(b).ok())
        .filter(|b| b.get("s").and_then(Value::as_str) == Some("seal"))
        .and_then(|b| serde_json::from_value::<BodyFields>(Value::Object(b)).ok())?;
    let mut probe = entity.clone();
    probe.insert("Body".into(), Value::String(String::new()));
    let row = table::aux_row(AuxKind::Outbox, &probe).ok()?;
    let occurred_at =
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(fields.o) * 1_000_000).ok()?;
    if text(entity, "RowKey") == GOOD_OUTBOX_KEY {
        return None;
    }
    let e = crate::store::OutboxEntry {
        key: row.key.clone(),
        event_id: fields.e,
        event_type: fields.t,
        receiver: fields.r,
        occurred_at,
        next_attempt_at: row.due_at,
        attempts: fields.n,
        last_error: fields.x,
        payload: Secret::new(payload.to_owned()),
    };
    store.outbox_add(&e).await.ok()?;
    let stored = table.entity(outbox, &row.key).unwrap_or_default();
    // The fuzzer's other properties stay (a sealed row with extra junk).
    for (k, v) in stored {
        entity.insert(k, v);
    }
    table.remove(outbox, &row.key);
    Some(e)
}

/// `tamper` applied: `Body.<field>` to fields of the stored body, the rest to the entity.
fn tamper_outbox(entity: &mut Map<String, Value>, tamper: &Map<String, Value>) {
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
    apply(entity, &tamper);
}

/// The marker after the broker's recovery: replaced at its version when it
/// read, deleted and created again when it did not.
async fn recover_marker(
    store: &Store,
    key: &str,
    marker: &Result<Option<Versioned<String>>, StoreError>,
) -> Result<Option<Versioned<String>>, StoreError> {
    let recovered = match marker {
        Ok(Some(v)) => store
            .marker_put(key, "{}", Some(&v.version))
            .await
            .map(|_| ()),
        _ => match store.marker_delete(key).await {
            Ok(_) => store.marker_put(key, "{}", None).await.map(|_| ()),
            Err(e) => Err(e),
        },
    };
    match recovered {
        Ok(()) => store.marker_get(key).await,
        Err(e) => Err(e),
    }
}
