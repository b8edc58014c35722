use super::*;
use sluice_proxy::golden;
use sluice_proxy::model::ServicePortName;
use sluice_proxy::proxier::Changes;
use sluice_proxy::scenarios::{self, ep, one, NODE};

fn cfg() -> Config {
    Config {
        node_name: NODE.into(),
        node_ips: vec![scenarios::NODE_IP.parse().unwrap()],
    }
}

fn want_of(s: &ServicePortMap, e: &EndpointsMap) -> Desired {
    desired(s, e, &cfg(), &BTreeMap::new())
}

/// Every lookup a program could make at this moment finds what it needs: a count never
/// covers a missing slot, and no slot names a missing backend.
fn consistent(c: &Current) -> Result<(), String> {
    for ((f, slot), v) in &c.svc {
        if *slot == 0 {
            for s in 1..=v.count {
                let Some(sv) = c.svc.get(&(*f, s)) else {
                    return Err(format!("{f}: count {} but slot {s} missing", v.count));
                };
                if !c.backends.contains_key(&sv.backend_id) {
                    return Err(format!("{f} slot {s}: backend {} missing", sv.backend_id));
                }
            }
        }
    }
    Ok(())
}

/// Applies `ops` one at a time, checking consistency after each.
fn apply_checked(c: &mut Current, ops: &[Op]) {
    for op in ops {
        c.apply(op);
        if let Err(e) = consistent(c) {
            panic!("after `{op}`: {e}\nops:\n{}", text(ops));
        }
    }
}

/// What `c` makes the programs see, by address: front end → (flags, timeout, backends).
fn seen(c: &Current) -> BTreeMap<Frontend, Want> {
    c.svc
        .iter()
        .filter(|((_, s), _)| *s == 0)
        .map(|((f, _), v)| {
            let backends = (1..=v.count)
                .map(|s| c.backends[&c.svc[&(*f, s)].backend_id].addr)
                .collect();
            (
                *f,
                Want {
                    flags: v.flags,
                    affinity_timeout: v.affinity_timeout,
                    backends,
                },
            )
        })
        .collect()
}

fn text(ops: &[Op]) -> String {
    ops.iter().map(|o| format!("{o}\n")).collect()
}

#[test]
fn golden_plans_from_empty_maps() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/plan");
    let mut cases = Vec::new();
    let mut names = Vec::new();
    for (name, s, e) in scenarios::scenarios() {
        let ops = plan(&want_of(&s, &e), &Current::default());
        cases.push((name, text(&ops)));
        names.push(name);
    }
    golden::check(&dir, cases);
    if !golden::updating() {
        golden::check_no_stale(&dir, &names);
    }
}

#[test]
fn every_scenario_lands_and_a_second_plan_is_empty() {
    for (name, s, e) in scenarios::scenarios() {
        let want = want_of(&s, &e);
        let mut c = Current::default();
        let ops = plan(&want, &c);
        apply_checked(&mut c, &ops);
        assert_eq!(seen(&c), want.frontends, "{name}");
        assert!(plan(&want, &c).is_empty(), "{name}: not idempotent");
    }
}

#[test]
fn moving_between_any_two_scenarios_is_ordered_and_exact() {
    let all = scenarios::scenarios();
    for (from, s1, e1) in &all {
        for (to, s2, e2) in &all {
            let mut c = Current::default();
            let ops = plan(&want_of(s1, e1), &c);
            apply_checked(&mut c, &ops);
            let want = want_of(s2, e2);
            let ops = plan(&want, &c);
            apply_checked(&mut c, &ops);
            assert_eq!(seen(&c), want.frontends, "{from} → {to}");
            // Nothing is left behind: no orphan slot, no unused backend.
            let used: BTreeSet<u32> = c
                .svc
                .iter()
                .filter(|((_, s), _)| *s > 0)
                .map(|(_, v)| v.backend_id)
                .collect();
            assert_eq!(used, c.backends.keys().copied().collect(), "{from} → {to}");
        }
    }
}

