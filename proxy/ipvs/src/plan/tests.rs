use std::fmt::Write as _;

use sluice_proxy::golden;
use sluice_proxy::model::NamespacedName;
use sluice_proxy::scenarios::{self, ep, one, spn, NODE, NODE_IP};

use super::*;
use crate::netlink::IP_VS_SVC_F_HASHED;

fn cfg() -> Config {
    let mut c = Config::new(NODE);
    c.node.node_ips = vec![scenarios::ip(NODE_IP)];
    c.node.cluster_cidr = Some("10.244.0.0/16".parse().unwrap());
    c
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn model(s: &ServicePortMap, e: &EndpointsMap) -> Model {
    Model::build(s, e, &cfg(), &labels())
}

const T0: Duration = Duration::from_secs(1000);

fn all(m: &Model, c: &Current) -> Vec<Op> {
    plan(m, c, &cfg(), Scope::All, T0)
}

fn text(ops: &[Op]) -> String {
    ops.iter().map(|o| format!("{o}\n")).collect()
}

/// Applies `ops` one at a time, checking after each that no virtual server that has usable
/// destinations before and after the plan is ever left without one.
fn apply_checked(c: &mut Current, ops: &[Op], before: &Model, after: &Model, what: &str) {
    let keep: Vec<FrontEnd> = before
        .desired()
        .iter()
        .filter(|(f, w)| {
            !w.dests.is_empty()
                && after
                    .desired()
                    .get(f)
                    .is_some_and(|w2| !w2.dests.is_empty())
                && c.services.contains_key(f)
        })
        .map(|(f, _)| *f)
        .collect();
    for (i, op) in ops.iter().enumerate() {
        c.apply(op, T0);
        for f in &keep {
            let live = c.services[f]
                .dests
                .values()
                .filter(|d| d.weight > 0)
                .count();
            assert!(
                live > 0,
                "{what}: {f} has no live destination after op {i} ({op})"
            );
        }
    }
}

/// The golden file of a scenario: the plan from an empty kernel, the kernel state it leaves,
/// and the companion table.
fn golden_text(s: &ServicePortMap, e: &EndpointsMap) -> String {
    let m = model(s, e);
    let ops = all(&m, &Current::default());
    let mut c = Current::default();
    for op in &ops {
        c.apply(op, T0);
    }
    let mut out = String::from("# plan from an empty kernel\n");
    out.push_str(&text(&ops));
    out.push_str(&state_text(&c));
    let _ = writeln!(out, "# nftables");
    out.push_str(&crate::render::full(&m, &cfg().node).0);
    out
}

#[test]
fn golden_files_match() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let all = scenarios::scenarios();
    golden::check(&dir, all.iter().map(|(n, s, e)| (*n, golden_text(s, e))));
    if !golden::updating() {
        let names: Vec<&str> = all.iter().map(|(n, _, _)| *n).collect();
        golden::check_no_stale(&dir, &names);
    }
}

#[test]
fn every_scenario_lands_and_a_second_plan_is_empty() {
    for (name, s, e) in scenarios::scenarios() {
        let m = model(&s, &e);
        let mut c = Current::default();
        let ops = all(&m, &c);
        apply_checked(&mut c, &ops, &Model::default(), &m, name);
        assert!(all(&m, &c).is_empty(), "{name}: not idempotent");
        for (f, w) in m.desired() {
            let k = &c.services[f];
            assert_eq!(
                k.dests.keys().copied().collect::<Vec<_>>(),
                w.dests,
                "{name} {f}"
            );
        }
        assert_eq!(c.addresses, m.bound_addresses(), "{name}");
    }
}

