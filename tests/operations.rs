//! Operating the sidecar: the admin endpoints (health, readiness, metrics) and what they
//! report, reload on SIGHUP (routing, certificates, a bad config), and logs that never
//! carry a session ID or a vaulted cookie value.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use sessiongate::store::StoreOp;
use support::legacy::{holding, login, sg, whoami, LegacyApp, SG};
use support::*;

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

#[tokio::test]
async fn readiness_follows_the_store_and_draining() {
    let app = LegacyApp::start().await;
    let store = FaultyStore::new();
    let pki = Arc::new(Pki::new());
    let text = format!(
        "{}\n{ADMIN}\n{}",
        base_config(&pki),
        app.route_config("store_timeout = \"300ms\"")
    );
    let mut proxy = Proxy::start_with_store(pki, &text, Some(store.clone())).await;
    let admin = proxy.admin.unwrap();

    assert_eq!(admin_get(admin, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(admin_get(admin, "/readyz").await, (200, "ready\n".into()));
    store.fail(Failing::Op(StoreOp::Load));
    let (status, body) = admin_get(admin, "/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: session store unreachable\n")
    );
    assert_eq!(
        admin_get(admin, "/healthz").await.0,
        200,
        "liveness does not depend on the store"
    );
    store.fail(Failing::Nothing);
    assert_eq!(admin_get(admin, "/readyz").await.0, 200);

    // Draining: not ready while in-flight requests finish.
    let mut slow = Browser::new(&proxy);
    let in_flight = tokio::spawn(async move {
        let req = http::Request::get("/whoami")
            .header("x-delay-ms", "800")
            .body(sessiongate::full_body(""))
            .unwrap();
        slow.send(req).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = proxy.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        admin_get(admin, "/readyz").await,
        (503, "not ready: draining\n".into())
    );
    assert_eq!(
        within("in-flight request", in_flight).await.unwrap().text(),
        "anonymous"
    );
    within("drain", stopped).await.unwrap();
}

#[tokio::test]
async fn metrics_count_the_session_lifecycle() {
    let app = LegacyApp::start().await;
    let proxy = Proxy::start(&format!("{ADMIN}\n{}", app.route_config(""))).await;
    let admin = proxy.admin.unwrap();
    let scrape = || async { admin_get(admin, "/metrics").await.1 };

    let mut b = Browser::new(&proxy);
    whoami(&mut b).await;
    let anonymous = sg(&b);
    login(&mut b, "alice").await;
    let m = scrape().await;
    assert_eq!(metric(&m, "sessiongate_sessions_created_total"), 1.0, "{m}");
    assert_eq!(
        metric(&m, "sessiongate_sessions_rotated_total{kind=\"login\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "sessiongate_login_rule_matches_total{outcome=\"success\"}"
        ),
        1.0
    );
    assert_eq!(metric(&m, "sessiongate_vault_cookies_captured_total"), 1.0);
    assert_eq!(metric(&m, "sessiongate_stale_session_ids_total"), 0.0);

    b.post_form("/login", &[("username", "alice"), ("password", "nope")])
        .await;
    b.post_form("/logout", &[]).await;
    whoami(&mut holding(&proxy, &anonymous)).await; // rotated away: a fixation signal
    let m = scrape().await;
    assert_eq!(
        metric(
            &m,
            "sessiongate_login_rule_matches_total{outcome=\"failure\"}"
        ),
        1.0
    );
    assert_eq!(metric(&m, "sessiongate_sessions_logged_out_total"), 1.0);
    assert_eq!(metric(&m, "sessiongate_stale_session_ids_total"), 1.0);
    assert!(
        metric(
            &m,
            "sessiongate_requests_total{route=\"routes[0]\",status_class=\"2xx\"}"
        ) >= 4.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "sessiongate_requests_total{route=\"routes[0]\",status_class=\"3xx\"}"
        ),
        1.0
    );
    assert!(
        metric(
            &m,
            "sessiongate_upstream_duration_seconds_count{route=\"routes[0]\"}"
        ) >= 5.0
    );
    assert!(
        metric(
            &m,
            "sessiongate_store_operation_duration_seconds_count{op=\"rotate\"}"
        ) >= 1.0
    );
    assert_eq!(metric(&m, "sessiongate_active_connections"), 0.0);
}

#[tokio::test]
async fn tls_handshake_failures_are_counted() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&format!(
        "{ADMIN}\n[[routes]]\nupstream = \"{}\"\n",
        up.url()
    ))
    .await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, b"not a client hello\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = within(
        "close",
        tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut sink),
    )
    .await;
    let m = admin_get(proxy.admin.unwrap(), "/metrics").await.1;
    assert_eq!(
        metric(&m, "sessiongate_tls_handshake_failures_total"),
        1.0,
        "{m}"
    );
}

