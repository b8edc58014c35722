//! The Service proxy loop: kube-rs watchers on Services, EndpointSlices and this Node feed
//! `sluice-proxy`'s [`Proxier`]; a bounded-frequency runner (`--min-sync-period`,
//! `--sync-period`) calls its sync, which programs the chosen [`Dataplane`].
//!
//! The watchers work the same against sluice-control and a real kube-apiserver. The trackers
//! keep what they need of applied state themselves, so a watcher remembers per key only what
//! identifies a previous object (an EndpointSlice's service-name label) and hands over a
//! stand-in rebuilt from it; a relist (`Init` … `InitDone`) turns objects that vanished
//! meanwhile into deletes.
//!
//! Observability ([`ProxyExtras`], all optional): the proxier records its metrics; every queued
//! sync and every successful sync is reported to [`ProxyHealth`] (`/healthz`); after each
//! successful sync the HealthCheckNodePort listeners are reconciled from the proxier's maps.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use sluice_proxy::metrics::ProxyMetrics;
use sluice_proxy::model::{IpFamily, ProxyConfig, LABEL_SERVICE_NAME};
use sluice_proxy::proxier::SyncOutcome;
use sluice_proxy::proxier::{Dataplane, Proxier};
use sluice_proxy::runner::{BoundedFrequencyRunner, RunnerHandle, RunnerIntervals};
use tokio::sync::Mutex;

use crate::health::ProxyHealth;
use crate::healthcheck::{self, ServiceHealthServer};

/// Proxy settings from the command line.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// This node.
    pub node_name: String,
    /// `service.kubernetes.io/service-proxy-name` this proxy answers to (None: unlabelled only).
    pub proxy_name: Option<String>,
    /// `--min-sync-period`.
    pub min_sync_period: Duration,
    /// `--sync-period`: longest time between (partial) syncs.
    pub sync_period: Duration,
}

/// Optional observers of the proxy loop.
#[derive(Default)]
pub struct ProxyExtras {
    /// Sync metrics the proxier records.
    pub metrics: Option<ProxyMetrics>,
    /// Told about queued and successful syncs.
    pub health: Option<Arc<ProxyHealth>>,
    /// HealthCheckNodePort listeners, reconciled after each successful sync.
    pub service_health: Option<Arc<ServiceHealthServer>>,
    /// `--full-sync-period`; `None` = [`FULL_SYNC_PERIOD`].
    pub full_sync_period: Option<Duration>,
    /// Run once, on a blocking thread, after the first successful full sync (the agent removes
    /// the previous proxy mode's rules then).
    pub after_first_sync: Option<Box<dyn FnOnce() + Send>>,
}

/// Default period of the forced full resync (kube-proxy's `FullSyncPeriod`).
pub const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);

type Shared<D> = Arc<Mutex<Proxier<D>>>;

/// What a watcher keeps of one kind: per key a small value `remember` takes from an object, and
/// `recall`, which turns key and value back into the previous object handed to `update`.
struct Memory<K, P> {
    remember: fn(&K) -> P,
    recall: fn(&str, &str, &P) -> K,
}

/// Feeds one kind's watch events into the proxier through `update(prev, cur)` and `synced()`.
/// Whole previous objects are not kept (at 10,000 services the cache of slimmed Services and
/// EndpointSlices alone was ~30 MB): `update` gets the stand-in [`Memory::recall`] builds.
async fn follow<K, P, D, U, S>(
    api: Api<K>,
    proxier: Shared<D>,
    kick: RunnerHandle,
    health: Option<Arc<ProxyHealth>>,
    memory: Memory<K, P>,
    update: U,
    synced: S,
) where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
    D: Dataplane + Send + 'static,
    U: Fn(&mut Proxier<D>, Option<&K>, Option<&K>) -> bool,
    S: Fn(&mut Proxier<D>) -> bool,
{
    // (namespace, name): neither may contain a '/', so "namespace/name" is a unique key.
    let key = |o: &K| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
    let recall = |k: &str, p: &P| {
        let (ns, name) = k.split_once('/').unwrap_or(("", k));
        (memory.recall)(ns, name, p)
    };
    let mut cache: HashMap<String, P> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "watch error; retrying with backoff");
                continue;
            }
        };
        let mut p = proxier.lock().await;
        let want = match ev {
            watcher::Event::Init => {
                seen.clear();
                false
            }
            watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                let k = key(&o);
                let prev = cache
                    .insert(k.clone(), (memory.remember)(&o))
                    .map(|m| recall(&k, &m));
                seen.insert(k);
                update(&mut p, prev.as_ref(), Some(&o))
            }
            watcher::Event::Delete(o) => {
                let k = key(&o);
                let prev = cache.remove(&k).map(|m| recall(&k, &m));
                update(&mut p, prev.as_ref().or(Some(&o)), None)
            }
            watcher::Event::InitDone => {
                // Objects gone while we were relisting.
                let gone: Vec<String> = cache
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                seen = HashSet::new();
                let mut want = false;
                for k in gone {
                    if let Some(m) = cache.remove(&k) {
                        want |= update(&mut p, Some(&recall(&k, &m)), None);
                    }
                }
                synced(&mut p) | want
            }
        };
        drop(p);
        if want {
            if let Some(h) = &health {
                h.queued_update();
            }
            kick.run();
        }
    }
}

