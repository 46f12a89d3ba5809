//! The Firestore emulator freezes mid-run (SIGSTOP: connections stay open, nothing
//! answers, like a network partition) and comes back. Logins and logouts fail closed with
//! 503 and commit nothing; a fail-closed route answers 503; a `serve_cached` route keeps
//! serving the sessions it has cached; everything resumes without a restart.
//!
//! This binary holds one test: it points `FIRESTORE_EMULATOR_HOST` at an emulator of its
//! own, which it freezes.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::legacy::{login, sg, whoami, LegacyApp};
use support::*;

#[tokio::test]
async fn emulator_outage_fails_closed_and_recovers() {
    let emulator = Emulator::start();
    std::env::set_var("FIRESTORE_EMULATOR_HOST", &emulator.host);
    let app = LegacyApp::start().await;
    let pki = Arc::new(Pki::new());
    let base = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n{}\n{}",
        base_config(&pki),
        firestore_store("outage", "300ms"),
        app.route_config("store_timeout = \"2s\"")
    );
    let strict = Proxy::start_with(pki.clone(), &base).await;
    let lenient_text = base.replace(
        "[routes.session]",
        "[routes.session]\non_store_failure = \"serve_cached\"",
    );
    let lenient = Proxy::start_with(pki, &lenient_text).await;

    let mut alice = Browser::new(&strict);
    assert_eq!(login(&mut alice, "alice").await.status, 303);
    let mut bob = Browser::new(&strict);
    assert_eq!(whoami(&mut bob).await, "anonymous");
    let bob_id = sg(&bob);
    let mut carol = Browser::new(&lenient);
    assert_eq!(login(&mut carol, "carol").await.status, 303);
    assert_eq!(whoami(&mut carol).await, "carol");

    emulator.pause();
    tokio::time::sleep(Duration::from_millis(400)).await; // every cached copy is stale now

    let r = alice.get("/whoami").await;
    assert_eq!(
        r.status, 503,
        "a fail-closed route must not serve without the store"
    );
    assert_eq!(r.headers["retry-after"], "5");
    let r = login(&mut bob, "bob").await;
    assert_eq!(r.status, 503);
    assert!(
        r.set_cookies().is_empty(),
        "no cookie may leave without a committed rotation"
    );
    assert!(
        !app.sessions
            .lock()
            .unwrap()
            .values()
            .any(|u| u.as_deref() == Some("bob")),
        "the app saw bob's login"
    );
    // The lenient route serves what it has cached, but a logout still fails closed.
    assert_eq!(whoami(&mut carol).await, "carol");
    assert_eq!(carol.post_form("/logout", &[]).await.status, 503);
    // Readiness says whether this replica can serve: the strict one cannot, the lenient
    // one can (degraded), so an outage does not empty the Service.
    let (status, body) = admin_get(strict.admin.unwrap(), "/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: session store unreachable\n")
    );
    let (status, body) = admin_get(lenient.admin.unwrap(), "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("ready (degraded: session store unreachable"),
        "{body}"
    );

    emulator.resume();
    // Service resumes without a restart.
    let mut resumed = false;
    for _ in 0..50 {
        if alice.get("/whoami").await.text() == "alice" {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        resumed,
        "alice's session did not come back after the store did"
    );
    for proxy in [&strict, &lenient] {
        assert_eq!(
            admin_get(proxy.admin.unwrap(), "/readyz").await,
            (200, "ready\n".into())
        );
    }
    // Bob's refused login left his session usable or dead, never signed in.
    let r = bob.get("/whoami").await;
    assert!(r.status == 409 || r.text() == "anonymous", "{r:?}");
    assert_eq!(sg(&bob), bob_id);
    let mut bob_again = Browser::new(&strict);
    assert_eq!(login(&mut bob_again, "bob").await.status, 303);
    assert_eq!(whoami(&mut bob_again).await, "bob");
    assert_eq!(carol.post_form("/logout", &[]).await.text(), "bye");
}