#[test]
fn moving_between_any_two_scenarios_never_empties_a_live_service() {
    let all_s = scenarios::scenarios();
    for (from, s1, e1) in &all_s {
        for (to, s2, e2) in &all_s {
            let m1 = model(s1, e1);
            let mut c = Current::default();
            let ops = all(&m1, &c);
            apply_checked(&mut c, &ops, &Model::default(), &m1, from);
            let m2 = model(s2, e2);
            let ops = all(&m2, &c);
            apply_checked(&mut c, &ops, &m1, &m2, &format!("{from} → {to}"));
            assert!(all(&m2, &c).is_empty(), "{from} → {to}: not converged");
            let fresh = {
                let mut f = Current::default();
                for op in all(&m2, &f) {
                    f.apply(&op, T0);
                }
                f
            };
            assert_eq!(c, fresh, "{from} → {to}");
        }
    }
}

/// What the kernel would list for `c` (flags as the kernel reports them).
fn listing(c: &Current) -> Vec<(Service, Vec<Destination>)> {
    c.services
        .iter()
        .map(|(f, k)| {
            let mut s = f.service(&k.scheduler, k.persistence);
            s.flags |= IP_VS_SVC_F_HASHED;
            let d = k
                .dests
                .iter()
                .map(|(a, kd)| Destination {
                    active_conns: kd.active,
                    inactive_conns: kd.inactive,
                    ..Destination::masq(a.ip(), a.port(), kd.weight)
                })
                .collect();
            (s, d)
        })
        .collect()
}

#[test]
fn a_restart_over_the_right_state_changes_nothing() {
    for (name, s, e) in scenarios::scenarios() {
        let m = model(&s, &e);
        let mut c = Current::default();
        for op in all(&m, &c) {
            c.apply(&op, T0);
        }
        let relisted =
            Current::from_kernel(&listing(&c), c.addresses.clone(), &m, &BTreeMap::new(), T0);
        assert_eq!(relisted, c, "{name}");
        assert!(all(&m, &relisted).is_empty(), "{name}");
    }
}

#[test]
fn only_sluices_services_are_touched() {
    let (s, e) = scenarios::scenario("nodeport");
    let m = model(&s, &e);
    let dummy: BTreeSet<IpAddr> =
        ["10.96.0.10".parse().unwrap(), "10.96.0.99".parse().unwrap()].into();
    let node: IpAddr = scenarios::ip(NODE_IP);
    let svc =
        |addr: &str, proto: u16, port: u16| Service::new(addr.parse().unwrap(), proto, port, "rr");
    let cases = [
        (
            svc("10.96.0.99", IPPROTO_TCP, 80),
            true,
            "stale, on the dummy link",
        ),
        (svc(NODE_IP, IPPROTO_TCP, 31000), true, "stale NodePort"),
        (svc(NODE_IP, IPPROTO_TCP, 30080), true, "wanted NodePort"),
        (
            svc(NODE_IP, IPPROTO_TCP, 80),
            false,
            "node IP, outside the NodePort range",
        ),
        (
            svc("192.0.2.1", IPPROTO_UDP, 53),
            false,
            "someone else's address",
        ),
        (
            Service {
                fwmark: 7,
                ..svc("0.0.0.0", IPPROTO_TCP, 0)
            },
            false,
            "firewall mark",
        ),
        (svc("fd00::10", IPPROTO_TCP, 80), false, "other family"),
        (
            Service {
                pe_name: Some("sip".into()),
                ..svc("10.96.0.99", IPPROTO_UDP, 5060)
            },
            false,
            "persistence engine",
        ),
        (svc("10.96.0.99", 47, 0), false, "GRE"),
    ];
    for (s, ours, why) in &cases {
        assert_eq!(Current::is_ours(s, &dummy, &cfg(), &m), *ours, "{why}: {s}");
    }
    let listed: Vec<(Service, Vec<Destination>)> = cases
        .iter()
        .filter(|(s, ours, _)| *ours && Current::is_ours(s, &dummy, &cfg(), &m))
        .map(|(s, _, _)| (s.clone(), vec![]))
        .collect();
    let c = Current::from_kernel(&listed, dummy, &m, &BTreeMap::new(), T0);
    let got = text(&all(&m, &c));
    assert_eq!(
        got,
        format!(
            "add service TCP 10.96.0.10:80 rr\n\
             add dest TCP 10.96.0.10:80 -> 10.244.1.1:8080\n\
             add dest TCP 10.96.0.10:80 -> 10.244.2.1:8080\n\
             add dest TCP {node}:30080 -> 10.244.1.1:8080\n\
             add dest TCP {node}:30080 -> 10.244.2.1:8080\n\
             delete service TCP 10.96.0.99:80\n\
             delete service TCP {node}:31000\n\
             unbind 10.96.0.99\n"
        )
    );
}

