//! Allocators for Service ClusterIPs, NodePorts and node podCIDRs.
//!
//! They are in-memory sets rebuilt from the stored objects at start-up (the objects are the
//! source of truth, so allocations survive restarts and can never disagree with them), and
//! every allocation happens under the registry's lock before the object is written; a failed
//! write releases what it took.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use rand::Rng;

/// Allocation errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The requested value lies outside the allocator's range.
    #[error(
        "provided {what} {value} is not in the valid range. The range of valid {what}s is {range}"
    )]
    OutOfRange {
        /// `IP` or `port`.
        what: &'static str,
        /// The requested value.
        value: String,
        /// The configured range.
        range: String,
    },
    /// The requested value is in use.
    #[error("provided {what} {value} is already allocated")]
    Taken {
        /// `IP` or `port`.
        what: &'static str,
        /// The requested value.
        value: String,
    },
    /// A podCIDR overlaps one another node holds.
    #[error("{value} overlaps podCIDR {held} of node \"{node}\"")]
    Overlaps {
        /// The requested block.
        value: String,
        /// The block it overlaps.
        held: String,
        /// The node holding that block.
        node: String,
    },
    /// Nothing left.
    #[error("range is full: no {what} left in {range}")]
    Full {
        /// `IP`, `port` or `CIDR`.
        what: &'static str,
        /// The configured range.
        range: String,
    },
}

/// Addresses of a CIDR, by offset; the network and (IPv4) broadcast addresses are never handed out.
#[derive(Debug)]
pub struct IpAllocator {
    net: IpNet,
    used: HashSet<u128>,
}

fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

impl IpAllocator {
    /// An allocator over `net`.
    pub fn new(net: IpNet) -> Self {
        IpAllocator {
            net: net.trunc(),
            used: HashSet::new(),
        }
    }

    /// The range.
    pub fn net(&self) -> IpNet {
        self.net
    }

    /// Usable offsets: 1 ..= last (IPv4 excludes broadcast).
    fn bounds(&self) -> (u128, u128) {
        let host_bits = (self.net.max_prefix_len() - self.net.prefix_len()) as u32;
        let size: u128 = if host_bits >= 128 {
            u128::MAX
        } else {
            1u128 << host_bits
        };
        let last = match self.net {
            IpNet::V4(_) => size.saturating_sub(2),
            IpNet::V6(_) => size.saturating_sub(1),
        };
        (1, last)
    }

    fn offset(&self, ip: IpAddr) -> Option<u128> {
        if !self.net.contains(&ip) {
            return None;
        }
        let off = ip_to_u128(ip) - ip_to_u128(self.net.network());
        let (lo, hi) = self.bounds();
        (lo..=hi).contains(&off).then_some(off)
    }

    fn at(&self, off: u128) -> IpAddr {
        match self.net {
            IpNet::V4(n) => IpAddr::V4((u32::from(n.network()) + off as u32).into()),
            IpNet::V6(n) => IpAddr::V6((u128::from(n.network()) + off).into()),
        }
    }

    /// Whether `ip` is a usable address of the range.
    pub fn in_range(&self, ip: IpAddr) -> bool {
        self.offset(ip).is_some()
    }

    /// Reserves a specific address.
    pub fn allocate(&mut self, ip: IpAddr) -> Result<(), AllocError> {
        let off = self.offset(ip).ok_or_else(|| AllocError::OutOfRange {
            what: "IP",
            value: ip.to_string(),
            range: self.net.to_string(),
        })?;
        if !self.used.insert(off) {
            return Err(AllocError::Taken {
                what: "IP",
                value: ip.to_string(),
            });
        }
        Ok(())
    }

    /// Reserves a free address, starting the scan at a random offset.
    pub fn allocate_next(&mut self) -> Result<IpAddr, AllocError> {
        let (lo, hi) = self.bounds();
        let count = hi.saturating_sub(lo) + 1;
        if hi < lo || self.used.len() as u128 >= count {
            return Err(AllocError::Full {
                what: "IP",
                range: self.net.to_string(),
            });
        }
        let start = rand::rng().random_range(0..count);
        for i in 0..count {
            let off = lo + (start + i) % count;
            if self.used.insert(off) {
                return Ok(self.at(off));
            }
        }
        Err(AllocError::Full {
            what: "IP",
            range: self.net.to_string(),
        })
    }

