//! Raw configuration, exactly as written in the TOML file.
//!
//! These types only describe the file's shape: every table denies unknown keys, and the
//! checks that concern a single value (a duration, a URL, a cookie name) live in the
//! `Deserialize` of a newtype so that toml's error carries the line and column. The
//! checks that need several values (overlapping routes, a listener without certificates)
//! run afterwards in `super::validate`. Request-path code never sees these types.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::cookies::SameSite;
pub use crate::forms::MultipartPolicy;
pub use crate::rules::Undecided;
use bytesize::ByteSize;
use serde::{de, Deserialize, Deserializer};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub session: RawSession,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

/// The admin listener: health, readiness and metrics for the orchestrator.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `IP:PORT`; keep it on 127.0.0.1 (or the pod network only): it is unauthenticated.
    /// Without it there is no admin listener.
    pub listen: Option<Spanned<String>>,
    /// A file holding a secret that `POST /sessions/revoke` must present as a bearer
    /// token; required for revocation on an admin listener that is not on loopback.
    pub token_file: Option<Spanned<PathBuf>>,
}

/// sessiongate's own session cookie and session lifetimes (all routes).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSession {
    #[serde(default = "defaults::cookie_name")]
    pub cookie_name: Spanned<CookieName>,
    #[serde(default)]
    pub same_site: SameSite,
    /// A session unused this long is dead.
    #[serde(default = "defaults::idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// An anonymous session (no login yet) unused this long is dead: crawlers and
    /// floods that never keep cookies leave sessions behind, which should not live as
    /// long as a signed-in user's.
    /// Unset: ten minutes, or `idle_timeout` if that is shorter.
    #[serde(default, with = "humantime_serde")]
    pub anonymous_idle_timeout: Option<Duration>,
    /// A session is dead this long after it was created (or, once authenticated, after
    /// the login), however active.
    #[serde(default = "defaults::absolute_timeout", with = "humantime_serde")]
    pub absolute_timeout: Duration,
    /// Authenticated sessions get a new ID this often.
    #[serde(default = "defaults::rotate_interval", with = "humantime_serde")]
    pub rotate_interval: Duration,
    /// After a periodic rotation the old ID keeps working this long, for requests
    /// already in flight. (A login rotation has no grace.)
    #[serde(default = "defaults::rotate_grace", with = "humantime_serde")]
    pub rotate_grace: Duration,
    /// `last_seen` is written at most this often per session.
    #[serde(default = "defaults::touch_interval", with = "humantime_serde")]
    pub touch_interval: Duration,
    /// Deadline for every session store call.
    #[serde(default = "defaults::store_timeout", with = "humantime_serde")]
    pub store_timeout: Duration,
    /// New sessions one client address may create per minute (0: no limit)...
    #[serde(default = "defaults::new_sessions_per_minute")]
    pub new_sessions_per_minute: Spanned<u32>,
    /// ...in bursts of at most this many.
    #[serde(default = "defaults::new_session_burst")]
    pub new_session_burst: Spanned<u32>,
}

