//! Property tests of the configuration parser and of IPAM range validation + allocation.
//!
//! (a) Any bytes or JSON value fed to the parser: no panic, and either a configuration or a
//!     CNI error with one of the parser's codes (1, 2, 6, 7).
//! (b) Random IPAM ranges (any prefix incl. /31, /32, /127, /128, subnets at the very top and
//!     bottom of the address space, start/end/gateway inside, outside, on the network or
//!     broadcast address, or missing): the parser agrees with an independent oracle written
//!     with plain integers; an invalid config is code 7; a valid one, allocated from until
//!     exhaustion on the in-memory store, only ever gives addresses inside a range of the set
//!     and its subnet, never a gateway, never one twice, and ends with the "no IP addresses
//!     available" error once exactly the set's capacity is used.
//!
//! Bounded: about 1,500 cases per property, a few seconds in all.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{json, Value};
use sluice_cni::config::NetConf;
use sluice_cni::error::CniError;
use sluice_cni::ipam::{self, IpamError, MemStore, Range, Store};

/// The codes the parser may answer with: incompatible version, unsupported field, decode
/// failure, invalid config.
const PARSE_CODES: [u32; 4] = [1, 2, 6, 7];

fn config(cases: u32) -> Config {
    Config {
        cases,
        // No regression files written into the shared tree; failures print the case.
        failure_persistence: None,
        ..Config::default()
    }
}

/// Everything the plugin does with stdin before acting on it must be total.
fn parse_is_total(bytes: &[u8]) -> Result<(), TestCaseError> {
    let _ = sluice_cni::plugin::version_hint(bytes);
    let del = NetConf::parse_for_del(bytes);
    match NetConf::parse(bytes) {
        Ok(c) => {
            if let Some(i) = &c.ipam {
                prop_assert!(i.range_sets().is_ok(), "parse accepted bad ranges");
            }
            let _ = c.prev_result();
            let _ = c.version_at_least(0, 4);
            prop_assert!(matches!(del, Ok((_, None))), "DEL parse disagrees: {del:?}");
        }
        Err(e) => {
            let e = CniError::from(e);
            prop_assert!(PARSE_CODES.contains(&e.code), "code {} for {e}", e.code);
            prop_assert!(!e.msg.is_empty());
            let v: Value = serde_json::from_str(&e.to_json()).expect("error JSON");
            prop_assert_eq!(v["code"].as_u64(), Some(u64::from(e.code)));
            // DEL only tolerates range errors: whatever else parse refuses, DEL refuses too.
            if e.code != 7 {
                prop_assert!(del.is_err());
            }
        }
    }
    Ok(())
}

/// Keys the parser knows, so random objects reach deeper than the first unknown key.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "cniVersion", "name", "type", "bridge", "isGateway", "isDefaultGateway", "ipMasq",
            "mtu", "hairpinMode", "promiscMode", "vlan", "ipam", "dns", "runtimeConfig",
            "prevResult", "cni.dev/valid-attachments", "ranges", "subnet", "rangeStart",
            "rangeEnd", "gateway", "routes", "dataDir", "dst", "gw", "portMappings", "hostPort",
            "containerPort", "containerID", "ifname", "ips", "interfaces", "address",
        ])
        .prop_map(str::to_string),
        1 => ".{0,8}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        prop::sample::select(vec![
            "1.1.0",
            "1.0.0",
            "0.4.0",
            "0.3.1",
            "0.2.0",
            "host-local",
            "dhcp",
            "n",
            "../x",
            "10.0.0.0/24",
            "10.0.0.5/24",
            "10.0.0.0/31",
            "10.0.0.0/32",
            "10.0.0.5",
            "10.0.0.255",
            "255.255.255.255",
            "0.0.0.0/0",
            "2001:db8::/64",
            "::ffff:10.0.0.1",
            "::/0",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "cni0",
            "a-very-long-bridge-name",
        ])
        .prop_map(Value::from),
        ".{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid configuration with some of its fields replaced by random values.
