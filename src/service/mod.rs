//! The per-request pipeline: a hyper service that runs the phases in a fixed order, each
//! one a function over the request's context ([`Ctx`]). This chart is the table of
//! contents of the request path:
//!
//! ```text
//!  request
//!    │ read_request: canonical host, target and framing (`canon`) ── 400 / 501
//!    │ route: host + canonical path -> route ───────────────────────── 404
//!    │ check_route: TRACE/TRACK, Upgrade allow-list, `_` headers ───── 405
//!    │ session_cookies: strict Cookie parse; sessiongate's cookie out, vaulted names
//!    │          (under every reading, `names`) and malformed pairs dropped
//!    │ admit + resolve: the ID is admitted (`inflight`), then its session loaded
//!    │          (expiry, grace, login claim; stale IDs reported) ── 503 / 409
//!    │ read_body: form-like bodies read whole: vaulted fields removed, credential
//!    │          fields and the subject found (`forms`) ─────────── 400 / 413
//!    │ detect_login: a login rule's path and method, or a credential field anywhere
//!    │ claim: login -> claim in the store, close the ID here and drain requests in
//!    │          flight on it ──────────────────────────────────── 409 / 503
//!    │ build_upstream: canonical target without vaulted ;params and ?fields, Cookie
//!    │          rebuilt (vault first, then the kept pairs), framing, X-Forwarded-*
//!    │ send: to the app; a login on this ID cancels it ─────── 409 / 502 / 504
//!    ▼
//!  response head (+ capped body peek when a rule reads the body)
//!    │ evaluate: the rule's outcome: success / failure / undecided
//!    │ capture: vaulted Set-Cookies out of the response (`vault`)
//!    │ commit: login -> new ID, old killed | undecided login -> new ID | logout ->
//!    │         revoked | otherwise create, merge, periodic rotation or touch; committed
//!    │         before going on ──────────────────────────────────── 503
//!    │ finish: harden every remaining Set-Cookie, add sessiongate's own
//!    ▼
//!  client (access log line)
//! ```
//!
//! Routes without `[routes.session]` skip the session phases; they still never forward
//! sessiongate's cookie, and when a session route shares their upstream they also filter
//! its vaulted names both ways. Every failure becomes a [`ProxyError`] and is answered and
//! logged in one place, [`AppState::handle`].

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{debug, info, warn};

use crate::activity::{InProgress, Tracked};
use crate::canon::{self, FramingError, Host, Target};
use crate::config::{Config, Route, RouteSession, SessionMode, Undecided};
use crate::cookies;
use crate::error::ProxyError;
use crate::forms::{self, BodyKind, Inspect};
use crate::inflight::{Closing, InFlight, Ticket};
use crate::limit;
use crate::listener::{ConnInfo, Handler};
use crate::logging::{Access, Millis};
use crate::names::NameGuard;
use crate::rotate::{self, Current, Resolved, Sessions};
use crate::router::Router;
use crate::rules::{Matched, Outcome, ResponseView, Rule, SubjectSource, Verdict};
use crate::session::{self, ChaChaIds, Presented};
use crate::store::{now_ms, LoginClaim, SessionStore};
use crate::telemetry::{Metrics, RouteMetrics};
use crate::tls::TlsError;
use crate::upstream::{self, prepare_response, Outgoing, UpstreamClient};
use crate::{vault, Body};

mod observe;

/// How long a login waits for the requests already in flight on its session before it
/// cancels them.
const LOGIN_DRAIN: Duration = Duration::from_secs(5);

/// Why the request pipeline could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Entropy(#[from] crate::session::ids::EntropyError),
}

/// A request's pipeline, as [`AppState::pipeline`] picks it.
type Pipeline<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<Body>, ProxyError>> + Send + 'a>,
>;

impl Handler for AppState {
    fn handle(
        self: Arc<Self>,
        conn: ConnInfo,
        req: Request<Incoming>,
        request: InProgress,
    ) -> impl std::future::Future<Output = Result<Response<Tracked>, Infallible>> + Send + 'static
    {
        AppState::handle(self, conn, req, request)
    }

    fn server_config(&self) -> &crate::config::ServerConfig {
        &self.config.server
    }
}

/// Everything a request needs that outlives it.
pub struct AppState {
    pub config: Arc<Config>,
    pub sessions: Arc<Sessions>,
    metrics: Arc<Metrics>,
    router: Router,
    /// Per route, in `config.routes` order ([`Route::index`]).
    route_metrics: Vec<RouteMetrics>,
    upstream: UpstreamClient,
    inflight: Arc<InFlight>,
}

/// The canonical reading of a request, made once before routing.
struct Canonical {
    host: Option<Host>,
    target: Target,
    /// The request declared a body.
    has_body: bool,
}

/// Per-request state of a session route, filled in phase by phase.
struct Ctx<'a> {
    route: &'a Route,
    rs: &'a RouteSession,
    conn: &'a ConnInfo,
    /// Where `send` leaves the app's response time, for the access line.
    timing: &'a UpstreamTime,
    /// The address the client is counted under (per-client creation limit).
    client: IpAddr,
    now: u64,
    canon: Canonical,
    presented: Presented,
    /// The client's cookie pairs forwarded to the app, joined.
    kept: Vec<u8>,
    ticket: Option<Ticket>,
    resolved: Resolved,
    /// The login rule the request matches, or the privilege rule (then `privilege`).
    login: Option<&'a Rule>,
    privilege: bool,
    logout: Option<&'a Rule>,
    /// A login rule matched or a credential field was sent.
    attempt: bool,
    subject: Option<String>,
    /// The login claim this request took on its session.
    claimed: Option<LoginClaim>,
    closing: Option<Closing>,
}

