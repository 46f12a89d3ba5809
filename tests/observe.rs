//! Observe mode (`mode = "observe"`): the app's cookies and the client's pass through as
//! if sessiongate were not there, and every decision `enforce` would take is logged as
//! an audit line and counted; a SIGHUP switches the route to `enforce`. The binary, its
//! JSON logs and the in-process legacy app.
#![allow(clippy::unwrap_used)]

mod support;

use support::legacy::{login, whoami, LegacyApp, SG};
use support::*;

fn config(app: &LegacyApp, mode: &str) -> String {
    format!(
        "[server]\nplain_listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        app.route_config("").replace(
            "[routes.session]\n",
            &format!("[routes.session]\nmode = \"{mode}\"\n")
        )
    )
}

fn write_config(path: &std::path::Path, body: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The `decision` of every `observed` audit line after `skip`, with its detail.
fn observed(proxy: &Sessiongate, skip: usize) -> Vec<(String, String)> {
    proxy
        .log
        .lock()
        .unwrap()
        .iter()
        .skip(skip)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["event"] == "observed")
        .map(|v| {
            (
                v["fields"]["decision"].as_str().unwrap_or("").to_owned(),
                v["fields"]["detail"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

async fn until_logged(proxy: &Sessiongate, skip: usize, decision: &str) -> Vec<(String, String)> {
    proxy.wait_for_log(decision, skip).await;
    observed(proxy, skip)
}

#[tokio::test]
async fn observe_passes_cookies_through_and_logs_what_enforce_would_do() {
    let app = LegacyApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sg.toml");
    write_config(&cfg, &config(&app, "observe"));
    let proxy = Sessiongate::spawn(&cfg, &[]);
    let admin = proxy.admin.unwrap();

    // The app's cookie reaches the browser (hardened), sessiongate sets none.
    let mut b = Browser::direct(proxy.addr);
    let mark = proxy.log_len();
    assert_eq!(whoami(&mut b).await, "anonymous");
    let app_sid = b
        .cookie("SID")
        .expect("the app's cookie did not pass")
        .to_owned();
    assert!(
        b.cookie(SG).is_none(),
        "observe mode set a sessiongate cookie"
    );
    assert_eq!(
        until_logged(&proxy, mark, "vault_cookie").await,
        [("vault_cookie".into(), "SID".into())]
    );

    // The login goes through on the app's own session: the ID does not change (the
    // fixation is not prevented), and the would-be rotation is logged with the user.
    let mark = proxy.log_len();
    assert_eq!(login(&mut b, "alice").await.status, 303);
    assert_eq!(b.cookie("SID"), Some(app_sid.as_str()));
    assert_eq!(whoami(&mut b).await, "alice");
    assert!(app.user_of(&app_sid).is_some_and(|u| u == "alice"));
    let seen = until_logged(&proxy, mark, "rotate_login").await;
    assert!(
        seen.contains(&("rotate_login".into(), "subject=alice".into())),
        "{seen:?}"
    );

    // A session ID in the query reaches the app, and would have been removed.
    let mark = proxy.log_len();
    let r = b.get(&format!("/echo?SID={app_sid}")).await;
    assert!(r.text().contains(&format!("SID={app_sid}")), "{}", r.text());
    assert!(until_logged(&proxy, mark, "strip_request_id")
        .await
        .contains(&("strip_request_id".into(), "the query string".into())));

    let mark = proxy.log_len();
    assert_eq!(b.post_form("/logout", &[]).await.status, 200);
    until_logged(&proxy, mark, "revoke_logout").await;

    let metrics = admin_get(admin, "/metrics").await.1;
    assert_eq!(
        metric(
            &metrics,
            "sessiongate_observe_decisions_total{route=\"routes[0]\",decision=\"rotate_login\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "sessiongate_sessions_created_total"), 0.0);
    assert_eq!(
        admin_get(admin, "/readyz").await,
        (
            200,
            "ready\nobserve mode, nothing enforced, on route(s): routes[0]\n".into()
        )
    );

    // SIGHUP with the route in enforce mode: the next visitor's app cookie is vaulted.
    write_config(&cfg, &config(&app, "enforce"));
    let mark = proxy.log_len();
    proxy.signal("-HUP");
    proxy.wait_for_log("config reloaded", mark).await;
    let mut next = Browser::direct(proxy.addr);
    assert_eq!(whoami(&mut next).await, "anonymous");
    assert!(
        next.cookie("SID").is_none(),
        "enforce mode let the app's cookie out"
    );
    assert!(next.cookie(SG).is_some());
    assert_eq!(admin_get(admin, "/readyz").await, (200, "ready\n".into()));
    drop(proxy);
}

#[test]
fn check_shows_the_mode() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sg.toml");
    std::fs::write(
        &cfg,
        "[server]\nplain_listen = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"http://127.0.0.1:9\"\n[routes.session]\nmode = \"observe\"\nvault = [\"SID\"]\n[[routes]]\nname = \"static\"\npath_prefix = \"/static\"\nupstream = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .args(["check", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("session (observe: nothing enforced, decisions logged)"),
        "{text}"
    );
    // While the browser holds the app's cookie, the route beside it lets it through.
    assert!(!text.contains("filters"), "{text}");
}
