//! The embedded durable backend: redb, one writer thread, group commit.
//!
//! Writes are queued to a dedicated thread. It takes everything queued (up to a batch limit),
//! applies each operation's precondition inside one redb write transaction, commits with
//! `Durability::Immediate` (fsync), and only then updates the in-memory index and answers the
//! callers. So an acknowledged write survives a crash, and concurrent writers share one fsync.
//!
//! Tables: `objects` (key → create rev, mod rev, JSON), `events` (rev → type, key, create rev,
//! JSON; the last `history` entries, for watch resume across restarts) and `meta`
//! (`revision`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{mpsc, Arc};

use bytes::Bytes;
use futures::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::hub::Hub;
use crate::{stamp, Event, EventType, Revision, Store, StoreError, Stored, WatchStream};

const OBJECTS: TableDefinition<&str, (u64, u64, &[u8])> = TableDefinition::new("objects_v1");
const EVENTS: TableDefinition<u64, (u8, &str, u64, &[u8])> = TableDefinition::new("events_v1");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta_v1");

/// Tuning for [`RedbStore`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Events kept (in memory and on disk) for watches resuming from an older revision.
    pub history: usize,
    /// Events a live watcher may fall behind before it is closed.
    pub watch_buffer: usize,
    /// Most operations committed in one transaction.
    pub max_batch: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            history: 10_000,
            watch_buffer: 4_096,
            max_batch: 512,
        }
    }
}

enum Op {
    Create {
        key: String,
        obj: serde_json::Value,
    },
    Update {
        key: String,
        obj: serde_json::Value,
        expected: Option<Revision>,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Arc<Stored>, StoreError>>,
}

/// The redb-backed [`Store`].
pub struct RedbStore {
    hub: Arc<Hub>,
    writer: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RedbStore {
    /// Stops the writer thread and waits for it, so the database file is closed when the
    /// store is gone (a restart in the same process can reopen it at once).
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) the store in `path` (a file).
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(backend)?;
        Self::start(db, opts)
    }

    /// A store kept only in memory, for tests.
    pub fn in_memory(opts: StoreOptions) -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(backend)?;
        Self::start(db, opts)
    }

    fn start(db: Database, opts: StoreOptions) -> Result<Self, StoreError> {
        // Make sure the tables exist so read transactions can open them.
        {
            let txn = db.begin_write().map_err(backend)?;
            txn.open_table(OBJECTS).map_err(backend)?;
            txn.open_table(EVENTS).map_err(backend)?;
            txn.open_table(META).map_err(backend)?;
            txn.commit().map_err(backend)?;
        }
        let (objects, revision, history) = load(&db)?;
        let event_count = history.len() as u64;
        let hub = Arc::new(Hub::new(
            objects,
            revision,
            history,
            opts.history,
            opts.watch_buffer,
        ));
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            db,
            hub: hub.clone(),
            revision,
            event_count,
            opts,
        };
        let thread = std::thread::Builder::new()
            .name("sluice-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(backend)?;
        Ok(RedbStore {
            hub,
            writer: Some(tx),
            thread: Some(thread),
        })
    }

    fn submit(&self, op: Op) -> BoxFuture<'_, Result<Arc<Stored>, StoreError>> {
        let (reply, rx) = oneshot::channel();
        let sent = match &self.writer {
            Some(w) => w.send(Request { op, reply }).map_err(|_| ()),
            None => Err(()),
        };
        Box::pin(async move {
            sent.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }
}

type Loaded = (
    BTreeMap<String, Arc<Stored>>,
    Revision,
    VecDeque<Arc<Event>>,
);

fn load(db: &Database) -> Result<Loaded, StoreError> {
    let txn = db.begin_read().map_err(backend)?;
    let meta = txn.open_table(META).map_err(backend)?;
    let revision = meta
        .get("revision")
        .map_err(backend)?
        .map(|v| v.value())
        .unwrap_or(0);
    let mut objects = BTreeMap::new();
    let table = txn.open_table(OBJECTS).map_err(backend)?;
    for row in table.iter().map_err(backend)? {
        let (k, v) = row.map_err(backend)?;
        let (create_revision, mod_revision, json) = v.value();
        let key = k.value().to_string();
        objects.insert(
            key.clone(),
            Arc::new(Stored {
                key,
                mod_revision,
                create_revision,
                json: Bytes::copy_from_slice(json),
            }),
        );
    }
    let mut history = VecDeque::new();
    let mut last: std::collections::HashMap<String, Arc<Stored>> = Default::default();
    let events = txn.open_table(EVENTS).map_err(backend)?;
    for row in events.iter().map_err(backend)? {
        let (rev, v) = row.map_err(backend)?;
        let (ty, key, create_revision, json) = v.value();
        let event_type = EventType::from_u8(ty)
            .ok_or_else(|| StoreError::Backend(format!("bad event type {ty}")))?;
        let object = Arc::new(Stored {
            key: key.to_string(),
            mod_revision: rev.value(),
            create_revision,
            json: Bytes::copy_from_slice(json),
        });
        let prev = last.insert(key.to_string(), object.clone());
        history.push_back(Arc::new(Event::new(event_type, object, prev)));
    }
    Ok((objects, revision, history))
}

struct Writer {
    db: Database,
    hub: Arc<Hub>,
    revision: Revision,
    event_count: u64,
    opts: StoreOptions,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < self.opts.max_batch {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
    }

