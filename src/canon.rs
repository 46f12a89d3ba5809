//! The canonical request: the one reading of a request's host, target and framing that
//! routing, the rules and the app all share.
//!
//! Everything a rule or the router matches on is normalised once, here, before routing,
//! and the app receives that same canonical form, so that "what sessiongate matched" is
//! "what the app sees" (nginx's `merge_slashes` and dot-segment resolution, ModSecurity's
//! `t:normalizePath`):
//! - the path: percent-encoded unreserved characters decoded, other escapes upper-cased,
//!   dot segments resolved, repeated slashes merged, `;params` split off each segment;
//! - the host: lower-cased, without port and trailing dot;
//! - the framing: `Content-Length` rewritten in its canonical decimal form by the
//!   forwarder, `Transfer-Encoding` other than a single `chunked` refused.
//!
//! What cannot be normalised safely is refused with a 400 naming the reason: an encoded
//! `/` or `\` (servers disagree on whether it separates segments), a double-encoded
//! escape, `..;` (Tomcat reads it as `..`), NUL and control bytes, invalid UTF-8, a path
//! that climbs above the root, asterisk- and authority-form targets, and a `Host` that is
//! not a plain host name or address (userinfo, spaces, several Host headers, or a Host
//! that disagrees with an absolute-form target).

use std::net::Ipv6Addr;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Version};

/// Why a request was refused while it was being read.
pub type Reason = &'static str;

/// One path segment: its decoded name and its `;params`, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub name: String,
    pub params: Vec<String>,
}

/// The canonical request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The canonical path, without `;params`: what routing and rules see.
    pub path: String,
    pub segments: Vec<Segment>,
    pub trailing_slash: bool,
    /// The query string as sent (without `?`).
    pub query: Option<String>,
}

impl Target {
    /// The path with the `;params` that `keep` accepts, for the app.
    pub fn path_with_params(&self, mut keep: impl FnMut(&str) -> bool) -> String {
        if self.segments.iter().all(|s| s.params.is_empty()) {
            return self.path.clone();
        }
        let mut out = String::with_capacity(self.path.len() + 16);
        for s in &self.segments {
            out.push('/');
            out.push_str(&s.name);
            for p in s.params.iter().filter(|p| keep(p)) {
                out.push(';');
                out.push_str(p);
            }
        }
        if self.trailing_slash || out.is_empty() {
            out.push('/');
        }
        out
    }
}

/// The canonical host: for routing ([`Host::name`]) and for the `Host` header
/// ([`Host::header`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `name[:port]`: lower case, no trailing dot, the port in plain decimal.
    header: HeaderValue,
    /// Where the name is in `header` (an IPv6 literal without its brackets).
    name: std::ops::Range<usize>,
}

impl Host {
    /// The host name (or address) routes are matched on.
    pub fn name(&self) -> &str {
        self.header
            .to_str()
            .ok()
            .and_then(|h| h.get(self.name.clone()))
            .unwrap_or_default()
    }

    /// The canonical `Host` header value.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }
}

/// Parses and normalises a request's path (the part of the target before `?`).
pub fn target(path: &str, query: Option<&str>) -> Result<Target, Reason> {
    if !path.starts_with('/') {
        return Err("the request target must be an absolute path");
    }
    let mut segments: Vec<Segment> = Vec::new();
    let mut raw_segments = path[1..].split('/').peekable();
    let mut trailing_slash = false;
    while let Some(raw) = raw_segments.next() {
        let is_last = raw_segments.peek().is_none();
        let (name_raw, params) = match raw.split_once(';') {
            Some((n, p)) => (n, p.split(';').map(str::to_owned).collect::<Vec<_>>()),
            None => (raw, Vec::new()),
        };
        let name = decode_segment(name_raw)?;
        if !params.is_empty() && (name == "." || name == "..") {
            return Err("a dot segment with ;parameters (`..;`) is ambiguous");
        }
        for p in &params {
            check_param(p)?;
        }
        match name.as_str() {
            "" => {
                // Repeated slashes merge; parameters of an empty segment go with it.
                if is_last {
                    trailing_slash = true;
                }
            }
            "." => trailing_slash = is_last,
            ".." => {
                if segments.pop().is_none() {
                    return Err("the path climbs above the root");
                }
                trailing_slash = is_last;
            }
            _ => {
                segments.push(Segment { name, params });
                trailing_slash = false;
            }
        }
    }
    let mut path = String::with_capacity(path.len());
    for s in &segments {
        path.push('/');
        path.push_str(&s.name);
    }
    if trailing_slash || path.is_empty() {
        path.push('/');
    }
    if let Some(q) = query {
        if q.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err("control bytes in the query string");
        }
    }
    Ok(Target {
        path,
        segments,
        trailing_slash,
        query: query.map(str::to_owned),
    })
}

