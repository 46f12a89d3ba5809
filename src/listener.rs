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
use http::HeaderValue;
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

use crate::activity::{Activity, InProgress, Tracked};
use crate::config::ServerConfig;
use crate::telemetry::Metrics;

/// What serves the requests of a connection (the request pipeline, `service::AppState`).
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        conn: ConnInfo,
        req: Request<Incoming>,
        request: InProgress,
    ) -> impl Future<Output = Result<Response<Tracked>, Infallible>> + Send + 'static;

    /// The server settings this handler's config sets for new connections.
    fn server_config(&self) -> &ServerConfig;
}

/// What a connection and its requests take from the current config: a reload swaps it.
pub struct Live<H> {
    pub state: Arc<H>,
    tls: Option<TlsAcceptor>,
    builder: auto::Builder<TokioExecutor>,
    handshake_timeout: Duration,
    head_timeout: Duration,
    /// For connections accepted under pressure (see [`PRESSED_DEADLINE`]).
    pressed_handshake_timeout: Duration,
    pressed_head_timeout: Duration,
}

/// When fewer than a tenth of `max_connections` are free, a new connection gets at most
/// this long for its TLS handshake and for each request head. Slow clients (slowloris)
/// that hold every slot would otherwise keep normal clients waiting in the kernel's
/// backlog for the full deadlines (10 s by default) at every turn; under pressure the
/// slots turn over quickly, and a normal client, who sends its head in milliseconds, does
/// not notice. The idea is Envoy's overload manager ("reduce timeouts").
pub const PRESSED_DEADLINE: Duration = Duration::from_secs(2);

/// Under pressure, the whole of a body that sessiongate reads (a form on a session
/// route) must arrive within this long, instead of the route's `body_idle_timeout`.
pub const PRESSED_BODY_DEADLINE: Duration = Duration::from_secs(10);

impl<H: Handler> Live<H> {
    pub fn new(state: Arc<H>, tls: Option<TlsAcceptor>) -> Live<H> {
        let server = state.server_config();
        Live {
            builder: connection_builder(server),
            handshake_timeout: server.tls_handshake_timeout,
            head_timeout: server.header_read_timeout,
            pressed_handshake_timeout: server.tls_handshake_timeout.min(PRESSED_DEADLINE),
            pressed_head_timeout: server.header_read_timeout.min(PRESSED_DEADLINE),
            tls,
            state,
        }
    }
}

/// The config in force, swapped whole by a reload.
pub type Shared<H> = Arc<ArcSwap<Live<H>>>;

/// Facts about the downstream connection a request came in on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address as text (`X-Forwarded-For`, the access log), formatted once
    /// per connection rather than per request.
    pub peer_ip: HeaderValue,
    pub tls: bool,
    /// Accepted under pressure: a body sessiongate reads whole must arrive within
    /// [`PRESSED_BODY_DEADLINE`].
    pub pressed: bool,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool, pressed: bool) -> ConnInfo {
        ConnInfo {
            peer,
            // An IP address in text is always a valid header value.
            peer_ip: HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or(HeaderValue::from_static("-")),
            tls,
            pressed,
        }
    }

    /// [`ConnInfo::peer_ip`] as a string.
    pub fn peer_ip_str(&self) -> &str {
        self.peer_ip.to_str().unwrap_or("-")
    }
}

/// Connection-level HTTP settings. The head deadline is not hyper's (see [`activity`]):
/// its own is turned off, or it would default to 30 s.
pub fn connection_builder(cfg: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None::<Duration>)
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
        let pressed = under_pressure(conns.available_permits(), live.load().state.server_config());
        if pressed {
            metrics.connections_pressed.inc();
        }
        let (live, metrics) = (live.clone(), metrics.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            metrics.active_connections.inc();
            serve_connection(tcp, peer, tls, pressed, &live, &metrics, watcher).await;
            metrics.active_connections.dec();
        });
    }
}

/// Whether fewer than a tenth of the connection slots are free.
fn under_pressure(free: usize, server: &ServerConfig) -> bool {
    free < server.max_connections / 10
}

async fn serve_connection<H: Handler>(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: bool,
    pressed: bool,
    shared: &Shared<H>,
    metrics: &Metrics,
    watcher: Watcher,
) {
    // The config current when the connection arrived sets its handshake and HTTP limits.
    let live = shared.load_full();
    let (handshake_timeout, head_timeout) = match pressed {
        true => (live.pressed_handshake_timeout, live.pressed_head_timeout),
        false => (live.handshake_timeout, live.head_timeout),
    };
    let http = Http {
        builder: &live.builder,
        head_timeout,
        shared: shared.clone(),
        watcher,
    };
    let acceptor = match (tls, &live.tls) {
        (false, _) => {
            let conn = ConnInfo::new(peer, false, pressed);
            return serve_http(TokioIo::new(tcp), conn, http).await;
        }
        (true, Some(acceptor)) => acceptor.clone(),
        (true, None) => return, // cannot happen: a TLS listener implies [tls]
    };
    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => {
            let conn = ConnInfo::new(peer, true, pressed);
            serve_http(TokioIo::new(stream), conn, http).await
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

/// How a connection's HTTP is served: settings and deadline from the config it arrived
/// under, requests on the current one.
struct Http<'a, H> {
    builder: &'a auto::Builder<TokioExecutor>,
    head_timeout: Duration,
    shared: Shared<H>,
    watcher: Watcher,
}

async fn serve_http<IO, H: Handler>(io: TokioIo<IO>, conn: ConnInfo, http: Http<'_, H>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    // Each request runs on the config current when it starts, and is in progress for the
    // head deadline until its response body is dropped.
    let svc = hyper::service::service_fn({
        let (conn, activity, shared) = (conn.clone(), activity.clone(), http.shared);
        move |req| {
            let request = activity.begin();
            shared
                .load()
                .state
                .clone()
                .handle(conn.clone(), req, request)
        }
    });
    let connection = http.builder.serve_connection_with_upgrades(io, svc);
    let served = tokio::select! {
        served = http.watcher.watch(connection.into_owned()) => served,
        () = activity.idle_for(http.head_timeout) => {
            debug!(peer = %conn.peer, "closed a connection without a request head for header_read_timeout");
            return;
        }
    };
    if let Err(e) = served {
        match e.downcast_ref::<hyper::Error>() {
            // hyper answered 400 or 431 itself: log the reason and an access line, as
            // for every other refused request.
            Some(h) if h.is_parse() || h.is_parse_too_large() => {
                let status = if h.is_parse_too_large() { 431 } else { 400 };
                warn!(peer = %conn.peer, error = %e, status, "request refused while parsing its head");
                info!(target: crate::logging::ACCESS, route = "-", method = "-", path = "-", status, peer = %conn.peer_ip_str(), "unparseable request");
            }
            // Clients going away mid-request is routine; keep it out of the warn level.
            _ => debug!(peer = %conn.peer, error = %e, "connection ended with an error"),
        }
    }
}
