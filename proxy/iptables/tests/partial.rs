//! Partial renders and stale-chain deletion, checked against the fake.

mod common;

use std::sync::Arc;

use common::*;
use sluice_proxy::model::{EndpointsMap, NamespacedName, ServicePortMap};
use sluice_proxy::proxier::Changes;
use sluice_proxy_iptables::apply::base_jumps_restore_text;
use sluice_proxy_iptables::{render, Action, ExistingChains, Fake};

fn existing(f: &Fake) -> ExistingChains {
    let own = |t: &str| {
        f.chains(t)
            .into_iter()
            .filter(|c| c.starts_with("SLUICE-"))
            .collect()
    };
    ExistingChains {
        filter: own("filter"),
        nat: own("nat"),
    }
}

fn partial(names: &[&str]) -> Changes {
    Changes {
        full: false,
        services: names
            .iter()
            .map(|n| NamespacedName::new("default", *n))
            .collect(),
        ..Changes::default()
    }
}

/// `web` (three endpoints) and `api` (the nodeport scenario's shape on 10.96.0.11, two
/// endpoints).
fn two_service_maps() -> (ServicePortMap, EndpointsMap) {
    let (mut s, mut e) = scenario("clusterip_three_endpoints");
    let (s2, e2) = scenario("nodeport");
    let mut api = (*s2.values().next().unwrap()).as_ref().clone();
    api.cluster_ips = vec![ip("10.96.0.11")];
    s.insert(spn("api"), Arc::new(api));
    e.insert(spn("api"), e2.values().next().unwrap().clone());
    (s, e)
}

#[test]
fn partial_render_rewrites_only_changed_services() {
    let (mut s, mut e) = two_service_maps();
    let mut f = Fake::new();
    f.local_addrs.insert(ip(NODE_IP));
    let r = render(&s, &e, &config(), &full(), &existing(&f));
    f.restore(&r.text).unwrap();
    f.restore(&base_jumps_restore_text()).unwrap();
    assert_eq!(r.chains, existing(&f));

    // "web" loses an endpoint; only web's chains are declared (and so rewritten).
    e.get_mut(&spn("web")).unwrap().pop();
    let r = render(&s, &e, &config(), &partial(&["web"]), &existing(&f));
    let api_svc = sluice_proxy_iptables::chains::service_chain(
        sluice_proxy_iptables::chains::Kind::Svc,
        &spn("api"),
    );
    assert!(!r.text.contains(&format!(":{api_svc}")), "{}", r.text);
    assert!(r.text.contains(":SLUICE-SERVICES - [0:0]"));
    f.restore(&r.text).expect("partial applies");
    assert_eq!(r.chains, existing(&f), "chains as in the kernel");
    assert_eq!(
        trace(&f, tcp("10.244.9.9", CLUSTER_IP, 80)),
        dnat(&["10.244.1.1", "10.244.2.1"], false)
    );
    assert_eq!(
        trace(&f, tcp("10.244.9.9", "10.96.0.11", 80)),
        dnat(&["10.244.1.1", "10.244.2.1"], false)
    );

    // Nothing changed: only dispatch chains; the state still works.
    let r = render(&s, &e, &config(), &partial(&[]), &existing(&f));
    assert!(!r.text.contains(":SLUICE-SVC-"), "{}", r.text);
    f.restore(&r.text).unwrap();
    assert_eq!(trace(&f, tcp("10.244.9.9", "10.96.0.11", 80)).len(), 2);

    // "api" deleted: its chains are flushed and removed in the same transaction.
    s.remove(&spn("api"));
    e.remove(&spn("api"));
    let r = render(&s, &e, &config(), &partial(&["api"]), &existing(&f));
    assert!(r.text.contains(&format!("-X {api_svc}")), "{}", r.text);
    f.restore(&r.text).expect("deletion applies");
    assert!(!f.chains("nat").contains(&api_svc));
    assert_eq!(
        trace(&f, tcp("10.244.9.9", "10.96.0.11", 80)),
        only(Action::Accept)
    );
    assert_eq!(r.chains, existing(&f));
}

#[test]
fn partial_render_writes_unchanged_services_whose_chains_are_missing() {
    let (s, e) = scenario("nodeport");
    let mut f = Fake::new();
    let r = render(&s, &e, &config(), &partial(&[]), &existing(&f));
    f.restore(&r.text)
        .expect("missing chains are written even if unchanged");
    f.restore(&base_jumps_restore_text()).unwrap();
}

