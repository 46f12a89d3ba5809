//! Session fixation, attacked for real: an in-process legacy app with the classic flaw
//! (client-chosen session IDs accepted, no new ID at login) is shown vulnerable on its
//! own, then protected behind sessiongate. Also the session lifecycle around it: failed
//! logins, logout, idle and absolute expiry, periodic rotation with its grace window,
//! malformed cookies, many users, parallel vault updates, racing logins and a failing
//! store.
#![allow(clippy::unwrap_used)]

mod support;

use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use sessiongate::full_body;
use sessiongate::store::StoreOp;
use sessiongate::telemetry::SessionCounters;
use support::legacy::{holding, login, sg, whoami, LegacyApp, SG};
use support::*;

async fn start(session: &str) -> (LegacyApp, Proxy) {
    let app = LegacyApp::start().await;
    let proxy = Proxy::start(&app.route_config(session)).await;
    (app, proxy)
}

fn count(c: &Counter) -> u64 {
    SessionCounters::get(c)
}

#[tokio::test]
async fn the_app_alone_is_vulnerable() {
    let app = LegacyApp::start().await;
    let mut victim = Browser::direct(app.up.addr);
    victim.plant("SID", "attacker-chosen");
    assert_eq!(login(&mut victim, "alice").await.status, 303);
    let mut attacker = Browser::direct(app.up.addr);
    attacker.plant("SID", "attacker-chosen");
    assert_eq!(
        whoami(&mut attacker).await,
        "alice",
        "the fixation attack works without sessiongate"
    );
}

#[tokio::test]
async fn harvested_proxy_id_is_worthless_after_login() {
    let (app, proxy) = start("").await;
    // The attacker visits through the proxy and harvests an anonymous session ID.
    let mut attacker = Browser::new(&proxy);
    assert_eq!(whoami(&mut attacker).await, "anonymous");
    let planted = sg(&attacker);
    assert!(
        attacker.cookie("SID").is_none(),
        "the app's cookie reached the browser"
    );
    assert_eq!(count(&proxy.sessions.counters().created), 1);

    // The victim's browser carries the planted ID and logs in.
    let mut victim = holding(&proxy, &planted);
    let r = login(&mut victim, "alice").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.headers["location"], "/home");
    assert_ne!(sg(&victim), planted, "login must mint a new ID");
    assert_eq!(whoami(&mut victim).await, "alice");

    // The attacker's copy is dead, and reported.
    let stale_before = count(&proxy.sessions.counters().stale_ids);
    let mut replay = holding(&proxy, &planted);
    assert_eq!(whoami(&mut replay).await, "anonymous");
    assert_eq!(
        count(&proxy.sessions.counters().stale_ids),
        stale_before + 1
    );
    assert_eq!(count(&proxy.sessions.counters().login_rotated), 1);
    // The app did authenticate its (vaulted) session: only the victim's new ID reaches it.
    assert!(app
        .sessions
        .lock()
        .unwrap()
        .values()
        .any(|u| u.as_deref() == Some("alice")));
}

#[tokio::test]
async fn planted_app_cookie_never_reaches_the_app() {
    let (app, proxy) = start("").await;
    let mut victim = Browser::new(&proxy);
    victim.plant("SID", "planted-by-attacker");
    assert_eq!(whoami(&mut victim).await, "anonymous");
    assert_eq!(login(&mut victim, "alice").await.status, 303);
    let echo = victim.get("/echo").await.text();
    assert!(!echo.contains("planted-by-attacker"), "app saw: {echo}");
    assert!(
        !echo.contains(SG),
        "sessiongate's cookie was forwarded: {echo}"
    );
    assert!(!app.saw("planted-by-attacker"));

    let mut attacker = Browser::direct(app.up.addr);
    attacker.plant("SID", "planted-by-attacker");
    assert_eq!(whoami(&mut attacker).await, "anonymous");
}

