//! The integrations the broker serves. Those configured with endpoints are
//! ready at start; those configured with only an `issuer` are discovered in
//! the background after the port is bound (the Functions host allows about
//! 30 s to start, and a slow issuer must not make the app fail to start).
//! Until its discovery succeeds, an integration is *unavailable*: its routes
//! answer 503 `integration_unavailable`, each such request retries discovery
//! once its backoff has passed, and `/api/health` names it.
//!
//! Depends on `config` (the parsed file and `discover`) and `domain`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::config::discovery::discover;
use crate::config::integrations::Discovery;
use crate::config::{Integration, IntegrationsFile};
use crate::domain::IntegrationName;

/// The first wait after a failed discovery; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What a name resolves to.
#[derive(Debug, Clone)]
pub enum Lookup {
    Ready(Arc<Integration>),
    /// Configured, but its issuer's metadata has not been fetched yet.
    Unavailable {
        reason: String,
    },
    Unknown,
}

struct Pending {
    discovery: Discovery,
    reason: String,
    next_attempt: Instant,
    backoff: Duration,
    running: bool,
}

pub struct Registry {
    ready: RwLock<BTreeMap<IntegrationName, Arc<Integration>>>,
    pending: Mutex<BTreeMap<IntegrationName, Pending>>,
    http: reqwest::Client,
    path: PathBuf,
}

impl Registry {
    pub fn new(file: &IntegrationsFile, http: reqwest::Client) -> Arc<Self> {
        let ready = file
            .parsed
            .ready
            .iter()
            .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
            .collect();
        let now = Instant::now();
        let pending = file
            .parsed
            .discover
            .iter()
            .map(|d| {
                (
                    d.name.clone(),
                    Pending {
                        discovery: d.clone(),
                        reason: "the issuer's metadata has not been fetched yet".into(),
                        next_attempt: now,
                        backoff: FIRST_BACKOFF,
                        running: false,
                    },
                )
            })
            .collect();
        Arc::new(Self {
            ready: RwLock::new(ready),
            pending: Mutex::new(pending),
            http,
            path: file.path.clone(),
        })
    }

    /// A registry of ready integrations only (tests and tools).
    pub fn of(integrations: BTreeMap<IntegrationName, Integration>) -> Arc<Self> {
        Arc::new(Self {
            ready: RwLock::new(
                integrations
                    .into_iter()
                    .map(|(k, v)| (k, Arc::new(v)))
                    .collect(),
            ),
            pending: Mutex::new(BTreeMap::new()),
            http: reqwest::Client::new(),
            path: PathBuf::new(),
        })
    }

    /// Resolves a name; an unavailable integration whose backoff has passed
    /// gets a new discovery attempt in the background.
    pub fn get(self: &Arc<Self>, name: &IntegrationName) -> Lookup {
        if let Some(i) = self.read_ready().get(name) {
            return Lookup::Ready(Arc::clone(i));
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match pending.get_mut(name) {
            None => Lookup::Unknown,
            Some(p) => {
                let reason = p.reason.clone();
                if !p.running && Instant::now() >= p.next_attempt {
                    p.running = true;
                    let this = Arc::clone(self);
                    let d = p.discovery.clone();
                    tokio::spawn(async move { this.attempt(d).await });
                }
                Lookup::Unavailable { reason }
            }
        }
    }

    /// Every ready integration (the sweep's view).
    pub fn ready(&self) -> Vec<Arc<Integration>> {
        self.read_ready().values().cloned().collect()
    }

    pub fn ready_count(&self) -> usize {
        self.read_ready().len()
    }

    /// Integrations still waiting for discovery, with why.
    pub fn unavailable(&self) -> Vec<(IntegrationName, String)> {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending
            .iter()
            .map(|(k, p)| (k.clone(), p.reason.clone()))
            .collect()
    }

    /// Discovers every pending integration in the background, retrying with
    /// backoff until each has succeeded.
    pub fn spawn_discovery(self: &Arc<Self>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let due: Vec<Discovery> = {
                    let mut pending = this.pending.lock().unwrap_or_else(|p| p.into_inner());
                    if pending.is_empty() {
                        return;
                    }
                    let now = Instant::now();
                    pending
                        .values_mut()
                        .filter(|p| !p.running && now >= p.next_attempt)
                        .map(|p| {
                            p.running = true;
                            p.discovery.clone()
                        })
                        .collect()
                };
                futures::future::join_all(due.into_iter().map(|d| this.attempt(d))).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    async fn attempt(&self, d: Discovery) {
        let name = d.name.clone();
        let issuer = d.issuer.clone();
        let result = discover(&self.http, d, &self.path).await;
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(integration) => {
                pending.remove(&name);
                drop(pending);
                tracing::info!(integration = name.as_str(), issuer = %issuer, "endpoints discovered from the issuer's metadata");
                self.ready
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name, Arc::new(integration));
            }
            Err(e) => {
                if let Some(p) = pending.get_mut(&name) {
                    p.running = false;
                    p.reason = e.to_string();
                    p.next_attempt = Instant::now() + p.backoff;
                    p.backoff = (p.backoff * 2).min(MAX_BACKOFF);
                    tracing::warn!(integration = name.as_str(), issuer = %issuer, error = %e, retry_in_secs = p.backoff.as_secs() / 2, "discovery failed; the integration is unavailable until it succeeds");
                }
            }
        }
    }

    fn read_ready(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, BTreeMap<IntegrationName, Arc<Integration>>> {
        self.ready.read().unwrap_or_else(|p| p.into_inner())
    }
}
