//! The control plane over TLS, driven by real clients: kubectl (Debian's 1.20 and the
//! preinstalled one) and kube-rs. Each test runs its own `sluice-control` process with its
//! own data directory on an ephemeral loopback port.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::{json, Value};
use sluice_tests::{bin, client_from, eventually, skip, text, Backend, ControlPlane, Kubectl};

const SVC: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 8080
"#;

fn deployment(image: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: c
        image: {image}
        command: ["sleep", "3600"]
        ports:
        - name: http
          containerPort: 8080
"#
    )
}

const POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: p1
  labels:
    app: web
spec:
  containers:
  - name: c
    image: busybox
"#;

const BAD_SVC: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: bad
spec:
  ports:
  - port: 0
"#;

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// The whole kubectl workflow against one control plane.
fn kubectl_workflow(backend: Backend, k: &Kubectl) {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(backend, &dir.path().join("data"), &[]).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let kc = cp.kubeconfig.clone();
    let run = |args: &[&str]| k.run(&kc, &home, args);
    let run_in = |args: &[&str], input: &str| k.run_stdin(&kc, &home, args, input);
    let ok = |o: std::process::Output| {
        assert!(o.status.success(), "{}: {}", k.label, text(&o));
        out(&o)
    };
    println!(
        "{}: {}",
        k.label,
        ok(run(&["version", "--client"]))
            .lines()
            .next()
            .unwrap_or("")
    );

    // create with the default client-side validation (against the served OpenAPI schemas).
    let s = ok(run_in(&["create", "-f", "-"], SVC));
    assert!(s.contains("service/web created"), "{s}");

    // Start `get -w` before more objects appear.
    let mut watch = k
        .command(&kc, &home, &["get", "services", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let wout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(wout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    // apply, re-apply with a change, re-apply unchanged.
    let s = ok(run_in(
        &["apply", "-f", "-"],
        &deployment("busybox:1.35", 2),
    ));
    assert!(s.contains("deployment.apps/web created"), "{s}");
    let s = ok(run_in(
        &["apply", "-f", "-"],
        &deployment("busybox:1.36", 3),
    ));
    assert!(s.contains("deployment.apps/web configured"), "{s}");
    let s = ok(run_in(
        &["apply", "-f", "-"],
        &deployment("busybox:1.36", 3),
    ));
    assert!(s.contains("deployment.apps/web unchanged"), "{s}");
    let d: Value =
        serde_json::from_str(&ok(run(&["get", "deployment", "web", "-o", "json"]))).unwrap();
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["image"], "busybox:1.36",
        "strategic merge kept the container and changed its image"
    );
    assert_eq!(c["command"], json!(["sleep", "3600"]));
    assert_eq!(d["spec"]["replicas"], 3);

    // scale → autoscaling/v1 Scale.
    let s = ok(run(&["scale", "deployment", "web", "--replicas=5"]));
    assert!(s.contains("deployment.apps/web scaled"), "{s}");
    let r = ok(run(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.replicas}",
    ]));
    assert_eq!(r.trim(), "5");

    // get and get -o wide with kubectl's columns (server-side Table).
    let s = ok(run(&["get", "services"]));
    let header: Vec<&str> = s.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ],
        "{s}"
    );
    let row = s
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("{s}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], "ClusterIP");
    assert!(cells[2].starts_with("10."), "{row}");
    assert_eq!(cells[3], "<none>");
    assert_eq!(cells[4], "80/TCP");
    let s = ok(run(&["get", "services", "-o", "wide"]));
    assert!(s.lines().next().unwrap().contains("SELECTOR"), "{s}");
    assert!(s.contains("app=web"), "{s}");

    let s = ok(run_in(&["create", "-f", "-"], POD));
    assert!(s.contains("pod/p1 created"), "{s}");
    let s = ok(run(&["get", "pods", "-o", "wide"]));
    let header: Vec<&str> = s.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        &header[..5],
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{s}"
    );
    assert!(header.contains(&"IP") && header.contains(&"NODE"), "{s}");
    assert!(s.contains("0/1") && s.contains("Pending"), "{s}");
    let s = ok(run(&["get", "deployments"]));
    assert!(s.lines().next().unwrap().contains("UP-TO-DATE"), "{s}");
    // `get all`: the kinds discovery puts in the `all` category, each as a Table.
    let s = ok(run(&["get", "all"]));
    for want in ["pod/p1", "service/web", "deployment.apps/web"] {
        assert!(s.contains(want), "{}: get all lacks {want}: {s}", k.label);
    }
    // `auth can-i` answers from the real authorizer (kubectl ≥ 1.32 asks in protobuf), for the
    // administrator and for a node's credentials.
    let n1_kc = dir.path().join("n1.kubeconfig");
    let o = std::process::Command::new(bin("sluice-control"))
        .args(["token", "create", "--node", "n1", "--data-dir"])
        .arg(&cp.dir)
        .arg("--kubeconfig-out")
        .arg(&n1_kc)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    for (kubeconfig, question, want) in [
        (&kc, &["create", "pods"][..], "yes"),
        (&kc, &["delete", "nodes"][..], "yes"),
        (&n1_kc, &["get", "services"][..], "yes"),
        (&n1_kc, &["patch", "nodes/n1"][..], "yes"),
        (&n1_kc, &["patch", "nodes/n2"][..], "no"),
        (&n1_kc, &["create", "pods"][..], "no"),
        (&n1_kc, &["list", "secrets"][..], "no"),
    ] {
        let mut args = vec!["auth", "can-i"];
        args.extend(question);
        // can-i exits 1 for "no"; its answer is the first word on stdout.
        let o = k.run(kubeconfig, &home, &args);
        let got = out(&o);
        assert_eq!(
            got.split_whitespace().next(),
            Some(want),
            "{}: auth can-i {question:?}: {}",
            k.label,
            text(&o)
        );
    }
    // `auth can-i --list`: the rules the authorizer applies in this namespace.
    let admin_rules = ok(k.run(&kc, &home, &["auth", "can-i", "--list"]));
    assert!(admin_rules.contains("*.*"), "{}: {admin_rules}", k.label);
    let node_rules = ok(k.run(&n1_kc, &home, &["auth", "can-i", "--list"]));
    let line = |resource: &str| {
        node_rules
            .lines()
            .find(|l| l.split_whitespace().next() == Some(resource))
            .unwrap_or_else(|| panic!("{}: no {resource} rule: {node_rules}", k.label))
            .to_string()
    };
    assert!(
        line("services").contains("[get list watch]"),
        "{node_rules}"
    );
    assert!(line("endpointslices.discovery.k8s.io").contains("[get list watch]"));
    assert!(line("nodes").contains("[n1]"), "{node_rules}");
    assert!(
        !node_rules.contains("deployments") && !node_rules.contains("*.*"),
        "{node_rules}"
    );
    ok(run(&["get", "nodes"]));
    ok(run(&["get", "endpoints"]));
    ok(run(&["get", "endpointslices"]));
    ok(run(&["get", "namespaces"]));

    // A Service made while `get -w` runs shows up in its output.
    ok(run_in(
        &["create", "-f", "-"],
        &SVC.replace("name: web", "name: later"),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if line.starts_with("later ") {
                    break;
                }
            }
            Err(_) => panic!(
                "{}: get -w never printed the new service; saw {seen:?}",
                k.label
            ),
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();

    // Invalid input: 422 naming the field.
    let o = run_in(&["create", "-f", "-"], BAD_SVC);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("Invalid") && e.contains("spec.ports[0].port"),
        "{}: {e}",
        k.label
    );

    // delete (waits through a fieldSelector list/watch) and NotFound afterwards.
    let s = ok(run(&["delete", "service", "web"]));
    assert!(s.contains("\"web\" deleted"), "{s}");
    let o = run(&["get", "service", "web"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("NotFound"),
        "{}",
        text(&o)
    );
    let s = ok(run(&["delete", "pod", "p1"]));
    assert!(s.contains("\"p1\" deleted"), "{s}");
    let s = ok(run(&["delete", "deployment", "web"]));
    assert!(s.contains("deleted"), "{s}");
}

