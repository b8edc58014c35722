//! Unit tests on synthetic nodes and pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, NodeSpec, NodeStatus, Pod, PodSpec, PodStatus, PreferredSchedulingTerm,
    ResourceRequirements, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;

use crate::taints::DEFAULT_TOLERATION_SECONDS;
use crate::*;

// ---- builders -------------------------------------------------------------

fn list(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect()
}

fn node(name: &str, cpu: &str, memory: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            allocatable: Some(list(&[("cpu", cpu), ("memory", memory), ("pods", "110")])),
            ..Default::default()
        }),
    }
}

fn labelled(mut n: Node, labels: &[(&str, &str)]) -> Node {
    let l = n.metadata.labels.get_or_insert_with(BTreeMap::new);
    for (k, v) in labels {
        l.insert(k.to_string(), v.to_string());
    }
    n
}

fn tainted(mut n: Node, key: &str, value: &str, effect: &str) -> Node {
    let spec = n.spec.get_or_insert_with(Default::default);
    spec.taints
        .get_or_insert_with(Vec::new)
        .push(taint(key, value, effect));
    n
}

fn taint(key: &str, value: &str, effect: &str) -> Taint {
    Taint {
        key: key.to_string(),
        value: (!value.is_empty()).then(|| value.to_string()),
        effect: effect.to_string(),
        time_added: None,
    }
}

fn container(name: &str, requests: &[(&str, &str)]) -> Container {
    Container {
        name: name.to_string(),
        resources: (!requests.is_empty()).then(|| ResourceRequirements {
            requests: Some(list(requests)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod(name: &str, requests: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("default".to_string()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![container("app", requests)],
            ..Default::default()
        }),
        status: None,
    }
}

fn owned(mut p: Pod, owner_uid: &str) -> Pod {
    p.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".to_string(),
        kind: "ReplicaSet".to_string(),
        name: "rs".to_string(),
        uid: owner_uid.to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    p
}

fn bound(mut p: Pod, node: &str) -> Pod {
    spec(&mut p).node_name = Some(node.to_string());
    p
}

fn spec(p: &mut Pod) -> &mut PodSpec {
    p.spec.get_or_insert_with(Default::default)
}

fn toleration(key: &str, op: &str, value: &str, effect: &str, seconds: Option<i64>) -> Toleration {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Toleration {
        key: opt(key),
        operator: opt(op),
        value: opt(value),
        effect: opt(effect),
        toleration_seconds: seconds,
    }
}

fn requirement(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
    NodeSelectorRequirement {
        key: key.to_string(),
        operator: op.to_string(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
    }
}

fn expr_term(reqs: Vec<NodeSelectorRequirement>) -> NodeSelectorTerm {
    NodeSelectorTerm {
        match_expressions: Some(reqs),
        match_fields: None,
    }
}

fn with_required(mut p: Pod, terms: Vec<NodeSelectorTerm>) -> Pod {
    spec(&mut p).affinity = Some(Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: terms,
            }),
            preferred_during_scheduling_ignored_during_execution: None,
        }),
        ..Default::default()
    });
    p
}

fn snapshot(nodes: &[Node]) -> Snapshot {
    let mut s = Snapshot::new();
    for n in nodes {
        s.upsert_node(n).expect("valid node");
    }
    s
}

