use std::sync::Arc;

use super::*;
use crate::model::{Endpoint, Protocol, ServicePort};
use crate::testutil::{service, slice, Cond};

type Programmed = BTreeMap<ServicePortName, (Arc<ServicePort>, Vec<Arc<Endpoint>>)>;

/// A validating fake: keeps its own "programmed" state, applying full syncs wholesale and
/// partial syncs only for the listed services, and refuses a partial sync before any full one.
/// Tests compare its state with the proxier's maps, which proves partial syncs are sufficient.
#[derive(Default)]
struct FakeDataplane {
    calls: Vec<Changes>,
    programmed: Programmed,
    fully_synced: bool,
    fail_next: bool,
    cleaned: bool,
}

fn render(
    services: &ServicePortMap,
    endpoints: &EndpointsMap,
    only: Option<&NamespacedName>,
) -> Programmed {
    services
        .iter()
        .filter(|(k, _)| only.is_none_or(|s| *s == k.service()))
        .map(|(k, sp)| {
            (
                k.clone(),
                (sp.clone(), endpoints.get(k).cloned().unwrap_or_default()),
            )
        })
        .collect()
}

impl Dataplane for FakeDataplane {
    fn sync(
        &mut self,
        services: &ServicePortMap,
        endpoints: &EndpointsMap,
        changes: &Changes,
    ) -> Result<(), Error> {
        self.calls.push(changes.clone());
        if std::mem::take(&mut self.fail_next) {
            return Err(Error::Sync {
                dataplane: "fake",
                message: "injected failure".into(),
                source: None,
            });
        }
        if changes.full {
            self.programmed = render(services, endpoints, None);
            self.fully_synced = true;
            return Ok(());
        }
        if !self.fully_synced {
            return Err(Error::Sync {
                dataplane: "fake",
                message: "partial sync before any full sync".into(),
                source: None,
            });
        }
        for svc in &changes.services {
            self.programmed.retain(|k, _| k.service() != *svc);
            self.programmed
                .extend(render(services, endpoints, Some(svc)));
        }
        Ok(())
    }

    fn cleanup(&mut self) -> Result<(), Error> {
        self.programmed.clear();
        self.cleaned = true;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "fake"
    }
}

const HOUR: Duration = Duration::from_secs(3600);

fn proxier() -> Proxier<FakeDataplane> {
    Proxier::new(ProxyConfig::new("node-a"), HOUR, FakeDataplane::default())
}

fn nn(name: &str) -> NamespacedName {
    NamespacedName::new("ns", name)
}

fn assert_consistent(p: &Proxier<FakeDataplane>) {
    assert_eq!(
        p.dataplane().programmed,
        render(p.services(), p.endpoints(), None)
    );
}

fn web() -> Service {
    service("ns", "web", "10.96.0.1", &[("http", 80, "TCP")])
}

fn web_slice(ips: &[&str]) -> EndpointSlice {
    let eps: Vec<(&str, &str, Cond)> = ips.iter().map(|ip| (*ip, "node-a", Cond::Ready)).collect();
    slice("ns", "web", "web-1", &[("http", 8080, "TCP")], &eps)
}

/// A proxier that has done its initial full sync of `web` with one endpoint.
fn initialized(t0: Instant) -> Proxier<FakeDataplane> {
    let mut p = proxier();
    p.on_service_add(&web());
    p.on_endpoint_slice_add(&web_slice(&["10.0.0.1"]));
    p.on_services_synced();
    p.on_endpoint_slices_synced();
    assert_eq!(p.sync_at(t0).unwrap(), SyncOutcome::Synced { full: true });
    p
}

#[test]
fn nothing_programmed_until_both_synced() {
    let t0 = Instant::now();
    let mut p = proxier();
    assert!(!p.on_service_add(&web()), "no sync wanted before init");
    p.on_endpoint_slice_add(&web_slice(&["10.0.0.1"]));
    assert_eq!(p.sync_at(t0).unwrap(), SyncOutcome::NotInitialized);
    assert!(!p.on_services_synced());
    assert_eq!(p.sync_at(t0).unwrap(), SyncOutcome::NotInitialized);
    assert!(p.dataplane().calls.is_empty());
    assert!(p.services().is_empty(), "trackers not applied before init");

    assert!(p.on_endpoint_slices_synced());
    assert_eq!(p.sync_at(t0).unwrap(), SyncOutcome::Synced { full: true });
    assert_eq!(p.dataplane().calls.len(), 1);
    assert_eq!(p.services().len(), 1);
    let eps = &p.endpoints()[&ServicePortName::new("ns", "web", "http", Protocol::Tcp)];
    assert_eq!(eps[0].addr(), "10.0.0.1:8080".parse().unwrap());
    assert!(eps[0].is_local);
    assert_consistent(&p);
}

