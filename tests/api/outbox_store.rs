//! The side rows behind events (the outbox of webhook deliveries, and markers)
//! on both backends: conditional writes that let one instance claim a delivery,
//! due-time queries, sealing of the payload, and no mixing with connections.

use std::sync::Arc;

use oauth_broker::crypto::Keyring;
use oauth_broker::domain::Secret;
use oauth_broker::startup::http_client;
use oauth_broker::store::sqlite::SqliteBackend;
use oauth_broker::store::table::TableBackend;
use oauth_broker::store::{
    AuxKind, AuxRow, Backend, ConnectionRow, OutboxEntry, Store as BrokerStore, StoreError,
};
use time::{Duration, OffsetDateTime};

use crate::helpers::{fresh_table_name, Azurite};

fn t(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_900_000_000 + secs).unwrap() + Duration::milliseconds(7)
}

fn aux(kind: AuxKind, key: &str, due: i64, body: &str) -> AuxRow {
    AuxRow {
        kind,
        key: key.into(),
        due_at: t(due),
        body: body.into(),
    }
}

async fn side_rows(b: Arc<dyn Backend>) {
    b.init().await.unwrap();
    let o1 = aux(AuxKind::Outbox, "evt_1.r1", 10, "one");
    let v1 = b.insert_aux(&o1).await.expect("insert");
    assert!(
        matches!(b.insert_aux(&o1).await, Err(StoreError::Conflict)),
        "a second insert of one key conflicts"
    );
    // The same key in the other kind is another row.
    b.insert_aux(&aux(AuxKind::Marker, "evt_1.r1", 10, "m"))
        .await
        .unwrap();
    let got = b
        .get_aux(AuxKind::Outbox, "evt_1.r1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.value, o1);
    assert_eq!(got.version, v1);
    assert!(b.get_aux(AuxKind::Outbox, "nope").await.unwrap().is_none());

    // A claim is a conditional replace: of two claimants at one version, one wins.
    let claimed = aux(AuxKind::Outbox, "evt_1.r1", 40, "claimed");
    let v2 = b.replace_aux(&claimed, &v1).await.expect("first claim");
    assert!(
        matches!(
            b.replace_aux(&claimed, &v1).await,
            Err(StoreError::Conflict)
        ),
        "a second claim at the old version loses"
    );
    assert!(matches!(
        b.replace_aux(&aux(AuxKind::Outbox, "gone", 1, "x"), &v1)
            .await,
        Err(StoreError::NotFound)
    ));

    // Due rows: by kind, at or before the instant, earliest first, bounded.
    b.insert_aux(&aux(AuxKind::Outbox, "evt_2.r1", 20, "two"))
        .await
        .unwrap();
    b.insert_aux(&aux(AuxKind::Outbox, "evt_3.r1", 5, "three"))
        .await
        .unwrap();
    let due: Vec<String> = b
        .due_aux(AuxKind::Outbox, t(20), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.value.key)
        .collect();
    assert_eq!(
        due,
        ["evt_3.r1", "evt_2.r1"],
        "the claimed row is not due yet"
    );
    assert_eq!(
        b.due_aux(AuxKind::Outbox, t(100), 1).await.unwrap().len(),
        1
    );
    assert_eq!(
        b.due_aux(AuxKind::Marker, t(100), 10).await.unwrap().len(),
        1
    );

    // Deletes: at a version (a stale one conflicts), or unconditionally.
    assert!(matches!(
        b.delete_aux(AuxKind::Outbox, "evt_1.r1", Some(&v1)).await,
        Err(StoreError::Conflict)
    ));
    assert!(b
        .delete_aux(AuxKind::Outbox, "evt_1.r1", Some(&v2))
        .await
        .unwrap());
    assert!(!b
        .delete_aux(AuxKind::Outbox, "evt_1.r1", None)
        .await
        .unwrap());
    assert!(b
        .delete_aux(AuxKind::Marker, "evt_1.r1", None)
        .await
        .unwrap());

    // Side rows are never connections.
    let conn = ConnectionRow {
        integration: "demo".into(),
        connection: "c1".into(),
        status: "active".into(),
        key_id: "k1".into(),
        sealed_tokens: "x".into(),
        token_type: "Bearer".into(),
        scope: String::new(),
        expires_at: t(0),
        created_at: t(0),
        refreshed_at: t(0),
        last_error: None,
        last_error_at: None,
        last_error_kind: None,
        lease_until: None,
        lease_owner: None,
        metadata: "{}".into(),
        account: None,
    };
    b.upsert_connection(&conn).await.unwrap();
    let listed = b.list_connections().await.unwrap();
    assert_eq!(listed.len(), 1, "only the connection is listed");
    assert_eq!(b.list_due(t(1000), t(1000)).await.unwrap().len(), 1);
}

/// The store seals an outbox entry's payload (it may hold a consent link) and
/// refuses an entry moved to another receiver.
async fn sealed_outbox(b: Arc<dyn Backend>) {
    let keys = Keyring::parse(&Secret::new(
        "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    ))
    .unwrap();
    let store = BrokerStore::new(b.clone(), keys);
    let link = "https://broker.example/api/auth/link?t=SECRETLINKTOKEN1234567890";
    let entry = OutboxEntry {
        key: "evt_9.r1".into(),
        event_id: "evt_9".into(),
        event_type: "connection.reauthorization_required".into(),
        receiver: "r1".into(),
        occurred_at: t(0),
        next_attempt_at: t(1),
        attempts: 0,
        last_error: None,
        payload: Secret::new(format!(r#"{{"consent_link":"{link}"}}"#)),
    };
    let version = store.outbox_add(&entry).await.unwrap();
    let raw = b
        .get_aux(AuxKind::Outbox, "evt_9.r1")
        .await
        .unwrap()
        .unwrap();
    assert!(
        !raw.value.body.contains("SECRETLINKTOKEN"),
        "the payload is sealed at rest: {}",
        raw.value.body
    );
    let due = store.outbox_due(t(5), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert!(due[0].value.payload.expose().contains(link));
    assert_eq!(due[0].version, version);

    // A writer to the table points the entry at another receiver: it no longer opens, and goes.
    let moved = raw.value.body.replace("\"r\":\"r1\"", "\"r\":\"r2\"");
    assert_ne!(moved, raw.value.body);
    b.replace_aux(
        &AuxRow {
            body: moved,
            ..raw.value.clone()
        },
        &raw.version,
    )
    .await
    .unwrap();
    assert!(store.outbox_due(t(5), 10).await.unwrap().is_empty());
    assert!(b
        .get_aux(AuxKind::Outbox, "evt_9.r1")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn side_rows_meet_the_contract_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let b: Arc<dyn Backend> = Arc::new(SqliteBackend::open(&dir.path().join("b.db")).unwrap());
    side_rows(b.clone()).await;
    sealed_outbox(b).await;
}

/// The in-memory table exists with the `fuzzing` feature (scripts/test enables it).
#[cfg(feature = "fuzzing")]
#[tokio::test]
async fn side_rows_meet_the_contract_in_memory() {
    let b: Arc<dyn Backend> = oauth_broker::store::memory::MemoryTable::new();
    side_rows(b.clone()).await;
    sealed_outbox(b).await;
}

#[tokio::test]
async fn side_rows_meet_the_contract_on_azurite() {
    let azurite = Azurite::start().await;
    let b: Arc<dyn Backend> = Arc::new(
        TableBackend::connect(
            &Secret::new(azurite.connection_string()),
            &fresh_table_name(),
            http_client(),
        )
        .unwrap(),
    );
    side_rows(b.clone()).await;
    sealed_outbox(b).await;
}

/// One outbox entity that cannot be read as a side row (a writer to the table
/// dropped its Body) does not stop the drain: the entries beside it are still
/// delivered and it is removed. Before, every drain failed on it and no event
/// was delivered again (found by the `outbox_row` fuzz target).
#[tokio::test]
async fn an_unreadable_outbox_entity_does_not_stop_the_drain_on_azurite() {
    let azurite = Azurite::start().await;
    let table = fresh_table_name();
    let b: Arc<dyn Backend> = Arc::new(
        TableBackend::connect(
            &Secret::new(azurite.connection_string()),
            &table,
            http_client(),
        )
        .unwrap(),
    );
    b.init().await.unwrap();
    b.insert_aux(&aux(AuxKind::Outbox, "evt_1.r1", 10, "one"))
        .await
        .unwrap();
    // Sorts before the good row, so it is in the first page whatever the limit.
    let bad = serde_json::json!({
        "PartitionKey": "~outbox",
        "RowKey": "evt_0.r1",
        "DueAt": "2030-03-17T17:46:40.007Z",
        "DueAt@odata.type": "Edm.DateTime",
    });
    azurite
        .service_client()
        .table_client(&table)
        .insert::<_, serde_json::Value>(bad)
        .unwrap()
        .await
        .unwrap();
    let due = b
        .due_aux(AuxKind::Outbox, t(20), 10)
        .await
        .expect("the drain reads");
    let keys: Vec<&str> = due.iter().map(|v| v.value.key.as_str()).collect();
    assert_eq!(keys, ["evt_1.r1"]);
    assert!(
        b.get_aux(AuxKind::Outbox, "evt_0.r1")
            .await
            .is_ok_and(|r| r.is_none()),
        "the unreadable entity is removed"
    );
    assert_eq!(
        b.due_aux(AuxKind::Outbox, t(20), 10).await.unwrap().len(),
        1
    );
}