impl<'a> Ctx<'a> {
    fn new(
        route: &'a Route,
        rs: &'a RouteSession,
        conn: &'a ConnInfo,
        canon: Canonical,
        timing: &'a UpstreamTime,
        headers: &http::HeaderMap,
    ) -> Ctx<'a> {
        Ctx {
            route,
            rs,
            conn,
            timing,
            client: limit::client_address(route.forwarded, conn.peer.ip(), headers),
            now: now_ms(),
            canon,
            presented: Presented::Absent,
            kept: Vec::new(),
            ticket: None,
            resolved: Resolved::default(),
            login: None,
            privilege: false,
            logout: None,
            attempt: false,
            subject: None,
            claimed: None,
            closing: None,
        }
    }

    /// The rules that apply, as `detect_login` found them.
    fn matched(&self) -> Matched<'a> {
        Matched {
            login: self.login,
            privilege: self.privilege,
            logout: self.logout,
            attempt: self.attempt,
        }
    }

    fn current(&self) -> Option<&Current> {
        self.resolved.current.as_ref()
    }
}

impl AppState {
    /// `inflight` is the previous config's on a reload: requests and streams admitted
    /// under the old config must be drained and ended by a login under the new one.
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn SessionStore>,
        metrics: Arc<Metrics>,
        inflight: Arc<InFlight>,
    ) -> Result<AppState, BuildError> {
        let ids = Arc::new(ChaChaIds::new()?);
        let login_settle = store.replica_staleness();
        Ok(AppState {
            router: Router::new(&config.routes),
            route_metrics: config
                .routes
                .iter()
                .map(|r| metrics.route(&r.name))
                .collect(),
            upstream: UpstreamClient::new(&config.upstream, &config.routes)?,
            sessions: Arc::new(Sessions::new(
                config.session.clone(),
                store,
                ids,
                config.session.store_timeout,
                login_settle,
                metrics.clone(),
            )),
            inflight,
            metrics,
            config,
        })
    }

    /// The requests and streams in flight, by session; carried over to the next config.
    pub fn inflight(&self) -> &Arc<InFlight> {
        &self.inflight
    }

    /// Ends every session of `subject` but `except`, and the streams opened on them on
    /// this replica; returns how many sessions it ended.
    pub async fn revoke_subject(
        &self,
        subject: &str,
        except: Option<&crate::session::SessionKey>,
        why: &str,
    ) -> Result<usize, ProxyError> {
        let ended = self
            .sessions
            .revoke_subject(subject, except, why, now_ms())
            .await?;
        for key in &ended {
            self.inflight.end_streams(key);
        }
        Ok(ended.len())
    }

    /// Serves one request; never fails (errors become pages). Generic over the body, so
    /// the pipeline can be driven without a client socket; every phase works on the
    /// boxed [`Body`] (the upgrade handle travels in the request's extensions). The
    /// request stays in progress for its connection's head deadline until the response
    /// body is dropped (carried here rather than by a wrapper future: one layer less).
    pub async fn handle<B>(
        self: Arc<Self>,
        conn: ConnInfo,
        req: Request<B>,
        request: InProgress,
    ) -> Result<Response<Tracked>, Infallible>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
        B::Error: Into<crate::BoxError>,
    {
        let mut req = req.map(|b| {
            http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_err(b, Into::into))
        });
        let started = Instant::now();
        let method = req.method().clone();
        let raw_path = logged_path(req.uri().path());
        let mut routed: Option<Arc<Route>> = None;
        let upstream_time = UpstreamTime::default();
        let result = match read_request(&mut req) {
            Err(e) => Err(e),
            Ok(canon) => match self
                .router
                .route(canon.host.as_ref().map(|h| h.name()), &canon.target.path)
            {
                None => Err(ProxyError::NoRoute),
                Some(route) => {
                    let route = routed.insert(route.clone());
                    match self.check_route(route, &mut req) {
                        Err(e) => Err(e),
                        Ok(()) => {
                            self.pipeline(route, &conn, canon, req, &upstream_time)
                                .await
                        }
                    }
                }
            },
        };
        let route_name = routed.as_ref().map_or("-", |r| r.name.as_str());
        let resp = result.unwrap_or_else(|e| self.failed(e, route_name, &method, &raw_path));
        match routed
            .as_ref()
            .and_then(|r| self.route_metrics.get(r.index))
        {
            Some(m) => m.count_request(resp.status().as_u16()),
            None => self.metrics.count_request("-", resp.status().as_u16()),
        }
        if crate::logging::access_enabled() {
            Access {
                route: route_name,
                method: &method,
                path: &raw_path,
                status: resp.status().as_u16(),
                latency: Millis(Some(started.elapsed())),
                upstream: Millis(upstream_time.get()),
                peer: conn.peer_ip_str(),
            }
            .log();
        }
        Ok(resp.map(|body| Tracked::new(body, request)))
    }

    /// The route's pipeline for the request, boxed: the request's future is moved more
    /// than once (by hyper, by the listener), and the pipeline's state would be most of
    /// it (2 to 4 KB).
    fn pipeline<'a>(
        &'a self,
        route: &'a Route,
        conn: &'a ConnInfo,
        canon: Canonical,
        req: Request<Body>,
        timing: &'a UpstreamTime,
    ) -> Pipeline<'a> {
        match &route.session {
            None => Box::pin(self.proxy_plain(route, conn, canon, req, timing)),
            Some(rs) if rs.mode == SessionMode::Observe => {
                Box::pin(self.proxy_observe(route, rs, conn, canon, req, timing))
            }
            Some(rs) => Box::pin(self.proxy_session(route, rs, conn, canon, req, timing)),
        }
    }

    /// A request that failed: counted, logged (throttled where the client or a flood
    /// decides how often), and answered with the error's page.
    fn failed(&self, e: ProxyError, route: &str, method: &Method, path: &str) -> Response<Body> {
        if let Some(reason) = e.rejection_reason() {
            self.metrics
                .rejected
                .get_or_create(&crate::telemetry::ReasonLabel { reason })
                .inc();
        }
        match e.refusal() {
            // Refusals come per request under a flood: counted, and logged at most once
            // a second.
            Some(reason) => {
                self.metrics.count_refused(route, reason);
                if let Some(suppressed) = self.metrics.refusal_log.allow(now_ms()) {
                    warn!(route = %route, reason, suppressed, error = %e, "new sessions refused");
                }
            }
            // A client's bad requests are its own business and come as fast as it sends
            // them (slow-body floods, scanners): logged at most once a second (every one
            // still has its access line and metric). The app's and the store's failures
            // are the operator's, and each is logged.
            None if e.side() == crate::error::Side::Client => {
                if let Some(suppressed) = self.metrics.client_error_log.allow(now_ms()) {
                    warn!(route = %route, %method, path = %path, side = ?e.side(), suppressed, error = %e, "request failed")
                }
            }
            None => {
                warn!(route = %route, %method, path = %path, side = ?e.side(), error = %e, "request failed")
            }
        }
        e.into_response()
    }

    /// Route-level refusals and removals that do not depend on the session.
    fn check_route(&self, route: &Route, req: &mut Request<Body>) -> Result<(), ProxyError> {
        let m = req.method().as_str();
        if !route.allow_trace
            && (m.eq_ignore_ascii_case("TRACE") || m.eq_ignore_ascii_case("TRACK"))
        {
            // The app would echo the request, vault cookies included.
            return Err(ProxyError::MethodNotAllowed(
                "TRACE and TRACK echo the request",
            ));
        }
        if req.method() == Method::CONNECT {
            return Err(ProxyError::MethodNotAllowed(
                "CONNECT has no place behind a reverse proxy",
            ));
        }
        if !route.forward_underscore_headers {
            let n = canon::drop_underscore_headers(req.headers_mut());
            self.metrics.count_removed("underscore_header", n);
        }
        Ok(())
    }

    /// A route without session protection: sessiongate's cookie is removed; when a session
    /// route shares the upstream, its vaulted names are filtered both ways.
    async fn proxy_plain(
        &self,
        route: &Route,
        conn: &ConnInfo,
        canon: Canonical,
        mut req: Request<Body>,
        timing: &UpstreamTime,
    ) -> Result<Response<Body>, ProxyError> {
        let cookie_name = &self.sessions.cfg.cookie_name;
        if route.protected.is_empty() {
            session::strip_proxy_cookie(req.headers_mut(), cookie_name);
        } else {
            let split =
                session::split_request_cookies(req.headers(), cookie_name, &route.protected);
            self.count_cookie_drops(&split);
            let joined = session::join_pairs(split.kept.iter().copied());
            session::set_cookie_request_header(req.headers_mut(), joined);
        }
        let upgrade = upstream::requested_upgrade(&req, &route.upgrades);
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let pq = self.forwarded_target(route, &route.protected, &canon.target);
        upstream::check_declared_length(route, req.headers())?;
        let (parts, body) = req.into_parts();
        let body = upstream::client_body(route, body);
        let out = outgoing(&pq, &canon, upgrade.as_deref(), conn);
        let up_req = upstream::prepare_request(route, parts, body, &out)?;
        let (resp, relay) = self
            .send(route, up_req, upgrade.as_deref(), client_upgrade, timing)
            .await?;
        let mut resp = untracked(resp, relay);
        if !route.protected.is_empty() {
            let dropped = vault::capture(
                resp.headers_mut(),
                &route.protected,
                cookie_name,
                &canon.target.path,
                now_ms(),
            );
            if !dropped.is_empty() {
                warn!(route = %route.name, count = dropped.len(), "dropped the app's session Set-Cookie on a route without session protection");
                self.metrics
                    .count_removed("protected_set_cookie", dropped.len());
            }
        }
        harden_set_cookies(route, resp.headers_mut());
        Ok(resp)
    }

    async fn proxy_session(
        &self,
        route: &Route,
        rs: &RouteSession,
        conn: &ConnInfo,
        canon: Canonical,
        mut req: Request<Body>,
        timing: &UpstreamTime,
    ) -> Result<Response<Body>, ProxyError> {
        let mut ctx = Ctx::new(route, rs, conn, canon, timing, req.headers());
        self.session_cookies(&mut ctx, &req);
        self.admit_and_resolve(&mut ctx).await?;
        let upgrade = upstream::requested_upgrade(&req, &ctx.route.upgrades);
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        upstream::check_declared_length(ctx.route, req.headers())?;
        let (mut parts, body) = req.into_parts();
        // The phases below that have nothing to do for most requests are skipped here,
        // not inside them: a request's future is copied along with every callee future
        // it awaits, even one that returns at once.
        let kind = forms::body_kind(&parts.headers);
        let (body, buffered) = match ctx.canon.has_body && kind != BodyKind::Opaque {
            // Boxed: only form bodies take this path, and its state is large.
            true => Box::pin(self.read_body(&mut ctx, &mut parts, body, kind)).await?,
            false => (upstream::client_body(ctx.route, body), false),
        };
        self.detect_login(&mut ctx, &parts.method);
        if ctx.login.is_some_and(Rule::needs_body) {
            // Body rules need plain text: ask the app not to compress this response.
            parts.headers.remove(header::ACCEPT_ENCODING);
        }
        if ctx.attempt {
            self.claim(&mut ctx).await?;
        }
        let sent = async {
            if buffered && ctx.claimed.is_none() {
                self.check_still_current(&mut ctx).await?;
            }
            let up_req = self.build_upstream(&ctx, parts, body, upgrade.as_deref())?;
            self.send_admitted(&mut ctx, up_req, upgrade.as_deref(), client_upgrade)
                .await
        }
        .await;
        let mut resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                // Only when the app certainly never saw the login is the claim released;
                // otherwise it runs out and the session dies (fail closed).
                if let (Some(claim), Some(cur)) = (ctx.claimed, ctx.current()) {
                    if !matches!(e, ProxyError::Upstream(_) | ProxyError::UpstreamTimeout(_)) {
                        self.sessions.release_login(cur, claim).await?;
                    }
                }
                return Err(e);
            }
        };
        if !buffered && ctx.canon.has_body && ctx.claimed.is_none() {
            // The body streamed to the app, which may have read the session only once it
            // was complete: if a login (on any replica) took the session meanwhile, the
            // answer may be the victim's and must not reach this client.
            self.check_still_current(&mut ctx).await?;
        }
        let outcome = match ctx.login.or(ctx.logout) {
            Some(rule) => self.evaluate(&mut ctx, rule, &mut resp).await?,
            // No rule: nothing says how a credential field went.
            None => Outcome::Undecided,
        };
        let changes = vault::capture(
            resp.headers_mut(),
            &ctx.rs.vault,
            &self.sessions.cfg.cookie_name,
            &ctx.canon.target.path,
            ctx.now,
        );
        let set_cookie = self.commit(&ctx, outcome, changes, &mut resp).await?;
        drop(ctx.closing.take());
        finish(ctx.route, &mut resp, set_cookie);
        Ok(resp)
    }

    /// Phase: the Cookie header, read strictly.
    fn session_cookies(&self, ctx: &mut Ctx<'_>, req: &Request<Body>) {
        let split = session::split_request_cookies(
            req.headers(),
            &self.sessions.cfg.cookie_name,
            &ctx.route.protected,
        );
        self.count_cookie_drops(&split);
        if split.protected > 0 {
            debug!(route = %ctx.route.name, count = split.protected, "removed client cookies named like a vaulted cookie");
        }
        ctx.kept = session::join_pairs(split.kept.iter().copied());
        ctx.presented = split.presented;
    }

    fn count_cookie_drops(&self, split: &session::RequestCookies<'_>) {
        if split.malformed > 0 {
            debug!(
                count = split.malformed,
                "dropped malformed Cookie pairs (values not logged)"
            );
        }
        self.metrics
            .count_removed("malformed_cookie", split.malformed);
        self.metrics
            .count_removed("protected_cookie", split.protected);
    }

    /// Phase: admit the presented ID (before reading its session, so that a login can
    /// wait for this request), then load the session.
    async fn admit_and_resolve(&self, ctx: &mut Ctx<'_>) -> Result<(), ProxyError> {
        if let Presented::Valid(key) = &ctx.presented {
            match self.inflight.admit(*key) {
                Ok(t) => ctx.ticket = Some(t),
                Err(_) => {
                    self.sessions.counters().login_conflicts.inc();
                    return Err(ProxyError::LoginInProgress);
                }
            }
        }
        ctx.resolved = self
            .sessions
            .resolve(
                &ctx.presented,
                &ctx.route.name,
                ctx.now,
                ctx.rs.on_store_failure,
            )
            .await?;
        Ok(())
    }

    /// Phase: a body the app could read parameters from (`kind` is not opaque) is read
    /// whole (within the body cap) and inspected; any other body streams.
    async fn read_body(
        &self,
        ctx: &mut Ctx<'_>,
        parts: &mut http::request::Parts,
        body: Body,
        kind: BodyKind,
    ) -> Result<(Body, bool), ProxyError> {
        if !forms::ascii_compatible_charset(&parts.headers) {
            return Err(ProxyError::UnsupportedMediaType(
                "a form in a charset that does not read field names as ASCII",
            ));
        }
        if forms::is_encoded(&parts.headers) {
            // A compressed form (body-parser inflates gzip and deflate) cannot be read
            // here: it may carry credentials, so it is a login attempt.
            ctx.attempt = true;
            return Ok((upstream::client_body(ctx.route, body), false));
        }
        let bytes = read_whole(
            ctx.route,
            ctx.conn.pressed,
            upstream::client_body(ctx.route, body),
        )
        .await?;
        let subject_field = self.subject_field(ctx, &parts.method);
        let what = Inspect {
            protected: &ctx.route.protected,
            strip: ctx.rs.strip_request_session_ids,
            credentials: &ctx.rs.credential_fields,
            subject_field,
            multipart: ctx.rs.multipart_session_ids,
        };
        let inspected = forms::inspect(&kind, bytes, &what).await.map_err(|e| {
            debug!(route = %ctx.route.name, error = %e, "refused a form body");
            ProxyError::BadRequest(match e {
                forms::FormError::ProtectedPart => {
                    "a multipart part is named like a vaulted session cookie"
                }
                forms::FormError::Unencodable => {
                    "a multipart part name cannot be forwarded unambiguously"
                }
                forms::FormError::Multipart(_) => "the multipart body could not be parsed",
                forms::FormError::TooManyFields => "the form has too many fields",
            })
        })?;
        if inspected.removed > 0 {
            debug!(route = %ctx.route.name, "removed a vaulted session ID from a form body");
            self.metrics
                .count_removed("protected_field", inspected.removed);
        }
        ctx.attempt |= inspected.credentials;
        ctx.subject = inspected.subject;
        if let Some(ct) = inspected.content_type {
            let value = HeaderValue::from_str(&ct)
                .map_err(|_| ProxyError::Internal("multipart Content-Type".into()))?;
            parts.headers.insert(header::CONTENT_TYPE, value);
        }
        Ok((crate::full_body(inspected.body), true))
    }

    /// The form field a login (or privilege) rule takes the subject from, if the request
    /// could be one.
    fn subject_field<'r>(&self, ctx: &Ctx<'r>, method: &Method) -> Option<&'r str> {
        let path = &ctx.canon.target.path;
        let rule = crate::rules::find(&ctx.rs.login, method, path)
            .or_else(|| crate::rules::find(&ctx.rs.privilege, method, path))?;
        match rule.subject.as_ref() {
            Some(SubjectSource::FormField(f)) => Some(f.as_str()),
            _ => None,
        }
    }

    /// Phase: is this a login attempt (a login or privilege rule, or credentials
    /// anywhere), a logout?
    fn detect_login(&self, ctx: &mut Ctx<'_>, method: &Method) {
        let m = ctx.rs.rules().classify(
            method,
            &ctx.canon.target.path,
            ctx.canon.target.query.as_deref(),
            ctx.attempt,
        );
        ctx.login = m.login;
        ctx.privilege = m.privilege;
        ctx.logout = m.logout;
        ctx.attempt = m.attempt;
    }

    /// Phase: a login attempt on a session claims it in the store (other replicas answer
    /// 409) and closes it here, waiting for the requests already in flight on it.
    async fn claim(&self, ctx: &mut Ctx<'_>) -> Result<(), ProxyError> {
        let (Some(cur), Some(ticket)) = (ctx.resolved.current.as_ref(), ctx.ticket.as_ref()) else {
            return Ok(());
        };
        let closing = self
            .inflight
            .close(ticket, LOGIN_DRAIN)
            .await
            .map_err(|_| {
                self.sessions.counters().login_conflicts.inc();
                ProxyError::LoginInProgress
            })?;
        if closing.cancelled > 0 {
            warn!(route = %ctx.route.name, id_hash = %cur.key, count = closing.cancelled, "a login cancelled requests still in flight on its session");
            self.sessions
                .counters()
                .login_cancelled_requests
                .inc_by(u64::try_from(closing.cancelled).unwrap_or(u64::MAX));
        }
        ctx.closing = Some(closing);
        ctx.claimed = Some(
            self.sessions
                .claim_login(cur, ctx.route.response_timeout, ctx.now)
                .await?,
        );
        Ok(())
    }

    /// A request whose body took time to arrive is forwarded with the vault (or its
    /// answer released) only if its session is still the same one: no login or logout
    /// meanwhile. Across replicas the store read is at most `cache_ttl` old, and a login
    /// is forwarded only `cache_ttl` after its claim, so a check made after the app
    /// processed the login always sees it.
    async fn check_still_current(&self, ctx: &mut Ctx<'_>) -> Result<(), ProxyError> {
        let Some(cur) = ctx.resolved.current.as_ref() else {
            return Ok(());
        };
        match self.sessions.still_current(cur).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ProxyError::SessionChanged),
            // Such a route keeps serving known sessions through a store outage.
            Err(_) if ctx.rs.on_store_failure == crate::config::StoreFailurePolicy::ServeCached => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The canonical path and query for the app: vaulted `;params` and query fields
    /// removed, other `;params` only with `keep_path_params`.
    fn forwarded_target(&self, route: &Route, protected: &NameGuard, target: &Target) -> String {
        let path = target.path_with_params(|p| {
            route.keep_path_params && !vault::is_protected_param(p, protected)
        });
        let removed_params = target
            .segments
            .iter()
            .flat_map(|s| &s.params)
            .filter(|p| vault::is_protected_param(p, protected))
            .count();
        self.metrics
            .count_removed("protected_path_param", removed_params);
        match &target.query {
            None => path,
            Some(q) => {
                let q = match vault::strip_fields(q.as_bytes(), protected) {
                    Some(stripped) => {
                        debug!(route = %route.name, "removed a vaulted session ID from the query string");
                        self.metrics.count_removed("protected_query_field", 1);
                        String::from_utf8(stripped).unwrap_or_default()
                    }
                    None => q.clone(),
                };
                if q.is_empty() {
                    path
                } else {
                    format!("{path}?{q}")
                }
            }
        }
    }

    /// Phase: the request the app receives.
    fn build_upstream(
        &self,
        ctx: &Ctx<'_>,
        mut parts: http::request::Parts,
        body: Body,
        upgrade: Option<&str>,
    ) -> Result<Request<Body>, ProxyError> {
        let strip = if ctx.rs.strip_request_session_ids {
            &ctx.route.protected
        } else {
            &NameGuard::default()
        };
        let pq = self.forwarded_target(ctx.route, strip, &ctx.canon.target);
        // The vault's pairs first: with no client pair that reads as a vaulted name left,
        // the order cannot matter, but first-wins parsers are then right twice over.
        // Sized once: the header is written on every request of a session, and growing
        // it pair by pair cost a reallocation or two each time.
        let vault_len = ctx.current().map_or(0, |cur| {
            cur.record.vault.iter().fold(0usize, |n, c| {
                n.saturating_add(c.name.len())
                    .saturating_add(c.value.len())
                    .saturating_add(3)
            })
        });
        let mut cookie = Vec::with_capacity(vault_len.saturating_add(ctx.kept.len() + 2));
        if let Some(cur) = ctx.current() {
            vault::write_pairs(
                &cur.record.vault,
                &ctx.canon.target.path,
                ctx.now,
                &mut cookie,
            );
        }
        if !ctx.kept.is_empty() {
            if !cookie.is_empty() {
                cookie.extend_from_slice(b"; ");
            }
            cookie.extend_from_slice(&ctx.kept);
        }
        session::set_cookie_request_header(&mut parts.headers, cookie);
        let out = outgoing(&pq, &ctx.canon, upgrade, ctx.conn);
        upstream::prepare_request(ctx.route, parts, body, &out)
    }

    /// Phase: send, unless a login on this session cancels the request first. Once the
    /// response head is in, the request is answered; an answer that streams on (no length,
    /// or a tunnel) keeps its ticket as a stream, which a login or logout ends.
    async fn send_admitted(
        &self,
        ctx: &mut Ctx<'_>,
        up_req: Request<Body>,
        upgrade: Option<&str>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Result<Response<Body>, ProxyError> {
        let send = self.send(ctx.route, up_req, upgrade, client_upgrade, ctx.timing);
        let sent = match (ctx.ticket.as_mut(), ctx.closing.is_some()) {
            // The login itself holds the session closed: nothing can cancel it.
            (Some(ticket), false) => {
                tokio::select! {
                    biased;
                    () = ticket.cancelled() => Err(ProxyError::SessionChanged),
                    r = send => r,
                }
            }
            _ => send.await,
        };
        let (resp, relay) = sent?;
        let ticket = match (ctx.closing.is_some(), ctx.logout.is_some()) {
            // A login holds its own ticket until it has committed.
            (true, _) => None,
            // A logout's own answer is not one of the streams it ends: released here.
            (false, true) => {
                ctx.ticket = None;
                None
            }
            (false, false) => ctx.ticket.take(),
        };
        let streams = relay.is_some()
            || !(resp.body().is_end_stream() || resp.body().size_hint().exact().is_some());
        match (ticket, streams) {
            (Some(ticket), true) => {
                let ticket = ticket.into_stream();
                let ended = ticket.ended();
                match relay {
                    Some(relay) => {
                        tokio::spawn(relay_upgraded(relay, Some((Box::pin(ended), ticket))));
                        Ok(resp)
                    }
                    None => Ok(resp.map(|b| crate::body::until(b, ended, ticket))),
                }
            }
            (_, _) => Ok(untracked(resp, relay)),
        }
    }

    async fn send(
        &self,
        route: &Route,
        up_req: Request<Body>,
        upgrade: Option<&str>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        timing: &UpstreamTime,
    ) -> Result<(Response<Body>, Option<Relay>), ProxyError> {
        let started = tokio::time::Instant::now();
        let sent = self.upstream.send(route, up_req, started).await;
        let upstream_time = started.elapsed();
        if let Some(m) = self.route_metrics.get(route.index) {
            m.upstream_seconds.observe(upstream_time.as_secs_f64());
        }
        let mut up_resp = sent?;
        // For the access log line, which is written once the response is complete.
        timing.set(upstream_time);
        let mut relay = None;
        if up_resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            let agreed = up_resp
                .headers()
                .get(header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_ascii_lowercase());
            match (client_upgrade, upgrade) {
                (Some(client), Some(asked)) if agreed.as_deref() == Some(asked) => {
                    relay = Some(Relay {
                        client,
                        upstream: hyper::upgrade::on(&mut up_resp),
                    });
                }
                // A switch nobody asked for, or to another protocol: no tunnel.
                _ => {
                    return Err(ProxyError::Upstream(
                        "the app switched protocols without an allowed Upgrade request".into(),
                    ))
                }
            }
        }
        Ok((prepare_response(up_resp), relay))
    }

    /// Phase: the rule's outcome, read from the response head and a capped body peek.
    async fn evaluate(
        &self,
        ctx: &mut Ctx<'_>,
        rule: &Rule,
        resp: &mut Response<Body>,
    ) -> Result<Outcome, ProxyError> {
        let mut head = Bytes::new();
        if rule.needs_body() {
            let (parts, body) =
                std::mem::replace(resp, Response::new(crate::full_body(Bytes::new()))).into_parts();
            let (peeked, body) =
                crate::body::peek(body, rule.body_peek, ctx.route.body_idle_timeout)
                    .await
                    .map_err(ProxyError::Upstream)?;
            *resp = Response::from_parts(parts, body);
            head = peeked;
        }
        let outcome = rule.evaluate(&ResponseView {
            status: resp.status(),
            headers: resp.headers(),
            body: &head,
        });
        if let Some(SubjectSource::ResponseHeader(h)) = ctx.login.and_then(|r| r.subject.as_ref()) {
            ctx.subject = resp
                .headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
        }
        Ok(outcome)
    }

    /// A login or privilege rule succeeded: a new ID; a privilege rule with
    /// `revoke_others` also ends the user's other sessions, before the response leaves.
    async fn signed_in(
        &self,
        ctx: &Ctx<'_>,
        changes: Vec<vault::VaultChange>,
    ) -> Result<HeaderValue, ProxyError> {
        let current = ctx.current();
        let (signed, subject) = match ctx.privilege {
            false => (rotate::Signed::Login, ctx.subject.clone()),
            // The user stays who they were: what the client sent (a form field the rule
            // names) is read only for a session nobody signed in to, or a client could
            // name another user and have that user's sessions ended.
            true => (
                rotate::Signed::Privilege,
                current
                    .and_then(|c| c.record.subject.clone())
                    .or_else(|| ctx.subject.clone()),
            ),
        };
        let (cookie, key) = self
            .sessions
            .login(
                current,
                changes,
                subject.clone(),
                signed,
                &ctx.route.name,
                ctx.now,
            )
            .await?;
        if ctx.privilege && ctx.login.is_some_and(|r| r.revoke_others) {
            match subject {
                Some(s) => {
                    self.revoke_subject(&s, Some(&key), "privilege_change")
                        .await?;
                }
                None => {
                    warn!(route = %ctx.route.name, "a privilege rule with revoke_others succeeded on a session without a known user (no subject): no other session was ended")
                }
            }
        }
        Ok(cookie)
    }

    /// `commit` for a login attempt: a new ID on success (and on an undecided outcome the
    /// rule rotates on), the session kept otherwise.
    async fn commit_attempt(
        &self,
        ctx: &Ctx<'_>,
        outcome: Outcome,
        changes: Vec<vault::VaultChange>,
    ) -> Result<Option<HeaderValue>, ProxyError> {
        let sessions = &self.sessions;
        let (current, route) = (ctx.current(), ctx.route.name.as_str());
        let c = sessions.counters();
        let undecided = ctx.login.map_or(Undecided::Rotate, |r| r.undecided);
        match outcome {
            Outcome::Success => {
                c.login_success.inc();
                Ok(Some(self.signed_in(ctx, changes).await?))
            }
            Outcome::Undecided if undecided == Undecided::Rotate => {
                c.login_no_match.inc();
                match current {
                    Some(cur) => Ok(Some(
                        sessions
                            .rotate_undecided(cur, changes, route, ctx.now)
                            .await?,
                    )),
                    // No session to move: whatever the app set starts a fresh one.
                    None => sessions.after_response(None, changes, route, ctx.now).await,
                }
            }
            outcome => {
                if outcome == Outcome::Failure {
                    c.login_failure.inc();
                } else {
                    c.login_no_match.inc();
                }
                if let (Some(claim), Some(cur)) = (ctx.claimed, current) {
                    sessions.release_login(cur, claim).await?;
                }
                sessions
                    .after_response(current, changes, route, ctx.now)
                    .await
            }
        }
    }

    /// Phase: commit the session change before the response (and its cookie) leaves.
    async fn commit(
        &self,
        ctx: &Ctx<'_>,
        outcome: Outcome,
        changes: Vec<vault::VaultChange>,
        resp: &mut Response<Body>,
    ) -> Result<Option<HeaderValue>, ProxyError> {
        let sessions = &self.sessions;
        let (current, route) = (ctx.current(), ctx.route.name.as_str());
        let creates = current.is_none()
            && (rotate::starts_session(&changes) || (ctx.attempt && outcome == Outcome::Success));
        if creates {
            sessions.admit_new(ctx.client)?;
        }
        let set_cookie = match (ctx.attempt, ctx.logout, outcome) {
            // Boxed, as rare paths: their state would otherwise be part of every
            // request's future, and copied with it.
            (true, _, _) => Box::pin(self.commit_attempt(ctx, outcome, changes)).await?,
            (false, Some(rule), Outcome::Success) => {
                if rule.clear_site_data {
                    resp.headers_mut()
                        .insert("clear-site-data", HeaderValue::from_static("\"cookies\""));
                }
                if let Some(cur) = current {
                    // Streams opened on the session (a WebSocket, an event stream) end with it.
                    self.inflight.end_streams(&cur.key);
                }
                Some(Box::pin(sessions.logout(current, route, ctx.now)).await?)
            }
            _ => {
                sessions
                    .after_response(current, changes, route, ctx.now)
                    .await?
            }
        };
        Ok(set_cookie.or_else(|| {
            ctx.resolved
                .expire_cookie
                .then(|| sessions.expired_cookie())
        }))
    }
}

