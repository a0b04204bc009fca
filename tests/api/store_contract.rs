//! One conformance suite for the storage capabilities, run against every backend:
//! SQLite (a fresh file), Table Storage (real Azurite, a fresh table) and the
//! in-memory table the fuzz targets and the refresh engine's unit tests use.

use std::sync::Arc;

use oauth_broker::domain::Secret;
use oauth_broker::domain::SecretHash;
use oauth_broker::startup::http_client;
use oauth_broker::store::sqlite::SqliteBackend;
use oauth_broker::store::table::TableBackend;
use oauth_broker::store::{
    Backend, ConnectionRow, ConnectionRows, CredentialRow, Lifecycle, PendingRow, StoreError,
    Version,
};
use time::{Duration, OffsetDateTime};

use crate::helpers::{fresh_table_name, Azurite};

fn t(secs: i64) -> OffsetDateTime {
    // Millisecond precision, as every backend stores.
    OffsetDateTime::from_unix_timestamp(1_900_000_000 + secs).unwrap() + Duration::milliseconds(123)
}

fn row(
    integration: &str,
    connection: &str,
    status: &str,
    expires_at: OffsetDateTime,
) -> ConnectionRow {
    ConnectionRow {
        integration: integration.into(),
        connection: connection.into(),
        status: status.into(),
        key_id: "k1".into(),
        sealed_tokens: "c2VhbGVk".into(),
        token_type: "Bearer".into(),
        scope: "openid api:read".into(),
        expires_at,
        created_at: t(0),
        refreshed_at: t(1),
        last_error: None,
        last_error_at: None,
        last_error_kind: None,
        lease_until: None,
        lease_owner: None,
        metadata: r#"{"realmId":"123"}"#.into(),
        account: Some(r#"{"id":"T1","source":"token_field"}"#.into()),
    }
}

fn pending(hash: &str, expires_at: OffsetDateTime) -> PendingRow {
    PendingRow {
        state_hash: hash.into(),
        integration: "demo".into(),
        connection: "c1".into(),
        key_id: "k1".into(),
        sealed_verifier: "dmVyaWZpZXI".into(),
        binding_hash: "YmluZGluZw".into(),
        expires_at,
        link_hash: Some("bGluaw".into()),
    }
}

async fn conformance(b: Arc<dyn Backend>) {
    b.init().await.expect("init");
    b.init().await.expect("init is idempotent");
    b.ping().await.expect("ping");

    // Point reads and unconditional writes.
    assert!(
        b.get_connection("demo", "c1").await.unwrap().is_none(),
        "missing row reads as None"
    );
    let mut r = row("demo", "c1", "active", t(100));
    r.last_error = Some("the provider answered invalid_grant".into());
    r.last_error_at = Some(t(50));
    r.last_error_kind = Some("oauth:invalid_grant".into());
    r.lease_until = Some(t(60));
    r.lease_owner = Some("abc".into());
    let v1 = b.upsert_connection(&r).await.unwrap();
    let got = b
        .get_connection("demo", "c1")
        .await
        .unwrap()
        .expect("row after upsert");
    assert_eq!(got.value, r, "every field round-trips");
    assert_eq!(
        got.version, v1,
        "a read returns the version the write returned"
    );

    // Conditional replace: current version wins, stale version conflicts and changes nothing.
    let mut r2 = r.clone();
    r2.scope = "narrower".into();
    r2.last_error = None;
    r2.last_error_at = None;
    r2.last_error_kind = None;
    let v2 = b.replace_connection(&r2, &v1).await.unwrap();
    assert_ne!(v1, v2, "a write changes the version");
    let mut r3 = r2.clone();
    r3.scope = "stale writer".into();
    assert!(
        matches!(
            b.replace_connection(&r3, &v1).await,
            Err(StoreError::Conflict)
        ),
        "stale version must conflict"
    );
    assert_eq!(
        b.get_connection("demo", "c1").await.unwrap().unwrap().value,
        r2,
        "a lost write changes nothing"
    );
    let ghost = row("demo", "ghost", "active", t(0));
    assert!(
        matches!(
            b.replace_connection(&ghost, &v2).await,
            Err(StoreError::NotFound)
        ),
        "replace of a missing row"
    );
    assert!(
        b.get_connection("demo", "ghost").await.unwrap().is_none(),
        "replace never creates"
    );
    assert!(
        b.replace_connection(&r2, &Version("garbage".into()))
            .await
            .is_err(),
        "an unknown version never writes"
    );
    assert_eq!(
        b.get_connection("demo", "c1").await.unwrap().unwrap().value,
        r2
    );

    // Of concurrent writers at one version, exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let b = Arc::clone(&b);
        let (mut w, v) = (r2.clone(), v2.clone());
        w.lease_owner = Some(format!("writer{i}"));
        tasks.push(tokio::spawn(
            async move { b.replace_connection(&w, &v).await },
        ));
    }
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::Conflict) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(wins, 1, "exactly one concurrent conditional write wins");

    // Upsert replaces unconditionally (a new consent).
    let fresh = row("demo", "c1", "active", t(500));
    b.upsert_connection(&fresh).await.unwrap();
    assert_eq!(
        b.get_connection("demo", "c1").await.unwrap().unwrap().value,
        fresh
    );

    // The due query: active rows expiring before the instant, nothing else.
    b.upsert_connection(&row("demo", "due1", "active", t(10)))
        .await
        .unwrap();
    b.upsert_connection(&row("other", "due2", "active", t(20)))
        .await
        .unwrap();
    b.upsert_connection(&row("demo", "later", "active", t(10_000)))
        .await
        .unwrap();
    b.upsert_connection(&row("demo", "dead", "reauthorization_required", t(5)))
        .await
        .unwrap();
    b.insert_pending(&pending("p-due", t(1))).await.unwrap();
    let mut due: Vec<String> = b
        .list_due(t(1_000), t(-1_000_000))
        .await
        .unwrap()
        .into_iter()
        .map(|v| format!("{}/{}", v.value.integration, v.value.connection))
        .collect();
    due.sort();
    assert_eq!(due, ["demo/c1", "demo/due1", "other/due2"]);
    let listed = b.list_due(t(15), t(-1_000_000)).await.unwrap();
    assert_eq!(listed.len(), 1);
    let current = b.get_connection("demo", "due1").await.unwrap().unwrap();
    assert_eq!(
        listed[0].version, current.version,
        "listed rows carry usable versions"
    );

    // Pending authorizations are single use.
    b.insert_pending(&pending("p1", t(600))).await.unwrap();
    assert!(matches!(
        b.insert_pending(&pending("p1", t(600))).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        b.take_pending("p1").await.unwrap(),
        Some(pending("p1", t(600)))
    );
    assert_eq!(
        b.take_pending("p1").await.unwrap(),
        None,
        "a state is used once"
    );
    assert_eq!(b.take_pending("never").await.unwrap(), None);
    b.insert_pending(&pending("race", t(600))).await.unwrap();
    let takes: Vec<_> = (0..6)
        .map(|_| {
            let b = Arc::clone(&b);
            tokio::spawn(async move { b.take_pending("race").await })
        })
        .collect();
    let mut taken = 0;
    for task in takes {
        if task.await.unwrap().unwrap().is_some() {
            taken += 1;
        }
    }
    assert_eq!(taken, 1, "exactly one concurrent take succeeds");

    // Purging removes only expired pending rows.
    b.insert_pending(&pending("p-live", t(600))).await.unwrap();
    assert_eq!(b.purge_pending(t(100)).await.unwrap(), 1);
    assert!(b.take_pending("p-live").await.unwrap().is_some());
    assert_eq!(
        b.list_due(t(1_000), t(-1_000_000)).await.unwrap().len(),
        3,
        "purging touched no connection"
    );

    // The pending rows of one consent link, and only those.
    let mut of_link = pending("l1-a", t(600));
    of_link.link_hash = Some("link-one".into());
    b.insert_pending(&of_link).await.unwrap();
    of_link.state_hash = "l1-b".into();
    b.insert_pending(&of_link).await.unwrap();
    let mut other = pending("l2-a", t(600));
    other.link_hash = Some("link-two".into());
    b.insert_pending(&other).await.unwrap();
    let mut none = pending("no-link", t(600));
    none.link_hash = None;
    b.insert_pending(&none).await.unwrap();
    let mut got: Vec<String> = b
        .pending_of_link("link-one")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.state_hash)
        .collect();
    got.sort();
    assert_eq!(got, ["l1-a", "l1-b"]);
    assert!(b.pending_of_link("nothing").await.unwrap().is_empty());
    assert!(
        b.pending_of_link("it's").await.unwrap().is_empty(),
        "a quote in the hash is escaped, not an injection"
    );
}

