//! The OpenAPI documents, through the clients that read them: `kubectl explain` (kubectl 1.32
//! reads `/openapi/v3`, Debian's 1.20 the protobuf `/openapi/v2`) and client-side validation of
//! `kubectl apply` (both read `/openapi/v2`).

use sluice_tests::{skip, text, Backend, ControlPlane, Kubectl};

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 25%
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
        image: busybox:1.35
        command: ["sleep", "3600"]
        resources:
          limits: {cpu: 1, memory: 64Mi}
        ports:
        - name: http
          containerPort: 8080
"#;

/// explain and validated apply with one kubectl against a fresh control plane.
fn explain_and_apply(backend: Backend, k: &Kubectl) {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(backend, &dir.path().join("data"), &[]).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let kc = cp.kubeconfig.clone();
    let ok = |o: std::process::Output| {
        assert!(o.status.success(), "{}: {}", k.label, text(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    };

    let s = ok(k.run(&kc, &home, &["explain", "deployment.spec.strategy"]));
    assert!(
        s.contains("The deployment strategy to use to replace existing pods with new ones."),
        "{}: {s}",
        k.label
    );
    assert!(s.contains("rollingUpdate"), "{}: {s}", k.label);
    assert!(s.contains("Deployment"), "{}: {s}", k.label);

    let s = ok(k.run(&kc, &home, &["explain", "pods"]));
    assert!(
        s.contains("Pod is a collection of containers that can run on a host."),
        "{}: {s}",
        k.label
    );
    assert!(s.contains("spec"), "{}: {s}", k.label);

    // Client-side apply with validation on (the default): accepted, then changed (a
    // strategic merge patch computed by kubectl), then an unknown field is refused by the
    // client against the served schema.
    let s = ok(k.run_stdin(&kc, &home, &["apply", "-f", "-"], DEPLOYMENT));
    assert!(
        s.contains("deployment.apps/web created"),
        "{}: {s}",
        k.label
    );
    let changed = DEPLOYMENT
        .replace("replicas: 1", "replicas: 2")
        .replace("busybox:1.35", "busybox:1.36");
    let s = ok(k.run_stdin(
        &kc,
        &home,
        &["apply", "--validate=true", "-f", "-"],
        &changed,
    ));
    assert!(
        s.contains("deployment.apps/web configured"),
        "{}: {s}",
        k.label
    );
    let s = ok(k.run(
        &kc,
        &home,
        &[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.replicas} {.spec.template.spec.containers[*].image}",
        ],
    ));
    assert_eq!(s.trim(), "2 busybox:1.36", "{}", k.label);

    let bogus = DEPLOYMENT.replace("  replicas: 1", "  replicas: 1\n  bogus: 1");
    let o = k.run_stdin(&kc, &home, &["apply", "-f", "-"], &bogus);
    assert!(!o.status.success(), "{}: {}", k.label, text(&o));
    assert!(text(&o).contains("bogus"), "{}: {}", k.label, text(&o));
}

fn explain_with_preinstalled_kubectl(backend: Backend) {
    match Kubectl::preinstalled() {
        Some(k) => explain_and_apply(backend, &k),
        None => skip("no preinstalled kubectl on this machine"),
    }
}

fn explain_with_kubectl_120(backend: Backend) {
    match Kubectl::debian_120() {
        Some(k) => explain_and_apply(backend, &k),
        None => skip("Debian's kubectl 1.20 is not unpacked (SLUICE_KUBECTL_120 or /opt/kc)"),
    }
}

sluice_tests::on_both_stores!(explain_with_preinstalled_kubectl, explain_with_kubectl_120; async: );
