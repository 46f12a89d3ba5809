//! The file store: sessions in one redb database file, for a single sidecar whose
//! sessions must survive a restart (a deploy, a crash, a reboot) without running a
//! database server.
//!
//! redb is an embedded, copy-on-write B-tree with ACID transactions, so each trait
//! operation is exactly one write transaction: read, decide, write, commit. Rotation in
//! particular reads the old record, creates the new key only if it is absent and turns
//! the old key into its tombstone in the same transaction, so a crash can never leave a
//! new key next to a still-live old one (the half rotation a fixation attacker would
//! want). redb runs one write transaction at a time, which is what makes the
//! read-modify-write operations (`merge_vault`, `claim_login`) lose nothing without the
//! retry loop `memory` needs; reads take a snapshot and never wait for a writer. Commits
//! are durable (fsync) by default and stay so: an acknowledged login rotation must not
//! come back as the old live session after a power cut. Outcomes that change nothing
//! (a conflict, a missing key) abort instead of committing, so they cost no fsync.
//!
//! redb is blocking, so every operation runs on tokio's blocking pool, never on a
//! request thread. A caller's timeout abandons the wait, not the transaction: an
//! operation reported as timed out may still commit. For rotation that fails closed
//! (the old ID is dead and the browser never got the new one).
//!
//! redb locks the file: one process at a time. A second sidecar on the same file fails
//! at [`FileStore::open`]; sharing sessions between machines needs a networked store.
//!
//! Entries are TOML (the serializer already in the dependency tree, readable when
//! debugging a file by hand) in the `sessions_v1` table; a future format gets a new table
//! name rather than guessing what old bytes mean. TOML integers are `i64`, and
//! saturating time arithmetic can produce `u64::MAX` ("never"), so every `u64` is stored
//! bit for bit as an `i64` (`u64::MAX` reads as `-1` in the file) and round-trips
//! exactly.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::backends::FileBackend;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::bound::{self, Bound};
use super::transition::{self, Step};
use super::{
    Claim, Entry, LoginClaim, Lookup, RevokeReason, RotateOutcome, Rotation, SessionRecord,
    SessionStore, StoreError,
};
use crate::session::SessionKey;
use crate::vault::{VaultChange, VaultCookie};

/// Key: [`SessionKey`] bytes (the hash, never the ID). Value: an encoded [`Entry`].
const SESSIONS: TableDefinition<&[u8; 32], &str> = TableDefinition::new("sessions_v1");

