//! The function registry: one redb file in the data dir, one table mapping a
//! function name to its JSON-encoded [`StoredFunction`], and one mapping it
//! to a deploy that was accepted but has not finished (the request of a
//! deploy by reference still pulling, without its credentials), which a
//! restarted server takes up again. Every write is a transaction, so a
//! crash leaves either the old or the new function, never half of one, and
//! storing a function ends its deploy in the same transaction; redb's file
//! lock keeps a second server off the same data dir. The other tables: the
//! kept revisions of each function (`name/<revision>`, see
//! [`Registry::deploy`]), the secrets (`namespace/name` → value: the file
//! is 0600 in a 0700 data dir, and values leave it only for the functions
//! that use them), the asynchronous calls not finished (`crate::calls`),
//! the namespaces made beside the default one, and the namespace tokens
//! (by the SHA-256 of the token: the tokens themselves are not kept).
//! Requests write through [`Registry::write`]: on one writer thread, which
//! makes the writes queued while it flushed durable with one flush.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use wisp_runner::spec::FunctionSpec;

const FUNCTIONS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("functions");
const DEPLOYS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("deploys");
const SECRETS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("secrets");
const REVISIONS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("revisions");
/// Namespaces other than the default: name → [`NamespaceRecord`].
const NAMESPACES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("namespaces");
/// Namespace tokens: hex SHA-256 of the token → [`TokenRecord`].
const TOKENS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tokens");
/// Asynchronous calls accepted and not finished, by sequence number.
const CALLS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("async_calls");

/// A revision's key: `name/<revision, 20 digits>`, so that a name's
/// revisions are one range, in order (a name has no `/`).
fn revision_key(name: &str, revision: u64) -> String {
    format!("{name}/{revision:020}")
}

/// Every revision of `name` in `table`, oldest first.
fn revisions_in(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Vec<StoredFunction>, RegistryError> {
    let prefix = format!("{name}/");
    let mut out = Vec::new();
    for entry in table.range(prefix.as_str()..).map_err(storage)? {
        let (key, value) = entry.map_err(storage)?;
        if !key.value().starts_with(prefix.as_str()) {
            break;
        }
        out.push(decode(key.value(), value.value())?);
    }
    Ok(out)
}

fn decode(key: &str, value: &[u8]) -> Result<StoredFunction, RegistryError> {
    serde_json::from_slice(value).map_err(|source| RegistryError::Corrupt {
        name: key.to_owned(),
        source,
    })
}
/// A secret's key: `namespace/name` (a namespace has no `/`, a name neither).
fn secret_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// How [`Registry::put_secret`] treats an existing secret of the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretWrite {
    /// Refused if the name exists.
    Create,
    /// Refused if the name does not exist.
    Update,
    /// Made or replaced (a copy of the cluster's record).
    Replace,
}

/// What the registry keeps per function, and per revision of one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFunction {
    pub spec: FunctionSpec,
    /// When this version was deployed, in seconds since the Unix epoch.
    pub created_at: u64,
    /// The deploy's number among the name's deploys, from 1; 0 until
    /// [`Registry::deploy`] records it.
    #[serde(default)]
    pub revision: u64,
}

/// A namespace made with `POST /system/namespace/{name}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

/// A namespace token, as kept: the token itself is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// What `wisp token rm` names it by: the start of its hash.
    pub id: String,
    pub namespace: String,
    /// A note of who or what it is for.
    #[serde(default)]
    pub description: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn decode_json<T: serde::de::DeserializeOwned>(
    key: &str,
    value: &[u8],
) -> Result<T, RegistryError> {
    serde_json::from_slice(value).map_err(|source| RegistryError::Corrupt {
        name: key.to_owned(),
        source,
    })
}