#[test]
fn clusterip_frontends_follow_the_internal_policy_and_external_ones_short_circuit() {
    let (s, e) = scenarios::scenario("etp_local_without_local_endpoints");
    let want = want_of(&s, &e);
    let fe = |addr: &str, port: u16, scope: u8| Frontend {
        addr: addr.parse().unwrap(),
        port,
        proto: 6,
        scope,
    };
    let remote = BackendAddr {
        addr: "10.244.2.1".parse().unwrap(),
        port: 8080,
        proto: 6,
    };
    // In-node clients reach the ETP-Local service through any of its addresses…
    for (addr, port) in [
        (scenarios::CLUSTER_IP, 80),
        (scenarios::LB_IP, 80),
        (scenarios::EXTERNAL_IP, 80),
        (scenarios::NODE_IP, scenarios::NODE_PORT),
    ] {
        assert_eq!(
            want.frontends[&fe(addr, port, SCOPE_SOCK)].backends,
            vec![remote],
            "{addr}"
        );
    }
    // …traffic from outside finds no local endpoint here, and is flagged to be dropped.
    let ext = &want.frontends[&fe(scenarios::NODE_IP, scenarios::NODE_PORT, SCOPE_EXT)];
    assert!(ext.backends.is_empty());
    assert_eq!(ext.flags, FLAG_NODEPORT | FLAG_EXT_LOCAL);
    assert!(!want
        .frontends
        .contains_key(&fe(scenarios::CLUSTER_IP, 80, SCOPE_EXT)));

    let (s, e) = scenarios::scenario("itp_local_without_local_endpoints");
    let want = want_of(&s, &e);
    assert!(want.frontends[&fe(scenarios::CLUSTER_IP, 80, SCOPE_SOCK)]
        .backends
        .is_empty());
}

#[test]
fn an_endpoint_change_touches_only_its_entries_and_ids_stay() {
    let eps = |v: &[&str]| v.iter().map(|a| ep(a, false)).collect::<Vec<_>>();
    let mut s = ServicePortMap::new();
    let mut e = EndpointsMap::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let (s1, e1) = one(
            name,
            ServicePort::cluster_ip(
                format!("10.96.0.{}", i + 1).parse().unwrap(),
                80,
                Protocol::Tcp,
            ),
            eps(&[&format!("10.244.{i}.1"), &format!("10.244.{i}.2")]),
        );
        s.extend(s1);
        e.extend(e1);
    }
    let mut c = Current::default();
    let ops = plan(&want_of(&s, &e), &c);
    apply_checked(&mut c, &ops);
    let before = c.clone();

    // b's second endpoint is replaced by a new one.
    let key = ServicePortName::new("default", "b", "http", Protocol::Tcp);
    e.insert(key.clone(), eps(&["10.244.1.1", "10.244.1.9"]));
    let ops = plan(&want_of(&s, &e), &c);
    assert_eq!(
        text(&ops),
        "put backend 7 10.244.1.9:8080/tcp\n\
         put svc 10.96.0.2:80/tcp sock slot 2 backend=7 id=2\n\
         delete backend 4\n"
    );
    apply_checked(&mut c, &ops);

    // b loses an endpoint: the count shrinks before the slot goes.
    e.insert(key.clone(), eps(&["10.244.1.9"]));
    let ops = plan(&want_of(&s, &e), &c);
    assert_eq!(
        text(&ops),
        "put svc 10.96.0.2:80/tcp sock slot 1 backend=7 id=2\n\
         put svc 10.96.0.2:80/tcp sock slot 0 count=1 id=2\n\
         delete svc 10.96.0.2:80/tcp sock slot 2\n\
         delete backend 3\n"
    );
    apply_checked(&mut c, &ops);

    // Back to where it started: other services' entries were never rewritten, and b's front
    // end kept its id.
    e.insert(key, eps(&["10.244.1.1", "10.244.1.2"]));
    let ops = plan(&want_of(&s, &e), &c);
    apply_checked(&mut c, &ops);
    for f in ["10.96.0.1", "10.96.0.3"] {
        let f = Frontend {
            addr: f.parse().unwrap(),
            port: 80,
            proto: 6,
            scope: SCOPE_SOCK,
        };
        for slot in 0..=2 {
            assert_eq!(c.svc[&(f, slot)], before.svc[&(f, slot)]);
        }
    }
    assert_eq!(seen(&c), seen(&before));
}

