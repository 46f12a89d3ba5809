//! `sessiongate rules test --har FILE`: replays a HAR file (as browsers' developer tools
//! and Playwright export it) through a config's routing, vault and rules, offline, and
//! says for every entry what enforcing would do: the route, the rule that applies, its
//! outcome on the recorded response, the cookies that would be vaulted, whether the ID
//! would rotate. It warns about every request that looks like a login and that no rule
//! would recognise, so that it can run in CI against a recording of the app's login.
//!
//! The request is read by the proxy's own code: the canonical target (`canon`), the
//! router, the rule matching and credential detection (`rules::RuleSet::classify`), the
//! form readers (`forms`), the rule criteria on the response (`rules::Rule::evaluate`),
//! and the verdict enforcing takes (`rules::Verdict`).

use std::fmt::Write as _;

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::Deserialize;

use crate::config::{Config, Route};
use crate::cookies::SetCookie;
use crate::forms::{self, BodyKind, Inspect};
use crate::names::NameGuard;
use crate::router::Router;
use crate::rules::{Outcome, ResponseView, Verdict};

#[derive(Debug, Deserialize)]
struct Har {
    log: HarLog,
}

#[derive(Debug, Deserialize)]
struct HarLog {
    #[serde(default)]
    creator: Option<HarCreator>,
    entries: Vec<HarEntry>,
}

#[derive(Debug, Deserialize)]
struct HarCreator {
    #[serde(default)]
    name: String,
}

#[derive(Debug, Deserialize)]
struct HarEntry {
    request: HarRequest,
    response: HarResponse,
}

#[derive(Debug, Deserialize)]
struct HarRequest {
    method: String,
    url: String,
    #[serde(default)]
    headers: Vec<HarHeader>,
    #[serde(default, rename = "postData")]
    post_data: Option<HarPostData>,
}

#[derive(Debug, Deserialize)]
struct HarPostData {
    #[serde(default, rename = "mimeType")]
    mime_type: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    params: Vec<HarHeader>,
}

#[derive(Debug, Deserialize)]
struct HarResponse {
    status: u16,
    #[serde(default)]
    headers: Vec<HarHeader>,
    #[serde(default)]
    content: Option<HarContent>,
}

#[derive(Debug, Deserialize)]
struct HarContent {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    encoding: Option<String>,
}

#[derive(Debug, Deserialize)]
struct HarHeader {
    name: String,
    #[serde(default)]
    value: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a HAR file: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

/// What the replay found: the report's text, and how many warnings it holds.
pub struct Report {
    pub text: String,
    pub warnings: usize,
    /// Entries that fell on a session route.
    protected: usize,
}

/// Field names a login form uses for its secret that `credential_fields` may not list:
/// such a field in a request no rule catches is a login sessiongate would miss.
const SECRET_HINTS: [&str; 5] = ["pass", "pwd", "secret", "pin", "otp"];

pub async fn run(config: &Config, path: &std::path::Path) -> Result<Report, ReplayError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ReplayError::Read {
        path: shown.clone(),
        source,
    })?;
    let har: Har = serde_json::from_str(&text).map_err(|source| ReplayError::Parse {
        path: shown,
        source,
    })?;
    let router = Router::new(&config.routes);
    let mut out = Report {
        text: String::new(),
        warnings: 0,
        protected: 0,
    };
    let mut any_cookie = false;
    for (i, entry) in har.log.entries.iter().enumerate() {
        any_cookie |= has_cookie_headers(entry);
        replay_entry(&router, i + 1, entry, &mut out).await;
    }
    if out.protected == 0 && !har.log.entries.is_empty() {
        out.warn(
            0,
            "no entry falls on a session route: was the HAR recorded against other hosts or \
             paths than the config's routes? Nothing was checked",
        );
    }
    if !any_cookie && !har.log.entries.is_empty() {
        let creator = har.log.creator.as_ref().map_or("", |c| c.name.as_str());
        out.warn(
            0,
            &format!(
                "no entry has a Cookie or Set-Cookie header: a sanitized export{}? Re-export \
                 with sensitive data (Chrome DevTools: Settings > Allow to generate HAR with \
                 sensitive data) so that vaulting can be checked",
                if creator == "WebInspector" {
                    " (DevTools' default)"
                } else {
                    ""
                }
            ),
        );
    }
    let _ = writeln!(
        out.text,
        "{} entries, {} warning(s)",
        har.log.entries.len(),
        out.warnings
    );
    Ok(out)
}

impl Report {
    fn warn(&mut self, entry: usize, what: &str) {
        self.warnings += 1;
        let _ = writeln!(self.text, "  WARNING #{entry}: {what}");
    }
}

fn has_cookie_headers(e: &HarEntry) -> bool {
    let named = |hs: &[HarHeader], n: &str| hs.iter().any(|h| h.name.eq_ignore_ascii_case(n));
    named(&e.request.headers, "cookie") || named(&e.response.headers, "set-cookie")
}

