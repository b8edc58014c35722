//! The map ABI: a Rust mirror of `ebpf/include/sluice_lb.h`.
//!
//! The C header is the source of truth. Every struct here is `#[repr(C)]` with explicit padding
//! fields (always written as zero: the kernel hashes keys bytewise), holds only integers and byte
//! arrays, and is checked at compile time for size and member offsets; the `btf_layout` test
//! below additionally compares each one against the BTF clang emitted for the compiled objects,
//! so header and mirror cannot drift apart.
//!
//! Network-order fields carry a `_be` suffix and are stored as byte arrays (`[u8; 4]` for an
//! IPv4 address, `[u8; 2]` for a port) holding the bytes exactly as they appear on the wire:
//! `Ipv4Addr::octets()` and `u16::to_be_bytes()`. Byte arrays cannot be confused with host-order
//! integers by accident; the constructors and accessors convert.

use std::{
    mem::{offset_of, size_of},
    net::Ipv4Addr,
};

/// Frontend as seen by in-node clients (the cgroup socket hooks).
pub const SCOPE_SOCK: u8 = 0;
/// Frontend as seen by traffic arriving from outside the node (the tc NodePort program).
pub const SCOPE_EXT: u8 = 1;

/// `SvcVal::flags`: sessionAffinity ClientIP.
pub const SVC_AFFINITY: u8 = 0x1;
/// `SvcVal::flags`: the frontend is nodeIP:nodePort.
pub const SVC_NODEPORT: u8 = 0x2;
/// `SvcVal::flags`: externalTrafficPolicy Local (tc keeps the client address, no SNAT).
pub const SVC_EXT_LOCAL: u8 = 0x4;
/// `SvcVal::flags` (EXT scope): an LB IP with `loadBalancerSourceRanges`; a new flow from a
/// source in none of the front end's `sluice_srcrange_v1` ranges is dropped.
pub const SVC_SRC_RANGES: u8 = 0x8;

/// `Backend::flags`: the backend runs on this node.
pub const BACKEND_LOCAL: u8 = 0x1;

/// `CtKey::dir`: ingress, client to frontend.
pub const CT_IN_ORIG: u8 = 0;
/// `CtKey::dir`: ingress, backend reply to node IP:SNAT port.
pub const CT_IN_REPLY: u8 = 1;
/// `CtKey::dir`: egress, local backend reply to the client.
pub const CT_OUT_REPLY: u8 = 2;
/// `CtVal::flags`: the source was rewritten to the node IP.
pub const CT_F_SNAT: u8 = 0x1;
/// `CtVal::flags`: the packet is forwarded by `bpf_redirect` instead of the stack.
pub const CT_F_REDIRECT: u8 = 0x2;

/// IP protocol numbers as used in `proto` fields.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// SCTP.
pub const IPPROTO_SCTP: u8 = 132;

/// Map names (also the pin file names under the pin directory).
pub const SVC_MAP: &str = "sluice_svc_v1";
/// Backend id to backend.
pub const BACKEND_MAP: &str = "sluice_backend_v1";
/// Socket reverse translation.
pub const REVNAT_MAP: &str = "sluice_revnat_v1";
/// ClientIP session affinity.
pub const AFFINITY_MAP: &str = "sluice_affinity_v1";
/// Unconnected UDP flow pinning.
pub const UDPFLOW_MAP: &str = "sluice_udpflow_v1";
/// tc NodePort conntrack.
pub const CT_MAP: &str = "sluice_ct_v1";
/// tc NodePort node configuration (one entry, index 0).
pub const CONFIG_MAP: &str = "sluice_config_v1";
/// Allowed source ranges of front ends with [`SVC_SRC_RANGES`] (LPM trie).
pub const SRCRANGE_MAP: &str = "sluice_srcrange_v1";
/// Every map, in a stable order.
pub const ALL_MAPS: [&str; 8] = [
    SVC_MAP,
    BACKEND_MAP,
    REVNAT_MAP,
    AFFINITY_MAP,
    UDPFLOW_MAP,
    CT_MAP,
    CONFIG_MAP,
    SRCRANGE_MAP,
];

