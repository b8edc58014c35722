use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::testutil::{service, slice, with_label, Cond};

fn cfg() -> Arc<ProxyConfig> {
    Arc::new(ProxyConfig {
        node_name: "node-a".into(),
        proxy_name: Some("sluice".into()),
        ip_family: Some(IpFamily::V4),
    })
}

fn spn(ns: &str, name: &str, port: &str, p: Protocol) -> ServicePortName {
    ServicePortName::new(ns, name, port, p)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn service_ports_are_converted() {
    let mut svc = service(
        "ns",
        "web",
        "10.96.0.10",
        &[("http", 80, "TCP"), ("dns", 53, "UDP")],
    );
    let spec = svc.spec.as_mut().unwrap();
    spec.type_ = Some("LoadBalancer".into());
    spec.external_traffic_policy = Some("Local".into());
    spec.health_check_node_port = Some(31000);
    spec.session_affinity = Some("ClientIP".into());
    spec.external_ips = Some(vec!["192.0.2.1".into(), "2001:db8::1".into()]);
    spec.load_balancer_source_ranges = Some(vec!["203.0.113.0/24".into(), "bogus".into()]);
    spec.ports.as_mut().unwrap()[0].node_port = Some(30080);
    svc.status = Some(k8s_openapi::api::core::v1::ServiceStatus {
        load_balancer: Some(k8s_openapi::api::core::v1::LoadBalancerStatus {
            ingress: Some(vec![
                k8s_openapi::api::core::v1::LoadBalancerIngress {
                    ip: Some("198.51.100.1".into()),
                    ..Default::default()
                },
                k8s_openapi::api::core::v1::LoadBalancerIngress {
                    ip: Some("198.51.100.2".into()),
                    ip_mode: Some("Proxy".into()),
                    ..Default::default()
                },
            ]),
        }),
        conditions: None,
    });
    let ports = service_to_ports(&cfg(), &svc);
    assert_eq!(ports.len(), 2);
    let http = &ports[&spn("ns", "web", "http", Protocol::Tcp)];
    assert_eq!(http.cluster_ips, vec![ip("10.96.0.10")]);
    assert_eq!(http.port, 80);
    assert_eq!(http.node_port, Some(30080));
    assert_eq!(
        http.external_ips,
        vec![ip("192.0.2.1")],
        "other family dropped"
    );
    assert_eq!(
        http.load_balancer_ips,
        vec![ip("198.51.100.1")],
        "ipMode Proxy dropped"
    );
    assert_eq!(
        http.session_affinity_timeout,
        Some(DEFAULT_AFFINITY_TIMEOUT_SECONDS)
    );
    assert!(http.external_policy_local && !http.internal_policy_local);
    assert_eq!(http.health_check_node_port, Some(31000));
    assert_eq!(
        http.load_balancer_source_ranges,
        vec!["203.0.113.0/24".parse::<IpNet>().unwrap()]
    );
    let dns = &ports[&spn("ns", "web", "dns", Protocol::Udp)];
    assert_eq!(dns.node_port, None);
    assert_eq!(http.scheduler, None);
    // The scheduler annotation reaches every port (the ipvs mode validates it).
    svc.metadata.annotations = Some(
        [(ANNOTATION_SCHEDULER.to_string(), " mh ".to_string())]
            .into_iter()
            .collect(),
    );
    let ports = service_to_ports(&cfg(), &svc);
    assert!(ports.values().all(|p| p.scheduler.as_deref() == Some("mh")));
}

#[test]
fn services_are_filtered() {
    let c = cfg();
    let base = service("ns", "a", "10.96.0.1", &[("", 80, "TCP")]);
    assert_eq!(service_to_ports(&c, &base).len(), 1);
    let ours = with_label(base.clone(), LABEL_SERVICE_PROXY_NAME, "sluice");
    assert_eq!(service_to_ports(&c, &ours).len(), 1, "our proxy name");
    let other = with_label(base.clone(), LABEL_SERVICE_PROXY_NAME, "someone-else");
    assert!(service_to_ports(&c, &other).is_empty(), "other proxy name");
    let unnamed = ProxyConfig {
        proxy_name: None,
        ..(*c).clone()
    };
    assert!(
        service_to_ports(&unnamed, &ours).is_empty(),
        "labelled, we have no name"
    );
    let mut headless = base.clone();
    headless.spec.as_mut().unwrap().cluster_ip = Some("None".into());
    headless.spec.as_mut().unwrap().cluster_ips = Some(vec!["None".into()]);
    assert!(service_to_ports(&c, &headless).is_empty(), "headless");
    let mut ext = base.clone();
    ext.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
    assert!(service_to_ports(&c, &ext).is_empty(), "ExternalName");
    let v6 = service("ns", "a", "fd00::1", &[("", 80, "TCP")]);
    assert!(service_to_ports(&c, &v6).is_empty(), "other family");
}

#[test]
fn service_tracker_nets_add_then_delete() {
    let mut t = ServiceChangeTracker::new(cfg());
    let mut map = ServicePortMap::new();
    let svc = service("ns", "a", "10.96.0.1", &[("", 80, "TCP")]);
    assert!(t.update(None, Some(&svc), &map));
    assert!(
        !t.update(Some(&svc), None, &map),
        "add then delete nets out"
    );
    assert_eq!(t.apply(&mut map), ServiceUpdateResult::default());
    assert!(map.is_empty());
}

#[test]
fn service_tracker_nets_reverted_update() {
    let mut t = ServiceChangeTracker::new(cfg());
    let mut map = ServicePortMap::new();
    let v1 = service("ns", "a", "10.96.0.1", &[("", 80, "TCP")]);
    t.update(None, Some(&v1), &map);
    t.apply(&mut map);
    let v2 = service("ns", "a", "10.96.0.1", &[("", 81, "TCP")]);
    assert!(t.update(Some(&v1), Some(&v2), &map));
    assert!(!t.update(Some(&v2), Some(&v1), &map), "reverted");
    assert_eq!(t.pending(), 0);
}

/// Callers may pass a previous object that carries only its key: the applied map decides the
/// netting and what `apply` removes.
#[test]
fn service_tracker_needs_only_the_previous_key() {
    let key_only = |s: &Service| Service {
        metadata: s.metadata.clone(),
        ..Service::default()
    };
    let mut t = ServiceChangeTracker::new(cfg());
    let mut map = ServicePortMap::new();
    // A neighbour whose ports sort right after "a"'s must not be taken for "a"'s.
    let other = service("ns", "a-b", "10.96.0.2", &[("", 80, "TCP")]);
    t.update(None, Some(&other), &map);
    let v1 = service("ns", "a", "10.96.0.1", &[("", 80, "UDP")]);
    t.update(None, Some(&v1), &map);
    t.apply(&mut map);
    let v2 = service("ns", "a", "10.96.0.1", &[("", 81, "TCP")]);
    assert!(t.update(Some(&key_only(&v1)), Some(&v2), &map));
    assert!(
        !t.update(Some(&key_only(&v2)), Some(&v1), &map),
        "reverted, judged by the applied ports"
    );
    assert!(t.update(Some(&key_only(&v1)), Some(&v2), &map));
    let r = t.apply(&mut map);
    assert_eq!(r.deleted_udp_cluster_ips, BTreeSet::from([ip("10.96.0.1")]));
    assert_eq!(
        map.keys().cloned().collect::<Vec<_>>(),
        vec![
            spn("ns", "a", "", Protocol::Tcp),
            spn("ns", "a-b", "", Protocol::Tcp)
        ]
    );
    assert!(t.update(Some(&key_only(&v2)), None, &map));
    t.apply(&mut map);
    assert_eq!(
        map.keys().cloned().collect::<Vec<_>>(),
        vec![spn("ns", "a-b", "", Protocol::Tcp)],
        "deleted through a key-only object"
    );
    // After the delete nothing is applied for it: a re-add starts from nothing.
    assert!(t.update(None, Some(&v1), &map));
}

#[test]
fn service_tracker_apply_reports_changes_and_deleted_udp() {
    let mut t = ServiceChangeTracker::new(cfg());
    let mut map = ServicePortMap::new();
    let v1 = service(
        "ns",
        "dns",
        "10.96.0.10",
        &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")],
    );
    t.update(None, Some(&v1), &map);
    let r = t.apply(&mut map);
    assert_eq!(
        r.updated_services,
        BTreeSet::from([NamespacedName::new("ns", "dns")])
    );
    assert!(r.deleted_udp_cluster_ips.is_empty());
    assert_eq!(map.len(), 2);

    let v2 = service("ns", "dns", "10.96.0.10", &[("dns-tcp", 53, "TCP")]);
    t.update(Some(&v1), Some(&v2), &map);
    let r = t.apply(&mut map);
    assert_eq!(
        r.deleted_udp_cluster_ips,
        BTreeSet::from([ip("10.96.0.10")])
    );
    assert_eq!(
        map.keys().cloned().collect::<Vec<_>>(),
        vec![spn("ns", "dns", "dns-tcp", Protocol::Tcp)]
    );

    // A service that becomes labelled for another proxy is removed.
    let v3 = with_label(v2.clone(), LABEL_SERVICE_PROXY_NAME, "other");
    t.update(Some(&v2), Some(&v3), &map);
    t.apply(&mut map);
    assert!(map.is_empty());
}

#[test]
fn slices_merge_per_service_with_dedupe_and_target_port_by_name() {
    let mut t = EndpointsChangeTracker::new(cfg());
    let mut map = EndpointsMap::new();
    let s1 = slice(
        "ns",
        "web",
        "web-1",
        &[("http", 8080, "TCP")],
        &[
            ("10.0.0.2", "node-b", Cond::Ready),
            ("10.0.0.1", "node-a", Cond::Ready),
        ],
    );
    // Overlaps 10.0.0.2 (not local here, local nowhere) and adds a terminating one.
    let s2 = slice(
        "ns",
        "web",
        "web-2",
        &[("http", 8080, "TCP")],
        &[
            ("10.0.0.2", "node-b", Cond::NotReady),
            ("10.0.0.3", "", Cond::ServingTerminating),
        ],
    );
    t.update(None, Some(&s1));
    t.update(None, Some(&s2));
    let r = t.apply(&mut map);
    assert_eq!(
        r.updated_services,
        BTreeSet::from([NamespacedName::new("ns", "web")])
    );
    let eps = &map[&spn("ns", "web", "http", Protocol::Tcp)];
    let addrs: Vec<SocketAddr> = eps.iter().map(|e| e.addr()).collect();
    assert_eq!(
        addrs,
        vec![
            "10.0.0.1:8080".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
            "10.0.0.3:8080".parse().unwrap()
        ]
    );
    assert!(eps[0].is_local && !eps[1].is_local);
    assert!(eps[1].ready, "first slice (by name) wins for duplicates");
    assert!(eps[2].serving && eps[2].terminating && !eps[2].ready);

    // Deleting one slice keeps the other's endpoints.
    t.update(Some(&s1), None);
    t.apply(&mut map);
    let eps = &map[&spn("ns", "web", "http", Protocol::Tcp)];
    assert_eq!(eps.len(), 2);
    assert!(!eps[0].ready);
}

#[test]
fn slice_tracker_nets_and_skips_headless() {
    let mut t = EndpointsChangeTracker::new(cfg());
    let s = slice(
        "ns",
        "web",
        "web-1",
        &[("", 80, "TCP")],
        &[("10.0.0.1", "", Cond::Ready)],
    );
    assert!(t.update(None, Some(&s)));
    assert!(!t.update(Some(&s), None), "add then delete nets out");

    let mut headless = s.clone();
    headless
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(LABEL_HEADLESS.into(), String::new());
    assert!(!t.update(None, Some(&headless)), "headless slice ignored");

    let mut v6 = s.clone();
    v6.address_type = "IPv6".into();
    v6.endpoints[0].addresses = vec!["fd00::1".into()];
    assert!(!t.update(None, Some(&v6)), "other family ignored");

    let mut map = EndpointsMap::new();
    assert_eq!(t.apply(&mut map), EndpointsUpdateResult::default());
    assert!(map.is_empty());

    // An unchanged re-delivery (resync) is not a change either.
    t.update(None, Some(&s));
    t.apply(&mut map);
    assert!(!t.update(Some(&s), Some(&s.clone())));
}

#[test]
fn slice_tracker_reports_udp_conntrack_work() {
    let mut t = EndpointsChangeTracker::new(cfg());
    let mut map = EndpointsMap::new();
    let dns = spn("ns", "dns", "dns", Protocol::Udp);
    let s0 = slice(
        "ns",
        "dns",
        "dns-1",
        &[("dns", 53, "UDP")],
        &[("10.0.0.1", "", Cond::NotReady)],
    );
    t.update(None, Some(&s0));
    let r = t.apply(&mut map);
    assert!(r.newly_active_udp_services.is_empty());

    let s1 = slice(
        "ns",
        "dns",
        "dns-1",
        &[("dns", 53, "UDP")],
        &[("10.0.0.1", "", Cond::Ready), ("10.0.0.2", "", Cond::Ready)],
    );
    t.update(Some(&s0), Some(&s1));
    let r = t.apply(&mut map);
    assert_eq!(r.newly_active_udp_services, BTreeSet::from([dns.clone()]));
    assert!(r.deleted_udp_endpoints.is_empty());

    let s2 = slice(
        "ns",
        "dns",
        "dns-1",
        &[("dns", 53, "UDP")],
        &[("10.0.0.2", "", Cond::Ready)],
    );
    t.update(Some(&s1), Some(&s2));
    let r = t.apply(&mut map);
    assert_eq!(
        r.deleted_udp_endpoints,
        BTreeSet::from([(dns.clone(), "10.0.0.1:53".parse().unwrap())])
    );
    assert!(r.newly_active_udp_services.is_empty());

    t.update(Some(&s2), None);
    let r = t.apply(&mut map);
    assert_eq!(
        r.deleted_udp_endpoints,
        BTreeSet::from([(dns, "10.0.0.2:53".parse().unwrap())])
    );
    assert!(map.is_empty());
}

/// The pending-services count kept incrementally matches a recount after every event and apply.
#[test]
fn pending_services_count_follows_every_event() {
    let mut t = EndpointsChangeTracker::new(cfg());
    let mut map = EndpointsMap::new();
    let recount = |t: &EndpointsChangeTracker| {
        t.services
            .values()
            .filter(|s| !s.pending.is_empty())
            .count()
    };
    let mk = |svc: &str, name: &str, ip: &str| {
        slice(
            "ns",
            svc,
            name,
            &[("", 80, "TCP")],
            &[(ip, "node-a", Cond::Ready)],
        )
    };
    // A deterministic walk over adds, changes, reverts, deletes and applies on 3 services.
    let mut state: BTreeMap<(usize, usize), Option<EndpointSlice>> = BTreeMap::new();
    let mut x: u64 = 7;
    for step in 0..400 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let (svc, sl, op) = ((x >> 33) % 3, (x >> 40) % 2, (x >> 50) % 5);
        let key = (svc as usize, sl as usize);
        let name = format!("s{svc}-{sl}");
        let prev = state.get(&key).cloned().flatten();
        let cur = match op {
            0 | 1 => Some(mk(&format!("s{svc}"), &name, "10.0.0.1")),
            2 => Some(mk(&format!("s{svc}"), &name, "10.0.0.2")),
            3 => None,
            _ => {
                t.apply(&mut map);
                assert_eq!(t.pending_services(), 0, "step {step}");
                assert!(!t.has_pending());
                continue;
            }
        };
        if prev.is_none() && cur.is_none() {
            continue;
        }
        t.update(prev.as_ref(), cur.as_ref());
        state.insert(key, cur);
        assert_eq!(t.pending_services(), recount(&t), "step {step}");
        assert_eq!(t.has_pending(), recount(&t) > 0, "step {step}");
    }
}
