//! The Deployment controller: roll a pod template out through ReplicaSets.
//!
//! One reconcile (upstream `syncDeployment`) works on private copies of the
//! Deployment and its ReplicaSets, mutating them in the order upstream issues its
//! API calls, and at the end turns the differences into [`Action`]s:
//!
//! 1. claim ReplicaSets (adopt matching orphans, release mismatching own ones);
//! 2. a Deployment being deleted only gets its status refreshed;
//! 3. record Paused / Resumed in the Progressing condition;
//! 4. find the new ReplicaSet (template equal ignoring `pod-template-hash`) and sync
//!    its revision annotations; the rest are old ReplicaSets;
//! 5. paused, or a pure scaling event (replicas changed): scale (proportionally
//!    across ReplicaSets mid-rollout) and refresh status;
//! 6. otherwise roll out with the strategy: `RollingUpdate` (surge the new
//!    ReplicaSet, scale old ones down, unhealthy first) or `Recreate` (old to zero,
//!    wait for their pods to vanish, then the new one up), clean up history beyond
//!    `revisionHistoryLimit`, and compute status and conditions (progress deadline).
//!
//! Defaults the API server normally fills in are applied when a field is absent:
//! replicas 1, strategy RollingUpdate with maxSurge/maxUnavailable 25%,
//! revisionHistoryLimit 10, progressDeadlineSeconds 600.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentSpec, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use crate::action::{Action, Event, EventType, ObjectRef, Plan};
use crate::hash::{compute_hash, equal_ignore_hash, POD_TEMPLATE_HASH_LABEL};
use crate::util::{self, Claim, Selector};
use crate::Error;

/// Revision of a ReplicaSet (and, copied, of its Deployment).
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions of a ReplicaSet that became new again (rollback), comma separated.
pub const REVISION_HISTORY_ANNOTATION: &str = "deployment.kubernetes.io/revision-history";
/// The Deployment's replicas when the ReplicaSet was last scaled.
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
/// The Deployment's replicas + maxSurge when the ReplicaSet was last scaled
/// (the base of proportional scaling).
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";
/// Why a revision was made; copied from the Deployment to its ReplicaSets like any
/// other annotation, which is how `kubectl rollout history` shows it.
pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";
/// kubectl's client-side-apply record: large and Deployment-specific, never copied.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// The extensions/v1beta1 rollback request, never copied.
const DEPRECATED_ROLLBACK_TO: &str = "deprecated.deployment.rollback.to";
/// Upstream `--deployment-controller` default cap on the revision-history annotation.
pub const MAX_REV_HISTORY_LENGTH_IN_CHARS: usize = 2000;
/// API default of `spec.progressDeadlineSeconds`.
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i32 = 600;
/// API default of `spec.revisionHistoryLimit`.
pub const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;

/// Condition type: enough pods are available.
pub const COND_AVAILABLE: &str = "Available";
/// Condition type: the rollout is making progress (or has finished / timed out).
pub const COND_PROGRESSING: &str = "Progressing";
/// Condition type: a ReplicaSet failed to create or delete pods.
pub const COND_REPLICA_FAILURE: &str = "ReplicaFailure";
/// Available=True reason.
pub const REASON_MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
/// Available=False reason.
pub const REASON_MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
/// Progressing=True: the new ReplicaSet was just created.
pub const REASON_NEW_RS_CREATED: &str = "NewReplicaSetCreated";
/// Progressing=True: an existing new ReplicaSet was found (first time a deadline applies).
pub const REASON_FOUND_NEW_RS: &str = "FoundNewReplicaSet";
/// Progressing=True: progress was observed.
pub const REASON_RS_UPDATED: &str = "ReplicaSetUpdated";
/// Progressing=True: rollout complete; `kubectl rollout status` waits for this.
pub const REASON_NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
/// Progressing=False: no progress within progressDeadlineSeconds.
pub const REASON_TIMED_OUT: &str = "ProgressDeadlineExceeded";
/// Progressing=Unknown: paused.
pub const REASON_PAUSED: &str = "DeploymentPaused";
/// Progressing=Unknown: resumed (restarts the deadline clock).
pub const REASON_RESUMED: &str = "DeploymentResumed";

/// The plan of one Deployment reconcile.
pub type DeploymentPlan = Plan;

/// Reconciles one Deployment against the ReplicaSets and Pods of its namespace at
/// time `now`. Objects in other namespaces are ignored.
pub fn reconcile(
    d: &Deployment,
    rss_in_namespace: &[ReplicaSet],
    pods_in_namespace: &[Pod],
    now: Timestamp,
) -> Result<DeploymentPlan, Error> {
    let mut c = Ctx::new(d, rss_in_namespace, pods_in_namespace, now)?;
    c.run()?;
    Ok(c.finish())
}

/// How the rollout replaces pods.
enum Strategy {
    Recreate,
    Rolling,
}

/// One ReplicaSet of the Deployment: the version we were given (after owner
/// reference patches) and our working copy.
struct Rs {
    base: Option<ReplicaSet>,
    cur: ReplicaSet,
    deleted: bool,
}

/// Working state of one reconcile.
struct Ctx<'a> {
    d: &'a Deployment,
    spec: &'a DeploymentSpec,
    name: &'a str,
    ns: &'a str,
    uid: &'a str,
    me: ObjectRef,
    selector: Selector<'a>,
    rss_in_namespace: &'a [ReplicaSet],
    pods: &'a [Pod],
    now: Timestamp,
    replicas: i32,
    generation: i64,
    strategy: Strategy,
    max_surge: i32,
    max_unavailable: i32,
    /// Working copy of the Deployment's annotations (revision).
    annotations: BTreeMap<String, String>,
    /// Working copy of `d.status`; what upstream would have written so far.
    status: DeploymentStatus,
    rss: Vec<Rs>,
    patches: Vec<Action>,
    deletes: Vec<Action>,
    events: Vec<Action>,
    requeue: Option<Duration>,
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_status(rs: &ReplicaSet, f: fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> i32) -> i32 {
    rs.status.as_ref().map_or(0, f)
}

