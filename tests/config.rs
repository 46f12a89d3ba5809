//! Configuration errors: each kind of mistake is rejected at start-up with a message that
//! names the key and line, and `sessiongate check` reports every problem at once.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;

use sessiongate::Config;
use support::Pki;

fn error_of(text: &str) -> String {
    match Config::from_toml(text, Path::new(".")) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

const ROUTE: &str = "[[routes]]\nupstream = \"http://127.0.0.1:8000\"\n";
const PLAIN: &str = "[server]\nplain_listen = \"127.0.0.1:0\"\n";

fn assert_mentions(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error should mention {p:?}:\n{err}");
    }
}

#[test]
fn unknown_key_is_an_error_with_its_line() {
    let err = error_of(&format!("{PLAIN}{ROUTE}upstreem_timeout = \"5s\"\n"));
    assert_mentions(&err, &["line 5", "unknown field `upstreem_timeout`"]);
    let err = error_of(&format!(
        "[server]\nplain_listen = \"127.0.0.1:0\"\nlisten_tls = \"x\"\n{ROUTE}"
    ));
    assert_mentions(&err, &["line 3", "unknown field `listen_tls`"]);
}

#[test]
fn bad_duration_names_its_line() {
    let err = error_of(&format!("{PLAIN}{ROUTE}response_timeout = \"soon\"\n"));
    assert_mentions(&err, &["line 5", "response_timeout"]);
}

#[test]
fn bad_size_names_its_line() {
    let err = error_of(&format!("{PLAIN}{ROUTE}max_request_body = \"lots\"\n"));
    assert_mentions(&err, &["line 5", "max_request_body"]);
}

#[test]
fn missing_certificate_file_is_reported() {
    let err = error_of(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[tls.certificates]]\ncert = \"/nonexistent/a.crt\"\nkey = \"/nonexistent/a.key\"\n{ROUTE}"
    ));
    assert_mentions(
        &err,
        &["line 4", "tls.certificates[0].cert", "/nonexistent/a.crt"],
    );
}

#[test]
fn key_that_does_not_match_the_certificate_is_reported() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let b = pki.leaf("b", &["b.test"]);
    let err = error_of(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n{ROUTE}",
        a.cert.display(),
        b.key.display()
    ));
    assert_mentions(
        &err,
        &["line 5", "tls.certificates[0].key", "does the key belong"],
    );
}

#[test]
fn overlapping_routes_are_rejected() {
    let err = error_of(&format!(
        "{PLAIN}[[routes]]\npath_prefix = \"/app\"\nupstream = \"http://127.0.0.1:1\"\n[[routes]]\npath_prefix = \"/app\"\nupstream = \"http://127.0.0.1:2\"\n"
    ));
    assert_mentions(
        &err,
        &[
            "line 7",
            "routes[1].path_prefix",
            "routes[0] already matches",
        ],
    );
}

#[test]
fn cr_lf_in_a_configured_cookie_name_is_rejected() {
    let err = error_of(&format!(
        "{PLAIN}{ROUTE}[routes.cookies]\nscript_readable = [\"XSRF\\r\\nSet-Cookie: evil=1\"]\n"
    ));
    assert_mentions(&err, &["line 6", "invalid cookie name"]);
}

#[test]
fn other_single_value_mistakes() {
    for (text, want) in [
        (
            format!("{PLAIN}[[routes]]\nupstream = \"ftp://x\"\n"),
            "http:// or https://",
        ),
        (
            format!("{PLAIN}[[routes]]\npath_prefix = \"app\"\nupstream = \"http://x\"\n"),
            "must start with \"/\"",
        ),
        (
            format!("{PLAIN}[[routes]]\nhost = \"a b\"\nupstream = \"http://x\"\n"),
            "invalid host name",
        ),
        (
            format!("{PLAIN}{ROUTE}[routes.cookies]\nsame_site = \"loose\"\n"),
            "unknown variant `loose`",
        ),
        (
            format!("{PLAIN}{ROUTE}forwarded = \"trust-everyone\"\n"),
            "unknown variant",
        ),
    ] {
        assert_mentions(&error_of(&text), &["line", want]);
    }
}

#[test]
fn cross_field_problems_are_all_listed() {
    let err = error_of(
        "[server]\nlisten = \"nowhere\"\nmax_header_bytes = \"1KiB\"\nworker_threads = 0\n",
    );
    assert_mentions(
        &err,
        &[
            "server.listen",
            "not an address",
            "server.max_header_bytes",
            "between 8 KiB and 1 MiB",
            "line 4: server.worker_threads",
            "needs a [tls] table",
            "routes",
            "no routes",
        ],
    );
    assert!(err.contains("5 problem(s)"), "{err}");
}

#[test]
fn tls_listener_needs_certificates() {
    let err = error_of(&format!("[server]\nlisten = \"127.0.0.1:0\"\n{ROUTE}"));
    assert_mentions(&err, &["line 2", "needs a [tls] table"]);
    let err = error_of(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[tls]\n{ROUTE}"
    ));
    assert_mentions(&err, &["tls.certificates", "no certificate"]);
}

fn sessiongate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

#[test]
fn check_accepts_every_shipped_example() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = sessiongate(&["check", "--config", path.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "no example configs found in {}",
        dir.display()
    );
}

