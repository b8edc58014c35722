//! Strategic merge patches against the served kinds' schemas, as kubectl,
//! the kubelet and controllers send them.

use serde_json::{json, Value};
use sluice_smp::{schema_for, strategic_merge_patch, ListStrategy, Schema};

fn schema(group: &str, kind: &str) -> &'static Schema {
    match schema_for(group, kind) {
        Some(schema) => schema,
        None => panic!("no schema for {group}/{kind}"),
    }
}

fn patch(group: &str, kind: &str, original: &Value, body: &Value) -> Value {
    match strategic_merge_patch(original, body, schema(group, kind)) {
        Ok(result) => result,
        Err(error) => panic!("patch failed: {error}"),
    }
}

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "default",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"old\":true}"},
            "labels": {"app": "web", "tier": "front"}
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}
            },
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {"name": "c", "image": "busybox:1.35", "command": ["sleep", "3600"]}
                    ]
                }
            }
        }
    })
}

/// Set the value at JSON pointer `pointer` (adding the last key if missing)
/// in `value`.
fn with(mut value: Value, pointer: &str, new: Value) -> Value {
    let (parent, last) = pointer.rsplit_once('/').unwrap_or(("", pointer));
    let key = last.replace("~1", "/").replace("~0", "~");
    match value.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(key, new);
        }
        Some(Value::Array(list)) => match key.parse::<usize>() {
            Ok(index) if index < list.len() => list[index] = new,
            _ => panic!("bad index {key} in {pointer}"),
        },
        _ => panic!("no container for {pointer}"),
    }
    value
}

#[test]
fn kubectl_apply_changes_image_and_keeps_command() {
    let body = json!({
        "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"new\":true}"}},
        "spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "c"}],
            "containers": [{"image": "busybox:1.36", "name": "c"}]
        }}}
    });
    let result = patch("apps", "Deployment", &deployment(), &body);
    let expected = with(
        with(
            deployment(),
            "/spec/template/spec/containers",
            json!([{"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"]}]),
        ),
        "/metadata/annotations",
        json!({"kubectl.kubernetes.io/last-applied-configuration": "{\"new\":true}"}),
    );
    assert_eq!(result, expected);
}

#[test]
fn kubectl_apply_scales_and_updates_annotation() {
    let body = json!({
        "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"replicas\":3}"}},
        "spec": {"replicas": 3}
    });
    let result = patch("apps", "Deployment", &deployment(), &body);
    let expected = with(
        with(deployment(), "/spec/replicas", json!(3)),
        "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration",
        json!("{\"replicas\":3}"),
    );
    assert_eq!(result, expected);
}

#[test]
fn null_deletes_keys() {
    let body =
        json!({"metadata": {"labels": {"tier": null, "absent": null}}, "spec": {"replicas": null}});
    let result = patch("apps", "Deployment", &deployment(), &body);
    let mut expected = with(deployment(), "/metadata/labels", json!({"app": "web"}));
    if let Some(spec) = expected.pointer_mut("/spec").and_then(Value::as_object_mut) {
        spec.remove("replicas");
    }
    assert_eq!(result, expected);
}

#[test]
fn patch_replace_and_delete_on_maps() {
    let body = json!({
        "metadata": {"labels": {"$patch": "replace", "app": "web2"}},
        "spec": {"template": {"metadata": {"$patch": "delete"}}}
    });
    let result = patch("apps", "Deployment", &deployment(), &body);
    let mut expected = with(deployment(), "/metadata/labels", json!({"app": "web2"}));
    if let Some(template) = expected
        .pointer_mut("/spec/template")
        .and_then(Value::as_object_mut)
    {
        template.remove("metadata");
    }
    assert_eq!(result, expected);

    let merge = json!({"metadata": {"labels": {"$patch": "merge", "extra": "x"}}});
    let result = patch("apps", "Deployment", &deployment(), &merge);
    let expected = with(
        deployment(),
        "/metadata/labels",
        json!({"app": "web", "tier": "front", "extra": "x"}),
    );
    assert_eq!(result, expected);
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default", "finalizers": ["a.example/x", "b.example/y"]},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "app:1",
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                    "ports": [{"containerPort": 80, "protocol": "TCP"}]
                },
                {"name": "sidecar", "image": "side:1"}
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
            "tolerations": [{"key": "k", "operator": "Exists"}]
        },
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "False"}
            ],
            "containerStatuses": [{"name": "app", "ready": false}, {"name": "sidecar", "ready": false}]
        }
    })
}

