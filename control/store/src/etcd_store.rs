//! The etcd v3 backend: objects in an etcd cluster, read through an in-memory watch cache.
//!
//! Layout: the store key `/registry/<resource>/…` is the etcd key `<prefix>/<resource>/…`
//! (`--etcd-prefix`, default `/registry`, as kube-apiserver). Values are the objects' JSON
//! without `metadata.resourceVersion`: the resourceVersion *is* etcd's mod revision of the key,
//! stamped in when an object is read back (so a value never disagrees with its revision).
//!
//! Writes are single etcd transactions, so every precondition is checked by etcd itself and
//! holds across any number of API servers:
//! * create: `create_revision(key) == 0` → put;
//! * update/delete with a precondition: `mod_revision(key) == expected` → put/delete,
//!   otherwise read the key to say whether it is missing or changed;
//! * update/delete without one: `create_revision(key) > 0` → put/delete.
//!
//! Reads are served from memory: one etcd watch per API server over the whole prefix (with
//! `prev_kv`, so selector watches can still turn a MODIFIED into ADDED/DELETED) feeds the same
//! index and fan-out the redb backend uses, and every API watcher shares it. A write returns
//! once that cache has caught up with the write's revision, so a client reads its own writes
//! from the server it wrote through. [`Store::fresh`] makes a read as fresh as etcd itself
//! (another API server's writes included): it asks etcd for its current revision and waits
//! for the cache to get there, using a progress request when the last write was not one of
//! ours.
//!
//! The watch reconnects by itself from the last revision it applied; if etcd has compacted
//! that history away, the cache relists and ends running watches (their clients resume from
//! their resourceVersion, or relist on `410 Gone`). Compaction runs every
//! `compaction_interval` and, as kube-apiserver does, is coordinated between API servers
//! through a `compact_rev_key` whose version only one of them can bump per round: the winner
//! compacts at the revision it saw one round earlier, so at least one interval of history
//! stays available for watchers to resume.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType as EtcdEvent,
    GetOptions, Identity, KeyValue, KvClient, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
    TxnResponse, WatchOptions, WatchRequestSender,
};
use futures::future::BoxFuture;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::hub::Hub;
use crate::{stamp, Event, EventType, Revision, Store, StoreError, Stored, WatchStream};

/// The store keys' common root; it maps onto the configured etcd prefix.
const ROOT: &str = "/registry";

/// Objects read per range request when listing (keeps each response well under gRPC limits).
const PAGE: i64 = 500;

/// Largest gRPC message accepted from etcd (a watch response replaying many changes at once).
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// TLS material for talking to etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    /// CA bundle that signed etcd's serving certificates (`--etcd-cafile`).
    pub ca_file: Option<PathBuf>,
    /// Client certificate (`--etcd-certfile`).
    pub cert_file: Option<PathBuf>,
    /// Client key (`--etcd-keyfile`).
    pub key_file: Option<PathBuf>,
}

/// How to reach and use etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Client URLs of the etcd members (`http://127.0.0.1:2379`, `https://…`).
    pub endpoints: Vec<String>,
    /// Key prefix standing for `/registry`.
    pub prefix: String,
    /// Client TLS, when etcd serves HTTPS.
    pub tls: Option<EtcdTls>,
    /// How often history is compacted (`None`: never).
    pub compaction_interval: Option<Duration>,
    /// Longest wait for one etcd request, and for the cache to catch up with a write.
    pub request_timeout: Duration,
    /// Events kept in memory for watches resuming from an older revision.
    pub history: usize,
    /// Events a live watcher may fall behind before it is closed.
    pub watch_buffer: usize,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            prefix: ROOT.to_string(),
            tls: None,
            compaction_interval: Some(Duration::from_secs(300)),
            request_timeout: Duration::from_secs(10),
            history: 10_000,
            watch_buffer: 4_096,
        }
    }
}

