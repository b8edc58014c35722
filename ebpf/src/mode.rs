//! The ebpf proxy mode: [`EbpfMode`] plugs it into the agent, [`EbpfDataplane`] programs the
//! pinned maps from the proxy model.
//!
//! A sync is the pure planner ([`crate::plan`]) over the maps' contents, applied in the
//! planner's order through [`Maps`]. The dataplane keeps a copy of what the maps hold
//! ([`plan::Current`]), read from the pinned maps on its first sync (a restarted agent starts
//! from what its predecessor left, and rewrites only what changed) and again after any failed
//! write. The mode writes no iptables or nftables rules.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use sluice_proxy::mode::{self, BoxDataplane, Mode, ModeContext};
use sluice_proxy::model::{EndpointsMap, ServicePortMap};
use sluice_proxy::proxier::{Changes, Dataplane, Error};

use crate::abi;
use crate::loader::{self, LoadOptions, Loader, TcConfig};
use crate::maps::Maps;
use crate::plan::{
    self, Assigned, Backend, BackendAddr, Current, Frontend, Model, Op, SrcRange, SvcVal,
};
use crate::sockdestroy;

/// The mode's name (`--proxy-mode ebpf`).
pub const NAME: &str = "ebpf";

/// Source ports of the NodePort programs' SNAT (for remote backends): above Linux's default
/// `ip_local_port_range` (32768–60999), so they never collide with the node's own sockets.
pub const SNAT_PORTS: (u16, u16) = (61000, 65535);

/// `--proxy-mode ebpf`.
pub struct EbpfMode;

fn cgroup(ctx: &ModeContext) -> Result<&Path, String> {
    ctx.cgroup.as_deref().ok_or_else(|| {
        "the ebpf mode needs the cgroup v2 directory of the node's pods (--cgroup-root)".into()
    })
}

fn node_ips(ctx: &ModeContext) -> Vec<Ipv4Addr> {
    ctx.node_ips
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        })
        .collect()
}

fn sync_error(message: String, source: crate::Error) -> Error {
    Error::Sync {
        dataplane: NAME,
        message,
        source: Some(source.into()),
    }
}

impl Mode for EbpfMode {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Also creates the pods' cgroup if it is missing (the agent owns it, as kubelet owns
    /// `kubepods`): the hooks must be in place before the first pod starts. And mounts a bpffs
    /// on the agents' bpf directory when it is not on one (as Cilium's agent mounts
    /// `/sys/fs/bpf`): pins need a bpffs, and not every host mounts one.
    fn probe(&self, ctx: &ModeContext) -> Result<(), String> {
        let cg = cgroup(ctx)?;
        if !cg.exists() {
            std::fs::create_dir_all(cg)
                .map_err(|e| format!("creating the pods' cgroup {}: {e}", cg.display()))?;
        }
        if let Some(root) = ctx.bpf_dir.parent() {
            ensure_bpffs(root)?;
        }
        loader::probe(&ctx.bpf_dir, cg)
    }

    fn has_leftovers(&self, ctx: &ModeContext) -> bool {
        loader::is_present(&ctx.bpf_dir)
            || ctx.bpf_dir.join("links").exists()
            || ctx.cgroup.as_deref().is_some_and(|cg| {
                loader::attached_links(Some(cg), None).is_ok_and(|l| !l.is_empty())
            })
            // tc programs whose pins are gone, in particular cls_bpf filters (kernels before
            // 6.6), which have none.
            || ctx.external_interface.as_deref().is_some_and(|ifname| {
                loader::attached_links(None, Some(ifname)).is_ok_and(|l| !l.is_empty())
            })
    }

    fn remove_all(&self, ctx: &ModeContext) -> Result<(), Error> {
        loader::detach_all(
            &ctx.bpf_dir,
            ctx.cgroup.as_deref(),
            ctx.external_interface.as_deref(),
        )
        .map_err(|e| Error::Cleanup {
            dataplane: NAME,
            message: format!("removing {}", ctx.bpf_dir.display()),
            source: Some(e.into()),
        })
    }

    /// The service and backend maps (and the NodePort programs' configuration) as sorted text,
    /// one entry per line ([`Maps::dump_text`]).
    fn dump(&self, ctx: &ModeContext) -> Result<String, Error> {
        let maps = Maps::open(&ctx.bpf_dir).map_err(|e| {
            mode::error(
                NAME,
                format!("opening the maps under {}: {e}", ctx.bpf_dir.display()),
            )
        })?;
        maps.dump_text()
            .map_err(|e| mode::error(NAME, e.to_string()))
    }

