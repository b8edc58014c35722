//! Leader election for the controllers, on a `coordination.k8s.io/v1` Lease, as client-go's
//! `leaderelection` package does it for kube-controller-manager.
//!
//! Every API server runs an elector; the one holding the Lease
//! (`kube-system/sluice-controller-manager` by default) runs the controllers, the others wait.
//! The holder renews every `retry_period`; if it cannot renew for `renew_deadline` it stops
//! its controllers (and waits for them to end) before trying to acquire again. Another
//! instance takes the Lease only once it has seen the same record unchanged for
//! `lease_duration` — measured on its own clock from when it saw the record change, so clocks
//! need not agree — and `renew_deadline < lease_duration` means the old holder has stopped by
//! then. Every write is a compare-and-swap on the Lease's resourceVersion, so two candidates
//! can never both win.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::registry::{Part, Registry};
use crate::resources::by_kind;
use crate::status::ApiResult;

/// Leader election settings (`--leader-elect*`; defaults are kube-controller-manager's).
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Run the election at all; without it every instance runs the controllers.
    pub enabled: bool,
    /// How long a non-holder waits, after last seeing the record change, before taking over.
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before it stops its controllers.
    pub renew_deadline: Duration,
    /// Pause between attempts to acquire or renew.
    pub retry_period: Duration,
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This instance's identity (`holderIdentity`); empty: `<hostname>_<listen address>`,
    /// filled in at start. It stays the same across restarts, so a restarted API server takes
    /// its own Lease back at once instead of waiting for it to expire.
    pub identity: String,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig {
            enabled: true,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            namespace: "kube-system".to_string(),
            name: "sluice-controller-manager".to_string(),
            identity: String::new(),
        }
    }
}

/// The default identity of an API server listening on `addr`: unique on a host (two servers
/// cannot listen on one address; several behind one advertised address still differ), the
/// hostname tells hosts apart, and it survives restarts.
pub fn default_identity(addr: std::net::SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "sluice".to_string());
    format!("{host}_{addr}")
}

/// The Lease's spec as an elector compares it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Record {
    holder: String,
    duration_seconds: i64,
    acquire_time: String,
    renew_time: String,
    transitions: i64,
}

impl Record {
    fn from_lease(v: &Value) -> Self {
        let s = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let i = |p: &str| v.pointer(p).and_then(Value::as_i64).unwrap_or(0);
        Record {
            holder: s("/spec/holderIdentity"),
            duration_seconds: i("/spec/leaseDurationSeconds"),
            acquire_time: s("/spec/acquireTime"),
            renew_time: s("/spec/renewTime"),
            transitions: i("/spec/leaseTransitions"),
        }
    }

    fn spec(&self) -> Value {
        json!({
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.duration_seconds,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        })
    }
}

/// `MicroTime` now.
fn micro_now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

/// One candidate's view: the last record it saw and when (on its own clock) it changed.
pub(crate) struct Elector {
    reg: Arc<Registry>,
    cfg: LeaderConfig,
    observed: Option<(Record, Instant)>,
}

impl Elector {
    pub(crate) fn new(reg: Arc<Registry>, cfg: LeaderConfig) -> Self {
        Elector {
            reg,
            cfg,
            observed: None,
        }
    }

