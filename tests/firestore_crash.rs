//! The proxy killed (SIGKILL) in the middle of a login rotation, with sessions in
//! Firestore: the rotation is one transaction, so afterwards the store holds either the
//! old state or the new one, never half of each and never two usable sessions; and the
//! pre-login ID, whose login the app may already have accepted, is never usable again.
//!
//! This binary holds one test: it runs an emulator of its own, which it freezes so that
//! the kill lands while the rotation is in flight.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use firestore::{FirestoreDb, FirestoreDbOptions};
use support::legacy::{sg, whoami, LegacyApp, SG};
use support::*;

#[tokio::test]
async fn killed_mid_rotation_leaves_old_or_new_never_both() {
    let emulator = Emulator::start();
    std::env::set_var("FIRESTORE_EMULATOR_HOST", &emulator.host);
    let app = LegacyApp::start().await;
    let collection = unique_name("crash");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sessiongate.toml");
    let route = app.route_config("store_timeout = \"10s\"");
    std::fs::write(
        &config,
        format!(
            "[server]\nplain_listen = \"127.0.0.1:0\"\nworker_threads = 1\n\
             [store]\nkind = \"firestore\"\nproject_id = \"sessiongate-test\"\ncollection = \"{collection}\"\ncache_ttl = \"200ms\"\n{route}"
        ),
    )
    .unwrap();

    let env = [("FIRESTORE_EMULATOR_HOST", emulator.host.as_str())];
    let proxy = Sessiongate::spawn(&config, &env);
    let addr = proxy.addr;
    let mut victim = Browser::direct(addr);
    assert_eq!(whoami(&mut victim).await, "anonymous");
    let pre_login = sg(&victim);

    // The app takes 800 ms to accept the login; the store freezes while it does, so the
    // rotation that follows hangs in its transaction until the proxy is killed.
    let mut in_flight = Browser::direct(addr);
    in_flight.plant(SG, &pre_login);
    let login = tokio::spawn(async move {
        let req = http::Request::post("/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-delay-ms", "800")
            .body(sessiongate::full_body("username=alice&password=pw-alice"))
            .unwrap();
        in_flight.send(req).await
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    emulator.pause();
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        app.sessions
            .lock()
            .unwrap()
            .values()
            .any(|u| u.as_deref() == Some("alice")),
        "the app never accepted the login"
    );
    drop(proxy); // SIGKILL mid-rotation
    emulator.resume();
    assert!(
        login.await.is_err(),
        "the client must get no response from a killed proxy"
    );

    // What the store holds: the pre-login session (still claimed) and nothing else, or
    // its tombstone plus exactly one new live session. Never two live sessions.
    let db = FirestoreDb::with_options(FirestoreDbOptions::new("sessiongate-test".to_owned()))
        .await
        .unwrap();
    let docs: Vec<serde_json::Value> = db
        .fluent()
        .select()
        .from(collection.as_str())
        .obj()
        .query()
        .await
        .unwrap();
    let live: Vec<&serde_json::Value> = docs.iter().filter(|d| d["state"] == "live").collect();
    let tombstones = docs.iter().filter(|d| d["state"] == "revoked").count();
    match (live.len(), tombstones) {
        (1, 0) => assert!(
            live[0]["login_claim_until"].is_number(),
            "the pre-login session lost its claim: {live:?}"
        ),
        (1, 1) => assert_eq!(live[0]["authenticated"], true, "{docs:?}"),
        _ => panic!("half-written store after a crash: {docs:?}"),
    }

    // A restarted proxy never lets the pre-login ID through again.
    let restarted = Sessiongate::spawn(&config, &env);
    let addr = restarted.addr;
    let mut replay = Browser::direct(addr);
    replay.plant(SG, &pre_login);
    let r = replay.get("/whoami").await;
    assert!(r.status == 409 || r.text() == "anonymous", "{r:?}");
    assert_ne!(r.text(), "alice");
    // Once the claim has run out, the ID is dead for good.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let mut later = Browser::direct(addr);
    later.plant(SG, &pre_login);
    assert_eq!(whoami(&mut later).await, "anonymous");
}
