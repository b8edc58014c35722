//! Unit tests: exact cells per kind, durations, columns, row objects and the
//! Table envelope.

use std::time::Duration;

use jiff::Timestamp;
use serde_json::{json, Value};

use crate::{column_definitions, human_duration, row, table, IncludeObject};

/// The fixed "now" of every test: 2024-06-01T12:00:00Z.
fn now() -> Timestamp {
    "2024-06-01T12:00:00Z".parse().expect("valid timestamp")
}

/// A creation timestamp `secs` seconds before `now()`.
fn ago(secs: i64) -> String {
    Timestamp::from_second(now().as_second() - secs)
        .expect("in range")
        .to_string()
}

fn cells(kind: &str, obj: &Value) -> Vec<Value> {
    let r = row(kind, obj, now(), IncludeObject::None);
    r["cells"].as_array().cloned().expect("cells array")
}

fn meta(name: &str, age_secs: i64) -> Value {
    json!({"name": name, "namespace": "default", "creationTimestamp": ago(age_secs)})
}

// ------------------------------------------------------------ durations

#[test]
fn human_duration_table() {
    let cases: &[(u64, &str)] = &[
        (0, "0s"),
        (1, "1s"),
        (59, "59s"),
        (60, "60s"),
        (119, "119s"),
        (120, "2m"),
        (125, "2m5s"),
        (200, "3m20s"),
        (599, "9m59s"),
        (600, "10m"),
        (900, "15m"),
        (3600, "60m"),
        (10_799, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 5 * 60, "3h5m"),
        (3 * 3600 + 20 * 60, "3h20m"),
        (8 * 3600, "8h"),
        (47 * 3600 + 59 * 60, "47h"),
        (2 * 86_400, "2d"),
        (2 * 86_400 + 3 * 3600, "2d3h"),
        (7 * 86_400 + 23 * 3600, "7d23h"),
        (8 * 86_400, "8d"),
        (12 * 86_400, "12d"),
        (400 * 86_400, "400d"),
        (729 * 86_400, "729d"),
        (730 * 86_400, "2y"),
        ((3 * 365 + 45) * 86_400, "3y45d"),
        (8 * 365 * 86_400, "8y"),
        (20 * 365 * 86_400, "20y"),
    ];
    for (secs, want) in cases {
        assert_eq!(human_duration(Duration::from_secs(*secs)), *want, "{secs}s");
    }
    // Sub-second precision is truncated.
    assert_eq!(human_duration(Duration::from_millis(1999)), "1s");
    assert_eq!(
        human_duration(Duration::MAX),
        format!("{}y", i64::MAX / 86_400 / 365)
    );
}

#[test]
fn age_cell_edge_cases() {
    let missing = json!({"metadata": {"name": "n"}});
    assert_eq!(cells("Namespace", &missing)[2], json!("<unknown>"));
    let zero = json!({"metadata": {"name": "n", "creationTimestamp": "0001-01-01T00:00:00Z"}});
    assert_eq!(cells("Namespace", &zero)[2], json!("<unknown>"));
    let garbage = json!({"metadata": {"name": "n", "creationTimestamp": "yesterday"}});
    assert_eq!(cells("Namespace", &garbage)[2], json!("<unknown>"));
    // Up to one second of clock skew reads as 0s; more is <invalid>.
    let skew = json!({"metadata": {"name": "n", "creationTimestamp": ago(-1)}});
    assert_eq!(cells("Namespace", &skew)[2], json!("0s"));
    let future = json!({"metadata": {"name": "n", "creationTimestamp": ago(-5)}});
    assert_eq!(cells("Namespace", &future)[2], json!("<invalid>"));
    let fractional =
        json!({"metadata": {"name": "n", "creationTimestamp": "2024-06-01T11:59:00.5Z"}});
    assert_eq!(cells("Namespace", &fractional)[2], json!("59s"));
}

// ------------------------------------------------------------ columns

