//! Names of the chains the userspace mode owns and the jumps into them from the built-in chains.
//!
//! Every chain starts with [`PREFIX`] (`SLUICEUS-`), deliberately *not* `SLUICE-`: the node agent
//! deletes every `SLUICE-` chain when it runs in a mode other than iptables, and the iptables
//! mode must not see ours as its own either.

/// Prefix of every chain the userspace mode owns.
pub const PREFIX: &str = "SLUICEUS-";

/// nat, jumped to from `PREROUTING`: traffic arriving at a Service address (ClusterIP,
/// externalIP, LB IP) is `REDIRECT`ed to the service port's listener.
pub const PORTALS_CONTAINER: &str = "SLUICEUS-PORTALS-CONTAINER";
/// nat, jumped to from `OUTPUT`: host-originated traffic to a Service address is `DNAT`ed to
/// `node IP:listener port`.
pub const PORTALS_HOST: &str = "SLUICEUS-PORTALS-HOST";
/// nat, jumped to from `PREROUTING` after the portals: NodePorts on local addresses.
pub const NODEPORT_CONTAINER: &str = "SLUICEUS-NODEPORT-CONTAINER";
/// nat, jumped to from `OUTPUT` after the portals: host-originated NodePort traffic.
pub const NODEPORT_HOST: &str = "SLUICEUS-NODEPORT-HOST";
/// filter, jumped to from `INPUT`, `FORWARD` and `OUTPUT` for new connections: `REJECT` for
/// service ports without usable endpoints, `DROP` for Local traffic policies without local
/// endpoints.
pub const REJECT: &str = "SLUICEUS-REJECT";

/// Chains of the `filter` table, in render order.
pub const FILTER_CHAINS: [&str; 1] = [REJECT];
/// Chains of the `nat` table, in render order.
pub const NAT_CHAINS: [&str; 4] = [
    PORTALS_CONTAINER,
    PORTALS_HOST,
    NODEPORT_CONTAINER,
    NODEPORT_HOST,
];

/// Whether `chain` is owned by the userspace mode.
pub fn is_own_chain(chain: &str) -> bool {
    chain.starts_with(PREFIX)
}

/// A jump from a built-in chain into one of ours, installed outside the restore transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseJump {
    /// Table.
    pub table: &'static str,
    /// Built-in chain.
    pub chain: &'static str,
    /// Rule specification (without `-A chain`), one argument per word.
    pub rule: &'static [&'static str],
}

macro_rules! jump {
    ($table:expr, $chain:expr, $comment:expr, $target:expr) => {
        BaseJump {
            table: $table,
            chain: $chain,
            rule: &["-m", "comment", "--comment", $comment, "-j", $target],
        }
    };
    (new $table:expr, $chain:expr, $comment:expr, $target:expr) => {
        BaseJump {
            table: $table,
            chain: $chain,
            rule: &[
                "-m",
                "conntrack",
                "--ctstate",
                "NEW",
                "-m",
                "comment",
                "--comment",
                $comment,
                "-j",
                $target,
            ],
        }
    };
}

/// The jumps into our chains, in the order they should appear within each built-in chain (the
/// portals before the NodePorts, so a Service address wins over a NodePort on the same port).
pub const BASE_JUMPS: &[BaseJump] = &[
    jump!(
        "nat",
        "PREROUTING",
        "sluice userspace portals",
        PORTALS_CONTAINER
    ),
    jump!(
        "nat",
        "PREROUTING",
        "sluice userspace nodeports",
        NODEPORT_CONTAINER
    ),
    jump!("nat", "OUTPUT", "sluice userspace portals", PORTALS_HOST),
    jump!("nat", "OUTPUT", "sluice userspace nodeports", NODEPORT_HOST),
    jump!(new "filter", "INPUT", "sluice userspace rejects", REJECT),
    jump!(new "filter", "FORWARD", "sluice userspace rejects", REJECT),
    jump!(new "filter", "OUTPUT", "sluice userspace rejects", REJECT),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_iptables_and_never_look_like_iptables_mode_chains() {
        for c in FILTER_CHAINS.iter().chain(NAT_CHAINS.iter()) {
            assert!(c.len() <= 28, "{c} too long for iptables");
            assert!(is_own_chain(c));
            // The agent deletes `SLUICE-*` chains in other modes: ours must not match.
            assert!(!c.starts_with("SLUICE-"), "{c}");
        }
        assert!(!is_own_chain("SLUICE-SERVICES"));
        for j in BASE_JUMPS {
            let target = j.rule.last().unwrap();
            assert!(is_own_chain(target), "{j:?}");
            assert_eq!(j.rule[j.rule.len() - 2], "-j");
        }
    }
}
