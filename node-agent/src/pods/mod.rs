//! Running the pods bound to this node through containerd's CRI, as kubelet does.
//!
//! Data flow: a watch on Pods with `spec.nodeName=<node>` → one [`worker::Worker`] task per
//! pod UID, fed every change of its Pod object → CRI calls (sandbox: containerd runs the CNI
//! plugin from the node's conflist; containers: image check or pull, create, start, stop) →
//! the pod's status, patched with the node's credentials. After the first full list, and then
//! every [`GC_EVERY`], sandboxes the agent made (label `sluice.dev/managed-by`) for pods
//! that no longer exist are removed; sandboxes of pods that still exist are adopted by their
//! workers, so an agent restart keeps running containers running.
//!
//! Pure parts, unit-tested: [`spec`] (Pod → CRI configs, environment), [`status`] (kubelet's
//! status and phase rules), [`probe`] (probe timing, back-off), [`volumes`] (the pods'
//! volume directories and mounts). Thin parts: [`cri`] and the
//! workers' calls. [`server`] is the kubelet API the API server's `pods/log` and `pods/exec`
//! reach (`/containerLogs`, `/exec` on `--kubelet-port`).

pub mod cri;
pub mod probe;
pub mod server;
pub mod spec;
pub mod status;
pub mod volumes;
pub mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ContainerImage, Pod};
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio::sync::mpsc;

use self::cri::Cri;
use self::worker::{Ctx, Update, Worker};

/// Period of the orphaned-sandbox sweep.
pub const GC_EVERY: Duration = Duration::from_secs(30);

/// Runs the pod manager until the process ends.
pub async fn run(client: kube::Client, cri: Cri, settings: spec::Settings, node: String) {
    let ctx = Arc::new(Ctx {
        cri,
        client: client.clone(),
        settings,
        node: node.clone(),
    });
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher::watcher(api, cfg).default_backoff().boxed();
    let mut workers: HashMap<String, mpsc::UnboundedSender<Update>> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut listing: Option<HashSet<String>> = None;
    let mut synced = false;
    let mut gc = tokio::time::interval(GC_EVERY);
    gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(Event::Init)) => listing = Some(HashSet::new()),
                Some(Ok(Event::InitApply(pod))) => {
                    if let Some(l) = &mut listing {
                        l.insert(spec::uid(&pod).to_string());
                    }
                    deliver(&ctx, &mut workers, &done_tx, pod);
                }
                Some(Ok(Event::InitDone)) => {
                    // Pods deleted while the watch was down.
                    if let Some(seen) = listing.take() {
                        for (uid, tx) in &workers {
                            if !seen.contains(uid) {
                                let _ = tx.send(Update::Deleted);
                            }
                        }
                    }
                    if !synced {
                        synced = true;
                        tracing::info!(pods = workers.len(), "pod list synced; adopting and sweeping sandboxes");
                        sweep(&ctx, &workers).await;
                    }
                }
                Some(Ok(Event::Apply(pod))) => deliver(&ctx, &mut workers, &done_tx, pod),
                Some(Ok(Event::Delete(pod))) => {
                    if let Some(tx) = workers.get(spec::uid(&pod)) {
                        let _ = tx.send(Update::Deleted);
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying with backoff"),
                None => return,
            },
            Some(uid) = done_rx.recv() => {
                workers.remove(&uid);
            }
            _ = gc.tick() => {
                if synced {
                    sweep(&ctx, &workers).await;
                }
            }
        }
    }
}

fn deliver(
    ctx: &Arc<Ctx>,
    workers: &mut HashMap<String, mpsc::UnboundedSender<Update>>,
    done: &mpsc::UnboundedSender<String>,
    pod: Pod,
) {
    let uid = spec::uid(&pod).to_string();
    if uid.is_empty() || is_mirror(&pod) {
        return;
    }
    if let Some(tx) = workers.get(&uid) {
        if tx.send(Update::Pod(Box::new(pod.clone()))).is_ok() {
            return;
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    workers.insert(uid.clone(), tx);
    let w = Worker::new(ctx.clone(), pod);
    let done = done.clone();
    tokio::spawn(async move {
        w.run(rx).await;
        let _ = done.send(uid);
    });
}

/// kubelet's mirror-pod annotation: the Pod object only mirrors a pod something else on the
/// node runs (a static pod; the lab's process pods), so the agent must not run it too.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Whether a pod is a mirror pod.
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
}

/// Removes sandboxes (with their containers) of pods that have no worker.
async fn sweep(ctx: &Ctx, workers: &HashMap<String, mpsc::UnboundedSender<Update>>) {
    let sandboxes = match ctx.cri.sandboxes().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "listing sandboxes failed");
            return;
        }
    };
    for sb in sandboxes {
        let uid = sb
            .labels
            .get(cri::labels::POD_UID)
            .cloned()
            .unwrap_or_default();
        if workers.contains_key(&uid) {
            continue;
        }
        let name = sb
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        tracing::info!(sandbox = %sb.id, pod = %name, %uid, "removing the sandbox of a pod that is gone");
        if let Err(e) = ctx.cri.remove_sandbox(&sb.id).await {
            tracing::warn!(sandbox = %sb.id, error = %e, "removing an orphaned sandbox failed");
        }
    }
}

/// The runtime's images as `status.images` lists them (names: tags and digests; size).
pub async fn node_images(cri: &Cri) -> Result<Vec<ContainerImage>, tonic::Status> {
    let mut images: Vec<ContainerImage> = cri
        .images()
        .await?
        .into_iter()
        .map(|i| ContainerImage {
            names: Some(
                i.repo_digests
                    .iter()
                    .chain(i.repo_tags.iter())
                    .cloned()
                    .collect(),
            ),
            size_bytes: Some(i.size as i64),
        })
        .collect();
    // Largest first, as kubelet sorts them.
    images.sort_by_key(|i| std::cmp::Reverse(i.size_bytes));
    Ok(images)
}
