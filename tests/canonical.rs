//! The canonical request (issue classes 3, 5 and 6), over real TLS sockets against a
//! recording app: what the app receives is the normalised form sessiongate routed and
//! matched on; what cannot be normalised safely is refused with a clear status, and
//! nothing of it reaches the app.
#![allow(clippy::unwrap_used)]

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn route(up: &Upstream, extra: &str) -> String {
    format!("[[routes]]\nupstream = \"{}\"\n{extra}\n", up.url())
}

/// Sends raw bytes on a fresh TLS connection; returns the status code and the response.
async fn raw(proxy: &Proxy, request: &str) -> (u16, String) {
    let mut tls = proxy.tls("localhost", &[b"http/1.1"]).await;
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    let _ = within("the proxy's answer", tls.read_to_end(&mut reply)).await;
    let text = String::from_utf8_lossy(&reply).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

fn get(target: &str, headers: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n")
}

#[tokio::test]
async fn the_app_receives_the_canonical_target() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&route(&up, "")).await;
    for (sent, received) in [
        ("//a/./b/../c;x=y?q=1", "/a/c?q=1"),
        ("/l%6Fgin", "/login"),
        ("/a%3bb/%7euser/", "/a%3Bb/~user/"),
        ("/x/%2E%2E/login", "/login"),
    ] {
        let (status, text) = raw(&proxy, &get(sent, "")).await;
        assert_eq!(status, 200, "{sent}: {text}");
        assert_eq!(up.last().uri.to_string(), received, "{sent}");
    }
    // A standard method in another case reaches the app in its standard spelling
    // (Django and Werkzeug upper-case it; the rules compare it that way too).
    raw(&proxy, &get("/m", "").replace("GET", "post")).await;
    assert_eq!(up.last().method, http::Method::POST);
    // With keep_path_params, ;params other than vaulted names travel on.
    let proxy = Proxy::start(&route(&up, "keep_path_params = true")).await;
    raw(&proxy, &get("/shop;v=1/cart", "")).await;
    assert_eq!(up.last().uri.to_string(), "/shop;v=1/cart");
}