const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Decodes unreserved escapes and upper-cases the others; refuses what servers read
/// differently.
fn decode_segment(s: &str) -> Result<String, Reason> {
    let b = s.as_bytes();
    let hex_at = |i: usize| b.get(i).and_then(|&x| hex(x));
    let mut out = String::with_capacity(s.len());
    // Every escape decoded, to check that the app's full decoding is valid UTF-8.
    let mut full = Vec::with_capacity(s.len());
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        let at = s.len() - rest.len();
        if c == '%' {
            let (Some(hi), Some(lo)) = (hex_at(at + 1), hex_at(at + 2)) else {
                return Err("a malformed percent-escape in the path");
            };
            let v = hi * 16 + lo;
            match v {
                b'/' | b'\\' => return Err("an encoded slash or backslash in the path"),
                0..=0x1f | 0x7f => return Err("an encoded control byte or NUL in the path"),
                v if is_unreserved(v) => out.push(char::from(v)),
                v => {
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    out.push('%');
                    out.push(char::from(HEX[usize::from(v >> 4)]));
                    out.push(char::from(HEX[usize::from(v & 15)]));
                }
            }
            full.push(v);
            rest = &rest[3..];
            continue;
        }
        if c == '\\' || c.is_control() {
            return Err("a backslash or control character in the path");
        }
        out.push(c);
        let mut buf = [0u8; 4];
        full.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        rest = &rest[c.len_utf8()..];
    }
    if std::str::from_utf8(&full).is_err() {
        return Err("the path is not valid UTF-8 once decoded");
    }
    // Checked on the result, not the input: `%25%32%65` decodes its unreserved escapes
    // to `%252e`, which an app that decodes twice reads as `.` (found by fuzzing).
    if out
        .as_bytes()
        .windows(5)
        .any(|w| w.starts_with(b"%25") && hex(w[3]).is_some() && hex(w[4]).is_some())
    {
        return Err("a double-encoded escape in the path");
    }
    Ok(out)
}

fn check_param(p: &str) -> Result<(), Reason> {
    if p.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\') {
        return Err("a control byte or backslash in a ;parameter");
    }
    Ok(())
}

/// Validates a host (with optional port) and returns its canonical forms.
pub fn host(raw: &str) -> Result<Host, Reason> {
    let (name, port) = if let Some(rest) = raw.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err("an unterminated IPv6 literal in Host");
        };
        if inside.parse::<Ipv6Addr>().is_err() {
            return Err("an invalid IPv6 literal in Host");
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or("junk after an IPv6 literal in Host")?,
            ),
        };
        (format!("[{}]", inside.to_ascii_lowercase()), port)
    } else {
        let (h, port) = match raw.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (raw, None),
        };
        if h.is_empty() {
            return Err("an empty Host");
        }
        if !h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err("Host is not a host name or address (userinfo, spaces or other bytes)");
        }
        let h = h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase();
        if h.is_empty() || h.split('.').any(str::is_empty) {
            return Err("Host has an empty label");
        }
        (h, port)
    };
    let header = match port {
        None => name.clone(),
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err("Host has an invalid port");
            }
            let n: u32 = p.parse().map_err(|_| "Host has an invalid port")?;
            if n > 65535 {
                return Err("Host has an invalid port");
            }
            format!("{name}:{n}")
        }
    };
    let name = match name.starts_with('[') {
        true => 1..name.len().saturating_sub(1),
        false => 0..name.len(),
    };
    let header = HeaderValue::from_maybe_shared(bytes::Bytes::from(header))
        .map_err(|_| "Host is not a host name or address")?;
    Ok(Host { header, name })
}

