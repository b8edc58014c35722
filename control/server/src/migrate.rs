//! `sluice-control migrate`: moves a stopped control plane's objects from one store to another
//! (today: the embedded redb store into an etcd cluster), so a single-server installation can
//! grow into several API servers sharing etcd without losing its objects.
//!
//! Data flow:
//! ```text
//!  source Store ──list /registry/──► objects (key, JSON)
//!                                        │ refuse if the target already holds objects
//!                                        │ (unless overwrite), count per resource
//!                                        ▼
//!                      target Store ◄──create (or update when overwriting)── bounded concurrency
//!                                        │
//!                                        ▼
//!                   target.fresh() + list /registry/ ──► verify keys and JSON ──► MigrateReport
//! ```
//!
//! Keys are copied unchanged; the target backend maps `/registry` onto its own layout (etcd:
//! `--etcd-prefix`). Objects are copied whole, so everything that lives in them survives as is:
//! uids, creationTimestamps, and the allocations (Service clusterIPs and nodePorts, node
//! podCIDRs; the allocators rebuild their state from the objects at start-up). The one field
//! that changes is `metadata.resourceVersion`: it is the target's own revision of the key.
//!
//! [`migrate`] works on any two [`Store`]s; [`open_redb_source`] and [`open_etcd_target`] open
//! the concrete ones the CLI supports.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sluice_store::{
    EtcdOptions, EtcdStore, RedbStore, Revision, Store, StoreError, StoreOptions, Stored,
};

/// The store prefix every Kubernetes object lives under; it is what gets copied.
pub const ROOT: &str = "/registry/";

/// Name of the redb file in a data directory (as `sluice-control` serves it).
pub const REDB_FILE: &str = "store.redb";

/// Writes in flight at once: enough for etcd to batch them into few fsyncs, few enough that a
/// failure leaves a short tail of writes to wait for.
const CONCURRENCY: usize = 32;

/// Mismatches listed in a verification error (the count says how many there were in all).
const MAX_LISTED: usize = 5;

/// Errors of a migration.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// `--from` is not `redb:<path>`.
    #[error("--from {0:?}: expected redb:<data dir or path to {REDB_FILE}>")]
    BadSource(String),
    /// `--to` is not `etcd:<endpoints>`.
    #[error("--to {0:?}: expected etcd:<URL>[,<URL>...], e.g. etcd:http://127.0.0.1:2379")]
    BadTarget(String),
    /// The source store file does not exist (opening would create an empty one).
    #[error("source store {} does not exist", path.display())]
    SourceMissing {
        /// The path looked at.
        path: PathBuf,
    },
    /// The source store could not be opened; usually a running server holds it.
    #[error(
        "cannot open the source store {}: {source}; if sluice-control is running on it, stop the \
         server first (migrate copies only a stopped server's store)",
        path.display()
    )]
    SourceOpen {
        /// The store file.
        path: PathBuf,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The target store could not be opened (unreachable, TLS, ...).
    #[error("cannot open the target store: {0}")]
    TargetOpen(#[source] StoreError),
    /// Reading a store failed.
    #[error("reading the {which} store: {source}")]
    Read {
        /// `source` or `target`.
        which: &'static str,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The target already holds objects and overwriting was not asked for.
    #[error(
        "the target is not empty: it already holds {count} objects under the prefix (e.g. \
         {example}); nothing was written. Pass --overwrite-existing to replace those keys and \
         add the others (target keys are never deleted)"
    )]
    TargetNotEmpty {
        /// Objects the target holds.
        count: usize,
        /// One of their keys.
        example: String,
    },
    /// A write failed part way: the target holds some of the objects.
    #[error(
        "writing {key} failed: {source}; {written} of {total} objects were written before the \
         copy stopped. Re-run with --overwrite-existing to complete it"
    )]
    Write {
        /// The key whose write failed.
        key: String,
        /// Writes that succeeded.
        written: usize,
        /// Objects to copy.
        total: usize,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// After the copy, the target does not hold exactly the source's objects.
    #[error("verification failed: {count} mismatches between source and target: {}", listed.join("; "))]
    Verify {
        /// How many keys differ.
        count: usize,
        /// The first few of them, described.
        listed: Vec<String>,
    },
}

