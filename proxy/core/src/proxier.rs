//! `Proxier<D: Dataplane>`: the mode-agnostic half of every proxy mode, written once.
//!
//! The proxier owns the change trackers, the merged [`ServicePortMap`] / [`EndpointsMap`], the
//! "initial sync done" flags and the sync policy. A mode implements only [`Dataplane`].
//!
//! Sync policy:
//! * nothing is programmed until both services and endpoint slices have synced once
//!   ([`Proxier::on_services_synced`], [`Proxier::on_endpoint_slices_synced`]);
//! * the first sync, the sync after any failed sync, the sync after a node-zone change, and any
//!   sync once `full_sync_every` has passed since the *end* of the last successful full sync are
//!   **full** syncs (kube-proxy: `FullSyncPeriod`, one hour; the periodic sync in between is
//!   partial). Measuring from the end means a full sync slower than `full_sync_every` cannot make
//!   every following sync full;
//! * otherwise a sync is **partial**: [`Changes::services`] lists the services whose ports or
//!   endpoints changed since the last successful sync. A partial sync with nothing changed does
//!   not call the dataplane;
//! * changes (including UDP conntrack work) accumulate across failed syncs, so nothing is lost.
//!
//! Driving it: call the `on_*` handlers from informers; each returns whether a sync is wanted,
//! in which case poke a [`crate::runner::RunnerHandle`] whose function calls [`Proxier::sync`].
//!
//! Metrics: with [`Proxier::with_metrics`] the proxier records kube-proxy's sync metrics (see
//! [`crate::metrics`]); without, it records nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tracing::{debug, warn};

use crate::metrics::{unix_seconds, ProxyMetrics};
use crate::model::{
    EndpointsMap, NamespacedName, ProxyConfig, ServicePortMap, ServicePortName, LABEL_TOPOLOGY_ZONE,
};
use crate::tracker::{EndpointsChangeTracker, ServiceChangeTracker};

/// Boxed underlying error of a dataplane operation.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of a dataplane (and so of [`Proxier::sync`] / [`Proxier::cleanup`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Programming the dataplane failed; the next sync will be full.
    #[error("{dataplane} dataplane: sync failed: {message}")]
    Sync {
        /// [`Dataplane::name`].
        dataplane: &'static str,
        /// What was being done.
        message: String,
        /// Underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// Removing the dataplane's state failed.
    #[error("{dataplane} dataplane: cleanup failed: {message}")]
    Cleanup {
        /// [`Dataplane::name`].
        dataplane: &'static str,
        /// What was being done.
        message: String,
        /// Underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// Building the mode, or reading its kernel state, failed.
    #[error("{dataplane} mode: {message}")]
    Mode {
        /// [`Dataplane::name`].
        dataplane: &'static str,
        /// What went wrong.
        message: String,
        /// Underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
}

/// What changed since the last successful sync, handed to [`Dataplane::sync`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Reprogram everything from the maps; ignore `services` as a filter.
    pub full: bool,
    /// Services whose ports or endpoints changed (or were removed: absent from the maps).
    pub services: BTreeSet<NamespacedName>,
    /// Cluster IPs of removed UDP service ports (conntrack flush).
    pub deleted_udp_cluster_ips: BTreeSet<IpAddr>,
    /// UDP endpoints that stopped serving (conntrack flush).
    pub deleted_udp_endpoints: BTreeSet<(ServicePortName, SocketAddr)>,
    /// UDP service ports that went from no to some serving endpoints (flush cached rejects).
    pub newly_active_udp_services: BTreeSet<ServicePortName>,
    /// This node's labels (topology zone for [`crate::categorize::categorize_endpoints`]).
    pub node_labels: BTreeMap<String, String>,
}

impl Changes {
    /// The keys in `ports` (a [`ServicePortMap`], or a mode's state keyed the same way) of
    /// the changed services, in order: a range lookup per changed service, so a partial sync's
    /// cost does not grow with the number of services.
    pub fn changed_ports<'a, V>(
        &'a self,
        ports: &'a BTreeMap<ServicePortName, V>,
    ) -> impl Iterator<Item = &'a ServicePortName> + 'a {
        self.services.iter().flat_map(move |svc| {
            // The least port name of the service: "" and TCP sort first.
            let from = ServicePortName::new(
                svc.namespace.clone(),
                svc.name.clone(),
                "",
                crate::model::Protocol::Tcp,
            );
            ports
                .range(from..)
                .map(|(k, _)| k)
                .take_while(move |k| *k.namespace == *svc.namespace && *k.name == *svc.name)
        })
    }

    /// The service ports a partial sync of a mode's per-port model recomputes: the changed
    /// services' ports in `now` (the current [`ServicePortMap`]) and in `before` (the model's
    /// ports as of the last sync, so removed ones too), each once, in order.
    pub fn changed_ports_in<V, W>(
        &self,
        now: &BTreeMap<ServicePortName, V>,
        before: &BTreeMap<ServicePortName, W>,
    ) -> Vec<ServicePortName> {
        let mut v: BTreeSet<ServicePortName> = self.changed_ports(now).cloned().collect();
        v.extend(self.changed_ports(before).cloned());
        v.into_iter().collect()
    }

    /// Nothing to do for a partial sync.
    fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.deleted_udp_cluster_ips.is_empty()
            && self.deleted_udp_endpoints.is_empty()
            && self.newly_active_udp_services.is_empty()
    }
}

