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

/// A single sidecar on the file store keeps its sessions when it restarts.
#[tokio::test]
async fn file_store_sessions_survive_a_restart() {
    let app = LegacyApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sg.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nplain_listen = \"127.0.0.1:0\"\n[store]\nkind = \"file\"\npath = \"{}\"\n{}",
            dir.path().join("sessions.redb").display(),
            app.route_config("")
        ),
    )
    .unwrap();
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