    /// Releases an address (no-op when not held).
    pub fn release(&mut self, ip: IpAddr) {
        if let Some(off) = self.offset(ip) {
            self.used.remove(&off);
        }
    }

    /// Addresses in use.
    pub fn used(&self) -> usize {
        self.used.len()
    }
}

/// Ports of an inclusive range.
#[derive(Debug)]
pub struct PortAllocator {
    lo: u16,
    hi: u16,
    used: HashSet<u16>,
}

impl PortAllocator {
    /// An allocator over `lo..=hi`.
    pub fn new(lo: u16, hi: u16) -> Self {
        PortAllocator {
            lo,
            hi,
            used: HashSet::new(),
        }
    }

    fn range(&self) -> String {
        format!("{}-{}", self.lo, self.hi)
    }

    /// Whether `p` is in range.
    pub fn in_range(&self, p: u16) -> bool {
        (self.lo..=self.hi).contains(&p)
    }

    /// Reserves a specific port.
    pub fn allocate(&mut self, p: u16) -> Result<(), AllocError> {
        if !self.in_range(p) {
            return Err(AllocError::OutOfRange {
                what: "port",
                value: p.to_string(),
                range: self.range(),
            });
        }
        if !self.used.insert(p) {
            return Err(AllocError::Taken {
                what: "port",
                value: p.to_string(),
            });
        }
        Ok(())
    }

    /// Reserves a free port, starting at a random one.
    pub fn allocate_next(&mut self) -> Result<u16, AllocError> {
        let count = (self.hi - self.lo) as u32 + 1;
        let start = rand::rng().random_range(0..count);
        for i in 0..count {
            let p = self.lo + ((start + i) % count) as u16;
            if self.used.insert(p) {
                return Ok(p);
            }
        }
        Err(AllocError::Full {
            what: "port",
            range: self.range(),
        })
    }

    /// Releases a port.
    pub fn release(&mut self, p: u16) {
        self.used.remove(&p);
    }

    /// Ports in use.
    pub fn used(&self) -> usize {
        self.used.len()
    }
}

/// Who holds a podCIDR: a Node, by name and uid (a Node deleted and created again under the
/// same name is another holder, so a late release for the old one never frees the new one's).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Holder {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
}

impl Holder {
    /// The holder `name` / `uid`.
    pub fn new(name: impl Into<String>, uid: impl Into<String>) -> Self {
        Holder {
            name: name.into(),
            uid: uid.into(),
        }
    }
}

/// Parses a CIDR as `k8s.io/utils/net.ParseCIDRSloppy` does (IPv4 octets may carry leading
/// zeros, read as decimal), truncated to its network; an IPv4-mapped IPv6 block of /96 or
/// longer is the IPv4 block it maps, so it overlaps what an IPv4 spelling of it would.
pub fn parse_cidr_sloppy(s: &str) -> Option<IpNet> {
    let (addr, prefix) = s.split_once('/')?;
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = prefix.parse().ok()?;
    let net = if addr.contains(':') {
        if addr.contains('%') {
            return None;
        }
        let v6: std::net::Ipv6Addr = addr.parse().ok()?;
        match v6.to_ipv4_mapped() {
            Some(v4) if (96..=128).contains(&bits) => IpNet::V4(Ipv4Net::new(v4, bits - 96).ok()?),
            _ => IpNet::V6(ipnet::Ipv6Net::new(v6, bits).ok()?),
        }
    } else {
        let mut octets = [0u8; 4];
        let mut n = 0;
        for part in addr.split('.') {
            if n == 4 || part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let v = part.bytes().try_fold(0u32, |v, b| {
                Some(v * 10 + u32::from(b - b'0')).filter(|v| *v <= 255)
            })?;
            octets[n] = v as u8;
            n += 1;
        }
        if n != 4 {
            return None;
        }
        IpNet::V4(Ipv4Net::new(octets.into(), bits).ok()?)
    };
    Some(net.trunc())
}