    fn build(&self, ctx: &ModeContext) -> Result<BoxDataplane, Error> {
        let cgroup = cgroup(ctx).map_err(|e| mode::error(NAME, e))?.to_path_buf();
        let mut loader = Loader::load(LoadOptions::new(&ctx.bpf_dir))
            .map_err(|e| mode::error(NAME, e.to_string()))?;
        loader
            .attach_cgroup(&cgroup)
            .map_err(|e| mode::error(NAME, e.to_string()))?;
        let ips = node_ips(ctx);
        match (&ctx.external_interface, ips.first()) {
            (Some(ifname), Some(ip)) => {
                let tc = TcConfig {
                    node_ip: *ip,
                    snat_ports: SNAT_PORTS,
                };
                loader
                    .attach_tc(ifname, &tc)
                    .map_err(|e| mode::error(NAME, e.to_string()))?;
                tracing::info!(interface = %ifname, node_ip = %ip, "ebpf mode: NodePort programs attached");
            }
            _ => tracing::warn!(
                "ebpf mode: no external interface or IPv4 node address: NodePorts, external and \
                 load-balancer IPs are served only to clients on this node"
            ),
        }
        let maps = loader
            .maps()
            .map_err(|e| mode::error(NAME, e.to_string()))?;
        tracing::info!(
            pins = %ctx.bpf_dir.display(),
            cgroup = %cgroup.display(),
            "ebpf mode: socket programs attached"
        );
        Ok(Box::new(EbpfDataplane {
            config: plan::Config {
                node_name: ctx.node_name.clone(),
                node_ips: ips,
            },
            maps,
            assigned: None,
            model: None,
            _loader: loader,
            pin_dir: ctx.bpf_dir.clone(),
            cgroup,
            external_interface: ctx.external_interface.clone(),
        }))
    }
}

/// Mounts a bpffs on `root` (created if missing) unless `root` already is on one.
fn ensure_bpffs(root: &Path) -> Result<(), String> {
    if crate::sys::fs_type(root).is_ok_and(|t| t == crate::sys::BPF_FS_MAGIC) {
        return Ok(());
    }
    std::fs::create_dir_all(root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    let path = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())
        .map_err(|e| format!("{}: {e}", root.display()))?;
    // SAFETY: every pointer is a valid NUL-terminated string; no mount data.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            path.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "mounting a bpffs on {}: {}",
            root.display(),
            std::io::Error::last_os_error()
        ));
    }
    tracing::info!(path = %root.display(), "mounted a bpffs");
    Ok(())
}

/// Reads the pinned service, backend and source range maps as the planner sees them.
pub fn read_current(maps: &Maps) -> crate::Result<Current> {
    let mut c = Current::default();
    for (k, v) in maps.iter_svc()? {
        let frontend = Frontend {
            addr: k.addr(),
            port: k.port(),
            proto: k.proto,
            scope: k.scope,
        };
        let val = SvcVal {
            count: v.count,
            backend_id: v.backend_id,
            svc_id: v.svc_id,
            affinity_timeout: v.affinity_timeout,
            flags: v.flags,
        };
        c.insert_svc(frontend, k.slot, val);
    }
    for (id, b) in maps.iter_backends()? {
        let backend = Backend {
            addr: BackendAddr {
                addr: b.addr(),
                port: b.port(),
                proto: b.proto,
            },
            flags: b.flags,
        };
        c.insert_backend(id, backend);
    }
    for k in maps.iter_srcranges()? {
        c.insert_src_range(k.svc_id, SrcRange::new(k.addr(), k.prefix()));
    }
    Ok(c)
}

fn svc_key(f: &Frontend, slot: u32) -> abi::SvcKey {
    abi::SvcKey::new(f.addr, f.port, f.proto, f.scope, slot)
}

/// Writes one planned operation.
pub fn write(maps: &mut Maps, op: &Op) -> crate::Result<()> {
    match op {
        Op::PutBackend { id, backend } => maps.put_backend(
            *id,
            &abi::Backend::new(
                backend.addr.addr,
                backend.addr.port,
                backend.addr.proto,
                backend.flags,
            ),
        ),
        Op::PutSvc {
            frontend,
            slot,
            val,
        } => maps.put_svc(
            &svc_key(frontend, *slot),
            &abi::SvcVal {
                count: val.count,
                backend_id: val.backend_id,
                svc_id: val.svc_id,
                affinity_timeout: val.affinity_timeout,
                flags: val.flags,
                pad: [0; 3],
            },
        ),
        Op::DeleteSvc { frontend, slot } => maps.delete_svc(&svc_key(frontend, *slot)),
        Op::DeleteBackend { id } => maps.delete_backend(*id),
        Op::PutSrcRange { svc_id, net } => maps.put_srcrange(*svc_id, net.addr, net.prefix),
        Op::DeleteSrcRange { svc_id, net } => maps.delete_srcrange(*svc_id, net.addr, net.prefix),
    }
}

