//! The name normaliser: does a cookie or parameter name *read as* a vaulted name on some
//! stack?
//!
//! Back ends do not compare names byte for byte. PHP url-decodes cookie and parameter
//! names, drops leading spaces, cuts them at NUL and turns `.`, space and an unmatched `[`
//! into `_` (`php-src main/php_variables.c`), and reads `name[x]` as the array `name`;
//! Python frameworks `str.strip()` names (Unicode whitespace, on a latin-1 or UTF-8
//! decoding of the bytes); some servers compare names case-insensitively; `+` is a space
//! in form decoding. A client spelling that any of these readings maps onto a vaulted name
//! could stand in for the vaulted cookie, so it is treated as the vaulted name.
//!
//! Each reading is one entry of [`READINGS`]; a name's *keys* are its readings, lower-cased
//! (every comparison ignores case). Two names clash when their key sets meet. Adding a
//! stack's reading is one table entry; the property tests in `tests/name_readings.rs`
//! model each stack's parser independently and check that nothing it reads as vaulted
//! survives.

use std::borrow::Cow;

/// One way a back end reads a name.
pub struct Reading {
    /// Who reads names this way, for the documentation and the tests.
    pub stacks: &'static str,
    pub apply: fn(&[u8]) -> Cow<'_, [u8]>,
}

/// Every reading a name is compared under.
pub const READINGS: &[Reading] = &[
    Reading {
        stacks: "byte-exact (RFC 6265, Tomcat, Go, Rack)",
        apply: exact,
    },
    Reading {
        stacks: "percent-decoded once (PHP cookies and parameters; every query parser)",
        apply: |n| Cow::Owned(percent_decode(n, false)),
    },
    Reading {
        stacks: "form-decoded, `+` as space, then PHP's variable-name mangling",
        apply: |n| Cow::Owned(php_variable_name(&percent_decode(n, true))),
    },
    Reading {
        stacks: "PHP's variable-name mangling of the raw bytes",
        apply: |n| Cow::Owned(php_variable_name(n)),
    },
    Reading {
        stacks: "percent-decoded twice (apps that decode again)",
        apply: |n| Cow::Owned(percent_decode(&percent_decode(n, true), true)),
    },
    Reading {
        stacks: "Unicode whitespace stripped, UTF-8 (Python str.strip, JS trim)",
        apply: |n| Cow::Owned(strip_unicode_whitespace(&percent_decode(n, true))),
    },
    Reading {
        stacks: "Unicode whitespace stripped, latin-1 (WSGI decodes headers as latin-1)",
        apply: |n| Cow::Owned(strip_latin1_whitespace(&percent_decode(n, true))),
    },
    Reading {
        stacks: "cut at the first NUL (C strings)",
        apply: |n| {
            let decoded = percent_decode(n, true);
            let end = decoded
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(decoded.len());
            Cow::Owned(decoded[..end].to_vec())
        },
    },
];

fn exact(n: &[u8]) -> Cow<'_, [u8]> {
    Cow::Borrowed(n)
}

/// A set of protected names (the vault), compiled once, answering "does this client name
/// read as one of them anywhere?".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameGuard {
    names: Vec<String>,
    keys: Vec<Vec<u8>>,
    /// The shortest key: no reading makes a name more than 1.5 times longer (Unicode
    /// lower-casing), so a name under half of it cannot match. Keeps forms with
    /// millions of short fields cheap.
    shortest: usize,
}