/// Whether two blocks share an address (CIDR blocks either nest or are disjoint).
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Node podCIDRs, as kube-controller-manager's range allocator keeps them, made exact: every
/// block a Node holds (either family, inside `--cluster-cidr` or not) with its holder, and the
/// `/--node-cidr-mask-size` slots of the cluster CIDR handed out lowest free first.
///
/// A slot is free only while no held block overlaps it, so two holders of overlapping blocks
/// (stored by an older version) keep the slot used until both have released it, and a block of
/// another size (a node that brought its own, or a changed mask) covers every slot it touches.
/// [`PodCidrs::hold`] refuses a block that overlaps one held by another holder.
///
/// A holder's block is counted: the stored object is one claim, and each write in flight that
/// adds the block (or the IPAM controller between its pick and its write) is another, so a
/// failed write giving its claim back never frees a block that a concurrent write of the same
/// Node has stored.
#[derive(Debug)]
pub struct PodCidrs {
    cluster: Ipv4Net,
    prefix: u8,
    /// Held blocks (truncated) → holders; more than one only for clashes found at start-up.
    by_net: BTreeMap<IpNet, BTreeSet<Holder>>,
    /// Holder → its blocks, each with its count of claims (≥ 1).
    by_holder: BTreeMap<Holder, BTreeMap<IpNet, u32>>,
}

impl PodCidrs {
    /// Subnets of length `prefix` inside `cluster` (a prefix shorter than the cluster's is the
    /// cluster's).
    pub fn new(cluster: Ipv4Net, prefix: u8) -> Self {
        PodCidrs {
            cluster: cluster.trunc(),
            prefix: prefix.clamp(cluster.prefix_len(), 32),
            by_net: BTreeMap::new(),
            by_holder: BTreeMap::new(),
        }
    }

    /// The cluster CIDR.
    pub fn cluster(&self) -> Ipv4Net {
        self.cluster
    }

    fn full(&self) -> AllocError {
        AllocError::Full {
            what: "CIDR",
            range: self.cluster.to_string(),
        }
    }

    /// Held blocks overlapping `net`, each with its holders.
    pub fn overlapping(&self, net: IpNet) -> Vec<(IpNet, &BTreeSet<Holder>)> {
        let net = net.trunc();
        let mut out = Vec::new();
        // Blocks containing `net`: its supernets.
        for p in 0..net.prefix_len() {
            if let Ok(sup) = IpNet::new(net.network(), p) {
                if let Some((k, h)) = self.by_net.get_key_value(&sup.trunc()) {
                    out.push((*k, h));
                }
            }
        }
        // Blocks inside `net` (itself included): networks within its range, no shorter prefix.
        let (Ok(lo), Ok(hi)) = (
            IpNet::new(net.network(), 0),
            IpNet::new(net.broadcast(), net.max_prefix_len()),
        ) else {
            return out;
        };
        out.extend(
            self.by_net
                .range(lo..=hi)
                .filter(|(k, _)| k.prefix_len() >= net.prefix_len())
                .map(|(k, h)| (*k, h)),
        );
        out
    }

    /// The first block held by someone other than `holder` that overlaps `net`.
    pub fn clash(&self, holder: &Holder, net: IpNet) -> Option<(IpNet, &Holder)> {
        self.overlapping(net)
            .into_iter()
            .find_map(|(k, hs)| hs.iter().find(|h| *h != holder).map(|h| (k, h)))
    }

    /// Adds a claim of `holder` on `net`, refused when `net` overlaps a block another holder
    /// has. Each claim is given back with one [`PodCidrs::release`].
    pub fn hold(&mut self, holder: &Holder, net: IpNet) -> Result<(), AllocError> {
        let net = net.trunc();
        if let Some((k, h)) = self.clash(holder, net) {
            return Err(AllocError::Overlaps {
                value: net.to_string(),
                held: k.to_string(),
                node: h.name.clone(),
            });
        }
        self.insert(holder, net);
        Ok(())
    }