/// The app adopts a session ID from the query, a `;SID=` path parameter or a form
/// field when the request has no cookie (shown directly first); through the proxy, from
/// fresh clients that hold no app cookie yet, none of them reaches the app.
#[tokio::test]
async fn app_session_ids_in_urls_and_forms_are_stripped() {
    let (app, proxy) = start("").await;
    let mut direct = Browser::direct(app.up.addr);
    direct.get("/page;SID=direct-path").await;
    direct.get("/page?SID=direct-query").await;
    direct.post_form("/page", &[("SID", "direct-form")]).await;
    for id in ["direct-path", "direct-query", "direct-form"] {
        assert!(
            app.saw(id),
            "the app does not read {id}: the test proves nothing"
        );
    }

    let echo = Browser::new(&proxy)
        .get("/echo;SID=url-param-id?keep=1&SID=query-id")
        .await
        .text();
    assert!(echo.ends_with("/echo?keep=1"), "app saw target: {echo}");
    Browser::new(&proxy)
        .post_form("/page", &[("SID", "form-id"), ("x", "1")])
        .await;
    let mut victim = Browser::new(&proxy);
    let r = victim
        .post_form(
            "/login;SID=login-path-id?SID=login-query-id",
            &[
                ("SID", "login-form-id"),
                ("username", "alice"),
                ("password", "pw-alice"),
            ],
        )
        .await;
    assert_eq!(r.status, 303);
    for id in [
        "url-param-id",
        "query-id",
        "form-id",
        "login-path-id",
        "login-query-id",
        "login-form-id",
    ] {
        assert!(!app.saw(id), "{id} reached the app");
    }
    assert_eq!(whoami(&mut victim).await, "alice");
}

#[tokio::test]
async fn failed_login_stays_anonymous() {
    let (_app, proxy) = start("").await;
    let mut b = Browser::new(&proxy);
    whoami(&mut b).await;
    let before = sg(&b);
    let r = b
        .post_form("/login", &[("username", "alice"), ("password", "wrong")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "bad credentials");
    assert_eq!(sg(&b), before, "a failed login must not rotate");
    assert_eq!(whoami(&mut b).await, "anonymous");
    assert_eq!(count(&proxy.sessions.counters().login_failure), 1);
    assert_eq!(count(&proxy.sessions.counters().login_rotated), 0);
    // The session is usable again (its login claim was released).
    assert_eq!(login(&mut b, "alice").await.status, 303);
    assert_eq!(whoami(&mut b).await, "alice");
}

#[tokio::test]
async fn logout_kills_the_session() {
    let (_app, proxy) = start("").await;
    let mut b = Browser::new(&proxy);
    login(&mut b, "alice").await;
    let id = sg(&b);
    let before = b.get("/echo").await.text();
    let app_sid = before
        .split(['\n', ';', ' '])
        .find(|p| p.starts_with("SID="))
        .unwrap()
        .to_owned();
    let r = b.post_form("/logout", &[]).await;
    assert_eq!(r.text(), "bye");
    assert_eq!(r.headers["clear-site-data"], "\"cookies\"");
    assert!(
        r.set_cookies()
            .iter()
            .any(|c| c.starts_with(&format!("{SG}=;")) && c.contains("Max-Age=0")),
        "{:?}",
        r.set_cookies()
    );
    assert!(b.cookie(SG).is_none());
    assert_eq!(count(&proxy.sessions.counters().logged_out), 1);
    // The app forgets its session at logout anyway; what matters is that the dead ID no
    // longer carries the vaulted app cookie.
    let mut replay = holding(&proxy, &id);
    let echo = replay.get("/echo").await.text();
    assert!(
        !echo.contains(&app_sid),
        "the logged-out ID still reaches the app's session: {echo}"
    );
}

#[tokio::test]
async fn idle_timeout_expires_sessions() {
    let (_app, proxy) = start("idle_timeout = \"1s\"\ntouch_interval = \"100ms\"").await;
    let mut b = Browser::new(&proxy);
    login(&mut b, "alice").await;
    // Activity keeps it alive past one idle period...
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(whoami(&mut b).await, "alice");
    }
    // ...and idleness kills it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(whoami(&mut b).await, "anonymous");
    assert_eq!(count(&proxy.sessions.counters().expired), 1);
}

#[tokio::test]
async fn absolute_timeout_expires_active_sessions() {
    let (_app, proxy) = start("absolute_timeout = \"1500ms\"\ntouch_interval = \"100ms\"").await;
    let mut b = Browser::new(&proxy);
    let r = login(&mut b, "alice").await;
    let line = r
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with(SG))
        .unwrap();
    assert!(
        line.contains("Max-Age=1;"),
        "Max-Age follows the absolute lifetime: {line}"
    );
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1100) {
        assert_eq!(whoami(&mut b).await, "alice");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(whoami(&mut b).await, "anonymous");
}