fn names_and_priorities(kind: &str) -> Vec<(String, i64)> {
    column_definitions(kind)
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                c["priority"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

fn cols(spec: &[(&str, i64)]) -> Vec<(String, i64)> {
    spec.iter().map(|(n, p)| (n.to_string(), *p)).collect()
}

#[test]
fn column_names_and_priorities() {
    assert_eq!(
        names_and_priorities("Pod"),
        cols(&[
            ("Name", 0),
            ("Ready", 0),
            ("Status", 0),
            ("Restarts", 0),
            ("Age", 0),
            ("IP", 1),
            ("Node", 1),
            ("Nominated Node", 1),
            ("Readiness Gates", 1),
        ])
    );
    assert_eq!(
        names_and_priorities("Service"),
        cols(&[
            ("Name", 0),
            ("Type", 0),
            ("Cluster-IP", 0),
            ("External-IP", 0),
            ("Port(s)", 0),
            ("Age", 0),
            ("Selector", 1),
        ])
    );
    assert_eq!(
        names_and_priorities("Node"),
        cols(&[
            ("Name", 0),
            ("Status", 0),
            ("Roles", 0),
            ("Age", 0),
            ("Version", 0),
            ("Internal-IP", 1),
            ("External-IP", 1),
            ("OS-Image", 1),
            ("Kernel-Version", 1),
            ("Container-Runtime", 1),
        ])
    );
    assert_eq!(
        names_and_priorities("Namespace"),
        cols(&[("Name", 0), ("Status", 0), ("Age", 0)])
    );
    assert_eq!(
        names_and_priorities("Endpoints"),
        cols(&[("Name", 0), ("Endpoints", 0), ("Age", 0)])
    );
    assert_eq!(
        names_and_priorities("EndpointSlice"),
        cols(&[
            ("Name", 0),
            ("AddressType", 0),
            ("Ports", 0),
            ("Endpoints", 0),
            ("Age", 0),
        ])
    );
    assert_eq!(
        names_and_priorities("Deployment"),
        cols(&[
            ("Name", 0),
            ("Ready", 0),
            ("Up-to-date", 0),
            ("Available", 0),
            ("Age", 0),
            ("Containers", 1),
            ("Images", 1),
            ("Selector", 1),
        ])
    );
    assert_eq!(
        names_and_priorities("Lease"),
        cols(&[("Name", 0), ("Holder", 0), ("Age", 0)])
    );
    assert_eq!(
        names_and_priorities("ReplicaSet"),
        cols(&[
            ("Name", 0),
            ("Desired", 0),
            ("Current", 0),
            ("Ready", 0),
            ("Age", 0),
            ("Containers", 1),
            ("Images", 1),
            ("Selector", 1),
        ])
    );
    assert_eq!(
        names_and_priorities("ConfigMap"),
        cols(&[("Name", 0), ("Data", 0), ("Age", 0)])
    );
    assert_eq!(
        names_and_priorities("Secret"),
        cols(&[("Name", 0), ("Type", 0), ("Data", 0), ("Age", 0)])
    );
    assert_eq!(
        names_and_priorities("ServiceAccount"),
        cols(&[("Name", 0), ("Secrets", 0), ("Age", 0)])
    );
    assert_eq!(
        names_and_priorities("Event"),
        cols(&[
            ("Last Seen", 0),
            ("Type", 0),
            ("Reason", 0),
            ("Object", 0),
            ("Subobject", 1),
            ("Source", 1),
            ("Message", 0),
            ("First Seen", 1),
            ("Count", 1),
            ("Name", 1),
        ])
    );
    assert_eq!(
        names_and_priorities("StatefulSet"),
        cols(&[("Name", 0), ("Created At", 0)])
    );
}

#[test]
fn column_fields_are_complete() {
    for kind in [
        "Pod",
        "Service",
        "Node",
        "Namespace",
        "Endpoints",
        "EndpointSlice",
        "Deployment",
        "Lease",
        "ReplicaSet",
        "ConfigMap",
        "Secret",
        "ServiceAccount",
    ] {
        let defs = column_definitions(kind);
        for (i, c) in defs.iter().enumerate() {
            let o = c.as_object().expect("object");
            for field in ["name", "type", "format", "description", "priority"] {
                assert!(o.contains_key(field), "{kind} column {i} lacks {field}");
            }
            assert!(
                !c["description"].as_str().unwrap_or_default().is_empty(),
                "{kind} column {i} has no description"
            );
            let want_format = if i == 0 { "name" } else { "" };
            assert_eq!(c["format"], json!(want_format), "{kind} column {i}");
        }
        assert_eq!(defs[0]["name"], json!("Name"));
        // Each printer yields exactly one cell per column.
        let obj = json!({"metadata": {"name": "x"}});
        assert_eq!(cells(kind, &obj).len(), defs.len(), "{kind}");
    }
    let events = column_definitions("Event");
    assert_eq!(events[9]["format"], json!("name"));
    assert!(events[..9].iter().all(|c| c["format"] == json!("")));
    assert_eq!(cells("Event", &json!({})).len(), events.len());
    let rs = column_definitions("ReplicaSet");
    assert_eq!(rs[1]["type"], json!("integer"));
    let default = column_definitions("StatefulSet");
    assert_eq!(default[1]["type"], json!("date"));
    let deploy = column_definitions("Deployment");
    assert!(deploy.iter().all(|c| c["type"] == json!("string")));
}

// ------------------------------------------------------------ Pod

fn running_container(name: &str, ready: bool, restarts: i64) -> Value {
    json!({
        "name": name,
        "ready": ready,
        "restartCount": restarts,
        "state": {"running": {"startedAt": ago(600)}},
    })
}

#[test]
fn pod_running_ready() {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta("web-1", 3 * 86_400 + 4 * 3600),
        "spec": {"nodeName": "node-a", "containers": [{"name": "a"}, {"name": "b"}]},
        "status": {
            "phase": "Running",
            "podIP": "10.1.0.7",
            "podIPs": [{"ip": "10.1.0.7"}, {"ip": "fd00::7"}],
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                running_container("a", true, 0),
                running_container("b", true, 0),
            ],
        },
    });
    assert_eq!(
        cells("Pod", &pod),
        vec![
            json!("web-1"),
            json!("2/2"),
            json!("Running"),
            json!("0"),
            json!("3d4h"),
            json!("10.1.0.7"),
            json!("node-a"),
            json!("<none>"),
            json!("<none>"),
        ]
    );
    assert!(row("Pod", &pod, now(), IncludeObject::None)
        .get("conditions")
        .is_none());
}

