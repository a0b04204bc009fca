//! The command line. Without a subcommand the binary serves (the Functions
//! host starts it without arguments); the subcommands are for standalone
//! operators and read the same settings as the server. `--help` and
//! `--version` print and exit before anything is read or created.

use std::io::Write;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use url::Url;

use crate::config::{ConfigError, KeySource, Settings, StorageSettings};
use crate::consent::LinkIssuer;
use crate::domain::condition::{Assessed, Overview};
use crate::domain::{ConnectionId, IntegrationName};
use crate::registry::Registry;
use crate::store::Store;

const ABOUT: &str = "OAuth 2.0 authorization-code broker for unattended data pipelines";

const LONG_ABOUT: &str = "OAuth 2.0 authorization-code broker for unattended data pipelines.

Without a command it serves: standalone on http://127.0.0.1:7071 (BROKER_PORT, BROKER_BIND), or
as an Azure Functions custom handler when the host sets FUNCTIONS_CUSTOMHANDLER_PORT. Settings are
environment variables (BROKER_*); integrations are read from integrations.json (BROKER_INTEGRATIONS).
See README.md and docs/configuration.md.";

#[derive(Debug, Parser)]
#[command(name = "oauth-broker", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the settings and the integrations file, reporting every problem at once
    ///
    /// Exits 0 when the broker would start, 1 (after listing each problem with the setting or the
    /// field path, e.g. integrations.acme.scopes) when it would not. Reads nothing but the
    /// environment and the integrations file; creates nothing.
    Check {
        /// Also fetch the metadata of every integration configured with only an "issuer"
        #[arg(long)]
        discover: bool,
    },
    /// List the integrations and their connections with each one's condition (never a token)
    ///
    /// Reads the configured store (BROKER_STORAGE; by default .broker/broker.db). Integrations
    /// without connections are listed too.
    Connections {
        /// Print JSON (the fields of GET /api/connections, plus "condition") instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Print a consent link for a connection: the link POST /api/connections/{i}/{c}/consent-link makes
    ///
    /// The link carries no key: send it to whoever owns the vendor account. It is used up by the
    /// consent and expires after BROKER_CONSENT_LINK_TTL_SECS (default 24 h) or --expires-in.
    ConsentLink {
        /// The integration, as named in integrations.json
        integration: String,
        /// The connection id (one per vendor account), e.g. default
        connection: String,
        /// The link's lifetime in seconds (60 to 2592000)
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(60..=2_592_000))]
        expires_in: Option<u64>,
        /// Let the consent bind the connection to a different vendor account than it has now
        #[arg(long)]
        allow_account_change: bool,
    },
}

/// What a command prints on failure and its exit code.
pub struct Failure {
    pub message: String,
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Self {
            message: e.to_string(),
        }
    }
}

fn fail(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
    }
}