fn st_replicas(rs: &ReplicaSet) -> i32 {
    rs_status(rs, |s| s.replicas)
}
fn st_available(rs: &ReplicaSet) -> i32 {
    rs_status(rs, |s| s.available_replicas.unwrap_or(0))
}
fn st_ready(rs: &ReplicaSet) -> i32 {
    rs_status(rs, |s| s.ready_replicas.unwrap_or(0))
}

fn annotation<'b>(meta: &'b ObjectMeta, key: &str) -> Option<&'b str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

fn set_annotation(meta: &mut ObjectMeta, key: &str, value: String) -> bool {
    let a = meta.annotations.get_or_insert_with(BTreeMap::new);
    if a.get(key) == Some(&value) {
        return false;
    }
    a.insert(key.to_string(), value);
    true
}

/// `deploymentutil.Revision`: unparsable or missing counts as 0.
fn revision(rs: &ReplicaSet) -> i64 {
    annotation(&rs.metadata, REVISION_ANNOTATION)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn n(v: i32) -> Option<i32> {
    (v != 0).then_some(v)
}

/// Zero counters and empty lists are omitted on the wire; compare in that form.
fn normalize(mut s: DeploymentStatus) -> DeploymentStatus {
    for f in [
        &mut s.replicas,
        &mut s.updated_replicas,
        &mut s.ready_replicas,
        &mut s.available_replicas,
        &mut s.unavailable_replicas,
        &mut s.terminating_replicas,
    ] {
        if *f == Some(0) {
            *f = None;
        }
    }
    if s.observed_generation == Some(0) {
        s.observed_generation = None;
    }
    if s.conditions.as_ref().is_some_and(Vec::is_empty) {
        s.conditions = None;
    }
    s
}

fn get_cond<'b>(s: &'b DeploymentStatus, t: &str) -> Option<&'b DeploymentCondition> {
    s.conditions.as_ref()?.iter().find(|c| c.type_ == t)
}

fn remove_cond(s: &mut DeploymentStatus, t: &str) {
    if let Some(cs) = s.conditions.as_mut() {
        cs.retain(|c| c.type_ != t);
        if cs.is_empty() {
            s.conditions = None;
        }
    }
}

