//! Unit tests of the refresh engine on the in-memory store (`store::memory`)
//! with a manual clock: each test states one rule of `refresh/mod.rs` and
//! fails when that rule is broken. Processes, Table Storage and the real
//! authorization server are the API suite's (`tests/api/`).

mod vendor;

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use self::vendor::{Reply, Vendor};
use super::{Engine, Need, RefreshError, SweepSummary};
use crate::config::{Integration, RefreshPolicy};
use crate::domain::clock::Clock;
use crate::domain::{
    ConnectionId, ConnectionRecord, ConnectionStatus, IntegrationName, Secret, TokenSet,
};
use crate::registry::Registry;
use crate::store::memory::MemoryTable;
use crate::store::{
    BoxFuture, ConnectionRow, ConnectionRows, Rows, Store, StoreError, Version, Versioned,
};

const INTEGRATION: &str = "demo";

/// An instant well inside the calendar, at millisecond precision.
fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("a valid instant")
}

fn keyring() -> crate::crypto::Keyring {
    crate::crypto::Keyring::parse(&Secret::new(
        "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ))
    .expect("a valid key spec")
}

/// The engine under test, its store, clock and vendor.
struct World {
    engine: Engine,
    store: Store,
    clock: Clock,
    vendor: Vendor,
    integration: Arc<Integration>,
    registry: Arc<Registry>,
    policy: RefreshPolicy,
}

impl World {
    async fn new(default: Reply) -> Self {
        Self::with(default, RefreshPolicy::default(), memory_rows).await
    }

    /// A world whose store rows are `rows(memory table)` and whose engine follows `policy`.
    async fn with(
        default: Reply,
        policy: RefreshPolicy,
        rows: impl FnOnce(Arc<MemoryTable>) -> Rows,
    ) -> Self {
        let vendor = Vendor::start(default).await;
        let file = serde_json::json!({"integrations": {INTEGRATION: {
            "authorization_url": "http://127.0.0.1:9/authorize",
            "token_url": vendor.token_url,
            "client_id": "client", "client_secret": "secret", "scopes": ["read"]
        }}});
        let parsed =
            crate::config::integrations::parse(&file.to_string(), Path::new("i.json"), &|_| None)
                .expect("a valid integrations file");
        let registry = Registry::of(parsed.ready);
        let integration = match registry.get(&name()) {
            crate::registry::Lookup::Ready(i) => i,
            _ => panic!("the integration is ready"),
        };
        let store = Store::from_rows(rows(MemoryTable::new()), keyring());
        let clock = Clock::manual(t0());
        let engine = Self::engine(&store, &registry, &policy, &clock);
        Self {
            engine,
            store,
            clock,
            vendor,
            integration,
            registry,
            policy,
        }
    }

    /// Another engine (another process: its own lease owner) on the same store and clock.
    fn engine(
        store: &Store,
        registry: &Arc<Registry>,
        policy: &RefreshPolicy,
        clock: &Clock,
    ) -> Engine {
        Engine::new(
            store.clone(),
            crate::startup::http_client(),
            registry.clone(),
            policy.clone(),
            None,
        )
        .with_clock(clock.clone())
    }

    fn other_engine(&self) -> Engine {
        Self::engine(&self.store, &self.registry, &self.policy, &self.clock)
    }

    /// Stores connection `id` with tokens `at`/`rt`, refreshed now, expiring in `lifetime`.
    async fn grant(&self, id: &str, rt: Option<&str>, lifetime: Duration) -> ConnectionRecord {
        let now = self.clock.now();
        let r = ConnectionRecord::new_grant(
            name(),
            conn(id),
            TokenSet {
                access_token: Secret::new(format!("at-{id}")),
                refresh_token: rt.map(Secret::new),
            },
            "Bearer".into(),
            "read".into(),
            now + lifetime,
            now,
        );
        self.store.upsert(&r).await.expect("stored");
        r
    }

    /// Stores connection `id` issued an hour ago and expiring in 5 minutes: inside the margin.
    async fn grant_due(&self, id: &str, rt: Option<&str>) -> ConnectionRecord {
        let mut r = self.grant(id, rt, Duration::minutes(5)).await;
        r.refreshed_at = self.clock.now() - Duration::minutes(55);
        let v = self.stored(id).await.version;
        self.store.replace(&r, &v).await.expect("stored");
        r
    }

    async fn stored(&self, id: &str) -> Versioned<ConnectionRecord> {
        self.store
            .get(&name(), &conn(id))
            .await
            .expect("readable")
            .expect("present")
    }

    async fn fresh(&self, id: &str, need: Need) -> Result<ConnectionRecord, RefreshError> {
        self.engine
            .ensure_fresh(&self.integration, &conn(id), need)
            .await
    }
}

/// Every capability from the memory table.
fn memory_rows(m: Arc<MemoryTable>) -> Rows {
    Rows::of(m)
}

fn name() -> IntegrationName {
    IntegrationName::parse(INTEGRATION).expect("a valid name")
}

fn conn(id: &str) -> ConnectionId {
    ConnectionId::parse(id).expect("a valid id")
}

fn access(r: &ConnectionRecord) -> &str {
    r.tokens.access_token.expose()
}

fn refresh_token(r: &ConnectionRecord) -> Option<&str> {
    r.tokens.refresh_token.as_ref().map(|t| t.expose())
}

#[tokio::test]
async fn a_token_outside_the_margin_is_served_without_calling_the_vendor() {
    let w = World::new(Reply::tokens("new", Some("rt-2"), 3600)).await;
    w.grant("c1", Some("rt-1"), Duration::hours(1)).await;
    w.clock.advance(Duration::minutes(40)); // 20 minutes left, margin 15
    let got = w.fresh("c1", Need::default()).await.expect("served");
    assert_eq!(access(&got), "at-c1");
    assert_eq!(w.vendor.calls(), 0);
}

#[tokio::test]
async fn a_token_inside_the_margin_is_refreshed_and_stored_before_it_is_served() {
    let w = World::new(Reply::tokens("new", Some("rt-2"), 3600)).await;
    w.grant("c1", Some("rt-1"), Duration::hours(1)).await;
    w.clock.advance(Duration::minutes(46)); // 14 minutes left
    let got = w.fresh("c1", Need::default()).await.expect("refreshed");
    assert_eq!(access(&got), "new");
    assert_eq!(w.vendor.refresh_tokens(), ["rt-1"]);
    let stored = w.stored("c1").await.value;
    assert_eq!(
        (access(&stored), refresh_token(&stored)),
        ("new", Some("rt-2"))
    );
    assert_eq!(stored.refreshed_at, w.clock.now());
    assert_eq!(stored.expires_at, w.clock.now() + Duration::hours(1));
    assert_eq!(stored.lease_until, None, "the lease ends with the refresh");
}

#[tokio::test]
async fn a_refresh_without_a_new_refresh_token_keeps_the_old_one_and_never_sends_scope() {
    let w = World::new(Reply::tokens("new", None, 3600)).await;
    w.grant_due("c1", Some("rt-1")).await;
    w.fresh("c1", Need::default()).await.expect("refreshed");
    assert_eq!(refresh_token(&w.stored("c1").await.value), Some("rt-1"));
    assert_eq!(w.vendor.forms_field("grant_type"), ["refresh_token"]);
    assert!(
        w.vendor.forms_field("scope").is_empty(),
        "RFC 6749 §6: no scope on refresh"
    );
}

#[tokio::test]
async fn callers_arriving_together_share_one_refresh() {
    let w = World::new(Reply::tokens("new", Some("rt-2"), 3600)).await;
    w.grant_due("c1", Some("rt-1")).await;
    let calls = (0..20).map(|_| w.fresh("c1", Need::default()));
    let got = futures::future::join_all(calls).await;
    assert!(got
        .iter()
        .all(|r| r.as_ref().map(access).ok() == Some("new")));
    assert_eq!(w.vendor.calls(), 1);
}

#[tokio::test]
async fn a_live_lease_of_another_instance_is_waited_out_and_its_result_taken() {
    let w = World::new(Reply::tokens("mine", Some("rt-mine"), 3600)).await;
    let r = w.grant_due("c1", Some("rt-1")).await;
    let leased = r.leased("another-instance", w.clock.now() + Duration::seconds(60));
    let v = w.stored("c1").await.version;
    w.store.replace(&leased, &v).await.expect("leased");
    let waiting = w.fresh("c1", Need::default());
    let other = async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut theirs = leased.unleased();
        theirs.tokens.access_token = Secret::new("theirs");
        theirs.refreshed_at = w.clock.now() + Duration::milliseconds(1);
        theirs.expires_at = theirs.refreshed_at + Duration::hours(1);
        let v = w.stored("c1").await.version;
        w.store
            .replace(&theirs, &v)
            .await
            .expect("their refresh stored");
    };
    let (got, ()) = tokio::join!(waiting, other);
    assert_eq!(access(&got.expect("served")), "theirs");
    assert_eq!(
        w.vendor.calls(),
        0,
        "never refreshed beside the lease holder"
    );
}

#[tokio::test]
async fn a_lapsed_lease_is_taken_over() {
    let w = World::new(Reply::tokens("new", Some("rt-2"), 3600)).await;
    let r = w.grant_due("c1", Some("rt-1")).await;
    let leased = r.leased("a-dead-instance", w.clock.now() + Duration::seconds(60));
    let v = w.stored("c1").await.version;
    w.store.replace(&leased, &v).await.expect("leased");
    w.clock.advance(Duration::seconds(61));
    let got = w.fresh("c1", Need::default()).await.expect("refreshed");
    assert_eq!(access(&got), "new");
    assert_eq!(w.vendor.calls(), 1);
}

#[tokio::test]
async fn a_holder_whose_lease_lapsed_cannot_overwrite_the_grant_of_the_one_that_took_over() {
    let w = World::new(Reply::tokens("late", Some("rt-late"), 3600)).await;
    w.grant_due("c1", Some("rt-1")).await;
    let release = w.vendor.hold_next();
    let slow = w.fresh("c1", Need::default());
    let takeover = async {
        while w.vendor.calls() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // The first holder's vendor call outlives its lease; another instance takes over.
        w.clock.advance(Duration::seconds(61));
        w.vendor
            .then(Reply::tokens("taken-over", Some("rt-taken"), 3600));
        let got = w
            .other_engine()
            .ensure_fresh(&w.integration, &conn("c1"), Need::default())
            .await;
        let _ = release.send(());
        got
    };
    let (slow, taken) = tokio::join!(slow, takeover);
    assert_eq!(access(&taken.expect("taken over")), "taken-over");
    let stored = w.stored("c1").await.value;
    assert_eq!(
        (access(&stored), refresh_token(&stored)),
        ("taken-over", Some("rt-taken"))
    );
    assert_eq!(
        access(&slow.expect("the late holder is served the stored grant")),
        "taken-over"
    );
}

/// Connection rows of the memory table where every write that ends a lease
/// (storing a refresh's outcome) fails.
struct FailingReplace {
    inner: Arc<MemoryTable>,
    failed: Arc<AtomicU32>,
}

impl ConnectionRows for FailingReplace {
    fn get_connection<'a>(
        &'a self,
        i: &'a str,
        c: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned<ConnectionRow>>, StoreError>> {
        self.inner.get_connection(i, c)
    }
    fn upsert_connection<'a>(
        &'a self,
        row: &'a ConnectionRow,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        self.inner.upsert_connection(row)
    }
    fn replace_connection<'a>(
        &'a self,
        row: &'a ConnectionRow,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        Box::pin(async move {
            let held = self
                .inner
                .get_connection(&row.integration, &row.connection)
                .await?
                .is_some_and(|v| v.value.lease_owner.is_some());
            if held && row.lease_owner.is_none() {
                self.failed.fetch_add(1, Ordering::SeqCst);
                return Err(StoreError::Unavailable("injected".into()));
            }
            self.inner.replace_connection(row, version).await
        })
    }
    fn list_due(
        &self,
        e: OffsetDateTime,
        r: OffsetDateTime,
    ) -> BoxFuture<'_, Result<Vec<Versioned<ConnectionRow>>, StoreError>> {
        self.inner.list_due(e, r)
    }
    fn list_connections(&self) -> BoxFuture<'_, Result<Vec<Versioned<ConnectionRow>>, StoreError>> {
        self.inner.list_connections()
    }
    fn delete_connection<'a>(
        &'a self,
        i: &'a str,
        c: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.inner.delete_connection(i, c)
    }
}