/// One proxy mode's way of programming the node. Implementations render the maps purely and
/// apply the result; they never see Kubernetes objects.
pub trait Dataplane {
    /// Programs the dataplane. With `changes.full` everything is reconciled from the maps; otherwise
    /// only `changes.services` need touching. Must be atomic or idempotent: after an error the
    /// proxier retries with a full sync.
    fn sync(
        &mut self,
        services: &ServicePortMap,
        endpoints: &EndpointsMap,
        changes: &Changes,
    ) -> Result<(), Error>;

    /// Removes everything this dataplane ever programmed (mode switch, uninstall).
    fn cleanup(&mut self) -> Result<(), Error>;

    /// Short mode name for logs and errors (`"nftables"`, `"ebpf"`, …).
    fn name(&self) -> &'static str;
}

/// Result of a successful [`Proxier::sync`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Services or endpoint slices have not synced yet; nothing was programmed.
    NotInitialized,
    /// Partial sync with nothing changed; the dataplane was not called.
    NoChanges,
    /// The dataplane was programmed.
    Synced {
        /// Whether it was a full sync.
        full: bool,
    },
}

/// The mode-agnostic proxier.
pub struct Proxier<D: Dataplane> {
    config: Arc<ProxyConfig>,
    dataplane: D,
    service_tracker: ServiceChangeTracker,
    endpoints_tracker: EndpointsChangeTracker,
    services: ServicePortMap,
    endpoints: EndpointsMap,
    services_synced: bool,
    endpoints_synced: bool,
    /// Accumulated since the last successful sync.
    pending: Changes,
    last_full_sync: Option<Instant>,
    full_sync_every: Duration,
    metrics: Option<ProxyMetrics>,
    /// Trigger times of endpoint changes folded into the maps but not yet programmed.
    pending_trigger_times: Vec<SystemTime>,
}

impl<D: Dataplane> Proxier<D> {
    /// A proxier for `config` programming `dataplane`, with a forced full sync at least every
    /// `full_sync_every`.
    pub fn new(config: ProxyConfig, full_sync_every: Duration, dataplane: D) -> Self {
        let config = Arc::new(config);
        Self {
            service_tracker: ServiceChangeTracker::new(config.clone()),
            endpoints_tracker: EndpointsChangeTracker::new(config.clone()),
            config,
            dataplane,
            services: ServicePortMap::new(),
            endpoints: EndpointsMap::new(),
            services_synced: false,
            endpoints_synced: false,
            pending: Changes {
                full: true,
                ..Changes::default()
            },
            last_full_sync: None,
            full_sync_every,
            metrics: None,
            pending_trigger_times: Vec::new(),
        }
    }

