//! Pure domain types: names, secrets, grants and pending authorizations.
//!
//! Nothing here performs I/O or imports actix, azure, rusqlite or oauth2; every
//! other module may depend on this one.

pub mod grant;
pub mod ids;
pub mod secret;

pub use grant::{ConnectionRecord, ConnectionStatus, PendingAuthorization, TokenSet};
pub use ids::{ConnectionId, IntegrationName, InvalidName};
pub use secret::Secret;
