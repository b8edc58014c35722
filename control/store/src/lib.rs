//! Sluice's control-plane object store.
//!
//! Role: durable, revisioned storage of Kubernetes objects for the API server, with watch.
//!
//! Data flow:
//! ```text
//!  API handler ──create/update/delete──► Store::{create,update,delete}
//!                                          │  (redb backend: one writer thread,
//!                                          │   group commit, fsync before ack)
//!                                          ▼
//!                                   in-memory index ──► broadcast of Arc<Event>
//!                                          │                 │
//!  API handler ◄──get/list (memory)────────┘                 ▼
//!                                             Store::watch(prefix, from) streams,
//!                                             one per HTTP watcher
//! ```
//!
//! Every write gets the next value of one global, monotonic revision counter (like etcd's
//! revision). The store owns `metadata.resourceVersion`: it stamps the revision into the object
//! and serializes it **once**; readers and all watchers share those bytes (`Arc<Stored>`).
//! A bounded history of events (kept durably as well) lets a watcher resume from an older
//! revision after a restart; older than the history → [`StoreError::Compacted`] (HTTP 410).
//! A watcher that falls more than the broadcast capacity behind is ended with
//! [`WatchError::Lagged`] and must relist: slow watchers never block writers or other watchers.
//!
//! The [`Store`] trait is what the API server uses; [`RedbStore`] is the embedded backend
//! (one API server), [`EtcdStore`] keeps the objects in an etcd cluster that any number of API
//! servers share (transactions on the keys' revisions, one prefix watch per API server feeding
//! the same in-memory index and fan-out).

mod etcd_store;
mod hub;
mod redb_store;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

pub use etcd_store::{EtcdOptions, EtcdStore, EtcdTls};
pub use redb_store::{RedbStore, StoreOptions};

/// A store revision; the string form is the Kubernetes `resourceVersion`.
pub type Revision = u64;

/// One stored object, as every reader and watcher sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// Store key, e.g. `/registry/services/default/web`.
    pub key: String,
    /// Revision of the last write to this key (the object's `resourceVersion`).
    pub mod_revision: Revision,
    /// Revision that created this key.
    pub create_revision: Revision,
    /// The object's JSON, with `metadata.resourceVersion` set to `mod_revision`.
    pub json: Bytes,
}

impl Stored {
    /// Parses the stored JSON.
    pub fn value(&self) -> Result<serde_json::Value, StoreError> {
        serde_json::from_slice(&self.json).map_err(|source| StoreError::Corrupt {
            key: self.key.clone(),
            source,
        })
    }
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// The key was created.
    Added,
    /// The key was updated.
    Modified,
    /// The key was deleted; the event carries the last state with the deletion's revision.
    Deleted,
}

impl EventType {
    /// The Kubernetes watch event type.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            EventType::Added => 0,
            EventType::Modified => 1,
            EventType::Deleted => 2,
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(EventType::Added),
            1 => Some(EventType::Modified),
            2 => Some(EventType::Deleted),
            _ => None,
        }
    }
}

/// One change, shared by every watcher that receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What happened.
    pub event_type: EventType,
    /// The object after the change (for deletes: the last state, stamped with the delete's revision).
    pub object: Arc<Stored>,
    /// The object before the change, when known (always for live events; for events replayed
    /// after a restart, unknown for a key's first event in the kept history). Watchers with
    /// selectors use it to turn a MODIFIED that leaves or enters the selection into
    /// DELETED/ADDED, as the apiserver does.
    pub prev: Option<Arc<Stored>>,
    framed: OnceLock<Bytes>,
}

impl Event {
    /// Makes an event.
    pub fn new(event_type: EventType, object: Arc<Stored>, prev: Option<Arc<Stored>>) -> Self {
        Event {
            event_type,
            object,
            prev,
            framed: OnceLock::new(),
        }
    }

    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        self.object.mod_revision
    }

    /// The Kubernetes watch line `{"type":"…","object":…}\n`, built once per event and shared
    /// by every watcher that sends it unchanged.
    pub fn framed(&self) -> Bytes {
        self.framed
            .get_or_init(|| frame(self.event_type.as_str(), &self.object.json))
            .clone()
    }
}