#[test]
fn store_mistakes_are_reported() {
    for (store, want) in [
        ("[store]\nkind = \"redis\"\n", "unknown variant `redis`"),
        (
            "[store]\nkind = \"firestore\"\n",
            "missing field `project_id`",
        ),
        (
            "[store]\nkind = \"firestore\"\nproject_id = \"p\"\ncollection = \"a/b\"\n",
            "store.collection",
        ),
        (
            "[store]\nkind = \"file\"\npath = \"/nonexistent/dir/s.redb\"\n",
            "/nonexistent/dir does not exist",
        ),
        (
            "[store]\nkind = \"memory\"\ncache_ttl = \"1s\"\n",
            "unknown field `cache_ttl`",
        ),
    ] {
        assert_mentions(&error_of(&format!("{PLAIN}{ROUTE}{store}")), &[want]);
    }
}

#[test]
fn check_accepts_the_shipped_config() {
    let out = sessiongate(&["check", "--config", "config.toml"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("config.toml: OK"));
    assert!(stdout.contains("-> http://127.0.0.1:8000"), "{stdout}");
}

#[test]
fn check_rejects_a_bad_config_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nplain_listen = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"http://a\"\n[[routes]]\nupstream = \"http://b\"\n[upstream]\nca_file = \"missing.pem\"\n",
    )
    .unwrap();
    let out = sessiongate(&["check", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_mentions(
        &stderr,
        &[
            "2 problem(s)",
            "routes[1].path_prefix",
            "upstream.ca_file",
            "line 8",
        ],
    );
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let out = sessiongate(&["check", "--config", "/nonexistent/sessiongate.toml"]);
    assert!(!out.status.success());
    assert_mentions(
        &String::from_utf8_lossy(&out.stderr),
        &["cannot read config file /nonexistent/sessiongate.toml"],
    );
}

#[test]
fn route_problems_name_their_own_key_and_line() {
    let err = error_of(&format!(
        "{PLAIN}[[routes]]\nupstream = \"http://127.0.0.1:8000\"\nbody_idle_timeout = \"0s\"\n[[routes]]\npath_prefix = \"/x\"\nupstream = \"http://127.0.0.1:8000\"\nhost = \"*.example.com\"\n"
    ));
    assert_mentions(
        &err,
        &["routes[0].body_idle_timeout", "line 9", "routes[1].host"],
    );
    assert!(!err.contains("response_timeout"), "{err}");
}

#[test]
fn rule_patterns_are_checked_where_they_are_written() {
    let rule = |body: &str| {
        format!(
            "{PLAIN}{ROUTE}[routes.session]\nvault = [\"SID\"]\n[[routes.session.login]]\n{body}\n"
        )
    };
    let err = error_of(&rule("path_regex = \"(\"\nsuccess = { status = [302] }"));
    assert_mentions(&err, &["line 8", "invalid regex"]);
    let err = error_of(&rule(
        "path = \"/login\"\nsuccess = { header = { name = \"bad name\" } }",
    ));
    assert_mentions(&err, &["line 9", "invalid header name"]);
    let err = error_of(&rule(
        "path = \"/login\"\nmethods = [\"P O S T\"]\nsuccess = { status = [302] }",
    ));
    assert_mentions(&err, &["line 9", "invalid HTTP method"]);
    let err = error_of(&format!("{PLAIN}{ROUTE}upgrades = [\"web socket\"]\n"));
    assert_mentions(&err, &["line 5", "invalid Upgrade protocol"]);
    let err = error_of(&format!("{PLAIN}[[routes]]\nupstream = \"ftp://x\"\n"));
    assert_mentions(&err, &["line 4", "http:// or https://"]);
}

#[test]
fn anonymous_idle_timeout_is_bounded_and_follows_a_short_idle_timeout() {
    let err = error_of(&format!(
        "{PLAIN}[session]\nidle_timeout = \"5m\"\nanonymous_idle_timeout = \"6m\"\n{ROUTE}"
    ));
    assert_mentions(
        &err,
        &[
            "session.anonymous_idle_timeout",
            "must not be longer than session.idle_timeout",
        ],
    );
    let err = error_of(&format!(
        "{PLAIN}[session]\nanonymous_idle_timeout = \"30s\"\n{ROUTE}"
    ));
    assert_mentions(&err, &["session.touch_interval", "anonymous_idle_timeout"]);
    // Unset, it never exceeds a short idle_timeout.
    let c = Config::from_toml(
        &format!("{PLAIN}[session]\nidle_timeout = \"2m\"\ntouch_interval = \"10s\"\n{ROUTE}"),
        Path::new("."),
    )
    .unwrap();
    assert_eq!(
        c.session.anonymous_idle_timeout,
        std::time::Duration::from_secs(120)
    );
    let c = Config::from_toml(&format!("{PLAIN}{ROUTE}"), Path::new(".")).unwrap();
    assert_eq!(
        c.session.anonymous_idle_timeout,
        std::time::Duration::from_secs(600)
    );
}

#[test]
fn privilege_rules_need_success_and_only_they_take_revoke_others() {
    let err = error_of(&format!(
        "{PLAIN}{ROUTE}[routes.session]\nvault = [\"SID\"]\n[[routes.session.privilege]]\npath = \"/sudo\"\n[[routes.session.login]]\npath = \"/login\"\nsuccess = {{ status = [302] }}\nrevoke_others = true\n"
    ));
    assert_mentions(
        &err,
        &[
            "routes[0].session.privilege[0].success",
            "a privilege rule needs at least one success criterion",
            "routes[0].session.login[0].revoke_others",
        ],
    );
}