#[test]
fn containers_merge_by_name() {
    // Merge into an existing container (env merged by name, ports by
    // containerPort), and add a new one.
    let body = json!({"spec": {"containers": [
        {
            "name": "app",
            "image": "app:2",
            "env": [{"name": "B", "value": "20"}, {"name": "C", "value": "3"}],
            "ports": [{"containerPort": 80, "name": "http"}]
        },
        {"name": "new", "image": "new:1"}
    ]}});
    let result = patch("", "Pod", &pod(), &body);
    let expected = with(
        pod(),
        "/spec/containers",
        json!([
            {
                "name": "app",
                "image": "app:2",
                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "20"}, {"name": "C", "value": "3"}],
                "ports": [{"containerPort": 80, "protocol": "TCP", "name": "http"}]
            },
            {"name": "new", "image": "new:1"},
            {"name": "sidecar", "image": "side:1"}
        ]),
    );
    assert_eq!(result, expected);
}

#[test]
fn containers_delete_and_replace_directives() {
    let delete = json!({"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}});
    let result = patch("", "Pod", &pod(), &delete);
    let expected = with(
        pod(),
        "/spec/containers",
        json!([{
            "name": "app",
            "image": "app:1",
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
            "ports": [{"containerPort": 80, "protocol": "TCP"}]
        }]),
    );
    assert_eq!(result, expected);

    let replace = json!({"spec": {"containers": [
        {"$patch": "replace"},
        {"name": "only", "image": "only:1", "env": [{"name": "X", "value": null}]}
    ]}});
    let result = patch("", "Pod", &pod(), &replace);
    let expected = with(
        pod(),
        "/spec/containers",
        json!([{"name": "only", "image": "only:1", "env": [{"name": "X"}]}]),
    );
    assert_eq!(result, expected);
}

#[test]
fn atomic_lists_are_replaced() {
    let body = json!({"spec": {
        "tolerations": [{"key": "other", "operator": "Equal", "value": "v"}],
        "containers": [{"name": "app", "command": ["run"]}]
    }});
    let result = patch("", "Pod", &pod(), &body);
    let mut expected = with(
        pod(),
        "/spec/tolerations",
        json!([{"key": "other", "operator": "Equal", "value": "v"}]),
    );
    expected = with(expected, "/spec/containers/0/command", json!(["run"]));
    assert_eq!(result, expected);

    // Status: conditions merge by type, containerStatuses are atomic.
    let status = json!({"status": {
        "$setElementOrder/conditions": [{"type": "PodScheduled"}, {"type": "Ready"}],
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "app", "ready": true}]
    }});
    let result = patch("", "Pod", &pod(), &status);
    let mut expected = with(
        pod(),
        "/status/conditions",
        json!([{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]),
    );
    expected = with(
        expected,
        "/status/containerStatuses",
        json!([{"name": "app", "ready": true}]),
    );
    assert_eq!(result, expected);
}

#[test]
fn finalizers_union_and_delete_from_primitive_list() {
    // Items the patch names come in its order; a stored item the patch does
    // not name stays after the named items that were stored before it, and
    // new items go in front of it (apimachinery's interleaving).
    let add = json!({"metadata": {"finalizers": ["c.example/z", "a.example/x"]}});
    let result = patch("", "Pod", &pod(), &add);
    let expected = with(
        pod(),
        "/metadata/finalizers",
        json!(["c.example/z", "a.example/x", "b.example/y"]),
    );
    assert_eq!(result, expected);

    let remove =
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a.example/x", "nope"]}});
    let result = patch("", "Pod", &pod(), &remove);
    let expected = with(pod(), "/metadata/finalizers", json!(["b.example/y"]));
    assert_eq!(result, expected);

    // kubectl apply's shape: order list plus additions plus deletions.
    let apply = json!({"metadata": {
        "$setElementOrder/finalizers": ["b.example/y", "c.example/z"],
        "$deleteFromPrimitiveList/finalizers": ["a.example/x"],
        "finalizers": ["c.example/z"]
    }});
    let result = patch("", "Pod", &pod(), &apply);
    let expected = with(
        pod(),
        "/metadata/finalizers",
        json!(["b.example/y", "c.example/z"]),
    );
    assert_eq!(result, expected);
}

#[test]
fn set_element_order_reorders_containers_and_primitives() {
    // The order directive alone reorders the stored lists.
    let body = json!({
        "metadata": {"$setElementOrder/finalizers": ["b.example/y", "a.example/x"]},
        "spec": {"$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}]}
    });
    let result = patch("", "Pod", &pod(), &body);
    let mut expected = with(
        pod(),
        "/metadata/finalizers",
        json!(["b.example/y", "a.example/x"]),
    );
    let containers = match pod().pointer("/spec/containers") {
        Some(Value::Array(list)) => list.clone(),
        other => panic!("fixture has no containers: {other:?}"),
    };
    expected = with(
        expected,
        "/spec/containers",
        json!([containers[1].clone(), containers[0].clone()]),
    );
    assert_eq!(result, expected);

    // Together with a change: the new container goes where the order says.
    let body = json!({"spec": {
        "$setElementOrder/containers": [{"name": "app"}, {"name": "new"}, {"name": "sidecar"}],
        "containers": [{"name": "new", "image": "new:1"}]
    }});
    let result = patch("", "Pod", &pod(), &body);
    let expected = with(
        pod(),
        "/spec/containers",
        json!([containers[0].clone(), {"name": "new", "image": "new:1"}, containers[1].clone()]),
    );
    assert_eq!(result, expected);
}

#[test]
fn retain_keys_switches_deployment_strategy() {
    // What kubectl apply sends when the manifest switches to Recreate.
    let body = json!({"spec": {"strategy": {
        "$retainKeys": ["type"],
        "rollingUpdate": null,
        "type": "Recreate"
    }}});
    let result = patch("apps", "Deployment", &deployment(), &body);
    let expected = with(deployment(), "/spec/strategy", json!({"type": "Recreate"}));
    assert_eq!(result, expected);

    // The directive alone clears keys it does not list.
    let body = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
    let result = patch("apps", "Deployment", &deployment(), &body);
    assert_eq!(result, expected);
}

#[test]
fn retain_keys_in_pod_volumes() {
    let body = json!({"spec": {
        "$setElementOrder/volumes": [{"name": "data"}],
        "volumes": [{"$retainKeys": ["configMap", "name"], "name": "data", "configMap": {"name": "cm"}}]
    }});
    let result = patch("", "Pod", &pod(), &body);
    let expected = with(
        pod(),
        "/spec/volumes",
        json!([{"name": "data", "configMap": {"name": "cm"}}]),
    );
    assert_eq!(result, expected);
}

#[test]
fn service_ports_merge_by_port() {
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "svc"},
        "spec": {
            "clusterIP": "10.96.0.10",
            "selector": {"app": "web"},
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 8443}
            ]
        }
    });
    let body = json!({"spec": {
        "$setElementOrder/ports": [{"port": 80}, {"port": 443}, {"port": 9090}],
        "ports": [
            {"port": 80, "targetPort": 8081},
            {"name": "metrics", "port": 9090, "targetPort": 9090}
        ]
    }});
    let result = patch("", "Service", &service, &body);
    let expected = with(
        service.clone(),
        "/spec/ports",
        json!([
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8081},
            {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 8443},
            {"name": "metrics", "port": 9090, "targetPort": 9090}
        ]),
    );
    assert_eq!(result, expected);

    let delete = json!({"spec": {"ports": [{"port": 443, "$patch": "delete"}]}});
    let result = patch("", "Service", &service, &delete);
    let expected = with(
        service,
        "/spec/ports",
        json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]),
    );
    assert_eq!(result, expected);
}

