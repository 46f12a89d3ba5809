//! Connections to the apps: HTTP/1.1 over TCP or TLS, kept alive and reused per upstream.
//!
//! Built on hyper's `client::conn::http1` rather than hyper-util's pooled client, whose
//! per-request work showed in profiles of the proxy (benches/load/callgrind.sh): a pool
//! key hashed with SipHash three times per request, a checkout future racing a connect
//! future, and a task spawned per request to wait for the connection to be reusable.
//! Here the upstream's slot is found by comparing a handful of authorities, an idle
//! connection is popped from a mutex-guarded stack, and the connection goes back when
//! the response body ends, which is when hyper has it ready again in the common case.
//!
//! What the legacy client did that still matters is kept: a request that a reused
//! connection closed before it was written goes out again on another connection (the
//! app may close a keep-alive connection at any moment); a request that may have been
//! written is never retried. Idle connections are closed after `pool_idle_timeout`, and
//! at most `pool_max_idle_per_host` are kept per upstream. A response body dropped before
//! its end closes its connection (hyper does), so a half-read answer never leaks into the
//! next request.
//!
//! The response body also carries the route's idle deadline between frames. Its timer is
//! armed only when the app's body is not ready: most answers arrive whole with their
//! head, and a timer armed and cleared for every frame showed in profiles.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Sleep;
use tower_service::Service;

use crate::{Body, BoxError};

/// Why a request could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (refused, unreachable, TLS, connect deadline).
    Connect(BoxError),
    /// The exchange failed on an established connection.
    Http(hyper::Error),
}

/// The connections to every upstream of a config.
pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    slots: Arc<Vec<Arc<Slot>>>,
    max_idle: usize,
    idle_timeout: Duration,
}

/// One upstream (scheme and authority) and its idle connections, most recently used last.
struct Slot {
    scheme: Scheme,
    authority: Authority,
    /// What the connector dials.
    dial: Uri,
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

impl Pool {
    /// A pool for these upstreams. Within a Tokio runtime, a task closes connections
    /// idle for longer than `idle_timeout`; it ends with the pool.
    pub fn new<'a>(
        connector: HttpsConnector<HttpConnector>,
        upstreams: impl IntoIterator<Item = (&'a Scheme, &'a Authority)>,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Pool {
        let mut slots: Vec<Arc<Slot>> = Vec::new();
        for (scheme, authority) in upstreams {
            if slots
                .iter()
                .any(|s| s.scheme == *scheme && s.authority == *authority)
            {
                continue;
            }
            let dial = Uri::builder()
                .scheme(scheme.clone())
                .authority(authority.clone())
                .path_and_query("/")
                .build();
            // A scheme and authority that parsed always make a URI; skip one that did not.
            let Ok(dial) = dial else { continue };
            slots.push(Arc::new(Slot {
                scheme: scheme.clone(),
                authority: authority.clone(),
                dial,
                idle: Mutex::new(VecDeque::new()),
            }));
        }
        let slots = Arc::new(slots);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(close_idle(Arc::downgrade(&slots), idle_timeout));
        }
        Pool {
            connector,
            slots,
            max_idle,
            idle_timeout,
        }
    }

