//! Two sessiongate replicas sharing sessions through Firestore (the emulator started by
//! `tests/run-all.sh`), in front of one legacy app: a session moves freely between them,
//! a logout on one is honoured by the other within the cache bound, and the fixation
//! attacks still fail when the attacker and the victim use different replicas.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::legacy::{holding, login, sg, whoami, LegacyApp, SG};
use support::*;

async fn replicas(app: &LegacyApp, session: &str) -> (Proxy, Proxy) {
    let pki = Arc::new(Pki::new());
    let text = format!(
        "{}\n{}\n{}",
        base_config(&pki),
        firestore_store("replicas", "1s"),
        app.route_config(session)
    );
    let a = Proxy::start_with(pki.clone(), &text).await;
    let b = Proxy::start_with(pki, &text).await;
    (a, b)
}

#[tokio::test]
async fn a_session_moves_between_replicas_and_logout_reaches_both() {
    let app = LegacyApp::start().await;
    let (a, b) = replicas(&app, "").await;
    let mut user = Browser::new(&a);
    assert_eq!(whoami(&mut user).await, "anonymous");
    let anonymous = sg(&user);

    assert_eq!(login(user.on(&b), "alice").await.status, 303);
    let signed_in = sg(&user);
    assert_ne!(signed_in, anonymous);
    assert_eq!(
        whoami(user.on(&a)).await,
        "alice",
        "replica A must find the session B created"
    );
    assert_eq!(whoami(&mut holding(&a, &anonymous)).await, "anonymous");

    // B has the signed-in session cached; the logout goes through A. The app forgets
    // its own session at logout, so "anonymous" from the app proves nothing: what B
    // must stop doing is forwarding the session's vaulted app cookie.
    assert_eq!(whoami(user.on(&b)).await, "alice");
    let echo = user.on(&b).get("/echo").await.text();
    let app_sid = echo
        .split(['\n', ';', ' '])
        .find(|p| p.starts_with("SID="))
        .unwrap_or_else(|| panic!("no vaulted SID forwarded: {echo}"))
        .to_owned();
    let r = user.on(&a).post_form("/logout", &[]).await;
    assert_eq!(r.text(), "bye");
    let logged_out = Instant::now();
    let mut on_b = holding(&b, &signed_in);
    let delay = loop {
        if !on_b.get("/echo").await.text().contains(&app_sid) {
            break logged_out.elapsed();
        }
        assert!(
            logged_out.elapsed() < Duration::from_secs(3),
            "replica B still honours a logged-out ID"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("revocation delay across replicas: {delay:?}");
    assert!(
        delay <= Duration::from_millis(1300),
        "revocation took {delay:?}; the bound is cache_ttl (1s)"
    );
}

/// The attacker keeps the planted ID hot in replica B's cache while the victim logs in
/// through replica A: at no point may B serve the victim's now-authenticated app session.
#[tokio::test]
async fn fixation_fails_across_replicas_even_with_a_hot_cache() {
    let app = LegacyApp::start().await;
    let (a, b) = replicas(&app, "").await;
    let mut attacker = Browser::new(&b);
    assert_eq!(whoami(&mut attacker).await, "anonymous");
    let planted = sg(&attacker);

    let a = Arc::new(a);
    let victim = {
        let a = a.clone();
        let planted = planted.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut victim = holding(&a, &planted);
            let r = login(&mut victim, "alice").await;
            (r.status, victim)
        })
    };
    // Hammer B with the planted ID before, during and after the login.
    let started = Instant::now();
    let mut seen = std::collections::BTreeMap::new();
    while started.elapsed() < Duration::from_millis(3500) {
        let r = holding(&b, &planted).get("/whoami").await;
        let what = if r.status == 200 {
            r.text()
        } else {
            r.status.as_u16().to_string()
        };
        assert_ne!(
            what, "alice",
            "replica B served the victim's session to the attacker"
        );
        *seen.entry(what).or_insert(0) += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (status, mut victim) = within("the victim's login", victim).await.unwrap();
    assert_eq!(status, 303);
    assert_eq!(whoami(&mut victim).await, "alice");
    assert_eq!(
        whoami(victim.on(&b)).await,
        "alice",
        "the victim's new ID works on B too"
    );
    println!("attacker's view from replica B during the login: {seen:?}");
    assert!(
        seen.contains_key("409"),
        "B never saw the login claim: {seen:?}"
    );
}

/// Requests in flight across the login, on the other replica: the attacker's request on
/// B (with the planted ID) has its head in before the victim's login on A and its body
/// completed after it. The legacy app reads its session only once the body is complete,
/// as PHP does, so the answer would be alice's: B must not deliver it, whether it read the
/// body itself (a form) or streamed it to the app (anything else).
#[tokio::test]
async fn requests_in_flight_on_another_replica_across_the_login() {
    let app = LegacyApp::start().await;
    let (a, b) = replicas(&app, "").await;
    for content_type in [
        "application/x-www-form-urlencoded",
        "application/octet-stream",
    ] {
        let mut attacker = Browser::new(&b);
        assert_eq!(whoami(&mut attacker).await, "anonymous");
        let planted = sg(&attacker);

        let (tx, body) = channel_body();
        let req = http::Request::get("/whoami")
            .header("host", "localhost")
            .header("cookie", format!("{SG}={planted}"))
            .header("content-type", content_type)
            .header("content-length", "6")
            .body(body)
            .unwrap();
        let mut h1 = b.h1().await;
        let held = tokio::spawn(async move { h1.send(req).await });
        tx.send(bytes::Bytes::from_static(b"a=1")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;

        let mut victim = holding(&a, &planted);
        assert_eq!(login(&mut victim, "alice").await.status, 303);
        assert_eq!(whoami(&mut victim).await, "alice");
        let _ = tx.send(bytes::Bytes::from_static(b"&b=")).await;
        let r = within("the held request", held).await.unwrap();
        assert!(
            !r.text().contains("alice"),
            "{content_type}: replica B answered the held request as alice: {r:?}"
        );
        assert_eq!(r.status, 409, "{content_type}: {r:?}");
    }
}

#[tokio::test]
async fn planted_app_cookie_and_url_ids_fail_across_replicas() {
    let app = LegacyApp::start().await;
    let (a, b) = replicas(&app, "").await;
    let mut victim = Browser::new(&a);
    victim.plant("SID", "planted-cookie");
    whoami(&mut victim).await;
    let r = victim
        .on(&b)
        .post_form(
            "/login?SID=planted-url",
            &[("username", "alice"), ("password", "pw-alice")],
        )
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(whoami(victim.on(&a)).await, "alice");
    assert!(!app.saw("planted-cookie") && !app.saw("planted-url"));
}
