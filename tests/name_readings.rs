//! Property tests for the name normaliser: "if this stack reads a name as the vaulted
//! name, sessiongate removed it".
//!
//! Each stack's Cookie parser is modelled here independently of `src/names.rs`, from its
//! source (php-src `main/php_variables.c`, django `http/cookie.py`, jshttp/cookie,
//! werkzeug `sansio/http.py`, Tomcat `Rfc6265CookieProcessor`). For generated Cookie
//! headers full of spellings of a vaulted name, the header sessiongate forwards (the
//! vault's pair first, then the client pairs it kept) is parsed by every model: whatever
//! value a stack finds under the vaulted name must be the vault's.
#![allow(clippy::unwrap_used)]

use http::header::{HeaderMap, HeaderValue, COOKIE};
use proptest::prelude::*;
use sessiongate::names::NameGuard;
use sessiongate::session::{join_pairs, split_request_cookies};

const VAULT_VALUE: &str = "VAULTVALUE";

fn url_decode(s: &[u8], plus: bool) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if plus && s[i] == b'+' { b' ' } else { s[i] });
        i += 1;
    }
    out
}

/// PHP: `php_default_treat_data` (cookies: split at `;`, leading whitespace skipped, name
/// and value url-decoded) and `php_register_variable_ex` (leading spaces, NUL, `.`/space/
/// `[` mangling, arrays); the first of equal names wins.
fn php(header: &[u8], name: &str) -> Vec<Vec<u8>> {
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut found = Vec::new();
    for pair in header.split(|&b| b == b';') {
        let pair: Vec<u8> = pair
            .iter()
            .copied()
            .skip_while(|b| b.is_ascii_whitespace())
            .collect();
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (&pair[..], &b""[..]),
        };
        let mut k = url_decode(k, true);
        while k.first() == Some(&b' ') {
            k.remove(0);
        }
        if let Some(z) = k.iter().position(|&b| b == 0) {
            k.truncate(z);
        }
        let mut var = Vec::new();
        for (i, &b) in k.iter().enumerate() {
            if b == b'[' {
                if !k[i + 1..].contains(&b']') {
                    var.push(b'_');
                    var.extend_from_slice(&k[i + 1..]);
                }
                break;
            }
            var.push(if b == b'.' || b == b' ' { b'_' } else { b });
        }
        if var.is_empty() || seen.contains(&var) {
            continue;
        }
        seen.push(var.clone());
        if var == name.replace(['.', ' '], "_").as_bytes() {
            found.push(url_decode(v, true));
        }
    }
    found
}

/// Django: the header is decoded as UTF-8 (`get_str_from_wsgi`), then `parse_cookie`
/// splits at `;`, `key, val = chunk.split("=", 1)`, both `str.strip()`ped (Unicode
/// whitespace and 0x1c-0x1f); the last wins.
fn django(header: &[u8], name: &str) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(header);
    let strip = |s: &str| -> String {
        s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
            .to_owned()
    };
    let mut last = None;
    for chunk in text.split(';') {
        let (k, v) = chunk.split_once('=').unwrap_or(("", chunk));
        if strip(k) == name {
            last = Some(strip(v).into_bytes());
        }
    }
    last.into_iter().collect()
}

/// jshttp/cookie (Express) and werkzeug (Flask): split at `;`, name and value trimmed of
/// spaces and tabs, the first wins.
fn first_wins_trimmed(header: &[u8], name: &str) -> Vec<Vec<u8>> {
    let trim = |s: &[u8]| -> Vec<u8> {
        let a = s
            .iter()
            .position(|b| *b != b' ' && *b != b'\t')
            .unwrap_or(s.len());
        let z = s
            .iter()
            .rposition(|b| *b != b' ' && *b != b'\t')
            .map_or(a, |z| z + 1);
        s[a..z].to_vec()
    };
    header
        .split(|&b| b == b';')
        .filter_map(|c| {
            let i = c.iter().position(|&b| b == b'=')?;
            (trim(&c[..i]) == name.as_bytes()).then(|| trim(&c[i + 1..]))
        })
        .take(1)
        .collect()
}

/// Tomcat's RFC 6265 processor: exact names, every value is a candidate (the session
/// manager tries each until one is live).
fn tomcat(header: &[u8], name: &str) -> Vec<Vec<u8>> {
    header
        .split(|&b| b == b';')
        .filter_map(|c| {
            let c: Vec<u8> = c
                .iter()
                .copied()
                .skip_while(|b| *b == b' ' || *b == b'\t')
                .collect();
            let i = c.iter().position(|&b| b == b'=')?;
            (c[..i] == *name.as_bytes()).then(|| {
                let v = c[i + 1..].to_vec();
                v.strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .map_or(v.clone(), <[u8]>::to_vec)
            })
        })
        .collect()
}

