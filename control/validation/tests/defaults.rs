//! Defaulting of every served kind, asserted field by field.

mod common;

use common::decode;
use serde_json::json;
use sluice_validation::{apply_defaults, prepare_for_create, Kind};

#[test]
fn pod_defaults() {
    let pod = decode(
        Kind::Pod,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [
                {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}],
                 "livenessProbe": {"httpGet": {"port": 80}},
                 "env": [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                 "resources": {"limits": {"cpu": "1"}}},
                {"name": "b", "image": "nginx:1.25"},
                {"name": "c", "image": "nginx:latest"}
            ]}
        }),
    );
    let spec = &pod["spec"];
    assert_eq!(spec["restartPolicy"], "Always");
    assert_eq!(spec["dnsPolicy"], "ClusterFirst");
    assert_eq!(spec["terminationGracePeriodSeconds"], 30);
    assert_eq!(spec["schedulerName"], "default-scheduler");
    assert_eq!(spec["enableServiceLinks"], true);
    assert_eq!(spec["securityContext"], json!({}));
    assert_eq!(spec["priority"], 0);
    assert_eq!(spec["preemptionPolicy"], "PreemptLowerPriority");

    let a = &spec["containers"][0];
    assert_eq!(a["imagePullPolicy"], "Always");
    assert_eq!(a["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(a["terminationMessagePolicy"], "File");
    assert_eq!(a["ports"][0]["protocol"], "TCP");
    assert_eq!(
        a["livenessProbe"],
        json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"},
               "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
    );
    assert_eq!(a["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
    assert_eq!(a["resources"]["requests"], json!({"cpu": "1"}));
    assert_eq!(spec["containers"][1]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(spec["containers"][1]["resources"], json!({}));
    assert_eq!(spec["containers"][2]["imagePullPolicy"], "Always");
}

#[test]
fn pod_defaults_keep_explicit_values_and_are_idempotent() {
    let mut pod = decode(
        Kind::Pod,
        json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"restartPolicy": "Never", "dnsPolicy": "Default", "terminationGracePeriodSeconds": 0,
                     "enableServiceLinks": false,
                     "containers": [{"name": "a", "image": "nginx", "imagePullPolicy": "Never"}]}
        }),
    );
    assert_eq!(pod["apiVersion"], "v1");
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    assert_eq!(pod["spec"]["dnsPolicy"], "Default");
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 0);
    assert_eq!(pod["spec"]["enableServiceLinks"], false);
    assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Never");
    let before = pod.clone();
    apply_defaults(Kind::Pod, &mut pod);
    assert_eq!(pod, before);
}

#[test]
fn pod_volume_and_host_network_defaults() {
    let pod = decode(
        Kind::Pod,
        json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"hostNetwork": true,
                     "containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 8080}]}],
                     "volumes": [{"name": "scratch"}, {"name": "s", "secret": {"secretName": "s"}},
                                 {"name": "h", "hostPath": {"path": "/x"}},
                                 {"name": "cm", "configMap": {"name": "c"}}]}
        }),
    );
    let vols = &pod["spec"]["volumes"];
    assert_eq!(vols[0], json!({"name": "scratch", "emptyDir": {}}));
    assert_eq!(vols[1]["secret"]["defaultMode"], 420);
    assert_eq!(vols[2]["hostPath"]["type"], "");
    assert_eq!(vols[3]["configMap"]["defaultMode"], 420);
    assert_eq!(pod["spec"]["containers"][0]["ports"][0]["hostPort"], 8080);
}

#[test]
fn pod_status_ip_pairing_and_create_status() {
    let mut pod = decode(
        Kind::Pod,
        json!({"metadata": {"name": "p", "namespace": "d"},
               "spec": {"containers": [{"name": "a", "image": "x",
                        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]},
               "status": {"podIP": "10.0.0.5"}}),
    );
    assert_eq!(pod["status"]["podIPs"], json!([{"ip": "10.0.0.5"}]));
    prepare_for_create(Kind::Pod, &mut pod);
    assert_eq!(
        pod["status"],
        json!({"phase": "Pending", "qosClass": "Guaranteed"})
    );
    assert_eq!(pod["metadata"]["generation"], 1);
}

#[test]
fn service_defaults_cluster_ip() {
    let svc = decode(
        Kind::Service,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "d"},
               "spec": {"selector": {"app": "a"}, "ports": [{"port": 80}, {"port": 81, "targetPort": "http", "protocol": "UDP"}]}}),
    );
    let spec = &svc["spec"];
    assert_eq!(spec["type"], "ClusterIP");
    assert_eq!(spec["sessionAffinity"], "None");
    assert_eq!(spec["internalTrafficPolicy"], "Cluster");
    assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
    assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
    assert_eq!(
        spec["ports"][0],
        json!({"port": 80, "protocol": "TCP", "targetPort": 80})
    );
    assert_eq!(
        spec["ports"][1],
        json!({"port": 81, "protocol": "UDP", "targetPort": "http"})
    );
    assert!(spec.get("externalTrafficPolicy").is_none());
    assert!(spec.get("allocateLoadBalancerNodePorts").is_none());
}

