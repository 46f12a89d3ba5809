//! The README's configuration reference cannot drift from the code: every field of the
//! raw config is documented (read from the source), every documented key is fed with a
//! value through the real parser, and every default the README states as a value is the
//! parser's default (writing it out changes nothing), as is every "required".
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
    rows().into_iter().map(|r| r.key).collect()
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
                "login" | "logout" | "privilege" => {
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

/// One row of the README's configuration table: its keys and their documented defaults.
struct Row {
    key: String,
    default: String,
}

/// Every key of the configuration table, with the default documented for it (a row
/// naming several keys lists their defaults in order, comma-separated).
fn rows() -> Vec<Row> {
    let readme = read("README.md");
    let section = readme.split("\n## Configuration").nth(1).unwrap();
    let section = section.split("\n## ").next().unwrap();
    let mut rows = Vec::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let keys: Vec<&str> = cells[1].split('`').skip(1).step_by(2).collect();
        let parent = &keys[0][..keys[0].rfind('.').unwrap()];
        let defaults: Vec<&str> = if keys.len() > 1 {
            cells[2].split(", ").collect()
        } else {
            vec![cells[2]]
        };
        for (i, k) in keys.iter().enumerate() {
            let key = if i == 0 {
                (*k).to_owned()
            } else {
                format!("{parent}{k}")
            };
            let default = defaults.get(i).copied().unwrap_or("").to_owned();
            rows.push(Row { key, default });
        }
    }
    rows
}

/// A TOML value written in the default column (`"30s"`, `[]`, `10000`, `false`), if
/// the default is a value rather than a word ("none", "required", "cores", ...).
fn literal(default: &str) -> Option<toml::Value> {
    let text = default.trim_matches('`');
    let v: toml::Table = toml::from_str(&format!("v = {text}")).ok()?;
    v.get("v").cloned()
}

/// A value for keys whose default is not a value.
fn sample(key: &str, files: &Files) -> toml::Value {
    use toml::Value;
    let s = |v: &str| Value::String(v.to_owned());
    match key {
        "server.listen" => s("127.0.0.1:8443"),
        "server.plain_listen" => s("127.0.0.1:8081"),
        "server.worker_threads" => Value::Integer(2),
        "tls.certificates[].cert" => s(&files.cert),
        "tls.certificates[].key" => s(&files.key),
        "admin.listen" => s("127.0.0.1:9901"),
        "admin.token_file" => s(&files.token),
        "store.path" => s("sessions.redb"),
        "store.project_id" => s("my-project"),
        "upstream.ca_file" => s(&files.cert),
        "routes[].name" => s("web"),
        "routes[].host" => s("example.com"),
        "routes[].upstream" => s("http://127.0.0.1:9"),
        other => panic!("no sample value for `{other}`: add one here"),
    }
}

struct Files {
    _dir: tempfile::TempDir,
    cert: String,
    key: String,
    token: String,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let t = dir.path().join("admin.token");
    std::fs::write(&t, "0123456789abcdef0123456789abcdef").unwrap();
    Files {
        cert: c.display().to_string(),
        key: k.display().to_string(),
        token: t.display().to_string(),
        _dir: dir,
    }
}

/// The smallest config that makes `key` meaningful: one session route, and the store
/// kind or TLS table the key belongs to.
fn base(key: &str, files: &Files) -> toml::Table {
    let tls = key.starts_with("tls.") || key == "server.listen";
    let mut text = String::from("[server]\nplain_listen = \"127.0.0.1:8080\"\n");
    if tls {
        text.push_str("listen = \"127.0.0.1:8443\"\n");
    }
    text.push_str("[[routes]]\nupstream = \"http://127.0.0.1:9\"\n[routes.session]\n");
    if key != "routes[].session.vault" {
        text.push_str("vault = [\"SID\"]\n");
    }
    let firestore = [
        "project_id",
        "database_id",
        "collection",
        "cache_ttl",
        "cache_stale_for",
        "cache_max_entries",
        "defer_anonymous_writes",
    ];
    if let Some(store_key) = key.strip_prefix("store.") {
        if firestore.contains(&store_key) {
            text.push_str("[store]\nkind = \"firestore\"\n");
            if store_key != "project_id" {
                text.push_str("project_id = \"p\"\n");
            }
        } else if store_key == "path" {
            text.push_str("[store]\nkind = \"file\"\n");
        } else if ["sweep_interval", "max_sessions"].contains(&store_key) {
            text.push_str("[store]\nkind = \"memory\"\n");
        }
    }
    if tls {
        text.push_str(&format!(
            "[[tls.certificates]]\ncert = {:?}\nkey = {:?}\n",
            files.cert, files.key
        ));
    }
    toml::from_str(&text).unwrap()
}