#[test]
fn node_status_conditions_merge_by_type() {
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "n1"},
        "spec": {"podCIDRs": ["10.244.0.0/24"], "taints": [{"key": "a", "effect": "NoSchedule"}]},
        "status": {
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": "2024-01-01T00:00:00Z"},
                {"type": "Ready", "status": "False", "lastHeartbeatTime": "2024-01-01T00:00:00Z"}
            ],
            "addresses": [{"type": "InternalIP", "address": "192.168.1.10"}]
        }
    });
    // The kubelet's heartbeat: a two-way patch with the order of its own list.
    let body = json!({"status": {
        "$setElementOrder/conditions": [{"type": "MemoryPressure"}, {"type": "Ready"}],
        "conditions": [
            {"type": "MemoryPressure", "lastHeartbeatTime": "2024-01-01T00:00:10Z"},
            {"type": "Ready", "status": "True", "lastHeartbeatTime": "2024-01-01T00:00:10Z"}
        ],
        "addresses": [{"type": "Hostname", "address": "n1"}]
    }});
    let result = patch("", "Node", &node, &body);
    let expected = with(
        with(
            node.clone(),
            "/status/conditions",
            json!([
                {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": "2024-01-01T00:00:10Z"},
                {"type": "Ready", "status": "True", "lastHeartbeatTime": "2024-01-01T00:00:10Z"}
            ]),
        ),
        "/status/addresses",
        json!([
            {"type": "Hostname", "address": "n1"},
            {"type": "InternalIP", "address": "192.168.1.10"}
        ]),
    );
    assert_eq!(result, expected);

    // podCIDRs merge as a set; taints are atomic.
    let spec = json!({"spec": {"podCIDRs": ["fd00::/64"], "taints": [{"key": "b", "effect": "NoExecute"}]}});
    let result = patch("", "Node", &node, &spec);
    let expected = with(
        with(
            node,
            "/spec/podCIDRs",
            json!(["fd00::/64", "10.244.0.0/24"]),
        ),
        "/spec/taints",
        json!([{"key": "b", "effect": "NoExecute"}]),
    );
    assert_eq!(result, expected);
}

