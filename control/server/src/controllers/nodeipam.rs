//! Node IPAM: every Node gets a podCIDR (a `/--node-cidr-mask-size` subnet of
//! `--cluster-cidr`), written to `spec.podCIDR` and `spec.podCIDRs`. Allocations are rebuilt
//! from the stored Nodes at start-up, so a node keeps its CIDR across restarts, and are
//! released when the Node is deleted.

use std::sync::Arc;

use serde_json::json;

use super::{kind_of_key, name_of, str_at};
use crate::registry::{Part, Registry};
use crate::resources::by_kind;

fn needs_cidr(v: &serde_json::Value) -> bool {
    str_at(v, "/spec/podCIDR").is_none_or(|c| c.is_empty())
}

/// Assigns a podCIDR to one node if it has none.
pub async fn reconcile(reg: &Registry, node: &str) -> Result<(), String> {
    let res = by_kind("Node");
    let Ok(mut v) = reg.get_value(res, None, node) else {
        return Ok(());
    };
    if !needs_cidr(&v) {
        return Ok(());
    }
    let cidr = reg.allocate_pod_cidr().map_err(|e| e.to_string())?;
    v["spec"]["podCIDR"] = json!(cidr.to_string());
    v["spec"]["podCIDRs"] = json!([cidr.to_string()]);
    match reg.update(res, None, node, v, Part::Main).await {
        Ok(_) => {
            tracing::info!(node, %cidr, "allocated podCIDR");
            Ok(())
        }
        Err(e) => {
            reg.release_pod_cidr(cidr);
            Err(e.to_string())
        }
    }
}

/// Runs the controller.
pub async fn run(reg: Arc<Registry>) {
    super::run_dirty_loop(
        reg,
        "nodeipam",
        |_, ev| {
            if kind_of_key(&ev.object.key) != Some("Node")
                || ev.event_type == sluice_store::EventType::Deleted
            {
                return Vec::new();
            }
            match ev.object.value() {
                Ok(v) if needs_cidr(&v) => vec![name_of(&v).to_string()],
                _ => Vec::new(),
            }
        },
        |reg| {
            reg.store()
                .list(&by_kind("Node").prefix())
                .0
                .iter()
                .filter_map(|s| s.value().ok())
                .filter(needs_cidr)
                .map(|v| name_of(&v).to_string())
                .collect()
        },
        |reg, node| async move { reconcile(&reg, &node).await },
    )
    .await
}
