//! Accepting connections: accept loops, the connection cap, TLS handshakes with a
//! deadline, and the per-connection HTTP settings. The composition root (`app`) binds the
//! sockets and owns reload and drain; this module serves what it is handed.
//!
//! An accept error is logged and the loop goes on (after a short pause, since the usual
//! cause is running out of file descriptors). The connection cap is a semaphore taken
//! *before* `accept`, so that when it is full new connections wait in the kernel's
//! backlog instead of being accepted and then starved. A new connection takes the
//! current [`Live`] for its handshake and HTTP settings; each request takes the current
//! one when it starts, so an open keep-alive connection moves to a reloaded config at its
//! next request while requests already in flight finish on the one they started with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use std::convert::Infallible;
use std::future::Future;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::config::ServerConfig;
use crate::telemetry::Metrics;
use crate::Body;

/// What serves the requests of a connection (the request pipeline, `service::AppState`).
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        conn: ConnInfo,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static;

    /// The server settings this handler's config sets for new connections.
    fn server_config(&self) -> &ServerConfig;
}

/// What a connection and its requests take from the current config: a reload swaps it.
pub struct Live<H> {
    pub state: Arc<H>,
    tls: Option<TlsAcceptor>,
    builder: auto::Builder<TokioExecutor>,
    handshake_timeout: Duration,
}

impl<H: Handler> Live<H> {
    pub fn new(state: Arc<H>, tls: Option<TlsAcceptor>) -> Live<H> {
        let server = state.server_config();
        Live {
            builder: connection_builder(server),
            handshake_timeout: server.tls_handshake_timeout,
            tls,
            state,
        }
    }
}

/// The config in force, swapped whole by a reload.
pub type Shared<H> = Arc<ArcSwap<Live<H>>>;

/// Facts about the downstream connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Connection-level HTTP settings.
pub fn connection_builder(cfg: &ServerConfig) -> auto::Builder<TokioExecutor> {
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

/// Accepts connections until `stop` flips, each served on the config current then.
pub async fn accept_loop<H: Handler>(
    listener: TcpListener,
    tls: bool,
    live: Shared<H>,
    metrics: Arc<Metrics>,
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
        let (live, metrics) = (live.clone(), metrics.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            metrics.active_connections.inc();
            serve_connection(tcp, peer, tls, &live, &metrics, watcher).await;
            metrics.active_connections.dec();
        });
    }
}

async fn serve_connection<H: Handler>(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: bool,
    shared: &Shared<H>,
    metrics: &Metrics,
    watcher: Watcher,
) {
    // The config current when the connection arrived sets its handshake and HTTP limits.
    let live = shared.load_full();
    let acceptor = match (tls, &live.tls) {
        (false, _) => {
            let conn = ConnInfo { peer, tls: false };
            return serve_http(TokioIo::new(tcp), conn, &live, shared.clone(), watcher).await;
        }
        (true, Some(acceptor)) => acceptor.clone(),
        (true, None) => return, // cannot happen: a TLS listener implies [tls]
    };
    match tokio::time::timeout(live.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => {
            let conn = ConnInfo { peer, tls: true };
            serve_http(TokioIo::new(stream), conn, &live, shared.clone(), watcher).await
        }
        Ok(Err(e)) => {
            metrics.tls_handshake_failures.inc();
            debug!(%peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            metrics.tls_handshake_failures.inc();
            debug!(%peer, "TLS handshake timed out");
        }
    }
}

async fn serve_http<IO, H: Handler>(
    io: TokioIo<IO>,
    conn: ConnInfo,
    live: &Live<H>,
    shared: Shared<H>,
    watcher: Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Each request runs on the config current when it starts.
    let svc = hyper::service::service_fn(move |req| shared.load().state.clone().handle(conn, req));
    let connection = live.builder.serve_connection_with_upgrades(io, svc);
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        match e.downcast_ref::<hyper::Error>() {
            // hyper answered 400 or 431 itself: log the reason and an access line, as
            // for every other refused request.
            Some(h) if h.is_parse() || h.is_parse_too_large() => {
                let status = if h.is_parse_too_large() { 431 } else { 400 };
                warn!(peer = %conn.peer, error = %e, status, "request refused while parsing its head");
                info!(target: "access", route = "-", method = "-", path = "-", status, peer = %conn.peer.ip(), "unparseable request");
            }
            // Clients going away mid-request is routine; keep it out of the warn level.
            _ => debug!(peer = %conn.peer, error = %e, "connection ended with an error"),
        }
    }
}
