//! The composition root: builds the one HTTP client, the store, the
//! integration registry, the refresh engine and the consent service, binds the
//! port, mounts the routes, and starts the background work (discovery of
//! `issuer` integrations, the standalone sweep). Tests start the real binary,
//! which comes through here too. The only module that names concrete backends.
//!
//! Start-up's side effects live here: the embedded store's key file is created
//! (see `keyfile`), and discovery runs only after the port is bound, so a slow
//! issuer cannot make the Functions host give up on the app.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::middleware::{from_fn, DefaultHeaders};
use actix_web::{web, App, HttpServer};
use url::Url;

use crate::config::{ApiKeySource, ConfigError, KeySource, Settings, StorageSettings};
use crate::consent::{ConsentService, LinkIssuer};
use crate::credentials::Credentials;
use crate::events::Events;
use crate::refresh::Engine;
use crate::registry::Registry;
use crate::routes::front_door::FrontDoor;
use crate::routes::{self, AppState};
use crate::store::identity::ManagedIdentityCredential;
use crate::store::sqlite::SqliteBackend;
use crate::store::table::TableBackend;
use crate::store::{Backend, Store};

/// Why the broker cannot start. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("BROKER_STORAGE {0}")]
    Storage(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

pub struct Application {
    server: actix_web::dev::Server,
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

pub(crate) fn backend(
    storage: &StorageSettings,
    http: &reqwest::Client,
) -> Result<Arc<dyn Backend>, StartupError> {
    Ok(match storage {
        StorageSettings::Sqlite { path } => Arc::new(
            SqliteBackend::open(path).map_err(|e| StartupError::Storage(format!(": {e}")))?,
        ),
        StorageSettings::Table {
            connection_string,
            table,
        } => Arc::new(
            TableBackend::connect(connection_string, table, http.clone())
                .map_err(|e| StartupError::Storage(e.to_string()))?,
        ),
        StorageSettings::TableIdentity { identity, table } => {
            let credential = ManagedIdentityCredential::with_endpoints(
                http.clone(),
                identity.endpoints.clone(),
                identity.client_id.clone(),
            )
            .map_err(|problem| ConfigError::setting("IDENTITY_ENDPOINT", problem))?;
            tracing::info!(account = %identity.account, table = %table, user_assigned = identity.client_id.is_some(), "Table Storage with the app's managed identity");
            Arc::new(TableBackend::connect_with_identity(
                &identity.account,
                identity.table_uri.as_deref(),
                Arc::new(credential),
                table,
                http.clone(),
            ))
        }
    })
}

/// The admin API key and, when it was generated into a file, that file's path.
type ApiKey = Option<(crate::domain::Secret, Option<std::path::PathBuf>)>;

/// What the routes need, and the pieces the background work starts from.
struct Services {
    state: web::Data<AppState>,
    engine: Arc<Engine>,
    registry: Arc<Registry>,
    events: Events,
    entra: Option<Arc<crate::entra::Verifier>>,
    redirect_uri: String,
}

impl Application {
    /// Starts the broker in the order start-up needs: secrets and store, the
    /// port, the services (each built with what it needs, nothing bound late),
    /// the server, then the slow background work, and last the `listening` line.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let http = http_client();
        let (keys, api_key) = secrets(&settings)?;
        let backend = backend(&settings.storage, &http)?;
        for warning in &settings.warnings {
            tracing::warn!("{warning}");
        }
        if !settings.integrations.found {
            tracing::warn!(
                path = %settings.integrations.path.display(),
                "no integrations file: the broker serves no integrations. Copy integrations.sample.json to this path (or set BROKER_INTEGRATIONS) and restart"
            );
        }
        let store = Store::new(backend, keys);
        spawn_init(store.clone());
        let (listener, addr) = bind(&settings)?;
        let public_url = settings
            .public_url
            .clone()
            .unwrap_or_else(|| local_url(addr));
        let services = services(&settings, store, http, &public_url);
        let front_door = web::Data::new(match (&api_key, settings.host_mode) {
            (Some((key, _)), false) => FrontDoor::standalone(
                &public_url,
                addr.port(),
                key.clone(),
                settings.token_keys.clone(),
            ),
            (key, _) => FrontDoor::functions_host(
                key.as_ref().map(|(k, _)| k.clone()),
                settings.token_keys.clone(),
            ),
        });
        let (server, workers) = serve(
            &settings,
            listener,
            services.state.clone(),
            front_door,
            public_url.scheme() == "https",
        )?;
        start_background(&settings, &services).await;
        announce(
            &settings,
            &api_key,
            &public_url,
            addr,
            &services.redirect_uri,
            workers,
        );
        Ok(Self { server })
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// The store's keyring and the admin API key, read or (standalone) created.
fn secrets(settings: &Settings) -> Result<(crate::crypto::Keyring, ApiKey), StartupError> {
    let keys = match &settings.keys {
        KeySource::Configured(k) => k.clone(),
        KeySource::File(path) => crate::keyfile::load_or_create_keyring(path)?,
    };
    let api_key = match &settings.api_key {
        None => None,
        Some(ApiKeySource::Configured(k)) => Some((k.clone(), None)),
        Some(ApiKeySource::File(path)) => Some((
            crate::keyfile::load_or_create_api_key(path)?,
            Some(std::path::absolute(path).unwrap_or_else(|_| path.clone())),
        )),
    };
    Ok((keys, api_key))
}

/// The listening socket and the address it got (port 0 picks one).
fn bind(settings: &Settings) -> Result<(TcpListener, std::net::SocketAddr), StartupError> {
    let failed = |source| StartupError::Listen {
        addr: settings.listen,
        source,
    };
    let listener = TcpListener::bind(settings.listen).map_err(failed)?;
    let addr = listener.local_addr().map_err(failed)?;
    Ok((listener, addr))
}

/// Every service, built in the order they need each other.
fn services(
    settings: &Settings,
    store: Store,
    http: reqwest::Client,
    public_url: &Url,
) -> Services {
    let registry = Registry::new(&settings.integrations, http.clone());
    let links = LinkIssuer::new(
        Arc::clone(&registry),
        store.clone(),
        public_url.clone(),
        settings.consent_link_lifetime,
    );
    let events = Events::new(
        store.clone(),
        http.clone(),
        settings.events.clone(),
        Some(Arc::new(links.clone())),
    );
    let engine = Arc::new(Engine::new(
        store.clone(),
        http.clone(),
        Arc::clone(&registry),
        settings.refresh.clone(),
        Some(events.clone()),
    ));
    let credentials = Arc::new(Credentials::new(Arc::clone(&engine), store.clone()));
    let entra = settings
        .entra
        .clone()
        .map(|e| crate::entra::Verifier::new(e, http.clone()));
    let connections = crate::connections::Connections::new(
        Arc::clone(&engine),
        store.clone(),
        http.clone(),
        Arc::clone(&registry),
        settings.refresh.upstream_timeout,
    );
    let consent = ConsentService::new(
        Arc::clone(&engine),
        store,
        http,
        settings.refresh.upstream_timeout,
        public_url.clone(),
    );
    let redirect_uri = consent.redirect_uri().to_string();
    let state = web::Data::new(AppState {
        engine: Arc::clone(&engine),
        connections,
        consent,
        links,
        credentials,
        proxy: routes::proxy::Proxy::new(settings.proxy.clone()),
        entra: entra.clone(),
        source_rule: Arc::new(crate::domain::source::SourceRule {
            trusted_proxies: settings.trusted_proxies.clone(),
            functions_host: settings.host_mode,
        }),
    });
    Services {
        state,
        engine,
        registry,
        events,
        entra,
        redirect_uri,
    }
}

/// The HTTP server on `listener`, and its worker count.
fn serve(
    settings: &Settings,
    listener: TcpListener,
    state: web::Data<AppState>,
    front_door: web::Data<FrontDoor>,
    hsts: bool,
) -> Result<(actix_web::dev::Server, usize), StartupError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(settings.max_connections);
    // Standalone only: under the Functions host every request comes from the host.
    let cap = (!settings.host_mode).then(|| {
        crate::connection_cap::ConnectionCap::new(
            settings.max_connections_per_source,
            settings.trusted_proxies.clone(),
        )
    });
    let server = HttpServer::new(move || {
        let mut headers = DefaultHeaders::new().add(("X-Content-Type-Options", "nosniff"));
        if hsts {
            headers = headers.add(("Strict-Transport-Security", "max-age=31536000"));
        }
        App::new()
            .app_data(state.clone())
            .app_data(front_door.clone())
            .configure(routes::configure)
            .wrap(from_fn(routes::front_door::admit))
            .wrap(headers)
    })
    // The cap is per worker: split it so the total stays within the setting.
    .workers(workers)
    .max_connections(settings.max_connections / workers)
    .client_request_timeout(Duration::from_secs(5))
    .client_disconnect_timeout(Duration::from_secs(1))
    .on_connect(move |io, ext| {
        if let Some(cap) = &cap {
            cap.on_connect(io, ext);
        }
    })
    .listen(listener)
    .map_err(|source| StartupError::Listen {
        addr: settings.listen,
        source,
    })?
    .shutdown_timeout(10)
    .run();
    Ok((server, workers))
}

/// Bound: now the slow work (discovery, Entra keys, the configuration note,
/// the events dispatcher, the standalone sweep).
async fn start_background(settings: &Settings, services: &Services) {
    services.registry.spawn_discovery();
    if let Some(entra) = &services.entra {
        tracing::info!(tenant = %entra.settings().tenant, audiences = ?entra.settings().audiences, metadata = %entra.settings().metadata_url(), "Entra ID callers accepted");
        entra.spawn_prefetch();
    }
    // Before `listening`, so the first call after a fixed configuration already
    // retries; bounded, so a slow store cannot hold the start (it then ends in
    // the background).
    {
        let engine = Arc::clone(&services.engine);
        let note = tokio::spawn(async move { engine.note_configuration().await });
        let _ = tokio::time::timeout(Duration::from_secs(2), note).await;
    }
    services.events.spawn_dispatcher();
    if let Some(every) = settings.sweep_interval {
        tokio::spawn(sweep_every(every, Arc::clone(&services.engine)));
    }
}

/// The standalone sweep: one every `every`, each its own task, so that
/// whatever happens in one, the next runs.
async fn sweep_every(every: Duration, engine: Arc<Engine>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let engine = Arc::clone(&engine);
        match tokio::spawn(async move { engine.sweep().await }).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "scheduled sweep failed"),
            // The payload is not logged: it could quote a value.
            Err(e) if e.is_panic() => tracing::error!(
                outcome = "panicked",
                "a scheduled sweep panicked; the next one runs on schedule"
            ),
            Err(_) => tracing::error!("a scheduled sweep was cancelled"),
        }
    }
}