impl StoredFunction {
    pub fn new(spec: FunctionSpec) -> Self {
        let created_at = now_secs();
        StoredFunction {
            spec,
            created_at,
            revision: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry database {}: already open: is another wisp serving this data dir?", path.display())]
    AlreadyOpen { path: PathBuf },
    #[error("making registry database {} private (0600): {source}", path.display())]
    Private {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registry database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    /// Boxed: redb's error is large, and every registry call returns this.
    #[error("registry: {0}")]
    Storage(#[source] Box<redb::Error>),
    #[error("registry: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("registry: writing to disk: {0}")]
    Flush(String),
    #[error(
        "registry: the write did not finish (it failed unexpectedly, or the writer thread is gone)"
    )]
    WriterGone,
    #[error("registry entry {name:?} is corrupt: {source}")]
    Corrupt {
        name: String,
        source: serde_json::Error,
    },
}

/// Any of redb's errors (transaction, table, storage, commit).
fn storage(e: impl Into<redb::Error>) -> RegistryError {
    RegistryError::Storage(Box::new(e.into()))
}

/// Makes `path` a 0600 file (redb fills an empty one), or makes an
/// existing one 0600.
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Cheap to clone: the clones share one database (and one writer thread).
#[derive(Clone)]
pub struct Registry {
    db: Arc<Database>,
    /// The queue of [`Registry::write`]'s thread, started by the first.
    writer: Arc<OnceLock<mpsc::Sender<Job>>>,
}

/// A write for the writer thread: it runs the write and returns its
/// caller's answer, given once the write is on disk (or is not).
type Job = Box<dyn FnOnce(&Registry) -> Answer + Send>;

/// Answers a write's caller with the outcome of the flush after it.
type Answer = Box<dyn FnOnce(Result<(), String>) + Send>;

/// The most writes one flush makes durable.
const MOST_PER_FLUSH: usize = 256;

thread_local! {
    /// Set on the writer thread while it runs a group of writes: their
    /// commits skip the disk flush, which one commit after them makes.
    static GROUPED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `jobs` in order on the writer thread and makes them durable: a lone
/// write commits as any other (with a flush); a group commits each with
/// redb's `Durability::None` and then once with a flush, which makes the
/// unflushed commits before it durable. Returns the answers and the flush's
/// outcome, once the database is let go (it closes with the last
/// `Registry`, and a caller that hears back may drop that).
fn write_group(db: Arc<Database>, jobs: Vec<Job>) -> (Vec<Answer>, Result<(), String>) {
    let registry = Registry {
        db,
        writer: Arc::default(),
    };
    let grouped = jobs.len() > 1;
    GROUPED.set(grouped);
    // A write that panics is its caller's failure (its answer is dropped:
    // `WriterGone`), not every later one's.
    let answers = jobs
        .into_iter()
        .filter_map(|job| std::panic::catch_unwind(AssertUnwindSafe(|| job(&registry))).ok())
        .collect();
    GROUPED.set(false);
    let flushed = if grouped {
        registry
            .db
            .begin_write()
            .map_err(storage)
            .and_then(|txn| txn.commit().map_err(storage))
            .map_err(|e| e.to_string())
    } else {
        Ok(())
    };
    (answers, flushed)
}

impl Registry {
    /// Opens (or makes) the registry at `path`. It holds every function's
    /// environment: the file is made 0600, an existing one too.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        make_private(path).map_err(|source| RegistryError::Private {
            path: path.to_owned(),
            source,
        })?;
        let db = Database::create(path).map_err(|source| {
            let path = path.to_owned();
            match source {
                redb::DatabaseError::DatabaseAlreadyOpen => RegistryError::AlreadyOpen { path },
                source => RegistryError::Open { path, source },
            }
        })?;
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(FUNCTIONS).map_err(storage)?;
        txn.open_table(DEPLOYS).map_err(storage)?;
        txn.open_table(SECRETS).map_err(storage)?;
        txn.open_table(REVISIONS).map_err(storage)?;
        txn.open_table(CALLS).map_err(storage)?;
        txn.open_table(NAMESPACES).map_err(storage)?;
        txn.open_table(TOKENS).map_err(storage)?;
        txn.commit().map_err(storage)?;
        let registry = Registry {
            db: Arc::new(db),
            writer: Arc::default(),
        };
        registry.first_revisions()?;
        Ok(registry)
    }

