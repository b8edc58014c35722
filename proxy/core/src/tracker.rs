//! Change trackers: Kubernetes `Service` / `EndpointSlice` events → pending changes → merged maps.
//!
//! Informer handlers call `update(prev, cur)` (add = `(None, Some)`, delete = `(Some, None)`).
//! Each tracker keeps, per object, the state last applied and the state now wanted, and nets the
//! two: an add followed by a delete before the next sync (or an update that is reverted) leaves
//! nothing pending. At sync time `apply()` folds the pending changes into the
//! [`ServicePortMap`] / [`EndpointsMap`] and reports which services changed plus what UDP state
//! went away (for conntrack cleanup).
//!
//! Filtering (what kube-proxy does with informer label selectors and `ShouldSkipService`):
//! services labelled `service.kubernetes.io/service-proxy-name` with a name other than ours,
//! headless (`clusterIP: None`) and `ExternalName` services, and EndpointSlices labelled
//! `service.kubernetes.io/headless` or of address type `FQDN` are ignored. A filtered object is
//! treated like an absent one, so an object that becomes filtered is removed.
//!
//! Trigger times (for the network-programming latency metric, as kube-proxy): every
//! EndpointSlice event that changes what is pending records the slice's
//! `endpoints.kubernetes.io/last-change-trigger-time` annotation — or, when it has none, the
//! time the event was received. Times from before the tracker started are ignored (a relist
//! replays old annotations); a slice deletion or a service whose pending changes net out drops the
//! service's recorded times. [`EndpointsChangeTracker::take_trigger_times`] hands them over.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tracing::warn;

use crate::model::{
    intern, Endpoint, EndpointsMap, IpFamily, NamespacedName, Protocol, ProxyConfig, ServicePort,
    ServicePortMap, ServicePortName, ANNOTATION_SCHEDULER, DEFAULT_AFFINITY_TIMEOUT_SECONDS,
    LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME,
};

/// Annotation the EndpointSlice controller sets to the time of the change that caused a write.
pub const ANNOTATION_LAST_CHANGE_TRIGGER_TIME: &str =
    "endpoints.kubernetes.io/last-change-trigger-time";

/// Outcome of [`ServiceChangeTracker::apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceUpdateResult {
    /// Services whose ports were added, changed or removed.
    pub updated_services: BTreeSet<NamespacedName>,
    /// Cluster IPs of UDP service ports that no longer exist (flush their conntrack entries).
    pub deleted_udp_cluster_ips: BTreeSet<IpAddr>,
}

/// Outcome of [`EndpointsChangeTracker::apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointsUpdateResult {
    /// Services whose endpoints changed.
    pub updated_services: BTreeSet<NamespacedName>,
    /// UDP endpoints that were serving and no longer are (or are gone).
    pub deleted_udp_endpoints: BTreeSet<(ServicePortName, SocketAddr)>,
    /// UDP service ports that went from 0 to ≥1 serving endpoints (flush cached rejects).
    pub newly_active_udp_services: BTreeSet<ServicePortName>,
}

#[derive(Debug)]
struct ServiceChange {
    previous: ServicePortMap,
    current: ServicePortMap,
}

/// Accumulates Service changes between syncs, netted per Service.
///
/// A Service's first pending change starts from the ports the applied map holds for it (what
/// the last sync programmed), so a caller need not keep previous objects: `prev` is only read
/// for its key (a delete).
#[derive(Debug)]
pub struct ServiceChangeTracker {
    config: Arc<ProxyConfig>,
    items: BTreeMap<NamespacedName, ServiceChange>,
}

impl ServiceChangeTracker {
    /// A tracker for this proxy's identity and family.
    pub fn new(config: Arc<ProxyConfig>) -> Self {
        Self {
            config,
            items: BTreeMap::new(),
        }
    }

    /// Records a Service event; `applied` is the map [`ServiceChangeTracker::apply`] folds
    /// into. Returns true if any change is pending afterwards.
    pub fn update(
        &mut self,
        prev: Option<&Service>,
        cur: Option<&Service>,
        applied: &ServicePortMap,
    ) -> bool {
        let Some(key) = cur.or(prev).and_then(service_key) else {
            return !self.items.is_empty();
        };
        let current = cur
            .map(|s| service_to_ports(&self.config, s))
            .unwrap_or_default();
        let change = self
            .items
            .entry(key.clone())
            .or_insert_with(|| ServiceChange {
                previous: ports_of(applied, &key),
                current: ServicePortMap::new(),
            });
        change.current = current;
        if change.previous == change.current {
            self.items.remove(&key);
        }
        !self.items.is_empty()
    }

