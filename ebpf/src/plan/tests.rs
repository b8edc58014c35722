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
    free_ids_exact("backend", &c.free_backend_ids, |id| {
        c.backends.contains_key(&id)
    })?;
    free_ids_exact("service", &c.free_svc_ids, |id| {
        c.svc_ids.contains_key(&id) || c.ranges_of(id).next().is_some()
    })?;
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

/// Ranges a flagged slot 0 relies on: its service id and the sets of ranges of which one
/// must be present in full.
type Promises = BTreeMap<Frontend, (u32, Vec<Vec<SrcRange>>)>;

/// Every flagged slot 0 finds all the ranges of one of the sets it was promised.
fn ranges_kept(c: &Current, promised: &Promises) -> Result<(), String> {
    for (f, (id, sets)) in promised {
        let full = |nets: &Vec<SrcRange>| {
            !nets.is_empty() && nets.iter().all(|n| c.src_ranges.contains(&(*id, *n)))
        };
        if !sets.iter().any(full) {
            let have: Vec<SrcRange> = c.ranges_of(*id).collect();
            return Err(format!(
                "{f}: flagged slot 0 of id {id} has ranges {have:?}, needs all of one of {sets:?}"
            ));
        }
    }
    Ok(())
}

/// The free-id intervals are exactly the ids `used` says are not in use, maximal (no two
/// touch), and run to the end of the id space.
fn free_ids_exact(what: &str, free: &FreeIds, used: impl Fn(u32) -> bool) -> Result<(), String> {
    let top = free.intervals.keys().next_back().copied().unwrap_or(0);
    for id in 1..=top.saturating_add(2) {
        if free.holding(id).is_some() == used(id) {
            return Err(format!(
                "{what} id {id}: in use {} but free {}",
                used(id),
                !used(id)
            ));
        }
    }
    if free.intervals.values().next_back() != Some(&(1 << 32)) {
        return Err(format!(
            "{what} ids: the last free interval must reach 2^32: {free:?}"
        ));
    }
    let touching = free
        .intervals
        .iter()
        .zip(free.intervals.iter().skip(1))
        .any(|((_, end), (next, _))| *end >= u64::from(*next));
    if touching {
        return Err(format!("{what} ids: intervals touch or overlap: {free:?}"));
    }
    Ok(())
}

#[test]
fn free_ids_hand_out_the_least_free_id_like_a_scan() {
    let mut free = FreeIds::default();
    let mut used = BTreeSet::new();
    // A fixed pseudo-random walk (64-bit LCG) over a small id range, so ids collide often.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for step in 0..20_000 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let id = ((x >> 33) % 200) as u32;
        if (x >> 20) & 1 == 0 {
            free.take_id(id);
            if id != 0 {
                used.insert(id);
            }
        } else {
            free.free_id(id);
            used.remove(&id);
        }
        let from = ((x >> 40) % 210) as u32;
        let scan = (from.max(1)..).find(|i| !used.contains(i));
        assert_eq!(
            free.first_from(from.max(1)),
            scan,
            "step {step}: from {from}"
        );
        free_ids_exact("test", &free, |i| used.contains(&i)).unwrap();
    }
    // The top of the id space.
    free.take_id(u32::MAX);
    assert_eq!(free.first_from(u32::MAX), None);
    free.free_id(u32::MAX);
    assert_eq!(free.first_from(u32::MAX), Some(u32::MAX));
}