#[tokio::test]
async fn ambiguous_requests_are_refused_before_the_app() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&route(&up, "")).await;
    let cases: Vec<(String, u16)> = vec![
        (get("/a%2Fb", ""), 400),
        (get("/a%5cb", ""), 400),
        (get("/static/..;/me", ""), 400),
        (get("/%2541dmin", ""), 400),
        (get("/..", ""), 400),
        (get("/a%00", ""), 400),
        (get("/%C3%28", ""), 400),
        ("OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(), 400),
        ("CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\nConnection: close\r\n\r\n".into(), 400),
        ("GET / HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n".into(), 400),
        ("GET / HTTP/1.1\r\nHost: user:pw@localhost\r\nConnection: close\r\n\r\n".into(), 400),
        ("GET / HTTP/1.1\r\nHost: localhost\r\nHost: other\r\nConnection: close\r\n\r\n".into(), 400),
        ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n".into(), 400),
        ("GET http://other/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(), 400),
        (
            "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0005\r\nConnection: close\r\n\r\nhello".into(),
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
                .into(),
            501,
        ),
        (get("/", "").replace("GET", "TRACE"), 405),
        (get("/", "").replace("GET", "TRACK"), 405),
    ];
    for (request, want) in &cases {
        let (status, text) = raw(&proxy, request).await;
        assert_eq!(status, *want, "{request:?} -> {text}");
        assert!(!text.contains("ok"), "{request:?} reached the app: {text}");
    }
    assert_eq!(
        up.count(),
        0,
        "none of the refused requests may reach the app"
    );
    // The refusals are counted by reason.
    let metrics = proxy.handle.metrics.render();
    assert!(
        metrics.contains("sessiongate_rejected_requests_total{reason="),
        "{metrics}"
    );
    // TRACE is forwarded where a route allows it.
    let proxy = Proxy::start(&route(&up, "allow_trace = true")).await;
    assert_eq!(
        raw(&proxy, &get("/", "").replace("GET", "TRACE")).await.0,
        200
    );
}

#[tokio::test]
async fn framing_and_header_names_reach_the_app_canonical() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&route(&up, "")).await;
    let (status, _) = raw(
        &proxy,
        "POST /f HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nX_Forwarded_For: 6.6.6.6\r\nTransfer_Encoding: x\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let seen = up.last();
    assert_eq!(seen.body, "hello");
    for name in ["x_forwarded_for", "transfer_encoding"] {
        assert!(
            !seen.headers.contains_key(name),
            "{name} reached the app: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    let (status, _) = raw(&proxy, "POST /f HTTP/1.1\r\nHost: LocalHost.\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello").await;
    assert_eq!(status, 200);
    let seen = up.last();
    assert_eq!(seen.headers["content-length"], "5");
    assert_eq!(seen.headers["host"], "localhost", "the canonical Host");
    // Underscore headers travel where a route allows them.
    let proxy = Proxy::start(&route(&up, "forward_underscore_headers = true")).await;
    raw(&proxy, &get("/", "X_Custom: 1\r\n")).await;
    assert_eq!(up.last().headers["x_custom"], "1");
}

#[tokio::test]
async fn hosts_route_without_case_port_or_trailing_dot() {
    let a = Upstream::ok().await;
    let b = Upstream::ok().await;
    let config = format!(
        "[[routes]]\nhost = \"app.example\"\nupstream = \"{}\"\n[[routes]]\nupstream = \"{}\"\n",
        a.url(),
        b.url()
    );
    let proxy = Proxy::start(&config).await;
    for host in ["app.example", "APP.Example.", "app.example.:8443"] {
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        assert_eq!(raw(&proxy, &req).await.0, 200, "{host}");
    }
    assert_eq!(a.count(), 3, "every spelling of the host takes its route");
    assert_eq!(b.count(), 0);
}

#[tokio::test]
async fn only_allowed_upgrades_open_a_tunnel() {
    // An app that would accept h2c: sessiongate must not let the switch happen.
    let up = Upstream::recording(|seen| {
        if seen.headers.contains_key("upgrade") {
            http::Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "h2c")
                .body(sessiongate::full_body(""))
                .unwrap()
        } else {
            text_response(200, "plain")
        }
    })
    .await;
    let proxy = Proxy::start(&route(&up, "")).await;
    let (status, text) = raw(
        &proxy,
        &get("/", "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n")
            .replace("Connection: close\r\n", ""),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("plain"), "{text}");
    let seen = up.last();
    assert!(!seen.headers.contains_key("upgrade"), "{:?}", seen.headers);
    assert!(
        !seen.headers.contains_key("http2-settings"),
        "{:?}",
        seen.headers
    );
}

#[tokio::test]
async fn a_switch_nobody_asked_for_is_a_502() {
    let up = Upstream::recording(|_| {
        http::Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(sessiongate::full_body(""))
            .unwrap()
    })
    .await;
    let proxy = Proxy::start(&route(&up, "")).await;
    assert_eq!(raw(&proxy, &get("/", "")).await.0, 502);
}

#[tokio::test]
async fn headers_an_app_would_read_differently_are_refused_or_removed() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&route(&up, "")).await;
    let two_types = "POST /f HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\nConnection: close\r\n\r\na=1";
    assert_eq!(raw(&proxy, two_types).await.0, 400);
    assert_eq!(up.count(), 0);
    raw(
        &proxy,
        &get(
            "/p",
            "Forwarded: for=1.2.3.4;host=evil\r\nX-Real-IP: 1.2.3.4\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\n",
        ),
    )
    .await;
    let seen = up.last();
    for name in ["forwarded", "x-real-ip", "x-original-url", "x-rewrite-url"] {
        assert!(
            !seen.headers.contains_key(name),
            "{name} reached the app: {:?}",
            seen.headers
        );
    }
}

#[tokio::test]
async fn forms_sessiongate_cannot_read_like_the_app_are_refused() {
    let app = support::legacy::LegacyApp::start().await;
    let proxy = Proxy::start(&app.route_config("")).await;
    // Tomcat decodes field names in the form's charset: `password` in UTF-16 would hide.
    let utf16 = "POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded; charset=UTF-16BE\r\nContent-Length: 3\r\nConnection: close\r\n\r\na=1";
    assert_eq!(raw(&proxy, utf16).await.0, 415);
    let utf8 = utf16.replace("UTF-16BE", "utf-8");
    assert_eq!(raw(&proxy, &utf8).await.0, 200);
    // Millions of tiny fields would tie a worker up: refused at once.
    let body = "a&".repeat(20_000);
    let many = format!(
        "POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(raw(&proxy, &many).await.0, 400);
}