/// How to migrate.
#[derive(Debug, Clone, Default)]
pub struct MigrateOptions {
    /// Copy even when the target already holds objects: keys present in both are replaced
    /// by the source's object, the others added; target-only keys stay.
    pub overwrite_existing: bool,
    /// Only count what would be copied; write nothing.
    pub dry_run: bool,
}

/// What a migration did (or, for a dry run, would do).
#[derive(Debug, Clone, PartialEq)]
pub struct MigrateReport {
    /// Objects per resource (`pods`, `deployments.apps`), see [`resource_of`].
    pub per_resource: BTreeMap<String, usize>,
    /// Objects copied (dry run: to copy).
    pub total: usize,
    /// Of those, keys the target did not hold.
    pub created: usize,
    /// Of those, keys the target held and that were replaced (only with overwrite).
    pub replaced: usize,
    /// Target keys the source does not have, left untouched (only with overwrite).
    pub kept_in_target: usize,
    /// Source keys outside [`ROOT`], not copied (no Kubernetes object lives there).
    pub skipped_outside_root: usize,
    /// The source's revision the copy was read at.
    pub source_revision: Revision,
    /// The target's revision after the copy (dry run: its current one).
    pub target_revision: Revision,
    /// Time from the first read to the end of verification.
    pub elapsed: Duration,
    /// Whether nothing was written.
    pub dry_run: bool,
}

impl fmt::Display for MigrateReport {
    /// The summary `sluice-control migrate` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            writeln!(
                f,
                "dry run: nothing was written; objects that would be copied:"
            )?;
        } else {
            writeln!(f, "objects copied:")?;
        }
        let width = self.per_resource.keys().map(String::len).max().unwrap_or(0);
        for (resource, n) in &self.per_resource {
            writeln!(f, "  {resource:<width$} {n}")?;
        }
        let verb = if self.dry_run { "to copy" } else { "copied" };
        writeln!(
            f,
            "total {} objects {verb} ({} new, {} replacing existing keys) in {:.2}s",
            self.total,
            self.created,
            self.replaced,
            self.elapsed.as_secs_f64()
        )?;
        if self.kept_in_target > 0 {
            writeln!(
                f,
                "{} objects only the target had were left as they are",
                self.kept_in_target
            )?;
        }
        if self.skipped_outside_root > 0 {
            writeln!(
                f,
                "warning: {} source keys outside {ROOT} were not copied",
                self.skipped_outside_root
            )?;
        }
        if !self.dry_run {
            writeln!(
                f,
                "verified: the target holds every source key with identical JSON apart from \
                 metadata.resourceVersion"
            )?;
            writeln!(
                f,
                "note: resourceVersions are new (the target's revisions; source was at revision \
                 {}): clients must relist. uids, creationTimestamps and allocations (clusterIPs, \
                 nodePorts, podCIDRs) are unchanged",
                self.source_revision
            )?;
        }
        writeln!(f, "target revision {}", self.target_revision)
    }
}

/// The resource a store key belongs to, for the summary: `/registry/core/pods/ns/name` →
/// `pods`, `/registry/apps/deployments/ns/name` → `deployments.apps` (the qualified form
/// Status messages use). Keys that do not follow the `<group>/<plural>/…` layout count under
/// their first segment.
pub fn resource_of(key: &str) -> String {
    let rest = key.strip_prefix(ROOT).unwrap_or(key);
    let mut parts = rest.split('/');
    let first = parts.next().unwrap_or_default();
    match (parts.next(), parts.next()) {
        // At least group, plural and a name: an object of a served resource.
        (Some(plural), Some(_)) if first == "core" => plural.to_string(),
        (Some(plural), Some(_)) => format!("{plural}.{first}"),
        _ => first.to_string(),
    }
}

