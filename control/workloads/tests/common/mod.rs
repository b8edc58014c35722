//! A tiny in-memory cluster for the controller tests: applies plans the way the
//! runner would, and plays kubelet (pods get a node, run, and turn Ready after a
//! number of ticks).

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, ReplicaSet, ReplicaSetSpec,
    RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, Pod, PodCondition, PodSpec, PodStatus, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use sluice_workloads::{deployment, replicaset, Action, Event, Plan};

pub const NS: &str = "default";

pub fn t0() -> Timestamp {
    Timestamp::from_second(1_800_000_000).expect("valid time")
}

pub fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn template(app: &str, image: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(&[("app", app)])),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "main".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

pub fn selector(app: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(&[("app", app)])),
        match_expressions: None,
    }
}

pub fn ios(s: &str) -> IntOrString {
    match s.parse::<i32>() {
        Ok(i) => IntOrString::Int(i),
        Err(_) => IntOrString::String(s.to_string()),
    }
}

/// A Deployment as the API server would store it after defaulting.
pub fn new_deployment(name: &str, replicas: i32, image: &str) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            uid: Some(format!("uid-deploy-{name}")),
            generation: Some(1),
            creation_timestamp: Some(Time(t0())),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: selector(name),
            template: template(name, image),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(ios("25%")),
                    max_unavailable: Some(ios("25%")),
                }),
            }),
            revision_history_limit: Some(10),
            progress_deadline_seconds: Some(600),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn new_replicaset(name: &str, replicas: i32, app: &str) -> ReplicaSet {
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            uid: Some(format!("uid-rs-{name}")),
            generation: Some(1),
            labels: Some(labels(&[("app", app)])),
            creation_timestamp: Some(Time(t0())),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: None,
            selector: selector(app),
            template: Some(template(app, "img:1")),
        }),
        status: None,
    }
}

pub fn ready_condition(since: Timestamp) -> PodCondition {
    PodCondition {
        type_: "Ready".into(),
        status: "True".into(),
        last_transition_time: Some(Time(since)),
        ..Default::default()
    }
}

pub struct World {
    pub now: Timestamp,
    pub deployments: Vec<Deployment>,
    pub rss: Vec<ReplicaSet>,
    pub pods: Vec<Pod>,
    pub events: Vec<Event>,
    /// Kubelet ticks a pod needs from creation to Ready; `None` = never ready.
    pub ready_after: Option<u32>,
    ages: HashMap<String, u32>,
    next: u64,
    /// Shortest ReplicaSet requeue seen in the last step.
    rs_requeue: Option<Duration>,
}

impl World {
    pub fn new() -> Self {
        World {
            now: t0(),
            deployments: Vec::new(),
            rss: Vec::new(),
            pods: Vec::new(),
            events: Vec::new(),
            ready_after: Some(2),
            ages: HashMap::new(),
            next: 0,
            rs_requeue: None,
        }
    }

    fn uid(&mut self, kind: &str) -> String {
        self.next += 1;
        format!("uid-{kind}-{:05}", self.next)
    }

    pub fn apply(&mut self, plan: &Plan) {
        for a in &plan.actions {
            self.apply_one(a);
        }
    }