/// [`host`] for a `Host` header: the value itself when it is already canonical (as
/// nearly every client sends it), without a copy.
pub fn host_value(raw: &HeaderValue) -> Result<Host, Reason> {
    match canonical_name_end(raw.as_bytes()) {
        Some(end) => Ok(Host {
            header: raw.clone(),
            name: 0..end,
        }),
        None => host(raw.to_str().map_err(|_| "Host is not ASCII")?),
    }
}

/// The length of the name if `raw` is a host name or IPv4 address (not an IPv6 literal)
/// with an optional port, exactly as [`host`] would write it; `None` sends it the long
/// way.
fn canonical_name_end(raw: &[u8]) -> Option<usize> {
    let (name, port) = match raw.iter().rposition(|&b| b == b':') {
        Some(i) => (&raw[..i], Some(&raw[i + 1..])),
        None => (raw, None),
    };
    let name_ok = !name.is_empty()
        && name.iter().all(|&b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_')
        })
        && name.split(|&b| b == b'.').all(|label| !label.is_empty());
    let port_ok = match port {
        None => true,
        Some(p) => {
            (1..=5).contains(&p.len())
                && p.iter().all(u8::is_ascii_digit)
                && (p.len() == 1 || p[0] != b'0')
                && p.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65_535
        }
    };
    (name_ok && port_ok).then_some(name.len())
}

/// The request's canonical host: from the `Host` header, or the target's authority
/// (HTTP/2, absolute-form), which must then agree with any `Host` header.
pub fn request_host<B>(req: &Request<B>) -> Result<Option<Host>, Reason> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let from_header = match (hosts.next(), hosts.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => return Err("several Host headers"),
        (Some(v), None) => Some(host_value(v)?),
    };
    let from_uri = match req.uri().authority() {
        None => None,
        Some(a) => {
            if a.as_str().contains('@') {
                return Err("userinfo in the request target");
            }
            Some(host(a.as_str())?)
        }
    };
    match (from_uri, from_header) {
        (Some(u), Some(h)) if u.name() != h.name() => {
            Err("Host disagrees with the request target's authority")
        }
        (Some(u), _) => Ok(Some(u)),
        (None, Some(h)) => Ok(Some(h)),
        (None, None) if req.version() == Version::HTTP_11 => Err("HTTP/1.1 without Host"),
        (None, None) => Ok(None),
    }
}