#[tokio::test]
async fn the_sqlite_backend_meets_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let b: Arc<dyn Backend> =
        Arc::new(SqliteBackend::open(&dir.path().join("nested/broker.db")).unwrap());
    conformance(b.clone()).await;
    credential_conformance(b).await;
}

/// The in-memory table exists with the `fuzzing` feature (scripts/test enables it).
#[cfg(feature = "fuzzing")]
#[tokio::test]
async fn the_in_memory_backend_meets_the_store_contract() {
    let b: Arc<dyn Backend> = oauth_broker::store::memory::MemoryTable::new();
    conformance(b.clone()).await;
    credential_conformance(b).await;
}

#[tokio::test]
async fn the_table_storage_backend_meets_the_store_contract_on_azurite() {
    let azurite = Azurite::start().await;
    let b = TableBackend::connect(
        &Secret::new(azurite.connection_string()),
        &fresh_table_name(),
        http_client(),
    )
    .unwrap();
    let b: Arc<dyn Backend> = Arc::new(b);
    conformance(b.clone()).await;
    credential_conformance(b).await;
}

#[tokio::test]
async fn an_unreachable_table_store_reports_unavailable_quickly() {
    let port = crate::helpers::free_port();
    let cs = crate::helpers::table_connection_string(port);
    let b = TableBackend::connect(&Secret::new(cs), &fresh_table_name(), http_client()).unwrap();
    let started = std::time::Instant::now();
    assert!(matches!(b.ping().await, Err(StoreError::Unavailable(_))));
    assert!(matches!(
        b.get_connection("demo", "c1").await,
        Err(StoreError::Unavailable(_))
    ));
    // Bounded retries: not azure_core's default of a minute. (A sanity bound, not a timing target.)
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn malformed_connection_strings_are_refused_without_echoing_them() {
    for bad in [
        "nonsense",
        "AccountName=x",
        "AccountName=x;AccountKey=SECRETKEYVALUE==;Foo",
    ] {
        let err = TableBackend::connect(&Secret::new(bad), "t1", http_client())
            .err()
            .expect("refused")
            .to_string();
        assert!(!err.contains("SECRETKEYVALUE"), "{err}");
    }
}

fn credential(id: &str, connection: &str, created: i64) -> CredentialRow {
    CredentialRow {
        client_id: id.into(),
        integration: "demo".into(),
        connection: connection.into(),
        description: "ADF \"LS\" – é".into(),
        created_at: t(created),
        expires_at: Some(t(86_400)),
        last_used_at: None,
        min_validity_secs: Some(600),
        key_id: "k1".into(),
        secret_hash: "aGFzaA==".into(),
    }
}

/// Pipeline credentials: point reads by client id, listings per connection, a
/// touch that never re-creates, and the deletion that goes with a connection.
async fn credential_conformance(b: Arc<dyn Backend>) {
    b.init().await.expect("init");
    let (a1, a2, b1) = (
        format!("pc_{}", "a".repeat(24)),
        format!("pc_{}", "b".repeat(24)),
        format!("pc_{}", "c".repeat(24)),
    );
    b.upsert_connection(&row("demo", "ca", "active", t(100)))
        .await
        .unwrap();
    let first = credential(&a1, "ca", 1);
    b.insert_credential(&first).await.unwrap();
    b.insert_credential(&credential(&a2, "ca", 2))
        .await
        .unwrap();
    let mut never = credential(&b1, "cb", 3);
    never.expires_at = None;
    never.min_validity_secs = None;
    b.insert_credential(&never).await.unwrap();
    assert!(matches!(
        b.insert_credential(&first).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(b.get_credential(&a1).await.unwrap(), Some(first.clone()));
    assert_eq!(b.get_credential(&b1).await.unwrap(), Some(never.clone()));
    assert_eq!(b.get_credential("pc_missing").await.unwrap(), None);

    // A connection and a credential read together: the credential wherever it belongs (so a
    // caller can be told it is another connection's), each half absent on its own.
    b.upsert_connection(&row("demo", "c", "active", t(100)))
        .await
        .unwrap();
    let both = |c: &'static str, id: String| {
        let b = b.clone();
        async move {
            let (row, cred) = b.get_connection_and_credential("demo", c, &id).await;
            (row.unwrap().map(|v| v.value.connection), cred.unwrap())
        }
    };
    assert_eq!(
        both("ca", a1.clone()).await,
        (Some("ca".into()), Some(first.clone()))
    );
    assert_eq!(
        both("ca", b1.clone()).await,
        (Some("ca".into()), Some(never.clone()))
    );
    assert_eq!(
        both("c", a1.clone()).await,
        (Some("c".into()), Some(first.clone()))
    );
    assert_eq!(both("cb", b1.clone()).await, (None, Some(never.clone())));
    assert_eq!(
        both("ca", "pc_missing".into()).await,
        (Some("ca".into()), None)
    );
    let names: Vec<String> = b
        .list_connections()
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.value.connection)
        .collect();
    assert!(
        !names.iter().any(|n| n.contains('!')),
        "credentials are not connections: {names:?}"
    );
    for c in ["ca", "c"] {
        assert_eq!(names.iter().filter(|n| *n == c).count(), 1, "{names:?}");
    }

    let mut listed = b.list_credentials("demo", "ca").await.unwrap();
    listed.sort_by(|x, y| x.client_id.cmp(&y.client_id));
    let ids: Vec<&str> = listed.iter().map(|c| c.client_id.as_str()).collect();
    assert_eq!(ids, [a1.as_str(), a2.as_str()]);
    assert!(b.list_credentials("other", "ca").await.unwrap().is_empty());

    let rehashed = SecretHash {
        key_id: "k2".into(),
        hash: "bmV3".into(),
    };
    b.touch_credential(&a1, t(50), Some(&rehashed))
        .await
        .unwrap();
    let touched = b.get_credential(&a1).await.unwrap().unwrap();
    assert_eq!(touched.last_used_at, Some(t(50)));
    assert_eq!(
        (touched.key_id.as_str(), touched.secret_hash.as_str()),
        ("k2", "bmV3")
    );
    assert_eq!(touched.description, first.description);
    b.touch_credential(&a2, t(60), None).await.unwrap();
    let touched = b.get_credential(&a2).await.unwrap().unwrap();
    assert_eq!(
        (touched.last_used_at, touched.key_id.as_str()),
        (Some(t(60)), "k1")
    );

    assert!(b.delete_credential(&a2).await.unwrap());
    assert!(!b.delete_credential(&a2).await.unwrap());
    assert!(matches!(
        b.touch_credential(&a2, t(70), None).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        b.get_credential(&a2).await.unwrap(),
        None,
        "a touch never re-creates"
    );

    assert_eq!(b.delete_credentials_of("demo", "ca").await.unwrap(), 1);
    assert_eq!(b.get_credential(&a1).await.unwrap(), None);
    assert_eq!(
        b.get_credential(&b1).await.unwrap(),
        Some(never),
        "other connections keep theirs"
    );
    assert_eq!(b.delete_credentials_of("demo", "ca").await.unwrap(), 0);
}