#[test]
fn netted_changes_do_not_call_the_dataplane() {
    let t0 = Instant::now();
    let mut p = initialized(t0);
    let tmp = service("ns", "tmp", "10.96.0.2", &[("", 80, "TCP")]);
    assert!(p.on_service_add(&tmp));
    assert!(!p.on_service_delete(&tmp));
    let s = web_slice(&["10.0.0.1", "10.0.0.9"]);
    p.on_endpoint_slice_update(Some(&web_slice(&["10.0.0.1"])), Some(&s));
    p.on_endpoint_slice_update(Some(&s), Some(&web_slice(&["10.0.0.1"])));
    assert_eq!(
        p.sync_at(t0 + Duration::from_secs(1)).unwrap(),
        SyncOutcome::NoChanges
    );
    assert_eq!(p.dataplane().calls.len(), 1);
}

#[test]
fn partial_sync_lists_only_changed_services() {
    let t0 = Instant::now();
    let mut p = initialized(t0);
    let db = service("ns", "db", "10.96.0.3", &[("pg", 5432, "TCP")]);
    p.on_service_add(&db);
    p.on_endpoint_slice_update(
        Some(&web_slice(&["10.0.0.1"])),
        Some(&web_slice(&["10.0.0.2"])),
    );
    assert_eq!(
        p.sync_at(t0 + Duration::from_secs(1)).unwrap(),
        SyncOutcome::Synced { full: false }
    );
    let last = p.dataplane().calls.last().unwrap();
    assert!(!last.full);
    assert_eq!(last.services, BTreeSet::from([nn("db"), nn("web")]));
    assert_consistent(&p);

    p.on_service_delete(&web());
    p.sync_at(t0 + Duration::from_secs(2)).unwrap();
    let last = p.dataplane().calls.last().unwrap();
    assert_eq!(last.services, BTreeSet::from([nn("web")]));
    assert_consistent(&p);
}

#[test]
fn failure_forces_full_sync_and_keeps_changes() {
    let t0 = Instant::now();
    let mut p = initialized(t0);
    let dns = service("ns", "dns", "10.96.0.10", &[("dns", 53, "UDP")]);
    p.on_service_add(&dns);
    p.sync_at(t0 + Duration::from_secs(1)).unwrap();
    assert_consistent(&p);

    p.on_service_delete(&dns);
    p.dataplane_mut().fail_next = true;
    let err = p.sync_at(t0 + Duration::from_secs(2)).unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert!(!p.dataplane().calls.last().unwrap().full);

    // Nothing new happened, but the retry is full and still carries the UDP cleanup.
    assert_eq!(
        p.sync_at(t0 + Duration::from_secs(3)).unwrap(),
        SyncOutcome::Synced { full: true }
    );
    let last = p.dataplane().calls.last().unwrap();
    assert!(last.full);
    assert_eq!(last.services, BTreeSet::from([nn("dns")]));
    assert_eq!(
        last.deleted_udp_cluster_ips,
        BTreeSet::from(["10.96.0.10".parse().unwrap()])
    );
    assert_consistent(&p);

    // Then back to partial syncs.
    p.on_endpoint_slice_update(
        Some(&web_slice(&["10.0.0.1"])),
        Some(&web_slice(&["10.0.0.5"])),
    );
    assert_eq!(
        p.sync_at(t0 + Duration::from_secs(4)).unwrap(),
        SyncOutcome::Synced { full: false }
    );
    assert!(p
        .dataplane()
        .calls
        .last()
        .unwrap()
        .deleted_udp_cluster_ips
        .is_empty());
    assert_consistent(&p);
}

#[test]
fn periodic_full_sync() {
    let t0 = Instant::now();
    let mut p = initialized(t0);
    // Counted from the end of the full sync.
    let end = p.last_full_sync().unwrap();
    assert!(end >= t0);
    assert_eq!(
        p.sync_at(end + HOUR - Duration::from_secs(1)).unwrap(),
        SyncOutcome::NoChanges
    );
    assert_eq!(
        p.sync_at(end + HOUR).unwrap(),
        SyncOutcome::Synced { full: true }
    );
    assert_eq!(
        p.sync_at(end + HOUR + Duration::from_secs(1)).unwrap(),
        SyncOutcome::NoChanges
    );
}