#[test]
fn pod_not_ready_crash_loop_with_restarts() {
    let pod = json!({
        "metadata": meta("api-0", 45),
        "spec": {"containers": [{"name": "app"}, {"name": "proxy"}]},
        "status": {
            "phase": "Running",
            "podIP": "10.1.0.9",
            "containerStatuses": [
                {
                    "name": "app",
                    "ready": false,
                    "restartCount": 5,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": ago(200)}},
                },
                running_container("proxy", true, 0),
            ],
        },
    });
    let c = cells("Pod", &pod);
    assert_eq!(c[0], json!("api-0"));
    assert_eq!(c[1], json!("1/2"));
    assert_eq!(c[2], json!("CrashLoopBackOff"));
    assert_eq!(c[3], json!("5 (3m20s ago)"));
    assert_eq!(c[4], json!("45s"));
    assert_eq!(c[5], json!("10.1.0.9"));
    assert_eq!(c[6], json!("<none>"));
}

#[test]
fn pod_restarts_without_finish_time_are_plain() {
    let pod = json!({
        "metadata": meta("p", 60),
        "spec": {"containers": [{"name": "a"}]},
        "status": {"phase": "Running", "containerStatuses": [running_container("a", true, 3)]},
    });
    assert_eq!(cells("Pod", &pod)[3], json!("3"));
}

#[test]
fn pod_terminating() {
    let mut pod = json!({
        "metadata": meta("old", 7200),
        "spec": {"containers": [{"name": "a"}]},
        "status": {"phase": "Running", "containerStatuses": [running_container("a", true, 0)]},
    });
    pod["metadata"]["deletionTimestamp"] = json!(ago(5));
    let c = cells("Pod", &pod);
    assert_eq!(c[1], json!("1/1"));
    assert_eq!(c[2], json!("Terminating"));
    assert_eq!(c[4], json!("120m"));

    // A pod on a lost node reads Unknown instead.
    pod["status"]["reason"] = json!("NodeLost");
    assert_eq!(cells("Pod", &pod)[2], json!("Unknown"));

    // A terminal pod keeps its phase-derived status even while deleting.
    let mut done = json!({
        "metadata": meta("job-x", 60),
        "spec": {"containers": [{"name": "a"}]},
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{
                "name": "a", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
            }],
        },
    });
    done["metadata"]["deletionTimestamp"] = json!(ago(1));
    assert_eq!(cells("Pod", &done)[2], json!("Completed"));
}

#[test]
fn pod_completed_and_failed_row_conditions() {
    let done = json!({
        "metadata": meta("job-x", 60),
        "spec": {"containers": [{"name": "a"}]},
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{
                "name": "a", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
            }],
        },
    });
    let r = row("Pod", &done, now(), IncludeObject::None);
    assert_eq!(r["cells"][1], json!("0/1"));
    assert_eq!(r["cells"][2], json!("Completed"));
    assert_eq!(
        r["conditions"],
        json!([{"type": "Completed", "status": "True", "reason": "Succeeded",
                "message": "The pod has completed successfully."}])
    );

    let failed = json!({
        "metadata": meta("job-y", 60),
        "spec": {"containers": [{"name": "a"}]},
        "status": {
            "phase": "Failed",
            "containerStatuses": [{
                "name": "a", "restartCount": 0,
                "state": {"terminated": {"exitCode": 137}},
            }],
        },
    });
    let r = row("Pod", &failed, now(), IncludeObject::None);
    assert_eq!(r["cells"][2], json!("ExitCode:137"));
    assert_eq!(r["conditions"][0]["reason"], json!("Failed"));

    let signalled = json!({
        "metadata": meta("s", 60),
        "spec": {"containers": [{"name": "a"}]},
        "status": {"phase": "Failed", "containerStatuses": [{
            "name": "a", "state": {"terminated": {"exitCode": 0, "signal": 9}},
        }]},
    });
    assert_eq!(cells("Pod", &signalled)[2], json!("Signal:9"));
}