/// Maps store keys to etcd keys and back.
#[derive(Debug, Clone)]
struct Keys {
    /// The etcd prefix, with a trailing `/`.
    prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Keys {
            prefix: format!("{}/", prefix.trim_end_matches('/')),
        }
    }

    fn etcd(&self, key: &str) -> String {
        let rest = key.strip_prefix(ROOT).unwrap_or(key);
        format!("{}{}", self.prefix, rest.trim_start_matches('/'))
    }

    /// The store key of an etcd key, if it is one of the objects' (not the compaction key).
    fn store(&self, etcd_key: &[u8]) -> Option<String> {
        let k = std::str::from_utf8(etcd_key).ok()?;
        let rest = k.strip_prefix(&self.prefix)?;
        if rest == COMPACT_KEY {
            return None;
        }
        Some(format!("{ROOT}/{rest}"))
    }

    fn compact_key(&self) -> String {
        format!("{}{COMPACT_KEY}", self.prefix)
    }
}

/// The key whose version coordinates compaction between API servers.
const COMPACT_KEY: &str = "compact_rev_key";

fn etcd_err(e: etcd_client::Error) -> StoreError {
    StoreError::Backend(format!("etcd: {e}"))
}

/// Whether a failed request never reached etcd (the connection to the member it was sent to
/// could not be made), so sending it again cannot apply it twice. The client balances over the
/// members and keeps trying a dead member's address for a while; such requests fail at once.
fn not_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::Unavailable && s.message().contains("connect error")
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// Whether a failed read may be sent again (any unavailability: reads have no effect).
fn read_retryable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.code() == tonic::Code::Unavailable,
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// Runs one etcd request within `limit`, sending it again while it fails without effect (a
/// read, or a write that never left this process) and time is left.
async fn timed<T, F, Fut>(limit: Duration, read: bool, mut call: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    // The first retry goes out at once (the balancer likely picks a live member next), later
    // ones after a short pause.
    let mut pause = Duration::ZERO;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, call()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => {
                let again = not_sent(&e) || (read && read_retryable(&e));
                if !again || tokio::time::Instant::now() + pause >= deadline {
                    return Err(etcd_err(e));
                }
                debug!(error = %e, "etcd request failed without effect; sending it again");
                tokio::time::sleep(pause).await;
                pause = Duration::from_millis(20);
            }
            Err(_) => {
                return Err(StoreError::Backend(format!(
                    "etcd: request timed out after {}s",
                    limit.as_secs_f32()
                )))
            }
        }
    }
}

/// The object JSON to store: the object without its resourceVersion.
fn encode(key: &str, obj: &mut serde_json::Value) -> Result<Vec<u8>, StoreError> {
    let meta = obj
        .get_mut("metadata")
        .and_then(|m| m.as_object_mut())
        .ok_or_else(|| StoreError::NotAnObject {
            key: key.to_string(),
        })?;
    meta.remove("resourceVersion");
    serde_json::to_vec(obj).map_err(|e| StoreError::Backend(format!("serialize {key}: {e}")))
}

/// A stored object from etcd's value, stamped with `mod_revision`.
fn decode(
    key: String,
    value: &[u8],
    create_revision: i64,
    mod_revision: i64,
) -> Result<Arc<Stored>, StoreError> {
    let mut obj: serde_json::Value =
        serde_json::from_slice(value).map_err(|source| StoreError::Corrupt {
            key: key.clone(),
            source,
        })?;
    let rev = mod_revision as Revision;
    let json = stamp(&key, &mut obj, rev)?;
    Ok(Arc::new(Stored {
        key,
        mod_revision: rev,
        create_revision: create_revision as Revision,
        json,
    }))
}

fn header_revision(resp: &TxnResponse) -> Revision {
    resp.header().map(|h| h.revision() as Revision).unwrap_or(0)
}

/// The key-value the else branch of a transaction read (absent: the key does not exist).
fn else_get(resp: &TxnResponse) -> Option<KeyValue> {
    resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    })
}

/// The previous key-value a put or delete in the then branch returned.
fn then_prev(resp: &TxnResponse) -> Option<KeyValue> {
    resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Put(p) => p.prev_key().cloned(),
        TxnOpResponse::Delete(d) => d.prev_kvs().first().cloned(),
        _ => None,
    })
}

