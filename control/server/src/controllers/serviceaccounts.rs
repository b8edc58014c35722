//! The `default` ServiceAccount in every namespace (upstream's serviceaccounts controller):
//! made when a namespace appears, and again if it is deleted while the namespace lives.

use std::sync::Arc;

use serde_json::json;
use sluice_store::EventType;

use super::{kind_of_key, str_at};
use crate::registry::Registry;
use crate::resources::by_kind;

/// The ServiceAccount every namespace has.
pub const DEFAULT: &str = "default";

async fn reconcile(reg: Arc<Registry>, ns: String) -> Result<(), String> {
    let Ok(n) = reg.get_value(by_kind("Namespace"), None, &ns) else {
        return Ok(());
    };
    if n.pointer("/metadata/deletionTimestamp").is_some()
        || str_at(&n, "/status/phase") == Some("Terminating")
    {
        return Ok(());
    }
    let sas = by_kind("ServiceAccount");
    if reg.get(sas, Some(&ns), DEFAULT).is_ok() {
        return Ok(());
    }
    match reg
        .create(sas, Some(&ns), json!({"metadata": {"name": DEFAULT}}))
        .await
    {
        Ok(_) => Ok(()),
        // Made meanwhile, or the namespace is going.
        Err(e) if e.code == 409 || e.code == 403 || e.code == 404 => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs the controller.
pub async fn run(reg: Arc<Registry>) {
    super::run_dirty_loop(
        reg,
        "serviceaccounts",
        |_reg, ev| match kind_of_key(&ev.object.key) {
            Some("Namespace") if ev.event_type != EventType::Deleted => {
                let (_, name) = by_kind("Namespace").split_key(&ev.object.key);
                vec![name.to_string()]
            }
            Some("ServiceAccount") if ev.event_type == EventType::Deleted => {
                let (ns, name) = by_kind("ServiceAccount").split_key(&ev.object.key);
                match ns {
                    Some(ns) if name == DEFAULT => vec![ns.to_string()],
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        },
        |reg| {
            let nsr = by_kind("Namespace");
            reg.store()
                .list(&nsr.prefix())
                .0
                .iter()
                .map(|s| nsr.split_key(&s.key).1.to_string())
                .collect()
        },
        reconcile,
    )
    .await
}
