//! Login and logout rules, compiled once from the config and evaluated by plain
//! functions.
//!
//! A rule first matches the request: its method (any by default) and its path, compared
//! with the canonical path (`canon`) case-insensitively and ignoring a trailing slash, as
//! frameworks route. On the response it then looks at its criteria: every `success`
//! criterion must hold, and any `failure` criterion that holds makes the outcome a
//! failure, whatever the success criteria say. Success criteria that do not all hold
//! mean [`Outcome::Undecided`]: a login attempt whose result is unknown, which still
//! rotates the ID unless the rule says `undecided = "keep"`. Body criteria read at most
//! `body_peek` bytes from the start of the body; the body still streams to the client in
//! full.

use http::{HeaderMap, HeaderName, Method, StatusCode};
use regex::bytes::Regex as BytesRegex;
use regex::Regex;

use crate::cookies::SetCookie;
use serde::Deserialize;

/// What an undecided login attempt does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Undecided {
    #[default]
    Rotate,
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// Neither success nor failure.
    Undecided,
}

/// Compiled lower-cased (`Exact` also without a trailing slash); `Regex` is
/// case-insensitive.
#[derive(Debug)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
pub enum Criterion {
    StatusIn(Vec<u16>),
    StatusNotIn(Vec<u16>),
    Header {
        name: HeaderName,
        regex: Option<Regex>,
    },
    SetCookie(String),
    /// The peeked body matches (`present`) or does not match the pattern. Plain strings
    /// are compiled as escaped regexes.
    Body {
        pattern: BytesRegex,
        present: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectSource {
    FormField(String),
    ResponseHeader(HeaderName),
}

#[derive(Debug)]
pub struct Rule {
    /// Empty means any method.
    pub methods: Vec<Method>,
    pub path: PathMatch,
    pub success: Vec<Criterion>,
    pub failure: Vec<Criterion>,
    pub body_peek: usize,
    pub subject: Option<SubjectSource>,
    pub clear_site_data: bool,
    pub undecided: Undecided,
    /// Privilege rules: a success also ends the user's other sessions.
    pub revoke_others: bool,
}

/// The parts of a response a rule may look at.
pub struct ResponseView<'a> {
    pub status: StatusCode,
    pub headers: &'a HeaderMap,
    /// The first `body_peek` bytes (empty when no rule needs the body).
    pub body: &'a [u8],
}

impl Rule {
    /// `path` is the canonical path; it is folded here as the rule's own path was.
    pub fn matches_request(&self, method: &Method, path: &str) -> bool {
        let listed = self
            .methods
            .iter()
            .any(|m| m.as_str().eq_ignore_ascii_case(method.as_str()));
        if !(self.methods.is_empty() || listed) {
            return false;
        }
        let folded = crate::canon::rule_path(path);
        match &self.path {
            PathMatch::Exact(p) => folded == *p,
            PathMatch::Prefix(p) => {
                folded.starts_with(p.as_str()) || path.to_lowercase().starts_with(p.as_str())
            }
            PathMatch::Regex(r) => r.is_match(path) || r.is_match(&folded),
        }
    }

    /// Whether evaluating this rule needs the start of the response body.
    pub fn needs_body(&self) -> bool {
        self.success
            .iter()
            .chain(&self.failure)
            .any(|c| matches!(c, Criterion::Body { .. }))
    }

    /// A rule without success criteria (logout rules only: login rules must have
    /// some) succeeds on any status below 400.
    pub fn evaluate(&self, resp: &ResponseView<'_>) -> Outcome {
        if self.failure.iter().any(|c| holds(c, resp)) {
            return Outcome::Failure;
        }
        let success = if self.success.is_empty() {
            resp.status.as_u16() < 400
        } else {
            self.success.iter().all(|c| holds(c, resp))
        };
        if success {
            Outcome::Success
        } else {
            Outcome::Undecided
        }
    }
}

fn holds(c: &Criterion, resp: &ResponseView<'_>) -> bool {
    match c {
        Criterion::StatusIn(set) => set.contains(&resp.status.as_u16()),
        Criterion::StatusNotIn(set) => !set.contains(&resp.status.as_u16()),
        Criterion::Header { name, regex } => {
            resp.headers.get_all(name).iter().any(|v| match regex {
                None => true,
                Some(r) => v.to_str().is_ok_and(|s| r.is_match(s)),
            })
        }
        Criterion::SetCookie(name) => resp
            .headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .filter_map(|v| SetCookie::parse(v.as_bytes()).ok())
            .any(|c| c.name == name.as_bytes()),
        Criterion::Body { pattern, present } => pattern.is_match(resp.body) == *present,
    }
}

/// The first rule that applies to the request.
pub fn find<'a>(rules: &'a [Rule], method: &Method, path: &str) -> Option<&'a Rule> {
    rules.iter().find(|r| r.matches_request(method, path))
}

