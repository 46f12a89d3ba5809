//! Validated configuration: what the rest of the proxy runs on.
//!
//! Loading is two-stage. `file` deserializes the TOML into raw types (unknown keys and
//! malformed single values are rejected there, with toml's line and column); then
//! [`validate`] checks everything that involves several values or the file system and
//! collects *every* problem, each naming its key path and line, before anything starts.
//! Request-path code only ever sees [`Config`] and [`Route`].

pub mod file;

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;

pub use crate::cookies::{CookiePolicy, SameSite};
pub use crate::forms::MultipartPolicy;
pub use crate::rules::Undecided;
pub use crate::tls::{ServerCert, TlsConfig};
pub use file::{ForwardedMode, SessionMode, StoreFailurePolicy};
use file::{RawConfig, RawCriteria, RawRoute, RawRule};

use crate::names::NameGuard;
use crate::rules::{Criterion, PathMatch, Rule, SubjectSource};

/// hyper refuses (panics on) a read buffer smaller than this, so config must too.
const MIN_HEADER_BYTES: u64 = 8 * 1024;
const MAX_HEADER_BYTES: u64 = 1024 * 1024;

#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: Option<TlsConfig>,
    pub upstream: UpstreamConfig,
    pub session: SessionConfig,
    pub store: StoreConfig,
    pub admin: AdminConfig,
    pub routes: Vec<Arc<Route>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: Option<SocketAddr>,
    /// The secret `POST /sessions/revoke` must present (`admin.token_file`).
    pub token: Option<Secret>,
}

/// A secret from the config: compared, never shown (`Debug` redacts it).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// New sessions per client address: so many per minute, in bursts of at most so many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreationQuota {
    pub per_minute: NonZeroU32,
    pub burst: NonZeroU32,
}

/// sessiongate's own cookie and the session lifetimes.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// New sessions per client address; `None`: no limit.
    pub creation_quota: Option<CreationQuota>,
    pub cookie_name: String,
    pub same_site: SameSite,
    pub idle_timeout: Duration,
    /// The idle timeout of sessions nobody has signed in to.
    pub anonymous_idle_timeout: Duration,
    pub absolute_timeout: Duration,
    pub rotate_interval: Duration,
    pub rotate_grace: Duration,
    pub touch_interval: Duration,
    pub store_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    Memory {
        sweep_interval: Duration,
        max_sessions: usize,
    },
    File {
        path: PathBuf,
        sweep_interval: Duration,
        max_sessions: usize,
        defer_anonymous_writes: bool,
    },
    Firestore {
        project_id: String,
        database_id: String,
        collection: String,
        cache_ttl: Duration,
        cache_stale_for: Duration,
        cache_max_entries: usize,
        defer_anonymous_writes: bool,
    },
}

impl StoreConfig {
    /// How often expired sessions are swept (Firestore's TTL policy does it there).
    pub fn sweep_interval(&self) -> Duration {
        match self {
            StoreConfig::Memory { sweep_interval, .. }
            | StoreConfig::File { sweep_interval, .. } => *sweep_interval,
            StoreConfig::Firestore { .. } => Duration::from_secs(300),
        }
    }
}

/// A route's session protection, compiled.
#[derive(Debug)]
pub struct RouteSession {
    pub mode: SessionMode,
    /// The app's session cookies, under every reading a stack applies.
    pub vault: NameGuard,
    pub strip_request_session_ids: bool,
    pub on_store_failure: StoreFailurePolicy,
    /// Field names that make a request a login attempt.
    pub credential_fields: NameGuard,
    pub multipart_session_ids: MultipartPolicy,
    pub login: Vec<Rule>,
    pub logout: Vec<Rule>,
    pub privilege: Vec<Rule>,
}

