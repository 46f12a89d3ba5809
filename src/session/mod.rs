//! Session identity: the opaque ID the browser holds, its store key, minting, and the
//! request's Cookie header.
//!
//! An ID is 32 bytes from a ChaCha20 CSPRNG seeded from the OS, sent as 43 characters of
//! unpadded base64url. A client's value is accepted only if it has exactly that length
//! and alphabet and decodes canonically; anything else is "no session" and is counted.
//! The store never sees an ID: its key is the SHA-256 of the ID ([`SessionKey`]), and
//! logs only ever show the first 8 hex digits of that hash.

pub mod ids;

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{self, HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};

use crate::names::NameGuard;

pub use ids::{ChaChaIds, IdSource};

pub const ID_BYTES: usize = 32;
/// Length of the base64url (no padding) form of an ID.
pub const COOKIE_VALUE_LEN: usize = 43;

/// A session ID. `Debug` is redacted so that it cannot end up in a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId([u8; ID_BYTES]);

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.key())
    }
}

impl SessionId {
    pub fn from_bytes(bytes: [u8; ID_BYTES]) -> SessionId {
        SessionId(bytes)
    }

    /// Strictly validates a client-supplied cookie value.
    pub fn parse(value: &[u8]) -> Option<SessionId> {
        if value.len() != COOKIE_VALUE_LEN
            || !value
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        let mut out = [0u8; ID_BYTES];
        // Rejects non-canonical trailing bits, so one ID has exactly one spelling.
        match URL_SAFE_NO_PAD.decode_slice(value, &mut out) {
            Ok(ID_BYTES) => Some(SessionId(out)),
            _ => None,
        }
    }

    pub fn cookie_value(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    pub fn key(&self) -> SessionKey {
        SessionKey(Sha256::digest(self.0).into())
    }
}

/// The store key of a session: SHA-256 of its ID. Safe to log (as a prefix) and to store.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SessionKey(pub [u8; 32]);

/// Eight bytes of the digest into a keyed hasher: a uniform digest has no better bits
/// to offer, and a client choosing IDs would need full 64-bit collisions to pile them
/// into one bucket (equality still compares all 32 bytes).
impl std::hash::Hash for SessionKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(head));
    }
}

impl SessionKey {
    /// Lower-case hex of the whole hash (the store's document ID).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<SessionKey> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(SessionKey(out))
    }
}

/// A concurrent map keyed by session: with a fast hasher, seeded per process. A key is a
/// digest, but of an ID a client may choose (a presented ID is admitted before it is
/// known), so the hash stays keyed; SipHash, the default, cost more than the rest of the
/// memory store's lookup.
pub type KeyMap<V> = dashmap::DashMap<SessionKey, V, foldhash::fast::RandomState>;

/// Logs show 8 hex digits: enough to correlate lines, useless to an attacker.
impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0[..4]))
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({self})")
    }
}

/// What the request said about sessiongate's cookie.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Presented {
    #[default]
    Absent,
    /// A well-formed ID, kept as its store key: nothing past the parse needs the ID
    /// itself, and hashing it once here keeps it out of every later phase.
    Valid(SessionKey),
    /// Wrong length or alphabet.
    Malformed,
    /// Several different values (cookie tossing from a sibling domain can do this when
    /// the cookie name lacks the `__Host-` prefix): none is trusted.
    Ambiguous,
}

/// The request's Cookie headers, read strictly.
#[derive(Debug, Default)]
pub struct RequestCookies<'a> {
    /// sessiongate's own cookie.
    pub presented: Presented,
    /// The pairs the app may see, in order.
    pub kept: Vec<&'a [u8]>,
    /// Pairs that are not an RFC 6265 `token=cookie-octets` pair, dropped.
    pub malformed: usize,
    /// Pairs whose name reads as a protected (vaulted) name, dropped.
    pub protected: usize,
}