impl NameGuard {
    pub fn new<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> NameGuard {
        let mut guard = NameGuard::default();
        for n in names {
            let n = n.as_ref();
            guard.names.push(n.to_owned());
            for k in keys(n.as_bytes()) {
                if !guard.keys.contains(&k) {
                    guard.keys.push(k);
                }
            }
        }
        guard.shortest = guard.keys.iter().map(Vec::len).min().unwrap_or(0);
        guard
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The protected names, as configured.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether `name`, under any reading, is one of the protected names.
    pub fn matches(&self, name: &[u8]) -> bool {
        if self.keys.is_empty() || name.len().saturating_mul(2) < self.shortest {
            return false;
        }
        if is_plain(name) {
            // Every reading of a plain name is the name itself: one comparison per key,
            // without the readings' allocations (the common case on every request).
            return self.keys.iter().any(|k| k.eq_ignore_ascii_case(name));
        }
        keys(name).iter().any(|k| self.keys.contains(k))
    }
}

/// A name no reading changes but for case: ASCII letters, digits, `_` and `-` only (no
/// escape, `+`, space, `.`, `[`, NUL, whitespace or non-ASCII byte for a reading to act
/// on). `names::tests::plain_names_read_only_as_themselves` holds [`READINGS`] to it.
fn is_plain(name: &[u8]) -> bool {
    name.iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A name's readings, lower-cased, deduplicated.
pub fn keys(name: &[u8]) -> Vec<Vec<u8>> {
    if is_plain(name) {
        return vec![name.to_ascii_lowercase()];
    }
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(READINGS.len());
    for r in READINGS {
        let mut k = (r.apply)(name).into_owned();
        k.make_ascii_lowercase();
        if let Ok(s) = std::str::from_utf8(&k) {
            if !s.is_ascii() {
                k = s.to_lowercase().into_bytes();
            }
        }
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

/// Decodes `%XX` (and, with `plus`, `+` as a space); invalid escapes stay as they are,
/// as every decoder here leaves them.
pub fn percent_decode(s: &[u8], plus: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let escaped = (s[i] == b'%')
            .then(|| hex_pair(s.get(i + 1), s.get(i + 2)))
            .flatten();
        match (s[i], escaped) {
            (_, Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', None) if plus => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn hex_pair(a: Option<&u8>, b: Option<&u8>) -> Option<u8> {
    let hi = (*a? as char).to_digit(16)?;
    let lo = (*b? as char).to_digit(16)?;
    u8::try_from(hi * 16 + lo).ok()
}

/// How PHP turns a decoded cookie or parameter name into a variable name
/// (`php_register_variable_ex`): leading spaces dropped, cut at NUL, `.` and space become
/// `_` up to the first `[`; `base[...]` with a closing `]` is the array `base`, and an
/// unmatched `[` becomes `_`. Cookie names also lose leading whitespace first
/// (`php_default_treat_data`).
pub fn php_variable_name(name: &[u8]) -> Vec<u8> {
    let start = name
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
        .unwrap_or(name.len());
    let name = &name[start..];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let name = &name[..end];
    let mut out = Vec::with_capacity(name.len());
    for (i, &b) in name.iter().enumerate() {
        match b {
            b'[' => {
                if name[i + 1..].contains(&b']') {
                    // An array: the variable is the base name.
                    return out;
                }
                out.push(b'_');
                // After an unmatched `[`, PHP stops mangling.
                out.extend_from_slice(&name[i + 1..]);
                return out;
            }
            b' ' | b'.' => out.push(b'_'),
            b => out.push(b),
        }
    }
    out
}

fn strip_unicode_whitespace(name: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(name) {
        Ok(s) => s.trim().as_bytes().to_vec(),
        Err(_) => name.to_vec(),
    }
}

/// Python's `str.strip()` on a latin-1 decoding: ASCII whitespace, 0x1c-0x1f, 0x85 and
/// 0xa0.
fn strip_latin1_whitespace(name: &[u8]) -> Vec<u8> {
    let ws = |b: &u8| matches!(b, 0x09..=0x0d | 0x1c..=0x20 | 0x85 | 0xa0);
    let start = name.iter().position(|b| !ws(b)).unwrap_or(name.len());
    let end = name.iter().rposition(|b| !ws(b)).map_or(start, |e| e + 1);
    name[start..end].to_vec()
}

/// Whether a field name names one of `fields` as a whole or as one component of a nested
/// name (`user[password]`, `user.password`), under every reading.
pub fn names_field(guard: &NameGuard, name: &[u8]) -> bool {
    if guard.matches(name) {
        return true;
    }
    let decoded = percent_decode(name, true);
    decoded
        .split(|b| matches!(b, b'[' | b']' | b'.'))
        .filter(|c| !c.is_empty())
        .any(|c| guard.matches(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The slow path: every reading, without the plain-name shortcut.
    fn all_readings(name: &[u8]) -> Vec<Vec<u8>> {
        READINGS
            .iter()
            .map(|r| {
                let mut k = (r.apply)(name).into_owned();
                k.make_ascii_lowercase();
                k
            })
            .collect()
    }

    proptest! {
        /// The shortcut in `keys` and `matches` is right only while no reading changes a
        /// plain name: a reading added later that does fails here.
        #[test]
        fn plain_names_read_only_as_themselves(
            base in "[A-Za-z0-9_-]{1,12}",
            special in prop::sample::select(vec!["", ".", "%", "%41", "+", " ", "[", "]", "\0", "\t", "\u{a0}", "\u{3000}"]),
            at in 0usize..12,
        ) {
            // A name with one byte a reading might act on, or none: whatever `is_plain`
            // lets through must read only as itself.
            let mut name = base;
            name.insert_str(at.min(name.len()), special);
            if is_plain(name.as_bytes()) {
                let lower = name.to_ascii_lowercase().into_bytes();
                for k in all_readings(name.as_bytes()) {
                    prop_assert_eq!(&k, &lower, "name {:?}", name);
                }
                prop_assert_eq!(keys(name.as_bytes()), vec![lower]);
            }
        }

        /// Names made from the vaulted one by the substitutions the readings undo (and
        /// some they do not), so that both answers come up often.
        #[test]
        fn the_shortcut_answers_as_the_readings_do(
            vaulted in prop::sample::select(vec!["ab", "a_b", "a.b", "a-b", "a b"]),
            swaps in prop::collection::vec(
                prop::sample::select(vec!["", "_", ".", " ", "+", "-", "%2E", "%5F", "%20", "A", "B"]),
                3,
            ),
            affix in prop::sample::select(vec!["", " ", "%20", "[x]", "%00", "\u{a0}"]),
        ) {
            let g = NameGuard::new([vaulted]);
            let mut name = String::new();
            for (i, c) in vaulted.chars().enumerate() {
                match swaps.get(i).copied().filter(|s| !s.is_empty()) {
                    Some(s) => name.push_str(s),
                    None => name.push(c),
                }
            }
            name.push_str(affix);
            let vaulted_keys = all_readings(vaulted.as_bytes());
            let slow = all_readings(name.as_bytes()).iter().any(|k| vaulted_keys.contains(k));
            prop_assert_eq!(g.matches(name.as_bytes()), slow, "name {:?}", name);
        }
    }

    fn guard() -> NameGuard {
        NameGuard::new(["PHPSESSID", "my_sid", "connect.sid"])
    }

    #[test]
    fn spellings_that_read_as_vaulted() {
        let g = guard();
        for n in [
            &b"PHPSESSID"[..],
            b"phpsessid",
            b"PHP%53ESSID",
            b"PHP%2553ESSID",
            b"%20PHPSESSID",
            b"+PHPSESSID",
            b"PHPSESSID%00junk",
            b"PHPSESSID[x]",
            b"my.sid",
            b"my sid",
            b"my[sid",
            b"my%2Esid",
            b"\xc2\xa0PHPSESSID",
            b"\xe3\x80\x80PHPSESSID",
            b"\xa0PHPSESSID",
            b"connect_sid",
            b"CONNECT.SID",
        ] {
            assert!(
                g.matches(n),
                "{:?} should read as vaulted",
                String::from_utf8_lossy(n)
            );
        }
        for n in [
            &b"PHPSESSID2"[..],
            b"sid",
            b"my_sid_2",
            b"xPHPSESSID",
            b"theme",
        ] {
            assert!(
                !g.matches(n),
                "{:?} is not vaulted",
                String::from_utf8_lossy(n)
            );
        }
    }

    #[test]
    fn php_mangling() {
        assert_eq!(php_variable_name(b" a.b c"), b"a_b_c");
        assert_eq!(php_variable_name(b"a[b]"), b"a");
        assert_eq!(php_variable_name(b"a[b.c"), b"a_b.c");
        assert_eq!(php_variable_name(b"a\0b"), b"a");
    }

    #[test]
    fn nested_credential_fields() {
        let g = NameGuard::new(["password"]);
        assert!(names_field(&g, b"user[password]"));
        assert!(names_field(&g, b"user.Password"));
        assert!(names_field(&g, b"pass%77ord"));
        assert!(!names_field(&g, b"password_hint"));
    }
}
