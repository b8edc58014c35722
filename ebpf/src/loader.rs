//! Loading the objects, attaching them so they outlive the agent, and removing everything again.
//!
//! # Pinning layout
//!
//! Everything lives under one directory on bpffs, [`LoadOptions::pin_dir`]
//! (e.g. `/sys/fs/bpf/sluice/<node>`):
//!
//! ```text
//! <pin_dir>/sluice_svc_v1 ... sluice_srcrange_v1 the maps (abi::ALL_MAPS)
//! <pin_dir>/links/sluice_connect4 ...            one bpf_link per attached program
//! <pin_dir>/links/nodeport_ingress, nodeport_egress   (tcx, Linux 6.6+)
//! <pin_dir>/tc_netlink -> <ifname>                   (symlinks; netlink tc attach, before 6.6:
//! <pin_dir>/tc_clsact -> <ifname>                     filters there, and a clsact Sluice added)
//! ```
//!
//! # Restart
//!
//! A restarted agent calls [`Loader::load`] again: every map that is already pinned is opened
//! instead of created, so services, backends, affinity and conntrack state survive (a map that
//! is not pinned yet, e.g. one an older build did not have, is created and pinned). The fresh
//! program instances reference those same maps. [`Loader::attach_cgroup`] and
//! [`Loader::attach_tc`] then find the pinned links and, when a link still points at the same
//! cgroup (or interface) and hook, replace its program in place with `BPF_LINK_UPDATE`: the
//! hook runs the old program until the update and the new one after it, with no moment where
//! nothing is attached and no moment where both are. A pinned link that points elsewhere (the
//! configuration changed, or its cgroup was removed) is force-detached and replaced by a new one.
//!
//! Kernels before 6.6 have no tcx: the tc programs are cls_bpf filters on a clsact qdisc
//! instead ([`TcAttachMethod`]), which stay attached without a pin and are replaced in place
//! at their fixed priority and handle ([`TC_FILTER_PRIORITY`], [`TC_FILTER_HANDLE`]).

use std::{
    borrow::Cow,
    fs,
    io::ErrorKind,
    net::Ipv4Addr,
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapInfo, MapType},
    programs::{
        links::FdLink, CgroupAttachMode, CgroupSockAddr, Program, SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
    Ebpf, EbpfLoader,
};

use crate::{
    abi::{self, Config},
    error::{Error, Result},
    maps::Maps,
    programs::{self, NODEPORT_OBJ, SOCK_OBJ, SOCK_PROGRAMS},
    sys,
    tc_netlink::{self, Hook as TcHook},
};

/// `max_entries` of every map. The defaults hold 10,000 services with several frontends of
/// five backends each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// `sluice_svc_v1`: one entry per (frontend, scope) plus one per backend slot.
    pub svc: u32,
    /// `sluice_backend_v1`.
    pub backend: u32,
    /// `sluice_revnat_v1` (LRU): connected sockets and UDP flows to a service.
    pub revnat: u32,
    /// `sluice_affinity_v1` (LRU).
    pub affinity: u32,
    /// `sluice_udpflow_v1` (LRU).
    pub udpflow: u32,
    /// `sluice_ct_v1` (LRU): two entries per NodePort flow.
    pub ct: u32,
    /// `sluice_srcrange_v1` (LPM trie, not preallocated): one entry per source range of each
    /// load-balancer IP front end.
    pub srcrange: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            svc: 262_144,
            backend: 65_536,
            revnat: 65_536,
            affinity: 65_536,
            udpflow: 65_536,
            ct: 65_536,
            srcrange: 65_536,
        }
    }
}

impl MapSizes {
    fn entries(&self) -> [(&'static str, u32); 7] {
        [
            (abi::SVC_MAP, self.svc),
            (abi::BACKEND_MAP, self.backend),
            (abi::REVNAT_MAP, self.revnat),
            (abi::AFFINITY_MAP, self.affinity),
            (abi::UDPFLOW_MAP, self.udpflow),
            (abi::CT_MAP, self.ct),
            (abi::SRCRANGE_MAP, self.srcrange),
        ]
    }
}

/// Where to pin and how big the maps are.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Directory on bpffs holding the maps and links (created if missing).
    pub pin_dir: PathBuf,
    /// Map sizes. They apply when a map is created; a map that is already pinned keeps its
    /// size (resizing means [`detach_all`] and loading again).
    pub map_sizes: MapSizes,
}

impl LoadOptions {
    /// Options with default map sizes.
    pub fn new(pin_dir: impl Into<PathBuf>) -> Self {
        Self {
            pin_dir: pin_dir.into(),
            map_sizes: MapSizes::default(),
        }
    }
}

