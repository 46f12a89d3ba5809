//! Session storage behind one async trait, so that the request path never knows which
//! backend it talks to.
//!
//! Every operation is keyed by [`SessionKey`] (the hash of the ID, never the ID) and is
//! atomic on its own. The operations are shaped so that a backend can implement each as
//! one transaction: rotation, in particular, computes the new record from the old one
//! *inside* the store (so that a vault update racing with a login is not lost), creates
//! the new key only if it does not exist, and turns the old key into a tombstone, all
//! at once. Policy (lifetimes, what counts as expired) stays with the caller, which
//! passes the resulting timestamps in.

pub mod bound;
pub mod cache;
pub mod deferred;
pub mod file;
pub mod firestore;
#[cfg(test)]
pub(crate) mod instrumented;
pub mod memory;
pub mod transition;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::session::SessionKey;
use crate::vault::{VaultChange, VaultCookie};

pub use file::FileStore;
pub use memory::MemoryStore;

/// A live session. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub authenticated: bool,
    pub subject: Option<String>,
    pub vault: Vec<VaultCookie>,
    pub created_at: u64,
    pub authenticated_at: Option<u64>,
    /// When this ID was minted (creation or last rotation).
    pub rotated_at: u64,
    pub last_seen_at: u64,
    /// When the session dies if nothing happens: min(idle, absolute) as of the last
    /// write. Readers re-check expiry with the current config anyway.
    pub expires_at: u64,
    /// Incremented by every change to the session's content (not by `touch`), for
    /// optimistic concurrency.
    pub version: u64,
    /// A login is in flight for this session; see [`LoginClaim`].
    pub login_claim: Option<LoginClaim>,
}

/// A login in flight on a session: until `until`, a second login on it is refused, and
/// only the login that took the claim (`owner`, a random token it drew) may release it.
/// Without the owner, a login whose claim ran out could release the claim of the next
/// login on the same session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginClaim {
    pub owner: u64,
    pub until: u64,
}

impl SessionRecord {
    pub fn new_anonymous(now: u64, expires_at: u64, vault: Vec<VaultCookie>) -> SessionRecord {
        SessionRecord {
            authenticated: false,
            subject: None,
            vault,
            created_at: now,
            authenticated_at: None,
            rotated_at: now,
            last_seen_at: now,
            expires_at,
            version: 1,
            login_claim: None,
        }
    }

    /// A session that was just created and holds nothing a login or a change put there:
    /// the only kind a store may keep less carefully (deferred, or not fsynced at once).
    pub fn is_fresh_anonymous(&self) -> bool {
        !self.authenticated && self.login_claim.is_none() && self.version == 1
    }

    /// When the absolute lifetime started: the login, or else the creation.
    pub fn lifetime_start(&self) -> u64 {
        self.authenticated_at.unwrap_or(self.created_at)
    }
}

/// Why an ID no longer works. Kept for a while after the fact so that a request
/// presenting it can be reported as what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevokeReason {
    /// Replaced at login: the classic fixation attempt presents one of these.
    LoginRotated,
    /// Replaced by periodic rotation, and its grace window is over.
    PeriodicRotated,
    LoggedOut,
    Expired,
    /// A login was started on it and never committed (store failure or crash): the app
    /// may have authenticated its vaulted session, so the ID is dead.
    LoginIncomplete,
    /// Ended with every other session of its user: a privilege change on another of
    /// them (`revoke_others`), or an operator's revocation by subject.
    SubjectRevoked,
}