fn kubectl_debian_120_workflow(backend: Backend) {
    match Kubectl::debian_120() {
        Some(k) => kubectl_workflow(backend, &k),
        None => skip(
            "Debian kubectl 1.20 not found ($SLUICE_KUBECTL_120, else /opt/kc/usr/bin/kubectl, \
             which .ci/run unpacks)",
        ),
    }
}

fn kubectl_preinstalled_workflow(backend: Backend) {
    match Kubectl::preinstalled() {
        Some(k) => kubectl_workflow(backend, &k),
        None => skip("no preinstalled kubectl on this machine"),
    }
}

/// kubectl's generators — `create namespace|deployment|service`, `expose` — store the same
/// objects whether the client sends JSON (kubectl 1.20) or protobuf (kubectl ≥ 1.32), in one
/// server, object by object, apart from what the server assigns (uid, times, IPs, ports).
fn generators_store_the_same_objects_from_protobuf_and_json(backend: Backend) {
    let (Some(new), Some(old)) = (Kubectl::preinstalled(), Kubectl::debian_120()) else {
        skip("needs both the preinstalled kubectl (protobuf) and Debian's 1.20 (JSON)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(backend, &dir.path().join("data"), &[]).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    for (k, ns) in [(&new, "pb"), (&old, "json")] {
        for args in [
            vec!["create", "namespace", ns],
            vec![
                "-n",
                ns,
                "create",
                "deployment",
                "web",
                "--image=nginx",
                "--port=8080",
            ],
            vec![
                "-n",
                ns,
                "expose",
                "deployment",
                "web",
                "--port=80",
                "--target-port=8080",
            ],
            vec![
                "-n",
                ns,
                "create",
                "service",
                "clusterip",
                "api",
                "--tcp=80:8080",
            ],
            vec![
                "-n",
                ns,
                "create",
                "service",
                "nodeport",
                "np",
                "--tcp=80:8080",
            ],
            vec![
                "-n",
                ns,
                "create",
                "configmap",
                "cfg",
                "--from-literal=a=1",
                "--from-literal=b=two",
            ],
            vec![
                "-n",
                ns,
                "create",
                "secret",
                "generic",
                "pw",
                "--from-literal=user=admin",
                "--type=Opaque",
            ],
            vec!["-n", ns, "create", "serviceaccount", "robot"],
        ] {
            let o = k.run(&cp.kubeconfig, &home, &args);
            assert!(o.status.success(), "{} {args:?}: {}", k.label, text(&o));
        }
    }
    let get = |ns: &str, obj: &str| -> Value {
        let o = new.run(&cp.kubeconfig, &home, &["-n", ns, "get", obj, "-o", "json"]);
        assert!(o.status.success(), "{}", text(&o));
        let mut v: Value = serde_json::from_str(&out(&o)).unwrap();
        let meta = v["metadata"].as_object_mut().unwrap();
        for k in [
            "uid",
            "creationTimestamp",
            "resourceVersion",
            "namespace",
            "name",
            "managedFields",
        ] {
            meta.remove(k);
        }
        // What the client sent is compared; the controllers' status carries its own times.
        if let Some(o) = v.as_object_mut() {
            o.remove("status");
        }
        if let Some(spec) = v["spec"].as_object_mut() {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
            for p in spec
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                p.as_object_mut().unwrap().remove("nodePort");
            }
        }
        v
    };
    for obj in [
        "deployment/web",
        "service/web",
        "service/api",
        "service/np",
        "configmap/cfg",
        "secret/pw",
        "serviceaccount/robot",
    ] {
        assert_eq!(get("pb", obj), get("json", obj), "{obj}");
    }
    let d = get("pb", "deployment/web");
    assert_eq!(d["spec"]["replicas"], 1, "{d}");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
        8080
    );
    let s = get("pb", "service/web");
    assert_eq!(s["spec"]["ports"][0]["targetPort"], 8080, "{s}");
    assert_eq!(s["spec"]["selector"]["app"], "web", "{s}");
}

