//! Every store operation's decision, written once: a pure function from what the store
//! holds under a key (`Option<&Entry>`) to the operation's answer and what to write
//! back. The backends only read, run these, and write the result in one transaction
//! (redb's write transaction, a Firestore transaction, a locked map entry), so the three
//! stores cannot drift apart in what an operation means.
//!
//! Policy stays with the caller (`rotate`), which passes the timestamps in; these
//! functions only keep the record's own invariants: a tombstone is never revived, a
//! claim is released only by its owner, the version counts content changes.

use std::sync::Arc;

use super::{Claim, Entry, LoginClaim, OldKey, RevokeReason, Rotation, SessionRecord, StoreError};
use crate::session::SessionKey;
use crate::vault::VaultChange;

/// An operation's decision: the answer to return, and the entry to store under the key
/// (`None`: write nothing, so a backend can skip the write or abort its transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step<T> {
    pub answer: T,
    pub write: Option<Entry>,
}

impl<T> Step<T> {
    fn unchanged(answer: T) -> Step<T> {
        Step {
            answer,
            write: None,
        }
    }
}

fn live(current: Option<&Entry>) -> Option<&SessionRecord> {
    match current {
        Some(Entry::Live(r)) => Some(&**r),
        _ => None,
    }
}

/// `create`: only on a vacant key. `occupied` is raw presence, so that an entry the
/// backend cannot decode still counts as taken.
pub(crate) fn create(occupied: bool, record: &SessionRecord) -> Result<Entry, StoreError> {
    if occupied {
        return Err(StoreError::Conflict);
    }
    Ok(Entry::Live(Arc::new(record.clone())))
}

/// `merge_vault`: the changes applied per cookie name and path, activity recorded, a
/// new version.
pub(crate) fn merge_vault(
    current: Option<&Entry>,
    changes: &[VaultChange],
    now: u64,
    expires_at: u64,
) -> Step<Option<SessionRecord>> {
    let Some(r) = live(current) else {
        return Step::unchanged(None);
    };
    let mut r = r.clone();
    crate::vault::apply(&mut r.vault, changes);
    r.last_seen_at = now;
    r.expires_at = expires_at;
    r.version = r.version.saturating_add(1);
    Step {
        write: Some(Entry::Live(Arc::new(r.clone()))),
        answer: Some(r),
    }
}

/// `touch`: activity only; the version stays (see the trait).
pub(crate) fn touch(current: Option<&Entry>, now: u64, expires_at: u64) -> Step<()> {
    let Some(r) = live(current) else {
        return Step::unchanged(());
    };
    let mut r = r.clone();
    r.last_seen_at = now;
    r.expires_at = expires_at;
    Step {
        answer: (),
        write: Some(Entry::Live(Arc::new(r))),
    }
}

/// `claim_login`: taken if no claim is held at `now` (an expired claim is overwritten).
pub(crate) fn claim_login(current: Option<&Entry>, claim: LoginClaim, now: u64) -> Step<Claim> {
    let Some(r) = live(current) else {
        return Step::unchanged(Claim::Gone);
    };
    if r.login_claim.is_some_and(|c| c.until > now) {
        return Step::unchanged(Claim::Busy);
    }
    let mut r = r.clone();
    r.login_claim = Some(claim);
    r.version = r.version.saturating_add(1);
    Step {
        answer: Claim::Claimed,
        write: Some(Entry::Live(Arc::new(r))),
    }
}

/// `release_login`: clears the claim only if `owner` holds it; anything else (no
/// claim, another login's claim, not live) is left as it is.
pub(crate) fn release_login(current: Option<&Entry>, owner: u64) -> Step<()> {
    match live(current) {
        Some(r) if r.login_claim.is_some_and(|c| c.owner == owner) => {
            let mut r = r.clone();
            r.login_claim = None;
            r.version = r.version.saturating_add(1);
            Step {
                answer: (),
                write: Some(Entry::Live(Arc::new(r))),
            }
        }
        _ => Step::unchanged(()),
    }
}

/// `revoke`: a live session becomes a tombstone; anything else stays.
pub(crate) fn revoke(current: Option<&Entry>, reason: RevokeReason, keep_until: u64) -> Step<bool> {
    if live(current).is_none() {
        return Step::unchanged(false);
    }
    Step {
        answer: true,
        write: Some(Entry::Revoked { reason, keep_until }),
    }
}

/// What a rotation decided to write, together: the new key's record and the old key's
/// tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rotated {
    pub record: SessionRecord,
    pub old: Entry,
}

/// `rotate`: `None` when the old key is no longer live (the outcome `OldGone`). A dead
/// old key wins over a taken new key: the rotation lost a race, which is not a key
/// collision.
pub(crate) fn rotate(
    old: Option<&Entry>,
    new_occupied: bool,
    new: &SessionKey,
    rotation: &Rotation,
) -> Result<Option<Rotated>, StoreError> {
    let Some(base) = live(old) else {
        return Ok(None);
    };
    if new_occupied {
        return Err(StoreError::Conflict);
    }
    Ok(Some(Rotated {
        record: rotated_record(base, rotation),
        old: tombstone(rotation.old_becomes, *new),
    }))
}