fn env_get(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// `oauth-broker check`.
pub async fn check(discover: bool, out: &mut dyn Write) -> Result<(), Failure> {
    let settings = match Settings::load(&env_get) {
        Ok(s) => s,
        Err(e) => {
            let problems = e.problems();
            return Err(fail(format!(
                "{} problem{} found:\n{}",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                problems
                    .iter()
                    .map(|p| format!("  - {p}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )));
        }
    };
    let problems = if discover {
        discover_all(&settings, out).await
    } else {
        Vec::new()
    };
    for w in &settings.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    if !problems.is_empty() {
        return Err(fail(format!(
            "{} problem{} found:\n{}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems.join("\n")
        )));
    }
    summary(&settings, discover, out);
    Ok(())
}

/// `check --discover`: fetches the metadata of every issuer-only integration,
/// printing what was found; the problems, one line each.
async fn discover_all(settings: &Settings, out: &mut dyn Write) -> Vec<String> {
    let mut problems = Vec::new();
    let http = crate::startup::http_client();
    for d in &settings.integrations.parsed.discover {
        let name = d.name.as_str().to_owned();
        match crate::config::discovery::discover(&http, d.clone(), &settings.integrations.path)
            .await
        {
            Ok(i) => {
                let _ = writeln!(
                    out,
                    "discovered {name}: authorization {}, token {}",
                    i.authorization_url, i.token_url
                );
            }
            Err(e) => problems.push(format!("  - {e}")),
        }
    }
    problems
}

/// What a valid configuration amounts to: integrations, store, redirect URI.
fn summary(settings: &Settings, discover: bool, out: &mut dyn Write) {
    let names = settings.integrations.names();
    let public = public_url(settings);
    let _ = writeln!(out, "the configuration is valid");
    if settings.integrations.found {
        let _ = writeln!(
            out,
            "  integrations ({}): {}",
            settings.integrations.path.display(),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        );
    } else {
        let _ = writeln!(
            out,
            "  integrations: {} does not exist: the broker would serve none (copy integrations.sample.json there)",
            settings.integrations.path.display()
        );
    }
    let _ = writeln!(out, "  store: {}", describe_storage(&settings.storage));
    let _ = writeln!(
        out,
        "  redirect URI (register it at each vendor): {}/api/auth/callback",
        public.as_str().trim_end_matches('/')
    );
    if !settings.integrations.parsed.discover.is_empty() && !discover {
        let _ = writeln!(
            out,
            "  {} integration(s) are discovered from their issuer at start; add --discover to fetch their metadata now",
            settings.integrations.parsed.discover.len()
        );
    }
}

fn describe_storage(s: &StorageSettings) -> String {
    match s {
        StorageSettings::Sqlite { path } => format!("SQLite at {}", path.display()),
        StorageSettings::Table { table, .. } => {
            format!("Table Storage (connection string), table {table}")
        }
        StorageSettings::TableIdentity { identity, table } => format!(
            "Table Storage in account {} with the managed identity, table {table}",
            identity.account
        ),
    }
}

/// The public URL the server would use: the setting, or the address it would bind.
fn public_url(settings: &Settings) -> Url {
    settings.public_url.clone().unwrap_or_else(|| {
        let ip = settings.listen.ip();
        let host = if ip.is_unspecified() {
            "127.0.0.1".to_owned()
        } else if ip.is_ipv6() {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        Url::parse(&format!("http://{host}:{}", settings.listen.port()))
            .expect("an IP address and port make a URL")
    })
}

/// The configured store, opened only if it already exists: the commands never
/// create a database or a key file.
fn existing_store(settings: &Settings) -> Result<Option<Store>, Failure> {
    if let StorageSettings::Sqlite { path } = &settings.storage {
        if !path.exists() {
            return Ok(None);
        }
    }
    let keys = match &settings.keys {
        KeySource::Configured(k) => k.clone(),
        KeySource::File(path) if !path.exists() => {
            return Err(fail(format!(
                "the store exists but its key file {} does not: without it no grant can be read (see docs/operations.md, Backup and upgrade)",
                path.display()
            )))
        }
        KeySource::File(path) => crate::keyfile::load_or_create_keyring(path)?,
    };
    let http = crate::startup::http_client();
    let backend =
        crate::startup::backend(&settings.storage, &http).map_err(|e| fail(e.to_string()))?;
    Ok(Some(Store::new(backend, keys)))
}

fn load() -> Result<Settings, Failure> {
    Settings::load(&env_get).map_err(|e| {
        fail(format!(
            "{e}\n(run `oauth-broker check` to list every problem)"
        ))
    })
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// `oauth-broker connections [--json]`.
pub async fn connections(json: bool, out: &mut dyn Write) -> Result<(), Failure> {
    let settings = load()?;
    let records = match existing_store(&settings)? {
        Some(store) => store
            .list()
            .await
            .map_err(|e| fail(format!("the store cannot be read: {e}")))?,
        None => Vec::new(),
    };
    let configured: Vec<IntegrationName> = settings
        .integrations
        .names()
        .iter()
        .filter_map(|n| IntegrationName::parse(n).ok())
        .collect();
    let idle = |name: &IntegrationName| {
        settings
            .integrations
            .parsed
            .ready
            .get(name)
            .and_then(|i| i.refresh_token_idle)
    };
    let overview = Overview::build(records, configured.clone(), idle, OffsetDateTime::now_utc());
    let mut connections = overview.connections.clone();
    connections.sort_by(|a, b| {
        (&a.record.integration, &a.record.connection)
            .cmp(&(&b.record.integration, &b.record.connection))
    });
    if json {
        connections_json(&overview, &configured, &connections, out);
        return Ok(());
    }
    if overview.by_integration.is_empty() {
        let _ = writeln!(
            out,
            "no integrations are configured ({} does not name any)",
            settings.integrations.path.display()
        );
        return Ok(());
    }
    connections_table(&overview, &configured, &connections, out);
    Ok(())
}

/// `connections --json`: the integrations with their counts, then every
/// connection (sorted) with its condition.
fn connections_json(
    overview: &Overview,
    configured: &[IntegrationName],
    connections: &[Assessed],
    out: &mut dyn Write,
) {
    let integrations: Vec<serde_json::Value> = overview
        .by_integration
        .iter()
        .map(|(name, counts)| {
            serde_json::json!({
                "integration": name.as_str(),
                "configured": configured.contains(name),
                "connections": counts.values().sum::<usize>(),
            })
        })
        .collect();
    let conns: Vec<serde_json::Value> = connections
        .iter()
        .map(|a| {
            let r = &a.record;
            serde_json::json!({
                "integration": r.integration.as_str(),
                "connection": r.connection.as_str(),
                "status": r.status.as_str(),
                "condition": a.condition.as_str(),
                "expires_at": rfc3339(r.expires_at),
                "refreshed_at": rfc3339(r.refreshed_at),
                "created_at": rfc3339(r.created_at),
                "last_error": r.last_error,
                "last_error_at": r.last_error_at.map(rfc3339),
                "scope": r.scope,
                "metadata": r.metadata,
            })
        })
        .collect();
    let doc = serde_json::json!({"integrations": integrations, "connections": conns});
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    );
}

/// `connections`: per integration its count, then a line per connection.
fn connections_table(
    overview: &Overview,
    configured: &[IntegrationName],
    connections: &[Assessed],
    out: &mut dyn Write,
) {
    for (name, counts) in &overview.by_integration {
        let n: usize = counts.values().sum();
        let note = if configured.contains(name) {
            ""
        } else {
            " (not in the integrations file)"
        };
        let _ = writeln!(
            out,
            "{}{note}: {n} connection{}",
            name.as_str(),
            if n == 1 { "" } else { "s" }
        );
        let mine: Vec<_> = connections
            .iter()
            .filter(|a| &a.record.integration == name)
            .collect();
        if mine.is_empty() {
            let _ = writeln!(
                out,
                "  none yet: oauth-broker consent-link {} <connection-id>",
                name.as_str()
            );
        }
        for a in mine {
            let r = &a.record;
            let _ = writeln!(
                out,
                "  {:<24} {:<26} refreshed {}{}",
                r.connection.as_str(),
                a.condition.as_str(),
                rfc3339(r.refreshed_at),
                r.last_error
                    .as_deref()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
}

/// `oauth-broker consent-link <integration> <connection> [--expires-in SECS] [--allow-account-change]`.
pub async fn consent_link(
    integration: &str,
    connection: &str,
    expires_in: Option<u64>,
    allow_account_change: bool,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let integration = IntegrationName::parse(integration)
        .map_err(|e| fail(format!("integration {integration:?}: {e}")))?;
    let connection = ConnectionId::parse(connection)
        .map_err(|e| fail(format!("connection {connection:?}: {e}")))?;
    let settings = load()?;
    let http = crate::startup::http_client();
    // Issuer-only integrations are discovered now, so their links work too.
    let mut ready = settings.integrations.parsed.ready.clone();
    if let Some(d) = settings
        .integrations
        .parsed
        .discover
        .iter()
        .find(|d| d.name == integration)
    {
        let i = crate::config::discovery::discover(&http, d.clone(), &settings.integrations.path)
            .await?;
        ready.insert(i.name.clone(), i);
    }
    if !ready.contains_key(&integration) {
        let names = settings.integrations.names();
        return Err(fail(format!(
            "no integration {:?} in {}; configured: {}",
            integration.as_str(),
            settings.integrations.path.display(),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )));
    }
    // A link is a row in the store: this command creates the store if needed, as the server would.
    let keys = match &settings.keys {
        KeySource::Configured(k) => k.clone(),
        KeySource::File(path) => crate::keyfile::load_or_create_keyring(path)?,
    };
    let backend =
        crate::startup::backend(&settings.storage, &http).map_err(|e| fail(e.to_string()))?;
    let store = Store::new(backend, keys);
    store
        .ready()
        .await
        .map_err(|e| fail(format!("the store is not available: {e}")))?;
    let registry = Registry::of(ready);
    let links = LinkIssuer::new(
        Arc::clone(&registry),
        store.clone(),
        public_url(&settings),
        settings.consent_link_lifetime,
    );
    let lifetime = expires_in.map(|s| time::Duration::seconds(s as i64));
    let link = links
        .create(&integration, &connection, lifetime, allow_account_change)
        .await
        .map_err(|e| fail(format!("cannot create the link: {e}")))?;
    let _ = writeln!(out, "{}", link.url);
    // The note goes to stderr, so `$(oauth-broker consent-link …)` is the link alone.
    eprintln!(
        "valid until {}; open it, or send it to whoever owns the {} account",
        rfc3339(link.link.expires_at),
        integration.as_str()
    );
    Ok(())
}