pub struct FileStore {
    db: Arc<Database>,
    path: PathBuf,
    bound: Arc<Bound>,
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FileStore {
    /// Opens the database at `path`, creating it if it does not exist. Blocking (it may
    /// verify the whole file): call it at start-up, not on a request path.
    pub fn open(path: &Path) -> Result<FileStore, StoreError> {
        FileStore::open_bounded(path, Bound::unbounded())
    }

    /// Opens the database with a bound on its sessions (`store.max_sessions`).
    pub fn open_bounded(path: &Path, bound: Bound) -> Result<FileStore, StoreError> {
        let failed = |e: &dyn fmt::Display| {
            StoreError::Backend(format!("session file {}: {e}", path.display()))
        };
        let file = open_private(path).map_err(|e| failed(&e))?;
        let backend = FileBackend::new(file).map_err(|e| failed(&e))?;
        // A plain open trusts the file and may panic on one damaged outside redb (disk
        // errors, a hand edit); with the check it is an error instead. The check reads
        // the whole file once, which is cheap at session-store sizes.
        // redb's default page cache is 1 GiB: bound it (the OS page cache still holds
        // the file).
        let db = Database::builder()
            .set_cache_size(32 * 1024 * 1024)
            .set_check_integrity_on_open(true)
            .create_with_backend(backend)
            .map_err(|e| failed(&e))?;
        // Read transactions cannot open a table that was never created: create it now,
        // so that `load` on a fresh file answers Missing rather than an error.
        let txn = db.begin_write().map_err(|e| failed(&e))?;
        txn.open_table(SESSIONS).map_err(|e| failed(&e))?;
        txn.commit().map_err(|e| failed(&e))?;
        Ok(FileStore {
            db: Arc::new(db),
            path: path.to_owned(),
            bound: Arc::new(bound),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `op` inside one write transaction on the blocking pool (see [`write_now`]).
    async fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Sessions<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = Arc::clone(&self.db);
        blocking(move || write_now(&db, op)).await
    }

    /// When a snapshot shows the store full, picks the eviction batch on a snapshot
    /// (outside the writer lock) and removes it, each victim re-checked, in a short
    /// write transaction. Measured under a flood, scanning and decoding every row inside
    /// the creating transaction stalled every writer behind it. One scan at a time;
    /// the creating transaction still checks the bound and evicts itself should
    /// concurrent creations have filled the room again.
    async fn evict_ahead(&self) -> Result<(), StoreError> {
        let (db, bound) = (Arc::clone(&self.db), Arc::clone(&self.bound));
        blocking(move || {
            let full = || -> Result<bool, StoreError> {
                let txn = db.begin_read().map_err(backend)?;
                let table = txn.open_table(SESSIONS).map_err(backend)?;
                Ok(bound.is_full(count(&table)?))
            };
            if !full()? {
                return Ok(());
            }
            let _one_scan = bound.scanning();
            if !full()? {
                return Ok(()); // the scan this one waited for made room
            }
            let victims = {
                let txn = db.begin_read().map_err(backend)?;
                let table = txn.open_table(SESSIONS).map_err(backend)?;
                let rows = table.iter().map_err(backend)?;
                let mut failed = None;
                let victims = bound.victims(|visit| {
                    for row in rows {
                        match row {
                            Ok((key, text)) => {
                                // Unreadable entries are left to the sweep.
                                if let Ok(entry) = decode_value(text.value()) {
                                    visit(SessionKey(*key.value()), &entry);
                                }
                            }
                            Err(e) => {
                                failed = Some(backend(e));
                                break;
                            }
                        }
                    }
                });
                if let Some(e) = failed {
                    return Err(e);
                }
                victims
            };
            let evicted = write_now(&db, |s| {
                s.remove_where(&victims, |_, entry| {
                    entry.is_ok_and(|e| bound::evictable(&e).is_some())
                })
            })?;
            bound.evicted(evicted);
            Ok(())
        })
        .await
    }
}

/// Runs `op` inside one write transaction. The transaction commits only if `op`
/// succeeded and wrote something; an error (such as [`StoreError::Conflict`]) aborts
/// it, so nothing half-done is ever visible. Blocking: on the blocking pool only.
fn write_now<T>(
    db: &Database,
    op: impl FnOnce(&mut Sessions<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let txn = db.begin_write().map_err(backend)?;
    let (out, dirty) = {
        let mut sessions = Sessions {
            table: txn.open_table(SESSIONS).map_err(backend)?,
            dirty: false,
        };
        let out = op(&mut sessions)?;
        (out, sessions.dirty)
    };
    if dirty {
        txn.commit().map_err(backend)?;
    } else {
        txn.abort().map_err(backend)?;
    }
    Ok(out)
}

/// Entries in a table (live sessions and tombstones).
fn count(table: &impl ReadableTableMetadata) -> Result<usize, StoreError> {
    let n = table.len().map_err(backend)?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// Creates the file readable by this user only: the vault holds the app's session
/// cookies, which are credentials. An existing file keeps its mode, with a warning if
/// others can read it.
fn open_private(path: &Path) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(0o600);
        let file = opts.open(path)?;
        let mode = file.metadata()?.permissions().mode();
        if mode & 0o077 != 0 {
            warn!(path = %path.display(), mode = format_args!("{mode:o}"), "the session file is readable by other users; it holds the app's session cookies");
        }
        Ok(file)
    }
    #[cfg(not(unix))]
    opts.open(path)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Backend(format!("session file task failed: {e}")))?
}

fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(format!("session file: {}", e.into()))
}

/// The session table inside one write transaction, remembering whether it was written.
struct Sessions<'t> {
    table: Table<'t, &'static [u8; 32], &'static str>,
    dirty: bool,
}

