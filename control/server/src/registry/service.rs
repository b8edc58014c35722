//! Service ClusterIP and NodePort allocation, as the apiserver's service REST storage does it:
//! honour a requested value or reject it (422), allocate the rest, keep what an update does not
//! change, and release what a type change or delete gives up.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::{json, Value};

use super::{Allocators, Registry};
use crate::resources::Resource;
use crate::status::{ApiError, ApiResult};

/// Allocations held by one object (or taken by one write).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Taken {
    pub(crate) ips: Vec<IpAddr>,
    pub(crate) ports: Vec<u16>,
}

fn svc_type(v: &Value) -> &str {
    v.pointer("/spec/type")
        .and_then(|t| t.as_str())
        .unwrap_or("ClusterIP")
}

fn wants_node_ports(v: &Value) -> bool {
    match svc_type(v) {
        "NodePort" => true,
        "LoadBalancer" => v
            .pointer("/spec/allocateLoadBalancerNodePorts")
            .and_then(|a| a.as_bool())
            .unwrap_or(true),
        _ => false,
    }
}

fn wants_health_port(v: &Value) -> bool {
    svc_type(v) == "LoadBalancer"
        && v.pointer("/spec/externalTrafficPolicy")
            .and_then(|p| p.as_str())
            == Some("Local")
}

fn cluster_ips(v: &Value) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = v
        .pointer("/spec/clusterIPs")
        .and_then(|a| a.as_array())
        .map(|a| a.iter().filter_map(|i| i.as_str()?.parse().ok()).collect())
        .unwrap_or_default();
    if out.is_empty() {
        if let Some(ip) = v
            .pointer("/spec/clusterIP")
            .and_then(|i| i.as_str()?.parse().ok())
        {
            out.push(ip);
        }
    }
    out
}

fn port_u16(v: Option<&Value>) -> u16 {
    v.and_then(|p| p.as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(0)
}

/// Everything a stored Service holds.
pub(crate) fn held_by(v: &Value) -> Taken {
    let mut t = Taken::default();
    if svc_type(v) != "ExternalName" {
        t.ips = cluster_ips(v);
    }
    let mut ports = BTreeSet::new();
    if let Some(ps) = v.pointer("/spec/ports").and_then(|p| p.as_array()) {
        for p in ps {
            let np = port_u16(p.get("nodePort"));
            if np != 0 {
                ports.insert(np);
            }
        }
    }
    let hc = port_u16(v.pointer("/spec/healthCheckNodePort"));
    if hc != 0 {
        ports.insert(hc);
    }
    t.ports = ports.into_iter().collect();
    t
}

/// Re-reserves a stored Service's allocations at start-up.
pub(crate) fn reserve_existing(a: &mut Allocators, v: &Value, key: &str) {
    let t = held_by(v);
    for ip in t.ips {
        if let Err(e) = a.cluster_ips.allocate(ip) {
            tracing::warn!(service = key, error = %e, "stored clusterIP not re-reserved");
        }
    }
    for p in t.ports {
        if let Err(e) = a.node_ports.allocate(p) {
            tracing::warn!(service = key, error = %e, "stored nodePort not re-reserved");
        }
    }
}

/// Releases allocations.
pub(crate) fn release(reg: &Registry, t: &Taken) {
    if t.ips.is_empty() && t.ports.is_empty() {
        return;
    }
    let mut a = reg.allocators();
    for ip in &t.ips {
        a.cluster_ips.release(*ip);
    }
    for p in &t.ports {
        a.node_ports.release(*p);
    }
}

struct Tx<'a> {
    a: std::sync::MutexGuard<'a, Allocators>,
    taken: Taken,
}

impl Tx<'_> {
    fn rollback(mut self) {
        for ip in &self.taken.ips {
            self.a.cluster_ips.release(*ip);
        }
        for p in &self.taken.ports {
            self.a.node_ports.release(*p);
        }
    }
}

fn set_cluster_ip(v: &mut Value, ip: &str) {
    v["spec"]["clusterIP"] = json!(ip);
    v["spec"]["clusterIPs"] = json!([ip]);
}

/// Allocates for a new Service (mutates `v`); returns what was taken.
pub(crate) fn allocate_create(
    reg: &Registry,
    res: &Resource,
    name: &str,
    v: &mut Value,
) -> ApiResult<Taken> {
    let mut tx = Tx {
        a: reg.allocators(),
        taken: Taken::default(),
    };
    match allocate_into(&mut tx, res, name, None, v) {
        Ok(()) => Ok(tx.taken),
        Err(e) => {
            tx.rollback();
            Err(e)
        }
    }
}