fn reasons(err: &Unschedulable, node: &str) -> Vec<String> {
    err.node_reasons
        .get(node)
        .map(|r| r.iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}

/// Schedules on a one-node snapshot and returns the node's failure reasons
/// (empty when the pod fits).
fn one_node_reasons(n: Node, p: &Pod) -> Vec<String> {
    let name = n.metadata.name.clone().unwrap_or_default();
    match schedule(&snapshot(&[n]), p) {
        Ok(chosen) => {
            assert_eq!(chosen, name);
            Vec::new()
        }
        Err(e) => reasons(&e, &name),
    }
}

fn ts(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

// ---- filters --------------------------------------------------------------

#[test]
fn no_nodes() {
    let err = schedule(&Snapshot::new(), &pod("p", &[])).unwrap_err();
    assert_eq!(err.message(), "no nodes available to schedule pods");
    assert_eq!(err.to_string(), NO_NODES_MESSAGE);
}

#[test]
fn node_unschedulable() {
    let mut n = node("n1", "4", "8Gi");
    n.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
    let mut p = pod("p", &[]);
    assert_eq!(
        one_node_reasons(n.clone(), &p),
        ["node(s) were unschedulable"]
    );
    spec(&mut p).tolerations = Some(vec![toleration(
        "node.kubernetes.io/unschedulable",
        "Exists",
        "",
        "NoSchedule",
        None,
    )]);
    assert!(one_node_reasons(n, &p).is_empty());
}

#[test]
fn node_name() {
    let p = bound(pod("p", &[]), "n2");
    let s = snapshot(&[node("n1", "4", "8Gi"), node("n2", "4", "8Gi")]);
    assert_eq!(schedule(&s, &p).unwrap(), "n2");
    let err = schedule(&snapshot(&[node("n1", "4", "8Gi")]), &p).unwrap_err();
    assert_eq!(
        reasons(&err, "n1"),
        ["node(s) didn't match the requested node name"]
    );
}

#[test]
fn taint_toleration_filter() {
    let p = pod("p", &[]);
    for effect in ["NoSchedule", "NoExecute"] {
        let n = tainted(node("n1", "4", "8Gi"), "dedicated", "gpu", effect);
        assert_eq!(
            one_node_reasons(n.clone(), &p),
            ["node(s) had untolerated taint(s)"]
        );
        let mut tolerant = p.clone();
        spec(&mut tolerant).tolerations =
            Some(vec![toleration("dedicated", "Equal", "gpu", effect, None)]);
        assert!(one_node_reasons(n.clone(), &tolerant).is_empty());
        // A toleration for another value does not help.
        spec(&mut tolerant).tolerations =
            Some(vec![toleration("dedicated", "Equal", "cpu", "", None)]);
        assert_eq!(
            one_node_reasons(n, &tolerant),
            ["node(s) had untolerated taint(s)"]
        );
    }
    // PreferNoSchedule only affects the score.
    let n = tainted(
        node("n1", "4", "8Gi"),
        "dedicated",
        "gpu",
        "PreferNoSchedule",
    );
    assert!(one_node_reasons(n, &p).is_empty());
}

#[test]
fn untolerated_taint_is_kept_for_logs() {
    let n = tainted(node("n1", "4", "8Gi"), "dedicated", "gpu", "NoSchedule");
    let err = schedule(&snapshot(&[n]), &pod("p", &[])).unwrap_err();
    assert_eq!(
        err.node_reasons["n1"],
        [Reason::UntoleratedTaint(taint(
            "dedicated",
            "gpu",
            "NoSchedule"
        ))]
    );
}

#[test]
fn node_selector() {
    let n = labelled(node("n1", "4", "8Gi"), &[("disk", "ssd"), ("zone", "a")]);
    let mut p = pod("p", &[]);
    spec(&mut p).node_selector = Some([("disk".to_string(), "ssd".to_string())].into());
    assert!(one_node_reasons(n.clone(), &p).is_empty());
    spec(&mut p).node_selector = Some([("disk".to_string(), "hdd".to_string())].into());
    assert_eq!(
        one_node_reasons(n, &p),
        ["node(s) didn't match Pod's node affinity/selector"]
    );
}

#[test]
fn node_affinity_operators() {
    let n = labelled(node("n1", "4", "8Gi"), &[("disk", "ssd"), ("cores", "16")]);
    let fits = |reqs: Vec<NodeSelectorRequirement>| {
        one_node_reasons(
            n.clone(),
            &with_required(pod("p", &[]), vec![expr_term(reqs)]),
        )
        .is_empty()
    };
    assert!(fits(vec![requirement("disk", "In", &["hdd", "ssd"])]));
    assert!(!fits(vec![requirement("disk", "In", &["hdd"])]));
    assert!(fits(vec![requirement("disk", "NotIn", &["hdd"])]));
    assert!(!fits(vec![requirement("disk", "NotIn", &["ssd"])]));
    assert!(
        fits(vec![requirement("gpu", "NotIn", &["x"])]),
        "NotIn matches an absent label"
    );
    assert!(fits(vec![requirement("disk", "Exists", &[])]));
    assert!(!fits(vec![requirement("gpu", "Exists", &[])]));
    assert!(fits(vec![requirement("gpu", "DoesNotExist", &[])]));
    assert!(!fits(vec![requirement("disk", "DoesNotExist", &[])]));
    assert!(fits(vec![requirement("cores", "Gt", &["8"])]));
    assert!(!fits(vec![requirement("cores", "Gt", &["16"])]));
    assert!(fits(vec![requirement("cores", "Lt", &["17"])]));
    assert!(
        !fits(vec![requirement("disk", "Gt", &["1"])]),
        "non-integer label"
    );
    assert!(
        !fits(vec![requirement("cores", "Gt", &["x"])]),
        "invalid bound"
    );
    assert!(
        !fits(vec![requirement("disk", "In", &[])]),
        "In without values is invalid"
    );
    // Expressions in a term are ANDed.
    assert!(!fits(vec![
        requirement("disk", "In", &["ssd"]),
        requirement("cores", "Lt", &["8"])
    ]));
    // Terms are ORed.
    let p = with_required(
        pod("p", &[]),
        vec![
            expr_term(vec![requirement("disk", "In", &["hdd"])]),
            expr_term(vec![requirement("cores", "Gt", &["4"])]),
        ],
    );
    assert!(one_node_reasons(n.clone(), &p).is_empty());
    // An empty term, or no terms at all, matches nothing.
    let p = with_required(pod("p", &[]), vec![expr_term(vec![])]);
    assert!(!one_node_reasons(n.clone(), &p).is_empty());
    let p = with_required(pod("p", &[]), vec![]);
    assert!(!one_node_reasons(n, &p).is_empty());
}

#[test]
fn node_affinity_match_fields() {
    let nodes = [
        node("n1", "4", "8Gi"),
        node("n2", "4", "8Gi"),
        node("n3", "4", "8Gi"),
    ];
    let field_term = |op: &str, name: &str| NodeSelectorTerm {
        match_expressions: None,
        match_fields: Some(vec![requirement("metadata.name", op, &[name])]),
    };
    let p = with_required(pod("p", &[]), vec![field_term("In", "n2")]);
    assert_eq!(schedule(&snapshot(&nodes), &p).unwrap(), "n2");

    // The other nodes are cut by the PreFilter, with upstream's message.
    let p = with_required(pod("p", &[("cpu", "8")]), vec![field_term("In", "n2")]);
    let err = schedule(&snapshot(&nodes), &p).unwrap_err();
    assert_eq!(
        err.message(),
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't satisfy plugin(s) [NodeAffinity]. \
         preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, \
         2 Preemption is not helpful for scheduling."
    );

    let p = with_required(pod("p", &[]), vec![field_term("NotIn", "n1")]);
    let err = schedule(&snapshot(&nodes[..1]), &p).unwrap_err();
    assert_eq!(
        reasons(&err, "n1"),
        ["node(s) didn't match Pod's node affinity/selector"]
    );

    // Two terms ANDing disjoint names in one term conflict outright.
    let p = with_required(
        pod("p", &[]),
        vec![NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![
                requirement("metadata.name", "In", &["n1"]),
                requirement("metadata.name", "In", &["n2"]),
            ]),
        }],
    );
    let err = schedule(&snapshot(&nodes), &p).unwrap_err();
    assert_eq!(
        err.message(),
        "0/3 nodes are available: pod affinity terms conflict. \
         preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );
}

#[test]
fn resources_fit() {
    let n = node("n1", "2", "4Gi");
    assert!(one_node_reasons(n.clone(), &pod("p", &[("cpu", "2"), ("memory", "4Gi")])).is_empty());
    assert_eq!(
        one_node_reasons(n.clone(), &pod("p", &[("cpu", "2001m")])),
        ["Insufficient cpu"]
    );
    assert_eq!(
        one_node_reasons(n.clone(), &pod("p", &[("cpu", "3"), ("memory", "5Gi")])),
        ["Insufficient cpu", "Insufficient memory"]
    );
    assert_eq!(
        one_node_reasons(n.clone(), &pod("p", &[("ephemeral-storage", "1Gi")])),
        ["Insufficient ephemeral-storage"]
    );
    assert_eq!(
        one_node_reasons(n.clone(), &pod("p", &[("example.com/gpu", "1")])),
        ["Insufficient example.com/gpu"]
    );
    let mut gpu_node = n.clone();
    gpu_node
        .status
        .as_mut()
        .and_then(|s| s.allocatable.as_mut())
        .map(|a| a.insert("example.com/gpu".to_string(), Quantity("2".to_string())));
    assert!(one_node_reasons(gpu_node, &pod("p", &[("example.com/gpu", "2")])).is_empty());

    // Existing pods use up the node.
    let mut s = snapshot(&[n]);
    s.upsert_pod(&bound(pod("a", &[("cpu", "1500m")]), "n1"))
        .unwrap();
    let err = schedule(&s, &pod("p", &[("cpu", "600m")])).unwrap_err();
    assert_eq!(reasons(&err, "n1"), ["Insufficient cpu"]);
    assert_eq!(schedule(&s, &pod("p", &[("cpu", "500m")])).unwrap(), "n1");
}

#[test]
fn too_many_pods() {
    let mut n = node("n1", "4", "8Gi");
    n.status
        .as_mut()
        .and_then(|s| s.allocatable.as_mut())
        .map(|a| a.insert("pods".to_string(), Quantity("1".to_string())));
    let mut s = snapshot(&[n]);
    assert_eq!(schedule(&s, &pod("p", &[])).unwrap(), "n1");
    s.upsert_pod(&bound(pod("a", &[]), "n1")).unwrap();
    let err = schedule(&s, &pod("p", &[("cpu", "5")])).unwrap_err();
    assert_eq!(reasons(&err, "n1"), ["Too many pods", "Insufficient cpu"]);
    // A node that reports no pod capacity fits nothing.
    let mut bare = node("n2", "4", "8Gi");
    bare.status = None;
    assert_eq!(one_node_reasons(bare, &pod("p", &[])), ["Too many pods"]);
}

#[test]
fn init_containers_and_overhead() {
    // Requests = max(sum of containers, each init container) + overhead.
    let mut p = pod("p", &[("cpu", "500m"), ("memory", "1Gi")]);
    spec(&mut p)
        .containers
        .push(container("b", &[("cpu", "500m")]));
    spec(&mut p).init_containers = Some(vec![
        container("init1", &[("cpu", "1500m")]),
        container("init2", &[("memory", "3Gi")]),
    ]);
    let r = resources::pod_requests(p.spec.as_ref().unwrap()).unwrap();
    assert_eq!(r.requests.milli_cpu, 1500);
    assert_eq!(r.requests.memory, 3 << 30);
    spec(&mut p).overhead = Some(list(&[("cpu", "250m")]));
    let r = resources::pod_requests(p.spec.as_ref().unwrap()).unwrap();
    assert_eq!(r.requests.milli_cpu, 1750);

    let n = node("n1", "1700m", "4Gi");
    assert_eq!(one_node_reasons(n, &p), ["Insufficient cpu"]);
    assert!(one_node_reasons(node("n1", "1750m", "3Gi"), &p).is_empty());
}

#[test]
fn sidecars_and_pod_level_requests() {
    // A sidecar adds to the steady state and to later init containers.
    let mut p = pod("p", &[("cpu", "1")]);
    let mut sidecar = container("proxy", &[("cpu", "500m")]);
    sidecar.restart_policy = Some("Always".to_string());
    spec(&mut p).init_containers = Some(vec![sidecar, container("migrate", &[("cpu", "1200m")])]);
    let r = resources::pod_requests(p.spec.as_ref().unwrap()).unwrap();
    assert_eq!(
        r.requests.milli_cpu, 1700,
        "init 1200m runs beside the 500m sidecar"
    );

    // Pod-level requests replace the container sum for cpu/memory.
    let mut p = pod("p", &[("cpu", "1"), ("memory", "1Gi")]);
    spec(&mut p).resources = Some(ResourceRequirements {
        requests: Some(list(&[("cpu", "3")])),
        ..Default::default()
    });
    let r = resources::pod_requests(p.spec.as_ref().unwrap()).unwrap();
    assert_eq!((r.requests.milli_cpu, r.requests.memory), (3000, 1 << 30));
}

#[test]
fn non_zero_defaults_for_scoring() {
    let r = resources::pod_requests(pod("p", &[]).spec.as_ref().unwrap()).unwrap();
    assert!(r.requests.is_zero());
    assert_eq!((r.non_zero_milli_cpu, r.non_zero_memory), (100, 200 << 20));
    // An explicit zero stays zero.
    let r = resources::pod_requests(pod("p", &[("cpu", "0")]).spec.as_ref().unwrap()).unwrap();
    assert_eq!((r.non_zero_milli_cpu, r.non_zero_memory), (0, 200 << 20));
}

#[test]
fn host_ports() {
    let with_port = |name: &str, ip: &str, port: i32, proto: &str| {
        let mut p = pod(name, &[]);
        spec(&mut p).containers[0].ports = Some(vec![ContainerPort {
            container_port: 80,
            host_port: Some(port),
            host_ip: (!ip.is_empty()).then(|| ip.to_string()),
            protocol: (!proto.is_empty()).then(|| proto.to_string()),
            name: None,
        }]);
        p
    };
    let mut s = snapshot(&[node("n1", "4", "8Gi")]);
    s.upsert_pod(&bound(with_port("a", "", 8080, ""), "n1"))
        .unwrap();
    let err = schedule(&s, &with_port("p", "10.0.0.1", 8080, "TCP")).unwrap_err();
    assert_eq!(
        reasons(&err, "n1"),
        ["node(s) didn't have free ports for the requested pod ports"]
    );
    assert!(schedule(&s, &with_port("p", "", 8080, "UDP")).is_ok());
    assert!(schedule(&s, &with_port("p", "", 8081, "")).is_ok());

    let mut s = snapshot(&[node("n1", "4", "8Gi")]);
    s.upsert_pod(&bound(with_port("a", "10.0.0.1", 8080, ""), "n1"))
        .unwrap();
    assert!(schedule(&s, &with_port("p", "10.0.0.2", 8080, "")).is_ok());
    assert!(schedule(&s, &with_port("p", "0.0.0.0", 8080, "")).is_err());
    // The port is free again once the pod is gone.
    s.remove_pod("default", "a");
    assert!(schedule(&s, &with_port("p", "", 8080, "")).is_ok());
}

// ---- message --------------------------------------------------------------

#[test]
fn message_mixed_reasons() {
    let nodes = [
        labelled(node("n1", "1", "8Gi"), &[("disk", "ssd")]),
        node("n2", "4", "8Gi"),
        node("n3", "4", "8Gi"),
    ];
    let mut p = pod("p", &[("cpu", "2")]);
    spec(&mut p).node_selector = Some([("disk".to_string(), "ssd".to_string())].into());
    let err = schedule(&snapshot(&nodes), &p).unwrap_err();
    assert_eq!(
        err.message(),
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector. \
         preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, \
         2 Preemption is not helpful for scheduling."
    );

    spec(&mut p).preemption_policy = Some("Never".to_string());
    let err = schedule(&snapshot(&nodes), &p).unwrap_err();
    assert_eq!(
        err.message(),
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector. \
         preemption: not eligible due to preemptionPolicy=Never."
    );
}

#[test]
fn message_counts_sort_as_strings() {
    let mut nodes = Vec::new();
    for i in 0..10 {
        let mut n = node(&format!("u{i}"), "4", "8Gi");
        n.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
        nodes.push(n);
    }
    nodes.push(tainted(node("t1", "4", "8Gi"), "a", "", "NoSchedule"));
    nodes.push(tainted(node("t2", "4", "8Gi"), "b", "x", "NoExecute"));
    let mut big = node("m1", "4", "1Gi");
    big.status
        .as_mut()
        .and_then(|s| s.allocatable.as_mut())
        .map(|a| a.insert("pods".to_string(), Quantity("0".to_string())));
    nodes.push(big);
    let err = schedule(&snapshot(&nodes), &pod("p", &[("memory", "2Gi")])).unwrap_err();
    // "10 ..." sorts before "2 ..." as upstream's sort.Strings does, and a
    // node with two fit failures counts under both.
    assert_eq!(
        err.message(),
        "0/13 nodes are available: 1 Insufficient memory, 1 Too many pods, 10 node(s) were unschedulable, \
         2 node(s) had untolerated taint(s). preemption: 0/13 nodes are available: \
         1 No preemption victims found for incoming pod, 12 Preemption is not helpful for scheduling."
    );
}

#[test]
fn invalid_quantity() {
    let err = schedule(
        &snapshot(&[node("n1", "4", "8Gi")]),
        &pod("p", &[("cpu", "lots")]),
    )
    .unwrap_err();
    assert!(err
        .message()
        .starts_with("0/1 nodes are available: pod has an invalid quantity \"lots\" for cpu"));
    assert!(err.message().ends_with(
        "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
    ));

    let mut s = snapshot(&[node("n1", "4", "8Gi")]);
    let e = s
        .upsert_pod(&bound(pod("p", &[("memory", "x")]), "n1"))
        .unwrap_err();
    assert!(matches!(e, Error::InvalidQuantity { ref resource, .. } if resource == "memory"));
    assert!(s.usage("n1").is_none(), "a failed update changes nothing");
    assert!(matches!(
        s.upsert_node(&node("n2", "many", "1Gi")),
        Err(Error::InvalidQuantity { .. })
    ));
    assert_eq!(s.node_count(), 1);
    let mut nameless = node("x", "1", "1Gi");
    nameless.metadata.name = None;
    assert_eq!(
        s.upsert_node(&nameless),
        Err(Error::MissingName { kind: "Node" })
    );
}

// ---- scores ---------------------------------------------------------------

#[test]
fn spreading_by_owner() {
    let nodes: Vec<Node> = (1..=5)
        .map(|i| node(&format!("n{i}"), "8", "32Gi"))
        .collect();
    let mut s = snapshot(&nodes);
    for i in 0..10 {
        let p = owned(pod(&format!("web-{i}"), &[("cpu", "100m")]), "rs-1");
        let chosen = schedule(&s, &p).unwrap();
        s.assume(&p, &chosen).unwrap();
    }
    for n in s.node_names() {
        assert_eq!(s.usage(n).map(|u| u.owners["rs-1"]), Some(2), "node {n}");
    }
}

#[test]
fn spreading_beats_packing_of_other_owners() {
    // n1 holds one pod of ours, n2 two pods of another owner: spreading
    // sends the next pod of ours to n2 despite it being fuller.
    let mut s = snapshot(&[node("n1", "8", "32Gi"), node("n2", "8", "32Gi")]);
    s.upsert_pod(&bound(owned(pod("a", &[("cpu", "100m")]), "mine"), "n1"))
        .unwrap();
    s.upsert_pod(&bound(owned(pod("b", &[("cpu", "100m")]), "other"), "n2"))
        .unwrap();
    s.upsert_pod(&bound(owned(pod("c", &[("cpu", "100m")]), "other"), "n2"))
        .unwrap();
    let p = owned(pod("new", &[("cpu", "100m")]), "mine");
    assert_eq!(schedule(&s, &p).unwrap(), "n2");
}

#[test]
fn zone_spreading() {
    // Two nodes in zone a (one of ours in a1), one in zone b: b wins.
    let nodes = [
        labelled(
            node("a1", "8", "32Gi"),
            &[("topology.kubernetes.io/zone", "a")],
        ),
        labelled(
            node("a2", "8", "32Gi"),
            &[("topology.kubernetes.io/zone", "a")],
        ),
        labelled(
            node("b1", "8", "32Gi"),
            &[("topology.kubernetes.io/zone", "b")],
        ),
    ];
    let mut s = snapshot(&nodes);
    s.upsert_pod(&bound(owned(pod("x", &[]), "mine"), "a1"))
        .unwrap();
    assert_eq!(schedule(&s, &owned(pod("y", &[]), "mine")).unwrap(), "b1");
}

#[test]
fn least_allocated_prefers_emptier_nodes() {
    let mut s = snapshot(&[
        node("n1", "4", "8Gi"),
        node("n2", "4", "8Gi"),
        node("n3", "4", "8Gi"),
    ]);
    s.upsert_pod(&bound(pod("a", &[("cpu", "2"), ("memory", "4Gi")]), "n1"))
        .unwrap();
    s.upsert_pod(&bound(pod("b", &[("cpu", "1"), ("memory", "2Gi")]), "n2"))
        .unwrap();
    for i in 0..5 {
        assert_eq!(
            schedule(&s, &pod(&format!("p{i}"), &[("cpu", "100m")])).unwrap(),
            "n3"
        );
    }
    // Pods requesting nothing still count (100m / 200Mi) for scoring.
    let mut s = snapshot(&[node("n1", "1", "2Gi"), node("n2", "1", "2Gi")]);
    s.upsert_pod(&bound(pod("a", &[]), "n1")).unwrap();
    assert_eq!(schedule(&s, &pod("p", &[])).unwrap(), "n2");
}

#[test]
fn prefer_no_schedule_scores_lower() {
    let nodes = [
        tainted(node("n1", "4", "8Gi"), "spot", "", "PreferNoSchedule"),
        node("n2", "4", "8Gi"),
    ];
    for i in 0..5 {
        assert_eq!(
            schedule(&snapshot(&nodes), &pod(&format!("p{i}"), &[])).unwrap(),
            "n2"
        );
    }
    // Tolerating it removes the penalty: the emptier node wins again.
    let mut s = snapshot(&nodes);
    s.upsert_pod(&bound(pod("a", &[("cpu", "2")]), "n2"))
        .unwrap();
    let mut p = pod("p", &[]);
    spec(&mut p).tolerations = Some(vec![toleration(
        "spot",
        "Exists",
        "",
        "PreferNoSchedule",
        None,
    )]);
    assert_eq!(schedule(&s, &p).unwrap(), "n1");
}

#[test]
fn preferred_node_affinity() {
    let nodes = [
        labelled(node("n1", "4", "8Gi"), &[("disk", "hdd")]),
        labelled(node("n2", "4", "8Gi"), &[("disk", "ssd")]),
    ];
    let mut s = snapshot(&nodes);
    s.upsert_pod(&bound(pod("a", &[("cpu", "1")]), "n2"))
        .unwrap();
    let mut p = pod("p", &[]);
    spec(&mut p).affinity = Some(Affinity {
        node_affinity: Some(NodeAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                PreferredSchedulingTerm {
                    weight: 10,
                    preference: expr_term(vec![requirement("disk", "In", &["ssd"])]),
                },
            ]),
            required_during_scheduling_ignored_during_execution: None,
        }),
        ..Default::default()
    });
    assert_eq!(schedule(&s, &p).unwrap(), "n2");
}