#[test]
fn pod_init_containers() {
    let base = |init_statuses: Value, conditions: Value| {
        json!({
            "metadata": meta("init", 30),
            "spec": {
                "initContainers": [{"name": "setup"}, {"name": "migrate"}],
                "containers": [{"name": "app"}],
            },
            "status": {
                "phase": "Pending",
                "conditions": conditions,
                "initContainerStatuses": init_statuses,
                "containerStatuses": [{
                    "name": "app", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": "PodInitializing"}},
                }],
            },
        })
    };
    // First init container still running.
    let p = base(
        json!([
            {"name": "setup", "restartCount": 0, "state": {"running": {}}},
            {"name": "migrate", "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}},
        ]),
        json!([]),
    );
    let c = cells("Pod", &p);
    assert_eq!(c[1], json!("0/1"));
    assert_eq!(c[2], json!("Init:0/2"));

    // First done, second crash-looping (its restarts count while initializing).
    let p = base(
        json!([
            {"name": "setup", "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
            {"name": "migrate", "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(90)}}},
        ]),
        json!([]),
    );
    let c = cells("Pod", &p);
    assert_eq!(c[2], json!("Init:CrashLoopBackOff"));
    assert_eq!(c[3], json!("2 (90s ago)"));

    // Failed init container with and without a reason.
    let p = base(
        json!([{"name": "setup", "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}]),
        json!([]),
    );
    assert_eq!(cells("Pod", &p)[2], json!("Init:Error"));
    let p = base(
        json!([{"name": "setup", "state": {"terminated": {"exitCode": 2}}}]),
        json!([]),
    );
    assert_eq!(cells("Pod", &p)[2], json!("Init:ExitCode:2"));

    // All init containers done: the app container's reason shows.
    let p = base(
        json!([
            {"name": "setup", "state": {"terminated": {"exitCode": 0}}},
            {"name": "migrate", "state": {"terminated": {"exitCode": 0}}},
        ]),
        json!([{"type": "Initialized", "status": "True"}]),
    );
    assert_eq!(cells("Pod", &p)[2], json!("PodInitializing"));
}

#[test]
fn pod_sidecar_and_completed_main_container() {
    let pod = json!({
        "metadata": meta("side", 600),
        "spec": {
            "initContainers": [{"name": "mesh", "restartPolicy": "Always"}],
            "containers": [{"name": "app"}],
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "False"}],
            "initContainerStatuses": [{
                "name": "mesh", "ready": true, "started": true, "restartCount": 1,
                "state": {"running": {}},
                "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(300)}},
            }],
            "containerStatuses": [{
                "name": "app", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
            }],
        },
    });
    let c = cells("Pod", &pod);
    assert_eq!(c[1], json!("1/2"));
    assert_eq!(c[2], json!("Completed"));
    assert_eq!(c[3], json!("1 (5m ago)"));

    // Completed + a still-running ready container: Running if the pod is
    // Ready, NotReady otherwise.
    let two = |ready_cond: &str| {
        json!({
            "metadata": meta("two", 60),
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": ready_cond}],
                "containerStatuses": [
                    {"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                    running_container("b", true, 0),
                ],
            },
        })
    };
    assert_eq!(cells("Pod", &two("True"))[2], json!("Running"));
    assert_eq!(cells("Pod", &two("False"))[2], json!("NotReady"));
}

#[test]
fn pod_wide_columns_and_gates() {
    let pod = json!({
        "metadata": meta("gated", 10),
        "spec": {
            "containers": [{"name": "a"}],
            "readinessGates": [{"conditionType": "example.com/lb"}, {"conditionType": "example.com/dns"}],
        },
        "status": {
            "phase": "Pending",
            "nominatedNodeName": "node-b",
            "conditions": [
                {"type": "example.com/lb", "status": "True"},
                {"type": "example.com/dns", "status": "False"},
            ],
        },
    });
    let c = cells("Pod", &pod);
    assert_eq!(c[2], json!("Pending"));
    assert_eq!(
        &c[5..],
        &[
            json!("<none>"),
            json!("<none>"),
            json!("node-b"),
            json!("1/2")
        ]
    );
}

#[test]
fn pod_scheduling_gated_and_status_reason() {
    let gated = json!({
        "metadata": meta("g", 10),
        "spec": {"containers": [{"name": "a"}]},
        "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]},
    });
    assert_eq!(cells("Pod", &gated)[2], json!("SchedulingGated"));
    let evicted = json!({
        "metadata": meta("e", 10),
        "spec": {"containers": [{"name": "a"}]},
        "status": {"phase": "Failed", "reason": "Evicted"},
    });
    assert_eq!(cells("Pod", &evicted)[2], json!("Evicted"));
}

#[test]
fn pod_partial_object_does_not_panic() {
    let c = cells("Pod", &json!({"metadata": {"name": "bare"}}));
    assert_eq!(
        c,
        vec![
            json!("bare"),
            json!("0/0"),
            json!(""),
            json!("0"),
            json!("<unknown>"),
            json!("<none>"),
            json!("<none>"),
            json!("<none>"),
            json!("<none>"),
        ]
    );
    // Wrong types and nulls are tolerated too.
    let odd = json!({"metadata": null, "spec": {"containers": "x"}, "status": {"containerStatuses": [null, 3]}});
    assert_eq!(cells("Pod", &odd)[1], json!("0/0"));
    let _ = cells("Pod", &json!("not an object"));
}

// ------------------------------------------------------------ Service

#[test]
fn service_cluster_ip() {
    let svc = json!({
        "metadata": meta("web", 600),
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"],
            "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}],
            "selector": {"tier": "front", "app": "web"},
        },
    });
    assert_eq!(
        cells("Service", &svc),
        vec![
            json!("web"),
            json!("ClusterIP"),
            json!("10.96.0.10"),
            json!("<none>"),
            json!("80/TCP,53/UDP"),
            json!("10m"),
            json!("app=web,tier=front"),
        ]
    );
}

#[test]
fn service_node_port_and_load_balancer() {
    let np = json!({
        "metadata": meta("np", 86_400),
        "spec": {
            "type": "NodePort",
            "clusterIPs": ["10.96.1.1"],
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 443, "nodePort": 30443}],
            "externalIPs": ["192.0.2.1", "192.0.2.2"],
        },
    });
    let c = cells("Service", &np);
    assert_eq!(c[1], json!("NodePort"));
    assert_eq!(c[3], json!("192.0.2.1,192.0.2.2"));
    assert_eq!(c[4], json!("80:30080/TCP,443:30443/TCP"));
    assert_eq!(c[5], json!("24h"));
    assert_eq!(c[6], json!("<none>"));

    let pending = json!({
        "metadata": meta("lb", 30),
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.2.2",
                 "ports": [{"port": 443, "nodePort": 31443, "protocol": "TCP"}],
                 "selector": {"app": "lb"}},
        "status": {"loadBalancer": {}},
    });
    let c = cells("Service", &pending);
    assert_eq!(c[2], json!("10.96.2.2"));
    assert_eq!(c[3], json!("<pending>"));
    assert_eq!(c[4], json!("443:31443/TCP"));
    assert_eq!(c[6], json!("app=lb"));

    let assigned = json!({
        "metadata": meta("lb2", 30),
        "spec": {"type": "LoadBalancer", "externalIPs": ["198.51.100.9"], "ports": [{"port": 80}]},
        "status": {"loadBalancer": {"ingress": [
            {"ip": "203.0.113.5"}, {"hostname": "lb.example.com"}, {"ip": "203.0.113.1"}]}},
    });
    assert_eq!(
        cells("Service", &assigned)[3],
        json!("203.0.113.1,203.0.113.5,lb.example.com,198.51.100.9")
    );
}