impl RevokeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeReason::LoginRotated => "login_rotated",
            RevokeReason::PeriodicRotated => "periodic_rotated",
            RevokeReason::LoggedOut => "logged_out",
            RevokeReason::Expired => "expired",
            RevokeReason::LoginIncomplete => "login_incomplete",
            RevokeReason::SubjectRevoked => "subject_revoked",
        }
    }

    pub fn parse(s: &str) -> Option<RevokeReason> {
        [
            RevokeReason::LoginRotated,
            RevokeReason::PeriodicRotated,
            RevokeReason::LoggedOut,
            RevokeReason::Expired,
            RevokeReason::LoginIncomplete,
            RevokeReason::SubjectRevoked,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// What a key currently stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Shared, not copied: a load on every request must not clone the vault.
    Live(Arc<SessionRecord>),
    /// Rotated periodically; still usable until `until`, on the successor's record.
    Grace {
        successor: SessionKey,
        until: u64,
    },
    Revoked(RevokeReason),
    Missing,
}

/// What every backend keeps under a key: the states a [`Lookup`] reports, plus how long
/// a tombstone is kept. [`transition`] decides each operation over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    Live(Arc<SessionRecord>),
    Grace {
        successor: SessionKey,
        until: u64,
    },
    Revoked {
        reason: RevokeReason,
        keep_until: u64,
    },
}

impl Entry {
    pub(crate) fn lookup(self) -> Lookup {
        match self {
            Entry::Live(r) => Lookup::Live(r),
            Entry::Grace { successor, until } => Lookup::Grace { successor, until },
            Entry::Revoked { reason, .. } => Lookup::Revoked(reason),
        }
    }
}

/// What the old key becomes when a session rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKey {
    /// Periodic rotation: usable for in-flight requests until then.
    Grace { until: u64 },
    /// Login rotation: dead at once; the tombstone is kept until `keep_until`.
    Revoked {
        reason: RevokeReason,
        keep_until: u64,
    },
}

/// How to build the rotated record from the old one.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub changes: Vec<VaultChange>,
    /// `Some(subject)` marks the session authenticated now (login).
    pub authenticate: Option<Option<String>>,
    pub now: u64,
    pub expires_at: u64,
    pub old_becomes: OldKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateOutcome {
    Rotated(SessionRecord),
    /// The old key was no longer live (a concurrent rotation, logout or expiry won).
    OldGone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Claimed,
    /// Another login holds the claim.
    Busy,
    /// The session is no longer live.
    Gone,
}

/// Why a store operation failed. Every variant but `Conflict` makes the request fail
/// closed (503); the variant says what an operator should look at. Cloneable, so that a
/// cache can hand one failed read's error to every request that waited for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer within the deadline (the operation may still commit).
    #[error("the session store did not answer within the deadline")]
    Timeout,
    /// Concurrent updates to the same session kept the write from committing.
    #[error(
        "the session store kept refusing the write because of concurrent updates to the session"
    )]
    Contended,
    /// A stored entry cannot be read: damaged, or written by an incompatible version.
    #[error("a stored session entry cannot be read: {0}")]
    Corrupt(String),
    /// The backend failed (I/O, network, permissions, ...).
    #[error("session store unavailable: {0}")]
    Backend(String),
    /// The replica's session bound (`store.max_sessions`) is reached and every session
    /// is signed in or busy: nothing can be evicted for a new one.
    #[error(
        "the session store is full (store.max_sessions) and no anonymous session can be evicted"
    )]
    Full,
    /// `create` (or a rotation's new key) met an existing key.
    #[error("a session with this key already exists")]
    Conflict,
}

impl StoreError {
    /// A short, stable name (logs and metric labels).
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout => "timeout",
            StoreError::Contended => "contended",
            StoreError::Corrupt(_) => "corrupt",
            StoreError::Backend(_) => "backend",
            StoreError::Full => "full",
            StoreError::Conflict => "conflict",
        }
    }
}

/// The store operations, named once for metrics labels, error messages, the
/// fault-injecting test store and the benches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreOp {
    Load,
    Create,
    MergeVault,
    Touch,
    ClaimLogin,
    ReleaseLogin,
    Rotate,
    Revoke,
    Sweep,
    SessionsOf,
}

impl StoreOp {
    pub const ALL: [StoreOp; 10] = [
        StoreOp::Load,
        StoreOp::Create,
        StoreOp::MergeVault,
        StoreOp::Touch,
        StoreOp::ClaimLogin,
        StoreOp::ReleaseLogin,
        StoreOp::Rotate,
        StoreOp::Revoke,
        StoreOp::Sweep,
        StoreOp::SessionsOf,
    ];