#[test]
fn tie_break_is_deterministic() {
    let names: Vec<String> = (0..8).map(|i| format!("n{i}")).collect();
    let forward: Vec<Node> = names.iter().map(|n| node(n, "4", "8Gi")).collect();
    let backward: Vec<Node> = forward.iter().rev().cloned().collect();
    let (a, b) = (snapshot(&forward), snapshot(&backward));
    let mut picks = std::collections::BTreeSet::new();
    for i in 0..32 {
        let p = pod(&format!("p{i}"), &[]);
        let chosen = schedule(&a, &p).unwrap();
        assert_eq!(chosen, schedule(&b, &p).unwrap());
        assert_eq!(chosen, schedule(&a, &p).unwrap());
        picks.insert(chosen);
    }
    assert!(
        picks.len() > 1,
        "different pods spread over equal nodes: {picks:?}"
    );
}

// ---- snapshot -------------------------------------------------------------

#[test]
fn updates_replace_contributions() {
    let mut s = snapshot(&[node("n1", "4", "8Gi"), node("n2", "4", "8Gi")]);
    let p = owned(
        bound(pod("a", &[("cpu", "1"), ("memory", "1Gi")]), "n1"),
        "rs",
    );
    s.upsert_pod(&p).unwrap();
    s.upsert_pod(&p).unwrap();
    let u = s.usage("n1").unwrap();
    assert_eq!(
        (u.requested.milli_cpu, u.pods, u.owners["rs"]),
        (1000, 1, 1)
    );

    // Moving (a new version bound elsewhere) moves the contribution.
    let moved = owned(bound(pod("a", &[("cpu", "2")]), "n2"), "rs");
    s.upsert_pod(&moved).unwrap();
    assert!(s.usage("n1").is_none());
    assert_eq!(s.usage("n2").unwrap().requested.milli_cpu, 2000);

    // A finished pod frees its node.
    let mut done = moved.clone();
    done.status = Some(PodStatus {
        phase: Some("Succeeded".to_string()),
        ..Default::default()
    });
    s.upsert_pod(&done).unwrap();
    assert!(s.usage("n2").is_none());
    s.upsert_pod(&moved).unwrap();
    s.remove_pod("default", "a");
    assert!(s.usage("n2").is_none());

    // Pods bound to an unknown node are kept and show up when it appears.
    s.upsert_pod(&bound(pod("b", &[("cpu", "3")]), "n3"))
        .unwrap();
    s.upsert_node(&node("n3", "4", "8Gi")).unwrap();
    assert_eq!(s.usage("n3").unwrap().requested.milli_cpu, 3000);
    s.remove_node("n3");
    s.upsert_node(&node("n3", "4", "8Gi")).unwrap();
    assert_eq!(s.usage("n3").unwrap().pods, 1);
}

