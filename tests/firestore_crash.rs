//! The proxy killed (SIGKILL) at every point of a login, with sessions in Firestore: a
//! tap between the proxy and the emulator stops the n-th store RPC of the login, either
//! before the emulator sees it or after it has processed it (the answer lost), and the
//! proxy is killed there. Whatever the point, the store holds either the old state or
//! the new one, never half of each and never two usable sessions, and the pre-login ID,
//! whose login the app may already have accepted, is never usable again.
//!
//! The cut points are not a list of known RPCs: the test walks n = 1, 2, ... until the
//! login completes without reaching the cut, so a rotation written as several commits
//! would be cut between them too, and fail.
//!
//! This binary holds one test: it runs an emulator of its own.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use firestore::{FirestoreDb, FirestoreDbOptions};
use support::legacy::{sg, whoami, LegacyApp, SG};
use support::*;

#[tokio::test]
async fn killed_at_every_point_of_a_login_leaves_old_or_new_never_both() {
    let emulator = Emulator::start();
    std::env::set_var("FIRESTORE_EMULATOR_HOST", &emulator.host);
    let tap = Tap::start(&emulator.host).await;
    let app = LegacyApp::start().await;
    let db = FirestoreDb::with_options(FirestoreDbOptions::new("sessiongate-test".to_owned()))
        .await
        .unwrap();
    let mut outcomes = Vec::new();
    let mut restarted = Vec::new();
    'walk: for n in 1.. {
        for at in [CutAt::Before, CutAt::After] {
            let cut = Cut { n, at };
            let (completed, after) = cut.run(&tap, &app, &emulator, &db).await;
            outcomes.push(format!("{n}/{at:?}: {completed:?}"));
            restarted.extend(after);
            if completed == Completed::Normally {
                break 'walk;
            }
            assert!(n < 20, "the login never completed: {outcomes:#?}");
        }
    }
    // Once every claim left behind has run out (settle, 200 ms, plus twice the 1 s
    // deadline), each pre-login ID is dead for good. Checked for all cuts at once,
    // because some wait for the store to time out a transaction the killed proxy left
    // open.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    futures_util::future::join_all(restarted.iter().map(Restarted::dead_for_good)).await;
    // The walk reached the end of the login: the rotation's commit was among the cuts.
    assert!(outcomes.len() >= 6, "{outcomes:#?}");
    assert!(
        outcomes.iter().any(|o| o.contains("Rotated")),
        "no cut landed after the rotation's commit: {outcomes:#?}"
    );
}

struct Cut {
    n: usize,
    at: CutAt,
}

#[derive(Debug, PartialEq, Eq)]
enum Completed {
    /// The login went through without reaching the cut.
    Normally,
    /// Killed; the store kept the pre-login session.
    KeptOld,
    /// Killed; the store holds the rotated session and the old one's tombstone.
    Rotated,
}

