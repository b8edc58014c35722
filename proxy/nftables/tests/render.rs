//! The nftables render: golden files (`testdata/<scenario>.golden`, the full render of each
//! shared scenario; `UPDATE_GOLDEN=1` rewrites them), and the model ([`Table`]) checks that
//! renders apply and that incremental renders land where full renders do.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use sluice_proxy::golden;
use sluice_proxy::model::{Endpoint, EndpointsMap, NamespacedName, ServicePort, ServicePortMap};
use sluice_proxy::proxier::Changes;
use sluice_proxy::scenarios::*;
use sluice_proxy_nftables::model::Table;
use sluice_proxy_nftables::{render, Existing, RenderConfig, RenderState};

fn config() -> RenderConfig {
    RenderConfig {
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        ..RenderConfig::new(NODE)
    }
}

fn render_full(s: &ServicePortMap, e: &EndpointsMap, existing: &Existing) -> (String, RenderState) {
    let r = render(s, e, &config(), &full(), None, existing);
    assert!(!r.incremental);
    (r.text, r.state)
}

fn partial(services: &[&str]) -> Changes {
    Changes {
        services: services
            .iter()
            .map(|n| NamespacedName::new("default", *n))
            .collect(),
        ..Changes::default()
    }
}

/// A model holding the full render of `s`/`e`.
fn model_of(s: &ServicePortMap, e: &EndpointsMap) -> Table {
    let mut t = Table::new();
    t.apply(&render_full(s, e, &Existing::default()).0)
        .unwrap_or_else(|err| panic!("full render applies: {err}"));
    t
}

#[test]
fn golden_files_match() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata");
    golden::check(
        &dir,
        scenarios()
            .iter()
            .map(|(name, s, e)| (*name, render_full(s, e, &Existing::default()).0)),
    );
}

#[test]
fn every_golden_file_has_a_scenario() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let names: Vec<&str> = scenarios().iter().map(|(n, _, _)| *n).collect();
    golden::check_no_stale(&dir, &names);
}

#[test]
fn every_scenario_applies_on_top_of_every_other() {
    for (a, sa, ea) in scenarios() {
        let base = model_of(&sa, &ea);
        for (b, sb, eb) in scenarios() {
            let mut t = base.clone();
            let existing = Existing::parse(&t.terse_listing());
            let (text, _) = render_full(&sb, &eb, &existing);
            t.apply(&text)
                .unwrap_or_else(|err| panic!("{b} over {a}: {err}"));
            assert_eq!(t.dump(), model_of(&sb, &eb).dump(), "{b} over {a}");
        }
    }
}

#[test]
fn cluster_ip_dispatches_by_front_end_to_slots() {
    let (s, e) = scenario("clusterip_three_endpoints");
    let t = model_of(&s, &e);
    let fe = format!("{CLUSTER_IP} . tcp . 80");
    assert_eq!(t.lookup("service-ips", &fe), Some("goto pick-tcp-3"));
    let slots: BTreeSet<&str> = (0..3)
        .map(|i| {
            t.lookup("endpoints-tcp", &format!("{CLUSTER_IP} . 80 . {i}"))
                .unwrap()
        })
        .collect();
    assert_eq!(
        slots,
        BTreeSet::from([
            "10.244.1.1 . 8080",
            "10.244.2.1 . 8080",
            "10.244.3.1 . 8080"
        ])
    );
    assert_eq!(
        t.rules("pick-tcp-3").unwrap(),
        ["meta l4proto tcp dnat ip to ip daddr . th dport . numgen random mod 3 map @endpoints-tcp"]
    );
    // Off-cluster clients are masqueraded; the local endpoint can hairpin.
    assert!(t.elements("masq-cluster-ips").unwrap().contains(&fe));
    assert_eq!(
        t.elements("hairpin").unwrap(),
        vec!["10.244.1.1 . 10.244.1.1".to_string()]
    );
}