fn conns(c: &mut Current, f: &FrontEnd, d: &str, active: u32, inactive: u32) {
    let kd = c
        .services
        .get_mut(f)
        .unwrap()
        .dests
        .get_mut(&d.parse().unwrap())
        .unwrap();
    kd.active = active;
    kd.inactive = inactive;
}

#[test]
fn removed_tcp_endpoints_drain_until_idle_or_timeout() {
    let (s, e) = scenarios::scenario("clusterip_three_endpoints");
    let m1 = model(&s, &e);
    let mut c = Current::default();
    for op in all(&m1, &c) {
        c.apply(&op, T0);
    }
    let fe = FrontEnd {
        addr: scenarios::ip(scenarios::CLUSTER_IP),
        protocol: Protocol::Tcp,
        port: 80,
    };
    conns(&mut c, &fe, "10.244.2.1:8080", 2, 1);
    // 10.244.2.1 (busy) and 10.244.3.1 (idle) go; 10.244.9.9 comes.
    let mut e2 = e.clone();
    e2.insert(
        spn("web"),
        vec![ep("10.244.1.1", true), ep("10.244.9.9", false)],
    );
    let m2 = model(&s, &e2);
    let ops = all(&m2, &c);
    assert_eq!(
        text(&ops),
        "add dest TCP 10.96.0.10:80 -> 10.244.9.9:8080\n\
         drain dest TCP 10.96.0.10:80 -> 10.244.2.1:8080\n\
         delete dest TCP 10.96.0.10:80 -> 10.244.3.1:8080\n"
    );
    apply_checked(&mut c, &ops, &m1, &m2, "replace");
    assert_eq!(
        c.draining.get(&(fe, "10.244.2.1:8080".parse().unwrap())),
        Some(&T0)
    );
    // Still busy: nothing to do, now or at the next full plan.
    assert!(all(&m2, &c).is_empty());
    let later = T0 + Duration::from_secs(60);
    assert!(plan(&m2, &c, &cfg(), Scope::All, later).is_empty());
    // Idle: deleted.
    let mut idle = c.clone();
    conns(&mut idle, &fe, "10.244.2.1:8080", 0, 0);
    assert_eq!(
        text(&plan(&m2, &idle, &cfg(), Scope::All, later)),
        "delete dest TCP 10.96.0.10:80 -> 10.244.2.1:8080\n"
    );
    // Busy past the drain timeout: deleted too.
    let late = T0 + cfg().drain_timeout;
    assert_eq!(
        text(&plan(&m2, &c, &cfg(), Scope::All, late)),
        "delete dest TCP 10.96.0.10:80 -> 10.244.2.1:8080\n"
    );
    // The endpoint comes back while draining: weight restored.
    let ops = all(&m1, &c);
    assert_eq!(
        text(&ops),
        "restore dest TCP 10.96.0.10:80 -> 10.244.2.1:8080\n\
         add dest TCP 10.96.0.10:80 -> 10.244.3.1:8080\n\
         delete dest TCP 10.96.0.10:80 -> 10.244.9.9:8080\n"
    );
    for op in &ops {
        c.apply(op, T0);
    }
    assert!(c.draining.is_empty());
}

