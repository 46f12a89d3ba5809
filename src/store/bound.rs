//! The bound on sessions per replica (`store.max_sessions`, memory and file stores),
//! written once for both.
//!
//! A flood of visitors without cookies (crawlers, or an attacker) creates one anonymous
//! session each; nothing else stops them before `anonymous_idle_timeout`. When a store is
//! full, a creation first evicts a batch of anonymous sessions, least recently used
//! first (by `last_seen_at`, which `touch` keeps within `touch_interval`). Signed-in
//! sessions, sessions with a login in flight and tombstones are never evicted: losing a
//! tombstone early would let a rotated-away ID in flight start a fresh session and
//! replace the browser's new cookie. When nothing can be evicted, the creation fails
//! with [`StoreError::Full`](super::StoreError::Full) (a 503 with `Retry-After`, and the
//! app's cookie never reaches the browser).
//!
//! Eviction scans every entry for the oldest batch (1% of the bound), so its cost is
//! spread over the creations the batch makes room for: about a hundred entries looked at
//! per creation, with one scan at a time.

use std::collections::BinaryHeap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use prometheus_client::metrics::counter::Counter;

use super::Entry;
use crate::session::SessionKey;

/// The default `store.max_sessions`: about 120 MB of anonymous sessions in the memory
/// store (`benches/load/flood.sh` measures a flood).
pub const DEFAULT_MAX_SESSIONS: usize = 200_000;

/// A store's bound and what enforcing it counted.
#[derive(Debug)]
pub struct Bound {
    max: usize,
    /// Sessions evicted to make room.
    pub evicted: Counter,
    /// One eviction scan at a time: concurrent creations wait for it, then find room.
    scanning: Mutex<()>,
}

impl Bound {
    pub fn new(max_sessions: usize, evicted: Counter) -> Bound {
        Bound {
            max: max_sessions.max(1),
            evicted,
            scanning: Mutex::new(()),
        }
    }

    /// No bound (unit tests, tools).
    pub fn unbounded() -> Bound {
        Bound::new(usize::MAX, Counter::default())
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether a store holding `len` entries has no room for another.
    pub fn is_full(&self, len: usize) -> bool {
        len >= self.max
    }

    /// Held while a store scans and evicts, so that concurrent creations wait for one
    /// scan instead of all scanning. A poisoned lock only means a scan panicked: the
    /// guard protects no data.
    pub fn scanning(&self) -> MutexGuard<'_, ()> {
        self.scanning.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The oldest batch (1% of the bound) of the evictable entries `scan` visits.
    pub(crate) fn victims<S>(&self, scan: S) -> Vec<SessionKey>
    where
        S: FnOnce(&mut dyn FnMut(SessionKey, &Entry)),
    {
        oldest_evictable(scan, (self.max / 100).max(1))
    }

    /// Counts and logs an eviction batch (one line per batch, so at most one per 1% of
    /// the bound's creations).
    pub fn evicted(&self, n: usize) {
        if n > 0 {
            self.evicted.inc_by(u64::try_from(n).unwrap_or(u64::MAX));
            tracing::warn!(
                evicted = n,
                max_sessions = self.max,
                "session store full: evicted the least recently used anonymous sessions"
            );
        }
    }
}

/// Whether an entry may be evicted, and its last use.
pub(crate) fn evictable(entry: &Entry) -> Option<u64> {
    match entry {
        Entry::Live(r) if !r.authenticated && r.login_claim.is_none() => Some(r.last_seen_at),
        _ => None,
    }
}

/// The `n` least recently used evictable entries of a scan.
fn oldest_evictable<S>(scan: S, n: usize) -> Vec<SessionKey>
where
    S: FnOnce(&mut dyn FnMut(SessionKey, &Entry)),
{
    // A max-heap of the n oldest seen so far: the newest of them is dropped first.
    let mut heap: BinaryHeap<(u64, SessionKey)> = BinaryHeap::with_capacity(n.saturating_add(1));
    scan(&mut |key, entry| {
        let Some(last_seen) = evictable(entry) else {
            return;
        };
        if heap.len() < n {
            heap.push((last_seen, key));
        } else if heap.peek().is_some_and(|(newest, _)| last_seen < *newest) {
            heap.pop();
            heap.push((last_seen, key));
        }
    });
    heap.into_iter().map(|(_, k)| k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SessionRecord;

    fn key(n: u8) -> SessionKey {
        crate::session::SessionId::from_bytes([n; 32]).key()
    }

    fn anonymous(last_seen: u64) -> Entry {
        let mut r = SessionRecord::new_anonymous(1, u64::MAX, vec![]);
        r.last_seen_at = last_seen;
        Entry::Live(std::sync::Arc::new(r))
    }

    #[test]
    fn the_oldest_anonymous_sessions_go_first_and_signed_in_ones_never() {
        let mut signed_in = SessionRecord::new_anonymous(1, u64::MAX, vec![]);
        signed_in.authenticated = true;
        signed_in.last_seen_at = 0;
        let entries = vec![
            (key(1), anonymous(50)),
            (key(2), Entry::Live(std::sync::Arc::new(signed_in))),
            (key(3), anonymous(10)),
            (key(4), anonymous(30)),
            (
                key(5),
                Entry::Grace {
                    successor: key(9),
                    until: 0,
                },
            ),
        ];
        let scan = |f: &mut dyn FnMut(SessionKey, &Entry)| {
            for (k, e) in &entries {
                f(*k, e);
            }
        };
        let mut got = oldest_evictable(scan, 2);
        got.sort();
        let mut want = vec![key(3), key(4)];
        want.sort();
        assert_eq!(got, want);
        assert_eq!(oldest_evictable(scan, 10).len(), 3);
    }

    #[test]
    fn the_batch_is_a_hundredth_of_the_bound() {
        let bound = Bound::new(200, Counter::default());
        let entries: Vec<(SessionKey, Entry)> =
            (0..10).map(|n| (key(n), anonymous(u64::from(n)))).collect();
        let got = bound.victims(|f| {
            for (k, e) in &entries {
                f(*k, e);
            }
        });
        assert_eq!(got.len(), 2);
        assert!(bound.is_full(200) && !bound.is_full(199));
    }
}