fn mutated_config() -> impl Strategy<Value = Value> {
    let paths = prop::collection::vec(
        (
            prop::sample::select(vec![
                "/cniVersion",
                "/name",
                "/bridge",
                "/ipam",
                "/ipam/type",
                "/ipam/ranges",
                "/ipam/ranges/0",
                "/ipam/ranges/0/0",
                "/ipam/ranges/0/0/subnet",
                "/ipam/ranges/0/0/rangeStart",
                "/ipam/ranges/0/0/rangeEnd",
                "/ipam/ranges/0/0/gateway",
                "/ipam/subnet",
                "/ipam/rangeStart",
                "/ipam/routes",
                "/ipam/dataDir",
                "/prevResult",
                "/runtimeConfig",
                "/mtu",
                "/vlan",
            ]),
            json_value(),
        ),
        0..4,
    );
    paths.prop_map(|edits| {
        let mut v = json!({
            "cniVersion": "1.1.0", "name": "n", "type": "sluice-cni", "bridge": "br0",
            "ipam": {"type": "host-local", "dataDir": "/nonexistent",
                     "ranges": [[{"subnet": "10.80.0.0/24", "rangeStart": "10.80.0.10",
                                  "rangeEnd": "10.80.0.20", "gateway": "10.80.0.1"}]]}
        });
        for (path, new) in edits {
            if let Some(slot) = v.pointer_mut(path) {
                *slot = new;
            }
        }
        v
    })
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        parse_is_total(&bytes)?;
    }

    #[test]
    fn arbitrary_json_never_panics(v in json_value()) {
        parse_is_total(v.to_string().as_bytes())?;
    }

    #[test]
    fn mutated_configs_never_panic(v in mutated_config()) {
        parse_is_total(v.to_string().as_bytes())?;
    }
}

// ---------------------------------------------------------------------------------------------
// (b) IPAM ranges.

/// How a random address relates to its subnet.
#[derive(Debug, Clone, Copy)]
enum Pick {
    Absent,
    /// network + n (may run past the broadcast address).
    FromNetwork(u64),
    /// broadcast + 1 - n (n = 0: one past the subnet, 1: the broadcast address, …).
    FromTop(u8),
    /// Any address of the same family.
    Anywhere(u128),
    /// An address of the other family.
    OtherFamily(u32),
}

#[derive(Debug, Clone)]
struct RangeSpec {
    v6: bool,
    /// Subnet address as an integer (host bits may be set).
    base: u128,
    prefix: u8,
    /// Write the subnet's network address instead of `base`.
    clean: bool,
    /// Keep picks inside the usable part of the subnet (start/end/gateway may still be
    /// inverted): about half of the generated configs are then valid.
    tame: bool,
    start: Pick,
    end: Pick,
    gateway: Pick,
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        3 => Just(Pick::Absent),
        4 => any::<u64>().prop_map(Pick::FromNetwork),
        2 => (0u8..4).prop_map(Pick::FromTop),
        1 => any::<u128>().prop_map(Pick::Anywhere),
        1 => any::<u32>().prop_map(Pick::OtherFamily),
    ]
}