#[test]
fn every_scenario_applies_on_top_of_every_other() {
    for (_, s1, e1) in scenarios() {
        for (_, s2, e2) in scenarios() {
            let mut f = Fake::new();
            f.restore(&render(&s1, &e1, &config(), &full(), &existing(&f)).text)
                .unwrap();
            f.restore(&base_jumps_restore_text()).unwrap();
            let r = render(&s2, &e2, &config(), &full(), &existing(&f));
            f.restore(&r.text).unwrap();
            assert_eq!(r.chains, existing(&f));
        }
    }
}

// ---- Incremental renders (render_parts with the previous state), as the dataplane runs them.

use sluice_proxy_iptables::render::RenderedParts;
use sluice_proxy_iptables::{render_parts, RenderState};

/// `web` (three endpoints) and `api` (NodePort, two endpoints) applied to a fake by a full
/// render; returns the fake and the render's state.
fn two_services() -> (ServicePortMap, EndpointsMap, Fake, RenderState) {
    let (s, e) = two_service_maps();
    let mut f = Fake::new();
    f.local_addrs.insert(ip(NODE_IP));
    let r = render_parts(&s, &e, &config(), &full(), &existing(&f), None);
    f.restore(&r.text()).unwrap();
    f.restore(&base_jumps_restore_text()).unwrap();
    (s, e, f, r.state)
}

/// Compares `got` with `testdata/partial/<name>.golden` (`UPDATE_GOLDEN=1` rewrites it).
fn golden(name: &str, got: &str) {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/partial");
    sluice_proxy::golden::check(&dir, [(name, got.to_string())]);
}

/// The dataplane's partial sync: `names` changed, the previous render's `state` at hand.
fn incremental(
    s: &ServicePortMap,
    e: &EndpointsMap,
    names: &[&str],
    state: RenderState,
) -> RenderedParts {
    render_parts(
        s,
        e,
        &config(),
        &partial(names),
        &ExistingChains::default(),
        Some(state),
    )
}

/// The kernel state a fresh full render of `s`/`e` produces, as `iptables-save` text.
fn full_state(s: &ServicePortMap, e: &EndpointsMap) -> String {
    let mut f = Fake::new();
    f.local_addrs.insert(ip(NODE_IP));
    f.restore(&render(s, e, &config(), &full(), &existing(&f)).text)
        .unwrap();
    f.restore(&base_jumps_restore_text()).unwrap();
    f.save()
}

#[test]
fn incremental_endpoint_change_writes_only_that_services_chains() {
    let (s, mut e, mut f, state) = two_services();
    // web: 10.244.3.1 replaced by 10.244.4.1 (still three endpoints).
    let eps = e.get_mut(&spn("web")).unwrap();
    eps.pop();
    eps.push(ep("10.244.4.1", false));
    let r = incremental(&s, &e, &["web"], state);
    assert!(r.incremental);
    let text = r.text();
    assert!(!text.contains("*filter"), "{text}");
    assert!(!text.contains("SLUICE-SERVICES"), "{text}");
    assert!(!text.contains("SLUICE-NODEPORTS"), "{text}");
    assert!(!text.contains("default/api"), "{text}");
    golden("endpoint_change", &text);
    f.restore(&text).expect("applies");
    assert_eq!(r.state.chains(), existing(&f), "chains as in the kernel");
    assert_eq!(f.save(), full_state(&s, &e));
    assert_eq!(
        trace(&f, tcp("10.244.9.9", CLUSTER_IP, 80)),
        dnat(&["10.244.1.1", "10.244.2.1", "10.244.4.1"], false)
    );
}

#[test]
fn incremental_with_nothing_changed_is_empty() {
    let (s, e, _, state) = two_services();
    let r = incremental(&s, &e, &[], state.clone());
    assert!(r.is_empty() && r.parts.is_empty(), "no parts at all");
    assert_eq!(r.state, state);
    // A listed service whose rules did not change: its own chains only, rewritten identically.
    let r = incremental(&s, &e, &["web"], state);
    assert!(!r.text().contains("SLUICE-SERVICES"));
}

