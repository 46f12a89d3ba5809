//! Set-Cookie parsing and hardening.
//!
//! Every Set-Cookie that reaches the browser passes through [`harden`]: it gains
//! `HttpOnly` (unless the route lists the cookie as script-readable), `Secure`, and a
//! `SameSite` at least as strict as the route's policy; `Domain` is removed when the
//! route asks. Every other attribute is kept byte for byte, including ones this code
//! does not know (`Partitioned`, `Priority`, ...), and in its original order.
//!
//! Parsing follows RFC 6265bis section 5.6 (what browsers do), on bytes so that
//! non-UTF-8 values pass through untouched:
//! - the name-value pair ends at the first `;`; name and value are split at the first
//!   `=` and trimmed of spaces and tabs; without `=` the whole pair is the value of a
//!   cookie with an empty name;
//! - quotes are not special: `a="b;c"` is the cookie `a="b` with an attribute `c"`;
//! - empty attributes (`;;`) are dropped, attribute names are case-insensitive, and for a
//!   repeated attribute the last one counts.
//!
//! A line a browser would ignore (control characters, an empty name *and* value, or a
//! name plus value longer than 4096 bytes) is [`Unparseable`]: the proxy drops that
//! header from the response and logs it, rather than forward something the app did
//! not mean and the browser would not keep.

use http::HeaderValue;

use serde::Deserialize;

/// SameSite, ordered from least to most strict so that `max` gives the stricter one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SameSite {
    None,
    #[default]
    Lax,
    Strict,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::None => "None",
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
        }
    }
}

/// How a route hardens the app's cookies.
#[derive(Debug, Clone)]
pub struct CookiePolicy {
    pub same_site: SameSite,
    pub strip_domain: bool,
    pub script_readable: Vec<String>,
}

/// RFC 6265bis limit on name + value.
const MAX_NAME_VALUE: usize = 4096;

/// Why a Set-Cookie line was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unparseable {
    #[error("contains a control character")]
    ControlCharacter,
    #[error("has an empty name and value")]
    Empty,
    #[error("name and value exceed 4096 bytes")]
    TooLong,
}

/// One attribute of a Set-Cookie line, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'a> {
    /// The whole attribute, trimmed (`Max-Age=0`).
    pub raw: &'a [u8],
    pub name: &'a [u8],
    pub value: &'a [u8],
}

impl Attribute<'_> {
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }
}

/// A parsed Set-Cookie line borrowing from the header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetCookie<'a> {
    /// The trimmed name-value pair as written (`name=value`, or `value` when nameless).
    pub pair: &'a [u8],
    pub name: &'a [u8],
    pub value: &'a [u8],
    pub attributes: Vec<Attribute<'a>>,
}

impl<'a> SetCookie<'a> {
    pub fn parse(line: &'a [u8]) -> Result<SetCookie<'a>, Unparseable> {
        if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(Unparseable::ControlCharacter);
        }
        let mut parts = line.split(|&b| b == b';');
        let pair = trim(parts.next().unwrap_or_default());
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (trim(&pair[..i]), trim(&pair[i + 1..])),
            None => (&pair[..0], pair),
        };
        if name.is_empty() && value.is_empty() {
            return Err(Unparseable::Empty);
        }
        if name.len() + value.len() > MAX_NAME_VALUE {
            return Err(Unparseable::TooLong);
        }
        let attributes = parts
            .map(trim)
            .filter(|a| !a.is_empty())
            .map(|raw| match raw.iter().position(|&b| b == b'=') {
                Some(i) => Attribute {
                    raw,
                    name: trim(&raw[..i]),
                    value: trim(&raw[i + 1..]),
                },
                None => Attribute {
                    raw,
                    name: raw,
                    value: &raw[..0],
                },
            })
            .collect();
        Ok(SetCookie {
            pair,
            name,
            value,
            attributes,
        })
    }

    /// The last valid `SameSite` value, as a browser would enforce it.
    pub fn same_site(&self) -> Option<SameSite> {
        self.attributes
            .iter()
            .filter(|a| a.is("samesite"))
            .filter_map(|a| parse_same_site(a.value))
            .next_back()
    }

    fn has(&self, name: &str) -> bool {
        self.attributes.iter().any(|a| a.is(name))
    }
}

fn parse_same_site(v: &[u8]) -> Option<SameSite> {
    [SameSite::Strict, SameSite::Lax, SameSite::None]
        .into_iter()
        .find(|s| v.eq_ignore_ascii_case(s.as_str().as_bytes()))
}

