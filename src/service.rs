//! The per-request pipeline: a hyper service that runs the phases in a fixed order.
//!
//! ```text
//!  request
//!    │ route ─────────────────────────────── 404 when nothing matches
//!    │ session: take sessiongate's cookie and vaulted names out of Cookie, validate,
//!    │          load (expiry, grace, login claim; stale IDs reported) ── 503 / 409
//!    │ URL: strip vaulted names from ;params and ?query
//!    │ vault: inject the session's app cookies for this path
//!    │ rules: does a login / logout rule match the request? login: claim the session,
//!    │        peek the form for the subject
//!    │ forward: hop-by-hop, Host, X-Forwarded-*, body cap ── 413 / 502 / 504
//!    ▼
//!  response head (+ capped body peek when a rule reads the body)
//!    │ inspect: evaluate the rule: success / failure / no match
//!    │ vault: capture vaulted Set-Cookies out of the response
//!    │ rotate: login -> new ID, old killed | logout -> revoked | otherwise create,
//!    │         merge, periodic rotation or touch; committed before going on ── 503
//!    │ cookies: harden every remaining Set-Cookie, add sessiongate's own
//!    ▼
//!  client (access log line)
//! ```
//!
//! Routes without `[routes.session]` skip the session phases, but sessiongate's cookie
//! is still never forwarded. Every failure becomes a [`ProxyError`] and is answered and
//! logged in one place, [`AppState::handle`]. Shared state is an `Arc<AppState>`;
//! per-request state lives on the stack of `proxy`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{debug, info, warn};

use crate::config::{Config, Route, RouteSession};
use crate::cookies;
use crate::error::ProxyError;
use crate::listener::StartError;
use crate::rotate::Sessions;
use crate::router::{request_host, Router};
use crate::rules::{self, Outcome, ResponseView, Rule, SubjectSource};
use crate::session::{self, ChaChaIds};
use crate::store::{now_ms, SessionStore};
use crate::telemetry::{Metrics, RouteLabel};
use crate::upstream::{
    is_upgrade_request, prepare_request, prepare_response, ConnInfo, UpstreamClient,
};
use crate::{vault, Body};

/// Everything a request needs that outlives it.
pub struct AppState {
    pub config: Arc<Config>,
    pub sessions: Arc<Sessions>,
    metrics: Arc<Metrics>,
    router: Router,
    upstream: UpstreamClient,
}