/// Allocates for an update; returns (newly taken, to free after the write succeeds).
pub(crate) fn allocate_update(
    reg: &Registry,
    res: &Resource,
    name: &str,
    old: &Value,
    v: &mut Value,
) -> ApiResult<(Taken, Taken)> {
    let mut tx = Tx {
        a: reg.allocators(),
        taken: Taken::default(),
    };
    match allocate_into(&mut tx, res, name, Some(old), v) {
        Ok(()) => {
            let held_before = held_by(old);
            let held_after = held_by(v);
            let freed = Taken {
                ips: held_before
                    .ips
                    .iter()
                    .filter(|i| !held_after.ips.contains(i))
                    .copied()
                    .collect(),
                ports: held_before
                    .ports
                    .iter()
                    .filter(|p| !held_after.ports.contains(p))
                    .copied()
                    .collect(),
            };
            Ok((tx.taken, freed))
        }
        Err(e) => {
            tx.rollback();
            Err(e)
        }
    }
}

fn allocate_into(
    tx: &mut Tx<'_>,
    res: &Resource,
    name: &str,
    old: Option<&Value>,
    v: &mut Value,
) -> ApiResult<()> {
    let ty = svc_type(v).to_string();
    let old_held = old.map(held_by).unwrap_or_default();
    if ty == "ExternalName" {
        if let Some(spec) = v["spec"].as_object_mut() {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
    } else {
        let requested = v
            .pointer("/spec/clusterIP")
            .and_then(|i| i.as_str())
            .unwrap_or("")
            .to_string();
        let old_ip = old
            .filter(|o| svc_type(o) != "ExternalName")
            .and_then(|o| o.pointer("/spec/clusterIP").and_then(|i| i.as_str()))
            .unwrap_or("")
            .to_string();
        if requested.is_empty() && !old_ip.is_empty() {
            // An update that leaves clusterIP out keeps the allocated one.
            set_cluster_ip(v, &old_ip);
            if let Some(ips) = old.and_then(|o| o.pointer("/spec/clusterIPs")) {
                v["spec"]["clusterIPs"] = ips.clone();
            }
        } else if !old_ip.is_empty() && requested != old_ip {
            return Err(ApiError::invalid_field(
                res,
                name,
                "spec.clusterIPs[0]",
                format!("Invalid value: {requested:?}: may not change once set"),
            ));
        } else if requested == "None" {
            v["spec"]["clusterIPs"] = json!(["None"]);
        } else if requested.is_empty() {
            let ip = tx.a.cluster_ips.allocate_next().map_err(|e| {
                ApiError::new(
                    500,
                    "InternalError",
                    format!("failed to allocate a serviceIP: {e}"),
                )
            })?;
            tx.taken.ips.push(ip);
            set_cluster_ip(v, &ip.to_string());
        } else if old_ip.is_empty() {
            let ip: IpAddr = requested.parse().map_err(|_| {
                ApiError::invalid_field(
                    res,
                    name,
                    "spec.clusterIPs[0]",
                    format!("Invalid value: {requested:?}: must be a valid IP address"),
                )
            })?;
            tx.a.cluster_ips.allocate(ip).map_err(|e| {
                ApiError::invalid_field(
                    res,
                    name,
                    "spec.clusterIPs",
                    format!(
                        "Invalid value: [\"{requested}\"]: failed to allocate IP {requested}: {e}"
                    ),
                )
            })?;
            tx.taken.ips.push(ip);
            set_cluster_ip(v, &requested);
        }
    }

    // Node ports.
    let old_ports: Vec<Value> = old
        .filter(|o| wants_node_ports(o))
        .and_then(|o| o.pointer("/spec/ports").and_then(|p| p.as_array()).cloned())
        .unwrap_or_default();
    let want = wants_node_ports(v);
    // Ports the object holds after this write; a number may serve two service ports of
    // different protocols (DNS on TCP and UDP), never two of the same protocol.
    let mut in_this_object: BTreeSet<u16> = BTreeSet::new();
    let mut by_protocol: BTreeSet<(u16, String)> = BTreeSet::new();
    if let Some(ports) = v.pointer_mut("/spec/ports").and_then(|p| p.as_array_mut()) {
        if !want {
            for p in ports.iter_mut() {
                let np = port_u16(p.get("nodePort"));
                if np != 0
                    && old_held.ports.contains(&np)
                    && svc_type(old.unwrap_or(&Value::Null)) != "ClusterIP"
                {
                    // Type changed away from NodePort: the apiserver drops the node ports.
                    if let Some(m) = p.as_object_mut() {
                        m.remove("nodePort");
                    }
                }
            }
        } else {
            // Requested numbers first, so a random pick can never take one of them.
            for (i, p) in ports.iter().enumerate() {
                let np = port_u16(p.get("nodePort"));
                if np == 0 {
                    continue;
                }
                let field = format!("spec.ports[{i}].nodePort");
                let proto = p.get("protocol").and_then(|x| x.as_str()).unwrap_or("TCP");
                if !by_protocol.insert((np, proto.to_string())) {
                    return Err(ApiError::invalid_field(
                        res,
                        name,
                        &field,
                        format!("Duplicate value: {np}"),
                    ));
                }
                if old_held.ports.contains(&np) || in_this_object.contains(&np) {
                    in_this_object.insert(np);
                    continue;
                }
                tx.a.node_ports.allocate(np).map_err(|e| {
                    ApiError::invalid_field(res, name, &field, format!("Invalid value: {np}: {e}"))
                })?;
                tx.taken.ports.push(np);
                in_this_object.insert(np);
            }
            for (i, p) in ports.iter_mut().enumerate() {
                if port_u16(p.get("nodePort")) != 0 {
                    continue;
                }
                // Keep the node port of the same service port from the stored object.
                let same = old_ports.iter().find(|op| {
                    op.get("port") == p.get("port") && op.get("protocol") == p.get("protocol")
                });
                let keep = same.map(|op| port_u16(op.get("nodePort"))).unwrap_or(0);
                if keep != 0 && !in_this_object.contains(&keep) {
                    p["nodePort"] = json!(keep);
                    in_this_object.insert(keep);
                    continue;
                }
                let field = format!("spec.ports[{i}].nodePort");
                let got = tx.a.node_ports.allocate_next().map_err(|e| {
                    ApiError::invalid_field(res, name, &field, format!("Invalid value: 0: {e}"))
                })?;
                tx.taken.ports.push(got);
                in_this_object.insert(got);
                p["nodePort"] = json!(got);
            }
        }
    }

    // Health check node port.
    if wants_health_port(v) {
        let hc = port_u16(v.pointer("/spec/healthCheckNodePort"));
        let old_hc = old
            .map(|o| port_u16(o.pointer("/spec/healthCheckNodePort")))
            .unwrap_or(0);
        if hc == 0 && old_hc != 0 {
            v["spec"]["healthCheckNodePort"] = json!(old_hc);
        } else if hc == 0 {
            let got = tx.a.node_ports.allocate_next().map_err(|e| {
                ApiError::invalid_field(
                    res,
                    name,
                    "spec.healthCheckNodePort",
                    format!("Invalid value: 0: {e}"),
                )
            })?;
            tx.taken.ports.push(got);
            v["spec"]["healthCheckNodePort"] = json!(got);
        } else if hc != old_hc && !in_this_object.contains(&hc) {
            tx.a.node_ports.allocate(hc).map_err(|e| {
                ApiError::invalid_field(
                    res,
                    name,
                    "spec.healthCheckNodePort",
                    format!("Invalid value: {hc}: {e}"),
                )
            })?;
            tx.taken.ports.push(hc);
        }
    } else if let Some(spec) = v["spec"].as_object_mut() {
        spec.remove("healthCheckNodePort");
    }
    Ok(())
}

/// What one Service write took, and what it gives up once stored.
struct ServiceHeld {
    taken: Taken,
    freed: Taken,
}

impl super::strategy::Held for ServiceHeld {
    fn commit(&self, reg: &Registry) {
        release(reg, &self.freed);
    }

    fn rollback(&self, reg: &Registry) {
        release(reg, &self.taken);
    }
}

/// The Service strategy: ClusterIP and NodePort allocation.
#[derive(Debug)]
pub struct ServiceStrategy;

impl super::strategy::Strategy for ServiceStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"loadBalancer": {}});
    }

    fn reserve(
        &self,
        reg: &Registry,
        res: &Resource,
        name: &str,
        old: Option<&Value>,
        new: &mut Value,
    ) -> ApiResult<Box<dyn super::strategy::Held>> {
        let (taken, freed) = match old {
            None => (allocate_create(reg, res, name, new)?, Taken::default()),
            Some(old) => allocate_update(reg, res, name, old, new)?,
        };
        Ok(Box::new(ServiceHeld { taken, freed }))
    }

    fn release_deleted(&self, reg: &Registry, v: &Value) {
        release(reg, &held_by(v));
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["spec.clusterIP", "spec.type"]
    }

    fn node_allowed(&self, r: &super::strategy::NodeRequest<'_>) -> bool {
        r.sub.is_none() && r.is_read()
    }
}
