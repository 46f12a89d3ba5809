//! Google Cloud Firestore backend: sessions shared by every replica.
//!
//! One document per session key, in the configured collection, with ID = hex SHA-256 of
//! the session ID (never the ID). Every mutation that depends on the current state
//! (vault merge, login claim, rotation, revocation) is one Firestore transaction: read
//! the document, decide, write, commit; Firestore retries it on contention, so parallel
//! updates from several replicas are serialized rather than lost. Rotation creates the
//! new document with a must-not-exist precondition and turns the old one into a
//! tombstone in the same transaction: a crash at any point leaves either the old state
//! or the new one, never half of each.
//!
//! `expires_at` is a Firestore Timestamp so that a TTL policy can delete dead documents
//! (see `deploy/firestore/`). TTL deletion is lazy (up to a day late), which is why the
//! session layer re-checks expiry on every read. `last_seen_at` is written by `touch`
//! only, which the session layer throttles (`session.touch_interval`).
//!
//! Authentication is the crate's default: Application Default Credentials (Workload
//! Identity on GKE). With `FIRESTORE_EMULATOR_HOST` set, it talks to the emulator.

use std::sync::Arc;

use async_trait::async_trait;
use firestore::errors::{BackoffError, FirestoreError};
use firestore::{FirestoreDb, FirestoreDbOptions, FirestoreInstant, FirestoreWritePrecondition};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};

use super::{
    rotated_record, Claim, Lookup, OldKey, RevokeReason, RotateOutcome, Rotation, SessionRecord,
    SessionStore, StoreError,
};
use crate::session::SessionKey;
use crate::vault::{VaultChange, VaultCookie};

/// The stored document. Tombstones keep only what reporting needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Doc {
    /// `live`, `grace` or `revoked`.
    state: String,
    #[serde(default)]
    authenticated: bool,
    #[serde(default)]
    subject: Option<String>,
    /// One entry (name, value, path, expiry) per cookie the app set. An array, not a
    /// map, because Firestore maps come back in no particular order and the record's
    /// order is part of what the store must keep.
    #[serde(default)]
    vault: Vec<VaultCookie>,
    #[serde(default)]
    created_at: u64,
    #[serde(default)]
    authenticated_at: Option<u64>,
    #[serde(default)]
    rotated_at: u64,
    #[serde(default)]
    last_seen_at: u64,
    /// When the document may be deleted: a Timestamp for the TTL policy, which cannot go
    /// past year 9999, so the exact value is kept beside it.
    #[serde(with = "firestore::serialize_as_timestamp")]
    expires_at: FirestoreInstant,
    #[serde(default)]
    expires_at_ms: u64,
    #[serde(default)]
    version: u64,
    #[serde(default)]
    login_claim_until: Option<u64>,
    /// Grace tombstones: the successor's key (hex) and the end of the grace window.
    #[serde(default)]
    successor: Option<String>,
    #[serde(default)]
    grace_until: Option<u64>,
    /// Revoked tombstones: why.
    #[serde(default)]
    reason: Option<String>,
}

fn instant(ms: u64) -> FirestoreInstant {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    firestore::jiff::Timestamp::from_millisecond(ms).unwrap_or(firestore::jiff::Timestamp::MAX)
}

impl Doc {
    fn live(r: &SessionRecord) -> Doc {
        Doc {
            state: "live".into(),
            authenticated: r.authenticated,
            subject: r.subject.clone(),
            vault: r.vault.clone(),
            created_at: r.created_at,
            authenticated_at: r.authenticated_at,
            rotated_at: r.rotated_at,
            last_seen_at: r.last_seen_at,
            expires_at: instant(r.expires_at),
            expires_at_ms: r.expires_at,
            version: r.version,
            login_claim_until: r.login_claim_until,
            ..Doc::default()
        }
    }

    fn tombstone(old: OldKey, successor: &SessionKey) -> Doc {
        match old {
            OldKey::Grace { until } => Doc {
                state: "grace".into(),
                successor: Some(successor.hex()),
                grace_until: Some(until),
                expires_at: instant(until),
                expires_at_ms: until,
                ..Doc::default()
            },
            OldKey::Revoked { reason, keep_until } => Doc::revoked(reason, keep_until),
        }
    }

    fn revoked(reason: RevokeReason, keep_until: u64) -> Doc {
        Doc {
            state: "revoked".into(),
            reason: Some(reason.as_str().into()),
            expires_at: instant(keep_until),
            expires_at_ms: keep_until,
            ..Doc::default()
        }
    }

