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
//! <pin_dir>/links/nodeport_ingress, nodeport_egress
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

    /// Write the node configuration and attach the NodePort programs to tcx ingress and
    /// egress of `ifname` (in the calling thread's network namespace) with bpf_links pinned
    /// under `<pin_dir>/links`. Like [`Loader::attach_cgroup`], a second call (or one after a
    /// restart) replaces the programs inside the existing links. Needs tcx (Linux 6.6+);
    /// no clsact qdisc is involved.
    pub fn attach_tc(&mut self, ifname: &str, config: &TcConfig) -> Result<()> {
        if !KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)) {
            return Err(Error::Unsupported(
                "the tc NodePort programs attach with tcx links, which need Linux 6.6+".into(),
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
        let nodeport = self.nodeport.as_mut().expect("loaded above");
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
        Ok(())
    }
}

/// The cgroup id of a cgroup2 directory, if it exists.
fn cgroup_id(cgroup: &Path) -> Option<u64> {
    fs::metadata(cgroup).ok().map(|m| m.ino())
}

/// Remove everything Sluice attached and pinned for `pin_dir`: every pinned link (detached
/// explicitly), any other `sluice_*` program link still attached to `cgroup` or to the tcx
/// hooks of `ifname` (pins lost, another pin directory), and every map pin. Succeeds when
/// nothing is there. The maps themselves are freed by the kernel once no program uses them.
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

    if cgroup.is_some() || ifname.is_some() {
        for link in attached_links(cgroup, ifname)? {
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

/// A Sluice program link the kernel has attached somewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedLink {
    /// Kernel link id.
    pub link_id: u32,
    /// Kernel program id (changes when a restart replaces the program in the link).
    pub prog_id: u32,
    /// Program name as the kernel keeps it (truncated to 15 bytes, e.g. `sluice_getpeern`).
    pub program: String,
}

/// Every `sluice_*` program link attached to `cgroup` and/or the tcx hooks of `ifname`
/// (for `debug dump`, and to prove re-attaching does not attach twice).
pub fn attached_links(cgroup: Option<&Path>, ifname: Option<&str>) -> Result<Vec<AttachedLink>> {
    let walk = |e| Error::io("walk the kernel's bpf links", e);
    let mut found: Vec<sys::LinkInfo> = Vec::new();
    if let Some(id) = cgroup.and_then(cgroup_id) {
        // Cgroup ids are unique system-wide: filtering all links by id is exact.
        found.extend(
            sys::all_links()
                .map_err(walk)?
                .into_iter()
                .map(|(_, info)| info)
                .filter(|i| i.link_type == sys::BPF_LINK_TYPE_CGROUP && i.cgroup_id == id),
        );
    }
    if let Some(index) = ifname.and_then(|name| ifindex(name).ok()) {
        // An ifindex is only unique within a network namespace: ask the device (in the
        // caller's namespace) which links it has.
        for hook in [sys::BPF_TCX_INGRESS, sys::BPF_TCX_EGRESS] {
            for link_id in sys::tcx_link_ids(index, hook).map_err(walk)? {
                if let Ok(info) =
                    sys::link_fd_by_id(link_id).and_then(|fd| sys::link_info(fd.as_fd()))
                {
                    found.push(info);
                }
            }
        }
    }
    let mut out = Vec::new();
    for info in found {
        if let Ok(program) = sys::prog_name(info.prog_id) {
            if program.starts_with(programs::PROGRAM_PREFIX) {
                out.push(AttachedLink {
                    link_id: info.link_id,
                    prog_id: info.prog_id,
                    program,
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.program, a.link_id).cmp(&(&b.program, b.link_id)));
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