/// Headers as the proxy would hold them: HTTP/2 pseudo-headers dropped (`:authority`
/// kept aside as the host), `Set-Cookie` lines joined by a newline (older Chrome) split.
fn header_map(list: &[HarHeader]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for hh in list.iter().filter(|h| !h.name.starts_with(':')) {
        let Ok(name) = HeaderName::from_bytes(hh.name.as_bytes()) else {
            continue;
        };
        for value in hh.value.split('\n') {
            if let Ok(v) = HeaderValue::from_str(value.trim()) {
                h.append(name.clone(), v);
            }
        }
    }
    h
}

async fn replay_entry(router: &Router, n: usize, entry: &HarEntry, out: &mut Report) {
    let req = &entry.request;
    let method = Method::from_bytes(req.method.as_bytes()).unwrap_or(Method::GET);
    let Ok(uri) = req.url.parse::<http::Uri>() else {
        let _ = writeln!(
            out.text,
            "#{n} {} {}: not a URL, skipped",
            req.method, req.url
        );
        return;
    };
    let status = entry.response.status;
    let _ = write!(out.text, "#{n} {method} {} -> {status}", uri.path());
    if status == 0 {
        let _ = writeln!(out.text, ": no response recorded, skipped");
        return;
    }
    let target = match crate::canon::target(uri.path(), uri.query()) {
        Ok(t) => t,
        Err(why) => {
            let _ = writeln!(out.text, ": sessiongate refuses it (400: {why})");
            return;
        }
    };
    let req_headers = header_map(&req.headers);
    let host = uri.host().map(|h| h.to_ascii_lowercase());
    let secret_like = secret_like_fields(req, target.query.as_deref());
    let unprotected = |out: &mut Report, what: &str| {
        let _ = writeln!(out.text, "{what}");
        if !secret_like.is_empty() {
            out.warn(
                n,
                &format!(
                    "password-like field(s) {secret_like:?} are sent to {}, which no session \
                     route covers: a login there would go unprotected",
                    target.path
                ),
            );
        }
    };
    let Some(route) = router.route(host.as_deref(), &target.path) else {
        unprotected(out, ": no route (404)");
        return;
    };
    let _ = write!(out.text, "  route={}", route.name);
    let Some(rs) = &route.session else {
        unprotected(out, " (no session protection)");
        return;
    };
    out.protected += 1;
    let mut body = read_post(route, &method, req, &req_headers).await;
    body.secret_like = secret_like;
    let m = rs.rules().classify(
        &method,
        &target.path,
        target.query.as_deref(),
        body.credentials,
    );
    let rule = m.login.or(m.logout);
    let resp_headers = header_map(&entry.response.headers);
    let (outcome, note) = match rule {
        Some(rule) => judge(rule, &entry.response, &resp_headers),
        None => (Outcome::Undecided, ""),
    };
    write_verdict(out, &m, outcome);
    write_vaulted(out, &rs.vault, &req_headers, &resp_headers);
    let _ = writeln!(out.text, "{note}");
    warn_missed_logins(out, n, &m, rule.is_some(), &body, &target, rs);
}

/// The rule on the recorded response, and a note when it could not read what it needed.
fn judge(
    rule: &crate::rules::Rule,
    resp: &HarResponse,
    headers: &HeaderMap,
) -> (Outcome, &'static str) {
    let text = response_body(resp);
    let note = match rule.needs_body() && text.is_empty() {
        true => " (no body in the HAR: the body criteria read nothing)",
        false => "",
    };
    let outcome = rule.evaluate(&ResponseView {
        status: StatusCode::from_u16(resp.status).unwrap_or(StatusCode::OK),
        headers,
        body: &text[..text.len().min(rule.body_peek)],
    });
    (outcome, note)
}

fn write_verdict(out: &mut Report, m: &crate::rules::Matched<'_>, outcome: Outcome) {
    let verdict = Verdict::of(m, outcome);
    let which = match (m.login, m.logout, m.privilege) {
        (Some(_), _, true) => "privilege",
        (Some(_), _, false) => "login",
        (None, Some(_), _) => "logout",
        (None, None, _) if m.attempt => "credential field",
        _ => "-",
    };
    let judged = m.login.is_some() || m.logout.is_some() || m.attempt;
    let _ = write!(
        out.text,
        " rule={which} outcome={} verdict={} rotate={}",
        if judged { outcome_str(outcome) } else { "-" },
        verdict.as_str(),
        if verdict.rotates() { "yes" } else { "no" }
    );
}

fn outcome_str(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "success",
        Outcome::Failure => "failure",
        Outcome::Undecided => "undecided",
    }
}