/// `SetDeploymentCondition`: same status and reason is a no-op (message and times
/// stay); same status keeps lastTransitionTime; the condition moves to the end.
fn set_cond(s: &mut DeploymentStatus, mut c: DeploymentCondition) {
    if let Some(cur) = get_cond(s, &c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    remove_cond(s, &c.type_);
    s.conditions.get_or_insert_with(Vec::new).push(c);
}

fn reason_of(c: Option<&DeploymentCondition>) -> Option<&str> {
    c.and_then(|c| c.reason.as_deref())
}

impl<'a> Ctx<'a> {
    fn new(
        d: &'a Deployment,
        rss_in_namespace: &'a [ReplicaSet],
        pods: &'a [Pod],
        now: Timestamp,
    ) -> Result<Self, Error> {
        let (name, ns, uid) = util::identity("Deployment", &d.metadata)?;
        let spec = d.spec.as_ref().ok_or_else(|| Error::MissingField {
            kind: "Deployment",
            name: name.to_string(),
            field: "spec",
        })?;
        let selector = Selector::new(Some(&spec.selector))?;
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let st = spec.strategy.as_ref();
        let strategy = match st.and_then(|s| s.type_.as_deref()) {
            None | Some("RollingUpdate") => Strategy::Rolling,
            Some("Recreate") => Strategy::Recreate,
            Some(other) => return Err(Error::UnknownStrategy(other.to_string())),
        };
        let (max_surge, max_unavailable) = match strategy {
            Strategy::Recreate => (0, 0),
            Strategy::Rolling => {
                let ru = st.and_then(|s| s.rolling_update.as_ref());
                let quarter = IntOrString::String("25%".into());
                let surge = ru.and_then(|r| r.max_surge.as_ref()).unwrap_or(&quarter);
                let unav = ru
                    .and_then(|r| r.max_unavailable.as_ref())
                    .unwrap_or(&quarter);
                // ResolveFenceposts: surge rounds up, unavailable down; never both 0.
                let s = util::scaled_value(surge, replicas, true)?;
                let mut u = util::scaled_value(unav, replicas, false)?;
                if s == 0 && u == 0 {
                    u = 1;
                }
                let u = if replicas == 0 { 0 } else { u.min(replicas) };
                (s, u)
            }
        };
        Ok(Ctx {
            d,
            spec,
            name,
            ns,
            uid,
            me: ObjectRef::from_meta("apps/v1", "Deployment", &d.metadata),
            selector,
            rss_in_namespace,
            pods,
            now,
            replicas,
            generation: d.metadata.generation.unwrap_or(0),
            strategy,
            max_surge,
            max_unavailable,
            annotations: d.metadata.annotations.clone().unwrap_or_default(),
            status: normalize(d.status.clone().unwrap_or_default()),
            rss: Vec::new(),
            patches: Vec::new(),
            deletes: Vec::new(),
            events: Vec::new(),
            requeue: None,
        })
    }

    fn event(&mut self, event_type: EventType, reason: &str, message: String) {
        self.events.push(Action::Event(Event {
            regarding: self.me.clone(),
            event_type,
            reason: reason.to_string(),
            message,
        }));
    }

    fn cond(&self, t: &str, status: &str, reason: &str, message: String) -> DeploymentCondition {
        let now = util::wire_time(self.now);
        DeploymentCondition {
            type_: t.to_string(),
            status: status.to_string(),
            reason: Some(reason.to_string()),
            message: Some(message),
            last_update_time: Some(now.clone()),
            last_transition_time: Some(now),
        }
    }

    fn has_progress_deadline(&self) -> bool {
        self.deadline() != i32::MAX
    }

    fn deadline(&self) -> i32 {
        self.spec
            .progress_deadline_seconds
            .unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS)
    }

    fn paused(&self) -> bool {
        self.spec.paused.unwrap_or(false)
    }

    fn run(&mut self) -> Result<(), Error> {
        if self.selector.is_empty() {
            // Selecting everything would adopt every ReplicaSet in the namespace.
            // Upstream warns on every sync; we warn once per generation so that
            // reconcile stays idempotent.
            if self.status.observed_generation.unwrap_or(0) < self.generation {
                self.event(
                    EventType::Warning,
                    "SelectingAll",
                    "This deployment is selecting all pods. A non-empty selector is required."
                        .into(),
                );
                self.status.observed_generation = (self.generation != 0).then_some(self.generation);
            }
            return Ok(());
        }
        self.claim_replica_sets();
        if self.d.metadata.deletion_timestamp.is_some() {
            let (new, olds) = self.find_new_and_old()?;
            if let Some(i) = new {
                self.sync_existing_new(i, &olds);
            }
            let all = with(&olds, new);
            self.status = self.calculate_status(&all, new);
            return Ok(());
        }
        self.check_paused_conditions();
        let (new, olds) = self.find_new_and_old()?;
        if let Some(i) = new {
            self.sync_existing_new(i, &olds);
        }
        if self.paused() || self.is_scaling_event(new, &olds) {
            self.sync(new, olds);
            return Ok(());
        }
        match self.strategy {
            Strategy::Recreate => self.rollout_recreate(new, olds),
            Strategy::Rolling => {
                let new = match new {
                    Some(i) => i,
                    None => match self.create_new(&olds)? {
                        Some(i) => i,
                        None => return Ok(()),
                    },
                };
                self.rollout_rolling(new, olds);
                Ok(())
            }
        }
    }

    // ---- ReplicaSet ownership and lookup -------------------------------------------

    fn claim_replica_sets(&mut self) {
        for rs in self.rss_in_namespace {
            if rs.metadata.namespace.as_deref() != Some(self.ns) {
                continue;
            }
            let matches = self.selector.matches(rs.metadata.labels.as_ref());
            match util::claim(
                &self.d.metadata,
                "Deployment",
                self.uid,
                &rs.metadata,
                matches,
            ) {
                Claim::Owned => self.rss.push(Rs {
                    base: Some(rs.clone()),
                    cur: rs.clone(),
                    deleted: false,
                }),
                Claim::Adopt(refs) => {
                    self.patches.push(Action::PatchOwnerRefs {
                        target: ObjectRef::from_meta("apps/v1", "ReplicaSet", &rs.metadata),
                        owner_references: refs.clone(),
                    });
                    // The patch is the baseline: later updates carry it, and an
                    // adoption alone is not an update.
                    let mut adopted = rs.clone();
                    adopted.metadata.owner_references = Some(refs);
                    self.rss.push(Rs {
                        base: Some(adopted.clone()),
                        cur: adopted,
                        deleted: false,
                    });
                }
                Claim::Release(refs) => self.patches.push(Action::PatchOwnerRefs {
                    target: ObjectRef::from_meta("apps/v1", "ReplicaSet", &rs.metadata),
                    owner_references: refs,
                }),
                Claim::Ignore => {}
            }
        }
    }

    /// Creation time for ordering; a ReplicaSet created in this pass is the newest.
    fn created(&self, i: usize) -> Option<Timestamp> {
        let r = &self.rss[i];
        match (&r.cur.metadata.creation_timestamp, &r.base) {
            (Some(t), _) => Some(t.0),
            (None, None) => Some(self.now),
            (None, Some(_)) => None,
        }
    }

    /// `ReplicaSetsByCreationTimestamp`: older first, then by name.
    fn by_creation(&self, a: usize, b: usize) -> std::cmp::Ordering {
        self.created(a).cmp(&self.created(b)).then_with(|| {
            self.rss[a]
                .cur
                .metadata
                .name
                .cmp(&self.rss[b].cur.metadata.name)
        })
    }

    fn sort_by_creation(&self, v: &mut [usize]) {
        v.sort_by(|a, b| self.by_creation(*a, *b));
    }

    fn spec_of(&self, i: usize) -> i32 {
        spec_replicas(&self.rss[i].cur)
    }

    fn rs_name(&self, i: usize) -> String {
        self.rss[i].cur.metadata.name.clone().unwrap_or_default()
    }

    /// `FindNewReplicaSet` / `FindOldReplicaSets`: the oldest ReplicaSet whose
    /// template equals ours ignoring the hash label is new; all others are old.
    fn find_new_and_old(&self) -> Result<(Option<usize>, Vec<usize>), Error> {
        let mut live: Vec<usize> = (0..self.rss.len())
            .filter(|i| !self.rss[*i].deleted)
            .collect();
        self.sort_by_creation(&mut live);
        let mut new = None;
        for &i in &live {
            if let Some(t) = self.rss[i]
                .cur
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
            {
                if equal_ignore_hash(t, &self.spec.template)? {
                    new = Some(i);
                    break;
                }
            }
        }
        let olds = live.into_iter().filter(|i| Some(*i) != new).collect();
        Ok((new, olds))
    }

    fn max_revision(&self, olds: &[usize]) -> i64 {
        olds.iter()
            .map(|i| revision(&self.rss[*i].cur))
            .max()
            .unwrap_or(0)
    }

    // ---- Annotations ---------------------------------------------------------------

    /// Copies the Deployment's annotations onto a ReplicaSet, except the ones that
    /// are per-object (revision bookkeeping, kubectl's last-applied record).
    fn copy_annotations(&mut self, i: usize) -> bool {
        let mut changed = false;
        let src: Vec<(String, String)> = self
            .annotations
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    LAST_APPLIED_ANNOTATION
                        | REVISION_ANNOTATION
                        | REVISION_HISTORY_ANNOTATION
                        | DESIRED_REPLICAS_ANNOTATION
                        | MAX_REPLICAS_ANNOTATION
                        | DEPRECATED_ROLLBACK_TO
                )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in src {
            changed |= set_annotation(&mut self.rss[i].cur.metadata, &k, v);
        }
        changed
    }

    fn set_replicas_annotations(&mut self, i: usize) -> bool {
        let (desired, max) = (self.replicas, self.replicas + self.max_surge);
        let m = &mut self.rss[i].cur.metadata;
        let a = set_annotation(m, DESIRED_REPLICAS_ANNOTATION, desired.to_string());
        let b = set_annotation(m, MAX_REPLICAS_ANNOTATION, max.to_string());
        a | b
    }

    fn replicas_annotations_need_update(&self, i: usize) -> bool {
        let m = &self.rss[i].cur.metadata;
        annotation(m, DESIRED_REPLICAS_ANNOTATION) != Some(self.replicas.to_string().as_str())
            || annotation(m, MAX_REPLICAS_ANNOTATION)
                != Some((self.replicas + self.max_surge).to_string().as_str())
    }

    /// `SetNewReplicaSetAnnotations`: copy annotations, raise the revision to
    /// `new_revision` (remembering the previous one in revision-history, trimmed from
    /// the front to [`MAX_REV_HISTORY_LENGTH_IN_CHARS`]) and, for a ReplicaSet about
    /// to be created, set the replicas annotations.
    fn set_new_rs_annotations(&mut self, i: usize, new_revision: i64, exists: bool) -> bool {
        let mut changed = self.copy_annotations(i);
        let old = annotation(&self.rss[i].cur.metadata, REVISION_ANNOTATION).map(str::to_string);
        let old_int = match old.as_deref() {
            None | Some("") => 0,
            Some(v) => match v.parse::<i64>() {
                Ok(v) => v,
                // Upstream leaves a ReplicaSet with a garbled revision alone.
                Err(_) => return changed,
            },
        };
        if old_int < new_revision {
            let m = &mut self.rss[i].cur.metadata;
            set_annotation(m, REVISION_ANNOTATION, new_revision.to_string());
            changed = true;
            if let Some(old) = old.filter(|o| !o.is_empty()) {
                // Becoming new again means a rollback: keep the old number.
                let hist = annotation(m, REVISION_HISTORY_ANNOTATION)
                    .unwrap_or("")
                    .to_string();
                if hist.is_empty() {
                    set_annotation(m, REVISION_HISTORY_ANNOTATION, old);
                } else {
                    let mut parts: Vec<&str> = hist.split(',').collect();
                    let mut total = hist.len() + old.len() + 1;
                    let mut start = 0;
                    while total > MAX_REV_HISTORY_LENGTH_IN_CHARS && start < parts.len() {
                        total -= parts[start].len() + 1;
                        start += 1;
                    }
                    if total <= MAX_REV_HISTORY_LENGTH_IN_CHARS {
                        parts = parts.split_off(start);
                        parts.push(&old);
                        let joined = parts.join(",");
                        set_annotation(m, REVISION_HISTORY_ANNOTATION, joined);
                    }
                }
            }
        }
        if !exists && self.set_replicas_annotations(i) {
            changed = true;
        }
        changed
    }

    fn set_deployment_revision(&mut self, rev: &str) {
        if self
            .annotations
            .get(REVISION_ANNOTATION)
            .map(String::as_str)
            != Some(rev)
        {
            self.annotations
                .insert(REVISION_ANNOTATION.to_string(), rev.to_string());
        }
    }

    /// The existing-new-ReplicaSet half of `getNewReplicaSet`.
    fn sync_existing_new(&mut self, i: usize, olds: &[usize]) {
        let new_revision = self.max_revision(olds) + 1;
        self.set_new_rs_annotations(i, new_revision, true);
        let want = self.spec.min_ready_seconds;
        if let Some(s) = self.rss[i].cur.spec.as_mut() {
            if s.min_ready_seconds.unwrap_or(0) != want.unwrap_or(0) {
                s.min_ready_seconds = want;
            }
        }
        if let Some(rev) =
            annotation(&self.rss[i].cur.metadata, REVISION_ANNOTATION).map(str::to_string)
        {
            self.set_deployment_revision(&rev);
        }
        if self.has_progress_deadline() && get_cond(&self.status, COND_PROGRESSING).is_none() {
            let msg = format!("Found new replica set {:?}", self.rs_name(i));
            let c = self.cond(COND_PROGRESSING, "True", REASON_FOUND_NEW_RS, msg);
            set_cond(&mut self.status, c);
        }
    }

    /// The create half of `getNewReplicaSet`. `None` when a ReplicaSet with the
    /// computed name exists but is not ours (a hash collision: collisionCount is
    /// bumped so the next reconcile computes a different name).
    fn create_new(&mut self, olds: &[usize]) -> Result<Option<usize>, Error> {
        let mut template = self.spec.template.clone();
        let hash = compute_hash(&template, self.status.collision_count)?;
        let rs_name = format!("{}-{}", self.name, hash);
        if let Some(existing) = self.rss_in_namespace.iter().find(|r| {
            r.metadata.namespace.as_deref() == Some(self.ns)
                && r.metadata.name.as_deref() == Some(&rs_name)
        }) {
            let ours = util::controller_of(&existing.metadata).is_some_and(|c| c.uid == self.uid);
            let same = match existing.spec.as_ref().and_then(|s| s.template.as_ref()) {
                Some(t) => equal_ignore_hash(t, &self.spec.template)?,
                None => false,
            };
            if !(ours && same) {
                self.status.collision_count = Some(self.status.collision_count.unwrap_or(0) + 1);
            }
            // Ours-and-equal but not claimed (e.g. being deleted): wait for it.
            return Ok(None);
        }
        let mut labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(POD_TEMPLATE_HASH_LABEL.to_string(), hash.clone());
        template
            .metadata
            .get_or_insert_with(ObjectMeta::default)
            .labels = Some(labels.clone());
        let mut selector: LabelSelector = self.spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH_LABEL.to_string(), hash);
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(rs_name.clone()),
                namespace: Some(self.ns.to_string()),
                labels: Some(labels),
                owner_references: Some(vec![util::new_controller_ref(
                    "Deployment",
                    self.name,
                    self.uid,
                )]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: self.spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        self.rss.push(Rs {
            base: None,
            cur: rs,
            deleted: false,
        });
        let i = self.rss.len() - 1;
        let all = with(olds, Some(i));
        let count = self.new_rs_new_replicas(&all, i);
        if let Some(s) = self.rss[i].cur.spec.as_mut() {
            s.replicas = Some(count);
        }
        let new_revision = self.max_revision(olds) + 1;
        self.set_new_rs_annotations(i, new_revision, false);
        if count > 0 {
            self.event(
                EventType::Normal,
                "ScalingReplicaSet",
                format!("Scaled up replica set {rs_name} from 0 to {count}"),
            );
        }
        self.set_deployment_revision(&new_revision.to_string());
        if self.has_progress_deadline() {
            let msg = format!("Created new replica set {rs_name:?}");
            let c = self.cond(COND_PROGRESSING, "True", REASON_NEW_RS_CREATED, msg);
            set_cond(&mut self.status, c);
        }
        Ok(Some(i))
    }

    // ---- Scaling -------------------------------------------------------------------

    /// `NewRSNewReplicas`: how big the new ReplicaSet may be now.
    fn new_rs_new_replicas(&self, all: &[usize], new: usize) -> i32 {
        let cur = self.spec_of(new);
        match self.strategy {
            Strategy::Recreate => self.replicas,
            Strategy::Rolling => {
                let pods: i32 = all.iter().map(|i| self.spec_of(*i)).sum();
                let max_total = self.replicas + self.max_surge;
                if pods >= max_total {
                    return cur;
                }
                cur + (max_total - pods).min(self.replicas - cur)
            }
        }
    }

    /// `scaleReplicaSet`: set replicas and the replicas annotations; event on a
    /// size change. Returns whether the size changed.
    fn scale_rs(&mut self, i: usize, new_scale: i32) -> bool {
        let old = self.spec_of(i);
        let size = old != new_scale;
        if !size && !self.replicas_annotations_need_update(i) {
            return false;
        }
        if let Some(s) = self.rss[i].cur.spec.as_mut() {
            s.replicas = Some(new_scale);
        }
        self.set_replicas_annotations(i);
        if size {
            let op = if old < new_scale { "up" } else { "down" };
            let name = self.rs_name(i);
            self.event(
                EventType::Normal,
                "ScalingReplicaSet",
                format!("Scaled {op} replica set {name} from {old} to {new_scale}"),
            );
        }
        size
    }

    /// `scaleReplicaSetAndRecordEvent`: nothing at all when the size is right.
    fn scale_and_record(&mut self, i: usize, new_scale: i32) -> bool {
        if self.spec_of(i) == new_scale {
            return false;
        }
        self.scale_rs(i, new_scale)
    }

    fn active(&self, v: &[usize]) -> Vec<usize> {
        v.iter().copied().filter(|i| self.spec_of(*i) > 0).collect()
    }

    /// `isScalingEvent`: an active ReplicaSet was sized for a different replicas.
    fn is_scaling_event(&self, new: Option<usize>, olds: &[usize]) -> bool {
        self.active(&with(olds, new)).into_iter().any(|i| {
            annotation(&self.rss[i].cur.metadata, DESIRED_REPLICAS_ANNOTATION)
                .and_then(|v| v.parse::<i32>().ok())
                .is_some_and(|desired| desired != self.replicas)
        })
    }

    /// `IsSaturated`: the new ReplicaSet has and shows all replicas.
    fn is_saturated(&self, new: Option<usize>) -> bool {
        let Some(i) = new else { return false };
        let rs = &self.rss[i].cur;
        let desired = annotation(&rs.metadata, DESIRED_REPLICAS_ANNOTATION)
            .and_then(|v| v.parse::<i32>().ok());
        spec_replicas(rs) == self.replicas
            && desired == Some(self.replicas)
            && st_available(rs) == self.replicas
    }

    /// `sync`: scaling (also while paused) and status.
    fn sync(&mut self, new: Option<usize>, olds: Vec<usize>) {
        self.scale(new, olds.clone());
        if self.paused() {
            self.cleanup(&olds);
        }
        let all = with(&olds, new);
        self.status = self.calculate_status(&all, new);
    }

    /// `scale`: one active ReplicaSet takes all replicas; a saturated new one
    /// retires the old ones; otherwise a rolling Deployment's change in replicas is
    /// spread proportionally over the active ReplicaSets.
    fn scale(&mut self, new: Option<usize>, mut olds: Vec<usize>) {
        // FindActiveOrLatest.
        olds.sort_by(|a, b| self.by_creation(*b, *a));
        if new.is_some() || !olds.is_empty() {
            let all_active = self.active(&with(&olds, new));
            let target = match all_active.len() {
                0 => new.or(olds.first().copied()),
                1 => Some(all_active[0]),
                _ => None,
            };
            if let Some(i) = target {
                if self.spec_of(i) != self.replicas {
                    self.scale_and_record(i, self.replicas);
                }
                return;
            }
        }
        if self.is_saturated(new) {
            for i in self.active(&olds) {
                self.scale_and_record(i, 0);
            }
            return;
        }
        if !matches!(self.strategy, Strategy::Rolling) {
            return;
        }
        let mut all = self.active(&with(&olds, new));
        let total: i32 = all.iter().map(|i| self.spec_of(*i)).sum();
        let allowed = if self.replicas > 0 {
            self.replicas + self.max_surge
        } else {
            0
        };
        let to_add = allowed - total;
        // Larger first; on equal size newer first when growing, older first when
        // shrinking.
        if to_add > 0 {
            all.sort_by(|a, b| {
                self.spec_of(*b)
                    .cmp(&self.spec_of(*a))
                    .then_with(|| self.by_creation(*b, *a))
            });
        } else if to_add < 0 {
            all.sort_by(|a, b| {
                self.spec_of(*b)
                    .cmp(&self.spec_of(*a))
                    .then_with(|| self.by_creation(*a, *b))
            });
        }
        let mut added = 0;
        let mut sizes = Vec::with_capacity(all.len());
        for &i in &all {
            if to_add != 0 {
                let p = self.proportion(i, to_add, added);
                sizes.push(self.spec_of(i) + p);
                added += p;
            } else {
                sizes.push(self.spec_of(i));
            }
        }
        for (k, &i) in all.iter().enumerate() {
            if k == 0 && to_add != 0 {
                // Leftovers from rounding go to the largest ReplicaSet.
                sizes[0] = (sizes[0] + to_add - added).max(0);
            }
            self.scale_rs(i, sizes[k]);
        }
    }

    /// `GetReplicaSetProportion`: this ReplicaSet's share of `to_add`, bounded by
    /// what is still left to add (or remove).
    fn proportion(&self, i: usize, to_add: i32, added: i32) -> i32 {
        let size = self.spec_of(i);
        if size == 0 || to_add == 0 || to_add == added {
            return 0;
        }
        let fraction = if self.replicas == 0 {
            -size
        } else {
            let max_now = self.replicas + self.max_surge;
            let annotated = annotation(&self.rss[i].cur.metadata, MAX_REPLICAS_ANNOTATION)
                .and_then(|v| v.parse::<i32>().ok())
                .filter(|v| *v != 0)
                .unwrap_or(self.status.replicas.unwrap_or(0));
            if annotated == 0 {
                0
            } else {
                let scaled = f64::from(size) * f64::from(max_now) / f64::from(annotated);
                scaled.round() as i32 - size
            }
        };
        let allowed = to_add - added;
        if to_add > 0 {
            fraction.min(allowed)
        } else {
            fraction.max(allowed)
        }
    }

    // ---- RollingUpdate ---------------------------------------------------------------

    fn rollout_rolling(&mut self, new: usize, olds: Vec<usize>) {
        let all = with(&olds, Some(new));
        if self.reconcile_new_rs(&all, new) {
            self.sync_rollout_status(&all, Some(new));
            return;
        }
        let active_olds = self.active(&olds);
        if self.reconcile_old_rss(&olds, active_olds, new) {
            self.sync_rollout_status(&all, Some(new));
            return;
        }
        if self.deployment_complete(&self.status.clone()) {
            self.cleanup(&olds);
        }
        self.sync_rollout_status(&all, Some(new));
    }

    /// `reconcileNewReplicaSet`: shrink an oversized new ReplicaSet, or grow it
    /// within maxSurge.
    fn reconcile_new_rs(&mut self, all: &[usize], new: usize) -> bool {
        let cur = self.spec_of(new);
        if cur == self.replicas {
            return false;
        }
        if cur > self.replicas {
            return self.scale_and_record(new, self.replicas);
        }
        let count = self.new_rs_new_replicas(all, new);
        self.scale_and_record(new, count)
    }

    /// `reconcileOldReplicaSets`: scale old ReplicaSets down as far as availability
    /// allows, unhealthy replicas first (they do not count as available anyway and
    /// would otherwise block the rollout).
    fn reconcile_old_rss(&mut self, olds: &[usize], active_olds: Vec<usize>, new: usize) -> bool {
        let old_pods: i32 = active_olds.iter().map(|i| self.spec_of(*i)).sum();
        if old_pods == 0 {
            return false;
        }
        let all_pods: i32 = with(olds, Some(new)).iter().map(|i| self.spec_of(*i)).sum();
        let min_available = self.replicas - self.max_unavailable;
        let new_rs = &self.rss[new].cur;
        let new_unavailable = spec_replicas(new_rs) - st_available(new_rs);
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return false;
        }
        let cleaned = self.cleanup_unhealthy(active_olds.clone(), max_scaled_down);
        let scaled = self.scale_down_old_for_rolling(olds, active_olds, new);
        cleaned + scaled > 0
    }

    fn cleanup_unhealthy(&mut self, mut olds: Vec<usize>, max_cleanup: i32) -> i32 {
        self.sort_by_creation(&mut olds);
        let mut total = 0;
        for i in olds {
            if total >= max_cleanup {
                break;
            }
            let (spec, avail) = (self.spec_of(i), st_available(&self.rss[i].cur));
            // Upstream errors out when available exceeds spec (stale status); skip.
            if spec == 0 || avail >= spec {
                continue;
            }
            let down = (max_cleanup - total).min(spec - avail);
            self.scale_and_record(i, spec - down);
            total += down;
        }
        total
    }

    fn scale_down_old_for_rolling(
        &mut self,
        olds: &[usize],
        mut active_olds: Vec<usize>,
        new: usize,
    ) -> i32 {
        let min_available = self.replicas - self.max_unavailable;
        let available: i32 = with(olds, Some(new))
            .iter()
            .map(|i| st_available(&self.rss[*i].cur))
            .sum();
        if available <= min_available {
            return 0;
        }
        self.sort_by_creation(&mut active_olds);
        let want = available - min_available;
        let mut total = 0;
        for i in active_olds {
            if total >= want {
                break;
            }
            let spec = self.spec_of(i);
            if spec == 0 {
                continue;
            }
            let down = spec.min(want - total);
            self.scale_and_record(i, spec - down);
            total += down;
        }
        total
    }

    // ---- Recreate ----------------------------------------------------------------------

    fn rollout_recreate(&mut self, new: Option<usize>, olds: Vec<usize>) -> Result<(), Error> {
        let all = with(&olds, new);
        let mut scaled_down = false;
        for i in self.active(&olds) {
            scaled_down |= self.scale_and_record(i, 0);
        }
        if scaled_down || self.old_pods_running(new, &olds) {
            self.sync_rollout_status(&all, new);
            return Ok(());
        }
        let new = match new {
            Some(i) => i,
            None => match self.create_new(&olds)? {
                Some(i) => i,
                None => return Ok(()),
            },
        };
        let all = with(&olds, Some(new));
        self.scale_and_record(new, self.replicas);
        if self.deployment_complete(&self.status.clone()) {
            self.cleanup(&olds);
        }
        self.sync_rollout_status(&all, Some(new));
        Ok(())
    }

    /// `oldPodsRunning`: old ReplicaSets report pods, or some non-terminal pod of
    /// ours still belongs to an old ReplicaSet (terminating pods count: Recreate
    /// promises the old pods are gone before new ones start).
    fn old_pods_running(&self, new: Option<usize>, olds: &[usize]) -> bool {
        if olds
            .iter()
            .map(|i| st_replicas(&self.rss[*i].cur))
            .sum::<i32>()
            > 0
        {
            return true;
        }
        let new_uid = new.and_then(|i| self.rss[i].cur.metadata.uid.clone());
        let old_uids: Vec<&str> = olds
            .iter()
            .filter_map(|i| self.rss[*i].cur.metadata.uid.as_deref())
            .collect();
        self.pods.iter().any(|p| {
            p.metadata.namespace.as_deref() == Some(self.ns)
                && self.selector.matches(p.metadata.labels.as_ref())
                && util::controller_of(&p.metadata).is_some_and(|c| {
                    old_uids.contains(&c.uid.as_str()) && Some(&c.uid) != new_uid.as_ref()
                })
                && !matches!(util::phase(p), "Failed" | "Succeeded")
        })
    }

    // ---- History -------------------------------------------------------------------------

    /// `cleanupDeployment`: delete the oldest revisions beyond revisionHistoryLimit,
    /// only ReplicaSets that are fully scaled down and observed so.
    fn cleanup(&mut self, olds: &[usize]) {
        let limit = self
            .spec
            .revision_history_limit
            .unwrap_or(DEFAULT_REVISION_HISTORY_LIMIT);
        if limit == i32::MAX {
            return;
        }
        let mut cleanable: Vec<usize> = olds
            .iter()
            .copied()
            .filter(|i| {
                !self.rss[*i].deleted && self.rss[*i].cur.metadata.deletion_timestamp.is_none()
            })
            .collect();
        let diff = cleanable.len() as i64 - i64::from(limit.max(0));
        if diff <= 0 {
            return;
        }
        cleanable.sort_by(|a, b| {
            revision(&self.rss[*a].cur)
                .cmp(&revision(&self.rss[*b].cur))
                .then_with(|| self.by_creation(*a, *b))
        });
        for &i in cleanable.iter().take(diff as usize) {
            let rs = &self.rss[i].cur;
            let observed = rs
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            if st_replicas(rs) != 0
                || spec_replicas(rs) != 0
                || rs.metadata.generation.unwrap_or(0) > observed
            {
                continue;
            }
            self.deletes.push(Action::DeleteReplicaSet {
                namespace: self.ns.to_string(),
                name: rs.metadata.name.clone().unwrap_or_default(),
                uid: rs.metadata.uid.clone().unwrap_or_default(),
            });
            self.rss[i].deleted = true;
        }
    }

    // ---- Status --------------------------------------------------------------------------

    fn check_paused_conditions(&mut self) {
        if !self.has_progress_deadline() {
            return;
        }
        let reason = reason_of(get_cond(&self.status, COND_PROGRESSING));
        if reason == Some(REASON_TIMED_OUT) {
            return;
        }
        let paused_exists = reason == Some(REASON_PAUSED);
        let c = if self.paused() && !paused_exists {
            self.cond(
                COND_PROGRESSING,
                "Unknown",
                REASON_PAUSED,
                "Deployment is paused".into(),
            )
        } else if !self.paused() && paused_exists {
            self.cond(
                COND_PROGRESSING,
                "Unknown",
                REASON_RESUMED,
                "Deployment is resumed".into(),
            )
        } else {
            return;
        };
        set_cond(&mut self.status, c);
    }

    fn deployment_complete(&self, s: &DeploymentStatus) -> bool {
        s.updated_replicas.unwrap_or(0) == self.replicas
            && s.replicas.unwrap_or(0) == self.replicas
            && s.available_replicas.unwrap_or(0) == self.replicas
            && s.observed_generation.unwrap_or(0) >= self.generation
    }

    /// `DeploymentProgressing`: more updated / ready / available pods or fewer old
    /// ones than last recorded.
    fn deployment_progressing(&self, s: &DeploymentStatus) -> bool {
        let o = &self.status;
        let g = |v: Option<i32>| v.unwrap_or(0);
        let old_old = g(o.replicas) - g(o.updated_replicas);
        let new_old = g(s.replicas) - g(s.updated_replicas);
        g(s.updated_replicas) > g(o.updated_replicas)
            || new_old < old_old
            || g(s.ready_replicas) > g(o.ready_replicas)
            || g(s.available_replicas) > g(o.available_replicas)
    }

    fn deployment_timed_out(&self, s: &DeploymentStatus) -> bool {
        let Some(c) = get_cond(s, COND_PROGRESSING) else {
            return false;
        };
        match c.reason.as_deref() {
            Some(REASON_NEW_RS_AVAILABLE) => false,
            Some(REASON_TIMED_OUT) => true,
            // A missing time is Go's zero time: long past any deadline.
            _ => c
                .last_update_time
                .as_ref()
                .is_none_or(|t| t.0 + util::secs(self.deadline()) < self.now),
        }
    }

    /// `calculateStatus`: counts from the ReplicaSets plus the Available condition.
    fn calculate_status(&self, all: &[usize], new: Option<usize>) -> DeploymentStatus {
        let sum =
            |f: fn(&ReplicaSet) -> i32| -> i32 { all.iter().map(|i| f(&self.rss[*i].cur)).sum() };
        let available = sum(st_available);
        let total = sum(spec_replicas);
        let mut s = DeploymentStatus {
            observed_generation: (self.generation != 0).then_some(self.generation),
            replicas: n(sum(st_replicas)),
            updated_replicas: new.and_then(|i| n(st_replicas(&self.rss[i].cur))),
            ready_replicas: n(sum(st_ready)),
            available_replicas: n(available),
            unavailable_replicas: n((total - available).max(0)),
            collision_count: self.status.collision_count,
            conditions: self.status.conditions.clone(),
            terminating_replicas: None,
        };
        let c = if available >= self.replicas - self.max_unavailable {
            self.cond(
                COND_AVAILABLE,
                "True",
                REASON_MIN_AVAILABLE,
                "Deployment has minimum availability.".into(),
            )
        } else {
            self.cond(
                COND_AVAILABLE,
                "False",
                REASON_MIN_UNAVAILABLE,
                "Deployment does not have minimum availability.".into(),
            )
        };
        set_cond(&mut s, c);
        s
    }

    /// `syncRolloutStatus`: status plus the Progressing condition and the
    /// ReplicaFailure condition mirrored from the ReplicaSets.
    fn sync_rollout_status(&mut self, all: &[usize], new: Option<usize>) {
        let mut s = self.calculate_status(all, new);
        if !self.has_progress_deadline() {
            remove_cond(&mut s, COND_PROGRESSING);
        }
        let current = get_cond(&self.status, COND_PROGRESSING).cloned();
        let complete_before = s.replicas == s.updated_replicas
            && reason_of(current.as_ref()) == Some(REASON_NEW_RS_AVAILABLE);
        let rs_name = new.map(|i| self.rs_name(i));
        let msg = |what: &str| match &rs_name {
            Some(n) => format!("ReplicaSet {n:?} {what}"),
            None => format!("Deployment {:?} {what}", self.name),
        };
        if self.has_progress_deadline() && !complete_before {
            if self.deployment_complete(&s) {
                let c = self.cond(
                    COND_PROGRESSING,
                    "True",
                    REASON_NEW_RS_AVAILABLE,
                    msg("has successfully progressed."),
                );
                set_cond(&mut s, c);
            } else if self.deployment_progressing(&s) {
                let mut c = self.cond(
                    COND_PROGRESSING,
                    "True",
                    REASON_RS_UPDATED,
                    msg("is progressing."),
                );
                // Progress refreshes lastUpdateTime even with the same reason, which
                // is what restarts the deadline clock.
                if let Some(cur) = &current {
                    if cur.status == "True" {
                        c.last_transition_time = cur.last_transition_time.clone();
                    }
                    remove_cond(&mut s, COND_PROGRESSING);
                }
                set_cond(&mut s, c);
            } else if self.deployment_timed_out(&s) {
                let c = self.cond(
                    COND_PROGRESSING,
                    "False",
                    REASON_TIMED_OUT,
                    msg("has timed out progressing."),
                );
                set_cond(&mut s, c);
            }
        }
        let failure = new
            .into_iter()
            .chain(all.iter().copied().filter(|i| Some(*i) != new))
            .find_map(|i| {
                self.rss[i]
                    .cur
                    .status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .find(|c| c.type_ == COND_REPLICA_FAILURE)
                    .cloned()
            });
        match failure {
            Some(f) => set_cond(
                &mut s,
                DeploymentCondition {
                    type_: COND_REPLICA_FAILURE.into(),
                    status: f.status,
                    reason: f.reason,
                    message: f.message,
                    last_update_time: f.last_transition_time.clone(),
                    last_transition_time: f.last_transition_time,
                },
            ),
            None => remove_cond(&mut s, COND_REPLICA_FAILURE),
        }
        // requeueStuckDeployment: look again when the deadline would pass.
        if self.has_progress_deadline() && !self.deployment_complete(&s) {
            if let Some(c) = get_cond(&s, COND_PROGRESSING) {
                if c.reason.as_deref() != Some(REASON_TIMED_OUT) {
                    if let Some(t) = &c.last_update_time {
                        let left = (t.0 + util::secs(self.deadline())).duration_since(self.now);
                        let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
                        // "Strictly after the deadline", hence the extra second.
                        self.requeue = Some(left + Duration::from_secs(1));
                    }
                }
            }
        }
        self.status = s;
    }

    // ---- Output --------------------------------------------------------------------------

    fn finish(self) -> Plan {
        let mut actions = self.patches;
        let mut updates = Vec::new();
        for r in self.rss {
            if r.deleted {
                continue;
            }
            match r.base {
                None => actions.push(Action::CreateReplicaSet(r.cur)),
                Some(base) if base != r.cur => updates.push(Action::UpdateReplicaSet(r.cur)),
                Some(_) => {}
            }
        }
        actions.extend(updates);
        actions.extend(self.deletes);
        let mut d = self.d.clone();
        let input_annotations = d.metadata.annotations.clone().unwrap_or_default();
        if input_annotations != self.annotations {
            d.metadata.annotations = Some(self.annotations);
            actions.push(Action::UpdateDeployment(d.clone()));
        }
        if normalize(self.d.status.clone().unwrap_or_default()) != self.status {
            d.status = Some(self.status);
            actions.push(Action::UpdateDeploymentStatus(d));
        }
        actions.extend(self.events);
        Plan {
            actions,
            requeue_after: self.requeue,
        }
    }
}

/// `append(olds, new)` with a possibly missing new ReplicaSet.
fn with(olds: &[usize], new: Option<usize>) -> Vec<usize> {
    let mut v = olds.to_vec();
    v.extend(new);
    v
}
