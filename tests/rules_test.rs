//! `sessiongate rules test --har`: the HAR files recorded from the real apps of
//! `tests/apps/` (`tests/data/har/`, recorded by Chromium straight from each app),
//! replayed offline through configs like those `tests/e2e_stacks.rs` protects the apps
//! with; and the warnings for logins no rule would catch.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// (HAR file, vaulted cookie, login success criteria, failure text)
const STACKS: [(&str, &str, &str, &str); 6] = [
    ("php", "PHPSESSID", REDIRECT, "Invalid credentials"),
    ("flask", "sid", WELCOME, "Login failed"),
    ("flask_login", "session", REDIRECT, "Login failed"),
    ("express", "connect.sid", REDIRECT, "Invalid credentials"),
    ("django", "sessionid", WELCOME, "Login failed"),
    ("tomcat", "JSESSIONID", REDIRECT, "Invalid credentials"),
];
const REDIRECT: &str = r#"{ status = [302], header = { name = "location", regex = "^/account" } }"#;
const WELCOME: &str = r#"{ status = [200], body_contains = "Welcome back" }"#;

fn har(stack: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/har/{stack}.har"))
}

fn config(dir: &Path, session: &str) -> PathBuf {
    let path = dir.join("sg.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nplain_listen = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"http://127.0.0.1:9\"\n[routes.session]\n{session}\n"
        ),
    )
    .unwrap();
    path
}

/// Runs `rules test`: exit code and the report.
fn rules_test(config: &Path, har: &Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .args(["--config", config.to_str().unwrap(), "rules", "test"])
        .args(["--har", har.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The report's line for a request, by method and path, in order (`nth` 0 is the first).
fn line<'a>(report: &'a str, method_path: &str, nth: usize) -> &'a str {
    report
        .lines()
        .filter(|l| {
            l.split_once(' ')
                .is_some_and(|(_, rest)| rest.starts_with(method_path))
        })
        .nth(nth)
        .unwrap_or_else(|| panic!("no {nth}th line for {method_path}:\n{report}"))
}

#[test]
fn recorded_sessions_of_every_stack_replay_as_enforcing_would_take_them() {
    for (stack, cookie, success, failure) in STACKS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(
            dir.path(),
            &format!(
                r#"vault = ["{cookie}"]
[[routes.session.login]]
path = "/login"
methods = ["POST"]
success = {success}
failure = {{ body_contains = "{failure}" }}
[[routes.session.logout]]
path = "/logout"
methods = ["POST"]
"#
            ),
        );
        let (code, report) = rules_test(&cfg, &har(stack));
        assert_eq!(code, 0, "{stack}:\n{report}");
        // The first visit: the app sets its session cookie, which would be vaulted.
        assert!(
            line(&report, "GET / ", 0).contains(&format!("vaulted-set=[{cookie}]")),
            "{stack}:\n{report}"
        );
        let bad = line(&report, "POST /login ", 0);
        assert!(
            bad.contains("rule=login outcome=failure verdict=keep_failed_login rotate=no"),
            "{stack} wrong password:\n{report}"
        );
        let good = line(&report, "POST /login ", 1);
        assert!(
            good.contains("rule=login outcome=success verdict=rotate_login rotate=yes"),
            "{stack} right password:\n{report}"
        );
        assert!(
            good.contains(&format!("vaulted-sent=[{cookie}]")),
            "{stack}: the browser's app cookie would be the vault's:\n{report}"
        );
        assert!(
            line(&report, "POST /logout ", 0).contains("verdict=revoke_logout"),
            "{stack}:\n{report}"
        );
        assert!(report.ends_with("0 warning(s)\n"), "{stack}:\n{report}");
    }
}

#[test]
fn a_login_no_rule_recognises_is_a_warning_and_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    // A vault but no login rule: the password field still counts as a login attempt
    // (rotated), but nothing says whether it succeeded.
    let (code, report) = rules_test(&config(dir.path(), "vault = [\"PHPSESSID\"]"), &har("php"));
    assert_eq!(code, 1, "{report}");
    let good = line(&report, "POST /login ", 1);
    assert!(
        good.contains(
            "rule=credential field outcome=undecided verdict=rotate_undecided rotate=yes"
        ),
        "{report}"
    );
    assert_eq!(report.matches("WARNING #").count(), 2, "{report}");
    assert!(report.contains("no login rule applies"), "{report}");

    // Worse: the form's password field is not a credential field sessiongate knows.
    let (code, report) = rules_test(
        &config(
            dir.path(),
            "vault = [\"PHPSESSID\"]\ncredential_fields = [\"passwd\"]",
        ),
        &har("php"),
    );
    assert_eq!(code, 1, "{report}");
    let good = line(&report, "POST /login ", 1);
    assert!(good.contains("rotate=no"), "{report}");
    assert!(
        report.contains("password-like field(s) [\"password\"]")
            && report.contains("would go unnoticed"),
        "{report}"
    );
}

#[test]
fn a_sanitized_export_is_called_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut har: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(har("django")).unwrap()).unwrap();
    // What Chrome's default "sanitized" export leaves: no Cookie, no Set-Cookie.
    for e in har["log"]["entries"].as_array_mut().unwrap() {
        for side in ["request", "response"] {
            e[side]["headers"].as_array_mut().unwrap().retain(|h| {
                !["cookie", "set-cookie"]
                    .contains(&h["name"].as_str().unwrap().to_ascii_lowercase().as_str())
            });
        }
    }
    let path = dir.path().join("sanitized.har");
    std::fs::write(&path, har.to_string()).unwrap();
    let cfg = config(
        dir.path(),
        &format!("vault = [\"sessionid\"]\n[[routes.session.login]]\npath = \"/login\"\nsuccess = {WELCOME}\n"),
    );
    let (code, report) = rules_test(&cfg, &path);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("sanitized export"), "{report}");
}

#[test]
fn what_is_not_a_har_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "vault = [\"SID\"]");
    let junk = dir.path().join("junk.har");
    std::fs::write(&junk, "{\"not\": \"a har\"}").unwrap();
    let (code, report) = rules_test(&cfg, &junk);
    assert_eq!(code, 2);
    assert!(report.contains("is not a HAR file"), "{report}");
    let (code, report) = rules_test(&cfg, &dir.path().join("missing.har"));
    assert_eq!(code, 2);
    assert!(report.contains("cannot read"), "{report}");
}

#[test]
fn traffic_the_config_does_not_cover_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    // The routes are for another host: nothing of the recording is checked.
    let other = dir.path().join("other.toml");
    std::fs::write(
        &other,
        "[server]\nplain_listen = \"127.0.0.1:0\"\n[[routes]]\nhost = \"shop.example\"\nupstream = \"http://127.0.0.1:9\"\n[routes.session]\nvault = [\"PHPSESSID\"]\n",
    )
    .unwrap();
    let (code, report) = rules_test(&other, &har("php"));
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("no entry falls on a session route"),
        "{report}"
    );
    assert!(report.contains("no session route covers"), "{report}");

    // The login is on a plain route in front of the same app.
    let plain = config(
        dir.path(),
        "vault = [\"PHPSESSID\"]\n[[routes]]\nname = \"auth\"\npath_prefix = \"/login\"\nupstream = \"http://127.0.0.1:9\"",
    );
    let (code, report) = rules_test(&plain, &har("php"));
    assert_eq!(code, 1, "{report}");
    let good = line(&report, "POST /login ", 1);
    assert!(
        good.contains("route=auth (no session protection)"),
        "{report}"
    );
    assert!(
        report.contains("password-like field(s) [\"password\"] are sent to /login, which no session route covers"),
        "{report}"
    );
}