/// The cookies of the request the vault would take over (the browser would never hold
/// them), and those the response sets that it would keep.
fn write_vaulted(out: &mut Report, vault: &NameGuard, req: &HeaderMap, resp: &HeaderMap) {
    let mut sent: Vec<String> = req
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter_map(|p| p.split(|&b| b == b'=').next())
        .map(|n| n.trim_ascii())
        .filter(|n| vault.matches(n))
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    let mut set: Vec<String> = resp
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| SetCookie::parse(v.as_bytes()).ok())
        .filter(|c| vault.matches(c.name))
        .map(|c| String::from_utf8_lossy(c.name).into_owned())
        .collect();
    for list in [&mut sent, &mut set] {
        list.sort();
        list.dedup();
    }
    if !sent.is_empty() {
        let _ = write!(out.text, " vaulted-sent=[{}]", sent.join(","));
    }
    if !set.is_empty() {
        let _ = write!(out.text, " vaulted-set=[{}]", set.join(","));
    }
}

/// What the request told: a credential field, password-like fields, or nothing readable
/// where a form was sent.
#[derive(Default)]
struct BodyFacts {
    credentials: bool,
    unreadable: bool,
    /// Password-like field names of the query and the body ([`secret_like_fields`]).
    secret_like: Vec<String>,
}

async fn read_post(
    route: &Route,
    method: &Method,
    req: &HarRequest,
    headers: &HeaderMap,
) -> BodyFacts {
    let mut facts = BodyFacts::default();
    let Some(rs) = &route.session else {
        return facts;
    };
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let Some(post) = &req.post_data else {
        // HAR exports leave out bodies they cannot show (multipart with files, large).
        facts.unreadable = declared > 0 && *method != Method::GET;
        return facts;
    };
    let mut with_type = headers.clone();
    if !with_type.contains_key(http::header::CONTENT_TYPE) && !post.mime_type.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&post.mime_type) {
            with_type.insert(http::header::CONTENT_TYPE, v);
        }
    }
    let kind = forms::body_kind(&with_type);
    let text = post.text.clone().unwrap_or_else(|| {
        let pairs = post
            .params
            .iter()
            .map(|p| (p.name.as_str(), p.value.as_str()));
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    });
    if kind != BodyKind::Opaque {
        let what = Inspect {
            protected: &route.protected,
            strip: true,
            credentials: &rs.credential_fields,
            subject_field: None,
            multipart: rs.multipart_session_ids,
        };
        match forms::inspect(&kind, text.clone().into(), &what).await {
            Ok(i) => facts.credentials = i.credentials,
            Err(_) => facts.unreadable = true,
        }
    }
    facts
}

/// Field names of the query and the form body that look like a secret's
/// ([`SECRET_HINTS`]), whatever the config says.
fn secret_like_fields(req: &HarRequest, query: Option<&str>) -> Vec<String> {
    let body = req.post_data.as_ref();
    let text = body.and_then(|p| p.text.as_deref()).unwrap_or_default();
    let mut names: Vec<String> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .chain(form_urlencoded::parse(text.as_bytes()))
        .map(|(k, _)| k.into_owned())
        .chain(
            body.iter()
                .flat_map(|p| p.params.iter().map(|f| f.name.clone())),
        )
        .filter(|k| {
            let lower = k.to_ascii_lowercase();
            SECRET_HINTS.iter().any(|h| lower.contains(h))
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

fn response_body(resp: &HarResponse) -> Vec<u8> {
    let Some(content) = &resp.content else {
        return Vec::new();
    };
    let Some(text) = &content.text else {
        return Vec::new();
    };
    match content.encoding.as_deref() {
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap_or_default(),
        _ => text.clone().into_bytes(),
    }
}

fn warn_missed_logins(
    out: &mut Report,
    n: usize,
    m: &crate::rules::Matched<'_>,
    ruled: bool,
    body: &BodyFacts,
    target: &crate::canon::Target,
    rs: &crate::config::RouteSession,
) {
    if m.login.is_some() {
        return;
    }
    if m.attempt {
        out.warn(
            n,
            &format!(
                "a credential field is sent to {} and no login rule applies: sessiongate \
                 gives this request a new ID without knowing whether it signed in; add a \
                 [[routes.session.login]] rule for it",
                target.path
            ),
        );
        return;
    }
    let unlisted: Vec<&String> = body
        .secret_like
        .iter()
        .filter(|f| !crate::names::names_field(&rs.credential_fields, f.as_bytes()))
        .collect();
    if !unlisted.is_empty() && !ruled {
        out.warn(
            n,
            &format!(
                "password-like field(s) {unlisted:?} sent to {} are not in \
                 credential_fields and no rule applies: a login here would go unnoticed; \
                 add a login rule, or the field to credential_fields",
                target.path
            ),
        );
    } else if body.unreadable && !ruled {
        out.warn(
            n,
            &format!(
                "the body sent to {} is not in the HAR (or cannot be read): if it is a login \
                 form, no rule would catch it",
                target.path
            ),
        );
    }
}