impl RouteSession {
    pub fn rules(&self) -> crate::rules::RuleSet<'_> {
        crate::rules::RuleSet {
            login: &self.login,
            privilege: &self.privilege,
            logout: &self.logout,
            credential_fields: &self.credential_fields,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Option<SocketAddr>,
    pub plain_listen: Option<SocketAddr>,
    pub worker_threads: usize,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub extra_roots: Vec<CertificateDer<'static>>,
}

/// One `[[routes]]` entry, compiled.
#[derive(Debug)]
pub struct Route {
    /// Its position in [`Config::routes`], for per-route state kept beside the config
    /// (metric handles).
    pub index: usize,
    pub name: String,
    /// Lower-cased host to match, or `None` for any host.
    pub host: Option<String>,
    pub path_prefix: String,
    pub upstream: Upstream,
    pub preserve_host: bool,
    pub forwarded: ForwardedMode,
    pub max_request_body: u64,
    pub response_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub cookies: CookiePolicy,
    /// Upgrade protocols relayed, lower-cased.
    pub upgrades: Vec<String>,
    pub allow_trace: bool,
    pub forward_underscore_headers: bool,
    pub keep_path_params: bool,
    /// Cookie and parameter names no client may send on this route: its own vault and the
    /// vault of every session route in front of the same upstream (a plain route to the
    /// same app must not become a way around the vault).
    pub protected: NameGuard,
    pub session: Option<RouteSession>,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// The authority as the `Host` the app gets (without `preserve_host`).
    pub host_header: http::HeaderValue,
    /// Prepended to the request path; empty or starting with `/` and without a trailing `/`.
    pub base_path: String,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path, e.g. `routes[2].path_prefix`.
    pub key: String,
    pub line: Option<usize>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{}: {} problem(s):\n{}", path.display(), problems.len(), list(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads, parses and validates a config file. Relative paths inside it (certificates)
    /// are resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, base).map_err(|e| e.with_path(path))
    }

    /// Parses and validates TOML text; `base` resolves relative paths.
    pub fn from_toml(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            source: Box::new(e),
        })?;
        validate(raw, text, base).map_err(|problems| ConfigError::Invalid {
            path: PathBuf::from("<config>"),
            problems,
        })
    }

    /// A human summary of the effective settings, for `sessiongate check`.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let s = &self.server;
        let listen = |a: Option<SocketAddr>| a.map_or("-".to_owned(), |a| a.to_string());
        let _ = writeln!(
            out,
            "listeners: tls {} | plain {}",
            listen(s.listen),
            listen(s.plain_listen)
        );
        if let Some(tls) = &self.tls {
            for c in &tls.certificates {
                let _ = writeln!(out, "tls: {} for {:?}", c.source, c.server_names);
            }
        }
        let _ = writeln!(
            out,
            "limits: {} connections, {} header bytes, {} headers, {} worker threads",
            s.max_connections, s.max_header_bytes, s.max_headers, s.worker_threads
        );
        let _ = writeln!(out, "admin: {}", listen(self.admin.listen));
        let ss = &self.session;
        let _ = writeln!(
            out,
            "session: cookie {} (SameSite={}), idle {:?} (anonymous {:?}), absolute {:?}, rotate every {:?} (grace {:?}), store {:?}",
            ss.cookie_name,
            ss.same_site.as_str(),
            ss.idle_timeout,
            ss.anonymous_idle_timeout,
            ss.absolute_timeout,
            ss.rotate_interval,
            ss.rotate_grace,
            self.store
        );
        let _ = writeln!(out, "routes (longest matching prefix wins):");
        for r in &self.routes {
            describe_route(&mut out, r);
        }
        out
    }
}