/// A route's rules, and the fields that make any request a login attempt.
pub struct RuleSet<'a> {
    pub login: &'a [Rule],
    pub privilege: &'a [Rule],
    pub logout: &'a [Rule],
    pub credential_fields: &'a crate::names::NameGuard,
}

/// What a request is, before its response: written once for the proxy, observe mode and
/// `rules test`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Matched<'a> {
    /// The login rule, else the privilege rule (then `privilege`), that applies.
    pub login: Option<&'a Rule>,
    pub privilege: bool,
    /// Only when the request is no login attempt.
    pub logout: Option<&'a Rule>,
    /// A login or privilege rule applies, or a credential field was sent.
    pub attempt: bool,
}

impl<'a> RuleSet<'a> {
    /// `body_credentials`: the request's body carried a credential field (or could not be
    /// read and might have).
    pub fn classify(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        body_credentials: bool,
    ) -> Matched<'a> {
        let mut m = Matched {
            login: find(self.login, method, path),
            ..Matched::default()
        };
        if m.login.is_none() {
            // A privilege change is handled as a login: claimed, drained, a new ID.
            m.login = find(self.privilege, method, path);
            m.privilege = m.login.is_some();
        }
        let in_query = query.is_some_and(|q| {
            crate::forms::has_credential_field(q.as_bytes(), self.credential_fields)
        });
        m.attempt = m.login.is_some() || in_query || body_credentials;
        if !m.attempt {
            m.logout = find(self.logout, method, path);
        }
        m
    }
}

/// What enforcing does with a request's session once the outcome is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing beyond the ordinary (vault updates, touches).
    Nothing,
    RotateLogin,
    RotatePrivilege {
        revoke_others: bool,
    },
    /// A login attempt neither won nor lost: a new ID, not signed in.
    RotateUndecided,
    /// Undecided, and the rule says `undecided = "keep"`.
    KeepUndecided,
    FailedLogin,
    Logout,
}

impl Verdict {
    pub fn of(m: &Matched<'_>, outcome: Outcome) -> Verdict {
        if !m.attempt {
            return match (m.logout, outcome) {
                (Some(_), Outcome::Success) => Verdict::Logout,
                _ => Verdict::Nothing,
            };
        }
        match outcome {
            Outcome::Success if m.privilege => Verdict::RotatePrivilege {
                revoke_others: m.login.is_some_and(|r| r.revoke_others),
            },
            Outcome::Success => Verdict::RotateLogin,
            Outcome::Failure => Verdict::FailedLogin,
            Outcome::Undecided => match m.login.map_or(Undecided::Rotate, |r| r.undecided) {
                Undecided::Rotate => Verdict::RotateUndecided,
                Undecided::Keep => Verdict::KeepUndecided,
            },
        }
    }

    /// Whether the session gets a new ID.
    pub fn rotates(self) -> bool {
        matches!(
            self,
            Verdict::RotateLogin | Verdict::RotatePrivilege { .. } | Verdict::RotateUndecided
        )
    }

