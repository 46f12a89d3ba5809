//! The vault: the app's session cookies, kept server-side in the session record.
//!
//! On the way back, every Set-Cookie of a vaulted name is taken out of the response and
//! turned into a [`VaultChange`] (honouring `Path`, `Max-Age`/`Expires` and deletion);
//! the browser never sees it. An app that tries to set sessiongate's own cookie has that
//! line dropped too. On the way in, the record's cookies that path-match the request are
//! added to the Cookie header for the app, and vaulted names are removed from the URL
//! (`;jsessionid=` path parameters, `?PHPSESSID=` query parameters), which are fixation
//! paths of their own.

use http::header::{self, HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::cookies::SetCookie;
use crate::names::NameGuard;

/// One app cookie held for a session. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultCookie {
    pub name: String,
    pub value: String,
    pub path: String,
    pub expires_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VaultChange {
    Set(VaultCookie),
    Remove { name: String, path: String },
}

/// Takes vaulted Set-Cookie lines (and any attempt to set `proxy_cookie`) out of a
/// response, returning what they change in the vault.
pub fn capture(
    headers: &mut HeaderMap,
    vaulted: &NameGuard,
    proxy_cookie: &str,
    request_path: &str,
    now_ms: u64,
) -> Vec<VaultChange> {
    // Taken out of the map (one lookup, no copies); the lines that pass go back in order,
    // each as soon as it is read.
    let lines: Vec<HeaderValue> = match headers.entry(header::SET_COOKIE) {
        http::header::Entry::Occupied(e) => e.remove_entry_mult().1.collect(),
        http::header::Entry::Vacant(_) => return Vec::new(),
    };
    let mut changes = Vec::new();
    for line in lines {
        let Ok(c) = SetCookie::parse(line.as_bytes()) else {
            // Unparseable lines are dropped later, by hardening.
            headers.append(header::SET_COOKIE, line);
            continue;
        };
        if c.name == proxy_cookie.as_bytes() {
            warn!("the app tried to set sessiongate's own cookie; dropped");
            continue;
        }
        if !vaulted.matches(c.name) {
            headers.append(header::SET_COOKIE, line);
            continue;
        }
        match change_for(&c, request_path, now_ms) {
            Some(change) => changes.push(change),
            None => warn!("a vaulted cookie with a non-UTF-8 value was dropped"),
        }
    }
    changes
}

fn change_for(c: &SetCookie<'_>, request_path: &str, now_ms: u64) -> Option<VaultChange> {
    let name = std::str::from_utf8(c.name).ok()?.to_owned();
    let path = c
        .attributes
        .iter()
        .filter(|a| a.is("path"))
        .filter_map(|a| std::str::from_utf8(a.value).ok())
        .next_back()
        .filter(|p| p.starts_with('/'))
        .map_or_else(|| default_path(request_path), str::to_owned);
    // Max-Age wins over Expires (RFC 6265bis 5.6.2); the last valid one of each counts.
    let max_age = c
        .attributes
        .iter()
        .filter(|a| a.is("max-age"))
        .filter_map(|a| std::str::from_utf8(a.value).ok()?.parse::<i64>().ok())
        .next_back();
    let expires = c
        .attributes
        .iter()
        .filter(|a| a.is("expires"))
        .filter_map(|a| httpdate::parse_http_date(std::str::from_utf8(a.value).ok()?).ok())
        .next_back()
        .map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        });
    let expires_at = match (max_age, expires) {
        (Some(secs), _) if secs <= 0 => return Some(VaultChange::Remove { name, path }),
        // An app-supplied Max-Age can be anything: saturate, never overflow.
        (Some(secs), _) => {
            Some(now_ms.saturating_add(u64::try_from(secs).unwrap_or(0).saturating_mul(1000)))
        }
        (None, Some(at)) if at <= now_ms => return Some(VaultChange::Remove { name, path }),
        (None, at) => at,
    };
    let value = std::str::from_utf8(c.value).ok()?.to_owned();
    Some(VaultChange::Set(VaultCookie {
        name,
        value,
        path,
        expires_at,
    }))
}

/// RFC 6265 5.1.4 default-path: the request path up to its last `/`.
fn default_path(request_path: &str) -> String {
    match request_path.rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(i) => request_path[..i].to_owned(),
    }
}