#[test]
fn service_external_name_headless_and_portless() {
    let ext = json!({
        "metadata": meta("ext", 5),
        "spec": {"type": "ExternalName", "externalName": "db.example.com"},
    });
    assert_eq!(
        cells("Service", &ext)[1..5],
        [
            json!("ExternalName"),
            json!("<none>"),
            json!("db.example.com"),
            json!("<none>")
        ]
    );
    let headless = json!({
        "metadata": meta("hl", 5),
        "spec": {"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 5432}]},
    });
    let c = cells("Service", &headless);
    assert_eq!(c[1], json!("ClusterIP"));
    assert_eq!(c[2], json!("None"));
    assert_eq!(c[4], json!("5432/TCP"));
}

// ------------------------------------------------------------ Node

#[test]
fn node_ready_with_roles_and_wide() {
    let node = json!({
        "metadata": {
            "name": "cp-1",
            "creationTimestamp": ago(12 * 86_400),
            "labels": {
                "node-role.kubernetes.io/control-plane": "",
                "node-role.kubernetes.io/": "",
                "kubernetes.io/role": "master",
                "kubernetes.io/hostname": "cp-1",
            },
        },
        "status": {
            "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
            "addresses": [
                {"type": "Hostname", "address": "cp-1"},
                {"type": "InternalIP", "address": "10.0.0.10"},
                {"type": "InternalIP", "address": "10.0.0.11"},
            ],
            "nodeInfo": {
                "kubeletVersion": "v1.35.0",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "kernelVersion": "6.1.0-18-amd64",
                "containerRuntimeVersion": "containerd://1.7.13",
            },
        },
    });
    assert_eq!(
        cells("Node", &node),
        vec![
            json!("cp-1"),
            json!("Ready"),
            json!("control-plane,master"),
            json!("12d"),
            json!("v1.35.0"),
            json!("10.0.0.10"),
            json!("<none>"),
            json!("Debian GNU/Linux 12 (bookworm)"),
            json!("6.1.0-18-amd64"),
            json!("containerd://1.7.13"),
        ]
    );
}

#[test]
fn node_not_ready_scheduling_disabled() {
    let node = json!({
        "metadata": {
            "name": "w-2",
            "creationTimestamp": ago(2 * 86_400 + 3 * 3600),
            "labels": {"node-role.kubernetes.io/worker": "", "node-role.kubernetes.io/infra": "true"},
        },
        "spec": {"unschedulable": true},
        "status": {
            "conditions": [{"type": "Ready", "status": "Unknown"}],
            "addresses": [{"type": "ExternalIP", "address": "203.0.113.7"}],
            "nodeInfo": {"kubeletVersion": "v1.35.0"},
        },
    });
    assert_eq!(
        cells("Node", &node),
        vec![
            json!("w-2"),
            json!("NotReady,SchedulingDisabled"),
            json!("infra,worker"),
            json!("2d3h"),
            json!("v1.35.0"),
            json!("<none>"),
            json!("203.0.113.7"),
            json!("<unknown>"),
            json!("<unknown>"),
            json!("<unknown>"),
        ]
    );
}

#[test]
fn node_without_conditions_is_unknown() {
    let node = json!({"metadata": {"name": "new", "creationTimestamp": ago(3)}});
    let c = cells("Node", &node);
    assert_eq!(c[1], json!("Unknown"));
    assert_eq!(c[2], json!("<none>"));
    assert_eq!(c[3], json!("3s"));
    assert_eq!(c[4], json!(""));
}

// ------------------------------------------------------------ Namespace, Lease

#[test]
fn namespace_and_lease() {
    let ns = json!({"metadata": meta("kube-system", 400 * 86_400), "status": {"phase": "Active"}});
    assert_eq!(
        cells("Namespace", &ns),
        vec![json!("kube-system"), json!("Active"), json!("400d")]
    );
    let term = json!({"metadata": meta("gone", 30), "status": {"phase": "Terminating"}});
    assert_eq!(cells("Namespace", &term)[1], json!("Terminating"));

    let lease = json!({
        "metadata": meta("kube-scheduler", 3 * 3600 + 20 * 60),
        "spec": {"holderIdentity": "cp-1_3f1c", "leaseDurationSeconds": 15},
    });
    assert_eq!(
        cells("Lease", &lease),
        vec![json!("kube-scheduler"), json!("cp-1_3f1c"), json!("3h20m")]
    );
    let free = json!({"metadata": meta("free", 5), "spec": {}});
    assert_eq!(cells("Lease", &free)[1], json!(""));
}

// ------------------------------------------------------------ Endpoints

#[test]
fn endpoints_cells() {
    let ep = json!({
        "metadata": meta("web", 60),
        "subsets": [{
            "addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}],
            "ports": [{"port": 80, "protocol": "TCP"}],
        }],
    });
    assert_eq!(
        cells("Endpoints", &ep),
        vec![json!("web"), json!("10.0.0.1:80,10.0.0.2:80"), json!("60s")]
    );

    let many = json!({
        "metadata": meta("many", 60),
        "subsets": [{
            "addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}],
            "ports": [{"port": 80}, {"port": 443}],
        }, {
            "addresses": [{"ip": "fd00::5"}],
            "ports": [{"port": 8080}],
        }],
    });
    assert_eq!(
        cells("Endpoints", &many)[1],
        json!("10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 2 more...")
    );

    let v6 = json!({
        "metadata": meta("v6", 60),
        "subsets": [{"addresses": [{"ip": "fd00::5"}], "ports": [{"port": 8080}]}],
    });
    assert_eq!(cells("Endpoints", &v6)[1], json!("[fd00::5]:8080"));

    let headless = json!({
        "metadata": meta("hl", 60),
        "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "10.0.0.3"}, {"ip": "10.0.0.4"}]}],
    });
    assert_eq!(
        cells("Endpoints", &headless)[1],
        json!("10.0.0.1,10.0.0.2,10.0.0.3 + 1 more...")
    );

    let none = json!({"metadata": meta("none", 60)});
    assert_eq!(cells("Endpoints", &none)[1], json!("<none>"));
    // Subsets that only hold not-ready addresses print an empty cell.
    let not_ready = json!({
        "metadata": meta("nr", 60),
        "subsets": [{"notReadyAddresses": [{"ip": "10.0.0.9"}], "ports": [{"port": 80}]}],
    });
    assert_eq!(cells("Endpoints", &not_ready)[1], json!(""));
}

// ------------------------------------------------------------ EndpointSlice

#[test]
fn endpoint_slice_cells() {
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta("web-abc12", 125),
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "https", "port": 443}],
        "endpoints": [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
            {"addresses": ["10.0.0.2"]},
            {"addresses": ["10.0.0.3"]},
            {"addresses": ["10.0.0.4"]},
            {"addresses": ["10.0.0.5"]},
        ],
    });
    assert_eq!(
        cells("EndpointSlice", &slice),
        vec![
            json!("web-abc12"),
            json!("IPv4"),
            json!("80,443"),
            json!("10.0.0.1,10.0.0.2,10.0.0.3 + 2 more..."),
            json!("2m5s"),
        ]
    );

    let sparse = json!({
        "metadata": meta("empty", 5),
        "addressType": "IPv6",
        "ports": [{"name": "grpc"}, {}, {"port": 1}, {"port": 2}, {"port": 3}],
        "endpoints": [],
    });
    let c = cells("EndpointSlice", &sparse);
    assert_eq!(c[2], json!("grpc,*,1 + 2 more..."));
    assert_eq!(c[3], json!("<unset>"));

    let bare = json!({"metadata": meta("bare", 5), "addressType": "IPv4"});
    let c = cells("EndpointSlice", &bare);
    assert_eq!(c[2], json!("<unset>"));
    assert_eq!(c[3], json!("<unset>"));
}

