//! Destroying connected UDP sockets whose backend went away (or that are stuck on a front
//! end's bare address, see [`crate::plan::StaleUdp`]).
//!
//! # Why
//!
//! The socket load balancer (`bpf/sock.c`) translates a Service frontend to a backend when a
//! UDP socket `connect()`s: from then on the socket *is* connected to the backend pod's
//! address, and nothing in the datapath looks at it again. When that backend is removed, such
//! a socket keeps sending into the void (kube-proxy's stale UDP conntrack problem, Cilium's
//! "connected UDP" problem) and its owner never learns about it. Destroying the socket makes
//! the kernel abort it: a blocked or next `recv()` fails with `ECONNABORTED` (a later `send()`
//! with `EDESTADDRREQ`, the socket is disconnected), so the application re-resolves and
//! reconnects, and the new `connect()` goes through the hook again.
//!
//! # How
//!
//! The `bpf_sock_destroy` kfunc (from a socket iterator) is out of reach with aya 0.14, so this
//! uses the older sock_diag netlink interface (`NETLINK_SOCK_DIAG`, kernel
//! `CONFIG_INET_DIAG_DESTROY`): a `SOCK_DIAG_BY_FAMILY` dump of IPv4 UDP sockets in state
//! `ESTABLISHED` (= connected), then one `SOCK_DESTROY` per match, addressed by the socket id
//! (addresses, ports, interface, cookie) the dump returned. The messages are those of the
//! `netlink-packet-sock-diag` crate (0.5, the release built on `netlink-packet-core` 0.9, the
//! workspace's version) sent over `netlink-sys`.
//!
//! sock_diag only ever sees the sockets of the network namespace the netlink socket was
//! created in. So for each network namespace of the processes in the pods' cgroup, a
//! short-lived thread `setns()`es into it only to create the netlink socket, and the caller's
//! thread (possibly a tokio worker, which must never change namespace) talks over it.
//!
//! The kernel filters the dump by destination port and state; the destination address is
//! filtered here (the kernel would need a bytecode filter for it).
//!
//! Which sockets: [`destroy_udp_connected_to`] limits itself to sockets *created* in the
//! cgroup subtree (the `INET_DIAG_CGROUP_ID` every dump entry carries), which is exactly the
//! set the cgroup hooks balanced: a pod with host networking shares the node's namespace, and
//! the node's own sockets are left alone. [`destroy_udp_in_netns`] takes every matching socket
//! of one namespace.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    net::{IpAddr, SocketAddrV4},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::Path,
};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, IPPROTO_UDP},
    inet::{nlas::Nla as InetNla, ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagDestroy, SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

use crate::{Error, Result};

/// `INET_DIAG_CGROUP_ID` (uapi `linux/inet_diag.h`): the cgroup v2 id of the socket, a `u64`
/// in host order; the kernel adds it to every dump entry (since 5.7) when it has
/// `CONFIG_SOCK_CGROUP_DATA`, which cgroup BPF hooks need anyway.
const INET_DIAG_CGROUP_ID: u16 = 21;

/// Receive buffer: the kernel fills dump messages up to 32 KiB.
const RECV_BUF: usize = 64 * 1024;

/// Every distinct network namespace of the processes in the cgroup v2 directory `cgroup` and
/// all its descendants, as `(netns inode, a pid in it)`, sorted by inode.
///
/// Reads `cgroup.procs` of each directory and `stat`s `/proc/<pid>/ns/net`; processes that
/// exit meanwhile (or are zombies) and directories removed meanwhile are skipped. The inode is
/// the one `stat` reports for `/proc/<pid>/ns/net` and for an `ip netns` bind mount.
pub fn netns_of_cgroup(cgroup: &Path) -> Vec<(u64, i32)> {
    netns_pids(cgroup)
        .into_iter()
        .map(|(ino, pids)| (ino, pids[0]))
        .collect()
}

/// Destroy the IPv4 UDP sockets created by processes of the cgroup v2 directory `cgroup` (or
/// its descendants) that are connected to one of `backends`; returns how many were destroyed.
///
/// Each network namespace of the cgroup's processes ([`netns_of_cgroup`]) is searched, and
/// only sockets whose cgroup (recorded at socket creation, the cgroup the sock_addr hooks ran
/// for) is `cgroup` or below are destroyed. A kernel that reports no socket cgroup (no
/// `CONFIG_SOCK_CGROUP_DATA`, so no cgroup hooks either) gets the whole namespace's matches.
///
/// Namespaces are handled one after the other; one failing does not stop the others, and the
/// first failure is returned after all were tried. A cgroup without processes, or nothing
/// matching, is `Ok(0)`.
///
/// # Errors
///
/// [`Error::Unsupported`] when the kernel cannot destroy sockets (`CONFIG_INET_DIAG_DESTROY`
/// off); [`Error::Io`] for a failed netlink exchange or namespace switch.
pub fn destroy_udp_connected_to(cgroup: &Path, backends: &[SocketAddrV4]) -> Result<usize> {
    if backends.is_empty() {
        return Ok(0);
    }
    let cgroups = cgroup_ids(cgroup);
    let mut destroyed = 0;
    let mut first_err = None;
    for (ino, pids) in netns_pids(cgroup) {
        // The pid may have exited (or been reused) since it was listed: take the first pid
        // that still leads to that namespace.
        let Some(ns) = pids.iter().find_map(|pid| {
            let f = fs::File::open(format!("/proc/{pid}/ns/net")).ok()?;
            (f.metadata().ok()?.ino() == ino).then_some(f)
        }) else {
            continue;
        };
        match sock_diag_in(&ns).and_then(|mut nl| nl.destroy_udp4(backends, Some(&cgroups))) {
            Ok(n) => destroyed += n,
            Err(e) => {
                tracing::warn!(netns = ino, error = %e, "destroying stale UDP sockets");
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(destroyed),
    }
}

/// Destroy every IPv4 UDP socket of the network namespace `netns_path` (an `ip netns` bind
/// mount or `/proc/<pid>/ns/net`) that is connected to one of `backends`, whoever owns it;
/// returns how many were destroyed. The building block of [`destroy_udp_connected_to`].
///
/// # Errors
///
/// As [`destroy_udp_connected_to`], plus [`Error::Io`] when `netns_path` cannot be opened.
pub fn destroy_udp_in_netns(netns_path: &Path, backends: &[SocketAddrV4]) -> Result<usize> {
    if backends.is_empty() {
        return Ok(0);
    }
    let ns = fs::File::open(netns_path)
        .map_err(|e| Error::io(format!("opening {}", netns_path.display()), e))?;
    sock_diag_in(&ns)?.destroy_udp4(backends, None)
}

/// Namespace inode → the pids of the cgroup subtree in it (in listing order).
fn netns_pids(cgroup: &Path) -> BTreeMap<u64, Vec<i32>> {
    let mut out: BTreeMap<u64, Vec<i32>> = BTreeMap::new();
    for dir in cgroup_dirs(cgroup) {
        let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else {
            continue;
        };
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            if let Ok(m) = fs::metadata(format!("/proc/{pid}/ns/net")) {
                out.entry(m.ino()).or_default().push(pid);
            }
        }
    }
    out
}

/// `cgroup` and every directory below it (each a cgroup), parents first.
fn cgroup_dirs(cgroup: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![cgroup.to_path_buf()];
    while let Some(dir) = todo.pop() {
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    todo.push(e.path());
                }
            }
        }
        out.push(dir);
    }
    out
}

