//! Resource arithmetic: node allocatable and pod requests as integers, the
//! way kube-scheduler's `framework.Resource` holds them (CPU in millicores,
//! everything else in whole units rounded up).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// CPU request assumed for scoring a container that requests no CPU
/// (upstream `schedutil.DefaultMilliCPURequest`).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Memory request assumed for scoring a container that requests no memory
/// (upstream `schedutil.DefaultMemoryRequest`, 200Mi).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// An amount of each schedulable resource.
///
/// `pods` is not here: allocatable pod count is kept beside it on the node,
/// and a pod always "requests" exactly one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in thousandths of a core.
    pub milli_cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Local ephemeral storage in bytes.
    pub ephemeral_storage: i64,
    /// Extended resources, hugepages and other domain-prefixed resources, in
    /// whole units, keyed by resource name.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// Adds `other` to `self` (saturating: a sum that overflows is still
    /// "more than any node has").
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_add(other.ephemeral_storage);
        for (name, v) in &other.scalar {
            let e = self.scalar.entry(name.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
    }

    /// Subtracts `other` from `self`; scalar entries that reach zero are
    /// dropped so repeated add/remove cycles leave no residue.
    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(other.milli_cpu);
        self.memory = self.memory.saturating_sub(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_sub(other.ephemeral_storage);
        for (name, v) in &other.scalar {
            let e = self.scalar.entry(name.clone()).or_insert(0);
            *e = e.saturating_sub(*v);
            if *e == 0 {
                self.scalar.remove(name);
            }
        }
    }

    /// Raises each resource of `self` to at least the value in `other`.
    fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (name, v) in &other.scalar {
            let e = self.scalar.entry(name.clone()).or_insert(0);
            *e = (*e).max(*v);
        }
    }

    /// Whether every amount is zero (upstream skips the resource checks
    /// entirely for such a pod and only counts it).
    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.values().all(|v| *v == 0)
    }
}

/// A quantity that failed to parse, with where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadQuantity {
    pub(crate) resource: String,
    pub(crate) value: String,
    pub(crate) reason: &'static str,
}

/// Whether upstream's `framework.Resource` keeps this resource as a scalar
/// (`IsScalarResourceName`): any domain-prefixed name (extended resources and
/// `*kubernetes.io/*` ones), `hugepages-*` and `attachable-volumes-*`. Bare
/// unknown names are ignored, as upstream does.
pub(crate) fn is_scalar_resource(name: &str) -> bool {
    name.contains('/') || name.starts_with("hugepages-") || name.starts_with("attachable-volumes-")
}

/// Whole units of a quantity, rounded up (`Quantity.Value()`).
pub(crate) fn quantity_value(name: &str, q: &Quantity) -> Result<i64, BadQuantity> {
    let milli = quantity_milli(name, q)?;
    // Ceiling division; the milli value is itself rounded up, so this is
    // the ceiling of the exact value.
    Ok(milli.div_euclid(1000) + i64::from(milli.rem_euclid(1000) != 0))
}

/// Thousandths of a quantity, rounded up (`Quantity.MilliValue()`).
pub(crate) fn quantity_milli(name: &str, q: &Quantity) -> Result<i64, BadQuantity> {
    sluice_validation::quantity_milli_value(&q.0).map_err(|reason| BadQuantity {
        resource: name.to_string(),
        value: q.0.clone(),
        reason,
    })
}

/// Adds one resource of a ResourceList to `r` (`Resource.Add`); `pods` and
/// unknown bare names are skipped.
fn add_named(r: &mut Resources, name: &str, q: &Quantity) -> Result<(), BadQuantity> {
    match name {
        "cpu" => r.milli_cpu = r.milli_cpu.saturating_add(quantity_milli(name, q)?),
        "memory" => r.memory = r.memory.saturating_add(quantity_value(name, q)?),
        "ephemeral-storage" => {
            r.ephemeral_storage = r.ephemeral_storage.saturating_add(quantity_value(name, q)?)
        }
        _ if is_scalar_resource(name) => {
            let v = quantity_value(name, q)?;
            let e = r.scalar.entry(name.to_string()).or_insert(0);
            *e = e.saturating_add(v);
        }
        _ => {}
    }
    Ok(())
}

