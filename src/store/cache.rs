//! A read cache in front of a remote store (Firestore), itself a [`SessionStore`], so the
//! request path does not know it is there.
//!
//! - A session that is cached and fresh costs no store read at all.
//! - One load per missed key is in flight at a time: concurrent requests for the same
//!   session wait for that load instead of each reading the store.
//! - Writes go to the store first and update this replica's cache only once they are
//!   committed, so this replica never serves a state the store refused.
//! - Other replicas learn of a revocation (logout, login rotation, expiry) through the
//!   store: entries are fresh for `ttl` only, counted from the start of the read that
//!   filled them, so a revoked ID is refused everywhere within `ttl`. A login waits `ttl`
//!   after claiming its session, so that no replica can still serve the pre-login
//!   session's vault while the app authenticates it.
//! - The size is bounded: past `max_entries`, the oldest entries are dropped.
//! - Stale entries are kept (up to `stale_for`) so that a route whose policy allows it can
//!   keep serving known sessions while the store is down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::OnceCell;

use super::{
    transition, Claim, LoginClaim, Lookup, RotateOutcome, Rotation, SessionRecord, SessionStore,
    StoreError,
};
use crate::session::{KeyMap, SessionKey};
use crate::store::RevokeReason;
use crate::vault::VaultChange;

#[derive(Debug, Clone)]
struct Cached {
    lookup: Lookup,
    at: Instant,
}

type Inflight = Arc<OnceCell<Result<Lookup, StoreError>>>;

pub struct CachedStore {
    inner: Arc<dyn SessionStore>,
    entries: KeyMap<Cached>,
    inflight: KeyMap<Inflight>,
    ttl: Duration,
    stale_for: Duration,
    max_entries: usize,
    hits: Counter,
    misses: Counter,
}

impl CachedStore {
    pub fn new(
        inner: Arc<dyn SessionStore>,
        ttl: Duration,
        stale_for: Duration,
        max_entries: usize,
    ) -> CachedStore {
        CachedStore {
            inner,
            entries: KeyMap::default(),
            inflight: KeyMap::default(),
            ttl,
            stale_for,
            max_entries: max_entries.max(1),
            hits: Counter::default(),
            misses: Counter::default(),
        }
    }

    /// Counts hits and misses on the given (registered) counters.
    pub fn with_counters(mut self, hits: Counter, misses: Counter) -> CachedStore {
        self.hits = hits;
        self.misses = misses;
        self
    }

    fn put(&self, key: SessionKey, lookup: Lookup) {
        self.put_as_of(key, lookup, Instant::now());
    }

    /// `as_of` is when the read that produced `lookup` *started*: a read that began
    /// before another replica's write may return the older state, so freshness is
    /// counted from the start. This is what lets a login wait out every replica's cached
    /// copy of the session it claimed (see `rotate::Sessions::claim_login`).
    fn put_as_of(&self, key: SessionKey, lookup: Lookup, as_of: Instant) {
        if self.entries.len() >= self.max_entries && !self.entries.contains_key(&key) {
            self.shrink();
        }
        self.entries.insert(key, Cached { lookup, at: as_of });
    }

    /// Drops the oldest tenth of the entries. O(n), but only when the cache is full.
    fn shrink(&self) {
        let mut ages: Vec<(Instant, SessionKey)> = self
            .entries
            .iter()
            .map(|e| (e.value().at, *e.key()))
            .collect();
        ages.sort_unstable_by_key(|(at, _)| *at);
        for (_, key) in ages.iter().take((self.max_entries / 10).max(1)) {
            self.entries.remove(key);
        }
    }