fn svc_json(name: &str, extra: Value) -> Service {
    let mut v = json!({"metadata": {"name": name}, "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
    if let Some(m) = extra.as_object() {
        for (k, x) in m {
            v["spec"][k] = x.clone();
        }
    }
    serde_json::from_value(v).unwrap()
}

async fn kube_rs_crud_conflict_and_watch(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(backend, dir.path(), &[]).unwrap();
    let client = cp.client().await.unwrap();
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");

    let mut w = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .boxed();
    // The watcher lists first (InitDone), then follows.
    loop {
        if let watcher::Event::InitDone = w.try_next().await.unwrap().unwrap() {
            break;
        }
    }
    let created = svcs
        .create(&PostParams::default(), &svc_json("a", json!({})))
        .await
        .unwrap();
    let ip = created.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
    assert!(ip.starts_with("10."), "{ip}");
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let watcher::Event::Apply(s) = w.try_next().await.unwrap().unwrap() {
                break s;
            }
        }
    })
    .await
    .expect("watch event for the created service");
    assert_eq!(seen.metadata.name.as_deref(), Some("a"));

    // Optimistic concurrency: a replace based on a stale resourceVersion is 409.
    let mut fresh = created.clone();
    fresh.metadata.labels = Some([("v".to_string(), "1".to_string())].into());
    svcs.replace("a", &PostParams::default(), &fresh)
        .await
        .unwrap();
    let mut stale = created.clone();
    stale.metadata.labels = Some([("v".to_string(), "2".to_string())].into());
    match svcs.replace("a", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (409, "Conflict")),
        other => panic!("expected 409, got {other:?}"),
    }
    // Invalid → 422 naming the field.
    let bad: Service = serde_json::from_value(
        json!({"metadata": {"name": "bad"}, "spec": {"ports": [{"port": 80, "protocol": "HTTP"}]}}),
    )
    .unwrap();
    match svcs.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422);
            assert!(
                e.message.contains("spec.ports[0].protocol"),
                "{}",
                e.message
            );
        }
        other => panic!("expected 422, got {other:?}"),
    }
    // Pagination with limit/continue.
    for i in 0..5 {
        svcs.create(
            &PostParams::default(),
            &svc_json(&format!("p{i}"), json!({})),
        )
        .await
        .unwrap();
    }
    let page = svcs.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let token = page.metadata.continue_.clone().expect("continue token");
    let page2 = svcs
        .list(&ListParams::default().limit(10).continue_token(&token))
        .await
        .unwrap();
    // Ours plus the API server's own `kubernetes` Service.
    assert_eq!(page.items.len() + page2.items.len(), 7);
    assert!(page2
        .items
        .iter()
        .chain(&page.items)
        .any(|s| s.metadata.name.as_deref() == Some("kubernetes")));
    // Label and field selectors.
    let l = svcs
        .list(&ListParams::default().labels("v=1"))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 1);
    let f = svcs
        .list(&ListParams::default().fields("metadata.name=p3"))
        .await
        .unwrap();
    assert_eq!(f.items.len(), 1);
    // Merge patch and JSON patch.
    let p = svcs
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"x": "1"}}})),
        )
        .await
        .unwrap();
    assert_eq!(p.metadata.annotations.unwrap()["x"], "1");
    let jp: json_patch_ops::Patch =
        serde_json::from_value(json!([{"op": "add", "path": "/metadata/labels/j", "value": "2"}]))
            .unwrap();
    let p = svcs
        .patch("a", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .unwrap();
    assert_eq!(p.metadata.labels.unwrap()["j"], "2");
    svcs.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(svcs.get_opt("a").await.unwrap().is_none());
}

