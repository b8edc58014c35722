//! Pure translation of a Pod into CRI requests: the sandbox config (hostname, log directory,
//! cgroup parent, namespaces, host ports, labels) and each container's config (image,
//! command and args with `$(VAR)` expansion, environment from values, field references,
//! ConfigMaps and Secrets, working directory, log path, cgroup limits). No I/O: what must be
//! read from the API (ConfigMaps, Secrets) is handed in as [`EnvSources`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod, Service};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::cri::labels;

/// Node-level settings the translation needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--pod-logs-dir`.
    pub pod_logs_dir: PathBuf,
    /// `--cgroup-root`.
    pub cgroup_root: String,
    /// `--root-dir`: pods' volumes live under `<root>/pods/<uid>`.
    pub root_dir: PathBuf,
    /// The node's InternalIP (`status.hostIP`).
    pub node_ip: String,
}

/// Why a container's config could not be made (kubelet's `CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A referenced ConfigMap is missing.
    #[error("configmap \"{0}\" not found")]
    ConfigMapMissing(String),
    /// A referenced Secret is missing.
    #[error("secret \"{0}\" not found")]
    SecretMissing(String),
    /// A referenced key is missing.
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    KeyMissing {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Key.
        key: String,
    },
    /// A field path the agent cannot resolve.
    #[error("unsupported fieldRef {0}")]
    FieldPath(String),
}

/// ConfigMaps and Secrets of the pod's namespace, by name (`None`: not found). Secret values
/// are already decoded.
#[derive(Debug, Default, Clone)]
pub struct EnvSources {
    /// ConfigMaps: name → data (binaryData is not exposed as environment).
    pub config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
    /// Secrets: name → decoded data.
    pub secrets: HashMap<String, Option<BTreeMap<String, String>>>,
}

/// `<namespace>_<name>_<uid>`: the pod's directory under the logs root (kubelet's layout).
pub fn pod_log_dir(pod_logs_dir: &Path, pod: &Pod) -> PathBuf {
    pod_logs_dir.join(format!(
        "{}_{}_{}",
        ns(pod),
        pod.metadata.name.as_deref().unwrap_or_default(),
        uid(pod)
    ))
}