impl Sessions<'_> {
    fn exists(&self, key: &SessionKey) -> Result<bool, StoreError> {
        // Raw presence, without decoding: an unreadable entry still occupies its key.
        Ok(self.table.get(&key.0).map_err(backend)?.is_some())
    }

    fn get(&self, key: &SessionKey) -> Result<Option<Entry>, StoreError> {
        match self.table.get(&key.0).map_err(backend)? {
            None => Ok(None),
            Some(text) => decode(key, text.value()).map(Some),
        }
    }

    /// Runs one transition on the key's entry and writes what it decided.
    fn apply<T>(
        &mut self,
        key: &SessionKey,
        decide: impl FnOnce(Option<&Entry>) -> Step<T>,
    ) -> Result<T, StoreError> {
        let current = self.get(key)?;
        let step = decide(current.as_ref());
        if let Some(write) = &step.write {
            self.put(key, write)?;
        }
        Ok(step.answer)
    }

    fn len(&self) -> Result<usize, StoreError> {
        count(&self.table)
    }

    /// Evicts anonymous sessions while the table is full, inside the creating
    /// transaction (redb's single writer is the one-scan-at-a-time guard); `Full` when
    /// none is left. Unreadable entries are left to the sweep.
    fn make_room(&mut self, bound: &Bound) -> Result<(), StoreError> {
        if !bound.is_full(self.len()?) {
            return Ok(());
        }
        let mut rows = Vec::new();
        for row in self.table.iter().map_err(backend)? {
            let (key, text) = row.map_err(backend)?;
            if let Ok(entry) = decode_value(text.value()) {
                rows.push((SessionKey(*key.value()), entry));
            }
        }
        let victims = bound.victims(|visit| {
            for (k, e) in &rows {
                visit(*k, e);
            }
        });
        for k in &victims {
            self.table.remove(&k.0).map_err(backend)?;
            self.dirty = true;
        }
        bound.evicted(victims.len());
        match bound.is_full(self.len()?) {
            true => Err(StoreError::Full),
            false => Ok(()),
        }
    }

    fn put(&mut self, key: &SessionKey, entry: &Entry) -> Result<(), StoreError> {
        let text = encode(key, entry)?;
        self.table.insert(&key.0, text.as_str()).map_err(backend)?;
        self.dirty = true;
        Ok(())
    }

    /// Removes those of `keys` that `doomed` still condemns inside this transaction
    /// (it sees each entry decoded, or why it could not be); returns how many.
    fn remove_where(
        &mut self,
        keys: &[SessionKey],
        doomed: impl Fn(&SessionKey, Result<Entry, String>) -> bool,
    ) -> Result<usize, StoreError> {
        let mut removed = 0usize;
        for key in keys {
            let gone = match self.table.get(&key.0).map_err(backend)? {
                None => false,
                Some(text) => doomed(key, decode_value(text.value())),
            };
            if gone {
                self.table.remove(&key.0).map_err(backend)?;
                self.dirty = true;
                removed = removed.saturating_add(1);
            }
        }
        Ok(removed)
    }
}

#[async_trait]
impl SessionStore for FileStore {
    async fn load(&self, key: &SessionKey) -> Result<Lookup, StoreError> {
        let db = Arc::clone(&self.db);
        let key = *key;
        blocking(move || {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(SESSIONS).map_err(backend)?;
            Ok(match table.get(&key.0).map_err(backend)? {
                None => Lookup::Missing,
                Some(text) => decode(&key, text.value())?.lookup(),
            })
        })
        .await
    }