/// The bits of `SrcRangeKey::svc_id` the trie matches before the address (always all of them).
pub const SRCRANGE_SVC_BITS: u32 = 32;

/// A short protocol name for text output (`tcp`, `udp`, `sctp`, else the number).
pub fn proto_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_SCTP => "sctp".into(),
        other => other.to_string(),
    }
}

/// `struct sluice_svc_key`: one (frontend, scope, slot) of `sluice_svc_v1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcKey {
    /// Frontend address, network order.
    pub addr_be: [u8; 4],
    /// Frontend port, network order.
    pub port_be: [u8; 2],
    /// IP protocol (`IPPROTO_*`).
    pub proto: u8,
    /// `SCOPE_SOCK` or `SCOPE_EXT`.
    pub scope: u8,
    /// 0: the service entry; 1..=count: one backend each.
    pub slot: u32,
}

impl SvcKey {
    /// A key from host values.
    pub fn new(addr: Ipv4Addr, port: u16, proto: u8, scope: u8, slot: u32) -> Self {
        Self {
            addr_be: addr.octets(),
            port_be: port.to_be_bytes(),
            proto,
            scope,
            slot,
        }
    }
    /// The frontend address.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr_be)
    }
    /// The frontend port, host order.
    pub fn port(&self) -> u16 {
        u16::from_be_bytes(self.port_be)
    }
}

/// `struct sluice_svc_val`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SvcVal {
    /// Slot 0: number of backends (slots 1..=count); other slots: 0.
    pub count: u32,
    /// Slot > 0: key into `sluice_backend_v1`; slot 0: 0.
    pub backend_id: u32,
    /// Reverse-NAT / affinity id, unique per frontend, > 0.
    pub svc_id: u32,
    /// ClientIP affinity timeout in seconds (slot 0).
    pub affinity_timeout: u32,
    /// `SVC_*` flags (slot 0).
    pub flags: u8,
    /// Zero.
    pub pad: [u8; 3],
}

/// `struct sluice_backend`, keyed by a `u32` backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Backend address, network order.
    pub addr_be: [u8; 4],
    /// Backend port, network order.
    pub port_be: [u8; 2],
    /// IP protocol.
    pub proto: u8,
    /// `BACKEND_*` flags.
    pub flags: u8,
}

impl Backend {
    /// A backend from host values.
    pub fn new(addr: Ipv4Addr, port: u16, proto: u8, flags: u8) -> Self {
        Self {
            addr_be: addr.octets(),
            port_be: port.to_be_bytes(),
            proto,
            flags,
        }
    }
    /// The backend address.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr_be)
    }
    /// The backend port, host order.
    pub fn port(&self) -> u16 {
        u16::from_be_bytes(self.port_be)
    }
}

/// `struct sluice_revnat_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevnatKey {
    /// Socket cookie.
    pub cookie: u64,
    /// Backend address, network order.
    pub addr_be: [u8; 4],
    /// Backend port, network order.
    pub port_be: [u8; 2],
    /// Zero.
    pub pad: u16,
}

/// `struct sluice_revnat_val`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevnatVal {
    /// Frontend address, network order.
    pub addr_be: [u8; 4],
    /// Frontend port, network order.
    pub port_be: [u8; 2],
    /// Zero.
    pub pad: u16,
    /// The frontend's `svc_id`.
    pub svc_id: u32,
}

/// `struct sluice_affinity_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// netns cookie (socket hooks) or the client IPv4 address in its first four bytes (tc).
    pub client: u64,
    /// The frontend's `svc_id`.
    pub svc_id: u32,
    /// Zero.
    pub pad: u32,
}

/// `struct sluice_affinity_val`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityVal {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last use.
    pub last_used_ns: u64,
    /// The chosen backend.
    pub backend_id: u32,
    /// Zero.
    pub pad: u32,
}

/// `struct sluice_udpflow_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UdpflowKey {
    /// Socket cookie.
    pub cookie: u64,
    /// Frontend address, network order.
    pub addr_be: [u8; 4],
    /// Frontend port, network order.
    pub port_be: [u8; 2],
    /// Zero.
    pub pad: u16,
}