#[test]
fn udp_and_sctp_destinations_go_at_once() {
    for p in [Protocol::Udp, Protocol::Sctp] {
        let key = ServicePortName::new("default", "dns", "dns", p);
        let mut s = ServicePortMap::new();
        s.insert(
            key.clone(),
            Arc::new(ServicePort::cluster_ip(scenarios::ip("10.96.0.2"), 53, p)),
        );
        let mut e = EndpointsMap::new();
        e.insert(key.clone(), vec![ep("10.244.1.5", false)]);
        let m1 = model(&s, &e);
        let mut c = Current::default();
        for op in all(&m1, &c) {
            c.apply(&op, T0);
        }
        let fe = *m1.desired().keys().next().unwrap();
        conns(&mut c, &fe, "10.244.1.5:8080", 0, 9);
        e.insert(key.clone(), vec![ep("10.244.1.6", false)]);
        let ops = all(&model(&s, &e), &c);
        assert_eq!(
            text(&ops),
            format!(
                "add dest {p} 10.96.0.2:53 -> 10.244.1.6:8080\n\
                 delete dest {p} 10.96.0.2:53 -> 10.244.1.5:8080\n"
            )
        );
    }
}

#[test]
fn a_restart_keeps_draining_and_times_drains_from_the_restart() {
    let (s, e) = scenarios::scenario("clusterip_three_endpoints");
    let m = model(&s, &e);
    let mut c = Current::default();
    for op in all(&m, &c) {
        c.apply(&op, T0);
    }
    let mut listed = listing(&c);
    // A destination drained by the previous agent, with connections.
    listed[0].1.push(Destination {
        active_conns: 4,
        ..Destination::masq(scenarios::ip("10.244.7.7"), 8080, 0)
    });
    let restart = T0 + Duration::from_secs(5);
    let c2 = Current::from_kernel(&listed, c.addresses.clone(), &m, &BTreeMap::new(), restart);
    let fe = *m.desired().keys().next().unwrap();
    assert_eq!(
        c2.draining,
        BTreeMap::from([((fe, "10.244.7.7:8080".parse().unwrap()), restart)])
    );
    assert!(plan(&m, &c2, &cfg(), Scope::All, restart).is_empty());
    assert_eq!(c2.draining_front_ends(), BTreeSet::from([fe]));
}

#[test]
fn scheduler_and_persistence_changes_update_in_place() {
    let (s, e) = scenarios::scenario("clusterip_three_endpoints");
    let m = model(&s, &e);
    let mut c = Current::default();
    for op in all(&m, &c) {
        c.apply(&op, T0);
    }
    let mut cfg2 = cfg();
    cfg2.scheduler = Scheduler::parse("lc").unwrap();
    let m2 = Model::build(&s, &e, &cfg2, &labels());
    assert_eq!(
        text(&plan(&m2, &c, &cfg2, Scope::All, T0)),
        "update service TCP 10.96.0.10:80 lc\n"
    );
    // A Service's own scheduler (its annotation) wins over the node's; a name the kernel
    // has no scheduler for is ignored.
    for (annotation, want) in [("mh", "mh"), ("fastest", "lc")] {
        let (s3, e3) = one(
            "web",
            ServicePort {
                scheduler: Some(annotation.into()),
                ..scenarios::cluster_ip()
            },
            e[&spn("web")].clone(),
        );
        let m3 = Model::build(&s3, &e3, &cfg2, &labels());
        assert_eq!(
            text(&plan(&m3, &c, &cfg2, Scope::All, T0)),
            format!("update service TCP 10.96.0.10:80 {want}\n"),
            "{annotation}"
        );
    }
    let (s4, e4) = one(
        "web",
        ServicePort {
            session_affinity_timeout: Some(60),
            ..scenarios::cluster_ip()
        },
        e[&spn("web")].clone(),
    );
    assert_eq!(
        text(&all(&model(&s4, &e4), &c)),
        "update service TCP 10.96.0.10:80 rr persistent 60\n"
    );
}