/// `check`'s lines for one route.
fn describe_route(out: &mut String, r: &Route) {
    use std::fmt::Write;
    let _ = writeln!(
            out,
            "  {name}: host={host} prefix={prefix} -> {up} (preserve_host={ph}, forwarded={fw:?}, \
             max_body={mb}, timeout={rt:?}, same_site={ss}, strip_domain={sd}, script_readable={sr:?}, \
             upgrades={ug:?}, allow_trace={at}, keep_path_params={kp}, forward_underscore_headers={fu})",
            name = r.name,
            host = r.host.as_deref().unwrap_or("*"),
            prefix = r.path_prefix,
            up = r.upstream,
            ph = r.preserve_host,
            fw = r.forwarded,
            mb = bytesize::ByteSize(r.max_request_body),
            rt = r.response_timeout,
            ss = r.cookies.same_site.as_str(),
            sd = r.cookies.strip_domain,
            sr = r.cookies.script_readable,
            ug = r.upgrades,
            at = r.allow_trace,
            kp = r.keep_path_params,
            fu = r.forward_underscore_headers,
        );
    if !r.protected.is_empty() && r.session.is_none() {
        let _ = writeln!(
            out,
            "    shares its upstream with a session route: filters {:?} both ways",
            r.protected.names()
        );
    }
    match &r.session {
        None => {
            let _ = writeln!(out, "    session: none (plain proxy)");
        }
        Some(rs) => {
            let _ = writeln!(
                    out,
                    "    session ({mode}): vault {:?}, strip request session IDs: {}, credential fields {:?}, {} login rule(s), {} logout rule(s), {} privilege rule(s)",
                    rs.vault.names(),
                    rs.strip_request_session_ids,
                    rs.credential_fields.names(),
                    rs.login.len(),
                    rs.logout.len(),
                    rs.privilege.len(),
                    mode = match rs.mode {
                        SessionMode::Enforce => "enforce",
                        SessionMode::Observe => "observe: nothing enforced, decisions logged",
                    },
                );
            for (kind, rules) in [
                ("login", &rs.login),
                ("logout", &rs.logout),
                ("privilege", &rs.privilege),
            ] {
                for rule in rules {
                    let _ = writeln!(out, "      {kind}: {:?} {:?}", rule.methods, rule.path);
                }
            }
        }
    }
}

impl ConfigError {
    fn with_path(self, p: &Path) -> ConfigError {
        match self {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: p.to_owned(),
                source,
            },
            ConfigError::Invalid { problems, .. } => ConfigError::Invalid {
                path: p.to_owned(),
                problems,
            },
            other => other,
        }
    }
}

/// Collects problems with their line numbers.
struct Problems<'a> {
    text: &'a str,
    list: Vec<Problem>,
}

impl Problems<'_> {
    fn add(
        &mut self,
        key: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        // Defaults carry an empty 0..0 span: they have no line.
        let line = span.filter(|s| s.end > 0).map(|s| {
            self.text[..s.start.min(self.text.len())]
                .matches('\n')
                .count()
                + 1
        });
        self.list.push(Problem {
            key: key.into(),
            line,
            message: message.into(),
        });
    }
}

fn validate(raw: RawConfig, text: &str, base: &Path) -> Result<Config, Vec<Problem>> {
    let mut p = Problems {
        text,
        list: Vec::new(),
    };
    let server = validate_server(&raw, &mut p);
    let tls = raw.tls.as_ref().map(|t| validate_tls(t, base, &mut p));
    let listen_configured = raw.server.listen.is_some();
    if listen_configured && tls.is_none() {
        p.add(
            "server.listen",
            raw.server.listen.as_ref().map(|l| l.span()),
            "a TLS listener needs a [tls] table: add [[tls.certificates]] with cert and key, \
             or `self_signed_dev = true` for local testing",
        );
    }
    if !listen_configured && raw.tls.is_some() {
        p.add(
            "server.listen",
            None,
            "[tls] is configured but server.listen is missing: set the TLS listen address",
        );
    }
    if !listen_configured && raw.server.plain_listen.is_none() {
        p.add(
            "server.listen",
            None,
            "no listener: set server.listen (TLS) and/or server.plain_listen",
        );
    }
    let upstream = validate_upstream(&raw, base, &mut p);
    let session = validate_session(&raw.session, &mut p);
    let store = validate_store(raw.store, base, &mut p);
    let routes = validate_routes(&raw.routes, &session, &mut p);
    let admin = AdminConfig {
        listen: parse_addr("admin.listen", &raw.admin.listen, &mut p),
        token: admin_token(&raw.admin, base, &mut p),
    };

    if p.list.is_empty() {
        Ok(Config {
            server,
            tls,
            upstream,
            session,
            store,
            admin,
            routes,
        })
    } else {
        Err(p.list)
    }
}