    /// Records a block a stored Node has even when it overlaps another holder's (start-up:
    /// the store is the truth), returning the clash to report. The block stays reserved
    /// while either holder keeps it.
    pub fn occupy(&mut self, holder: &Holder, net: IpNet) -> Option<AllocError> {
        let net = net.trunc();
        let clash = self.clash(holder, net).map(|(k, h)| AllocError::Overlaps {
            value: net.to_string(),
            held: k.to_string(),
            node: h.name.clone(),
        });
        self.insert(holder, net);
        clash
    }

    fn insert(&mut self, holder: &Holder, net: IpNet) {
        *self
            .by_holder
            .entry(holder.clone())
            .or_default()
            .entry(net)
            .or_default() += 1;
        self.by_net.entry(net).or_default().insert(holder.clone());
    }

    /// Gives back one claim of `holder` on `net`; the block is free for others once its last
    /// claim is gone (no-op when `holder` has none).
    pub fn release(&mut self, holder: &Holder, net: IpNet) {
        let net = net.trunc();
        let Some(nets) = self.by_holder.get_mut(holder) else {
            return;
        };
        let Some(count) = nets.get_mut(&net) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        nets.remove(&net);
        if nets.is_empty() {
            self.by_holder.remove(holder);
        }
        if let Some(hs) = self.by_net.get_mut(&net) {
            hs.remove(holder);
            if hs.is_empty() {
                self.by_net.remove(&net);
            }
        }
    }

    /// The blocks `holder` has, each with its count of claims.
    pub fn held_by(&self, holder: &Holder) -> Vec<(IpNet, u32)> {
        self.by_holder
            .get(holder)
            .map(|n| n.iter().map(|(k, c)| (*k, *c)).collect())
            .unwrap_or_default()
    }

    /// Whether any held block overlaps `net`.
    pub fn is_used(&self, net: IpNet) -> bool {
        !self.overlapping(net).is_empty()
    }

    /// Slot index of an address inside the cluster CIDR.
    fn slot_of(&self, a: u32) -> u64 {
        u64::from(a - u32::from(self.cluster.network())) >> (32 - u32::from(self.prefix))
    }

    fn slot(&self, i: u64) -> Ipv4Net {
        let base = u64::from(u32::from(self.cluster.network()));
        let addr = (base + (i << (32 - u32::from(self.prefix)))) as u32;
        Ipv4Net::new(addr.into(), self.prefix).expect("prefix ≤ 32")
    }

    /// The lowest slot no held block overlaps.
    pub fn next_free(&self) -> Option<Ipv4Net> {
        let cluster = IpNet::V4(self.cluster);
        // A held supernet of the cluster CIDR covers every slot.
        if (0..self.cluster.prefix_len()).any(|p| {
            IpNet::new(cluster.network(), p).is_ok_and(|s| self.by_net.contains_key(&s.trunc()))
        }) {
            return None;
        }
        let lo = IpNet::new(cluster.network(), 0).ok()?;
        let hi = IpNet::new(cluster.broadcast(), 32).ok()?;
        let (c_lo, c_hi) = (
            u32::from(self.cluster.network()),
            u32::from(self.cluster.broadcast()),
        );
        let mut candidate = 0u64;
        for net in self.by_net.range(lo..=hi).map(|(k, _)| k) {
            let IpNet::V4(n) = net else { continue };
            let begin = self.slot_of(u32::from(n.network()).max(c_lo));
            let end = self.slot_of(u32::from(n.broadcast()).min(c_hi));
            if begin > candidate {
                break;
            }
            candidate = candidate.max(end + 1);
        }
        let count = 1u64 << (self.prefix - self.cluster.prefix_len());
        (candidate < count).then(|| self.slot(candidate))
    }