/// Applies changes to a vault: a cookie is identified by name and path.
pub fn apply(vault: &mut Vec<VaultCookie>, changes: &[VaultChange]) {
    for change in changes {
        let (name, path) = match change {
            VaultChange::Set(c) => (&c.name, &c.path),
            VaultChange::Remove { name, path } => (name, path),
        };
        vault.retain(|c| !(c.name == *name && c.path == *path));
        if let VaultChange::Set(c) = change {
            // Longest path first, the order `write_pairs` sends them in.
            let at = vault.partition_point(|held| held.path.len() >= c.path.len());
            vault.insert(at, c.clone());
        }
    }
}

/// Whether applying `changes` leaves `vault` as it is, but for cookie expiries moved
/// forward from ones that still run at least `slack` past `now`: the app re-sending the
/// cookie it already set (PHP, express-session with `rolling`, Django with
/// `SESSION_SAVE_EVERY_REQUEST`). Such a response needs no store write; the later
/// expiries are bookkeeping, written with the session's activity (at most once per
/// `touch_interval`, which is `slack`, so a skipped expiry cannot lapse before then).
pub fn unchanged_by(vault: &[VaultCookie], changes: &[VaultChange], now: u64, slack: u64) -> bool {
    // Decided change by change, without building the vault after them (this runs on
    // every response that sets a vaulted cookie): only the last change to a (name,
    // path) decides what the vault holds for it. `vault_change_checks` holds this to
    // applying the changes.
    changes.iter().enumerate().all(|(i, change)| {
        let key = change_key(change);
        if changes[i + 1..]
            .iter()
            .any(|later| change_key(later) == key)
        {
            return true;
        }
        let held = vault
            .iter()
            .find(|c| (c.name.as_str(), c.path.as_str()) == key);
        match (change, held) {
            (VaultChange::Remove { .. }, held) => held.is_none(),
            (VaultChange::Set(_), None) => false,
            (VaultChange::Set(new), Some(old)) => {
                old.value == new.value
                    && match (old.expires_at, new.expires_at) {
                        (a, b) if a == b => true,
                        (Some(old), Some(new)) => new > old && old >= now.saturating_add(slack),
                        _ => false,
                    }
            }
        }
    })
}

fn change_key(change: &VaultChange) -> (&str, &str) {
    match change {
        VaultChange::Set(c) => (&c.name, &c.path),
        VaultChange::Remove { name, path } => (name, path),
    }
}