/// The json-patch crate kube's `Patch::Json` takes.
mod json_patch_ops {
    pub use json_patch::Patch;
}

async fn authentication_and_node_authorization(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(backend, dir.path(), &[]).unwrap();
    let admin = cp.client().await.unwrap();

    // No token: 401.
    let raw = std::fs::read_to_string(&cp.kubeconfig).unwrap();
    let anon: String = raw
        .lines()
        .filter(|l| !l.trim_start().starts_with("token:"))
        .map(|l| if l.trim() == "user:" { "  user: {}" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    let anon_path = dir.path().join("anon.kubeconfig");
    std::fs::write(&anon_path, anon).unwrap();
    let anon = client_from(&anon_path).await.unwrap();
    match Api::<Service>::all(anon).list(&ListParams::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 401),
        other => panic!("expected 401, got {other:?}"),
    }

    // A node token: reads allowed, its own Node writable, another node's not.
    let n1_kc = dir.path().join("n1.kubeconfig");
    let o = std::process::Command::new(bin("sluice-control"))
        .args(["token", "create", "--node", "n1", "--data-dir"])
        .arg(dir.path())
        .arg("--kubeconfig-out")
        .arg(&n1_kc)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let n1 = client_from(&n1_kc).await.unwrap();
    let nodes_n1: Api<Node> = Api::all(n1.clone());
    let nodes_admin: Api<Node> = Api::all(admin.clone());
    let node = |name: &str| -> Node {
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
    };
    nodes_n1
        .create(&PostParams::default(), &node("n1"))
        .await
        .unwrap();
    nodes_admin
        .create(&PostParams::default(), &node("n2"))
        .await
        .unwrap();
    let status =
        Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}));
    nodes_n1
        .patch_status("n1", &PatchParams::default(), &status)
        .await
        .unwrap();
    match nodes_n1
        .patch_status("n2", &PatchParams::default(), &status)
        .await
    {
        Err(kube::Error::Api(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
            assert!(e.message.contains("system:node:n1"), "{}", e.message);
        }
        other => panic!("expected 403, got {other:?}"),
    }
    Api::<Service>::all(n1.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    Api::<EndpointSlice>::all(n1.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    match Api::<Service>::namespaced(n1.clone(), "default")
        .create(&PostParams::default(), &svc_json("x", json!({})))
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403),
        other => panic!("expected 403, got {other:?}"),
    }
    // Pod status: only for pods bound to this node.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    for (name, node) in [("on1", "n1"), ("on2", "n2")] {
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}})).unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    let pods_n1: Api<Pod> = Api::namespaced(n1.clone(), "default");
    let running = Patch::Merge(json!({"status": {"phase": "Running", "podIP": "10.244.0.9"}}));
    pods_n1
        .patch_status("on1", &PatchParams::default(), &running)
        .await
        .unwrap();
    match pods_n1
        .patch_status("on2", &PatchParams::default(), &running)
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403),
        other => panic!("expected 403, got {other:?}"),
    }

    // Secrets: a node reads those its pods reference (by name, or listed by
    // `metadata.name`, as kubelets watch them), and no others.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "default");
    for name in ["mine", "theirs"] {
        let s: Secret =
            serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {"k": "v"}}))
                .unwrap();
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": "uses"}, "spec": {
        "nodeName": "n1", "containers": [{"name": "c", "image": "busybox",
        "envFrom": [{"secretRef": {"name": "mine"}}]}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": "uses2"}, "spec": {
        "nodeName": "n2", "volumes": [{"name": "v", "secret": {"secretName": "theirs"}}],
        "containers": [{"name": "c", "image": "busybox"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    let secrets_n1: Api<Secret> = Api::namespaced(n1, "default");
    assert_eq!(
        secrets_n1.get("mine").await.unwrap().data.unwrap()["k"].0,
        b"v"
    );
    let one = secrets_n1
        .list(&ListParams::default().fields("metadata.name=mine"))
        .await
        .unwrap();
    assert_eq!(one.items.len(), 1);
    for denied in [
        secrets_n1.get("theirs").await.map(|_| ()),
        secrets_n1.list(&ListParams::default()).await.map(|_| ()),
        secrets_n1
            .list(&ListParams::default().fields("metadata.name=theirs"))
            .await
            .map(|_| ()),
    ] {
        match denied {
            Err(kube::Error::Api(e)) => assert_eq!(e.code, 403),
            other => panic!("expected 403, got {other:?}"),
        }
    }
}

async fn restart_keeps_objects_allocations_and_watchers(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start_with(backend, dir.path(), &[]).unwrap();
    let client = cp.client().await.unwrap();
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let nodes: Api<Node> = Api::all(client.clone());

    let a = svcs
        .create(
            &PostParams::default(),
            &svc_json("a", json!({"type": "NodePort"})),
        )
        .await
        .unwrap();
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap(),
        )
        .await
        .unwrap();
    let cidr = eventually(Duration::from_secs(10), "podCIDR for n1", || async {
        nodes.get("n1").await.ok()?.spec?.pod_cidr
    })
    .await;
    let rv0 = svcs
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    // A kube-rs watcher running across the restart.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let wapi = Api::<Service>::all(client.clone());
    // With backoff, as a real consumer runs it: without, a watcher retries a dead server in a
    // tight loop that starves the runtime.
    let watch_task = tokio::spawn(async move {
        let mut w = watcher(wapi, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(ev) = w.next().await {
            if let Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) = ev {
                let _ = tx.send(s.metadata.name.unwrap_or_default());
            }
        }
    });

    let b = svcs
        .create(&PostParams::default(), &svc_json("b", json!({})))
        .await
        .unwrap();
    cp.restart().unwrap();
    let client = cp.client().await.unwrap();
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let nodes: Api<Node> = Api::all(client.clone());

    // Every object and allocation is still there.
    let a2 = svcs.get("a").await.unwrap();
    assert_eq!(
        a2.spec.as_ref().unwrap().cluster_ip,
        a.spec.as_ref().unwrap().cluster_ip
    );
    assert_eq!(
        a2.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].node_port,
        a.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].node_port
    );
    assert_eq!(a2.metadata.resource_version, a.metadata.resource_version);
    assert!(svcs.get("b").await.is_ok());
    assert_eq!(
        nodes.get("n1").await.unwrap().spec.unwrap().pod_cidr,
        Some(cidr.clone())
    );

    // A new node gets a different CIDR; a new service a different IP.
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "n2"}})).unwrap(),
        )
        .await
        .unwrap();
    let cidr2 = eventually(Duration::from_secs(10), "podCIDR for n2", || async {
        nodes.get("n2").await.ok()?.spec?.pod_cidr
    })
    .await;
    assert_ne!(cidr, cidr2);
    let c = svcs
        .create(&PostParams::default(), &svc_json("c", json!({})))
        .await
        .unwrap();
    let ips: std::collections::BTreeSet<_> = [&a, &b, &c]
        .iter()
        .map(|s| s.spec.as_ref().unwrap().cluster_ip.clone().unwrap())
        .collect();
    assert_eq!(
        ips.len(),
        3,
        "no ClusterIP handed out twice across the restart"
    );

    // A watch resuming from the pre-restart resourceVersion gets exactly what it missed.
    let mut stream = svcs
        .watch(&WatchParams::default().timeout(10), &rv0)
        .await
        .unwrap()
        .boxed();
    let mut names = Vec::new();
    while names.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), stream.try_next()).await {
            Ok(Ok(Some(WatchEvent::Added(s)))) => names.push(s.metadata.name.unwrap()),
            Ok(Ok(Some(WatchEvent::Bookmark(_)))) => {}
            other => panic!("unexpected watch result {other:?} after {names:?}"),
        }
    }
    assert_eq!(names, ["b", "c"]);

    // The long-running kube-rs watcher reconnected and saw "c".
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(n) = rx.recv().await {
            if n == "c" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(got, Ok(true), "the watcher resumed after the restart");
    watch_task.abort();
}