#[test]
fn owner_references_merge_by_uid() {
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": "l",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "u-1"},
                {"apiVersion": "v1", "kind": "Node", "name": "n2", "uid": "u-2"}
            ]
        },
        "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40}
    });
    let body = json!({
        "metadata": {"ownerReferences": [
            {"uid": "u-2", "blockOwnerDeletion": true},
            {"uid": "u-1", "$patch": "delete"},
            {"apiVersion": "v1", "kind": "Node", "name": "n3", "uid": "u-3"}
        ]},
        "spec": {"renewTime": "2024-01-01T00:00:00.000000Z"}
    });
    let result = patch("coordination.k8s.io", "Lease", &lease, &body);
    let expected = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": "l",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": "n2", "uid": "u-2", "blockOwnerDeletion": true},
                {"apiVersion": "v1", "kind": "Node", "name": "n3", "uid": "u-3"}
            ]
        },
        "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40, "renewTime": "2024-01-01T00:00:00.000000Z"}
    });
    assert_eq!(result, expected);
}

#[test]
fn endpoint_lists_are_atomic() {
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "s"},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}],
        "ports": [{"name": "http", "port": 80}]
    });
    let body = json!({"endpoints": [{"addresses": ["10.0.0.3"], "conditions": {"ready": true}}]});
    let result = patch("discovery.k8s.io", "EndpointSlice", &slice, &body);
    let expected = with(
        slice,
        "/endpoints",
        json!([{"addresses": ["10.0.0.3"], "conditions": {"ready": true}}]),
    );
    assert_eq!(result, expected);

    let endpoints = json!({"kind": "Endpoints", "subsets": [{"addresses": [{"ip": "10.0.0.1"}]}]});
    let body = json!({"subsets": [{"addresses": [{"ip": "10.0.0.9"}], "ports": [{"port": 80}]}]});
    let result = patch("", "Endpoints", &endpoints, &body);
    assert_eq!(
        result,
        json!({"kind": "Endpoints", "subsets": [{"addresses": [{"ip": "10.0.0.9"}], "ports": [{"port": 80}]}]})
    );
}

#[test]
fn scale_and_namespace_patches() {
    let scale = json!({"kind": "Scale", "metadata": {"name": "web"}, "spec": {"replicas": 1}, "status": {"replicas": 1}});
    let result = patch(
        "autoscaling",
        "Scale",
        &scale,
        &json!({"spec": {"replicas": 5}}),
    );
    assert_eq!(result, with(scale, "/spec/replicas", json!(5)));

    let namespace = json!({
        "kind": "Namespace",
        "metadata": {"name": "ns"},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active", "conditions": [{"type": "A", "status": "False"}]}
    });
    let body = json!({"status": {"conditions": [{"type": "B", "status": "True"}]}, "spec": {"finalizers": []}});
    let result = patch("", "Namespace", &namespace, &body);
    let expected = json!({
        "kind": "Namespace",
        "metadata": {"name": "ns"},
        "spec": {"finalizers": []},
        "status": {"phase": "Active", "conditions": [{"type": "B", "status": "True"}, {"type": "A", "status": "False"}]}
    });
    assert_eq!(result, expected);
}

