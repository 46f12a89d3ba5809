//! The fuzz targets: one function per parser a client or the app controls. Each checks
//! the property that parser exists for (nothing vaulted gets through, what is forwarded
//! reads the same way twice), not only that it does not panic.
//!
//! Compiled twice: as the library of the cargo-fuzz crate in this folder (libFuzzer
//! drives it, `cargo +nightly fuzz run --fuzz-dir tests/fuzz <target>`), and as a module
//! of `tests/fuzz_corpus.rs`, which replays the committed corpus in the stable
//! `cargo test`, so every input that ever failed stays a regression test.

use std::future::Future;
use std::path::Path;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use sessiongate::cookies::{self, CookiePolicy, SameSite, SetCookie};
use sessiongate::forms::{self, BodyKind, Inspect, MultipartPolicy};
use sessiongate::names::{self, NameGuard};
use sessiongate::rules::{self, ResponseView, Rule};
use sessiongate::{canon, session, vault, Config};

/// A target's body: panics when its property does not hold for the input.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus folder and its `fuzz_targets/` file.
pub const TARGETS: &[(&str, Target)] = &[
    ("cookie_split", cookie_split),
    ("set_cookie", set_cookie),
    ("vault_capture", vault_capture),
    ("strip_fields", strip_fields),
    ("strip_location", strip_location),
    ("multipart", multipart),
    ("canon", canon),
    ("config", config),
    ("rules", rules),
];

const PROXY_COOKIE: &str = "__Host-sg";
/// The shipped `config.toml`'s vault.
const VAULT: &[&str] = &[
    "PHPSESSID",
    "JSESSIONID",
    "connect.sid",
    "session",
    "sessionid",
];
const CREDENTIALS: &[&str] = &["password", "passwd", "pwd", "j_password"];
const NOW_MS: u64 = 1_800_000_000_000;
const REQUEST_PATH: &str = "/app/login";

fn vaulted() -> &'static NameGuard {
    static GUARD: OnceLock<NameGuard> = OnceLock::new();
    GUARD.get_or_init(|| NameGuard::new(VAULT))
}

fn credentials() -> &'static NameGuard {
    static GUARD: OnceLock<NameGuard> = OnceLock::new();
    GUARD.get_or_init(|| NameGuard::new(CREDENTIALS))
}

fn name_of(field: &[u8]) -> &[u8] {
    field.split(|&b| b == b'=').next().unwrap_or_default()
}

/// The input's lines that are header values (HTTP/2 may split a Cookie header; a
/// response has many Set-Cookie lines).
fn header_values(data: &[u8]) -> Vec<HeaderValue> {
    data.split(|&b| b == b'\n')
        .filter_map(|l| HeaderValue::from_bytes(l).ok())
        .collect()
}

/// Runs a future that never waits (every body here is already complete).
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1000 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("reading a complete body did not finish");
}

/// The client's Cookie headers: no pair the app receives names a vaulted cookie or
/// sessiongate's own, and what is forwarded reads back unchanged.
pub fn cookie_split(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for v in header_values(data) {
        headers.append(header::COOKIE, v);
    }
    let split = session::split_request_cookies(&headers, PROXY_COOKIE, vaulted());
    for pair in &split.kept {
        assert!(
            !vaulted().matches(name_of(pair)),
            "a vaulted name reaches the app: {pair:?}"
        );
        assert!(!name_of(pair).eq_ignore_ascii_case(PROXY_COOKIE.as_bytes()));
        // Lenient parsers also split at commas and spaces: a kept pair has neither.
        assert!(!pair.iter().any(|b| matches!(b, b',' | b' ' | b';' | b'\t')));
    }
    let joined = session::join_pairs(split.kept.iter().copied());
    if joined.is_empty() {
        return;
    }
    let mut again = HeaderMap::new();
    let value = HeaderValue::from_bytes(&joined).expect("the forwarded Cookie is a header value");
    again.insert(header::COOKIE, value);
    let second = session::split_request_cookies(&again, PROXY_COOKIE, vaulted());
    assert_eq!(
        second.kept, split.kept,
        "the forwarded Cookie header reads differently"
    );
    assert_eq!((second.malformed, second.protected), (0, 0));
}