fn range_spec() -> impl Strategy<Value = RangeSpec> {
    let v4 = (
        prop_oneof![
            2 => any::<u32>(),
            2 => (u32::MAX - 1024)..=u32::MAX,
            1 => 0u32..1024,
            2 => 0x0A50_0000u32..0x0A50_0400,
        ],
        prop_oneof![4 => 25u8..=32, 2 => 20u8..=24, 1 => 0u8..=32],
    )
        .prop_map(|(b, p)| (false, u128::from(b), p));
    let v6 = (
        prop_oneof![
            1 => any::<u128>(),
            2 => (u128::MAX - 4096)..=u128::MAX,
            1 => 0u128..4096,
            2 => (0x2001_0db8u128 << 96)..((0x2001_0db8u128 << 96) + 4096),
        ],
        prop_oneof![4 => 119u8..=128, 2 => 110u8..=118, 1 => 0u8..=128],
    )
        .prop_map(|(b, p)| (true, b, p));
    (
        prop_oneof![3 => v4, 1 => v6],
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.6),
        pick(),
        pick(),
        pick(),
    )
        .prop_map(|((v6, base, prefix), clean, tame, start, end, gateway)| {
            let bits = if v6 { 128 } else { 32 };
            RangeSpec {
                v6,
                base,
                prefix: if tame { prefix.min(bits - 2) } else { prefix },
                clean: clean || tame,
                tame,
                start,
                end,
                gateway,
            }
        })
}

impl RangeSpec {
    fn bits(&self) -> u32 {
        if self.v6 {
            128
        } else {
            32
        }
    }
    fn host_mask(&self) -> u128 {
        let host = self.bits() - u32::from(self.prefix);
        if host >= 128 {
            u128::MAX
        } else {
            (1u128 << host) - 1
        }
    }
    fn network(&self) -> u128 {
        self.base & !self.host_mask()
    }
    fn top(&self) -> u128 {
        self.network() | self.host_mask()
    }
    fn addr(&self, v: u128) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(v))
        } else {
            IpAddr::V4(Ipv4Addr::from(u32::try_from(v).unwrap_or(u32::MAX)))
        }
    }
    fn max(&self) -> u128 {
        if self.v6 {
            u128::MAX
        } else {
            u128::from(u32::MAX)
        }
    }
    /// The address a pick names.
    fn resolve(&self, p: Pick) -> Option<IpAddr> {
        if self.tame {
            // Network + 1 ..= last usable (broadcast - 1 for IPv4, the top for IPv6).
            let usable = self.host_mask() - u128::from(!self.v6);
            return match p {
                Pick::FromNetwork(n) => {
                    Some(self.addr(self.network() + 1 + u128::from(n) % usable))
                }
                _ => None,
            };
        }
        let v = match p {
            Pick::Absent => return None,
            Pick::FromNetwork(n) => self.network().saturating_add(u128::from(n) % 300),
            Pick::FromTop(n) => self.top().saturating_add(1).saturating_sub(u128::from(n)),
            Pick::Anywhere(v) => v,
            Pick::OtherFamily(v) => {
                return Some(if self.v6 {
                    IpAddr::V4(Ipv4Addr::from(v))
                } else {
                    IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | u128::from(v)))
                })
            }
        };
        Some(self.addr(v.min(self.max())))
    }
    fn json(&self) -> Value {
        let net = if self.clean {
            self.network()
        } else {
            self.base
        };
        let mut o = json!({"subnet": format!("{}/{}", self.addr(net), self.prefix)});
        for (k, p) in [
            ("rangeStart", self.start),
            ("rangeEnd", self.end),
            ("gateway", self.gateway),
        ] {
            if let Some(ip) = self.resolve(p) {
                o[k] = json!(ip.to_string());
            }
        }
        o
    }

    /// The oracle: host-local's rules with plain integers. `Some((start, end, gateway))`
    /// if the range is valid.
    fn expect(&self) -> Option<(u128, u128, u128)> {
        let (net, top) = (self.network(), self.top());
        if self.bits() - u32::from(self.prefix) < 2 {
            return None;
        }
        if !self.clean && self.base != net {
            return None;
        }
        if self.v6 && (net >> 32) == 0xffff {
            return None; // IPv4-mapped prefix
        }
        let usable = |p: Pick| -> Result<Option<u128>, ()> {
            let Some(ip) = self.resolve(p) else {
                return Ok(None);
            };
            let v = match ip.to_canonical() {
                IpAddr::V4(a) if !self.v6 => u128::from(u32::from(a)),
                IpAddr::V6(a) if self.v6 => u128::from(a),
                _ => return Err(()),
            };
            let ok = v >= net && v <= top && v != net && (self.v6 || v != top);
            if ok {
                Ok(Some(v))
            } else {
                Err(())
            }
        };
        let start = usable(self.start).ok()?.unwrap_or(net + 1);
        let end = usable(self.end)
            .ok()?
            .unwrap_or(if self.v6 { top } else { top - 1 });
        let gateway = usable(self.gateway).ok()?.unwrap_or(net + 1);
        (start <= end).then_some((start, end, gateway))
    }
}