#[tokio::test]
async fn periodic_rotation_keeps_the_old_id_for_its_grace_window_only() {
    let (_app, proxy) = start("rotate_interval = \"1s\"\nrotate_grace = \"700ms\"").await;
    let mut b = Browser::new(&proxy);
    login(&mut b, "alice").await;
    let first = sg(&b);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(whoami(&mut b).await, "alice");
    let second = sg(&b);
    assert_ne!(first, second, "the session was not rotated");
    assert_eq!(count(&proxy.sessions.counters().periodic_rotated), 1);

    // An in-flight request with the old ID still works during the grace window...
    let mut in_flight = holding(&proxy, &first);
    assert_eq!(whoami(&mut in_flight).await, "alice");
    // ...and not after it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut late = holding(&proxy, &first);
    assert_eq!(whoami(&mut late).await, "anonymous");
    assert_eq!(whoami(&mut b).await, "alice");
}

#[tokio::test]
async fn malformed_cookie_values_are_no_session() {
    let (_app, proxy) = start("").await;
    let mut good = Browser::new(&proxy);
    login(&mut good, "alice").await;
    let valid = sg(&good);
    // The last character carries two unused bits, always zero in a canonical value:
    // setting one spells the same bytes differently, which must be refused too.
    const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut noncanonical = valid.clone().into_bytes();
    let last = B64URL.iter().position(|c| *c == noncanonical[42]).unwrap();
    noncanonical[42] = B64URL[last ^ 1];
    let bad: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"short".to_vec(),
        valid.as_bytes()[..42].to_vec(),
        format!("{valid}A").into_bytes(),
        valid.replacen(&valid[..2], "+/", 1).into_bytes(),
        valid.replacen(&valid[..1], "=", 1).into_bytes(),
        noncanonical,
        b"\xc3\xa9\xc3\xa9\xc3\xa9".to_vec(),
        vec![b'A'; 4000],
    ];
    let before = count(&proxy.sessions.counters().malformed_ids);
    for value in &bad {
        let mut line = format!("{SG}=").into_bytes();
        line.extend_from_slice(value);
        let req = Request::get("/echo")
            .header("host", "localhost")
            .header("cookie", http::HeaderValue::from_bytes(&line).unwrap())
            .body(full_body(""))
            .unwrap();
        let r = proxy.h1().await.send(req).await;
        assert_eq!(r.status, 200);
        assert!(!r.text().contains(SG), "forwarded to the app: {}", r.text());
        // The bad value is replaced: by a fresh anonymous session (the app set its
        // cookie) or by an expiry.
        let ours: Vec<String> = r
            .set_cookies()
            .into_iter()
            .filter(|c| c.starts_with(SG))
            .collect();
        assert_eq!(ours.len(), 1, "{ours:?}");
        assert!(!ours[0].contains(&valid));
    }
    assert_eq!(
        count(&proxy.sessions.counters().malformed_ids),
        before + bad.len() as u64
    );
    assert_eq!(whoami(&mut good).await, "alice");
}

#[tokio::test]
async fn many_users_at_once() {
    let (_app, proxy) = start("").await;
    let proxy = Arc::new(proxy);
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let user = format!("user{i}");
                let mut b = Browser::new(&proxy);
                whoami(&mut b).await;
                assert_eq!(login(&mut b, &user).await.status, 303);
                for _ in 0..3 {
                    assert_eq!(whoami(&mut b).await, user);
                }
                sg(&b)
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(within("a user's session", t).await.unwrap());
    }
    assert_eq!(ids.len(), 40, "session IDs must be distinct");
    assert_eq!(count(&proxy.sessions.counters().login_rotated), 40);
}