#[test]
fn deleting_pods_do_not_count_for_spreading() {
    let mut s = snapshot(&[node("n1", "4", "8Gi")]);
    let mut p = owned(bound(pod("a", &[]), "n1"), "rs");
    p.metadata.deletion_timestamp = Some(Time(ts("2026-01-01T00:00:00Z")));
    s.upsert_pod(&p).unwrap();
    let u = s.usage("n1").unwrap();
    assert_eq!(u.pods, 1);
    assert!(u.owners.is_empty());
}

#[test]
fn assume_confirm_forget() {
    let mut s = snapshot(&[node("n1", "4", "8Gi")]);
    let p = pod("a", &[("cpu", "1")]);
    s.assume(&p, "n1").unwrap();
    assert_eq!(s.pod_node("default", "a"), Some("n1"));
    // A stale, still-unbound version from the store keeps the assumption.
    s.upsert_pod(&p).unwrap();
    assert_eq!(s.usage("n1").unwrap().requested.milli_cpu, 1000);
    // The bound version confirms it without double counting.
    s.upsert_pod(&bound(p.clone(), "n1")).unwrap();
    assert_eq!(s.usage("n1").unwrap().pods, 1);
    // Forgetting a confirmed pod does nothing; an assumed one is dropped.
    s.forget("default", "a");
    assert_eq!(s.usage("n1").unwrap().pods, 1);
    let q = pod("b", &[]);
    s.assume(&q, "n1").unwrap();
    s.forget("default", "b");
    assert_eq!(s.usage("n1").unwrap().pods, 1);
    assert_eq!(s.pod_node("default", "b"), None);
}