/// `struct sluice_udpflow_val`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UdpflowVal {
    /// The backend the socket's datagrams to this frontend go to.
    pub backend_id: u32,
    /// The frontend's `svc_id` (a mismatch means the frontend was reused: pick again).
    pub svc_id: u32,
}

/// `struct sluice_ct_key`: a tuple as the tc program sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Source address, network order.
    pub saddr_be: [u8; 4],
    /// Destination address, network order.
    pub daddr_be: [u8; 4],
    /// Source port, network order.
    pub sport_be: [u8; 2],
    /// Destination port, network order.
    pub dport_be: [u8; 2],
    /// IP protocol.
    pub proto: u8,
    /// `CT_IN_ORIG`, `CT_IN_REPLY` or `CT_OUT_REPLY`.
    pub dir: u8,
    /// Zero.
    pub pad: u16,
}

/// `struct sluice_ct_val`: the rewritten tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtVal {
    /// New source address, network order.
    pub saddr_be: [u8; 4],
    /// New destination address, network order.
    pub daddr_be: [u8; 4],
    /// New source port, network order.
    pub sport_be: [u8; 2],
    /// New destination port, network order.
    pub dport_be: [u8; 2],
    /// `CT_F_*` flags.
    pub flags: u8,
    /// Zero.
    pub pad: [u8; 3],
    /// The frontend's `svc_id`.
    pub svc_id: u32,
    /// The chosen backend.
    pub backend_id: u32,
}

/// `struct sluice_config`: entry 0 of `sluice_config_v1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Config {
    /// The node IPv4 address (SNAT source), network order; all zero disables the tc program.
    pub node_ip4_be: [u8; 4],
    /// ifindex of the external interface.
    pub ext_ifindex: u32,
    /// First SNAT port, host order.
    pub snat_port_min: u16,
    /// Last SNAT port (inclusive), host order.
    pub snat_port_max: u16,
    /// Zero.
    pub pad: u32,
}

/// `struct sluice_srcrange_key`: one allowed source range of a front end in
/// `sluice_srcrange_v1` (value: `u32` 1). The trie matches `svc_id` in full, then the first
/// `prefixlen - 32` bits of the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SrcRangeKey {
    /// [`SRCRANGE_SVC_BITS`] plus the address prefix length.
    pub prefixlen: u32,
    /// The front end's `svc_id`.
    pub svc_id: u32,
    /// The range's network address, network order (host bits zero).
    pub addr_be: [u8; 4],
}

impl SrcRangeKey {
    /// The key of range `addr/prefix` of front end `svc_id` (host bits of `addr` cleared).
    pub fn new(svc_id: u32, addr: Ipv4Addr, prefix: u8) -> Self {
        let prefix = prefix.min(32);
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        };
        Self {
            prefixlen: SRCRANGE_SVC_BITS + u32::from(prefix),
            svc_id,
            addr_be: (u32::from(addr) & mask).to_be_bytes(),
        }
    }
    /// The range's network address.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr_be)
    }
    /// The range's prefix length (0..=32).
    pub fn prefix(&self) -> u8 {
        self.prefixlen.saturating_sub(SRCRANGE_SVC_BITS).min(32) as u8
    }
    /// The part after `prefixlen`, as aya's `lpm_trie::Key` wants it.
    pub fn data(&self) -> SrcRangeData {
        SrcRangeData {
            svc_id: self.svc_id,
            addr_be: self.addr_be,
        }
    }
    /// From aya's `lpm_trie::Key` parts.
    pub fn from_parts(prefixlen: u32, data: SrcRangeData) -> Self {
        Self {
            prefixlen,
            svc_id: data.svc_id,
            addr_be: data.addr_be,
        }
    }
}

/// [`SrcRangeKey`] without `prefixlen`: the data part of aya's `lpm_trie::Key`, which adds
/// the `u32` prefix length in front (same bytes as the C struct).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SrcRangeData {
    /// The front end's `svc_id`.
    pub svc_id: u32,
    /// Network address, network order.
    pub addr_be: [u8; 4],
}

