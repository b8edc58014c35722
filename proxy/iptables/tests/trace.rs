//! The packet tracer over the fake, run on the golden scenarios.

mod common;

use common::*;
use sluice_proxy_iptables::apply::{base_jumps_restore_text, cleanup_text};
use sluice_proxy_iptables::{Action, Fake, Packet};

const POD: &str = "10.244.9.9";
const OUTSIDE: &str = "192.0.2.50";

#[test]
fn cluster_ip_dnats_to_exactly_the_ready_endpoints() {
    let f = load("clusterip_three_endpoints");
    assert_eq!(
        trace(&f, tcp(POD, CLUSTER_IP, 80)),
        dnat(&["10.244.1.1", "10.244.2.1", "10.244.3.1"], false)
    );
    // Wrong port: not a service, untouched.
    assert_eq!(trace(&f, tcp(POD, CLUSTER_IP, 81)), only(Action::Accept));
}

#[test]
fn cluster_ip_from_outside_the_cluster_is_masqueraded() {
    let f = load("clusterip_three_endpoints");
    assert_eq!(
        trace(&f, tcp(OUTSIDE, CLUSTER_IP, 80)),
        dnat(&["10.244.1.1", "10.244.2.1", "10.244.3.1"], true)
    );
}

#[test]
fn hairpin_is_masqueraded_only_when_it_hits_itself() {
    let f = load("clusterip_three_endpoints");
    let got = trace(&f, tcp("10.244.2.1", CLUSTER_IP, 80));
    let mut want = dnat(&["10.244.1.1", "10.244.3.1"], false);
    want.extend(dnat(&["10.244.2.1"], true));
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn terminating_fallback_uses_serving_terminating_endpoints() {
    let f = load("terminating_fallback");
    assert_eq!(
        trace(&f, tcp(POD, CLUSTER_IP, 80)),
        dnat(&["10.244.1.1", "10.244.3.1"], false)
    );
}

#[test]
fn client_ip_affinity_still_reaches_only_endpoints() {
    let f = load("client_ip_affinity");
    assert_eq!(
        trace(&f, tcp(POD, CLUSTER_IP, 80)),
        dnat(&["10.244.1.1", "10.244.2.1"], false)
    );
}

#[test]
fn no_endpoints_rejects_every_address() {
    let f = load("no_endpoints");
    for p in [
        tcp(POD, CLUSTER_IP, 80),
        tcp(OUTSIDE, EXTERNAL_IP, 80),
        tcp(OUTSIDE, LB_IP, 80),
        tcp(OUTSIDE, NODE_IP, NODE_PORT),
        Packet {
            from_local: true,
            ..tcp(NODE_IP, CLUSTER_IP, 80)
        },
    ] {
        assert_eq!(trace(&f, p), only(Action::Reject), "{p:?}");
    }
}

#[test]
fn node_port_from_off_node_is_masqueraded() {
    let f = load("nodeport");
    assert_eq!(
        trace(&f, tcp(OUTSIDE, NODE_IP, NODE_PORT)),
        dnat(&["10.244.1.1", "10.244.2.1"], true)
    );
    // Host-originated traffic to the node port too.
    let p = Packet {
        from_local: true,
        ..tcp(NODE_IP, NODE_IP, NODE_PORT)
    };
    assert_eq!(trace(&f, p), dnat(&["10.244.1.1", "10.244.2.1"], true));
}

#[test]
fn etp_local_preserves_the_client_ip_and_uses_local_endpoints() {
    let f = load("etp_local_with_local_endpoints");
    for dst in [(NODE_IP, NODE_PORT), (EXTERNAL_IP, 80), (LB_IP, 80)] {
        assert_eq!(
            trace(&f, tcp(OUTSIDE, dst.0, dst.1)),
            dnat(&["10.244.1.1"], false),
            "{dst:?}"
        );
    }
    // Pods are short-circuited to the Cluster set (no SNAT: in-cluster source).
    assert_eq!(
        trace(&f, tcp(POD, LB_IP, 80)),
        dnat(&["10.244.1.1", "10.244.2.1"], false)
    );
}

#[test]
fn etp_local_without_local_endpoints_drops_external_traffic_only() {
    let f = load("etp_local_without_local_endpoints");
    for dst in [(NODE_IP, NODE_PORT), (EXTERNAL_IP, 80), (LB_IP, 80)] {
        assert_eq!(
            trace(&f, tcp(OUTSIDE, dst.0, dst.1)),
            only(Action::Drop),
            "{dst:?}"
        );
    }
    // A pod reaching the LB IP must still succeed; so does the ClusterIP.
    assert_eq!(trace(&f, tcp(POD, LB_IP, 80)), dnat(&["10.244.2.1"], false));
    assert_eq!(
        trace(&f, tcp(POD, CLUSTER_IP, 80)),
        dnat(&["10.244.2.1"], false)
    );
    // Host traffic is short-circuited and masqueraded.
    let p = Packet {
        from_local: true,
        ..tcp(NODE_IP, LB_IP, 80)
    };
    assert_eq!(trace(&f, p), dnat(&["10.244.2.1"], true));
}

#[test]
fn itp_local_without_local_endpoints_drops_cluster_ip_traffic() {
    let f = load("itp_local_without_local_endpoints");
    assert_eq!(trace(&f, tcp(POD, CLUSTER_IP, 80)), only(Action::Drop));
}

#[test]
fn lb_source_ranges_filter_lb_ip_but_not_node_port() {
    let f = load("lb_source_ranges");
    assert_eq!(
        trace(&f, tcp("192.0.2.50", LB_IP, 80)),
        dnat(&["10.244.2.1"], true)
    );
    assert_eq!(trace(&f, tcp("198.18.0.1", LB_IP, 80)), only(Action::Drop));
    assert_eq!(
        trace(&f, tcp("198.18.0.1", NODE_IP, NODE_PORT)),
        dnat(&["10.244.2.1"], true)
    );
}

#[test]
fn fake_rejects_jump_to_missing_chain_and_keeps_state() {
    let mut f = load("clusterip_three_endpoints");
    let before = f.clone();
    let err = f
        .restore("*nat\n:SLUICE-SERVICES - [0:0]\n-A SLUICE-SERVICES -j SLUICE-SVC-NOPE\nCOMMIT\n")
        .unwrap_err();
    assert!(
        err.to_string().contains("missing chain SLUICE-SVC-NOPE"),
        "{err}"
    );
    assert_eq!(f, before, "failed transaction must not change state");
}

#[test]
fn fake_rejects_duplicate_declaration_and_deleting_referenced_chains() {
    let mut f = Fake::new();
    let err = f
        .restore("*nat\n:SLUICE-A - [0:0]\n:SLUICE-A - [0:0]\nCOMMIT\n")
        .unwrap_err();
    assert!(err.to_string().contains("declared twice"), "{err}");
    f.restore("*nat\n:SLUICE-A - [0:0]\n:SLUICE-B - [0:0]\n-A SLUICE-A -j SLUICE-B\nCOMMIT\n")
        .unwrap();
    let err = f.restore("*nat\n-X SLUICE-B\nCOMMIT\n").unwrap_err();
    assert!(err.to_string().contains("deleted chain SLUICE-B"), "{err}");
    let err = f
        .restore("*nat\n-A SLUICE-A -m bogus -j SLUICE-B\nCOMMIT\n")
        .unwrap_err();
    assert!(err.to_string().contains("unknown match"), "{err}");
    let err = f
        .restore("*nat\n-A SLUICE-A -j DROP\nCOMMIT\n")
        .unwrap_err();
    assert!(err.to_string().contains("not allowed"), "{err}");
}

#[test]
fn cleanup_removes_every_sluice_chain_and_jump() {
    let mut f = load("etp_local_with_local_endpoints");
    // A foreign rule that must survive.
    f.restore("*filter\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n")
        .unwrap();
    let text = cleanup_text(&f.save());
    f.restore(&text).expect("cleanup applies");
    let saved = f.save();
    assert!(!saved.contains("SLUICE-"), "{saved}");
    assert!(saved.contains("--dport 22 -j ACCEPT"));
    // And the dataplane can be installed again afterwards.
    let (s, e) = scenario("nodeport");
    f.restore(&render_full(&s, &e)).unwrap();
    f.restore(&base_jumps_restore_text()).unwrap();
}