#[test]
fn thousand_pods_on_fifty_nodes_balance() {
    let nodes: Vec<Node> = (0..50)
        .map(|i| node(&format!("node-{i:02}"), "32", "128Gi"))
        .collect();
    let mut s = snapshot(&nodes);
    for i in 0..1000 {
        let p = owned(
            pod(&format!("web-{i}"), &[("cpu", "100m"), ("memory", "128Mi")]),
            "rs-web",
        );
        let chosen = schedule(&s, &p).unwrap();
        s.assume(&p, &chosen).unwrap();
    }
    let counts: Vec<i64> = s
        .node_names()
        .map(|n| s.usage(n).map_or(0, |u| u.pods))
        .collect();
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert_eq!(counts.iter().sum::<i64>(), 1000);
    assert!(max - min <= 1, "{counts:?}");
}

// ---- taints module --------------------------------------------------------

#[test]
fn toleration_matching() {
    let t = taint("k", "v", "NoSchedule");
    assert!(tolerates(
        &toleration("k", "Equal", "v", "NoSchedule", None),
        &t
    ));
    assert!(
        tolerates(&toleration("k", "", "v", "NoSchedule", None), &t),
        "empty operator is Equal"
    );
    assert!(!tolerates(
        &toleration("k", "Equal", "w", "NoSchedule", None),
        &t
    ));
    assert!(tolerates(
        &toleration("k", "Exists", "", "NoSchedule", None),
        &t
    ));
    assert!(
        tolerates(&toleration("k", "Exists", "", "", None), &t),
        "empty effect matches all"
    );
    assert!(!tolerates(
        &toleration("k", "Exists", "", "NoExecute", None),
        &t
    ));
    assert!(
        tolerates(&toleration("", "Exists", "", "", None), &t),
        "empty key with Exists matches all"
    );
    assert!(!tolerates(&toleration("other", "Exists", "", "", None), &t));
    assert!(
        !tolerates(&toleration("k", "Gt", "1", "", None), &t),
        "unknown operator"
    );
    let no_value = taint("k", "", "NoSchedule");
    assert!(tolerates(
        &toleration("k", "Equal", "", "", None),
        &no_value
    ));
}