async fn endpointslices_follow_pods_and_node_heartbeats(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(
        backend,
        dir.path(),
        &[
            "--node-monitor-grace-period",
            "3",
            "--node-monitor-period",
            "1",
        ],
    )
    .unwrap();
    let client = cp.client().await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "kube-node-lease");

    nodes
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}}})).unwrap())
        .await
        .unwrap();
    nodes
        .patch_status("n1", &PatchParams::default(), &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}})))
        .await
        .unwrap();
    let lease: k8s_openapi::api::coordination::v1::Lease = serde_json::from_value(json!({
        "metadata": {"name": "n1"},
        "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40, "renewTime": "2026-01-01T00:00:00.000000Z"}
    }))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    // Heartbeats every 500 ms until told to stop.
    let beating = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    {
        let leases = leases.clone();
        let beating = beating.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            loop {
                if beating.load(std::sync::atomic::Ordering::SeqCst) {
                    i += 1;
                    let t = format!("2026-01-01T00:00:{:02}.{:06}Z", i % 60, i);
                    let _ = leases
                        .patch(
                            "n1",
                            &PatchParams::default(),
                            &Patch::Merge(json!({"spec": {"renewTime": t}})),
                        )
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    svcs.create(&PostParams::default(), &svc_json("web", json!({})))
        .await
        .unwrap();
    for (i, ready) in [(1, "True"), (2, "False")] {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("web-{i}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox", "ports": [{"name": "http", "containerPort": 8080}]}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
        pods.patch_status(
            &format!("web-{i}"),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "podIP": format!("10.244.0.{i}"), "conditions": [{"type": "Ready", "status": ready}]}})),
        )
        .await
        .unwrap();
    }

    let ready_of = |s: &EndpointSlice| -> Vec<(String, bool, bool, bool)> {
        let mut v: Vec<_> = s
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.clone().unwrap_or_default();
                (
                    e.addresses[0].clone(),
                    c.ready.unwrap_or(false),
                    c.serving.unwrap_or(false),
                    c.terminating.unwrap_or(false),
                )
            })
            .collect();
        v.sort();
        v
    };
    let want = |state: Vec<(&str, bool, bool, bool)>| -> Vec<(String, bool, bool, bool)> {
        state
            .into_iter()
            .map(|(a, r, s, t)| (a.to_string(), r, s, t))
            .collect()
    };
    let slice_state = || async {
        let l = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .ok()?;
        if l.items.len() != 1 {
            return None;
        }
        Some(l.items[0].clone())
    };
    let s = eventually(Duration::from_secs(10), "slice with both pods", || async {
        let s = slice_state().await?;
        (ready_of(&s)
            == want(vec![
                ("10.244.0.1", true, true, false),
                ("10.244.0.2", false, false, false),
            ]))
        .then_some(s)
    })
    .await;
    let port = &s.ports.as_ref().unwrap()[0];
    assert_eq!(
        port.port,
        Some(8080),
        "named targetPort resolved from the pod"
    );
    assert_eq!(s.endpoints[0].zone.as_deref(), Some("z1"));
    assert_eq!(s.endpoints[0].node_name.as_deref(), Some("n1"));
    // Legacy Endpoints mirror (written after the slices, so wait for it too).
    let eps_api: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    eventually(Duration::from_secs(10), "legacy Endpoints", || async {
        let ep = eps_api.get("web").await.ok()?;
        let subset = ep.subsets?.into_iter().next()?;
        let ready: Vec<String> = subset.addresses?.into_iter().map(|a| a.ip).collect();
        let not_ready: Vec<String> = subset
            .not_ready_addresses?
            .into_iter()
            .map(|a| a.ip)
            .collect();
        (ready == ["10.244.0.1"] && not_ready == ["10.244.0.2"]).then_some(())
    })
    .await;

    // Heartbeats stop → Ready Unknown → endpoints on n1 not ready; resume → recover.
    beating.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually(Duration::from_secs(15), "node Ready=Unknown", || async {
        let n = nodes.get("n1").await.ok()?;
        let c = n
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        (c.status == "Unknown").then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "endpoints not ready on the lost node",
        || async {
            let s = slice_state().await?;
            (ready_of(&s)
                == want(vec![
                    ("10.244.0.1", false, false, false),
                    ("10.244.0.2", false, false, false),
                ]))
            .then_some(())
        },
    )
    .await;
    beating.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually(Duration::from_secs(15), "endpoints ready again", || async {
        let s = slice_state().await?;
        (ready_of(&s)
            == want(vec![
                ("10.244.0.1", true, true, false),
                ("10.244.0.2", false, false, false),
            ]))
        .then_some(())
    })
    .await;

    // Graceful delete of a bound pod: terminating (serving, not ready), then gone.
    pods.delete("web-1", &DeleteParams::default().grace_period(2))
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "terminating endpoint", || async {
        let s = slice_state().await?;
        (ready_of(&s)
            == want(vec![
                ("10.244.0.1", false, true, true),
                ("10.244.0.2", false, false, false),
            ]))
        .then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(15),
        "endpoint removed after the grace period",
        || async {
            let s = slice_state().await?;
            (ready_of(&s) == want(vec![("10.244.0.2", false, false, false)])).then_some(())
        },
    )
    .await;

    // Deleting the service removes its slices.
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(10), "slices removed", || async {
        let l = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .ok()?;
        l.items.is_empty().then_some(())
    })
    .await;
}