    /// Records sync metrics into `metrics` from now on (builder form of
    /// [`Proxier::set_metrics`]).
    pub fn with_metrics(mut self, metrics: ProxyMetrics) -> Self {
        self.set_metrics(metrics);
        self
    }

    /// Records sync metrics into `metrics` from now on. The failure counter for this dataplane's
    /// mode is created at zero so it is exported before the first failure.
    pub fn set_metrics(&mut self, metrics: ProxyMetrics) {
        let _ = metrics.failures(self.dataplane.name());
        self.metrics = Some(metrics);
        self.update_pending_gauges();
    }

    /// The metrics handle, if any.
    pub fn metrics(&self) -> Option<&ProxyMetrics> {
        self.metrics.as_ref()
    }

    fn update_pending_gauges(&self) {
        if let Some(m) = &self.metrics {
            m.service_changes_pending
                .set(i64::try_from(self.service_tracker.pending()).unwrap_or(i64::MAX));
            m.endpoint_changes_pending
                .set(i64::try_from(self.endpoints_tracker.pending_services()).unwrap_or(i64::MAX));
        }
    }

    /// Marks a sync as queued when `want` (for the last-queued metric) and passes `want` on.
    fn queued(&self, want: bool) -> bool {
        if want {
            if let Some(m) = &self.metrics {
                m.last_queued_timestamp.set(unix_seconds(SystemTime::now()));
            }
        }
        want
    }

    /// This proxy's identity.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Service added. Returns whether a sync is wanted.
    pub fn on_service_add(&mut self, svc: &Service) -> bool {
        self.on_service_update(None, Some(svc))
    }

    /// Service changed (`prev` → `cur`; either may be `None`). Returns whether a sync is wanted.
    pub fn on_service_update(&mut self, prev: Option<&Service>, cur: Option<&Service>) -> bool {
        let want = self.service_tracker.update(prev, cur, &self.services) && self.is_initialized();
        if let Some(m) = &self.metrics {
            m.service_changes_total.inc();
        }
        self.update_pending_gauges();
        self.queued(want)
    }

    /// Service deleted. Returns whether a sync is wanted.
    pub fn on_service_delete(&mut self, svc: &Service) -> bool {
        self.on_service_update(Some(svc), None)
    }

    /// The initial list of Services has been delivered. Returns whether a sync is wanted.
    pub fn on_services_synced(&mut self) -> bool {
        self.services_synced = true;
        self.queued(self.is_initialized())
    }

    /// EndpointSlice added. Returns whether a sync is wanted.
    pub fn on_endpoint_slice_add(&mut self, slice: &EndpointSlice) -> bool {
        self.on_endpoint_slice_update(None, Some(slice))
    }

    /// EndpointSlice changed (`prev` → `cur`). Returns whether a sync is wanted.
    pub fn on_endpoint_slice_update(
        &mut self,
        prev: Option<&EndpointSlice>,
        cur: Option<&EndpointSlice>,
    ) -> bool {
        let want = self.endpoints_tracker.update(prev, cur) && self.is_initialized();
        if let Some(m) = &self.metrics {
            m.endpoint_changes_total.inc();
        }
        self.update_pending_gauges();
        self.queued(want)
    }

    /// EndpointSlice deleted. Returns whether a sync is wanted.
    pub fn on_endpoint_slice_delete(&mut self, slice: &EndpointSlice) -> bool {
        self.on_endpoint_slice_update(Some(slice), None)
    }