/// The NodePort (tc) configuration of this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcConfig {
    /// The node address on the external interface: NodePort frontends and SNAT source.
    pub node_ip: Ipv4Addr,
    /// Inclusive SNAT source port range (must not overlap ports local sockets use, e.g. keep it
    /// outside `net.ipv4.ip_local_port_range`).
    pub snat_ports: (u16, u16),
}

/// The loaded programs of one pin directory.
///
/// Dropping a `Loader` leaves everything that was attached in place (the links are pinned);
/// only [`detach_all`] removes it.
pub struct Loader {
    opts: LoadOptions,
    sock: Ebpf,
    nodeport: Option<Ebpf>,
}

/// The pinned link of program `name`.
fn link_pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join("links").join(name)
}

/// The map type, key and value size each map must have.
fn expected_layout(map: &str) -> (MapType, u32, u32) {
    use std::mem::size_of;
    let sz = |n: usize| n as u32;
    match map {
        abi::SVC_MAP => (
            MapType::Hash,
            sz(size_of::<abi::SvcKey>()),
            sz(size_of::<abi::SvcVal>()),
        ),
        abi::BACKEND_MAP => (MapType::Hash, 4, sz(size_of::<abi::Backend>())),
        abi::REVNAT_MAP => (
            MapType::LruHash,
            sz(size_of::<abi::RevnatKey>()),
            sz(size_of::<abi::RevnatVal>()),
        ),
        abi::AFFINITY_MAP => (
            MapType::LruHash,
            sz(size_of::<abi::AffinityKey>()),
            sz(size_of::<abi::AffinityVal>()),
        ),
        abi::UDPFLOW_MAP => (
            MapType::LruHash,
            sz(size_of::<abi::UdpflowKey>()),
            sz(size_of::<abi::UdpflowVal>()),
        ),
        abi::CT_MAP => (
            MapType::LruHash,
            sz(size_of::<abi::CtKey>()),
            sz(size_of::<abi::CtVal>()),
        ),
        abi::CONFIG_MAP => (MapType::Array, 4, sz(size_of::<Config>())),
        abi::SRCRANGE_MAP => (
            MapType::LpmTrie,
            sz(size_of::<abi::SrcRangeKey>()),
            sz(size_of::<u32>()),
        ),
        other => unreachable!("unknown map {other}"),
    }
}

/// Refuse to reuse a pinned map whose layout is not this build's (aya would silently reuse it).
fn check_pinned_layouts(pin_dir: &Path) -> Result<()> {
    for map in abi::ALL_MAPS {
        let path = pin_dir.join(map);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path)
            .map_err(|e| Error::map(map, format!("open pinned {}", path.display()), e))?;
        let (want_type, want_key, want_value) = expected_layout(map);
        let found_type = info
            .map_type()
            .map_err(|e| Error::map(map, "read map type", e))?;
        if found_type != want_type || info.key_size() != want_key || info.value_size() != want_value
        {
            return Err(Error::MapLayout {
                path,
                found_type: format!("{found_type:?}"),
                found_key: info.key_size(),
                found_value: info.value_size(),
                want_type: format!("{want_type:?}"),
                want_key,
                want_value,
            });
        }
    }
    Ok(())
}

/// Parse `bytes`, create or open its maps (pinned under `pin_dir` when given) and load every
/// program into the kernel, which runs the verifier on each.
fn load_object(
    object: &'static str,
    bytes: &[u8],
    pin_dir: Option<&Path>,
    sizes: &MapSizes,
) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    for (map, size) in sizes.entries() {
        loader.map_max_entries(map, size);
    }
    if let Some(dir) = pin_dir {
        for map in abi::ALL_MAPS {
            loader.map_pin_path(map, Cow::Owned(dir.join(map)));
        }
    }
    let mut ebpf = loader.load(bytes).map_err(|e| Error::Load {
        object,
        source: Box::new(e),
    })?;
    for (name, program) in ebpf.programs_mut() {
        let loaded = match program {
            Program::CgroupSockAddr(p) => p.load(),
            Program::SchedClassifier(p) => p.load(),
            other => {
                return Err(Error::Unsupported(format!(
                    "{object}: program {name} has unexpected type {:?}",
                    other.prog_type()
                )));
            }
        };
        loaded.map_err(|e| Error::Program {
            program: static_name(name),
            action: format!("load ({object})"),
            source: Box::new(e),
        })?;
    }
    Ok(ebpf)
}

/// Our program names as `'static` (for errors); unknown names are reported generically.
fn static_name(name: &str) -> &'static str {
    [
        programs::CONNECT4,
        programs::SENDMSG4,
        programs::RECVMSG4,
        programs::GETPEERNAME4,
        programs::NODEPORT_INGRESS,
        programs::NODEPORT_EGRESS,
    ]
    .into_iter()
    .find(|n| *n == name)
    .unwrap_or("<unknown>")
}