    async fn create(&self, key: &SessionKey, record: &SessionRecord) -> Result<(), StoreError> {
        self.evict_ahead().await?;
        let (key, record, bound) = (*key, record.clone(), Arc::clone(&self.bound));
        self.write(move |s| {
            s.make_room(&bound)?;
            let entry = transition::create(s.exists(&key)?, &record)?;
            s.put(&key, &entry)
        })
        .await
    }

    async fn merge_vault(
        &self,
        key: &SessionKey,
        changes: &[VaultChange],
        now: u64,
        expires_at: u64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let (key, changes) = (*key, changes.to_vec());
        self.write(move |s| {
            s.apply(&key, |e| {
                transition::merge_vault(e, &changes, now, expires_at)
            })
        })
        .await
    }

    async fn touch(&self, key: &SessionKey, now: u64, expires_at: u64) -> Result<(), StoreError> {
        let key = *key;
        self.write(move |s| s.apply(&key, |e| transition::touch(e, now, expires_at)))
            .await
    }

    async fn claim_login(
        &self,
        key: &SessionKey,
        claim: LoginClaim,
        now: u64,
    ) -> Result<Claim, StoreError> {
        let key = *key;
        self.write(move |s| s.apply(&key, |e| transition::claim_login(e, claim, now)))
            .await
    }

    async fn release_login(&self, key: &SessionKey, owner: u64) -> Result<(), StoreError> {
        let key = *key;
        self.write(move |s| s.apply(&key, |e| transition::release_login(e, owner)))
            .await
    }

    async fn rotate(
        &self,
        old: &SessionKey,
        new: &SessionKey,
        rotation: &Rotation,
    ) -> Result<RotateOutcome, StoreError> {
        let (old, new, rotation, bound) = (*old, *new, rotation.clone(), Arc::clone(&self.bound));
        self.write(move |s| {
            // Room is made as for a creation, but a login is never refused for lack of it.
            match s.make_room(&bound) {
                Ok(()) | Err(StoreError::Full) => {}
                Err(e) => return Err(e),
            }
            // No version check is needed: nothing can write between this read and the
            // commit.
            let current = s.get(&old)?;
            let Some(rotated) =
                transition::rotate(current.as_ref(), s.exists(&new)?, &new, &rotation)?
            else {
                return Ok(RotateOutcome::OldGone);
            };
            s.put(&new, &Entry::Live(Arc::new(rotated.record.clone())))?;
            s.put(&old, &rotated.old)?;
            Ok(RotateOutcome::Rotated(rotated.record))
        })
        .await
    }

    async fn revoke(
        &self,
        key: &SessionKey,
        reason: RevokeReason,
        keep_until: u64,
    ) -> Result<bool, StoreError> {
        let key = *key;
        self.write(move |s| s.apply(&key, |e| transition::revoke(e, reason, keep_until)))
            .await
    }

    /// A scan of a read snapshot: privilege changes and revocations by subject are rare,
    /// and an index by subject would be one more table every write must keep in step.
    async fn sessions_of(&self, subject: &str) -> Result<Vec<SessionKey>, StoreError> {
        let db = Arc::clone(&self.db);
        let subject = subject.to_owned();
        blocking(move || {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(SESSIONS).map_err(backend)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(backend)? {
                let (key, text) = row.map_err(backend)?;
                // Unreadable entries are the sweep's business, not a reason to fail.
                if decode_value(text.value()).is_ok_and(|e| transition::belongs_to(&e, &subject)) {
                    out.push(SessionKey(*key.value()));
                }
            }
            Ok(out)
        })
        .await
    }

    /// Finds what to remove on a snapshot, then removes it in short write transactions
    /// that each re-check their entries. Measured under a flood, one transaction over
    /// 50,000 entries held the writer lock for about 95 ms, stalling every login and
    /// creation behind it; a snapshot holds nothing, and a batch of removals is short.
    /// An entry touched since the snapshot is kept by the re-check.
    async fn sweep(&self, now: u64) -> Result<usize, StoreError> {
        let db = Arc::clone(&self.db);
        let candidates = blocking(move || {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(SESSIONS).map_err(backend)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(backend)? {
                let (key, text) = row.map_err(backend)?;
                let kept = decode_value(text.value()).is_ok_and(|e| transition::kept_at(&e, now));
                if !kept {
                    out.push(SessionKey(*key.value()));
                }
            }
            Ok(out)
        })
        .await?;
        let mut removed = 0usize;
        for batch in candidates.chunks(SWEEP_BATCH) {
            let batch = batch.to_vec();
            let swept =
                self.write(move |s| s.remove_where(&batch, |key, entry| expired(key, entry, now)));
            removed = removed.saturating_add(swept.await?);
        }
        Ok(removed)
    }
}