    /// Reserves the lowest free slot for `holder`.
    pub fn allocate_next(&mut self, holder: &Holder) -> Result<Ipv4Net, AllocError> {
        let net = self.next_free().ok_or_else(|| self.full())?;
        self.insert(holder, IpNet::V4(net));
        Ok(net)
    }

    /// Every held block with its holders, in address order.
    pub fn held(&self) -> impl Iterator<Item = (&IpNet, &BTreeSet<Holder>)> {
        self.by_net.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_allocator_exhaustion_reuse_and_range() {
        let mut a = IpAllocator::new("10.0.0.0/29".parse().unwrap());
        // .1 – .6 usable; .0 network and .7 broadcast are not.
        let mut got = BTreeSet::new();
        for _ in 0..6 {
            got.insert(a.allocate_next().unwrap());
        }
        let want: BTreeSet<IpAddr> = (1..=6)
            .map(|i| format!("10.0.0.{i}").parse().unwrap())
            .collect();
        assert_eq!(got, want);
        assert!(matches!(a.allocate_next(), Err(AllocError::Full { .. })));
        let ip: IpAddr = "10.0.0.3".parse().unwrap();
        assert!(matches!(a.allocate(ip), Err(AllocError::Taken { .. })));
        a.release(ip);
        assert_eq!(a.allocate_next().unwrap(), ip);
        assert!(matches!(
            a.allocate("10.0.0.7".parse().unwrap()),
            Err(AllocError::OutOfRange { .. })
        ));
        assert!(matches!(
            a.allocate("10.9.0.1".parse().unwrap()),
            Err(AllocError::OutOfRange { .. })
        ));
        assert_eq!(
            AllocError::OutOfRange {
                what: "IP",
                value: "10.9.0.1".into(),
                range: "10.0.0.0/29".into()
            }
            .to_string(),
            "provided IP 10.9.0.1 is not in the valid range. The range of valid IPs is 10.0.0.0/29"
        );
    }

    #[test]
    fn ip_allocator_rebuilt_from_objects_never_duplicates() {
        // Restart: re-reserve what the stored Services hold, then allocate the rest.
        let mut a = IpAllocator::new("10.96.0.0/30".parse().unwrap());
        a.allocate("10.96.0.1".parse().unwrap()).unwrap();
        assert_eq!(
            a.allocate_next().unwrap(),
            "10.96.0.2".parse::<IpAddr>().unwrap()
        );
        assert!(a.allocate_next().is_err());
    }

    #[test]
    fn port_allocator() {
        let mut p = PortAllocator::new(30000, 30002);
        p.allocate(30001).unwrap();
        assert!(matches!(p.allocate(30001), Err(AllocError::Taken { .. })));
        assert!(matches!(p.allocate(80), Err(AllocError::OutOfRange { .. })));
        let mut rest = vec![p.allocate_next().unwrap(), p.allocate_next().unwrap()];
        rest.sort();
        assert_eq!(rest, [30000, 30002]);
        assert!(p.allocate_next().is_err());
        p.release(30000);
        assert_eq!(p.allocate_next().unwrap(), 30000);
    }

    fn h(n: &str) -> Holder {
        Holder::new(n, format!("uid-{n}"))
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn pod_cidrs_lowest_free_first_reuse_and_full() {
        let mut c = PodCidrs::new("10.244.0.0/22".parse().unwrap(), 24);
        assert_eq!(
            c.allocate_next(&h("a")).unwrap().to_string(),
            "10.244.0.0/24"
        );
        c.hold(&h("b"), net("10.244.2.0/24")).unwrap();
        assert_eq!(
            c.allocate_next(&h("c")).unwrap().to_string(),
            "10.244.1.0/24"
        );
        assert_eq!(
            c.allocate_next(&h("d")).unwrap().to_string(),
            "10.244.3.0/24"
        );
        assert_eq!(
            c.allocate_next(&h("e")).unwrap_err().to_string(),
            "range is full: no CIDR left in 10.244.0.0/22"
        );
        c.release(&h("c"), net("10.244.1.0/24"));
        assert_eq!(
            c.allocate_next(&h("e")).unwrap().to_string(),
            "10.244.1.0/24"
        );
        // A second claim of the holder on its block (a write in flight) is counted: the block
        // stays held until both are given back.
        c.hold(&h("b"), net("10.244.2.0/24")).unwrap();
        assert_eq!(c.held_by(&h("b")), vec![(net("10.244.2.0/24"), 2)]);
        c.release(&h("b"), net("10.244.2.0/24"));
        assert!(c.hold(&h("x"), net("10.244.2.0/24")).is_err());
        c.release(&h("b"), net("10.244.2.0/24"));
        assert!(c.held_by(&h("b")).is_empty());
        c.hold(&h("x"), net("10.244.2.0/24")).unwrap();
    }

    #[test]
    fn pod_cidrs_blocks_of_other_sizes_cover_every_slot_they_touch() {
        let mut c = PodCidrs::new("10.244.0.0/16".parse().unwrap(), 24);
        // A /25 takes its /24 slot; a /23 takes two; a /26 inside the /23 clashes.
        c.hold(&h("small"), net("10.244.0.128/25")).unwrap();
        c.hold(&h("big"), net("10.244.2.0/23")).unwrap();
        assert!(c.is_used(net("10.244.0.0/24")));
        assert!(c.is_used(net("10.244.3.0/24")));
        assert!(!c.is_used(net("10.244.1.0/24")));
        let e = c.hold(&h("x"), net("10.244.3.64/26")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "10.244.3.64/26 overlaps podCIDR 10.244.2.0/23 of node \"big\""
        );
        assert_eq!(
            c.allocate_next(&h("n")).unwrap().to_string(),
            "10.244.1.0/24"
        );
        assert_eq!(
            c.allocate_next(&h("m")).unwrap().to_string(),
            "10.244.4.0/24"
        );
        // Outside the cluster CIDR: reserved nowhere, still checked against other nodes.
        c.hold(&h("out"), net("192.168.0.0/24")).unwrap();
        assert!(c.hold(&h("out2"), net("192.168.0.0/16")).is_err());
        assert!(c.hold(&h("v6"), net("fd00::/64")).is_ok());
        assert!(c.hold(&h("v6b"), net("fd00::/48")).is_err());
        // A supernet of the cluster CIDR covers every slot.
        let mut d = PodCidrs::new("10.244.0.0/16".parse().unwrap(), 24);
        d.hold(&h("huge"), net("10.0.0.0/8")).unwrap();
        assert!(d.allocate_next(&h("n")).is_err());
        d.release(&h("huge"), net("10.0.0.0/8"));
        assert_eq!(
            d.allocate_next(&h("n")).unwrap().to_string(),
            "10.244.0.0/24"
        );
    }

    #[test]
    fn pod_cidrs_clashing_blocks_from_the_store_stay_reserved_until_both_go() {
        let mut c = PodCidrs::new("10.244.0.0/23".parse().unwrap(), 24);
        assert!(c.occupy(&h("a"), net("10.244.0.0/24")).is_none());
        let clash = c.occupy(&h("b"), net("10.244.0.0/25")).unwrap();
        assert_eq!(
            clash.to_string(),
            "10.244.0.0/25 overlaps podCIDR 10.244.0.0/24 of node \"a\""
        );
        c.release(&h("a"), net("10.244.0.0/24"));
        assert!(c.is_used(net("10.244.0.0/24")), "b still has part of it");
        assert_eq!(
            c.allocate_next(&h("n")).unwrap().to_string(),
            "10.244.1.0/24"
        );
        c.release(&h("b"), net("10.244.0.0/25"));
        assert_eq!(
            c.allocate_next(&h("m")).unwrap().to_string(),
            "10.244.0.0/24"
        );
        // Same name, other uid: another holder.
        assert!(c
            .hold(&Holder::new("m", "other-uid"), net("10.244.0.0/24"))
            .is_err());
    }

    #[test]
    fn parse_cidr_sloppy_matches_k8s_utils_net() {
        for (s, want) in [
            ("10.244.1.0/24", Some("10.244.1.0/24")),
            ("10.244.1.7/24", Some("10.244.1.0/24")),
            ("010.244.001.0/24", Some("10.244.1.0/24")),
            ("::ffff:10.244.1.0/120", Some("10.244.1.0/24")),
            ("fd00::1/64", Some("fd00::/64")),
            ("10.244.1.0", None),
            ("10.244.1.0/33", None),
            ("10.244.1/24", None),
            ("256.1.1.1/8", None),
            ("fe80::1%eth0/64", None),
            ("10.0.0.0/+8", None),
        ] {
            assert_eq!(
                parse_cidr_sloppy(s).map(|n| n.to_string()).as_deref(),
                want,
                "{s}"
            );
        }
    }

    mod prop {
        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            Hold(u8, IpNet),
            Occupy(u8, IpNet),
            Release(u8, IpNet),
            Next(u8),
        }

        /// Blocks in and around 10.0.0.0/20 (split into /24), of sizes /18 to /26.
        fn block() -> impl Strategy<Value = IpNet> {
            (0u32..192, 18u8..=26).prop_map(|(off, p)| {
                let addr = u32::from(std::net::Ipv4Addr::new(9, 255, 240, 0)) + (off << 6);
                IpNet::V4(Ipv4Net::new(addr.into(), p).unwrap().trunc())
            })
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0u8..6, block()).prop_map(|(h, n)| Op::Hold(h, n)),
                (0u8..6, block()).prop_map(|(h, n)| Op::Occupy(h, n)),
                (0u8..6, block()).prop_map(|(h, n)| Op::Release(h, n)),
                (0u8..6).prop_map(Op::Next),
            ]
        }

