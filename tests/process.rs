//! The `sessiongate` binary as an operator runs it: start-up log, serving, and SIGTERM
//! ending in a drained exit 0.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

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
    let mut child = Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .args(["--config", cfg.to_str().unwrap(), "--log-format", "json"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // The log names the bound address (port 0 was asked for).
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: std::net::SocketAddr = loop {
        let line = lines
            .next()
            .expect("sessiongate exited before listening")
            .unwrap();
        if line.contains("listening (plain HTTP)") {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            break v["fields"]["addr"].as_str().unwrap().parse().unwrap();
        }
    };

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut h1 = H1::over(tcp).await;
    let in_flight = tokio::spawn(async move { h1.send(get("/slow")).await });
    tokio::time::sleep(Duration::from_millis(150)).await;

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let r = within("in-flight request during shutdown", in_flight)
        .await
        .unwrap();
    assert_eq!(r.text(), "done");

    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("SIGTERM received")),
        "{rest:?}"
    );
    assert!(rest.iter().any(|l| l.contains("drained")), "{rest:?}");
}
