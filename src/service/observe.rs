//! Observe mode (`mode = "observe"` on a session route), like a WAF's detection-only
//! mode: the request and the response pass as on a route without session protection
//! (the client's cookies, parameters and bodies reach the app unchanged, the app's
//! cookies reach the browser, no session is kept), while everything `enforce` would
//! decide is worked out by the same code and reported instead: one audit line per
//! decision (`event="observed"`) and `observe_decisions_total{route,decision}`. An
//! operator watches real traffic with it before switching the route to `enforce`
//! (a SIGHUP applies either way).
//!
//! What stays as on every route: the canonical reading of the request and its
//! refusals, sessiongate's own cookie never reaching the app, the hardening of every
//! Set-Cookie, hop-by-hop headers and X-Forwarded-*.

use super::*;

/// The decisions `enforce` would have taken on one request, in the order it takes them.
#[derive(Default)]
struct Decisions(Vec<(&'static str, String)>);

impl Decisions {
    fn add(&mut self, decision: &'static str, detail: impl Into<String>) {
        self.0.push((decision, detail.into()));
    }
}

impl AppState {
    pub(super) async fn proxy_observe(
        &self,
        route: &Route,
        rs: &RouteSession,
        conn: &ConnInfo,
        canon: Canonical,
        mut req: Request<Body>,
        timing: &UpstreamTime,
    ) -> Result<Response<Body>, ProxyError> {
        let mut ctx = Ctx::new(route, rs, conn, canon, timing, req.headers());
        let mut seen = Decisions::default();
        let cookie_name = &self.sessions.cfg.cookie_name;
        let split = session::split_request_cookies(req.headers(), cookie_name, &route.protected);
        if split.malformed > 0 {
            seen.add(
                "drop_malformed_cookie",
                format!("{} pair(s)", split.malformed),
            );
        }
        session::strip_proxy_cookie(req.headers_mut(), cookie_name);
        let upgrade = upstream::requested_upgrade(&req, &route.upgrades);
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        upstream::check_declared_length(route, req.headers())?;
        let (mut parts, body) = req.into_parts();
        let body = self.observe_body(&mut ctx, &parts, body, &mut seen).await?;
        self.detect_login(&mut ctx, &parts.method);
        if ctx.login.is_some_and(Rule::needs_body) {
            parts.headers.remove(header::ACCEPT_ENCODING);
        }
        self.observe_target(&ctx, &mut seen);
        // The target as `enforce` would send it, but for the vaulted names it would remove.
        let pq = self.forwarded_target(route, &NameGuard::default(), &ctx.canon.target);
        let out = outgoing(&pq, &ctx.canon, upgrade.as_deref(), conn);
        let up_req = upstream::prepare_request(route, parts, body, &out)?;
        let (resp, relay) = self
            .send(route, up_req, upgrade.as_deref(), client_upgrade, timing)
            .await?;
        let mut resp = untracked(resp, relay);
        let outcome = match ctx.login.or(ctx.logout) {
            Some(rule) => self.evaluate(&mut ctx, rule, &mut resp).await?,
            None => Outcome::Undecided,
        };
        observe_outcome(&ctx, outcome, &mut seen);
        observe_response(&ctx, &resp, cookie_name, &mut seen);
        harden_set_cookies(route, resp.headers_mut());
        self.report(&ctx, &seen);
        Ok(resp)
    }

    /// A form body is read and inspected as `enforce` reads it (credential fields, the
    /// subject, vaulted fields, what it would refuse), and forwarded as it came.
    async fn observe_body(
        &self,
        ctx: &mut Ctx<'_>,
        parts: &http::request::Parts,
        body: Body,
        seen: &mut Decisions,
    ) -> Result<Body, ProxyError> {
        let kind = forms::body_kind(&parts.headers);
        let body = upstream::client_body(ctx.route, body);
        if !ctx.canon.has_body || kind == BodyKind::Opaque {
            return Ok(body);
        }
        if !forms::ascii_compatible_charset(&parts.headers) {
            seen.add(
                "refuse_form",
                "a charset that does not read field names as ASCII",
            );
            return Ok(body);
        }
        if forms::is_encoded(&parts.headers) {
            ctx.attempt = true;
            return Ok(body);
        }
        let bytes = read_whole(ctx.route, ctx.conn.pressed, body).await?;
        let what = Inspect {
            protected: &ctx.route.protected,
            strip: ctx.rs.strip_request_session_ids,
            credentials: &ctx.rs.credential_fields,
            subject_field: self.subject_field(ctx, &parts.method),
            multipart: ctx.rs.multipart_session_ids,
        };
        match forms::inspect(&kind, bytes.clone(), &what).await {
            Ok(inspected) => {
                ctx.attempt |= inspected.credentials;
                ctx.subject = inspected.subject;
                if inspected.removed > 0 {
                    seen.add(
                        "strip_request_id",
                        format!("{} form field(s)", inspected.removed),
                    );
                }
            }
            Err(e) => seen.add("refuse_form", e.to_string()),
        }
        Ok(crate::full_body(bytes))
    }

    /// Session IDs `enforce` would take out of the target.
    fn observe_target(&self, ctx: &Ctx<'_>, seen: &mut Decisions) {
        let protected = &ctx.route.protected;
        if !ctx.rs.strip_request_session_ids || protected.is_empty() {
            return;
        }
        let params = ctx
            .canon
            .target
            .segments
            .iter()
            .flat_map(|s| &s.params)
            .filter(|p| vault::is_protected_param(p, protected))
            .count();
        if params > 0 {
            seen.add("strip_request_id", format!("{params} path parameter(s)"));
        }
        let in_query = ctx
            .canon
            .target
            .query
            .as_ref()
            .is_some_and(|q| vault::strip_fields(q.as_bytes(), protected).is_some());
        if in_query {
            seen.add("strip_request_id", "the query string");
        }
    }

    /// One audit line per decision, and the counters.
    fn report(&self, ctx: &Ctx<'_>, seen: &Decisions) {
        let route = ctx.route.name.as_str();
        for (decision, detail) in &seen.0 {
            info!(target: "audit", event = "observed", route, decision, detail = %detail, "observe mode: not enforced");
            self.metrics
                .observed
                .get_or_create(&crate::telemetry::RouteDecision {
                    route: route.to_owned(),
                    decision,
                })
                .inc();
        }
    }
}

/// What the rule outcome would have done to the session.
fn observe_outcome(ctx: &Ctx<'_>, outcome: Outcome, seen: &mut Decisions) {
    let subject = format!("subject={}", ctx.subject.as_deref().unwrap_or("-"));
    let verdict = Verdict::of(&ctx.matched(), outcome);
    match verdict {
        Verdict::Nothing => {}
        Verdict::RotateLogin => seen.add(verdict.as_str(), subject),
        Verdict::RotatePrivilege { revoke_others } => {
            seen.add(verdict.as_str(), subject.clone());
            if revoke_others {
                seen.add("revoke_others", subject);
            }
        }
        Verdict::RotateUndecided if ctx.login.is_none() => seen.add(
            verdict.as_str(),
            "a credential field, and no rule says how it went",
        ),
        Verdict::RotateUndecided | Verdict::KeepUndecided => seen.add(
            verdict.as_str(),
            "the rule found neither success nor failure",
        ),
        Verdict::FailedLogin => seen.add(verdict.as_str(), "the rule found a failure"),
        Verdict::Logout => seen.add(verdict.as_str(), "the logout rule found a success"),
    }
}

/// What `enforce` would have taken out of the response: vaulted cookies, IDs in URLs.
fn observe_response(
    ctx: &Ctx<'_>,
    resp: &Response<Body>,
    proxy_cookie: &str,
    seen: &mut Decisions,
) {
    let mut vaulted: Vec<String> = Vec::new();
    for line in resp.headers().get_all(header::SET_COOKIE) {
        let Ok(c) = crate::cookies::SetCookie::parse(line.as_bytes()) else {
            continue;
        };
        if c.name == proxy_cookie.as_bytes() {
            seen.add("drop_set_cookie", "the app set sessiongate's own cookie");
        } else if ctx.rs.vault.matches(c.name) {
            vaulted.push(String::from_utf8_lossy(c.name).into_owned());
        }
    }
    if !vaulted.is_empty() {
        vaulted.sort();
        vaulted.dedup();
        seen.add("vault_cookie", vaulted.join(","));
    }
    let in_url = [header::LOCATION, header::CONTENT_LOCATION]
        .iter()
        .flat_map(|h| resp.headers().get_all(h))
        .any(|v| vault::strip_location(v.as_bytes(), &ctx.route.protected).is_some());
    if in_url {
        seen.add("strip_location", "a vaulted session ID in a URL header");
    }
}