        proptest! {
            /// The indexed queries agree with brute force over every held block, `hold` never
            /// lets two holders overlap, and `next_free` is the lowest slot nothing overlaps.
            #[test]
            fn pod_cidrs_agree_with_brute_force(ops in proptest::collection::vec(op(), 1..60), probe in block()) {
                let cluster: Ipv4Net = "10.0.0.0/20".parse().unwrap();
                let mut c = PodCidrs::new(cluster, 24);
                let mut legacy = false;
                for o in ops {
                    match o {
                        Op::Hold(i, n) => { let _ = c.hold(&h(&i.to_string()), n); }
                        Op::Occupy(i, n) => { legacy |= c.occupy(&h(&i.to_string()), n).is_some(); }
                        Op::Release(i, n) => c.release(&h(&i.to_string()), n),
                        Op::Next(i) => {
                            let want = (0..16u32)
                                .map(|s| Ipv4Net::new((u32::from(cluster.network()) + (s << 8)).into(), 24).unwrap())
                                .find(|s| !c.held().any(|(k, _)| overlaps(k, &IpNet::V4(*s))));
                            prop_assert_eq!(c.next_free(), want);
                            let got = c.allocate_next(&h(&i.to_string())).ok();
                            prop_assert_eq!(got, want);
                        }
                    }
                    let all: Vec<(IpNet, Holder)> = c
                        .held()
                        .flat_map(|(k, hs)| hs.iter().map(move |x| (*k, x.clone())))
                        .collect();
                    if !legacy {
                        for (i, (a, ha)) in all.iter().enumerate() {
                            for (b, hb) in &all[i + 1..] {
                                prop_assert!(ha == hb || !overlaps(a, b), "{ha:?} {a} / {hb:?} {b}");
                            }
                        }
                    }
                    let mut want: Vec<IpNet> = all.iter().filter(|(k, _)| overlaps(k, &probe)).map(|(k, _)| *k).collect();
                    want.sort();
                    want.dedup();
                    let mut got: Vec<IpNet> = c.overlapping(probe).into_iter().map(|(k, _)| k).collect();
                    got.sort();
                    prop_assert_eq!(got, want);
                }
            }
        }
    }
}