#[test]
fn no_endpoints_rejects_every_front_end_and_dnats_none() {
    let (s, e) = scenario("no_endpoints");
    let t = model_of(&s, &e);
    for fe in [
        format!("{CLUSTER_IP} . tcp . 80"),
        format!("{EXTERNAL_IP} . tcp . 80"),
        format!("{LB_IP} . tcp . 80"),
    ] {
        assert_eq!(
            t.lookup("no-endpoint-services", &fe),
            Some("goto reject-chain")
        );
        assert_eq!(t.lookup("service-ips", &fe), None);
    }
    assert_eq!(
        t.lookup("no-endpoint-nodeports", &format!("tcp . {NODE_PORT}")),
        Some("goto reject-chain")
    );
    assert_eq!(
        t.elements("service-nodeports").unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn etp_local_short_circuits_pods_and_drops_without_local_endpoints() {
    let (s, e) = scenario("etp_local_without_local_endpoints");
    let t = model_of(&s, &e);
    let fe = format!("{LB_IP} . tcp . 80");
    assert_eq!(t.lookup("service-ips", &fe), Some("goto external-local"));
    assert_eq!(t.lookup("short-circuit-ips", &fe), Some("goto pick-tcp-1"));
    assert_eq!(t.lookup("local-ips", &fe), Some("drop"));
    assert_eq!(t.lookup("no-endpoint-services", &fe), Some("drop"));
    // Cluster IP traffic still reaches the remote endpoint; nothing is masqueraded always.
    assert_eq!(
        t.lookup("service-ips", &format!("{CLUSTER_IP} . tcp . 80")),
        Some("goto pick-tcp-1")
    );
    assert_eq!(t.elements("masq-ips").unwrap(), Vec::<String>::new());

    let (s, e) = scenario("etp_local_with_local_endpoints");
    let t = model_of(&s, &e);
    let np = format!("tcp . {NODE_PORT}");
    assert_eq!(
        t.lookup("local-nodeports", &np),
        Some("goto nodeport-pick-local-tcp-1")
    );
    assert_eq!(
        t.lookup("nodeport-local-endpoints-tcp", &format!("{NODE_PORT} . 0")),
        Some("10.244.1.1 . 8080")
    );
    assert_eq!(t.lookup("no-endpoint-nodeports", &np), None);
}

#[test]
fn affinity_gets_a_chain_and_a_timeout_set_per_endpoint() {
    let (s, e) = scenario("client_ip_affinity");
    let t = model_of(&s, &e);
    let v = t
        .lookup("service-ips", &format!("{CLUSTER_IP} . tcp . 80"))
        .unwrap();
    let chain = v.strip_prefix("goto ").unwrap();
    assert!(chain.starts_with("affinity-"), "{v}");
    let rules = t.rules(chain).unwrap();
    assert_eq!(rules.len(), 4, "{rules:?}");
    assert!(rules[0].starts_with("ip saddr @affinity-"));
    assert!(rules[2].starts_with("numgen random mod 2 == 0 update @affinity-"));
    let sets: Vec<&str> = t.sets().filter(|s| s.starts_with("affinity-")).collect();
    assert_eq!(sets.len(), 2);
    assert!(
        t.elements("endpoints-tcp").unwrap().is_empty(),
        "no slots: {t:?}"
    );
}

#[test]
fn endpoint_replacement_is_element_updates_only() {
    let (s, mut e) = scenario("clusterip_three_endpoints");
    let (_, state) = render_full(&s, &e, &Existing::default());
    e.get_mut(&spn("web")).unwrap()[1] = ep("10.244.9.9", false);
    let r = render(
        &s,
        &e,
        &config(),
        &partial(&["web"]),
        Some(state),
        &Existing::default(),
    );
    assert!(r.incremental);
    assert!(
        !r.text.contains(" rule ") && !r.text.contains(" chain "),
        "{}",
        r.text
    );
    assert_eq!(
        r.text,
        "delete element ip sluice endpoints-tcp {\n\t10.96.0.10 . 80 . 1\n}\n\
         add element ip sluice endpoints-tcp {\n\t10.96.0.10 . 80 . 1 : 10.244.9.9 . 8080\n}\n"
    );
    // Nothing changed: nothing to send.
    let r2 = render(
        &s,
        &e,
        &config(),
        &partial(&["web"]),
        Some(r.state),
        &Existing::default(),
    );
    assert_eq!(r2.text, "");
}

#[test]
fn hairpin_address_stays_while_another_service_uses_it() {
    let (mut s, mut e) = scenario("clusterip_three_endpoints");
    let other = sluice_proxy::model::ServicePortName::new(
        "default",
        "other",
        "http",
        sluice_proxy::model::Protocol::Tcp,
    );
    s.insert(
        other.clone(),
        Arc::new(ServicePort::cluster_ip(
            ip("10.96.0.11"),
            80,
            other.protocol,
        )),
    );
    e.insert(other.clone(), vec![ep("10.244.1.1", true)]);
    let mut t = model_of(&s, &e);
    let (_, state) = render_full(&s, &e, &Existing::default());
    s.remove(&other);
    e.remove(&other);
    let r = render(
        &s,
        &e,
        &config(),
        &partial(&["other"]),
        Some(state),
        &Existing::default(),
    );
    t.apply(&r.text).unwrap();
    assert_eq!(
        t.elements("hairpin").unwrap(),
        vec!["10.244.1.1 . 10.244.1.1".to_string()]
    );
    s.remove(&spn("web"));
    let r = render(
        &s,
        &e,
        &config(),
        &partial(&["web"]),
        Some(r.state),
        &Existing::default(),
    );
    t.apply(&r.text).unwrap();
    assert!(t.elements("hairpin").unwrap().is_empty());
}

/// A small deterministic generator (no dev-dependency for one test).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn incremental_renders_track_full_renders() {
    let names = ["a", "b", "c", "d"];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut s, mut e) = (ServicePortMap::new(), EndpointsMap::new());
    let mut t = Table::new();
    let mut state: Option<RenderState> = None;
    let mut compared = 0;
    for round in 0..300 {
        let name = names[rng.below(4) as usize];
        let key = spn(name);
        let n = rng.below(4) as usize;
        let eps: Vec<Arc<Endpoint>> = (0..n)
            .map(|i| {
                let mut x = (*ep(
                    &format!("10.244.{}.{}", rng.below(3) + 1, i + 1),
                    rng.below(2) == 0,
                ))
                .clone();
                if rng.below(6) == 0 {
                    x.ready = false;
                    x.terminating = true;
                }
                Arc::new(x)
            })
            .collect();
        let i = names.iter().position(|x| *x == name).unwrap();
        let base = match rng.below(4) {
            0 => ServicePort::cluster_ip(ip(&format!("10.96.0.{}", 10 + i)), 80, key.protocol),
            1 => ServicePort {
                cluster_ips: vec![ip(&format!("10.96.0.{}", 10 + i))],
                node_port: Some(30000 + i as u16),
                ..node_port()
            },
            _ => ServicePort {
                cluster_ips: vec![ip(&format!("10.96.0.{}", 10 + i))],
                node_port: Some(30000 + i as u16),
                // Shared on purpose: front ends two services claim.
                external_ips: vec![ip(EXTERNAL_IP)],
                load_balancer_ips: vec![ip(&format!("203.0.113.{}", 10 + i))],
                ..load_balancer(false)
            },
        };
        let svc = ServicePort {
            external_policy_local: base.externally_accessible() && rng.below(2) == 0,
            internal_policy_local: rng.below(5) == 0,
            session_affinity_timeout: (rng.below(5) == 0).then_some(60 + rng.below(2) as u32),
            load_balancer_source_ranges: if rng.below(3) == 0 {
                vec!["192.0.2.0/24".parse().unwrap()]
            } else {
                vec![]
            },
            ..base
        };
        match rng.below(5) {
            0 => {
                s.remove(&key);
                e.remove(&key);
            }
            _ => {
                s.insert(key.clone(), Arc::new(svc));
                let mut eps = eps;
                eps.sort_by_key(|x| (x.ip, x.port));
                eps.dedup_by_key(|x| (x.ip, x.port));
                if eps.is_empty() {
                    e.remove(&key);
                } else {
                    e.insert(key.clone(), eps);
                }
            }
        }
        let changes = if round % 50 == 0 {
            full()
        } else {
            partial(&[name])
        };
        let existing = Existing::parse(&t.terse_listing());
        let r = render(&s, &e, &config(), &changes, state.take(), &existing);
        t.apply(&r.text)
            .unwrap_or_else(|err| panic!("round {round}: {err}\n{}", r.text));
        state = Some(r.state);
        // Who owns a contested front end may differ from a fresh full render (first claimant
        // vs first in name order), so compare with a full render onto the same history only
        // when no front end is contested.
        let contested = s
            .values()
            .filter(|p| p.external_ips.contains(&ip(EXTERNAL_IP)))
            .count()
            > 1;
        if !contested {
            assert_eq!(t.dump(), model_of(&s, &e).dump(), "round {round}");
            compared += 1;
        }
    }
    assert!(compared > 100, "only {compared} rounds compared");
}
