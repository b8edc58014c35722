//! nft script text, written the same way by every table Sluice programs: this mode's `sluice`
//! table ([`mod@crate::render`]) and the ipvs mode's companion `sluice-ipvs` table.
//!
//! Pure: words of a family, object commands (`add rule ip sluice services …`), element blocks,
//! base-chain hooks, and the chains that several tables hold alike (NAT hooks, masquerading,
//! reject). Each table keeps its own layout and declaration syntax; only what they write
//! identically lives here.

use std::fmt::{self, Display, Write as _};

use sluice_proxy::model::{IpFamily, Protocol};

/// The table family and payload protocol keyword: `ip` / `ip6`.
pub fn family(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

/// The address data type: `ipv4_addr` / `ipv6_addr`.
pub fn addr_type(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "ipv4_addr",
        IpFamily::V6 => "ipv6_addr",
    }
}

/// The protocol keyword: `tcp` / `udp` / `sctp`.
pub fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// One named table of one family, the subject of object commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    /// Its family (`ip` / `ip6`).
    pub family: IpFamily,
    /// Its name.
    pub name: &'static str,
}

impl Table {
    /// `<what> <family> <table> <name>`, e.g. `add rule ip sluice services` (a command's prefix).
    pub fn obj(&self, what: &str, name: &str) -> String {
        format!("{what} {} {} {name}", family(self.family), self.name)
    }

    /// `<verb> element <family> <table> <set> {` then one item a line, comma-separated, then
    /// `}`; nothing when `items` is empty.
    pub fn write_elements<T: Display>(&self, out: &mut String, verb: &str, set: &str, items: &[T]) {
        if items.is_empty() {
            return;
        }
        let _ = writeln!(out, "{} {{", self.obj(&format!("{verb} element"), set));
        for (i, it) in items.iter().enumerate() {
            let sep = if i + 1 < items.len() { "," } else { "" };
            let _ = writeln!(out, "\t{it}{sep}");
        }
        out.push_str("}\n");
    }

    /// `add rule` of every rule of `chains`, chain by chain.
    pub fn write_rules(&self, out: &mut String, chains: &[Chain]) {
        for c in chains {
            for r in &c.rules {
                let _ = writeln!(out, "{} {r}", self.obj("add rule", c.name));
            }
        }
    }
}

/// A set or map element as nft writes it: `key`, or `key : value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element<K, V>(pub K, pub Option<V>);

impl<K: Display, V: Display> Display for Element<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.1 {
            Some(v) => write!(f, "{} : {v}", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// A base chain's hook: `type <kind> hook <hook> priority <priority>` (its policy is always
/// `accept`, written with it by the declaring table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    /// `nat` / `filter`.
    pub kind: &'static str,
    /// `prerouting`, `input`, …
    pub hook: &'static str,
    /// Its priority.
    pub priority: i32,
}

impl Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {} hook {} priority {}",
            self.kind, self.hook, self.priority
        )
    }
}

/// One fixed chain of a table: its name, its hook when it is a base chain, its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Its name.
    pub name: &'static str,
    /// Its hook, for a base chain.
    pub hook: Option<Hook>,
    /// Its rules, in order.
    pub rules: Vec<String>,
}

impl Chain {
    /// A regular chain.
    pub fn regular(name: &'static str, rules: Vec<String>) -> Self {
        Self {
            name,
            hook: None,
            rules,
        }
    }

    /// A base chain of `kind` at `hook` with `priority`.
    pub fn base(
        name: &'static str,
        kind: &'static str,
        hook: &'static str,
        priority: i32,
        rules: Vec<String>,
    ) -> Self {
        Self {
            name,
            hook: Some(Hook {
                kind,
                hook,
                priority,
            }),
            rules,
        }
    }
}

/// The NAT base chains: `nat-prerouting` and `nat-output` (priority -100, DNAT) jump to
/// `services`, `nat-postrouting` (priority 100) jumps to `masquerading`.
pub fn nat_chains() -> [Chain; 3] {
    [
        Chain::base(
            "nat-prerouting",
            "nat",
            "prerouting",
            -100,
            vec!["jump services".into()],
        ),
        Chain::base(
            "nat-output",
            "nat",
            "output",
            -100,
            vec!["jump services".into()],
        ),
        Chain::base(
            "nat-postrouting",
            "nat",
            "postrouting",
            100,
            vec!["jump masquerading".into()],
        ),
    ]
}

/// A filter base chain at `hook` that sends new connections to `endpoints-check` (only new
/// ones: every other packet costs one conntrack-state match).
pub fn endpoints_check_hook(name: &'static str, hook: &'static str, priority: i32) -> Chain {
    Chain::base(
        name,
        "filter",
        hook,
        priority,
        vec!["ct state new jump endpoints-check".into()],
    )
}

/// `reject-chain`: rejects (ICMP port unreachable; TCP reset).
pub fn reject_chain() -> Chain {
    Chain::regular("reject-chain", vec!["reject".into()])
}

/// `mark-for-masquerade` (sets the `mark` bit) and `masquerading`: masquerades hairpin
/// connections — `hairpin_match` (what precedes the address match, e.g. `ct status dnat `)
/// then `<ip> saddr . <ip> daddr @<hairpin_set>` — and marked ones, clearing the bit.
pub fn masquerade_chains(
    f: IpFamily,
    mark: u32,
    hairpin_match: &str,
    hairpin_set: &str,
) -> [Chain; 2] {
    let ip = family(f);
    let mark = format!("{mark:#x}");
    [
        Chain::regular(
            "mark-for-masquerade",
            vec![format!("meta mark set meta mark or {mark}")],
        ),
        Chain::regular(
            "masquerading",
            vec![
                format!(
                    "{hairpin_match}{ip} saddr . {ip} daddr @{hairpin_set} masquerade fully-random"
                ),
                format!("meta mark and {mark} == 0 return"),
                format!("meta mark set meta mark xor {mark}"),
                "masquerade fully-random".into(),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_blocks_and_commands() {
        let t = Table {
            family: IpFamily::V6,
            name: "t",
        };
        assert_eq!(t.obj("add rule", "c"), "add rule ip6 t c");
        let mut out = String::new();
        t.write_elements::<Element<&str, &str>>(&mut out, "add", "s", &[]);
        assert_eq!(out, "");
        t.write_elements(
            &mut out,
            "add",
            "m",
            &[Element("a", Some("drop")), Element("b", None)],
        );
        assert_eq!(out, "add element ip6 t m {\n\ta : drop,\n\tb\n}\n");
        assert_eq!(
            Hook {
                kind: "nat",
                hook: "output",
                priority: -100
            }
            .to_string(),
            "type nat hook output priority -100"
        );
    }
}
