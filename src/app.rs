//! The composition root: builds everything from a validated config (metrics, the session
//! store, the request pipeline, TLS), binds the listeners, and owns what lives as long as
//! the process: reload, readiness and graceful drain. Request handling is in `service`,
//! accepting connections in `listener`, the admin endpoints in `admin`.
//!
//! Reload: everything a reload may change (routes, rules, certificates, limits) lives in
//! one [`Live`] value behind an `ArcSwap`. Listener addresses and the session store are
//! fixed for the life of the process. On shutdown the accept loops stop, every open
//! connection is asked to finish its in-flight requests (HTTP/1 closes after the current
//! response, HTTP/2 sends GOAWAY), and after the grace period whatever is left is dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::config::{Config, StoreFailurePolicy};
use crate::inflight::InFlight;
use crate::listener::{accept_loop, Live};
use crate::service::AppState;
use crate::store::SessionStore;
use crate::telemetry::{Metrics, OutcomeLabel};
use crate::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Service(#[from] crate::service::BuildError),
    #[error("cannot open the session store: {0}")]
    Store(#[from] crate::store::StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0} changed: restart sessiongate to apply it")]
    NeedsRestart(&'static str),
    #[error(transparent)]
    Build(#[from] StartError),
}

/// Builds what a reload swaps: the request pipeline and the TLS acceptor.
async fn build_live(
    config: Config,
    store: Arc<dyn SessionStore>,
    metrics: Arc<Metrics>,
    inflight: Arc<InFlight>,
) -> Result<Live<AppState>, StartError> {
    let config = Arc::new(config);
    let tls = match &config.tls {
        Some(tls) => Some(TlsAcceptor::from(crate::tls::server_config(tls)?)),
        None => None,
    };
    let state = Arc::new(AppState::new(config, store, metrics, inflight)?);
    Ok(Live::new(state, tls))
}

/// Controls a running server: reload, readiness, metrics.
#[derive(Clone)]
pub struct ServerHandle {
    live: Arc<ArcSwap<Live<AppState>>>,
    store: Arc<dyn SessionStore>,
    pub metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
}

impl ServerHandle {
    pub fn current(&self) -> Arc<Live<AppState>> {
        self.live.load_full()
    }

    /// Applies a new, already validated config. Refused (and the old one kept) when it
    /// changes what only a restart can: listener addresses or the session store.
    pub async fn reload(&self, config: Config) -> Result<(), ReloadError> {
        let result = self.try_reload(config).await;
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .reloads
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        result
    }

    async fn try_reload(&self, config: Config) -> Result<(), ReloadError> {
        let old = self.current();
        let was = &old.state.config;
        if config.server.listen != was.server.listen
            || config.server.plain_listen != was.server.plain_listen
            || config.tls.is_some() != was.tls.is_some()
        {
            return Err(ReloadError::NeedsRestart("a listener address"));
        }
        if config.store != was.store {
            return Err(ReloadError::NeedsRestart("[store]"));
        }
        if config.admin != was.admin {
            return Err(ReloadError::NeedsRestart("[admin]"));
        }
        // The same in-flight registry: a login under the new config waits for, and ends
        // the streams of, requests the old one admitted.
        let live = build_live(
            config,
            self.store.clone(),
            self.metrics.clone(),
            old.state.inflight().clone(),
        )
        .await?;
        self.live.store(Arc::new(live));
        Ok(())
    }

    /// Ready: serving, not draining, and the store answers within its deadline. With
    /// the store down, a replica that still has routes working without it (no session
    /// protection, or `on_store_failure = "serve_cached"`) stays ready, degraded: a
    /// shared store's outage would otherwise take every replica out of the Service at
    /// once, and with it the routes that were configured to ride it out. A replica whose
    /// every route needs the store is not ready.
    pub async fn ready(&self) -> Result<Option<&'static str>, &'static str> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining");
        }
        let config = &self.current().state.config;
        let deadline = config.session.store_timeout;
        // A key no session can have: the lookup costs one read and finds nothing.
        let probe = crate::session::SessionKey([0; 32]);
        if let Ok(Ok(())) = tokio::time::timeout(deadline, self.store.probe(&probe)).await {
            return Ok(None);
        }
        let rides_it_out = config.routes.iter().any(|r| {
            r.session
                .as_ref()
                .is_none_or(|s| s.on_store_failure == StoreFailurePolicy::ServeCached)
        });
        match rides_it_out {
            true => Ok(Some(
                "session store unreachable; serving routes that work without it",
            )),
            false => Err("session store unreachable"),
        }
    }
}

impl crate::admin::AdminView for ServerHandle {
    async fn ready(&self) -> Result<Option<&'static str>, &'static str> {
        ServerHandle::ready(self).await
    }

    fn metrics(&self) -> String {
        self.metrics.render()
    }

    fn observing(&self) -> Vec<String> {
        self.current()
            .state
            .config
            .routes
            .iter()
            .filter(|r| {
                r.session
                    .as_ref()
                    .is_some_and(|s| s.mode == crate::config::SessionMode::Observe)
            })
            .map(|r| r.name.clone())
            .collect()
    }

    fn revoke_access(&self) -> crate::admin::RevokeAccess {
        use crate::admin::RevokeAccess;
        let admin = &self.current().state.config.admin;
        match (&admin.token, admin.listen) {
            (Some(token), _) => RevokeAccess::Token(token.clone()),
            (None, Some(addr)) if addr.ip().is_loopback() => RevokeAccess::Local,
            (None, _) => RevokeAccess::Closed,
        }
    }

    async fn revoke_subject(&self, subject: &str) -> Result<usize, String> {
        let state = self.current().state.clone();
        state
            .revoke_subject(subject, None, "operator")
            .await
            .map_err(|e| e.to_string())
    }
}

/// Opens the configured store: memory directly, the file behind the optional deferred
/// anonymous writes, Firestore behind this replica's cache and those.
async fn open_store(
    config: &crate::config::StoreConfig,
    metrics: &Metrics,
) -> Result<Arc<dyn SessionStore>, crate::store::StoreError> {
    use crate::config::StoreConfig;
    use crate::store::bound::Bound;
    use crate::store::{cache::CachedStore, firestore::FirestoreStore, FileStore, MemoryStore};
    Ok(match config {
        StoreConfig::Memory { max_sessions, .. } => Arc::new(MemoryStore::bounded(Bound::new(
            *max_sessions,
            metrics.sessions_evicted.clone(),
        ))),
        StoreConfig::File {
            path,
            max_sessions,
            defer_anonymous_writes,
            ..
        } => {
            let bound = || Bound::new(*max_sessions, metrics.sessions_evicted.clone());
            let file = FileStore::open_bounded(path, bound())?;
            crate::store::deferring(Arc::new(file), defer_anonymous_writes.then(bound))
        }
        StoreConfig::Firestore {
            project_id,
            database_id,
            collection,
            cache_ttl,
            cache_stale_for,
            cache_max_entries,
            defer_anonymous_writes,
        } => {
            let remote = FirestoreStore::connect(project_id, database_id, collection).await?;
            let cache = CachedStore::new(
                Arc::new(remote),
                *cache_ttl,
                *cache_stale_for,
                *cache_max_entries,
            )
            .with_counters(metrics.cache_hits.clone(), metrics.cache_misses.clone());
            let defer = defer_anonymous_writes
                .then(|| Bound::new(*cache_max_entries, metrics.sessions_evicted.clone()));
            crate::store::deferring(Arc::new(cache), defer)
        }
    })
}

/// A bound, not yet running, proxy.
pub struct Server {
    tls: Option<TcpListener>,
    plain: Option<TcpListener>,
    admin: Option<TcpListener>,
    handle: ServerHandle,
}

impl Server {
    /// Binds the configured listeners and builds everything the requests need.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        Server::bind_with_store(config, None).await
    }

    /// Like [`Server::bind`], on a given session store instead of the configured one.
    pub async fn bind_with_store(
        config: Config,
        store: Option<Arc<dyn SessionStore>>,
    ) -> Result<Server, StartError> {
        let metrics = Arc::new(Metrics::new());
        let store = match store {
            Some(s) => s,
            None => open_store(&config.store, &metrics).await?,
        };
        if config.tls.as_ref().is_some_and(|t| t.self_signed_dev) {
            warn!("DEVELOPMENT MODE: serving a self-signed certificate generated at start-up; do not use in production");
        }
        let tls = match (config.server.listen, &config.tls) {
            (Some(addr), Some(_)) => Some(bind(addr).await?),
            _ => None,
        };
        let plain = match config.server.plain_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let admin = match config.admin.listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let live = build_live(
            config,
            store.clone(),
            metrics.clone(),
            Arc::new(InFlight::default()),
        )
        .await?;
        Ok(Server {
            tls,
            plain,
            admin,
            handle: ServerHandle {
                live: Arc::new(ArcSwap::from_pointee(live)),
                store,
                metrics,
                draining: Arc::new(AtomicBool::new(false)),
            },
        })
    }

    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// The session lifecycle (store, counters) of the current config.
    pub fn sessions(&self) -> Arc<crate::rotate::Sessions> {
        self.handle.current().state.sessions.clone()
    }

    /// Serves until `shutdown` resolves, then drains for at most `shutdown_grace`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        // One line naming every bound address ("-" for none), once all of them serve.
        let addr_of = |a: Option<SocketAddr>| a.map_or_else(|| "-".to_owned(), |a| a.to_string());
        let serving = (
            addr_of(self.tls_addr()),
            addr_of(self.plain_addr()),
            addr_of(self.admin_addr()),
        );
        let handle = self.handle;
        let initial = handle.current();
        let server_cfg = initial.state.config.server.clone();
        let conns = Arc::new(Semaphore::new(server_cfg.max_connections));
        // Shared with the accept loops, which hand each connection a watcher; once they
        // have stopped, this is the only reference left and can be consumed.
        let graceful = Arc::new(GracefulShutdown::new());
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut loops = JoinSet::new();

        let listeners = self
            .tls
            .map(|l| (l, true))
            .into_iter()
            .chain(self.plain.map(|l| (l, false)));
        for (listener, tls) in listeners {
            if let Ok(addr) = listener.local_addr() {
                let kind = if tls { "TLS" } else { "plain HTTP" };
                info!(%addr, "listening ({kind})");
            }
            loops.spawn(accept_loop(
                listener,
                tls,
                handle.live.clone(),
                handle.metrics.clone(),
                conns.clone(),
                graceful.clone(),
                stop_rx.clone(),
            ));
        }
        let admin = self.admin.map(|l| {
            if let Ok(addr) = l.local_addr() {
                info!(%addr, "admin listening (healthz, readyz, metrics)");
            }
            tokio::spawn(crate::admin::serve(l, handle.clone()))
        });

        let sweep_interval = initial.state.config.store.sweep_interval();
        let sweeper = tokio::spawn(initial.state.sessions.clone().sweep_forever(sweep_interval));
        drop(initial);
        info!(tls = %serving.0, plain = %serving.1, admin = %serving.2, "serving");

        shutdown.await;
        sweeper.abort();
        handle.draining.store(true, Ordering::Relaxed);
        info!(grace = ?server_cfg.shutdown_grace, "shutting down: no new connections, draining in-flight requests");
        let _ = stop_tx.send(true);
        while loops.join_next().await.is_some() {}
        let drain = async move {
            match Arc::try_unwrap(graceful) {
                Ok(g) => g.shutdown().await,
                Err(_) => warn!("drain tracker still shared; not waiting for connections"),
            }
        };
        match tokio::time::timeout(server_cfg.shutdown_grace, drain).await {
            Ok(()) => info!("drained; all connections closed"),
            Err(_) => warn!("grace period over; closing the remaining connections"),
        }
        if let Some(admin) = admin {
            admin.abort();
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}