#[tokio::test]
async fn new_tokens_that_cannot_be_stored_are_never_handed_out() {
    let failed = Arc::new(AtomicU32::new(0));
    let counted = failed.clone();
    let w = World::with(
        Reply::tokens("unsaved", Some("rt-2"), 3600),
        RefreshPolicy::default(),
        |m| {
            let mut rows = Rows::of(m.clone());
            rows.connections = Arc::new(FailingReplace {
                inner: m,
                failed: counted,
            });
            rows
        },
    )
    .await;
    w.grant_due("c1", Some("rt-1")).await;
    let got = w.fresh("c1", Need::default()).await;
    assert!(matches!(got, Err(RefreshError::Store(_))), "{got:?}");
    assert_eq!(w.vendor.calls(), 1);
    assert_eq!(
        failed.load(Ordering::SeqCst),
        1,
        "the refreshed grant's write failed"
    );
    assert_eq!(refresh_token(&w.stored("c1").await.value), Some("rt-1"));
}

#[tokio::test]
async fn after_a_failed_refresh_the_vendor_is_left_alone_until_the_cool_down_ends() {
    let policy = RefreshPolicy {
        max_attempts: 1,
        ..RefreshPolicy::default()
    };
    let w = World::with(
        Reply::error(503, "temporarily_unavailable"),
        policy,
        memory_rows,
    )
    .await;
    w.grant("c1", Some("rt-1"), Duration::seconds(1)).await;
    w.clock.advance(Duration::seconds(2)); // expired: nothing to serve
    assert!(matches!(
        w.fresh("c1", Need::default()).await,
        Err(RefreshError::Upstream(_))
    ));
    w.clock.advance(Duration::seconds(29));
    let cooling = w.fresh("c1", Need::default()).await;
    assert!(
        matches!(
            cooling,
            Err(RefreshError::CoolingDown {
                seconds_ago: 29,
                ..
            })
        ),
        "{cooling:?}"
    );
    assert_eq!(w.vendor.calls(), 1);
    w.clock.advance(Duration::seconds(2));
    w.vendor.then(Reply::tokens("new", None, 3600));
    assert_eq!(
        access(&w.fresh("c1", Need::default()).await.expect("refreshed")),
        "new"
    );
    assert_eq!(w.vendor.calls(), 2);
}