/// Open the link pinned at `pin` with its info; `None` when nothing (usable) is pinned there.
fn pinned_link(pin: &Path) -> Result<Option<(OwnedFd, sys::LinkInfo)>> {
    match sys::obj_get(pin) {
        Ok(fd) => match sys::link_info(fd.as_fd()) {
            Ok(info) => Ok(Some((fd, info))),
            // Not a link (should not happen): drop the stray pin.
            Err(_) => {
                remove_file(pin)?;
                Ok(None)
            }
        },
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("open pinned link {}", pin.display()), e)),
    }
}

fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
    }
}

/// Reuse the link pinned at `pin` if it already attaches to `matches` (replacing its program
/// with `prog` in place); otherwise detach whatever is pinned there. Returns whether it reused.
fn reuse_or_clear(
    pin: &Path,
    prog: std::os::fd::BorrowedFd<'_>,
    matches: impl Fn(&sys::LinkInfo) -> bool,
) -> Result<bool> {
    let Some((fd, info)) = pinned_link(pin)? else {
        return Ok(false);
    };
    if matches(&info) {
        sys::link_update(fd.as_fd(), prog)
            .map_err(|e| Error::io(format!("BPF_LINK_UPDATE of {}", pin.display()), e))?;
        return Ok(true);
    }
    // A link to another target (configuration changed) or a defunct one (its cgroup or device
    // is gone). Detach explicitly: unpinning alone would leave it attached while any other
    // holder of the link keeps it open.
    let _ = sys::link_detach(fd.as_fd());
    remove_file(pin)?;
    Ok(false)
}

fn pin_link(link: FdLink, pin: &Path, program: &'static str) -> Result<()> {
    link.pin(pin).map_err(|e| Error::Io {
        context: format!("pin the link of {program} at {}", pin.display()),
        source: std::io::Error::other(e),
    })?;
    Ok(())
}

impl Loader {
    /// Load the socket programs with their maps pinned under `opts.pin_dir`, reusing maps
    /// that are already pinned there (a restarted agent keeps its state). Nothing is attached
    /// yet. Fails with [`Error::MapLayout`] if a pinned map has another layout.
    pub fn load(opts: LoadOptions) -> Result<Self> {
        fs::create_dir_all(opts.pin_dir.join("links")).map_err(|e| {
            Error::io(
                format!("create pin directory {}", opts.pin_dir.display()),
                e,
            )
        })?;
        check_pinned_layouts(&opts.pin_dir)?;
        let sock = load_object("sock.o", SOCK_OBJ, Some(&opts.pin_dir), &opts.map_sizes)?;
        Ok(Self {
            opts,
            sock,
            nodeport: None,
        })
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.opts.pin_dir
    }

    /// A typed handle on the pinned maps.
    pub fn maps(&self) -> Result<Maps> {
        Maps::open(&self.opts.pin_dir)
    }

