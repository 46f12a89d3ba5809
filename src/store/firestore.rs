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

use super::transition::{self, Step};
use super::{
    Claim, Entry, LoginClaim, Lookup, RevokeReason, RotateOutcome, Rotation, SessionRecord,
    SessionStore, StoreError,
};
use crate::session::SessionKey;
use crate::vault::{VaultChange, VaultCookie};

/// Which [`Entry`] a document holds. An unknown value fails to decode, and the
/// operation fails as [`StoreError::Corrupt`], as in the file store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum State {
    #[default]
    Live,
    Grace,
    Revoked,
}

/// The stored document: an [`Entry`] in Firestore's shape. Tombstones keep only what
/// reporting needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Doc {
    state: State,
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
    /// Absent in documents written before claims had owners: such a claim can only run
    /// out (owner 0 is never drawn).
    #[serde(default)]
    login_claim_owner: Option<u64>,
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
    fn from_entry(entry: &Entry) -> Doc {
        match entry {
            Entry::Live(r) => Doc {
                state: State::Live,
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
                login_claim_until: r.login_claim.map(|c| c.until),
                login_claim_owner: r.login_claim.map(|c| c.owner),
                ..Doc::default()
            },
            Entry::Grace { successor, until } => Doc {
                state: State::Grace,
                successor: Some(successor.hex()),
                grace_until: Some(*until),
                expires_at: instant(*until),
                expires_at_ms: *until,
                ..Doc::default()
            },
            Entry::Revoked { reason, keep_until } => Doc {
                state: State::Revoked,
                reason: Some(reason.as_str().into()),
                expires_at: instant(*keep_until),
                expires_at_ms: *keep_until,
                ..Doc::default()
            },
        }
    }

    fn into_entry(self, key: &SessionKey) -> Result<Entry, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("session {key}: {what}"));
        Ok(match self.state {
            State::Live => Entry::Live(Arc::new(SessionRecord {
                authenticated: self.authenticated,
                subject: self.subject,
                vault: self.vault,
                created_at: self.created_at,
                authenticated_at: self.authenticated_at,
                rotated_at: self.rotated_at,
                last_seen_at: self.last_seen_at,
                expires_at: self.expires_at_ms,
                version: self.version,
                login_claim: self.login_claim_until.map(|until| LoginClaim {
                    owner: self.login_claim_owner.unwrap_or(0),
                    until,
                }),
            })),
            State::Grace => Entry::Grace {
                successor: self
                    .successor
                    .as_deref()
                    .and_then(SessionKey::from_hex)
                    .ok_or_else(|| corrupt("the successor is not a session key"))?,
                until: self
                    .grace_until
                    .ok_or_else(|| corrupt("a grace entry without its end"))?,
            },
            State::Revoked => Entry::Revoked {
                reason: self
                    .reason
                    .as_deref()
                    .and_then(RevokeReason::parse)
                    .ok_or_else(|| corrupt("an unknown revocation reason"))?,
                keep_until: self.expires_at_ms,
            },
        })
    }
}

fn entry_of(key: &SessionKey, doc: Option<Doc>) -> Result<Option<Entry>, StoreError> {
    doc.map(|d| d.into_entry(key)).transpose()
}

pub struct FirestoreStore {
    db: FirestoreDb,
    collection: Arc<str>,
}