    /// The operation's position in `ALL` (its declaration order).
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StoreOp::Load => "load",
            StoreOp::Create => "create",
            StoreOp::MergeVault => "merge_vault",
            StoreOp::Touch => "touch",
            StoreOp::ClaimLogin => "claim_login",
            StoreOp::ReleaseLogin => "release_login",
            StoreOp::Rotate => "rotate",
            StoreOp::Revoke => "revoke",
            StoreOp::Sweep => "sweep",
            StoreOp::SessionsOf => "sessions_of",
        }
    }
}

impl prometheus_client::encoding::EncodeLabelValue for StoreOp {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

impl std::fmt::Display for StoreOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    async fn load(&self, key: &SessionKey) -> Result<Lookup, StoreError>;

    /// What this replica last knew about a key, however old (within the cache's limit),
    /// for routes that may keep serving known sessions while the store is down. Stores
    /// without a cache know nothing beyond `load`.
    async fn load_stale(&self, _key: &SessionKey) -> Option<Lookup> {
        None
    }

    /// How long another replica may keep serving a cached copy of a session after it
    /// changed here: zero for a store no other process shares. A login waits this long
    /// after claiming its session, so that no replica serves the pre-login vault while the
    /// app authenticates it.
    fn replica_staleness(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// One real round trip to the backing store (readiness checks): never answered from
    /// a cache.
    async fn probe(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.load(key).await.map(drop)
    }

    /// Creates a session; fails with [`StoreError::Conflict`] if the key exists.
    async fn create(&self, key: &SessionKey, record: &SessionRecord) -> Result<(), StoreError>;

    /// Merges vault changes (per cookie name and path, so parallel updates are not lost)
    /// and records activity. Returns the updated record, or `None` if not live.
    async fn merge_vault(
        &self,
        key: &SessionKey,
        changes: &[VaultChange],
        now: u64,
        expires_at: u64,
    ) -> Result<Option<SessionRecord>, StoreError>;

    /// Records activity without other changes. Bookkeeping only: the version (which
    /// counts changes to the session's content) stays, so a touch never makes a
    /// concurrent rotation retry, and a backend can write it blind.
    async fn touch(&self, key: &SessionKey, now: u64, expires_at: u64) -> Result<(), StoreError>;

    /// Marks a login in flight, so that a second login on the same session is refused.
    async fn claim_login(
        &self,
        key: &SessionKey,
        claim: LoginClaim,
        now: u64,
    ) -> Result<Claim, StoreError>;

    /// Ends the claim `owner` took, if it still holds it (the app did not authenticate).
    async fn release_login(&self, key: &SessionKey, owner: u64) -> Result<(), StoreError>;

    /// Atomically: build the new record from the live old one plus `rotation`, create it
    /// under `new` (which must not exist), and replace `old` as `rotation.old_becomes`.
    async fn rotate(
        &self,
        old: &SessionKey,
        new: &SessionKey,
        rotation: &Rotation,
    ) -> Result<RotateOutcome, StoreError>;

    /// Kills a live session (logout, expiry). Returns whether it was live.
    async fn revoke(
        &self,
        key: &SessionKey,
        reason: RevokeReason,
        keep_until: u64,
    ) -> Result<bool, StoreError>;

    /// Removes expired sessions and tombstones; returns how many.
    async fn sweep(&self, now: u64) -> Result<usize, StoreError>;

    /// The keys of the live sessions signed in as `subject` (exactly that string), for a
    /// privilege change that ends the user's other sessions and for revocation by
    /// subject. Read from the backing store, never from a replica's cache, which does
    /// not know the sessions other replicas created.
    async fn sessions_of(&self, subject: &str) -> Result<Vec<SessionKey>, StoreError>;
}

/// `inner` with, when `store.defer_anonymous_writes` is on (`defer` holds the pending
/// set's bound), the deferred anonymous writes in front of it. Written once for the
/// binary and the benches.
pub fn deferring(
    inner: std::sync::Arc<dyn SessionStore>,
    defer: Option<bound::Bound>,
) -> std::sync::Arc<dyn SessionStore> {
    match defer {
        Some(bound) => std::sync::Arc::new(deferred::DeferredStore::new(
            inner,
            MemoryStore::bounded(bound),
        )),
        None => inner,
    }
}

/// Current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