#[test]
fn schema_tables() {
    let deployment = schema("apps", "Deployment");
    assert_eq!(
        deployment.list_strategy(&["spec", "template", "spec", "containers"]),
        ListStrategy::MergeByKey("name")
    );
    assert_eq!(
        deployment.list_strategy(&["spec", "template", "spec", "containers", "env"]),
        ListStrategy::MergeByKey("name")
    );
    assert_eq!(
        deployment.list_strategy(&["spec", "template", "spec", "initContainers", "volumeMounts"]),
        ListStrategy::MergeByKey("mountPath")
    );
    assert_eq!(
        deployment.list_strategy(&["spec", "template", "spec", "tolerations"]),
        ListStrategy::Replace
    );
    assert_eq!(
        deployment.list_strategy(&["spec", "template", "metadata", "finalizers"]),
        ListStrategy::MergePrimitives
    );
    assert_eq!(
        deployment.list_strategy(&["metadata", "ownerReferences"]),
        ListStrategy::MergeByKey("uid")
    );
    assert_eq!(
        deployment.list_strategy(&["status", "conditions"]),
        ListStrategy::MergeByKey("type")
    );
    assert_eq!(
        deployment.list_strategy(&["no", "such", "path"]),
        ListStrategy::Replace
    );
    assert!(deployment.retain_keys(&["spec", "strategy"]));
    assert!(deployment.retain_keys(&["spec", "template", "spec", "volumes"]));
    assert!(!deployment.retain_keys(&["spec", "template"]));

    let pod = schema("", "Pod");
    assert_eq!(
        pod.list_strategy(&["spec", "ephemeralContainers", "ports"]),
        ListStrategy::MergeByKey("containerPort")
    );
    assert_eq!(
        pod.list_strategy(&["spec", "containers", "volumeDevices"]),
        ListStrategy::MergeByKey("devicePath")
    );
    assert_eq!(
        pod.list_strategy(&["spec", "containers", "resizePolicy"]),
        ListStrategy::Replace
    );
    assert_eq!(
        pod.list_strategy(&["spec", "hostAliases"]),
        ListStrategy::MergeByKey("ip")
    );
    assert_eq!(
        pod.list_strategy(&["spec", "imagePullSecrets"]),
        ListStrategy::MergeByKey("name")
    );
    assert_eq!(
        pod.list_strategy(&["status", "podIPs"]),
        ListStrategy::MergeByKey("ip")
    );
    assert_eq!(
        pod.list_strategy(&["status", "hostIPs"]),
        ListStrategy::MergeByKey("ip")
    );
    assert_eq!(
        pod.list_strategy(&["status", "containerStatuses"]),
        ListStrategy::Replace
    );
    assert!(pod.retain_keys(&["spec", "volumes"]));

    assert_eq!(
        schema("", "Service").list_strategy(&["spec", "ports"]),
        ListStrategy::MergeByKey("port")
    );
    assert_eq!(
        schema("", "Service").list_strategy(&["status", "conditions"]),
        ListStrategy::MergeByKey("type")
    );
    let node = schema("", "Node");
    assert_eq!(
        node.list_strategy(&["spec", "podCIDRs"]),
        ListStrategy::MergePrimitives
    );
    assert_eq!(
        node.list_strategy(&["spec", "taints"]),
        ListStrategy::Replace
    );
    assert_eq!(
        node.list_strategy(&["status", "addresses"]),
        ListStrategy::MergeByKey("type")
    );
    assert_eq!(
        schema("", "Endpoints").list_strategy(&["subsets"]),
        ListStrategy::Replace
    );
    assert_eq!(
        schema("discovery.k8s.io", "EndpointSlice").list_strategy(&["endpoints"]),
        ListStrategy::Replace
    );
    assert!(schema_for("coordination.k8s.io", "Lease").is_some());
    assert!(schema_for("autoscaling", "Scale").is_some());
    assert!(schema_for("", "Namespace").is_some());
    assert!(schema_for("example.com", "Widget").is_none());
    assert!(schema_for("", "Deployment").is_none());
}