/// Runs the proxy until the process ends. The dataplane's state is cleaned up only by
/// `--cleanup`-style calls, never on exit: an agent restart must not drop connections.
pub async fn run<D: Dataplane + Send + 'static>(
    client: Client,
    opts: ProxyOptions,
    dataplane: D,
) -> anyhow::Result<()> {
    run_with(client, opts, dataplane, ProxyExtras::default()).await
}

/// [`run`] with metrics, health reporting and HealthCheckNodePort listeners.
pub async fn run_with<D: Dataplane + Send + 'static>(
    client: Client,
    opts: ProxyOptions,
    dataplane: D,
    extras: ProxyExtras,
) -> anyhow::Result<()> {
    let config = ProxyConfig {
        node_name: opts.node_name.clone(),
        proxy_name: opts.proxy_name.clone(),
        ip_family: Some(IpFamily::V4),
    };
    let mut p = Proxier::new(
        config,
        extras.full_sync_period.unwrap_or(FULL_SYNC_PERIOD),
        dataplane,
    );
    if let Some(m) = extras.metrics.clone() {
        p.set_metrics(m);
    }
    let proxier: Shared<D> = Arc::new(Mutex::new(p));
    let after_first_sync = Arc::new(std::sync::Mutex::new(extras.after_first_sync));
    let for_sync = proxier.clone();
    let health = extras.health.clone();
    let service_health = extras.service_health.clone();
    let node_name = opts.node_name.clone();
    let (runner, kick) = BoundedFrequencyRunner::new(
        "proxy-sync",
        RunnerIntervals {
            min_interval: opts.min_sync_period,
            max_interval: opts.sync_period,
            retry_interval: Duration::from_secs(1),
        },
        move || {
            let p = for_sync.clone();
            let health = health.clone();
            let service_health = service_health.clone();
            let node_name = node_name.clone();
            let after_first_sync = after_first_sync.clone();
            async move {
                // Programming the kernel blocks (an iptables-restore or nft run, a large map
                // sync: seconds at 10,000 services), so it runs on a blocking thread and the
                // runtime's workers stay free for the watches, health and metrics.
                let with_health = service_health.is_some();
                let (out, ok, want) = tokio::task::spawn_blocking(move || {
                    let start = std::time::Instant::now();
                    let mut guard = p.blocking_lock();
                    // The informers hold the lock while they fold events in: time spent here
                    // is theirs, not the dataplane's.
                    let lock_wait = start.elapsed();
                    let out = guard.sync();
                    tracing::debug!(took = ?start.elapsed(), lock_wait = ?lock_wait, outcome = ?out, "proxy sync");
                    let ok = matches!(out, Ok(SyncOutcome::Synced { .. } | SyncOutcome::NoChanges));
                    if matches!(out, Ok(SyncOutcome::Synced { full: true })) {
                        let once = after_first_sync.lock().ok().and_then(|mut f| f.take());
                        if let Some(f) = once {
                            f();
                        }
                    }
                    let want = (ok && with_health).then(|| {
                        healthcheck::desired(guard.services(), guard.endpoints(), &node_name)
                    });
                    (out, ok, want)
                })
                .await
                .map_err(|e| sluice_proxy::proxier::Error::Sync {
                    dataplane: "proxy",
                    message: format!("the sync task failed: {e}"),
                    source: None,
                })?;
                if ok {
                    if let Some(h) = &health {
                        h.updated();
                    }
                    if let (Some(srv), Some(want)) = (&service_health, want) {
                        srv.update(&want);
                    }
                }
                out.map(|_| ())
            }
        },
    )?;
    tokio::spawn(runner.run());

    let services = tokio::spawn(follow::<Service, _, D, _, _>(
        Api::all(client.clone()),
        proxier.clone(),
        kick.clone(),
        extras.health.clone(),
        service_memory(),
        |p, prev, cur| p.on_service_update(prev, cur),
        |p| p.on_services_synced(),
    ));
    let slices = tokio::spawn(follow::<EndpointSlice, _, D, _, _>(
        Api::all(client.clone()),
        proxier.clone(),
        kick.clone(),
        extras.health.clone(),
        slice_memory(),
        |p, prev, cur| p.on_endpoint_slice_update(prev, cur),
        |p| p.on_endpoint_slices_synced(),
    ));
    let node_name = opts.node_name.clone();
    let nodes = tokio::spawn(follow::<Node, _, D, _, _>(
        Api::all(client),
        proxier,
        kick,
        extras.health.clone(),
        node_memory(),
        move |p, _prev, cur| match cur {
            Some(n) if n.name_any() == node_name => {
                let labels: BTreeMap<String, String> = n.labels().clone();
                p.on_node_labels(labels)
            }
            _ => false,
        },
        |_| false,
    ));
    let _ = tokio::try_join!(services, slices, nodes)?;
    Ok(())
}

