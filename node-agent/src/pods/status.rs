//! Pure pod status, as kubelet computes it: each container's state, last state, ready,
//! started and restart count from what the runtime reports plus the agent's own waiting
//! reasons (image, back-off, config); the pod's phase (kubelet's `getPhase`); the conditions
//! PodReadyToStartContainers, Initialized, ContainersReady and Ready (PodScheduled is the
//! scheduler's and is carried over); podIP(s), hostIP(s), startTime and qosClass.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// A container's state as the runtime last reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Runtime container id.
    pub id: String,
    /// The state.
    pub state: RunState,
    /// Start time (ns since the epoch; 0 if never started).
    pub started_at: i64,
    /// Finish time (ns since the epoch; 0 if running).
    pub finished_at: i64,
    /// Exit code when exited.
    pub exit_code: i32,
    /// The runtime's reason (`OOMKilled`, `Completed`, `Error`, …).
    pub reason: String,
    /// The runtime's message.
    pub message: String,
    /// Image reference (`sha256:…`).
    pub image_ref: String,
}

/// Container states the runtime reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited.
    Exited,
    /// The runtime does not know.
    Unknown,
}

/// What the agent knows of one container of the pod spec.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerView {
    /// The newest attempt.
    pub current: Option<Observed>,
    /// The attempt before it (kept by the runtime until replaced), for `lastState`.
    pub previous: Option<Observed>,
    /// Restarts so far.
    pub restart_count: i32,
    /// Why it is not running, when the agent knows better than the runtime (`ErrImagePull`,
    /// `CrashLoopBackOff`, `CreateContainerConfigError`, …): (reason, message).
    pub waiting: Option<(String, String)>,
    /// Readiness (probe, or running when there is no readiness probe).
    pub ready: bool,
    /// Started (startup probe passed, or running when there is none).
    pub started: bool,
}

/// What the agent knows of the pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodView {
    /// The sandbox is ready with its network.
    pub sandbox_ready: bool,
    /// The sandbox's IP ("" for none).
    pub pod_ip: String,
    /// When the agent first acted on the pod (kept once set).
    pub start_time: Option<Timestamp>,
    /// Per container of `spec.containers`, by name.
    pub containers: BTreeMap<String, ContainerView>,
    /// Per container of `spec.initContainers`, by name.
    pub init_containers: BTreeMap<String, ContainerView>,
    /// Every init container has completed (sidecars: started). A pod without init containers
    /// is initialized whatever this says.
    pub initialized: bool,
    /// An init container failed and the pod restarts nothing (`restartPolicy: Never`).
    pub init_failed: bool,
}

fn time_ns(ns: i64) -> Option<Time> {
    (ns > 0)
        .then(|| Timestamp::from_nanosecond(ns as i128).ok())
        .flatten()
        .map(Time)
}

fn terminated(o: &Observed) -> ContainerStateTerminated {
    let reason = if !o.reason.is_empty() {
        o.reason.clone()
    } else if o.exit_code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    ContainerStateTerminated {
        container_id: Some(container_id(&o.id)),
        exit_code: o.exit_code,
        finished_at: time_ns(o.finished_at),
        started_at: time_ns(o.started_at),
        reason: Some(reason),
        message: (!o.message.is_empty()).then(|| o.message.clone()),
        signal: None,
    }
}

/// `containerd://<id>`, the form kubelet reports.
pub fn container_id(id: &str) -> String {
    format!("containerd://{id}")
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message,
        }),
        ..Default::default()
    }
}

