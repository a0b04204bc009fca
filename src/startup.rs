//! The composition root: builds the one HTTP client, the store, the engine and
//! the server. Tests start the real binary, which comes through here too.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpServer};

use crate::refresh::Engine;
use crate::routes::{self, AppState};
use crate::settings::{Settings, StorageSettings};
use crate::store::identity::ManagedIdentityCredential;
use crate::store::sqlite::SqliteBackend;
use crate::store::table::TableBackend;
use crate::store::{Backend, Store};

pub struct Application {
    server: actix_web::dev::Server,
    port: u16,
}

/// The one outbound client: rustls, pooled, redirects off, bounded timeouts.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(90))
        .user_agent(concat!("oauth-broker/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client configuration is static")
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, String> {
        let http = http_client();
        let backend: Arc<dyn Backend> = match &settings.storage {
            StorageSettings::Sqlite { path } => {
                Arc::new(SqliteBackend::open(path).map_err(|e| format!("BROKER_STORAGE: {e}"))?)
            }
            StorageSettings::Table {
                connection_string,
                table,
            } => Arc::new(
                TableBackend::connect(connection_string, table, http.clone())
                    .map_err(|e| format!("BROKER_STORAGE {e}"))?,
            ),
            StorageSettings::TableIdentity {
                account,
                table_uri,
                client_id,
                table,
                identity_endpoint,
                identity_header,
            } => {
                let credential = ManagedIdentityCredential::new(
                    http.clone(),
                    identity_endpoint,
                    identity_header.clone(),
                    client_id.clone(),
                )?;
                tracing::info!(account = %account, table = %table, user_assigned = client_id.is_some(), "Table Storage with the app's managed identity");
                Arc::new(TableBackend::connect_with_identity(
                    account,
                    table_uri.as_deref(),
                    Arc::new(credential),
                    table,
                    http.clone(),
                ))
            }
        };
        let mut integrations = settings.integrations.clone();
        for d in settings.discover.iter().cloned() {
            let issuer = d.issuer.clone();
            let i = crate::integrations::discover(&http, d, &settings.integrations_path)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(integration = i.name.as_str(), issuer = %issuer, "endpoints discovered from the issuer's metadata");
            integrations.insert(i.name.clone(), i);
        }
        if settings.integrations_missing {
            tracing::warn!(
                path = %settings.integrations_path.display(),
                "no integrations file: the broker serves no integrations. Copy integrations.sample.json to this path (or set BROKER_INTEGRATIONS) and restart"
            );
        }
        let store = Store::new(backend, settings.keys.clone());
        spawn_init(store.clone());
        let integration_count = integrations.len();
        let engine = Arc::new(Engine::new(
            store,
            http,
            Arc::new(integrations),
            settings.refresh.clone(),
        ));

        let listener = TcpListener::bind(settings.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let public_url = settings.public_url.clone().unwrap_or_else(|| {
            let host = if addr.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                addr.ip().to_string()
            };
            format!("http://{host}:{}", addr.port())
        });
        let state = web::Data::new(AppState {
            engine: Arc::clone(&engine),
            api_key: settings.api_key.clone(),
            public_url: public_url.clone(),
            consent_link_lifetime: settings.consent_link_lifetime,
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .configure(routes::configure)
        })
        .listen(listener)
        .map_err(|e| e.to_string())?
        .shutdown_timeout(10)
        .run();

        if let Some(every) = settings.sweep_interval {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = engine.sweep().await {
                        tracing::error!(error = %e, "scheduled sweep failed");
                    }
                }
            });
        }
        tracing::info!(
            addr = %addr,
            host_mode = settings.host_mode,
            public_url = %public_url,
            redirect_uri = %format!("{public_url}/api/auth/callback"),
            integrations = integration_count,
            "listening"
        );
        Ok(Self {
            server,
            port: addr.port(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// Creates the table in the background at start, so the first request does not
/// pay for it; until it succeeds every store call retries it on demand, and the
/// broker starts (its health route saying 503) during a storage outage.
fn spawn_init(store: Store) {
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(500);
        loop {
            match store.ready().await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "store not ready; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    });
}