fn parse_addr(
    key: &str,
    v: &Option<toml::Spanned<String>>,
    p: &mut Problems,
) -> Option<SocketAddr> {
    let v = v.as_ref()?;
    match v.get_ref().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            p.add(
                key,
                Some(v.span()),
                format!(
                    "{:?} is not an address: use IP:PORT, e.g. \"0.0.0.0:8443\" or \"[::]:8443\"",
                    v.get_ref()
                ),
            );
            None
        }
    }
}

fn validate_server(raw: &RawConfig, p: &mut Problems) -> ServerConfig {
    let s = &raw.server;
    let listen = parse_addr("server.listen", &s.listen, p);
    let plain_listen = parse_addr("server.plain_listen", &s.plain_listen, p);
    let worker_threads = match &s.worker_threads {
        Some(n) if *n.get_ref() == 0 => {
            p.add(
                "server.worker_threads",
                Some(n.span()),
                "must be at least 1 (or omit it to use one per core)",
            );
            1
        }
        Some(n) => *n.get_ref(),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let max_connections = *s.max_connections.get_ref();
    if max_connections == 0 {
        p.add(
            "server.max_connections",
            Some(s.max_connections.span()),
            "must be at least 1",
        );
    }
    let hb = s.max_header_bytes.get_ref().as_u64();
    if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&hb) {
        p.add(
            "server.max_header_bytes",
            Some(s.max_header_bytes.span()),
            format!("must be between 8 KiB and 1 MiB (got {hb} bytes)"),
        );
    }
    let max_headers = *s.max_headers.get_ref();
    if max_headers == 0 || max_headers > 10_000 {
        p.add(
            "server.max_headers",
            Some(s.max_headers.span()),
            "must be between 1 and 10000",
        );
    }
    for (key, d) in [
        ("server.header_read_timeout", s.header_read_timeout),
        ("server.tls_handshake_timeout", s.tls_handshake_timeout),
    ] {
        if d.is_zero() {
            p.add(key, None, "must be longer than zero, e.g. \"10s\"");
        }
    }
    ServerConfig {
        listen,
        plain_listen,
        worker_threads,
        max_connections: max_connections.max(1),
        max_header_bytes: hb.clamp(MIN_HEADER_BYTES, MAX_HEADER_BYTES) as usize,
        max_headers: max_headers.clamp(1, 10_000),
        header_read_timeout: s.header_read_timeout,
        tls_handshake_timeout: s.tls_handshake_timeout,
        shutdown_grace: s.shutdown_grace,
    }
}