    fn commit_batch(&mut self, batch: Vec<Request>) {
        let start_rev = self.revision;
        let start_count = self.event_count;
        let mut results: Vec<Result<Arc<Stored>, StoreError>> = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        // Latest state of keys written earlier in this batch (None = deleted).
        let mut overlay: HashMap<String, Option<Arc<Stored>>> = HashMap::new();
        let (ops, replies): (Vec<Op>, Vec<_>) = batch.into_iter().map(|r| (r.op, r.reply)).unzip();

        let outcome = (|| -> Result<(), StoreError> {
            let txn = self.db.begin_write().map_err(backend)?;
            {
                let mut objects = txn.open_table(OBJECTS).map_err(backend)?;
                let mut log = txn.open_table(EVENTS).map_err(backend)?;
                for op in ops {
                    let r = self.apply_op(op, &mut objects, &mut log, &overlay);
                    if let Ok(ev) = &r {
                        let now = (ev.event_type != EventType::Deleted).then(|| ev.object.clone());
                        overlay.insert(ev.object.key.clone(), now);
                        events.push(ev.clone());
                    }
                    results.push(r.map(|ev| ev.object.clone()));
                }
                while self.event_count > self.opts.history as u64 {
                    if log.pop_first().map_err(backend)?.is_none() {
                        break;
                    }
                    self.event_count -= 1;
                }
                let mut meta = txn.open_table(META).map_err(backend)?;
                meta.insert("revision", self.revision).map_err(backend)?;
            }
            txn.commit().map_err(backend)?;
            Ok(())
        })();

        match outcome {
            Ok(()) => {
                self.hub.apply(events);
                for (reply, r) in replies.into_iter().zip(results) {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed");
                self.revision = start_rev;
                self.event_count = start_count;
                let msg = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Backend(msg.clone())));
                }
            }
        }
    }

    fn apply_op(
        &mut self,
        op: Op,
        objects: &mut redb::Table<&str, (u64, u64, &[u8])>,
        log: &mut redb::Table<u64, (u8, &str, u64, &[u8])>,
        overlay: &HashMap<String, Option<Arc<Stored>>>,
    ) -> Result<Arc<Event>, StoreError> {
        let (key, current) = {
            let key = match &op {
                Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => {
                    key.clone()
                }
            };
            let cur = objects.get(key.as_str()).map_err(backend)?.map(|g| {
                let (c, m, j) = g.value();
                (c, m, Bytes::copy_from_slice(j))
            });
            (key, cur)
        };
        let rev = self.revision + 1;
        let (event_type, create_revision, json) = match op {
            Op::Create { mut obj, .. } => {
                if current.is_some() {
                    return Err(StoreError::AlreadyExists { key });
                }
                (EventType::Added, rev, stamp(&key, &mut obj, rev)?)
            }
            Op::Update {
                mut obj, expected, ..
            } => {
                let Some((c, m, _)) = current else {
                    return Err(StoreError::NotFound { key });
                };
                check_expected(&key, expected, m)?;
                (EventType::Modified, c, stamp(&key, &mut obj, rev)?)
            }
            Op::Delete { expected, .. } => {
                let Some((c, m, old)) = current else {
                    return Err(StoreError::NotFound { key });
                };
                check_expected(&key, expected, m)?;
                let mut obj: serde_json::Value =
                    serde_json::from_slice(&old).map_err(|source| StoreError::Corrupt {
                        key: key.clone(),
                        source,
                    })?;
                (EventType::Deleted, c, stamp(&key, &mut obj, rev)?)
            }
        };
        match event_type {
            EventType::Deleted => {
                objects.remove(key.as_str()).map_err(backend)?;
            }
            _ => {
                objects
                    .insert(key.as_str(), (create_revision, rev, &json[..]))
                    .map_err(backend)?;
            }
        }
        log.insert(
            rev,
            (event_type.to_u8(), key.as_str(), create_revision, &json[..]),
        )
        .map_err(backend)?;
        self.revision = rev;
        self.event_count += 1;
        let prev = match overlay.get(&key) {
            Some(p) => p.clone(),
            None => self.hub.get(&key),
        };
        let object = Arc::new(Stored {
            key,
            mod_revision: rev,
            create_revision,
            json,
        });
        Ok(Arc::new(Event::new(event_type, object, prev)))
    }
}

fn check_expected(
    key: &str,
    expected: Option<Revision>,
    actual: Revision,
) -> Result<(), StoreError> {
    match expected {
        Some(e) if e != actual => Err(StoreError::Conflict {
            key: key.to_string(),
            expected: e,
            actual,
        }),
        _ => Ok(()),
    }
}

impl Store for RedbStore {
    fn get(&self, key: &str) -> Option<Arc<Stored>> {
        self.hub.get(key)
    }

    fn list(&self, prefix: &str) -> (Vec<Arc<Stored>>, Revision) {
        self.hub.list(prefix)
    }

    fn revision(&self) -> Revision {
        self.hub.revision()
    }

    fn create(
        &self,
        key: String,
        obj: serde_json::Value,
    ) -> BoxFuture<'_, Result<Arc<Stored>, StoreError>> {
        self.submit(Op::Create { key, obj })
    }

    fn update(
        &self,
        key: String,
        obj: serde_json::Value,
        expected: Option<Revision>,
    ) -> BoxFuture<'_, Result<Arc<Stored>, StoreError>> {
        self.submit(Op::Update { key, obj, expected })
    }

    fn delete(
        &self,
        key: String,
        expected: Option<Revision>,
    ) -> BoxFuture<'_, Result<Arc<Stored>, StoreError>> {
        self.submit(Op::Delete { key, expected })
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.hub.watch(prefix, after)
    }
}

#[cfg(test)]
mod tests;
