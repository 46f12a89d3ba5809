//! Deferred anonymous writes (`store.defer_anonymous_writes`, file and Firestore stores):
//! a new anonymous session stays in this replica's memory until its visitor comes back,
//! and is written to the durable store only then.
//!
//! Why: most of the visitors of a public site (crawlers, scanners, anyone who keeps no
//! cookies, or a flood) never send a second request, yet each one whose first response
//! sets a vaulted cookie costs a write: with Firestore a paid document write, with the
//! file store an fsync (measured: 2.8k new visitors/s against 36k/s in memory). Deferring
//! the write until the visitor presents the ID again makes those cost nothing.
//!
//! Safety: a pending session is only ever anonymous (a login, a claim or any other
//! change writes it first: every operation but `create` on a pending key *materialises*
//! it, that is creates it in the durable store, and then runs there), so nothing a
//! fixation defence rests on is held only here. Materialising is done once per key:
//! concurrent requests of the returning visitor wait for the one write, and a failed
//! write fails the request closed (503) and is retried by the next one.
//!
//! The price: until the visitor's second request, the session exists in this process
//! only. A restart forgets pending sessions (a visitor seen once starts again as a new
//! visitor), and with Firestore a second request that reaches another replica finds no
//! session there and starts a new one. That suits one replica or a Service with client
//! affinity, which is why it is off by default. The pending set is bounded
//! (`max_sessions` for the file store, `cache_max_entries` for Firestore), least recently
//! used first out, and swept with the anonymous idle timeout like the memory store.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::{
    Claim, LoginClaim, Lookup, MemoryStore, RevokeReason, RotateOutcome, Rotation, SessionRecord,
    SessionStore, StoreError,
};
use crate::session::{KeyMap, SessionKey};
use crate::vault::VaultChange;

pub struct DeferredStore {
    inner: Arc<dyn SessionStore>,
    /// Anonymous sessions not written yet (bounded).
    pending: MemoryStore,
    /// One materialising write per key at a time; an entry lives while its write is in
    /// flight.
    writing: KeyMap<Arc<OnceCell<()>>>,
}

impl DeferredStore {
    pub fn new(inner: Arc<dyn SessionStore>, pending: MemoryStore) -> DeferredStore {
        DeferredStore {
            inner,
            pending,
            writing: KeyMap::default(),
        }
    }