/// Splits the request's Cookie headers: sessiongate's cookie is taken out and
/// validated, every pair whose name reads as a protected name (under any reading in
/// [`crate::names`]) is dropped, and so is every pair that is not a strict RFC 6265
/// pair (a token name, not starting with `$`, and cookie-octets, optionally quoted):
/// parsers disagree on exactly those (splitting at spaces or commas, unbalanced quotes,
/// `$Version` switching to RFC 2109). The rest is kept for the app, in order.
pub fn split_request_cookies<'a>(
    headers: &'a HeaderMap,
    proxy_name: &str,
    protected: &NameGuard,
) -> RequestCookies<'a> {
    let mut out = RequestCookies::default();
    // HTTP/2 may split cookies over several headers.
    for value in headers.get_all(header::COOKIE) {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let pair = trim(pair);
            if pair.is_empty() {
                continue;
            }
            let (name, val, strict) = match strict_pair(pair) {
                Some((n, v)) => (n, v, true),
                None => {
                    let eq = pair.iter().position(|&b| b == b'=').unwrap_or(0);
                    (trim(&pair[..eq]), &pair[..0], false)
                }
            };
            if name == proxy_name.as_bytes() {
                let this = match strict {
                    true => SessionId::parse(val)
                        .map_or(Presented::Malformed, |id| Presented::Valid(id.key())),
                    false => Presented::Malformed,
                };
                out.presented = match (std::mem::take(&mut out.presented), this) {
                    (Presented::Absent, this) => this,
                    (prev, this) if prev == this => prev,
                    _ => Presented::Ambiguous,
                };
            } else if !strict {
                out.malformed += 1;
            } else if protected.matches(name) || name.eq_ignore_ascii_case(proxy_name.as_bytes()) {
                out.protected += 1;
            } else {
                out.kept.push(pair);
            }
        }
    }
    out
}

/// `name=value` with a token name and cookie-octets (RFC 6265 4.1.1) as the value.
fn strict_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = pair.iter().position(|&b| b == b'=')?;
    let (name, value) = (&pair[..eq], &pair[eq + 1..]);
    if name.is_empty() || name[0] == b'$' || !name.iter().all(|&b| is_tchar(b)) {
        return None;
    }
    let inner = match value {
        [b'"', inner @ .., b'"'] => inner,
        v => v,
    };
    inner
        .iter()
        .all(|&b| is_cookie_octet(b))
        .then_some((name, value))
}

/// RFC 9110 tchar.
fn is_tchar(b: u8) -> bool {
    CLASSES[usize::from(b)] & TCHAR != 0
}

/// RFC 6265 cookie-octet: no controls, space, `"`, `,`, `;` or `\\`.
fn is_cookie_octet(b: u8) -> bool {
    CLASSES[usize::from(b)] & COOKIE_OCTET != 0
}

const TCHAR: u8 = 1;
const COOKIE_OCTET: u8 = 2;

/// Every byte's classes, so that a Cookie header (read on every request) costs one load
/// per byte and class.
static CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        if b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            )
        {
            t[i] |= TCHAR;
        }
        if matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e) {
            t[i] |= COOKIE_OCTET;
        }
        i += 1;
    }
    t
};

/// Removes sessiongate's cookie from the request's Cookie headers (routes without
/// session protection still never forward it), leaving every other pair as sent. Leaves
/// the headers alone when it is not there, the common case.
pub fn strip_proxy_cookie(headers: &mut HeaderMap, proxy_name: &str) {
    let present = headers.get_all(header::COOKIE).iter().any(|v| {
        v.as_bytes()
            .windows(proxy_name.len())
            .any(|w| w.eq_ignore_ascii_case(proxy_name.as_bytes()))
    });
    if !present {
        return;
    }
    let kept: Vec<Vec<u8>> = headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .map(trim)
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = trim(p.split(|&b| b == b'=').next().unwrap_or_default());
            !name.eq_ignore_ascii_case(proxy_name.as_bytes())
        })
        .map(<[u8]>::to_vec)
        .collect();
    let joined = join_pairs(kept.iter().map(Vec::as_slice));
    set_cookie_request_header(headers, joined);
}

/// Joins cookie pairs into one Cookie header value.
pub fn join_pairs<'a>(pairs: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pairs {
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(p);
    }
    out
}