/// What the upstream request is built from: the canonical target (as forwarded) and
/// host, the upgrade relayed, and the client's connection.
fn outgoing<'a>(
    path_and_query: &'a str,
    canon: &'a Canonical,
    upgrade: Option<&'a str>,
    conn: &'a ConnInfo,
) -> Outgoing<'a> {
    Outgoing {
        path_and_query,
        host: canon.host.as_ref(),
        upgrade,
        has_body: canon.has_body,
        peer: &conn.peer_ip,
        tls: conn.tls,
    }
}

/// A response no login or logout watches: its tunnel, if any, is relayed until either
/// side ends it.
fn untracked(resp: Response<Body>, relay: Option<Relay>) -> Response<Body> {
    if let Some(relay) = relay {
        tokio::spawn(relay_upgraded(relay, None));
    }
    resp
}

/// The path as logged: without the query and without `;params`, which can carry session
/// IDs (`;jsessionid=` from an app's URL rewriting) and personal data.
fn logged_path(path: &str) -> String {
    if !path.contains(';') {
        return path.to_owned();
    }
    path.split('/')
        .map(|segment| segment.split(';').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("/")
}

/// Phase (before routing): the canonical reading of the request.
fn read_request(req: &mut Request<Body>) -> Result<Canonical, ProxyError> {
    // Django and Werkzeug upper-case the method (`post` is POST to them), PHP does not:
    // the app gets the standard spelling, as the rules read it.
    if let Some(m) = canon::standard_method(req.method()) {
        *req.method_mut() = m;
    }
    let host = canon::request_host(req).map_err(ProxyError::BadRequest)?;
    if req.uri().path() == "*" || req.uri().path().is_empty() {
        return Err(ProxyError::BadRequest(
            "asterisk- and authority-form targets are not accepted",
        ));
    }
    let target =
        canon::target(req.uri().path(), req.uri().query()).map_err(ProxyError::BadRequest)?;
    match canon::check_framing(req.headers()) {
        Ok(()) => {}
        Err(FramingError::Bad(r)) => return Err(ProxyError::BadRequest(r)),
        Err(FramingError::UnsupportedCoding) => {
            return Err(ProxyError::NotImplemented(
                "only the chunked transfer coding is accepted",
            ))
        }
    }
    check_header_values(req)?;
    let has_body = req.headers().contains_key(header::CONTENT_LENGTH)
        || req.headers().contains_key(header::TRANSFER_ENCODING)
        || !req.body().is_end_stream();
    Ok(Canonical {
        host,
        target,
        has_body,
    })
}

/// Header values an HTTP/1 back end would read differently from how they arrived: an
/// HTTP/2 value with surrounding whitespace (malformed in HTTP/2; trimmed by HTTP/1
/// parsers), and a `Content-Length` with leading zeros (octal to some back ends).
fn check_header_values(req: &Request<Body>) -> Result<(), ProxyError> {
    if req.version() == http::Version::HTTP_2 {
        let padded = req.headers().values().any(|v| {
            let b = v.as_bytes();
            matches!(b.first(), Some(b' ' | b'\t')) || matches!(b.last(), Some(b' ' | b'\t'))
        });
        if padded {
            return Err(ProxyError::BadRequest(
                "an HTTP/2 header value with surrounding whitespace",
            ));
        }
    }
    if req.headers().get_all(header::CONTENT_TYPE).iter().count() > 1 {
        // PHP, Node and Tomcat read the first, Werkzeug and gunicorn the last.
        return Err(ProxyError::BadRequest("several Content-Type headers"));
    }
    for v in req.headers().get_all(header::CONTENT_LENGTH) {
        let b = v.as_bytes();
        if b.len() > 1 && b[0] == b'0' || !b.iter().all(u8::is_ascii_digit) {
            return Err(ProxyError::BadRequest(
                "a Content-Length that is not plain decimal",
            ));
        }
    }
    Ok(())
}

/// Reads a whole body, within the route's size cap and deadline (shorter on a connection
/// accepted under pressure, so that slow bodies cannot hold every connection slot).
async fn read_whole(route: &Route, pressed: bool, body: Body) -> Result<Bytes, ProxyError> {
    use http_body_util::BodyExt;
    let deadline = match pressed {
        true => route
            .body_idle_timeout
            .min(crate::listener::PRESSED_BODY_DEADLINE),
        false => route.body_idle_timeout,
    };
    match tokio::time::timeout(deadline, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ProxyError::BodyTooLarge {
            limit: route.max_request_body,
        }),
        Ok(Err(_)) => Err(ProxyError::BadRequest("the request body could not be read")),
        Err(_) => Err(ProxyError::BadRequest(
            "the request body was not sent in time",
        )),
    }
}

