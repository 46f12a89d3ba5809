//! Forwarding to the app: one pooled hyper-util client for every route, request
//! rewriting (URI, Host, hop-by-hop headers, X-Forwarded-*), deadlines, and the
//! response-side header clean-up.
//!
//! Bodies stream in both directions. The request body is capped by the route's
//! `max_request_body` while it streams (a declared `Content-Length` over the cap is
//! refused before anything is sent); the response body gets an idle deadline between
//! frames.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{ForwardedMode, Route, UpstreamConfig};
use crate::error::ProxyError;
use crate::tls::TlsError;
use crate::{Body, BoxError};

/// Facts about the downstream connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

pub struct UpstreamClient {
    client: Client<HttpsConnector<HttpConnector>, Body>,
}

impl UpstreamClient {
    pub fn new(cfg: &UpstreamConfig) -> Result<UpstreamClient, TlsError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::tls::upstream_client_config(&cfg.extra_roots)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .build(https);
        Ok(UpstreamClient { client })
    }

    /// Sends a prepared request and waits for the response head within the route's
    /// deadline.
    pub async fn send(
        &self,
        route: &Route,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        match tokio::time::timeout(route.response_timeout, self.client.request(req)).await {
            Err(_) => Err(ProxyError::UpstreamTimeout(route.response_timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(route, e)),
        }
    }
}

fn classify(route: &Route, e: hyper_util::client::legacy::Error) -> ProxyError {
    if e.is_connect() {
        return ProxyError::UpstreamConnect(e.into());
    }
    // The request body hit the route's cap while streaming.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return ProxyError::BodyTooLarge {
                limit: route.max_request_body,
            };
        }
        source = s.source();
    }
    ProxyError::Upstream(e.into())
}

/// Headers that describe one hop and never travel past a proxy (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether an HTTP/1.1 request asks to switch protocols (WebSocket and the like).
pub fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_has(req.headers(), "upgrade")
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
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    match upgrade {
        Some(protocol) => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol);
        }
        None => {
            headers.remove(header::UPGRADE);
        }
    }
}

/// Turns a downstream request into the one sent to the app.
pub fn prepare_request(
    route: &Route,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Result<Request<Body>, ProxyError> {
    let upgrade = is_upgrade_request(&req);
    let (mut parts, body) = req.into_parts();

    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > route.max_request_body {
            return Err(ProxyError::BodyTooLarge {
                limit: route.max_request_body,
            });
        }
    }

    let original_host = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });

    parts.uri = upstream_uri(route, &parts.uri)?;
    // The pool speaks HTTP/1.1 to the app whatever the client spoke to us.
    parts.version = Version::HTTP_11;

    let h = &mut parts.headers;
    strip_hop_by_hop(h, upgrade);
    let host_value = match (&original_host, route.preserve_host) {
        (Some(host), true) => {
            HeaderValue::from_str(host).map_err(|_| ProxyError::BadRequest("invalid Host"))?
        }
        _ => HeaderValue::from_str(route.upstream.authority.as_str())
            .map_err(|_| ProxyError::Internal("upstream authority is not a header value".into()))?,
    };
    h.insert(header::HOST, host_value);
    set_forwarded(h, route.forwarded, conn, original_host.as_deref());

    let limit = usize::try_from(route.max_request_body).unwrap_or(usize::MAX);
    let body = Limited::new(body, limit).map_err(BoxError::from).boxed();
    Ok(Request::from_parts(parts, body))
}

fn upstream_uri(route: &Route, original: &Uri) -> Result<Uri, ProxyError> {
    let pq = original.path_and_query().map_or("/", |pq| pq.as_str());
    if !pq.starts_with('/') {
        // `OPTIONS *` and CONNECT's authority-form have no place behind a reverse proxy.
        return Err(ProxyError::BadRequest(
            "request target must be an absolute path",
        ));
    }
    let up = &route.upstream;
    Uri::builder()
        .scheme(up.scheme.clone())
        .authority(up.authority.clone())
        .path_and_query(format!("{}{}", up.base_path, pq))
        .build()
        .map_err(|_| ProxyError::BadRequest("invalid request target"))
}

fn set_forwarded(h: &mut HeaderMap, mode: ForwardedMode, conn: &ConnInfo, host: Option<&str>) {
    let peer = conn.peer.ip().to_string();
    let proto = if conn.tls { "https" } else { "http" };
    match mode {
        ForwardedMode::None => {
            h.remove(X_FORWARDED_FOR);
            h.remove(X_FORWARDED_PROTO);
            h.remove(X_FORWARDED_HOST);
        }
        ForwardedMode::Replace => {
            set(h, X_FORWARDED_FOR, &peer);
            set(h, X_FORWARDED_PROTO, proto);
            match host {
                Some(host) => set(h, X_FORWARDED_HOST, host),
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
            let chain = if prior.is_empty() {
                peer
            } else {
                format!("{}, {peer}", prior.join(", "))
            };
            set(h, X_FORWARDED_FOR, &chain);
            if !h.contains_key(X_FORWARDED_PROTO) {
                set(h, X_FORWARDED_PROTO, proto);
            }
            if let (false, Some(host)) = (h.contains_key(X_FORWARDED_HOST), host) {
                set(h, X_FORWARDED_HOST, host);
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

/// Cleans the app's response head for the client and puts an idle deadline on its body.
pub fn prepare_response(resp: Response<Incoming>, idle: Duration) -> Response<Body> {
    let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, switching);
    let body = tower_http::timeout::TimeoutBody::new(idle, body)
        .map_err(BoxError::from)
        .boxed();
    Response::from_parts(parts, body)
}