    /// Runs `op`, which writes, on the registry's writer thread, and
    /// answers once what it wrote is on disk. A worker thread, and the
    /// requests queued on it, never wait for a disk flush; and writes asked
    /// for while one flushes are run together after it, in the order they
    /// came, and made durable by one flush (group commit: a commit's flush,
    /// not its work, is what a write costs, and redb has one writer).
    pub async fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |registry| -> Answer {
            let result = op(registry);
            Box::new(move |flushed| {
                let _ = tx.send(match (result, flushed) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(e)) => Err(RegistryError::Flush(e)),
                    (Ok(value), Ok(())) => Ok(value),
                });
            })
        });
        self.writer
            .get_or_init(|| self.start_writer())
            .send(job)
            .map_err(|_| RegistryError::WriterGone)?;
        rx.await.map_err(|_| RegistryError::WriterGone)?
    }

    /// The writer thread: it holds the database only while it writes, so
    /// that the database closes when the last `Registry` is dropped.
    fn start_writer(&self) -> mpsc::Sender<Job> {
        let (tx, rx) = mpsc::channel::<Job>();
        let db = Arc::downgrade(&self.db);
        let spawned = std::thread::Builder::new()
            .name("wisp-registry".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let Some(db) = db.upgrade() else { return };
                    let mut jobs = vec![first];
                    jobs.extend(rx.try_iter().take(MOST_PER_FLUSH - 1));
                    let (answers, flushed) = write_group(db, jobs);
                    for answer in answers {
                        answer(flushed.clone());
                    }
                }
            });
        if let Err(e) = spawned {
            // Without the thread the sender's receiver is gone: every
            // write fails with `WriterGone`, logged here once.
            tracing::error!(error = %e, "the registry's writer thread did not start");
        }
        tx
    }

    /// A write transaction; on the writer thread, within a group, one
    /// whose commit does not flush (the group's last commit does).
    fn begin_write(&self) -> Result<redb::WriteTransaction, RegistryError> {
        let mut txn = self.db.begin_write().map_err(storage)?;
        if GROUPED.get() {
            txn.set_durability(redb::Durability::None);
        }
        Ok(txn)
    }

    /// Functions stored before revisions were kept become revision 1.
    fn first_revisions(&self) -> Result<(), RegistryError> {
        let unrecorded: Vec<StoredFunction> = self
            .list()?
            .into_iter()
            .filter(|f| f.revision == 0)
            .collect();
        if unrecorded.is_empty() {
            return Ok(());
        }
        let txn = self.begin_write()?;
        {
            let mut functions = txn.open_table(FUNCTIONS).map_err(storage)?;
            let mut revisions = txn.open_table(REVISIONS).map_err(storage)?;
            for mut function in unrecorded {
                function.revision = 1;
                let json = serde_json::to_vec(&function).map_err(RegistryError::Encode)?;
                let name = function.spec.name.as_str();
                functions.insert(name, json.as_slice()).map_err(storage)?;
                revisions
                    .insert(revision_key(name, 1).as_str(), json.as_slice())
                    .map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)
    }

    /// Stores a deploy of a function as its next revision and as the
    /// function, ends its deploy, and forgets its oldest revisions beyond
    /// the `keep` newest, in one transaction. Sets `function.revision`.
    pub fn deploy(&self, function: &mut StoredFunction, keep: usize) -> Result<(), RegistryError> {
        self.record(function, keep, None)
    }

    /// As [`Registry::deploy`], but records the revision another node of
    /// the cluster gave the deploy (this node's copy of the registry may
    /// lack the ones before it).
    pub fn replicate(&self, function: &StoredFunction, keep: usize) -> Result<(), RegistryError> {
        let mut function = function.clone();
        let revision = function.revision;
        self.record(&mut function, keep, Some(revision))
    }

    fn record(
        &self,
        function: &mut StoredFunction,
        keep: usize,
        revision: Option<u64>,
    ) -> Result<(), RegistryError> {
        let name = function.spec.name.to_string();
        let txn = self.begin_write()?;
        {
            let mut revisions = txn.open_table(REVISIONS).map_err(storage)?;
            let kept = revisions_in(&revisions, &name)?;
            function.revision =
                revision.unwrap_or_else(|| kept.last().map_or(0, |r| r.revision) + 1);
            let kept: Vec<_> = kept
                .into_iter()
                .filter(|r| r.revision != function.revision)
                .collect();
            let json = serde_json::to_vec(&*function).map_err(RegistryError::Encode)?;
            revisions
                .insert(
                    revision_key(&name, function.revision).as_str(),
                    json.as_slice(),
                )
                .map_err(storage)?;
            let over = (kept.len() + 1).saturating_sub(keep.max(1));
            for old in kept.iter().take(over) {
                revisions
                    .remove(revision_key(&name, old.revision).as_str())
                    .map_err(storage)?;
            }
            let mut table = txn.open_table(FUNCTIONS).map_err(storage)?;
            table
                .insert(name.as_str(), json.as_slice())
                .map_err(storage)?;
            let mut deploys = txn.open_table(DEPLOYS).map_err(storage)?;
            deploys.remove(name.as_str()).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// The revision the next [`Registry::deploy`] of `name` records.
    pub fn next_revision(&self, name: &str) -> Result<u64, RegistryError> {
        Ok(self.revisions(name)?.last().map_or(0, |r| r.revision) + 1)
    }

    /// The kept revisions of `name`, oldest first.
    pub fn revisions(&self, name: &str) -> Result<Vec<StoredFunction>, RegistryError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(REVISIONS).map_err(storage)?;
        revisions_in(&table, name)
    }

    /// Records `function` in its history as it is (a cluster's copy).
    pub fn put_revision(&self, function: &StoredFunction) -> Result<(), RegistryError> {
        let json = serde_json::to_vec(function).map_err(RegistryError::Encode)?;
        let name = function.spec.name.to_string();
        let txn = self.begin_write()?;
        {
            let mut revisions = txn.open_table(REVISIONS).map_err(storage)?;
            revisions
                .insert(
                    revision_key(&name, function.revision).as_str(),
                    json.as_slice(),
                )
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// Drops revision `revision` of `name` from its history.
    pub fn remove_revision(&self, name: &str, revision: u64) -> Result<bool, RegistryError> {
        let txn = self.begin_write()?;
        let existed = {
            let mut revisions = txn.open_table(REVISIONS).map_err(storage)?;
            revisions
                .remove(revision_key(name, revision).as_str())
                .map_err(storage)?
                .is_some()
        };
        txn.commit().map_err(storage)?;
        Ok(existed)
    }

    /// Every kept revision of every function (what a prune must spare).
    pub fn all_revisions(&self) -> Result<Vec<StoredFunction>, RegistryError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(REVISIONS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            out.push(decode(key.value(), value.value())?);
        }
        Ok(out)
    }

    /// Replaces a function's current version as it is (its scaling
    /// changed: not a new revision), and ends its deploy.
    pub fn put(&self, function: &StoredFunction) -> Result<(), RegistryError> {
        let json = serde_json::to_vec(function).map_err(RegistryError::Encode)?;
        let name = function.spec.name.as_str();
        let txn = self.begin_write()?;
        {
            let mut table = txn.open_table(FUNCTIONS).map_err(storage)?;
            table.insert(name, json.as_slice()).map_err(storage)?;
            let mut deploys = txn.open_table(DEPLOYS).map_err(storage)?;
            deploys.remove(name).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// Removes a function, its revisions and its deploy; returns whether
    /// the function existed.
    pub fn remove(&self, name: &str) -> Result<bool, RegistryError> {
        let txn = self.begin_write()?;
        let existed = {
            let mut table = txn.open_table(FUNCTIONS).map_err(storage)?;
            let mut deploys = txn.open_table(DEPLOYS).map_err(storage)?;
            deploys.remove(name).map_err(storage)?;
            let mut revisions = txn.open_table(REVISIONS).map_err(storage)?;
            for old in revisions_in(&revisions, name)? {
                revisions
                    .remove(revision_key(name, old.revision).as_str())
                    .map_err(storage)?;
            }
            table.remove(name).map_err(storage)?.is_some()
        };
        txn.commit().map_err(storage)?;
        Ok(existed)
    }

    /// Keeps the request of a deploy of `name` that has not finished.
    pub fn put_deploy(&self, name: &str, request: &[u8]) -> Result<(), RegistryError> {
        let txn = self.begin_write()?;
        {
            let mut deploys = txn.open_table(DEPLOYS).map_err(storage)?;
            deploys.insert(name, request).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// Forgets the deploy of `name` (it failed, and its caller was told).
    pub fn remove_deploy(&self, name: &str) -> Result<(), RegistryError> {
        let txn = self.begin_write()?;
        {
            let mut deploys = txn.open_table(DEPLOYS).map_err(storage)?;
            deploys.remove(name).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// The deploys that have not finished: (name, request).
    pub fn deploys(&self) -> Result<Vec<(String, Vec<u8>)>, RegistryError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(DEPLOYS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (name, value) = entry.map_err(storage)?;
            out.push((name.value().to_owned(), value.value().to_vec()));
        }
        Ok(out)
    }

    /// Stores a secret's value; returns whether it was written (`false`:
    /// it exists and `write` is `Create`, or it is missing and `write` is
    /// `Update`).
    pub fn put_secret(
        &self,
        namespace: &str,
        name: &str,
        value: &[u8],
        write: SecretWrite,
    ) -> Result<bool, RegistryError> {
        let key = secret_key(namespace, name);
        let txn = self.begin_write()?;
        let written = {
            let mut table = txn.open_table(SECRETS).map_err(storage)?;
            let exists = table.get(key.as_str()).map_err(storage)?.is_some();
            let allowed = match write {
                SecretWrite::Create => !exists,
                SecretWrite::Update => exists,
                SecretWrite::Replace => true,
            };
            if allowed {
                table.insert(key.as_str(), value).map_err(storage)?;
            }
            allowed
        };
        txn.commit().map_err(storage)?;
        Ok(written)
    }

    /// A secret's value, if it exists.
    pub fn secret(&self, namespace: &str, name: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(SECRETS).map_err(storage)?;
        let value = table
            .get(secret_key(namespace, name).as_str())
            .map_err(storage)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Every secret's namespace and name, sorted.
    pub fn all_secrets(&self) -> Result<Vec<(String, String)>, RegistryError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(SECRETS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (key, _) = entry.map_err(storage)?;
            if let Some((namespace, name)) = key.value().split_once('/') {
                out.push((namespace.to_owned(), name.to_owned()));
            }
        }
        Ok(out)
    }

    /// The names of the secrets in `namespace`, sorted.
    pub fn secret_names(&self, namespace: &str) -> Result<Vec<String>, RegistryError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(SECRETS).map_err(storage)?;
        let prefix = secret_key(namespace, "");
        let mut out = Vec::new();
        for entry in table.range(prefix.as_str()..).map_err(storage)? {
            let (key, _) = entry.map_err(storage)?;
            match key.value().strip_prefix(prefix.as_str()) {
                Some(name) => out.push(name.to_owned()),
                None => break,
            }
        }
        Ok(out)
    }

    /// Removes a secret; returns whether it existed.
    pub fn remove_secret(&self, namespace: &str, name: &str) -> Result<bool, RegistryError> {
        let txn = self.begin_write()?;
        let existed = {
            let mut table = txn.open_table(SECRETS).map_err(storage)?;
            table
                .remove(secret_key(namespace, name).as_str())
                .map_err(storage)?
                .is_some()
        };
        txn.commit().map_err(storage)?;
        Ok(existed)
    }

    /// Stores an asynchronous call (new, or changed: a retry is due, its
    /// result awaits its callback) under `seq`.
    pub fn put_call(&self, seq: u64, call: &[u8]) -> Result<(), RegistryError> {
        let txn = self.begin_write()?;
        {
            let mut calls = txn.open_table(CALLS).map_err(storage)?;
            calls.insert(seq, call).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// Forgets a finished asynchronous call.
    pub fn remove_call(&self, seq: u64) -> Result<(), RegistryError> {
        let txn = self.begin_write()?;
        {
            let mut calls = txn.open_table(CALLS).map_err(storage)?;
            calls.remove(seq).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// The asynchronous calls not finished, in the order they came.
    pub fn calls(&self) -> Result<Vec<(u64, Vec<u8>)>, RegistryError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let calls = txn.open_table(CALLS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in calls.iter().map_err(storage)? {
            let (seq, call) = entry.map_err(storage)?;
            out.push((seq.value(), call.value().to_vec()));
        }
        Ok(out)
    }

    /// Stores a namespace; returns whether it was written (`false`: it
    /// exists and `create` is set, or it is missing and `create` is not).
    pub fn put_namespace(
        &self,
        namespace: &NamespaceRecord,
        create: bool,
    ) -> Result<bool, RegistryError> {
        let json = serde_json::to_vec(namespace).map_err(RegistryError::Encode)?;
        let txn = self.begin_write()?;
        let written = {
            let mut table = txn.open_table(NAMESPACES).map_err(storage)?;
            let exists = table
                .get(namespace.name.as_str())
                .map_err(storage)?
                .is_some();
            if exists != create {
                table
                    .insert(namespace.name.as_str(), json.as_slice())
                    .map_err(storage)?;
            }
            exists != create
        };
        txn.commit().map_err(storage)?;
        Ok(written)
    }

    /// Stores a namespace, made or replaced (a copy of the cluster's).
    pub fn replace_namespace(&self, namespace: &NamespaceRecord) -> Result<(), RegistryError> {
        let json = serde_json::to_vec(namespace).map_err(RegistryError::Encode)?;
        let txn = self.begin_write()?;
        {
            let mut table = txn.open_table(NAMESPACES).map_err(storage)?;
            table
                .insert(namespace.name.as_str(), json.as_slice())
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// A namespace made beside the default one, if it exists.
    pub fn namespace(&self, name: &str) -> Result<Option<NamespaceRecord>, RegistryError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(NAMESPACES).map_err(storage)?;
        let value = table.get(name).map_err(storage)?;
        value.map(|v| decode_json(name, v.value())).transpose()
    }

    /// The namespaces made beside the default one, by name.
    pub fn namespaces(&self) -> Result<Vec<NamespaceRecord>, RegistryError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(NAMESPACES).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (name, value) = entry.map_err(storage)?;
            out.push(decode_json(name.value(), value.value())?);
        }
        Ok(out)
    }

    /// Removes a namespace and its tokens in one transaction; returns
    /// whether it existed. The caller has checked that nothing is in it.
    pub fn remove_namespace(&self, name: &str) -> Result<bool, RegistryError> {
        let txn = self.begin_write()?;
        let existed = {
            let mut namespaces = txn.open_table(NAMESPACES).map_err(storage)?;
            let existed = namespaces.remove(name).map_err(storage)?.is_some();
            let mut tokens = txn.open_table(TOKENS).map_err(storage)?;
            tokens
                .retain(|key, value| {
                    decode_json::<TokenRecord>(key, value).map_or(true, |t| t.namespace != name)
                })
                .map_err(storage)?;
            existed
        };
        txn.commit().map_err(storage)?;
        Ok(existed)
    }

    /// Stores a namespace token under the hex SHA-256 of the token.
    pub fn put_token(&self, hash: &str, token: &TokenRecord) -> Result<(), RegistryError> {
        let json = serde_json::to_vec(token).map_err(RegistryError::Encode)?;
        let txn = self.begin_write()?;
        {
            let mut table = txn.open_table(TOKENS).map_err(storage)?;
            table.insert(hash, json.as_slice()).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// The namespace token whose SHA-256 is `hash`, if there is one.
    pub fn token(&self, hash: &str) -> Result<Option<TokenRecord>, RegistryError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(TOKENS).map_err(storage)?;
        let value = table.get(hash).map_err(storage)?;
        value.map(|v| decode_json("token", v.value())).transpose()
    }

    /// Every namespace token, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, RegistryError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(TOKENS).map_err(storage)?;
        let mut out: Vec<TokenRecord> = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (_, value) = entry.map_err(storage)?;
            out.push(decode_json("token", value.value())?);
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// Every namespace token with the hash it is kept under.
    pub fn token_entries(&self) -> Result<Vec<(String, TokenRecord)>, RegistryError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(TOKENS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (hash, value) = entry.map_err(storage)?;
            out.push((
                hash.value().to_owned(),
                decode_json("token", value.value())?,
            ));
        }
        Ok(out)
    }

    /// Revokes the namespace token kept under `hash`; whether it existed.
    pub fn remove_token_hash(&self, hash: &str) -> Result<bool, RegistryError> {
        let txn = self.begin_write()?;
        let existed = {
            let mut table = txn.open_table(TOKENS).map_err(storage)?;
            table.remove(hash).map_err(storage)?.is_some()
        };
        txn.commit().map_err(storage)?;
        Ok(existed)
    }

    /// Revokes the namespace token `id`; returns whether it existed.
    pub fn remove_token(&self, id: &str) -> Result<bool, RegistryError> {
        let txn = self.begin_write()?;
        let mut removed = false;
        {
            let mut table = txn.open_table(TOKENS).map_err(storage)?;
            table
                .retain(|key, value| {
                    let matches = decode_json::<TokenRecord>(key, value).is_ok_and(|t| t.id == id);
                    removed |= matches;
                    !matches
                })
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(removed)
    }

    /// Every stored function, by name.
    pub fn list(&self) -> Result<Vec<StoredFunction>, RegistryError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(FUNCTIONS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (name, value) = entry.map_err(storage)?;
            let function: StoredFunction =
                serde_json::from_slice(value.value()).map_err(|source| RegistryError::Corrupt {
                    name: name.value().to_owned(),
                    source,
                })?;
            out.push(function);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wisp_runner::spec::{Digest, FunctionKind, FunctionName, Limits};

    fn spec(name: &str) -> FunctionSpec {
        FunctionSpec {
            name: FunctionName::new(name).unwrap(),
            artifact: Digest::parse(&format!("sha256:{}", "1".repeat(64))).unwrap(),
            kind: FunctionKind::WasmHttp,
            env: [("A".to_owned(), "1".to_owned())].into(),
            labels: Default::default(),
            annotations: Default::default(),
            limits: Limits::default(),
            allow_outbound: vec![],
            container: None,
            scaling: wisp_runner::spec::ScalingSpec::default(),
            source: None,
            namespace: None,
            secrets: vec![],
            secrets_dir: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_run_one_at_a_time_on_the_writer_thread_and_all_land() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wisp.redb");
        let registry = Registry::open(&path).unwrap();
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let writes: Vec<_> = (0..64)
            .map(|i| {
                let (registry, running, most) = (registry.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    registry
                        .write(move |r| {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            assert_eq!(std::thread::current().name(), Some("wisp-registry"));
                            let stored = r.put(&StoredFunction::new(spec(&format!("f{i}"))));
                            running.fetch_sub(1, Ordering::SeqCst);
                            stored
                        })
                        .await
                })
            })
            .collect();
        for write in writes {
            write.await.unwrap().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "two writes ran at once");
        // The writer thread holds the database only while it writes: it
        // can be opened again once the last `Registry` is dropped.
        drop(registry);
        let registry = Registry::open(&path).unwrap();
        assert_eq!(registry.list().unwrap().len(), 64);
        // A write's own error is its caller's; the writes after it land.
        let failed = registry
            .write(|_| Err::<(), _>(RegistryError::WriterGone))
            .await;
        assert!(matches!(failed, Err(RegistryError::WriterGone)));
        assert!(registry.write(|r| r.remove("f0")).await.unwrap());
        // A write that panics fails alone; the writer thread goes on.
        let panicked = registry
            .write(|_| -> Result<(), RegistryError> { panic!("a bug in a write") })
            .await;
        assert!(matches!(panicked, Err(RegistryError::WriterGone)));
        assert!(registry.write(|r| r.remove("f1")).await.unwrap());
    }

    /// Run as a child of the test below: 64 writes at once, then an exit
    /// that closes nothing (no destructor runs: as if the process died).
    const CRASH_DIR: &str = "WISP_REGISTRY_CRASH_TEST_DIR";

    #[test]
    fn answered_writes_survive_the_process_ending_abruptly() {
        if let Some(dir) = std::env::var_os(CRASH_DIR) {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .build()
                .unwrap();
            runtime.block_on(async {
                let registry = Registry::open(&Path::new(&dir).join("wisp.redb")).unwrap();
                let writes: Vec<_> = (0..64)
                    .map(|i| {
                        let registry = registry.clone();
                        tokio::spawn(async move {
                            let stored = StoredFunction::new(spec(&format!("f{i}")));
                            registry.write(move |r| r.put(&stored)).await
                        })
                    })
                    .collect();
                for write in writes {
                    write.await.unwrap().unwrap();
                }
                std::process::exit(0);
            });
        }
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "registry::tests::answered_writes_survive_the_process_ending_abruptly",
            ])
            .env(CRASH_DIR, dir.path())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let registry = Registry::open(&dir.path().join("wisp.redb")).unwrap();
        assert_eq!(registry.list().unwrap().len(), 64);
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wisp.redb");
        {
            let registry = Registry::open(&path).unwrap();
            registry.put(&StoredFunction::new(spec("a"))).unwrap();
            registry.put(&StoredFunction::new(spec("b"))).unwrap();
            assert!(registry.remove("b").unwrap());
            assert!(!registry.remove("b").unwrap());
        }
        let registry = Registry::open(&path).unwrap();
        let names: Vec<_> = registry
            .list()
            .unwrap()
            .into_iter()
            .map(|f| f.spec.name.to_string())
            .collect();
        assert_eq!(names, ["a"]);
    }

    #[test]
    fn a_deploy_is_kept_until_its_function_is_stored_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wisp.redb");
        {
            let registry = Registry::open(&path).unwrap();
            registry.put_deploy("a", b"{}").unwrap();
            registry.put_deploy("b", b"{}").unwrap();
            registry.put_deploy("c", b"{}").unwrap();
            registry.put(&StoredFunction::new(spec("a"))).unwrap();
            registry.remove("b").unwrap();
        }
        let registry = Registry::open(&path).unwrap();
        assert_eq!(
            registry.deploys().unwrap(),
            [("c".to_owned(), b"{}".to_vec())]
        );
        registry.remove_deploy("c").unwrap();
        assert!(registry.deploys().unwrap().is_empty());
    }

    #[test]
    fn secrets_are_kept_per_namespace_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wisp.redb");
        {
            let registry = Registry::open(&path).unwrap();
            assert!(
                registry
                    .put_secret("ns", "b", b"2", SecretWrite::Create)
                    .unwrap()
            );
            assert!(
                registry
                    .put_secret("ns", "a", b"1", SecretWrite::Create)
                    .unwrap()
            );
            assert!(
                registry
                    .put_secret("ns2", "c", b"3", SecretWrite::Create)
                    .unwrap()
            );
            assert!(
                !registry
                    .put_secret("ns", "a", b"x", SecretWrite::Create)
                    .unwrap()
            );
            assert!(
                !registry
                    .put_secret("ns", "z", b"x", SecretWrite::Update)
                    .unwrap()
            );
            assert!(
                registry
                    .put_secret("ns", "b", b"22", SecretWrite::Update)
                    .unwrap()
            );
        }
        let registry = Registry::open(&path).unwrap();
        assert_eq!(registry.secret_names("ns").unwrap(), ["a", "b"]);
        assert_eq!(
            registry.secret("ns", "a").unwrap().as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(
            registry.secret("ns", "b").unwrap().as_deref(),
            Some(&b"22"[..])
        );
        assert_eq!(registry.secret("ns", "c").unwrap(), None);
        assert!(registry.remove_secret("ns", "a").unwrap());
        assert!(!registry.remove_secret("ns", "a").unwrap());
        assert_eq!(registry.secret_names("ns").unwrap(), ["b"]);
        assert_eq!(registry.secret_names("ns2").unwrap(), ["c"]);
    }

    #[test]
    fn deploys_are_numbered_and_the_newest_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wisp.redb");
        {
            let registry = Registry::open(&path).unwrap();
            for expected in 1..=5 {
                let mut f = StoredFunction::new(spec("a"));
                registry.deploy(&mut f, 3).unwrap();
                assert_eq!(f.revision, expected);
            }
            let mut b = StoredFunction::new(spec("b"));
            registry.deploy(&mut b, 3).unwrap();
            assert_eq!(b.revision, 1);
            // Scaling changes replace the current version, no revision.
            let mut scaled = registry.list().unwrap()[0].clone();
            scaled.spec.scaling.max_instances = Some(7);
            registry.put(&scaled).unwrap();
        }
        let registry = Registry::open(&path).unwrap();
        let kept: Vec<u64> = registry
            .revisions("a")
            .unwrap()
            .iter()
            .map(|r| r.revision)
            .collect();
        assert_eq!(kept, [3, 4, 5]);
        let current = &registry.list().unwrap()[0];
        assert_eq!(
            (current.revision, current.spec.scaling.max_instances),
            (5, Some(7))
        );
        assert_eq!(registry.all_revisions().unwrap().len(), 4);
        registry.remove("a").unwrap();
        assert!(registry.revisions("a").unwrap().is_empty());
        assert_eq!(registry.revisions("b").unwrap().len(), 1);
        let mut again = StoredFunction::new(spec("a"));
        registry.deploy(&mut again, 3).unwrap();
        assert_eq!(again.revision, 1, "a deleted name starts over");
    }

    #[test]
    fn functions_stored_before_revisions_become_revision_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wisp.redb");
        {
            let registry = Registry::open(&path).unwrap();
            registry.put(&StoredFunction::new(spec("old"))).unwrap();
        }
        let registry = Registry::open(&path).unwrap();
        assert_eq!(registry.list().unwrap()[0].revision, 1);
        assert_eq!(registry.revisions("old").unwrap()[0].revision, 1);
        let mut next = StoredFunction::new(spec("old"));
        registry.deploy(&mut next, 10).unwrap();
        assert_eq!(next.revision, 2);
    }

    #[test]
    fn calls_are_kept_in_order_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wisp.redb");
        {
            let registry = Registry::open(&path).unwrap();
            for seq in [3, 1, 2] {
                registry
                    .put_call(seq, format!("call {seq}").as_bytes())
                    .unwrap();
            }
            registry.put_call(2, b"call 2, retried").unwrap();
            registry.remove_call(1).unwrap();
        }
        let registry = Registry::open(&path).unwrap();
        assert_eq!(
            registry.calls().unwrap(),
            [(2, b"call 2, retried".to_vec()), (3, b"call 3".to_vec())]
        );
    }

    #[test]
    fn second_open_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wisp.redb");
        let _first = Registry::open(&path).unwrap();
        let err = Registry::open(&path).err().unwrap();
        assert!(err.to_string().contains("already open"), "{err}");
    }
}