// ------------------------------------------------------------ Deployment

#[test]
fn deployment_cells() {
    let d = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta("web", 15 * 60),
        "spec": {
            "replicas": 3,
            "selector": {
                "matchLabels": {"app": "web"},
                "matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["front", "edge"]},
                    {"key": "canary", "operator": "DoesNotExist"},
                ],
            },
            "template": {"spec": {"containers": [
                {"name": "nginx", "image": "nginx:1.27"},
                {"name": "sidecar", "image": "busybox"},
            ]}},
        },
        "status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2},
    });
    assert_eq!(
        cells("Deployment", &d),
        vec![
            json!("web"),
            json!("2/3"),
            json!(3),
            json!(2),
            json!("15m"),
            json!("nginx,sidecar"),
            json!("nginx:1.27,busybox"),
            json!("app=web,!canary,tier in (edge,front)"),
        ]
    );

    // Freshly created: no status, replicas defaulted to 1.
    let fresh = json!({
        "metadata": meta("fresh", 1),
        "spec": {"selector": {"matchLabels": {"app": "fresh"}},
                 "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
    });
    assert_eq!(
        cells("Deployment", &fresh)[..5],
        [
            json!("fresh"),
            json!("0/1"),
            json!(0),
            json!(0),
            json!("1s")
        ]
    );

    let scaled_down = json!({"metadata": meta("zero", 1), "spec": {"replicas": 0}});
    let c = cells("Deployment", &scaled_down);
    assert_eq!(c[1], json!("0/0"));
    assert_eq!(c[7], json!(""));

    let bad = json!({"metadata": meta("bad", 1), "spec": {"selector": {
        "matchExpressions": [{"key": "a", "operator": "Sometimes", "values": ["x"]}]}}});
    assert_eq!(cells("Deployment", &bad)[7], json!("<invalid>"));
    let exists = json!({"metadata": meta("ex", 1), "spec": {"selector": {
        "matchExpressions": [{"key": "b", "operator": "Exists"}, {"key": "a", "operator": "NotIn", "values": ["x"]}]}}});
    assert_eq!(cells("Deployment", &exists)[7], json!("a notin (x),b"));
}