    /// Forgets a key (a revocation seen elsewhere).
    pub fn evict(&self, key: &SessionKey) {
        self.entries.remove(key);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn fresh(&self, key: &SessionKey) -> Option<Lookup> {
        let e = self.entries.get(key)?;
        (e.at.elapsed() < self.ttl).then(|| e.lookup.clone())
    }
}

#[async_trait]
impl SessionStore for CachedStore {
    async fn load(&self, key: &SessionKey) -> Result<Lookup, StoreError> {
        if let Some(hit) = self.fresh(key) {
            self.hits.inc();
            return Ok(hit);
        }
        self.misses.inc();
        // Single flight: the first caller loads, the others await the same cell.
        let cell = self.inflight.entry(*key).or_default().clone();
        let result = cell
            .get_or_init(|| async {
                let started = Instant::now();
                let r = self.inner.load(key).await;
                if let Ok(lookup) = &r {
                    self.put_as_of(*key, lookup.clone(), started);
                }
                r
            })
            .await
            .clone();
        self.inflight.remove_if(key, |_, c| Arc::ptr_eq(c, &cell));
        result
    }

    async fn probe(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.inner.probe(key).await
    }

    async fn load_stale(&self, key: &SessionKey) -> Option<Lookup> {
        let e = self.entries.get(key)?;
        (e.at.elapsed() < self.stale_for).then(|| e.lookup.clone())
    }

    /// Other replicas' caches serve a copy for up to `ttl` after it changed.
    fn replica_staleness(&self) -> Duration {
        self.ttl
    }

    async fn create(&self, key: &SessionKey, record: &SessionRecord) -> Result<(), StoreError> {
        self.inner.create(key, record).await?;
        self.put(*key, Lookup::Live(Arc::new(record.clone())));
        Ok(())
    }

    async fn merge_vault(
        &self,
        key: &SessionKey,
        changes: &[VaultChange],
        now: u64,
        expires_at: u64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let r = self.inner.merge_vault(key, changes, now, expires_at).await;
        match &r {
            Ok(Some(rec)) => self.put(*key, Lookup::Live(Arc::new(rec.clone()))),
            _ => self.evict(key),
        }
        r
    }

    async fn touch(&self, key: &SessionKey, now: u64, expires_at: u64) -> Result<(), StoreError> {
        self.inner.touch(key, now, expires_at).await?;
        if let Some(mut e) = self.entries.get_mut(key) {
            if let Lookup::Live(r) = &mut e.lookup {
                // Copied only if a request still holds the record.
                let r = Arc::make_mut(r);
                r.last_seen_at = now;
                r.expires_at = expires_at;
            }
        }
        Ok(())
    }

    async fn claim_login(
        &self,
        key: &SessionKey,
        claim: LoginClaim,
        now: u64,
    ) -> Result<Claim, StoreError> {
        // The claim lives in the store; the cached copy must not hide it from this
        // replica's next read.
        self.evict(key);
        self.inner.claim_login(key, claim, now).await
    }

    async fn release_login(&self, key: &SessionKey, owner: u64) -> Result<(), StoreError> {
        self.evict(key);
        self.inner.release_login(key, owner).await
    }

    async fn rotate(
        &self,
        old: &SessionKey,
        new: &SessionKey,
        rotation: &Rotation,
    ) -> Result<RotateOutcome, StoreError> {
        let r = self.inner.rotate(old, new, rotation).await;
        match &r {
            Ok(RotateOutcome::Rotated(rec)) => {
                self.put(*new, Lookup::Live(Arc::new(rec.clone())));
                self.put(
                    *old,
                    transition::tombstone(rotation.old_becomes, *new).lookup(),
                );
            }
            _ => self.evict(old),
        }
        r
    }

    async fn revoke(
        &self,
        key: &SessionKey,
        reason: RevokeReason,
        keep_until: u64,
    ) -> Result<bool, StoreError> {
        let r = self.inner.revoke(key, reason, keep_until).await;
        match &r {
            Ok(_) => self.put(*key, Lookup::Revoked(reason)),
            Err(_) => self.evict(key),
        }
        r
    }

    async fn sessions_of(&self, subject: &str) -> Result<Vec<SessionKey>, StoreError> {
        self.inner.sessions_of(subject).await
    }

