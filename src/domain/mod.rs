//! Pure domain types and decisions: names, secrets, grants and pending
//! authorizations, the clock's precision, scope strings and OAuth error codes.
//!
//! Nothing here performs I/O (the clock only reads the time) or imports actix,
//! azure, rusqlite or oauth2; every other module may depend on this one, and it
//! depends on none of them.

pub mod account;
pub mod clock;
pub mod condition;
pub mod credential;
pub mod event;
pub mod grant;
pub mod ids;
pub mod oauth_error;
pub mod scope;
pub mod secret;
pub mod source;

pub use account::{Account, AccountSourceKind};
pub use condition::Condition;
pub use credential::{ClientId, PipelineCredential, SecretHash};
pub use event::{Event, EventType};
pub use grant::{ConnectionRecord, ConnectionStatus, PendingAuthorization, TokenSet};
pub use ids::{ConnectionId, IntegrationName, InvalidName};
pub use oauth_error::OAuthErrorCode;
pub use secret::Secret;