    fn record(&self) -> Option<SessionRecord> {
        (self.state == "live").then(|| SessionRecord {
            authenticated: self.authenticated,
            subject: self.subject.clone(),
            vault: self.vault.clone(),
            created_at: self.created_at,
            authenticated_at: self.authenticated_at,
            rotated_at: self.rotated_at,
            last_seen_at: self.last_seen_at,
            expires_at: self.expires_at_ms,
            version: self.version,
            login_claim_until: self.login_claim_until,
        })
    }

    fn lookup(&self) -> Lookup {
        match self.state.as_str() {
            "live" => self.record().map_or(Lookup::Missing, Lookup::Live),
            "grace" => match self.successor.as_deref().and_then(SessionKey::from_hex) {
                Some(successor) => Lookup::Grace {
                    successor,
                    until: self.grace_until.unwrap_or(0),
                },
                None => Lookup::Revoked(RevokeReason::PeriodicRotated),
            },
            _ => Lookup::Revoked(
                self.reason
                    .as_deref()
                    .and_then(RevokeReason::parse)
                    .unwrap_or(RevokeReason::LoggedOut),
            ),
        }
    }
}

pub struct FirestoreStore {
    db: FirestoreDb,
    collection: Arc<str>,
}

fn unavailable(e: FirestoreError) -> StoreError {
    match e {
        FirestoreError::DataConflictError(_) => StoreError::Conflict,
        // A must-not-exist precondition that failed at commit.
        FirestoreError::DatabaseError(ref d) if d.public.code == "FailedPrecondition" => {
            StoreError::Conflict
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Inside a transaction: retry what Firestore says may succeed on retry.
fn in_tx(e: FirestoreError) -> BackoffError<FirestoreError> {
    match &e {
        FirestoreError::DatabaseError(d) if d.retry_possible => BackoffError::Transient {
            err: e,
            retry_after: None,
        },
        _ => BackoffError::Permanent(e),
    }
}

impl FirestoreStore {
    /// Connects to `projects/{project_id}/databases/{database_id}`.
    pub async fn connect(
        project_id: &str,
        database_id: &str,
        collection: &str,
    ) -> Result<FirestoreStore, StoreError> {
        // gcloud-sdk's TLS needs a process-wide rustls provider; ours is ring. An error
        // only means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options =
            FirestoreDbOptions::new(project_id.to_owned()).with_database_id(database_id.to_owned());
        let db = FirestoreDb::with_options(options)
            .await
            .map_err(unavailable)?;
        Ok(FirestoreStore {
            db,
            collection: collection.into(),
        })
    }

    async fn get(&self, key: &SessionKey) -> Result<Option<Doc>, StoreError> {
        self.db
            .fluent()
            .select()
            .by_id_in(&self.collection)
            .obj::<Doc>()
            .one(key.hex())
            .await
            .map_err(unavailable)
    }

    /// Runs `decide` on the current document inside a transaction; it returns the result
    /// and the document to write back (if any).
    async fn transact<T, F>(&self, key: &SessionKey, decide: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(Option<Doc>) -> (T, Option<Doc>) + Send + Sync + 'static,
    {
        let collection = self.collection.clone();
        let id = key.hex();
        let decide = Arc::new(decide);
        self.db
            .run_transaction(move |db, tx| {
                let (collection, id, decide) = (collection.clone(), id.clone(), decide.clone());
                async move {
                    let current: Option<Doc> = db
                        .fluent()
                        .select()
                        .by_id_in(&collection)
                        .obj()
                        .one(&id)
                        .await
                        .map_err(in_tx)?;
                    let (result, write) = decide(current);
                    if let Some(doc) = write {
                        db.fluent()
                            .update()
                            .in_col(&collection)
                            .document_id(&id)
                            .object(&doc)
                            .add_to_transaction(tx)
                            .map_err(in_tx)?;
                    }
                    Ok::<_, BackoffError<FirestoreError>>(result)
                }
                .boxed()
            })
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl SessionStore for FirestoreStore {
    async fn load(&self, key: &SessionKey) -> Result<Lookup, StoreError> {
        Ok(self.get(key).await?.map_or(Lookup::Missing, |d| d.lookup()))
    }

    async fn create(&self, key: &SessionKey, record: &SessionRecord) -> Result<(), StoreError> {
        let doc = Doc::live(record);
        let _: Doc = self
            .db
            .fluent()
            .insert()
            .into(&self.collection)
            .document_id(key.hex())
            .object(&doc)
            .execute()
            .await
            .map_err(|e| match e {
                FirestoreError::DataConflictError(_) => StoreError::Conflict,
                other => unavailable(other),
            })?;
        Ok(())
    }

    async fn merge_vault(
        &self,
        key: &SessionKey,
        changes: &[VaultChange],
        now: u64,
        expires_at: u64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let changes = changes.to_vec();
        self.transact(key, move |doc| match doc.as_ref().and_then(Doc::record) {
            None => (None, None),
            Some(mut r) => {
                crate::vault::apply(&mut r.vault, &changes);
                r.last_seen_at = now;
                r.expires_at = expires_at;
                r.version += 1;
                let doc = Doc::live(&r);
                (Some(r), Some(doc))
            }
        })
        .await
    }

    async fn touch(&self, key: &SessionKey, now: u64, expires_at: u64) -> Result<(), StoreError> {
        // A blind write of three fields: no read, no transaction. On a tombstone it only
        // moves the TTL date, which is harmless.
        let doc = Doc {
            last_seen_at: now,
            expires_at: instant(expires_at),
            expires_at_ms: expires_at,
            ..Doc::default()
        };
        let result: Result<Doc, _> = self
            .db
            .fluent()
            .update()
            .fields(["last_seen_at", "expires_at", "expires_at_ms"])
            .in_col(&self.collection)
            .precondition(FirestoreWritePrecondition::Exists(true))
            .document_id(key.hex())
            .object(&doc)
            .execute()
            .await;
        match result {
            Ok(_) | Err(FirestoreError::DataNotFoundError(_)) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn claim_login(
        &self,
        key: &SessionKey,
        until: u64,
        now: u64,
    ) -> Result<Claim, StoreError> {
        self.transact(key, move |doc| match doc.as_ref().and_then(Doc::record) {
            None => (Claim::Gone, None),
            Some(r) if r.login_claim_until.is_some_and(|t| t > now) => (Claim::Busy, None),
            Some(mut r) => {
                r.login_claim_until = Some(until);
                r.version += 1;
                (Claim::Claimed, Some(Doc::live(&r)))
            }
        })
        .await
    }

    async fn release_login(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.transact(key, |doc| match doc.as_ref().and_then(Doc::record) {
            Some(mut r) if r.login_claim_until.is_some() => {
                r.login_claim_until = None;
                r.version += 1;
                ((), Some(Doc::live(&r)))
            }
            _ => ((), None),
        })
        .await
    }

    async fn rotate(
        &self,
        old: &SessionKey,
        new: &SessionKey,
        rotation: &Rotation,
    ) -> Result<RotateOutcome, StoreError> {
        let collection = self.collection.clone();
        let (old_id, new_id, new_key) = (old.hex(), new.hex(), *new);
        let rotation = Arc::new(rotation.clone());
        self.db
            .run_transaction(move |db, tx| {
                let (collection, old_id, new_id, rotation) = (
                    collection.clone(),
                    old_id.clone(),
                    new_id.clone(),
                    rotation.clone(),
                );
                async move {
                    let current: Option<Doc> = db
                        .fluent()
                        .select()
                        .by_id_in(&collection)
                        .obj()
                        .one(&old_id)
                        .await
                        .map_err(in_tx)?;
                    let Some(base) = current.as_ref().and_then(Doc::record) else {
                        return Ok::<_, BackoffError<FirestoreError>>(RotateOutcome::OldGone);
                    };
                    let record = rotated_record(&base, &rotation);
                    let fresh = Doc::live(&record);
                    db.fluent()
                        .update()
                        .in_col(&collection)
                        .precondition(FirestoreWritePrecondition::Exists(false))
                        .document_id(&new_id)
                        .object(&fresh)
                        .add_to_transaction(tx)
                        .map_err(in_tx)?;
                    let tomb = Doc::tombstone(rotation.old_becomes, &new_key);
                    db.fluent()
                        .update()
                        .in_col(&collection)
                        .document_id(&old_id)
                        .object(&tomb)
                        .add_to_transaction(tx)
                        .map_err(in_tx)?;
                    Ok::<_, BackoffError<FirestoreError>>(RotateOutcome::Rotated(record))
                }
                .boxed()
            })
            .await
            .map_err(unavailable)
    }

    async fn revoke(
        &self,
        key: &SessionKey,
        reason: RevokeReason,
        keep_until: u64,
    ) -> Result<bool, StoreError> {
        self.transact(key, move |doc| match doc.as_ref().and_then(Doc::record) {
            Some(_) => (true, Some(Doc::revoked(reason, keep_until))),
            None => (false, None),
        })
        .await
    }

    async fn sweep(&self, _now: u64) -> Result<usize, StoreError> {
        // Firestore's TTL policy on `expires_at` deletes dead documents; reads re-check
        // expiry meanwhile. Nothing to do here, and no reads to pay for.
        Ok(0)
    }
}