/// Frames one watch event line around already-serialized object JSON.
pub fn frame(event_type: &str, object_json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(object_json.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(event_type.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(object_json);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Create of a key that exists.
    #[error("key {key} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// Update or delete of a missing key.
    #[error("key {key} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// Compare-and-swap failed: the key's revision differs from the expected one.
    #[error("key {key}: expected revision {expected}, found {actual}")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller based its write on.
        expected: Revision,
        /// The key's current revision.
        actual: Revision,
    },
    /// A watch asked for history that is no longer kept.
    #[error("revision {requested} is compacted; oldest available is {oldest}")]
    Compacted {
        /// The requested revision.
        requested: Revision,
        /// The oldest revision a watch can start after.
        oldest: Revision,
    },
    /// The object to write is not a JSON object with `metadata`.
    #[error("object for key {key} is not a JSON object with metadata")]
    NotAnObject {
        /// The key.
        key: String,
    },
    /// Stored bytes failed to parse.
    #[error("stored object {key} is corrupt: {source}")]
    Corrupt {
        /// The key.
        key: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The backend failed; the write was not acknowledged.
    #[error("storage backend: {0}")]
    Backend(String),
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
}

/// Errors a running watch can end with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// The watcher fell too far behind and was closed; it must relist.
    #[error("watcher fell more than {0} events behind and was closed; relist")]
    Lagged(u64),
}

/// A stream of events for one watcher.
pub type WatchStream = BoxStream<'static, Result<Arc<Event>, WatchError>>;

/// The storage interface the API server depends on.
///
/// Keys are plain strings; prefixes select resources (`/registry/pods/`) or namespaces
/// (`/registry/pods/default/`). Values are Kubernetes objects as JSON; the store stamps
/// `metadata.resourceVersion`.
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, key: &str) -> Option<Arc<Stored>>;
    /// Reads all keys under a prefix, in key order, and the store revision they reflect.
    fn list(&self, prefix: &str) -> (Vec<Arc<Stored>>, Revision);
    /// The current revision.
    fn revision(&self) -> Revision;
    /// Creates a key; fails with [`StoreError::AlreadyExists`].
    fn create(
        &self,
        key: String,
        obj: serde_json::Value,
    ) -> BoxFuture<'_, Result<Arc<Stored>, StoreError>>;
    /// Replaces a key. With `expected` set, fails with [`StoreError::Conflict`] unless the key's
    /// current revision equals it (optimistic concurrency).
    fn update(
        &self,
        key: String,
        obj: serde_json::Value,
        expected: Option<Revision>,
    ) -> BoxFuture<'_, Result<Arc<Stored>, StoreError>>;
    /// Deletes a key, returning its last state stamped with the deletion's revision.
    fn delete(
        &self,
        key: String,
        expected: Option<Revision>,
    ) -> BoxFuture<'_, Result<Arc<Stored>, StoreError>>;
    /// Streams every change under `prefix` with a revision greater than `after`.
    /// Fails with [`StoreError::Compacted`] when that history is no longer kept.
    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError>;
    /// Makes the following reads at least as new as the latest write acknowledged by any
    /// writer of the backend (other API servers included), and returns that revision. Reads
    /// are served from memory; a backend shared by several API servers waits here until its
    /// cache has caught up (a consistent read, as kube-apiserver's reads from its watch cache).
    fn fresh(&self) -> BoxFuture<'_, Result<Revision, StoreError>> {
        let rev = self.revision();
        Box::pin(async move { Ok(rev) })
    }
}

/// Stamps `metadata.resourceVersion` and serializes once.
fn stamp(key: &str, obj: &mut serde_json::Value, rev: Revision) -> Result<Bytes, StoreError> {
    let meta = obj
        .get_mut("metadata")
        .and_then(|m| m.as_object_mut())
        .ok_or_else(|| StoreError::NotAnObject {
            key: key.to_string(),
        })?;
    meta.insert(
        "resourceVersion".to_string(),
        serde_json::Value::String(rev.to_string()),
    );
    serde_json::to_vec(obj)
        .map(Bytes::from)
        .map_err(|e| StoreError::Backend(format!("serialize {key}: {e}")))
}