fn trim(s: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = s.iter().position(|b| !is_ws(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_ws(b)).map_or(start, |e| e + 1);
    &s[start..end]
}

/// Rewrites one Set-Cookie header value under the route's cookie policy.
pub fn harden(line: &HeaderValue, policy: &CookiePolicy) -> Result<HeaderValue, Unparseable> {
    let c = SetCookie::parse(line.as_bytes())?;
    // The stricter of what the app asked for and what the route requires. An invalid
    // SameSite value from the app counts as absent and is replaced.
    let same_site = c
        .same_site()
        .map_or(policy.same_site, |s| s.max(policy.same_site));
    let http_only = !policy
        .script_readable
        .iter()
        .any(|n| n.as_bytes() == c.name);

    let mut out = Vec::with_capacity(line.len() + 40);
    out.extend_from_slice(c.pair);
    let mut same_site_written = false;
    for a in &c.attributes {
        if a.is("samesite") {
            // Written once, where the app first put it.
            if !same_site_written {
                push_same_site(&mut out, same_site);
                same_site_written = true;
            }
            continue;
        }
        if policy.strip_domain && a.is("domain") {
            continue;
        }
        push_attr(&mut out, a.raw);
    }
    if http_only && !c.has("httponly") {
        push_attr(&mut out, b"HttpOnly");
    }
    // Always Secure; SameSite=None requires it anyway.
    if !c.has("secure") {
        push_attr(&mut out, b"Secure");
    }
    if !same_site_written {
        push_same_site(&mut out, same_site);
    }
    // Every byte came from a valid header value or is ASCII we wrote, so this cannot
    // fail; map it anyway rather than panic.
    HeaderValue::from_bytes(&out).map_err(|_| Unparseable::ControlCharacter)
}

fn push_attr(out: &mut Vec<u8>, attr: &[u8]) {
    out.extend_from_slice(b"; ");
    out.extend_from_slice(attr);
}

fn push_same_site(out: &mut Vec<u8>, same_site: SameSite) {
    push_attr(out, b"SameSite=");
    out.extend_from_slice(same_site.as_str().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(same_site: SameSite) -> CookiePolicy {
        CookiePolicy {
            same_site,
            strip_domain: false,
            script_readable: vec![],
        }
    }

    #[test]
    fn parse_splits_pair_and_attributes() {
        let c = SetCookie::parse(b" a = b ; Path=/ ;; HttpOnly").unwrap();
        assert_eq!(c.name, b"a");
        assert_eq!(c.value, b"b");
        assert_eq!(c.pair, b"a = b");
        assert_eq!(c.attributes.len(), 2);
        assert_eq!(c.attributes[0].name, b"Path");
        assert_eq!(c.attributes[0].value, b"/");
        assert!(c.attributes[1].is("httponly"));
    }

    #[test]
    fn nameless_cookie_has_empty_name() {
        let c = SetCookie::parse(b"justvalue; Secure").unwrap();
        assert_eq!(c.name, b"");
        assert_eq!(c.value, b"justvalue");
    }

    #[test]
    fn ignored_lines() {
        assert_eq!(SetCookie::parse(b"=").unwrap_err(), Unparseable::Empty);
        assert_eq!(
            SetCookie::parse(b" ; Path=/").unwrap_err(),
            Unparseable::Empty
        );
        assert_eq!(
            SetCookie::parse(b"a=\x01b").unwrap_err(),
            Unparseable::ControlCharacter
        );
        let long = format!("a={}", "x".repeat(4096));
        assert_eq!(
            SetCookie::parse(long.as_bytes()).unwrap_err(),
            Unparseable::TooLong
        );
    }

    #[test]
    fn last_valid_same_site_counts() {
        let c = SetCookie::parse(b"a=b; SameSite=Strict; samesite=bogus; SameSite=none").unwrap();
        assert_eq!(c.same_site(), Some(SameSite::None));
    }

    #[test]
    fn harden_adds_missing_flags_once() {
        let v = HeaderValue::from_static("a=b; Path=/");
        let out = harden(&v, &policy(SameSite::Lax)).unwrap();
        assert_eq!(out, "a=b; Path=/; HttpOnly; Secure; SameSite=Lax");
        // Idempotent: a hardened line is not changed again.
        assert_eq!(harden(&out, &policy(SameSite::Lax)).unwrap(), out);
    }
}
