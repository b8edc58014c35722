//! The compiled BPF objects (built by `build.rs` from `bpf/*.c`) and their program names.

/// `bpf/sock.c`: the cgroup sock_addr hooks.
pub static SOCK_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock.o"));

/// `bpf/nodeport.c`: the tc NodePort programs.
pub static NODEPORT_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nodeport.o"));

/// Every embedded object, by file name.
pub static OBJECTS: &[(&str, &[u8])] = &[("sock.o", SOCK_OBJ), ("nodeport.o", NODEPORT_OBJ)];

/// `cgroup/connect4` program (C function name).
pub const CONNECT4: &str = "sluice_connect4";
/// `cgroup/sendmsg4` program.
pub const SENDMSG4: &str = "sluice_sendmsg4";
/// `cgroup/recvmsg4` program.
pub const RECVMSG4: &str = "sluice_recvmsg4";
/// `cgroup/getpeername4` program.
pub const GETPEERNAME4: &str = "sluice_getpeername4";
/// The socket programs with their `bpf_attach_type`, in attach order.
pub(crate) const SOCK_PROGRAMS: [(&str, u32); 4] = [
    // The reverse hooks first: once connect4 rewrites, getpeername must already translate back.
    (RECVMSG4, crate::sys::BPF_CGROUP_UDP4_RECVMSG),
    (GETPEERNAME4, crate::sys::BPF_CGROUP_INET4_GETPEERNAME),
    (CONNECT4, crate::sys::BPF_CGROUP_INET4_CONNECT),
    (SENDMSG4, crate::sys::BPF_CGROUP_UDP4_SENDMSG),
];
/// Prefix of every Sluice program name (what `detach_all` recognises).
pub const PROGRAM_PREFIX: &str = "sluice_";
/// tc ingress program of `bpf/nodeport.c`.
pub const NODEPORT_INGRESS: &str = "sluice_nodeport_ingress";
/// tc egress program of `bpf/nodeport.c`.
pub const NODEPORT_EGRESS: &str = "sluice_nodeport_egress";
