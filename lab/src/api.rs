//! The lab's Kubernetes API calls. The API server listens inside the lab namespace, so each
//! call runs on a dedicated thread that has joined that namespace (sockets belong to the
//! namespace of the thread that creates them) with its own current-thread runtime.

use std::path::Path;

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::{LabState, NodeRec, PodRec};

/// Runs `f` inside network namespace `ns` on a fresh thread.
fn in_netns<T, F, Fut>(ns: &str, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || -> anyhow::Result<T> {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // Only this thread moves; the rest of the process stays where it was.
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("API thread panicked"))?
}

async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

/// The annotation marking a lab process pod as a *mirror pod*: kubelet's name for the API's
/// view of a pod the node runs from elsewhere (a static pod). A node agent must not run it
/// through its container runtime: `sluice-lab` runs the process and reports its status.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Creates the Pod object (as admin, bound to its node, marked as a mirror pod so the node's
/// agent leaves it to the lab) and reports it Running and Ready with the node's own
/// credentials, as a kubelet would.
pub fn create_running_pod(
    state: &LabState,
    node: &NodeRec,
    pod: &PodRec,
    labels: &serde_json::Map<String, serde_json::Value>,
    cmd: &[String],
) -> anyhow::Result<()> {
    let admin = state.kubeconfig.clone();
    let node_kc = node.kubeconfig.clone();
    let (ns, name, node_name, ip, node_ip) = (
        pod.namespace.clone(),
        pod.name.clone(),
        node.name.clone(),
        pod.ip.clone(),
        node.ip.clone(),
    );
    let obj: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": name, "namespace": ns, "labels": labels,
            "annotations": {MIRROR_ANNOTATION: "sluice-lab", "kubernetes.io/config.source": "sluice-lab"},
        },
        "spec": {"nodeName": node_name, "containers": [{"name": "main", "image": "lab/none", "command": cmd}]},
    }))?;
    in_netns(&state.lab_netns, move || async move {
        let pods: Api<Pod> = Api::namespaced(client(&admin).await?, &ns);
        pods.create(&PostParams::default(), &obj).await?;
        let as_node: Api<Pod> = Api::namespaced(client(&node_kc).await?, &ns);
        let now = now_rfc3339();
        let status = json!({"status": {
            "phase": "Running",
            "podIP": ip, "podIPs": [{"ip": ip}],
            "hostIP": node_ip, "hostIPs": [{"ip": node_ip}],
            "startTime": now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
            ],
            "containerStatuses": [{"name": "main", "image": "lab/none", "imageID": "", "ready": true,
                                   "restartCount": 0, "started": true, "state": {"running": {"startedAt": now}}}],
        }});
        as_node
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await?;
        Ok(())
    })
}

/// Deletes the Pod object at once (the lab already stopped it, like a kubelet confirming).
pub fn delete_pod(state: &LabState, pod: &PodRec) -> anyhow::Result<()> {
    let admin = state.kubeconfig.clone();
    let (ns, name) = (pod.namespace.clone(), pod.name.clone());
    in_netns(&state.lab_netns, move || async move {
        let pods: Api<Pod> = Api::namespaced(client(&admin).await?, &ns);
        match pods
            .delete(&name, &DeleteParams::default().grace_period(0))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    })
}

fn now_rfc3339() -> String {
    // RFC 3339, seconds, UTC — what the apiserver stores.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}