fn write_config(path: &std::path::Path, body: &str) {
    // Write then rename, as a config-management tool would: never a half file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn sighup_reloads_routing_without_dropping_a_keep_alive_connection() {
    let first = Upstream::recording(|_| text_response(200, "first")).await;
    let second = Upstream::recording(|_| text_response(200, "second")).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sg.toml");
    let config_for = |up: &Upstream| {
        format!(
            "[server]\nplain_listen = \"127.0.0.1:0\"\n{ADMIN}[[routes]]\nupstream = \"{}\"\n",
            up.url()
        )
    };
    write_config(&cfg, &config_for(&first));
    let proxy = Sessiongate::spawn(&cfg, &[]);

    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut conn = H1::over(tcp).await;
    assert_eq!(conn.send(get("/")).await.text(), "first");

    // A bad config is rejected and the old one keeps serving.
    write_config(
        &cfg,
        "[server]\nplain_listen = \"127.0.0.1:0\"\n[[routes]]\nupstreem = \"x\"\n",
    );
    let mark = proxy.log_len();
    proxy.signal("-HUP");
    let line = proxy.wait_for_log("reload rejected", mark).await;
    assert!(line.contains("unknown field `upstreem`"), "{line}");
    assert_eq!(conn.send(get("/")).await.text(), "first");

    // A good one takes effect on the same open connection.
    write_config(&cfg, &config_for(&second));
    let mark = proxy.log_len();
    proxy.signal("-HUP");
    proxy.wait_for_log("config reloaded", mark).await;
    assert_eq!(
        conn.send(get("/")).await.text(),
        "second",
        "the keep-alive connection must survive the reload"
    );
    let m = admin_get(proxy.admin.unwrap(), "/metrics").await.1;
    assert_eq!(
        metric(&m, "sessiongate_config_reloads_total{outcome=\"success\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "sessiongate_config_reloads_total{outcome=\"failure\"}"),
        1.0
    );
}

#[tokio::test]
async fn sighup_rotates_certificates_for_new_handshakes() {
    let up = Upstream::ok().await;
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let old = pki.leaf("old", &["localhost"]);
    std::fs::copy(&old.cert, &cert).unwrap();
    std::fs::copy(&old.key, &key).unwrap();
    let cfg = dir.path().join("sg.toml");
    write_config(
        &cfg,
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n[[routes]]\nupstream = \"{}\"\n",
            cert.display(),
            key.display(),
            up.url()
        ),
    );
    let proxy = Sessiongate::spawn(&cfg, &[]);
    let addr = proxy.tls.unwrap();
    let presented = || async {
        let tls = tls_connect(addr, pki.client_config(&[b"http/1.1"]), "localhost").await;
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    let before = presented().await;
    assert_eq!(before, old.der);
    let held = tls_connect(addr, pki.client_config(&[b"http/1.1"]), "localhost").await;

    let new = pki.leaf("new", &["localhost"]);
    std::fs::copy(&new.cert, &cert).unwrap();
    std::fs::copy(&new.key, &key).unwrap();
    let mark = proxy.log_len();
    proxy.signal("-HUP");
    proxy.wait_for_log("config reloaded", mark).await;
    assert_eq!(
        presented().await,
        new.der,
        "new handshakes must get the new certificate"
    );
    // A connection made before the rotation keeps working.
    assert_eq!(H1::over(held).await.send(get("/")).await.status, 200);
}

/// Drives a whole session lifecycle through the binary with debug logging and checks
/// that no log line contains a session ID or a vaulted cookie value.
#[tokio::test]
async fn logs_never_contain_session_ids_or_vaulted_values() {
    let app = LegacyApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sg.toml");
    write_config(
        &cfg,
        &format!(
            "[server]\nplain_listen = \"127.0.0.1:0\"\n{}",
            app.route_config("")
        ),
    );
    let proxy = Sessiongate::spawn(&cfg, &[("RUST_LOG", "debug")]);

    let mut secrets: Vec<String> = Vec::new();
    let mut b = Browser::direct(proxy.addr);
    whoami(&mut b).await;
    secrets.push(sg(&b));
    login(&mut b, "alice").await;
    secrets.push(sg(&b));
    b.get("/set?i=3").await;
    b.get("/echo?SID=planted-in-url").await;
    let mut stale = Browser::direct(proxy.addr);
    stale.plant(SG, &secrets[0]);
    whoami(&mut stale).await;
    let mut malformed = Browser::direct(proxy.addr);
    malformed.plant(SG, "not-a-valid-session-id");
    whoami(&mut malformed).await;
    b.post_form("/logout", &[]).await;
    // The app's own session IDs and the other vaulted value.
    secrets.extend(app.sessions.lock().unwrap().keys().cloned());
    secrets.push("value3".into());
    secrets.push("planted-in-url".into());

    let (_, log) = proxy.terminate().await;
    assert!(
        log.len() > 10,
        "too few log lines to mean anything: {log:?}"
    );
    assert!(
        log.iter().any(|l| l.contains("login_rotated")),
        "no audit line: {log:?}"
    );
    for line in &log {
        for secret in &secrets {
            assert!(
                !line.contains(secret.as_str()),
                "a log line leaks {secret:?}: {line}"
            );
        }
    }
}

/// "Log out alice everywhere": `sessiongate revoke` against the admin listener ends every
/// session signed in as alice, and no one else's.
#[tokio::test]
async fn an_operator_ends_every_session_of_a_user() {
    let app = LegacyApp::start().await;
    let proxy = Proxy::start(&format!("{ADMIN}\n{}", app.route_config(""))).await;
    let admin = proxy.admin.unwrap();
    let mut alice_laptop = Browser::new(&proxy);
    let mut alice_phone = Browser::new(&proxy);
    let mut bob = Browser::new(&proxy);
    login(&mut alice_laptop, "alice").await;
    login(&mut alice_phone, "alice").await;
    login(&mut bob, "bob").await;
    assert_eq!(whoami(&mut alice_phone).await, "alice");

    // What a cross-site form could send (no custom header), and a GET: refused.
    let path = "/sessions/revoke?subject=alice";
    assert_eq!(admin_send(admin, "POST", path, &[]).await.0, 403);
    assert_eq!(
        admin_send(admin, "GET", path, &[("x-sessiongate-admin", "1")])
            .await
            .0,
        405
    );
    assert_eq!(
        admin_send(
            admin,
            "POST",
            "/sessions/revoke",
            &[("x-sessiongate-admin", "1")]
        )
        .await
        .0,
        400
    );
    // A page whose domain was re-pointed at the listener (DNS rebinding) sends its own Host.
    assert_eq!(
        admin_send(
            admin,
            "POST",
            path,
            &[("x-sessiongate-admin", "1"), ("host", "evil.example")]
        )
        .await
        .0,
        403
    );
    assert_eq!(whoami(&mut alice_laptop).await, "alice");

    let cli = |subject: &'static str| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"))
                .args([
                    "revoke",
                    "--subject",
                    subject,
                    "--admin",
                    &admin.to_string(),
                ])
                .output()
                .unwrap()
        })
    };
    let out = cli("alice").await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ended 2 sessions\n");
    assert_eq!(whoami(&mut alice_laptop).await, "anonymous");
    assert_eq!(whoami(&mut alice_phone).await, "anonymous");
    assert_eq!(whoami(&mut bob).await, "bob");
    let metrics = admin_get(admin, "/metrics").await.1;
    assert_eq!(
        metric(&metrics, "sessiongate_sessions_revoked_by_subject_total"),
        2.0
    );
    // Nothing left to end.
    let out = cli("alice").await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ended 0 sessions\n");
}