/// The rotated record: the old one plus the rotation's changes, under a fresh version,
/// with no claim (the login that held it is the one committing). A login sets the
/// subject to what it found, even none: the new session must never carry the previous
/// session's user.
fn rotated_record(old: &SessionRecord, rotation: &Rotation) -> SessionRecord {
    let mut rec = old.clone();
    crate::vault::apply(&mut rec.vault, &rotation.changes);
    if let Some(subject) = &rotation.authenticate {
        rec.authenticated = true;
        rec.authenticated_at = Some(rotation.now);
        rec.subject.clone_from(subject);
    }
    rec.rotated_at = rotation.now;
    rec.last_seen_at = rotation.now;
    rec.expires_at = rotation.expires_at;
    rec.version = 1;
    rec.login_claim = None;
    rec
}

/// What the old key of a rotation to `successor` becomes.
pub(crate) fn tombstone(old: OldKey, successor: SessionKey) -> Entry {
    match old {
        OldKey::Grace { until } => Entry::Grace { successor, until },
        OldKey::Revoked { reason, keep_until } => Entry::Revoked { reason, keep_until },
    }
}

/// `sessions_of`: whether an entry is a live session signed in as `subject`.
pub(crate) fn belongs_to(entry: &Entry, subject: &str) -> bool {
    matches!(entry, Entry::Live(r) if r.authenticated && r.subject.as_deref() == Some(subject))
}

/// The sweep rule: whether an entry is still due to be kept at `now`.
pub(crate) fn kept_at(entry: &Entry, now: u64) -> bool {
    match entry {
        Entry::Live(r) => r.expires_at > now,
        Entry::Grace { until, .. } => *until > now,
        Entry::Revoked { keep_until, .. } => *keep_until > now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::VaultCookie;

    fn rec() -> SessionRecord {
        SessionRecord::new_anonymous(10, 1_000, vec![])
    }

    fn claim(owner: u64, until: u64) -> LoginClaim {
        LoginClaim { owner, until }
    }

    #[test]
    fn release_clears_only_the_owners_claim() {
        let mut r = rec();
        r.login_claim = Some(claim(7, 100));
        let held = Entry::Live(Arc::new(r.clone()));
        assert_eq!(release_login(Some(&held), 8), Step::unchanged(()));
        let released = release_login(Some(&held), 7);
        let Some(Entry::Live(after)) = released.write else {
            panic!("not written: {released:?}");
        };
        assert_eq!(after.login_claim, None);
        assert_eq!(after.version, r.version + 1);
        assert_eq!(
            release_login(Some(&Entry::Live(Arc::new(rec()))), 7).write,
            None
        );
    }

    #[test]
    fn a_claim_is_busy_until_it_runs_out() {
        let mut r = rec();
        r.login_claim = Some(claim(7, 100));
        let held = Entry::Live(Arc::new(r));
        assert_eq!(
            claim_login(Some(&held), claim(8, 200), 99).answer,
            Claim::Busy
        );
        let taken = claim_login(Some(&held), claim(8, 200), 100);
        assert_eq!(taken.answer, Claim::Claimed);
        assert!(
            matches!(taken.write, Some(Entry::Live(r)) if r.login_claim == Some(claim(8, 200)))
        );
        assert_eq!(claim_login(None, claim(8, 200), 0).answer, Claim::Gone);
    }

    #[test]
    fn a_login_without_a_subject_drops_the_previous_one() {
        let mut r = rec();
        r.authenticated = true;
        r.subject = Some("alice".into());
        let rotation = Rotation {
            changes: vec![VaultChange::Set(VaultCookie {
                name: "sid".into(),
                value: "new".into(),
                path: "/".into(),
                expires_at: None,
            })],
            authenticate: Some(None),
            now: 50,
            expires_at: 900,
            old_becomes: OldKey::Revoked {
                reason: RevokeReason::LoginRotated,
                keep_until: 900,
            },
        };
        let Ok(Some(rotated)) = rotate(
            Some(&Entry::Live(Arc::new(r))),
            false,
            &SessionKey([2; 32]),
            &rotation,
        ) else {
            panic!("not rotated");
        };
        let new = rotated.record;
        assert_eq!(new.subject, None);
        assert_eq!(new.authenticated_at, Some(50));
        assert_eq!(new.vault.len(), 1);
        assert_eq!(
            rotated.old,
            Entry::Revoked {
                reason: RevokeReason::LoginRotated,
                keep_until: 900
            }
        );
    }

    #[test]
    fn tombstones_are_never_revived() {
        let dead = Entry::Revoked {
            reason: RevokeReason::LoggedOut,
            keep_until: 5,
        };
        assert_eq!(merge_vault(Some(&dead), &[], 1, 2).write, None);
        assert_eq!(touch(Some(&dead), 1, 2).write, None);
        assert_eq!(revoke(Some(&dead), RevokeReason::Expired, 9).write, None);
        assert_eq!(claim_login(Some(&dead), claim(1, 9), 0).answer, Claim::Gone);
        assert_eq!(create(true, &rec()), Err(StoreError::Conflict));
    }
}
