//! Streams opened before a login (an event stream, a WebSocket) must not go on showing
//! the session after it, and a login the proxy cannot read (a compressed form) still
//! rotates. The legacy app reads its session again for every event and every WebSocket
//! message, as long-poll, SSE and socket.io apps do, so a stream kept open across the
//! victim's login would show the attacker the victim's session.
#![allow(clippy::unwrap_used, clippy::result_large_err)]

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::BodyExt;
use sessiongate::full_body;
use support::legacy::{holding, login, sg, whoami, LegacyApp, SG};
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// Reads an event stream until it ends or `limit` passes; returns what it read and
/// whether it ended.
async fn read_events(body: &mut hyper::body::Incoming, limit: Duration, seen: &mut String) -> bool {
    let until = Instant::now() + limit;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, body.frame()).await {
            Err(_) => return false,
            Ok(None) | Ok(Some(Err(_))) => return true,
            Ok(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    seen.push_str(&String::from_utf8_lossy(d));
                }
            }
        }
    }
}

/// Opens the app's event stream with `planted` as the session cookie and checks that its
/// first events show the anonymous session. The connection is returned with the body:
/// dropping it would end the stream.
async fn open_events(proxy: &Proxy, planted: &str) -> (hyper::body::Incoming, H1) {
    let req = Request::get("/events")
        .header("host", "localhost")
        .header("cookie", format!("{SG}={planted}"))
        .body(full_body(""))
        .unwrap();
    let mut h1 = proxy.h1().await;
    let resp = h1.send_raw(req).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut seen = String::new();
    assert!(!read_events(&mut body, Duration::from_millis(300), &mut seen).await);
    assert!(seen.contains("data: anonymous"), "{seen:?}");
    (body, h1)
}

#[tokio::test]
async fn an_event_stream_opened_before_the_login_ends_with_it() {
    let app = LegacyApp::start().await;
    let proxy = Proxy::start(&app.route_config("")).await;
    let mut attacker = Browser::new(&proxy);
    assert_eq!(whoami(&mut attacker).await, "anonymous");
    let planted = sg(&attacker);

    let (mut body, _h1) = open_events(&proxy, &planted).await;

    let mut victim = holding(&proxy, &planted);
    let started = Instant::now();
    assert_eq!(login(&mut victim, "alice").await.status, 303);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the stream held up the login"
    );
    assert_eq!(whoami(&mut victim).await, "alice");
    let mut after = String::new();
    let ended = read_events(&mut body, Duration::from_secs(3), &mut after).await;
    assert!(
        !after.contains("alice"),
        "the pre-login stream showed alice: {after:?}"
    );
    assert!(ended, "the pre-login stream must end with the login");
}

/// A config reload between the stream's start and the login changes nothing: the
/// requests and streams in flight are known to the login whichever config admitted them.
#[tokio::test]
async fn a_stream_opened_before_a_reload_still_ends_with_the_login() {
    let app = LegacyApp::start().await;
    let routes = app.route_config("");
    let proxy = Proxy::start(&routes).await;
    let mut attacker = Browser::new(&proxy);
    assert_eq!(whoami(&mut attacker).await, "anonymous");
    let planted = sg(&attacker);

    let (mut body, _h1) = open_events(&proxy, &planted).await;

    let text = format!("{}\n{routes}", base_config(&proxy.pki));
    let config = sessiongate::Config::from_toml(&text, std::path::Path::new(".")).unwrap();
    proxy.handle.reload(config).await.unwrap();

    let mut victim = holding(&proxy, &planted);
    assert_eq!(login(&mut victim, "alice").await.status, 303);
    assert_eq!(whoami(&mut victim).await, "alice");
    let mut after = String::new();
    let ended = read_events(&mut body, Duration::from_secs(3), &mut after).await;
    assert!(
        !after.contains("alice"),
        "the stream opened before the reload showed alice: {after:?}"
    );
    assert!(
        ended,
        "the stream opened before the reload must end with the login"
    );
}

#[tokio::test]
async fn a_websocket_opened_before_the_login_is_closed_by_it() {
    let app = LegacyApp::start().await;
    // A WebSocket server that answers each message with the user of the SID cookie its
    // handshake carried, read again every time.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    let sessions = app.sessions.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let sessions = sessions.clone();
            tokio::spawn(async move {
                let mut sid = None;
                let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                          resp| {
                    sid = req
                        .headers()
                        .get("cookie")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.split("; ").find_map(|p| p.strip_prefix("SID=")))
                        .map(str::to_owned);
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() {
                        let user = sid
                            .as_ref()
                            .and_then(|s| sessions.lock().unwrap().get(s).cloned().flatten());
                        let _ = ws
                            .send(Message::text(user.unwrap_or_else(|| "anonymous".into())))
                            .await;
                    }
                }
            });
        }
    });
    let config = format!(
        "{}\n[[routes]]\npath_prefix = \"/ws\"\nupstream = \"http://{ws_addr}\"\n[routes.session]\nvault = [\"SID\"]\n",
        app.route_config("")
    );
    let proxy = Proxy::start(&config).await;
    let mut attacker = Browser::new(&proxy);
    assert_eq!(whoami(&mut attacker).await, "anonymous");
    let planted = sg(&attacker);

    let tls = proxy.tls("localhost", &[b"http/1.1"]).await;
    let mut req = "wss://localhost/ws".into_client_request_ok();
    req.headers_mut()
        .insert("cookie", format!("{SG}={planted}").parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("who")).await.unwrap();
    let first = within("the first answer", ws.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.into_text().unwrap().as_str(), "anonymous");

    let mut victim = holding(&proxy, &planted);
    assert_eq!(login(&mut victim, "alice").await.status, 303);
    assert_eq!(whoami(&mut victim).await, "alice");
    let _ = ws.send(Message::text("who")).await;
    let answer = tokio::time::timeout(Duration::from_secs(3), ws.next()).await;
    match answer {
        Ok(Some(Ok(Message::Text(t)))) => panic!("the pre-login tunnel answered {t:?}"),
        Ok(_) => {} // closed or failed: the tunnel is gone
        Err(_) => panic!("the pre-login tunnel is still open"),
    }
}

/// tungstenite's client request from a URL.
trait IntoClientRequestOk {
    fn into_client_request_ok(self) -> tokio_tungstenite::tungstenite::handshake::client::Request;
}

impl IntoClientRequestOk for &str {
    fn into_client_request_ok(self) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        self.into_client_request().unwrap()
    }
}

/// A compressed form cannot be read for credential fields: it is a login attempt, and
/// the ID rotates even where no rule names the path.
#[tokio::test]
async fn a_compressed_form_is_a_login_attempt() {
    let app = LegacyApp::start().await;
    let proxy = Proxy::start(&app.route_config("")).await;
    let mut b = Browser::new(&proxy);
    assert_eq!(whoami(&mut b).await, "anonymous");
    let before = sg(&b);
    let req = Request::post("/signin")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("content-encoding", "gzip")
        .body(full_body(vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0]))
        .unwrap();
    let r = b.send(req).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_ne!(
        b.cookie(SG),
        Some(before.as_str()),
        "a compressed form must rotate {SG}"
    );
    // The same form uncompressed and without a credential field does not.
    let now = sg(&b);
    let r = b.post_form("/signin", &[("q", "1")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(b.cookie(SG), Some(now.as_str()));
}