impl Default for RawSession {
    fn default() -> Self {
        RawSession {
            cookie_name: defaults::cookie_name(),
            same_site: SameSite::default(),
            idle_timeout: defaults::idle_timeout(),
            anonymous_idle_timeout: None,
            absolute_timeout: defaults::absolute_timeout(),
            rotate_interval: defaults::rotate_interval(),
            rotate_grace: defaults::rotate_grace(),
            touch_interval: defaults::touch_interval(),
            store_timeout: defaults::store_timeout(),
            new_sessions_per_minute: defaults::new_sessions_per_minute(),
            new_session_burst: defaults::new_session_burst(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum RawStore {
    /// In-process store (one machine; sessions are lost on restart).
    Memory {
        #[serde(default = "defaults::sweep_interval", with = "humantime_serde")]
        sweep_interval: Duration,
        /// Sessions this replica holds at most; anonymous ones are evicted first.
        #[serde(default = "defaults::max_sessions")]
        max_sessions: usize,
    },
    /// Embedded file store (one machine; sessions survive a restart).
    // Internally tagged enums buffer their content, which loses toml's spans: these
    // fields are plain, and their errors name the key without a line.
    File {
        path: PathBuf,
        #[serde(default = "defaults::sweep_interval", with = "humantime_serde")]
        sweep_interval: Duration,
        /// Sessions this replica holds at most; anonymous ones are evicted first.
        #[serde(default = "defaults::max_sessions")]
        max_sessions: usize,
        /// Keep a new anonymous session in memory until its visitor comes back, and
        /// write (and fsync) it only then (see `store::deferred`).
        #[serde(default)]
        defer_anonymous_writes: bool,
    },
    /// Google Cloud Firestore, shared by every replica.
    Firestore {
        project_id: String,
        #[serde(default = "defaults::database_id")]
        database_id: String,
        #[serde(default = "defaults::collection")]
        collection: String,
        /// How long a replica trusts its cached copy of a session: the bound on how
        /// late it notices a revocation made by another replica.
        #[serde(default = "defaults::cache_ttl", with = "humantime_serde")]
        cache_ttl: Duration,
        /// How long a cached session may still serve a route with
        /// `on_store_failure = "serve_cached"` while the store is down.
        #[serde(default = "defaults::cache_stale_for", with = "humantime_serde")]
        cache_stale_for: Duration,
        #[serde(default = "defaults::cache_max_entries")]
        cache_max_entries: usize,
        /// Keep a new anonymous session in this replica until its visitor comes back,
        /// and write it to Firestore only then (see `store::deferred`).
        #[serde(default)]
        defer_anonymous_writes: bool,
    },
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore::Memory {
            sweep_interval: defaults::sweep_interval(),
            max_sessions: defaults::max_sessions(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// TLS listener.
    pub listen: Option<Spanned<String>>,
    /// Plain-HTTP listener, only for deployments where TLS already ends in front of us.
    pub plain_listen: Option<Spanned<String>>,
    pub worker_threads: Option<Spanned<usize>>,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: Spanned<usize>,
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: Spanned<ByteSize>,
    #[serde(default = "defaults::max_headers")]
    pub max_headers: Spanned<usize>,
    #[serde(default = "defaults::header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    #[serde(default = "defaults::tls_handshake_timeout", with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    #[serde(default = "defaults::shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: None,
            plain_listen: None,
            worker_threads: None,
            max_connections: defaults::max_connections(),
            max_header_bytes: defaults::max_header_bytes(),
            max_headers: defaults::max_headers(),
            header_read_timeout: defaults::header_read_timeout(),
            tls_handshake_timeout: defaults::tls_handshake_timeout(),
            shutdown_grace: defaults::shutdown_grace(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Generate a throw-away self-signed certificate at start-up (development only).
    #[serde(default)]
    pub self_signed_dev: bool,
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// PEM file with the certificate chain, leaf first.
    pub cert: Spanned<PathBuf>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Spanned<PathBuf>,
    /// SNI names this certificate answers (`*.example.com` allowed). The first
    /// certificate also answers clients that send no or an unknown name.
    #[serde(default)]
    pub server_names: Vec<HostName>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "defaults::pool_idle_timeout", with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    #[serde(default = "defaults::pool_max_idle_per_host")]
    pub pool_max_idle_per_host: usize,
    /// Extra CA certificates (PEM) trusted for `https://` upstreams, besides the web PKI.
    pub ca_file: Option<Spanned<PathBuf>>,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            connect_timeout: defaults::connect_timeout(),
            pool_idle_timeout: defaults::pool_idle_timeout(),
            pool_max_idle_per_host: defaults::pool_max_idle_per_host(),
            ca_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<RouteName>,
    pub host: Option<Spanned<HostName>>,
    #[serde(default = "defaults::path_prefix")]
    pub path_prefix: Spanned<PathPrefix>,
    pub upstream: Spanned<UpstreamUrl>,
    #[serde(default = "defaults::yes")]
    pub preserve_host: bool,
    #[serde(default)]
    pub forwarded: ForwardedMode,
    #[serde(default = "defaults::max_request_body")]
    pub max_request_body: ByteSize,
    #[serde(default = "defaults::response_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    #[serde(default = "defaults::body_idle_timeout", with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    #[serde(default)]
    pub cookies: RawCookiePolicy,
    /// Protocol upgrades the route relays (`Upgrade` tokens, compared case-insensitively);
    /// any other `Upgrade` (such as `h2c`, which would open an unfiltered tunnel) is
    /// removed and the request forwarded as a plain one.
    #[serde(default = "defaults::upgrades")]
    pub upgrades: Vec<UpgradeToken>,
    /// `TRACE` and `TRACK` echo the request, injected vault cookies included: 405 unless
    /// allowed here.
    #[serde(default)]
    pub allow_trace: bool,
    /// Forward request header names containing `_` (dropped by default, as nginx does:
    /// CGI and WSGI servers read `X_Forwarded_For` as `X-Forwarded-For`).
    #[serde(default)]
    pub forward_underscore_headers: bool,
    /// Forward `;params` of path segments (other than vaulted names, always removed).
    /// Off by default: the app then receives exactly the path that was routed and matched.
    #[serde(default)]
    pub keep_path_params: bool,
    /// Session protection for this route; without it the route is a plain proxy (the
    /// proxy's own cookie is still never forwarded).
    pub session: Option<RawRouteSession>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteSession {
    /// `enforce` (default) or `observe` (report only; see `SessionMode`).
    #[serde(default)]
    pub mode: SessionMode,
    /// App cookies kept server-side: captured from the app's Set-Cookie, never sent to
    /// nor accepted from the browser.
    #[serde(default)]
    pub vault: Vec<CookieName>,
    /// Remove vaulted names from `;name=value` path parameters, the query string and
    /// `application/x-www-form-urlencoded` request bodies (apps such as PHP with
    /// `session.use_only_cookies=0` accept a session ID from any of them).
    #[serde(default = "defaults::yes")]
    pub strip_request_session_ids: bool,
    /// What ordinary requests get while the session store is down. Logins and logouts
    /// always fail closed.
    #[serde(default)]
    pub on_store_failure: StoreFailurePolicy,
    /// Field names that make any request carrying them (in the query string, or in an
    /// urlencoded, multipart or JSON body, also as a nested name such as
    /// `user[password]`) a login attempt, whatever its path and method.
    #[serde(default = "defaults::credential_fields")]
    pub credential_fields: Vec<CookieName>,
    /// What to do with a `multipart/form-data` part named like a vaulted cookie.
    #[serde(default)]
    pub multipart_session_ids: MultipartPolicy,
    #[serde(default)]
    pub login: Vec<RawRule>,
    #[serde(default)]
    pub logout: Vec<RawRule>,
    /// Privilege changes (password change, role elevation, "sudo mode"): on success the
    /// session gets a new ID, as at login.
    #[serde(default)]
    pub privilege: Vec<RawRule>,
}

/// A login, logout or privilege rule: which requests it looks at, and what in the
/// response means success or failure.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Methods the rule applies to (default: any; frameworks route HEAD, PUT, custom
    /// methods and GET with credentials in the query to the same handler).
    #[serde(default)]
    pub methods: Vec<MethodName>,
    /// Exactly one of `path`, `path_prefix`, `path_regex`.
    pub path: Option<Spanned<PathPrefix>>,
    pub path_prefix: Option<Spanned<PathPrefix>>,
    pub path_regex: Option<Spanned<PathRegex>>,
    /// All listed criteria must hold for success.
    #[serde(default)]
    pub success: RawCriteria,
    /// Any listed criterion that holds means failure; failure wins over success.
    #[serde(default)]
    pub failure: RawCriteria,
    /// How much of the response body the body criteria may read before deciding.
    #[serde(default = "defaults::body_peek")]
    pub body_peek: ByteSize,
    /// Where the signed-in user's name comes from (login rules).
    pub subject: Option<RawSubject>,
    /// Logout rules: also send `Clear-Site-Data: "cookies"`.
    #[serde(default)]
    pub clear_site_data: bool,
    /// Login rules: a login attempt whose response is neither a success nor a failure
    /// still gets a new ID (`rotate`, the default; the session is not marked signed in),
    /// or keeps its ID (`keep`).
    #[serde(default)]
    pub undecided: Undecided,
    /// Privilege rules: on success, also end every other session of the same user (its
    /// `subject`).
    #[serde(default)]
    pub revoke_others: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCriteria {
    #[serde(default)]
    pub status: Vec<u16>,
    #[serde(default)]
    pub status_not: Vec<u16>,
    /// A response header is present (and, with `regex`, matches).
    pub header: Option<RawHeaderMatch>,
    /// The response sets a cookie of this name.
    pub set_cookie: Option<CookieName>,
    pub body_contains: Option<BodyText>,
    pub body_not_contains: Option<BodyText>,
    pub body_regex: Option<BodyRegex>,
    pub body_not_regex: Option<BodyRegex>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    pub name: HeaderNameStr,
    pub regex: Option<RegexStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubject {
    /// A field of the login request's `application/x-www-form-urlencoded` body.
    pub form_field: Option<String>,
    /// A header of the login response.
    pub response_header: Option<HeaderNameStr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCookiePolicy {
    #[serde(default)]
    pub same_site: SameSite,
    #[serde(default)]
    pub strip_domain: bool,
    /// Cookies that page scripts must read (e.g. `XSRF-TOKEN`): they keep Secure and
    /// SameSite but do not get HttpOnly.
    #[serde(default)]
    pub script_readable: Vec<CookieName>,
}

/// Whether a session route protects sessions or only reports what it would do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionMode {
    /// Vault, strip, rotate: the protection.
    #[default]
    Enforce,
    /// Cookies and parameters pass through unchanged and no session is kept; every
    /// decision `enforce` would take is logged (audit) and counted.
    Observe,
}

impl SessionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionMode::Enforce => "enforce",
            SessionMode::Observe => "observe",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreFailurePolicy {
    /// 503 for every request that needs the store.
    #[default]
    FailClosed,
    /// Keep serving sessions this replica has cached (up to `cache_stale_for`).
    ServeCached,
}

/// How the `X-Forwarded-For`, `-Proto` and `-Host` headers reach the app.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardedMode {
    /// Drop whatever the client sent and set them from this connection (sessiongate is
    /// the edge: the client cannot spoof its address to the app).
    #[default]
    Replace,
    /// Keep what a trusted load balancer in front sent and append this hop.
    Append,
    /// Drop whatever the client sent and set nothing.
    None,
}

/// Declares a string newtype whose `Deserialize` runs a check, so that a bad value is
/// reported by toml with its line and column.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $check:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(pub String);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $check(&s).map_err(de::Error::custom)?;
                Ok($name(s))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

checked_string!(
    /// A route name for logs and `check` output.
    RouteName,
    check_route_name
);
checked_string!(
    /// A host name (lower-cased on use), optionally `*.` wildcard for SNI.
    HostName,
    check_host_name
);
checked_string!(
    /// A path prefix starting with `/`.
    PathPrefix,
    check_path_prefix
);
checked_string!(
    /// A cookie name: an RFC 9110 token, which also keeps CR/LF out of headers.
    CookieName,
    check_cookie_name
);
/// Declares a newtype holding a value parsed once, while deserialising: a bad value is
/// reported by toml with its line and column, and nothing parses it again later.
macro_rules! parsed {
    ($(#[$doc:meta])* $name:ident($ty:ty), $parse:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(pub $ty);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                let parse: fn(&str) -> Result<$ty, String> = $parse;
                parse(&s).map($name).map_err(de::Error::custom)
            }
        }
    };
}

parsed!(
    /// `http://host:port` or `https://host:port`, optionally with a base path.
    UpstreamUrl(super::Upstream),
    parse_upstream_url
);
parsed!(
    /// An HTTP method token such as `POST`.
    MethodName(http::Method),
    |s| http::Method::from_bytes(s.as_bytes()).map_err(|_| format!("invalid HTTP method {s:?}"))
);
parsed!(
    /// A protocol token for `Upgrade` (`websocket`), lower-cased.
    UpgradeToken(String),
    |s| {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b)) {
            Ok(s.to_ascii_lowercase())
        } else {
            Err(format!("invalid Upgrade protocol {s:?}: a token such as \"websocket\""))
        }
    }
);
parsed!(
    /// A header name.
    HeaderNameStr(http::HeaderName),
    |s| http::HeaderName::from_bytes(s.as_bytes()).map_err(|_| format!("invalid header name {s:?}"))
);
parsed!(
    /// A regular expression over text (Rust `regex` syntax).
    RegexStr(regex::Regex),
    |s| regex::Regex::new(s).map_err(|e| format!("invalid regex {s:?}: {e}"))
);
parsed!(
    /// A regular expression over the request path, case-insensitive (frameworks route
    /// `/Login` like `/login`).
    PathRegex(regex::Regex),
    |s| {
        regex::RegexBuilder::new(s)
            .case_insensitive(true)
            .build()
            .map_err(|e| format!("invalid regex {s:?}: {e}"))
    }
);
parsed!(
    /// A regular expression over the response body's bytes.
    BodyRegex(regex::bytes::Regex),
    |s| regex::bytes::Regex::new(s).map_err(|e| format!("invalid regex {s:?}: {e}"))
);
parsed!(
    /// A plain string to find in the response body.
    BodyText(regex::bytes::Regex),
    |s| {
        regex::bytes::Regex::new(&regex::escape(s))
            .map_err(|e| format!("{s:?} is too long to search for: {e}"))
    }
);

fn check_route_name(s: &str) -> Result<(), String> {
    if !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        Ok(())
    } else {
        Err(format!(
            "invalid route name {s:?}: use 1 to 64 characters from A-Z a-z 0-9 - _ ."
        ))
    }
}

fn check_host_name(s: &str) -> Result<(), String> {
    let bare = s.strip_prefix("*.").unwrap_or(s);
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid host name {s:?}: expected a DNS name such as \"app.example.com\" (no port, no scheme)"
        ))
    }
}

fn check_path_prefix(s: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err(format!(
            "invalid path_prefix {s:?}: it must start with \"/\""
        ));
    }
    if s.bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'?' || b == b'#')
    {
        return Err(format!(
            "invalid path_prefix {s:?}: no spaces, control characters, '?' or '#'"
        ));
    }
    Ok(())
}

