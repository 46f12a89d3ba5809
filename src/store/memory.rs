//! The embedded store: an in-process map (dashmap), the default for one machine.
//! Sessions do not survive a restart.
//!
//! Each operation locks one entry for a few instructions and never across an `.await`
//! (the methods are async only to fit the trait). Rotation touches two keys; it never
//! holds one entry while locking another (two keys can share a shard, and dashmap locks
//! are not reentrant), so it works optimistically: read the old record, insert the new
//! key if vacant, then swap the old key for its tombstone only if its version is
//! unchanged, retrying otherwise.

use async_trait::async_trait;
use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;

use super::{
    rotated_record, Claim, Entry, Lookup, RevokeReason, RotateOutcome, Rotation, SessionRecord,
    SessionStore, StoreError,
};
use crate::session::SessionKey;
use crate::vault::VaultChange;

#[derive(Debug, Default)]
pub struct MemoryStore {
    map: DashMap<SessionKey, Entry>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Number of entries (live sessions and tombstones).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
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
        match self.map.entry(*key) {
            MapEntry::Occupied(_) => Err(StoreError::Conflict),
            MapEntry::Vacant(v) => {
                v.insert(Entry::Live(record.clone()));
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
        Ok(match self.map.get_mut(key).as_deref_mut() {
            Some(Entry::Live(r)) => {
                crate::vault::apply(&mut r.vault, changes);
                r.last_seen_at = now;
                r.expires_at = expires_at;
                r.version += 1;
                Some(r.clone())
            }
            _ => None,
        })
    }

    async fn touch(&self, key: &SessionKey, now: u64, expires_at: u64) -> Result<(), StoreError> {
        if let Some(Entry::Live(r)) = self.map.get_mut(key).as_deref_mut() {
            r.last_seen_at = now;
            r.expires_at = expires_at;
        }
        Ok(())
    }

    async fn claim_login(
        &self,
        key: &SessionKey,
        until: u64,
        now: u64,
    ) -> Result<Claim, StoreError> {
        Ok(match self.map.get_mut(key).as_deref_mut() {
            Some(Entry::Live(r)) => match r.login_claim_until {
                Some(t) if t > now => Claim::Busy,
                _ => {
                    r.login_claim_until = Some(until);
                    r.version += 1;
                    Claim::Claimed
                }
            },
            _ => Claim::Gone,
        })
    }

    async fn release_login(&self, key: &SessionKey) -> Result<(), StoreError> {
        if let Some(Entry::Live(r)) = self.map.get_mut(key).as_deref_mut() {
            r.login_claim_until = None;
            r.version += 1;
        }
        Ok(())
    }

    async fn rotate(
        &self,
        old: &SessionKey,
        new: &SessionKey,
        rotation: &Rotation,
    ) -> Result<RotateOutcome, StoreError> {
        for _ in 0..ROTATE_ATTEMPTS {
            let base = match self.map.get(old).as_deref() {
                Some(Entry::Live(r)) => r.clone(),
                _ => return Ok(RotateOutcome::OldGone),
            };
            let record = rotated_record(&base, rotation);
            match self.map.entry(*new) {
                MapEntry::Occupied(_) => return Err(StoreError::Conflict),
                MapEntry::Vacant(v) => {
                    v.insert(Entry::Live(record.clone()));
                }
            }
            let swapped = match self.map.get_mut(old).as_deref_mut() {
                Some(e @ Entry::Live(_)) => {
                    if matches!(e, Entry::Live(r) if r.version == base.version) {
                        *e = Entry::tombstone(rotation.old_becomes, *new);
                        Some(true)
                    } else {
                        Some(false) // changed in between: rebuild from the new version
                    }
                }
                _ => None, // no longer live
            };
            match swapped {
                Some(true) => return Ok(RotateOutcome::Rotated(record)),
                Some(false) => {
                    self.map.remove(new);
                }
                None => {
                    self.map.remove(new);
                    return Ok(RotateOutcome::OldGone);
                }
            }
        }
        Err(StoreError::Unavailable(
            "rotation kept racing with concurrent updates".into(),
        ))
    }

    async fn revoke(
        &self,
        key: &SessionKey,
        reason: RevokeReason,
        keep_until: u64,
    ) -> Result<bool, StoreError> {
        Ok(match self.map.get_mut(key).as_deref_mut() {
            Some(e @ Entry::Live(_)) => {
                *e = Entry::Revoked { reason, keep_until };
                true
            }
            _ => false,
        })
    }

    async fn sweep(&self, now: u64) -> Result<usize, StoreError> {
        let before = self.map.len();
        self.map.retain(|_, e| e.kept_at(now));
        Ok(before.saturating_sub(self.map.len()))
    }
}
