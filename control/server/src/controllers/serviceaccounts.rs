//! What every namespace has: the `default` ServiceAccount (upstream's serviceaccounts
//! controller) and the `kube-root-ca.crt` ConfigMap holding the cluster CA (upstream's
//! root-ca-cert-publisher), which pods mount to trust the API server. Each is made when the
//! namespace appears, made again if deleted while the namespace lives, and the ConfigMap is
//! put back to the CA if someone changes it.

use std::sync::Arc;

use serde_json::json;
use sluice_store::EventType;

use super::{kind_of_key, str_at};
use crate::registry::{Part, Registry};
use crate::resources::by_kind;

/// The ServiceAccount every namespace has.
pub const DEFAULT: &str = "default";
/// The ConfigMap with the cluster CA in every namespace.
pub const ROOT_CA: &str = "kube-root-ca.crt";

async fn reconcile(reg: Arc<Registry>, ns: String, ca: Option<&str>) -> Result<(), String> {
    let Ok(n) = reg.get_value(by_kind("Namespace"), None, &ns) else {
        return Ok(());
    };
    if n.pointer("/metadata/deletionTimestamp").is_some()
        || str_at(&n, "/status/phase") == Some("Terminating")
    {
        return Ok(());
    }
    let ignore_gone = |r: Result<(), crate::status::ApiError>| match r {
        // Made meanwhile, or the namespace is going.
        Err(e) if matches!(e.code, 409 | 403 | 404) => Ok(()),
        other => other.map_err(|e| e.to_string()),
    };
    let sas = by_kind("ServiceAccount");
    if reg.get(sas, Some(&ns), DEFAULT).is_err() {
        let made = reg
            .create(sas, Some(&ns), json!({"metadata": {"name": DEFAULT}}))
            .await;
        ignore_gone(made.map(|_| ()))?;
    }
    let Some(ca) = ca else { return Ok(()) };
    let cms = by_kind("ConfigMap");
    let want = json!({"ca.crt": ca});
    match reg.get_value(cms, Some(&ns), ROOT_CA) {
        Ok(cm) if cm.get("data") == Some(&want) => Ok(()),
        Ok(mut cm) => {
            cm["data"] = want;
            let put = reg.update(cms, Some(&ns), ROOT_CA, cm, Part::Main).await;
            ignore_gone(put.map(|_| ()))
        }
        Err(_) => {
            let made = reg
                .create(
                    cms,
                    Some(&ns),
                    json!({"metadata": {"name": ROOT_CA}, "data": want}),
                )
                .await;
            ignore_gone(made.map(|_| ()))
        }
    }
}

/// Runs the controller; `ca` is the cluster CA in PEM.
pub async fn run(reg: Arc<Registry>, ca: Option<String>) {
    let ca: Arc<Option<String>> = Arc::new(ca);
    super::run_dirty_loop(
        reg,
        "serviceaccounts",
        |_reg, ev| {
            let deleted = ev.event_type == EventType::Deleted;
            match kind_of_key(&ev.object.key) {
                Some("Namespace") if !deleted => {
                    let (_, name) = by_kind("Namespace").split_key(&ev.object.key);
                    vec![name.to_string()]
                }
                Some(k @ ("ServiceAccount" | "ConfigMap")) => {
                    let (ns, name) = by_kind(k).split_key(&ev.object.key);
                    let ours = (k == "ServiceAccount" && name == DEFAULT && deleted)
                        || (k == "ConfigMap" && name == ROOT_CA);
                    match ns {
                        Some(ns) if ours => vec![ns.to_string()],
                        _ => Vec::new(),
                    }
                }
                _ => Vec::new(),
            }
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
        move |reg, ns| {
            let ca = ca.clone();
            async move { reconcile(reg, ns, ca.as_deref()).await }
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::testing::{registry, until};

    #[tokio::test]
    async fn every_namespace_gets_the_default_account_and_the_ca() {
        let reg = registry().await;
        let task = tokio::spawn(run(reg.clone(), Some("PEM".into())));
        reg.create(
            by_kind("Namespace"),
            None,
            json!({"metadata": {"name": "shop"}}),
        )
        .await
        .unwrap();
        let ca = |reg: &Registry| {
            reg.get_value(by_kind("ConfigMap"), Some("shop"), ROOT_CA)
                .ok()
                .and_then(|c| c["data"]["ca.crt"].as_str().map(str::to_string))
        };
        until("the namespace's defaults", || {
            reg.get(by_kind("ServiceAccount"), Some("shop"), DEFAULT)
                .is_ok()
                && ca(&reg).as_deref() == Some("PEM")
        })
        .await;
        // Changed or deleted: put back.
        let mut cm = reg
            .get_value(by_kind("ConfigMap"), Some("shop"), ROOT_CA)
            .unwrap();
        cm["data"]["ca.crt"] = json!("forged");
        reg.update(by_kind("ConfigMap"), Some("shop"), ROOT_CA, cm, Part::Main)
            .await
            .unwrap();
        reg.delete(
            by_kind("ServiceAccount"),
            Some("shop"),
            DEFAULT,
            &Default::default(),
        )
        .await
        .unwrap();
        until("the defaults restored", || {
            reg.get(by_kind("ServiceAccount"), Some("shop"), DEFAULT)
                .is_ok()
                && ca(&reg).as_deref() == Some("PEM")
        })
        .await;
        task.abort();
    }
}
