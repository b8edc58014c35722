//! The Service proxy loop: kube-rs watchers on Services, EndpointSlices and this Node feed
//! `sluice-proxy`'s [`Proxier`]; a bounded-frequency runner (`--min-sync-period`,
//! `--sync-period`) calls its sync, which programs the chosen [`Dataplane`].
//!
//! The watchers work the same against sluice-control and a real kube-apiserver. Each keeps
//! the last object per key so an update is handed over as previous → current; a relist
//! (`Init` … `InitDone`) turns objects that vanished meanwhile into deletes.
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
use sluice_proxy::model::{IpFamily, ProxyConfig};
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
#[derive(Default, Clone)]
pub struct ProxyExtras {
    /// Sync metrics the proxier records.
    pub metrics: Option<ProxyMetrics>,
    /// Told about queued and successful syncs.
    pub health: Option<Arc<ProxyHealth>>,
    /// HealthCheckNodePort listeners, reconciled after each successful sync.
    pub service_health: Option<Arc<ServiceHealthServer>>,
    /// `--full-sync-period`; `None` = [`FULL_SYNC_PERIOD`].
    pub full_sync_period: Option<Duration>,
}

/// Default period of the forced full resync (kube-proxy's `FullSyncPeriod`).
pub const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);

type Shared<D> = Arc<Mutex<Proxier<D>>>;

/// Feeds one kind's watch events into the proxier through `update(prev, cur)` and `synced()`.
/// The previous object per key is kept as `slim` reduces it: only what `update` needs of a
/// *previous* object (at 10,000 services, whole Services and EndpointSlices with their
/// managedFields are tens of MB).
async fn follow<K, D, U, S>(
    api: Api<K>,
    proxier: Shared<D>,
    kick: RunnerHandle,
    health: Option<Arc<ProxyHealth>>,
    slim: fn(&K) -> K,
    update: U,
    synced: S,
) where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
    D: Dataplane + Send + 'static,
    U: Fn(&mut Proxier<D>, Option<&K>, Option<&K>) -> bool,
    S: Fn(&mut Proxier<D>) -> bool,
{
    let key = |o: &K| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
    let mut cache: HashMap<String, K> = HashMap::new();
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
                seen.insert(k.clone());
                let prev = cache.insert(k, slim(&o));
                update(&mut p, prev.as_ref(), Some(&o))
            }
            watcher::Event::Delete(o) => {
                let prev = cache.remove(&key(&o));
                update(&mut p, prev.as_ref().or(Some(&o)), None)
            }
            watcher::Event::InitDone => {
                // Objects gone while we were relisting.
                let gone: Vec<String> = cache
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                let mut want = false;
                for k in gone {
                    if let Some(o) = cache.remove(&k) {
                        want |= update(&mut p, Some(&o), None);
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
            async move {
                let start = std::time::Instant::now();
                let mut guard = p.lock().await;
                let out = guard.sync();
                tracing::debug!(took = ?start.elapsed(), outcome = ?out, "proxy sync");
                if matches!(out, Ok(SyncOutcome::Synced { .. } | SyncOutcome::NoChanges)) {
                    let want = service_health.as_ref().map(|_| {
                        healthcheck::desired(guard.services(), guard.endpoints(), &node_name)
                    });
                    drop(guard);
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

    let services = tokio::spawn(follow::<Service, D, _, _>(
        Api::all(client.clone()),
        proxier.clone(),
        kick.clone(),
        extras.health.clone(),
        slim_service,
        |p, prev, cur| p.on_service_update(prev, cur),
        |p| p.on_services_synced(),
    ));
    let slices = tokio::spawn(follow::<EndpointSlice, D, _, _>(
        Api::all(client.clone()),
        proxier.clone(),
        kick.clone(),
        extras.health.clone(),
        slim_slice,
        |p, prev, cur| p.on_endpoint_slice_update(prev, cur),
        |p| p.on_endpoint_slices_synced(),
    ));
    let node_name = opts.node_name.clone();
    let nodes = tokio::spawn(follow::<Node, D, _, _>(
        Api::all(client),
        proxier,
        kick,
        extras.health.clone(),
        slim_node,
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

/// Metadata a previous object is keyed and filtered by: name, namespace, labels.
fn slim_meta(m: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        labels: m.labels.clone(),
        ..ObjectMeta::default()
    }
}

/// A previous Service: the service tracker remembers each Service's last ports itself, so only
/// the key (and labels) are kept — a whole spec per Service was ~3 KB, tens of MB at 10k.
fn slim_service(s: &Service) -> Service {
    Service {
        metadata: slim_meta(&s.metadata),
        ..Service::default()
    }
}

/// A previous EndpointSlice: the endpoints tracker only keys it (namespace, name, service-name
/// label); its endpoints come from the current object and the tracker's own state.
fn slim_slice(s: &EndpointSlice) -> EndpointSlice {
    EndpointSlice {
        metadata: slim_meta(&s.metadata),
        address_type: s.address_type.clone(),
        endpoints: Vec::new(),
        ports: None,
    }
}

/// A previous Node: only its name and labels are read.
fn slim_node(n: &Node) -> Node {
    Node {
        metadata: slim_meta(&n.metadata),
        ..Node::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slim_objects_keep_what_the_trackers_read() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns", "labels": {"a": "b"},
                         "annotations": {"x": "y"}, "managedFields": [{"manager": "m"}]},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]},
        }))
        .unwrap();
        let slim = slim_service(&svc);
        assert_eq!(slim.metadata.annotations, None);
        assert_eq!(slim.metadata.managed_fields, None);
        assert_eq!(slim.spec, None);
        assert_eq!(slim.metadata.labels, svc.metadata.labels);
        let config = sluice_proxy::model::ProxyConfig::new("n1");
        let mut a = Proxier::new(config.clone(), FULL_SYNC_PERIOD, NoDataplane);
        let mut b = Proxier::new(config, FULL_SYNC_PERIOD, NoDataplane);
        // Deleting via the slim copy nets out exactly like deleting via the full object.
        a.on_service_add(&svc);
        b.on_service_add(&svc);
        assert_eq!(
            a.on_service_delete(&svc),
            b.on_service_update(Some(&slim), None)
        );

        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.1"]}],
            "ports": [{"port": 8080}],
        }))
        .unwrap();
        let s = slim_slice(&slice);
        assert!(s.endpoints.is_empty());
        assert_eq!(s.metadata.labels, slice.metadata.labels);
        a.on_endpoint_slice_add(&slice);
        assert!(!a.on_endpoint_slice_update(Some(&s), None) || a.is_initialized());
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
