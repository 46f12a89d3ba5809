//! Hostile load over real sockets: the bound on sessions per replica (anonymous sessions
//! evicted first, signed-in ones never, then 503 with nothing leaked), the per-client
//! creation limit (429), the anonymous idle timeout, and a flood against the binary whose
//! memory must stay flat.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::legacy::{holding, login, sg, whoami, LegacyApp, SG};
use support::*;

/// A legacy app behind an in-process proxy; `session` goes into `[session]`, `store`
/// into `[store]`, `route` into the route's table.
async fn start(session: &str, store: &str, route: &str) -> (LegacyApp, Proxy) {
    let app = LegacyApp::start().await;
    let text = app.route_config(session).replace(
        "response_timeout = \"2s\"",
        &format!("response_timeout = \"2s\"\n{route}"),
    );
    let proxy = Proxy::start(&format!("{text}\n[store]\n{store}\n")).await;
    (app, proxy)
}

/// A legacy app behind an in-process proxy whose `[server]` table also has `server`.
async fn start_with_server(server: &str) -> (LegacyApp, Proxy) {
    let pki = std::sync::Arc::new(Pki::new());
    let app = LegacyApp::start().await;
    let text = base_config(&pki).replace(
        "shutdown_grace = \"5s\"",
        &format!("shutdown_grace = \"5s\"\n{server}"),
    );
    let proxy = Proxy::start_with(pki, &format!("{text}\n{}", app.route_config(""))).await;
    (app, proxy)
}