/// RFC 9110 `token` characters, the set allowed in a cookie name.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_cookie_name(s: &str) -> Result<(), String> {
    if is_token(s) {
        Ok(())
    } else {
        Err(format!(
            "invalid cookie name {s:?}: a cookie name is a token (letters, digits and !#$%&'*+-.^_`|~; no spaces, '=', ';' or control characters)"
        ))
    }
}

fn parse_upstream_url(s: &str) -> Result<super::Upstream, String> {
    let uri: http::Uri = s
        .parse()
        .map_err(|e| format!("invalid upstream URL {s:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(format!(
                "invalid upstream URL {s:?}: it must start with http:// or https://"
            ))
        }
    }
    if uri.authority().is_none() {
        return Err(format!("invalid upstream URL {s:?}: it has no host"));
    }
    if uri.query().is_some() {
        return Err(format!(
            "invalid upstream URL {s:?}: a query string is not allowed"
        ));
    }
    let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
        return Err(format!("invalid upstream URL {s:?}: it has no host"));
    };
    let host_header = http::HeaderValue::from_str(authority.as_str())
        .map_err(|_| format!("invalid upstream URL {s:?}: its host is not a header value"))?;
    Ok(super::Upstream {
        scheme,
        authority,
        host_header,
        base_path: uri.path().trim_end_matches('/').to_owned(),
    })
}