/// With `admin.token_file`, revocation needs the token; `sessiongate revoke` reads it from
/// the config. Without one, an admin listener outside loopback does not revoke at all.
#[tokio::test]
async fn revocation_takes_the_token_when_one_is_set() {
    let app = LegacyApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "0123456789abcdef0123456789abcdef\n").unwrap();
    let pki = Arc::new(Pki::new());
    let text = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n{}",
        base_config(&pki),
        token_file.display(),
        app.route_config("")
    );
    let proxy = Proxy::start_with(pki.clone(), &text).await;
    let admin = proxy.admin.unwrap();
    let mut alice = Browser::new(&proxy);
    login(&mut alice, "alice").await;
    let path = "/sessions/revoke?subject=alice";
    let header = ("x-sessiongate-admin", "1");
    assert_eq!(admin_send(admin, "POST", path, &[header]).await.0, 401);
    let wrong = ("authorization", "Bearer 0123456789abcdef0123456789abcdee");
    assert_eq!(
        admin_send(admin, "POST", path, &[header, wrong]).await.0,
        401
    );
    assert_eq!(whoami(&mut alice).await, "alice");

    let cfg = dir.path().join("sg.toml");
    std::fs::write(&cfg, &text).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"))
            .args([
                "--config",
                cfg.to_str().unwrap(),
                "revoke",
                "--subject",
                "alice",
            ])
            .args(["--admin", &admin.to_string()])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ended 1 sessions\n",
        "{out:?}"
    );
    assert_eq!(whoami(&mut alice).await, "anonymous");

    // Outside loopback and without a token: closed.
    let open = Proxy::start_with(
        pki.clone(),
        &format!(
            "{}\n[admin]\nlisten = \"0.0.0.0:0\"\n{}",
            base_config(&pki),
            app.route_config("")
        ),
    )
    .await;
    let port = open.admin.unwrap().port();
    let (status, body) = admin_send(([127, 0, 0, 1], port).into(), "POST", path, &[header]).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("admin.token_file"), "{body}");
}