    /// Attach the four socket programs to the cgroup v2 directory `cgroup` with bpf_links
    /// pinned under `<pin_dir>/links`, so they stay attached after the agent exits. Called
    /// again (same or restarted agent), it replaces the programs inside the existing links
    /// instead of attaching a second time (see the module docs).
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<()> {
        let dir = fs::File::open(cgroup)
            .map_err(|e| Error::io(format!("open cgroup {}", cgroup.display()), e))?;
        // On cgroup2 the cgroup id reported in link info is the directory's inode number.
        let cgroup_id = dir
            .metadata()
            .map_err(|e| Error::io(format!("stat cgroup {}", cgroup.display()), e))?
            .ino();
        for (name, attach_type) in SOCK_PROGRAMS {
            let prog: &mut CgroupSockAddr = self
                .sock
                .program_mut(name)
                .ok_or_else(|| Error::Unsupported(format!("sock.o has no program {name}")))?
                .try_into()
                .map_err(|e| Error::program(name, "get", e))?;
            let pin = link_pin(&self.opts.pin_dir, name);
            let prog_fd = prog.fd().map_err(|e| Error::program(name, "fd", e))?;
            let reused = reuse_or_clear(&pin, prog_fd.as_fd(), |info| {
                info.link_type == sys::BPF_LINK_TYPE_CGROUP
                    && info.cgroup_id == cgroup_id
                    && info.attach_type == attach_type
            })?;
            if reused {
                continue;
            }
            let action = || format!("attach to {}", cgroup.display());
            let id = prog
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|e| Error::program(name, action(), e))?;
            let link = prog
                .take_link(id)
                .map_err(|e| Error::program(name, action(), e))?;
            let link = FdLink::try_from(link).map_err(|e| Error::Io {
                context: format!("{name}: {}: not an fd-based link", action()),
                source: std::io::Error::other(e),
            })?;
            pin_link(link, &pin, name)?;
        }
        Ok(())
    }

    /// Load the tc NodePort programs (sharing the pinned maps) unless already loaded.
    pub fn load_nodeport(&mut self) -> Result<()> {
        if self.nodeport.is_none() {
            self.nodeport = Some(load_object(
                "nodeport.o",
                NODEPORT_OBJ,
                Some(&self.opts.pin_dir),
                &self.opts.map_sizes,
            )?);
        }
        Ok(())
    }

    /// Write the node configuration and attach the NodePort programs to ingress and egress of
    /// `ifname` (in the calling thread's network namespace) the way this kernel allows
    /// ([`TcAttachMethod::for_this_kernel`]): tcx bpf_links pinned under `<pin_dir>/links` on
    /// Linux 6.6+, cls_bpf filters on a clsact qdisc before. Like [`Loader::attach_cgroup`], a
    /// second call (or one after a restart) replaces the programs in place, in the existing
    /// links or filters.
    pub fn attach_tc(&mut self, ifname: &str, config: &TcConfig) -> Result<()> {
        self.attach_tc_with(ifname, config, TcAttachMethod::for_this_kernel())
    }

    /// [`Loader::attach_tc`] with the attach method chosen by the caller (tests use it to run
    /// the netlink path on a kernel that has tcx). [`TcAttachMethod::Tcx`] fails on kernels
    /// before 6.6.
    pub fn attach_tc_with(
        &mut self,
        ifname: &str,
        config: &TcConfig,
        method: TcAttachMethod,
    ) -> Result<()> {
        if method == TcAttachMethod::Tcx && !has_tcx() {
            return Err(Error::Unsupported(
                "tcx links need Linux 6.6+ (attach the tc NodePort programs with netlink \
                 cls_bpf filters instead)"
                    .into(),
            ));
        }
        let (min, max) = config.snat_ports;
        if min == 0 || max < min {
            return Err(Error::Unsupported(format!(
                "invalid SNAT port range {min}-{max}"
            )));
        }
        let index = ifindex(ifname).map_err(|e| Error::io(format!("interface {ifname}"), e))?;
        self.maps()?.set_config(&Config {
            node_ip4_be: config.node_ip.octets(),
            ext_ifindex: index,
            snat_port_min: min,
            snat_port_max: max,
            pad: 0,
        })?;
        self.load_nodeport()?;
        match method {
            TcAttachMethod::Tcx => self.attach_tcx(ifname, index),
            TcAttachMethod::Netlink => self.attach_netlink(ifname, index),
        }
    }

    /// The tcx half of [`Loader::attach_tc_with`]: pinned tcx links, reused across restarts.
    /// No clsact qdisc is involved.
    fn attach_tcx(&mut self, ifname: &str, index: u32) -> Result<()> {
        let nodeport = self.nodeport.as_mut().expect("loaded by attach_tc_with");
        for (name, pin_name, tc_type, attach_type) in [
            (
                programs::NODEPORT_INGRESS,
                "nodeport_ingress",
                TcAttachType::Ingress,
                sys::BPF_TCX_INGRESS,
            ),
            (
                programs::NODEPORT_EGRESS,
                "nodeport_egress",
                TcAttachType::Egress,
                sys::BPF_TCX_EGRESS,
            ),
        ] {
            let prog: &mut SchedClassifier = nodeport
                .program_mut(name)
                .ok_or_else(|| Error::Unsupported(format!("nodeport.o has no program {name}")))?
                .try_into()
                .map_err(|e| Error::program(name, "get", e))?;
            let pin = link_pin(&self.opts.pin_dir, pin_name);
            let prog_fd = prog.fd().map_err(|e| Error::program(name, "fd", e))?;
            // The pinned link is reused only if this namespace's device really has it (an
            // ifindex alone is ambiguous across namespaces).
            let on_device = sys::tcx_link_ids(index, attach_type)
                .map_err(|e| Error::io(format!("query tcx links of {ifname}"), e))?;
            let reused = reuse_or_clear(&pin, prog_fd.as_fd(), |info| {
                info.link_type == sys::BPF_LINK_TYPE_TCX
                    && info.attach_type == attach_type
                    && on_device.contains(&info.link_id)
            })?;
            if reused {
                continue;
            }
            let action = || format!("attach to {ifname} {tc_type:?}");
            let id = prog
                .attach(ifname, tc_type)
                .map_err(|e| Error::program(name, action(), e))?;
            let link = prog
                .take_link(id)
                .map_err(|e| Error::program(name, action(), e))?;
            let link = FdLink::try_from(link).map_err(|e| Error::Io {
                context: format!("{name}: {}: not a tcx link", action()),
                source: std::io::Error::other(e),
            })?;
            pin_link(link, &pin, name)?;
        }
        // Filters a netlink attach left (only ever there if this pin directory was used with
        // `TcAttachMethod::Netlink`): tcx runs before clsact, so both would translate.
        if let Some(old) = read_marker(&self.opts.pin_dir, NETLINK_MARKER) {
            let clsact = read_marker(&self.opts.pin_dir, CLSACT_MARKER);
            remove_netlink_filters(&old, clsact.as_deref() == Some(old.as_str()))?;
            remove_file(&self.opts.pin_dir.join(NETLINK_MARKER))?;
            if clsact.as_deref() == Some(old.as_str()) {
                remove_file(&self.opts.pin_dir.join(CLSACT_MARKER))?;
            }
        }
        Ok(())
    }

    /// The netlink half of [`Loader::attach_tc_with`]: a clsact qdisc on `ifname` (added if
    /// missing) and on each of its hooks one direct-action cls_bpf filter at
    /// ([`TC_FILTER_PRIORITY`], [`TC_FILTER_HANDLE`]) named after the program.
    ///
    /// A cls_bpf filter belongs to the qdisc, not to a file descriptor: it stays when the agent
    /// exits, with its program and through it the pinned maps. A restarted agent finds it at
    /// the same priority and handle and replaces its program in place (create-or-replace, the
    /// request `tc filter replace` sends), so the hook never runs without a program or with
    /// two. Sluice filters anywhere else on the hook (another build's priority) are removed
    /// once the new one is in place. The interface is recorded in `<pin_dir>/tc_netlink` (and,
    /// if this call created the clsact qdisc, in `<pin_dir>/tc_clsact`) for [`detach_all`].
    fn attach_netlink(&mut self, ifname: &str, index: u32) -> Result<()> {
        let pin_dir = self.opts.pin_dir.clone();
        let previous = read_marker(&pin_dir, NETLINK_MARKER);
        let previous_clsact = read_marker(&pin_dir, CLSACT_MARKER);
        let created = tc_netlink::add_clsact(index).map_err(|e| {
            let hint = if e.raw_os_error() == Some(libc::ENOENT) {
                " (the kernel has no clsact qdisc: CONFIG_NET_SCH_INGRESS, module sch_ingress)"
            } else {
                ""
            };
            Error::io(format!("add a clsact qdisc to {ifname}{hint}"), e)
        })?;
        if created {
            write_marker(&pin_dir, CLSACT_MARKER, ifname)?;
        }
        write_marker(&pin_dir, NETLINK_MARKER, ifname)?;
        let nodeport = self.nodeport.as_mut().expect("loaded by attach_tc_with");
        for (name, hook) in [
            (programs::NODEPORT_INGRESS, TcHook::Ingress),
            (programs::NODEPORT_EGRESS, TcHook::Egress),
        ] {
            let prog: &mut SchedClassifier = nodeport
                .program_mut(name)
                .ok_or_else(|| Error::Unsupported(format!("nodeport.o has no program {name}")))?
                .try_into()
                .map_err(|e| Error::program(name, "get", e))?;
            let prog_fd = prog.fd().map_err(|e| Error::program(name, "fd", e))?;
            let on_hook = tc_netlink::filters(index, hook)
                .map_err(|e| Error::io(format!("list the tc filters of {ifname} {hook:?}"), e))?;
            let ours = |f: &tc_netlink::Filter| {
                f.priority == TC_FILTER_PRIORITY && f.handle == TC_FILTER_HANDLE
            };
            if let Some(f) = on_hook.iter().find(|f| ours(f) && !is_sluice_filter(f)) {
                return Err(Error::Unsupported(format!(
                    "{ifname} {hook:?}: tc priority {TC_FILTER_PRIORITY} handle \
                     {TC_FILTER_HANDLE:#x} holds a filter that is not Sluice's ({} {:?})",
                    f.kind, f.name
                )));
            }
            tc_netlink::replace_bpf_filter(
                index,
                hook,
                TC_FILTER_PRIORITY,
                TC_FILTER_HANDLE,
                prog_fd.as_fd(),
                name,
            )
            .map_err(|e| {
                let hint = if e.raw_os_error() == Some(libc::ENOENT) {
                    "; is cls_bpf there (CONFIG_NET_CLS_BPF, module cls_bpf)?"
                } else {
                    ""
                };
                Error::io(
                    format!(
                        "{name}: attach a cls_bpf filter to {ifname} {hook:?} (priority \
                         {TC_FILTER_PRIORITY}, handle {TC_FILTER_HANDLE:#x}){hint}"
                    ),
                    e,
                )
            })?;
            for f in on_hook.iter().filter(|f| is_sluice_filter(f) && !ours(f)) {
                delete_filter(index, hook, f).map_err(|e| {
                    Error::io(format!("remove a stale Sluice filter of {ifname}"), e)
                })?;
            }
        }
        // tcx links pinned by an earlier tcx attach (same pin directory, `TcAttachMethod::Tcx`):
        // tcx runs before clsact, so both would translate.
        for pin_name in ["nodeport_ingress", "nodeport_egress"] {
            let pin = link_pin(&pin_dir, pin_name);
            if let Some((fd, _)) = pinned_link(&pin)? {
                let _ = sys::link_detach(fd.as_fd());
                remove_file(&pin)?;
            }
        }
        // The configuration moved to another interface: take the filters off the old one.
        if let Some(old) = previous.filter(|old| old != ifname) {
            let ours = previous_clsact.as_deref() == Some(old.as_str());
            remove_netlink_filters(&old, ours)?;
            if ours && !created {
                // The new interface's qdisc was there before: the marker named the old one.
                remove_file(&pin_dir.join(CLSACT_MARKER))?;
            }
        }
        Ok(())
    }
}