/// Removals per write transaction in a sweep: short enough that a creation or a login
/// waiting behind it does not notice, long enough that the fsyncs stay few.
const SWEEP_BATCH: usize = 1000;

/// Whether a sweep removes this entry. An unreadable one goes too: every operation on
/// it fails, so keeping it only keeps that session failing; without it the ID reads as
/// unknown, which is safe (the proxy never adopts a presented ID).
fn expired(key: &SessionKey, entry: Result<Entry, String>, now: u64) -> bool {
    match entry {
        Ok(entry) => !transition::kept_at(&entry, now),
        Err(e) => {
            warn!(id_hash = %key, error = %e, "removed an unreadable session entry");
            true
        }
    }
}

// ---- Encoding ----

/// The on-disk shape of an [`Entry`]. Mirrors of the record types rather than their own
/// serde derives, because TOML cannot hold a `u64` above `i64::MAX`; the conversions
/// destructure exhaustively, so a new record field fails to compile here until it is
/// stored.
#[derive(Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Stored {
    Live(StoredRecord),
    Grace {
        successor: String,
        until: i64,
    },
    Revoked {
        reason: RevokeReason,
        keep_until: i64,
    },
}

#[derive(Serialize, Deserialize)]
struct StoredRecord {
    authenticated: bool,
    subject: Option<String>,
    created_at: i64,
    authenticated_at: Option<i64>,
    rotated_at: i64,
    last_seen_at: i64,
    expires_at: i64,
    version: i64,
    login_claim_until: Option<i64>,
    /// Absent in entries written before claims had owners: such a claim can only run out.
    #[serde(default)]
    login_claim_owner: Option<i64>,
    // Last: TOML writes an array of tables after the plain keys of its table.
    vault: Vec<StoredCookie>,
}

#[derive(Serialize, Deserialize)]
struct StoredCookie {
    name: String,
    value: String,
    path: String,
    expires_at: Option<i64>,
}