    pub fn apply_one(&mut self, a: &Action) {
        let now = Time(self.now);
        match a {
            Action::CreatePod { pod, on_success } => {
                let mut pod = pod.clone();
                let uid = self.uid("pod");
                let name = format!(
                    "{}{}",
                    pod.metadata.generate_name.clone().unwrap_or_default(),
                    &uid[8..]
                );
                pod.metadata.name = Some(name.clone());
                pod.metadata.uid = Some(uid);
                pod.metadata.creation_timestamp = Some(now);
                pod.status = Some(PodStatus {
                    phase: Some("Pending".into()),
                    ..Default::default()
                });
                self.pods.push(pod);
                self.events.push(on_success.render(&name));
            }
            Action::DeletePod { uid, .. } => {
                let before = self.pods.len();
                self.pods.retain(|p| p.metadata.uid.as_ref() != Some(uid));
                assert_eq!(before, self.pods.len() + 1, "deleted a missing pod {uid}");
            }
            Action::CreateReplicaSet(rs) => {
                assert!(
                    !self.rss.iter().any(|r| r.metadata.name == rs.metadata.name),
                    "AlreadyExists {:?}",
                    rs.metadata.name
                );
                let mut rs = rs.clone();
                rs.metadata.uid = Some(self.uid("rs"));
                rs.metadata.creation_timestamp = Some(now);
                rs.metadata.generation = Some(1);
                self.rss.push(rs);
            }
            Action::UpdateReplicaSet(rs) => {
                let cur = self
                    .rss
                    .iter_mut()
                    .find(|r| r.metadata.uid == rs.metadata.uid)
                    .expect("update of a missing ReplicaSet");
                let gen = cur.metadata.generation.unwrap_or(0) + i64::from(cur.spec != rs.spec);
                cur.metadata = rs.metadata.clone();
                cur.metadata.generation = Some(gen);
                cur.spec = rs.spec.clone();
            }
            Action::UpdateReplicaSetStatus(rs) => {
                let cur = self
                    .rss
                    .iter_mut()
                    .find(|r| r.metadata.uid == rs.metadata.uid)
                    .expect("status of a missing ReplicaSet");
                cur.status = rs.status.clone();
            }
            Action::DeleteReplicaSet { uid, .. } => {
                self.rss.retain(|r| r.metadata.uid.as_ref() != Some(uid));
                // Garbage collection of the pods it controlled.
                self.pods.retain(|p| {
                    !p.metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| &o.uid == uid)
                });
            }
            Action::UpdateDeployment(d) => {
                let cur = self
                    .deployments
                    .iter_mut()
                    .find(|x| x.metadata.uid == d.metadata.uid)
                    .expect("update of a missing Deployment");
                cur.metadata.annotations = d.metadata.annotations.clone();
            }
            Action::UpdateDeploymentStatus(d) => {
                let cur = self
                    .deployments
                    .iter_mut()
                    .find(|x| x.metadata.uid == d.metadata.uid)
                    .expect("status of a missing Deployment");
                cur.status = d.status.clone();
            }
            Action::PatchOwnerRefs {
                target,
                owner_references,
            } => {
                let meta = match target.kind.as_str() {
                    "Pod" => self
                        .pods
                        .iter_mut()
                        .find(|p| p.metadata.uid.as_deref() == Some(&target.uid))
                        .map(|p| &mut p.metadata),
                    _ => self
                        .rss
                        .iter_mut()
                        .find(|p| p.metadata.uid.as_deref() == Some(&target.uid))
                        .map(|p| &mut p.metadata),
                };
                meta.expect("patch of a missing object").owner_references =
                    Some(owner_references.clone());
            }
            Action::Event(e) => self.events.push(e.clone()),
        }
    }

    /// Edits a Deployment's spec the way a user would (generation bump).
    pub fn edit(&mut self, name: &str, f: impl FnOnce(&mut DeploymentSpec)) {
        let d = self
            .deployments
            .iter_mut()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .expect("deployment");
        let spec = d.spec.as_mut().expect("spec");
        f(spec);
        d.metadata.generation = Some(d.metadata.generation.unwrap_or(0) + 1);
    }

    pub fn deployment(&self, name: &str) -> &Deployment {
        self.deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .expect("deployment")
    }

    pub fn reconcile_deployments(&mut self) -> usize {
        let mut n = 0;
        for i in 0..self.deployments.len() {
            let d = self.deployments[i].clone();
            let plan =
                deployment::reconcile(&d, &self.rss, &self.pods, self.now).expect("reconcile");
            n += plan.actions.len();
            self.apply(&plan);
        }
        n
    }

    /// Runs every ReplicaSet's reconcile until none has anything to do (a fast
    /// ReplicaSet controller).
    pub fn reconcile_replicasets(&mut self) -> usize {
        let mut total = 0;
        self.rs_requeue = None;
        for _ in 0..50 {
            let mut n = 0;
            for i in 0..self.rss.len() {
                let rs = self.rss[i].clone();
                let plan = replicaset::reconcile(&rs, &self.pods, self.now).expect("reconcile");
                n += plan.actions.len();
                if let Some(r) = plan.requeue_after {
                    self.rs_requeue = Some(self.rs_requeue.map_or(r, |x| x.min(r)));
                }
                self.apply(&plan);
            }
            total += n;
            if n == 0 {
                return total;
            }
        }
        panic!("ReplicaSet controllers did not settle");
    }

    /// One controller round: Deployments once, then ReplicaSets to a fixpoint.
    pub fn step(&mut self) -> usize {
        self.reconcile_deployments() + self.reconcile_replicasets()
    }

    /// Kubelet and clock: one second passes.
    pub fn tick(&mut self) {
        self.now += SignedDuration::from_secs(1);
        let now = self.now;
        for p in &mut self.pods {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            let age = self.ages.entry(uid).or_default();
            *age += 1;
            let spec = p.spec.get_or_insert_with(Default::default);
            if spec.node_name.is_none() {
                spec.node_name = Some(format!("node-{}", self.next % 3));
            }
            let st = p.status.get_or_insert_with(Default::default);
            st.phase = Some("Running".into());
            if self.ready_after.is_some_and(|r| *age >= r) {
                let conds = st.conditions.get_or_insert_with(Vec::new);
                if !conds.iter().any(|c| c.type_ == "Ready") {
                    conds.push(ready_condition(now));
                }
            }
        }
    }

    fn kubelet_pending(&self) -> bool {
        self.ready_after.is_some()
            && self.pods.iter().any(|p| {
                !p.status
                    .iter()
                    .flat_map(|s| s.conditions.iter().flatten())
                    .any(|c| c.type_ == "Ready")
            })
    }

    /// Steps until a step changes nothing and nothing is pending; `check` runs
    /// after every step. Returns the number of steps.
    pub fn converge(&mut self, max_steps: usize, mut check: impl FnMut(&World)) -> usize {
        for i in 0..max_steps {
            let n = self.step();
            check(self);
            if n == 0 && !self.kubelet_pending() && self.rs_requeue.is_none() {
                return i;
            }
            self.tick();
        }
        panic!("did not converge in {max_steps} steps");
    }

    pub fn rs_named(&self, name: &str) -> Option<&ReplicaSet> {
        self.rss
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(name))
    }

    pub fn pods_of(&self, rs: &ReplicaSet) -> Vec<&Pod> {
        self.pods
            .iter()
            .filter(|p| {
                p.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.uid.as_str() == rs.metadata.uid.as_deref().unwrap_or_default())
            })
            .collect()
    }

    pub fn ready_pods(&self) -> usize {
        self.pods
            .iter()
            .filter(|p| {
                p.status
                    .iter()
                    .flat_map(|s| s.conditions.iter().flatten())
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
            .count()
    }
}

pub fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

pub fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}