#[test]
fn service_defaults_load_balancer_and_affinity() {
    let svc = decode(
        Kind::Service,
        json!({"metadata": {"name": "s", "namespace": "d"},
               "spec": {"type": "LoadBalancer", "sessionAffinity": "ClientIP", "ports": [{"port": 443}],
                        "clusterIP": "10.96.0.10"}}),
    );
    let spec = &svc["spec"];
    assert_eq!(spec["externalTrafficPolicy"], "Cluster");
    assert_eq!(spec["allocateLoadBalancerNodePorts"], true);
    assert_eq!(
        spec["sessionAffinityConfig"],
        json!({"clientIP": {"timeoutSeconds": 10800}})
    );
    assert_eq!(spec["clusterIPs"], json!(["10.96.0.10"]));
    assert_eq!(spec["internalTrafficPolicy"], "Cluster");
}

#[test]
fn service_defaults_external_name_and_ipv6() {
    let svc = decode(
        Kind::Service,
        json!({"metadata": {"name": "s", "namespace": "d"},
               "spec": {"type": "ExternalName", "externalName": "example.com"}}),
    );
    let spec = &svc["spec"];
    assert!(spec.get("ipFamilies").is_none());
    assert!(spec.get("ipFamilyPolicy").is_none());
    assert!(spec.get("internalTrafficPolicy").is_none());

    let svc = decode(
        Kind::Service,
        json!({"metadata": {"name": "s", "namespace": "d"},
               "spec": {"clusterIP": "fd00::10", "ports": [{"port": 1}]}}),
    );
    assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv6"]));

    let headless = decode(
        Kind::Service,
        json!({"metadata": {"name": "s", "namespace": "d"}, "spec": {"clusterIP": "None"}}),
    );
    assert_eq!(headless["spec"]["ipFamilyPolicy"], "RequireDualStack");
    assert_eq!(headless["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
}

#[test]
fn deployment_defaults() {
    let d = decode(
        Kind::Deployment,
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "n"},
               "spec": {"selector": {"matchLabels": {"app": "a"}},
                        "template": {"metadata": {"labels": {"app": "a"}},
                                     "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}}}),
    );
    let spec = &d["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(
        spec["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
    );
    assert_eq!(spec["revisionHistoryLimit"], 10);
    assert_eq!(spec["progressDeadlineSeconds"], 600);
    let tspec = &spec["template"]["spec"];
    assert_eq!(tspec["restartPolicy"], "Always");
    assert_eq!(tspec["dnsPolicy"], "ClusterFirst");
    assert_eq!(tspec["schedulerName"], "default-scheduler");
    assert_eq!(tspec["terminationGracePeriodSeconds"], 30);
    assert_eq!(tspec["securityContext"], json!({}));
    assert_eq!(tspec["containers"][0]["imagePullPolicy"], "IfNotPresent");
    // Pod-only defaults stay out of templates.
    assert!(tspec.get("enableServiceLinks").is_none());
    assert!(tspec.get("priority").is_none());

    let recreate = decode(
        Kind::Deployment,
        json!({"metadata": {"name": "d", "namespace": "n"}, "spec": {"strategy": {"type": "Recreate"}}}),
    );
    assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));
}

#[test]
fn namespace_node_endpoints_slice_defaults() {
    let mut ns = decode(
        Kind::Namespace,
        json!({"metadata": {"name": "team", "namespace": "x"}}),
    );
    assert_eq!(
        ns["metadata"]["labels"],
        json!({"kubernetes.io/metadata.name": "team"})
    );
    assert!(ns["metadata"].get("namespace").is_none());
    assert_eq!(ns["status"]["phase"], "Active");
    prepare_for_create(Kind::Namespace, &mut ns);
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));

    let node = decode(
        Kind::Node,
        json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"},
               "status": {"capacity": {"cpu": "4", "pods": "110"}}}),
    );
    assert_eq!(node["spec"]["podCIDRs"], json!(["10.244.1.0/24"]));
    assert_eq!(
        node["status"]["allocatable"],
        json!({"cpu": "4", "pods": "110"})
    );

    let ep = decode(
        Kind::Endpoints,
        json!({"metadata": {"name": "e", "namespace": "d"},
               "subsets": [{"addresses": [{"ip": "10.1.1.1"}], "ports": [{"port": 80}]}]}),
    );
    assert_eq!(ep["subsets"][0]["ports"][0]["protocol"], "TCP");

    let slice = decode(
        Kind::EndpointSlice,
        json!({"metadata": {"name": "e", "namespace": "d"}, "addressType": "IPv4",
               "endpoints": [], "ports": [{"port": 80}]}),
    );
    assert_eq!(slice["apiVersion"], "discovery.k8s.io/v1");
    assert_eq!(
        slice["ports"][0],
        json!({"port": 80, "name": "", "protocol": "TCP"})
    );

    let lease = decode(
        Kind::Lease,
        json!({"metadata": {"name": "l", "namespace": "d"}}),
    );
    assert_eq!(lease["apiVersion"], "coordination.k8s.io/v1");
    assert_eq!(lease["kind"], "Lease");
}
