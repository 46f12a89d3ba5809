//! Session lifecycle: resolving the presented ID, creating, rotating (login and
//! periodic), logging out and expiring sessions, each committed to the store before the
//! response that carries its cookie leaves.
//!
//! Ordering rules that make fixation impossible:
//! - a login rotation mints a new ID, builds the new record from the old one *inside*
//!   the store, creates it and kills the old ID in one store operation, and only then is
//!   the login response (with the new cookie) released; on a store failure the client
//!   gets a 503 and the response is dropped;
//! - a login on an existing session first *claims* it, so that two logins can never be
//!   processed by the app on the same vaulted app session; a claim that is neither
//!   released (the app rejected the login) nor consumed by the rotation kills the
//!   session when it runs out (fail closed: the app may have authenticated it);
//! - a rotated-away, logged-out, expired or unknown ID is never resurrected: it is
//!   reported (hash prefix only) and the request continues without a session.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tracing::{debug, info, warn};

use crate::config::{SessionConfig, StoreFailurePolicy};
use crate::error::ProxyError;
use crate::limit::CreationLimit;
use crate::session::{proxy_set_cookie, IdSource, Presented, SessionId, SessionKey};
use crate::store::{
    Claim, LoginClaim, Lookup, OldKey, RevokeReason, RotateOutcome, Rotation, SessionRecord,
    SessionStore, StoreError, StoreOp,
};
use crate::telemetry::{Metrics, OpLabel, SessionCounters};
use crate::vault::{self, VaultChange};

/// The session a request runs on.
#[derive(Debug, Clone)]
pub struct Current {
    pub key: SessionKey,
    pub record: std::sync::Arc<SessionRecord>,
    /// Reached through an ID in its post-rotation grace window.
    pub via_grace: bool,
}

#[derive(Debug, Default)]
pub struct Resolved {
    pub current: Option<Current>,
    /// The presented cookie is useless: tell the browser to drop it (unless the response
    /// sets a new one anyway).
    pub expire_cookie: bool,
}

pub struct Sessions {
    pub cfg: SessionConfig,
    pub store: Arc<dyn SessionStore>,
    ids: Arc<dyn IdSource>,
    store_timeout: Duration,
    /// How long other replicas may serve a cached copy of a session (zero for a store no
    /// other process shares); a login waits this long after claiming.
    login_settle: Duration,
    pub metrics: Arc<Metrics>,
    creation: CreationLimit,
}

/// What a successful attempt was: a login, or a privilege change on a signed-in
/// session (audited and counted apart; both get a new ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signed {
    Login,
    Privilege,
}

/// Whether a response's vault changes start a session for a visitor without one: only a
/// cookie worth keeping does.
pub fn starts_session(changes: &[VaultChange]) -> bool {
    changes.iter().any(|c| matches!(c, VaultChange::Set(_)))
}

/// Rounds of finding and ending a user's sessions ([`Sessions::revoke_subject`]).
const REVOKE_ROUNDS: usize = 4;