fn num(ip: IpAddr) -> u128 {
    ipam::to_u128(ip)
}

/// The oracle for a whole config: all ranges valid, one family per set, no overlap within a
/// set nor between sets.
fn expect_sets(specs: &[Vec<RangeSpec>]) -> Option<Vec<Vec<(u128, u128, u128)>>> {
    let mut out = Vec::new();
    let mut all: Vec<(usize, bool, u128, u128)> = Vec::new();
    for (si, set) in specs.iter().enumerate() {
        let mut rs = Vec::new();
        for r in set {
            rs.push(r.expect()?);
        }
        if set.iter().any(|r| r.v6 != set[0].v6) {
            return None;
        }
        for (r, (s, e, _)) in set.iter().zip(&rs) {
            all.push((si, r.v6, *s, *e));
        }
        out.push(rs);
    }
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            if a.1 == b.1 && a.2 <= b.3 && b.2 <= a.3 {
                return None;
            }
        }
    }
    Some(out)
}

fn specs() -> impl Strategy<Value = (Vec<Vec<RangeSpec>>, bool)> {
    let set = prop_oneof![3 => prop::collection::vec(range_spec(), 1..=1), 1 => prop::collection::vec(range_spec(), 2..=3)];
    let sets = prop_oneof![3 => prop::collection::vec(set.clone(), 1..=1), 1 => prop::collection::vec(set, 2..=2)];
    (sets, any::<bool>())
}

/// Allocates until exhaustion (or `cap` allocations) and checks every answer.
fn allocate_all(sets: &[Vec<Range>], cap: usize) -> Result<usize, TestCaseError> {
    let gateways: BTreeSet<IpAddr> = sets.iter().flatten().map(Range::gateway).collect();
    let store = MemStore::default();
    let mut seen = BTreeSet::new();
    for n in 0..cap {
        // A statement of its own: the store's guard must be dropped before the next lock.
        let res = ipam::allocate(&mut store.lock(), sets, &format!("c{n}"), "eth0");
        match res {
            Ok(allocs) => {
                prop_assert_eq!(allocs.len(), sets.len());
                for (a, set) in allocs.iter().zip(sets) {
                    prop_assert!(set.contains(&a.range), "{} from a foreign range", a.ip);
                    let r = &a.range;
                    prop_assert!(r.contains(a.ip), "{} outside {}", a.ip, r);
                    prop_assert!(
                        r.subnet().contains(&a.ip),
                        "{} outside {}",
                        a.ip,
                        r.subnet()
                    );
                    prop_assert!(a.ip != r.subnet().network());
                    prop_assert!(!(a.ip.is_ipv4() && a.ip == r.subnet().broadcast()));
                    prop_assert!(!gateways.contains(&a.ip), "gateway {} allocated", a.ip);
                    prop_assert!(seen.insert(a.ip), "{} allocated twice", a.ip);
                }
            }
            Err(e) => {
                prop_assert!(matches!(e, IpamError::Exhausted(_)), "{e}");
                let e = CniError::from(e);
                prop_assert_eq!(e.code, 999);
                prop_assert!(e
                    .msg
                    .starts_with("no IP addresses available in range set: "));
                // Rolled back: only whole allocations stay.
                prop_assert_eq!(store.lock().leases().unwrap().len(), n * sets.len());
                return Ok(n);
            }
        }
    }
    Ok(cap)
}