/// Replaces the Cookie headers with one value (or none when empty).
pub fn set_cookie_request_header(headers: &mut HeaderMap, value: Vec<u8>) {
    headers.remove(header::COOKIE);
    if value.is_empty() {
        return;
    }
    // Every byte came from valid header values; a failure only drops the header. Taken
    // over without a copy.
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
        headers.insert(header::COOKIE, v);
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// The Set-Cookie for sessiongate's own cookie. `max_age` 0 deletes it.
pub fn proxy_set_cookie(
    name: &str,
    id: Option<&SessionId>,
    max_age_secs: u64,
    same_site: crate::cookies::SameSite,
) -> HeaderValue {
    let value = id.map(SessionId::cookie_value).unwrap_or_default();
    let line = format!(
        "{name}={value}; Path=/; Max-Age={max_age_secs}; HttpOnly; Secure; SameSite={}",
        same_site.as_str()
    );
    // The name is a validated token and the value base64url: always a valid header.
    HeaderValue::from_str(&line).unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_classes_are_the_rfc_sets() {
        for b in 0..=255u8 {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            let octet = b == 0x21
                || (0x23..=0x2b).contains(&b)
                || (0x2d..=0x3a).contains(&b)
                || (0x3c..=0x5b).contains(&b)
                || (0x5d..=0x7e).contains(&b);
            assert_eq!(is_tchar(b), tchar, "tchar {b:#x}");
            assert_eq!(is_cookie_octet(b), octet, "cookie-octet {b:#x}");
        }
    }

    fn id(b: u8) -> SessionId {
        SessionId::from_bytes([b; ID_BYTES])
    }

    #[test]
    fn cookie_value_round_trips_and_is_strict() {
        let i = id(7);
        let v = i.cookie_value();
        assert_eq!(v.len(), COOKIE_VALUE_LEN);
        assert_eq!(SessionId::parse(v.as_bytes()), Some(i));
        assert_eq!(SessionId::parse(&v.as_bytes()[1..]), None, "short");
        assert_eq!(SessionId::parse(format!("{v}A").as_bytes()), None, "long");
        assert_eq!(
            SessionId::parse(v.replace(&v[..1], "+").as_bytes()),
            None,
            "alphabet"
        );
        assert_eq!(SessionId::parse(&[b'='; 43]), None);
        // The last character carries 2 unused bits: only the canonical spelling counts.
        let mut noncanon = v.clone().into_bytes();
        noncanon[42] = if noncanon[42] == b'B' { b'C' } else { b'B' };
        assert!(SessionId::parse(&noncanon).is_none() || noncanon == v.as_bytes());
    }

    #[test]
    fn debug_never_shows_the_id() {
        let i = id(9);
        let shown = format!("{i:?}");
        assert!(!shown.contains(&i.cookie_value()));
        assert!(shown.contains(&i.key().to_string()));
    }

    fn guard() -> NameGuard {
        NameGuard::new(["PHPSESSID", "my_sid"])
    }

    fn split(line: &str) -> (Presented, Vec<String>, usize, usize) {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_bytes(line.as_bytes()).unwrap(),
        );
        let s = split_request_cookies(&h, "sg", &guard());
        let kept = s
            .kept
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        (s.presented, kept, s.malformed, s.protected)
    }

    #[test]
    fn split_takes_out_proxy_and_vaulted_cookies() {
        let v = id(1).cookie_value();
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            format!("a=1; sg={v}; PHPSESSID=evil").parse().unwrap(),
        );
        h.append(header::COOKIE, "b=2".parse().unwrap());
        let s = split_request_cookies(&h, "sg", &guard());
        assert_eq!(s.presented, Presented::Valid(id(1).key()));
        assert_eq!(s.kept, vec![&b"a=1"[..], b"b=2"]);
        assert_eq!(s.protected, 1);
    }

    #[test]
    fn every_spelling_of_a_vaulted_name_is_dropped() {
        for line in [
            "my.sid=X",
            "my%2Esid=X",
            "phpsessid=X",
            "PHP%53ESSID=X",
            "PHPSESSID%5Bx%5D=1",
            "SG=x",
        ] {
            let (_, kept, _, protected) = split(line);
            assert!(kept.is_empty(), "{line}: kept {kept:?}");
            assert_eq!(protected, 1, "{line}");
        }
    }

    #[test]
    fn only_strict_pairs_are_kept() {
        let (_, kept, malformed, _) = split(
            "a=1; $Version=1; b=\"q\"; c=x y; d=\"unbalanced; e=1,f=2; noequals; g=ok; my[sid=1; h=\"x\"y\"",
        );
        assert_eq!(kept, vec!["a=1", "b=\"q\"", "g=ok"]);
        assert_eq!(malformed, 7);
    }

    #[test]
    fn conflicting_proxy_cookies_are_ambiguous() {
        let line = format!("sg={}; sg={}", id(1).cookie_value(), id(2).cookie_value());
        assert_eq!(split(&line).0, Presented::Ambiguous);
        assert_eq!(split("sg=short").0, Presented::Malformed);
        assert_eq!(split("a=1").0, Presented::Absent);
    }
}