/// RFC 6265 5.1.4 path-match.
fn path_matches(cookie_path: &str, request_path: &str) -> bool {
    match request_path.strip_prefix(cookie_path) {
        Some(rest) => rest.is_empty() || cookie_path.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// Appends the vault's cookies for a request to a Cookie header value, as `name=value`
/// pairs separated by `; `, longest path first (the order a browser would send them in).
/// Written into the caller's buffer: this runs on every request of a session.
pub fn write_pairs(vault: &[VaultCookie], request_path: &str, now_ms: u64, out: &mut Vec<u8>) {
    let sends = |c: &&VaultCookie| {
        c.expires_at.is_none_or(|t| t > now_ms) && path_matches(&c.path, request_path)
    };
    let write = |c: &VaultCookie| {
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(c.name.as_bytes());
        out.push(b'=');
        out.extend_from_slice(c.value.as_bytes());
    };
    // `apply` keeps a vault in that order; a record written by an older version may not
    // be, and is sorted here (stable: equal paths keep the vault's order either way).
    if vault.is_sorted_by(|a, b| a.path.len() >= b.path.len()) {
        vault.iter().filter(sends).for_each(write);
    } else {
        let mut matching: Vec<&VaultCookie> = vault.iter().filter(sends).collect();
        matching.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        matching.into_iter().for_each(write);
    }
}

/// Removes every field whose name reads as a protected name from a query string or an
/// `x-www-form-urlencoded` body, keeping every other field byte for byte. Both `&` and
/// `;` separate fields (PHP's `arg_separator.input`, older Python): a field hidden
/// behind a `;` is found whichever the app uses. Returns the new bytes when something was
/// removed.
pub fn strip_fields(s: &[u8], protected: &NameGuard) -> Option<Vec<u8>> {
    if protected.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(s.len());
    let mut changed = false;
    // The separator after the last kept field: it joins that field to the next kept one.
    let mut pending: Option<Option<u8>> = None;
    for piece in s.split_inclusive(|&b| b == b'&' || b == b';') {
        let (field, sep) = match piece.split_last() {
            Some((&b, field)) if b == b'&' || b == b';' => (field, Some(b)),
            _ => (piece, None),
        };
        let name = field.split(|&b| b == b'=').next().unwrap_or_default();
        if protected.matches(name) {
            changed = true;
            continue;
        }
        if let Some(Some(sep)) = pending {
            out.push(sep);
        }
        out.extend_from_slice(field);
        pending = Some(sep);
    }
    changed.then_some(out)
}

/// Removes vaulted names from a URL in a response header (`Location`): `;jsessionid=`
/// path parameters and query fields that URL-rewriting apps such as Tomcat add. Works on
/// bytes, since apps write non-ASCII URLs as latin-1. Returns the new value when
/// something was removed.
pub fn strip_location(location: &[u8], protected: &NameGuard) -> Option<Vec<u8>> {
    if protected.is_empty() {
        return None;
    }
    let (rest, fragment) = split_at_byte(location, b'#');
    let (path, query) = split_at_byte(rest, b'?');
    let mut changed = false;
    let mut out = Vec::with_capacity(location.len());
    for (i, seg) in path.split(|&b| b == b'/').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        let mut parts = seg.split(|&b| b == b';');
        out.extend_from_slice(parts.next().unwrap_or_default());
        for p in parts {
            let name = p.split(|&b| b == b'=').next().unwrap_or_default();
            if protected.matches(name) {
                changed = true;
            } else {
                out.push(b';');
                out.extend_from_slice(p);
            }
        }
    }
    if let Some(q) = query {
        match strip_fields(q, protected) {
            Some(stripped) => {
                changed = true;
                if !stripped.is_empty() {
                    out.push(b'?');
                    out.extend_from_slice(&stripped);
                }
            }
            None => {
                out.push(b'?');
                out.extend_from_slice(q);
            }
        }
    }
    if let Some(f) = fragment {
        out.push(b'#');
        out.extend_from_slice(f);
    }
    changed.then_some(out)
}

fn split_at_byte(s: &[u8], at: u8) -> (&[u8], Option<&[u8]>) {
    match s.iter().position(|&b| b == at) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

/// Whether a `;param` (`name=value`) of a path segment names a protected name.
pub fn is_protected_param(param: &str, protected: &NameGuard) -> bool {
    let name = param.split('=').next().unwrap_or_default();
    protected.matches(name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition `unchanged_by` answers for without building anything: the vault
    /// after the changes holds the same cookies, but for expiries moved forward from
    /// ones that still run at least `slack`.
    fn unchanged_by_applying(
        vault: &[VaultCookie],
        changes: &[VaultChange],
        now: u64,
        slack: u64,
    ) -> bool {
        let mut after = vault.to_vec();
        apply(&mut after, changes);
        after.len() == vault.len()
            && after.iter().all(|c| {
                vault.iter().any(|old| {
                    old.name == c.name
                        && old.path == c.path
                        && old.value == c.value
                        && match (old.expires_at, c.expires_at) {
                            (a, b) if a == b => true,
                            (Some(old), Some(new)) => new > old && old >= now.saturating_add(slack),
                            _ => false,
                        }
                })
            })
    }

    fn cookie_strategy() -> impl Strategy<Value = VaultCookie> {
        (
            prop::sample::select(vec!["a", "b"]),
            prop::sample::select(vec!["1", "2"]),
            prop::sample::select(vec!["/", "/x"]),
            prop::option::of(prop::sample::select(vec![50u64, 100, 150, 300])),
        )
            .prop_map(|(n, v, p, e)| VaultCookie {
                name: n.into(),
                value: v.into(),
                path: p.into(),
                expires_at: e,
            })
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn vault_change_checks(
            held in proptest::collection::vec(cookie_strategy(), 0..4),
            changes in proptest::collection::vec(
                proptest::prop_oneof![
                    cookie_strategy().prop_map(VaultChange::Set),
                    cookie_strategy().prop_map(|c| VaultChange::Remove { name: c.name, path: c.path }),
                ],
                0..4,
            ),
        ) {
            // A vault holds each (name, path) once.
            let mut vault: Vec<VaultCookie> = Vec::new();
            apply(&mut vault, &held.into_iter().map(VaultChange::Set).collect::<Vec<_>>());
            proptest::prop_assert_eq!(
                unchanged_by(&vault, &changes, 100, 20),
                unchanged_by_applying(&vault, &changes, 100, 20),
                "vault {:?} changes {:?}", vault, changes
            );
        }
    }

    const NOW: u64 = 1_000_000;

    fn vaulted() -> NameGuard {
        guard()
    }

    fn guard() -> NameGuard {
        NameGuard::new(["PHPSESSID", "JSESSIONID"])
    }

    #[test]
    fn re_sending_what_the_vault_holds_changes_nothing() {
        let held = |expires_at| VaultCookie {
            name: "PHPSESSID".into(),
            value: "abc".into(),
            path: "/".into(),
            expires_at,
        };
        let set = |c: VaultCookie| VaultChange::Set(c);
        let slack = 60_000;
        let vault = vec![held(None)];
        assert!(unchanged_by(&vault, &[set(held(None))], NOW, slack));
        assert!(unchanged_by(&vault, &[], NOW, slack));
        let other = VaultChange::Remove {
            name: "JSESSIONID".into(),
            path: "/".into(),
        };
        assert!(
            unchanged_by(&vault, &[other], NOW, slack),
            "removing what is not held"
        );
        // A new value, a new path, a removal, an expiry appearing: all real changes.
        let new_value = VaultCookie {
            value: "def".into(),
            ..held(None)
        };
        assert!(!unchanged_by(&vault, &[set(new_value)], NOW, slack));
        let new_path = VaultCookie {
            path: "/shop".into(),
            ..held(None)
        };
        assert!(!unchanged_by(&vault, &[set(new_path)], NOW, slack));
        let removal = VaultChange::Remove {
            name: "PHPSESSID".into(),
            path: "/".into(),
        };
        assert!(!unchanged_by(&vault, &[removal], NOW, slack));
        assert!(!unchanged_by(
            &vault,
            &[set(held(Some(NOW + 600_000)))],
            NOW,
            slack
        ));

        // An expiry moved forward is bookkeeping while the held one runs past the slack,
        // and a change once it would lapse first; moved back, it is always a change.
        let rolling = vec![held(Some(NOW + 300_000))];
        assert!(unchanged_by(
            &rolling,
            &[set(held(Some(NOW + 360_000)))],
            NOW,
            slack
        ));
        assert!(!unchanged_by(
            &rolling,
            &[set(held(Some(NOW + 360_000)))],
            NOW + 250_000,
            slack
        ));
        assert!(!unchanged_by(
            &rolling,
            &[set(held(Some(NOW + 200_000)))],
            NOW,
            slack
        ));
        assert!(!unchanged_by(&rolling, &[set(held(None))], NOW, slack));
    }

    #[test]
    fn capture_takes_vaulted_lines_only() {
        let mut h = HeaderMap::new();
        h.append(header::SET_COOKIE, "PHPSESSID=abc; path=/".parse().unwrap());
        h.append(header::SET_COOKIE, "theme=dark".parse().unwrap());
        h.append(header::SET_COOKIE, "sg=forged".parse().unwrap());
        h.append(
            header::SET_COOKIE,
            "JSESSIONID=x; Max-Age=0; Path=/shop".parse().unwrap(),
        );
        let changes = capture(&mut h, &vaulted(), "sg", "/login", NOW);
        assert_eq!(
            changes,
            vec![
                VaultChange::Set(VaultCookie {
                    name: "PHPSESSID".into(),
                    value: "abc".into(),
                    path: "/".into(),
                    expires_at: None
                }),
                VaultChange::Remove {
                    name: "JSESSIONID".into(),
                    path: "/shop".into()
                },
            ]
        );
        let left: Vec<_> = h.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(left, vec!["theme=dark"]);
    }

    #[test]
    fn expiry_and_default_path() {
        let mut h = HeaderMap::new();
        h.append(
            header::SET_COOKIE,
            "PHPSESSID=a; Max-Age=60".parse().unwrap(),
        );
        h.append(
            header::SET_COOKIE,
            "JSESSIONID=b; Expires=Thu, 01 Jan 1970 00:00:01 GMT"
                .parse()
                .unwrap(),
        );
        let changes = capture(&mut h, &vaulted(), "sg", "/app/login", NOW);
        assert_eq!(
            changes[0],
            VaultChange::Set(VaultCookie {
                name: "PHPSESSID".into(),
                value: "a".into(),
                path: "/app".into(),
                expires_at: Some(NOW + 60_000)
            })
        );
        assert!(matches!(changes[1], VaultChange::Remove { .. }));
    }

    #[test]
    fn apply_and_inject_respect_path_and_expiry() {
        let mut v = Vec::new();
        let set = |name: &str, value: &str, path: &str, exp: Option<u64>| {
            VaultChange::Set(VaultCookie {
                name: name.into(),
                value: value.into(),
                path: path.into(),
                expires_at: exp,
            })
        };
        apply(
            &mut v,
            &[
                set("A", "1", "/", None),
                set("B", "2", "/admin", None),
                set("C", "3", "/", Some(NOW - 1)),
                set("A", "4", "/", None),
            ],
        );
        assert_eq!(pairs(&v, "/admin/x"), "B=2; A=4");
        assert_eq!(pairs(&v, "/administrator"), "A=4");
        apply(
            &mut v,
            &[VaultChange::Remove {
                name: "A".into(),
                path: "/".into(),
            }],
        );
        assert_eq!(pairs(&v, "/"), "");
    }

    fn pairs(vault: &[VaultCookie], path: &str) -> String {
        let mut out = Vec::new();
        write_pairs(vault, path, NOW, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_vault_in_any_order_sends_the_longest_path_first() {
        let c = |name: &str, path: &str| VaultCookie {
            name: name.into(),
            value: "v".into(),
            path: path.into(),
            expires_at: None,
        };
        // As a record written before `apply` kept the order could hold it.
        let v = vec![
            c("A", "/"),
            c("B", "/admin"),
            c("C", "/"),
            c("D", "/admin/x"),
        ];
        assert_eq!(pairs(&v, "/admin/x/y"), "D=v; B=v; A=v; C=v");
        let mut sorted = Vec::new();
        apply(
            &mut sorted,
            &v.iter().cloned().map(VaultChange::Set).collect::<Vec<_>>(),
        );
        let names: Vec<&str> = sorted.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["D", "B", "A", "C"]);
        assert_eq!(pairs(&sorted, "/admin/x/y"), "D=v; B=v; A=v; C=v");
    }

    #[test]
    fn fields_are_stripped_under_every_reading() {
        let g = guard();
        let strip = |s: &str| strip_fields(s.as_bytes(), &g).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(
            strip("PHPSESSID=evil&username=alice&phpsessid=x&password=p%26w").as_deref(),
            Some("username=alice&password=p%26w")
        );
        assert_eq!(strip("a=1;PHPSESSID=X;b=2").as_deref(), Some("a=1;b=2"));
        assert_eq!(strip("%20PHPSESSID=X&a=1").as_deref(), Some("a=1"));
        assert_eq!(strip("a=1&+PHPSESSID=X").as_deref(), Some("a=1"));
        assert_eq!(strip("a=1&PHPSESSID%00junk=X&b").as_deref(), Some("a=1&b"));
        assert_eq!(strip("PHPSESSID[x]=1").as_deref(), Some(""));
        assert_eq!(strip("username=alice"), None);
        assert_eq!(strip("a=1&&b=2"), None);
    }

    #[test]
    fn locations_lose_vaulted_ids() {
        let g = guard();
        let strip = |s: &[u8]| strip_location(s, &g);
        assert_eq!(
            strip(b"/account;jsessionid=ABC?x=1&PHPSESSID=2#top").as_deref(),
            Some(&b"/account?x=1#top"[..])
        );
        assert_eq!(
            strip(b"https://h/a;jsessionid=ABC").as_deref(),
            Some(&b"https://h/a"[..])
        );
        assert_eq!(
            strip(b"/caf\xe9;jsessionid=ABC").as_deref(),
            Some(&b"/caf\xe9"[..])
        );
        assert_eq!(strip(b"/account?x=1"), None);
    }

    #[test]
    fn path_params() {
        let g = guard();
        assert!(is_protected_param("jsessionid=EVIL", &g));
        assert!(is_protected_param("JSESSIONID", &g));
        assert!(!is_protected_param("v=1", &g));
    }
}