#[test]
fn a_contested_front_end_belongs_to_the_first_service_by_name() {
    let (mut s, mut e) = scenarios::scenario("clusterip_three_endpoints");
    let b = ServicePortName::new("default", "b-web", "http", Protocol::Tcp);
    s.insert(b.clone(), Arc::new(scenarios::cluster_ip()));
    e.insert(b.clone(), vec![ep("10.244.8.8", false)]);
    let m = model(&s, &e);
    let w = m.desired().values().next().unwrap();
    assert_eq!(w.dests, vec!["10.244.8.8:8080".parse().unwrap()]);
    // b goes: web takes over.
    let mut m2 = m.clone();
    s.remove(&b);
    let touched = m2.update([&b], &s, &e, &cfg(), &labels());
    assert_eq!(touched.len(), 1);
    assert_eq!(m2, model(&s, &e));
}

/// A small deterministic generator (no dev-dependency for one test).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn partial_updates_land_where_full_builds_do() {
    let names = ["a", "b", "c", "d"];
    let mut rng = Rng(0x1bad_5eed_0000_0001);
    let (mut s, mut e) = (ServicePortMap::new(), EndpointsMap::new());
    let mut m = Model::default();
    let mut c = Current::default();
    for round in 0..400 {
        let name = names[rng.below(4) as usize];
        let key = spn(name);
        let i = names.iter().position(|x| *x == name).unwrap() as u8;
        let mut eps: Vec<Arc<Endpoint>> = (0..rng.below(4))
            .map(|j| {
                let mut x = (*ep(
                    &format!("10.244.{}.{}", rng.below(3) + 1, j + 1),
                    rng.below(2) == 0,
                ))
                .clone();
                if rng.below(5) == 0 {
                    x.ready = false;
                    x.terminating = true;
                }
                Arc::new(x)
            })
            .collect();
        eps.sort_by_key(|x| (x.ip, x.port));
        eps.dedup_by_key(|x| (x.ip, x.port));
        // Shared addresses on purpose: contested front ends and shared bound addresses.
        let svc = ServicePort {
            cluster_ips: vec![scenarios::ip(&format!("10.96.0.{}", 10 + i % 2))],
            port: 80 + u16::from(rng.below(2) as u8),
            node_port: (rng.below(2) == 0).then_some(30000 + u16::from(i)),
            external_ips: if rng.below(3) == 0 {
                vec![scenarios::ip(scenarios::EXTERNAL_IP)]
            } else {
                vec![]
            },
            external_policy_local: rng.below(2) == 0,
            internal_policy_local: rng.below(5) == 0,
            session_affinity_timeout: (rng.below(4) == 0).then_some(60),
            ..scenarios::cluster_ip()
        };
        if rng.below(5) == 0 {
            s.remove(&key);
            e.remove(&key);
        } else {
            s.insert(key.clone(), Arc::new(svc));
            if eps.is_empty() {
                e.remove(&key);
            } else {
                e.insert(key.clone(), eps);
            }
        }
        let changes = Changes {
            services: [NamespacedName::new("default", name)].into(),
            ..Changes::default()
        };
        let ports = m.changed_ports(&changes, &s);
        let before = m.clone();
        let touched = m.update(&ports, &s, &e, &cfg(), &labels());
        assert_eq!(m.desired(), model(&s, &e).desired(), "round {round}");
        let addresses = addresses_of(&touched);
        let ops = plan(
            &m,
            &c,
            &cfg(),
            Scope::Some {
                front_ends: &touched,
                addresses: &addresses,
            },
            T0,
        );
        apply_checked(&mut c, &ops, &before, &m, &format!("round {round}"));
        assert!(
            all(&m, &c).is_empty(),
            "round {round}: a partial plan left work: {}",
            text(&all(&m, &c))
        );
    }
}
