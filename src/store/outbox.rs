//! The events outbox and the once-per-breakage markers, kept as side rows
//! through the sealing [`Store`]: an entry's body is sealed (it may hold a
//! consent link) and bound to its key, event, type, receiver and time.

use time::OffsetDateTime;

use super::{millis, BoxFuture, Store, StoreError, Version, Versioned};
use crate::domain::Secret;

/// Which kind of side row. Side rows live apart from connections: in the
/// `~outbox` and `~marker` partitions on Table Storage, in the `aux` table on
/// SQLite. They hold no token in clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuxKind {
    /// Event deliveries not yet acknowledged by their receiver.
    Outbox,
    /// Small state records shared by every instance (which events were sent).
    Marker,
}

impl AuxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbox => "outbox",
            Self::Marker => "marker",
        }
    }
}

/// A side row: a key, the instant it is next due, and an opaque body.
#[derive(Debug, Clone, PartialEq)]
pub struct AuxRow {
    pub kind: AuxKind,
    /// Characters of `[A-Za-z0-9._:-]` only.
    pub key: String,
    pub due_at: OffsetDateTime,
    pub body: String,
}

/// Side rows: keyed, due at an instant, conditionally replaced (claims).
pub trait AuxRows: Send + Sync + 'static {
    /// Creates a side row; `Conflict` when its key exists.
    fn insert_aux<'a>(&'a self, row: &'a AuxRow) -> BoxFuture<'a, Result<Version, StoreError>>;
    /// `Ok(None)` when the side row does not exist.
    fn get_aux<'a>(
        &'a self,
        kind: AuxKind,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned<AuxRow>>, StoreError>>;
    /// Replaces a side row only if it is still at `version` (`Conflict` /
    /// `NotFound` as for connections): how an instance claims an outbox entry.
    fn replace_aux<'a>(
        &'a self,
        row: &'a AuxRow,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<Version, StoreError>>;
    /// Deletes a side row (only at `version` when given: `Conflict` if it
    /// changed); `Ok(false)` when it did not exist.
    fn delete_aux<'a>(
        &'a self,
        kind: AuxKind,
        key: &'a str,
        version: Option<&'a Version>,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Up to `limit` side rows of `kind` due at or before `before`, earliest first
    /// where the backend can order (one page, a server-side filter).
    fn due_aux(
        &self,
        kind: AuxKind,
        before: OffsetDateTime,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<Versioned<AuxRow>>, StoreError>>;
}

/// One delivery of one event to one receiver, waiting in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    /// `<event id>.<receiver id>`.
    pub key: String,
    pub event_id: String,
    pub event_type: String,
    pub receiver: String,
    pub occurred_at: OffsetDateTime,
    /// When the next attempt is due (while claimed: when the claim lapses).
    pub next_attempt_at: OffsetDateTime,
    /// Attempts made so far.
    pub attempts: u32,
    /// Why the last attempt failed (status or transport class; never a body).
    pub last_error: Option<String>,
    /// The body to deliver. Sealed at rest: it may hold a consent link.
    pub payload: Secret,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct OutboxBody {
    e: String,
    t: String,
    r: String,
    o: i64,
    n: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    k: String,
    s: String,
}

/// An outbox entry's payload is bound to its key, event, type, receiver and time.
fn aad_outbox(key: &str, b: &OutboxBody) -> Vec<u8> {
    serde_json::to_vec(&("oauth-broker/v2/outbox", key, &b.e, &b.t, &b.r, b.o))
        .expect("serializing strings and numbers cannot fail")
}

impl Store {
    /// Puts a delivery into the outbox (`Conflict` if it is there already).
    pub async fn outbox_add(&self, entry: &OutboxEntry) -> Result<Version, StoreError> {
        self.ready().await?;
        self.rows.aux.insert_aux(&self.seal_outbox(entry)).await
    }