/// The revocation token: the file's content without surrounding whitespace, at least 16
/// bytes (a token anyone could guess is no protection).
fn admin_token(raw: &file::RawAdmin, base: &Path, p: &mut Problems) -> Option<Secret> {
    let file = raw.token_file.as_ref()?;
    match std::fs::read_to_string(resolve(base, file.get_ref())) {
        Ok(text) if text.trim().len() >= 16 => Some(Secret(text.trim().to_owned())),
        Ok(_) => {
            p.add(
                "admin.token_file",
                Some(file.span()),
                "the token must be at least 16 characters, e.g. `openssl rand -hex 32 > FILE`",
            );
            None
        }
        Err(e) => {
            p.add(
                "admin.token_file",
                Some(file.span()),
                format!("cannot read {}: {e}", file.get_ref().display()),
            );
            None
        }
    }
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

fn validate_tls(t: &file::RawTls, base: &Path, p: &mut Problems) -> TlsConfig {
    let mut certificates = Vec::new();
    if t.self_signed_dev && !t.certificates.is_empty() {
        p.add(
            "tls.self_signed_dev",
            None,
            "self_signed_dev cannot be combined with [[tls.certificates]]: remove one",
        );
    }
    if !t.self_signed_dev && t.certificates.is_empty() {
        p.add(
            "tls.certificates",
            None,
            "no certificate: add [[tls.certificates]] with cert and key files",
        );
    }
    if t.self_signed_dev {
        match crate::tls::self_signed_dev_cert() {
            Ok(c) => certificates.push(c),
            Err(e) => p.add("tls.self_signed_dev", None, e.to_string()),
        }
    }
    for (i, c) in t.certificates.iter().enumerate() {
        let cert = resolve(base, c.cert.get_ref());
        let key = resolve(base, c.key.get_ref());
        match crate::tls::load_certified_key(&cert, &key) {
            Ok(k) => certificates.push(ServerCert {
                server_names: c
                    .server_names
                    .iter()
                    .map(|n| n.0.to_ascii_lowercase())
                    .collect(),
                key: Arc::new(k),
                source: cert.display().to_string(),
            }),
            Err(e) => {
                let (field, span) = if e.is_key() {
                    ("key", c.key.span())
                } else {
                    ("cert", c.cert.span())
                };
                p.add(
                    format!("tls.certificates[{i}].{field}"),
                    Some(span),
                    e.to_string(),
                );
            }
        }
    }
    TlsConfig {
        self_signed_dev: t.self_signed_dev,
        certificates,
    }
}

fn validate_upstream(raw: &RawConfig, base: &Path, p: &mut Problems) -> UpstreamConfig {
    let u = &raw.upstream;
    if u.connect_timeout.is_zero() {
        p.add(
            "upstream.connect_timeout",
            None,
            "must be longer than zero, e.g. \"5s\"",
        );
    }
    let mut extra_roots = Vec::new();
    if let Some(ca) = &u.ca_file {
        match crate::tls::load_certs(&resolve(base, ca.get_ref())) {
            Ok(certs) => extra_roots = certs,
            Err(e) => p.add("upstream.ca_file", Some(ca.span()), e.to_string()),
        }
    }
    UpstreamConfig {
        connect_timeout: u.connect_timeout,
        pool_idle_timeout: u.pool_idle_timeout,
        pool_max_idle_per_host: u.pool_max_idle_per_host,
        extra_roots,
    }
}

fn check_max_sessions(n: usize, p: &mut Problems) -> usize {
    if n < 100 {
        p.add(
            "store.max_sessions",
            None,
            format!(
                "{n} is too small to hold a replica's visitors: use at least 100 (default 200000)"
            ),
        );
    }
    n
}

fn validate_store(raw: file::RawStore, base: &Path, p: &mut Problems) -> StoreConfig {
    match raw {
        file::RawStore::Memory {
            sweep_interval,
            max_sessions,
        } => StoreConfig::Memory {
            sweep_interval,
            max_sessions: check_max_sessions(max_sessions, p),
        },
        file::RawStore::File {
            path,
            sweep_interval,
            max_sessions,
            defer_anonymous_writes,
        } => {
            let resolved = resolve(base, &path);
            if let Some(dir) = resolved.parent().filter(|d| !d.as_os_str().is_empty()) {
                if !dir.is_dir() {
                    p.add(
                        "store.path",
                        None,
                        format!(
                            "directory {} does not exist: create it (writable by sessiongate)",
                            dir.display()
                        ),
                    );
                }
            }
            StoreConfig::File {
                path: resolved,
                sweep_interval,
                max_sessions: check_max_sessions(max_sessions, p),
                defer_anonymous_writes,
            }
        }
        file::RawStore::Firestore {
            project_id,
            database_id,
            collection,
            cache_ttl,
            cache_stale_for,
            cache_max_entries,
            defer_anonymous_writes,
        } => {
            if project_id.trim().is_empty() {
                p.add(
                    "store.project_id",
                    None,
                    "the Google Cloud project ID is empty",
                );
            }
            let c = &collection;
            if c.is_empty() || c.contains('/') || c.starts_with("__") {
                p.add(
                    "store.collection",
                    None,
                    "a collection ID: not empty, no '/', not starting with '__'",
                );
            }
            if cache_ttl.is_zero() {
                p.add(
                    "store.cache_ttl",
                    None,
                    "must be longer than zero (e.g. \"1s\")",
                );
            }
            StoreConfig::Firestore {
                project_id,
                database_id,
                collection,
                cache_ttl,
                cache_stale_for,
                cache_max_entries: cache_max_entries.max(1),
                defer_anonymous_writes,
            }
        }
    }
}

/// `None`: no limit (`new_sessions_per_minute = 0`).
fn creation_quota(s: &file::RawSession, p: &mut Problems) -> Option<CreationQuota> {
    let per_minute = NonZeroU32::new(*s.new_sessions_per_minute.get_ref())?;
    match NonZeroU32::new(*s.new_session_burst.get_ref()) {
        Some(burst) => Some(CreationQuota { per_minute, burst }),
        None => {
            p.add(
                "session.new_session_burst",
                Some(s.new_session_burst.span()),
                "must be at least 1 (set session.new_sessions_per_minute = 0 to turn the limit off)",
            );
            None
        }
    }
}

fn validate_session(s: &file::RawSession, p: &mut Problems) -> SessionConfig {
    let anonymous_idle_timeout = s
        .anonymous_idle_timeout
        .unwrap_or_else(|| file::defaults::anonymous_idle_timeout().min(s.idle_timeout));
    for (key, d) in [
        ("session.idle_timeout", s.idle_timeout),
        ("session.anonymous_idle_timeout", anonymous_idle_timeout),
        ("session.absolute_timeout", s.absolute_timeout),
        ("session.rotate_interval", s.rotate_interval),
        ("session.touch_interval", s.touch_interval),
        ("session.store_timeout", s.store_timeout),
    ] {
        if d.is_zero() {
            p.add(key, None, "must be longer than zero");
        }
    }
    if s.rotate_grace >= s.rotate_interval {
        p.add(
            "session.rotate_grace",
            None,
            "must be shorter than session.rotate_interval (a few seconds is enough for in-flight requests)",
        );
    }
    if s.touch_interval >= s.idle_timeout.min(anonymous_idle_timeout) {
        p.add(
            "session.touch_interval",
            None,
            "must be shorter than session.idle_timeout and session.anonymous_idle_timeout, or active sessions would expire",
        );
    }
    if anonymous_idle_timeout > s.idle_timeout {
        p.add(
            "session.anonymous_idle_timeout",
            None,
            "must not be longer than session.idle_timeout: anonymous sessions cost as much and are worth less",
        );
    }
    let creation_quota = creation_quota(s, p);
    SessionConfig {
        creation_quota,
        cookie_name: s.cookie_name.get_ref().0.clone(),
        same_site: s.same_site,
        idle_timeout: s.idle_timeout,
        anonymous_idle_timeout,
        absolute_timeout: s.absolute_timeout,
        rotate_interval: s.rotate_interval,
        rotate_grace: s.rotate_grace,
        touch_interval: s.touch_interval,
        store_timeout: s.store_timeout,
    }
}

fn validate_route_session(
    r: &file::RawRouteSession,
    session: &SessionConfig,
    route_key: &str,
    p: &mut Problems,
) -> RouteSession {
    let mut vault: Vec<String> = r.vault.iter().map(|c| c.0.clone()).collect();
    vault.sort();
    vault.dedup();
    if NameGuard::new(&vault).matches(session.cookie_name.as_bytes()) {
        p.add(
            format!("{route_key}.session.vault"),
            None,
            format!(
                "{:?} reads as sessiongate's own cookie (session.cookie_name); it cannot be vaulted",
                session.cookie_name
            ),
        );
    }
    let mut compile_all = |rules: &[RawRule], kind: RuleKind| -> Vec<Rule> {
        rules
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| {
                compile_rule(
                    rule,
                    kind,
                    &format!("{route_key}.session.{}[{i}]", kind.key()),
                    p,
                )
            })
            .collect()
    };
    let login = compile_all(&r.login, RuleKind::Login);
    let logout = compile_all(&r.logout, RuleKind::Logout);
    let privilege = compile_all(&r.privilege, RuleKind::Privilege);
    RouteSession {
        mode: r.mode,
        vault: NameGuard::new(&vault),
        strip_request_session_ids: r.strip_request_session_ids,
        on_store_failure: r.on_store_failure,
        credential_fields: NameGuard::new(r.credential_fields.iter().map(|f| &f.0)),
        multipart_session_ids: r.multipart_session_ids,
        login,
        logout,
        privilege,
    }
}

