//! Forwarding to the app: the connection pool ([`pool`]), request rewriting (target,
//! Host, hop-by-hop headers, X-Forwarded-*), deadlines, and the response-side header
//! clean-up.
//!
//! Bodies stream in both directions. The request body is capped by the route's
//! `max_request_body` while it streams (a declared `Content-Length` over the cap is
//! refused before anything is sent); the response body gets an idle deadline between
//! frames.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::connect::HttpConnector;

pub mod pool;
use pool::{Pool, PooledBody, SendError};

use crate::config::{ForwardedMode, Route, UpstreamConfig};
use crate::error::ProxyError;
use crate::tls::TlsError;
use crate::{Body, BoxError};

pub struct UpstreamClient {
    pool: Pool,
}

impl UpstreamClient {
    /// A client for the upstreams of these routes.
    pub fn new(
        cfg: &UpstreamConfig,
        routes: &[std::sync::Arc<Route>],
    ) -> Result<UpstreamClient, TlsError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::tls::upstream_client_config(&cfg.extra_roots)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let upstreams = routes
            .iter()
            .map(|r| (&r.upstream.scheme, &r.upstream.authority));
        Ok(UpstreamClient {
            pool: Pool::new(
                https,
                upstreams,
                cfg.pool_max_idle_per_host,
                cfg.pool_idle_timeout,
            ),
        })
    }

    /// Sends a prepared request and waits for the response head within the route's
    /// deadline from `started` (the caller's clock reading, shared to save reads).
    pub async fn send(
        &self,
        route: &Route,
        req: Request<Body>,
        started: tokio::time::Instant,
    ) -> Result<Response<PooledBody>, ProxyError> {
        let up = &route.upstream;
        let sent = self.pool.send(
            &up.scheme,
            &up.authority,
            req,
            route.body_idle_timeout,
            started.into_std(),
        );
        match tokio::time::timeout_at(started + route.response_timeout, sent).await {
            Err(_) => Err(ProxyError::UpstreamTimeout(route.response_timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(SendError::Connect(e))) => Err(ProxyError::UpstreamConnect(e)),
            Ok(Err(SendError::Http(e))) => Err(classify(route, e)),
        }
    }
}

fn classify(route: &Route, e: hyper::Error) -> ProxyError {
    // The request body hit the route's cap, or failed, while streaming: the client's.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return ProxyError::BodyTooLarge {
                limit: route.max_request_body,
            };
        }
        if s.is::<ClientBodyError>() {
            return ProxyError::BadRequest("the request body could not be read");
        }
        source = s.source();
    }
    ProxyError::Upstream(e.into())
}

/// Headers that describe one hop and never travel past a proxy (RFC 9110 7.6.1), and
/// `Upgrade`, relayed only for an allowed protocol switch. Compared as strings: one
/// switch on the length per header of every request and response.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The protocol an HTTP/1.1 request asks to switch to (WebSocket and the like), if the
/// route relays it. Any other `Upgrade` (`h2c` above all: an accepted one would be a raw
/// tunnel in which nothing is filtered) is not an upgrade request: its `Upgrade` header is
/// removed and the request forwarded as a plain one.
pub fn requested_upgrade<B>(req: &Request<B>, allowed: &[String]) -> Option<String> {
    if req.version() != Version::HTTP_11 || !connection_has(req.headers(), "upgrade") {
        return None;
    }
    let mut values = req.headers().get_all(header::UPGRADE).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return None;
    };
    let protocol = v.to_str().ok()?.trim().to_ascii_lowercase();
    // One protocol only, optionally versioned (`websocket`, `foo/2`).
    let base = protocol.split('/').next().unwrap_or_default();
    (!protocol.contains(',') && allowed.iter().any(|a| a == base)).then_some(protocol)
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, including every header the Connection header names.
/// With `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive so that a protocol
/// switch can be relayed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // `Connection: upgrade` names Upgrade itself, so keep its value aside first.
    let upgrade = keep_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    remove_where(headers, |n| is_hop_by_hop(n) || named.contains(n));
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

/// The client's body failed while streaming (reset, malformed chunk): the client's fault.
#[derive(Debug)]
pub struct ClientBodyError(pub BoxError);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client's request body failed: {}", self.0)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// The client's body, capped at the route's limit, with its errors marked as the
/// client's.
pub fn client_body(route: &Route, body: Body) -> Body {
    let limit = usize::try_from(route.max_request_body).unwrap_or(usize::MAX);
    Limited::new(body.map_err(|e| BoxError::from(ClientBodyError(e))), limit).boxed()
}

/// A request declares a body larger than the route accepts.
pub fn check_declared_length(route: &Route, headers: &HeaderMap) -> Result<(), ProxyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(len) if len > route.max_request_body => Err(ProxyError::BodyTooLarge {
            limit: route.max_request_body,
        }),
        _ => Ok(()),
    }
}

/// What the request to the app is made of.
pub struct Outgoing<'a> {
    /// The canonical path and query, before the upstream's base path.
    pub path_and_query: &'a str,
    /// The canonical host, for `Host` (with `preserve_host`) and `X-Forwarded-Host`.
    pub host: Option<&'a crate::canon::Host>,
    /// The upgrade protocol relayed, if any.
    pub upgrade: Option<&'a str>,
    /// The request carried a body (a `Content-Length` or `Transfer-Encoding`).
    pub has_body: bool,
    /// The client's address (as text) and whether it spoke TLS, for X-Forwarded-*.
    pub peer: &'a HeaderValue,
    pub tls: bool,
}

