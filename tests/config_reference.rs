//! The README's configuration reference cannot drift from the code: every key the config
//! parser accepts is documented, and every documented key is accepted.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

fn read(rel: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// Field names of `struct <name> { ... }` (or of an enum's variants) in the raw config.
fn fields(source: &str, item: &str) -> Vec<String> {
    let start = source
        .find(item)
        .unwrap_or_else(|| panic!("{item} not found in src/config/file.rs"));
    let body = &source[start..];
    let end = body.find("\n}").unwrap();
    body[..end]
        .lines()
        .skip(1)
        .filter_map(|l| {
            let l = l.trim().strip_prefix("pub ").unwrap_or(l.trim());
            let (name, _) = l.split_once(':')?;
            (!name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
                .then(|| name.to_owned())
        })
        .collect()
}

/// Key paths from the first column of the README's configuration table.
fn documented() -> BTreeSet<String> {
    let readme = read("README.md");
    let section = readme.split("\n## Configuration").nth(1).unwrap();
    let section = section.split("\n## ").next().unwrap();
    let mut keys = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cell = row.split('|').nth(1).unwrap();
        let tokens: Vec<&str> = cell.split('`').skip(1).step_by(2).collect();
        let first = tokens[0];
        keys.insert(first.to_owned());
        let parent = &first[..first.rfind('.').unwrap()];
        for t in &tokens[1..] {
            keys.insert(format!("{parent}{t}"));
        }
    }
    keys
}

#[test]
fn every_config_key_is_documented_and_every_documented_key_exists() {
    let source = read("src/config/file.rs");
    let tables = [
        ("pub struct RawServer {", "server."),
        ("pub struct RawTls {", "tls."),
        ("pub struct RawCertificate {", "tls.certificates[]."),
        ("pub struct RawUpstream {", "upstream."),
        ("pub struct RawSession {", "session."),
        ("pub struct RawAdmin {", "admin."),
        ("pub enum RawStore {", "store."),
        ("pub struct RawRoute {", "routes[]."),
        ("pub struct RawCookiePolicy {", "routes[].cookies."),
        ("pub struct RawRouteSession {", "routes[].session."),
    ];
    let mut accepted: BTreeSet<String> = BTreeSet::from(["store.kind".to_owned()]);
    for (item, prefix) in tables {
        for f in fields(&source, item) {
            match f.as_str() {
                // Sub-tables: documented through their own keys.
                "certificates" | "cookies" => {}
                "login" | "logout" => {
                    accepted.insert(format!("{prefix}{f}[]"));
                }
                _ => {
                    accepted.insert(format!("{prefix}{f}"));
                }
            }
        }
    }
    let documented = documented();
    let undocumented: Vec<_> = accepted.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&accepted).collect();
    assert!(
        undocumented.is_empty(),
        "keys missing from the README's configuration table: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "README documents keys the parser does not accept: {unknown:?}"
    );
}

#[test]
fn every_rule_and_criterion_key_is_documented() {
    let source = read("src/config/file.rs");
    let readme = read("README.md");
    let section = readme.split("### Login and logout rules").nth(1).unwrap();
    let section = section.split("\n### ").next().unwrap();
    for item in [
        "pub struct RawRule {",
        "pub struct RawCriteria {",
        "pub struct RawHeaderMatch {",
        "pub struct RawSubject {",
    ] {
        for f in fields(&source, item) {
            assert!(
                section.contains(&format!("`{f}")) || section.contains(&format!("{f} =")),
                "{item}: `{f}` is not described in README's rules section"
            );
        }
    }
}
