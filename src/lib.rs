//! oauth-broker: an OAuth 2.0 authorization-code broker for unattended data
//! pipelines, served as an Azure Functions custom handler.

pub mod coalesce;
pub mod crypto;
pub mod domain;
pub mod functions_host;
pub mod integrations;
pub mod oauth;
pub mod refresh;
pub mod routes;
pub mod settings;
pub mod startup;
pub mod store;
pub mod telemetry;