/// Everything under the prefix at one revision, read in pages.
async fn list_all(
    kv: &KvClient,
    keys: &Keys,
    limit: Duration,
) -> Result<(BTreeMap<String, Arc<Stored>>, Revision), StoreError> {
    let end = prefix_end(keys.prefix.as_bytes());
    let mut objects = BTreeMap::new();
    let mut start = keys.prefix.as_bytes().to_vec();
    let mut at: i64 = 0;
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if at > 0 {
            opts = opts.with_revision(at);
        }
        let resp = timed(limit, true, || {
            let mut kv = kv.clone();
            let (start, opts) = (start.clone(), opts.clone());
            async move { kv.get(start, Some(opts)).await }
        })
        .await?;
        if at == 0 {
            at = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        for item in resp.kvs() {
            if let Some(key) = keys.store(item.key()) {
                let s = decode(
                    key.clone(),
                    item.value(),
                    item.create_revision(),
                    item.mod_revision(),
                )?;
                objects.insert(key, s);
            }
        }
        match (resp.more(), resp.kvs().last()) {
            (true, Some(last)) => {
                start = last.key().to_vec();
                start.push(0);
            }
            _ => break,
        }
    }
    Ok((objects, at as Revision))
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The etcd-backed [`Store`].
pub struct EtcdStore {
    kv: KvClient,
    hub: Arc<Hub>,
    keys: Keys,
    timeout: Duration,
    /// The cache watch's request side, for progress requests.
    progress: Arc<tokio::sync::Mutex<Option<WatchRequestSender>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

impl EtcdStore {
    /// Connects to etcd, loads every object under the prefix and starts the cache watch and
    /// compaction. Must run inside a tokio runtime.
    pub async fn open(opts: EtcdOptions) -> Result<Self, StoreError> {
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(opts.request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &opts.tls {
            connect = connect.with_tls(tls_options(tls)?);
        }
        let client = timed(opts.request_timeout, true, || {
            Client::connect(opts.endpoints.clone(), Some(connect.clone()))
        })
        .await?;
        let kv = client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let keys = Keys::new(&opts.prefix);
        let (objects, revision) = list_all(&kv, &keys, opts.request_timeout).await?;
        info!(
            objects = objects.len(),
            revision,
            endpoints = ?opts.endpoints,
            prefix = %opts.prefix,
            "etcd store loaded"
        );
        // The watch history of the last `history` revisions, so a watcher that resumes here
        // from a resourceVersion another API server (or this one before a restart) gave it
        // misses nothing etcd still has.
        let want_from = revision.saturating_sub(opts.history as Revision).max(1) + 1;
        let (history, compacted) = match backfill(
            &client,
            &keys,
            want_from,
            revision,
            opts.request_timeout,
        )
        .await
        {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "no watch history from etcd; watches start at the current revision");
                (Default::default(), revision)
            }
        };
        let hub = Arc::new(Hub::with_compacted(
            objects,
            revision,
            history,
            compacted,
            opts.history,
            opts.watch_buffer,
        ));
        let progress = Arc::new(tokio::sync::Mutex::new(None));
        let mut tasks = vec![tokio::spawn(cache_watch(
            client.clone(),
            kv.clone(),
            hub.clone(),
            keys.clone(),
            progress.clone(),
            opts.request_timeout,
        ))];
        if let Some(every) = opts.compaction_interval {
            tasks.push(tokio::spawn(compactor(
                kv.clone(),
                keys.clone(),
                every,
                opts.request_timeout,
            )));
        }
        Ok(EtcdStore {
            kv,
            hub,
            keys,
            timeout: opts.request_timeout,
            progress,
            tasks: Mutex::new(tasks),
        })
    }

    /// Waits until the cache holds revision `rev` (a write's own). The write is committed
    /// either way; a cache that lags longer than the timeout is logged.
    async fn settle(&self, rev: Revision) {
        if !self.hub.wait_for(rev, self.timeout).await {
            warn!(
                revision = rev,
                cached = self.hub.revision(),
                "the etcd watch cache lags behind a committed write"
            );
        }
    }

    /// The object a committed write produced, as the cache holds it when it is that revision.
    fn result(&self, key: &str, made: Arc<Stored>) -> Arc<Stored> {
        match self.hub.get(key) {
            Some(s) if s.mod_revision == made.mod_revision => s,
            _ => made,
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        timed(self.timeout, false, || {
            let mut kv = self.kv.clone();
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
    }

    async fn do_create(
        &self,
        key: String,
        mut obj: serde_json::Value,
    ) -> Result<Arc<Stored>, StoreError> {
        let ek = self.keys.etcd(&key);
        let value = encode(&key, &mut obj)?;
        let txn = Txn::new()
            .when([Compare::create_revision(ek.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(ek, value, None)]);
        let resp = self.txn(txn).await?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists { key });
        }
        let rev = header_revision(&resp);
        let json = stamp(&key, &mut obj, rev)?;
        self.settle(rev).await;
        let made = Arc::new(Stored {
            key: key.clone(),
            mod_revision: rev,
            create_revision: rev,
            json,
        });
        Ok(self.result(&key, made))
    }

    /// The comparison a conditional write needs: the expected mod revision, or existence.
    fn precondition(&self, ek: &str, expected: Option<Revision>) -> Compare {
        match expected {
            Some(rev) => Compare::mod_revision(ek, CompareOp::Equal, rev as i64),
            None => Compare::create_revision(ek, CompareOp::Greater, 0),
        }
    }

    /// Why a conditional write did not happen, from the key as the else branch read it.
    fn refused(key: String, expected: Option<Revision>, now: Option<KeyValue>) -> StoreError {
        match (now, expected) {
            (None, _) => StoreError::NotFound { key },
            (Some(kv), Some(expected)) => StoreError::Conflict {
                key,
                expected,
                actual: kv.mod_revision() as Revision,
            },
            // Exists now although the existence check failed: it was recreated in between.
            (Some(kv), None) => StoreError::Conflict {
                key,
                expected: 0,
                actual: kv.mod_revision() as Revision,
            },
        }
    }

    async fn do_update(
        &self,
        key: String,
        mut obj: serde_json::Value,
        expected: Option<Revision>,
    ) -> Result<Arc<Stored>, StoreError> {
        let ek = self.keys.etcd(&key);
        let value = encode(&key, &mut obj)?;
        let txn = Txn::new()
            .when([self.precondition(&ek, expected)])
            .and_then([TxnOp::put(
                ek.clone(),
                value,
                Some(PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(ek, None)]);
        let resp = self.txn(txn).await?;
        if !resp.succeeded() {
            return Err(Self::refused(key, expected, else_get(&resp)));
        }
        let rev = header_revision(&resp);
        let create_revision = then_prev(&resp)
            .map(|p| p.create_revision() as Revision)
            .unwrap_or(rev);
        let json = stamp(&key, &mut obj, rev)?;
        self.settle(rev).await;
        let made = Arc::new(Stored {
            key: key.clone(),
            mod_revision: rev,
            create_revision,
            json,
        });
        Ok(self.result(&key, made))
    }

    async fn do_delete(
        &self,
        key: String,
        expected: Option<Revision>,
    ) -> Result<Arc<Stored>, StoreError> {
        let ek = self.keys.etcd(&key);
        let txn = Txn::new()
            .when([self.precondition(&ek, expected)])
            .and_then([TxnOp::delete(
                ek.clone(),
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(ek, None)]);
        let resp = self.txn(txn).await?;
        if !resp.succeeded() {
            return Err(Self::refused(key, expected, else_get(&resp)));
        }
        let rev = header_revision(&resp);
        let prev = then_prev(&resp).ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
        let gone = decode(key, prev.value(), prev.create_revision(), rev as i64)?;
        self.settle(rev).await;
        Ok(gone)
    }

    async fn do_fresh(&self) -> Result<Revision, StoreError> {
        // A count-only read of one key is the cheapest linearizable way to learn etcd's
        // current revision (the response header carries it).
        let resp = timed(self.timeout, true, || {
            let mut kv = self.kv.clone();
            let key = self.keys.compact_key();
            async move { kv.get(key, Some(GetOptions::new().with_count_only())).await }
        })
        .await?;
        let want = resp.header().map(|h| h.revision() as Revision).unwrap_or(0);
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            // Usually the write that made `want` is under the prefix and its event arrives by
            // itself; a progress request covers writes etcd saw elsewhere.
            if self.hub.wait_for(want, Duration::from_millis(50)).await {
                return Ok(want);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Backend(format!(
                    "etcd: the watch cache did not reach revision {want} within {}s (at {})",
                    self.timeout.as_secs_f32(),
                    self.hub.revision()
                )));
            }
            if let Some(tx) = self.progress.lock().await.as_mut() {
                let _ = tx.request_progress().await;
            }
        }
    }
}

fn tls_options(tls: &EtcdTls) -> Result<TlsOptions, StoreError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| StoreError::Backend(format!("read {}: {e}", p.display())))
    };
    let mut out = TlsOptions::new();
    if let Some(ca) = &tls.ca_file {
        out = out.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    match (&tls.cert_file, &tls.key_file) {
        (Some(c), Some(k)) => out = out.identity(Identity::from_pem(read(c)?, read(k)?)),
        (None, None) => {}
        _ => {
            return Err(StoreError::Backend(
                "etcd client TLS needs both a certificate and a key".to_string(),
            ))
        }
    }
    Ok(out)
}

/// Keeps the cache following etcd: watch from the next revision, apply, reconnect on errors,
/// relist when the history the cache needs was compacted.
async fn cache_watch(
    client: Client,
    kv: KvClient,
    hub: Arc<Hub>,
    keys: Keys,
    progress: Arc<tokio::sync::Mutex<Option<WatchRequestSender>>>,
    timeout: Duration,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let from = hub.revision() + 1;
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(from as i64);
        let mut watch = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
        match watch.watch(keys.prefix.clone(), Some(opts)).await {
            Ok(stream) => {
                let (tx, mut rx) = stream.split();
                *progress.lock().await = Some(tx);
                debug!(from, "etcd cache watch started");
                loop {
                    match rx.message().await {
                        Ok(Some(resp)) => {
                            backoff = Duration::from_millis(100);
                            if resp.canceled() {
                                if resp.compact_revision() > 0 {
                                    warn!(
                                        from,
                                        compacted = resp.compact_revision(),
                                        "etcd compacted past the cache's revision; relisting"
                                    );
                                    relist(&kv, &hub, &keys, timeout).await;
                                } else {
                                    warn!(
                                        reason = resp.cancel_reason(),
                                        "etcd canceled the cache watch"
                                    );
                                }
                                break;
                            }
                            if resp.events().is_empty() {
                                // A progress notification: every event up to the header's
                                // revision has been delivered.
                                if !resp.created() {
                                    if let Some(h) = resp.header() {
                                        hub.advance(h.revision() as Revision);
                                    }
                                }
                                continue;
                            }
                            match events(&keys, resp.events()) {
                                Ok((evs, last)) => {
                                    hub.apply(evs);
                                    hub.advance(last);
                                }
                                Err(e) => {
                                    // Cannot happen with values Sluice wrote; skip the batch
                                    // but keep following.
                                    warn!(error = %e, "undecodable etcd event");
                                }
                            }
                        }
                        Ok(None) => {
                            warn!("etcd cache watch ended; reconnecting");
                            break;
                        }
                        Err(e) => {
                            warn!(error = %e, "etcd cache watch failed; reconnecting");
                            break;
                        }
                    }
                }
                *progress.lock().await = None;
            }
            Err(e) => warn!(error = %e, "cannot watch etcd; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// The events under the prefix with revisions in `from..=to`, read with a watch from `from`
/// (moved up to etcd's compaction revision if history before it is gone), and the revision
/// after which that history is complete. Done when etcd reports progress past `to`.
async fn backfill(
    client: &Client,
    keys: &Keys,
    mut from: Revision,
    to: Revision,
    limit: Duration,
) -> Result<(VecDeque<Arc<Event>>, Revision), StoreError> {
    let mut got = VecDeque::new();
    if from > to {
        return Ok((got, to));
    }
    let deadline = tokio::time::Instant::now() + limit;
    'restart: loop {
        got.clear();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(from as i64);
        let stream = timed(limit, true, || {
            let mut w = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
            let (key, opts) = (keys.prefix.clone(), opts.clone());
            async move { w.watch(key, Some(opts)).await }
        })
        .await?;
        let (mut tx, mut rx) = stream.split();
        loop {
            let next = tokio::time::timeout(Duration::from_millis(100), rx.message());
            let resp = match next.await {
                Ok(Ok(Some(r))) => r,
                Ok(Ok(None)) => {
                    return Err(StoreError::Backend("etcd: history watch ended".into()))
                }
                Ok(Err(e)) => return Err(etcd_err(e)),
                Err(_) => {
                    if tokio::time::Instant::now() > deadline {
                        return Err(StoreError::Backend(format!(
                            "etcd: history up to revision {to} not read within {}s",
                            limit.as_secs_f32()
                        )));
                    }
                    // Synced watchers answer a progress request with etcd's current revision.
                    tx.request_progress().await.map_err(etcd_err)?;
                    continue;
                }
            };
            if resp.canceled() {
                let c = resp.compact_revision() as Revision;
                if c > from && c <= to {
                    from = c;
                    continue 'restart;
                }
                return Err(StoreError::Backend(format!(
                    "etcd: history watch canceled: {}",
                    resp.cancel_reason()
                )));
            }
            if resp.events().is_empty() {
                if !resp.created()
                    && resp
                        .header()
                        .is_some_and(|h| h.revision() as Revision >= to)
                {
                    return Ok((got, from - 1));
                }
                continue;
            }
            let (evs, last) = events(keys, resp.events())?;
            got.extend(evs.into_iter().filter(|e| e.revision() <= to));
            if last >= to {
                return Ok((got, from - 1));
            }
        }
    }
}

async fn relist(kv: &KvClient, hub: &Hub, keys: &Keys, timeout: Duration) {
    loop {
        match list_all(kv, keys, timeout).await {
            Ok((objects, revision)) => {
                hub.reset(objects, revision);
                return;
            }
            Err(e) => {
                warn!(error = %e, "relisting etcd failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The cache events of one watch response, and its last revision.
fn events(
    keys: &Keys,
    batch: &[etcd_client::Event],
) -> Result<(Vec<Arc<Event>>, Revision), StoreError> {
    let mut out = Vec::with_capacity(batch.len());
    let mut last = 0;
    for ev in batch {
        let Some(kv) = ev.kv() else { continue };
        last = last.max(kv.mod_revision() as Revision);
        let Some(key) = keys.store(kv.key()) else {
            continue;
        };
        let prev = match ev.prev_kv() {
            Some(p) => Some(decode(
                key.clone(),
                p.value(),
                p.create_revision(),
                p.mod_revision(),
            )?),
            None => None,
        };
        let event = match ev.event_type() {
            EtcdEvent::Put => {
                let object = decode(key, kv.value(), kv.create_revision(), kv.mod_revision())?;
                let kind = if kv.version() == 1 {
                    EventType::Added
                } else {
                    EventType::Modified
                };
                Event::new(kind, object, prev)
            }
            EtcdEvent::Delete => {
                // The tombstone has no value: the last state comes from prev_kv, stamped with
                // the deletion's revision (as the redb backend reports deletes).
                let Some(p) = &prev else { continue };
                let object = Arc::new(Stored {
                    key: p.key.clone(),
                    mod_revision: kv.mod_revision() as Revision,
                    create_revision: p.create_revision,
                    json: restamp(p, kv.mod_revision() as Revision)?,
                });
                Event::new(EventType::Deleted, object, prev)
            }
        };
        out.push(Arc::new(event));
    }
    Ok((out, last))
}

fn restamp(s: &Stored, rev: Revision) -> Result<Bytes, StoreError> {
    let mut v = s.value()?;
    stamp(&s.key, &mut v, rev)
}

/// Compacts etcd's history every `every`, coordinated with other API servers through the
/// version of the compaction key: whoever bumps it from the version it last saw compacts at
/// the revision of its previous round; the others only learn the new version.
async fn compactor(kv: KvClient, keys: Keys, every: Duration, timeout: Duration) {
    let key = keys.compact_key();
    let mut seen_version: i64 = 0;
    let mut last_rev: i64 = 0;
    loop {
        tokio::time::sleep(every).await;
        let txn = Txn::new()
            .when([Compare::version(
                key.clone(),
                CompareOp::Equal,
                seen_version,
            )])
            .and_then([TxnOp::put(key.clone(), last_rev.to_string(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = match timed(timeout, false, || {
            let mut c = kv.clone();
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "etcd compaction round failed");
                continue;
            }
        };
        let now = header_revision(&resp) as i64;
        if !resp.succeeded() {
            seen_version = else_get(&resp).map(|k| k.version()).unwrap_or(0);
            last_rev = now;
            continue;
        }
        seen_version += 1;
        if last_rev > 0 {
            let compact = || {
                let mut c = kv.clone();
                async move { c.compact(last_rev, None).await }
            };
            match timed(timeout, true, compact).await {
                Ok(_) => info!(revision = last_rev, "etcd compacted"),
                Err(e) => warn!(error = %e, revision = last_rev, "etcd compaction failed"),
            }
        }
        last_rev = now;
    }
}

impl Store for EtcdStore {
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
        Box::pin(self.do_create(key, obj))
    }

    fn update(
        &self,
        key: String,
        obj: serde_json::Value,
        expected: Option<Revision>,
    ) -> BoxFuture<'_, Result<Arc<Stored>, StoreError>> {
        Box::pin(self.do_update(key, obj, expected))
    }

    fn delete(
        &self,
        key: String,
        expected: Option<Revision>,
    ) -> BoxFuture<'_, Result<Arc<Stored>, StoreError>> {
        Box::pin(self.do_delete(key, expected))
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.hub.watch(prefix, after)
    }

    fn fresh(&self) -> BoxFuture<'_, Result<Revision, StoreError>> {
        Box::pin(self.do_fresh())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_both_ways() {
        let k = Keys::new("/registry");
        assert_eq!(
            k.etcd("/registry/pods/default/a"),
            "/registry/pods/default/a"
        );
        assert_eq!(
            k.store(b"/registry/pods/default/a").as_deref(),
            Some("/registry/pods/default/a")
        );
        let k = Keys::new("/sluice/c1/");
        assert_eq!(
            k.etcd("/registry/pods/default/a"),
            "/sluice/c1/pods/default/a"
        );
        assert_eq!(
            k.store(b"/sluice/c1/pods/default/a").as_deref(),
            Some("/registry/pods/default/a")
        );
        assert_eq!(k.store(b"/sluice/c1/compact_rev_key"), None);
        assert_eq!(k.store(b"/other/pods/x"), None);
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/registry/"), b"/registry0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    }

    #[test]
    fn encode_drops_the_resource_version() {
        let mut v = serde_json::json!({"metadata": {"name": "a", "resourceVersion": "7"}});
        let bytes = encode("/registry/x/a", &mut v).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, serde_json::json!({"metadata": {"name": "a"}}));
        let s = decode("/registry/x/a".into(), &bytes, 3, 9).unwrap();
        assert_eq!(s.mod_revision, 9);
        assert_eq!(s.create_revision, 3);
        assert_eq!(s.value().unwrap()["metadata"]["resourceVersion"], "9");
    }
}