    /// The initial list of EndpointSlices has been delivered. Returns whether a sync is wanted.
    pub fn on_endpoint_slices_synced(&mut self) -> bool {
        self.endpoints_synced = true;
        self.queued(self.is_initialized())
    }

    /// This node's labels changed. A zone change forces a full sync (topology hints depend on
    /// it). Returns whether a sync is wanted.
    pub fn on_node_labels(&mut self, labels: BTreeMap<String, String>) -> bool {
        let zone_changed =
            self.pending.node_labels.get(LABEL_TOPOLOGY_ZONE) != labels.get(LABEL_TOPOLOGY_ZONE);
        self.pending.node_labels = labels;
        if zone_changed {
            self.pending.full = true;
        }
        self.queued(zone_changed && self.is_initialized())
    }

    /// Both services and endpoint slices have synced once.
    pub fn is_initialized(&self) -> bool {
        self.services_synced && self.endpoints_synced
    }

    /// The merged service ports (as of the last [`Proxier::sync`]).
    pub fn services(&self) -> &ServicePortMap {
        &self.services
    }

    /// The merged endpoints (as of the last [`Proxier::sync`]).
    pub fn endpoints(&self) -> &EndpointsMap {
        &self.endpoints
    }

    /// The dataplane.
    pub fn dataplane(&self) -> &D {
        &self.dataplane
    }

    /// The dataplane, mutably.
    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dataplane
    }

    /// Syncs now (see [`Proxier::sync_at`]).
    pub fn sync(&mut self) -> Result<SyncOutcome, Error> {
        self.sync_at(Instant::now())
    }

    /// Applies pending changes and programs the dataplane, treating `now` as the current time
    /// for the periodic full sync.
    pub fn sync_at(&mut self, now: Instant) -> Result<SyncOutcome, Error> {
        if !self.is_initialized() {
            debug!(
                dataplane = self.dataplane.name(),
                "not syncing: informers not synced yet"
            );
            return Ok(SyncOutcome::NotInitialized);
        }
        // Wall-clock duration, independent of the `now` the caller chose for the sync policy.
        let started = Instant::now();
        let svc = self.service_tracker.apply(&mut self.services);
        let eps = self.endpoints_tracker.apply(&mut self.endpoints);
        self.pending_trigger_times
            .extend(self.endpoints_tracker.take_trigger_times());
        self.update_pending_gauges();
        let p = &mut self.pending;
        p.services.extend(svc.updated_services);
        p.services.extend(eps.updated_services);
        p.deleted_udp_cluster_ips
            .extend(svc.deleted_udp_cluster_ips);
        p.deleted_udp_endpoints.extend(eps.deleted_udp_endpoints);
        p.newly_active_udp_services
            .extend(eps.newly_active_udp_services);
        if self
            .last_full_sync
            .is_none_or(|t| now.saturating_duration_since(t) >= self.full_sync_every)
        {
            p.full = true;
        }
        if !p.full && p.is_empty() {
            // Nothing to program: the rules are current, which is a successful sync.
            self.record_success();
            return Ok(SyncOutcome::NoChanges);
        }
        let full = p.full;
        let result = self.dataplane.sync(&self.services, &self.endpoints, p);
        if let Some(m) = &self.metrics {
            let took = started.elapsed().as_secs_f64();
            m.sync_duration.observe(took);
            if full {
                m.sync_full_duration.observe(took);
            } else {
                m.sync_partial_duration.observe(took);
            }
        }
        match result {
            Ok(()) => {
                let node_labels = std::mem::take(&mut p.node_labels);
                *p = Changes {
                    node_labels,
                    ..Changes::default()
                };
                if full {
                    // The end of the sync on the caller's clock: a full sync that took longer
                    // than `full_sync_every` must not make the next one full as well.
                    self.last_full_sync = Some(now + started.elapsed());
                }
                self.record_success();
                Ok(SyncOutcome::Synced { full })
            }
            Err(e) => {
                warn!(dataplane = self.dataplane.name(), error = %e, "sync failed; next sync is full");
                p.full = true;
                if let Some(m) = &self.metrics {
                    m.failures(self.dataplane.name()).inc();
                }
                Err(e)
            }
        }
    }

    /// After a successful sync: last-sync time and the programming latency of every endpoint
    /// change it covered (kept across failed syncs until one succeeds).
    fn record_success(&mut self) {
        let trigger_times = std::mem::take(&mut self.pending_trigger_times);
        let Some(m) = &self.metrics else { return };
        let end = SystemTime::now();
        m.last_sync_timestamp.set(unix_seconds(end));
        for t in trigger_times {
            let latency = end.duration_since(t).unwrap_or(Duration::ZERO);
            m.network_programming_duration
                .observe(latency.as_secs_f64());
        }
    }

    /// When the last successful full sync ended (on the clock of [`Proxier::sync_at`]).
    pub fn last_full_sync(&self) -> Option<Instant> {
        self.last_full_sync
    }

    /// Removes everything the dataplane programmed.
    pub fn cleanup(&mut self) -> Result<(), Error> {
        self.dataplane.cleanup()
    }
}