/// How the tc NodePort programs are attached to the node's interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcAttachMethod {
    /// tcx bpf_links (Linux 6.6+), pinned under `<pin_dir>/links`.
    Tcx,
    /// Direct-action cls_bpf filters on a clsact qdisc, over netlink (any kernel Sluice runs
    /// on), at [`TC_FILTER_PRIORITY`] / [`TC_FILTER_HANDLE`].
    Netlink,
}

impl TcAttachMethod {
    /// tcx where the kernel has it, netlink before.
    ///
    /// The kernel boundary: tcx (`BPF_TCX_INGRESS`/`EGRESS` links, with the kernel's
    /// multi-program API) arrived in Linux 6.6. Before it, the way to run a program on a
    /// device's ingress and egress is the clsact qdisc with a cls_bpf filter in direct-action
    /// mode, attached over rtnetlink (Debian 12's 6.1, the VM tests' kernel). What that loses:
    /// tcx's ordering of several programs on a hook (`BPF_F_BEFORE`/`AFTER`, a revision to
    /// attach against) and its link object, whose pin and fd tie the attachment to an owner;
    /// a filter is ordered only by its priority number against whatever else is on the qdisc,
    /// and it is found again by its priority, handle and name rather than by a pin. The
    /// programs are the same: on cls_bpf, `TC_ACT_UNSPEC` also means "next filter, else
    /// carry on".
    pub fn for_this_kernel() -> Self {
        if has_tcx() {
            Self::Tcx
        } else {
            Self::Netlink
        }
    }
}