/// Which list a rule is in: login and privilege rules must say what success looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleKind {
    Login,
    Logout,
    Privilege,
}

impl RuleKind {
    fn key(self) -> &'static str {
        match self {
            RuleKind::Login => "login",
            RuleKind::Logout => "logout",
            RuleKind::Privilege => "privilege",
        }
    }
}

fn compile_rule(r: &RawRule, kind: RuleKind, key: &str, p: &mut Problems) -> Option<Rule> {
    let paths = [
        r.path.as_ref().map(|s| {
            (
                s.span(),
                PathMatch::Exact(crate::canon::rule_path(&s.get_ref().0)),
            )
        }),
        r.path_prefix
            .as_ref()
            .map(|s| (s.span(), PathMatch::Prefix(s.get_ref().0.to_lowercase()))),
        r.path_regex
            .as_ref()
            .map(|s| (s.span(), PathMatch::Regex(s.get_ref().0.clone()))),
    ];
    let mut given: Vec<(Range<usize>, PathMatch)> = paths.into_iter().flatten().collect();
    if given.len() != 1 {
        p.add(
            key,
            given.get(1).map(|g| g.0.clone()),
            "give exactly one of path, path_prefix or path_regex",
        );
        return None;
    }
    let (_, path) = given.remove(0);
    let success = compile_criteria(&r.success);
    let failure = compile_criteria(&r.failure);
    if kind != RuleKind::Logout && success.is_empty() {
        p.add(
            format!("{key}.success"),
            None,
            format!("a {} rule needs at least one success criterion (e.g. status = [302] with a Location header, or body_contains), otherwise a failed attempt would count as a success", kind.key()),
        );
    }
    if kind != RuleKind::Privilege && r.revoke_others {
        p.add(
            format!("{key}.revoke_others"),
            None,
            "revoke_others belongs in [[routes.session.privilege]] rules; remove it here",
        );
    }
    let subject = match &r.subject {
        None => None,
        Some(s) => match (&s.form_field, &s.response_header) {
            (Some(f), None) => Some(SubjectSource::FormField(f.clone())),
            (None, Some(h)) => Some(SubjectSource::ResponseHeader(h.0.clone())),
            _ => {
                p.add(
                    format!("{key}.subject"),
                    None,
                    "give exactly one of form_field or response_header",
                );
                None
            }
        },
    };
    let methods = r.methods.iter().map(|m| m.0.clone()).collect();
    Some(Rule {
        methods,
        path,
        success,
        failure,
        body_peek: usize::try_from(r.body_peek.as_u64()).unwrap_or(usize::MAX),
        subject,
        clear_site_data: r.clear_site_data,
        undecided: r.undecided,
        revoke_others: r.revoke_others,
    })
}