#[tokio::test]
async fn invalid_grant_ends_the_grant_and_nothing_is_asked_again() {
    let w = World::new(Reply::error(400, "invalid_grant")).await;
    w.grant_due("c1", Some("rt-1")).await;
    assert!(matches!(
        w.fresh("c1", Need::default()).await,
        Err(RefreshError::ReauthorizationRequired)
    ));
    let stored = w.stored("c1").await.value;
    assert_eq!(stored.status, ConnectionStatus::ReauthorizationRequired);
    w.clock.advance(Duration::hours(1));
    assert!(matches!(
        w.fresh("c1", Need::default()).await,
        Err(RefreshError::ReauthorizationRequired)
    ));
    assert_eq!(w.vendor.calls(), 1);
}

#[tokio::test]
async fn invalid_client_blames_the_integration_not_the_grant() {
    let policy = RefreshPolicy {
        max_attempts: 1,
        ..RefreshPolicy::default()
    };
    let w = World::with(Reply::error(401, "invalid_client"), policy, memory_rows).await;
    w.grant("c1", Some("rt-1"), Duration::seconds(1)).await;
    w.clock.advance(Duration::seconds(2));
    assert!(matches!(
        w.fresh("c1", Need::default()).await,
        Err(RefreshError::Misconfigured(_))
    ));
    let stored = w.stored("c1").await.value;
    assert_eq!(stored.status, ConnectionStatus::Active);
    assert_eq!(refresh_token(&stored), Some("rt-1"));
}

