//! [`IpvsDataplane`]: the mode's [`Dataplane`], plans applied through a [`Kernel`].
//!
//! A **full** sync (the first, the one after a failure, the periodic one) rebuilds the wanted
//! state, lists the kernel — every IPVS virtual server, the destinations of Sluice's, the
//! dummy link's addresses — writes the whole companion table in one `nft -f` transaction and
//! applies the plan from what is there: an agent restart changes nothing that is right. A
//! **partial** sync recomputes only the changed services, re-reads the destinations of their
//! virtual servers (connection counts decide drain or delete), writes the companion table's
//! element changes, and applies the plan of those front ends only.
//!
//! The companion table goes first: a front end losing its last endpoint rejects before its
//! destination goes, and a new front end's masquerade is in place before its virtual server
//! takes traffic.
//!
//! One failed operation does not stop the others (a Service whose scheduler the kernel lacks
//! must not keep every other Service from converging): the sync goes on with the next front
//! end and then reports the failures, so the next sync is full and retries.
//!
//! Drained destinations are checked by a background thread every
//! [`DRAIN_CHECK_INTERVAL`] (a partial sync with nothing changed never reaches the dataplane):
//! it re-reads those virtual servers and deletes what the plan says is done.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sluice_proxy::conntrack::Conntrack;
use sluice_proxy::model::{EndpointsMap, ServicePortMap};
use sluice_proxy::proxier::{Changes, Dataplane, Error as SyncError};
use tracing::{debug, info, warn};

use crate::backend::Kernel;
use crate::error::Error;
use crate::netlink::Service;
use crate::plan::{
    addresses_of, netlink_dest, plan, Config, Current, FrontEnd, Listing, Model, Op, Scope,
};
use crate::render::{self, NftState};

/// How often drained destinations are checked.
pub const DRAIN_CHECK_INTERVAL: Duration = Duration::from_secs(15);

const NAME: &str = "ipvs";

/// A clock for drain times (seconds since the dataplane started, in production).
pub type Clock = Box<dyn Fn() -> Duration + Send>;

/// The sync state, shared with the drain thread.
struct Engine {
    cfg: Config,
    kernel: Box<dyn Kernel>,
    clock: Clock,
    model: Model,
    current: Current,
    nft: NftState,
    /// The dummy link's index.
    link: u32,
    /// `current`, `model` and `nft` describe the kernel (the last sync succeeded).
    known: bool,
    conntrack: Option<Conntrack>,
}

fn id_service(fe: &FrontEnd) -> Service {
    fe.service("", None)
}

impl Engine {
    fn list(&mut self, now: Duration) -> Result<(), Error> {
        self.link = self.kernel.ensure_link()?;
        let addresses: BTreeSet<IpAddr> =
            self.kernel.link_addresses(self.link)?.into_iter().collect();
        let mut listed: Listing = Vec::new();
        for s in self.kernel.services()? {
            if Current::is_ours(&s, &addresses, &self.cfg, &self.model) {
                let d = self.kernel.destinations(&s)?;
                listed.push((s, d));
            }
        }
        let draining = std::mem::take(&mut self.current.draining);
        self.current = Current::from_kernel(&listed, addresses, &self.model, &draining, now);
        Ok(())
    }

    /// Re-reads the destinations of those of `front_ends` that exist.
    fn refresh(&mut self, front_ends: &BTreeSet<FrontEnd>, now: Duration) -> Result<(), Error> {
        for fe in front_ends {
            if self.current.services.contains_key(fe) {
                let d = self.kernel.destinations(&id_service(fe))?;
                self.current.refresh(*fe, &d, &self.model, now);
            }
        }
        Ok(())
    }

    fn apply_op(&mut self, op: &Op) -> Result<(), Error> {
        let k = &mut self.kernel;
        match op {
            Op::AddService {
                fe,
                scheduler,
                persistence,
            } => {
                let svc = fe.service(scheduler, *persistence);
                match k.add_service(&svc) {
                    // Not in the listing, yet there (created meanwhile): make it right.
                    Err(e) if e.errno() == Some(libc::EEXIST) => k.update_service(&svc),
                    r => r,
                }
            }
            Op::UpdateService {
                fe,
                scheduler,
                persistence,
            } => k.update_service(&fe.service(scheduler, *persistence)),
            Op::AddDest { fe, .. } => {
                let d = netlink_dest(op).expect("a destination op");
                match k.add_destination(&id_service(fe), &d) {
                    Err(e) if e.errno() == Some(libc::EEXIST) => {
                        k.update_destination(&id_service(fe), &d)
                    }
                    r => r,
                }
            }
            Op::RestoreDest { fe, .. } | Op::DrainDest { fe, .. } => {
                let d = netlink_dest(op).expect("a destination op");
                k.update_destination(&id_service(fe), &d)
            }
            Op::DeleteDest { fe, .. } => {
                let d = netlink_dest(op).expect("a destination op");
                match k.delete_destination(&id_service(fe), &d) {
                    Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
                    r => r,
                }
            }
            Op::BindAddress(ip) => k.add_address(self.link, *ip),
            Op::DeleteService { fe } => match k.delete_service(&id_service(fe)) {
                Err(e) if e.errno() == Some(libc::ESRCH) => Ok(()),
                r => r,
            },
            Op::UnbindAddress(ip) => k.delete_address(self.link, *ip),
        }
    }

