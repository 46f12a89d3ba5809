//! The embedded store: an in-process map (dashmap), the default for one machine.
//! Sessions do not survive a restart.
//!
//! Each single-key operation runs its [`transition`] while holding that key's entry
//! lock, for a few instructions and never across an `.await` (the methods are async only
//! to fit the trait). Rotation touches two keys; it never holds one entry while locking
//! another (two keys can share a shard, and dashmap locks are not reentrant), so it works
//! optimistically: decide from a copy of the old entry, insert the new key if vacant,
//! then swap the old key for its tombstone only if its version is unchanged, retrying
//! otherwise.

use std::sync::Arc;

use async_trait::async_trait;
use dashmap::mapref::entry::Entry as MapEntry;

use super::bound::{self, Bound};
use super::transition::{self, Step};
use super::{
    Claim, Entry, LoginClaim, Lookup, RevokeReason, RotateOutcome, Rotation, SessionRecord,
    SessionStore, StoreError,
};
use crate::session::{KeyMap, SessionKey};
use crate::vault::VaultChange;

#[derive(Debug)]
pub struct MemoryStore {
    map: KeyMap<Entry>,
    bound: Bound,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// A store without a bound (tests and tools).
    pub fn new() -> MemoryStore {
        MemoryStore::bounded(Bound::unbounded())
    }

    pub fn bounded(bound: Bound) -> MemoryStore {
        MemoryStore {
            map: KeyMap::default(),
            bound,
        }
    }

    /// Evicts anonymous sessions while the store is full; `Full` when none is left.
    fn make_room(&self) -> Result<(), StoreError> {
        if !self.bound.is_full(self.map.len()) {
            return Ok(());
        }
        let _one_scan = self.bound.scanning();
        if !self.bound.is_full(self.map.len()) {
            return Ok(()); // the scan this one waited for made room
        }
        let victims = self.bound.victims(|visit| {
            for e in self.map.iter() {
                visit(*e.key(), e.value());
            }
        });
        // Re-checked under the entry lock: a victim may have been signed in to since.
        let evicted = victims
            .iter()
            .filter(|k| {
                self.map
                    .remove_if(k, |_, e| bound::evictable(e).is_some())
                    .is_some()
            })
            .count();
        self.bound.evicted(evicted);
        // Creations running beside this one may take the room it made before it inserts
        // (seen as 503s in a flood of new visitors with room to spare): having evicted,
        // it may insert. The overshoot is bounded by the creations in flight; only a
        // store with nothing left to evict refuses.
        match evicted == 0 && self.bound.is_full(self.map.len()) {
            true => Err(StoreError::Full),
            false => Ok(()),
        }
    }

    /// Number of entries (live sessions and tombstones).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The key's record if it is live (synchronous: for stores layered on this one).
    pub fn live(&self, key: &SessionKey) -> Option<Arc<SessionRecord>> {
        match self.map.get(key).as_deref() {
            Some(Entry::Live(r)) => Some(r.clone()),
            _ => None,
        }
    }

    /// Forgets a key, whatever it holds.
    pub fn remove(&self, key: &SessionKey) {
        self.map.remove(key);
    }

    /// Runs `decide` on the key's entry under its lock, and stores what it wrote. A
    /// vacant key stays vacant: no transition but `create` writes to one.
    fn apply<T>(&self, key: &SessionKey, decide: impl FnOnce(Option<&Entry>) -> Step<T>) -> T {
        match self.map.get_mut(key) {
            Some(mut entry) => {
                let step = decide(Some(entry.value()));
                if let Some(write) = step.write {
                    *entry.value_mut() = write;
                }
                step.answer
            }
            None => decide(None).answer,
        }
    }
}

/// Rotation retries when a concurrent write changed the old record in between.
const ROTATE_ATTEMPTS: usize = 8;

#[async_trait]
impl SessionStore for MemoryStore {
    async fn load(&self, key: &SessionKey) -> Result<Lookup, StoreError> {
        Ok(self
            .map
            .get(key)
            .map_or(Lookup::Missing, |e| e.value().clone().lookup()))
    }