    /// Up to `limit` deliveries due at `now`. Rows that do not open are
    /// logged and removed (they can never be delivered).
    pub async fn outbox_due(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Versioned<OutboxEntry>>, StoreError> {
        self.ready().await?;
        let rows = self.rows.aux.due_aux(AuxKind::Outbox, now, limit).await?;
        let mut out = Vec::with_capacity(rows.len());
        for v in rows {
            match self.open_outbox(&v.value) {
                Ok(value) => out.push(Versioned {
                    value,
                    version: v.version,
                }),
                Err(e) => {
                    tracing::error!(error = %e, key = %v.value.key, "removing an outbox entry that cannot be read");
                    let _ = self
                        .rows
                        .aux
                        .delete_aux(AuxKind::Outbox, &v.value.key, Some(&v.version))
                        .await;
                }
            }
        }
        Ok(out)
    }

    /// Rewrites a delivery if it is still at `version` (a claim, or the next attempt's time).
    pub async fn outbox_update(
        &self,
        entry: &OutboxEntry,
        version: &Version,
    ) -> Result<Version, StoreError> {
        self.ready().await?;
        self.rows
            .aux
            .replace_aux(&self.seal_outbox(entry), version)
            .await
    }

    /// Removes a delivered (or abandoned) entry if it is still at `version`.
    pub async fn outbox_remove(&self, key: &str, version: &Version) -> Result<(), StoreError> {
        self.ready().await?;
        self.rows
            .aux
            .delete_aux(AuxKind::Outbox, key, Some(version))
            .await
            .map(|_| ())
    }

    fn seal_outbox(&self, e: &OutboxEntry) -> AuxRow {
        let mut body = OutboxBody {
            e: e.event_id.clone(),
            t: e.event_type.clone(),
            r: e.receiver.clone(),
            o: millis(e.occurred_at) as i64,
            n: e.attempts,
            x: e.last_error.clone(),
            k: String::new(),
            s: String::new(),
        };
        (body.k, body.s) = self.seal_v2(e.payload.expose().as_bytes(), &aad_outbox(&e.key, &body));
        AuxRow {
            kind: AuxKind::Outbox,
            key: e.key.clone(),
            due_at: crate::domain::clock::to_millis(e.next_attempt_at),
            body: serde_json::to_string(&body).expect("serializing strings cannot fail"),
        }
    }

    fn open_outbox(&self, row: &AuxRow) -> Result<OutboxEntry, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("outbox entry {}: {what}", row.key));
        let b: OutboxBody =
            serde_json::from_str(&row.body).map_err(|_| corrupt("body is not readable"))?;
        let plain = self
            .open_v2(&b.k, &b.s, &aad_outbox(&row.key, &b))
            .map_err(|e| corrupt(&e.to_string()))?;
        let payload = String::from_utf8(plain).map_err(|_| corrupt("payload is not text"))?;
        Ok(OutboxEntry {
            key: row.key.clone(),
            event_id: b.e,
            event_type: b.t,
            receiver: b.r,
            occurred_at: OffsetDateTime::from_unix_timestamp_nanos(i128::from(b.o) * 1_000_000)
                .map_err(|_| corrupt("time"))?,
            next_attempt_at: row.due_at,
            attempts: b.n,
            last_error: b.x,
            payload: Secret::new(payload),
        })
    }

    /// A marker's value and version (`Ok(None)` when absent).
    pub async fn marker_get(&self, key: &str) -> Result<Option<Versioned<String>>, StoreError> {
        self.ready().await?;
        Ok(self
            .rows
            .aux
            .get_aux(AuxKind::Marker, key)
            .await?
            .map(|v| Versioned {
                value: v.value.body,
                version: v.version,
            }))
    }

    /// Creates a marker (`version` `None`; `Conflict` if it exists) or replaces
    /// it at `version` (`Conflict` if it changed).
    pub async fn marker_put(
        &self,
        key: &str,
        value: &str,
        version: Option<&Version>,
    ) -> Result<Version, StoreError> {
        self.ready().await?;
        let row = AuxRow {
            kind: AuxKind::Marker,
            key: key.to_owned(),
            due_at: crate::domain::clock::now(),
            body: value.to_owned(),
        };
        match version {
            None => self.rows.aux.insert_aux(&row).await,
            Some(v) => self.rows.aux.replace_aux(&row, v).await,
        }
    }

    /// Deletes a marker; `Ok(false)` when it did not exist.
    pub async fn marker_delete(&self, key: &str) -> Result<bool, StoreError> {
        self.ready().await?;
        self.rows.aux.delete_aux(AuxKind::Marker, key, None).await
    }
}