/// Applies `ops` (planned towards `want`) one at a time, checking after each that every lookup
/// finds what it needs ([`consistent`]) and that a slot 0 flagged [`FLAG_SRC_RANGES`] never
/// exists while its ranges are missing: a slot 0 the ops do not rewrite always has all of the
/// ranges it started with or all of the want's (a changed set is added before the old one
/// goes); one written with the flag has all of the want's from that moment on.
fn apply_checked(c: &mut Current, ops: &[Op], want: &Desired) {
    let wanted = |f: &Frontend| -> Vec<SrcRange> {
        want.frontends
            .get(f)
            .map(|w| w.src_ranges.clone())
            .unwrap_or_default()
    };
    let mut promised: Promises = c
        .svc
        .iter()
        .filter(|((_, s), v)| *s == 0 && v.flags & FLAG_SRC_RANGES != 0)
        .map(|((f, _), v)| {
            let before = c.ranges_of(v.svc_id).collect();
            (*f, (v.svc_id, vec![before, wanted(f)]))
        })
        .collect();
    for op in ops {
        c.apply(op);
        match op {
            Op::PutSvc {
                frontend,
                slot: 0,
                val,
            } => {
                promised.remove(frontend);
                if val.flags & FLAG_SRC_RANGES != 0 {
                    promised.insert(*frontend, (val.svc_id, vec![wanted(frontend)]));
                }
            }
            Op::DeleteSvc { frontend, slot: 0 } => {
                promised.remove(frontend);
            }
            _ => {}
        }
        if let Err(e) = consistent(c).and_then(|()| ranges_kept(c, &promised)) {
            panic!("after `{op}`: {e}\nops:\n{}", text(ops));
        }
    }
}

/// No source range is left for a service id no slot 0 has.
fn no_stray_ranges(c: &Current) -> Result<(), String> {
    match c
        .src_ranges
        .iter()
        .find(|(id, _)| !c.svc_ids.contains_key(id))
    {
        Some((id, net)) => Err(format!("range {net} of id {id} has no front end")),
        None => Ok(()),
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
                    src_ranges: c.ranges_of(v.svc_id).collect(),
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
        apply_checked(&mut c, &ops, &want);
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
            let first = want_of(s1, e1);
            let ops = plan(&first, &c);
            apply_checked(&mut c, &ops, &first);
            let want = want_of(s2, e2);
            let ops = plan(&want, &c);
            apply_checked(&mut c, &ops, &want);
            assert_eq!(seen(&c), want.frontends, "{from} → {to}");
            no_stray_ranges(&c).unwrap_or_else(|e| panic!("{from} → {to}: {e}"));
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
    let want = want_of(&s, &e);
    let ops = plan(&want, &c);
    apply_checked(&mut c, &ops, &want);
    let before = c.clone();

    // b's second endpoint is replaced by a new one.
    let key = ServicePortName::new("default", "b", "http", Protocol::Tcp);
    e.insert(key.clone(), eps(&["10.244.1.1", "10.244.1.9"]));
    let want = want_of(&s, &e);
    let ops = plan(&want, &c);
    assert_eq!(
        text(&ops),
        "put backend 7 10.244.1.9:8080/tcp\n\
         put svc 10.96.0.2:80/tcp sock slot 2 backend=7 id=2\n\
         delete backend 4\n"
    );
    apply_checked(&mut c, &ops, &want);

    // b loses an endpoint: the count shrinks before the slot goes.
    e.insert(key.clone(), eps(&["10.244.1.9"]));
    let want = want_of(&s, &e);
    let ops = plan(&want, &c);
    assert_eq!(
        text(&ops),
        "put svc 10.96.0.2:80/tcp sock slot 1 backend=7 id=2\n\
         put svc 10.96.0.2:80/tcp sock slot 0 count=1 id=2\n\
         delete svc 10.96.0.2:80/tcp sock slot 2\n\
         delete backend 3\n"
    );
    apply_checked(&mut c, &ops, &want);

    // Back to where it started: other services' entries were never rewritten, and b's front
    // end kept its id.
    e.insert(key, eps(&["10.244.1.1", "10.244.1.2"]));
    let want = want_of(&s, &e);
    let ops = plan(&want, &c);
    apply_checked(&mut c, &ops, &want);
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
    apply_checked(&mut c, &ops, &want);
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
            apply_checked(&mut c, &ops, model.desired());
            // The same service ("web") changes from one scenario into the other; a bystander
            // service that does not change is never touched.
            let ports = model.changed_ports(&changes_of(&["web"]), s2);
            let touched = model.update(&ports, s2, e2, &cfg(), &BTreeMap::new());
            let ops = plan_some(model.desired(), &c, &touched.frontends, &touched.backends);
            assert_eq!(ops, plan(model.desired(), &c), "{from} → {to}");
            apply_checked(&mut c, &ops, model.desired());
            no_stray_ranges(&c).unwrap_or_else(|e| panic!("{from} → {to}: {e}"));
            assert_eq!(model.desired(), &want_of(s2, e2), "{from} → {to}");
            assert_eq!(seen(&c), want_of(s2, e2).frontends, "{from} → {to}");
            assert!(plan(model.desired(), &c).is_empty(), "{from} → {to}");
        }
    }
}

