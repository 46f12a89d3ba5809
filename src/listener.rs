//! Accepting connections: bind, accept loops, the connection cap, TLS handshakes with a
//! deadline, and graceful drain.
//!
//! An accept error is logged and the loop goes on (after a short pause, since the usual
//! cause is running out of file descriptors). The connection cap is a semaphore taken
//! *before* `accept`, so that when it is full new connections wait in the kernel's
//! backlog instead of being accepted and then starved. On shutdown the accept loops stop,
//! every open connection is asked to finish its in-flight requests (HTTP/1 closes after
//! the current response, HTTP/2 sends GOAWAY), and after the grace period whatever is
//! left is dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::{Config, ServerConfig};
use crate::service::AppState;
use crate::tls::TlsError;
use crate::upstream::ConnInfo;

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
    Entropy(#[from] crate::session::ids::EntropyError),
    #[error("cannot open the session store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// A bound, not yet running, proxy.
pub struct Server {
    tls: Option<(TcpListener, TlsAcceptor)>,
    plain: Option<TcpListener>,
    state: Arc<AppState>,
}

impl Server {
    /// Binds the configured listeners and builds everything the requests need.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        Server::bind_with_store(config, None).await
    }

    /// Like [`Server::bind`], on a given session store instead of the configured one.
    pub async fn bind_with_store(
        config: Config,
        store: Option<Arc<dyn crate::store::SessionStore>>,
    ) -> Result<Server, StartError> {
        let config = Arc::new(config);
        let state = Arc::new(AppState::new(config.clone(), store).await?);
        let tls = match (config.server.listen, &config.tls) {
            (Some(addr), Some(tls)) => {
                let acceptor = TlsAcceptor::from(crate::tls::server_config(tls)?);
                if tls.self_signed_dev {
                    warn!("DEVELOPMENT MODE: serving a self-signed certificate generated at start-up; do not use in production");
                }
                Some((bind(addr).await?, acceptor))
            }
            _ => None,
        };
        let plain = match config.server.plain_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Server { tls, plain, state })
    }

    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The session lifecycle (store, counters), for tests and the admin listener.
    pub fn sessions(&self) -> Arc<crate::rotate::Sessions> {
        self.state.sessions.clone()
    }

    pub fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then drains for at most `shutdown_grace`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let server_cfg = self.state.config.server.clone();
        let conns = Arc::new(Semaphore::new(server_cfg.max_connections));
        // Shared with the accept loops, which hand each connection a watcher; once they
        // have stopped, this is the only reference left and can be consumed.
        let graceful = Arc::new(GracefulShutdown::new());
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut loops = JoinSet::new();

        let ctx = Arc::new(AcceptCtx {
            state: self.state.clone(),
            builder: connection_builder(&server_cfg),
            handshake_timeout: server_cfg.tls_handshake_timeout,
        });
        let listeners = self
            .tls
            .map(|(l, acceptor)| (l, Some(acceptor)))
            .into_iter()
            .chain(self.plain.map(|l| (l, None)));
        for (listener, acceptor) in listeners {
            if let Ok(addr) = listener.local_addr() {
                let kind = if acceptor.is_some() {
                    "TLS"
                } else {
                    "plain HTTP"
                };
                info!(%addr, "listening ({kind})");
            }
            loops.spawn(accept_loop(
                listener,
                acceptor,
                ctx.clone(),
                conns.clone(),
                graceful.clone(),
                stop_rx.clone(),
            ));
        }

        let sweep_interval = self.state.config.store.sweep_interval();
        let sweeper = tokio::spawn(self.state.sessions.clone().sweep_forever(sweep_interval));

        shutdown.await;
        sweeper.abort();
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
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Connection-level HTTP settings, shared by every connection.
fn connection_builder(cfg: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_bytes)
        .max_headers(cfg.max_headers);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

struct AcceptCtx {
    state: Arc<AppState>,
    builder: auto::Builder<TokioExecutor>,
    handshake_timeout: Duration,
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    ctx: Arc<AcceptCtx>,
    conns: Arc<Semaphore>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => return,
            p = conns.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return, // semaphore closed: shutting down
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "accept failed; continuing");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let ctx = ctx.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(tcp, peer, tls, ctx, watcher).await;
        });
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    ctx: Arc<AcceptCtx>,
    watcher: Watcher,
) {
    match tls {
        None => {
            serve_http(
                TokioIo::new(tcp),
                ConnInfo { peer, tls: false },
                &ctx,
                watcher,
            )
            .await
        }
        Some(acceptor) => {
            match tokio::time::timeout(ctx.handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    serve_http(
                        TokioIo::new(stream),
                        ConnInfo { peer, tls: true },
                        &ctx,
                        watcher,
                    )
                    .await
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn serve_http<IO>(io: TokioIo<IO>, conn: ConnInfo, ctx: &AcceptCtx, watcher: Watcher)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = ctx.state.clone();
    let svc = hyper::service::service_fn(move |req| state.clone().handle(conn, req));
    let connection = ctx.builder.serve_connection_with_upgrades(io, svc);
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        // Clients going away mid-request is routine; keep it out of the warn level.
        debug!(peer = %conn.peer, error = %e, "connection ended with an error");
    }
}