/// The sum of a metric's samples whose labels contain `label`.
fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The app session a reply's request carried (`-`: none reached the app).
fn app_sid(r: &Reply) -> String {
    r.headers
        .get("x-app-sid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// A refusal (503, 429) carries neither the app's cookie nor its answer.
fn assert_nothing_of_the_app_leaked(r: &Reply) {
    assert!(
        r.set_cookies().is_empty(),
        "a cookie leaked: {:?}",
        r.set_cookies()
    );
    assert!(
        !r.text().contains("app"),
        "the app's answer leaked: {}",
        r.text()
    );
}

/// sessiongate's cookie value in a reply, if it set one.
fn sg_of(r: &Reply) -> Option<String> {
    r.set_cookies().iter().find_map(|c| {
        c.strip_prefix(&format!("{SG}="))
            .map(|v| v.split(';').next().unwrap_or("").to_owned())
    })
}

async fn the_bound_evicts_anonymous_sessions_first_and_then_refuses(store: &str) {
    let (_app, proxy) = start("new_sessions_per_minute = 0", store, "").await;
    let mut alice = Browser::new(&proxy);
    assert_eq!(login(&mut alice, "alice").await.status, 303);

    // 300 anonymous visitors fill a 100-session store three times over.
    let mut visitors = proxy.h1().await;
    let mut ids = Vec::new();
    for _ in 0..300 {
        let r = visitors.send(get("/whoami")).await;
        assert_eq!(r.status, 200, "{r:?}");
        ids.push(sg_of(&r).expect("every anonymous visitor gets a session"));
    }
    let evicted = proxy.sessions.metrics.sessions_evicted.get();
    assert!(evicted >= 200, "only {evicted} sessions evicted");
    assert_eq!(
        whoami(&mut alice).await,
        "alice",
        "the signed-in session was evicted"
    );
    // Least recently used first: the first visitor's session is gone, the last one's
    // still carries its vault to the app.
    let first = holding(&proxy, &ids[0]).get("/whoami").await;
    assert_eq!(
        app_sid(&first),
        "-",
        "the oldest anonymous session survived"
    );
    let last = holding(&proxy, &ids[299]).get("/whoami").await;
    assert!(
        app_sid(&last).starts_with("app"),
        "the newest was evicted: {last:?}"
    );

    // Fill it with signed-in users: then nothing can be evicted.
    for i in 0..99 {
        let mut b = Browser::new(&proxy);
        let r = login(&mut b, &format!("user{i}")).await;
        assert_eq!(r.status, 303, "login {i}: {r:?}");
    }
    let r = proxy.get("/whoami").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.headers.contains_key("retry-after"), "{r:?}");
    assert_nothing_of_the_app_leaked(&r);
    let metrics = proxy.sessions.metrics.render();
    assert_eq!(
        metric_sum(
            &metrics,
            "sessiongate_sessions_refused_total",
            "reason=\"full\""
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(whoami(&mut alice).await, "alice");
}

#[tokio::test]
async fn memory_store_bound() {
    the_bound_evicts_anonymous_sessions_first_and_then_refuses(
        "kind = \"memory\"\nmax_sessions = 100",
    )
    .await;
}

#[tokio::test]
async fn file_store_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!(
        "kind = \"file\"\npath = \"{}\"\nmax_sessions = 100",
        dir.path().join("sessions.redb").display()
    );
    the_bound_evicts_anonymous_sessions_first_and_then_refuses(&store).await;
}

fn from(client: &'static str) -> http::Request<sessiongate::Body> {
    let mut req = get("/whoami");
    req.headers_mut()
        .insert("x-forwarded-for", http::HeaderValue::from_static(client));
    req
}

#[tokio::test]
async fn a_client_creating_sessions_too_fast_gets_429_and_others_do_not() {
    let (_app, proxy) = start(
        "new_sessions_per_minute = 6\nnew_session_burst = 5",
        "kind = \"memory\"",
        "forwarded = \"append\"",
    )
    .await;
    let mut conn = proxy.h1().await;
    let mut kept = None;
    for i in 0..5 {
        let r = conn.send(from("203.0.113.1")).await;
        assert_eq!(r.status, 200, "visit {i}: {r:?}");
        kept = sg_of(&r);
    }
    let r = conn.send(from("203.0.113.1")).await;
    assert_eq!(r.status, 429, "{r:?}");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=11).contains(&retry), "Retry-After {retry}");
    assert_nothing_of_the_app_leaked(&r);

    // Another client is unaffected, and the limited client's existing session works.
    assert_eq!(conn.send(from("203.0.113.2")).await.status, 200);
    let mut req = from("203.0.113.1");
    let cookie = format!("{SG}={}", kept.expect("a session"));
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    let r = conn.send(req).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(app_sid(&r).starts_with("app"), "{r:?}");

    let metrics = proxy.sessions.metrics.render();
    assert_eq!(
        metric_sum(
            &metrics,
            "sessiongate_sessions_refused_total",
            "reason=\"rate\""
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn anonymous_sessions_expire_sooner_than_signed_in_ones() {
    let (_app, proxy) = start(
        "anonymous_idle_timeout = \"1s\"\nidle_timeout = \"1h\"\ntouch_interval = \"200ms\"",
        "kind = \"memory\"",
        "",
    )
    .await;
    let mut alice = Browser::new(&proxy);
    assert_eq!(login(&mut alice, "alice").await.status, 303);
    let mut visitor = Browser::new(&proxy);
    visitor.get("/whoami").await;
    let anonymous = sg(&visitor);
    assert!(app_sid(&visitor.get("/whoami").await).starts_with("app"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = holding(&proxy, &anonymous).get("/whoami").await;
    assert_eq!(
        app_sid(&r),
        "-",
        "the anonymous session outlived anonymous_idle_timeout"
    );
    assert_eq!(whoami(&mut alice).await, "alice");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// Visitors that never keep cookies, as fast as four connections go: one new session
/// per request.
async fn flood(addr: std::net::SocketAddr, requests: usize) {
    let per = requests / 4;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = H1::over(tokio::net::TcpStream::connect(addr).await.unwrap()).await;
                for _ in 0..per {
                    let r = c.send(get("/whoami")).await;
                    assert_eq!(r.status, 200, "{r:?}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// The binary under a flood of cookie-less visitors: with the bound, memory after 120,000
/// new sessions is what it was after the first 4,000, the bound is enforced by eviction
/// and a signed-in user keeps working.
#[tokio::test]
async fn a_flood_of_new_visitors_leaves_memory_flat() {
    let app = LegacyApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sg.toml");
    let text = format!(
        "[server]\nplain_listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[store]\nkind = \"memory\"\nmax_sessions = 2000\n{}",
        app.route_config("new_sessions_per_minute = 0")
    );
    std::fs::write(&cfg, text).unwrap();
    let proxy = Sessiongate::spawn(&cfg, &[]);
    let mut alice = Browser::direct(proxy.addr);
    assert_eq!(login(&mut alice, "alice").await.status, 303);

    flood(proxy.addr, 4_000).await;
    let warm = rss_kib(proxy.pid());
    flood(proxy.addr, 116_000).await;
    let after = rss_kib(proxy.pid());
    let grown = after.saturating_sub(warm);
    // Measured with the bound lifted, the 116,000 sessions after the warm-up add 48 MiB
    // (debug build) to 59 MiB (release); bounded, growth is the allocator settling (0 to
    // 3 MiB here, 6.8 MiB once with a smaller flood). 36,000 sessions, as this test had
    // before, added only 4.6 MiB unbounded (release): under its old 6 MiB threshold, so
    // only the eviction count could catch a lost bound.
    assert!(
        grown < 10 * 1024,
        "RSS grew {grown} KiB under the bound (from {warm} to {after} KiB)"
    );
    let (_, metrics) = admin_get(proxy.admin.unwrap(), "/metrics").await;
    let evicted = metric_sum(&metrics, "sessiongate_sessions_evicted_total", "");
    assert!(evicted >= 117_000.0, "evicted {evicted}\n{metrics}");
    assert_eq!(whoami(&mut alice).await, "alice");
}

/// Slowloris at the connection cap: the connection that takes the last free slots gets
/// the short handshake deadline (`listener::PRESSED_DEADLINE`) and is closed soon, while
/// the ones accepted before keep the configured 30 s; the freed slot serves a normal
/// client at once.
#[tokio::test]
async fn a_connection_taking_the_last_slots_gets_short_deadlines() {
    use tokio::io::AsyncReadExt;
    let (_app, proxy) =
        start_with_server("max_connections = 10\ntls_handshake_timeout = \"30s\"").await;
    let metrics = &proxy.sessions.metrics;
    // Ten connections that never send a TLS ClientHello.
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(tokio::net::TcpStream::connect(proxy.addr).await.unwrap());
        // One at a time, so that only the tenth finds no slot free.
        for _ in 0..100 {
            if metrics.active_connections.get() == idle.len() as i64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(metrics.active_connections.get(), 10);
    assert_eq!(metrics.connections_pressed.get(), 1);
    tokio::time::sleep(sessiongate::listener::PRESSED_DEADLINE + Duration::from_secs(1)).await;
    let mut open = 0;
    for conn in &mut idle {
        let mut byte = [0u8; 1];
        // Nothing to read within the wait: still open (EOF or a reset: closed).
        let read = tokio::time::timeout(Duration::from_millis(20), conn.read(&mut byte)).await;
        open += usize::from(read.is_err());
    }
    assert_eq!(open, 9, "only the pressed connection is closed early");
    let mut visitor = Browser::new(&proxy);
    assert_eq!(whoami(&mut visitor).await, "anonymous");
}

/// `server.header_read_timeout` is sessiongate's own deadline (`activity.rs`), not
/// hyper's: a connection trickling a head (slowloris) and one left idle after a request
/// are closed once it has passed, while a response streaming for longer is not cut.
#[tokio::test]
async fn the_head_deadline_closes_slow_and_idle_connections_but_not_a_stream() {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_app, proxy) = start_with_server("header_read_timeout = \"1s\"").await;
    let deadline = Duration::from_secs(1);

    // A head that never ends.
    let mut slow = proxy.tls("localhost", &[b"http/1.1"]).await;
    let opened = tokio::time::Instant::now();
    slow.write_all(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nX-A: 1\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    let waited = opened.elapsed();
    assert!(read.is_ok(), "a trickled head kept its connection open");
    assert!(
        waited >= deadline && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );

    // A keep-alive connection left idle after an answered request.
    let mut idle = proxy.h1().await;
    let get = || {
        http::Request::get("/whoami")
            .header("host", "localhost")
            .body(sessiongate::full_body(""))
            .unwrap()
    };
    assert_eq!(idle.send(get()).await.status, 200);
    // Still open within the deadline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(idle.send(get()).await.status, 200);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let again = async {
        idle.send.ready().await?;
        idle.send.send_request(get()).await
    };
    assert!(
        again.await.is_err(),
        "an idle connection outlived the deadline"
    );

    // An event stream (an event every 100 ms) for three deadlines.
    let mut streaming = proxy.h1().await;
    let resp = streaming
        .send_raw(
            http::Request::get("/events")
                .header("host", "localhost")
                .body(sessiongate::full_body(""))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let started = tokio::time::Instant::now();
    let mut events = 0;
    while started.elapsed() < deadline * 3 {
        let frame = tokio::time::timeout(Duration::from_secs(1), body.frame()).await;
        match frame {
            Ok(Some(Ok(_))) => events += 1,
            other => panic!("the stream ended after {:?}: {other:?}", started.elapsed()),
        }
    }
    assert!(events >= 20, "{events} events in 3 s");
}