async fn slow_watcher_is_closed_without_stalling_writers_or_others(backend: Backend) {
    use futures::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    // A small per-watcher allowance so the test needs little data to overflow it.
    let cp = ControlPlane::start_with(backend, dir.path(), &["--watch-buffer", "16"]).unwrap();
    let client = cp.client().await.unwrap();
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let rv = svcs
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let watch_req = || {
        http::Request::get(format!(
            "/api/v1/namespaces/default/services?watch=true&resourceVersion={rv}"
        ))
        .body(Vec::new())
        .unwrap()
    };
    // The slow watcher: its own connection, never read until the end.
    let slow_client = cp.client().await.unwrap();
    let slow = slow_client.request_stream(watch_req()).await.unwrap();
    // A healthy watcher reading everything.
    let fast_client = cp.client().await.unwrap();
    let fast = fast_client.request_stream(watch_req()).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut lines = fast.lines();
        let mut n = 0;
        while n < 300 {
            match tokio::time::timeout(Duration::from_secs(20), lines.next()).await {
                Ok(Some(Ok(l))) if l.contains("\"ADDED\"") => n += 1,
                Ok(Some(Ok(_))) => {}
                other => panic!("fast watcher stopped after {n} events: {other:?}"),
            }
        }
        n
    });
    // 300 services with 64 KiB annotations: ~20 MB, far more than socket buffers hold.
    let big = "x".repeat(64 * 1024);
    let start = std::time::Instant::now();
    for i in 0..300 {
        let mut s = svc_json(&format!("s{i}"), json!({}));
        s.metadata.annotations = Some([("pad".to_string(), big.clone())].into());
        svcs.create(&PostParams::default(), &s).await.unwrap();
    }
    let took = start.elapsed();
    assert_eq!(
        reader.await.unwrap(),
        300,
        "the healthy watcher got every event"
    );
    assert!(
        took < Duration::from_secs(60),
        "writes were not held up: {took:?}"
    );
    // The slow watcher, read at last, ends with a 410 ERROR telling it to relist.
    let mut lines = slow.lines();
    let mut last = String::new();
    let mut added = 0;
    while let Ok(Some(Ok(l))) = tokio::time::timeout(Duration::from_secs(20), lines.next()).await {
        if l.contains("\"ADDED\"") {
            added += 1;
        }
        last = l;
    }
    let ev: Value = serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {last:.200}"));
    assert_eq!(ev["type"], "ERROR", "after {added} events");
    assert_eq!(ev["object"]["code"], 410);
    assert!(
        added < 300,
        "the slow watcher was cut off, not fed everything ({added})"
    );
}

sluice_tests::on_both_stores!(kubectl_debian_120_workflow, kubectl_preinstalled_workflow, generators_store_the_same_objects_from_protobuf_and_json; async: kube_rs_crud_conflict_and_watch, authentication_and_node_authorization, restart_keeps_objects_allocations_and_watchers, endpointslices_follow_pods_and_node_heartbeats, slow_watcher_is_closed_without_stalling_writers_or_others);