/// The path of `--from redb:<path>` (a data directory or the store file itself).
pub fn parse_from(arg: &str) -> Result<PathBuf, MigrateError> {
    match arg.strip_prefix("redb:") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(MigrateError::BadSource(arg.to_string())),
    }
}

/// The endpoints of `--to etcd:<URL>[,<URL>...]`.
pub fn parse_to(arg: &str) -> Result<Vec<String>, MigrateError> {
    let list = arg
        .strip_prefix("etcd:")
        .ok_or_else(|| MigrateError::BadTarget(arg.to_string()))?;
    let endpoints: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(String::from)
        .collect();
    if endpoints.is_empty() {
        return Err(MigrateError::BadTarget(arg.to_string()));
    }
    Ok(endpoints)
}

/// The store file for a `--from` path: `<dir>/store.redb` for a directory, else the path.
pub fn redb_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(REDB_FILE)
    } else {
        path.to_path_buf()
    }
}

/// Opens the redb store at `path` (a data directory or the file) to read it. Fails, without
/// creating anything, when there is no store there, and with advice to stop the server when
/// it cannot be opened: redb takes an exclusive lock, so this also guarantees no server
/// writes to it while it is copied.
pub fn open_redb_source(path: &Path) -> Result<RedbStore, MigrateError> {
    let file = redb_file(path);
    // RedbStore::open creates a missing file: check first, or a typo would "migrate" nothing.
    if !file.is_file() {
        return Err(MigrateError::SourceMissing { path: file });
    }
    RedbStore::open(&file, StoreOptions::default())
        .map_err(|source| MigrateError::SourceOpen { path: file, source })
}

/// Connects to the etcd target. The options' compaction is turned off and the watch history
/// kept minimal: the migration only writes and lists, and must not compact a cluster that
/// API servers may be about to use.
pub async fn open_etcd_target(opts: EtcdOptions) -> Result<EtcdStore, MigrateError> {
    EtcdStore::open(EtcdOptions {
        compaction_interval: None,
        history: 1,
        ..opts
    })
    .await
    .map_err(MigrateError::TargetOpen)
}

/// What one copy task ended with.
enum Written {
    Created,
    Replaced,
    /// Not attempted: an earlier write failed.
    Skipped,
}

/// The object's JSON without `metadata.resourceVersion`: what must match between the stores.
fn comparable(s: &Stored) -> Result<serde_json::Value, StoreError> {
    let mut v = s.value()?;
    if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.remove("resourceVersion");
    }
    Ok(v)
}

