//! Allocators for Service ClusterIPs, NodePorts and node podCIDRs.
//!
//! They are in-memory sets rebuilt from the stored objects at start-up (the objects are the
//! source of truth, so allocations survive restarts and can never disagree with them), and
//! every allocation happens under the registry's lock before the object is written; a failed
//! write releases what it took.

use std::collections::{BTreeSet, HashSet};
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

/// Fixed-size subnets of a cluster CIDR (node podCIDRs), lowest free first.
#[derive(Debug)]
pub struct CidrAllocator {
    cluster: Ipv4Net,
    prefix: u8,
    used: BTreeSet<u32>,
}

impl CidrAllocator {
    /// Subnets of length `prefix` inside `cluster`.
    pub fn new(cluster: Ipv4Net, prefix: u8) -> Self {
        CidrAllocator {
            cluster: cluster.trunc(),
            prefix: prefix.max(cluster.prefix_len()),
            used: BTreeSet::new(),
        }
    }

    fn count(&self) -> u64 {
        1u64 << (self.prefix - self.cluster.prefix_len())
    }

    fn subnet(&self, i: u32) -> Option<Ipv4Net> {
        let step = 1u64 << (32 - self.prefix as u32);
        let base = u32::from(self.cluster.network()) as u64 + i as u64 * step;
        Ipv4Net::new((base as u32).into(), self.prefix).ok()
    }

    /// Reserves a specific subnet (must be one of the allocator's slots).
    pub fn allocate(&mut self, net: Ipv4Net) -> Result<(), AllocError> {
        let out = || AllocError::OutOfRange {
            what: "CIDR",
            value: net.to_string(),
            range: format!("{} split into /{}", self.cluster, self.prefix),
        };
        if net.prefix_len() != self.prefix || !self.cluster.contains(&net.network()) {
            return Err(out());
        }
        let step = 1u64 << (32 - self.prefix as u32);
        let off = u32::from(net.network()) as u64 - u32::from(self.cluster.network()) as u64;
        if !off.is_multiple_of(step) {
            return Err(out());
        }
        if !self.used.insert((off / step) as u32) {
            return Err(AllocError::Taken {
                what: "CIDR",
                value: net.to_string(),
            });
        }
        Ok(())
    }

    /// Reserves the lowest free subnet.
    pub fn allocate_next(&mut self) -> Result<Ipv4Net, AllocError> {
        for i in 0..self.count() {
            let i = i as u32;
            if !self.used.contains(&i) {
                if let Some(n) = self.subnet(i) {
                    self.used.insert(i);
                    return Ok(n);
                }
            }
        }
        Err(AllocError::Full {
            what: "CIDR",
            range: self.cluster.to_string(),
        })
    }

    /// Releases a subnet.
    pub fn release(&mut self, net: Ipv4Net) {
        let step = 1u64 << (32 - self.prefix as u32);
        if net.prefix_len() == self.prefix && self.cluster.contains(&net.network()) {
            let off = u32::from(net.network()) as u64 - u32::from(self.cluster.network()) as u64;
            self.used.remove(&((off / step) as u32));
        }
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

    #[test]
    fn cidr_allocator() {
        let mut c = CidrAllocator::new("10.244.0.0/22".parse().unwrap(), 24);
        assert_eq!(c.allocate_next().unwrap().to_string(), "10.244.0.0/24");
        c.allocate("10.244.2.0/24".parse().unwrap()).unwrap();
        assert_eq!(c.allocate_next().unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(c.allocate_next().unwrap().to_string(), "10.244.3.0/24");
        assert!(c.allocate_next().is_err());
        assert!(c.allocate("10.244.1.0/25".parse().unwrap()).is_err());
        c.release("10.244.1.0/24".parse().unwrap());
        assert_eq!(c.allocate_next().unwrap().to_string(), "10.244.1.0/24");
    }
}