#[cfg(test)]
mod tests;

/// Metrics recorded by the proxier (a fake dataplane; values read back from the handles).
#[cfg(test)]
mod metrics_tests {
    use std::collections::BTreeMap;

    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::testutil::{service, slice, Cond};
    use crate::tracker::ANNOTATION_LAST_CHANGE_TRIGGER_TIME;

    /// Sleeps `delay` inside each sync; fails when told to.
    #[derive(Default)]
    struct Slow {
        delay: Duration,
        fail_next: bool,
    }

    impl Dataplane for Slow {
        fn sync(&mut self, _: &ServicePortMap, _: &EndpointsMap, _: &Changes) -> Result<(), Error> {
            std::thread::sleep(self.delay);
            if std::mem::take(&mut self.fail_next) {
                return Err(Error::Sync {
                    dataplane: "slow",
                    message: "injected".into(),
                    source: None,
                });
            }
            Ok(())
        }

        fn cleanup(&mut self) -> Result<(), Error> {
            Ok(())
        }

        fn name(&self) -> &'static str {
            "slow"
        }
    }

    /// `_count` / `_sum` of a histogram, read back through the text encoder (the crate keeps
    /// direct getters behind a feature).
    fn read(h: &prometheus_client::metrics::histogram::Histogram, what: &str) -> f64 {
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register("h", "", h.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        let prefix = format!("h_{what} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no h_{what} in {text}"))
    }

    fn count(h: &prometheus_client::metrics::histogram::Histogram) -> u64 {
        read(h, "count") as u64
    }

    fn sum(h: &prometheus_client::metrics::histogram::Histogram) -> f64 {
        read(h, "sum")
    }

    fn annotated(mut s: EndpointSlice, at: SystemTime) -> EndpointSlice {
        let ns = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let ts = Timestamp::from_nanosecond(i128::try_from(ns).unwrap()).unwrap();
        s.metadata.annotations = Some(BTreeMap::from([(
            ANNOTATION_LAST_CHANGE_TRIGGER_TIME.to_string(),
            ts.to_string(),
        )]));
        s
    }

    #[test]
    fn sync_records_duration_failures_and_latency() {
        let metrics = ProxyMetrics::new();
        let mut p = Proxier::new(
            ProxyConfig::new("n1"),
            Duration::from_secs(3600),
            Slow {
                delay: Duration::from_millis(20),
                fail_next: false,
            },
        )
        .with_metrics(metrics.clone());
        assert!(!p.on_service_add(&service("ns", "a", "10.0.0.1", &[("p", 80, "TCP")])));
        assert_eq!(metrics.service_changes_pending.get(), 1);
        assert!(!p.on_services_synced());
        assert!(p.on_endpoint_slices_synced());
        assert!(metrics.last_queued_timestamp.get() > 0.0);

        // First (full) sync: duration recorded, last-sync time set.
        assert_eq!(p.sync().unwrap(), SyncOutcome::Synced { full: true });
        assert_eq!(count(&metrics.sync_duration), 1);
        assert!(sum(&metrics.sync_duration) >= 0.02);
        assert_eq!(count(&metrics.sync_full_duration), 1);
        assert_eq!(count(&metrics.sync_partial_duration), 0);
        assert_eq!(metrics.service_changes_pending.get(), 0);
        let first = metrics.last_sync_timestamp.get();
        assert!(first > 0.0);

        // An annotated slice change, then a failed sync: the latency is not observed yet.
        let trigger = SystemTime::now();
        let s = annotated(
            slice(
                "ns",
                "a",
                "a-1",
                &[("p", 8080, "TCP")],
                &[("10.1.0.1", "n1", Cond::Ready)],
            ),
            trigger,
        );
        assert!(p.on_endpoint_slice_add(&s));
        assert_eq!(metrics.endpoint_changes_total.get(), 1);
        assert_eq!(metrics.endpoint_changes_pending.get(), 1);
        p.dataplane_mut().fail_next = true;
        assert!(p.sync().is_err());
        assert_eq!(metrics.failures("slow").get(), 1);
        assert_eq!(count(&metrics.sync_duration), 2);
        assert_eq!(count(&metrics.sync_partial_duration), 1);
        assert_eq!(count(&metrics.network_programming_duration), 0);
        assert_eq!(metrics.last_sync_timestamp.get(), first);

        // The retry (full) succeeds: one latency sample, from the annotation to the sync's end.
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(p.sync().unwrap(), SyncOutcome::Synced { full: true });
        assert_eq!(count(&metrics.network_programming_duration), 1);
        let latency = sum(&metrics.network_programming_duration);
        let bound = trigger.elapsed().unwrap().as_secs_f64();
        assert!((0.05..=bound).contains(&latency), "{latency} vs {bound}");
        assert!(metrics.last_sync_timestamp.get() >= first);

        // No annotation: measured from when the change was received.
        let s2 = slice(
            "ns",
            "a",
            "a-2",
            &[("p", 8080, "TCP")],
            &[("10.1.0.2", "", Cond::Ready)],
        );
        assert!(p.on_endpoint_slice_add(&s2));
        assert_eq!(p.sync().unwrap(), SyncOutcome::Synced { full: false });
        assert_eq!(count(&metrics.network_programming_duration), 2);
        assert!(sum(&metrics.network_programming_duration) - latency < 1.0);
        assert_eq!(count(&metrics.sync_partial_duration), 2);
    }

    #[test]
    fn netted_out_and_pre_start_changes_are_not_measured() {
        let metrics = ProxyMetrics::new();
        let mut p = Proxier::new(
            ProxyConfig::new("n1"),
            Duration::from_secs(3600),
            Slow::default(),
        )
        .with_metrics(metrics.clone());
        p.on_services_synced();
        p.on_endpoint_slices_synced();
        p.on_service_add(&service("ns", "a", "10.0.0.1", &[("p", 80, "TCP")]));
        p.sync().unwrap();
        // Added and deleted before a sync: nothing programmed, nothing measured.
        let s = slice(
            "ns",
            "a",
            "a-1",
            &[("p", 8080, "TCP")],
            &[("10.1.0.1", "", Cond::Ready)],
        );
        p.on_endpoint_slice_add(&s);
        p.on_endpoint_slice_delete(&s);
        // A relisted slice whose trigger predates the proxier.
        let old = annotated(s.clone(), SystemTime::now() - Duration::from_secs(3600));
        p.on_endpoint_slice_add(&old);
        p.sync().unwrap();
        assert_eq!(count(&metrics.network_programming_duration), 0);
        assert_eq!(metrics.endpoint_changes_total.get(), 3);
    }
}
