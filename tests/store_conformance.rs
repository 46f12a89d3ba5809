//! One conformance suite for every `SessionStore` backend: the trait's contract, with
//! `MemoryStore` as the reference behaviour, written once and run against each backend.
//!
//! Each check is an `async fn` in `checks` taking a fresh `Arc<dyn SessionStore>`;
//! `conformance!` generates one `#[tokio::test]` per (backend, check), so a failure
//! names both (`file::rotate_concurrent_one_winner`). Adding a backend is one line at
//! the bottom: `conformance!(name, factory);` where the factory is an async fn (or a
//! closure returning a future) yielding a [`Backend`]; attributes before the name
//! (`#[ignore = "needs the emulator"]`) go on every test of that backend.
//!
//! Keys are minted at random, so that backends sharing state between tests or runs (an
//! emulator) never see one check's keys in another. Times are fixed values near
//! 2023-11, except in the sweep check, which works near zero so that it never touches
//! another check's entries.

#![allow(clippy::unwrap_used)]

use std::any::Any;
use std::sync::{Arc, OnceLock};

use sessiongate::session::{ChaChaIds, IdSource, SessionKey};
use sessiongate::store::{
    Claim, FileStore, LoginClaim, Lookup, MemoryStore, OldKey, RevokeReason, RotateOutcome,
    Rotation, SessionRecord, SessionStore, StoreError,
};
use sessiongate::vault::{VaultChange, VaultCookie};

/// A store under test, and whatever must outlive it (a temp dir, an emulator handle).
struct Backend {
    store: Arc<dyn SessionStore>,
    _keep: Box<dyn Any + Send>,
}

async fn memory_backend() -> Backend {
    Backend {
        store: Arc::new(MemoryStore::new()),
        _keep: Box::new(()),
    }
}

async fn file_backend() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(&dir.path().join("sessions.redb")).unwrap();
    Backend {
        store: Arc::new(store),
        _keep: Box::new(dir),
    }
}

/// The file store behind deferred anonymous writes (`store.defer_anonymous_writes`):
/// the pair must keep every promise the file store alone keeps.
async fn file_deferred_backend() -> Backend {
    let file = file_backend().await;
    let pending = sessiongate::store::bound::Bound::unbounded();
    Backend {
        store: sessiongate::store::deferring(file.store, Some(pending)),
        _keep: file._keep,
    }
}