#[tokio::test]
async fn parallel_vault_updates_are_not_lost() {
    let (_app, proxy) = start("").await;
    let mut b = Browser::new(&proxy);
    whoami(&mut b).await;
    let id = sg(&b);
    let proxy = Arc::new(proxy);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (proxy, id) = (proxy.clone(), id.clone());
            tokio::spawn(async move {
                let mut same = holding(&proxy, &id);
                assert_eq!(same.get(&format!("/set?i={i}")).await.status, 200);
            })
        })
        .collect();
    for t in tasks {
        within("a parallel update", t).await.unwrap();
    }
    let echo = b.get("/echo").await.text();
    for i in 0..20 {
        assert!(
            echo.contains(&format!("v{i}=value{i}")),
            "v{i} lost: {echo}"
        );
    }
    assert!(echo.contains("SID=app"), "{echo}");
}

/// Two logins on one anonymous ID: the first claims the session; the second is refused
/// with 409 before the app sees it, so one vaulted app session can never be
/// authenticated twice.
#[tokio::test]
async fn racing_logins_on_one_id_let_exactly_one_through() {
    let (app, proxy) = start("").await;
    let mut first = Browser::new(&proxy);
    whoami(&mut first).await;
    let id = sg(&first);
    let proxy = Arc::new(proxy);
    let attempt = |user: &'static str| {
        let (proxy, id) = (proxy.clone(), id.clone());
        tokio::spawn(async move {
            let mut b = holding(&proxy, &id);
            let req = Request::post("/login")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-delay-ms", "400")
                .body(full_body(format!("username={user}&password=pw-{user}")))
                .unwrap();
            let r = b.send(req).await;
            (user, r, b)
        })
    };
    let a = attempt("alice");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let m = attempt("mallory");
    let (_, ra, mut ba) = within("first login", a).await.unwrap();
    let (_, rm, mut bm) = within("second login", m).await.unwrap();
    assert_eq!(ra.status, 303, "{ra:?}");
    assert_eq!(rm.status, 409, "{rm:?}");
    assert_eq!(rm.headers["retry-after"], "1");
    assert!(rm
        .text()
        .contains("sign-in for this session is still in progress"));
    assert_eq!(whoami(&mut ba).await, "alice");
    assert_eq!(sg(&bm), id, "the refused login got no new ID");
    assert_eq!(
        whoami(&mut bm).await,
        "anonymous",
        "the shared pre-login ID is dead"
    );
    let users: Vec<Option<String>> = app.sessions.lock().unwrap().values().cloned().collect();
    assert!(
        !users.contains(&Some("mallory".into())),
        "the app processed the second login"
    );
}

#[tokio::test]
async fn store_failure_fails_closed_and_recovers() {
    let app = LegacyApp::start().await;
    let store = FaultyStore::new();
    let pki = Arc::new(Pki::new());
    let text = format!(
        "{}\n{}",
        base_config(&pki),
        app.route_config("")
            .replace("response_timeout = \"2s\"", "response_timeout = \"400ms\"")
    );
    let proxy = Proxy::start_with_store(pki, &text, Some(store.clone())).await;
    let mut b = Browser::new(&proxy);
    whoami(&mut b).await;
    let id = sg(&b);

    // Store down when the login arrives: 503 before the app sees anything.
    store.fail(Failing::Every);
    let r = login(&mut b, "alice").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "5");
    assert!(r.text().contains("Sessions are temporarily unavailable"));
    assert!(r.set_cookies().is_empty());
    assert!(
        app.sessions.lock().unwrap().values().all(Option::is_none),
        "the app saw the login"
    );

    // Store fails exactly at the rotation commit: the app has authenticated its session,
    // but the login response (and any new cookie) is withheld...
    store.fail(Failing::Op(StoreOp::Rotate));
    let r = login(&mut b, "alice").await;
    assert_eq!(r.status, 503);
    assert!(!r.headers.contains_key("location"));
    assert!(r.set_cookies().is_empty());
    assert_eq!(sg(&b), id);
    store.fail(Failing::Nothing);
    // ...and the pre-login ID cannot be used: first the claim holds it, then it is dead.
    let r = holding(&proxy, &id).get("/whoami").await;
    assert_eq!(r.status, 409);
    tokio::time::sleep(Duration::from_millis(900)).await;
    let mut after = holding(&proxy, &id);
    assert_eq!(whoami(&mut after).await, "anonymous");

    // Recovery without a restart.
    let mut fresh = Browser::new(&proxy);
    assert_eq!(login(&mut fresh, "alice").await.status, 303);
    assert_eq!(whoami(&mut fresh).await, "alice");
}