    async fn create(&self, key: &SessionKey, record: &SessionRecord) -> Result<(), StoreError> {
        self.make_room()?;
        match self.map.entry(*key) {
            MapEntry::Occupied(_) => Err(StoreError::Conflict),
            MapEntry::Vacant(v) => {
                v.insert(transition::create(false, record)?);
                Ok(())
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
        Ok(self.apply(key, |e| {
            transition::merge_vault(e, changes, now, expires_at)
        }))
    }

    async fn touch(&self, key: &SessionKey, now: u64, expires_at: u64) -> Result<(), StoreError> {
        self.apply(key, |e| transition::touch(e, now, expires_at));
        Ok(())
    }

    async fn claim_login(
        &self,
        key: &SessionKey,
        claim: LoginClaim,
        now: u64,
    ) -> Result<Claim, StoreError> {
        Ok(self.apply(key, |e| transition::claim_login(e, claim, now)))
    }

    async fn release_login(&self, key: &SessionKey, owner: u64) -> Result<(), StoreError> {
        self.apply(key, |e| transition::release_login(e, owner));
        Ok(())
    }

    async fn rotate(
        &self,
        old: &SessionKey,
        new: &SessionKey,
        rotation: &Rotation,
    ) -> Result<RotateOutcome, StoreError> {
        // A rotation adds a key (the old one becomes a short-lived tombstone): it makes
        // room like a creation, but a login is never refused for lack of it.
        let _full_is_no_reason_to_refuse: Result<(), StoreError> = self.make_room();
        for _ in 0..ROTATE_ATTEMPTS {
            let base = self.map.get(old).map(|e| e.value().clone());
            let Some(rotated) = transition::rotate(base.as_ref(), false, new, rotation)? else {
                return Ok(RotateOutcome::OldGone);
            };
            let base_version = match &base {
                Some(Entry::Live(r)) => r.version,
                _ => return Ok(RotateOutcome::OldGone),
            };
            match self.map.entry(*new) {
                MapEntry::Occupied(_) => return Err(StoreError::Conflict),
                MapEntry::Vacant(v) => {
                    v.insert(Entry::Live(Arc::new(rotated.record.clone())));
                }
            }
            let swapped = match self.map.get_mut(old).as_deref_mut() {
                Some(e @ Entry::Live(_)) => {
                    if matches!(e, Entry::Live(r) if r.version == base_version) {
                        *e = rotated.old;
                        Some(true)
                    } else {
                        Some(false) // changed in between: decide again on the new version
                    }
                }
                _ => None, // no longer live
            };
            match swapped {
                Some(true) => return Ok(RotateOutcome::Rotated(rotated.record)),
                Some(false) => {
                    self.map.remove(new);
                }
                None => {
                    self.map.remove(new);
                    return Ok(RotateOutcome::OldGone);
                }
            }
        }
        Err(StoreError::Contended)
    }

    async fn revoke(
        &self,
        key: &SessionKey,
        reason: RevokeReason,
        keep_until: u64,
    ) -> Result<bool, StoreError> {
        Ok(self.apply(key, |e| transition::revoke(e, reason, keep_until)))
    }

    async fn sessions_of(&self, subject: &str) -> Result<Vec<SessionKey>, StoreError> {
        Ok(self
            .map
            .iter()
            .filter(|e| transition::belongs_to(e.value(), subject))
            .map(|e| *e.key())
            .collect())
    }

    async fn sweep(&self, now: u64) -> Result<usize, StoreError> {
        let before = self.map.len();
        self.map.retain(|_, e| transition::kept_at(e, now));
        let removed = before.saturating_sub(self.map.len());
        // After a flood the table keeps its peak capacity: give back what a tenth of the
        // sessions leaving frees.
        if removed > before / 10 {
            self.map.shrink_to_fit();
        }
        Ok(removed)
    }
}