    /// Number of services with pending changes.
    pub fn pending(&self) -> usize {
        self.items.len()
    }

    /// Folds all pending changes into `map`.
    pub fn apply(&mut self, map: &mut ServicePortMap) -> ServiceUpdateResult {
        let mut result = ServiceUpdateResult::default();
        for (svc, change) in std::mem::take(&mut self.items) {
            result.updated_services.insert(svc);
            for (name, port) in &change.previous {
                map.remove(name);
                if port.protocol == Protocol::Udp && !change.current.contains_key(name) {
                    result
                        .deleted_udp_cluster_ips
                        .extend(port.cluster_ips.iter().copied());
                }
            }
            map.extend(change.current);
        }
        result
    }
}

/// The entries of `map` that belong to Service `svc`.
fn ports_of(map: &ServicePortMap, svc: &NamespacedName) -> ServicePortMap {
    // ServicePortName orders by namespace, name, port name, protocol: a Service's ports are
    // one run starting at (namespace, name, "", the first protocol).
    let from = ServicePortName::new(svc.namespace.clone(), svc.name.clone(), "", Protocol::Tcp);
    map.range(from..)
        .take_while(|(k, _)| *k.namespace == *svc.namespace && *k.name == *svc.name)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn service_key(svc: &Service) -> Option<NamespacedName> {
    Some(NamespacedName::new(
        svc.metadata.namespace.clone().unwrap_or_default(),
        svc.metadata.name.clone()?,
    ))
}

/// Whether this proxy handles `svc` at all (proxy-name label, headless, ExternalName).
pub fn should_handle_service(config: &ProxyConfig, svc: &Service) -> bool {
    let label = svc
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_PROXY_NAME));
    if let Some(wanted) = label {
        if config.proxy_name.as_deref() != Some(wanted.as_str()) {
            return false;
        }
    }
    let Some(spec) = &svc.spec else { return false };
    if spec.type_.as_deref() == Some("ExternalName") {
        return false;
    }
    !matches!(spec.cluster_ip.as_deref(), None | Some("") | Some("None"))
}

fn parse_ips(
    config: &ProxyConfig,
    svc: &NamespacedName,
    what: &str,
    raw: &[String],
) -> Vec<IpAddr> {
    raw.iter()
        .filter_map(|s| match s.trim().parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                warn!(service = %svc, value = %s, "ignoring unparsable {what}");
                None
            }
        })
        .filter(|ip| config.family_matches(ip))
        .collect()
}

/// Converts a Service into its service ports (empty if the service is not handled).
pub fn service_to_ports(config: &ProxyConfig, svc: &Service) -> ServicePortMap {
    let mut out = ServicePortMap::new();
    let (Some(key), Some(spec)) = (service_key(svc), svc.spec.as_ref()) else {
        return out;
    };
    if !should_handle_service(config, svc) {
        return out;
    }
    let raw_cluster_ips = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.clone(),
        _ => spec.cluster_ip.iter().cloned().collect(),
    };
    let cluster_ips = parse_ips(config, &key, "cluster IP", &raw_cluster_ips);
    if cluster_ips.is_empty() {
        return out;
    }
    let svc_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    let is_lb = svc_type == "LoadBalancer";
    let external_policy_local = matches!(svc_type, "NodePort" | "LoadBalancer")
        && spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_policy_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let external_ips = parse_ips(
        config,
        &key,
        "external IP",
        spec.external_ips.as_deref().unwrap_or(&[]),
    );
    let load_balancer_ips = if is_lb {
        let raw: Vec<String> = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter(|ing| matches!(ing.ip_mode.as_deref(), None | Some("VIP")))
            .filter_map(|ing| ing.ip.clone())
            .collect();
        parse_ips(config, &key, "load-balancer IP", &raw)
    } else {
        Vec::new()
    };
    let load_balancer_source_ranges: Vec<IpNet> = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .filter_map(|s| match s.trim().parse::<IpNet>() {
            Ok(net) => Some(net),
            Err(_) => {
                warn!(service = %key, value = %s, "ignoring unparsable loadBalancerSourceRange");
                None
            }
        })
        .filter(|net| config.family_matches(&net.addr()))
        .collect();
    let session_affinity_timeout =
        (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS)
        });
    let health_check_node_port = if is_lb && external_policy_local {
        spec.health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
    } else {
        None
    };

    // Interned: a handful of distinct values across thousands of services.
    let scheduler = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_SCHEDULER))
        .map(|v| intern(v.trim()));
    let namespace = intern(&key.namespace);
    let svc_name: Arc<str> = Arc::from(key.name.as_str());
    for p in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::from_k8s(p.protocol.as_deref()) else {
            warn!(service = %key, protocol = ?p.protocol, "ignoring port with unknown protocol");
            continue;
        };
        let Ok(port) = u16::try_from(p.port) else {
            warn!(service = %key, port = p.port, "ignoring out-of-range port");
            continue;
        };
        let name = ServicePortName::new(
            namespace.clone(),
            svc_name.clone(),
            intern(p.name.as_deref().unwrap_or_default()),
            protocol,
        );
        let sp = ServicePort {
            cluster_ips: cluster_ips.clone(),
            port,
            protocol,
            node_port: p
                .node_port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0),
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            session_affinity_timeout,
            external_policy_local,
            internal_policy_local,
            health_check_node_port,
            load_balancer_source_ranges: load_balancer_source_ranges.clone(),
            scheduler: scheduler.clone(),
        };
        out.insert(name, Arc::new(sp));
    }
    out
}