/// One container's status.
pub fn container_status(name: &str, image: &str, v: &ContainerView) -> ContainerStatus {
    let state = match (&v.waiting, &v.current) {
        (Some((r, m)), _) => waiting(r, (!m.is_empty()).then(|| m.clone())),
        (None, None) => waiting("ContainerCreating", None),
        (None, Some(o)) => match o.state {
            RunState::Running => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: time_ns(o.started_at),
                }),
                ..Default::default()
            },
            RunState::Exited => ContainerState {
                terminated: Some(terminated(o)),
                ..Default::default()
            },
            RunState::Created | RunState::Unknown => waiting("ContainerCreating", None),
        },
    };
    // lastState: the previous attempt; while the current one waits to be replaced after it
    // exited (back-off), the current one is the last terminated state.
    let last = match (&v.waiting, &v.current) {
        (Some(_), Some(o)) if o.state == RunState::Exited => Some(o),
        _ => v.previous.as_ref().filter(|p| p.state == RunState::Exited),
    };
    let running = state.running.is_some();
    ContainerStatus {
        name: name.to_string(),
        image: image.to_string(),
        image_id: v
            .current
            .as_ref()
            .map(|o| o.image_ref.clone())
            .unwrap_or_default(),
        container_id: v.current.as_ref().map(|o| container_id(&o.id)),
        ready: running && v.ready,
        started: Some(running && v.started),
        restart_count: v.restart_count,
        state: Some(state),
        last_state: Some(ContainerState {
            terminated: last.map(terminated),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// kubelet's `getPhase` for pods without init containers.
pub fn phase(restart_policy: &str, statuses: &[ContainerStatus]) -> &'static str {
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in statuses {
        let st = s.state.clone().unwrap_or_default();
        if st.running.is_some() {
            running += 1;
        } else if let Some(t) = st.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if st.waiting.is_some() {
            let ran_before = s
                .last_state
                .as_ref()
                .is_some_and(|l| l.terminated.is_some());
            if ran_before {
                stopped += 1;
            } else {
                waiting += 1;
            }
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        if restart_policy == "Always" {
            return "Running";
        }
        if stopped == succeeded {
            return "Succeeded";
        }
        if restart_policy == "Never" {
            return "Failed";
        }
        return "Running";
    }
    "Pending"
}

fn condition(
    old: &[PodCondition],
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    now: Timestamp,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let prev = old.iter().find(|c| c.type_ == type_);
    let last_transition_time = match prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Some(Time(now)),
    };
    PodCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.map(str::to_string),
        message,
        last_transition_time,
        last_probe_time: None,
        observed_generation: None,
    }
}

/// The pod's whole status.
pub fn pod_status(pod: &Pod, view: &PodView, node_ip: &str, now: Timestamp) -> PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let old = pod.status.clone().unwrap_or_default();
    let old_conds = old.conditions.clone().unwrap_or_default();
    let statuses: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| {
            let v = view.containers.get(&c.name).cloned().unwrap_or_default();
            container_status(&c.name, c.image.as_deref().unwrap_or_default(), &v)
        })
        .collect();
    let init_statuses: Vec<ContainerStatus> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| {
            let v = view
                .init_containers
                .get(&c.name)
                .cloned()
                .unwrap_or_default();
            container_status(&c.name, c.image.as_deref().unwrap_or_default(), &v)
        })
        .collect();
    let initialized = init_statuses.is_empty() || view.initialized;
    let restart_policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let phase = match (initialized, view.init_failed) {
        (true, _) => phase(restart_policy, &statuses),
        (false, true) => "Failed",
        (false, false) => "Pending",
    };
    let incomplete: Vec<&str> = init_statuses
        .iter()
        .filter(|s| {
            let completed = s
                .state
                .as_ref()
                .and_then(|st| st.terminated.as_ref())
                .is_some_and(|t| t.exit_code == 0);
            // A sidecar counts once started.
            !(completed || s.started.unwrap_or(false))
        })
        .map(|s| s.name.as_str())
        .collect();
    let unready: Vec<&str> = statuses
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let all_ready = unready.is_empty();
    let (reason, message) = if all_ready {
        (None, None)
    } else if phase == "Succeeded" || phase == "Failed" {
        (Some("PodCompleted"), None)
    } else {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let mut conditions = vec![
        condition(
            &old_conds,
            "PodReadyToStartContainers",
            view.sandbox_ready,
            None,
            None,
            now,
        ),
        if initialized {
            condition(&old_conds, "Initialized", true, None, None, now)
        } else {
            condition(
                &old_conds,
                "Initialized",
                false,
                Some("ContainersNotInitialized"),
                Some(format!(
                    "containers with incomplete status: [{}]",
                    incomplete.join(" ")
                )),
                now,
            )
        },
        condition(&old_conds, "Ready", all_ready, reason, message.clone(), now),
        condition(
            &old_conds,
            "ContainersReady",
            all_ready,
            reason,
            message,
            now,
        ),
    ];
    // The scheduler's condition stays as it wrote it.
    if let Some(s) = old_conds.iter().find(|c| c.type_ == "PodScheduled") {
        conditions.push(s.clone());
    }
    let host_network = spec.host_network == Some(true);
    let pod_ip = if host_network {
        node_ip.to_string()
    } else {
        view.pod_ip.clone()
    };
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(node_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: node_ip.to_string(),
        }]),
        pod_ip: (!pod_ip.is_empty()).then(|| pod_ip.clone()),
        pod_ips: (!pod_ip.is_empty()).then(|| vec![PodIP { ip: pod_ip }]),
        start_time: old.start_time.clone().or(view.start_time.map(Time)),
        container_statuses: Some(statuses),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        qos_class: Some(super::spec::qos_class(pod).to_string()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obs(state: RunState, exit: i32) -> Observed {
        Observed {
            id: "c1".into(),
            state,
            started_at: 1_700_000_000_000_000_000,
            finished_at: if state == RunState::Exited {
                1_700_000_010_000_000_000
            } else {
                0
            },
            exit_code: exit,
            reason: String::new(),
            message: String::new(),
            image_ref: "sha256:abc".into(),
        }
    }

    fn pod(policy: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "d", "uid": "u"},
            "spec": {"restartPolicy": policy, "containers": [{"name": "a", "image": "img:1"}]},
            "status": {"conditions": [{"type": "PodScheduled", "status": "True"}]}
        }))
        .unwrap()
    }

    fn view(v: ContainerView) -> PodView {
        PodView {
            sandbox_ready: true,
            pod_ip: "10.244.1.9".into(),
            containers: [("a".to_string(), v)].into(),
            ..Default::default()
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    #[test]
    fn running_and_ready() {
        let v = view(ContainerView {
            current: Some(obs(RunState::Running, 0)),
            ready: true,
            started: true,
            ..Default::default()
        });
        let st = pod_status(&pod("Always"), &v, "172.31.0.11", now());
        assert_eq!(st.phase.as_deref(), Some("Running"));
        assert_eq!(st.pod_ip.as_deref(), Some("10.244.1.9"));
        let c = &st.container_statuses.as_ref().unwrap()[0];
        assert!(c.ready);
        assert_eq!(c.container_id.as_deref(), Some("containerd://c1"));
        assert!(c.state.as_ref().unwrap().running.is_some());
        let conds = st.conditions.unwrap();
        let get = |t: &str| conds.iter().find(|c| c.type_ == t).unwrap().status.clone();
        assert_eq!(get("Ready"), "True");
        assert_eq!(get("ContainersReady"), "True");
        assert_eq!(get("PodScheduled"), "True");
        assert_eq!(get("PodReadyToStartContainers"), "True");
    }

    #[test]
    fn crash_loop_is_running_with_last_state() {
        let v = view(ContainerView {
            current: Some(obs(RunState::Exited, 2)),
            restart_count: 3,
            waiting: Some((
                "CrashLoopBackOff".into(),
                "back-off 40s restarting failed container=a pod=p_d(u)".into(),
            )),
            ..Default::default()
        });
        let st = pod_status(&pod("Always"), &v, "172.31.0.11", now());
        assert_eq!(st.phase.as_deref(), Some("Running"));
        let c = &st.container_statuses.as_ref().unwrap()[0];
        let w = c.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(w.reason.as_deref(), Some("CrashLoopBackOff"));
        let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((last.exit_code, last.reason.as_deref()), (2, Some("Error")));
        assert_eq!(c.restart_count, 3);
        let ready = st
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [a]")
        );
    }

    #[test]
    fn phases() {
        let exited = |code| ContainerView {
            current: Some(obs(RunState::Exited, code)),
            ..Default::default()
        };
        let p = |policy, v| {
            pod_status(&pod(policy), &view(v), "1.1.1.1", now())
                .phase
                .unwrap()
        };
        assert_eq!(p("Never", exited(0)), "Succeeded");
        assert_eq!(p("Never", exited(1)), "Failed");
        assert_eq!(p("OnFailure", exited(0)), "Succeeded");
        assert_eq!(p("OnFailure", exited(1)), "Running");
        assert_eq!(p("Always", ContainerView::default()), "Pending");
        let image = ContainerView {
            waiting: Some(("ErrImageNeverPull".into(), "x".into())),
            ..Default::default()
        };
        assert_eq!(p("Always", image), "Pending");
    }

    #[test]
    fn init_containers_gate_the_pod() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "d", "uid": "u"},
            "spec": {"restartPolicy": "Never",
                     "initContainers": [{"name": "setup", "image": "img:1"}],
                     "containers": [{"name": "a", "image": "img:1"}]}
        }))
        .unwrap();
        let mut v = view(ContainerView {
            waiting: Some(("PodInitializing".into(), String::new())),
            ..Default::default()
        });
        v.init_containers.insert(
            "setup".into(),
            ContainerView {
                current: Some(obs(RunState::Running, 0)),
                ..Default::default()
            },
        );
        let st = pod_status(&p, &v, "1.1.1.1", now());
        assert_eq!(st.phase.as_deref(), Some("Pending"));
        let init = st
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Initialized")
            .unwrap()
            .clone();
        assert_eq!(init.status, "False");
        assert_eq!(init.reason.as_deref(), Some("ContainersNotInitialized"));
        assert_eq!(
            init.message.as_deref(),
            Some("containers with incomplete status: [setup]")
        );
        let cs = &st.container_statuses.as_ref().unwrap()[0];
        let w = cs.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(w.reason.as_deref(), Some("PodInitializing"));
        assert!(w.message.is_none());
        assert_eq!(st.init_container_statuses.as_ref().unwrap().len(), 1);

        v.init_containers.get_mut("setup").unwrap().current = Some(obs(RunState::Exited, 1));
        v.init_failed = true;
        let st = pod_status(&p, &v, "1.1.1.1", now());
        assert_eq!(
            st.phase.as_deref(),
            Some("Failed"),
            "Never: a failed init fails the pod"
        );

        v.init_containers.get_mut("setup").unwrap().current = Some(obs(RunState::Exited, 0));
        v.init_failed = false;
        v.initialized = true;
        v.containers.get_mut("a").unwrap().waiting = None;
        v.containers.get_mut("a").unwrap().current = Some(obs(RunState::Running, 0));
        let st = pod_status(&p, &v, "1.1.1.1", now());
        assert_eq!(st.phase.as_deref(), Some("Running"));
        let init = st.init_container_statuses.unwrap()[0].clone();
        let t = init.state.unwrap().terminated.unwrap();
        assert_eq!(t.reason.as_deref(), Some("Completed"));
    }

    #[test]
    fn transition_times_survive_unchanged_conditions() {
        let mut p = pod("Always");
        let v = view(ContainerView {
            current: Some(obs(RunState::Running, 0)),
            ready: true,
            started: true,
            ..Default::default()
        });
        let first = pod_status(&p, &v, "1.1.1.1", now());
        p.status = Some(first.clone());
        let later = Timestamp::from_second(1_800_000_100).unwrap();
        let second = pod_status(&p, &v, "1.1.1.1", later);
        assert_eq!(first.conditions, second.conditions);
    }
}