/// The cgroup v2 ids of `cgroup` and its descendants: a cgroup's id is its directory's inode
/// number in cgroupfs (kernfs node id, 64-bit).
fn cgroup_ids(cgroup: &Path) -> BTreeSet<u64> {
    cgroup_dirs(cgroup)
        .iter()
        .filter_map(|d| fs::metadata(d).ok())
        .map(|m| m.ino())
        .collect()
}

/// A `NETLINK_SOCK_DIAG` socket created inside the network namespace `ns` (an open nsfs
/// file). A netlink socket stays in the namespace it was created in, so only a fresh thread
/// switches namespace (and ends right after); the caller's thread never does.
fn sock_diag_in(ns: &fs::File) -> Result<SockDiag> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: `ns` is an open file, borrowed for the whole scope; setns only changes
            // this short-lived thread's network namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(Error::io(
                    "setns into the network namespace",
                    io::Error::last_os_error(),
                ));
            }
            SockDiag::new()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// One `NETLINK_SOCK_DIAG` socket and its request sequence.
struct SockDiag {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// A connected socket found by the dump.
struct Found {
    id: SocketId,
    cgroup: Option<u64>,
}

impl SockDiag {
    fn new() -> Result<Self> {
        let mut sock = Socket::new(NETLINK_SOCK_DIAG)
            .map_err(|e| Error::io("opening a NETLINK_SOCK_DIAG socket", e))?;
        sock.bind_auto()
            .map_err(|e| Error::io("binding the sock_diag socket", e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io("connecting the sock_diag socket", e))?;
        Ok(Self {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Dump and destroy; `cgroups`, when given, limits to sockets created in those cgroups.
    fn destroy_udp4(
        &mut self,
        backends: &[SocketAddrV4],
        cgroups: Option<&BTreeSet<u64>>,
    ) -> Result<usize> {
        let ports: BTreeSet<u16> = backends.iter().map(|b| b.port()).collect();
        let mut doomed = Vec::new();
        for port in ports {
            for f in self.dump_connected_udp4(port)? {
                let IpAddr::V4(ip) = f.id.destination_address else {
                    continue;
                };
                let remote = SocketAddrV4::new(ip, f.id.destination_port);
                let in_cgroup = match (cgroups, f.cgroup) {
                    (Some(set), Some(id)) => set.contains(&id),
                    _ => true,
                };
                if in_cgroup && backends.contains(&remote) {
                    doomed.push(f.id);
                }
            }
        }
        let mut destroyed = 0;
        for id in doomed {
            if self.destroy(id)? {
                destroyed += 1;
            }
        }
        Ok(destroyed)
    }

    fn request(socket_id: SocketId) -> SockDiagMessage {
        SockDiagMessage::InetRequest(InetRequest {
            family: AF_INET,
            protocol: IPPROTO_UDP,
            extensions: ExtensionFlags::empty(),
            // A connected UDP socket is TCP_ESTABLISHED; bound-only ones are TCP_CLOSE.
            states: StateFlags::ESTABLISHED,
            socket_id,
        })
    }

    fn send<M>(&mut self, flags: u16, payload: M) -> Result<u32>
    where
        M: netlink_packet_core::NetlinkSerializable + Into<NetlinkPayload<M>>,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, payload.into());
        msg.finalize();
        let mut out = vec![0; msg.buffer_len()];
        msg.serialize(&mut out);
        self.sock
            .send(&out, 0)
            .map_err(|e| Error::io("sending a sock_diag request", e))?;
        Ok(self.seq)
    }

    /// Receive one datagram (possibly several netlink messages) into `self.buf`.
    fn recv(&mut self) -> Result<()> {
        self.buf.clear();
        loop {
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("receiving a sock_diag reply", e)),
            }
        }
    }