proptest! {
    #![proptest_config(config(1500))]

    #[test]
    fn random_ranges_are_refused_or_allocate_inside((specs, single) in specs()) {
        let single = single && specs.len() == 1 && specs[0].len() == 1;
        let ipam = if single {
            let mut o = specs[0][0].json();
            o["type"] = json!("host-local");
            o
        } else {
            let ranges: Vec<Vec<Value>> =
                specs.iter().map(|s| s.iter().map(RangeSpec::json).collect()).collect();
            json!({"type": "host-local", "ranges": ranges})
        };
        let text = json!({"cniVersion": "1.1.0", "name": "n", "ipam": ipam}).to_string();
        let want = expect_sets(&specs);
        let conf = match NetConf::parse(text.as_bytes()) {
            Err(e) => {
                let e = CniError::from(e);
                prop_assert_eq!(e.code, 7, "{}", e);
                prop_assert!(want.is_none(), "refused a valid config {text}: {e}");
                return Ok(());
            }
            Ok(c) => c,
        };
        let Some(want) = want else {
            return Err(TestCaseError::fail(format!("accepted an invalid config {text}")));
        };
        let sets = conf.ipam().unwrap().range_sets().unwrap();
        let got: Vec<Vec<(u128, u128, u128)>> = sets
            .iter()
            .map(|s| s.iter().map(|r| (num(r.start()), num(r.end()), num(r.gateway()))).collect())
            .collect();
        prop_assert_eq!(&got, &want, "{}", text);

        // Capacity of each set: its addresses minus the gateways inside its ranges.
        let gateways: BTreeSet<IpAddr> = sets.iter().flatten().map(Range::gateway).collect();
        let capacity: Vec<u128> = sets
            .iter()
            .map(|s| {
                let size = s.iter().fold(0u128, |n, r| n.saturating_add(r.size()));
                let gws = gateways.iter().filter(|g| s.iter().any(|r| r.contains(**g))).count();
                size - gws as u128
            })
            .collect();
        let fits = capacity.iter().min().copied().unwrap_or(0);
        if fits <= 600 {
            let n = allocate_all(&sets, 601)?;
            prop_assert_eq!(n as u128, fits, "exhausted after {} of {}: {}", n, fits, text);
        } else {
            allocate_all(&sets, 48)?;
        }
    }
}

/// The review's case and its neighbours, outside proptest so they always run.
#[test]
fn inverted_and_edge_ranges_fixed_cases() {
    for (ipam, ok) in [
        (
            json!({"subnet": "10.80.0.0/24", "rangeStart": "10.80.0.200", "rangeEnd": "10.80.0.100"}),
            false,
        ),
        (
            json!({"subnet": "10.80.0.0/24", "rangeStart": "10.80.0.100", "rangeEnd": "10.80.0.100"}),
            true,
        ),
        (json!({"subnet": "255.255.255.255/32"}), false),
        (json!({"subnet": "255.255.255.254/31"}), false),
        (json!({"subnet": "255.255.255.252/30"}), true),
        (
            json!({"subnet": "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"}),
            false,
        ),
        (
            json!({"subnet": "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127"}),
            false,
        ),
        (
            json!({"subnet": "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126"}),
            true,
        ),
    ] {
        let mut ipam = ipam;
        ipam["type"] = json!("host-local");
        let text = json!({"cniVersion": "1.1.0", "name": "n", "ipam": ipam}).to_string();
        match NetConf::parse(text.as_bytes()) {
            Ok(c) => {
                assert!(ok, "{text}");
                let sets = c.ipam().unwrap().range_sets().unwrap();
                let n = allocate_all(&sets, 300).unwrap();
                assert!(n >= 1, "{text}");
            }
            Err(e) => {
                assert!(!ok, "{text}: {e}");
                assert_eq!(CniError::from(e).code, 7, "{text}");
            }
        }
    }
}