/// Framing a back end could read differently: only one `chunked` coding is accepted
/// (anything else is answered 501, because dropping a coding would change the body).
pub fn check_framing(headers: &HeaderMap) -> Result<(), FramingError> {
    let mut codings = Vec::new();
    for v in headers.get_all(header::TRANSFER_ENCODING) {
        let v = v
            .to_str()
            .map_err(|_| FramingError::Bad("Transfer-Encoding is not ASCII"))?;
        codings.extend(v.split(',').map(|t| t.trim().to_ascii_lowercase()));
    }
    match codings.as_slice() {
        [] => Ok(()),
        [only] if only == "chunked" => Ok(()),
        _ => Err(FramingError::UnsupportedCoding),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    Bad(Reason),
    /// A transfer coding other than one `chunked`.
    UnsupportedCoding,
}

/// Header names with `_` are dropped (nginx's `underscores_in_headers off`): CGI and WSGI
/// servers map `X_Forwarded_For` onto `X-Forwarded-For`.
pub fn drop_underscore_headers(headers: &mut HeaderMap) -> usize {
    let names: Vec<header::HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .cloned()
        .collect();
    for n in &names {
        headers.remove(n);
    }
    names.len()
}

/// The standard method a differently-cased one stands for (`post` -> `POST`), if any.
pub fn standard_method(m: &http::Method) -> Option<http::Method> {
    use http::Method;
    let s = m.as_str();
    if s.bytes().all(|b| !b.is_ascii_lowercase()) {
        return None;
    }
    [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ]
    .into_iter()
    .find(|std| std.as_str().eq_ignore_ascii_case(s))
}

/// The path as rules compare it: lower-cased, without a trailing slash (frameworks route
/// `/Login` and `/login/` to `/login`).
pub fn rule_path(path: &str) -> String {
    let lower = path.to_lowercase();
    match lower.strip_suffix('/') {
        Some(p) if !p.is_empty() => p.to_owned(),
        _ => lower,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(p: &str) -> Result<String, Reason> {
        target(p, None).map(|t| t.path)
    }

    #[test]
    fn paths_normalise() {
        for (raw, want) in [
            ("/", "/"),
            ("/login", "/login"),
            ("//login", "/login"),
            ("/l%6Fgin", "/login"),
            ("/l%6fgin", "/login"),
            ("/./login", "/login"),
            ("/x/../login", "/login"),
            ("/x/%2E%2E/login", "/login"),
            ("/login;x=y", "/login"),
            ("/login/", "/login/"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a%20b", "/a%20b"),
            ("/a%3bb", "/a%3Bb"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/100%25", "/100%25"),
        ] {
            assert_eq!(canon(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for raw in [
            "/a%2Fb",
            "/a%2fb",
            "/a%5Cb",
            "/a\\b",
            "/x/..;/login",
            "/x/.;/login",
            "/a%00",
            "/a%0A",
            "/..",
            "/a/../..",
            "/%C3",
            "/%FF",
            "/%2541",
            // Decoding the unreserved `%32` and `%65` would make `%252e` (fuzzing found it).
            "/%25%32%65%25%32%65/login",
            "/%25%320",
            "/%zz",
            "/%4",
            "*",
        ] {
            assert!(canon(raw).is_err(), "{raw} should be refused");
        }
    }

    #[test]
    fn params_are_kept_apart() {
        let t = target("/shop;jsessionid=X/cart;v=1", Some("a=1")).unwrap();
        assert_eq!(t.path, "/shop/cart");
        assert_eq!(
            t.path_with_params(|p| !p.starts_with("jsessionid")),
            "/shop/cart;v=1"
        );
        assert_eq!(t.path_with_params(|_| false), "/shop/cart");
    }

    #[test]
    fn hosts() {
        assert_eq!(host("Example.COM.").unwrap().name(), "example.com");
        assert_eq!(
            host("example.com:08443").unwrap().header(),
            "example.com:8443"
        );
        assert_eq!(host("[::1]:8443").unwrap().name(), "::1");
        for bad in [
            "a b",
            "user:pw@host",
            "user@host",
            "",
            "a..b",
            "host:x",
            "host:99999",
            "[::1",
            "h%41",
        ] {
            assert!(host(bad).is_err(), "{bad:?}");
        }
    }

    /// The shortcut for a `Host` header already in canonical form reads every value as the
    /// long way does, and takes it for one only when it is.
    #[test]
    fn a_canonical_host_header_is_taken_as_it_is() {
        for raw in [
            "example.com",
            "example.com:8443",
            "a-b_c.d9:0",
            "localhost:65535",
            "10.0.0.1:80",
            "Example.com",
            "example.com.",
            "example.com:08443",
            "example.com:65536",
            "example.com:",
            ":80",
            "a..b",
            ".a",
            "[::1]:8443",
            "[::1]",
            "ex ample",
            "a:b:1",
            "example.com:123456",
            "xn--bcher-kva.example",
        ] {
            let value = HeaderValue::from_static(raw);
            let (fast, slow) = (host_value(&value), host(raw));
            assert_eq!(fast, slow, "{raw:?}");
            // IPv6 literals always take the long way.
            let taken = canonical_name_end(raw.as_bytes()).is_some();
            let canonical = slow.is_ok_and(|h| h.header() == raw) && !raw.starts_with('[');
            assert_eq!(taken, canonical, "{raw:?}");
        }
    }

    #[test]
    fn framing() {
        let mut h = HeaderMap::new();
        assert!(check_framing(&h).is_ok());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        assert!(check_framing(&h).is_ok());
        h.insert(header::TRANSFER_ENCODING, "gzip, chunked".parse().unwrap());
        assert_eq!(check_framing(&h), Err(FramingError::UnsupportedCoding));
        h.insert(
            header::TRANSFER_ENCODING,
            "chunked, chunked".parse().unwrap(),
        );
        assert_eq!(check_framing(&h), Err(FramingError::UnsupportedCoding));
    }

    #[test]
    fn rule_paths() {
        assert_eq!(rule_path("/Login/"), "/login");
        assert_eq!(rule_path("/"), "/");
    }
}