fn policy() -> &'static CookiePolicy {
    static POLICY: OnceLock<CookiePolicy> = OnceLock::new();
    POLICY.get_or_init(|| CookiePolicy {
        same_site: SameSite::Lax,
        strip_domain: true,
        script_readable: vec!["XSRF-TOKEN".into()],
    })
}

/// One Set-Cookie line from the app: the hardened line keeps the cookie, and a browser
/// reading it finds Secure, HttpOnly, one SameSite at least as strict as the route's and
/// no Domain. Hardening twice changes nothing.
pub fn set_cookie(data: &[u8]) {
    let Ok(line) = HeaderValue::from_bytes(data) else {
        return;
    };
    let Ok(out) = cookies::harden(&line, policy()) else {
        return;
    };
    let before = SetCookie::parse(line.as_bytes()).expect("the app's line parsed once");
    let after = SetCookie::parse(out.as_bytes()).expect("the hardened line parses");
    assert_eq!((after.name, after.value), (before.name, before.value));
    let count = |name: &str| after.attributes.iter().filter(|a| a.is(name)).count();
    assert!(count("secure") >= 1, "no Secure: {out:?}");
    assert_eq!(count("samesite"), 1, "SameSite not written once: {out:?}");
    assert!(after.same_site().is_some_and(|s| s >= policy().same_site));
    assert_eq!(count("domain"), 0, "Domain kept: {out:?}");
    if after.name != b"XSRF-TOKEN" {
        assert!(count("httponly") >= 1, "no HttpOnly: {out:?}");
    }
    let twice = cookies::harden(&out, policy()).expect("a hardened line hardens again");
    assert_eq!(twice, out, "hardening is not idempotent");
}

/// The app's Set-Cookie lines: none that a browser would store under a vaulted name or
/// sessiongate's own name reaches the browser; the vault only ever holds vaulted names
/// and yields a valid Cookie header.
pub fn vault_capture(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for v in header_values(data) {
        headers.append(header::SET_COOKIE, v);
    }
    let before = headers.get_all(header::SET_COOKIE).iter().count();
    let changes = vault::capture(&mut headers, vaulted(), PROXY_COOKIE, REQUEST_PATH, NOW_MS);
    let passed = headers.get_all(header::SET_COOKIE).iter().count();
    assert!(passed + changes.len() <= before, "lines were invented");
    for line in headers.get_all(header::SET_COOKIE) {
        let Ok(out) = cookies::harden(line, policy()) else {
            continue; // dropped on the way out
        };
        let c = SetCookie::parse(out.as_bytes()).expect("a hardened line parses");
        assert!(
            !vaulted().matches(c.name),
            "a vaulted cookie reaches the browser: {line:?}"
        );
        assert_ne!(
            c.name,
            PROXY_COOKIE.as_bytes(),
            "the app set sessiongate's cookie"
        );
    }
    let mut stored = Vec::new();
    vault::apply(&mut stored, &changes);
    for c in &stored {
        assert!(vaulted().matches(c.name.as_bytes()));
        assert!(c.path.starts_with('/'));
    }
    let mut joined = Vec::new();
    vault::write_pairs(&stored, REQUEST_PATH, NOW_MS, &mut joined);
    assert!(
        HeaderValue::from_bytes(&joined).is_ok(),
        "the vault's Cookie header is invalid"
    );
}

fn fields(s: &[u8]) -> impl Iterator<Item = &[u8]> {
    s.split(|&b| b == b'&' || b == b';')
        .filter(|f| !f.is_empty())
}

/// A query string or urlencoded form: no field the app reads as a vaulted name is
/// forwarded, every other field is, in order, byte for byte.
pub fn strip_fields(data: &[u8]) {
    let stripped = vault::strip_fields(data, vaulted());
    let forwarded = stripped.as_deref().unwrap_or(data);
    for f in fields(forwarded) {
        assert!(
            !vaulted().matches(name_of(f)),
            "a vaulted field is forwarded: {f:?}"
        );
    }
    let others: Vec<&[u8]> = fields(data)
        .filter(|f| !vaulted().matches(name_of(f)))
        .collect();
    assert_eq!(fields(forwarded).collect::<Vec<_>>(), others);
}

