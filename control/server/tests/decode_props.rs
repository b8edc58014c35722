//! Property tests of everything that decodes what a client sends: request bodies (JSON, YAML and protobuf
//! over real HTTP), object decoding, defaulting and validation (creates of every served kind),
//! and patches (JSON patch, merge patch, strategic merge patch). Invariants: nothing panics,
//! nothing answers 5xx, and every refusal is a 4xx `Status`.
//!
//! Inputs are valid objects with random mutations at random paths (so most cases get past the
//! first check and reach the deeper ones), wholly random JSON values, and random bytes. Case
//! counts are bounded so the tier runs in seconds.

use std::sync::Arc;

mod common;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use sluice_control::registry::{Part, PatchType, Registry};
use sluice_control::resources::{self, Resource};
use sluice_control::status::ApiError;
use sluice_control::{Server, ServerConfig};

/// Keys that occur in the served kinds, so mutations hit real fields.
const VOCAB: &[&str] = &[
    "metadata",
    "name",
    "namespace",
    "labels",
    "annotations",
    "generateName",
    "uid",
    "resourceVersion",
    "finalizers",
    "ownerReferences",
    "spec",
    "status",
    "ports",
    "port",
    "targetPort",
    "nodePort",
    "protocol",
    "selector",
    "type",
    "clusterIP",
    "clusterIPs",
    "externalIPs",
    "sessionAffinity",
    "containers",
    "image",
    "env",
    "value",
    "resources",
    "requests",
    "limits",
    "cpu",
    "memory",
    "nodeName",
    "podCIDR",
    "podCIDRs",
    "conditions",
    "addresses",
    "endpoints",
    "addressType",
    "ready",
    "replicas",
    "template",
    "matchLabels",
    "strategy",
    "holderIdentity",
    "leaseDurationSeconds",
    "renewTime",
    "kind",
    "apiVersion",
    "ipFamilies",
    "ipFamilyPolicy",
    "externalTrafficPolicy",
    "loadBalancerSourceRanges",
    "$patch",
    "$retainKeys",
    "$setElementOrder/ports",
    "$deleteFromPrimitiveList/finalizers",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-70000i64..70000).prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-z0-9.-]{0,12}".prop_map(Value::from),
        "\\PC{0,10}".prop_map(Value::from),
        prop::sample::select(vec![
            "TCP",
            "UDP",
            "SCTP",
            "ClusterIP",
            "NodePort",
            "LoadBalancer",
            "ExternalName",
            "None",
            "10.96.0.10",
            "10.244.0.0/24",
            "::1",
            "1Gi",
            "100m",
            "-1",
            "80",
            "http",
            "IPv4",
            "IPv6",
            "SingleStack",
            "Local",
            "Cluster",
            "True",
            "Ready",
            "delete",
            "replace",
            "merge",
            "2024-01-01T00:00:00Z",
            "",
        ])
        .prop_map(Value::from),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(VOCAB).prop_map(String::from),
        1 => "[a-zA-Z/.$-]{1,10}",
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Sets `path` in `obj` to `v`, turning whatever stands in the way into objects (an array
/// step picks an element by index, or appends).
fn set_path(obj: &mut Value, path: &[(String, usize)], v: Value) {
    let Some(((k, idx), rest)) = path.split_first() else {
        *obj = v;
        return;
    };
    if let Value::Array(items) = obj {
        if items.is_empty() {
            items.push(json!({}));
        }
        let n = items.len();
        return set_path(&mut items[idx % n], path, v);
    }
    if !obj.is_object() {
        *obj = json!({});
    }
    let child = obj
        .as_object_mut()
        .expect("object")
        .entry(k.clone())
        .or_insert(Value::Null);
    set_path(child, rest, v);
}

/// A valid object of each served kind (name `base-<n>` filled in by the caller).
fn skeleton(res: &Resource) -> Value {
    match res.kind {
        "Namespace" => json!({"metadata": {}}),
        "Node" => json!({"metadata": {"labels": {"a": "b"}}, "spec": {}}),
        "Pod" => json!({"metadata": {"labels": {"app": "web"}}, "spec": {
            "containers": [{"name": "c", "image": "busybox", "ports": [{"containerPort": 80, "name": "http"}],
                             "env": [{"name": "A", "value": "b"}], "resources": {"requests": {"cpu": "100m"}}}]}}),
        "Service" => json!({"metadata": {}, "spec": {"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}, {"name": "dns", "port": 53, "protocol": "UDP"}]}}),
        "Endpoints" => {
            json!({"metadata": {}, "subsets": [{"addresses": [{"ip": "10.244.0.5"}], "ports": [{"port": 80}]}]})
        }
        "EndpointSlice" => {
            json!({"metadata": {"labels": {"kubernetes.io/service-name": "web"}}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": true}}], "ports": [{"port": 80, "name": "http"}]})
        }
        "Deployment" => {
            json!({"metadata": {}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})
        }
        "Lease" => {
            json!({"metadata": {}, "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40}})
        }
        "ReplicaSet" => {
            json!({"metadata": {}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})
        }
        "ConfigMap" => json!({"metadata": {}, "data": {"a": "1", "b.txt": "two"}}),
        "Secret" => json!({"metadata": {}, "type": "Opaque", "data": {"pw": "aHVudGVyMg=="},
            "stringData": {"user": "admin"}}),
        "ServiceAccount" => json!({"metadata": {}, "secrets": [{"name": "token"}]}),
        "Event" if res.group.is_empty() => json!({"metadata": {"namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
            "reason": "Started", "message": "started", "type": "Normal", "count": 1}),
        "Event" => json!({"metadata": {"namespace": "default"},
            "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "example.com/c",
            "reportingInstance": "i", "action": "Start", "reason": "Started", "type": "Normal",
            "regarding": {"kind": "Pod", "name": "web", "namespace": "default"}}),
        other => panic!("no skeleton for {other}"),
    }
}

fn mutation() -> impl Strategy<Value = Vec<(Vec<(String, usize)>, Value)>> {
    prop::collection::vec(
        (prop::collection::vec((key(), 0usize..4), 1..5), value()),
        0..4,
    )
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    server: Option<Server>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig::new(dir.path().join("data"));
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        let server = rt.block_on(Server::start(cfg)).unwrap();
        Fixture {
            rt,
            server: Some(server),
            _dir: dir,
        }
    }

    fn registry(&self) -> Arc<Registry> {
        self.server.as_ref().unwrap().registry.clone()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.shutdown());
        }
    }
}

/// A refusal must be a client error.
fn client_error<T>(what: &str, r: Result<T, ApiError>) -> Result<(), TestCaseError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if (400..500).contains(&e.code) => {
            let s = e.to_status();
            prop_assert_eq!(&s["kind"], "Status");
            prop_assert!(!e.message.is_empty(), "{}: empty message", what);
            Ok(())
        }
        Err(e) => Err(TestCaseError::fail(format!("{what}: {e}"))),
    }
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

fn served() -> Vec<&'static Resource> {
    resources::RESOURCES.iter().collect()
}

#[test]
fn creates_of_mutated_objects_are_stored_or_refused_with_4xx() {
    let f = Fixture::new();
    let reg = f.registry();
    let kinds = served();
    let n = std::cell::Cell::new(0u64);
    let tally = std::cell::RefCell::new(std::collections::BTreeMap::new());
    let strat = (
        prop::sample::select(kinds),
        mutation(),
        any::<bool>(),
        value(),
    );
    runner(1500)
        .run(&strat, |(res, muts, wholly_random, random)| {
            n.set(n.get() + 1);
            let mut obj = if wholly_random {
                random
            } else {
                let mut o = skeleton(res);
                o["metadata"]["name"] = json!(format!("base-{}", n.get()));
                o
            };
            for (path, v) in muts {
                set_path(&mut obj, &path, v);
            }
            let ns = res.namespaced.then_some("default");
            let r = f.rt.block_on(reg.create(res, ns, obj.clone()));
            let code = r.as_ref().map(|_| 201).unwrap_or_else(|e| e.code);
            *tally.borrow_mut().entry(code).or_insert(0u32) += 1;
            client_error(&format!("create {} {obj}", res.kind), r)
        })
        .unwrap();
    // The generator must reach past decoding: some creates succeed, some fail validation.
    let tally = tally.into_inner();
    eprintln!("create outcomes by code: {tally:?}");
    assert!(tally.get(&201).copied().unwrap_or(0) >= 50, "{tally:?}");
    assert!(tally.get(&422).copied().unwrap_or(0) >= 50, "{tally:?}");
}

#[test]
fn patches_of_every_type_apply_or_are_refused_with_4xx() {
    let f = Fixture::new();
    let reg = f.registry();
    let kinds: Vec<&'static Resource> = served()
        .into_iter()
        .filter(|r| r.kind != "Namespace")
        .collect();
    for res in &kinds {
        let mut o = skeleton(res);
        o["metadata"]["name"] = json!("target");
        let ns = res.namespaced.then_some("default");
        f.rt.block_on(reg.create(res, ns, o)).unwrap();
    }
    let json_patch_op = (
        prop::sample::select(vec![
            "add", "remove", "replace", "move", "copy", "test", "bogus",
        ]),
        prop::collection::vec(key(), 0..4),
        value(),
    )
        .prop_map(|(op, path, value)| {
            let p = format!("/{}", path.join("/"));
            json!({"op": op, "path": p, "from": "/metadata/labels", "value": value})
        });
    let patch = prop_oneof![
        (Just(PatchType::Merge), value()),
        (Just(PatchType::Strategic), value()),
        (
            Just(PatchType::Strategic),
            mutation().prop_map(|m| {
                let mut o = json!({});
                for (path, v) in m {
                    set_path(&mut o, &path, v);
                }
                o
            })
        ),
        (
            Just(PatchType::Json),
            prop::collection::vec(json_patch_op, 0..4).prop_map(Value::Array)
        ),
        (Just(PatchType::Json), value()),
    ];
    let strat = (prop::sample::select(kinds), patch, any::<bool>());
    runner(1500)
        .run(&strat, |(res, (pt, body), status)| {
            let ns = res.namespaced.then_some("default");
            let part = if status && res.has_subresource("status") {
                Part::Status
            } else {
                Part::Main
            };
            let r =
                f.rt.block_on(reg.patch(res, ns, "target", pt, body.clone(), part));
            client_error(&format!("{pt:?} patch of {} with {body}", res.kind), r)
        })
        .unwrap();
}

#[test]
fn smp_never_panics_on_arbitrary_documents() {
    let schema = sluice_smp::schema_for("", "Service").expect("Service schema");
    runner(3000)
        .run(&(value(), value()), |(orig, patch)| {
            let _ = sluice_smp::strategic_merge_patch(&orig, &patch, schema);
            Ok(())
        })
        .unwrap();
}

/// Bodies sent over real HTTP with any of the media types clients use.
mod http_bodies {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn roundtrip(
        stream: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin),
        token: &str,
        method: &str,
        path: &str,
        ct: &str,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let auth = format!("Authorization: Bearer {token}");
        let ct = format!("Content-Type: {ct}");
        common::send(stream, method, path, &[&auth, &ct], body).await;
        let r = common::read_resp(stream)
            .await
            .expect("connection closed without a response");
        (r.code, r.body)
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            value().prop_map(|v| v.to_string().into_bytes()),
            (value(), 0usize..40).prop_map(|(v, cut)| {
                let mut b = v.to_string().into_bytes();
                b.truncate(b.len().saturating_sub(cut));
                b
            }),
            "[-:{}\\[\\] a-z0-9\"'&*!|>\n]{0,120}".prop_map(String::into_bytes),
            // A protobuf envelope around random bytes.
            prop::collection::vec(any::<u8>(), 0..200).prop_map(|b| {
                let mut v = b"k8s\0".to_vec();
                v.extend(b);
                v
            }),
        ]
    }

    #[test]
    fn any_body_gets_a_success_or_a_4xx_status() {
        let f = Fixture::new();
        let server = f.server.as_ref().unwrap();
        let token = common::token_of(&std::fs::read_to_string(&server.kubeconfig).unwrap());
        let connector = common::connector(&server.kubeconfig.with_file_name("ca.crt"));
        let addr = server.addr;
        let stream = f.rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            connector
                .connect(
                    rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                    tcp,
                )
                .await
                .unwrap()
        });
        let strat = (
            prop::sample::select(vec![
                ("POST", "/api/v1/namespaces/default/services"),
                ("POST", "/api/v1/namespaces/default/pods"),
                ("POST", "/api/v1/nodes"),
                ("PUT", "/api/v1/namespaces/default/services/s"),
                ("PATCH", "/api/v1/namespaces/default"),
                ("PATCH", "/api/v1/namespaces/default/status"),
                ("DELETE", "/api/v1/namespaces/default/services/s"),
                ("DELETE", "/api/v1/namespaces/default/pods"),
            ]),
            prop::sample::select(vec![
                "application/json",
                "application/yaml",
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
                "application/json; charset=utf-8",
                "application/vnd.kubernetes.protobuf",
                "text/plain",
            ]),
            body(),
        );
        // The runner takes a `Fn`: the one connection is borrowed per case.
        let stream = std::cell::RefCell::new(stream);
        runner(600)
            .run(&strat, |((method, path), ct, body)| {
                let (code, resp) = f.rt.block_on(roundtrip(
                    &mut *stream.borrow_mut(),
                    &token,
                    method,
                    path,
                    ct,
                    &body,
                ));
                prop_assert!(
                    (200..300).contains(&code) || (400..500).contains(&code),
                    "{} {} {}: {} {}",
                    method,
                    path,
                    ct,
                    code,
                    String::from_utf8_lossy(&resp)
                );
                if code >= 400 {
                    let v: Value = serde_json::from_slice(&resp)
                        .map_err(|e| TestCaseError::fail(format!("not JSON: {e}")))?;
                    prop_assert_eq!(&v["kind"], "Status");
                    prop_assert_eq!(&v["code"], code);
                }
                Ok(())
            })
            .unwrap();
        // Hostile shapes: deep nesting and alias bombs are refused, not followed.
        let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let deep_yaml = format!("{}1", "- ".repeat(50_000));
        let mut bomb =
            String::from("a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
        for i in 0..12u8 {
            let (p, c) = ((b'a' + i) as char, (b'a' + i + 1) as char);
            bomb.push_str(&format!(
                "{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
            ));
        }
        for (ct, b) in [
            ("application/json", deep_json.as_bytes()),
            ("application/yaml", deep_yaml.as_bytes()),
            ("application/yaml", bomb.as_bytes()),
        ] {
            let (code, resp) = f.rt.block_on(roundtrip(
                &mut *stream.borrow_mut(),
                &token,
                "POST",
                "/api/v1/namespaces/default/services",
                ct,
                b,
            ));
            assert_eq!(code, 400, "{ct}: {}", String::from_utf8_lossy(&resp));
        }
    }
}