#[test]
fn a_restarted_agent_reconciles_from_the_maps_without_rewrites() {
    let (s, e) = scenarios::scenario("clusterip_three_endpoints");
    let want = want_of(&s, &e);
    let mut c = Current::default();
    let ops = plan(&want, &c);
    apply_checked(&mut c, &ops);
    // The maps as a new agent reads them back: same contents, so nothing to do.
    let reread = c.clone();
    assert!(plan(&want, &reread).is_empty());
    // A stray entry (left by a crash between writes) is removed; the rest stays.
    let mut stray = c.clone();
    let extra = Frontend {
        addr: "10.96.9.9".parse().unwrap(),
        port: 53,
        proto: 17,
        scope: SCOPE_SOCK,
    };
    stray.insert_svc(
        extra,
        1,
        SvcVal {
            backend_id: 1,
            svc_id: 9,
            ..SvcVal::default()
        },
    );
    let ops = plan(&want, &stray);
    assert_eq!(text(&ops), "delete svc 10.96.9.9:53/udp sock slot 1\n");
}

fn changes_of(names: &[&str]) -> Changes {
    Changes {
        services: names
            .iter()
            .map(|n| sluice_proxy::model::NamespacedName::new("default", *n))
            .collect(),
        ..Changes::default()
    }
}

#[test]
fn partial_updates_land_where_full_plans_do() {
    let all = scenarios::scenarios();
    for (from, s1, e1) in &all {
        for (to, s2, e2) in &all {
            let mut c = Current::default();
            let mut model = Model::build(s1, e1, &cfg(), &BTreeMap::new());
            let ops = plan(model.desired(), &c);
            apply_checked(&mut c, &ops);
            // The same service ("web") changes from one scenario into the other; a bystander
            // service that does not change is never touched.
            let ports = model.changed_ports(&changes_of(&["web"]), s2);
            let touched = model.update(&ports, s2, e2, &cfg(), &BTreeMap::new());
            let ops = plan_some(model.desired(), &c, &touched.frontends, &touched.backends);
            assert_eq!(ops, plan(model.desired(), &c), "{from} → {to}");
            apply_checked(&mut c, &ops);
            assert_eq!(model.desired(), &want_of(s2, e2), "{from} → {to}");
            assert_eq!(seen(&c), want_of(s2, e2).frontends, "{from} → {to}");
            assert!(plan(model.desired(), &c).is_empty(), "{from} → {to}");
        }
    }
}

#[test]
fn a_partial_update_plans_only_the_changed_service() {
    let eps = |v: &[&str]| v.iter().map(|a| ep(a, false)).collect::<Vec<_>>();
    let mut s = ServicePortMap::new();
    let mut e = EndpointsMap::new();
    for i in 0..50u32 {
        let (s1, e1) = one(
            &format!("s{i}"),
            ServicePort::cluster_ip(format!("10.96.1.{i}").parse().unwrap(), 80, Protocol::Tcp),
            // Shared backends: every service uses 10.244.9.9 too.
            eps(&[&format!("10.244.0.{i}"), "10.244.9.9"]),
        );
        s.extend(s1);
        e.extend(e1);
    }
    let mut c = Current::default();
    let mut model = Model::build(&s, &e, &cfg(), &BTreeMap::new());
    let ops = plan(model.desired(), &c);
    apply_checked(&mut c, &ops);
    // s7 loses the shared backend and gets a new one; s9 goes away entirely.
    let key = ServicePortName::new("default", "s7", "http", Protocol::Tcp);
    e.insert(key, eps(&["10.244.0.7", "10.244.8.8"]));
    let gone = ServicePortName::new("default", "s9", "http", Protocol::Tcp);
    s.remove(&gone);
    e.remove(&gone);
    let ports = model.changed_ports(&changes_of(&["s7", "s9"]), &s);
    assert_eq!(ports.len(), 2);
    let touched = model.update(&ports, &s, &e, &cfg(), &BTreeMap::new());
    assert_eq!(touched.frontends.len(), 2);
    let ops = plan_some(model.desired(), &c, &touched.frontends, &touched.backends);
    assert_eq!(
        text(&ops),
        "put backend 52 10.244.8.8:8080/tcp\n\
         put svc 10.96.1.7:80/tcp sock slot 2 backend=52 id=8\n\
         delete svc 10.96.1.9:80/tcp sock slot 0\n\
         delete svc 10.96.1.9:80/tcp sock slot 1\n\
         delete svc 10.96.1.9:80/tcp sock slot 2\n\
         delete backend 10\n"
    );
    apply_checked(&mut c, &ops);
    assert_eq!(seen(&c), want_of(&s, &e).frontends);
    // The shared backend stays for the 48 services still using it.
    assert!(c.by_addr.contains_key(&BackendAddr {
        addr: "10.244.9.9".parse().unwrap(),
        port: 8080,
        proto: 6
    }));
}