/// Copies every object under [`ROOT`] from `source` to `target` and verifies the result.
///
/// Refuses, writing nothing, when the target already holds objects unless
/// `opts.overwrite_existing`; never deletes target keys. A dry run makes the same checks and
/// counts but writes nothing. The source must not change meanwhile (the CLI guarantees it by
/// holding the redb lock); a target that changes meanwhile fails verification.
pub async fn migrate(
    source: &dyn Store,
    target: &dyn Store,
    opts: &MigrateOptions,
) -> Result<MigrateReport, MigrateError> {
    let started = Instant::now();
    let (objects, source_revision) = source.list(ROOT);
    let skipped_outside_root = source.list("").0.len().saturating_sub(objects.len());

    // The target as etcd has it right now, not as a possibly lagging cache.
    target.fresh().await.map_err(|source| MigrateError::Read {
        which: "target",
        source,
    })?;
    let existing: BTreeSet<String> = target.list(ROOT).0.iter().map(|s| s.key.clone()).collect();
    if let Some(example) = existing.iter().next() {
        if !opts.overwrite_existing {
            return Err(MigrateError::TargetNotEmpty {
                count: existing.len(),
                example: example.clone(),
            });
        }
    }

    let mut per_resource = BTreeMap::new();
    for s in &objects {
        *per_resource.entry(resource_of(&s.key)).or_insert(0) += 1;
    }
    // Parse everything before the first write, so a corrupt source object stops the
    // migration while the target is still untouched.
    let mut values = Vec::with_capacity(objects.len());
    for s in &objects {
        values.push((s.key.clone(), s.value().map_err(readerr("source"))?));
    }
    let source_keys: BTreeSet<&str> = objects.iter().map(|s| s.key.as_str()).collect();
    let kept_in_target = existing
        .iter()
        .filter(|k| !source_keys.contains(k.as_str()))
        .count();
    let mut report = MigrateReport {
        per_resource,
        total: objects.len(),
        created: 0,
        replaced: 0,
        kept_in_target,
        skipped_outside_root,
        source_revision,
        target_revision: 0,
        elapsed: Duration::ZERO,
        dry_run: opts.dry_run,
    };

    if opts.dry_run {
        report.replaced = objects.iter().filter(|s| existing.contains(&s.key)).count();
        report.created = report.total - report.replaced;
        report.target_revision = target.revision();
        report.elapsed = started.elapsed();
        return Ok(report);
    }

    let failed = Arc::new(AtomicBool::new(false));
    let existing = &existing;
    let mut writes = futures::stream::iter(values)
        .map(|(key, value)| {
            let failed = failed.clone();
            async move {
                // Once a write failed, start no more: the error is reported with what was
                // written, and the re-run (with overwrite) completes the copy.
                if failed.load(Ordering::Relaxed) {
                    return Ok(Written::Skipped);
                }
                let res = if existing.contains(&key) {
                    target
                        .update(key.clone(), value, None)
                        .await
                        .map(|_| Written::Replaced)
                } else {
                    target
                        .create(key.clone(), value)
                        .await
                        .map(|_| Written::Created)
                };
                res.map_err(|e| {
                    failed.store(true, Ordering::Relaxed);
                    (key, e)
                })
            }
        })
        .buffer_unordered(CONCURRENCY);
    let mut first_error = None;
    // Drain every started write, failed or not, so the count of written objects is exact.
    while let Some(r) = writes.next().await {
        match r {
            Ok(Written::Created) => report.created += 1,
            Ok(Written::Replaced) => report.replaced += 1,
            Ok(Written::Skipped) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    drop(writes);
    if let Some((key, source)) = first_error {
        return Err(MigrateError::Write {
            key,
            written: report.created + report.replaced,
            total: report.total,
            source,
        });
    }

    report.target_revision = target.fresh().await.map_err(readerr("target"))?;
    verify(&objects, target, existing)?;
    report.elapsed = started.elapsed();
    Ok(report)
}

fn readerr(which: &'static str) -> impl Fn(StoreError) -> MigrateError {
    move |source| MigrateError::Read { which, source }
}

/// Checks that the target lists exactly the source's keys (plus the keys it held before,
/// which overwrite mode leaves) with the same JSON apart from `metadata.resourceVersion`.
fn verify(
    objects: &[Arc<Stored>],
    target: &dyn Store,
    existing_before: &BTreeSet<String>,
) -> Result<(), MigrateError> {
    let copied: BTreeMap<String, Arc<Stored>> = target
        .list(ROOT)
        .0
        .into_iter()
        .map(|s| (s.key.clone(), s))
        .collect();
    let mut problems = Vec::new();
    for s in objects {
        match copied.get(&s.key) {
            None => problems.push(format!("{} is missing from the target", s.key)),
            Some(t) => {
                let want = comparable(s).map_err(readerr("source"))?;
                let got = comparable(t).map_err(readerr("target"))?;
                if want != got {
                    problems.push(format!("{} differs in the target", s.key));
                }
            }
        }
    }
    let source_keys: BTreeSet<&str> = objects.iter().map(|s| s.key.as_str()).collect();
    for k in copied.keys() {
        if !source_keys.contains(k.as_str()) && !existing_before.contains(k) {
            problems.push(format!("{k} appeared in the target during the migration"));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(MigrateError::Verify {
        count: problems.len(),
        listed: problems.into_iter().take(MAX_LISTED).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;
    use serde_json::json;
    use sluice_store::WatchStream;

    fn mem() -> RedbStore {
        RedbStore::in_memory(StoreOptions::default()).unwrap()
    }

    /// A source shaped like a real one: resources of several groups, allocations in objects,
    /// and history (an update, a delete) so its revisions differ from a fresh target's.
    async fn source() -> RedbStore {
        let s = mem();
        let objs = [
            (
                "/registry/core/namespaces/default",
                json!({"kind": "Namespace", "metadata": {"name": "default", "uid": "u-ns",
                    "creationTimestamp": "2024-01-01T00:00:00Z"}}),
            ),
            (
                "/registry/core/services/default/web",
                json!({"kind": "Service", "metadata": {"name": "web", "namespace": "default",
                    "uid": "u-svc", "creationTimestamp": "2024-01-02T00:00:00Z"},
                    "spec": {"type": "NodePort", "clusterIP": "10.96.0.17",
                    "clusterIPs": ["10.96.0.17"], "ports": [{"port": 80, "nodePort": 30080}]}}),
            ),
            (
                "/registry/core/nodes/n1",
                json!({"kind": "Node", "metadata": {"name": "n1", "uid": "u-n1"},
                    "spec": {"podCIDR": "10.244.3.0/24"}}),
            ),
            (
                "/registry/core/configmaps/default/cfg",
                json!({"kind": "ConfigMap", "metadata": {"name": "cfg", "uid": "u-cm"},
                    "data": {"a": "1"}}),
            ),
            (
                "/registry/apps/deployments/default/web",
                json!({"kind": "Deployment", "metadata": {"name": "web", "uid": "u-dep",
                    "generation": 2}, "spec": {"replicas": 3}}),
            ),
            (
                "/registry/core/configmaps/default/gone",
                json!({"kind": "ConfigMap", "metadata": {"name": "gone"}}),
            ),
        ];
        for (k, v) in objs {
            s.create(k.to_string(), v).await.unwrap();
        }
        s.update(
            "/registry/core/configmaps/default/cfg".into(),
            json!({"kind": "ConfigMap", "metadata": {"name": "cfg", "uid": "u-cm"},
                "data": {"a": "2"}}),
            None,
        )
        .await
        .unwrap();
        s.delete("/registry/core/configmaps/default/gone".into(), None)
            .await
            .unwrap();
        s
    }

    fn keys(s: &dyn Store) -> Vec<String> {
        s.list(ROOT).0.iter().map(|o| o.key.clone()).collect()
    }

    #[tokio::test]
    async fn migrate_copies_everything_but_the_resource_version() {
        let (src, dst) = (source().await, mem());
        let report = migrate(&src, &dst, &MigrateOptions::default())
            .await
            .unwrap();
        assert_eq!(report.total, 5);
        assert_eq!((report.created, report.replaced), (5, 0));
        assert!(!report.dry_run);
        assert_eq!(
            report.per_resource,
            BTreeMap::from([
                ("configmaps".to_string(), 1),
                ("deployments.apps".to_string(), 1),
                ("namespaces".to_string(), 1),
                ("nodes".to_string(), 1),
                ("services".to_string(), 1),
            ])
        );
        assert_eq!(report.source_revision, 8);
        assert_eq!(report.target_revision, dst.revision());
        assert_eq!(keys(&src), keys(&dst));
        for s in src.list(ROOT).0 {
            let t = dst.get(&s.key).unwrap();
            assert_eq!(
                comparable(&s).unwrap(),
                comparable(&t).unwrap(),
                "{}",
                s.key
            );
            assert_eq!(
                t.value().unwrap()["metadata"]["resourceVersion"],
                t.mod_revision.to_string(),
                "the target stamps its own revision"
            );
        }
        let svc = dst
            .get("/registry/core/services/default/web")
            .unwrap()
            .value()
            .unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.17");
        assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30080);
        assert_eq!(svc["metadata"]["uid"], "u-svc");
        // The updated object went over in its last state, the deleted one not at all.
        let cm = dst.get("/registry/core/configmaps/default/cfg").unwrap();
        assert_eq!(cm.value().unwrap()["data"]["a"], "2");
        let text = report.to_string();
        for want in [
            "deployments.apps 1",
            "total 5 objects copied",
            "resourceVersions are new",
            "target revision ",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }

    #[tokio::test]
    async fn migrate_refuses_a_target_with_objects() {
        let (src, dst) = (source().await, mem());
        dst.create(
            "/registry/core/configmaps/x/other".into(),
            json!({"metadata": {"name": "other"}}),
        )
        .await
        .unwrap();
        let rev = dst.revision();
        for dry_run in [false, true] {
            let opts = MigrateOptions {
                dry_run,
                ..MigrateOptions::default()
            };
            match migrate(&src, &dst, &opts).await {
                Err(MigrateError::TargetNotEmpty { count: 1, example }) => {
                    assert_eq!(example, "/registry/core/configmaps/x/other")
                }
                other => panic!("dry_run {dry_run}: {other:?}"),
            }
        }
        assert_eq!(dst.revision(), rev, "nothing was written");
        assert_eq!(keys(&dst), ["/registry/core/configmaps/x/other"]);
    }

    #[tokio::test]
    async fn migrate_overwrites_when_asked_and_keeps_target_only_keys() {
        let (src, dst) = (source().await, mem());
        dst.create(
            "/registry/core/services/default/web".into(),
            json!({"metadata": {"name": "web", "uid": "stale"}, "spec": {"clusterIP": "10.96.0.99"}}),
        )
        .await
        .unwrap();
        dst.create(
            "/registry/core/configmaps/x/other".into(),
            json!({"metadata": {"name": "other"}}),
        )
        .await
        .unwrap();
        let opts = MigrateOptions {
            overwrite_existing: true,
            ..MigrateOptions::default()
        };
        let report = migrate(&src, &dst, &opts).await.unwrap();
        assert_eq!((report.total, report.created, report.replaced), (5, 4, 1));
        assert_eq!(report.kept_in_target, 1);
        let svc = dst
            .get("/registry/core/services/default/web")
            .unwrap()
            .value()
            .unwrap();
        assert_eq!(svc["metadata"]["uid"], "u-svc");
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.17");
        assert!(dst.get("/registry/core/configmaps/x/other").is_some());
        assert_eq!(dst.list(ROOT).0.len(), 6);
        // Running it again is idempotent: everything is replaced by the same objects.
        let again = migrate(&src, &dst, &opts).await.unwrap();
        assert_eq!((again.created, again.replaced), (0, 5));
    }

    #[tokio::test]
    async fn dry_run_counts_and_writes_nothing() {
        let (src, dst) = (source().await, mem());
        let rev = dst.revision();
        let opts = MigrateOptions {
            dry_run: true,
            ..MigrateOptions::default()
        };
        let report = migrate(&src, &dst, &opts).await.unwrap();
        assert!(report.dry_run);
        assert_eq!((report.total, report.created, report.replaced), (5, 5, 0));
        assert_eq!(report.per_resource.values().sum::<usize>(), 5);
        assert_eq!(report.target_revision, rev);
        assert_eq!(dst.revision(), rev);
        assert!(keys(&dst).is_empty());
        let text = report.to_string();
        assert!(text.contains("dry run: nothing was written"), "{text}");
        assert!(!text.contains("verified"), "{text}");
    }

    #[tokio::test]
    async fn migrate_of_an_empty_source_is_empty() {
        let (src, dst) = (mem(), mem());
        let report = migrate(&src, &dst, &MigrateOptions::default())
            .await
            .unwrap();
        assert_eq!(report.total, 0);
        assert!(report.per_resource.is_empty());
        assert!(keys(&dst).is_empty());
    }

    /// A target that loses a field on every write, to prove verification looks at the JSON.
    struct Lossy(RedbStore);

    impl Store for Lossy {
        fn get(&self, key: &str) -> Option<Arc<Stored>> {
            self.0.get(key)
        }
        fn list(&self, prefix: &str) -> (Vec<Arc<Stored>>, Revision) {
            self.0.list(prefix)
        }
        fn revision(&self) -> Revision {
            self.0.revision()
        }
        fn create(
            &self,
            key: String,
            mut obj: serde_json::Value,
        ) -> BoxFuture<'_, Result<Arc<Stored>, StoreError>> {
            if let Some(spec) = obj.get_mut("spec").and_then(|s| s.as_object_mut()) {
                spec.remove("clusterIP");
            }
            self.0.create(key, obj)
        }
        fn update(
            &self,
            key: String,
            obj: serde_json::Value,
            expected: Option<Revision>,
        ) -> BoxFuture<'_, Result<Arc<Stored>, StoreError>> {
            self.0.update(key, obj, expected)
        }
        fn delete(
            &self,
            key: String,
            expected: Option<Revision>,
        ) -> BoxFuture<'_, Result<Arc<Stored>, StoreError>> {
            self.0.delete(key, expected)
        }
        fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
            self.0.watch(prefix, after)
        }
    }

    #[tokio::test]
    async fn verification_catches_a_changed_object() {
        let (src, dst) = (source().await, Lossy(mem()));
        match migrate(&src, &dst, &MigrateOptions::default()).await {
            Err(MigrateError::Verify { count: 1, listed }) => {
                assert_eq!(
                    listed,
                    ["/registry/core/services/default/web differs in the target"]
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resources_are_named_by_plural_and_group() {
        assert_eq!(resource_of("/registry/core/pods/default/web"), "pods");
        assert_eq!(resource_of("/registry/core/nodes/n1"), "nodes");
        assert_eq!(
            resource_of("/registry/coordination.k8s.io/leases/kube-system/l"),
            "leases.coordination.k8s.io"
        );
        assert_eq!(resource_of("/registry/pods/web"), "pods");
        assert_eq!(resource_of("/registry/odd"), "odd");
    }

    #[test]
    fn from_and_to_arguments() {
        assert_eq!(
            parse_from("redb:/var/lib/x").unwrap(),
            PathBuf::from("/var/lib/x")
        );
        assert!(matches!(
            parse_from("/var/lib/x"),
            Err(MigrateError::BadSource(_))
        ));
        assert!(matches!(
            parse_from("redb:"),
            Err(MigrateError::BadSource(_))
        ));
        assert_eq!(
            parse_to("etcd:http://a:2379, http://b:2379").unwrap(),
            ["http://a:2379", "http://b:2379"]
        );
        assert!(matches!(parse_to("etcd:"), Err(MigrateError::BadTarget(_))));
        assert!(matches!(
            parse_to("http://a:2379"),
            Err(MigrateError::BadTarget(_))
        ));
    }

    #[test]
    fn a_missing_source_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        match open_redb_source(dir.path()) {
            Err(MigrateError::SourceMissing { path }) => {
                assert_eq!(path, dir.path().join(REDB_FILE))
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert!(!dir.path().join(REDB_FILE).exists());
    }

    #[test]
    fn a_source_in_use_says_to_stop_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(REDB_FILE);
        let held = RedbStore::open(&file, StoreOptions::default()).unwrap();
        let err = open_redb_source(dir.path()).map(|_| ()).unwrap_err();
        assert!(matches!(err, MigrateError::SourceOpen { .. }), "{err:?}");
        assert!(err.to_string().contains("stop the server first"), "{err}");
        drop(held);
        // Once the holder is gone the same path opens.
        open_redb_source(&file).unwrap();
    }
}
