//! One task per pod (kubelet's pod worker): it owns the pod's sandbox and containers in the
//! runtime, wakes on every change of the Pod object and at least once a second, and each time
//! makes the runtime match the spec, runs the probes that are due, and writes the status when
//! it changed. A pod that is deleted (or has a deletionTimestamp) is stopped gracefully —
//! preStop hooks, then the runtime's stop signal, SIGKILL at the end of the grace period — its
//! sandbox removed (CNI DEL), its final status written, and the Pod object deleted with grace
//! 0, which is the node's confirmation; then the task ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Event, EventSource, ObjectReference, Pod, PodStatus, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;
use tokio::sync::mpsc;

use super::cri::{labels, Cri};
use super::probe::{Backoff, Kind, Prober};
use super::spec::{self, EnvSources, Settings};
use super::status::{self as pstatus, ContainerView, Observed, PodView, RunState};
use super::volumes;

/// Longest sleep between two syncs of a pod.
const POLL: Duration = Duration::from_secs(1);
/// Bound on an image pull (no registry may be reachable: fail, never hang).
const PULL_TIMEOUT: Duration = Duration::from_secs(30);
/// Grace period when the Pod object is already gone (kubelet's minimum).
const GONE_GRACE: i64 = 2;

/// What the worker shares with the others.
pub struct Ctx {
    /// The runtime.
    pub cri: Cri,
    /// The API, with the node's credentials.
    pub client: kube::Client,
    /// Translation settings.
    pub settings: Settings,
    /// This node's name (the Events' source host).
    pub node: String,
}

/// Event types.
#[derive(Debug, Clone, Copy)]
enum EventType {
    Normal,
    Warning,
}

/// A message to a worker.
pub enum Update {
    /// The Pod object changed.
    Pod(Box<Pod>),
    /// The Pod object is gone.
    Deleted,
}

/// Per-container bookkeeping that the runtime does not keep.
#[derive(Default)]
struct Track {
    backoff: Backoff,
    /// While backing off: when the restart may happen, and the container it replaces.
    restart_at: Option<(Instant, String)>,
    image_backoff: Backoff,
    image_retry_at: Option<Instant>,
    /// A pull in flight: it runs beside the worker, so the pod's status keeps being written
    /// (ContainerCreating) while it lasts.
    pull: Option<tokio::task::JoinHandle<Result<String, String>>>,
    waiting: Option<(String, String)>,
    /// Probers of the current container (`probes_for`).
    probes: Vec<Prober>,
    probes_for: String,
}

struct Sandbox {
    id: String,
    attempt: u32,
    ip: String,
}

/// One pod's worker.
pub struct Worker {
    ctx: Arc<Ctx>,
    pod: Pod,
    gone: bool,
    discovered: bool,
    sandbox: Option<Sandbox>,
    tracks: HashMap<String, Track>,
    written: Option<PodStatus>,
    start_time: Option<Timestamp>,
}