// ------------------------------------------------------------ ReplicaSet

#[test]
fn replica_set_cells() {
    let rs = json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": meta("web-5d4f", 3 * 3600 + 5 * 60),
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web", "pod-template-hash": "5d4f"}},
            "template": {"spec": {"containers": [
                {"name": "nginx", "image": "nginx:1.27"},
                {"name": "log", "image": "fluent-bit:3"},
            ]}},
        },
        "status": {"replicas": 3, "readyReplicas": 2, "availableReplicas": 2},
    });
    assert_eq!(
        cells("ReplicaSet", &rs),
        vec![
            json!("web-5d4f"),
            json!(3),
            json!(3),
            json!(2),
            json!("3h5m"),
            json!("nginx,log"),
            json!("nginx:1.27,fluent-bit:3"),
            json!("app=web,pod-template-hash=5d4f"),
        ]
    );
    // Fresh: replicas defaulted to 1, no status yet.
    let fresh = json!({"metadata": meta("fresh", 5), "spec": {}});
    assert_eq!(
        cells("ReplicaSet", &fresh),
        vec![
            json!("fresh"),
            json!(1),
            json!(0),
            json!(0),
            json!("5s"),
            json!(""),
            json!(""),
            json!("<none>"),
        ]
    );
    let bad = json!({"metadata": meta("bad", 1), "spec": {"selector": {
        "matchExpressions": [{"key": "a", "operator": "Sometimes", "values": ["x"]}]}}});
    assert_eq!(cells("ReplicaSet", &bad)[7], json!("<error>"));
}

// ------------------------------------------------------------ ConfigMap, Secret, ServiceAccount

#[test]
fn config_secret_service_account_cells() {
    let cm = json!({"metadata": meta("settings", 90),
                    "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}});
    assert_eq!(
        cells("ConfigMap", &cm),
        vec![json!("settings"), json!(3), json!("90s")]
    );
    let empty = json!({"metadata": meta("empty", 90)});
    assert_eq!(cells("ConfigMap", &empty)[1], json!(0));

    let secret = json!({"metadata": meta("tls", 86_400 * 3),
                        "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}});
    assert_eq!(
        cells("Secret", &secret),
        vec![
            json!("tls"),
            json!("kubernetes.io/tls"),
            json!(2),
            json!("3d")
        ]
    );

    let sa = json!({"metadata": meta("builder", 600),
                    "secrets": [{"name": "tok"}], "imagePullSecrets": [{"name": "reg"}]});
    assert_eq!(
        cells("ServiceAccount", &sa),
        vec![json!("builder"), json!(1), json!("10m")]
    );
    let bare = json!({"metadata": meta("default", 600)});
    assert_eq!(cells("ServiceAccount", &bare)[1], json!(0));
}

// ------------------------------------------------------------ Event

#[test]
fn core_event_cells() {
    let ev = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "web-1.17a", "namespace": "default"},
        "involvedObject": {"kind": "Pod", "name": "web-1", "fieldPath": "spec.containers{nginx}"},
        "reason": "BackOff",
        "message": "Back-off restarting failed container\n",
        "type": "Warning",
        "source": {"component": "kubelet", "host": "node-1"},
        "firstTimestamp": ago(3600),
        "lastTimestamp": ago(45),
        "count": 12,
    });
    assert_eq!(
        cells("Event", &ev),
        vec![
            json!("45s"),
            json!("Warning"),
            json!("BackOff"),
            json!("pod/web-1"),
            json!("spec.containers{nginx}"),
            json!("kubelet, node-1"),
            json!("Back-off restarting failed container"),
            json!("60m"),
            json!(12),
            json!("web-1.17a"),
        ]
    );

    // Only an eventTime: both times come from it, count 1, source from the
    // reporting fields; no name, just the kind.
    let new_style = json!({
        "apiVersion": "v1",
        "metadata": {"name": "n"},
        "involvedObject": {"kind": "Node"},
        "eventTime": "2024-06-01T11:58:00.123456Z",
        "reportingComponent": "kubelet",
        "reportingInstance": "node-2",
    });
    let c = cells("Event", &new_style);
    assert_eq!(c[0], json!("119s"));
    assert_eq!(c[3], json!("node"));
    assert_eq!(c[5], json!("kubelet, node-2"));
    assert_eq!(c[7], json!("119s"));
    assert_eq!(c[8], json!(1));

    // A series overrides Last Seen and Count.
    let mut series = ev.clone();
    series["series"] = json!({"count": 40, "lastObservedTime": ago(5)});
    let c = cells("Event", &series);
    assert_eq!(c[0], json!("5s"));
    assert_eq!(c[8], json!(40));

    // No timestamp at all, no host.
    let bare = json!({"metadata": {"name": "x"}, "source": {"component": "ctl"}});
    let c = cells("Event", &bare);
    assert_eq!(c[0], json!("<unknown>"));
    assert_eq!(c[5], json!("ctl"));
    assert_eq!(c[7], json!("<unknown>"));
}

#[test]
fn events_v1_event_cells() {
    let ev = json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "web-1.17b", "namespace": "default"},
        "eventTime": ago(300),
        "regarding": {"kind": "Pod", "name": "web-1"},
        "reason": "Scheduled",
        "note": "Successfully assigned default/web-1 to node-1",
        "type": "Normal",
        "action": "Binding",
        "reportingController": "default-scheduler",
        "reportingInstance": "default-scheduler-cp-1",
    });
    assert_eq!(
        cells("Event", &ev),
        vec![
            json!("5m"),
            json!("Normal"),
            json!("Scheduled"),
            json!("pod/web-1"),
            json!(""),
            json!("default-scheduler, default-scheduler-cp-1"),
            json!("Successfully assigned default/web-1 to node-1"),
            json!("5m"),
            json!(1),
            json!("web-1.17b"),
        ]
    );
    // The deprecated* fields stand in for the core ones.
    let mut old = ev.clone();
    old["deprecatedFirstTimestamp"] = json!(ago(7200));
    old["deprecatedLastTimestamp"] = json!(ago(60));
    old["deprecatedCount"] = json!(7);
    old["deprecatedSource"] = json!({"component": "kubelet"});
    let c = cells("Event", &old);
    assert_eq!(c[0], json!("60s"));
    assert_eq!(c[5], json!("kubelet, default-scheduler-cp-1"));
    assert_eq!(c[7], json!("120m"));
    assert_eq!(c[8], json!(7));
}