/// The dataplane keeps only the model and the ids between syncs: the touched entries rebuilt
/// from them must plan exactly what a copy of the whole maps plans, and leave the same ids.
#[test]
fn partial_plans_from_the_kept_ids_match_plans_from_the_whole_maps() {
    let all = scenarios::scenarios();
    for (from, s1, e1) in &all {
        for (to, s2, e2) in &all {
            let mut c = Current::default();
            let mut model = Model::build(s1, e1, &cfg(), &BTreeMap::new());
            let ops = plan(model.desired(), &c);
            apply_checked(&mut c, &ops, model.desired());
            let mut assigned = Assigned::of(&c);
            let ports = model.changed_ports(&changes_of(&["web"]), s2);
            let touched = model.update(&ports, s2, e2, &cfg(), &BTreeMap::new());
            let mut mini = assigned.current_for(&touched);
            let ops = plan_some(
                model.desired(),
                &mini,
                &touched.frontends,
                &touched.backends,
            );
            let whole = plan_some(model.desired(), &c, &touched.frontends, &touched.backends);
            assert_eq!(text(&ops), text(&whole), "{from} → {to}");
            for op in &ops {
                mini.apply(op);
                c.apply(op);
            }
            assigned.record(&touched, &mini);
            assert_eq!(assigned, Assigned::of(&c), "{from} → {to}");
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
    apply_checked(&mut c, &ops, model.desired());
    // s7 loses the shared backend and gets a new one; s9 goes away entirely.
    let key = ServicePortName::new("default", "s7", "http", Protocol::Tcp);
    e.insert(key, eps(&["10.244.0.7", "10.244.8.8"]));
    let gone = ServicePortName::new("default", "s9", "http", Protocol::Tcp);
    s.remove(&gone);
    e.remove(&gone);
    let ports = model.changed_ports(&changes_of(&["s7", "s9"]), &s);
    assert_eq!(ports.len(), 2);
    let assigned = Assigned::of(&c);
    let touched = model.update(&ports, &s, &e, &cfg(), &BTreeMap::new());
    assert_eq!(touched.frontends.len(), 2);
    let ops = plan_some(model.desired(), &c, &touched.frontends, &touched.backends);
    // The same from the kept ids alone (the touched entries rebuilt, the shared backend too).
    let mini = assigned.current_for(&touched);
    let from_ids = plan_some(
        model.desired(),
        &mini,
        &touched.frontends,
        &touched.backends,
    );
    assert_eq!(text(&from_ids), text(&ops));
    assert_eq!(
        text(&ops),
        "put backend 52 10.244.8.8:8080/tcp\n\
         put svc 10.96.1.7:80/tcp sock slot 2 backend=52 id=8\n\
         delete svc 10.96.1.9:80/tcp sock slot 0\n\
         delete svc 10.96.1.9:80/tcp sock slot 1\n\
         delete svc 10.96.1.9:80/tcp sock slot 2\n\
         delete backend 10\n"
    );
    apply_checked(&mut c, &ops, model.desired());
    assert_eq!(seen(&c), want_of(&s, &e).frontends);
    // The shared backend stays for the 48 services still using it.
    let shared = BackendAddr {
        addr: "10.244.9.9".parse().unwrap(),
        port: 8080,
        proto: 6,
    };
    assert!(c.ids_of(shared).next().is_some());
}

/// `web` as in the `lb_source_ranges` scenario, with these source ranges.
fn web_with_ranges(ranges: &[&str]) -> (ServicePortMap, EndpointsMap) {
    one(
        "web",
        ServicePort {
            load_balancer_source_ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
            ..scenarios::load_balancer(false)
        },
        vec![ep("10.244.2.1", false)],
    )
}

#[test]
fn source_ranges_go_only_to_the_external_lb_front_end() {
    let (s, e) = web_with_ranges(&["192.0.2.77/24", "192.0.2.0/24", "2001:db8::/32"]);
    let want = want_of(&s, &e);
    let lb: Ipv4Addr = scenarios::LB_IP.parse().unwrap();
    for (f, w) in &want.frontends {
        if f.addr == lb && f.scope == SCOPE_EXT {
            // Host bits cleared, duplicates merged, IPv6 left out.
            assert_eq!(
                w.src_ranges,
                vec![SrcRange::new("192.0.2.0".parse().unwrap(), 24)]
            );
            assert_eq!(w.flags & FLAG_SRC_RANGES, FLAG_SRC_RANGES);
        } else {
            assert!(w.src_ranges.is_empty(), "{f}");
            assert_eq!(w.flags & FLAG_SRC_RANGES, 0, "{f}");
        }
    }
    // Only IPv6 ranges: nothing to enforce for IPv4.
    let (s, e) = web_with_ranges(&["2001:db8::/32"]);
    assert!(want_of(&s, &e)
        .frontends
        .values()
        .all(|w| w.flags & FLAG_SRC_RANGES == 0 && w.src_ranges.is_empty()));
}

#[test]
fn source_ranges_are_written_before_the_flag_and_removed_after_it() {
    let lb_ext = "203.0.113.10:80/tcp ext";
    let mut c = Current::default();
    let (s, e) = web_with_ranges(&["192.0.2.0/24"]);
    let mut model = Model::build(&s, &e, &cfg(), &BTreeMap::new());
    let ops = plan(model.desired(), &c);
    apply_checked(&mut c, &ops, model.desired());
    // Each step as a partial sync of `web`, which must plan what a full plan does.
    let mut step = |ranges: &[&str], c: &mut Current| -> String {
        let (s, e) = web_with_ranges(ranges);
        let ports = model.changed_ports(&changes_of(&["web"]), &s);
        let touched = model.update(&ports, &s, &e, &cfg(), &BTreeMap::new());
        let ops = plan_some(model.desired(), c, &touched.frontends, &touched.backends);
        assert_eq!(ops, plan(model.desired(), c), "{ranges:?}");
        apply_checked(c, &ops, model.desired());
        assert_eq!(seen(c), want_of(&s, &e).frontends, "{ranges:?}");
        text(&ops)
    };
    // A range more: written, the slot 0 stays.
    assert_eq!(
        step(&["192.0.2.0/24", "198.51.100.77/25"], &mut c),
        "put srcrange id=7 198.51.100.0/25\n"
    );
    // Replaced: the new one first, the old ones after.
    assert_eq!(
        step(&["10.0.0.0/8"], &mut c),
        "put srcrange id=7 10.0.0.0/8\n\
         delete srcrange id=7 192.0.2.0/24\n\
         delete srcrange id=7 198.51.100.0/25\n"
    );
    // No ranges any more: the flag goes first, then the range.
    assert_eq!(
        step(&[], &mut c),
        format!(
            "put svc {lb_ext} slot 0 count=1 id=7\n\
             delete srcrange id=7 10.0.0.0/8\n"
        )
    );
    // And back: the range first, then the flag.
    assert_eq!(
        step(&["10.0.0.0/8"], &mut c),
        format!(
            "put srcrange id=7 10.0.0.0/8\n\
             put svc {lb_ext} slot 0 count=1 id=7 src-ranges\n"
        )
    );
    // The service goes: its ranges go after its slot 0.
    let none = (ServicePortMap::new(), EndpointsMap::new());
    let ports = model.changed_ports(&changes_of(&["web"]), &none.0);
    let touched = model.update(&ports, &none.0, &none.1, &cfg(), &BTreeMap::new());
    let ops = plan_some(model.desired(), &c, &touched.frontends, &touched.backends);
    assert_eq!(ops, plan(model.desired(), &c));
    let t = text(&ops);
    let slot0 = t.find(&format!("delete svc {lb_ext} slot 0\n")).unwrap();
    let range = t.find("delete srcrange id=7 10.0.0.0/8\n").unwrap();
    assert!(slot0 < range, "{t}");
    apply_checked(&mut c, &ops, model.desired());
    assert_eq!(c, Current::default());
}

#[test]
fn stray_source_ranges_are_swept_and_their_ids_not_reused() {
    let (s, e) = web_with_ranges(&["192.0.2.0/24"]);
    let want = want_of(&s, &e);
    let mut c = Current::default();
    // Left by a crash: ranges of id 1 (which a new front end would otherwise get) and of 99.
    let stray = SrcRange::new("10.1.0.0".parse().unwrap(), 16);
    c.insert_src_range(1, stray);
    c.insert_src_range(99, stray);
    let ops = plan(&want, &c);
    apply_checked(&mut c, &ops, &want);
    assert_eq!(seen(&c), want.frontends);
    no_stray_ranges(&c).unwrap();
    let t = text(&ops);
    assert!(t.contains("delete srcrange id=1 10.1.0.0/16\n"), "{t}");
    assert!(t.contains("delete srcrange id=99 10.1.0.0/16\n"), "{t}");
    assert!(!t.contains(" id=1\n"), "id 1 still had ranges: {t}");
    // A partial plan leaves strays alone (it only looks at what changed).
    let mut c2 = Current::default();
    c2.insert_src_range(99, stray);
    let all: BTreeSet<Frontend> = want.frontends.keys().copied().collect();
    let ops = plan_some(&want, &c2, &all, &want.backends.keys().copied().collect());
    assert!(!text(&ops).contains("id=99"));
}

#[test]
fn udp_sockets_left_stale_are_those_of_gone_backends_and_of_front_ends_that_start_answering() {
    let udp = |ip: &str, eps: &[&str]| {
        one(
            "dns",
            ServicePort::cluster_ip(ip.parse().unwrap(), 53, Protocol::Udp),
            eps.iter().map(|a| ep(a, false)).collect(),
        )
    };
    let addr = |s: &str| s.parse::<SocketAddrV4>().unwrap();
    let step = |c: &mut Current, (s, e): (ServicePortMap, EndpointsMap)| {
        let want = want_of(&s, &e);
        let ops = plan(&want, c);
        let stale = stale_udp_sockets(&ops, c);
        apply_checked(c, &ops, &want);
        stale
    };
    let mut c = Current::default();
    // A UDP Service that appears with endpoints: sockets connected to its bare address before.
    assert_eq!(
        step(&mut c, udp("10.96.0.53", &["10.244.0.1", "10.244.0.2"])),
        StaleUdp {
            gone_backends: vec![],
            opened_frontends: vec![addr("10.96.0.53:53")],
        }
    );
    // One backend goes: only sockets connected to it.
    assert_eq!(
        step(&mut c, udp("10.96.0.53", &["10.244.0.2"])),
        StaleUdp {
            gone_backends: vec![addr("10.244.0.1:8080")],
            opened_frontends: vec![],
        }
    );
    // The last one goes (the hook refuses connects from now on), then one comes back: the
    // front end opens again.
    assert_eq!(
        step(&mut c, udp("10.96.0.53", &[])),
        StaleUdp {
            gone_backends: vec![addr("10.244.0.2:8080")],
            opened_frontends: vec![],
        }
    );
    assert_eq!(
        step(&mut c, udp("10.96.0.53", &["10.244.0.3"])),
        StaleUdp {
            gone_backends: vec![],
            opened_frontends: vec![addr("10.96.0.53:53")],
        }
    );
    // A backend added to an answering front end leaves nothing stale.
    assert!(step(&mut c, udp("10.96.0.53", &["10.244.0.3", "10.244.0.4"])).is_empty());
    // TCP never: its connections fail on their own when the peer goes.
    let mut c = Current::default();
    let (s, e) = one(
        "web",
        ServicePort::cluster_ip("10.96.0.80".parse().unwrap(), 80, Protocol::Tcp),
        vec![ep("10.244.0.1", false)],
    );
    assert!(step(&mut c, (s, e)).is_empty());
    assert!(step(&mut c, (ServicePortMap::new(), EndpointsMap::new())).is_empty());
}
