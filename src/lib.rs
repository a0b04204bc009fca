//! oauth-broker: an OAuth 2.0 authorization-code broker for unattended data
//! pipelines, served as an Azure Functions custom handler.
//!
//! Layers, each depending only on those above it:
//! - `domain` (pure types and decisions), `crypto`, `coalesce`, `telemetry`,
//!   `vendor_body` (capped reads of vendor answers), `proxy` (the proxy's
//!   path, header and link rules);
//! - `config` (settings and the integrations file, validated once);
//! - `oauth` (the vendor side of the protocol), `store` (sealed persistence);
//! - `entra` (Microsoft Entra ID access tokens: keys, checks);
//! - `events` (changes of state as log lines and signed webhooks, from an
//!   outbox in the store);
//! - `registry` (integrations, with background discovery), `refresh` (the
//!   refresh engine), `consent` (consent flows and links);
//! - `routes` and `functions_host` (HTTP), `keyfile` and `startup` (composition);
//! - `cli` (the command line: serve, or an operator's command).

pub mod cli;
pub mod coalesce;
pub mod config;
pub mod connection_cap;
pub mod connections;
pub mod consent;
pub mod credentials;
pub mod crypto;
pub mod domain;
pub mod entra;
pub mod events;
pub mod functions_host;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod keyfile;
pub mod oauth;
pub mod proxy;
pub mod refresh;
pub mod registry;
pub mod routes;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod vendor_body;