/// Errors of one sync pass (logged; the pass is retried).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A runtime call failed.
    #[error("{what}: {status}")]
    Cri {
        /// The call.
        what: &'static str,
        /// What the runtime said.
        status: tonic::Status,
    },
    /// An API call failed.
    #[error("{what}")]
    Api {
        /// The call.
        what: &'static str,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

fn cri_err(what: &'static str) -> impl FnOnce(tonic::Status) -> Error {
    move |status| Error::Cri { what, status }
}

impl Worker {
    /// A worker for `pod`.
    pub fn new(ctx: Arc<Ctx>, pod: Pod) -> Worker {
        Worker {
            ctx,
            pod,
            gone: false,
            discovered: false,
            sandbox: None,
            tracks: HashMap::new(),
            written: None,
            start_time: None,
        }
    }

    /// Records a kubelet-style Event about one of the pod's containers (`kubectl describe
    /// pod` shows them), written in the background: an Event is never worth a slower sync.
    fn event(&self, container: &str, kind: EventType, reason: &str, message: String) {
        self.events(container, vec![(kind, reason, message)]);
    }

    /// Several Events, written in order.
    fn events(&self, container: &str, list: Vec<(EventType, &str, String)>) {
        let api: Api<Event> = Api::namespaced(self.ctx.client.clone(), spec::ns(&self.pod));
        let now = Timestamp::now();
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let evs: Vec<Event> = list
            .into_iter()
            .map(|(kind, reason, message)| Event {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{name}.")),
                    namespace: Some(spec::ns(&self.pod).to_string()),
                    ..Default::default()
                },
                involved_object: ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(name.clone()),
                    namespace: Some(spec::ns(&self.pod).to_string()),
                    uid: self.pod.metadata.uid.clone(),
                    field_path: (!container.is_empty())
                        .then(|| format!("spec.containers{{{container}}}")),
                    ..Default::default()
                },
                reason: Some(reason.to_string()),
                message: Some(message),
                type_: Some(format!("{kind:?}")),
                source: Some(EventSource {
                    component: Some("kubelet".into()),
                    host: Some(self.ctx.node.clone()),
                }),
                // Legacy-style (no eventTime), as kubelet's recorder writes them.
                reporting_component: Some("kubelet".into()),
                reporting_instance: Some(self.ctx.node.clone()),
                first_timestamp: Some(Time(now)),
                last_timestamp: Some(Time(now)),
                count: Some(1),
                ..Default::default()
            })
            .collect();
        tokio::spawn(async move {
            for ev in evs {
                if let Err(e) = api.create(&PostParams::default(), &ev).await {
                    tracing::debug!(error = %e, "writing an event failed");
                }
            }
        });
    }

    fn key(&self) -> String {
        format!(
            "{}/{}",
            spec::ns(&self.pod),
            self.pod.metadata.name.as_deref().unwrap_or_default()
        )
    }

    /// Runs until the pod is gone and its containers are removed.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Update>) {
        loop {
            let wait = match self.sync().await {
                Ok(None) => return,
                Ok(Some(d)) => d,
                Err(e) => {
                    tracing::warn!(pod = %self.key(), error = %format!("{e:#}"), "pod sync failed; retrying");
                    Duration::from_secs(2)
                }
            };
            let first = tokio::select! {
                u = rx.recv() => Some(u),
                _ = tokio::time::sleep(wait) => None,
            };
            if let Some(u) = first {
                self.take(u);
                while let Ok(u) = rx.try_recv() {
                    self.take(Some(u));
                }
            }
        }
    }

    fn take(&mut self, u: Option<Update>) {
        match u {
            Some(Update::Pod(p)) => self.pod = *p,
            Some(Update::Deleted) | None => self.gone = true,
        }
    }

    /// One pass. `None`: the worker is done.
    async fn sync(&mut self) -> Result<Option<Duration>, Error> {
        if !self.discovered {
            self.discover().await?;
        }
        if self.gone || self.pod.metadata.deletion_timestamp.is_some() {
            self.terminate().await?;
            return Ok(None);
        }
        let phase = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if matches!(phase.as_str(), "Succeeded" | "Failed") {
            // A finished pod keeps its containers' records but not its sandbox.
            if let Some(sb) = &self.sandbox {
                let id = sb.id.clone();
                self.ctx
                    .cri
                    .rt
                    .clone()
                    .stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id })
                    .await
                    .map_err(cri_err("StopPodSandbox"))?;
            }
            return Ok(Some(Duration::from_secs(10)));
        }
        if self.start_time.is_none() {
            self.start_time = Some(Timestamp::now());
        }
        let mut next = Instant::now() + POLL;
        let view = match self.ensure_sandbox().await {
            Ok(()) => self.sync_containers(&mut next).await?,
            Err(e) => {
                tracing::warn!(pod = %self.key(), error = %format!("{e:#}"), "sandbox not ready");
                self.waiting_view(&e.to_string())
            }
        };
        self.write_status(&view).await?;
        Ok(Some(next.saturating_duration_since(Instant::now())))
    }

    /// Finds what an earlier run of the agent left for this pod: the newest sandbox is
    /// adopted (its containers keep running), older ones are removed.
    async fn discover(&mut self) -> Result<(), Error> {
        let uid = spec::uid(&self.pod).to_string();
        let mut mine: Vec<cri::PodSandbox> = self
            .ctx
            .cri
            .sandboxes()
            .await
            .map_err(cri_err("ListPodSandbox"))?
            .into_iter()
            .filter(|s| s.labels.get(labels::POD_UID) == Some(&uid))
            .collect();
        mine.sort_by_key(|s| std::cmp::Reverse(s.metadata.as_ref().map_or(0, |m| m.attempt)));
        let mut it = mine.into_iter();
        if let Some(newest) = it.next() {
            let st = self
                .ctx
                .cri
                .sandbox_status(&newest.id)
                .await
                .map_err(cri_err("PodSandboxStatus"))?;
            let ip = st.and_then(|s| s.network).map(|n| n.ip).unwrap_or_default();
            tracing::info!(pod = %self.key(), sandbox = %newest.id, "adopted the pod's sandbox");
            self.sandbox = Some(Sandbox {
                id: newest.id,
                attempt: newest.metadata.map_or(0, |m| m.attempt),
                ip,
            });
        }
        for old in it {
            self.ctx
                .cri
                .remove_sandbox(&old.id)
                .await
                .map_err(cri_err("RemovePodSandbox"))?;
        }
        self.discovered = true;
        Ok(())
    }

    async fn ensure_sandbox(&mut self) -> Result<(), Error> {
        let mut attempt = 0;
        if let Some(sb) = &self.sandbox {
            let st = self
                .ctx
                .cri
                .sandbox_status(&sb.id)
                .await
                .map_err(cri_err("PodSandboxStatus"))?;
            if st
                .as_ref()
                .is_some_and(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
            {
                return Ok(());
            }
            // The sandbox died (its pause process, say): a new one, and every container with it.
            tracing::info!(pod = %self.key(), sandbox = %sb.id, "sandbox is not ready; replacing it");
            attempt = sb.attempt + 1;
            let id = sb.id.clone();
            self.ctx
                .cri
                .remove_sandbox(&id)
                .await
                .map_err(cri_err("RemovePodSandbox"))?;
            self.sandbox = None;
        }
        let config = spec::sandbox_config(&self.ctx.settings, &self.pod, attempt);
        let _ = std::fs::create_dir_all(&config.log_directory);
        let t = Instant::now();
        let id = self
            .ctx
            .cri
            .rt
            .clone()
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .map_err(cri_err("RunPodSandbox"))?
            .into_inner()
            .pod_sandbox_id;
        let ip = self
            .ctx
            .cri
            .sandbox_status(&id)
            .await
            .map_err(cri_err("PodSandboxStatus"))?
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        tracing::info!(pod = %self.key(), sandbox = %id, %ip, took = ?t.elapsed(), "sandbox running");
        self.sandbox = Some(Sandbox { id, attempt, ip });
        Ok(())
    }

    /// A view in which every container waits with `message` (the sandbox failed).
    fn waiting_view(&self, message: &str) -> PodView {
        let spec = self.pod.spec.clone().unwrap_or_default();
        PodView {
            sandbox_ready: false,
            pod_ip: String::new(),
            start_time: self.start_time,
            containers: spec
                .containers
                .iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        ContainerView {
                            waiting: Some(("ContainerCreating".into(), message.to_string())),
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    /// The pod's containers in the current sandbox, by name, newest attempt first.
    async fn observe(&self) -> Result<HashMap<String, Vec<Tracked>>, Error> {
        let sandbox = self
            .sandbox
            .as_ref()
            .map(|s| s.id.clone())
            .unwrap_or_default();
        let listed = self
            .ctx
            .cri
            .pod_containers(spec::uid(&self.pod))
            .await
            .map_err(cri_err("ListContainers"))?;
        let mut by_name: HashMap<String, Vec<(u32, cri::Container)>> = HashMap::new();
        for c in listed {
            if c.pod_sandbox_id != sandbox {
                // Left from an earlier sandbox: its sandbox is gone, so is it.
                let _ = self.ctx.cri.remove_container(&c.id).await;
                continue;
            }
            let name = c
                .labels
                .get(labels::CONTAINER_NAME)
                .cloned()
                .unwrap_or_default();
            let attempt = c.metadata.as_ref().map_or(0, |m| m.attempt);
            by_name.entry(name).or_default().push((attempt, c));
        }
        let mut out = HashMap::new();
        for (name, mut list) in by_name {
            list.sort_by_key(|(a, _)| std::cmp::Reverse(*a));
            let mut obs = Vec::new();
            for (i, (_, c)) in list.into_iter().enumerate() {
                // Kept: the current attempt and the one before it (`logs --previous`).
                if i >= 2 {
                    let _ = self.ctx.cri.remove_container(&c.id).await;
                    continue;
                }
                let Some(st) = self
                    .ctx
                    .cri
                    .container_status(&c.id)
                    .await
                    .map_err(cri_err("ContainerStatus"))?
                else {
                    continue;
                };
                obs.push(observed(&st));
            }
            out.insert(name, obs);
        }
        Ok(out)
    }

    async fn sync_containers(&mut self, next: &mut Instant) -> Result<PodView, Error> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let grace = spec.termination_grace_period_seconds.unwrap_or(30);
        let mut by_name = self.observe().await?;
        let pod_ip = self
            .sandbox
            .as_ref()
            .map(|s| s.ip.clone())
            .unwrap_or_default();
        let mut view = PodView {
            sandbox_ready: true,
            pod_ip: pod_ip.clone(),
            start_time: self.start_time,
            initialized: true,
            ..Default::default()
        };
        for c in spec.init_containers.iter().flatten() {
            let list = by_name.remove(&c.name).unwrap_or_default();
            // A sidecar (restartPolicy Always) keeps running; a plain init container runs once
            // to success, restarted on failure unless the pod never restarts anything.
            let sidecar = c.restart_policy.as_deref() == Some("Always");
            let init_policy = if sidecar {
                "Always"
            } else if policy == "Never" {
                "Never"
            } else {
                "OnFailure"
            };
            let done_before = list.first().is_some_and(|o| {
                o.obs.state == RunState::Exited && o.obs.exit_code == 0 && !sidecar
            });
            let v = if done_before || !view.initialized {
                // Completed ones stay completed; later ones wait for the earlier ones.
                pending_view(&list, done_before)
            } else {
                self.sync_one(c, init_policy, grace, &pod_ip, list, next, sidecar)
                    .await?
            };
            let done = match &v.current {
                Some(o) if sidecar => o.state == RunState::Running && v.started,
                Some(o) => o.state == RunState::Exited && o.exit_code == 0,
                None => false,
            };
            if !done {
                if view.initialized {
                    view.init_failed = !sidecar
                        && policy == "Never"
                        && v.current
                            .as_ref()
                            .is_some_and(|o| o.state == RunState::Exited && o.exit_code != 0);
                }
                view.initialized = false;
            }
            view.init_containers.insert(c.name.clone(), v);
        }
        for c in &spec.containers {
            let list = by_name.remove(&c.name).unwrap_or_default();
            let v = if view.initialized {
                self.sync_one(c, &policy, grace, &pod_ip, list, next, true)
                    .await?
            } else {
                ContainerView {
                    waiting: Some(("PodInitializing".into(), String::new())),
                    ..pending_view(&list, false)
                }
            };
            view.containers.insert(c.name.clone(), v);
        }
        Ok(view)
    }

    /// One container's pass: start it (first time, after an exit its policy restarts, or
    /// after a spec change) with back-off, run its probes, and say what it looks like.
    #[allow(clippy::too_many_arguments)]
    async fn sync_one(
        &mut self,
        c: &Container,
        policy: &str,
        grace: i64,
        pod_ip: &str,
        list: Vec<Tracked>,
        next: &mut Instant,
        probes: bool,
    ) -> Result<ContainerView, Error> {
        let pod_ip = pod_ip.to_string();
        let mut current = list.first().cloned();
        let previous = list.get(1).cloned();
        let mut restarts = current.as_ref().map_or(0, |o| o.restart_count);
        let hash = spec::spec_hash(c);
        let track = self.tracks.entry(c.name.clone()).or_default();

        // Decide whether a (new) container should start now.
        let mut start = false;
        let mut backoff_event = false;
        match &current {
            None => start = true,
            Some(o) if o.obs.state == RunState::Created => {
                // Made but never started (the agent stopped in between): start it.
                let r = self
                    .ctx
                    .cri
                    .rt
                    .clone()
                    .start_container(cri::StartContainerRequest {
                        container_id: o.obs.id.clone(),
                    })
                    .await;
                if let Err(s) = r {
                    track.waiting = Some(("RunContainerError".into(), s.message().into()));
                }
            }
            Some(o) if o.obs.state == RunState::Running && o.hash != hash => {
                tracing::info!(pod = %key(&self.pod), container = %c.name, "container spec changed; replacing it");
                self.ctx
                    .cri
                    .stop_container(&o.obs.id, grace)
                    .await
                    .map_err(cri_err("StopContainer"))?;
                start = true;
                restarts += 1;
            }
            Some(o) if o.obs.state == RunState::Exited => {
                let again = match policy {
                    "Never" => false,
                    "OnFailure" => o.obs.exit_code != 0,
                    _ => true,
                } || o.hash != hash && policy != "Never";
                if again {
                    let now = Instant::now();
                    let until = match &track.restart_at {
                        Some((at, id)) if *id == o.obs.id => *at,
                        _ => {
                            let ran = Duration::from_nanos(
                                (o.obs.finished_at - o.obs.started_at).max(0) as u64,
                            );
                            let wait = track.backoff.next(ran);
                            let at = now + wait;
                            track.restart_at = Some((at, o.obs.id.clone()));
                            if !wait.is_zero() {
                                backoff_event = true;
                            }
                            at
                        }
                    };
                    if until <= now {
                        start = true;
                        restarts += 1;
                    } else {
                        let left = until - now;
                        track.waiting = Some((
                            "CrashLoopBackOff".into(),
                            format!(
                                "back-off {}s restarting failed container={} pod={}_{}({})",
                                left.as_secs().max(1),
                                c.name,
                                self.pod.metadata.name.as_deref().unwrap_or_default(),
                                spec::ns(&self.pod),
                                spec::uid(&self.pod)
                            ),
                        ));
                        *next = (*next).min(until);
                    }
                }
            }
            Some(_) => {}
        }
        if backoff_event {
            self.event(
                &c.name,
                EventType::Warning,
                "BackOff",
                format!(
                    "Back-off restarting failed container {} in pod {}_{}({})",
                    c.name,
                    self.pod.metadata.name.as_deref().unwrap_or_default(),
                    spec::ns(&self.pod),
                    spec::uid(&self.pod)
                ),
            );
        }
        if start {
            match self.start_container(c, restarts, &pod_ip).await {
                Ok(id) => {
                    let track = self.tracks.entry(c.name.clone()).or_default();
                    track.waiting = None;
                    track.restart_at = None;
                    // Observe the new container at once: a pod becomes Running in this
                    // pass, not the next.
                    if let Some(st) = self
                        .ctx
                        .cri
                        .container_status(&id)
                        .await
                        .map_err(cri_err("ContainerStatus"))?
                    {
                        current = Some(observed(&st));
                    }
                }
                Err((reason, message)) => {
                    let track = self.tracks.entry(c.name.clone()).or_default();
                    // One Event per change of reason, not one per pass.
                    let new_reason =
                        track.waiting.as_ref().map(|(r, _)| r.as_str()) != Some(&reason);
                    track.waiting = Some((reason.clone(), message.clone()));
                    if new_reason && reason != "ContainerCreating" {
                        self.events(
                            &c.name,
                            vec![
                                (EventType::Warning, "Failed", message),
                                (EventType::Warning, "Failed", format!("Error: {reason}")),
                            ],
                        );
                    }
                }
            }
        } else if current
            .as_ref()
            .is_some_and(|o| o.obs.state == RunState::Running)
        {
            let track = self.tracks.entry(c.name.clone()).or_default();
            track.waiting = None;
        }
        let (ready, started) = if probes {
            self.probe(c, current.as_ref(), &pod_ip, grace, next)
                .await?
        } else {
            let running = current
                .as_ref()
                .is_some_and(|o| o.obs.state == RunState::Running);
            (false, running)
        };
        let track = self.tracks.entry(c.name.clone()).or_default();
        let (cur, prev) = match (&current, &previous) {
            // A container replaced in this pass: the old current is now the previous.
            (Some(n), _) if list.first().is_some_and(|o| o.obs.id != n.obs.id) => {
                (Some(n.clone()), list.first().cloned())
            }
            _ => (current.clone(), previous.clone()),
        };
        Ok(ContainerView {
            restart_count: cur.as_ref().map_or(0, |o| o.restart_count),
            current: cur.map(|o| o.obs),
            previous: prev.map(|o| o.obs),
            waiting: track.waiting.clone(),
            ready,
            started,
        })
    }

    /// Runs the probes that are due for a running container; returns (ready, started).
    async fn probe(
        &mut self,
        c: &Container,
        current: Option<&Tracked>,
        pod_ip: &str,
        grace: i64,
        next: &mut Instant,
    ) -> Result<(bool, bool), Error> {
        let Some(cur) = current.filter(|o| o.obs.state == RunState::Running) else {
            return Ok((false, false));
        };
        let track = self.tracks.entry(c.name.clone()).or_default();
        if track.probes_for != cur.obs.id {
            let started_at = Instant::now()
                - Duration::from_nanos(
                    (Timestamp::now().as_nanosecond() as i64 - cur.obs.started_at).max(0) as u64,
                );
            track.probes = [
                (Kind::Startup, &c.startup_probe),
                (Kind::Readiness, &c.readiness_probe),
                (Kind::Liveness, &c.liveness_probe),
            ]
            .into_iter()
            .filter_map(|(k, p)| p.clone().map(|p| Prober::new(k, p, started_at)))
            .collect();
            track.probes_for = cur.obs.id.clone();
        }
        let now = Instant::now();
        let mut kill = None;
        let cri = self.ctx.cri.clone();
        let mut probes = std::mem::take(&mut track.probes);
        let started = |ps: &[Prober]| {
            ps.iter()
                .find(|p| p.kind == Kind::Startup)
                .is_none_or(|p| p.ok)
        };
        for i in 0..probes.len() {
            // Until the startup probe passes only it runs; after that, only the others.
            let is_started = started(&probes);
            let p = &probes[i];
            if (p.kind == Kind::Startup) == is_started {
                continue;
            }
            if p.due() > now {
                *next = (*next).min(p.due());
                continue;
            }
            let res = p.run(&cri, c, &cur.obs.id, pod_ip).await;
            // One Event per run of failures (kubelet writes one per failure and its recorder
            // folds them into a count).
            if let (Err(why), 0) = (&res, p.consecutive_failures()) {
                let what = match p.kind {
                    Kind::Startup => "Startup",
                    Kind::Readiness => "Readiness",
                    Kind::Liveness => "Liveness",
                };
                self.event(
                    &c.name,
                    EventType::Warning,
                    "Unhealthy",
                    format!("{what} probe failed: {why}"),
                );
            }
            let p = &mut probes[i];
            if p.record(res.is_ok(), Instant::now()) {
                tracing::info!(pod = %key(&self.pod), container = %c.name, probe = ?p.kind,
                    ok = p.ok, detail = %res.as_ref().err().cloned().unwrap_or_default(), "probe result changed");
            }
            *next = (*next).min(p.due());
            if matches!(p.kind, Kind::Liveness | Kind::Startup) && p.failed() {
                kill = Some(format!(
                    "Container {} failed {} probe, will be restarted",
                    c.name,
                    if p.kind == Kind::Liveness {
                        "liveness"
                    } else {
                        "startup"
                    }
                ));
            }
        }
        let ready_probe = probes.iter().find(|p| p.kind == Kind::Readiness);
        let is_started = started(&probes);
        let ready = is_started && ready_probe.is_none_or(|p| p.ok);
        let track = self.tracks.entry(c.name.clone()).or_default();
        track.probes = probes;
        if let Some(why) = kill {
            track.probes_for.clear();
            tracing::info!(pod = %key(&self.pod), container = %c.name, "{why}");
            self.event(&c.name, EventType::Normal, "Killing", why);
            self.ctx
                .cri
                .stop_container(&cur.obs.id, grace)
                .await
                .map_err(cri_err("StopContainer"))?;
            return Ok((false, is_started));
        }
        Ok((ready, is_started))
    }

    /// Image, environment, create, start. Errors are (waiting reason, message).
    async fn start_container(
        &mut self,
        c: &Container,
        restarts: i32,
        pod_ip: &str,
    ) -> Result<String, (String, String)> {
        let image_ref = self.ensure_image(c).await?;
        let config_error = |m: String| ("CreateContainerConfigError".to_string(), m);
        let sources = self
            .sources(c)
            .await
            .map_err(|e| config_error(format!("{e:#}")))?;
        let services = self
            .services()
            .await
            .map_err(|e| config_error(format!("listing services: {e}")))?;
        let env = spec::resolve_env(
            &self.pod,
            c,
            pod_ip,
            &self.ctx.settings.node_ip,
            &env_sources(&sources),
            spec::service_env(&self.pod, &services),
        )
        .map_err(|e| config_error(e.to_string()))?;
        let vols = volumes::prepare(&self.ctx.settings.root_dir, &self.pod, &sources)
            .map_err(|e| config_error(e.to_string()))?;
        let mounts = volumes::mounts(c, &vols).map_err(|e| config_error(e.to_string()))?;
        let Some(sb) = &self.sandbox else {
            return Err(("ContainerCreating".into(), "no sandbox".into()));
        };
        let mut config = spec::container_config(&self.pod, c, &image_ref, restarts, &env);
        config.mounts = mounts;
        let sandbox_config = spec::sandbox_config(&self.ctx.settings, &self.pod, sb.attempt);
        let mut rt = self.ctx.cri.rt.clone();
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sb.id.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            })
            .await
            .map_err(|s| ("CreateContainerError".to_string(), s.message().to_string()))?
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .map_err(|s| ("RunContainerError".to_string(), s.message().to_string()))?;
        tracing::info!(pod = %key(&self.pod), container = %c.name, id = %id, restarts, "container started");
        self.events(
            &c.name,
            vec![
                (
                    EventType::Normal,
                    "Created",
                    format!("Created container: {}", c.name),
                ),
                (
                    EventType::Normal,
                    "Started",
                    format!("Started container {}", c.name),
                ),
            ],
        );
        Ok(id)
    }

    /// `imagePullPolicy`: Never uses only a local image, IfNotPresent pulls a missing one,
    /// Always pulls (and fails without a registry). Returns the image's id.
    async fn ensure_image(&mut self, c: &Container) -> Result<String, (String, String)> {
        let image = c.image.clone().unwrap_or_default();
        let policy = c
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| default_pull_policy(&image).to_string());
        let local = self
            .ctx
            .cri
            .image_status(&image)
            .await
            .map_err(|s| ("ErrImageInspect".to_string(), s.message().to_string()))?;
        match (policy.as_str(), local) {
            ("Never", Some(i)) | ("IfNotPresent", Some(i)) => {
                self.event(
                    &c.name,
                    EventType::Normal,
                    "Pulled",
                    format!("Container image \"{image}\" already present on machine"),
                );
                return Ok(i.id);
            }
            ("Never", None) => {
                return Err((
                    "ErrImageNeverPull".into(),
                    format!("Container image \"{image}\" is not present with pull policy of Never"),
                ))
            }
            _ => {}
        }
        let track = self.tracks.entry(c.name.clone()).or_default();
        if let Some(h) = track.pull.take() {
            if !h.is_finished() {
                track.pull = Some(h);
                return Err(("ContainerCreating".into(), String::new()));
            }
            let result = match h.await {
                Ok(r) => r,
                Err(e) => Err(e.to_string()),
            };
            return match result {
                Ok(r) => {
                    track.image_retry_at = None;
                    track.image_backoff = Backoff::default();
                    self.event(
                        &c.name,
                        EventType::Normal,
                        "Pulled",
                        format!("Successfully pulled image \"{image}\""),
                    );
                    Ok(r)
                }
                Err(m) => {
                    let wait = track
                        .image_backoff
                        .next(Duration::ZERO)
                        .max(Duration::from_secs(1));
                    track.image_retry_at = Some(Instant::now() + wait);
                    Err((
                        "ErrImagePull".into(),
                        format!("failed to pull image \"{image}\": {m}"),
                    ))
                }
            };
        }
        if let Some(at) = track.image_retry_at {
            if at > Instant::now() {
                return Err((
                    "ImagePullBackOff".into(),
                    format!("Back-off pulling image \"{image}\""),
                ));
            }
        }
        let cri = self.ctx.cri.clone();
        let img = image.clone();
        track.pull = Some(tokio::spawn(async move {
            cri.pull(&img, PULL_TIMEOUT)
                .await
                .map_err(|s| s.message().to_string())
        }));
        self.event(
            &c.name,
            EventType::Normal,
            "Pulling",
            format!("Pulling image \"{image}\""),
        );
        Err(("ContainerCreating".into(), String::new()))
    }

    /// The Services whose variables a container gets: the pod's namespace's and `default`'s.
    async fn services(&self) -> Result<Vec<Service>, kube::Error> {
        let mut namespaces = vec![spec::ns(&self.pod)];
        if namespaces[0] != "default" {
            namespaces.push("default");
        }
        let mut out = Vec::new();
        for ns in namespaces {
            let api: Api<Service> = Api::namespaced(self.ctx.client.clone(), ns);
            out.extend(api.list(&Default::default()).await?.items);
        }
        Ok(out)
    }

    /// The ConfigMaps and Secrets the container's environment and the pod's volumes read.
    async fn sources(&self, c: &Container) -> Result<volumes::Sources, kube::Error> {
        let (mut cms, mut secrets) = spec::env_references(c);
        let (vcms, vsecrets) = volumes::references(&self.pod);
        cms.extend(vcms);
        secrets.extend(vsecrets);
        cms.sort();
        cms.dedup();
        secrets.sort();
        secrets.dedup();
        let ns = spec::ns(&self.pod);
        let mut out = volumes::Sources::default();
        let cm_api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), ns);
        for name in cms {
            let v = cm_api.get_opt(&name).await?;
            out.config_maps.insert(name, v);
        }
        let s_api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), ns);
        for name in secrets {
            let v = s_api.get_opt(&name).await?;
            out.secrets.insert(name, v);
        }
        Ok(out)
    }

    async fn write_status(&mut self, view: &PodView) -> Result<(), Error> {
        let st = pstatus::pod_status(
            &self.pod,
            view,
            &self.ctx.settings.node_ip,
            Timestamp::now(),
        );
        if self.written.as_ref() == Some(&st) {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), spec::ns(&self.pod));
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let patch = json!({
            "metadata": {"uid": spec::uid(&self.pod)},
            "status": st,
        });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(p) => {
                self.pod.status = p.status;
                self.written = Some(st);
                Ok(())
            }
            // Gone meanwhile: the watch will say so.
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(source) => Err(Error::Api {
                what: "writing pod status",
                source,
            }),
        }
    }

    /// Graceful stop, sandbox removal, final status, and the node's confirmation of the
    /// deletion.
    async fn terminate(&mut self) -> Result<(), Error> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let grace = if self.gone {
            GONE_GRACE
        } else {
            self.pod
                .metadata
                .deletion_grace_period_seconds
                .or(spec.termination_grace_period_seconds)
                .unwrap_or(30)
        };
        let deadline = Instant::now() + Duration::from_secs(grace.max(0) as u64);
        let observed = self.observe().await.unwrap_or_default();
        let pod_ip = self
            .sandbox
            .as_ref()
            .map(|s| s.ip.clone())
            .unwrap_or_default();
        let mut stops = Vec::new();
        for c in &spec.containers {
            let Some(cur) = observed.get(&c.name).and_then(|l| l.first()) else {
                continue;
            };
            if cur.obs.state != RunState::Running {
                continue;
            }
            self.event(
                &c.name,
                EventType::Normal,
                "Killing",
                format!("Stopping container {}", c.name),
            );
            let cri = self.ctx.cri.clone();
            let c = c.clone();
            let id = cur.obs.id.clone();
            let ip = pod_ip.clone();
            let key = key(&self.pod);
            stops.push(tokio::spawn(async move {
                pre_stop(&cri, &c, &id, &ip, deadline).await;
                let left = deadline.saturating_duration_since(Instant::now()).as_secs() as i64;
                tracing::info!(pod = %key, container = %c.name, grace = left, "stopping container");
                cri.stop_container(&id, left).await
            }));
        }
        for s in stops {
            if let Ok(Err(status)) = s.await {
                return Err(Error::Cri {
                    what: "StopContainer",
                    status,
                });
            }
        }
        // The final container states, before the sandbox (and with it the records) goes.
        let mut view = PodView {
            sandbox_ready: false,
            start_time: self.start_time,
            initialized: true,
            ..Default::default()
        };
        let observed = self.observe().await.unwrap_or_default();
        for c in spec.init_containers.iter().flatten() {
            let list = observed.get(&c.name).cloned().unwrap_or_default();
            view.init_containers
                .insert(c.name.clone(), pending_view(&list, false));
        }
        for c in &spec.containers {
            let list = observed.get(&c.name).cloned().unwrap_or_default();
            view.containers.insert(
                c.name.clone(),
                ContainerView {
                    restart_count: list.first().map_or(0, |o| o.restart_count),
                    current: list.first().map(|o| o.obs.clone()),
                    previous: list.get(1).map(|o| o.obs.clone()),
                    ..Default::default()
                },
            );
        }
        if let Some(sb) = self.sandbox.take() {
            self.ctx
                .cri
                .remove_sandbox(&sb.id)
                .await
                .map_err(cri_err("RemovePodSandbox"))?;
            tracing::info!(pod = %self.key(), sandbox = %sb.id, "sandbox removed");
        }
        let _ = std::fs::remove_dir_all(spec::pod_log_dir(
            &self.ctx.settings.pod_logs_dir,
            &self.pod,
        ));
        // Volumes: emptyDirs and written ConfigMap/Secret files (hostPaths are not under it).
        let _ = std::fs::remove_dir_all(volumes::pod_dir(&self.ctx.settings.root_dir, &self.pod));
        if self.gone {
            return Ok(());
        }
        // A deleted pod ends Failed unless all its containers succeeded (kubelet 1.27+).
        let mut st = pstatus::pod_status(
            &self.pod,
            &view,
            &self.ctx.settings.node_ip,
            Timestamp::now(),
        );
        if !matches!(st.phase.as_deref(), Some("Succeeded" | "Failed")) {
            st.phase = Some("Failed".into());
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), spec::ns(&self.pod));
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let patch = json!({"metadata": {"uid": spec::uid(&self.pod)}, "status": st});
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::debug!(pod = %self.key(), error = %e, "final status not written");
        }
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: self.pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(source) => {
                return Err(Error::Api {
                    what: "confirming the pod's deletion",
                    source,
                })
            }
        }
        tracing::info!(pod = %self.key(), "pod terminated and deleted");
        Ok(())
    }
}