    /// Applies `ops` in order; an operation on a front end whose earlier operation failed is
    /// skipped. Returns the failures.
    fn apply_all(&mut self, ops: &[Op], now: Duration) -> Vec<Error> {
        let mut failed: BTreeSet<FrontEnd> = BTreeSet::new();
        let mut errors = Vec::new();
        for op in ops {
            if op.front_end().is_some_and(|f| failed.contains(&f)) {
                continue;
            }
            match self.apply_op(op) {
                Ok(()) => self.current.apply(op, now),
                Err(e) => {
                    warn!(op = %op, error = %e, "ipvs operation failed");
                    failed.extend(op.front_end());
                    errors.push(e);
                }
            }
        }
        errors
    }

    fn sync(
        &mut self,
        services: &ServicePortMap,
        endpoints: &EndpointsMap,
        changes: &Changes,
    ) -> Result<(), Error> {
        let now = (self.clock)();
        let full = changes.full || !self.known;
        self.known = false;
        let started = Instant::now();
        let ops = if full {
            self.model = Model::build(services, endpoints, &self.cfg, &changes.node_labels);
            self.list(now)?;
            let (script, state) = render::full(&self.model, &self.cfg.node);
            if let Err(e) = self.kernel.nft(&script) {
                // A table nft cannot extend (another layout, objects changed by hand) is
                // replaced in the same transaction.
                warn!(error = %e, "ipvs mode: writing the companion table failed; replacing it");
                self.kernel.nft(&render::replace(&script, &self.cfg.node))?;
            }
            self.nft = state;
            plan(&self.model, &self.current, &self.cfg, Scope::All, now)
        } else {
            let ports = self.model.changed_ports(changes, services);
            let touched =
                self.model
                    .update(&ports, services, endpoints, &self.cfg, &changes.node_labels);
            self.refresh(&touched, now)?;
            let script = render::delta(&mut self.nft, &self.model, &touched, &self.cfg.node);
            if !script.is_empty() {
                self.kernel.nft(&script)?;
            }
            let addresses = addresses_of(&touched);
            plan(
                &self.model,
                &self.current,
                &self.cfg,
                Scope::Some {
                    front_ends: &touched,
                    addresses: &addresses,
                },
                now,
            )
        };
        let errors = self.apply_all(&ops, now);
        let took = started.elapsed();
        if full {
            info!(
                virtual_servers = self.model.desired().len(),
                ops = ops.len(),
                ?took,
                "ipvs full sync"
            );
        } else {
            debug!(ops = ops.len(), ?took, "ipvs partial sync");
        }
        let failures = errors.len();
        if let Some(first) = errors.into_iter().next() {
            if failures > 1 {
                warn!(
                    failures,
                    "ipvs sync: several operations failed; reporting the first"
                );
            }
            return Err(first);
        }
        self.known = true;
        if let Some(c) = &self.conntrack {
            c.clear(services, changes);
        }
        Ok(())
    }

    /// Deletes drained destinations that are done (no connections, or drained too long).
    fn drain_pass(&mut self) -> Result<usize, Error> {
        if !self.known {
            return Ok(0);
        }
        let front_ends = self.current.draining_front_ends();
        if front_ends.is_empty() {
            return Ok(0);
        }
        let now = (self.clock)();
        self.refresh(&front_ends, now)?;
        let none = BTreeSet::new();
        let ops = plan(
            &self.model,
            &self.current,
            &self.cfg,
            Scope::Some {
                front_ends: &front_ends,
                addresses: &none,
            },
            now,
        );
        let n = ops.len();
        let errors = self.apply_all(&ops, now);
        if let Some(first) = errors.into_iter().next() {
            self.known = false;
            return Err(first);
        }
        Ok(n)
    }