/// Priority of Sluice's cls_bpf filters on both clsact hooks (netlink attach, kernels before
/// 6.6). Numerically above the 49152 tc gives the first filter added without a priority (and
/// the lower numbers it gives later ones), so such filters run first, as a tcx link attached
/// by default runs after the links already there.
pub const TC_FILTER_PRIORITY: u16 = 50000;
/// Handle of Sluice's cls_bpf filters at [`TC_FILTER_PRIORITY`].
pub const TC_FILTER_HANDLE: u32 = 1;

/// `<pin_dir>/tc_netlink`: a symlink naming the interface the netlink filters were attached to.
const NETLINK_MARKER: &str = "tc_netlink";
/// `<pin_dir>/tc_clsact`: a symlink naming the interface whose clsact qdisc Sluice added.
const CLSACT_MARKER: &str = "tc_clsact";

/// The kernel has tcx (Linux 6.6+).
fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// The interface a marker symlink names (bpffs holds no regular files, but symlinks).
fn read_marker(pin_dir: &Path, marker: &str) -> Option<String> {
    fs::read_link(pin_dir.join(marker))
        .ok()
        .and_then(|t| t.to_str().map(str::to_string))
}

fn write_marker(pin_dir: &Path, marker: &str, ifname: &str) -> Result<()> {
    if read_marker(pin_dir, marker).as_deref() == Some(ifname) {
        return Ok(());
    }
    let path = pin_dir.join(marker);
    remove_file(&path)?;
    std::os::unix::fs::symlink(ifname, &path)
        .map_err(|e| Error::io(format!("record {ifname} in {}", path.display()), e))
}

/// A cls_bpf filter Sluice attached (by its name).
fn is_sluice_filter(f: &tc_netlink::Filter) -> bool {
    f.kind == "bpf"
        && f.name
            .as_deref()
            .is_some_and(|n| n.starts_with(programs::PROGRAM_PREFIX))
}

fn delete_filter(index: u32, hook: TcHook, f: &tc_netlink::Filter) -> std::io::Result<()> {
    match tc_netlink::delete_filter(index, hook, f.priority, f.protocol, f.handle) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Remove Sluice's cls_bpf filters from both hooks of `ifname` (in the caller's namespace),
