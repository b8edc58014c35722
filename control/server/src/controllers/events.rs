//! Events the controllers record (`kubectl describe` and `kubectl get events` show them), and
//! their time to live.
//!
//! Each controller writes core/v1 Events as upstream's event recorder does: named
//! `<object>.<hex nanoseconds>`, in the object's namespace, with `involvedObject`,
//! `source.component`, `reportingComponent`, first/last timestamps and a count. A repeat of
//! the same (object, reason, message) within the TTL bumps the count and `lastTimestamp` of the
//! existing Event instead of writing another, as the recorder's correlator does. Events older
//! than the TTL (default one hour, `--event-ttl` upstream) are deleted by [`run_ttl`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::str_at;
use crate::registry::{DeleteOptions, Part, Registry};
use crate::resources::RESOURCES;

/// What an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Regarding {
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// Namespace ("" for cluster-scoped objects: the event then goes to `default`).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

/// What makes two events the same one (object uid, reason, message).
type Correlation = (String, String, String);

/// Writes Events for one controller.
#[derive(Debug, Clone)]
pub struct Recorder {
    component: &'static str,
    /// (object uid, reason, message) → the Event written for it (namespace, name).
    seen: Arc<Mutex<HashMap<Correlation, (String, String)>>>,
}

impl Recorder {
    /// A recorder writing as `component` (e.g. `deployment-controller`).
    pub fn new(component: &'static str) -> Self {
        Recorder {
            component,
            seen: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Records an event in the background: the controller goes on without waiting for the
    /// Event's durable write (upstream's recorder also writes from its own goroutine). The
    /// name and time are taken now, so Events still sort in the order they happened.
    pub fn emit(
        &self,
        reg: &Arc<Registry>,
        regarding: Regarding,
        event_type: &'static str,
        reason: String,
        message: String,
    ) {
        let (rec, reg) = (self.clone(), reg.clone());
        let at = jiff::Timestamp::now();
        tokio::spawn(async move {
            rec.write(&reg, &regarding, event_type, &reason, &message, at)
                .await
        });
    }

    /// Writes an event now; failures are logged, never returned (events are best effort, as
    /// upstream's recorder treats them).
    async fn write(
        &self,
        reg: &Registry,
        regarding: &Regarding,
        event_type: &str,
        reason: &str,
        message: &str,
        at: jiff::Timestamp,
    ) {
        let Some(res) = RESOURCES
            .iter()
            .find(|r| r.kind == "Event" && r.group.is_empty())
        else {
            return;
        };
        let ns = if regarding.namespace.is_empty() {
            "default".to_string()
        } else {
            regarding.namespace.clone()
        };
        let now = at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let key = (
            regarding.uid.clone(),
            reason.to_string(),
            message.to_string(),
        );
        let earlier = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some((ens, ename)) = earlier {
            if let Ok(mut ev) = reg.get_value(res, Some(&ens), &ename) {
                let count = ev["count"].as_i64().unwrap_or(1) + 1;
                ev["count"] = json!(count);
                ev["lastTimestamp"] = json!(now);
                if reg
                    .update(res, Some(&ens), &ename, ev, Part::Main)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
        }
        let nanos = at.as_nanosecond();
        let name = format!("{}.{:x}", regarding.name, nanos);
        let ev = json!({
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {
                "apiVersion": regarding.api_version,
                "kind": regarding.kind,
                "namespace": regarding.namespace,
                "name": regarding.name,
                "uid": regarding.uid,
            },
            "reason": reason,
            "message": message,
            "type": event_type,
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": "",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        match reg.create(res, Some(&ns), ev).await {
            Ok(_) => {
                let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                // Bounded: the map is only a shortcut to the Event to bump.
                if seen.len() > 10_000 {
                    seen.clear();
                }
                seen.insert(key, (ns, name));
            }
            Err(e) => {
                tracing::debug!(component = self.component, reason, error = %e, "event not recorded");
            }
        }
    }
}

/// The time an event was last seen (`lastTimestamp`, `eventTime`, `series.lastObservedTime`,
/// or its creation).
fn last_seen(ev: &Value) -> Option<jiff::Timestamp> {
    [
        "/lastTimestamp",
        "/series/lastObservedTime",
        "/eventTime",
        "/deprecatedLastTimestamp",
        "/metadata/creationTimestamp",
    ]
    .iter()
    .filter_map(|p| str_at(ev, p))
    .find_map(|t| t.parse::<jiff::Timestamp>().ok())
}

/// Deletes every Event (core and events.k8s.io share the storage upstream; here each kind
/// is swept) last seen more than `ttl` ago.
pub async fn sweep(reg: &Registry, ttl: Duration) {
    let cutoff = jiff::Timestamp::now() - jiff::SignedDuration::try_from(ttl).unwrap_or_default();
    for res in RESOURCES.iter().filter(|r| r.kind == "Event") {
        for s in reg.store().list(&res.prefix()).0 {
            let Ok(v) = s.value() else { continue };
            if last_seen(&v).is_some_and(|t| t < cutoff) {
                let (ns, name) = res.split_key(&s.key);
                let opts = DeleteOptions {
                    precondition_rv: Some(s.mod_revision.to_string()),
                    ..Default::default()
                };
                if let Err(e) = reg.delete(res, ns, name, &opts).await {
                    tracing::debug!(event = %s.key, error = %e, "expired event not deleted");
                }
            }
        }
    }
}

/// Sweeps expired events every minute (or every `ttl`, if shorter).
pub async fn run_ttl(reg: Arc<Registry>, ttl: Duration) {
    let mut tick = tokio::time::interval(ttl.min(Duration::from_secs(60)));
    loop {
        tick.tick().await;
        sweep(&reg, ttl).await;
    }
}