#[test]
fn default_tolerations() {
    let mut p = pod("p", &[]);
    add_default_tolerations(&mut p);
    let expect = |key: &str| Toleration {
        key: Some(key.to_string()),
        operator: Some("Exists".to_string()),
        effect: Some("NoExecute".to_string()),
        toleration_seconds: Some(DEFAULT_TOLERATION_SECONDS),
        value: None,
    };
    let want = vec![
        expect("node.kubernetes.io/not-ready"),
        expect("node.kubernetes.io/unreachable"),
    ];
    assert_eq!(p.spec.as_ref().unwrap().tolerations.as_ref(), Some(&want));
    add_default_tolerations(&mut p);
    assert_eq!(
        p.spec.as_ref().unwrap().tolerations.as_ref(),
        Some(&want),
        "idempotent"
    );

    // A pod's own toleration for a key (any operator, any duration) stays.
    let mut p = pod("p", &[]);
    let own = toleration(
        "node.kubernetes.io/unreachable",
        "Exists",
        "",
        "NoExecute",
        Some(60),
    );
    spec(&mut p).tolerations = Some(vec![own.clone()]);
    add_default_tolerations(&mut p);
    assert_eq!(
        p.spec.as_ref().unwrap().tolerations.as_ref(),
        Some(&vec![own, expect("node.kubernetes.io/not-ready")])
    );

    // Tolerating everything (empty key and effect) needs nothing added.
    let mut p = pod("p", &[]);
    spec(&mut p).tolerations = Some(vec![toleration("", "Exists", "", "", None)]);
    add_default_tolerations(&mut p);
    assert_eq!(
        p.spec.as_ref().unwrap().tolerations.as_ref().map(Vec::len),
        Some(1)
    );
}