/// A slice port: (name, port, protocol).
type SlicePort = (String, u16, Protocol);

/// One EndpointSlice reduced to what the proxy uses (value-comparable for netting).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SliceInfo {
    /// Per (name, port, protocol), sorted: the endpoints with that port, sorted by IP. The
    /// merged [`EndpointsMap`] shares these `Arc`s (at 10,000 services a second copy of every
    /// endpoint was ~7 MB).
    ports: Vec<(SlicePort, Vec<Arc<Endpoint>>)>,
}

#[derive(Debug, Default)]
struct SliceSet {
    applied: BTreeMap<String, Arc<SliceInfo>>,
    /// `None` = slice deleted.
    pending: BTreeMap<String, Option<Arc<SliceInfo>>>,
}

/// Accumulates EndpointSlice changes between syncs, netted per slice, merged per service.
#[derive(Debug)]
pub struct EndpointsChangeTracker {
    config: Arc<ProxyConfig>,
    services: BTreeMap<NamespacedName, SliceSet>,
    /// How many of `services` have pending changes (kept as a count: the gauges and
    /// `has_pending` are read on every event, and scanning 10,000 services each time made the
    /// initial list quadratic).
    pending_services: usize,
    /// When this tracker was created: older trigger times are not ours to measure.
    started: SystemTime,
    /// Trigger times of the pending changes, per service.
    trigger_times: BTreeMap<NamespacedName, Vec<SystemTime>>,
}

impl EndpointsChangeTracker {
    /// A tracker for this proxy's identity and family.
    pub fn new(config: Arc<ProxyConfig>) -> Self {
        Self {
            config,
            services: BTreeMap::new(),
            pending_services: 0,
            started: SystemTime::now(),
            trigger_times: BTreeMap::new(),
        }
    }

    /// Records an EndpointSlice event. Returns true if any change is pending afterwards.
    pub fn update(&mut self, prev: Option<&EndpointSlice>, cur: Option<&EndpointSlice>) -> bool {
        self.update_at(prev, cur, SystemTime::now())
    }

    /// [`EndpointsChangeTracker::update`] for an event received at `received` (the trigger time
    /// of a slice without the trigger-time annotation).
    pub fn update_at(
        &mut self,
        prev: Option<&EndpointSlice>,
        cur: Option<&EndpointSlice>,
        received: SystemTime,
    ) -> bool {
        let prev_key = prev.and_then(slice_key);
        let cur_key = cur.and_then(slice_key);
        if let Some(pk) = &prev_key {
            if cur_key.as_ref() != Some(pk) && self.set_pending(pk, None) {
                // A deletion's annotation dates the last update, not the deletion.
                self.trigger_times.remove(&pk.0);
            }
        }
        if let Some(ck) = &cur_key {
            let info = cur.and_then(|s| slice_info(&self.config, s)).map(Arc::new);
            let removed = info.is_none();
            if self.set_pending(ck, info) {
                if removed {
                    self.trigger_times.remove(&ck.0);
                } else if let Some(t) = cur
                    .map(|s| trigger_time(s).unwrap_or(received))
                    .filter(|t| *t >= self.started)
                {
                    self.trigger_times.entry(ck.0.clone()).or_default().push(t);
                }
            }
        }
        // Changes that netted out were never programmed: nothing to measure for them. Only the
        // services this event touched can have netted out (checking all would make a relist of
        // N slices cost N²).
        for svc in prev_key.iter().chain(cur_key.iter()).map(|k| &k.0) {
            if self.services.get(svc).is_none_or(|s| s.pending.is_empty()) {
                self.trigger_times.remove(svc);
            }
        }
        self.has_pending()
    }

