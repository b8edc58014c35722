//! NodeRestriction against the running `sluice-control`: what a node may write on its own Node
//! (labels kubelets may set, no taints, nothing under `node-restriction.kubernetes.io/`) and
//! which pods it may delete (those bound to it), as a table of request → HTTP code for the
//! admin, nodes n1 and n2, an authenticated user with no rights, and no token. The unit test
//! `registry::tests::node_restriction_table` runs the same table in-process.

use std::time::Duration;

use http::{Method, Request};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use kube::Client;
use serde_json::{json, Value};
use sluice_tests::{bin, client_from, text, Backend, ControlPlane};

include!("../../control/server/testdata/node_restriction_table.rs");

/// Clients for every identity.
struct Clients {
    admin: Client,
    n1: Client,
    n2: Client,
    nobody: Client,
    no_token: Client,
}

impl Clients {
    fn of(&self, w: Who) -> &Client {
        match w {
            Who::Admin => &self.admin,
            Who::N1 => &self.n1,
            Who::N2 => &self.n2,
            Who::Nobody => &self.nobody,
            Who::NoToken => &self.no_token,
        }
    }
}

/// The admin kubeconfig with its token replaced (`None`: no user credentials at all).
fn kubeconfig_with(admin: &str, token: Option<&str>) -> String {
    admin
        .lines()
        .filter_map(|l| match (l.trim_start().starts_with("token:"), token) {
            (true, Some(t)) => Some(format!("    token: {t}")),
            (true, None) => None,
            (false, None) if l.trim() == "user:" => Some("  user: {}".to_string()),
            _ => Some(l.to_string()),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn clients(cp: &ControlPlane) -> Clients {
    let dir = &cp.dir;
    let node = |n: &str| {
        let kc = dir.join(format!("{n}.kubeconfig"));
        let o = std::process::Command::new(bin("sluice-control"))
            .args(["token", "create", "--node", n, "--data-dir"])
            .arg(dir)
            .arg("--kubeconfig-out")
            .arg(&kc)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        kc
    };
    let (n1, n2) = (node("n1"), node("n2"));
    // A user the server knows but grants nothing: a token entry of its own.
    let tokens = dir.join("tokens.json");
    let mut t: Value = serde_json::from_slice(&std::fs::read(&tokens).unwrap()).unwrap();
    t["tokens"].as_array_mut().unwrap().push(json!({
        "token": "nobodynobodynobodynobodynobodynobody0000",
        "user": "bob",
        "groups": ["system:authenticated"],
    }));
    std::fs::write(&tokens, serde_json::to_vec_pretty(&t).unwrap()).unwrap();
    let admin_kc = std::fs::read_to_string(&cp.kubeconfig).unwrap();
    let nobody = dir.join("nobody.kubeconfig");
    std::fs::write(
        &nobody,
        kubeconfig_with(&admin_kc, Some("nobodynobodynobodynobodynobodynobody0000")),
    )
    .unwrap();
    let anon = dir.join("anon.kubeconfig");
    std::fs::write(&anon, kubeconfig_with(&admin_kc, None)).unwrap();
    Clients {
        admin: cp.client().await.unwrap(),
        n1: client_from(&n1).await.unwrap(),
        n2: client_from(&n2).await.unwrap(),
        nobody: client_from(&nobody).await.unwrap(),
        no_token: client_from(&anon).await.unwrap(),
    }
}

/// Sends one request; the HTTP code and body.
async fn send(
    c: &Client,
    method: Method,
    path: &str,
    ct: &str,
    body: Option<&Value>,
) -> (u16, String) {
    let mut b = Request::builder().method(method).uri(path);
    if body.is_some() {
        b = b.header(http::header::CONTENT_TYPE, ct);
    }
    let bytes = body.map(|v| v.to_string().into_bytes()).unwrap_or_default();
    let resp = c
        .send(b.body(kube::client::Body::from(bytes)).unwrap())
        .await
        .unwrap();
    let code = resp.status().as_u16();
    let text = resp.into_body().collect_bytes().await.unwrap();
    (code, String::from_utf8_lossy(&text).into_owned())
}

/// Puts the fixture back: Nodes n1 (with a label the admin set that nodes may not touch) and
/// n2, both with podCIDRs (so the IPAM controller leaves them alone); pods bound to n1, to n2,
/// and unbound.
async fn reset(admin: &Client) {
    let nodes: Api<Node> = Api::all(admin.clone());
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    // A delete can meet a concurrent write of the IPAM controller (409): until it is gone.
    for n in ["n1", "n2", "n3"] {
        while nodes.get_opt(n).await.unwrap().is_some() {
            let _ = nodes.delete(n, &DeleteParams::default()).await;
        }
    }
    for p in ["p-n1", "p-n2", "p-unbound"] {
        while pods.get_opt(p).await.unwrap().is_some() {
            let _ = pods
                .delete(p, &DeleteParams::default().grace_period(0))
                .await;
        }
    }
    let n1: Node = serde_json::from_value(json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1", "node-role.kubernetes.io/control-plane": ""}},
                                                 "spec": {"podCIDR": "10.244.1.0/24"}})).unwrap();
    let n2: Node = serde_json::from_value(
        json!({"metadata": {"name": "n2", "labels": {"kubernetes.io/hostname": "n2"}},
                                                 "spec": {"podCIDR": "10.244.2.0/24"}}),
    )
    .unwrap();
    nodes.create(&PostParams::default(), &n1).await.unwrap();
    nodes.create(&PostParams::default(), &n2).await.unwrap();
    for (name, node) in [
        ("p-n1", Some("n1")),
        ("p-n2", Some("n2")),
        ("p-unbound", None),
    ] {
        let mut p = json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        let p: Pod = serde_json::from_value(p).unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
}

async fn get(admin: &Client, path: &str) -> Value {
    let (code, body) = send(admin, Method::GET, path, "", None).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn serve(cs: &Clients, who: Who, req: &Req) -> (u16, String) {
    let c = cs.of(who);
    let j = "application/json";
    match req {
        Req::CreateNode(name, labels) => {
            let path = format!("/api/v1/nodes/{name}");
            while send(&cs.admin, Method::GET, &path, "", None).await.0 != 404 {
                send(&cs.admin, Method::DELETE, &path, "", None).await;
            }
            let body = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}});
            send(c, Method::POST, "/api/v1/nodes", j, Some(&body)).await
        }
        Req::UpdateLabels(name, edits) => {
            let path = format!("/api/v1/nodes/{name}");
            let mut v = get(&cs.admin, &path).await;
            for (k, x) in edits {
                match x {
                    Some(x) => v["metadata"]["labels"][*k] = json!(x),
                    None => {
                        v["metadata"]["labels"].as_object_mut().unwrap().remove(*k);
                    }
                }
            }
            send(c, Method::PUT, &path, j, Some(&v)).await
        }
        Req::PatchNode(name, pt, p) => {
            let ct = match pt {
                Pt::Json => "application/json-patch+json",
                Pt::Merge => "application/merge-patch+json",
                Pt::Strategic => "application/strategic-merge-patch+json",
            };
            send(
                c,
                Method::PATCH,
                &format!("/api/v1/nodes/{name}"),
                ct,
                Some(p),
            )
            .await
        }
        Req::UpdateNodeStatus(name) => {
            let path = format!("/api/v1/nodes/{name}");
            let mut v = get(&cs.admin, &path).await;
            v["metadata"]["labels"]["node-role.kubernetes.io/worker"] = json!("");
            v["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
            send(c, Method::PUT, &format!("{path}/status"), j, Some(&v)).await
        }
        Req::DeleteNode(name) => {
            send(
                c,
                Method::DELETE,
                &format!("/api/v1/nodes/{name}"),
                "",
                None,
            )
            .await
        }
        Req::DeletePod(name) => {
            send(
                c,
                Method::DELETE,
                &format!("/api/v1/namespaces/default/pods/{name}"),
                "",
                None,
            )
            .await
        }
        Req::UpdatePodStatus(name) => {
            let path = format!("/api/v1/namespaces/default/pods/{name}");
            let mut v = get(&cs.admin, &path).await;
            v["status"]["phase"] = json!("Running");
            send(c, Method::PUT, &format!("{path}/status"), j, Some(&v)).await
        }
        Req::PatchPodStatus(name) => {
            let p = json!({"status": {"phase": "Running"}});
            send(
                c,
                Method::PATCH,
                &format!("/api/v1/namespaces/default/pods/{name}/status"),
                "application/merge-patch+json",
                Some(&p),
            )
            .await
        }
    }
}

async fn node_restriction_table_over_http(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    // A long grace period: the lifecycle controller must not write the fixture's Nodes.
    let cp = ControlPlane::start_with(
        backend,
        dir.path(),
        &["--node-monitor-grace-period", "3600"],
    )
    .unwrap();
    let cs = clients(&cp).await;
    // The token file is re-read when it changes; wait until "bob" is known.
    sluice_tests::eventually(Duration::from_secs(10), "the new token", || async {
        let (code, _) = send(&cs.nobody, Method::GET, "/api/v1/nodes", "", None).await;
        (code == 403).then_some(())
    })
    .await;

    let mut failures = Vec::new();
    let mut n = 0;
    for (req, codes) in table() {
        for (who, want) in WHO.into_iter().zip(codes) {
            reset(&cs.admin).await;
            let (got, body) = serve(&cs, who, &req).await;
            n += 1;
            if got != want {
                failures.push(format!("{who:?} {req:?}: want {want}, got {got} {body}"));
            }
            if got >= 400 {
                // Every refusal is a Status object with the code and reason.
                let s: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                if s["kind"] != "Status" || s["code"] != got {
                    failures.push(format!("{who:?} {req:?}: not a Status: {body}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} rows:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(n, 28 * 5);

    // The messages are upstream's.
    reset(&cs.admin).await;
    let (_, body) = serve(
        &cs,
        Who::N1,
        &Req::PatchNode(
            "n1",
            Pt::Merge,
            json!({"metadata": {"labels": {"node-role.kubernetes.io/worker": ""}}}),
        ),
    )
    .await;
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (s["reason"].as_str(), s["message"].as_str(), s["details"]["kind"].as_str()),
        (
            Some("Forbidden"),
            Some("nodes \"n1\" is forbidden: is not allowed to modify labels: node-role.kubernetes.io/worker"),
            Some("nodes")
        )
    );
    let (_, body) = serve(&cs, Who::N1, &Req::DeletePod("p-n2")).await;
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        s["message"],
        "pods \"p-n2\" is forbidden: node \"n1\" can only delete pods with spec.nodeName set to itself"
    );
}

sluice_tests::on_both_stores!(; async: node_restriction_table_over_http);
