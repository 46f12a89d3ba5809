//! The embedded store with fault injection.
#![allow(unused_imports)]

use super::*;
use sessiongate::store::StoreOp;

/// Which operations fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failing {
    Nothing,
    Op(StoreOp),
    Every,
}

/// The embedded store with fault injection: the operations `failing` names return
/// [`StoreError::Backend`](sessiongate::store::StoreError::Backend).
pub struct FaultyStore {
    pub inner: sessiongate::store::MemoryStore,
    pub failing: Mutex<Failing>,
}

impl FaultyStore {
    pub fn new() -> Arc<FaultyStore> {
        Arc::new(FaultyStore {
            inner: sessiongate::store::MemoryStore::new(),
            failing: Mutex::new(Failing::Nothing),
        })
    }

    pub fn fail(&self, failing: Failing) {
        *self.failing.lock().unwrap() = failing;
    }

    fn check(&self, op: StoreOp) -> Result<(), sessiongate::store::StoreError> {
        match *self.failing.lock().unwrap() {
            Failing::Every => {}
            Failing::Op(f) if f == op => {}
            _ => return Ok(()),
        }
        Err(sessiongate::store::StoreError::Backend(format!(
            "injected failure in {op}"
        )))
    }
}

mod faulty_impl {
    use super::FaultyStore;
    use sessiongate::session::SessionKey;
    use sessiongate::store::*;
    use sessiongate::vault::VaultChange;

    #[async_trait::async_trait]
    impl SessionStore for FaultyStore {
        async fn load(&self, key: &SessionKey) -> Result<Lookup, StoreError> {
            self.check(StoreOp::Load)?;
            self.inner.load(key).await
        }
        /// Like a cache that still holds every entry: what `serve_cached` routes use
        /// while `load` fails.
        async fn load_stale(&self, key: &SessionKey) -> Option<Lookup> {
            self.inner.load(key).await.ok()
        }
        async fn create(&self, key: &SessionKey, record: &SessionRecord) -> Result<(), StoreError> {
            self.check(StoreOp::Create)?;
            self.inner.create(key, record).await
        }
        async fn merge_vault(
            &self,
            key: &SessionKey,
            changes: &[VaultChange],
            now: u64,
            expires_at: u64,
        ) -> Result<Option<SessionRecord>, StoreError> {
            self.check(StoreOp::MergeVault)?;
            self.inner.merge_vault(key, changes, now, expires_at).await
        }
        async fn touch(
            &self,
            key: &SessionKey,
            now: u64,
            expires_at: u64,
        ) -> Result<(), StoreError> {
            self.check(StoreOp::Touch)?;
            self.inner.touch(key, now, expires_at).await
        }
        async fn claim_login(
            &self,
            key: &SessionKey,
            claim: LoginClaim,
            now: u64,
        ) -> Result<Claim, StoreError> {
            self.check(StoreOp::ClaimLogin)?;
            self.inner.claim_login(key, claim, now).await
        }
        async fn release_login(&self, key: &SessionKey, owner: u64) -> Result<(), StoreError> {
            self.check(StoreOp::ReleaseLogin)?;
            self.inner.release_login(key, owner).await
        }
        async fn rotate(
            &self,
            old: &SessionKey,
            new: &SessionKey,
            rotation: &Rotation,
        ) -> Result<RotateOutcome, StoreError> {
            self.check(StoreOp::Rotate)?;
            self.inner.rotate(old, new, rotation).await
        }
        async fn revoke(
            &self,
            key: &SessionKey,
            reason: RevokeReason,
            keep_until: u64,
        ) -> Result<bool, StoreError> {
            self.check(StoreOp::Revoke)?;
            self.inner.revoke(key, reason, keep_until).await
        }
        async fn sweep(&self, now: u64) -> Result<usize, StoreError> {
            self.check(StoreOp::Sweep)?;
            self.inner.sweep(now).await
        }
        async fn sessions_of(&self, subject: &str) -> Result<Vec<SessionKey>, StoreError> {
            self.check(StoreOp::SessionsOf)?;
            self.inner.sessions_of(subject).await
        }
    }
}
