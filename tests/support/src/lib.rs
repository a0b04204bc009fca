//! broker-testkit: oauth-broker's test fixtures, one copy for the API tests (`tests/api`) and the
//! benchmark (`bench/`). Each is the real component where one exists, started as a child process on
//! 127.0.0.1 and killed when dropped; fakes only for what no real component can produce.
//!
//! - [`process`]: child processes with captured output, killed and reaped on drop.
//! - [`azurite`]: Azurite (Table Storage), over HTTP or HTTPS with OAuth; raw table reads.
//! - [`oidc`]: oidc-provider, the strict authorization server (`oidc-server.mjs`).
//! - [`broker`]: the `oauth-broker` executable and how it is started.
//! - [`entra`]: a stand-in for Microsoft Entra ID (metadata, key set with rotation, RS256 access
//!   tokens shaped like Entra's v1.0/v2.0 app-only tokens, and wrong ones on purpose).
//! - [`fake_vendor`]: a scriptable token endpoint for the faults oidc-provider cannot produce.
//! - [`test_api`]: a vendor API for the proxy (tokens checked at oidc-provider, scripted faults).
//! - [`http`]: replies, the Functions host's client and headers, the timer envelope.
//! - [`browser`]: an HTTP-level browser (cookies, forms) and the HTML form parser.
//! - [`chromium`]: the real browser (Chromium via playwright-core, `browser-consent.mjs`).
//! - [`app`]: one whole application under test ([`TestApp`]) and the token route's success shape.
//! - [`vendor_sim`]: many simulated vendors in one server, each behaving as one template documents.
//! - [`util`]: randomness, ports, paths, query strings, secrets in their encodings.
//!
//! The Node fixtures (Azurite, oidc-provider, playwright-core) live beside this crate in
//! `tests/support/node_modules` (`npm ci`, done by `scripts/test` and `scripts/bench`), or where
//! `BROKER_TEST_NODE_MODULES` points.

// Fixtures, not product code: a failed set-up is a failed test, so unwrap is the honest answer.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

pub mod app;
pub mod azurite;
pub mod broker;
pub mod browser;
pub mod chromium;
pub mod entra;
pub mod fake_vendor;
pub mod http;
pub mod oidc;
pub mod process;
pub mod test_api;
pub mod util;
pub mod vendor_sim;

pub use app::*;
pub use azurite::*;
pub use broker::*;
pub use browser::*;
pub use chromium::*;
pub use http::*;
pub use oidc::*;
pub use process::*;
pub use util::*;

/// How long a fixture may take to start: generous, because the suite runs four tests at once on
/// two cores beside schemathesis and Chromium, and Node.js loading oidc-provider then took over
/// 30 s. Only a fixture that never comes up waits this long; nothing is timed against it.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one HTTP exchange may take.
pub(crate) const HTTP_TIMEOUT: Duration = Duration::from_secs(90);