#[tokio::test]
async fn routes_without_sessions_never_forward_the_proxy_cookie() {
    let up = Upstream::recording(|s| {
        text_response(
            200,
            if s.headers.contains_key("cookie") {
                "cookie"
            } else {
                "none"
            },
        )
    })
    .await;
    let proxy = Proxy::start(&format!("[[routes]]\nupstream = \"{}\"\n", up.url())).await;
    let req = Request::get("/")
        .header("host", "localhost")
        .header("cookie", format!("{SG}={}; theme=dark", "A".repeat(43)))
        .body(full_body(""))
        .unwrap();
    proxy.h1().await.send(req).await;
    assert_eq!(up.last().headers["cookie"], "theme=dark");
}

/// `serve_cached` keeps a signed-in user working through a store outage, but the copy it
/// serves from is checked like a fresh read: an expired session is not served.
#[tokio::test]
async fn serve_cached_still_enforces_expiry() {
    let app = LegacyApp::start().await;
    let store = FaultyStore::new();
    let pki = Arc::new(Pki::new());
    let text = format!(
        "{}\n{}",
        base_config(&pki),
        app.route_config("idle_timeout = \"2s\"\ntouch_interval = \"1s\"\nrotate_grace = \"1s\"")
            .replace(
                "[routes.session]\n",
                "[routes.session]\non_store_failure = \"serve_cached\"\n"
            )
    );
    let proxy = Proxy::start_with_store(pki, &text, Some(store.clone())).await;
    let mut b = Browser::new(&proxy);
    whoami(&mut b).await;
    assert_eq!(login(&mut b, "alice").await.status, 303);
    store.fail(Failing::Op(StoreOp::Load));
    assert_eq!(whoami(&mut b).await, "alice", "served from the cached copy");
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(
        whoami(&mut b).await,
        "anonymous",
        "an expired session must not be served from a cached copy"
    );
    store.fail(Failing::Nothing);
}

/// The request pipeline driven without a client socket: `AppState::handle` takes any
/// body, so a planted app cookie and a login go through every phase from memory.
#[tokio::test]
async fn the_pipeline_runs_without_a_client_socket() {
    use http_body_util::{BodyExt, Full};
    let app = LegacyApp::start().await;
    let text = format!(
        "[server]\nplain_listen = \"127.0.0.1:0\"\n{}",
        app.route_config("")
    );
    let config = sessiongate::Config::from_toml(&text, std::path::Path::new(".")).unwrap();
    let state = Arc::new(
        sessiongate::service::AppState::new(
            Arc::new(config),
            Arc::new(sessiongate::store::MemoryStore::new()),
            Arc::new(sessiongate::telemetry::Metrics::new()),
            Arc::new(sessiongate::inflight::InFlight::default()),
        )
        .unwrap(),
    );
    let conn =
        sessiongate::listener::ConnInfo::new("127.0.0.1:50000".parse().unwrap(), true, false);
    let send = |req: Request<Full<bytes::Bytes>>| {
        let state = state.clone();
        let conn = conn.clone();
        async move {
            let activity = std::sync::Arc::new(sessiongate::activity::Activity::default());
            let resp = state.handle(conn, req, activity.begin()).await.unwrap();
            let status = resp.status().as_u16();
            let cookies: Vec<String> = resp
                .headers()
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, cookies, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (status, cookies, _) = send(
        Request::get("/whoami")
            .header("host", "example.com")
            .header("cookie", "SID=planted-in-memory")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        !app.saw("planted-in-memory"),
        "the planted cookie reached the app"
    );
    let sg = cookies
        .iter()
        .find_map(|c| c.strip_prefix(&format!("{SG}=")))
        .and_then(|c| c.split(';').next())
        .expect("a session was started")
        .to_owned();
    let (status, cookies, _) = send(
        Request::post("/login")
            .header("host", "example.com")
            .header("cookie", format!("{SG}={sg}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::from("username=alice&password=pw-alice"))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 303);
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with(&format!("{SG}=")) && !c.contains(&sg)),
        "no new ID at login: {cookies:?}"
    );
    let (_, _, who) = send(
        Request::get("/whoami")
            .header("host", "example.com")
            .header("cookie", format!("{SG}={sg}"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(who, "anonymous", "the pre-login ID still works");
}