    /// Records the pending state of one slice; returns whether that changed anything.
    fn set_pending(
        &mut self,
        (svc, slice): &(NamespacedName, String),
        info: Option<Arc<SliceInfo>>,
    ) -> bool {
        let set = self.services.entry(svc.clone()).or_default();
        let was_pending = !set.pending.is_empty();
        let changed = if set.applied.get(slice) == info.as_ref() {
            set.pending.remove(slice).is_some()
        } else {
            set.pending.insert(slice.clone(), info.clone()) != Some(info)
        };
        match (was_pending, set.pending.is_empty()) {
            (false, false) => self.pending_services += 1,
            (true, true) => self.pending_services -= 1,
            _ => {}
        }
        if set.applied.is_empty() && set.pending.is_empty() {
            self.services.remove(svc);
        }
        changed
    }

    /// Number of services with pending endpoint changes.
    pub fn pending_services(&self) -> usize {
        self.pending_services
    }

    /// Takes the trigger times recorded for the pending changes (call beside
    /// [`EndpointsChangeTracker::apply`]; observe them once the sync that programs them succeeded).
    pub fn take_trigger_times(&mut self) -> Vec<SystemTime> {
        std::mem::take(&mut self.trigger_times)
            .into_values()
            .flatten()
            .collect()
    }

    /// Whether any service has pending endpoint changes.
    pub fn has_pending(&self) -> bool {
        self.pending_services > 0
    }

    /// Folds all pending changes into `map`.
    pub fn apply(&mut self, map: &mut EndpointsMap) -> EndpointsUpdateResult {
        let mut result = EndpointsUpdateResult::default();
        let mut emptied = Vec::new();
        for (svc, set) in &mut self.services {
            if set.pending.is_empty() {
                continue;
            }
            let old = merge_slices(svc, &set.applied);
            for (slice, info) in std::mem::take(&mut set.pending) {
                match info {
                    Some(info) => set.applied.insert(slice, info),
                    None => set.applied.remove(&slice),
                };
            }
            let new = merge_slices(svc, &set.applied);
            if set.applied.is_empty() {
                emptied.push(svc.clone());
            }
            if old == new {
                continue;
            }
            result.updated_services.insert(svc.clone());
            diff_udp(&old, &new, &mut result);
            for name in old.keys() {
                map.remove(name);
            }
            map.extend(new);
        }
        for svc in emptied {
            self.services.remove(&svc);
        }
        self.pending_services = 0;
        result
    }
}

fn diff_udp(old: &EndpointsMap, new: &EndpointsMap, result: &mut EndpointsUpdateResult) {
    let serving = |m: &EndpointsMap, k: &ServicePortName| -> BTreeSet<SocketAddr> {
        m.get(k)
            .into_iter()
            .flatten()
            .filter(|e| e.serving)
            .map(|e| e.addr())
            .collect()
    };
    let keys: BTreeSet<&ServicePortName> = old.keys().chain(new.keys()).collect();
    for k in keys.into_iter().filter(|k| k.protocol == Protocol::Udp) {
        let (before, after) = (serving(old, k), serving(new, k));
        for addr in before.difference(&after) {
            result.deleted_udp_endpoints.insert((k.clone(), *addr));
        }
        if before.is_empty() && !after.is_empty() {
            result.newly_active_udp_services.insert(k.clone());
        }
    }
}

