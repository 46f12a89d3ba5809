//! Forwarding through real sockets: what the app receives (hop-by-hop headers gone,
//! X-Forwarded-*, Host), routing, streaming bodies, WebSocket upgrades, limits, upstream
//! failures and graceful drain.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::BodyExt;
use sessiongate::full_body;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn route(up: &Upstream, extra: &str) -> String {
    format!("[[routes]]\nupstream = \"{}\"\n{extra}\n", up.url())
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let up = Upstream::recording(|_| {
        http::Response::builder()
            .header("connection", "x-up-private")
            .header("x-up-private", "secret")
            .header("keep-alive", "timeout=5")
            .header("x-app", "kept")
            .body(full_body("ok"))
            .unwrap()
    })
    .await;
    let proxy = Proxy::start(&route(&up, "")).await;
    let req = Request::get("/h")
        .header("host", "localhost")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "hop")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "gzip")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-end-to-end", "kept")
        .body(full_body(""))
        .unwrap();
    let r = proxy.h1().await.send(req).await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    for h in [
        "x-private",
        "keep-alive",
        "proxy-connection",
        "te",
        "proxy-authorization",
        "upgrade",
    ] {
        assert!(
            !seen.headers.contains_key(h),
            "{h} reached the app: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.headers["x-end-to-end"], "kept");
    for h in ["x-up-private", "keep-alive"] {
        assert!(!r.headers.contains_key(h), "{h} reached the client");
    }
    assert_eq!(r.headers["x-app"], "kept");
}

#[tokio::test]
async fn x_forwarded_headers_replace_client_values_by_default() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&route(&up, "")).await;
    let req = Request::get("/")
        .header("host", "shop.example:8443")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", "evil.example")
        .body(full_body(""))
        .unwrap();
    proxy.h1().await.send(req).await;
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-host"], "shop.example:8443");
    assert_eq!(
        seen.headers["host"], "shop.example:8443",
        "Host is preserved by default"
    );
}

#[tokio::test]
async fn x_forwarded_append_and_none_modes() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&format!(
        "{}{}",
        route(
            &up,
            "path_prefix = \"/append\"\nforwarded = \"append\"\npreserve_host = false"
        ),
        route(&up, "path_prefix = \"/none\"\nforwarded = \"none\""),
    ))
    .await;
    let req = |path: &str| {
        Request::get(path)
            .header("host", "localhost")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "lb.example")
            .header("x-real-ip", "10.0.0.1")
            .header("x-original-url", "/admin")
            .body(full_body(""))
            .unwrap()
    };
    proxy.h1().await.send(req("/append")).await;
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    // Behind a trusted balancer its forwarding headers stay; a path override never does.
    assert_eq!(seen.headers["x-real-ip"], "10.0.0.1");
    assert_eq!(seen.headers["x-forwarded-host"], "lb.example");
    assert!(!seen.headers.contains_key("x-original-url"));
    assert_eq!(
        seen.headers["host"],
        up.addr.to_string(),
        "preserve_host = false sends the upstream's authority"
    );

    proxy.h1().await.send(req("/none")).await;
    let seen = up.last();
    for name in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-real-ip",
        "x-original-url",
    ] {
        assert!(!seen.headers.contains_key(name), "{name} reached the app");
    }
}

