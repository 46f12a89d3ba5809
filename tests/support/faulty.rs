//! The embedded store with fault injection.
#![allow(unused_imports)]

use super::*;

/// The embedded store with fault injection: while `failing` holds an operation name
/// (or `"*"`), that operation returns `Unavailable`.
pub struct FaultyStore {
    pub inner: sessiongate::store::MemoryStore,
    pub failing: Mutex<Option<&'static str>>,
}

impl FaultyStore {
    pub fn new() -> Arc<FaultyStore> {
        Arc::new(FaultyStore {
            inner: sessiongate::store::MemoryStore::new(),
            failing: Mutex::new(None),
        })
    }

    pub fn fail(&self, op: Option<&'static str>) {
        *self.failing.lock().unwrap() = op;
    }

    fn check(&self, op: &str) -> Result<(), sessiongate::store::StoreError> {
        match *self.failing.lock().unwrap() {
            Some(f) if f == "*" || f == op => Err(sessiongate::store::StoreError::Unavailable(
                format!("injected failure in {op}"),
            )),
            _ => Ok(()),
        }
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
            self.check("load")?;
            self.inner.load(key).await
        }
        /// Like a cache that still holds every entry: what `serve_cached` routes use
        /// while `load` fails.
        async fn load_stale(&self, key: &SessionKey) -> Option<Lookup> {
            self.inner.load(key).await.ok()
        }
        async fn create(&self, key: &SessionKey, record: &SessionRecord) -> Result<(), StoreError> {
            self.check("create")?;
            self.inner.create(key, record).await
        }
        async fn merge_vault(
            &self,
            key: &SessionKey,
            changes: &[VaultChange],
            now: u64,
            expires_at: u64,
        ) -> Result<Option<SessionRecord>, StoreError> {
            self.check("merge_vault")?;
            self.inner.merge_vault(key, changes, now, expires_at).await
        }
        async fn touch(
            &self,
            key: &SessionKey,
            now: u64,
            expires_at: u64,
        ) -> Result<(), StoreError> {
            self.check("touch")?;
            self.inner.touch(key, now, expires_at).await
        }
        async fn claim_login(
            &self,
            key: &SessionKey,
            until: u64,
            now: u64,
        ) -> Result<Claim, StoreError> {
            self.check("claim_login")?;
            self.inner.claim_login(key, until, now).await
        }
        async fn release_login(&self, key: &SessionKey) -> Result<(), StoreError> {
            self.check("release_login")?;
            self.inner.release_login(key).await
        }
        async fn rotate(
            &self,
            old: &SessionKey,
            new: &SessionKey,
            rotation: &Rotation,
        ) -> Result<RotateOutcome, StoreError> {
            self.check("rotate")?;
            self.inner.rotate(old, new, rotation).await
        }
        async fn revoke(
            &self,
            key: &SessionKey,
            reason: RevokeReason,
            keep_until: u64,
        ) -> Result<bool, StoreError> {
            self.check("revoke")?;
            self.inner.revoke(key, reason, keep_until).await
        }
        async fn sweep(&self, now: u64) -> Result<usize, StoreError> {
            self.check("sweep")?;
            self.inner.sweep(now).await
        }
    }
}
