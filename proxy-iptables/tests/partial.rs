//! Partial renders and stale-chain deletion, checked against the fake.

mod common;

use std::sync::Arc;

use common::*;
use sluice_proxy::model::NamespacedName;
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

#[test]
fn partial_render_rewrites_only_changed_services() {
    let (mut s, mut e) = scenario("clusterip_three_endpoints");
    let (s2, e2) = scenario("nodeport");
    // Second service "api" with the nodeport scenario's shape on another IP.
    let mut api = (*s2.values().next().unwrap()).as_ref().clone();
    api.cluster_ips = vec![ip("10.96.0.11")];
    s.insert(spn("api"), Arc::new(api));
    e.insert(spn("api"), e2.values().next().unwrap().clone());

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
    assert_eq!(r.chains, existing(&f), "stale SEP chain deleted");
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