/// A sync with at least this many map writes is followed by returning freed heap to the
/// kernel (as every full sync is).
const TRIM_AFTER_OPS: usize = 4096;

/// The ebpf mode's [`Dataplane`].
pub struct EbpfDataplane {
    config: plan::Config,
    maps: Maps,
    /// The ids the maps use, as of the last successful sync; `None` = unknown (first sync, or
    /// after a failed write): the next sync is a full one and reads the maps.
    assigned: Option<Assigned>,
    /// The desired state as of the last sync; `None` until a full sync built it.
    model: Option<Model>,
    /// The loaded programs (their links are pinned; kept so the objects stay referenced while
    /// the agent runs).
    _loader: Loader,
    pin_dir: PathBuf,
    cgroup: PathBuf,
    external_interface: Option<String>,
}

impl Dataplane for EbpfDataplane {
    fn sync(
        &mut self,
        services: &ServicePortMap,
        endpoints: &EndpointsMap,
        changes: &Changes,
    ) -> Result<(), Error> {
        let labels = &changes.node_labels;
        // A partial sync rebuilds the touched entries from the model and the ids; a full one
        // (or the first after an error) reads the maps back.
        let (mut current, ops, partial) = match (self.model.as_mut(), self.assigned.take()) {
            (Some(model), Some(assigned)) if !changes.full => {
                let ports = model.changed_ports(changes, services);
                let touched = model.update(&ports, services, endpoints, &self.config, labels);
                let current = assigned.current_for(&touched);
                let ops = plan::plan_some(
                    model.desired(),
                    &current,
                    &touched.frontends,
                    &touched.backends,
                );
                (current, ops, Some((touched, assigned)))
            }
            _ => {
                let current = read_current(&self.maps)
                    .map_err(|e| sync_error("reading the pinned maps".into(), e))?;
                let model = Model::build(services, endpoints, &self.config, labels);
                let ops = plan::plan(model.desired(), &current);
                self.model = Some(model);
                (current, ops, None)
            }
        };
        // Connected UDP sockets these writes leave stale are destroyed after them.
        let stale = plan::stale_udp_sockets(&ops, &current);
        for op in &ops {
            // On error `current` and the model are dropped: the next (full) sync reads the
            // maps again and plans everything.
            if let Err(e) = write(&mut self.maps, op) {
                self.model = None;
                return Err(sync_error(format!("{op}"), e));
            }
            current.apply(op);
        }
        if !ops.is_empty() {
            tracing::debug!(writes = ops.len(), "ebpf maps updated");
        }
        self.assigned = Some(match partial {
            Some((touched, mut assigned)) => {
                assigned.record(&touched, &current);
                assigned
            }
            None => Assigned::of(&current),
        });
        drop(current);
        if changes.full || ops.len() >= TRIM_AFTER_OPS {
            // A full plan's temporaries (every front end and backend, the op list, the maps
            // read back) are megabytes at 10,000 services, freed on this blocking thread's
            // malloc arena, which glibc would otherwise keep.
            drop(ops);
            sluice_proxy::heap::trim();
        }
        if !stale.is_empty() {
            // A connected UDP socket is really connected to its backend (nothing translates its
            // datagrams), so it would send into the void for ever: destroy it, and the
            // application gets ECONNABORTED and reconnects through the Service again.
            match sockdestroy::destroy_udp_connected_to(&self.cgroup, &stale.all()) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(sockets = n, backends = ?stale.gone_backends, frontends = ?stale.opened_frontends, "destroyed UDP sockets connected to removed backends or to untranslated front ends")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "destroying stale connected UDP sockets")
                }
            }
        }
        Ok(())
    }

    fn cleanup(&mut self) -> Result<(), Error> {
        self.assigned = None;
        self.model = None;
        loader::detach_all(
            &self.pin_dir,
            Some(&self.cgroup),
            self.external_interface.as_deref(),
        )
        .map_err(|e| Error::Cleanup {
            dataplane: NAME,
            message: format!("removing {}", self.pin_dir.display()),
            source: Some(e.into()),
        })
    }

    fn name(&self) -> &'static str {
        NAME
    }
}