    /// Sessions waiting for their visitor's return.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Writes a pending session to the shared store (once), so that the operation that
    /// follows runs there. A key that is not pending is left alone.
    async fn materialise(&self, key: &SessionKey) -> Result<(), StoreError> {
        let Some(record) = self.pending.live(key) else {
            return Ok(());
        };
        let once = self.writing.entry(*key).or_default().clone();
        let written = once
            .get_or_try_init(|| async {
                match self.inner.create(key, &record).await {
                    // A request that read the pending copy before a concurrent
                    // materialisation removed it: that one wrote it.
                    Ok(()) | Err(StoreError::Conflict) => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .await
            .map(drop);
        if written.is_ok() {
            // Pending first: a request that then finds no pending copy reads the shared
            // one.
            self.pending.remove(key);
        }
        // Also after a failure: a key whose pending copy is later swept must not leave
        // its cell here (the map stays as small as the writes in flight).
        self.writing.remove(key);
        written
    }
}

#[async_trait]
impl SessionStore for DeferredStore {
    async fn load(&self, key: &SessionKey) -> Result<Lookup, StoreError> {
        // The visitor came back.
        self.materialise(key).await?;
        self.inner.load(key).await
    }

    async fn load_stale(&self, key: &SessionKey) -> Option<Lookup> {
        match self.pending.live(key) {
            Some(record) => Some(Lookup::Live(record)),
            None => self.inner.load_stale(key).await,
        }
    }

    fn replica_staleness(&self) -> Duration {
        self.inner.replica_staleness()
    }

    async fn probe(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.inner.probe(key).await
    }

    async fn create(&self, key: &SessionKey, record: &SessionRecord) -> Result<(), StoreError> {
        // Only a fresh anonymous record may wait: anything else is written at once.
        // The pending set is checked for the key either way; the durable store is not,
        // for a waiting record (that read would cost what deferring saves, and keys are
        // 256-bit random): should the key exist there, the return's materialisation
        // conflicts and the durable entry wins.
        match record.is_fresh_anonymous() {
            true => self.pending.create(key, record).await,
            false => {
                self.materialise(key).await?;
                self.inner.create(key, record).await
            }
        }
    }

    async fn merge_vault(
        &self,
        key: &SessionKey,
        changes: &[VaultChange],
        now: u64,
        expires_at: u64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        self.materialise(key).await?;
        self.inner.merge_vault(key, changes, now, expires_at).await
    }

    async fn touch(&self, key: &SessionKey, now: u64, expires_at: u64) -> Result<(), StoreError> {
        self.materialise(key).await?;
        self.inner.touch(key, now, expires_at).await
    }

    async fn claim_login(
        &self,
        key: &SessionKey,
        claim: LoginClaim,
        now: u64,
    ) -> Result<Claim, StoreError> {
        self.materialise(key).await?;
        self.inner.claim_login(key, claim, now).await
    }

    async fn release_login(&self, key: &SessionKey, owner: u64) -> Result<(), StoreError> {
        self.materialise(key).await?;
        self.inner.release_login(key, owner).await
    }

    async fn rotate(
        &self,
        old: &SessionKey,
        new: &SessionKey,
        rotation: &Rotation,
    ) -> Result<RotateOutcome, StoreError> {
        self.materialise(old).await?;
        // A pending successor key must conflict as a durable one would.
        self.materialise(new).await?;
        self.inner.rotate(old, new, rotation).await
    }

    async fn revoke(
        &self,
        key: &SessionKey,
        reason: RevokeReason,
        keep_until: u64,
    ) -> Result<bool, StoreError> {
        self.materialise(key).await?;
        self.inner.revoke(key, reason, keep_until).await
    }

    /// Pending sessions are anonymous (a login writes its session first): only the
    /// shared store can hold a subject's sessions.
    async fn sessions_of(&self, subject: &str) -> Result<Vec<SessionKey>, StoreError> {
        self.inner.sessions_of(subject).await
    }

    async fn sweep(&self, now: u64) -> Result<usize, StoreError> {
        let local = self.pending.sweep(now).await?;
        Ok(local.saturating_add(self.inner.sweep(now).await?))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::store::bound::Bound;
    use crate::store::instrumented::Instrumented as Shared;
    use crate::vault::VaultCookie;

    fn key(n: u8) -> SessionKey {
        crate::session::SessionId::from_bytes([n; 32]).key()
    }

    fn visitor() -> SessionRecord {
        let cookie = VaultCookie {
            name: "SID".into(),
            value: "app-session".into(),
            path: "/".into(),
            expires_at: None,
        };
        SessionRecord::new_anonymous(1, u64::MAX, vec![cookie])
    }

    /// The shared store: counts the creations that reach it, each taking 20 ms.
    fn shared() -> Arc<Shared> {
        Arc::new(Shared {
            create_delay: Duration::from_millis(20),
            ..Shared::default()
        })
    }

    fn deferred() -> (Arc<Shared>, DeferredStore) {
        let shared = shared();
        let store = DeferredStore::new(shared.clone(), MemoryStore::new());
        (shared, store)
    }

    #[tokio::test]
    async fn a_visitor_who_never_comes_back_costs_no_write() {
        let (shared, store) = deferred();
        for n in 0..50 {
            store.create(&key(n), &visitor()).await.unwrap();
        }
        assert_eq!(shared.creates.load(Ordering::SeqCst), 0);
        assert_eq!(store.pending(), 50);
        // The anonymous idle timeout sweeps them like any other session.
        assert_eq!(store.sweep(u64::MAX).await.unwrap(), 50);
        assert_eq!(store.pending(), 0);
    }

    #[tokio::test]
    async fn the_return_writes_once_even_when_requests_race() {
        let (shared, store) = deferred();
        let store = Arc::new(store);
        store.create(&key(1), &visitor()).await.unwrap();
        let loads: Vec<_> = (0..8)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move { s.load(&key(1)).await })
            })
            .collect();
        for l in loads {
            assert!(matches!(l.await.unwrap().unwrap(), Lookup::Live(r) if r.vault.len() == 1));
        }
        assert_eq!(shared.creates.load(Ordering::SeqCst), 1);
        assert_eq!(store.pending(), 0);
        assert!(matches!(
            shared.inner.load(&key(1)).await.unwrap(),
            Lookup::Live(_)
        ));
    }

    #[tokio::test]
    async fn a_login_on_a_pending_session_runs_on_the_shared_store() {
        let (shared, store) = deferred();
        store.create(&key(1), &visitor()).await.unwrap();
        let claim = LoginClaim {
            owner: 7,
            until: u64::MAX,
        };
        assert_eq!(
            store.claim_login(&key(1), claim, 2).await.unwrap(),
            Claim::Claimed
        );
        assert_eq!(store.pending(), 0);
        let Lookup::Live(r) = shared.inner.load(&key(1)).await.unwrap() else {
            panic!("the claimed session is in the shared store");
        };
        assert_eq!(r.login_claim, Some(claim));
        // A record that is not fresh and anonymous is never held back.
        let mut signed_in = visitor();
        signed_in.authenticated = true;
        store.create(&key(2), &signed_in).await.unwrap();
        assert_eq!(store.pending(), 0);
        assert_eq!(shared.creates.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_write_fails_the_request_and_the_next_one_retries() {
        let (shared, store) = deferred();
        store.create(&key(1), &visitor()).await.unwrap();
        shared.fail_creates.store(true, Ordering::SeqCst);
        assert_eq!(store.load(&key(1)).await, Err(StoreError::Timeout));
        assert_eq!(store.pending(), 1, "still pending after the failure");
        shared.fail_creates.store(false, Ordering::SeqCst);
        assert!(matches!(
            store.load(&key(1)).await.unwrap(),
            Lookup::Live(_)
        ));
        assert_eq!(shared.creates.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_pending_set_is_bounded() {
        let shared = shared();
        let bound = Bound::new(100, prometheus_client::metrics::counter::Counter::default());
        let store = DeferredStore::new(shared.clone(), MemoryStore::bounded(bound));
        for n in 0..=250u8 {
            store.create(&key(n), &visitor()).await.unwrap();
        }
        assert!(store.pending() <= 100, "{}", store.pending());
        assert_eq!(shared.creates.load(Ordering::SeqCst), 0);
    }
}