#[test]
fn replica_set_template_and_conditions_merge() {
    let rs = json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "web-5d4f", "namespace": "default"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [
                    {"name": "nginx", "image": "nginx:1.25", "env": [{"name": "A", "value": "1"}]},
                    {"name": "log", "image": "fluent-bit:3"}
                ]}
            }
        },
        "status": {"replicas": 2, "conditions": [
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate"}
        ]}
    });
    let body = json!({
        "spec": {"replicas": 3, "template": {"spec": {"containers": [
            {"name": "nginx", "image": "nginx:1.27", "env": [{"name": "B", "value": "2"}]}
        ]}}},
        "status": {"conditions": [{"type": "ReplicaFailure", "status": "False"}]}
    });
    let result = patch("apps", "ReplicaSet", &rs, &body);
    assert_eq!(result["spec"]["replicas"], json!(3));
    // Without `$setElementOrder`, apimachinery puts the patch's own
    // elements first.
    assert_eq!(
        result["spec"]["template"]["spec"]["containers"],
        json!([
            {"name": "nginx", "image": "nginx:1.27",
             "env": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}]},
            {"name": "log", "image": "fluent-bit:3"}
        ])
    );
    assert_eq!(
        result["status"]["conditions"],
        json!([{"type": "ReplicaFailure", "status": "False", "reason": "FailedCreate"}])
    );
}

#[test]
fn service_account_secrets_merge_and_pull_secrets_replace() {
    let sa = json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "builder", "namespace": "ci"},
        "secrets": [{"name": "tok-1"}],
        "imagePullSecrets": [{"name": "reg-a"}]
    });
    let body = json!({
        "secrets": [{"name": "tok-2"}],
        "imagePullSecrets": [{"name": "reg-b"}]
    });
    let result = patch("", "ServiceAccount", &sa, &body);
    assert_eq!(
        result["secrets"],
        json!([{"name": "tok-2"}, {"name": "tok-1"}])
    );
    assert_eq!(result["imagePullSecrets"], json!([{"name": "reg-b"}]));
    let schema = schema("", "ServiceAccount");
    assert_eq!(
        schema.list_strategy(&["secrets"]),
        ListStrategy::MergeByKey("name")
    );
    assert_eq!(
        schema.list_strategy(&["imagePullSecrets"]),
        ListStrategy::Replace
    );
}

#[test]
fn config_map_and_secret_data_merge_by_key() {
    let cm = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg", "namespace": "default", "finalizers": ["a/x"]},
        "data": {"a": "1", "b": "2"}
    });
    let body = json!({"metadata": {"finalizers": ["b/y"]}, "data": {"b": null, "c": "3"}});
    let result = patch("", "ConfigMap", &cm, &body);
    assert_eq!(result["data"], json!({"a": "1", "c": "3"}));
    assert_eq!(result["metadata"]["finalizers"], json!(["b/y", "a/x"]));

    let secret = json!({"kind": "Secret", "type": "Opaque", "data": {"u": "dQ=="}});
    let result = patch("", "Secret", &secret, &json!({"data": {"p": "cA=="}}));
    assert_eq!(result["data"], json!({"u": "dQ==", "p": "cA=="}));
}

#[test]
fn events_in_both_groups() {
    for group in ["", "events.k8s.io"] {
        let events = schema(group, "Event");
        assert_eq!(
            events.list_strategy(&["metadata", "ownerReferences"]),
            ListStrategy::MergeByKey("uid")
        );
    }
    // A kubelet-style count bump on a core/v1 event.
    let ev = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "web-1.17a", "namespace": "default"},
        "involvedObject": {"kind": "Pod", "name": "web-1"},
        "count": 1,
        "lastTimestamp": "2024-06-01T11:00:00Z"
    });
    let body = json!({"count": 2, "lastTimestamp": "2024-06-01T11:05:00Z", "message": "again"});
    let result = patch("", "Event", &ev, &body);
    assert_eq!(result["count"], json!(2));
    assert_eq!(
        result["involvedObject"],
        json!({"kind": "Pod", "name": "web-1"})
    );
    assert_eq!(result["message"], json!("again"));
    // Kinds are looked up per group.
    assert!(schema_for("apps", "Event").is_none());
    assert!(schema_for("events.k8s.io", "ConfigMap").is_none());
}