#[tokio::test]
async fn routes_by_host_and_longest_prefix() {
    let a = Upstream::recording(|_| text_response(200, "a")).await;
    let b = Upstream::recording(|_| text_response(200, "b")).await;
    let c = Upstream::recording(|_| text_response(200, "c")).await;
    let d = Upstream::recording(|_| text_response(200, "d")).await;
    let proxy = Proxy::start(&format!(
        "{}{}{}{}",
        route(&a, "name = \"root\""),
        route(&b, "name = \"api\"\npath_prefix = \"/api\""),
        route(&c, "name = \"api-v2\"\npath_prefix = \"/api/v2\""),
        route(&d, "name = \"admin-host\"\nhost = \"admin.test\""),
    ))
    .await;
    let cases = [
        ("localhost", "/", "a"),
        ("localhost", "/apix", "a"),
        ("localhost", "/api", "b"),
        ("localhost", "/api/v1/x", "b"),
        ("localhost", "/api/v2/x?q=1", "c"),
        ("ADMIN.test:443", "/api/v2/x", "d"),
    ];
    for (host, path, want) in cases {
        let req = Request::get(path)
            .header("host", host)
            .body(full_body(""))
            .unwrap();
        let r = proxy.h1().await.send(req).await;
        assert_eq!(r.text(), want, "{host}{path}");
    }
    assert_eq!(
        c.last().uri.path_and_query().unwrap().as_str(),
        "/api/v2/x?q=1"
    );
}

#[tokio::test]
async fn upstream_base_path_is_prepended() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&format!(
        "[[routes]]\nupstream = \"{}/legacy/\"\n",
        up.url()
    ))
    .await;
    proxy.get("/login?next=%2F").await;
    assert_eq!(
        up.last().uri.path_and_query().unwrap().as_str(),
        "/legacy/login?next=%2F"
    );
}

#[tokio::test]
async fn no_route_is_404() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&route(&up, "path_prefix = \"/app\"")).await;
    let r = proxy.get("/other").await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no application configured"));
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn upstream_down_is_502_with_a_page() {
    // Bind then drop to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = Proxy::start(&format!(
        "[upstream]\nconnect_timeout = \"1s\"\n[[routes]]\nupstream = \"http://127.0.0.1:{port}\"\n"
    ))
    .await;
    let r = proxy.get("/").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    assert!(r.text().contains("502 Bad Gateway"), "{}", r.text());
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let up = Upstream::raw(|_req| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        text_response(200, "late")
    })
    .await;
    let proxy = Proxy::start(&route(&up, "response_timeout = \"300ms\"")).await;
    let started = std::time::Instant::now();
    let r = proxy.get("/").await;
    assert_eq!(r.status, 504);
    assert!(r.text().contains("did not answer in time"));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn request_body_over_the_limit_is_413() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&route(&up, "max_request_body = \"1KiB\"")).await;

    // Declared length over the limit: refused before the app sees anything.
    let req = Request::post("/upload")
        .header("host", "localhost")
        .body(full_body(vec![b'x'; 2048]))
        .unwrap();
    let r = proxy.h1().await.send(req).await;
    assert_eq!(r.status, 413);
    assert_eq!(up.count(), 0);

    // Chunked body that grows past the limit while streaming.
    let (tx, body) = channel_body();
    let req = Request::post("/upload")
        .header("host", "localhost")
        .body(body)
        .unwrap();
    let mut h1 = proxy.h1().await;
    let pending = tokio::spawn(async move { h1.send(req).await });
    for _ in 0..4 {
        if tx.send(Bytes::from(vec![b'y'; 512])).await.is_err() {
            break;
        }
    }
    drop(tx);
    let r = within("413 for a streamed body", pending).await.unwrap();
    assert_eq!(r.status, 413);

    // Under the limit passes.
    let req = Request::post("/upload")
        .header("host", "localhost")
        .body(full_body(vec![b'x'; 1000]))
        .unwrap();
    assert_eq!(proxy.h1().await.send(req).await.status, 200);
    assert_eq!(up.last().body.len(), 1000);
}