/// and the clsact qdisc too if `our_clsact` (Sluice added it) and no filter of anyone else is
/// left on it. A missing interface has nothing to remove.
fn remove_netlink_filters(ifname: &str, our_clsact: bool) -> Result<()> {
    let Ok(index) = ifindex(ifname) else {
        return Ok(());
    };
    let mut others = 0;
    for hook in TcHook::ALL {
        let on_hook = tc_netlink::filters(index, hook)
            .map_err(|e| Error::io(format!("list the tc filters of {ifname} {hook:?}"), e))?;
        for f in &on_hook {
            if is_sluice_filter(f) {
                delete_filter(index, hook, f).map_err(|e| {
                    Error::io(format!("remove a Sluice tc filter of {ifname} {hook:?}"), e)
                })?;
            } else {
                others += 1;
            }
        }
    }
    if our_clsact && others == 0 {
        match tc_netlink::delete_clsact(index) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => {}
            Err(e) => return Err(Error::io(format!("remove the clsact qdisc of {ifname}"), e)),
        }
    }
    Ok(())
}

/// The cgroup id of a cgroup2 directory, if it exists.
fn cgroup_id(cgroup: &Path) -> Option<u64> {
    fs::metadata(cgroup).ok().map(|m| m.ino())
}

/// Remove everything Sluice attached and pinned for `pin_dir`: every pinned link (detached
/// explicitly), Sluice's cls_bpf filters on `ifname` and on the interface `<pin_dir>/tc_netlink`
/// names (netlink attach, kernels before 6.6), any other `sluice_*` program link still attached
/// to `cgroup` or to the tcx hooks of `ifname` (pins lost, another pin directory), and every map
/// pin. Succeeds when nothing is there. The maps themselves are freed by the kernel once no
/// program uses them.
///
/// The clsact qdisc a netlink attach needs is removed only if Sluice added it
/// (`<pin_dir>/tc_clsact`) and no other filter is left on it: one that was there before, or
/// that someone else now uses, stays.
pub fn detach_all(pin_dir: &Path, cgroup: Option<&Path>, ifname: Option<&str>) -> Result<()> {
    let links = pin_dir.join("links");
    match fs::read_dir(&links) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(format!("list {}", links.display()), e))?;
                let path = entry.path();
                if let Ok(fd) = sys::obj_get(&path) {
                    let _ = sys::link_detach(fd.as_fd());
                }
                remove_file(&path)?;
            }
            fs::remove_dir(&links)
                .map_err(|e| Error::io(format!("remove {}", links.display()), e))?;
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("list {}", links.display()), e)),
    }

    // cls_bpf filters have no pin: they are found on the interfaces by name.
    let clsact = read_marker(pin_dir, CLSACT_MARKER);
    let mut interfaces: Vec<String> = ifname.map(str::to_string).into_iter().collect();
    if let Some(recorded) = read_marker(pin_dir, NETLINK_MARKER) {
        if !interfaces.contains(&recorded) {
            interfaces.push(recorded);
        }
    }
    for iface in &interfaces {
        remove_netlink_filters(iface, clsact.as_deref() == Some(iface.as_str()))?;
    }
    remove_file(&pin_dir.join(NETLINK_MARKER))?;
    remove_file(&pin_dir.join(CLSACT_MARKER))?;

    if cgroup.is_some() || ifname.is_some() {
        for link in attached_links(cgroup, ifname)? {
            if link.tc_filter.is_some() {
                // Not Sluice's by name (removed above), but running a `sluice_*` program.
                continue;
            }
            if let Ok(fd) = sys::link_fd_by_id(link.link_id) {
                let _ = sys::link_detach(fd.as_fd());
            }
        }
    }

    for map in abi::ALL_MAPS {
        remove_file(&pin_dir.join(map))?;
    }
    match fs::remove_dir(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        // Someone else's files are in there: leave the directory.
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", pin_dir.display()), e)),
    }
}

/// A Sluice program the kernel has attached somewhere: through a bpf_link (cgroup, tcx), or as
/// a cls_bpf filter (netlink tc attach, kernels before 6.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedLink {
    /// Kernel link id; 0 for a cls_bpf filter, which has no link.
    pub link_id: u32,
    /// Kernel program id (changes when a restart replaces the program in the link).
    pub prog_id: u32,
    /// Program name as the kernel keeps it (truncated to 15 bytes, e.g. `sluice_getpeern`).
    pub program: String,
    /// For a cls_bpf filter: where it sits on the clsact qdisc.
    pub tc_filter: Option<TcFilter>,
}

/// Where a cls_bpf filter sits on the device's clsact qdisc.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TcFilter {
    /// Ingress or egress.
    pub hook: TcHook,
    /// Filter priority (Sluice's: [`TC_FILTER_PRIORITY`]).
    pub priority: u16,
    /// Filter handle (Sluice's: [`TC_FILTER_HANDLE`]).
    pub handle: u32,
}

