//! Graceful pod deletion: a pod bound to a node is first marked with `deletionTimestamp`
//! (the node agent stops it and confirms with a zero-grace delete, as kubelet does); if
//! nothing confirms, the pod is removed once the deadline has passed.

use std::sync::Arc;
use std::time::Duration;

use crate::registry::{DeleteOptions, Registry};
use crate::resources::by_kind;

/// Removes every pod whose graceful-deletion deadline has passed.
pub async fn sweep(reg: &Registry) {
    let res = by_kind("Pod");
    let now = jiff::Timestamp::now();
    for s in reg.store().list(&res.prefix()).0 {
        // Cheap pre-filter on the shared bytes before parsing.
        if !s.json.windows(18).any(|w| w == b"\"deletionTimestamp") {
            continue;
        }
        let Ok(v) = s.value() else { continue };
        let Some(ts) = v
            .pointer("/metadata/deletionTimestamp")
            .and_then(|t| t.as_str())
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        else {
            continue;
        };
        if ts <= now {
            let (ns, name) = res.split_key(&s.key);
            let opts = DeleteOptions {
                grace_period_seconds: Some(0),
                precondition_uid: v
                    .pointer("/metadata/uid")
                    .and_then(|u| u.as_str())
                    .map(str::to_string),
                ..Default::default()
            };
            if let Err(e) = reg.delete(res, ns, name, &opts).await {
                if e.code != 404 {
                    tracing::warn!(pod = %s.key, error = %e, "removing terminated pod failed");
                }
            }
        }
    }
}

/// Runs the sweep every second.
pub async fn run(reg: Arc<Registry>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        sweep(&reg).await;
    }
}
