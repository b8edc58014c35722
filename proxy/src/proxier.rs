//! `Proxier<D: Dataplane>`: the mode-agnostic half of every proxy mode, written once.
//!
//! The proxier owns the change trackers, the merged [`ServicePortMap`] / [`EndpointsMap`], the
//! "initial sync done" flags and the sync policy. A mode implements only [`Dataplane`].
//!
//! Sync policy:
//! * nothing is programmed until both services and endpoint slices have synced once
//!   ([`Proxier::on_services_synced`], [`Proxier::on_endpoint_slices_synced`]);
//! * the first sync, the sync after any failed sync, the sync after a node-zone change, and any
//!   sync once `full_sync_every` has passed since the last full sync are **full** syncs;
//! * otherwise a sync is **partial**: [`Changes::services`] lists the services whose ports or
//!   endpoints changed since the last successful sync. A partial sync with nothing changed does
//!   not call the dataplane;
//! * changes (including UDP conntrack work) accumulate across failed syncs, so nothing is lost.
//!
//! Driving it: call the `on_*` handlers from informers; each returns whether a sync is wanted,
//! in which case poke a [`crate::runner::RunnerHandle`] whose function calls [`Proxier::sync`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tracing::{debug, warn};

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
        }
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
        self.service_tracker.update(prev, cur) && self.is_initialized()
    }

    /// Service deleted. Returns whether a sync is wanted.
    pub fn on_service_delete(&mut self, svc: &Service) -> bool {
        self.on_service_update(Some(svc), None)
    }

    /// The initial list of Services has been delivered. Returns whether a sync is wanted.
    pub fn on_services_synced(&mut self) -> bool {
        self.services_synced = true;
        self.is_initialized()
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
        self.endpoints_tracker.update(prev, cur) && self.is_initialized()
    }

    /// EndpointSlice deleted. Returns whether a sync is wanted.
    pub fn on_endpoint_slice_delete(&mut self, slice: &EndpointSlice) -> bool {
        self.on_endpoint_slice_update(Some(slice), None)
    }

    /// The initial list of EndpointSlices has been delivered. Returns whether a sync is wanted.
    pub fn on_endpoint_slices_synced(&mut self) -> bool {
        self.endpoints_synced = true;
        self.is_initialized()
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
        zone_changed && self.is_initialized()
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
        let svc = self.service_tracker.apply(&mut self.services);
        let eps = self.endpoints_tracker.apply(&mut self.endpoints);
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
            return Ok(SyncOutcome::NoChanges);
        }
        let full = p.full;
        match self.dataplane.sync(&self.services, &self.endpoints, p) {
            Ok(()) => {
                let node_labels = std::mem::take(&mut p.node_labels);
                *p = Changes {
                    node_labels,
                    ..Changes::default()
                };
                if full {
                    self.last_full_sync = Some(now);
                }
                Ok(SyncOutcome::Synced { full })
            }
            Err(e) => {
                warn!(dataplane = self.dataplane.name(), error = %e, "sync failed; next sync is full");
                p.full = true;
                Err(e)
            }
        }
    }

    /// Removes everything the dataplane programmed.
    pub fn cleanup(&mut self) -> Result<(), Error> {
        self.dataplane.cleanup()
    }
}

#[cfg(test)]
mod tests;