/// The typed error for what the client library reports.
fn store_error(e: FirestoreError) -> StoreError {
    match e {
        // What failed inside a transaction, wrapped with the transaction's ID.
        FirestoreError::ErrorInTransaction(t) => match t.source.downcast::<FirestoreError>() {
            Ok(inner) => store_error(*inner),
            Err(other) => StoreError::Backend(other.to_string()),
        },
        FirestoreError::DataConflictError(_) => StoreError::Conflict,
        FirestoreError::DeserializeError(d) => StoreError::Corrupt(d.to_string()),
        FirestoreError::DatabaseError(ref d) => match d.public.code.as_str() {
            // A must-not-exist precondition that failed at commit.
            "FailedPrecondition" => StoreError::Conflict,
            // Transactions that kept losing to concurrent ones.
            "Aborted" => StoreError::Contended,
            "DeadlineExceeded" => StoreError::Timeout,
            _ => StoreError::Backend(e.to_string()),
        },
        other => StoreError::Backend(other.to_string()),
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
            .map_err(store_error)?;
        Ok(FirestoreStore {
            db,
            collection: collection.into(),
        })
    }

    async fn get(&self, key: &SessionKey) -> Result<Option<Entry>, StoreError> {
        let doc = self
            .db
            .fluent()
            .select()
            .by_id_in(&self.collection)
            .obj::<Doc>()
            .one(key.hex())
            .await
            .map_err(store_error)?;
        entry_of(key, doc)
    }

    /// Runs one transition on the key's document inside a Firestore transaction and
    /// writes what it decided. An unreadable document writes nothing and fails the
    /// operation as `Corrupt`.
    async fn transact<T, F>(&self, key: &SessionKey, decide: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(Option<&Entry>) -> Step<T> + Send + Sync + 'static,
    {
        let collection = self.collection.clone();
        let key = *key;
        let decide = Arc::new(decide);
        self.db
            .run_transaction(move |db, tx| {
                let (collection, decide) = (collection.clone(), decide.clone());
                async move {
                    let id = key.hex();
                    let current: Option<Doc> = db
                        .fluent()
                        .select()
                        .by_id_in(&collection)
                        .obj()
                        .one(&id)
                        .await
                        .map_err(in_tx)?;
                    let current = match entry_of(&key, current) {
                        Ok(current) => current,
                        Err(e) => return Ok(Err(e)),
                    };
                    let step = decide(current.as_ref());
                    if let Some(entry) = &step.write {
                        db.fluent()
                            .update()
                            .in_col(&collection)
                            .document_id(&id)
                            .object(&Doc::from_entry(entry))
                            .add_to_transaction(tx)
                            .map_err(in_tx)?;
                    }
                    Ok::<_, BackoffError<FirestoreError>>(Ok(step.answer))
                }
                .boxed()
            })
            .await
            .map_err(store_error)?
    }
}

#[async_trait]
impl SessionStore for FirestoreStore {
    async fn load(&self, key: &SessionKey) -> Result<Lookup, StoreError> {
        Ok(self.get(key).await?.map_or(Lookup::Missing, Entry::lookup))
    }

    async fn create(&self, key: &SessionKey, record: &SessionRecord) -> Result<(), StoreError> {
        // Occupancy is the insert's own must-not-exist check, at commit.
        let doc = Doc::from_entry(&transition::create(false, record)?);
        let _: Doc = self
            .db
            .fluent()
            .insert()
            .into(&self.collection)
            .document_id(key.hex())
            .object(&doc)
            .execute()
            .await
            .map_err(store_error)?;
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
        self.transact(key, move |e| {
            transition::merge_vault(e, &changes, now, expires_at)
        })
        .await
    }

    async fn touch(&self, key: &SessionKey, now: u64, expires_at: u64) -> Result<(), StoreError> {
        // `transition::touch` as a blind write of its three fields: no read, no
        // transaction (touches are frequent). The `Exists` precondition keeps it from
        // creating a document; on a tombstone it only moves the TTL date, which is
        // harmless, and changes nothing a read reports.
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
            Err(e) => Err(store_error(e)),
        }
    }

    async fn claim_login(
        &self,
        key: &SessionKey,
        claim: LoginClaim,
        now: u64,
    ) -> Result<Claim, StoreError> {
        self.transact(key, move |e| transition::claim_login(e, claim, now))
            .await
    }

    async fn release_login(&self, key: &SessionKey, owner: u64) -> Result<(), StoreError> {
        self.transact(key, move |e| transition::release_login(e, owner))
            .await
    }

    async fn rotate(
        &self,
        old: &SessionKey,
        new: &SessionKey,
        rotation: &Rotation,
    ) -> Result<RotateOutcome, StoreError> {
        let collection = self.collection.clone();
        let (old, new) = (*old, *new);
        let rotation = Arc::new(rotation.clone());
        self.db
            .run_transaction(move |db, tx| {
                let (collection, rotation) = (collection.clone(), rotation.clone());
                async move {
                    let current: Option<Doc> = db
                        .fluent()
                        .select()
                        .by_id_in(&collection)
                        .obj()
                        .one(old.hex())
                        .await
                        .map_err(in_tx)?;
                    let current = match entry_of(&old, current) {
                        Ok(current) => current,
                        Err(e) => return Ok(Err(e)),
                    };
                    // The new key's occupancy is checked by the must-not-exist
                    // precondition at commit (a failure reads as `Conflict`).
                    let rotated = match transition::rotate(current.as_ref(), false, &new, &rotation)
                    {
                        Ok(Some(rotated)) => rotated,
                        Ok(None) => return Ok(Ok(RotateOutcome::OldGone)),
                        Err(e) => return Ok(Err(e)),
                    };
                    db.fluent()
                        .update()
                        .in_col(&collection)
                        .precondition(FirestoreWritePrecondition::Exists(false))
                        .document_id(new.hex())
                        .object(&Doc::from_entry(&Entry::Live(Arc::new(
                            rotated.record.clone(),
                        ))))
                        .add_to_transaction(tx)
                        .map_err(in_tx)?;
                    db.fluent()
                        .update()
                        .in_col(&collection)
                        .document_id(old.hex())
                        .object(&Doc::from_entry(&rotated.old))
                        .add_to_transaction(tx)
                        .map_err(in_tx)?;
                    Ok::<_, BackoffError<FirestoreError>>(Ok(RotateOutcome::Rotated(
                        rotated.record,
                    )))
                }
                .boxed()
            })
            .await
            .map_err(store_error)?
    }

    async fn revoke(
        &self,
        key: &SessionKey,
        reason: RevokeReason,
        keep_until: u64,
    ) -> Result<bool, StoreError> {
        self.transact(key, move |e| transition::revoke(e, reason, keep_until))
            .await
    }

    /// A query on the `subject` field (its automatic single-field index; see
    /// `deploy/firestore/`): only live documents carry one, and each is decoded and
    /// checked like any other read.
    async fn sessions_of(&self, subject: &str) -> Result<Vec<SessionKey>, StoreError> {
        let docs = self
            .db
            .fluent()
            .select()
            .from(self.collection.as_ref())
            .filter(|q| q.field("subject").eq(subject))
            .query()
            .await
            .map_err(store_error)?;
        // A document that cannot be read (damaged, foreign) is skipped, as the file store
        // skips unreadable rows: one bad document must not keep a user's sessions alive.
        let out = docs
            .iter()
            .filter_map(|doc| {
                let id = doc.name.rsplit('/').next().unwrap_or_default();
                let key = SessionKey::from_hex(id)?;
                let decoded: Doc = firestore::firestore_document_to_serializable(doc).ok()?;
                let entry = decoded.into_entry(&key).ok()?;
                transition::belongs_to(&entry, subject).then_some(key)
            })
            .collect();
        Ok(out)
    }

    async fn sweep(&self, _now: u64) -> Result<usize, StoreError> {
        // Firestore's TTL policy on `expires_at` deletes dead documents; reads re-check
        // expiry meanwhile. Nothing to do here, and no reads to pay for.
        Ok(0)
    }
}
