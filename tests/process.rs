//! The `sessiongate` binary as an operator runs it: start-up log, serving, SIGTERM ending
//! in a drained exit 0, and the file store keeping sessions across a restart.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::legacy::{login, sg, whoami, LegacyApp};
use support::*;

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let up = Upstream::raw(|_req| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        text_response(200, "done")
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sg.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nplain_listen = \"127.0.0.1:0\"\nworker_threads = 1\nshutdown_grace = \"5s\"\n[[routes]]\nupstream = \"{}\"\n",
            up.url()
        ),
    )
    .unwrap();
    let proxy = Sessiongate::spawn(&cfg, &[]);
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut h1 = H1::over(tcp).await;
    let in_flight = tokio::spawn(async move { h1.send(get("/slow")).await });
    tokio::time::sleep(Duration::from_millis(150)).await;

    let (exit, log) = proxy.terminate().await;
    let r = within("in-flight request during shutdown", in_flight)
        .await
        .unwrap();
    assert_eq!(r.text(), "done");
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        log.iter().any(|l| l.contains("SIGTERM received")),
        "{log:?}"
    );
    assert!(log.iter().any(|l| l.contains("drained")), "{log:?}");
}

/// A sidecar config on the file store in `dir`, `store` added to `[store]`.
fn file_store_config(dir: &std::path::Path, app: &LegacyApp, store: &str) -> std::path::PathBuf {
    let cfg = dir.join("sg.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nplain_listen = \"127.0.0.1:0\"\n[store]\nkind = \"file\"\npath = \"{}\"\n{store}\n{}",
            dir.join("sessions.redb").display(),
            app.route_config("")
        ),
    )
    .unwrap();
    cfg
}

/// A single sidecar on the file store keeps its sessions when it restarts.
#[tokio::test]
async fn file_store_sessions_survive_a_restart() {
    let app = LegacyApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = file_store_config(dir.path(), &app, "");
    let first = Sessiongate::spawn(&cfg, &[]);
    let mut b = Browser::direct(first.addr);
    assert_eq!(login(&mut b, "alice").await.status, 303);
    let id = sg(&b);
    let (exit, _) = first.terminate().await;
    assert!(exit.success());

    let second = Sessiongate::spawn(&cfg, &[]);
    let mut again = Browser::direct(second.addr);
    again.plant(support::legacy::SG, &id);
    assert_eq!(whoami(&mut again).await, "alice");
}

/// With `defer_anonymous_writes`, a visitor seen once is never written to the file (a
/// restart forgets it), while one who came back, and every signed-in user, is.
#[tokio::test]
async fn file_store_defers_visitors_seen_once() {
    let app = LegacyApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = file_store_config(dir.path(), &app, "defer_anonymous_writes = true");
    let first = Sessiongate::spawn(&cfg, &[]);
    let app_sid = |r: &Reply| r.headers["x-app-sid"].to_str().unwrap().to_owned();
    let mut once = Browser::direct(first.addr);
    assert_eq!(app_sid(&once.get("/page").await), "-");
    let mut back = Browser::direct(first.addr);
    back.get("/page").await;
    let returning_sid = app_sid(&back.get("/page").await);
    assert_ne!(returning_sid, "-", "the vault was forwarded on the return");
    let mut alice = Browser::direct(first.addr);
    assert_eq!(login(&mut alice, "alice").await.status, 303);
    let ids = [sg(&once), sg(&back), sg(&alice)];
    let (exit, _) = first.terminate().await;
    assert!(exit.success());

    let second = Sessiongate::spawn(&cfg, &[]);
    let mut again: Vec<Browser> = ids
        .iter()
        .map(|id| {
            let mut b = Browser::direct(second.addr);
            b.plant(support::legacy::SG, id);
            b
        })
        .collect();
    let forgotten = again[0].get("/page").await;
    assert_eq!(
        app_sid(&forgotten),
        "-",
        "the one-request visitor was not kept"
    );
    assert_ne!(sg(&again[0]), ids[0], "and starts again with a new ID");
    assert_eq!(app_sid(&again[1].get("/page").await), returning_sid);
    assert_eq!(whoami(&mut again[2]).await, "alice");
}