/// A container the pass does not act on: what the runtime last said of it.
fn pending_view(list: &[Tracked], done: bool) -> ContainerView {
    ContainerView {
        restart_count: list.first().map_or(0, |o| o.restart_count),
        current: list.first().map(|o| o.obs.clone()),
        previous: list.get(1).map(|o| o.obs.clone()),
        started: done,
        ..Default::default()
    }
}

/// The environment's view of fetched sources: ConfigMap data and decoded Secret data.
fn env_sources(src: &volumes::Sources) -> EnvSources {
    EnvSources {
        config_maps: src
            .config_maps
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_ref().map(|cm| cm.data.clone().unwrap_or_default()),
                )
            })
            .collect(),
        secrets: src
            .secrets
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_ref().map(|s| {
                        s.data
                            .clone()
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                            .collect()
                    }),
                )
            })
            .collect(),
    }
}

fn key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        spec::ns(pod),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// kubelet's default: `Always` for `:latest` or an untagged image, else `IfNotPresent`.
pub fn default_pull_policy(image: &str) -> &'static str {
    let name = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match name.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// The `preStop` hook (exec, httpGet or sleep), bounded by the grace period.
async fn pre_stop(cri: &Cri, c: &Container, id: &str, pod_ip: &str, deadline: Instant) {
    let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) else {
        return;
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let run = async {
        if let Some(e) = &h.exec {
            let _ = cri
                .exec_sync(id, e.command.clone().unwrap_or_default(), left)
                .await;
        } else if let Some(g) = &h.http_get {
            if let Ok(port) = super::probe::resolve_port(c, &g.port) {
                let host = g.host.clone().unwrap_or_else(|| pod_ip.to_string());
                let path = g.path.clone().unwrap_or_else(|| "/".into());
                let _ = super::probe::http_get(&host, port, &path, &[]).await;
            }
        } else if let Some(s) = &h.sleep {
            tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64)).await;
        }
    };
    let _ = tokio::time::timeout(left, run).await;
}

