//! Taints and tolerations: matching, the DefaultTolerationSeconds admission
//! defaults, and the NoExecute eviction deadline the taint manager keeps.
//!
//! Pure functions shared by the scheduler's filter and score, the node
//! lifecycle controller (which taints nodes and evicts pods) and pod
//! admission.

use k8s_openapi::api::core::v1::{Pod, Taint, Toleration};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Taint effect: new pods that do not tolerate it are not scheduled.
pub const EFFECT_NO_SCHEDULE: &str = "NoSchedule";
/// Taint effect: the scheduler avoids the node but may still use it.
pub const EFFECT_PREFER_NO_SCHEDULE: &str = "PreferNoSchedule";
/// Taint effect: not scheduled, and running pods that do not tolerate it are
/// evicted.
pub const EFFECT_NO_EXECUTE: &str = "NoExecute";

/// Taint key the node lifecycle controller sets while a node is not ready.
pub const TAINT_NODE_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Taint key the node lifecycle controller sets while a node is unreachable.
pub const TAINT_NODE_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint key matching `spec.unschedulable` (cordon).
pub const TAINT_NODE_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// `tolerationSeconds` of the tolerations DefaultTolerationSeconds adds
/// (the admission plugin's `--default-not-ready-toleration-seconds` and
/// `--default-unreachable-toleration-seconds` defaults).
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;

/// Whether `toleration` tolerates `taint` (upstream `Toleration.ToleratesTaint`).
///
/// An empty effect matches every effect and an empty key every key; the
/// operator is `Exists` (any value) or `Equal`/empty (values equal). Unknown
/// operators tolerate nothing.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("") {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        "Exists" => true,
        _ => false,
    }
}

/// Whether any of `tolerations` tolerates `taint`.
pub fn tolerated_by_any(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

/// The DefaultTolerationSeconds admission plugin: adds
/// `node.kubernetes.io/not-ready:NoExecute` and
/// `node.kubernetes.io/unreachable:NoExecute` tolerations (operator Exists,
/// 300 s) unless the pod already has a toleration for that key (or an empty
/// key) with effect NoExecute (or an empty effect). Like upstream, the check
/// looks only at key and effect, so a pod that chose its own value or
/// duration keeps it. Idempotent.
pub fn add_default_tolerations(pod: &mut Pod) {
    let spec = pod.spec.get_or_insert_with(Default::default);
    let covers = |key: &str| {
        spec.tolerations.iter().flatten().any(|t| {
            let k = t.key.as_deref().unwrap_or("");
            let e = t.effect.as_deref().unwrap_or("");
            (k == key || k.is_empty()) && (e == EFFECT_NO_EXECUTE || e.is_empty())
        })
    };
    let missing: Vec<&str> = [TAINT_NODE_NOT_READY, TAINT_NODE_UNREACHABLE]
        .into_iter()
        .filter(|k| !covers(k))
        .collect();
    for key in missing {
        spec.tolerations
            .get_or_insert_with(Vec::new)
            .push(Toleration {
                key: Some(key.to_string()),
                operator: Some("Exists".to_string()),
                effect: Some(EFFECT_NO_EXECUTE.to_string()),
                toleration_seconds: Some(DEFAULT_TOLERATION_SECONDS),
                value: None,
            });
    }
}

/// When a pod on a node with NoExecute taints must be evicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    /// Every NoExecute taint is tolerated forever (or there is none).
    Never,
    /// Evict now: a NoExecute taint is not tolerated, or the tolerated time
    /// has already run out.
    Now,
    /// Evict at this instant unless the taints change first.
    At(Timestamp),
}

/// The NoExecute taint manager's decision for one pod on one node.
///
/// Only taints with effect NoExecute are considered (others may be passed
/// and are ignored). Any such taint no toleration tolerates means
/// [`Eviction::Now`]. Otherwise each taint is tolerated by the *first*
/// matching toleration (upstream `GetMatchingTolerations`): without
/// `tolerationSeconds` that is forever, else the pod may stay until
/// `timeAdded + tolerationSeconds` (zero or negative seconds mean at once).
/// The result is the earliest such deadline, [`Eviction::Now`] if it is not
/// after `now`.
///
/// Upstream starts the clock when the taint manager first sees the taint
/// (it keeps a timer per pod); a pure function needs a fixed start, so the
/// taint's `timeAdded` is used, which the node lifecycle controller sets
/// when it adds the taint. A taint without `timeAdded` is taken to start
/// `now`.
pub fn eviction_time(tolerations: &[Toleration], taints: &[Taint], now: Timestamp) -> Eviction {
    let mut earliest: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == EFFECT_NO_EXECUTE) {
        let Some(toleration) = tolerations.iter().find(|t| tolerates(t, taint)) else {
            return Eviction::Now;
        };
        let Some(seconds) = toleration.toleration_seconds else {
            continue;
        };
        let start = taint.time_added.as_ref().map_or(now, |t| t.0);
        // A deadline too far to represent is as good as never.
        let Ok(deadline) = start.checked_add(SignedDuration::from_secs(seconds.max(0))) else {
            continue;
        };
        earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
    }
    match earliest {
        None => Eviction::Never,
        Some(t) if t <= now => Eviction::Now,
        Some(t) => Eviction::At(t),
    }
}