    /// Sends `req` (origin-form target, `Host` set) to the upstream, on an idle
    /// connection when there is one. The response body hands the connection back.
    pub async fn send(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        mut req: Request<Body>,
        idle: Duration,
        now: Instant,
    ) -> Result<Response<PooledBody>, SendError> {
        let slot = self
            .slots
            .iter()
            .find(|s| s.scheme == *scheme && s.authority == *authority)
            .ok_or_else(|| SendError::Connect("no connection pool for this upstream".into()))?;
        loop {
            let (mut sender, reused) = match self.checkout(slot, now) {
                Some(sender) => (sender, true),
                // Boxed: connecting is rare, and its future would otherwise enlarge
                // (and be copied with) every request's future.
                None => (Box::pin(self.connect(slot)).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    // A protocol switch takes the connection over for good.
                    let reusable = resp.status() != http::StatusCode::SWITCHING_PROTOCOLS;
                    let back = reusable.then(|| Return {
                        sender,
                        slot: slot.clone(),
                        max_idle: self.max_idle,
                    });
                    let (parts, body) = resp.into_parts();
                    let mut body = PooledBody {
                        body,
                        back,
                        idle,
                        stall: None,
                    };
                    if body.body.is_end_stream() {
                        body.give_back();
                    }
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the app closed a kept-alive connection meanwhile.
                    // Another connection; a fresh one ends the retries.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection that is still open and not expired.
    fn checkout(&self, slot: &Slot, now: Instant) -> Option<SendRequest<Body>> {
        let mut idle = slot.idle.lock().ok()?;
        while let Some(conn) = idle.pop_back() {
            if conn.sender.is_ready()
                && now.saturating_duration_since(conn.since) < self.idle_timeout
            {
                return Some(conn.sender);
            }
        }
        None
    }

    async fn connect(&self, slot: &Slot) -> Result<SendRequest<Body>, SendError> {
        let io = self
            .connector
            .clone()
            .call(slot.dial.clone())
            .await
            .map_err(SendError::Connect)?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(SendError::Http)?;
        tokio::spawn(async move {
            // Its errors reach the request in flight, if any; an idle connection closing
            // is not news.
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }
}

/// Every `idle_timeout / 2` (at least each second), closes the connections idle for
/// longer than `idle_timeout`; ends when the pool is dropped (a config reload).
async fn close_idle(slots: Weak<Vec<Arc<Slot>>>, idle_timeout: Duration) {
    let period = (idle_timeout / 2).max(Duration::from_secs(1));
    loop {
        tokio::time::sleep(period).await;
        let Some(slots) = slots.upgrade() else { return };
        for slot in slots.iter() {
            if let Ok(mut idle) = slot.idle.lock() {
                idle.retain(|c| !c.sender.is_closed() && c.since.elapsed() < idle_timeout);
            }
        }
    }
}

/// How long a connection whose exchange is not finished yet may take to be reusable
/// before it is closed instead of pooled.
const RETURN_WAIT: Duration = Duration::from_secs(30);

/// A connection on its way back to its slot.
struct Return {
    sender: SendRequest<Body>,
    slot: Arc<Slot>,
    max_idle: usize,
}

impl Return {
    fn put(mut self) {
        if self.sender.is_closed() {
            return;
        }
        if self.sender.is_ready() {
            self.slot.push(self.sender, self.max_idle);
            return;
        }
        // hyper has not yet seen the end of the exchange (rare: the body ended before the
        // connection's task ran, or the app answered before the client's upload ended):
        // wait for it off the request's path, for a while.
        tokio::spawn(async move {
            let ready = tokio::time::timeout(RETURN_WAIT, self.sender.ready()).await;
            if matches!(ready, Ok(Ok(()))) {
                self.slot.push(self.sender, self.max_idle);
            }
        });
    }
}

impl Slot {
    fn push(&self, sender: SendRequest<Body>, max_idle: usize) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < max_idle {
                idle.push_back(Idle {
                    sender,
                    since: Instant::now(),
                });
            }
        }
    }
}

/// The app's response body; its connection goes back to the pool once the body has been
/// read to its end. Dropped earlier, the connection closes with it. A body that sends
/// nothing for `idle` fails.
pub struct PooledBody {
    body: Incoming,
    back: Option<Return>,
    idle: Duration,
    /// The idle deadline, armed while the app's body is pending.
    stall: Option<Pin<Box<Sleep>>>,
}

/// The app sent no part of its response body for the route's `body_idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the app's response body stalled for {0:?}")]
pub struct BodyStalled(pub Duration);

impl PooledBody {
    fn give_back(&mut self) {
        if let Some(back) = self.back.take() {
            back.put();
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if polled.is_pending() {
            let idle = this.idle;
            let stall = this
                .stall
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
            if stall.as_mut().poll(cx).is_ready() {
                this.back = None;
                return Poll::Ready(Some(Err(BodyStalled(idle).into())));
            }
            return Poll::Pending;
        }
        this.stall = None;
        match &polled {
            Poll::Ready(None) => this.give_back(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.give_back(),
            // A failed body leaves the connection in no state to be reused.
            Poll::Ready(Some(Err(_))) => this.back = None,
            _ => {}
        }
        polled.map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