/// Every `sluice_*` program attached to `cgroup` and/or to `ifname` (tcx links, and cls_bpf
/// filters on its clsact qdisc), for `debug dump`, leftover checks, and to prove re-attaching
/// does not attach twice.
pub fn attached_links(cgroup: Option<&Path>, ifname: Option<&str>) -> Result<Vec<AttachedLink>> {
    let walk = |e| Error::io("walk the kernel's bpf links", e);
    let mut found: Vec<(sys::LinkInfo, Option<TcFilter>)> = Vec::new();
    if let Some(id) = cgroup.and_then(cgroup_id) {
        // Cgroup ids are unique system-wide: filtering all links by id is exact.
        found.extend(
            sys::all_links()
                .map_err(walk)?
                .into_iter()
                .map(|(_, info)| info)
                .filter(|i| i.link_type == sys::BPF_LINK_TYPE_CGROUP && i.cgroup_id == id)
                .map(|i| (i, None)),
        );
    }
    if let Some(index) = ifname.and_then(|name| ifindex(name).ok()) {
        // An ifindex is only unique within a network namespace: ask the device (in the
        // caller's namespace) which links it has. Before 6.6 there are no tcx hooks to ask.
        if has_tcx() {
            for hook in [sys::BPF_TCX_INGRESS, sys::BPF_TCX_EGRESS] {
                for link_id in sys::tcx_link_ids(index, hook).map_err(walk)? {
                    if let Ok(info) =
                        sys::link_fd_by_id(link_id).and_then(|fd| sys::link_info(fd.as_fd()))
                    {
                        found.push((info, None));
                    }
                }
            }
        }
        // cls_bpf filters on the clsact qdisc (netlink is per namespace too).
        for hook in TcHook::ALL {
            let filters = tc_netlink::filters(index, hook)
                .map_err(|e| Error::io(format!("list the tc filters of {hook:?}"), e))?;
            for f in filters.into_iter().filter(|f| f.kind == "bpf") {
                if let Some(prog_id) = f.prog_id {
                    let info = sys::LinkInfo {
                        link_type: 0,
                        link_id: 0,
                        prog_id,
                        cgroup_id: 0,
                        attach_type: 0,
                    };
                    let at = TcFilter {
                        hook,
                        priority: f.priority,
                        handle: f.handle,
                    };
                    found.push((info, Some(at)));
                }
            }
        }
    }
    let mut out = Vec::new();
    for (info, tc_filter) in found {
        if let Ok(program) = sys::prog_name(info.prog_id) {
            if program.starts_with(programs::PROGRAM_PREFIX) {
                out.push(AttachedLink {
                    link_id: info.link_id,
                    prog_id: info.prog_id,
                    program,
                    tc_filter,
                });
            }
        }
    }
    out.sort_by(|a, b| {
        (&a.program, a.link_id, a.tc_filter).cmp(&(&b.program, b.link_id, b.tc_filter))
    });
    Ok(out)
}

/// Cheap probe: are Sluice's maps pinned under `pin_dir`?
pub fn is_present(pin_dir: &Path) -> bool {
    pin_dir.join(abi::SVC_MAP).exists()
}

/// Load every program once with private (unpinned, small) maps and drop them again: proves the
/// verifier accepts all of them on this kernel. Needs root (CAP_BPF + CAP_NET_ADMIN).
pub fn verify_programs() -> Result<()> {
    let small = MapSizes {
        svc: 16,
        backend: 16,
        revnat: 16,
        affinity: 16,
        udpflow: 16,
        ct: 16,
        srcrange: 16,
    };
    for (object, bytes) in programs::OBJECTS {
        drop(load_object(object, bytes, None, &small)?);
    }
    Ok(())
}

/// Whether this machine can run the eBPF mode with maps under `pin_dir` and the socket hooks
/// on `cgroup`: `Err(reason)` says why not (not root, no bpffs, no cgroup2, verifier
/// rejection, ...).
pub fn probe(pin_dir: &Path, cgroup: &Path) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "not running as root (loading BPF programs needs CAP_BPF, CAP_NET_ADMIN \
                    and CAP_SYS_ADMIN)"
                .into(),
        );
    }
    let mut at = pin_dir;
    while !at.exists() {
        at = at.parent().unwrap_or(Path::new("/"));
    }
    match sys::fs_type(at) {
        Ok(sys::BPF_FS_MAGIC) => {}
        Ok(_) => {
            return Err(format!(
                "{} is not on a bpffs (mount one: mount -t bpf bpf /sys/fs/bpf)",
                pin_dir.display()
            ));
        }
        Err(e) => return Err(format!("statfs {}: {e}", at.display())),
    }
    match sys::fs_type(cgroup) {
        Ok(sys::CGROUP2_SUPER_MAGIC) => {}
        Ok(_) => return Err(format!("{} is not a cgroup2 directory", cgroup.display())),
        Err(e) => return Err(format!("cgroup2 directory {}: {e}", cgroup.display())),
    }
    verify_programs().map_err(|e| format!("this kernel cannot run the programs: {e}"))
}

/// `if_nametoindex`.
fn ifindex(name: &str) -> std::io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(idx)
    }
}
