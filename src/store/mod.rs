//! Persistence of grants, pending authorizations, pipeline credentials and
//! side rows, one small trait per capability.
//!
//! Each capability has its trait beside the [`Store`] methods that use it:
//! [`ConnectionRows`] (`connections.rs`), [`PendingRows`] (`pending.rs`),
//! [`CredentialRows`] (`credentials.rs`) and [`AuxRows`] (`outbox.rs`), plus
//! [`Lifecycle`] here. A storage technology implements every one, a file per
//! capability: Table Storage in `table/`, SQLite in `sqlite/`. Together they
//! are a [`Backend`]; [`Rows`] holds one of each, so a test double can replace
//! a single capability and keep the real backend for the rest.
//!
//! Backends deal in rows whose secrets are already sealed. [`Store`] wraps the
//! rows with the [`Keyring`], so that plaintext tokens never reach a backend
//! and the rest of the crate never sees sealed blobs. Only `startup` names a
//! concrete backend.

pub mod connections;
pub mod credentials;
pub mod identity;
#[cfg(any(test, feature = "fuzzing"))]
pub mod memory;
mod outbox;
mod pending;
pub mod sqlite;
pub mod table;

use std::sync::Arc;

use time::OffsetDateTime;

pub use connections::{ConnectionRow, ConnectionRows};
pub use credentials::{ConnectionAndCredential, CredentialRow, CredentialRows};
pub use outbox::{AuxKind, AuxRow, AuxRows, OutboxEntry};
#[cfg(feature = "fuzzing")]
pub(crate) use pending::{aad_link, aad_pending};
pub use pending::{ConsentLink, PendingRow, PendingRows};

use crate::crypto::Keyring;

/// The futures the capability traits return, boxed so that the traits stay
/// object-safe (what `async_trait` would generate, written out).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// An opaque row version: an ETag on Table Storage, a counter on SQLite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(pub String);

#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub value: T,
    pub version: Version,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist (for conditional writes: it was deleted meanwhile).
    #[error("not found")]
    NotFound,
    /// A conditional write lost: the row exists (insert) or changed (replace).
    #[error("conflict: the row was changed by someone else")]
    Conflict,
    /// The store could not be reached or answered unexpectedly.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A row could not be read back (bad field, unknown key id, failed decryption).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// What every storage technology does before and beside its rows.
pub trait Lifecycle: Send + Sync + 'static {
    /// Creates the table if needed.
    fn init(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// A cheap round trip proving the store answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// One storage technology: every capability. Implemented for any type that
/// has them all; [`Rows::of`] splits one into its capabilities. Every method of
/// a real backend is a point operation or a filtered query; none scans all rows
/// into memory.
pub trait Backend: Lifecycle + ConnectionRows + PendingRows + CredentialRows + AuxRows {}

impl<T: Lifecycle + ConnectionRows + PendingRows + CredentialRows + AuxRows + ?Sized> Backend
    for T
{
}

/// The capabilities a [`Store`] uses, each its own object: usually all one
/// backend ([`Rows::of`]), but a test double can stand in for one of them.
#[derive(Clone)]
pub struct Rows {
    pub lifecycle: Arc<dyn Lifecycle>,
    pub connections: Arc<dyn ConnectionRows>,
    pub pending: Arc<dyn PendingRows>,
    pub credentials: Arc<dyn CredentialRows>,
    pub aux: Arc<dyn AuxRows>,
}

impl Rows {
    /// Every capability from one backend.
    pub fn of(backend: Arc<dyn Backend>) -> Self {
        Self {
            lifecycle: backend.clone(),
            connections: backend.clone(),
            pending: backend.clone(),
            credentials: backend.clone(),
            aux: backend,
        }
    }
}

/// The store the rest of the crate uses: the rows plus sealing.
#[derive(Clone)]
pub struct Store {
    /// Behind one `Arc`: a store is cloned on the token path, once per clone.
    rows: Arc<Rows>,
    keys: Keyring,
    /// Set once `init` has succeeded; every operation first makes sure of it,
    /// so a store that comes up after the broker is used as soon as it answers.
    ready: Arc<tokio::sync::OnceCell<()>>,
}

/// Sealed values written since row integrity (format 2) start with this; the
/// base64 of format 1 never contains a dot.
pub(crate) const SEALED_V2: &str = "v2.";

pub(crate) fn millis(t: OffsetDateTime) -> i128 {
    crate::domain::clock::to_millis(t).unix_timestamp_nanos() / 1_000_000
}

impl Store {
    pub fn new(backend: Arc<dyn Backend>, keys: Keyring) -> Self {
        Self::from_rows(Rows::of(backend), keys)
    }
    /// A store over capabilities that need not all be one backend's.
    pub fn from_rows(rows: Rows, keys: Keyring) -> Self {
        Self {
            rows: Arc::new(rows),
            keys,
            ready: Arc::new(tokio::sync::OnceCell::new()),
        }
    }
    /// Creates the table on first use (concurrent callers share one attempt;
    /// a failed attempt is retried by the next caller).
    pub async fn ready(&self) -> Result<(), StoreError> {
        self.ready
            .get_or_try_init(|| self.rows.lifecycle.init())
            .await
            .map(|_| ())
    }
    /// The keys (for the keyed hashes of credential secrets).
    pub fn keyring(&self) -> &Keyring {
        &self.keys
    }
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.ready().await?;
        self.rows.lifecycle.ping().await
    }
    /// Seals in format 2 (the value carries the `v2.` mark).
    fn seal_v2(&self, plaintext: &[u8], aad: &[u8]) -> (String, String) {
        let (key_id, sealed) = self.keys.seal(plaintext, aad);
        (key_id, format!("{SEALED_V2}{sealed}"))
    }
    /// Opens a format-2 value; anything else is refused.
    fn open_v2(
        &self,
        key_id: &str,
        sealed: &str,
        aad: &[u8],
    ) -> Result<Vec<u8>, crate::crypto::CryptoError> {
        let sealed = sealed
            .strip_prefix(SEALED_V2)
            .ok_or(crate::crypto::CryptoError::Corrupt)?;
        self.keys.open(key_id, sealed, aad)
    }
}
