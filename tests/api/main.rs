//! Black-box tests: the real `oauth-broker` binary, real Azurite, real oidc-provider, called exactly as
//! the Azure Functions host, ADF and a browser call it; plus the store contract and identity-based
//! storage, which also drive the library directly. The fixtures are the broker-testkit crate
//! (`tests/support`, re-exported by `helpers`). Run them with `scripts/test`, which installs the Node
//! fixtures; `cargo test --test api` works once `tests/support/node_modules` exists.

// Tests: a failed step is a failed test, so unwrap is the honest answer here.
#![allow(clippy::unwrap_used)]

mod helpers;

mod account_binding;
mod alert_query;
mod api_keys;
mod auth_start;
mod bad_input;
mod browser_consent;
mod caller_limits;
mod cli;
mod concurrency;
mod conformance;
mod connections;
mod consent_edges;
mod consent_links;
mod consent_warnings;
mod discovery;
mod encryption_at_rest;
mod entra;
mod events_once;
mod flow;
mod front_door;
mod functions_manifest;
mod health;
mod hostile_vendor;
mod identity_storage;
mod localhost;
mod log_format;
mod no_secret_in_logs;
mod openapi;
mod outbox_store;
mod pipeline_credentials;
mod proxy;
mod reauthorization;
mod reconsent;
mod row_integrity;
mod schemathesis;
mod slow_clients;
mod sqlite_migration;
mod status_page;
mod store_contract;
mod sweep_panic;
mod vendor_faults;
mod vendor_quirks;
mod webhooks;
mod xss;
