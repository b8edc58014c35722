//! The networking controllers, run in-process beside the API server.
//!
//! Each controller is level-triggered: it watches the store, maps events to keys it must
//! reconcile, and reconciles a key from current state through the [`Registry`] (so its writes
//! are validated and versioned like a client's). A lagging watch or a start-up triggers a full
//! resync; failed reconciles are retried.
//!
//! - `endpointslice`: Services × Pods × Nodes → EndpointSlices and legacy Endpoints.
//! - `nodeipam`: a podCIDR from `--cluster-cidr` for every Node without one.
//! - `nodelifecycle`: heartbeats (Lease renewals or Ready.lastHeartbeatTime) → Ready Unknown
//!   after the grace period, restored when heartbeats resume.
//! - `podgc`: pods past their graceful-deletion deadline are removed.
//! - `workloads`: Deployments → ReplicaSets → Pods (`sluice-workloads` decides).
//! - `scheduler`: pending pods → `pods/binding` (`sluice-scheduler` decides).
//! - `taintmanager`: pods on nodes with NoExecute taints they do not tolerate (long enough)
//!   are evicted.
//! - `serviceaccounts`: the `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap in
//!   every namespace.
//! - `events`: Events past their TTL are deleted.
//! - `garbagecollector`: dependents of deleted owners are deleted (background, foreground)
//!   or released (orphan).

pub mod cache;
pub mod endpointslice;
pub mod events;
pub mod garbagecollector;
pub mod kubernetes_service;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podgc;
pub mod scheduler;
pub mod serviceaccounts;
pub mod taintmanager;
#[cfg(test)]
pub(crate) mod testing;
pub mod workloads;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use serde_json::Value;
use sluice_store::Event;

use crate::registry::Registry;
use crate::resources::RESOURCES;

/// Controller settings.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// `--max-endpoints-per-slice`.
    pub max_endpoints_per_slice: usize,
    /// `--node-monitor-grace-period`.
    pub node_monitor_grace_period: Duration,
    /// `--node-monitor-period`.
    pub node_monitor_period: Duration,
    /// `--event-ttl`: how long Events are kept after they were last seen.
    pub event_ttl: Duration,
    /// The cluster CA (PEM) published as `kube-root-ca.crt` in every namespace; None
    /// publishes nothing.
    pub root_ca_pem: Option<String>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            max_endpoints_per_slice: 100,
            node_monitor_grace_period: Duration::from_secs(40),
            node_monitor_period: Duration::from_secs(5),
            event_ttl: Duration::from_secs(3600),
            root_ca_pem: None,
        }
    }
}

/// Starts every controller.
pub fn spawn_all(reg: Arc<Registry>, cfg: ControllerConfig) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        tokio::spawn(endpointslice::run(reg.clone(), cfg.max_endpoints_per_slice)),
        tokio::spawn(nodeipam::run(reg.clone())),
        tokio::spawn(nodelifecycle::run(
            reg.clone(),
            cfg.node_monitor_grace_period,
            cfg.node_monitor_period,
        )),
        tokio::spawn(podgc::run(reg.clone())),
        tokio::spawn(garbagecollector::run(reg.clone())),
        tokio::spawn(workloads::run(reg.clone())),
        tokio::spawn(scheduler::run(reg.clone())),
        tokio::spawn(taintmanager::run(reg.clone())),
        tokio::spawn(serviceaccounts::run(reg.clone(), cfg.root_ca_pem.clone())),
        tokio::spawn(events::run_ttl(reg.clone(), cfg.event_ttl)),
        tokio::spawn(crate::registry::claims::run_repair(reg)),
    ]
}

pub(crate) fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(|x| x.as_str())
}

pub(crate) fn name_of(v: &Value) -> &str {
    str_at(v, "/metadata/name").unwrap_or("")
}

pub(crate) fn ns_of(v: &Value) -> &str {
    str_at(v, "/metadata/namespace").unwrap_or("")
}

/// The kind a store key belongs to.
pub(crate) fn kind_of_key(key: &str) -> Option<&'static str> {
    RESOURCES
        .iter()
        .find(|r| key.starts_with(&r.prefix()))
        .map(|r| r.kind)
}

/// When a reconcile wants its key looked at again without any change (a pod becomes available
/// after `minReadySeconds`, a progress deadline passes).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Requeue(pub Option<Duration>);

impl From<()> for Requeue {
    fn from(_: ()) -> Self {
        Requeue(None)
    }
}

impl From<Option<Duration>> for Requeue {
    fn from(d: Option<Duration>) -> Self {
        Requeue(d)
    }
}

/// The shared loop: events → dirty keys → reconcile, full resync at start, after a lagged
/// watch, and every five minutes; failed keys are retried after a short pause, and a reconcile
/// may ask for its key again after a delay.
pub(crate) async fn run_dirty_loop<K, M, A, R, F, O>(
    reg: Arc<Registry>,
    name: &'static str,
    map_event: M,
    all: A,
    reconcile: R,
) where
    K: Ord + Clone + std::fmt::Debug,
    M: Fn(&Registry, &Event) -> Vec<K>,
    A: Fn(&Registry) -> Vec<K>,
    R: Fn(Arc<Registry>, K) -> F,
    F: Future<Output = Result<O, String>>,
    O: Into<Requeue>,
{
    const RESYNC: Duration = Duration::from_secs(300);
    loop {
        let rev = reg.store().revision();
        let mut dirty: BTreeSet<K> = all(&reg).into_iter().collect();
        let mut stream = match reg.store().watch("/registry/", rev) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(controller = name, error = %e, "cannot watch; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let resync_at = tokio::time::Instant::now() + RESYNC;
        let mut failed: BTreeSet<K> = BTreeSet::new();
        let mut later: Vec<(tokio::time::Instant, K)> = Vec::new();
        'watch: loop {
            // Take everything already delivered before reconciling, so bursts coalesce.
            while let Some(next) = stream.next().now_or_never() {
                match next {
                    Some(Ok(ev)) => dirty.extend(map_event(&reg, &ev)),
                    Some(Err(e)) => {
                        tracing::warn!(controller = name, error = %e, "watch lagged; resyncing");
                        break 'watch;
                    }
                    None => break 'watch,
                }
            }
            let now = tokio::time::Instant::now();
            later.retain(|(at, k)| {
                let due = *at <= now;
                if due {
                    dirty.insert(k.clone());
                }
                !due
            });
            if let Some(k) = dirty.pop_first() {
                match reconcile(reg.clone(), k.clone()).await {
                    Ok(o) => {
                        if let Requeue(Some(d)) = o.into() {
                            later.push((tokio::time::Instant::now() + d, k));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(controller = name, key = ?k, error = %e, "reconcile failed; will retry");
                        failed.insert(k);
                    }
                }
                continue;
            }
            if tokio::time::Instant::now() >= resync_at {
                break 'watch;
            }
            let retry = !failed.is_empty();
            let next_later = later.iter().map(|(at, _)| *at).min().unwrap_or(resync_at);
            tokio::select! {
                next = stream.next() => match next {
                    Some(Ok(ev)) => dirty.extend(map_event(&reg, &ev)),
                    Some(Err(e)) => {
                        tracing::warn!(controller = name, error = %e, "watch lagged; resyncing");
                        break 'watch;
                    }
                    None => break 'watch,
                },
                _ = tokio::time::sleep(Duration::from_millis(200)), if retry => {
                    dirty.append(&mut failed);
                }
                _ = tokio::time::sleep_until(next_later), if next_later < resync_at => {}
                _ = tokio::time::sleep_until(resync_at) => break 'watch,
            }
        }
    }
}
