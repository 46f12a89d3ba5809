//! A test double for the store layers (cache, deferred writes) and the lifecycle: a
//! memory store that counts what reaches it, can be slow, and can fail its creations.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    Claim, LoginClaim, Lookup, MemoryStore, RevokeReason, RotateOutcome, Rotation, SessionRecord,
    SessionStore, StoreError,
};
use crate::session::SessionKey;
use crate::vault::VaultChange;

#[derive(Default)]
pub(crate) struct Instrumented {
    pub inner: MemoryStore,
    pub loads: AtomicUsize,
    /// Creations that reached the store (not counting the failed ones).
    pub creates: AtomicUsize,
    pub merges: AtomicUsize,
    pub touches: AtomicUsize,
    pub load_delay: Duration,
    pub create_delay: Duration,
    /// While set, every creation fails with a timeout.
    pub fail_creates: AtomicBool,
    /// Once set, the next search by subject rotates (periodically) every session it
    /// found after listing it: what a rotation racing the search looks like.
    pub rotate_on_search: AtomicBool,
}

#[async_trait]
impl SessionStore for Instrumented {
    async fn load(&self, key: &SessionKey) -> Result<Lookup, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.load_delay).await;
        self.inner.load(key).await
    }
    async fn create(&self, k: &SessionKey, r: &SessionRecord) -> Result<(), StoreError> {
        tokio::time::sleep(self.create_delay).await;
        if self.fail_creates.load(Ordering::SeqCst) {
            return Err(StoreError::Timeout);
        }
        self.creates.fetch_add(1, Ordering::SeqCst);
        self.inner.create(k, r).await
    }
    async fn merge_vault(
        &self,
        k: &SessionKey,
        c: &[VaultChange],
        n: u64,
        e: u64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        self.merges.fetch_add(1, Ordering::SeqCst);
        self.inner.merge_vault(k, c, n, e).await
    }
    async fn touch(&self, k: &SessionKey, n: u64, e: u64) -> Result<(), StoreError> {
        self.touches.fetch_add(1, Ordering::SeqCst);
        self.inner.touch(k, n, e).await
    }
    async fn claim_login(
        &self,
        k: &SessionKey,
        c: LoginClaim,
        n: u64,
    ) -> Result<Claim, StoreError> {
        self.inner.claim_login(k, c, n).await
    }
    async fn release_login(&self, k: &SessionKey, o: u64) -> Result<(), StoreError> {
        self.inner.release_login(k, o).await
    }
    async fn rotate(
        &self,
        o: &SessionKey,
        n: &SessionKey,
        r: &Rotation,
    ) -> Result<RotateOutcome, StoreError> {
        self.inner.rotate(o, n, r).await
    }
    async fn revoke(&self, k: &SessionKey, r: RevokeReason, u: u64) -> Result<bool, StoreError> {
        self.inner.revoke(k, r, u).await
    }
    async fn sweep(&self, n: u64) -> Result<usize, StoreError> {
        self.inner.sweep(n).await
    }
    async fn sessions_of(&self, s: &str) -> Result<Vec<SessionKey>, StoreError> {
        let found = self.inner.sessions_of(s).await?;
        if self.rotate_on_search.swap(false, Ordering::SeqCst) {
            for (i, key) in found.iter().enumerate() {
                let mut successor = key.0;
                successor[0] ^= 0xff;
                successor[1] = successor[1].wrapping_add(u8::try_from(i).unwrap_or(0));
                let rotation = Rotation {
                    changes: Vec::new(),
                    authenticate: None,
                    now: 1,
                    expires_at: u64::MAX,
                    old_becomes: super::OldKey::Grace { until: u64::MAX },
                };
                self.inner
                    .rotate(key, &SessionKey(successor), &rotation)
                    .await?;
            }
        }
        Ok(found)
    }
}