/// Merges a service's slices (in slice-name order) into per-port endpoint lists, deduplicating
/// by `ip:port` and preferring a local copy, as kube-proxy's endpointslicecache does.
fn merge_slices(svc: &NamespacedName, slices: &BTreeMap<String, Arc<SliceInfo>>) -> EndpointsMap {
    let mut merged: BTreeMap<ServicePortName, BTreeMap<SocketAddr, Arc<Endpoint>>> =
        BTreeMap::new();
    let namespace = intern(&svc.namespace);
    let name: Arc<str> = Arc::from(svc.name.as_str());
    for info in slices.values() {
        for ((port_name, _, protocol), eps) in &info.ports {
            let key = ServicePortName::new(
                namespace.clone(),
                name.clone(),
                intern(port_name),
                *protocol,
            );
            let set = merged.entry(key).or_default();
            for ep in eps {
                let addr = ep.addr();
                if !set.contains_key(&addr) || ep.is_local {
                    set.insert(addr, ep.clone());
                }
            }
        }
    }
    merged
        .into_iter()
        .map(|(k, v)| (k, v.into_values().collect()))
        .collect()
}

/// The slice's trigger-time annotation, if present and valid RFC 3339.
fn trigger_time(slice: &EndpointSlice) -> Option<SystemTime> {
    let raw = slice
        .metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_LAST_CHANGE_TRIGGER_TIME)?;
    match raw.parse::<k8s_openapi::jiff::Timestamp>() {
        // Times before the epoch cannot be trigger times of anything we measure.
        Ok(t) => u64::try_from(t.as_nanosecond())
            .ok()
            .map(|ns| UNIX_EPOCH + Duration::from_nanos(ns)),
        Err(e) => {
            warn!(value = %raw, error = %e, "ignoring unparsable trigger-time annotation");
            None
        }
    }
}

fn slice_key(slice: &EndpointSlice) -> Option<(NamespacedName, String)> {
    let name = slice.metadata.name.clone()?;
    let svc = slice.metadata.labels.as_ref()?.get(LABEL_SERVICE_NAME)?;
    Some((
        NamespacedName::new(
            slice.metadata.namespace.clone().unwrap_or_default(),
            svc.clone(),
        ),
        name,
    ))
}

/// Reduces a slice to [`SliceInfo`]; `None` if the slice is filtered out.
fn slice_info(config: &ProxyConfig, slice: &EndpointSlice) -> Option<SliceInfo> {
    let labels = slice.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(LABEL_HEADLESS)) {
        return None;
    }
    let family = match slice.address_type.as_str() {
        "IPv4" => IpFamily::V4,
        "IPv6" => IpFamily::V6,
        _ => return None,
    };
    if config.ip_family.is_some_and(|f| f != family) {
        return None;
    }
    let mut ports: Vec<SlicePort> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let port = u16::try_from(p.port?).ok().filter(|p| *p != 0)?;
            let protocol = Protocol::from_k8s(p.protocol.as_deref())?;
            Some((p.name.clone().unwrap_or_default(), port, protocol))
        })
        .collect();
    ports.sort();
    ports.dedup();
    let mut endpoints: Vec<Endpoint> = slice
        .endpoints
        .iter()
        .filter_map(|ep| {
            let ip: IpAddr = ep.addresses.first()?.parse().ok()?;
            if !family.matches(&ip) {
                return None;
            }
            let cond = ep.conditions.clone().unwrap_or_default();
            let hints = ep.hints.as_ref();
            Some(Endpoint {
                ip,
                port: 0,
                ready: cond.ready.unwrap_or(true),
                serving: cond.serving.unwrap_or(true),
                terminating: cond.terminating.unwrap_or(false),
                is_local: ep.node_name.as_deref() == Some(config.node_name.as_str()),
                node_name: ep.node_name.clone(),
                zone: ep.zone.clone(),
                zone_hints: hints
                    .and_then(|h| h.for_zones.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|z| z.name.clone())
                    .collect(),
                node_hints: hints
                    .and_then(|h| h.for_nodes.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|n| n.name.clone())
                    .collect(),
            })
        })
        .collect();
    endpoints.sort_by(|a, b| a.ip.cmp(&b.ip).then(a.is_local.cmp(&b.is_local)));
    let ports = ports
        .into_iter()
        .map(|p| {
            let eps = endpoints
                .iter()
                .map(|e| {
                    Arc::new(Endpoint {
                        port: p.1,
                        ..e.clone()
                    })
                })
                .collect();
            (p, eps)
        })
        .collect();
    Some(SliceInfo { ports })
}

#[cfg(test)]
mod tests;