/// The start-up lines: how to call (standalone), then `listening`, then what is served.
fn announce(
    settings: &Settings,
    api_key: &ApiKey,
    public_url: &Url,
    addr: std::net::SocketAddr,
    redirect_uri: &str,
    workers: usize,
) {
    let names = settings.integrations.names();
    // Before `listening`: whoever waits for that line has read the key file's name by then.
    if let Some((_, file)) = api_key {
        how_to_call(
            public_url,
            file.as_deref(),
            names.first().map(String::as_str),
        );
    }
    tracing::info!(
        addr = %addr,
        host_mode = settings.host_mode,
        public_url = %public_url.as_str().trim_end_matches('/'),
        redirect_uri = %redirect_uri,
        integrations = names.len(),
        integration_names = %names.join(", "),
        max_connections = settings.max_connections / workers * workers,
        "listening"
    );
    if !names.is_empty() {
        tracing::info!(
            "serving {} integration{}: {}; register the redirect URI {redirect_uri} at each vendor",
            names.len(),
            if names.len() == 1 { "" } else { "s" },
            names.join(", "),
        );
    }
}

/// Standalone mode: says where the API key is and how to call the token route
/// with it, as a command that works when pasted into a shell; never the key itself.
fn how_to_call(public_url: &Url, file: Option<&std::path::Path>, integration: Option<&str>) {
    let base = public_url.as_str().trim_end_matches('/');
    let target = match integration {
        Some(name) => format!("{name}/default"),
        None => "<integration>/<connection>".to_owned(),
    };
    let curl = format!("curl -H \"x-functions-key: $KEY\" {base}/api/token/{target}");
    match file {
        Some(file) => {
            tracing::info!(
                api_key_file = %file.display(),
                "protected routes require the API key in {}",
                file.display()
            );
            tracing::info!("call the token route: KEY=$(cat {}) && {curl}", shell_word(&file.display().to_string()));
        }
        None => tracing::info!("protected routes require BROKER_API_KEY; call the token route: KEY=$BROKER_API_KEY && {curl}"),
    }
    if integration.is_none() {
        tracing::info!("no integration is configured yet: see docs/configuration.md");
    }
}

/// `s` as one shell word: as it is when it is plain, else in single quotes.
pub(crate) fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"/._-+:@%,=".contains(&c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Creates the table in the background at start, so the first request does not
/// pay for it; until it succeeds every store call retries it on demand, and the
/// broker starts (its health route saying 503) during a storage outage.
/// The URL a broker without `BROKER_PUBLIC_URL` is reached at: its socket,
/// 127.0.0.1 when it listens on every address.
fn local_url(addr: std::net::SocketAddr) -> Url {
    // A socket address prints an IPv6 host in brackets ([::1]:7071), as a URL needs.
    let shown = if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    Url::parse(&format!("http://{shown}")).expect("an IP address and port make a URL")
}

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