/// Sets `a.b[].c` in `table`, creating tables and using the first array element.
fn set(table: &mut toml::Table, key: &str, value: toml::Value) {
    let parts: Vec<&str> = key.split('.').collect();
    let mut t = table;
    for part in &parts[..parts.len() - 1] {
        let (name, array) = match part.strip_suffix("[]") {
            Some(n) => (n, true),
            None => (*part, false),
        };
        let entry = t.entry(name.to_owned()).or_insert_with(|| {
            if array {
                toml::Value::Array(vec![toml::Value::Table(toml::Table::new())])
            } else {
                toml::Value::Table(toml::Table::new())
            }
        });
        t = match entry {
            toml::Value::Array(a) => a[0].as_table_mut().unwrap(),
            toml::Value::Table(t) => t,
            other => panic!("{key}: {part} is {other:?}"),
        };
    }
    let last = parts[parts.len() - 1];
    t.insert(last.trim_end_matches("[]").to_owned(), value);
}

fn parse(table: &toml::Table) -> Result<String, String> {
    let text = toml::to_string(table).unwrap();
    sessiongate::Config::from_toml(&text, std::path::Path::new("."))
        .map(|c| format!("{c:?}"))
        .map_err(|e| format!("{e}\n{text}"))
}

/// Every documented key goes through the real parser with a value (an unknown key would
/// be refused), and where the README states a default as a value, writing that value
/// explicitly gives exactly the config that leaving the key out gives.
#[test]
fn documented_keys_parse_and_documented_defaults_are_the_defaults() {
    let files = files();
    let mut checked_defaults = 0;
    for row in rows() {
        let key = row.key.as_str();
        if key == "routes[].session" || key.ends_with("login[]") || key.ends_with("logout[]") {
            // Tables, covered by the rule tests; `[]` is checked below.
            if row.default == "`[]`" {
                let mut t = base(key, &files);
                set(&mut t, key, toml::Value::Array(Vec::new()));
                assert_eq!(parse(&t), parse(&base(key, &files)), "{key}");
            }
            continue;
        }
        let without = parse(&base(key, &files));
        let mut with = base(key, &files);
        if row.default.starts_with("required") && key != "routes[].upstream" {
            assert!(
                without.is_err(),
                "{key} is documented as required: {without:?}"
            );
            set(&mut with, key, sample(key, &files));
            parse(&with).unwrap_or_else(|e| panic!("{key}: refused: {e}"));
            continue;
        }
        let without = without.unwrap_or_else(|e| panic!("{key}: the base config is refused: {e}"));
        match literal(&row.default) {
            Some(default) => {
                set(&mut with, key, default.clone());
                let parsed =
                    parse(&with).unwrap_or_else(|e| panic!("{key} = {default}: refused: {e}"));
                assert_eq!(
                    parsed, without,
                    "{key}: the README says the default is {default}, but writing it changes the config"
                );
                checked_defaults += 1;
            }
            None => {
                set(&mut with, key, sample(key, &files));
                parse(&with).unwrap_or_else(|e| panic!("{key}: refused: {e}"));
            }
        }
    }
    assert!(
        checked_defaults >= 40,
        "only {checked_defaults} defaults checked"
    );
}