    /// One attempt: `Ok(true)` when this instance holds the Lease afterwards.
    pub(crate) async fn try_acquire_or_renew(&mut self) -> ApiResult<bool> {
        let res = by_kind("Lease");
        let ns = Some(self.cfg.namespace.as_str());
        let now = micro_now();
        let mine = |acquire_time: String, transitions: i64| Record {
            holder: self.cfg.identity.clone(),
            // Whole seconds, at least one (the API's validation).
            duration_seconds: self.cfg.lease_duration.as_secs_f64().ceil().max(1.0) as i64,
            acquire_time,
            renew_time: now.clone(),
            transitions,
        };
        // Decide on the newest record anywhere, not on this server's possibly lagging cache.
        self.reg
            .store()
            .fresh()
            .await
            .map_err(crate::registry::store_unavailable)?;
        let current = match self.reg.get_value(res, ns, &self.cfg.name) {
            Ok(v) => v,
            Err(e) if e.code == 404 => {
                let rec = mine(now.clone(), 0);
                let lease = json!({
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.cfg.name, "namespace": self.cfg.namespace},
                    "spec": rec.spec(),
                });
                return match self.reg.create(res, ns, lease).await {
                    Ok(_) => {
                        self.observed = Some((rec, Instant::now()));
                        Ok(true)
                    }
                    Err(e) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let record = Record::from_lease(&current);
        let changed = self.observed.as_ref().is_none_or(|(r, _)| *r != record);
        if changed {
            self.observed = Some((record.clone(), Instant::now()));
        }
        let seen_at = self
            .observed
            .as_ref()
            .map(|(_, t)| *t)
            .unwrap_or_else(Instant::now);
        let held_by_other = !record.holder.is_empty() && record.holder != self.cfg.identity;
        let duration = Duration::from_secs(record.duration_seconds.max(1) as u64);
        if held_by_other && seen_at.elapsed() < duration {
            return Ok(false);
        }
        let next = if record.holder == self.cfg.identity {
            mine(record.acquire_time.clone(), record.transitions)
        } else {
            mine(now.clone(), record.transitions + 1)
        };
        let mut lease = current;
        lease["spec"] = next.spec();
        match self
            .reg
            .update(res, ns, &self.cfg.name, lease, Part::Main)
            .await
        {
            Ok(_) => {
                self.observed = Some((next, Instant::now()));
                Ok(true)
            }
            Err(e) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Gives the Lease up if this instance holds it (on shutdown), so another instance takes over
/// at once instead of waiting for it to expire.
pub async fn release(reg: &Registry, cfg: &LeaderConfig) {
    if !cfg.enabled {
        return;
    }
    let res = by_kind("Lease");
    let ns = Some(cfg.namespace.as_str());
    let Ok(mut lease) = reg.get_value(res, ns, &cfg.name) else {
        return;
    };
    if Record::from_lease(&lease).holder != cfg.identity {
        return;
    }
    lease["spec"]["holderIdentity"] = Value::String(String::new());
    lease["spec"]["leaseDurationSeconds"] = json!(1);
    lease["spec"]["renewTime"] = Value::String(micro_now());
    match reg.update(res, ns, &cfg.name, lease, Part::Main).await {
        Ok(_) => info!("released the controller lease"),
        Err(e) => warn!(error = %e, "could not release the controller lease"),
    }
}

/// Running controllers; dropping this aborts them (so aborting the elector, on shutdown,
/// stops them too).
struct Running(Vec<JoinHandle<()>>);
impl Running {
    async fn stop(&mut self) {
        let handles = std::mem::take(&mut self.0);
        for h in &handles {
            h.abort();
        }
        for h in handles {
            let _ = h.await;
        }
    }
}
impl Drop for Running {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// Runs `start`'s controllers while this instance holds the Lease, for ever: acquire, run,
/// renew; on losing the Lease stop them and start over. Without election, runs them at once.
pub async fn run<F>(reg: Arc<Registry>, cfg: LeaderConfig, start: F)
where
    F: Fn() -> Vec<JoinHandle<()>> + Send + 'static,
{
    if !cfg.enabled {
        let mut running = Running(start());
        for h in running.0.iter_mut() {
            let _ = h.await;
        }
        return;
    }
    let mut el = Elector::new(reg, cfg.clone());
    let mut running = Running(Vec::new());
    loop {
        // Acquire.
        loop {
            match el.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election: cannot read or write the lease"),
            }
            tokio::time::sleep(cfg.retry_period).await;
        }
        info!(identity = %cfg.identity, lease = %format!("{}/{}", cfg.namespace, cfg.name), "became the controller leader; starting controllers");
        running.0 = start();
        // Renew until it fails for longer than the deadline, or someone else holds it.
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(cfg.retry_period).await;
            let attempt = tokio::time::timeout(cfg.renew_deadline, el.try_acquire_or_renew()).await;
            match attempt {
                Ok(Ok(true)) => renewed = Instant::now(),
                Ok(Ok(false)) => {
                    warn!("the controller lease is held by another instance");
                    break;
                }
                Ok(Err(e)) => warn!(error = %e, "leader election: renewing the lease failed"),
                Err(_) => warn!("leader election: renewing the lease timed out"),
            }
            if renewed.elapsed() >= cfg.renew_deadline {
                warn!("could not renew the controller lease within the deadline");
                break;
            }
        }
        // Stop everything before anyone else may start: the others wait a whole lease
        // duration after the last renewal they saw.
        running.stop().await;
        warn!("lost the controller lease; controllers stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::testing::registry;

    fn cfg(id: &str) -> LeaderConfig {
        LeaderConfig {
            lease_duration: Duration::from_secs(1),
            renew_deadline: Duration::from_millis(600),
            retry_period: Duration::from_millis(100),
            identity: id.to_string(),
            ..LeaderConfig::default()
        }
    }

    fn lease(reg: &Registry) -> Value {
        reg.get_value(
            by_kind("Lease"),
            Some("kube-system"),
            "sluice-controller-manager",
        )
        .unwrap()
    }

    #[tokio::test]
    async fn one_holder_and_takeover_only_after_the_lease_duration() {
        let reg = registry().await;
        let mut a = Elector::new(reg.clone(), cfg("a"));
        let mut b = Elector::new(reg.clone(), cfg("b"));
        assert!(a.try_acquire_or_renew().await.unwrap());
        assert!(!b.try_acquire_or_renew().await.unwrap());
        let l = lease(&reg);
        assert_eq!(l["spec"]["holderIdentity"], "a");
        assert_eq!(l["spec"]["leaseDurationSeconds"], 1);
        assert_eq!(l["spec"]["leaseTransitions"], 0);
        let acquired = l["spec"]["acquireTime"].clone();
        // Renewals keep it: b keeps seeing a changing record, so it never counts as expired.
        for _ in 0..15 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(a.try_acquire_or_renew().await.unwrap());
            assert!(!b.try_acquire_or_renew().await.unwrap());
        }
        assert_eq!(lease(&reg)["spec"]["acquireTime"], acquired);
        // a stops renewing: b takes over once it has seen the same record for the duration.
        let t = Instant::now();
        while !b.try_acquire_or_renew().await.unwrap() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        let l = lease(&reg);
        assert_eq!(l["spec"]["holderIdentity"], "b");
        assert_eq!(l["spec"]["leaseTransitions"], 1);
        // The old holder finds out and does not get it back.
        assert!(!a.try_acquire_or_renew().await.unwrap());
    }

    #[tokio::test]
    async fn controllers_run_only_in_the_holder_and_stop_before_a_takeover() {
        let reg = registry().await;
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let start = |count: Arc<std::sync::atomic::AtomicUsize>| {
            move || {
                let c = count.clone();
                vec![tokio::spawn(async move {
                    c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    // Decrements when aborted.
                    struct Dec(Arc<std::sync::atomic::AtomicUsize>);
                    impl Drop for Dec {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    let _d = Dec(c);
                    std::future::pending::<()>().await;
                })]
            }
        };
        let a = tokio::spawn(run(reg.clone(), cfg("a"), start(count.clone())));
        crate::controllers::testing::until("a leads", || {
            count.load(std::sync::atomic::Ordering::SeqCst) == 1
        })
        .await;
        let b = tokio::spawn(run(reg.clone(), cfg("b"), start(count.clone())));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            count.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one leader"
        );
        assert_eq!(lease(&reg)["spec"]["holderIdentity"], "a");
        // a dies (its controllers with it); b takes over.
        a.abort();
        let _ = a.await;
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 0);
        crate::controllers::testing::until("b leads", || {
            count.load(std::sync::atomic::Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(lease(&reg)["spec"]["holderIdentity"], "b");
        // A graceful stop hands the Lease over at once.
        b.abort();
        let _ = b.await;
        release(&reg, &cfg("b")).await;
        assert_eq!(lease(&reg)["spec"]["holderIdentity"], "");
        let mut c = Elector::new(reg.clone(), cfg("c"));
        assert!(c.try_acquire_or_renew().await.unwrap());
    }
}