impl Cut {
    async fn run(
        &self,
        tap: &Tap,
        app: &LegacyApp,
        emulator: &Emulator,
        db: &FirestoreDb,
    ) -> (Completed, Option<Restarted>) {
        let collection = unique_name("crash");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sessiongate.toml");
        // A short upstream deadline, so that a claim left behind runs out quickly.
        let route = app
            .route_config("store_timeout = \"10s\"")
            .replace("response_timeout = \"2s\"", "response_timeout = \"1s\"");
        std::fs::write(
            &config,
            format!(
                "[server]\nplain_listen = \"127.0.0.1:0\"\nworker_threads = 1\n\
                 [store]\nkind = \"firestore\"\nproject_id = \"sessiongate-test\"\ncollection = \"{collection}\"\ncache_ttl = \"200ms\"\n{route}"
            ),
        )
        .unwrap();
        let proxy = Sessiongate::spawn(&config, &[("FIRESTORE_EMULATOR_HOST", tap.host.as_str())]);
        let mut victim = Browser::direct(proxy.addr);
        assert_eq!(whoami(&mut victim).await, "anonymous");
        let pre_login = sg(&victim);
        // Past the cache's freshness, so the login's own read reaches the store.
        tokio::time::sleep(Duration::from_millis(300)).await;

        let user = format!("user{}{:?}", self.n, self.at);
        tap.arm(self.n, self.at);
        let mut in_flight = Browser::direct(proxy.addr);
        in_flight.plant(SG, &pre_login);
        let form = format!("username={user}&password=pw-{user}");
        let mut login = tokio::spawn(async move {
            let req = http::Request::post("/login")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-delay-ms", "300")
                .body(sessiongate::full_body(form))
                .unwrap();
            in_flight.send(req).await
        });
        let finished = loop {
            tokio::select! {
                r = &mut login => break Some(r),
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    if tap.fired() {
                        break None;
                    }
                }
            }
        };
        if let Some(r) = finished {
            let r = r.unwrap();
            assert_eq!(r.status, 303, "{r:?}");
            assert!(!tap.fired());
            tap.release();
            return (Completed::Normally, None);
        }
        // The RPC is stopped: give the proxy a moment to be wherever it goes next, then
        // kill it there.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = tap.log();
        drop(proxy);
        tap.release();
        assert!(
            login.await.is_err(),
            "the client must get no response from a killed proxy"
        );
        let accepted = app
            .sessions
            .lock()
            .unwrap()
            .values()
            .any(|u| u.as_deref() == Some(user.as_str()));
        let outcome = self.inspect(db, &collection, accepted, &log).await;
        let restarted = self.replay(dir, &config, emulator, pre_login, user).await;
        (outcome, Some(restarted))
    }

    /// What the store holds: the pre-login session (claimed, if the app may have seen
    /// the login), or its tombstone plus exactly one new authenticated session.
    async fn inspect(
        &self,
        db: &FirestoreDb,
        collection: &str,
        accepted: bool,
        log: &[String],
    ) -> Completed {
        let docs: Vec<serde_json::Value> = db
            .fluent()
            .select()
            .from(collection)
            .obj()
            .query()
            .await
            .unwrap();
        let at = format!("cut {}/{:?} after {log:?}", self.n, self.at);
        let live: Vec<&serde_json::Value> = docs.iter().filter(|d| d["state"] == "live").collect();
        let tombstones = docs.iter().filter(|d| d["state"] == "revoked").count();
        match (live.len(), tombstones) {
            (1, 0) => {
                assert!(
                    !accepted || live[0]["login_claim_until"].is_number(),
                    "{at}: the app accepted the login but the pre-login session is unclaimed: {live:?}"
                );
                Completed::KeptOld
            }
            (1, 1) => {
                assert!(accepted, "{at}: rotated without the app's login: {docs:?}");
                assert_eq!(live[0]["authenticated"], true, "{at}: {docs:?}");
                Completed::Rotated
            }
            _ => panic!("{at}: half-written store after a crash: {docs:?}"),
        }
    }

    /// A restarted proxy never lets the pre-login ID through as the user.
    async fn replay(
        &self,
        dir: tempfile::TempDir,
        config: &Path,
        emulator: &Emulator,
        pre_login: String,
        user: String,
    ) -> Restarted {
        let proxy = Sessiongate::spawn(
            config,
            &[("FIRESTORE_EMULATOR_HOST", emulator.host.as_str())],
        );
        let mut replay = Browser::direct(proxy.addr);
        replay.plant(SG, &pre_login);
        let r = replay.get("/whoami").await;
        assert!(r.status == 409 || r.text() == "anonymous", "{r:?}");
        assert_ne!(r.text(), user);
        Restarted {
            proxy,
            _dir: dir,
            pre_login,
            user,
            cut: format!("cut {}/{:?}", self.n, self.at),
        }
    }
}

/// A proxy restarted after a cut, on the same collection.
struct Restarted {
    proxy: Sessiongate,
    _dir: tempfile::TempDir,
    pre_login: String,
    user: String,
    cut: String,
}

impl Restarted {
    /// The pre-login ID reads as anonymous. A transaction the killed proxy left open
    /// holds its lock until the store times it out; until then the session fails closed
    /// (503), and it never lets the user through.
    async fn dead_for_good(&self) {
        let started = std::time::Instant::now();
        loop {
            let mut later = Browser::direct(self.proxy.addr);
            later.plant(SG, &self.pre_login);
            let r = later.get("/whoami").await;
            let at = format!("{}: {r:?}", self.cut);
            assert_ne!(r.text(), self.user, "{at}");
            if r.status == 200 {
                assert_eq!(r.text(), "anonymous", "{at}");
                return;
            }
            assert_eq!(r.status, 503, "{at}");
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{at}: still failing: {:?}",
                self.proxy.log.lock().unwrap()
            );
        }
    }
}