macro_rules! conformance {
    ($(#[$attr:meta])* $backend:ident, $factory:expr) => {
        conformance!(@all [$(#[$attr])*] $backend, $factory;
            sweep_removes_only_what_is_due, create_existing_conflicts);
    };
    // For a backend whose expiry is the database's own (Firestore's TTL policy): every
    // check but the sweep.
    ($(#[$attr:meta])* $backend:ident, $factory:expr, expiry_by_ttl) => {
        conformance!(@all [$(#[$attr])*] $backend, $factory;
            sweep_is_left_to_ttl, create_existing_conflicts);
    };
    // For a store behind deferred anonymous writes, which does not read the durable
    // store to create a fresh anonymous session.
    ($(#[$attr:meta])* $backend:ident, $factory:expr, deferred) => {
        conformance!(@all [$(#[$attr])*] $backend, $factory;
            sweep_removes_only_what_is_due, create_over_a_durable_key_never_revives_it);
    };
    (@all $attrs:tt $backend:ident, $factory:expr; $sweep:ident, $create_existing:ident) => {
        conformance!(@tests $attrs $backend, $factory;
            create_then_load,
            $create_existing,
            create_concurrent_one_wins,
            load_unknown_is_missing,
            record_round_trips_extreme_values,
            merge_vault_sets_and_removes_per_name_and_path,
            merge_vault_not_live_is_none,
            merge_vault_concurrent_loses_nothing,
            touch_records_activity_only,
            claim_login_lifecycle,
            release_login_only_by_its_owner,
            rotate_login_without_subject_drops_the_old_one,
            rotate_login_revokes_old,
            rotate_periodic_leaves_grace,
            rotate_old_not_live_is_old_gone,
            rotate_onto_existing_key_conflicts,
            rotate_concurrent_one_winner,
            rotate_racing_merge_loses_nothing,
            revoke_live_once,
            sessions_of_finds_the_subjects_live_sessions_only,
            $sweep,
        );
    };
    (@tests $attrs:tt $backend:ident, $factory:expr; $($check:ident),+ $(,)?) => {
        mod $backend {
            use super::*;
            $(conformance!(@test $attrs $check, $factory);)+
        }
    };
    (@test [$(#[$attr:meta])*] $check:ident, $factory:expr) => {
        // Several worker threads: the concurrency checks must really overlap.
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn $check() {
            let backend: Backend = ($factory)().await;
            checks::$check(Arc::clone(&backend.store)).await;
            drop(backend);
        }
    };
}

conformance!(memory, memory_backend);
conformance!(file, file_backend);
conformance!(file_deferred, file_deferred_backend, deferred);
conformance!(firestore, firestore_backend, expiry_by_ttl);

async fn firestore_in(collection: &str) -> sessiongate::store::firestore::FirestoreStore {
    sessiongate::store::firestore::FirestoreStore::connect(
        "sessiongate-test",
        "(default)",
        collection,
    )
    .await
    .unwrap()
}

/// Firestore on the emulator `tests/run-all.sh` started, each check in a fresh
/// collection, behind no cache (the cache has tests of its own).
async fn firestore_backend() -> Backend {
    assert!(
        std::env::var_os("FIRESTORE_EMULATOR_HOST").is_some(),
        "FIRESTORE_EMULATOR_HOST is not set: run the suite with `bash tests/run-all.sh`"
    );
    let collection = format!("conformance_{}_{}", std::process::id(), key().hex());
    let store = firestore_in(&collection).await;
    Backend {
        store: Arc::new(store),
        _keep: Box::new(()),
    }
}

// ---- Helpers ----

/// A fresh random key: real minting, so no check ever meets another's keys.
fn key() -> SessionKey {
    static IDS: OnceLock<ChaChaIds> = OnceLock::new();
    IDS.get_or_init(|| ChaChaIds::new().unwrap()).mint().key()
}

const T0: u64 = 1_700_000_000_000;
const MINUTE: u64 = 60_000;

fn cookie(name: &str, value: &str, path: &str) -> VaultCookie {
    VaultCookie {
        name: name.into(),
        value: value.into(),
        path: path.into(),
        expires_at: None,
    }
}

fn set(name: &str, value: &str, path: &str) -> VaultChange {
    VaultChange::Set(cookie(name, value, path))
}

fn remove(name: &str, path: &str) -> VaultChange {
    VaultChange::Remove {
        name: name.into(),
        path: path.into(),
    }
}

fn record(now: u64) -> SessionRecord {
    SessionRecord::new_anonymous(now, now + 30 * MINUTE, vec![cookie("PHPSESSID", "a1", "/")])
}

async fn live(store: &dyn SessionStore, key: &SessionKey) -> SessionRecord {
    match store.load(key).await.unwrap() {
        Lookup::Live(r) => SessionRecord::clone(&r),
        other => panic!("expected a live session, got {other:?}"),
    }
}

async fn created(store: &dyn SessionStore, rec: &SessionRecord) -> SessionKey {
    let k = key();
    store.create(&k, rec).await.unwrap();
    k
}

/// The vault as a sorted list of (name, path, value), for order-insensitive comparison.
fn vault_of(r: &SessionRecord) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = r
        .vault
        .iter()
        .map(|c| (c.name.clone(), c.path.clone(), c.value.clone()))
        .collect();
    v.sort();
    v
}

fn triple(name: &str, path: &str, value: &str) -> (String, String, String) {
    (name.into(), path.into(), value.into())
}

fn login(now: u64, subject: Option<&str>, changes: Vec<VaultChange>) -> Rotation {
    Rotation {
        changes,
        authenticate: Some(subject.map(str::to_owned)),
        now,
        expires_at: now + 30 * MINUTE,
        old_becomes: OldKey::Revoked {
            reason: RevokeReason::LoginRotated,
            keep_until: now + 30 * MINUTE,
        },
    }
}

fn periodic(now: u64, changes: Vec<VaultChange>) -> Rotation {
    Rotation {
        changes,
        authenticate: None,
        now,
        expires_at: now + 30 * MINUTE,
        old_becomes: OldKey::Grace {
            until: now + MINUTE,
        },
    }
}

fn claim(owner: u64, until: u64) -> LoginClaim {
    LoginClaim { owner, until }
}

fn rotated(outcome: RotateOutcome) -> SessionRecord {
    match outcome {
        RotateOutcome::Rotated(r) => r,
        RotateOutcome::OldGone => panic!("expected Rotated, got OldGone"),
    }
}

mod checks {
    use super::*;

    pub async fn create_then_load(store: Arc<dyn SessionStore>) {
        let mut rec = record(T0);
        rec.authenticated = true;
        rec.subject = Some("alice".into());
        rec.authenticated_at = Some(T0 + 1);
        rec.login_claim = Some(claim(3, T0 + 2));
        rec.version = 7;
        rec.vault.push(VaultCookie {
            expires_at: Some(T0 + 3),
            ..cookie("lang", "fr", "/app")
        });
        let k = created(&*store, &rec).await;
        assert_eq!(
            store.load(&k).await.unwrap(),
            Lookup::Live(std::sync::Arc::new(rec))
        );
    }

    /// Creates a session, then another record on its key: a conflict, the first record
    /// kept. Returns the key and the refused record.
    async fn second_create_conflicts(store: &dyn SessionStore) -> (SessionKey, SessionRecord) {
        let first = record(T0);
        let k = created(store, &first).await;
        let mut second = record(T0 + 5);
        second.subject = Some("mallory".into());
        assert!(matches!(
            store.create(&k, &second).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(live(store, &k).await, first, "the first record is kept");
        (k, second)
    }

    pub async fn create_existing_conflicts(store: Arc<dyn SessionStore>) {
        let (k, second) = second_create_conflicts(&*store).await;

        // A tombstone occupies its key too.
        assert!(store
            .revoke(&k, RevokeReason::LoggedOut, T0 + MINUTE)
            .await
            .unwrap());
        assert!(matches!(
            store.create(&k, &second).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(
            store.load(&k).await.unwrap(),
            Lookup::Revoked(RevokeReason::LoggedOut)
        );
    }

    /// Deferred anonymous writes keep a fresh anonymous session without reading the
    /// durable store (keys are 256-bit random: an existing one is met only by a minting
    /// bug), so such a create over a durable key may be accepted; it can still never
    /// bring that key back: the next operation finds the durable tombstone.
    pub async fn create_over_a_durable_key_never_revives_it(store: Arc<dyn SessionStore>) {
        let (k, second) = second_create_conflicts(&*store).await;
        let mut signed_in = record(T0 + 6);
        signed_in.authenticated = true;
        assert!(
            matches!(
                store.create(&k, &signed_in).await,
                Err(StoreError::Conflict)
            ),
            "any other record is created in the durable store, which has the key"
        );

        assert!(store
            .revoke(&k, RevokeReason::LoggedOut, T0 + MINUTE)
            .await
            .unwrap());
        let _accepted_or_conflict = store.create(&k, &second).await;
        assert_eq!(
            store.load(&k).await.unwrap(),
            Lookup::Revoked(RevokeReason::LoggedOut)
        );
    }

    pub async fn create_concurrent_one_wins(store: Arc<dyn SessionStore>) {
        let k = key();
        let barrier = Arc::new(tokio::sync::Barrier::new(10));
        let tasks: Vec<_> = (0..10u64)
            .map(|i| {
                let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                tokio::spawn(async move {
                    let mut rec = record(T0);
                    rec.created_at = T0 + i;
                    barrier.wait().await;
                    store.create(&k, &rec).await.map(|()| rec)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(rec) => winners.push(rec),
                Err(StoreError::Conflict) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one create wins");
        assert_eq!(live(&*store, &k).await, winners[0]);
    }

    pub async fn load_unknown_is_missing(store: Arc<dyn SessionStore>) {
        assert_eq!(store.load(&key()).await.unwrap(), Lookup::Missing);
        // Other keys existing changes nothing.
        created(&*store, &record(T0)).await;
        assert_eq!(store.load(&key()).await.unwrap(), Lookup::Missing);
    }

    pub async fn record_round_trips_extreme_values(store: Arc<dyn SessionStore>) {
        let mut rec = record(0);
        rec.subject = Some("al\"ice\n\t\u{1} ü 👤 [x] = 'y' # z".into());
        rec.vault = vec![
            VaultCookie {
                expires_at: Some(u64::MAX),
                ..cookie("a", "\"quoted\" \\ ; = [[vault]]\r\n", "/x y")
            },
            VaultCookie {
                expires_at: Some(0),
                ..cookie("", "", "")
            },
            cookie("b", &"x".repeat(4096), "/"),
        ];
        rec.authenticated_at = Some(u64::MAX);
        rec.expires_at = u64::MAX;
        rec.last_seen_at = i64::MAX as u64 + 1;
        rec.version = u64::MAX - 1;
        rec.login_claim = Some(claim(u64::MAX, u64::MAX));
        let k = created(&*store, &rec).await;
        assert_eq!(live(&*store, &k).await, rec);

        // A grace entry with a "never" deadline, too.
        let new = key();
        let mut rotation = periodic(T0, Vec::new());
        rotation.old_becomes = OldKey::Grace { until: u64::MAX };
        rotation.expires_at = u64::MAX;
        let r = rotated(store.rotate(&k, &new, &rotation).await.unwrap());
        assert_eq!(r.expires_at, u64::MAX);
        assert_eq!(
            store.load(&k).await.unwrap(),
            Lookup::Grace {
                successor: new,
                until: u64::MAX
            }
        );
        assert_eq!(live(&*store, &new).await, r);
    }

    pub async fn merge_vault_sets_and_removes_per_name_and_path(store: Arc<dyn SessionStore>) {
        let mut rec = record(T0);
        rec.vault = vec![
            cookie("PHPSESSID", "a1", "/"),
            cookie("PHPSESSID", "b1", "/admin"),
            cookie("lang", "en", "/"),
        ];
        let k = created(&*store, &rec).await;
        let changes = vec![
            set("PHPSESSID", "a2", "/"), // replaces only the "/" one
            remove("PHPSESSID", "/admin"),
            remove("lang", "/other"), // no such (name, path): nothing happens
            set("cart", "3", "/shop"),
        ];
        let now = T0 + MINUTE;
        let merged = store
            .merge_vault(&k, &changes, now, now + 30 * MINUTE)
            .await
            .unwrap()
            .expect("a live session merges");
        assert_eq!(
            vault_of(&merged),
            vec![
                triple("PHPSESSID", "/", "a2"),
                triple("cart", "/shop", "3"),
                triple("lang", "/", "en"),
            ]
        );
        assert_eq!(merged.version, rec.version + 1);
        assert_eq!(merged.last_seen_at, now);
        assert_eq!(merged.expires_at, now + 30 * MINUTE);
        // Nothing else moves.
        assert_eq!(merged.created_at, rec.created_at);
        assert_eq!(merged.rotated_at, rec.rotated_at);
        assert_eq!(merged.authenticated, rec.authenticated);
        assert_eq!(merged.login_claim, rec.login_claim);
        assert_eq!(
            live(&*store, &k).await,
            merged,
            "the returned record is stored"
        );

        // An empty merge is still activity.
        let again = store
            .merge_vault(&k, &[], now + 1, now + 2)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.version, merged.version + 1);
        assert_eq!((again.last_seen_at, again.expires_at), (now + 1, now + 2));
        assert_eq!(again.vault, merged.vault);
    }

    pub async fn merge_vault_not_live_is_none(store: Arc<dyn SessionStore>) {
        let changes = [set("PHPSESSID", "x", "/")];
        let missing = key();
        assert_eq!(
            store
                .merge_vault(&missing, &changes, T0, T0 + 1)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            store.load(&missing).await.unwrap(),
            Lookup::Missing,
            "merging does not create"
        );

        let revoked = created(&*store, &record(T0)).await;
        store
            .revoke(&revoked, RevokeReason::Expired, T0 + MINUTE)
            .await
            .unwrap();
        assert_eq!(
            store
                .merge_vault(&revoked, &changes, T0, T0 + 1)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            store.load(&revoked).await.unwrap(),
            Lookup::Revoked(RevokeReason::Expired)
        );

        // A key in its grace window is not live either: callers merge into the successor.
        let old = created(&*store, &record(T0)).await;
        let new = key();
        let r = rotated(
            store
                .rotate(&old, &new, &periodic(T0 + 1, Vec::new()))
                .await
                .unwrap(),
        );
        assert_eq!(
            store.merge_vault(&old, &changes, T0, T0 + 1).await.unwrap(),
            None
        );
        assert_eq!(live(&*store, &new).await, r, "the successor is untouched");
    }

    pub async fn merge_vault_concurrent_loses_nothing(store: Arc<dyn SessionStore>) {
        const N: u64 = 20;
        let rec = record(T0);
        let k = created(&*store, &rec).await;
        let barrier = Arc::new(tokio::sync::Barrier::new(N as usize));
        let tasks: Vec<_> = (0..N)
            .map(|i| {
                let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                tokio::spawn(async move {
                    let changes = [set(&format!("c{i}"), &i.to_string(), "/")];
                    barrier.wait().await;
                    store
                        .merge_vault(&k, &changes, T0 + i, T0 + 30 * MINUTE)
                        .await
                        .unwrap()
                        .expect("live")
                })
            })
            .collect();
        let mut versions = Vec::new();
        for t in tasks {
            versions.push(t.await.unwrap().version);
        }
        versions.sort_unstable();
        let expected: Vec<u64> = (rec.version + 1..=rec.version + N).collect();
        assert_eq!(versions, expected, "every merge saw a distinct version");

        let after = live(&*store, &k).await;
        assert_eq!(after.version, rec.version + N);
        let mut want: Vec<_> = (0..N)
            .map(|i| triple(&format!("c{i}"), "/", &i.to_string()))
            .collect();
        want.push(triple("PHPSESSID", "/", "a1"));
        want.sort();
        assert_eq!(vault_of(&after), want, "no update was lost");
    }

    pub async fn touch_records_activity_only(store: Arc<dyn SessionStore>) {
        let rec = record(T0);
        let k = created(&*store, &rec).await;
        store
            .touch(&k, T0 + MINUTE, T0 + 31 * MINUTE)
            .await
            .unwrap();
        let after = live(&*store, &k).await;
        assert_eq!(
            after,
            SessionRecord {
                last_seen_at: T0 + MINUTE,
                expires_at: T0 + 31 * MINUTE,
                ..rec
            }
        );

        // Touching what is not live creates or revives nothing.
        let missing = key();
        store.touch(&missing, T0, T0 + 1).await.unwrap();
        assert_eq!(store.load(&missing).await.unwrap(), Lookup::Missing);
        store
            .revoke(&k, RevokeReason::LoggedOut, T0 + MINUTE)
            .await
            .unwrap();
        store
            .touch(&k, T0 + 2 * MINUTE, T0 + 40 * MINUTE)
            .await
            .unwrap();
        assert_eq!(
            store.load(&k).await.unwrap(),
            Lookup::Revoked(RevokeReason::LoggedOut)
        );
    }

    pub async fn claim_login_lifecycle(store: Arc<dyn SessionStore>) {
        let rec = record(T0);
        let k = created(&*store, &rec).await;
        let until = T0 + 20_000;

        assert_eq!(
            store.claim_login(&k, claim(1, until), T0).await.unwrap(),
            Claim::Claimed
        );
        let claimed = live(&*store, &k).await;
        assert_eq!(claimed.login_claim, Some(claim(1, until)));
        assert_eq!(claimed.version, rec.version + 1);

        // Held up to (not including) `until`.
        assert_eq!(
            store
                .claim_login(&k, claim(2, T0 + 99_000), T0 + 1)
                .await
                .unwrap(),
            Claim::Busy
        );
        assert_eq!(
            store
                .claim_login(&k, claim(2, T0 + 99_000), until - 1)
                .await
                .unwrap(),
            Claim::Busy
        );
        assert_eq!(
            live(&*store, &k).await,
            claimed,
            "a refused claim changes nothing"
        );

        // Once `until` has passed the claim is stale, and a new one takes over.
        let until2 = until + 20_000;
        assert_eq!(
            store
                .claim_login(&k, claim(2, until2), until)
                .await
                .unwrap(),
            Claim::Claimed
        );
        assert_eq!(live(&*store, &k).await.login_claim, Some(claim(2, until2)));

        // Released by its owner: claimable again at once.
        store.release_login(&k, 2).await.unwrap();
        let released = live(&*store, &k).await;
        assert_eq!(released.login_claim, None);
        assert!(released.version > claimed.version);
        assert_eq!(
            store
                .claim_login(&k, claim(3, until2), until + 1)
                .await
                .unwrap(),
            Claim::Claimed
        );

        // Not live: Gone, and nothing is created or revived.
        let missing = key();
        assert_eq!(
            store
                .claim_login(&missing, claim(4, until), T0)
                .await
                .unwrap(),
            Claim::Gone
        );
        store.release_login(&missing, 4).await.unwrap();
        assert_eq!(store.load(&missing).await.unwrap(), Lookup::Missing);
        store
            .revoke(&k, RevokeReason::LoginIncomplete, T0 + MINUTE)
            .await
            .unwrap();
        assert_eq!(
            store.claim_login(&k, claim(5, until), T0).await.unwrap(),
            Claim::Gone
        );
        store.release_login(&k, 3).await.unwrap();
        assert_eq!(
            store.load(&k).await.unwrap(),
            Lookup::Revoked(RevokeReason::LoginIncomplete)
        );
    }

    /// A login whose claim ran out (its upstream call was slow) must not release the
    /// claim a second login took meanwhile: that would let a third login, or the
    /// ordinary requests the claim holds off, run on the session while the second login
    /// is in the app.
    pub async fn release_login_only_by_its_owner(store: Arc<dyn SessionStore>) {
        let k = created(&*store, &record(T0)).await;
        let first = claim(11, T0 + 1_000);
        let second = claim(22, T0 + 60_000);
        assert_eq!(
            store.claim_login(&k, first, T0).await.unwrap(),
            Claim::Claimed
        );
        assert_eq!(
            store.claim_login(&k, second, T0 + 1_000).await.unwrap(),
            Claim::Claimed
        );
        let held = live(&*store, &k).await;

        store.release_login(&k, first.owner).await.unwrap();
        assert_eq!(
            live(&*store, &k).await,
            held,
            "a stale owner's release changes nothing"
        );
        assert_eq!(
            store
                .claim_login(&k, claim(33, T0 + 90_000), T0 + 2_000)
                .await
                .unwrap(),
            Claim::Busy,
            "the second login still holds the session"
        );

        store.release_login(&k, second.owner).await.unwrap();
        assert_eq!(live(&*store, &k).await.login_claim, None);
    }

    pub async fn rotate_login_revokes_old(store: Arc<dyn SessionStore>) {
        let mut rec = record(T0);
        rec.vault.push(cookie("lang", "en", "/"));
        let old = created(&*store, &rec).await;
        // A login claims first; the rotation must clear the claim.
        assert_eq!(
            store
                .claim_login(&old, claim(1, T0 + MINUTE), T0 + 1)
                .await
                .unwrap(),
            Claim::Claimed
        );
        store
            .merge_vault(&old, &[set("cart", "1", "/")], T0 + 2, T0 + 30 * MINUTE)
            .await
            .unwrap();
        let base = live(&*store, &old).await;
        assert!(base.version > 1);

        let now = T0 + 10_000;
        let new = key();
        let rotation = login(
            now,
            Some("alice"),
            vec![set("PHPSESSID", "fresh", "/"), remove("lang", "/")],
        );
        let r = rotated(store.rotate(&old, &new, &rotation).await.unwrap());

        let expected = SessionRecord {
            authenticated: true,
            subject: Some("alice".into()),
            // A set cookie moves to the end, as the app's latest.
            vault: vec![cookie("cart", "1", "/"), cookie("PHPSESSID", "fresh", "/")],
            created_at: rec.created_at,
            authenticated_at: Some(now),
            rotated_at: now,
            last_seen_at: now,
            expires_at: rotation.expires_at,
            version: 1,
            login_claim: None,
        };
        assert_eq!(
            r, expected,
            "built from the current record ({base:?}), claim consumed"
        );
        assert_eq!(
            vault_of(&r),
            vec![triple("PHPSESSID", "/", "fresh"), triple("cart", "/", "1")]
        );
        assert!(r.authenticated);
        assert_eq!(r.subject.as_deref(), Some("alice"));
        assert_eq!(r.authenticated_at, Some(now));
        assert_eq!(r.created_at, rec.created_at);
        assert_eq!((r.rotated_at, r.last_seen_at), (now, now));
        assert_eq!(r.expires_at, rotation.expires_at);
        assert_eq!(r.version, 1);
        assert_eq!(r.login_claim, None);

        assert_eq!(live(&*store, &new).await, r);
        assert_eq!(
            store.load(&old).await.unwrap(),
            Lookup::Revoked(RevokeReason::LoginRotated)
        );
        // The tombstone is a tombstone: no second rotation from it.
        assert_eq!(
            store.rotate(&old, &key(), &rotation).await.unwrap(),
            RotateOutcome::OldGone
        );
    }

    /// A second login on an authenticated session whose rule finds no subject: the new
    /// session must not carry the previous user's subject (it may be someone else).
    pub async fn rotate_login_without_subject_drops_the_old_one(store: Arc<dyn SessionStore>) {
        let old = created(&*store, &record(T0)).await;
        let now = T0 + 1_000;
        let first = key();
        let r1 = rotated(
            store
                .rotate(&old, &first, &login(now, Some("alice"), Vec::new()))
                .await
                .unwrap(),
        );
        assert_eq!(r1.subject.as_deref(), Some("alice"));
        let second = key();
        let r2 = rotated(
            store
                .rotate(&first, &second, &login(now + 1, None, Vec::new()))
                .await
                .unwrap(),
        );
        assert_eq!(r2.subject, None);
        assert!(r2.authenticated);
        assert_eq!(r2.authenticated_at, Some(now + 1));
        assert_eq!(live(&*store, &second).await, r2);
    }

    pub async fn rotate_periodic_leaves_grace(store: Arc<dyn SessionStore>) {
        let mut rec = record(T0);
        rec.authenticated = true;
        rec.subject = Some("bob".into());
        rec.authenticated_at = Some(T0);
        let old = created(&*store, &rec).await;
        let now = T0 + 15 * MINUTE;
        let new = key();
        let rotation = periodic(now, vec![set("PHPSESSID", "b2", "/")]);
        let r = rotated(store.rotate(&old, &new, &rotation).await.unwrap());

        let expected = SessionRecord {
            vault: vec![cookie("PHPSESSID", "b2", "/")],
            rotated_at: now,
            last_seen_at: now,
            expires_at: rotation.expires_at,
            version: 1,
            ..rec.clone()
        };
        assert_eq!(r, expected);
        assert!(r.authenticated);
        assert_eq!(r.subject.as_deref(), Some("bob"));
        assert_eq!(
            r.authenticated_at,
            Some(T0),
            "periodic rotation is no login"
        );
        assert_eq!((r.rotated_at, r.version), (now, 1));

        assert_eq!(live(&*store, &new).await, r);
        assert_eq!(
            store.load(&old).await.unwrap(),
            Lookup::Grace {
                successor: new,
                until: now + MINUTE
            }
        );
    }

    pub async fn rotate_old_not_live_is_old_gone(store: Arc<dyn SessionStore>) {
        let rotation = login(T0, Some("alice"), vec![set("PHPSESSID", "x", "/")]);

        // Missing.
        let new = key();
        assert_eq!(
            store.rotate(&key(), &new, &rotation).await.unwrap(),
            RotateOutcome::OldGone
        );
        assert_eq!(store.load(&new).await.unwrap(), Lookup::Missing);

        // Revoked.
        let revoked = created(&*store, &record(T0)).await;
        store
            .revoke(&revoked, RevokeReason::LoggedOut, T0 + MINUTE)
            .await
            .unwrap();
        let new = key();
        assert_eq!(
            store.rotate(&revoked, &new, &rotation).await.unwrap(),
            RotateOutcome::OldGone
        );
        assert_eq!(store.load(&new).await.unwrap(), Lookup::Missing);
        assert_eq!(
            store.load(&revoked).await.unwrap(),
            Lookup::Revoked(RevokeReason::LoggedOut)
        );

        // In grace: already rotated.
        let old = created(&*store, &record(T0)).await;
        let successor = key();
        rotated(
            store
                .rotate(&old, &successor, &periodic(T0, Vec::new()))
                .await
                .unwrap(),
        );
        let new = key();
        assert_eq!(
            store.rotate(&old, &new, &rotation).await.unwrap(),
            RotateOutcome::OldGone
        );
        assert_eq!(store.load(&new).await.unwrap(), Lookup::Missing);
        assert_eq!(
            store.load(&old).await.unwrap(),
            Lookup::Grace {
                successor,
                until: T0 + MINUTE
            }
        );
    }

    pub async fn rotate_onto_existing_key_conflicts(store: Arc<dyn SessionStore>) {
        let old_rec = record(T0);
        let old = created(&*store, &old_rec).await;
        let mut taken_rec = record(T0 + 1);
        taken_rec.subject = Some("someone else".into());
        let taken = created(&*store, &taken_rec).await;

        let rotation = login(T0 + 2, Some("alice"), vec![set("PHPSESSID", "x", "/")]);
        assert!(matches!(
            store.rotate(&old, &taken, &rotation).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(
            live(&*store, &old).await,
            old_rec,
            "old stays live, unchanged"
        );
        assert_eq!(
            live(&*store, &taken).await,
            taken_rec,
            "the other is untouched"
        );

        // A tombstone under the new key conflicts as well.
        store
            .revoke(&taken, RevokeReason::LoggedOut, T0 + MINUTE)
            .await
            .unwrap();
        assert!(matches!(
            store.rotate(&old, &taken, &rotation).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(live(&*store, &old).await, old_rec);
        assert_eq!(
            store.load(&taken).await.unwrap(),
            Lookup::Revoked(RevokeReason::LoggedOut)
        );
    }

    pub async fn rotate_concurrent_one_winner(store: Arc<dyn SessionStore>) {
        // Several rounds, alternating login and periodic rotation, so that the race is
        // actually run rather than won by whoever was scheduled first.
        for round in 0..10u64 {
            let old = created(&*store, &record(T0)).await;
            let now = T0 + round;
            let rotation = if round % 2 == 0 {
                login(now, Some("alice"), Vec::new())
            } else {
                periodic(now, Vec::new())
            };
            let (a, b) = (key(), key());
            let barrier = Arc::new(tokio::sync::Barrier::new(2));
            let spawn = |new: SessionKey| {
                let (store, barrier, rotation) =
                    (Arc::clone(&store), Arc::clone(&barrier), rotation.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.rotate(&old, &new, &rotation).await.unwrap()
                })
            };
            let (ta, tb) = (spawn(a), spawn(b));
            let (ra, rb) = (ta.await.unwrap(), tb.await.unwrap());
            let (winner, loser, record) = match (ra, rb) {
                (RotateOutcome::Rotated(r), RotateOutcome::OldGone) => (a, b, r),
                (RotateOutcome::OldGone, RotateOutcome::Rotated(r)) => (b, a, r),
                other => panic!("round {round}: expected exactly one winner, got {other:?}"),
            };
            assert_eq!(live(&*store, &winner).await, record, "round {round}");
            assert_eq!(
                store.load(&loser).await.unwrap(),
                Lookup::Missing,
                "round {round}: the loser's key must not exist"
            );
            let expected_old = match rotation.old_becomes {
                OldKey::Grace { until } => Lookup::Grace {
                    successor: winner,
                    until,
                },
                OldKey::Revoked { reason, .. } => Lookup::Revoked(reason),
            };
            assert_eq!(
                store.load(&old).await.unwrap(),
                expected_old,
                "round {round}"
            );
        }
    }

    pub async fn rotate_racing_merge_loses_nothing(store: Arc<dyn SessionStore>) {
        // The reason rotation builds the new record inside the store: a vault update
        // either lands before the rotation (and is carried over) or finds the old key
        // no longer live (and says so). It is never acknowledged and then dropped.
        for round in 0..10u64 {
            let old = created(&*store, &record(T0)).await;
            let new = key();
            let barrier = Arc::new(tokio::sync::Barrier::new(2));
            let merge = {
                let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                tokio::spawn(async move {
                    let changes = [set("cart", &round.to_string(), "/")];
                    barrier.wait().await;
                    store
                        .merge_vault(&old, &changes, T0 + 1, T0 + 30 * MINUTE)
                        .await
                        .unwrap()
                })
            };
            let rotate = {
                let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    store
                        .rotate(&old, &new, &login(T0 + 2, Some("alice"), Vec::new()))
                        .await
                        .unwrap()
                })
            };
            let merged = merge.await.unwrap();
            let r = rotated(rotate.await.unwrap());
            let carried = r.vault.iter().any(|c| c.name == "cart");
            assert_eq!(
                carried,
                merged.is_some(),
                "round {round}: merge acknowledged = {}, carried into the new record = {carried}",
                merged.is_some()
            );
            assert_eq!(live(&*store, &new).await, r, "round {round}");
        }
    }

    pub async fn sessions_of_finds_the_subjects_live_sessions_only(store: Arc<dyn SessionStore>) {
        let signed_in = |subject: &str| {
            let mut r = record(T0);
            r.authenticated = true;
            r.authenticated_at = Some(T0);
            r.subject = Some(subject.to_owned());
            r
        };
        let s = &*store;
        let a1 = created(s, &signed_in("alice")).await;
        let a2 = created(s, &signed_in("alice")).await;
        let mut claimed = signed_in("alice");
        claimed.login_claim = Some(claim(9, T0 + MINUTE));
        let a3 = created(s, &claimed).await;
        let _bob = created(s, &signed_in("bob")).await;
        let _other_case = created(s, &signed_in("Alice")).await;
        let _anonymous = created(s, &record(T0)).await;
        // An anonymous session becomes alice's at login: its new key counts, the old
        // one (a tombstone) does not.
        let before_login = created(s, &record(T0)).await;
        let after_login = key();
        rotated(
            s.rotate(
                &before_login,
                &after_login,
                &login(T0 + 1, Some("alice"), vec![]),
            )
            .await
            .unwrap(),
        );
        // Logged out: not hers any more.
        let gone = created(s, &signed_in("alice")).await;
        assert!(s
            .revoke(&gone, RevokeReason::LoggedOut, T0 + MINUTE)
            .await
            .unwrap());

        let mut found = s.sessions_of("alice").await.unwrap();
        found.sort();
        let mut expected = vec![a1, a2, a3, after_login];
        expected.sort();
        assert_eq!(found, expected);
        assert!(s.sessions_of("nobody").await.unwrap().is_empty());

        // Ending them all (what a privilege change or an operator does).
        for k in &found {
            assert!(s
                .revoke(k, RevokeReason::SubjectRevoked, T0 + MINUTE)
                .await
                .unwrap());
            assert_eq!(
                s.load(k).await.unwrap(),
                Lookup::Revoked(RevokeReason::SubjectRevoked)
            );
        }
        assert!(s.sessions_of("alice").await.unwrap().is_empty());
        assert_eq!(s.sessions_of("bob").await.unwrap().len(), 1);
    }

    pub async fn revoke_live_once(store: Arc<dyn SessionStore>) {
        let k = created(&*store, &record(T0)).await;
        assert!(store
            .revoke(&k, RevokeReason::LoggedOut, T0 + MINUTE)
            .await
            .unwrap());
        assert_eq!(
            store.load(&k).await.unwrap(),
            Lookup::Revoked(RevokeReason::LoggedOut)
        );
        // Again: not live any more, and the first reason stays.
        assert!(!store
            .revoke(&k, RevokeReason::Expired, T0 + 2 * MINUTE)
            .await
            .unwrap());
        assert_eq!(
            store.load(&k).await.unwrap(),
            Lookup::Revoked(RevokeReason::LoggedOut)
        );

        // Missing: false, and no tombstone appears.
        let missing = key();
        assert!(!store
            .revoke(&missing, RevokeReason::LoggedOut, T0 + MINUTE)
            .await
            .unwrap());
        assert_eq!(store.load(&missing).await.unwrap(), Lookup::Missing);

        // In grace: not live, stays in grace.
        let old = created(&*store, &record(T0)).await;
        let new = key();
        rotated(
            store
                .rotate(&old, &new, &periodic(T0, Vec::new()))
                .await
                .unwrap(),
        );
        assert!(!store
            .revoke(&old, RevokeReason::LoggedOut, T0 + MINUTE)
            .await
            .unwrap());
        assert_eq!(
            store.load(&old).await.unwrap(),
            Lookup::Grace {
                successor: new,
                until: T0 + MINUTE
            }
        );
    }

    /// A store that leaves deletion to the database's TTL policy sweeps nothing, and an
    /// expired session stays readable until then: the session layer re-checks expiry on
    /// every read.
    pub async fn sweep_is_left_to_ttl(store: Arc<dyn SessionStore>) {
        let k = key();
        let mut expired = record(1_000);
        expired.expires_at = 2_000;
        store.create(&k, &expired).await.unwrap();
        assert_eq!(store.sweep(u64::MAX / 2).await.unwrap(), 0);
        assert_eq!(
            store.load(&k).await.unwrap(),
            Lookup::Live(std::sync::Arc::new(expired))
        );
    }

    pub async fn sweep_removes_only_what_is_due(store: Arc<dyn SessionStore>) {
        // Near zero, far below every other check's times: on a store shared between
        // checks this sweep can only remove its own entries. Leftovers of an earlier
        // aborted run are cleared first so that the count is exact.
        const NOW: u64 = 10_000;
        store.sweep(NOW + 1_000).await.unwrap();

        let with_expiry = |expires_at: u64| SessionRecord {
            expires_at,
            ..record(1)
        };
        // Live: due when expires_at <= now.
        let live_past = created(&*store, &with_expiry(NOW - 1)).await;
        let live_at = created(&*store, &with_expiry(NOW)).await;
        let live_kept = created(&*store, &with_expiry(NOW + 1)).await;
        // Revoked: due when keep_until <= now.
        let revoked_past = created(&*store, &with_expiry(NOW + 50)).await;
        store
            .revoke(&revoked_past, RevokeReason::LoggedOut, NOW - 1)
            .await
            .unwrap();
        let revoked_kept = created(&*store, &with_expiry(NOW + 50)).await;
        store
            .revoke(&revoked_kept, RevokeReason::LoggedOut, NOW + 1)
            .await
            .unwrap();
        // Grace: due when its window is over; the successor lives on its own expiry.
        let grace_old = created(&*store, &with_expiry(NOW + 50)).await;
        let grace_new = key();
        let mut rotation = periodic(2, Vec::new());
        rotation.old_becomes = OldKey::Grace { until: NOW };
        rotation.expires_at = NOW + 50;
        let successor = rotated(
            store
                .rotate(&grace_old, &grace_new, &rotation)
                .await
                .unwrap(),
        );
        let grace_kept = created(&*store, &with_expiry(NOW + 50)).await;
        let grace_kept_new = key();
        rotation.old_becomes = OldKey::Grace { until: NOW + 1 };
        rotated(
            store
                .rotate(&grace_kept, &grace_kept_new, &rotation)
                .await
                .unwrap(),
        );

        assert_eq!(store.sweep(NOW).await.unwrap(), 4);
        for k in [live_past, live_at, revoked_past, grace_old] {
            assert_eq!(store.load(&k).await.unwrap(), Lookup::Missing);
        }
        assert_eq!(live(&*store, &live_kept).await, with_expiry(NOW + 1));
        assert_eq!(live(&*store, &grace_new).await, successor);
        assert!(matches!(
            store.load(&grace_kept_new).await.unwrap(),
            Lookup::Live(_)
        ));
        assert_eq!(
            store.load(&revoked_kept).await.unwrap(),
            Lookup::Revoked(RevokeReason::LoggedOut)
        );
        assert_eq!(
            store.load(&grace_kept).await.unwrap(),
            Lookup::Grace {
                successor: grace_kept_new,
                until: NOW + 1
            }
        );

        // Nothing left that is due: a second sweep removes nothing.
        assert_eq!(store.sweep(NOW).await.unwrap(), 0);
        // Later, everything of this check is due.
        assert_eq!(store.sweep(NOW + 1_000).await.unwrap(), 5);
        for k in [
            live_kept,
            revoked_kept,
            grace_kept,
            grace_new,
            grace_kept_new,
        ] {
            assert_eq!(store.load(&k).await.unwrap(), Lookup::Missing);
        }
    }
}

/// An unreadable entry fails its operations as `Corrupt` in every backend (the file
/// store's unit tests show it for redb): a document with an unknown state, written
/// here behind the store's back.
#[tokio::test]
async fn firestore_unreadable_document_is_corrupt() {
    assert!(std::env::var_os("FIRESTORE_EMULATOR_HOST").is_some());
    let k = key();
    let collection = format!("conformance_{}_{}", std::process::id(), key().hex());
    let store = firestore_in(&collection).await;
    let db = ::firestore::FirestoreDb::new("sessiongate-test")
        .await
        .unwrap();
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Bogus {
        state: String,
    }
    let _: Bogus = db
        .fluent()
        .insert()
        .into(&collection)
        .document_id(k.hex())
        .object(&Bogus {
            state: "bogus".into(),
        })
        .execute()
        .await
        .unwrap();
    assert!(matches!(store.load(&k).await, Err(StoreError::Corrupt(_))));
    let merged = store.merge_vault(&k, &[], T0, T0 + 1).await;
    assert!(matches!(merged, Err(StoreError::Corrupt(_))), "{merged:?}");
    assert!(matches!(
        store.revoke(&k, RevokeReason::LoggedOut, T0).await,
        Err(StoreError::Corrupt(_))
    ));
}