    /// A short name (logs, metrics, `rules test`).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Nothing => "none",
            Verdict::RotateLogin => "rotate_login",
            Verdict::RotatePrivilege { .. } => "rotate_privilege",
            Verdict::RotateUndecided => "rotate_undecided",
            Verdict::KeepUndecided => "keep_undecided",
            Verdict::FailedLogin => "keep_failed_login",
            Verdict::Logout => "revoke_logout",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(success: Vec<Criterion>, failure: Vec<Criterion>) -> Rule {
        Rule {
            methods: vec![Method::POST],
            path: PathMatch::Exact("/login".into()),
            success,
            failure,
            body_peek: 1024,
            subject: None,
            clear_site_data: false,
            undecided: Undecided::Rotate,
            revoke_others: false,
        }
    }

    fn view<'a>(status: u16, headers: &'a HeaderMap, body: &'a [u8]) -> ResponseView<'a> {
        ResponseView {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body,
        }
    }

    fn body(s: &str, present: bool) -> Criterion {
        Criterion::Body {
            pattern: BytesRegex::new(&regex::escape(s)).unwrap(),
            present,
        }
    }

    #[test]
    fn request_matching() {
        let r = rule(vec![], vec![]);
        assert!(r.matches_request(&Method::POST, "/login"));
        assert!(r.matches_request(&Method::POST, "/Login/"));
        assert!(r.matches_request(&Method::POST, "/LOGIN"));
        assert!(
            !r.matches_request(&Method::GET, "/login"),
            "methods listed: only those"
        );
        assert!(!r.matches_request(&Method::POST, "/login/x"));
        let any = Rule {
            methods: vec![],
            ..rule(vec![], vec![])
        };
        for m in ["GET", "HEAD", "PUT", "PATCH", "FOO"] {
            assert!(any.matches_request(&Method::from_bytes(m.as_bytes()).unwrap(), "/login"));
        }
    }

    #[test]
    fn redirect_rule() {
        let r = rule(
            vec![
                Criterion::StatusIn(vec![302, 303]),
                Criterion::Header {
                    name: http::header::LOCATION,
                    regex: Some(Regex::new("^/account").unwrap()),
                },
            ],
            vec![Criterion::Header {
                name: http::header::LOCATION,
                regex: Some(Regex::new("error").unwrap()),
            }],
        );
        let mut h = HeaderMap::new();
        h.insert(http::header::LOCATION, "/account".parse().unwrap());
        assert_eq!(r.evaluate(&view(302, &h, b"")), Outcome::Success);
        assert_eq!(r.evaluate(&view(200, &h, b"")), Outcome::Undecided);
        h.insert(http::header::LOCATION, "/account?error=1".parse().unwrap());
        assert_eq!(
            r.evaluate(&view(302, &h, b"")),
            Outcome::Failure,
            "failure wins"
        );
    }

    #[test]
    fn body_rule() {
        let r = rule(
            vec![Criterion::StatusIn(vec![200]), body("Welcome back", true)],
            vec![body("Login failed", true)],
        );
        let h = HeaderMap::new();
        assert_eq!(
            r.evaluate(&view(200, &h, b"<p>Welcome back, alice</p>")),
            Outcome::Success
        );
        assert_eq!(
            r.evaluate(&view(200, &h, b"Login failed")),
            Outcome::Failure
        );
        assert_eq!(
            r.evaluate(&view(200, &h, b"something else")),
            Outcome::Undecided
        );
        let negated = rule(
            vec![Criterion::StatusNotIn(vec![401]), body("error", false)],
            vec![],
        );
        assert_eq!(negated.evaluate(&view(200, &h, b"ok")), Outcome::Success);
        assert_eq!(
            negated.evaluate(&view(200, &h, b"an error")),
            Outcome::Undecided
        );
    }

    #[test]
    fn set_cookie_and_default_success() {
        let r = rule(vec![Criterion::SetCookie("remember".into())], vec![]);
        let mut h = HeaderMap::new();
        h.append(
            http::header::SET_COOKIE,
            "remember=1; Path=/".parse().unwrap(),
        );
        assert_eq!(r.evaluate(&view(200, &h, b"")), Outcome::Success);
        let logout = rule(vec![], vec![]);
        assert_eq!(
            logout.evaluate(&view(302, &HeaderMap::new(), b"")),
            Outcome::Success
        );
        assert_eq!(
            logout.evaluate(&view(500, &HeaderMap::new(), b"")),
            Outcome::Undecided
        );
    }
}