fn compile_criteria(c: &RawCriteria) -> Vec<Criterion> {
    let body = |pattern: &regex::bytes::Regex, present: bool| Criterion::Body {
        pattern: pattern.clone(),
        present,
    };
    let mut out = Vec::new();
    if !c.status.is_empty() {
        out.push(Criterion::StatusIn(c.status.clone()));
    }
    if !c.status_not.is_empty() {
        out.push(Criterion::StatusNotIn(c.status_not.clone()));
    }
    if let Some(h) = &c.header {
        out.push(Criterion::Header {
            name: h.name.0.clone(),
            regex: h.regex.as_ref().map(|r| r.0.clone()),
        });
    }
    if let Some(name) = &c.set_cookie {
        out.push(Criterion::SetCookie(name.0.clone()));
    }
    out.extend(c.body_contains.iter().map(|t| body(&t.0, true)));
    out.extend(c.body_not_contains.iter().map(|t| body(&t.0, false)));
    out.extend(c.body_regex.iter().map(|r| body(&r.0, true)));
    out.extend(c.body_not_regex.iter().map(|r| body(&r.0, false)));
    out
}

fn validate_routes(raw: &[RawRoute], session: &SessionConfig, p: &mut Problems) -> Vec<Arc<Route>> {
    if raw.is_empty() {
        p.add(
            "routes",
            None,
            "no routes: add at least one [[routes]] table with an upstream, e.g. upstream = \"http://127.0.0.1:8000\"",
        );
    }
    let mut routes: Vec<Route> = Vec::new();
    let mut seen: Vec<(Option<String>, String, usize)> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let host = r.host.as_ref().map(|h| h.get_ref().0.to_ascii_lowercase());
        let prefix = r.path_prefix.get_ref().0.clone();
        if let Some((_, _, j)) = seen.iter().find(|(h, pr, _)| *h == host && *pr == prefix) {
            p.add(
                format!("routes[{i}].path_prefix"),
                Some(r.path_prefix.span()),
                format!(
                    "routes[{j}] already matches host {} and path_prefix {prefix:?}: give one a different host or path_prefix, or merge them",
                    host.as_deref().unwrap_or("*")
                ),
            );
        }
        seen.push((host, prefix, i));
        routes.push(compile_route(i, r, session, p));
    }
    protect_shared_upstreams(&mut routes);
    routes.into_iter().map(Arc::new).collect()
}