#[test]
fn eviction_timing() {
    let now = ts("2026-01-01T00:10:00Z");
    let at = |key: &str, added: &str| Taint {
        time_added: Some(Time(ts(added))),
        ..taint(key, "", "NoExecute")
    };
    let not_ready = at("node.kubernetes.io/not-ready", "2026-01-01T00:08:00Z");
    let unreachable = at("node.kubernetes.io/unreachable", "2026-01-01T00:09:00Z");

    // No NoExecute taints (others are ignored): never.
    assert_eq!(
        eviction_time(&[], &[taint("x", "", "NoSchedule")], now),
        Eviction::Never
    );
    // An untolerated NoExecute taint: now.
    assert_eq!(
        eviction_time(&[], std::slice::from_ref(&not_ready), now),
        Eviction::Now
    );

    let mut p = pod("p", &[]);
    add_default_tolerations(&mut p);
    let defaults = p.spec.as_ref().unwrap().tolerations.clone().unwrap();
    // 300 s after each taint was added; the earliest wins.
    assert_eq!(
        eviction_time(&defaults, &[unreachable.clone(), not_ready.clone()], now),
        Eviction::At(ts("2026-01-01T00:13:00Z"))
    );
    // A shorter toleration on one taint.
    let tols = vec![
        toleration(
            "node.kubernetes.io/unreachable",
            "Exists",
            "",
            "NoExecute",
            Some(90),
        ),
        toleration(
            "node.kubernetes.io/not-ready",
            "Exists",
            "",
            "NoExecute",
            Some(300),
        ),
    ];
    assert_eq!(
        eviction_time(&tols, &[not_ready.clone(), unreachable.clone()], now),
        Eviction::At(ts("2026-01-01T00:10:30Z"))
    );
    // Tolerated forever (no tolerationSeconds) on one, timed on the other.
    let tols = vec![
        toleration("node.kubernetes.io/not-ready", "Exists", "", "", None),
        toleration(
            "node.kubernetes.io/unreachable",
            "Exists",
            "",
            "NoExecute",
            Some(600),
        ),
    ];
    assert_eq!(
        eviction_time(&tols, &[not_ready.clone(), unreachable.clone()], now),
        Eviction::At(ts("2026-01-01T00:19:00Z"))
    );
    assert_eq!(
        eviction_time(&tols, std::slice::from_ref(&not_ready), now),
        Eviction::Never
    );
    // A deadline already passed, or zero seconds: now.
    let tols = vec![toleration("", "Exists", "", "NoExecute", Some(60))];
    assert_eq!(
        eviction_time(&tols, std::slice::from_ref(&not_ready), now),
        Eviction::Now
    );
    let tols = vec![toleration("", "Exists", "", "", Some(0))];
    assert_eq!(
        eviction_time(&tols, &[taint("k", "", "NoExecute")], now),
        Eviction::Now
    );
    // Without timeAdded the clock starts now.
    let tols = vec![toleration("k", "Exists", "", "", Some(5))];
    assert_eq!(
        eviction_time(&tols, &[taint("k", "", "NoExecute")], now),
        Eviction::At(ts("2026-01-01T00:10:05Z"))
    );
    // The first matching toleration decides for a taint, as upstream.
    let tols = vec![
        toleration("k", "Exists", "", "", None),
        toleration("k", "Exists", "", "", Some(5)),
    ];
    assert_eq!(
        eviction_time(&tols, &[taint("k", "", "NoExecute")], now),
        Eviction::Never
    );
    // One tolerated and one untolerated taint: now.
    let tols = vec![toleration("k", "Exists", "", "", None)];
    assert_eq!(
        eviction_time(
            &tols,
            &[taint("k", "", "NoExecute"), taint("j", "", "NoExecute")],
            now
        ),
        Eviction::Now
    );
}