/// The least time a search of the store by subject gets.
const SEARCH_DEADLINE: Duration = Duration::from_secs(30);

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Sessions {
    pub fn new(
        cfg: SessionConfig,
        store: Arc<dyn SessionStore>,
        ids: Arc<dyn IdSource>,
        store_timeout: Duration,
        login_settle: Duration,
        metrics: Arc<Metrics>,
    ) -> Sessions {
        Sessions {
            creation: CreationLimit::new(cfg.creation_quota),
            cfg,
            store,
            ids,
            store_timeout,
            login_settle,
            metrics,
        }
    }

    /// The per-client creation limit, checked before a response that would start a
    /// session for `client` is committed.
    pub fn admit_new(&self, client: IpAddr) -> Result<(), ProxyError> {
        self.creation
            .admit(client)
            .map_err(|wait| ProxyError::TooManyNewSessions { retry_after: wait })
    }

    pub fn counters(&self) -> &SessionCounters {
        &self.metrics.sessions
    }

    /// Every store call goes through here: a deadline, one error type, and its latency
    /// and failures counted per operation.
    async fn call<T>(
        &self,
        op: StoreOp,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ProxyError> {
        self.call_within(op, self.store_timeout, fut).await
    }

    async fn call_within<T>(
        &self,
        op: StoreOp,
        deadline: Duration,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ProxyError> {
        // One clock read for both the deadline and the latency.
        let started = tokio::time::Instant::now();
        let result = match tokio::time::timeout_at(started + deadline, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(ProxyError::Store { op, source: e }),
            Err(_) => Err(ProxyError::Store {
                op,
                source: StoreError::Timeout,
            }),
        };
        self.metrics
            .store_latency(op)
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.metrics
                .store_errors
                .get_or_create(&OpLabel { op })
                .inc();
        }
        result
    }

    /// How long a session may go unused: shorter until someone signs in to it.
    fn idle(&self, authenticated: bool) -> Duration {
        if authenticated {
            self.cfg.idle_timeout
        } else {
            self.cfg.anonymous_idle_timeout
        }
    }

    fn expires_at(&self, start: u64, now: u64, authenticated: bool) -> u64 {
        now.saturating_add(ms(self.idle(authenticated)))
            .min(start.saturating_add(ms(self.cfg.absolute_timeout)))
    }

    fn is_expired(&self, r: &SessionRecord, now: u64) -> bool {
        now >= r
            .last_seen_at
            .saturating_add(ms(self.idle(r.authenticated)))
            || now
                >= r.lifetime_start()
                    .saturating_add(ms(self.cfg.absolute_timeout))
    }

    /// How long tombstones are kept, to tell a stale ID from an unknown one.
    fn tombstone_until(&self, now: u64) -> u64 {
        now.saturating_add(ms(self.cfg.idle_timeout))
    }

    fn stale(&self, route: &str, key: &SessionKey, kind: &str) {
        self.counters().stale_ids.inc();
        warn!(target: "audit", event = "stale_id_presented", route, id_hash = %key, kind, "a rotated-away, logged-out, expired or unknown session ID was presented");
    }

    /// Finds the session a request presents, enforcing expiry and login claims. With
    /// `ServeCached`, a session this replica still has cached keeps working while the
    /// store is down.
    pub async fn resolve(
        &self,
        presented: &Presented,
        route: &str,
        now: u64,
        on_failure: StoreFailurePolicy,
    ) -> Result<Resolved, ProxyError> {
        let key = match presented {
            Presented::Absent => return Ok(Resolved::default()),
            Presented::Malformed => {
                self.counters().malformed_ids.inc();
                debug!(route, "malformed session cookie ignored");
                return Ok(Resolved {
                    current: None,
                    expire_cookie: true,
                });
            }
            Presented::Ambiguous => {
                // Not expired: the browser would drop whichever value is ours.
                self.counters().malformed_ids.inc();
                warn!(
                    route,
                    "several different session cookies presented (cookie tossing?); none trusted"
                );
                return Ok(Resolved::default());
            }
            Presented::Valid(key) => *key,
        };
        let lookup = match self.call(StoreOp::Load, self.store.load(&key)).await {
            Ok(l) => l,
            // Boxed: an outage's path would otherwise enlarge every request's future.
            Err(e) => return Box::pin(self.serve_cached(key, e, route, now, on_failure)).await,
        };
        let current = match lookup {
            // The common case is settled here: the other cases' state (a second load)
            // would otherwise be part of every request's future.
            Lookup::Live(record) => Current {
                key,
                record,
                via_grace: false,
            },
            other => match Box::pin(self.follow(key, other, route, now)).await? {
                Ok(current) => current,
                Err(resolved) => return Ok(resolved),
            },
        };
        self.check_live(current, route, now).await
    }

    /// The store failed: a `serve_cached` route may go on with this replica's cached copy,
    /// checked as a fresh read would be, minus the writes the store cannot take now.
    async fn serve_cached(
        &self,
        key: SessionKey,
        e: ProxyError,
        route: &str,
        now: u64,
        on_failure: StoreFailurePolicy,
    ) -> Result<Resolved, ProxyError> {
        if on_failure != StoreFailurePolicy::ServeCached {
            return Err(e);
        }
        let Some(Lookup::Live(record)) = self.store.load_stale(&key).await else {
            return Err(e);
        };
        if record.login_claim.is_some() {
            // Still in a login (or one that never completed): not usable.
            self.counters().login_conflicts.inc();
            return Err(ProxyError::LoginInProgress);
        }
        if self.is_expired(&record, now) {
            self.counters().expired.inc();
            return Ok(Resolved {
                current: None,
                expire_cookie: true,
            });
        }
        warn!(route, id_hash = %key, error = %e, "session store down; serving the cached session");
        Ok(Resolved {
            current: Some(Current {
                key,
                record,
                via_grace: false,
            }),
            expire_cookie: false,
        })
    }

    /// What a lookup stands for: a live record (followed through a periodic rotation's
    /// grace), or the reason there is none.
    async fn follow(
        &self,
        key: SessionKey,
        lookup: Lookup,
        route: &str,
        now: u64,
    ) -> Result<Result<Current, Resolved>, ProxyError> {
        let dead = |expire_cookie| {
            Ok(Err(Resolved {
                current: None,
                expire_cookie,
            }))
        };
        match lookup {
            Lookup::Live(record) => Ok(Ok(Current {
                key,
                record,
                via_grace: false,
            })),
            Lookup::Grace { successor, until } if now < until => {
                match self
                    .call(StoreOp::Load, self.store.load(&successor))
                    .await?
                {
                    Lookup::Live(record) => Ok(Ok(Current {
                        key: successor,
                        record,
                        via_grace: true,
                    })),
                    _ => {
                        self.stale(route, &key, "rotated_successor_gone");
                        dead(false)
                    }
                }
            }
            Lookup::Grace { .. } => {
                // The browser got the successor's cookie with the rotating response.
                self.stale(route, &key, RevokeReason::PeriodicRotated.as_str());
                dead(false)
            }
            Lookup::Revoked(reason) => {
                self.stale(route, &key, reason.as_str());
                // A rotated-away ID may race with its successor's cookie in the browser:
                // deleting "the" cookie could delete the new one. Only dead-end IDs are
                // expired.
                dead(!matches!(
                    reason,
                    RevokeReason::LoginRotated | RevokeReason::PeriodicRotated
                ))
            }
            Lookup::Missing => {
                self.stale(route, &key, "unknown");
                dead(true)
            }
        }
    }

    /// A live record is usable unless a login holds it, a login on it never completed, or
    /// it expired.
    async fn check_live(
        &self,
        cur: Current,
        route: &str,
        now: u64,
    ) -> Result<Resolved, ProxyError> {
        let key = cur.key;
        let dead = Resolved {
            current: None,
            expire_cookie: true,
        };
        if let Some(claim) = cur.record.login_claim {
            if now < claim.until {
                self.counters().login_conflicts.inc();
                return Err(ProxyError::LoginInProgress);
            }
            // The login never completed: the app may have authenticated the vaulted
            // session, so this ID must not be usable again.
            self.call(
                StoreOp::Revoke,
                self.store.revoke(
                    &key,
                    RevokeReason::LoginIncomplete,
                    self.tombstone_until(now),
                ),
            )
            .await?;
            self.stale(route, &key, RevokeReason::LoginIncomplete.as_str());
            return Ok(dead);
        }
        if self.is_expired(&cur.record, now) {
            self.call(
                StoreOp::Revoke,
                self.store
                    .revoke(&key, RevokeReason::Expired, self.tombstone_until(now)),
            )
            .await?;
            self.counters().expired.inc();
            info!(target: "audit", event = "expired", route, id_hash = %key);
            return Ok(dead);
        }
        Ok(Resolved {
            current: Some(cur),
            expire_cookie: false,
        })
    }

    /// Claims a session for a login about to be forwarded, and returns the claim (its
    /// owner token releases it). A second login on the same session while the first is
    /// in flight gets 409.
    pub async fn claim_login(
        &self,
        cur: &Current,
        deadline: Duration,
        now: u64,
    ) -> Result<LoginClaim, ProxyError> {
        // Twice the upstream deadline, after the settle wait: a login still in flight
        // cannot outlive its claim.
        let claim = LoginClaim {
            owner: self.claim_owner(),
            until: now
                .saturating_add(ms(self.login_settle))
                .saturating_add(ms(deadline).saturating_mul(2)),
        };
        match self
            .call(
                StoreOp::ClaimLogin,
                self.store.claim_login(&cur.key, claim, now),
            )
            .await?
        {
            Claim::Claimed => {
                // Replicas that cached this session before the claim may serve it (and
                // its vault) until their copy expires: only then may the app see the
                // login. From here on every replica reads the claim and answers 409.
                if !self.login_settle.is_zero() {
                    tokio::time::sleep(self.login_settle).await;
                }
                Ok(claim)
            }
            Claim::Busy => {
                self.counters().login_conflicts.inc();
                Err(ProxyError::LoginInProgress)
            }
            Claim::Gone => Err(ProxyError::SessionChanged),
        }
    }

    /// The app did not authenticate: the session may be used again. Only this login's
    /// own claim is released; one that ran out and was taken by another login stays.
    pub async fn release_login(&self, cur: &Current, claim: LoginClaim) -> Result<(), ProxyError> {
        self.call(
            StoreOp::ReleaseLogin,
            self.store.release_login(&cur.key, claim.owner),
        )
        .await
    }

    /// A random claim owner from the ID generator (never 0, which marks claims stored
    /// without one).
    fn claim_owner(&self) -> u64 {
        let key = self.ids.mint().key();
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&key.0[..8]);
        u64::from_le_bytes(bytes).max(1)
    }

    fn mint(&self) -> (SessionId, SessionKey) {
        let id = self.ids.mint();
        let key = id.key();
        (id, key)
    }

    /// Login (or privilege change) succeeded: new ID, old one killed, committed before
    /// returning the cookie and the new key.
    pub async fn login(
        &self,
        cur: Option<&Current>,
        changes: Vec<VaultChange>,
        subject: Option<String>,
        signed: Signed,
        route: &str,
        now: u64,
    ) -> Result<(HeaderValue, SessionKey), ProxyError> {
        let (id, key) = self.mint();
        let expires_at = self.expires_at(now, now, true);
        let subject_shown = subject.as_deref().unwrap_or("-");
        match cur {
            Some(cur) => {
                self.rotate_away(cur, &key, changes, Some(subject.clone()), expires_at, now)
                    .await?;
                let event = match signed {
                    Signed::Login => "login_rotated",
                    Signed::Privilege => "privilege_rotated",
                };
                info!(target: "audit", event, route, old_id_hash = %cur.key, id_hash = %key, subject = subject_shown);
            }
            None => {
                let mut record = SessionRecord::new_anonymous(now, expires_at, Vec::new());
                vault::apply(&mut record.vault, &changes);
                record.authenticated = true;
                record.authenticated_at = Some(now);
                record.subject = subject.clone();
                self.call(StoreOp::Create, self.store.create(&key, &record))
                    .await?;
                info!(target: "audit", event = "login_created", route, id_hash = %key, subject = subject_shown);
            }
        }
        match signed {
            Signed::Login => self.counters().login_rotated.inc(),
            Signed::Privilege => self.counters().privilege_rotated.inc(),
        };
        Ok((self.cookie_for(&id, now, now), key))
    }

    /// A login attempt with no clear result: the ID is replaced all the same (the app may
    /// have authenticated the vaulted session), without marking the session signed in.
    pub async fn rotate_undecided(
        &self,
        cur: &Current,
        changes: Vec<VaultChange>,
        route: &str,
        now: u64,
    ) -> Result<HeaderValue, ProxyError> {
        let (id, key) = self.mint();
        let expires_at =
            self.expires_at(cur.record.lifetime_start(), now, cur.record.authenticated);
        self.rotate_away(cur, &key, changes, None, expires_at, now)
            .await?;
        self.counters().undecided_rotated.inc();
        info!(target: "audit", event = "undecided_login_rotated", route, old_id_hash = %cur.key, id_hash = %key);
        Ok(self.cookie_for(&id, cur.record.lifetime_start(), now))
    }

    /// Moves a session to `key` for a login (`authenticate` is `Some(subject)`) or an
    /// undecided login attempt (`None`); the old ID is dead at once.
    async fn rotate_away(
        &self,
        cur: &Current,
        key: &SessionKey,
        changes: Vec<VaultChange>,
        authenticate: Option<Option<String>>,
        expires_at: u64,
        now: u64,
    ) -> Result<(), ProxyError> {
        let rotation = Rotation {
            changes,
            authenticate,
            now,
            expires_at,
            old_becomes: OldKey::Revoked {
                reason: RevokeReason::LoginRotated,
                keep_until: self.tombstone_until(now),
            },
        };
        match self
            .call(StoreOp::Rotate, self.store.rotate(&cur.key, key, &rotation))
            .await?
        {
            RotateOutcome::Rotated(_) => Ok(()),
            RotateOutcome::OldGone => Err(ProxyError::SessionChanged),
        }
    }

    /// Whether a session loaded earlier is still usable under its ID: live (or in a
    /// periodic rotation's grace) and not claimed by a login. A request whose body took a
    /// while is checked again before the app sees it with the vault, and one whose body
    /// streamed to the app before its answer is released.
    pub async fn still_current(&self, cur: &Current) -> Result<bool, ProxyError> {
        Ok(
            match self.call(StoreOp::Load, self.store.load(&cur.key)).await? {
                Lookup::Live(r) => r.login_claim.is_none(),
                Lookup::Grace { .. } => true,
                Lookup::Revoked(_) | Lookup::Missing => false,
            },
        )
    }

    /// Logout succeeded: the session is dead before the response leaves.
    pub async fn logout(
        &self,
        cur: Option<&Current>,
        route: &str,
        now: u64,
    ) -> Result<HeaderValue, ProxyError> {
        if let Some(cur) = cur {
            self.call(
                StoreOp::Revoke,
                self.store
                    .revoke(&cur.key, RevokeReason::LoggedOut, self.tombstone_until(now)),
            )
            .await?;
            self.counters().logged_out.inc();
            info!(target: "audit", event = "logged_out", route, id_hash = %cur.key, subject = cur.record.subject.as_deref().unwrap_or("-"));
        }
        Ok(self.expired_cookie())
    }

    /// Ends every live session signed in as `subject` but `except` (the session a
    /// privilege change just moved to), and returns the keys it ended, so that this
    /// replica can end the streams opened on them. `why` names the occasion in the audit
    /// line (`privilege_change`, `operator`). Other replicas stop serving them within
    /// their cache's staleness (`cache_ttl`), as after a logout.
    ///
    /// In rounds: a session that rotated (periodic rotation) or signed in between the
    /// finding and the ending is live under a key the round did not know, and the next
    /// round finds it. The search may scan the whole store (file store), so it gets a
    /// longer deadline than the other store calls.
    pub async fn revoke_subject(
        &self,
        subject: &str,
        except: Option<&SessionKey>,
        why: &str,
        now: u64,
    ) -> Result<Vec<SessionKey>, ProxyError> {
        let keep_until = self.tombstone_until(now);
        let search = self.store_timeout.max(SEARCH_DEADLINE);
        let mut ended = Vec::new();
        for _ in 0..REVOKE_ROUNDS {
            let found = self
                .call_within(StoreOp::SessionsOf, search, self.store.sessions_of(subject))
                .await?;
            let keys: Vec<SessionKey> = found.into_iter().filter(|k| Some(k) != except).collect();
            if keys.is_empty() {
                return Ok(ended);
            }
            self.revoke_keys(keys, subject, why, keep_until, &mut ended)
                .await?;
        }
        warn!(target: "audit", event = "subject_revoked", why, subject, "sessions of this user kept appearing while they were being ended (someone signing in again and again?): run the revocation again");
        Ok(ended)
    }

    /// Revokes `keys`, a few at a time (each is one transaction), each audited and
    /// counted as soon as it is ended; the first failure is returned after the others.
    async fn revoke_keys(
        &self,
        keys: Vec<SessionKey>,
        subject: &str,
        why: &str,
        keep_until: u64,
        ended: &mut Vec<SessionKey>,
    ) -> Result<(), ProxyError> {
        use futures_util::StreamExt;
        let mut revocations = futures_util::stream::iter(keys.into_iter().map(|key| async move {
            let revoked = self.call(
                StoreOp::Revoke,
                self.store
                    .revoke(&key, RevokeReason::SubjectRevoked, keep_until),
            );
            revoked.await.map(|live| live.then_some(key))
        }))
        .buffer_unordered(8);
        let mut failed = None;
        while let Some(r) = revocations.next().await {
            match r {
                Ok(Some(key)) => {
                    self.counters().subject_revoked.inc();
                    info!(target: "audit", event = "subject_revoked", why, subject, id_hash = %key);
                    ended.push(key);
                }
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// After an ordinary response: store captured app cookies (creating an anonymous
    /// session for a visitor without one), rotate an authenticated session whose
    /// interval is up, or record activity when due. Returns a cookie to set, if any.
    pub async fn after_response(
        &self,
        cur: Option<&Current>,
        changes: Vec<VaultChange>,
        route: &str,
        now: u64,
    ) -> Result<Option<HeaderValue>, ProxyError> {
        if !changes.is_empty() {
            self.counters().vault_captured.inc_by(changes.len() as u64);
        }
        let Some(cur) = cur else {
            if !starts_session(&changes) {
                return Ok(None);
            }
            let (id, key) = self.mint();
            let mut record =
                SessionRecord::new_anonymous(now, self.expires_at(now, now, false), Vec::new());
            vault::apply(&mut record.vault, &changes);
            self.call(StoreOp::Create, self.store.create(&key, &record))
                .await?;
            self.counters().created.inc();
            info!(target: "audit", event = "created", route, id_hash = %key);
            return Ok(Some(self.cookie_for(&id, now, now)));
        };
        let rec = &cur.record;
        let expires_at = self.expires_at(rec.lifetime_start(), now, rec.authenticated);
        let rotation_due = rec.authenticated
            && !cur.via_grace
            && now.saturating_sub(rec.rotated_at) >= ms(self.cfg.rotate_interval);
        if rotation_due {
            let (id, key) = self.mint();
            let rotation = Rotation {
                changes: changes.clone(),
                authenticate: None,
                now,
                expires_at,
                old_becomes: OldKey::Grace {
                    until: now.saturating_add(ms(self.cfg.rotate_grace)),
                },
            };
            match self
                .call(
                    StoreOp::Rotate,
                    self.store.rotate(&cur.key, &key, &rotation),
                )
                .await?
            {
                RotateOutcome::Rotated(_) => {
                    self.counters().periodic_rotated.inc();
                    info!(target: "audit", event = "periodic_rotated", route, old_id_hash = %cur.key, id_hash = %key);
                    return Ok(Some(self.cookie_for(&id, rec.lifetime_start(), now)));
                }
                // A parallel request rotated first; its successor gets our changes.
                RotateOutcome::OldGone => {
                    self.merge(&cur.key, &changes, route, now, expires_at)
                        .await?;
                    return Ok(None);
                }
            }
        }
        let touch_due = now.saturating_sub(rec.last_seen_at) >= ms(self.cfg.touch_interval);
        // No store call for an app that re-sends what the vault holds: with Firestore
        // that would be a transaction per request.
        let noop = vault::unchanged_by(&rec.vault, &changes, now, ms(self.cfg.touch_interval));
        if !changes.is_empty() && (!noop || touch_due) {
            self.merge(&cur.key, &changes, route, now, expires_at)
                .await?;
        } else if touch_due {
            // Activity bookkeeping only: a failure here must not fail the request.
            if let Err(e) = self
                .call(StoreOp::Touch, self.store.touch(&cur.key, now, expires_at))
                .await
            {
                warn!(route, error = %e, "could not record session activity");
            }
        }
        Ok(None)
    }

    /// Stores captured app cookies in a session, following it to its successor when a
    /// parallel request has just rotated it (the old key is in its grace window).
    async fn merge(
        &self,
        key: &SessionKey,
        changes: &[VaultChange],
        route: &str,
        now: u64,
        expires_at: u64,
    ) -> Result<(), ProxyError> {
        if changes.is_empty() {
            return Ok(());
        }
        let merged = self
            .call(
                StoreOp::MergeVault,
                self.store.merge_vault(key, changes, now, expires_at),
            )
            .await?;
        if merged.is_some() {
            return Ok(());
        }
        if let Lookup::Grace { successor, .. } =
            self.call(StoreOp::Load, self.store.load(key)).await?
        {
            let merged = self
                .call(
                    StoreOp::MergeVault,
                    self.store.merge_vault(&successor, changes, now, expires_at),
                )
                .await?;
            if merged.is_some() {
                return Ok(());
            }
        }
        debug!(route, id_hash = %key, "session ended while the request was in flight; app cookies dropped");
        Ok(())
    }

    /// Set-Cookie for a session; Max-Age runs to the absolute deadline.
    fn cookie_for(&self, id: &SessionId, lifetime_start: u64, now: u64) -> HeaderValue {
        let end = lifetime_start.saturating_add(ms(self.cfg.absolute_timeout));
        let max_age = end.saturating_sub(now) / 1000;
        proxy_set_cookie(
            &self.cfg.cookie_name,
            Some(id),
            max_age.max(1),
            self.cfg.same_site,
        )
    }

    pub fn expired_cookie(&self) -> HeaderValue {
        proxy_set_cookie(&self.cfg.cookie_name, None, 0, self.cfg.same_site)
    }

    /// Periodically removes expired sessions and tombstones.
    pub async fn sweep_forever(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            self.creation.forget_idle();
            match self
                .call(StoreOp::Sweep, self.store.sweep(crate::store::now_ms()))
                .await
            {
                Ok(n) if n > 0 => debug!(removed = n, "swept expired sessions"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "session sweep failed"),
            }
        }
    }
}

/// The session lifecycle driven directly: a deterministic ID source, the memory store,
/// explicit clocks (the `now` each call takes) and paused tokio time for the waits.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::ids::SequentialIds;
    use crate::store::{LoginClaim, MemoryStore};
    use crate::vault::VaultCookie;

    const T0: u64 = 1_700_000_000_000;
    const ROUTE: &str = "test";

    fn cfg() -> SessionConfig {
        SessionConfig {
            creation_quota: None,
            cookie_name: "__Host-sg".into(),
            same_site: crate::cookies::SameSite::Lax,
            idle_timeout: Duration::from_secs(1800),
            anonymous_idle_timeout: Duration::from_secs(600),
            absolute_timeout: Duration::from_secs(12 * 3600),
            rotate_interval: Duration::from_secs(900),
            rotate_grace: Duration::from_secs(5),
            touch_interval: Duration::from_secs(60),
            store_timeout: Duration::from_secs(2),
        }
    }

    fn sessions_on(store: Arc<dyn SessionStore>, settle: Duration) -> Sessions {
        Sessions::new(
            cfg(),
            store,
            Arc::new(SequentialIds::default()),
            Duration::from_secs(2),
            settle,
            Arc::new(Metrics::new()),
        )
    }

    fn sessions() -> Sessions {
        sessions_on(Arc::new(MemoryStore::new()), Duration::ZERO)
    }

    fn set(name: &str, value: &str) -> VaultChange {
        VaultChange::Set(VaultCookie {
            name: name.into(),
            value: value.into(),
            path: "/".into(),
            expires_at: None,
        })
    }

    /// The ID a `Set-Cookie` for sessiongate's cookie carries.
    fn presented(cookie: &HeaderValue) -> Presented {
        let value = cookie
            .to_str()
            .ok()
            .and_then(|c| c.split(';').next())
            .and_then(|p| p.split_once('='))
            .map(|(_, v)| v.to_owned())
            .unwrap_or_default();
        SessionId::parse(value.as_bytes())
            .map_or(Presented::Malformed, |id| Presented::Valid(id.key()))
    }

    async fn resolve(s: &Sessions, p: &Presented, now: u64) -> Resolved {
        s.resolve(p, ROUTE, now, StoreFailurePolicy::FailClosed)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// An anonymous session holding the app's `SID`.
    async fn anonymous(s: &Sessions) -> (Presented, Current) {
        let cookie = s
            .after_response(None, vec![set("SID", "app1")], ROUTE, T0)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no session created"));
        let id = presented(&cookie);
        let cur = resolve(s, &id, T0 + 1)
            .await
            .current
            .unwrap_or_else(|| panic!("not live"));
        (id, cur)
    }

    #[tokio::test]
    async fn an_app_re_sending_its_cookie_costs_no_store_write() {
        use crate::store::instrumented::Instrumented;
        use std::sync::atomic::Ordering::SeqCst;
        let store = Arc::new(Instrumented::default());
        let s = sessions_on(store.clone(), Duration::ZERO);
        let (_, cur) = anonymous(&s).await;
        let touch = cfg().touch_interval.as_millis() as u64;
        let at = |t| s.after_response(Some(&cur), vec![set("SID", "app1")], ROUTE, t);
        at(T0 + 2).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (store.merges.load(SeqCst), store.touches.load(SeqCst)),
            (0, 0)
        );
        // Once activity is due, the re-sent cookie is written with it, in one call.
        at(T0 + touch).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (store.merges.load(SeqCst), store.touches.load(SeqCst)),
            (1, 0)
        );
        // A new value is written at once.
        s.after_response(Some(&cur), vec![set("SID", "app2")], ROUTE, T0 + 3)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.merges.load(SeqCst), 2);
    }

    #[tokio::test]
    async fn an_app_cookie_starts_a_session_and_nothing_else_does() {
        let s = sessions();
        assert!(s
            .after_response(None, Vec::new(), ROUTE, T0)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none());
        let (_, cur) = anonymous(&s).await;
        assert!(!cur.record.authenticated);
        assert_eq!(cur.record.vault.len(), 1);
        assert_eq!(s.counters().created.get(), 1);
    }

    #[tokio::test]
    async fn a_login_kills_the_old_id_and_the_new_one_is_signed_in() {
        let s = sessions();
        let (old, cur) = anonymous(&s).await;
        let cookie = s
            .login(
                Some(&cur),
                vec![set("SID", "app2")],
                Some("alice".into()),
                Signed::Login,
                ROUTE,
                T0 + 2,
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .0;
        let new = presented(&cookie);
        let dead = resolve(&s, &old, T0 + 3).await;
        assert!(dead.current.is_none(), "the pre-login ID still works");
        assert!(
            !dead.expire_cookie,
            "a rotated-away ID must not delete the new cookie"
        );
        assert_eq!(s.counters().stale_ids.get(), 1);
        let now = resolve(&s, &new, T0 + 3)
            .await
            .current
            .unwrap_or_else(|| panic!("dead"));
        assert!(now.record.authenticated);
        assert_eq!(now.record.subject.as_deref(), Some("alice"));
        assert_eq!(now.record.vault[0].value, "app2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_is_exclusive_released_only_by_its_login_and_waits_the_settle_time() {
        let s = sessions_on(Arc::new(MemoryStore::new()), Duration::from_secs(1));
        let (id, cur) = anonymous(&s).await;
        let started = tokio::time::Instant::now();
        let claim = s
            .claim_login(&cur, Duration::from_secs(10), T0 + 2)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "no settle wait"
        );
        assert!(matches!(
            s.claim_login(&cur, Duration::from_secs(10), T0 + 3).await,
            Err(ProxyError::LoginInProgress)
        ));
        // Ordinary requests wait out the login too.
        assert!(matches!(
            s.resolve(&id, ROUTE, T0 + 3, StoreFailurePolicy::FailClosed)
                .await,
            Err(ProxyError::LoginInProgress)
        ));
        let stranger = LoginClaim {
            owner: claim.owner.wrapping_add(1),
            until: claim.until,
        };
        s.release_login(&cur, stranger)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !s.still_current(&cur).await.unwrap_or(true),
            "released by a stranger"
        );
        s.release_login(&cur, claim)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.still_current(&cur).await.unwrap_or(false));
    }

    #[tokio::test]
    async fn a_claim_that_runs_out_kills_the_session() {
        let s = sessions();
        let (id, cur) = anonymous(&s).await;
        let claim = s
            .claim_login(&cur, Duration::from_secs(10), T0 + 2)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let after = resolve(&s, &id, claim.until).await;
        assert!(after.current.is_none() && after.expire_cookie);
        assert_eq!(
            s.store.load(&cur.key).await.ok(),
            Some(Lookup::Revoked(RevokeReason::LoginIncomplete))
        );
    }

    #[tokio::test]
    async fn periodic_rotation_leaves_a_grace_window_only() {
        let s = sessions();
        let (_, cur) = anonymous(&s).await;
        let cookie = s
            .login(
                Some(&cur),
                Vec::new(),
                Some("bob".into()),
                Signed::Login,
                ROUTE,
                T0 + 2,
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let first = presented(&cookie.0);
        let signed_in = resolve(&s, &first, T0 + 3)
            .await
            .current
            .unwrap_or_else(|| panic!("dead"));
        let due = T0 + 2 + 900_000;
        let rotated = s
            .after_response(Some(&signed_in), Vec::new(), ROUTE, due)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no periodic rotation"));
        let second = presented(&rotated);
        let via_grace = resolve(&s, &first, due + 4_999)
            .await
            .current
            .unwrap_or_else(|| panic!("no grace"));
        assert!(via_grace.via_grace);
        assert!(resolve(&s, &first, due + 5_000).await.current.is_none());
        assert!(resolve(&s, &second, due + 5_000).await.current.is_some());
        assert_eq!(s.counters().periodic_rotated.get(), 1);
    }

    #[tokio::test]
    async fn revoking_a_user_finds_a_session_that_rotated_meanwhile() {
        let store = Arc::new(crate::store::instrumented::Instrumented::default());
        let s = sessions_on(store.clone(), Duration::ZERO);
        let (_, cur) = anonymous(&s).await;
        s.login(
            Some(&cur),
            Vec::new(),
            Some("alice".into()),
            Signed::Login,
            ROUTE,
            T0 + 2,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        store
            .rotate_on_search
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let ended = s
            .revoke_subject("alice", None, "operator", T0 + 3)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // The first round's key was rotated away before it could be ended; the second
        // round found its successor.
        assert_eq!(ended.len(), 1);
        assert!(
            store
                .inner
                .sessions_of("alice")
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .is_empty(),
            "a session of alice survived the revocation"
        );
        assert_eq!(s.counters().subject_revoked.get(), 1);
    }

    #[tokio::test]
    async fn anonymous_sessions_expire_sooner_than_signed_in_ones() {
        let s = sessions();
        let (id, _) = anonymous(&s).await;
        assert!(resolve(&s, &id, T0 + 599_999).await.current.is_some());
        let r = resolve(&s, &id, T0 + 600_000).await;
        assert!(r.current.is_none() && r.expire_cookie);
        assert_eq!(s.counters().expired.get(), 1);

        // The store can drop it then too: its expiry was written with the shorter idle.
        let (_, cur) = anonymous(&s).await;
        assert_eq!(cur.record.expires_at, T0 + 600_000);
        let cookie = s
            .login(
                Some(&cur),
                Vec::new(),
                Some("carol".into()),
                Signed::Login,
                ROUTE,
                T0 + 2,
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let signed_in = presented(&cookie.0);
        assert!(resolve(&s, &signed_in, T0 + 2 + 1_799_999)
            .await
            .current
            .is_some());
        let r = resolve(&s, &signed_in, T0 + 2 + 1_800_000).await;
        assert!(r.current.is_none() && r.expire_cookie);
    }

    /// A store that never answers.
    struct Hung;

    #[async_trait::async_trait]
    impl SessionStore for Hung {
        async fn load(&self, _: &SessionKey) -> Result<Lookup, StoreError> {
            std::future::pending().await
        }
        async fn create(&self, _: &SessionKey, _: &SessionRecord) -> Result<(), StoreError> {
            std::future::pending().await
        }
        async fn merge_vault(
            &self,
            _: &SessionKey,
            _: &[VaultChange],
            _: u64,
            _: u64,
        ) -> Result<Option<SessionRecord>, StoreError> {
            std::future::pending().await
        }
        async fn touch(&self, _: &SessionKey, _: u64, _: u64) -> Result<(), StoreError> {
            std::future::pending().await
        }
        async fn claim_login(
            &self,
            _: &SessionKey,
            _: LoginClaim,
            _: u64,
        ) -> Result<Claim, StoreError> {
            std::future::pending().await
        }
        async fn release_login(&self, _: &SessionKey, _: u64) -> Result<(), StoreError> {
            std::future::pending().await
        }
        async fn rotate(
            &self,
            _: &SessionKey,
            _: &SessionKey,
            _: &Rotation,
        ) -> Result<RotateOutcome, StoreError> {
            std::future::pending().await
        }
        async fn revoke(
            &self,
            _: &SessionKey,
            _: RevokeReason,
            _: u64,
        ) -> Result<bool, StoreError> {
            std::future::pending().await
        }
        async fn sweep(&self, _: u64) -> Result<usize, StoreError> {
            std::future::pending().await
        }
        async fn sessions_of(&self, _: &str) -> Result<Vec<SessionKey>, StoreError> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_does_not_answer_fails_closed_at_the_deadline() {
        let s = sessions_on(Arc::new(Hung), Duration::ZERO);
        let id = Presented::Valid(SessionId::from_bytes([7; crate::session::ID_BYTES]).key());
        let started = tokio::time::Instant::now();
        let r = s
            .resolve(&id, ROUTE, T0, StoreFailurePolicy::FailClosed)
            .await;
        assert!(matches!(
            r,
            Err(ProxyError::Store {
                op: StoreOp::Load,
                source: StoreError::Timeout
            })
        ));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(
            s.metrics
                .store_errors
                .get_or_create(&OpLabel { op: StoreOp::Load })
                .get(),
            1
        );
    }
}