#[test]
fn zone_change_forces_full_sync_and_labels_reach_dataplane() {
    let t0 = Instant::now();
    let mut p = initialized(t0);
    let labels = BTreeMap::from([(LABEL_TOPOLOGY_ZONE.to_string(), "zone-a".to_string())]);
    assert!(p.on_node_labels(labels.clone()));
    assert!(!p.on_node_labels(labels.clone()), "same zone again");
    assert_eq!(
        p.sync_at(t0 + Duration::from_secs(1)).unwrap(),
        SyncOutcome::Synced { full: true }
    );
    assert_eq!(p.dataplane().calls.last().unwrap().node_labels, labels);
    p.on_service_add(&service("ns", "x", "10.96.0.4", &[("", 80, "TCP")]));
    p.sync_at(t0 + Duration::from_secs(2)).unwrap();
    assert_eq!(
        p.dataplane().calls.last().unwrap().node_labels,
        labels,
        "labels persist"
    );
}

#[test]
fn cleanup_delegates() {
    let mut p = initialized(Instant::now());
    p.cleanup().unwrap();
    assert!(p.dataplane().cleaned && p.dataplane().programmed.is_empty());
}

/// Sleeps inside each sync (a slow full sync, as at 10,000 services with iptables-nft).
struct SlowFull {
    inner: FakeDataplane,
    delay: Duration,
}

impl Dataplane for SlowFull {
    fn sync(
        &mut self,
        services: &ServicePortMap,
        endpoints: &EndpointsMap,
        changes: &Changes,
    ) -> Result<(), Error> {
        if changes.full {
            std::thread::sleep(self.delay);
        }
        self.inner.sync(services, endpoints, changes)
    }

    fn cleanup(&mut self) -> Result<(), Error> {
        self.inner.cleanup()
    }

    fn name(&self) -> &'static str {
        "slow-full"
    }
}

#[test]
fn full_sync_period_counts_from_the_end_of_the_full_sync() {
    // A full sync that takes longer than the period must not make every later sync full.
    let period = Duration::from_millis(50);
    let mut p = Proxier::new(
        ProxyConfig::new("node-a"),
        period,
        SlowFull {
            inner: FakeDataplane::default(),
            delay: Duration::from_millis(80),
        },
    );
    p.on_service_add(&web());
    p.on_services_synced();
    p.on_endpoint_slices_synced();
    let t0 = Instant::now();
    assert_eq!(p.sync_at(t0).unwrap(), SyncOutcome::Synced { full: true });
    let ended = p.last_full_sync().unwrap();
    assert!(
        ended >= t0 + Duration::from_millis(80),
        "recorded at the end"
    );
    // Just after the slow full sync (past t0 + period, before end + period): partial.
    p.on_endpoint_slice_add(&web_slice(&["10.0.0.1"]));
    assert_eq!(
        p.sync_at(t0 + Duration::from_millis(90)).unwrap(),
        SyncOutcome::Synced { full: false }
    );
    assert_eq!(
        p.sync_at(ended + period).unwrap(),
        SyncOutcome::Synced { full: true }
    );
}

#[test]
fn failed_full_sync_does_not_count_as_full() {
    let t0 = Instant::now();
    let mut p = initialized(t0);
    let full_at = p.last_full_sync().unwrap();
    p.dataplane_mut().fail_next = true;
    assert!(p.sync_at(full_at + HOUR).is_err());
    assert!(p.dataplane().calls.last().unwrap().full);
    assert_eq!(p.last_full_sync(), Some(full_at));
    assert_eq!(
        p.sync_at(full_at + HOUR + Duration::from_secs(1)).unwrap(),
        SyncOutcome::Synced { full: true }
    );
    assert!(p.last_full_sync().unwrap() >= full_at + HOUR + Duration::from_secs(1));
}

#[test]
fn changed_ports_are_exactly_the_changed_services_ports() {
    use crate::model::{Protocol, ServicePort, ServicePortName};
    let mut map = ServicePortMap::new();
    for (ns, name, port, p) in [
        ("ns", "a", "", Protocol::Udp),
        ("ns", "a", "http", Protocol::Tcp),
        ("ns", "a", "http", Protocol::Sctp),
        ("ns", "ab", "", Protocol::Tcp),
        ("ns", "b", "x", Protocol::Tcp),
        ("ns2", "a", "", Protocol::Tcp),
    ] {
        map.insert(
            ServicePortName::new(ns, name, port, p),
            Arc::new(ServicePort::cluster_ip("10.96.0.1".parse().unwrap(), 80, p)),
        );
    }
    let changes = Changes {
        services: [
            NamespacedName::new("ns", "a"),
            NamespacedName::new("ns", "gone"),
        ]
        .into(),
        ..Changes::default()
    };
    let got: Vec<String> = changes.changed_ports(&map).map(|k| k.to_string()).collect();
    assert_eq!(got, ["ns/a:/UDP", "ns/a:http/TCP", "ns/a:http/SCTP"]);
}
