//! The connection pool to the app, seen from the app's side of real sockets: connections
//! are reused, an app closing its kept-alive connections costs no request, idle ones are
//! closed after `pool_idle_timeout`, at most `pool_max_idle_per_host` are kept, and an
//! answer cut short never leaks into the next request.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// How the raw app behaves on each connection.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// Keep-alive: answers every request on the connection.
    KeepAlive,
    /// Answers one request, then closes the connection without saying so (no
    /// `Connection: close`), as an app's keep-alive timeout does.
    CloseAfterOne,
}

/// A hand-written HTTP/1.1 app on a raw socket, so that its connections can be counted
/// and closed at will. `GET /slow` answers with a chunked body that never ends; any
/// other path with `path=<path>`. Each response holds until `gate` permits are released
/// when a gate is set.
struct RawApp {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Connections the proxy closed (EOF seen by the app).
    closed_by_proxy: Arc<AtomicUsize>,
}

impl RawApp {
    async fn start(behaviour: Behaviour, gate: Option<Arc<tokio::sync::Semaphore>>) -> RawApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed_by_proxy = Arc::new(AtomicUsize::new(0));
        let (a, c, g) = (accepted.clone(), closed_by_proxy.clone(), gate);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let (c, g) = (c.clone(), g.clone());
                tokio::spawn(async move {
                    let mut conn = BufReader::new(tcp);
                    loop {
                        let mut line = String::new();
                        if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                            c.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        let path = line.split(' ').nth(1).unwrap_or("").to_owned();
                        // The rest of the head (GETs only: no body).
                        loop {
                            let mut h = String::new();
                            if conn.read_line(&mut h).await.unwrap_or(0) == 0 {
                                c.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            if h == "\r\n" {
                                break;
                            }
                        }
                        if let Some(g) = &g {
                            g.acquire().await.unwrap().forget();
                        }
                        let tcp = conn.get_mut();
                        if path == "/slow" {
                            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n";
                            let _ = tcp.write_all(head.as_bytes()).await;
                            // Never finishes; the proxy must drop this connection.
                            let mut rest = Vec::new();
                            let _ = tcp.read_to_end(&mut rest).await;
                            c.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        let body = format!("path={path}");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if tcp.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                        if behaviour == Behaviour::CloseAfterOne {
                            return;
                        }
                    }
                });
            }
        });
        RawApp {
            addr,
            accepted,
            closed_by_proxy,
        }
    }

    fn route(&self, upstream_table: &str) -> String {
        format!(
            "{upstream_table}\n[[routes]]\nupstream = \"http://{}\"\n",
            self.addr
        )
    }
}

async fn eventually(what: &str, timeout: Duration, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let app = RawApp::start(Behaviour::KeepAlive, None).await;
    let proxy = Proxy::start(&app.route("")).await;
    let mut client = proxy.h1().await;
    for i in 0..20 {
        let r = client.send(get(&format!("/n{i}"))).await;
        assert_eq!((r.status.as_u16(), r.text()), (200, format!("path=/n{i}")));
    }
    // A second client is served on the same upstream connection too.
    assert_eq!(proxy.get("/other").await.text(), "path=/other");
    assert_eq!(app.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_app_closing_kept_alive_connections_costs_no_request() {
    let app = RawApp::start(Behaviour::CloseAfterOne, None).await;
    let proxy = Proxy::start(&app.route("")).await;
    let mut client = proxy.h1().await;
    for i in 0..15 {
        let r = client.send(get(&format!("/c{i}"))).await;
        assert_eq!(
            (r.status.as_u16(), r.text()),
            (200, format!("path=/c{i}")),
            "request {i}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.accepted.load(Ordering::SeqCst), 15);
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let app = RawApp::start(Behaviour::KeepAlive, None).await;
    let proxy = Proxy::start(&app.route("[upstream]\npool_idle_timeout = \"1s\"")).await;
    let started = Instant::now();
    assert_eq!(proxy.get("/once").await.status, 200);
    eventually("the idle connection closed", Duration::from_secs(5), || {
        app.closed_by_proxy.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before its idle timeout: {:?}",
        started.elapsed()
    );
    // The next request opens a new one.
    assert_eq!(proxy.get("/again").await.status, 200);
    assert_eq!(app.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn at_most_max_idle_connections_are_kept() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let app = RawApp::start(Behaviour::KeepAlive, Some(gate.clone())).await;
    let proxy = Arc::new(Proxy::start(&app.route("[upstream]\npool_max_idle_per_host = 2")).await);
    // Five requests at once: five connections.
    let mut tasks = Vec::new();
    for i in 0..5 {
        let p = proxy.clone();
        tasks.push(tokio::spawn(async move { p.get(&format!("/p{i}")).await }));
    }
    eventually("five connections", Duration::from_secs(5), || {
        app.accepted.load(Ordering::SeqCst) == 5
    })
    .await;
    gate.add_permits(5);
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    // Two stay for later; the other three are closed.
    eventually("three connections closed", Duration::from_secs(5), || {
        app.closed_by_proxy.load(Ordering::SeqCst) == 3
    })
    .await;
    gate.add_permits(10);
    for i in 0..4 {
        assert_eq!(proxy.get(&format!("/q{i}")).await.status, 200);
    }
    assert_eq!(
        app.accepted.load(Ordering::SeqCst),
        5,
        "kept connections reused"
    );
}

#[tokio::test]
async fn an_answer_cut_short_never_reaches_the_next_request() {
    let app = RawApp::start(Behaviour::KeepAlive, None).await;
    let proxy = Proxy::start(&app.route("")).await;
    {
        let mut client = proxy.h1().await;
        let resp = client.send_raw(get("/slow")).await;
        assert_eq!(resp.status(), 200);
        // The client goes away with the body unfinished.
    }
    eventually("the cut connection closed", Duration::from_secs(5), || {
        app.closed_by_proxy.load(Ordering::SeqCst) == 1
    })
    .await;
    for i in 0..3 {
        let r = proxy.get(&format!("/after{i}")).await;
        assert_eq!(
            (r.status.as_u16(), r.text()),
            (200, format!("path=/after{i}"))
        );
    }
    assert_eq!(app.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_stalled_answer_is_cut_after_the_body_idle_timeout() {
    let app = RawApp::start(Behaviour::KeepAlive, None).await;
    let route = app
        .route("")
        .replace("[[routes]]\n", "[[routes]]\nbody_idle_timeout = \"1s\"\n");
    let proxy = Proxy::start(&route).await;
    let mut client = proxy.h1().await;
    let started = Instant::now();
    let resp = client.send_raw(get("/slow")).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    use http_body_util::BodyExt;
    let first = within("the first chunk", body.frame()).await;
    let first = first.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"first");
    // Then nothing: the proxy gives up on the app and ends the answer in error.
    let rest = within("the stalled body to end", body.frame()).await;
    assert!(
        !matches!(rest, Some(Ok(_))),
        "a stalled body went on: {rest:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "cut after {waited:?}"
    );
    // And the app's connection is closed, not pooled.
    eventually(
        "the stalled connection closed",
        Duration::from_secs(5),
        || app.closed_by_proxy.load(Ordering::SeqCst) == 1,
    )
    .await;
}