#[tokio::test]
async fn oversized_or_too_many_headers_are_431() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&route(&up, "")).await;

    let req = Request::get("/")
        .header("host", "localhost")
        .header("x-big", "a".repeat(40 * 1024))
        .body(full_body(""))
        .unwrap();
    assert_eq!(proxy.h1().await.send(req).await.status, 431);

    let mut b = Request::get("/").header("host", "localhost");
    for i in 0..150 {
        b = b.header(format!("x-h{i}"), "v");
    }
    assert_eq!(
        proxy
            .h1()
            .await
            .send(b.body(full_body("")).unwrap())
            .await
            .status,
        431
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn malformed_http_gets_400_not_a_crash() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&route(&up, "")).await;
    let mut tls = proxy.tls("localhost", &[b"http/1.1"]).await;
    tls.write_all(b"GET /\x01bad HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = within("answer to malformed request", tls.read_to_end(&mut reply)).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(proxy.get("/").await.status, 200);
}

/// 50 MB each way. Each direction only sends more once the other side has seen the
/// first chunk, so a proxy that buffered whole bodies would deadlock and time out.
#[tokio::test]
async fn fifty_megabytes_stream_through_both_ways() {
    const TOTAL: usize = 50 * 1024 * 1024;
    const CHUNK: usize = 256 * 1024;
    let received = Arc::new(AtomicUsize::new(0));
    let first_seen = Arc::new(tokio::sync::Notify::new());
    let (got_first_tx, got_first_rx) = tokio::sync::oneshot::channel::<()>();
    let mut got_first_tx = Some(got_first_tx);
    let gate = Arc::new(tokio::sync::Mutex::new(Some(got_first_rx)));

    let (rx_count, notify) = (received.clone(), first_seen.clone());
    let up = Upstream::raw(move |req| {
        let (rx_count, notify, gate) = (rx_count.clone(), notify.clone(), gate.clone());
        async move {
            if req.method() == http::Method::POST {
                let mut body = req.into_body();
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.unwrap().into_data() {
                        rx_count.fetch_add(data.len(), Ordering::SeqCst);
                        notify.notify_one();
                    }
                }
                return text_response(200, "got it");
            }
            // GET: stream 50 MB, pausing after the first chunk until the client has it.
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                tx.send(Bytes::from(vec![7u8; CHUNK])).await.unwrap();
                if let Some(rx) = gate.lock().await.take() {
                    let _ = rx.await;
                }
                for _ in 1..TOTAL / CHUNK {
                    if tx.send(Bytes::from(vec![7u8; CHUNK])).await.is_err() {
                        return;
                    }
                }
            });
            http::Response::new(body)
        }
    })
    .await;
    let proxy = Proxy::start(&route(&up, "max_request_body = \"64MiB\"")).await;

    // Upload.
    let (tx, body) = channel_body();
    let req = Request::post("/up")
        .header("host", "localhost")
        .body(body)
        .unwrap();
    let mut h1 = proxy.h1().await;
    let pending = tokio::spawn(async move { h1.send(req).await });
    tx.send(Bytes::from(vec![1u8; CHUNK])).await.unwrap();
    within(
        "the app receiving the first chunk before the upload ends",
        first_seen.notified(),
    )
    .await;
    for _ in 1..TOTAL / CHUNK {
        tx.send(Bytes::from(vec![1u8; CHUNK])).await.unwrap();
    }
    drop(tx);
    let r = within("upload response", pending).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(received.load(Ordering::SeqCst), TOTAL);

    // Download.
    let mut h1 = proxy.h1().await;
    let resp = h1.send_raw(get("/down")).await;
    let mut body = resp.into_body();
    let mut got = 0usize;
    while let Some(frame) = within("download frame", body.frame()).await {
        let data = frame.unwrap().into_data().unwrap_or_default();
        got += data.len();
        if let Some(tx) = got_first_tx.take() {
            let _ = tx.send(());
        }
    }
    assert_eq!(got, TOTAL);
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    // A real WebSocket server (tungstenite) behind the proxy, echoing messages.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        ws.send(msg).await.unwrap();
                    }
                }
            });
        }
    });
    let proxy = Proxy::start(&format!("[[routes]]\nupstream = \"http://{ws_addr}\"\n")).await;
    let tls = proxy.tls("localhost", &[b"http/1.1"]).await;
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for text in ["hello", "through", "sessiongate"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let echoed = within("echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
}

#[tokio::test]
async fn plain_listener_only_when_configured() {
    let up = Upstream::ok().await;
    let text = format!(
        "[server]\nplain_listen = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"{}\"\n",
        up.url()
    );
    let proxy = Proxy::start_with(Arc::new(Pki::new()), &text).await;
    let tcp = tokio::net::TcpStream::connect(proxy.plain.unwrap())
        .await
        .unwrap();
    let r = H1::over(tcp).await.send(get("/plain")).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().headers["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_then_stops() {
    let up = Upstream::raw(|_req| async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        text_response(200, "finished")
    })
    .await;
    let mut proxy = Proxy::start(&route(&up, "")).await;
    let mut h1 = proxy.h1().await;
    let in_flight = tokio::spawn(async move { h1.send(get("/slow")).await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let stopped = proxy.shutdown();
    // New connections are refused once the listener is gone.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(proxy.addr).await.is_err(),
        "still accepting after shutdown"
    );

    let r = within("in-flight request", in_flight).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "finished");
    within("drain to finish", stopped).await.unwrap();
}

#[tokio::test]
async fn http2_requests_reach_an_http1_app() {
    let up = Upstream::recording(|s| {
        text_response(200, if s.body.is_empty() { "empty" } else { "body" })
    })
    .await;
    let proxy = Proxy::start(&route(&up, "")).await;
    let mut h2 = proxy.h2().await;
    let req = Request::post("https://localhost/form")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(full_body("a=1&b=2"))
        .unwrap();
    let r = h2.send(req).await;
    assert_eq!(r.text(), "body");
    let seen = up.last();
    assert_eq!(seen.method, http::Method::POST);
    assert_eq!(seen.body, Bytes::from_static(b"a=1&b=2"));
    assert_eq!(seen.headers["host"], "localhost");
}

#[tokio::test]
async fn https_upstream_verified_with_the_configured_ca() {
    let pki = Arc::new(Pki::new());
    let up = Upstream::raw_with(Some(pki.upstream_tls()), |_req| async {
        text_response(200, "over tls")
    })
    .await;
    let text = format!(
        "{}\n[upstream]\nca_file = \"{}\"\n[[routes]]\nupstream = \"https://localhost:{}\"\n",
        base_config(&pki),
        pki.write_ca().display(),
        up.addr.port()
    );
    let proxy = Proxy::start_with(pki.clone(), &text).await;
    let r = proxy.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "over tls");

    // Without the CA the upstream's certificate is not trusted: 502, not a silent downgrade.
    let text = format!(
        "{}\n[[routes]]\nupstream = \"https://localhost:{}\"\n",
        base_config(&pki),
        up.addr.port()
    );
    let proxy = Proxy::start_with(pki, &text).await;
    assert_eq!(proxy.get("/").await.status, 502);
}

#[tokio::test]
async fn connection_cap_makes_extra_clients_wait() {
    let up = Upstream::ok().await;
    let pki = Arc::new(Pki::new());
    let text = format!(
        "{}\n[[routes]]\nupstream = \"{}\"\n",
        base_config(&pki).replace(
            "worker_threads = 2",
            "worker_threads = 2\nmax_connections = 1"
        ),
        up.url()
    );
    let proxy = Proxy::start_with(pki, &text).await;
    let mut first = proxy.h1().await;
    assert_eq!(first.send(get("/1")).await.status, 200);

    // The second client's handshake cannot complete while the first holds the only slot.
    let addr = proxy.addr;
    let cfg = proxy.pki.client_config(&[b"http/1.1"]);
    let second =
        tokio::spawn(async move { H1::over(tls_connect(addr, cfg, "localhost").await).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "a second connection was served beyond max_connections = 1"
    );

    drop(first);
    let mut second = within("second connection after the first closed", second)
        .await
        .unwrap();
    assert_eq!(second.send(get("/2")).await.status, 200);
}