/// Bit for bit, so that every `u64` round-trips.
fn to_disk(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

fn from_disk(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

impl From<&SessionRecord> for StoredRecord {
    fn from(r: &SessionRecord) -> StoredRecord {
        let SessionRecord {
            authenticated,
            subject,
            vault,
            created_at,
            authenticated_at,
            rotated_at,
            last_seen_at,
            expires_at,
            version,
            login_claim,
        } = r;
        StoredRecord {
            authenticated: *authenticated,
            subject: subject.clone(),
            created_at: to_disk(*created_at),
            authenticated_at: authenticated_at.map(to_disk),
            rotated_at: to_disk(*rotated_at),
            last_seen_at: to_disk(*last_seen_at),
            expires_at: to_disk(*expires_at),
            version: to_disk(*version),
            login_claim_until: login_claim.map(|c| to_disk(c.until)),
            login_claim_owner: login_claim.map(|c| to_disk(c.owner)),
            vault: vault
                .iter()
                .map(|c| {
                    let VaultCookie {
                        name,
                        value,
                        path,
                        expires_at,
                    } = c;
                    StoredCookie {
                        name: name.clone(),
                        value: value.clone(),
                        path: path.clone(),
                        expires_at: expires_at.map(to_disk),
                    }
                })
                .collect(),
        }
    }
}

impl From<StoredRecord> for SessionRecord {
    fn from(r: StoredRecord) -> SessionRecord {
        let StoredRecord {
            authenticated,
            subject,
            created_at,
            authenticated_at,
            rotated_at,
            last_seen_at,
            expires_at,
            version,
            login_claim_until,
            login_claim_owner,
            vault,
        } = r;
        SessionRecord {
            authenticated,
            subject,
            vault: vault
                .into_iter()
                .map(|c| {
                    let StoredCookie {
                        name,
                        value,
                        path,
                        expires_at,
                    } = c;
                    VaultCookie {
                        name,
                        value,
                        path,
                        expires_at: expires_at.map(from_disk),
                    }
                })
                .collect(),
            created_at: from_disk(created_at),
            authenticated_at: authenticated_at.map(from_disk),
            rotated_at: from_disk(rotated_at),
            last_seen_at: from_disk(last_seen_at),
            expires_at: from_disk(expires_at),
            version: from_disk(version),
            login_claim: login_claim_until.map(|until| LoginClaim {
                // Owner 0 is never drawn (see `rotate`), so no login can release it.
                owner: login_claim_owner.map_or(0, from_disk),
                until: from_disk(until),
            }),
        }
    }
}

fn encode(key: &SessionKey, entry: &Entry) -> Result<String, StoreError> {
    let stored = match entry {
        Entry::Live(r) => Stored::Live((&**r).into()),
        Entry::Grace { successor, until } => Stored::Grace {
            successor: successor.hex(),
            until: to_disk(*until),
        },
        Entry::Revoked { reason, keep_until } => Stored::Revoked {
            reason: *reason,
            keep_until: to_disk(*keep_until),
        },
    };
    toml::to_string(&stored)
        .map_err(|e| StoreError::Backend(format!("session {key}: cannot encode the entry: {e}")))
}

fn decode(key: &SessionKey, text: &str) -> Result<Entry, StoreError> {
    decode_value(text).map_err(|e| StoreError::Corrupt(format!("session {key}: {e}")))
}

/// The error is only the parser's message: its `Display` quotes the offending line,
/// which can hold a vaulted cookie value, and errors end up in logs.
fn decode_value(text: &str) -> Result<Entry, String> {
    let stored: Stored = toml::from_str(text).map_err(|e| e.message().to_owned())?;
    Ok(match stored {
        Stored::Live(r) => Entry::Live(Arc::new(r.into())),
        Stored::Grace { successor, until } => Entry::Grace {
            successor: SessionKey::from_hex(&successor)
                .ok_or_else(|| "the successor is not a session key".to_owned())?,
            until: from_disk(until),
        },
        Stored::Revoked { reason, keep_until } => Entry::Revoked {
            reason,
            keep_until: from_disk(keep_until),
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(n: u8) -> SessionKey {
        SessionKey([n; 32])
    }

    fn cookie(name: &str, value: &str, path: &str, expires_at: Option<u64>) -> VaultCookie {
        VaultCookie {
            name: name.into(),
            value: value.into(),
            path: path.into(),
            expires_at,
        }
    }

    fn record() -> SessionRecord {
        let mut r = SessionRecord::new_anonymous(
            1_700_000_000_000,
            1_700_000_600_000,
            vec![cookie("PHPSESSID", "abc", "/", None)],
        );
        r.authenticated = true;
        r.subject = Some("alice".into());
        r.authenticated_at = Some(1_700_000_000_500);
        r
    }

    #[test]
    fn every_entry_round_trips_including_extreme_values() {
        let mut extreme = record();
        extreme.subject = Some("al\"ice\n\t\u{0}\u{7f} ü 👤 [x] = 'y' # z".into());
        extreme.vault = vec![
            cookie(
                "a",
                "\"quoted\" \\ ; = [[vault]]\r\n",
                "/x y",
                Some(u64::MAX),
            ),
            cookie("", "", "", Some(0)),
            cookie("b", "v", "/", Some(i64::MAX as u64 + 1)),
        ];
        extreme.created_at = 0;
        extreme.expires_at = u64::MAX;
        extreme.version = u64::MAX;
        extreme.login_claim = Some(LoginClaim {
            owner: u64::MAX,
            until: u64::MAX - 1,
        });
        let mut empty = record();
        empty.vault.clear();
        empty.subject = None;
        empty.authenticated_at = None;
        let entries = [
            Entry::Live(Arc::new(record())),
            Entry::Live(Arc::new(extreme)),
            Entry::Live(Arc::new(empty)),
            Entry::Grace {
                successor: key(0xab),
                until: u64::MAX,
            },
            Entry::Revoked {
                reason: RevokeReason::LoginIncomplete,
                keep_until: 42,
            },
        ];
        for entry in entries {
            let text = encode(&key(1), &entry).unwrap();
            assert_eq!(decode(&key(1), &text).unwrap(), entry, "{text}");
        }
    }

    #[test]
    fn decode_errors_do_not_quote_the_entry() {
        let text = "state = \"live\"\nsecret_cookie_value = \"hunter2\"\noops";
        let err = decode_value(text).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[tokio::test]
    async fn sessions_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.redb");
        let rotation = Rotation {
            changes: vec![VaultChange::Set(cookie("PHPSESSID", "new", "/", None))],
            authenticate: None,
            now: 1_700_000_001_000,
            expires_at: 1_700_000_601_000,
            old_becomes: crate::store::OldKey::Grace {
                until: 1_700_000_031_000,
            },
        };
        let rotated = {
            let store = FileStore::open(&path).unwrap();
            store.create(&key(1), &record()).await.unwrap();
            store.create(&key(3), &record()).await.unwrap();
            store
                .revoke(&key(3), RevokeReason::LoggedOut, 1_700_000_900_000)
                .await
                .unwrap();
            match store.rotate(&key(1), &key(2), &rotation).await.unwrap() {
                RotateOutcome::Rotated(r) => r,
                RotateOutcome::OldGone => panic!("not rotated"),
            }
        };
        let store = FileStore::open(&path).unwrap();
        assert_eq!(
            store.load(&key(2)).await.unwrap(),
            Lookup::Live(Arc::new(rotated))
        );
        assert_eq!(
            store.load(&key(1)).await.unwrap(),
            Lookup::Grace {
                successor: key(2),
                until: 1_700_000_031_000
            }
        );
        assert_eq!(
            store.load(&key(3)).await.unwrap(),
            Lookup::Revoked(RevokeReason::LoggedOut)
        );
        assert_eq!(store.load(&key(4)).await.unwrap(), Lookup::Missing);
    }

    #[tokio::test]
    async fn one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.redb");
        let first = FileStore::open(&path).unwrap();
        assert!(matches!(
            FileStore::open(&path),
            Err(StoreError::Backend(_))
        ));
        drop(first);
        FileStore::open(&path).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_new_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.redb");
        drop(FileStore::open(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.redb");
        std::fs::write(&path, b"not a redb file, certainly not one with sessions").unwrap();
        assert!(matches!(
            FileStore::open(&path),
            Err(StoreError::Backend(_))
        ));
    }

    #[tokio::test]
    async fn an_unreadable_entry_fails_its_operations_and_is_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(&dir.path().join("sessions.redb")).unwrap();
        store.create(&key(1), &record()).await.unwrap();
        store
            .write(|s| {
                s.table.insert(&key(2).0, "state = \"bogus\"").unwrap();
                s.dirty = true;
                Ok(())
            })
            .await
            .unwrap();
        assert!(matches!(
            store.load(&key(2)).await,
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            store.merge_vault(&key(2), &[], 1, 2).await,
            Err(StoreError::Corrupt(_))
        ));
        // Still occupied: never overwritten by a create.
        assert!(matches!(
            store.create(&key(2), &record()).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(store.sweep(0).await.unwrap(), 1);
        assert_eq!(store.load(&key(2)).await.unwrap(), Lookup::Missing);
        assert!(matches!(
            store.load(&key(1)).await.unwrap(),
            Lookup::Live(_)
        ));
    }
}