    /// Everything of Sluice's: its virtual servers, the dummy link, the table.
    fn cleanup(&mut self) -> Result<(), Error> {
        self.known = false;
        let addresses: BTreeSet<IpAddr> = match self.kernel.link()? {
            Some(i) => self.kernel.link_addresses(i)?.into_iter().collect(),
            None => BTreeSet::new(),
        };
        let none = Model::default();
        for s in self.kernel.services()? {
            if Current::is_ours(&s, &addresses, &self.cfg, &none) {
                self.kernel.delete_service(&s)?;
            }
        }
        self.kernel.delete_link()?;
        self.kernel.nft(&format!(
            "add table {f} {t}\ndelete table {f} {t}\n",
            f = sluice_proxy_nftables::text::family(self.cfg.node.family),
            t = render::TABLE
        ))?;
        self.current = Current::default();
        self.model = Model::default();
        self.nft = NftState::default();
        Ok(())
    }
}

/// The ipvs mode's [`Dataplane`].
pub struct IpvsDataplane {
    engine: Arc<Mutex<Engine>>,
    stop: Option<mpsc::Sender<()>>,
    drainer: Option<JoinHandle<()>>,
}

fn lock(engine: &Mutex<Engine>) -> std::sync::MutexGuard<'_, Engine> {
    engine.lock().unwrap_or_else(|p| p.into_inner())
}

impl IpvsDataplane {
    /// A dataplane programming `kernel` for `cfg`, with drain checks every
    /// [`DRAIN_CHECK_INTERVAL`] on a thread of its own and UDP conntrack cleanup.
    pub fn new(cfg: Config, kernel: Box<dyn Kernel>) -> Self {
        let start = Instant::now();
        let mut dp = Self::with_clock(cfg, kernel, Box::new(move || start.elapsed()));
        lock(&dp.engine).conntrack = Some(Conntrack::default());
        dp.start_drainer(DRAIN_CHECK_INTERVAL);
        dp
    }

    /// A dataplane without the drain thread and conntrack cleanup, on `clock` (tests; call
    /// [`IpvsDataplane::drain_now`] to run a drain check).
    pub fn with_clock(cfg: Config, kernel: Box<dyn Kernel>, clock: Clock) -> Self {
        Self {
            engine: Arc::new(Mutex::new(Engine {
                cfg,
                kernel,
                clock,
                model: Model::default(),
                current: Current::default(),
                nft: NftState::default(),
                link: 0,
                known: false,
                conntrack: None,
            })),
            stop: None,
            drainer: None,
        }
    }

    fn start_drainer(&mut self, every: Duration) {
        let (tx, rx) = mpsc::channel::<()>();
        let weak: Weak<Mutex<Engine>> = Arc::downgrade(&self.engine);
        let handle = std::thread::Builder::new()
            .name("ipvs-drain".into())
            .spawn(move || loop {
                match rx.recv_timeout(every) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let Some(engine) = weak.upgrade() else {
                    return;
                };
                let result = lock(&engine).drain_pass();
                match result {
                    Ok(0) => {}
                    Ok(n) => debug!(ops = n, "ipvs drain check"),
                    Err(e) => warn!(error = %e, "ipvs drain check failed; the next sync is full"),
                }
            });
        match handle {
            Ok(h) => {
                self.stop = Some(tx);
                self.drainer = Some(h);
            }
            Err(e) => {
                warn!(error = %e, "cannot start the ipvs drain thread; drained destinations go at the next full sync")
            }
        }
    }

    /// Runs a drain check now; returns how many operations it applied.
    pub fn drain_now(&self) -> Result<usize, Error> {
        lock(&self.engine).drain_pass()
    }

    /// The kernel state as of the last sync (Sluice's part).
    pub fn current(&self) -> Current {
        lock(&self.engine).current.clone()
    }

    /// Whether the last sync succeeded (the next partial sync trusts the cached state).
    pub fn knows_kernel_state(&self) -> bool {
        lock(&self.engine).known
    }
}

impl Drop for IpvsDataplane {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(h) = self.drainer.take() {
            let _ = h.join();
        }
    }
}

fn sync_error(e: Error) -> SyncError {
    SyncError::Sync {
        dataplane: NAME,
        message: e.to_string(),
        source: Some(Box::new(e)),
    }
}

impl Dataplane for IpvsDataplane {
    fn sync(
        &mut self,
        services: &ServicePortMap,
        endpoints: &EndpointsMap,
        changes: &Changes,
    ) -> Result<(), SyncError> {
        lock(&self.engine)
            .sync(services, endpoints, changes)
            .map_err(sync_error)
    }

    fn cleanup(&mut self) -> Result<(), SyncError> {
        lock(&self.engine)
            .cleanup()
            .map_err(|e| SyncError::Cleanup {
                dataplane: NAME,
                message: e.to_string(),
                source: Some(Box::new(e)),
            })
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[cfg(test)]
mod tests;