// SAFETY: all of these are #[repr(C)], consist only of integers and byte arrays, and have
// explicit padding fields, so every bit pattern is valid and there are no uninitialised bytes.
unsafe impl aya::Pod for SvcKey {}
unsafe impl aya::Pod for SvcVal {}
unsafe impl aya::Pod for Backend {}
unsafe impl aya::Pod for RevnatKey {}
unsafe impl aya::Pod for RevnatVal {}
unsafe impl aya::Pod for AffinityKey {}
unsafe impl aya::Pod for AffinityVal {}
unsafe impl aya::Pod for UdpflowKey {}
unsafe impl aya::Pod for UdpflowVal {}
unsafe impl aya::Pod for CtKey {}
unsafe impl aya::Pod for CtVal {}
unsafe impl aya::Pod for Config {}
unsafe impl aya::Pod for SrcRangeKey {}
unsafe impl aya::Pod for SrcRangeData {}

/// The C struct name, size and member offsets of every mirrored struct, for the BTF test and
/// the compile-time checks below. (name, size, [(member, offset)]).
pub type Layout = (&'static str, usize, &'static [(&'static str, usize)]);

/// Expected layouts, by C struct name; the single table both checks use.
pub const LAYOUTS: &[Layout] = &[
    (
        "sluice_svc_key",
        size_of::<SvcKey>(),
        &[
            ("addr", offset_of!(SvcKey, addr_be)),
            ("port", offset_of!(SvcKey, port_be)),
            ("proto", offset_of!(SvcKey, proto)),
            ("scope", offset_of!(SvcKey, scope)),
            ("slot", offset_of!(SvcKey, slot)),
        ],
    ),
    (
        "sluice_svc_val",
        size_of::<SvcVal>(),
        &[
            ("count", offset_of!(SvcVal, count)),
            ("backend_id", offset_of!(SvcVal, backend_id)),
            ("svc_id", offset_of!(SvcVal, svc_id)),
            ("affinity_timeout", offset_of!(SvcVal, affinity_timeout)),
            ("flags", offset_of!(SvcVal, flags)),
            ("pad", offset_of!(SvcVal, pad)),
        ],
    ),
    (
        "sluice_backend",
        size_of::<Backend>(),
        &[
            ("addr", offset_of!(Backend, addr_be)),
            ("port", offset_of!(Backend, port_be)),
            ("proto", offset_of!(Backend, proto)),
            ("flags", offset_of!(Backend, flags)),
        ],
    ),
    (
        "sluice_revnat_key",
        size_of::<RevnatKey>(),
        &[
            ("cookie", offset_of!(RevnatKey, cookie)),
            ("addr", offset_of!(RevnatKey, addr_be)),
            ("port", offset_of!(RevnatKey, port_be)),
            ("pad", offset_of!(RevnatKey, pad)),
        ],
    ),
    (
        "sluice_revnat_val",
        size_of::<RevnatVal>(),
        &[
            ("addr", offset_of!(RevnatVal, addr_be)),
            ("port", offset_of!(RevnatVal, port_be)),
            ("pad", offset_of!(RevnatVal, pad)),
            ("svc_id", offset_of!(RevnatVal, svc_id)),
        ],
    ),
    (
        "sluice_affinity_key",
        size_of::<AffinityKey>(),
        &[
            ("client", offset_of!(AffinityKey, client)),
            ("svc_id", offset_of!(AffinityKey, svc_id)),
            ("pad", offset_of!(AffinityKey, pad)),
        ],
    ),
    (
        "sluice_affinity_val",
        size_of::<AffinityVal>(),
        &[
            ("last_used_ns", offset_of!(AffinityVal, last_used_ns)),
            ("backend_id", offset_of!(AffinityVal, backend_id)),
            ("pad", offset_of!(AffinityVal, pad)),
        ],
    ),
    (
        "sluice_udpflow_key",
        size_of::<UdpflowKey>(),
        &[
            ("cookie", offset_of!(UdpflowKey, cookie)),
            ("addr", offset_of!(UdpflowKey, addr_be)),
            ("port", offset_of!(UdpflowKey, port_be)),
            ("pad", offset_of!(UdpflowKey, pad)),
        ],
    ),
    (
        "sluice_udpflow_val",
        size_of::<UdpflowVal>(),
        &[
            ("backend_id", offset_of!(UdpflowVal, backend_id)),
            ("svc_id", offset_of!(UdpflowVal, svc_id)),
        ],
    ),
    (
        "sluice_ct_key",
        size_of::<CtKey>(),
        &[
            ("saddr", offset_of!(CtKey, saddr_be)),
            ("daddr", offset_of!(CtKey, daddr_be)),
            ("sport", offset_of!(CtKey, sport_be)),
            ("dport", offset_of!(CtKey, dport_be)),
            ("proto", offset_of!(CtKey, proto)),
            ("dir", offset_of!(CtKey, dir)),
            ("pad", offset_of!(CtKey, pad)),
        ],
    ),
    (
        "sluice_ct_val",
        size_of::<CtVal>(),
        &[
            ("saddr", offset_of!(CtVal, saddr_be)),
            ("daddr", offset_of!(CtVal, daddr_be)),
            ("sport", offset_of!(CtVal, sport_be)),
            ("dport", offset_of!(CtVal, dport_be)),
            ("flags", offset_of!(CtVal, flags)),
            ("pad", offset_of!(CtVal, pad)),
            ("svc_id", offset_of!(CtVal, svc_id)),
            ("backend_id", offset_of!(CtVal, backend_id)),
        ],
    ),
    (
        "sluice_config",
        size_of::<Config>(),
        &[
            ("node_ip4", offset_of!(Config, node_ip4_be)),
            ("ext_ifindex", offset_of!(Config, ext_ifindex)),
            ("snat_port_min", offset_of!(Config, snat_port_min)),
            ("snat_port_max", offset_of!(Config, snat_port_max)),
            ("pad", offset_of!(Config, pad)),
        ],
    ),
    (
        "sluice_srcrange_key",
        size_of::<SrcRangeKey>(),
        &[
            ("prefixlen", offset_of!(SrcRangeKey, prefixlen)),
            ("svc_id", offset_of!(SrcRangeKey, svc_id)),
            ("addr", offset_of!(SrcRangeKey, addr_be)),
        ],
    ),
];

// The sizes and key offsets the header's _Static_asserts pin, checked here at compile time.
const _: () = {
    assert!(size_of::<SvcKey>() == 12);
    assert!(offset_of!(SvcKey, port_be) == 4);
    assert!(offset_of!(SvcKey, proto) == 6);
    assert!(offset_of!(SvcKey, scope) == 7);
    assert!(offset_of!(SvcKey, slot) == 8);
    assert!(size_of::<SvcVal>() == 20);
    assert!(offset_of!(SvcVal, svc_id) == 8);
    assert!(offset_of!(SvcVal, flags) == 16);
    assert!(size_of::<Backend>() == 8);
    assert!(offset_of!(Backend, flags) == 7);
    assert!(size_of::<RevnatKey>() == 16);
    assert!(offset_of!(RevnatKey, addr_be) == 8);
    assert!(offset_of!(RevnatKey, port_be) == 12);
    assert!(size_of::<RevnatVal>() == 12);
    assert!(offset_of!(RevnatVal, svc_id) == 8);
    assert!(size_of::<AffinityKey>() == 16);
    assert!(offset_of!(AffinityKey, svc_id) == 8);
    assert!(size_of::<AffinityVal>() == 16);
    assert!(offset_of!(AffinityVal, backend_id) == 8);
    assert!(size_of::<UdpflowKey>() == 16);
    assert!(offset_of!(UdpflowKey, addr_be) == 8);
    assert!(size_of::<UdpflowVal>() == 8);
    assert!(size_of::<CtKey>() == 16);
    assert!(offset_of!(CtKey, proto) == 12);
    assert!(offset_of!(CtKey, dir) == 13);
    assert!(size_of::<CtVal>() == 24);
    assert!(offset_of!(CtVal, svc_id) == 16);
    assert!(size_of::<Config>() == 16);
    assert!(offset_of!(Config, snat_port_min) == 8);
    assert!(size_of::<SrcRangeKey>() == 12);
    assert!(offset_of!(SrcRangeKey, svc_id) == 4);
    assert!(offset_of!(SrcRangeKey, addr_be) == 8);
    // aya's lpm_trie::Key<SrcRangeData> is `{ u32 prefix_len; SrcRangeData data }`, packed.
    assert!(size_of::<aya::maps::lpm_trie::Key<SrcRangeData>>() == size_of::<SrcRangeKey>());
    assert!(size_of::<SrcRangeData>() == 8);
};

#[cfg(test)]
mod btf_layout {
    //! Reads the `.BTF` section of the compiled objects (a minimal reader of the documented
    //! format: <https://docs.kernel.org/bpf/btf.html>) and checks every struct of [`LAYOUTS`].

    use std::collections::HashMap;

    use object::{Object as _, ObjectSection as _};

    use super::LAYOUTS;

    const BTF_KIND_STRUCT: u32 = 4;
    const BTF_KIND_UNION: u32 = 5;

    /// name -> (size, [(member, bit offset)]) of every struct in a .BTF blob.
    fn structs(btf: &[u8]) -> HashMap<String, (usize, Vec<(String, u32)>)> {
        let u32_at = |off: usize| u32::from_le_bytes(btf[off..off + 4].try_into().unwrap());
        assert_eq!(u16::from_le_bytes([btf[0], btf[1]]), 0xeb9f, "BTF magic");
        let hdr_len = u32_at(4) as usize;
        let (type_off, type_len) = (u32_at(8) as usize, u32_at(12) as usize);
        let str_off = u32_at(16) as usize;
        let types = hdr_len + type_off;
        let strs = hdr_len + str_off;
        let name = |off: u32| {
            let s = &btf[strs + off as usize..];
            String::from_utf8_lossy(&s[..s.iter().position(|&b| b == 0).unwrap()]).into_owned()
        };
        let mut out = HashMap::new();
        let mut at = types;
        while at < types + type_len {
            let (name_off, info, size) = (u32_at(at), u32_at(at + 4), u32_at(at + 8));
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kflag = info >> 31;
            at += 12;
            // Trailing data per kind (BTF spec, "Type encoding").
            let extra = match kind {
                1 => 4,                                        // INT
                3 => 12,                                       // ARRAY
                BTF_KIND_STRUCT | BTF_KIND_UNION => 12 * vlen, // members
                6 => 8 * vlen,                                 // ENUM
                13 => 8 * vlen,                                // FUNC_PROTO
                14 => 4,                                       // VAR
                15 => 12 * vlen,                               // DATASEC
                17 => 4,                                       // DECL_TAG
                19 => 12 * vlen,                               // ENUM64
                _ => 0,
            };
            if kind == BTF_KIND_STRUCT && name_off != 0 {
                let members = (0..vlen)
                    .map(|i| {
                        let m = at + 12 * i;
                        let off = u32_at(m + 8);
                        // With kflag, the low 24 bits are the bit offset (bitfields).
                        let bits = if kflag == 1 { off & 0xff_ffff } else { off };
                        (name(u32_at(m)), bits)
                    })
                    .collect();
                out.insert(name(name_off), (size as usize, members));
            }
            at += extra;
        }
        out
    }

    #[test]
    fn rust_mirror_matches_the_btf_of_every_object() {
        for (obj_name, bytes) in crate::programs::OBJECTS {
            let file = object::File::parse(*bytes).expect("parse BPF ELF");
            let section = file.section_by_name(".BTF").expect(".BTF section");
            let btf = structs(section.data().expect(".BTF data"));
            for (name, size, members) in LAYOUTS {
                let (btf_size, btf_members) = btf
                    .get(*name)
                    .unwrap_or_else(|| panic!("{obj_name}: struct {name} not in BTF"));
                assert_eq!(btf_size, size, "{obj_name}: sizeof(struct {name})");
                assert_eq!(
                    btf_members.len(),
                    members.len(),
                    "{obj_name}: struct {name} member count (C has {btf_members:?})"
                );
                for ((c_name, c_bits), (r_name, r_off)) in btf_members.iter().zip(members.iter()) {
                    assert_eq!(c_name, r_name, "{obj_name}: struct {name} member order");
                    assert_eq!(
                        *c_bits as usize,
                        r_off * 8,
                        "{obj_name}: offset of {name}.{c_name}"
                    );
                }
            }
        }
    }
}