    async fn sweep(&self, now: u64) -> Result<usize, StoreError> {
        let stale_for = self.stale_for;
        self.entries.retain(|_, e| e.at.elapsed() < stale_for);
        self.inner.sweep(now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::instrumented::Instrumented;
    use std::sync::atomic::Ordering;

    fn counting() -> Arc<Instrumented> {
        slow_counting(Duration::from_millis(50))
    }

    /// Counts loads reaching the inner store, and makes them slow.
    fn slow_counting(delay: Duration) -> Arc<Instrumented> {
        Arc::new(Instrumented {
            load_delay: delay,
            ..Instrumented::default()
        })
    }

    /// Freshness counts from the start of the read that filled the entry, not from its
    /// end: a read that began before another replica's write may return the older state,
    /// and the login settle wait (`ttl` after the claim) relies on no copy outliving
    /// `ttl` from the moment the store was read. A 150 ms read, ttl 200 ms: 250 ms after
    /// it began (100 ms after it ended) the entry must be stale.
    #[tokio::test]
    async fn freshness_is_counted_from_the_start_of_the_read() {
        let inner = slow_counting(Duration::from_millis(150));
        let cache = CachedStore::new(
            inner.clone(),
            Duration::from_millis(200),
            Duration::from_secs(60),
            100,
        );
        let key = SessionKey([4; 32]);
        let started = Instant::now();
        cache.load(&key).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(150));
        tokio::time::sleep_until((started + Duration::from_millis(250)).into()).await;
        cache.load(&key).await.unwrap();
        assert_eq!(
            inner.loads.load(Ordering::SeqCst),
            2,
            "an entry older than ttl, counted from its read's start, was served"
        );
    }

    #[tokio::test]
    async fn one_load_per_missed_key_then_hits() {
        let inner = counting();
        let cache = Arc::new(CachedStore::new(
            inner.clone(),
            Duration::from_secs(60),
            Duration::from_secs(60),
            100,
        ));
        let key = SessionKey([1; 32]);
        inner
            .inner
            .create(&key, &SessionRecord::new_anonymous(1, u64::MAX, vec![]))
            .await
            .unwrap();
        let loads: Vec<_> = (0..10)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.load(&key).await.unwrap() })
            })
            .collect();
        for l in loads {
            assert!(matches!(l.await.unwrap(), Lookup::Live(_)));
        }
        assert_eq!(
            inner.loads.load(Ordering::SeqCst),
            1,
            "concurrent misses coalesce"
        );
        cache.load(&key).await.unwrap();
        assert_eq!(
            inner.loads.load(Ordering::SeqCst),
            1,
            "a fresh entry costs no read"
        );
    }

    #[tokio::test]
    async fn entries_expire_after_ttl_and_size_is_bounded() {
        let inner = counting();
        let cache = CachedStore::new(
            inner.clone(),
            Duration::from_millis(30),
            Duration::from_secs(60),
            10,
        );
        let key = SessionKey([2; 32]);
        cache.load(&key).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        cache.load(&key).await.unwrap();
        assert_eq!(inner.loads.load(Ordering::SeqCst), 2);
        assert!(cache.load_stale(&key).await.is_some());
        for i in 0..50u8 {
            cache.load(&SessionKey([i + 10; 32])).await.unwrap();
        }
        assert!(cache.len() <= 10, "cache grew to {}", cache.len());
    }

    #[tokio::test]
    async fn writes_update_this_replicas_view() {
        let inner = counting();
        let cache = CachedStore::new(
            inner.clone(),
            Duration::from_secs(60),
            Duration::from_secs(60),
            100,
        );
        let key = SessionKey([3; 32]);
        cache
            .create(&key, &SessionRecord::new_anonymous(1, u64::MAX, vec![]))
            .await
            .unwrap();
        assert!(matches!(cache.load(&key).await.unwrap(), Lookup::Live(_)));
        cache
            .revoke(&key, RevokeReason::LoggedOut, u64::MAX)
            .await
            .unwrap();
        assert_eq!(
            cache.load(&key).await.unwrap(),
            Lookup::Revoked(RevokeReason::LoggedOut)
        );
        assert_eq!(inner.loads.load(Ordering::SeqCst), 0);
    }
}