/// Turns a downstream request head into the one sent to the app: canonical target,
/// Host and framing, hop-by-hop headers removed, X-Forwarded-* set.
pub fn prepare_request(
    route: &Route,
    mut parts: http::request::Parts,
    body: Body,
    out: &Outgoing<'_>,
) -> Result<Request<Body>, ProxyError> {
    parts.uri = upstream_target(route, out.path_and_query)?;
    // The pool speaks HTTP/1.1 to the app whatever the client spoke to us.
    parts.version = Version::HTTP_11;

    let h = &mut parts.headers;
    strip_hop_by_hop(h, out.upgrade.is_some());
    // The canonical host, for `Host` (with `preserve_host`) and `X-Forwarded-Host`.
    let canonical_host = out.host.map(|h| h.header().clone());
    let host_value = match (&canonical_host, route.preserve_host) {
        (Some(host), true) => host.clone(),
        _ => route.upstream.host_header.clone(),
    };
    h.insert(header::HOST, host_value);
    set_forwarded(h, route.forwarded, out, canonical_host);
    // Framing in canonical form only: a length in plain decimal (never `0005`), or none
    // and chunked.
    h.remove(header::CONTENT_LENGTH);
    if out.has_body {
        if let Some(n) = http_body::Body::size_hint(&body).exact() {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    Ok(Request::from_parts(parts, body))
}

/// The origin-form target the app gets: the upstream's base path, then the canonical
/// path and query.
fn upstream_target(route: &Route, pq: &str) -> Result<Uri, ProxyError> {
    let base = &route.upstream.base_path;
    let target = match base.is_empty() {
        true => Uri::try_from(pq),
        false => Uri::try_from(format!("{base}{pq}")),
    };
    target.map_err(|_| ProxyError::BadRequest("invalid request target"))
}

/// Whether a client's header must not reach the app under this forwarding mode:
/// headers with which some apps override the path they route on (IIS, Symfony, Zend),
/// never, since they would contradict the canonical target; other proxy-set headers an
/// app may trust for the client's address, host or prefix, only behind a trusted load
/// balancer (`append`); `X-Forwarded-*`, unless the mode sets or appends them.
fn is_forwarding_override(name: &HeaderName, mode: ForwardedMode) -> bool {
    match name.as_str() {
        "x-original-url" | "x-rewrite-url" => true,
        "forwarded" | "x-real-ip" | "x-forwarded-port" | "x-forwarded-prefix"
        | "x-forwarded-server" | "x-original-host" => mode != ForwardedMode::Append,
        "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" => mode == ForwardedMode::None,
        _ => false,
    }
}

/// Removes every header `doomed` names, by scans of the map: most requests carry none
/// of the headers removed, and a lookup per absent name (hashing each) cost more than
/// the scan. Without a list of what was found, such a request allocates nothing; a
/// request that does carry some pays one more scan per name removed.
fn remove_where(h: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    while let Some(name) = h.keys().find(|n| doomed(n)).cloned() {
        h.remove(name);
    }
}

fn set_forwarded(
    h: &mut HeaderMap,
    mode: ForwardedMode,
    out: &Outgoing<'_>,
    host: Option<HeaderValue>,
) {
    let proto = HeaderValue::from_static(if out.tls { "https" } else { "http" });
    remove_where(h, |n| is_forwarding_override(n, mode));
    match mode {
        ForwardedMode::None => {}
        ForwardedMode::Replace => {
            h.insert(X_FORWARDED_FOR, out.peer.clone());
            h.insert(X_FORWARDED_PROTO, proto);
            match host {
                Some(host) => {
                    h.insert(X_FORWARDED_HOST, host);
                }
                None => {
                    h.remove(X_FORWARDED_HOST);
                }
            }
        }
        ForwardedMode::Append => {
            let prior: Vec<&str> = h
                .get_all(X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            match prior.is_empty() {
                true => {
                    h.insert(X_FORWARDED_FOR, out.peer.clone());
                }
                false => {
                    let peer = out.peer.to_str().unwrap_or("-");
                    set(h, X_FORWARDED_FOR, &format!("{}, {peer}", prior.join(", ")));
                }
            }
            if !h.contains_key(X_FORWARDED_PROTO) {
                h.insert(X_FORWARDED_PROTO, proto);
            }
            if let (false, Some(host)) = (h.contains_key(X_FORWARDED_HOST), host) {
                h.insert(X_FORWARDED_HOST, host);
            }
        }
    }
}

fn set(h: &mut HeaderMap, name: HeaderName, value: &str) {
    // Values here come from a socket address or headers that already parsed; a failure
    // only drops the header.
    match HeaderValue::from_str(value) {
        Ok(v) => {
            h.insert(name, v);
        }
        Err(_) => {
            h.remove(name);
        }
    }
}

/// Cleans the app's response head for the client (its body has the route's idle
/// deadline already).
pub fn prepare_response(resp: Response<PooledBody>) -> Response<Body> {
    let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, switching);
    Response::from_parts(parts, body.boxed())
}