impl AppState {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn SessionStore>,
        metrics: Arc<Metrics>,
    ) -> Result<AppState, StartError> {
        let ids = Arc::new(ChaChaIds::new()?);
        let login_settle = match &config.store {
            crate::config::StoreConfig::Firestore { cache_ttl, .. } => *cache_ttl,
            _ => std::time::Duration::ZERO,
        };
        Ok(AppState {
            router: Router::new(&config.routes),
            upstream: UpstreamClient::new(&config.upstream)?,
            sessions: Arc::new(Sessions::new(
                config.session.clone(),
                store,
                ids,
                config.session.store_timeout,
                login_settle,
                metrics.clone(),
            )),
            metrics,
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
        self.metrics
            .count_request(&route_name, resp.status().as_u16());
        let upstream_ms = resp
            .extensions()
            .get::<UpstreamTime>()
            .map_or(-1.0, |t| t.0.as_secs_f64() * 1000.0);
        info!(
            target: "access",
            route = %route_name,
            %method,
            %path,
            status = resp.status().as_u16(),
            latency_ms = format_args!("{:.3}", started.elapsed().as_secs_f64() * 1000.0),
            upstream_ms = format_args!("{upstream_ms:.3}"),
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
        let Some(rs) = &route.session else {
            session::strip_proxy_cookie(req.headers_mut(), &self.sessions.cfg.cookie_name);
            let mut resp = self.forward(route, conn, req).await?;
            harden_set_cookies(route, resp.headers_mut());
            return Ok(resp);
        };
        self.proxy_with_session(route, rs, conn, req).await
    }

    /// Forwards a prepared request and relays a protocol switch if the app accepts one.
    async fn forward(
        &self,
        route: &Route,
        conn: ConnInfo,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, ProxyError> {
        // Taken before the request is consumed: resolves once we answer 101.
        let client_upgrade = is_upgrade_request(&req).then(|| hyper::upgrade::on(&mut req));
        let up_req = prepare_request(route, &conn, req)?;
        self.send(route, up_req, client_upgrade).await
    }

    async fn send(
        &self,
        route: &Route,
        up_req: Request<Body>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Result<Response<Body>, ProxyError> {
        let started = Instant::now();
        let sent = self.upstream.send(route, up_req).await;
        self.metrics
            .upstream_seconds
            .get_or_create(&RouteLabel {
                route: route.name.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        let upstream_time = started.elapsed();
        let mut up_resp = sent?;
        // For the access log line, which is written once the response is complete.
        up_resp.extensions_mut().insert(UpstreamTime(upstream_time));
        if let (Some(client_upgrade), http::StatusCode::SWITCHING_PROTOCOLS) =
            (client_upgrade, up_resp.status())
        {
            let upstream_upgrade = hyper::upgrade::on(&mut up_resp);
            tokio::spawn(relay_upgraded(client_upgrade, upstream_upgrade));
        }
        Ok(prepare_response(up_resp, route.body_idle_timeout))
    }

    async fn proxy_with_session(
        &self,
        route: &Route,
        rs: &RouteSession,
        conn: ConnInfo,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, ProxyError> {
        let sessions = &self.sessions;
        let now = now_ms();

        // Session: what did the client present?
        let (presented, kept) =
            session::split_request_cookies(req.headers(), &sessions.cfg.cookie_name, &rs.vault);
        let mut pairs: Vec<Vec<u8>> = kept.into_iter().map(<[u8]>::to_vec).collect();
        let resolved = sessions
            .resolve(&presented, &route.name, now, rs.on_store_failure)
            .await?;
        let current = resolved.current.as_ref();

        // URL: session IDs in URLs are a fixation path of their own.
        if rs.strip_request_session_ids {
            if let Some(uri) = vault::strip_url_ids(req.uri(), &rs.vault) {
                debug!(route = %route.name, "removed a vaulted session ID from the URL");
                *req.uri_mut() = uri;
            }
        }
        let path = req.uri().path().to_owned();

        // Vault: the app sees its own cookies, from the record only.
        if let Some(cur) = current {
            pairs.extend(
                vault::pairs_for(&cur.record.vault, &path, now)
                    .into_iter()
                    .map(String::into_bytes),
            );
        }
        session::set_cookie_header(
            req.headers_mut(),
            session::join_pairs(pairs.iter().map(Vec::as_slice)),
        );

        // Rules: login or logout?
        let login = rules::find(&rs.login, req.method(), &path);
        let logout = login
            .is_none()
            .then(|| rules::find(&rs.logout, req.method(), &path))
            .flatten();
        let claimed = match (login, current) {
            (Some(_), Some(cur)) => {
                sessions
                    .claim_login(cur, route.response_timeout, now)
                    .await?;
                Some(cur)
            }
            _ => None,
        };
        if login.is_some_and(Rule::needs_body) {
            // Body rules need plain text: ask the app not to compress this response.
            req.headers_mut().remove(header::ACCEPT_ENCODING);
        }

        let client_upgrade = is_upgrade_request(&req).then(|| hyper::upgrade::on(&mut req));
        let mut up_req = prepare_request(route, &conn, req)?;
        // Form bodies are read whole (capped by max_request_body) when a session ID could
        // hide in them or the login rule wants a field from them.
        let mut subject = None;
        let subject_field = match login.and_then(|r| r.subject.as_ref()) {
            Some(SubjectSource::FormField(f)) => Some(f.as_str()),
            _ => None,
        };
        if is_form(up_req.headers()) && (rs.strip_request_session_ids || subject_field.is_some()) {
            let (mut parts, body) = up_req.into_parts();
            let mut form = read_form(route, body).await?;
            if rs.strip_request_session_ids {
                if let Some(stripped) = vault::strip_form_ids(&form, &rs.vault) {
                    debug!(route = %route.name, "removed a vaulted session ID from a form body");
                    form = stripped.into();
                }
            }
            subject = subject_field.and_then(|f| rules::form_field(&form, f));
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(form.len()));
            up_req = Request::from_parts(parts, crate::full_body(form));
        }
        let mut resp = match self.send(route, up_req, client_upgrade).await {
            Ok(resp) => resp,
            Err(e) => {
                // Only when the app certainly never saw the login is the claim released;
                // otherwise it runs out and the session dies (fail closed).
                if let (Some(cur), ProxyError::UpstreamConnect(_)) = (claimed, &e) {
                    sessions.release_login(cur).await?;
                }
                return Err(e);
            }
        };

        // Inspect: evaluate the matching rule on the response.
        let outcome = match login.or(logout) {
            None => Outcome::NoMatch,
            Some(rule) => {
                let mut head = bytes::Bytes::new();
                if rule.needs_body() {
                    let (parts, body) = resp.into_parts();
                    let (peeked, body) =
                        crate::body::peek(body, rule.body_peek, route.body_idle_timeout)
                            .await
                            .map_err(ProxyError::Upstream)?;
                    resp = Response::from_parts(parts, body);
                    head = peeked;
                }
                rule.evaluate(&ResponseView {
                    status: resp.status(),
                    headers: resp.headers(),
                    body: &head,
                })
            }
        };
        if let Some(SubjectSource::ResponseHeader(h)) = login.and_then(|r| r.subject.as_ref()) {
            subject = resp
                .headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
        }

        // Vault: the app's session cookies never reach the browser.
        let changes = vault::capture(
            resp.headers_mut(),
            &rs.vault,
            &sessions.cfg.cookie_name,
            &path,
            now,
        );

        // Rotate: commit before the response (and its cookie) leaves.
        let mut set_cookie = match (login, logout, outcome) {
            (Some(_), _, Outcome::Success) => {
                sessions.counters().login_success.inc();
                Some(
                    sessions
                        .login(current, changes, subject, &route.name, now)
                        .await?,
                )
            }
            (None, Some(rule), Outcome::Success) => {
                if rule.clear_site_data {
                    resp.headers_mut()
                        .insert("clear-site-data", HeaderValue::from_static("\"cookies\""));
                }
                Some(sessions.logout(current, &route.name, now).await?)
            }
            (login, _, outcome) => {
                if login.is_some() {
                    let c = sessions.counters();
                    let counter = if outcome == Outcome::Failure {
                        &c.login_failure
                    } else {
                        &c.login_no_match
                    };
                    counter.inc();
                }
                if let Some(cur) = claimed {
                    sessions.release_login(cur).await?;
                }
                sessions
                    .after_response(current, changes, &route.name, now)
                    .await?
            }
        };
        if set_cookie.is_none() && resolved.expire_cookie {
            set_cookie = Some(sessions.expired_cookie());
        }

        // Cookies: harden the app's, then add ours.
        harden_set_cookies(route, resp.headers_mut());
        if let Some(c) = set_cookie {
            let h = resp.headers_mut();
            h.append(header::SET_COOKIE, c);
            // A response carrying a session cookie must never be served from a cache.
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        Ok(resp)
    }
}

/// Reads a whole form body, within the route's size cap and idle deadline.
async fn read_form(route: &Route, body: Body) -> Result<bytes::Bytes, ProxyError> {
    use http_body_util::BodyExt;
    match tokio::time::timeout(route.body_idle_timeout, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ProxyError::BodyTooLarge {
            limit: route.max_request_body,
        }),
        Ok(Err(_)) => Err(ProxyError::BadRequest("the form body could not be read")),
        Err(_) => Err(ProxyError::BadRequest("the form body was not sent in time")),
    }
}

/// How long the app took to send the response head (-1 in the log when the request
/// never reached it).
#[derive(Clone, Copy)]
struct UpstreamTime(std::time::Duration);

fn is_form(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
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