/// One `[[routes]]` entry, checked and compiled.
fn compile_route(i: usize, r: &RawRoute, session: &SessionConfig, p: &mut Problems) -> Route {
    let key = |field: &str| format!("routes[{i}].{field}");
    let host = r.host.as_ref().map(|h| h.get_ref().0.to_ascii_lowercase());
    if let (Some(h), Some(raw)) = (&host, &r.host) {
        if h.starts_with("*.") {
            p.add(
                key("host"),
                Some(raw.span()),
                "wildcards are for TLS server_names; a route host is exact",
            );
        }
    }
    for (field, d) in [
        ("response_timeout", r.response_timeout),
        ("body_idle_timeout", r.body_idle_timeout),
    ] {
        if d.is_zero() {
            p.add(key(field), None, "must be longer than zero, e.g. \"60s\"");
        }
    }
    let route_session = r
        .session
        .as_ref()
        .map(|s| validate_route_session(s, session, &format!("routes[{i}]"), p));
    let upstream = r.upstream.get_ref().0.clone();
    let mut script_readable: Vec<String> = r
        .cookies
        .script_readable
        .iter()
        .map(|c| c.0.clone())
        .collect();
    script_readable.sort();
    script_readable.dedup();
    Route {
        index: i,
        name: r
            .name
            .as_ref()
            .map_or_else(|| format!("routes[{i}]"), |n| n.0.clone()),
        host,
        path_prefix: r.path_prefix.get_ref().0.clone(),
        upstream,
        preserve_host: r.preserve_host,
        forwarded: r.forwarded,
        max_request_body: r.max_request_body.as_u64(),
        response_timeout: r.response_timeout,
        body_idle_timeout: r.body_idle_timeout,
        cookies: CookiePolicy {
            same_site: r.cookies.same_site,
            strip_domain: r.cookies.strip_domain,
            script_readable,
        },
        upgrades: r
            .upgrades
            .iter()
            .map(|u| u.0.to_ascii_lowercase())
            .collect(),
        allow_trace: r.allow_trace,
        forward_underscore_headers: r.forward_underscore_headers,
        keep_path_params: r.keep_path_params,
        protected: NameGuard::default(),
        session: route_session,
    }
}

/// Every route gets, as its protected names, the vault of every session route in front of
/// the same upstream (scheme and authority), its own included. A route in observe mode
/// protects nothing on the others: the browser holds the app's cookies while it observes,
/// and the routes beside it must let them through.
fn protect_shared_upstreams(routes: &mut [Route]) {
    let same_app = |a: &Upstream, b: &Upstream| {
        a.scheme == b.scheme
            && a.authority
                .as_str()
                .eq_ignore_ascii_case(b.authority.as_str())
    };
    let shared: Vec<NameGuard> = routes
        .iter()
        .map(|r| {
            let names: Vec<String> = routes
                .iter()
                .filter(|o| same_app(&o.upstream, &r.upstream))
                .filter(|o| {
                    std::ptr::eq(*o, r)
                        || o.session
                            .as_ref()
                            .is_some_and(|s| s.mode == SessionMode::Enforce)
                })
                .filter_map(|o| o.session.as_ref())
                .flat_map(|s| s.vault.names().iter().cloned())
                .collect();
            NameGuard::new(names)
        })
        .collect();
    for (route, guard) in routes.iter_mut().zip(shared) {
        route.protected = guard;
    }
}