pub(crate) mod defaults {
    use super::*;

    pub fn yes() -> bool {
        true
    }
    pub fn max_connections() -> Spanned<usize> {
        Spanned::new(0..0, 10_000)
    }
    pub fn max_header_bytes() -> Spanned<ByteSize> {
        Spanned::new(0..0, ByteSize::kib(16))
    }
    pub fn max_headers() -> Spanned<usize> {
        Spanned::new(0..0, 100)
    }
    pub fn header_read_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn tls_handshake_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn shutdown_grace() -> Duration {
        Duration::from_secs(30)
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn pool_idle_timeout() -> Duration {
        Duration::from_secs(90)
    }
    pub fn pool_max_idle_per_host() -> usize {
        64
    }
    pub fn path_prefix() -> Spanned<PathPrefix> {
        Spanned::new(0..0, PathPrefix("/".to_owned()))
    }
    pub fn max_request_body() -> ByteSize {
        ByteSize::mib(10)
    }
    pub fn response_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn body_idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn cookie_name() -> Spanned<CookieName> {
        Spanned::new(0..0, CookieName("__Host-sg".to_owned()))
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(30 * 60)
    }
    pub fn anonymous_idle_timeout() -> Duration {
        Duration::from_secs(10 * 60)
    }
    pub fn absolute_timeout() -> Duration {
        Duration::from_secs(12 * 3600)
    }
    pub fn rotate_interval() -> Duration {
        Duration::from_secs(15 * 60)
    }
    pub fn rotate_grace() -> Duration {
        Duration::from_secs(5)
    }
    pub fn touch_interval() -> Duration {
        Duration::from_secs(60)
    }
    pub fn store_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn database_id() -> String {
        "(default)".to_owned()
    }
    pub fn collection() -> String {
        "sessiongate_sessions".to_owned()
    }
    pub fn cache_ttl() -> Duration {
        Duration::from_secs(1)
    }
    pub fn cache_stale_for() -> Duration {
        Duration::from_secs(300)
    }
    pub fn cache_max_entries() -> usize {
        100_000
    }
    pub fn new_sessions_per_minute() -> Spanned<u32> {
        Spanned::new(0..0, 600)
    }
    pub fn new_session_burst() -> Spanned<u32> {
        Spanned::new(0..0, 100)
    }
    pub fn max_sessions() -> usize {
        crate::store::bound::DEFAULT_MAX_SESSIONS
    }

    pub fn sweep_interval() -> Duration {
        Duration::from_secs(30)
    }
    pub fn upgrades() -> Vec<UpgradeToken> {
        vec![UpgradeToken("websocket".to_owned())]
    }
    pub fn credential_fields() -> Vec<CookieName> {
        ["password", "passwd", "pwd", "j_password"]
            .into_iter()
            .map(|f| CookieName(f.to_owned()))
            .collect()
    }
    pub fn body_peek() -> ByteSize {
        ByteSize::kib(64)
    }
}