type Model = fn(&[u8], &str) -> Vec<Vec<u8>>;
const MODELS: [(&str, Model); 4] = [
    ("php", php),
    ("django", django),
    ("express/werkzeug", first_wins_trimmed),
    ("tomcat", tomcat),
];

/// Spellings of `name` that some stack may read as it.
fn spelling(name: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let variants = prop_oneof![
        Just(name.as_bytes().to_vec()),
        Just(name.to_ascii_lowercase().into_bytes()),
        Just(name.replace('_', ".").into_bytes()),
        Just(name.replace('_', " ").into_bytes()),
        Just(name.replace('_', "[").into_bytes()),
        Just(name.replace('.', "_").into_bytes()),
        Just(format!("{name}[x]").into_bytes()),
        Just(format!("{name}%00junk").into_bytes()),
        Just(format!("+{name}").into_bytes()),
        Just(format!("%20{name}").into_bytes()),
        Just(format!("\u{a0}{name}").into_bytes()),
        Just(format!("\u{3000}{name}").into_bytes()),
        Just([b"\xa0", name.as_bytes()].concat()),
        Just(format!("%{:02X}{}", name.as_bytes()[0], &name[1..]).into_bytes()),
        Just(format!("{name}\u{85}").into_bytes()),
        "[a-z_.]{1,6}".prop_map(String::into_bytes),
    ];
    (variants, prop::sample::select(vec!["", " ", "\t", "  "]))
        .prop_map(|(v, pad)| [pad.as_bytes(), &v].concat())
}

fn header_line(name: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        "[A-Za-z0-9]{1,8}".prop_map(String::into_bytes),
        Just(b"\"quoted\"".to_vec()),
        Just(b"a b".to_vec()),
        Just(b"x,y".to_vec()),
    ];
    prop::collection::vec((spelling(name), value), 1..6).prop_map(|pairs| {
        let mut line = Vec::new();
        for (i, (n, v)) in pairs.into_iter().enumerate() {
            if i > 0 {
                line.extend_from_slice(b"; ");
            }
            line.extend_from_slice(&n);
            line.push(b'=');
            line.extend_from_slice(&v);
        }
        line
    })
}

fn check(name: &'static str, line: &[u8]) -> Result<(), TestCaseError> {
    let Ok(value) = HeaderValue::from_bytes(line) else {
        return Ok(()); // not a header value a client could send
    };
    let mut headers = HeaderMap::new();
    headers.insert(COOKIE, value);
    let guard = NameGuard::new([name]);
    let split = split_request_cookies(&headers, "__Host-sg", &guard);
    let vault_pair = format!("{name}={VAULT_VALUE}").into_bytes();
    let forwarded =
        join_pairs(std::iter::once(vault_pair.as_slice()).chain(split.kept.iter().copied()));
    for (stack, model) in MODELS {
        for value in model(&forwarded, name) {
            prop_assert_eq!(
                String::from_utf8_lossy(&value).into_owned(),
                VAULT_VALUE,
                "{} reads a client value under {} in the forwarded {:?} (sent {:?})",
                stack,
                name,
                String::from_utf8_lossy(&forwarded),
                String::from_utf8_lossy(line)
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn no_stack_reads_a_client_value_under_a_vaulted_name(
        (name, line) in prop::sample::select(vec!["PHPSESSID", "my_sid", "connect.sid", "sessionid", "JSESSIONID"])
            .prop_flat_map(|n| (Just(n), header_line(n)))
    ) {
        check(name, &line)?;
    }
}

/// The models are not vacuous: on the raw client header (no sessiongate), each stack
/// reads the spellings it is known to read.
#[test]
fn the_models_read_what_the_stacks_read() {
    assert_eq!(php(b"my.sid=X", "my_sid"), vec![b"X".to_vec()]);
    // `PHPSESSID[x]` makes `$_COOKIE['PHPSESSID']` an array: it wins, and the session
    // module then ignores the cookie altogether.
    assert_eq!(
        php(b"PHPSESSID[x]=1; PHPSESSID=X", "PHPSESSID"),
        vec![b"1".to_vec()]
    );
    assert_eq!(php(b"%50HPSESSID=X", "PHPSESSID"), vec![b"X".to_vec()]);
    assert_eq!(
        django("\u{a0}sessionid=X".as_bytes(), "sessionid"),
        vec![b"X".to_vec()]
    );
    assert_eq!(
        django("\u{3000}sessionid=X; sessionid=Y".as_bytes(), "sessionid"),
        vec![b"Y".to_vec()]
    );
    assert_eq!(
        first_wins_trimmed(b" connect.sid = X ; connect.sid=Y", "connect.sid"),
        vec![b"X".to_vec()]
    );
    assert_eq!(
        tomcat(b"JSESSIONID=\"X\"", "JSESSIONID"),
        vec![b"X".to_vec()]
    );
}