/// How long the app took to send the response head (-1 in the log when the request
/// never reached it), for the access line. Set by [`AppState::send`] through a reference
/// rather than carried in the response's extensions (a map allocated per response).
struct UpstreamTime(std::sync::atomic::AtomicU64);

impl Default for UpstreamTime {
    fn default() -> Self {
        UpstreamTime(std::sync::atomic::AtomicU64::new(u64::MAX))
    }
}

impl UpstreamTime {
    fn set(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX - 1);
        self.0.store(us, std::sync::atomic::Ordering::Relaxed);
    }

    fn get(&self) -> Option<Duration> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            u64::MAX => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

/// Phase: harden the app's cookies, then add ours.
fn finish(route: &Route, resp: &mut Response<Body>, set_cookie: Option<HeaderValue>) {
    strip_location(route, resp);
    harden_set_cookies(route, resp.headers_mut());
    if let Some(c) = set_cookie {
        let h = resp.headers_mut();
        h.append(header::SET_COOKIE, c);
        // A response carrying a session cookie must never be served from a cache.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// Response headers that carry a URL (`Location`, `Content-Location`, `Refresh`'s
/// `url=`) lose any vaulted session ID a URL-rewriting app (Tomcat, PHP trans-sid) put in
/// them: the browser must never read the app's ID.
fn strip_location(route: &Route, resp: &mut Response<Body>) {
    for name in [header::LOCATION, header::CONTENT_LOCATION, header::REFRESH] {
        let values: Vec<HeaderValue> = resp.headers().get_all(&name).iter().cloned().collect();
        let mut changed = false;
        let mut kept = Vec::with_capacity(values.len());
        for v in values {
            let bytes = v.as_bytes();
            let stripped = if name == header::REFRESH {
                // `5; url=/next;jsessionid=..`: only the URL part.
                let lower = bytes.to_ascii_lowercase();
                lower.windows(4).position(|w| w == b"url=").and_then(|i| {
                    let (head, url) = bytes.split_at(i + 4);
                    vault::strip_location(url, &route.protected).map(|u| [head, &u].concat())
                })
            } else {
                vault::strip_location(bytes, &route.protected)
            };
            match stripped {
                None => kept.push(v),
                Some(s) => {
                    changed = true;
                    kept.extend(HeaderValue::from_bytes(&s).ok());
                }
            }
        }
        if changed {
            resp.headers_mut().remove(&name);
            for v in kept {
                resp.headers_mut().append(&name, v);
            }
            debug!(route = %route.name, header = %name, "removed a vaulted session ID from a URL header");
        }
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

/// Both ends of an accepted protocol switch.
struct Relay {
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
}

/// What ends a tunnel opened on a session early (a login or logout on it), and the
/// ticket that keeps it known to the login.
type TunnelGuard = (
    std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    Ticket,
);

async fn relay_upgraded(relay: Relay, guard: Option<TunnelGuard>) {
    let (ended, _ticket) = match guard {
        Some((ended, ticket)) => (ended, Some(ticket)),
        None => (
            Box::pin(std::future::pending())
                as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
            None,
        ),
    };
    let copy = async {
        match tokio::try_join!(relay.client, relay.upstream) {
            Ok((client, upstream)) => {
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    debug!(error = %e, "upgraded connection closed with an error");
                }
            }
            Err(e) => debug!(error = %e, "protocol upgrade failed"),
        }
    };
    tokio::select! {
        () = copy => {}
        () = ended => debug!("a login or logout on its session closed a tunnel"),
    }
}

#[cfg(test)]
mod tests {
    use super::logged_path;

    #[test]
    fn logged_paths_lose_their_params() {
        assert_eq!(logged_path("/a/b"), "/a/b");
        assert_eq!(logged_path("/account;jsessionid=0A1B"), "/account");
        assert_eq!(logged_path("/a;x=1/b;SID=2;y/c"), "/a/b/c");
        assert_eq!(logged_path(";only"), "");
    }
}