// ------------------------------------------------------------ default kind

#[test]
fn default_convertor_cells() {
    let sts = json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "settings", "creationTimestamp": "2024-05-31T08:09:10Z"},
    });
    assert_eq!(
        cells("StatefulSet", &sts),
        vec![json!("settings"), json!("2024-05-31T08:09:10Z")]
    );
    let bare = json!({"metadata": {"name": "x"}});
    assert_eq!(cells("Widget", &bare)[1], json!("0001-01-01T00:00:00Z"));
}

// ------------------------------------------------------------ row objects and Table

#[test]
fn include_object_variants() {
    let ns = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "dev", "uid": "u-1", "resourceVersion": "42",
                     "creationTimestamp": ago(60), "labels": {"team": "a"}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    });
    let none = row("Namespace", &ns, now(), IncludeObject::None);
    assert_eq!(none["object"], Value::Null);
    assert_eq!(none["cells"], json!(["dev", "Active", "60s"]));

    let m = row("Namespace", &ns, now(), IncludeObject::Metadata);
    assert_eq!(
        m["object"],
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": ns["metadata"]})
    );
    assert_eq!(IncludeObject::default(), IncludeObject::Metadata);

    let full = row("Namespace", &ns, now(), IncludeObject::Object);
    assert_eq!(full["object"], ns);

    // Metadata of an object without metadata is an empty map.
    let m = row("Pod", &json!({}), now(), IncludeObject::Metadata);
    assert_eq!(m["object"]["metadata"], json!({}));
}

#[test]
fn table_envelope() {
    let pods = vec![
        json!({"metadata": meta("a", 10), "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Pending"}}),
        json!({"metadata": meta("b", 20), "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Pending"}}),
    ];
    let t = table(
        "Pod",
        &pods,
        "1234",
        Some("tok"),
        now(),
        IncludeObject::Metadata,
    );
    let text = serde_json::to_string(&t).expect("serializes");
    let back: Value = serde_json::from_str(&text).expect("parses");
    assert_eq!(back["kind"], json!("Table"));
    assert_eq!(back["apiVersion"], json!("meta.k8s.io/v1"));
    assert_eq!(
        back["metadata"],
        json!({"resourceVersion": "1234", "continue": "tok"})
    );
    assert_eq!(back["columnDefinitions"], json!(column_definitions("Pod")));
    let rows = back["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["cells"][0], json!("a"));
    assert_eq!(rows[1]["cells"][4], json!("20s"));
    assert_eq!(rows[1]["object"]["kind"], json!("PartialObjectMetadata"));

    let empty = table("Service", &[], "7", None, now(), IncludeObject::None);
    assert_eq!(empty["metadata"], json!({"resourceVersion": "7"}));
    assert_eq!(empty["rows"], json!([]));
    assert_eq!(empty["columnDefinitions"].as_array().map(Vec::len), Some(7));

    let no_rv = table("Lease", &[], "", Some(""), now(), IncludeObject::None);
    assert_eq!(no_rv["metadata"], json!({}));
}