    /// Connected IPv4 UDP sockets with destination port `port` (the kernel filters on state
    /// and on the request's non-zero destination port).
    fn dump_connected_udp4(&mut self, port: u16) -> Result<Vec<Found>> {
        let mut id = SocketId::new_v4();
        id.destination_port = port;
        let seq = self.send(NLM_F_REQUEST | NLM_F_DUMP, Self::request(id))?;
        let mut found = Vec::new();
        loop {
            self.recv()?;
            let mut off = 0;
            while off < self.buf.len() {
                let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[off..])
                    .map_err(|e| Error::io("parsing a sock_diag dump", invalid(e)))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == seq {
                    match msg.payload {
                        NetlinkPayload::Done(_) => return Ok(found),
                        NetlinkPayload::Error(e) => {
                            return Err(Error::io("sock_diag dump of UDP sockets", e.to_io()))
                        }
                        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r))
                            if r.header.socket_id.destination_port == port =>
                        {
                            let cgroup = r.nlas.iter().find_map(|n| match n {
                                InetNla::Other(a) if a.kind() == INET_DIAG_CGROUP_ID => {
                                    let mut v = [0u8; 8];
                                    (a.value_len() == 8).then(|| {
                                        a.emit_value(&mut v);
                                        u64::from_ne_bytes(v)
                                    })
                                }
                                _ => None,
                            });
                            found.push(Found {
                                id: r.header.socket_id.clone(),
                                cgroup,
                            });
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }

    /// `SOCK_DESTROY` of one socket; `false` when it is gone already (closed, or disconnected
    /// so that the id no longer finds it).
    fn destroy(&mut self, id: SocketId) -> Result<bool> {
        let seq = self.send(
            NLM_F_REQUEST | NLM_F_ACK,
            SockDiagDestroy::new(Self::request(id)),
        )?;
        loop {
            self.recv()?;
            let mut off = 0;
            while off < self.buf.len() {
                let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[off..])
                    .map_err(|e| Error::io("parsing a sock_diag ack", invalid(e)))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == seq {
                    if let NetlinkPayload::Error(e) = msg.payload {
                        return match e.code.map(|c| -c.get()) {
                            None => Ok(true),
                            Some(libc::ENOENT) => Ok(false),
                            Some(libc::EOPNOTSUPP) => Err(Error::Unsupported(
                                "this kernel cannot destroy sockets over sock_diag \
                                 (CONFIG_INET_DIAG_DESTROY is off)"
                                    .into(),
                            )),
                            Some(errno) => Err(Error::io(
                                "sock_diag SOCK_DESTROY of a UDP socket",
                                io::Error::from_raw_os_error(errno),
                            )),
                        };
                    }
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}