#[test]
fn incremental_loss_of_all_endpoints_rewrites_dispatch_and_reject() {
    let (s, mut e, mut f, state) = two_services();
    e.remove(&spn("web"));
    let r = incremental(&s, &e, &["web"], state);
    let text = r.text();
    golden("endpoints_gone", &text);
    assert!(text.contains(":SLUICE-SERVICES - [0:0]"), "{text}");
    assert!(text.contains("-j REJECT"), "{text}");
    assert!(
        !text.contains(":SLUICE-NODEPORTS"),
        "api's nodeport rules unchanged: {text}"
    );
    f.restore(&text).expect("applies");
    assert_eq!(r.state.chains(), existing(&f));
    assert_eq!(f.save(), full_state(&s, &e));
    assert_eq!(
        trace(&f, tcp("10.244.9.9", CLUSTER_IP, 80)),
        only(Action::Reject)
    );

    // And back: one endpoint again.
    e.insert(spn("web"), vec![ep("10.244.1.1", true)]);
    let r = incremental(&s, &e, &["web"], r.state);
    f.restore(&r.text()).expect("applies");
    assert_eq!(f.save(), full_state(&s, &e));
    assert_eq!(
        trace(&f, tcp("10.244.9.9", CLUSTER_IP, 80)),
        dnat(&["10.244.1.1"], false)
    );
}

#[test]
fn incremental_service_removal_and_addition() {
    let (mut s, mut e, mut f, state) = two_services();
    let api = s.remove(&spn("api")).unwrap();
    let api_eps = e.remove(&spn("api")).unwrap();
    let r = incremental(&s, &e, &["api"], state);
    let text = r.text();
    golden("service_removed", &text);
    assert!(text.contains(":SLUICE-NODEPORTS - [0:0]"), "{text}");
    assert!(!text.contains("*filter"), "{text}");
    f.restore(&text).expect("applies");
    assert_eq!(f.save(), full_state(&s, &e));

    s.insert(spn("api"), api);
    e.insert(spn("api"), api_eps);
    let r = incremental(&s, &e, &["api"], r.state);
    f.restore(&r.text()).expect("applies");
    assert_eq!(f.save(), full_state(&s, &e));
    assert_eq!(r.state.chains(), existing(&f));
}

/// Random service/endpoint churn over the golden scenarios' shapes: after every incremental
/// render the fake holds exactly what a full render of the same maps produces.
#[test]
fn incremental_renders_track_full_renders() {
    let shapes: Vec<_> = scenarios()
        .into_iter()
        .map(|(_, s, e)| {
            let k = s.keys().next().unwrap().clone();
            (s[&k].clone(), e.get(&k).cloned().unwrap_or_default())
        })
        .collect();
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let (mut s, mut e) = (ServicePortMap::new(), EndpointsMap::new());
    let mut f = Fake::new();
    f.local_addrs.insert(ip(NODE_IP));
    let r = render_parts(&s, &e, &config(), &full(), &existing(&f), None);
    f.restore(&r.text()).unwrap();
    f.restore(&base_jumps_restore_text()).unwrap();
    let mut state = r.state;
    for round in 0..200 {
        let mut changed = Vec::new();
        for _ in 0..1 + next(3) {
            let i = next(6);
            let name = format!("svc{i}");
            changed.push(name.clone());
            let key = spn(&name);
            match next(4) {
                0 => {
                    s.remove(&key);
                    e.remove(&key);
                }
                1 => {
                    e.remove(&key);
                }
                _ => {
                    let (svc, eps) = &shapes[next(shapes.len())];
                    let mut svc = (**svc).clone();
                    let vip = format!("10.96.1.{i}");
                    svc.cluster_ips = vec![ip(&vip)];
                    if svc.node_port.is_some() {
                        svc.node_port = Some(30100 + i as u16);
                    }
                    svc.external_ips.clear();
                    svc.load_balancer_ips = svc
                        .load_balancer_ips
                        .iter()
                        .map(|_| ip(&format!("203.0.113.{}", 100 + i)))
                        .collect();
                    s.insert(key.clone(), Arc::new(svc));
                    let mut eps = eps.clone();
                    eps.truncate(next(eps.len() + 1));
                    if next(2) == 0 {
                        eps.push(ep(&format!("10.244.50.{}", next(3)), next(2) == 0));
                    }
                    e.insert(key, eps);
                }
            }
        }
        let names: Vec<&str> = changed.iter().map(String::as_str).collect();
        let r = incremental(&s, &e, &names, state);
        f.restore(&r.text())
            .unwrap_or_else(|err| panic!("round {round}: {err}\n{}", r.text()));
        assert_eq!(f.save(), full_state(&s, &e), "round {round}");
        assert_eq!(r.state.chains(), existing(&f), "round {round}");
        state = r.state;
    }
}
