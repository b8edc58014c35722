//! IPVS schedulers: the node default (`--ipvs-scheduler`) and the per-Service choice (the
//! [`ANNOTATION`] annotation).

use std::fmt;
use std::str::FromStr;

/// The Service annotation choosing that Service's IPVS scheduler, e.g.
/// `ipvs.sluice.dev/scheduler: mh` (the proxy core reads it into `ServicePort::scheduler`).
/// Absent, or naming no scheduler in [`KNOWN`]: the node's `--ipvs-scheduler`.
pub use sluice_proxy::model::ANNOTATION_SCHEDULER as ANNOTATION;

/// Schedulers the kernel ships (`ip_vs_<name>` modules; the kernel loads one on first use):
/// round robin, weighted round robin, least connection, weighted least connection,
/// locality-based least connection (with replication), destination hashing, source hashing,
/// shortest expected delay, never queue, weighted failover, weighted overflow, Maglev
/// hashing, power of two choices.
pub const KNOWN: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos",
];

/// A validated scheduler name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scheduler(String);

impl Scheduler {
    /// Round robin, the default (kube-proxy's too).
    pub fn rr() -> Self {
        Scheduler("rr".into())
    }

    /// `name` if it is one of [`KNOWN`].
    pub fn parse(name: &str) -> Result<Self, String> {
        let n = name.trim();
        if KNOWN.contains(&n) {
            Ok(Scheduler(n.to_string()))
        } else {
            Err(format!(
                "unknown IPVS scheduler {name:?} (one of {})",
                KNOWN.join(", ")
            ))
        }
    }

    /// The name the kernel knows it by.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::rr()
    }
}

impl FromStr for Scheduler {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_names_only() {
        for name in ["rr", "lc", "sh", "mh", " wlc "] {
            assert_eq!(Scheduler::parse(name).unwrap().as_str(), name.trim());
        }
        let e = Scheduler::parse("bogus").unwrap_err();
        assert!(
            e.starts_with("unknown IPVS scheduler \"bogus\" (one of rr, wrr"),
            "{e}"
        );
        assert_eq!(Scheduler::default().to_string(), "rr");
        // The kernel's limit is 15 characters.
        assert!(KNOWN
            .iter()
            .all(|n| n.len() < crate::netlink::IP_VS_SCHEDNAME_MAXLEN));
    }
}