// ---- incremental accounting ----------------------------------------------

/// A tiny deterministic generator (64-bit LCG) so the sequence below is
/// the same on every run without a dependency.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

#[test]
fn incremental_usage_matches_recomputation() {
    let nodes = ["n0", "n1", "n2"];
    let mut s = snapshot(&nodes.map(|n| node(n, "8", "16Gi")));
    // What each pod should currently contribute: (node, pod, assumed).
    let mut model: BTreeMap<String, (String, Pod, bool)> = BTreeMap::new();
    let mut rng = Lcg(7);
    for step in 0..3000 {
        let name = format!("p{}", rng.next(12));
        let cpu = format!("{}m", 50 * (1 + rng.next(6)));
        let mut p = pod(&name, &[("cpu", &cpu)]);
        if rng.next(2) == 0 {
            p = owned(p, &format!("rs-{}", rng.next(3)));
        }
        if rng.next(4) == 0 {
            spec(&mut p).containers[0].ports = Some(vec![ContainerPort {
                container_port: 80,
                host_port: Some(8000 + rng.next(3) as i32),
                ..Default::default()
            }]);
        }
        let target = nodes[rng.next(3) as usize].to_string();
        match rng.next(6) {
            0 | 1 => {
                let terminal = rng.next(5) == 0;
                let bind = rng.next(3) != 0;
                if bind {
                    p = bound(p, &target);
                }
                if terminal {
                    p.status = Some(PodStatus {
                        phase: Some("Failed".to_string()),
                        ..Default::default()
                    });
                }
                s.upsert_pod(&p).unwrap();
                if bind && !terminal {
                    model.insert(name, (target, p, false));
                } else if terminal || !model.get(&name).is_some_and(|m| m.2) {
                    model.remove(&name);
                }
            }
            2 | 3 => {
                s.assume(&p, &target).unwrap();
                model.insert(name, (target, p, true));
            }
            4 => {
                s.remove_pod("default", &name);
                model.remove(&name);
            }
            _ => {
                s.forget("default", &name);
                if model.get(&name).is_some_and(|m| m.2) {
                    model.remove(&name);
                }
            }
        }
        let mut fresh = snapshot(&nodes.map(|n| node(n, "8", "16Gi")));
        for (node, pod, _) in model.values() {
            fresh.assume(pod, node).unwrap();
        }
        for n in nodes {
            assert_eq!(s.usage(n), fresh.usage(n), "step {step}, node {n}");
        }
    }
}