/// A `Location` header from the app: no `;param` or query field that names a vaulted
/// cookie reaches the browser.
pub fn strip_location(data: &[u8]) {
    let stripped = vault::strip_location(data, vaulted());
    let url = stripped.as_deref().unwrap_or(data);
    let before_fragment = url.split(|&b| b == b'#').next().unwrap_or_default();
    let mut halves = before_fragment.splitn(2, |&b| b == b'?');
    let path = halves.next().unwrap_or_default();
    for segment in path.split(|&b| b == b'/') {
        for param in segment.split(|&b| b == b';').skip(1) {
            assert!(
                !vaulted().matches(name_of(param)),
                "a vaulted ;param: {url:?}"
            );
        }
    }
    if let Some(query) = halves.next() {
        for f in fields(query) {
            assert!(
                !vaulted().matches(name_of(f)),
                "a vaulted query field: {url:?}"
            );
        }
    }
}

/// The part names of a multipart body as a plain reader finds them: the
/// `Content-Disposition` name after each boundary line, quoted or not.
fn part_names(body: &[u8], boundary: &str) -> Vec<Vec<u8>> {
    let delimiter = format!("--{boundary}");
    let mut names = Vec::new();
    let mut rest = body;
    while let Some(at) = find(rest, delimiter.as_bytes()) {
        rest = &rest[at + delimiter.len()..];
        let head_end = find(rest, b"\r\n\r\n").unwrap_or(rest.len());
        let head = &rest[..head_end];
        if let Some(n) = find(head, b"name=") {
            let v = &head[n + 5..];
            let v = v.strip_prefix(b"\"").unwrap_or(v);
            let end = v
                .iter()
                .position(|&b| matches!(b, b'"' | b';' | b'\r' | b'\n'))
                .unwrap_or(v.len());
            names.push(v[..end].to_vec());
        }
    }
    names
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A multipart body (first line: the client's boundary): the re-encoded body names no
/// vaulted part, under multer's reading or a plain scan, and reads back unchanged.
pub fn multipart(data: &[u8]) {
    let mut halves = data.splitn(2, |&b| b == b'\n');
    let (Some(boundary), Some(body)) = (halves.next(), halves.next()) else {
        return;
    };
    let Ok(boundary) = std::str::from_utf8(boundary) else {
        return;
    };
    let what = Inspect {
        protected: vaulted(),
        strip: true,
        credentials: credentials(),
        subject_field: Some("username"),
        multipart: MultipartPolicy::Remove,
    };
    let kind = BodyKind::Multipart {
        boundary: boundary.to_owned(),
    };
    let Ok(out) = block_on(forms::inspect(&kind, Bytes::copy_from_slice(body), &what)) else {
        return;
    };
    let content_type = out
        .content_type
        .expect("a re-encoded body has its Content-Type");
    let ours = content_type
        .strip_prefix("multipart/form-data; boundary=")
        .expect("sessiongate's own boundary");
    for name in part_names(&out.body, ours) {
        assert!(
            !vaulted().matches(&name),
            "a vaulted part is forwarded: {name:?}"
        );
    }
    let kind = BodyKind::Multipart {
        boundary: ours.to_owned(),
    };
    let again = block_on(forms::inspect(&kind, out.body.clone(), &what))
        .expect("the forwarded body parses");
    assert_eq!(again.removed, 0);
    assert_eq!(again.credentials, out.credentials);
    assert_eq!(again.body, out.body, "re-encoding is not stable");
}

/// A request target (`path?query`) and a Host: the canonical path is a fixed point, the
/// path forwarded to the app canonicalises to the path rules matched, and the app's full
/// percent-decoding of it has no dot segment or backslash.
pub fn canon(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(h) = canon::host(s) {
        let again =
            canon::host(h.header().to_str().expect("ASCII")).expect("a canonical Host parses");
        assert_eq!(again, h);
        // The shortcut for a canonical Host header takes it as it is.
        assert_eq!(canon::host_value(h.header()), Ok(h));
    }
    if let Ok(v) = HeaderValue::from_str(s) {
        // (A non-ASCII value is refused by both, for different reasons.)
        assert_eq!(
            canon::host_value(&v).ok(),
            canon::host(s).ok(),
            "the Host shortcut reads {s:?} otherwise"
        );
    }
    let (path, query) = match s.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (s, None),
    };
    let Ok(t) = canon::target(path, query) else {
        return;
    };
    assert!(
        t.path.starts_with('/') && !t.path.contains("//"),
        "{:?}",
        t.path
    );
    let again = canon::target(&t.path, None).expect("the canonical path parses");
    assert_eq!(again.path, t.path, "canonicalisation is not idempotent");
    let forwarded = t.path_with_params(|_| true);
    let read = canon::target(&forwarded, None).expect("the forwarded path parses");
    assert_eq!(read.path, t.path, "the app routes {forwarded:?} elsewhere");
    let decoded = names::percent_decode(t.path.as_bytes(), false);
    assert!(!decoded.contains(&b'\\'));
    for segment in decoded.split(|&b| b == b'/') {
        assert!(segment != b"." && segment != b"..", "{:?}", t.path);
    }
}

/// A configuration file: an error or a config, never a panic, and errors say something.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text, Path::new("/nonexistent/sessiongate-fuzz")) {
        Ok(c) => assert!(!c.describe().is_empty()),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// Login and logout rules with every kind of path match and criterion.
const RULES: &str = r#"
[server]
plain_listen = "127.0.0.1:0"
[store]
kind = "memory"
[[routes]]
name = "app"
path_prefix = "/"
upstream = "http://127.0.0.1:8000"
[routes.session]
vault = ["PHPSESSID"]
[[routes.session.login]]
path = "/login"
success = { status = [302, 303], header = { name = "location", regex = "^/(account|home)" } }
failure = { header = { name = "location", regex = "error|login" } }
[[routes.session.login]]
path_prefix = "/auth/"
methods = ["POST"]
success = { set_cookie = "remember", status_not = [401] }
failure = { body_regex = "(?i)invalid|wrong", body_not_contains = "Welcome" }
[[routes.session.login]]
path_regex = "^/users/sign_in$"
success = { body_contains = "Welcome", body_not_regex = "error" }
[[routes.session.logout]]
path = "/logout"
"#;

/// The login rules and the logout rules.
fn route_rules() -> (&'static [Rule], &'static [Rule]) {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    let config = CONFIG
        .get_or_init(|| Config::from_toml(RULES, Path::new(".")).expect("the fuzz rules parse"));
    let route = config.routes.first().expect("one route");
    let session = route.session.as_ref().expect("a session route");
    (&session.login, &session.logout)
}

/// A request line, a status line, response headers and a body: rule evaluation never
/// panics, and a rule that matches a path also matches the spellings a framework routes
/// to the same handler (case, trailing slash, method case).
pub fn rules(data: &[u8]) {
    let mut lines = data.splitn(3, |&b| b == b'\n');
    let (Some(request), Some(status), rest) = (lines.next(), lines.next(), lines.next()) else {
        return;
    };
    let Ok(request) = std::str::from_utf8(request) else {
        return;
    };
    let Some((method, target)) = request.split_once(' ') else {
        return;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let Ok(target) = canon::target(target, None) else {
        return;
    };
    let status = StatusCode::from_bytes(status).unwrap_or(StatusCode::OK);
    let rest = rest.unwrap_or_default();
    let (head, body) = match find(rest, b"\n\n") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (rest, &rest[..0]),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            header::HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) {
            headers.append(n, v);
        }
    }
    let view = ResponseView {
        status,
        headers: &headers,
        body,
    };
    let path = target.path.as_str();
    let lower_method = Method::from_bytes(method.as_str().to_ascii_lowercase().as_bytes())
        .expect("a lower-cased method is a method");
    let (login, logout) = route_rules();
    for rule in login.iter().chain(logout) {
        let _ = rule.evaluate(&view);
        if !rule.matches_request(&method, path) {
            continue;
        }
        assert!(
            rule.matches_request(&lower_method, path),
            "method case: {method}"
        );
        let upper = path.to_ascii_uppercase();
        assert!(rule.matches_request(&method, &upper), "path case: {upper}");
        if !path.ends_with('/') {
            let slash = format!("{path}/");
            assert!(
                rule.matches_request(&method, &slash),
                "trailing slash: {slash}"
            );
        }
    }
    let found = rules::find(login, &method, path);
    assert_eq!(
        found.is_some(),
        login.iter().any(|r| r.matches_request(&method, path))
    );
    let _ = forms::has_credential_field(body, credentials());
    let _ = forms::form_field(body, "username");
}
