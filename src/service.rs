//! The per-request pipeline: a hyper service that runs the phases in a fixed order.
//!
//! ```text
//!  request ──► route ──► prepare upstream request ──► send (deadline) ──► response head
//!              (404)     (413, 400; hop-by-hop,        (502, 504)             │
//!                         Host, X-Forwarded-*)                                ▼
//!  client ◄── access log ◄── harden Set-Cookie ◄── strip hop-by-hop, idle deadline
//!                                                  (101: relay the upgraded streams)
//! ```
//!
//! Every failure becomes a [`ProxyError`] and is answered and logged in one place,
//! [`AppState::handle`]. Shared state is an `Arc<AppState>`; per-request state lives on
//! the stack of `proxy`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{debug, info, warn};

use crate::config::{Config, Route};
use crate::cookies;
use crate::error::ProxyError;
use crate::router::{request_host, Router};
use crate::tls::TlsError;
use crate::upstream::{
    is_upgrade_request, prepare_request, prepare_response, ConnInfo, UpstreamClient,
};
use crate::Body;

/// Everything a request needs that outlives it.
pub struct AppState {
    pub config: Arc<Config>,
    router: Router,
    upstream: UpstreamClient,
}

impl AppState {
    pub fn new(config: Arc<Config>) -> Result<AppState, TlsError> {
        Ok(AppState {
            router: Router::new(&config.routes),
            upstream: UpstreamClient::new(&config.upstream)?,
            config,
        })
    }

    /// Serves one request; never fails (errors become pages).
    pub async fn handle(
        self: Arc<Self>,
        conn: ConnInfo,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let started = Instant::now();
        let method = req.method().clone();
        // Only the path: query strings can carry session IDs and personal data.
        let path = req.uri().path().to_owned();
        let route = self
            .router
            .route(request_host(&req), req.uri().path())
            .cloned();
        let route_name = route.as_ref().map_or("-", |r| r.name.as_str()).to_owned();

        let result = match route {
            Some(route) => self.proxy(&route, conn, req).await,
            None => Err(ProxyError::NoRoute),
        };
        let resp = result.unwrap_or_else(|e| {
            warn!(route = %route_name, %method, %path, side = ?e.side(), error = %e, "request failed");
            e.into_response()
        });
        info!(
            target: "access",
            route = %route_name,
            %method,
            %path,
            status = resp.status().as_u16(),
            latency_ms = format_args!("{:.3}", started.elapsed().as_secs_f64() * 1000.0),
            peer = %conn.peer.ip(),
        );
        Ok(resp)
    }

    async fn proxy(
        &self,
        route: &Arc<Route>,
        conn: ConnInfo,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, ProxyError> {
        // Taken before the request is consumed: resolves once we answer 101.
        let client_upgrade = is_upgrade_request(&req).then(|| hyper::upgrade::on(&mut req));

        let up_req = prepare_request(route, &conn, req)?;
        let mut up_resp = self.upstream.send(route, up_req).await?;

        if let (Some(client_upgrade), http::StatusCode::SWITCHING_PROTOCOLS) =
            (client_upgrade, up_resp.status())
        {
            let upstream_upgrade = hyper::upgrade::on(&mut up_resp);
            tokio::spawn(relay_upgraded(client_upgrade, upstream_upgrade));
        }

        let mut resp = prepare_response(up_resp, route.body_idle_timeout);
        harden_set_cookies(route, resp.headers_mut());
        Ok(resp)
    }
}

/// Rewrites every Set-Cookie under the route's policy; drops (and logs) lines a browser
/// would ignore anyway.
fn harden_set_cookies(route: &Route, headers: &mut http::HeaderMap) {
    // Nothing to do is the common case: avoid touching the map.
    if !headers.contains_key(header::SET_COOKIE) {
        return;
    }
    let lines: Vec<HeaderValue> = match headers.entry(header::SET_COOKIE) {
        http::header::Entry::Occupied(e) => e.remove_entry_mult().1.collect(),
        http::header::Entry::Vacant(_) => return,
    };
    for line in lines {
        match cookies::harden(&line, &route.cookies) {
            Ok(v) => {
                headers.append(header::SET_COOKIE, v);
            }
            Err(why) => {
                warn!(route = %route.name, reason = %why, "dropped a Set-Cookie header a browser would ignore");
            }
        }
    }
}

async fn relay_upgraded(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(client, upstream) {
        Ok((client, upstream)) => {
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                debug!(error = %e, "upgraded connection closed with an error");
            }
        }
        Err(e) => debug!(error = %e, "protocol upgrade failed"),
    }
}