/// Services: the key alone (the service tracker diffs against the applied ports).
fn service_memory() -> Memory<Service, ()> {
    Memory {
        remember: |_| (),
        recall: |ns, name, _| Service {
            metadata: meta(ns, name, None),
            ..Service::default()
        },
    }
}

/// EndpointSlices: the key and the service-name label (the endpoints tracker files a slice
/// under its Service).
fn slice_memory() -> Memory<EndpointSlice, Option<String>> {
    Memory {
        remember: |s| s.labels().get(LABEL_SERVICE_NAME).cloned(),
        recall: |ns, name, svc| EndpointSlice {
            metadata: meta(ns, name, svc.as_ref().map(|s| (LABEL_SERVICE_NAME, s))),
            address_type: String::new(),
            endpoints: Vec::new(),
            ports: None,
        },
    }
}

/// Nodes: only this node's current labels are read.
fn node_memory() -> Memory<Node, ()> {
    Memory {
        remember: |_| (),
        recall: |_, name, _| Node {
            metadata: meta("", name, None),
            ..Node::default()
        },
    }
}

/// Metadata of a stand-in previous object: its key and at most one label.
fn meta(namespace: &str, name: &str, label: Option<(&str, &String)>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
        labels: label.map(|(k, v)| BTreeMap::from([(k.to_string(), v.clone())])),
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deleting (or updating) through the stand-in a watcher recalls nets out exactly like
    /// doing so through the full previous object.
    #[test]
    fn recalled_previous_objects_carry_what_the_trackers_read() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns", "labels": {"a": "b"},
                         "annotations": {"x": "y"}, "managedFields": [{"manager": "m"}]},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]},
        }))
        .unwrap();
        let m = service_memory();
        let stand_in = (m.recall)("ns", "web", &(m.remember)(&svc));
        assert_eq!(stand_in.metadata.name.as_deref(), Some("web"));
        assert_eq!(stand_in.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(stand_in.spec, None);
        let mut p = synced_proxier();
        assert!(p.on_service_add(&svc), "an added service is pending");
        assert!(
            !p.on_service_update(Some(&stand_in), None),
            "deleting through the stand-in nets the add out"
        );
        assert!(p.on_service_add(&svc));
        assert!(p.sync().is_ok());
        assert!(
            p.on_service_update(Some(&stand_in), None),
            "deleting an applied service through the stand-in is a change"
        );

        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": "web", "other": "x"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.1"]}],
            "ports": [{"port": 8080}],
        }))
        .unwrap();
        let m = slice_memory();
        let s = (m.recall)("ns", "web-1", &(m.remember)(&slice));
        assert!(s.endpoints.is_empty());
        assert_eq!(
            s.metadata.labels,
            Some(BTreeMap::from([(
                LABEL_SERVICE_NAME.to_string(),
                "web".to_string()
            )]))
        );
        let mut p = synced_proxier();
        assert!(p.on_endpoint_slice_add(&slice), "an added slice is pending");
        assert!(
            !p.on_endpoint_slice_update(Some(&s), None),
            "deleting through the stand-in nets the add out"
        );

        let m = node_memory();
        let n = (m.recall)("", "n1", &());
        assert_eq!(n.metadata.name.as_deref(), Some("n1"));
        assert_eq!(n.metadata.namespace, None);
    }

    fn synced_proxier() -> Proxier<NoDataplane> {
        let config = sluice_proxy::model::ProxyConfig::new("n1");
        let mut p = Proxier::new(config, FULL_SYNC_PERIOD, NoDataplane);
        p.on_services_synced();
        p.on_endpoint_slices_synced();
        p
    }

    struct NoDataplane;

    impl Dataplane for NoDataplane {
        fn sync(
            &mut self,
            _: &sluice_proxy::model::ServicePortMap,
            _: &sluice_proxy::model::EndpointsMap,
            _: &sluice_proxy::proxier::Changes,
        ) -> Result<(), sluice_proxy::proxier::Error> {
            Ok(())
        }

        fn cleanup(&mut self) -> Result<(), sluice_proxy::proxier::Error> {
            Ok(())
        }

        fn name(&self) -> &'static str {
            "none"
        }
    }
}