/// The pod's namespace.
pub fn ns(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// The pod's UID.
pub fn uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// The pod's cgroup parent: `<cgroup-root>/kubepods/pod<uid>`.
pub fn cgroup_parent(settings: &Settings, pod: &Pod) -> String {
    let root = settings.cgroup_root.trim_end_matches('/');
    format!("{root}/kubepods/pod{}", uid(pod))
}

fn common_labels(pod: &Pod) -> HashMap<String, String> {
    [
        (labels::POD_UID, uid(pod)),
        (
            labels::POD_NAME,
            pod.metadata.name.as_deref().unwrap_or_default(),
        ),
        (labels::POD_NAMESPACE, ns(pod)),
        (labels::MANAGED_BY, labels::MANAGER),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The sandbox config for `attempt` (0 for the first sandbox of a pod).
pub fn sandbox_config(settings: &Settings, pod: &Pod, attempt: u32) -> cri::PodSandboxConfig {
    let spec = pod.spec.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut hostname = spec.hostname.clone().unwrap_or_else(|| name.clone());
    hostname.truncate(63);
    let hostname = hostname.trim_end_matches(['-', '.']).to_string();
    let mut labels = common_labels(pod);
    for (k, v) in pod.metadata.labels.iter().flatten() {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
        .map(|p| cri::PortMapping {
            protocol: match p.protocol.as_deref() {
                Some("UDP") => cri::Protocol::Udp as i32,
                Some("SCTP") => cri::Protocol::Sctp as i32,
                _ => cri::Protocol::Tcp as i32,
            },
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or_default(),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect();
    let mode = |host: bool, shared: cri::NamespaceMode| {
        if host {
            cri::NamespaceMode::Node as i32
        } else {
            shared as i32
        }
    };
    let pid = if spec.host_pid == Some(true) {
        cri::NamespaceMode::Node as i32
    } else if spec.share_process_namespace == Some(true) {
        cri::NamespaceMode::Pod as i32
    } else {
        cri::NamespaceMode::Container as i32
    };
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name,
            uid: uid(pod).to_string(),
            namespace: ns(pod).to_string(),
            attempt,
        }),
        hostname,
        log_directory: pod_log_dir(&settings.pod_logs_dir, pod)
            .to_string_lossy()
            .into_owned(),
        port_mappings,
        labels,
        annotations: [(labels::GRACE.to_string(), grace.to_string())].into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent(settings, pod),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: mode(host_network(pod), cri::NamespaceMode::Pod),
                    pid,
                    ipc: mode(spec.host_ipc == Some(true), cri::NamespaceMode::Pod),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A stable hash of a container's spec (FNV-1a over its JSON): a container whose spec hash
/// differs from the running one's is replaced (an image change, say).
pub fn spec_hash(c: &Container) -> String {
    let s = serde_json::to_string(c).unwrap_or_default();
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// The container config for one attempt.
pub fn container_config(
    pod: &Pod,
    c: &Container,
    image_ref: &str,
    restart_count: i32,
    env: &[(String, String)],
) -> cri::ContainerConfig {
    let mut labels = common_labels(pod);
    labels.insert(labels::CONTAINER_NAME.to_string(), c.name.clone());
    let annotations = [
        (labels::RESTART_COUNT.to_string(), restart_count.to_string()),
        (labels::SPEC_HASH.to_string(), spec_hash(c)),
    ]
    .into();
    let map: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let expand_all = |v: &Option<Vec<String>>| -> Vec<String> {
        v.iter().flatten().map(|s| expand(s, &map)).collect()
    };
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: c.name.clone(),
            attempt: restart_count.max(0) as u32,
        }),
        image: Some(cri::ImageSpec {
            image: image_ref.to_string(),
            user_specified_image: c.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: expand_all(&c.command),
        args: expand_all(&c.args),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: env
            .iter()
            .map(|(k, v)| cri::KeyValue {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        labels,
        annotations,
        log_path: format!("{}/{restart_count}.log", c.name),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(resources(c)),
            security_context: Some(cri::LinuxContainerSecurityContext {
                privileged: c
                    .security_context
                    .as_ref()
                    .and_then(|s| s.privileged)
                    .unwrap_or(false),
                run_as_user: c
                    .security_context
                    .as_ref()
                    .and_then(|s| s.run_as_user)
                    .or_else(|| {
                        pod.spec
                            .as_ref()
                            .and_then(|s| s.security_context.as_ref())
                            .and_then(|s| s.run_as_user)
                    })
                    .map(|value| cri::Int64Value { value }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// Millicores of a CPU quantity (`500m`, `2`, `0.5`).
pub fn millicores(q: &Quantity) -> Option<i64> {
    let s = q.0.trim();
    if let Some(m) = s.strip_suffix('m') {
        return m.parse().ok();
    }
    s.parse::<f64>().ok().map(|v| (v * 1000.0).round() as i64)
}

/// Bytes of a memory quantity (`128Mi`, `1G`, `1e6`, `512`).
pub fn bytes(q: &Quantity) -> Option<i64> {
    let s = q.0.trim();
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
    ];
    for (suf, mult) in SUFFIXES {
        if let Some(n) = s.strip_suffix(suf) {
            return n.parse::<f64>().ok().map(|v| (v * mult).round() as i64);
        }
    }
    s.parse::<f64>().ok().map(|v| v.round() as i64)
}

/// cgroup limits of a container, as kubelet derives them: shares from the CPU request (2 when
/// none), a CFS quota from the CPU limit (100 ms period), the memory limit.
pub fn resources(c: &Container) -> cri::LinuxContainerResources {
    let res = c.resources.clone().unwrap_or_default();
    let get = |m: &Option<BTreeMap<String, Quantity>>, k: &str| m.as_ref()?.get(k).cloned();
    let cpu_limit = get(&res.limits, "cpu").and_then(|q| millicores(&q));
    // A limit without a request defaults the request to the limit (API defaulting).
    let cpu_request = get(&res.requests, "cpu")
        .and_then(|q| millicores(&q))
        .or(cpu_limit);
    let shares = cpu_request.map_or(2, |m| (m * 1024 / 1000).max(2));
    let (period, quota) = match cpu_limit {
        Some(m) if m > 0 => (100_000, (m * 100_000 / 1000).max(1000)),
        _ => (0, 0),
    };
    cri::LinuxContainerResources {
        cpu_period: period,
        cpu_quota: quota,
        cpu_shares: shares,
        memory_limit_in_bytes: get(&res.limits, "memory")
            .and_then(|q| bytes(&q))
            .unwrap_or(0),
        ..Default::default()
    }
}

/// The pod's QoS class (`Guaranteed`, `Burstable`, `BestEffort`), as the API computes it.
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = &pod.spec else {
        return "BestEffort";
    };
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    let mut any = false;
    let mut guaranteed = true;
    for c in all {
        let res = c.resources.clone().unwrap_or_default();
        let req = res.requests.unwrap_or_default();
        let lim = res.limits.unwrap_or_default();
        for r in ["cpu", "memory"] {
            let l = lim.get(r);
            let q = req.get(r).or(l);
            if q.is_some() || l.is_some() {
                any = true;
            }
            match (q, l) {
                (Some(q), Some(l)) if q == l => {}
                _ => guaranteed = false,
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Expands `$(VAR)` references from `env` (kubelet's rules: `$$` is a literal `$`, an unknown
/// or unterminated reference stays as written).
pub fn expand(s: &str, env: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            match b[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                    continue;
                }
                b'(' => {
                    if let Some(end) = s[i + 2..].find(')') {
                        let name = &s[i + 2..i + 2 + end];
                        if let Some(v) = env.get(name) {
                            out.push_str(v);
                            i += 3 + end;
                            continue;
                        }
                        out.push_str(&s[i..i + 3 + end]);
                        i += 3 + end;
                        continue;
                    }
                }
                _ => {}
            }
        }
        let ch = s[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The ConfigMaps and Secrets a container's environment reads: (config maps, secrets).
pub fn env_references(c: &Container) -> (Vec<String>, Vec<String>) {
    let mut cms = Vec::new();
    let mut secrets = Vec::new();
    for e in c.env.iter().flatten() {
        let Some(from) = &e.value_from else { continue };
        if let Some(r) = &from.config_map_key_ref {
            cms.push(r.name.clone());
        }
        if let Some(r) = &from.secret_key_ref {
            secrets.push(r.name.clone());
        }
    }
    for e in c.env_from.iter().flatten() {
        if let Some(r) = &e.config_map_ref {
            cms.push(r.name.clone());
        }
        if let Some(r) = &e.secret_ref {
            secrets.push(r.name.clone());
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

/// The Service environment variables kubelet gives every container (`{NAME}_SERVICE_HOST`,
/// `{NAME}_SERVICE_PORT[_{PORT NAME}]`, `{NAME}_PORT[_{port}_{PROTO}[_PROTO|_PORT|_ADDR]]`) for
/// the Services of the pod's namespace with a cluster IP — all of them when
/// `enableServiceLinks` (the default), else only the `kubernetes` Service's — and the
/// `kubernetes` Service of `default` in every namespace. Sorted by Service name.
pub fn service_env(pod: &Pod, services: &[Service]) -> Vec<(String, String)> {
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    for svc in services {
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        let sns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let master = sns == "default" && name == "kubernetes";
        if master || (links && sns == ns(pod)) {
            chosen.entry(name.to_string()).or_insert(svc);
        }
    }
    let mut out = Vec::new();
    for (name, svc) in chosen {
        let Some(spec) = &svc.spec else { continue };
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let ports = spec.ports.clone().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let n = name.to_uppercase().replace('-', "_");
        out.push((format!("{n}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{n}_SERVICE_PORT"), first.port.to_string()));
        for p in &ports {
            if let Some(pn) = p.name.as_deref().filter(|x| !x.is_empty()) {
                out.push((
                    format!("{n}_SERVICE_PORT_{}", pn.to_uppercase().replace('-', "_")),
                    p.port.to_string(),
                ));
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.clone().unwrap_or_else(|| "TCP".into())
        };
        out.push((
            format!("{n}_PORT"),
            format!("{}://{ip}:{}", proto(first).to_lowercase(), first.port),
        ));
        for p in &ports {
            let pr = proto(p);
            let base = format!("{n}_PORT_{}_{}", p.port, pr.to_uppercase());
            out.push((
                base.clone(),
                format!("{}://{ip}:{}", pr.to_lowercase(), p.port),
            ));
            out.push((format!("{base}_PROTO"), pr.to_lowercase()));
            out.push((format!("{base}_PORT"), p.port.to_string()));
            out.push((format!("{base}_ADDR"), ip.clone()));
        }
    }
    out
}

/// A container's environment in kubelet's order: the Service variables ([`service_env`],
/// given as `base`), then `envFrom` sources (each key with the
/// source's prefix; keys that are not valid variable names are skipped), then `env` entries,
/// later ones overriding earlier ones; `$(VAR)` in values expands against what came before.
pub fn resolve_env(
    pod: &Pod,
    c: &Container,
    pod_ip: &str,
    node_ip: &str,
    sources: &EnvSources,
    base: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let namespace = ns(pod).to_string();
    let mut out: Vec<(String, String)> = base;
    let set = |out: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(slot) = out.iter_mut().find(|(n, _)| *n == k) {
            slot.1 = v;
        } else {
            out.push((k, v));
        }
    };
    for e in c.env_from.iter().flatten() {
        let prefix = e.prefix.clone().unwrap_or_default();
        let data = if let Some(r) = &e.config_map_ref {
            match sources.config_maps.get(&r.name).cloned().flatten() {
                Some(d) => d,
                None if r.optional == Some(true) => BTreeMap::new(),
                None => return Err(ConfigError::ConfigMapMissing(r.name.clone())),
            }
        } else if let Some(r) = &e.secret_ref {
            match sources.secrets.get(&r.name).cloned().flatten() {
                Some(d) => d,
                None if r.optional == Some(true) => BTreeMap::new(),
                None => return Err(ConfigError::SecretMissing(r.name.clone())),
            }
        } else {
            continue;
        };
        for (k, v) in data {
            let key = format!("{prefix}{k}");
            if is_env_name(&key) {
                set(&mut out, key, v);
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(from) = &e.value_from {
            if let Some(f) = &from.field_ref {
                Some(field_value(pod, &f.field_path, pod_ip, node_ip)?)
            } else if let Some(r) = &from.resource_field_ref {
                Some(resource_value(c, &r.resource, r.divisor.as_ref()))
            } else if let Some(r) = &from.config_map_key_ref {
                lookup(
                    "ConfigMap",
                    &namespace,
                    &r.name,
                    &r.key,
                    r.optional == Some(true),
                    sources.config_maps.get(&r.name),
                    ConfigError::ConfigMapMissing(r.name.clone()),
                )?
            } else if let Some(r) = &from.secret_key_ref {
                lookup(
                    "Secret",
                    &namespace,
                    &r.name,
                    &r.key,
                    r.optional == Some(true),
                    sources.secrets.get(&r.name),
                    ConfigError::SecretMissing(r.name.clone()),
                )?
            } else {
                None
            }
        } else {
            let so_far: HashMap<&str, &str> =
                out.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Some(expand(e.value.as_deref().unwrap_or_default(), &so_far))
        };
        if let Some(v) = value {
            set(&mut out, e.name.clone(), v);
        }
    }
    Ok(out)
}

fn is_env_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn lookup(
    kind: &'static str,
    namespace: &str,
    name: &str,
    key: &str,
    optional: bool,
    found: Option<&Option<BTreeMap<String, String>>>,
    missing: ConfigError,
) -> Result<Option<String>, ConfigError> {
    match found.cloned().flatten() {
        None if optional => Ok(None),
        None => Err(missing),
        Some(d) => match d.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => Err(ConfigError::KeyMissing {
                kind,
                namespace: namespace.to_string(),
                name: name.to_string(),
                key: key.to_string(),
            }),
        },
    }
}

/// The downward API's field paths.
fn field_value(pod: &Pod, path: &str, pod_ip: &str, node_ip: &str) -> Result<String, ConfigError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let meta_map = |m: &Option<BTreeMap<String, String>>, key: &str| {
        m.as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default()
    };
    let quoted = |prefix: &str| -> Option<String> {
        let rest = path.strip_prefix(prefix)?;
        let k = rest.strip_prefix("['")?.strip_suffix("']")?;
        Some(k.to_string())
    };
    Ok(match path {
        "metadata.name" => pod.metadata.name.clone().unwrap_or_default(),
        "metadata.namespace" => ns(pod).to_string(),
        "metadata.uid" => uid(pod).to_string(),
        "spec.nodeName" => spec.node_name.unwrap_or_default(),
        "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => node_ip.to_string(),
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        _ => {
            if let Some(k) = quoted("metadata.labels") {
                meta_map(&pod.metadata.labels, &k)
            } else if let Some(k) = quoted("metadata.annotations") {
                meta_map(&pod.metadata.annotations, &k)
            } else {
                return Err(ConfigError::FieldPath(path.to_string()));
            }
        }
    })
}

/// `resourceFieldRef`: a limit or request divided by the divisor, rounded up (kubelet's
/// `ExtractContainerResourceValue`); an unset limit reads as the node's capacity, which the
/// agent reports as 0 here.
fn resource_value(c: &Container, resource: &str, divisor: Option<&Quantity>) -> String {
    let res = c.resources.clone().unwrap_or_default();
    let (map, key) = match resource.split_once('.') {
        Some(("limits", k)) => (res.limits, k),
        Some(("requests", k)) => (res.requests, k),
        _ => return "0".into(),
    };
    let Some(q) = map.and_then(|m| m.get(key).cloned()) else {
        return "0".into();
    };
    if key == "cpu" {
        let m = millicores(&q).unwrap_or(0);
        let d = divisor
            .and_then(millicores)
            .filter(|d| *d > 0)
            .unwrap_or(1000);
        return ((m + d - 1) / d).to_string();
    }
    let b = bytes(&q).unwrap_or(0);
    let d = divisor.and_then(bytes).filter(|d| *d > 0).unwrap_or(1);
    ((b + d - 1) / d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn settings() -> Settings {
        Settings {
            pod_logs_dir: "/var/log/pods".into(),
            cgroup_root: "/lab/n1".into(),
            root_dir: "/var/lib/kubelet".into(),
            node_ip: "172.31.0.11".into(),
        }
    }

    fn web() -> Pod {
        pod(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1",
                          "labels": {"app": "web", "tier": "front"}},
            "spec": {
                "nodeName": "n1",
                "terminationGracePeriodSeconds": 5,
                "containers": [{
                    "name": "main", "image": "sluice-echo:0.1",
                    "command": ["/sluice-echo"], "args": ["--http-port", "$(PORT)", "$$(PORT)", "$(NOPE)"],
                    "ports": [{"containerPort": 8080, "hostPort": 18080}],
                    "env": [
                        {"name": "PORT", "value": "8080"},
                        {"name": "URL", "value": "http://$(POD_IP):$(PORT)"},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                        {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "color"}}},
                        {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
                        {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "x", "optional": true}}}
                    ],
                    "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
                    "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": "250m"}}
                }]
            }
        }))
    }

    fn sources() -> EnvSources {
        EnvSources {
            config_maps: [(
                "cfg".to_string(),
                Some(
                    [("color", "blue"), ("1bad", "x")]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            )]
            .into(),
            secrets: [
                (
                    "s".to_string(),
                    Some([("pw".to_string(), "hunter2".to_string())].into()),
                ),
                ("gone".to_string(), None),
            ]
            .into(),
        }
    }

    #[test]
    fn environment_in_kubelets_order() {
        let p = web();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let env = resolve_env(&p, c, "10.244.1.5", "172.31.0.11", &sources(), vec![]).unwrap();
        let got: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            got,
            [
                "CFG_1bad=x",
                "CFG_color=blue",
                "PORT=8080",
                // POD_IP is defined after URL: its reference stays as written.
                "URL=http://$(POD_IP):8080",
                "POD_IP=10.244.1.5",
                "APP=web",
                "MEM=64",
                "COLOR=blue",
                "PASS=hunter2",
            ]
        );
    }

    #[test]
    fn service_links() {
        let svc = |ns: &str, name: &str, ip: &str, ports: serde_json::Value| -> Service {
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns},
                "spec": {"clusterIP": ip, "ports": ports}}))
            .unwrap()
        };
        let services = vec![
            svc(
                "shop",
                "web-api",
                "10.96.0.7",
                json!([{"name": "http", "port": 80}, {"port": 53, "protocol": "UDP"}]),
            ),
            svc("shop", "headless", "None", json!([{"port": 80}])),
            svc("other", "elsewhere", "10.96.0.9", json!([{"port": 1}])),
            svc(
                "default",
                "kubernetes",
                "10.96.0.1",
                json!([{"name": "https", "port": 443}]),
            ),
        ];
        let env: Vec<String> = service_env(&web(), &services)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(
            env,
            [
                "KUBERNETES_SERVICE_HOST=10.96.0.1",
                "KUBERNETES_SERVICE_PORT=443",
                "KUBERNETES_SERVICE_PORT_HTTPS=443",
                "KUBERNETES_PORT=tcp://10.96.0.1:443",
                "KUBERNETES_PORT_443_TCP=tcp://10.96.0.1:443",
                "KUBERNETES_PORT_443_TCP_PROTO=tcp",
                "KUBERNETES_PORT_443_TCP_PORT=443",
                "KUBERNETES_PORT_443_TCP_ADDR=10.96.0.1",
                "WEB_API_SERVICE_HOST=10.96.0.7",
                "WEB_API_SERVICE_PORT=80",
                "WEB_API_SERVICE_PORT_HTTP=80",
                "WEB_API_PORT=tcp://10.96.0.7:80",
                "WEB_API_PORT_80_TCP=tcp://10.96.0.7:80",
                "WEB_API_PORT_80_TCP_PROTO=tcp",
                "WEB_API_PORT_80_TCP_PORT=80",
                "WEB_API_PORT_80_TCP_ADDR=10.96.0.7",
                "WEB_API_PORT_53_UDP=udp://10.96.0.7:53",
                "WEB_API_PORT_53_UDP_PROTO=udp",
                "WEB_API_PORT_53_UDP_PORT=53",
                "WEB_API_PORT_53_UDP_ADDR=10.96.0.7",
            ]
        );
        let mut p = web();
        p.spec.as_mut().unwrap().enable_service_links = Some(false);
        assert_eq!(
            service_env(&p, &services).len(),
            8,
            "only the kubernetes Service"
        );
    }

    #[test]
    fn missing_sources_are_config_errors() {
        let p = web();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let mut s = sources();
        s.config_maps.insert("cfg".into(), None);
        assert_eq!(
            resolve_env(&p, c, "", "", &s, vec![])
                .unwrap_err()
                .to_string(),
            "configmap \"cfg\" not found"
        );
        let mut s = sources();
        s.secrets.insert("s".into(), Some(BTreeMap::new()));
        assert_eq!(
            resolve_env(&p, c, "", "", &s, vec![])
                .unwrap_err()
                .to_string(),
            "couldn't find key pw in Secret shop/s"
        );
    }

    #[test]
    fn sandbox_and_container_configs() {
        let p = web();
        let sb = sandbox_config(&settings(), &p, 1);
        assert_eq!(sb.hostname, "web-1");
        assert_eq!(sb.metadata.as_ref().unwrap().attempt, 1);
        assert_eq!(sb.log_directory, "/var/log/pods/shop_web-1_u-1");
        let linux = sb.linux.as_ref().unwrap();
        assert_eq!(linux.cgroup_parent, "/lab/n1/kubepods/podu-1");
        let nso = linux
            .security_context
            .as_ref()
            .unwrap()
            .namespace_options
            .as_ref()
            .unwrap();
        assert_eq!(nso.network, cri::NamespaceMode::Pod as i32);
        assert_eq!(nso.pid, cri::NamespaceMode::Container as i32);
        assert_eq!(sb.port_mappings.len(), 1);
        assert_eq!(sb.port_mappings[0].host_port, 18080);
        assert_eq!(sb.labels["app"], "web");
        assert_eq!(sb.labels[labels::POD_UID], "u-1");
        assert_eq!(sb.labels[labels::MANAGED_BY], labels::MANAGER);
        assert_eq!(sb.annotations[labels::GRACE], "5");

        let c = &p.spec.as_ref().unwrap().containers[0];
        let env = vec![("PORT".to_string(), "8080".to_string())];
        let cc = container_config(&p, c, "sha256:abc", 2, &env);
        assert_eq!(cc.args, ["--http-port", "8080", "$(PORT)", "$(NOPE)"]);
        assert_eq!(cc.log_path, "main/2.log");
        assert_eq!(cc.metadata.as_ref().unwrap().attempt, 2);
        assert_eq!(cc.image.as_ref().unwrap().image, "sha256:abc");
        assert_eq!(cc.annotations[labels::RESTART_COUNT], "2");
        assert_eq!(cc.labels[labels::CONTAINER_NAME], "main");
        let r = cc.linux.as_ref().unwrap().resources.as_ref().unwrap();
        assert_eq!(
            (r.cpu_shares, r.cpu_quota, r.cpu_period),
            (256, 50_000, 100_000)
        );
        assert_eq!(r.memory_limit_in_bytes, 64 << 20);
    }

    #[test]
    fn quantities_qos_and_hashes() {
        assert_eq!(millicores(&Quantity("1.5".into())), Some(1500));
        assert_eq!(millicores(&Quantity("100m".into())), Some(100));
        assert_eq!(bytes(&Quantity("1Gi".into())), Some(1 << 30));
        assert_eq!(bytes(&Quantity("1M".into())), Some(1_000_000));
        assert_eq!(qos_class(&web()), "Burstable");
        let g = pod(json!({"spec": {"containers": [{"name": "a",
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}}));
        assert_eq!(qos_class(&g), "Guaranteed");
        let b = pod(json!({"spec": {"containers": [{"name": "a"}]}}));
        assert_eq!(qos_class(&b), "BestEffort");
        let mut c = web().spec.unwrap().containers[0].clone();
        let h = spec_hash(&c);
        assert_eq!(h, spec_hash(&c));
        c.image = Some("sluice-echo:0.2".into());
        assert_ne!(h, spec_hash(&c));
    }
}