/// An observed container with the agent's annotations read back.
#[derive(Debug, Clone)]
struct Tracked {
    obs: Observed,
    restart_count: i32,
    hash: String,
}

fn observed(st: &cri::ContainerStatus) -> Tracked {
    let state = match cri::ContainerState::try_from(st.state) {
        Ok(cri::ContainerState::ContainerCreated) => RunState::Created,
        Ok(cri::ContainerState::ContainerRunning) => RunState::Running,
        Ok(cri::ContainerState::ContainerExited) => RunState::Exited,
        _ => RunState::Unknown,
    };
    Tracked {
        obs: Observed {
            id: st.id.clone(),
            state,
            started_at: st.started_at,
            finished_at: st.finished_at,
            exit_code: st.exit_code,
            reason: st.reason.clone(),
            message: st.message.clone(),
            image_ref: st.image_ref.clone(),
        },
        restart_count: st
            .annotations
            .get(labels::RESTART_COUNT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        hash: st
            .annotations
            .get(labels::SPEC_HASH)
            .cloned()
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_defaults() {
        assert_eq!(default_pull_policy("sluice-echo"), "Always");
        assert_eq!(default_pull_policy("sluice-echo:latest"), "Always");
        assert_eq!(default_pull_policy("sluice-echo:0.1"), "IfNotPresent");
        assert_eq!(default_pull_policy("localhost:5000/x"), "Always");
        assert_eq!(default_pull_policy("localhost:5000/x:1"), "IfNotPresent");
        assert_eq!(default_pull_policy("x@sha256:abc"), "IfNotPresent");
    }
}
