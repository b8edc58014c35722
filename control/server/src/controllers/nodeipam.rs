//! Node IPAM: every Node without a podCIDR gets one (the lowest free
//! `/--node-cidr-mask-size` subnet of `--cluster-cidr`), written to `spec.podCIDR` and
//! `spec.podCIDRs`. The reservations themselves are the registry's: it reserves every podCIDR
//! a Node is written with (including one a node registers with), rebuilds them from the stored
//! Nodes at start-up, and releases them when the Node is deleted (see `registry::node`).

use std::sync::Arc;

use serde_json::json;

use super::{kind_of_key, name_of, str_at};
use crate::alloc::Holder;
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
    let holder = Holder::new(node, str_at(&v, "/metadata/uid").unwrap_or(""));
    let cidr = reg.allocate_pod_cidr(&holder).map_err(|e| e.to_string())?;
    v["spec"]["podCIDR"] = json!(cidr.to_string());
    v["spec"]["podCIDRs"] = json!([cidr.to_string()]);
    // The write takes its own claim on the block; this one only kept it from being picked by
    // anyone else until then.
    let written = reg.update(res, None, node, v, Part::Main).await;
    reg.release_pod_cidr(&holder, cidr);
    match written {
        Ok(_) => {
            tracing::info!(node, %cidr, "allocated podCIDR");
            Ok(())
        }
        Err(e) => Err(e.to_string()),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use sluice_store::{RedbStore, Store, StoreOptions};

    use super::*;
    use crate::registry::{DeleteOptions, RegistryConfig};

    fn cidr(reg: &Registry, n: &str) -> Option<String> {
        let v = reg.get_value(by_kind("Node"), None, n).ok()?;
        str_at(&v, "/spec/podCIDR").map(str::to_string)
    }

    #[tokio::test]
    async fn nodes_get_distinct_cidrs_reused_after_delete_and_full_range_errors() {
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::in_memory(StoreOptions::default()).unwrap());
        let reg = Registry::new(
            store,
            RegistryConfig {
                cluster_cidr: "10.244.0.0/23".parse().unwrap(),
                ..RegistryConfig::default()
            },
        );
        let nodes = by_kind("Node");
        for n in ["a", "b", "c"] {
            reg.create(nodes, None, json!({"metadata": {"name": n}}))
                .await
                .unwrap();
        }
        reconcile(&reg, "a").await.unwrap();
        reconcile(&reg, "b").await.unwrap();
        assert_eq!(cidr(&reg, "a").as_deref(), Some("10.244.0.0/24"));
        assert_eq!(cidr(&reg, "b").as_deref(), Some("10.244.1.0/24"));
        let v = reg.get_value(nodes, None, "a").unwrap();
        assert_eq!(v["spec"]["podCIDRs"], json!(["10.244.0.0/24"]));
        // A reconcile of a node that has one is a no-op.
        let rev = reg.store().revision();
        reconcile(&reg, "a").await.unwrap();
        assert_eq!(reg.store().revision(), rev);
        // The /23 is exhausted: a clear error, and nothing written.
        let e = reconcile(&reg, "c").await.unwrap_err();
        assert!(e.contains("range is full"), "{e}");
        assert_eq!(cidr(&reg, "c"), None);
        reg.delete(nodes, None, "a", &DeleteOptions::default())
            .await
            .unwrap();
        reconcile(&reg, "c").await.unwrap();
        assert_eq!(cidr(&reg, "c").as_deref(), Some("10.244.0.0/24"));
    }
}