#[tokio::test]
async fn a_token_shorter_lived_than_the_margin_is_refreshed_at_half_its_life() {
    let w = World::new(Reply::tokens("new", None, 600)).await;
    w.grant("c1", Some("rt-1"), Duration::seconds(600)).await; // margin 900 s > lifetime
    w.clock.advance(Duration::seconds(299));
    assert_eq!(
        access(&w.fresh("c1", Need::default()).await.expect("served")),
        "at-c1"
    );
    assert_eq!(w.vendor.calls(), 0, "not refreshed on every call");
    w.clock.advance(Duration::seconds(2));
    assert_eq!(
        access(&w.fresh("c1", Need::default()).await.expect("refreshed")),
        "new"
    );
    assert_eq!(w.vendor.calls(), 1);
}

#[tokio::test]
async fn forced_refreshes_are_limited_to_one_per_window() {
    let w = World::new(Reply::tokens("new", None, 3600)).await;
    w.grant("c1", Some("rt-1"), Duration::hours(1)).await;
    let force = Need {
        force: true,
        ..Need::default()
    };
    w.clock.advance(Duration::seconds(30));
    assert_eq!(
        access(&w.fresh("c1", force).await.expect("served")),
        "at-c1"
    );
    assert_eq!(w.vendor.calls(), 0, "inside the 60 s window");
    w.clock.advance(Duration::seconds(31));
    assert_eq!(
        access(&w.fresh("c1", force).await.expect("refreshed")),
        "new"
    );
    assert_eq!(w.vendor.calls(), 1);
}

#[tokio::test]
async fn the_sweep_refreshes_what_is_due_and_what_was_idle_too_long() {
    let w = World::new(Reply::tokens("swept", None, 3600 * 48)).await;
    w.grant("due", Some("rt-due"), Duration::minutes(10)).await;
    w.grant("idle", Some("rt-idle"), Duration::hours(48)).await;
    w.clock.advance(Duration::hours(1));
    w.grant("fresh", Some("rt-fresh"), Duration::hours(48))
        .await;
    w.clock.advance(Duration::hours(23) + Duration::minutes(1)); // idle: 24 h 1 min since its refresh
    let summary = w.engine.sweep().await.expect("the sweep finishes");
    assert_eq!(
        summary,
        SweepSummary {
            refreshed: 2,
            failed: 0,
            reauthorization_required: 0
        }
    );
    let mut sent = w.vendor.refresh_tokens();
    sent.sort();
    assert_eq!(sent, ["rt-due", "rt-idle"]);
    assert_eq!(access(&w.stored("fresh").await.value), "at-fresh");
}