/// Converts a ResourceList (node allocatable, overhead, requests).
pub(crate) fn from_list(
    list: Option<&BTreeMap<String, Quantity>>,
) -> Result<Resources, BadQuantity> {
    let mut r = Resources::default();
    for (name, q) in list.into_iter().flatten() {
        add_named(&mut r, name, q)?;
    }
    Ok(r)
}

/// What one pod asks of a node: the requests NodeResourcesFit checks, and
/// the CPU and memory the LeastAllocated/Balanced scores use (where a
/// container requesting nothing counts as 100m / 200Mi).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PodRequests {
    /// Effective requests (`resourcehelper.PodRequests`).
    pub(crate) requests: Resources,
    /// Effective CPU with upstream's non-zero container defaults.
    pub(crate) non_zero_milli_cpu: i64,
    /// Effective memory with upstream's non-zero container defaults.
    pub(crate) non_zero_memory: i64,
}

/// Computes a pod's effective requests as upstream `PodRequests` does:
/// the larger of (sum of app containers + sidecars) and, for each ordinary
/// init container, its request plus the sidecars started before it; then
/// pod-level requests (spec.resources) replace the aggregate for the
/// resources they name (cpu, memory, hugepages); then spec.overhead is added.
pub(crate) fn pod_requests(spec: &PodSpec) -> Result<PodRequests, BadQuantity> {
    let pod_level = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .filter(|r| !r.is_empty());
    let overhead = from_list(spec.overhead.as_ref())?;

    let mut requests = aggregate(spec, |c| from_list(container_requests(c)))?;
    apply_pod_level(&mut requests, pod_level)?;
    requests.add(&overhead);

    // The non-zero view: each container that names neither cpu nor memory
    // (and, with pod-level requests, where the pod level does not name it
    // either) is assumed to ask for the defaults. Explicit zeros stay zero.
    let pod_has = |n: &str| pod_level.is_some_and(|p| p.contains_key(n));
    let mut non_zero = aggregate(spec, |c| {
        let list = container_requests(c);
        let mut r = from_list(list)?;
        let has = |n: &str| list.is_some_and(|l| l.contains_key(n));
        if !has("cpu") && !pod_has("cpu") {
            r.milli_cpu = DEFAULT_MILLI_CPU_REQUEST;
        }
        if !has("memory") && !pod_has("memory") {
            r.memory = DEFAULT_MEMORY_REQUEST;
        }
        Ok(r)
    })?;
    apply_pod_level(&mut non_zero, pod_level)?;
    non_zero.add(&overhead);

    Ok(PodRequests {
        requests,
        non_zero_milli_cpu: non_zero.milli_cpu,
        non_zero_memory: non_zero.memory,
    })
}

fn container_requests(c: &Container) -> Option<&BTreeMap<String, Quantity>> {
    c.resources.as_ref().and_then(|r| r.requests.as_ref())
}

/// The container/init-container aggregation shared by both views.
fn aggregate(
    spec: &PodSpec,
    per_container: impl Fn(&Container) -> Result<Resources, BadQuantity>,
) -> Result<Resources, BadQuantity> {
    let mut total = Resources::default();
    for c in &spec.containers {
        total.add(&per_container(c)?);
    }
    // Sidecars (init containers with restartPolicy Always) keep running, so
    // they add to the steady state and to every init container after them.
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = per_container(c)?;
        if c.restart_policy.as_deref() == Some("Always") {
            total.add(&r);
            sidecars.add(&r);
            init_peak.max_with(&sidecars);
        } else {
            let mut during = r;
            during.add(&sidecars);
            init_peak.max_with(&during);
        }
    }
    total.max_with(&init_peak);
    Ok(total)
}

/// Pod-level requests override the container aggregate for the resources
/// upstream supports at the pod level.
fn apply_pod_level(
    r: &mut Resources,
    pod_level: Option<&BTreeMap<String, Quantity>>,
) -> Result<(), BadQuantity> {
    for (name, q) in pod_level.into_iter().flatten() {
        match name.as_str() {
            "cpu" => r.milli_cpu = quantity_milli(name, q)?,
            "memory" => r.memory = quantity_value(name, q)?,
            n if n.starts_with("hugepages-") => {
                r.scalar.insert(name.clone(), quantity_value(name, q)?);
            }
            _ => {}
        }
    }
    Ok(())
}
