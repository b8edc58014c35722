//! The crate's one error type.

use std::io;
use std::path::PathBuf;

use sluice_iptables_tools::RunError;

/// Errors of talking to the kernel (IPVS, rtnetlink, sysctls) and of running `nft`, each with
/// what was being done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The generic netlink family `IPVS` does not exist: no IPVS in this kernel (or the
    /// module is not loaded).
    #[error(
        "the kernel has no IPVS (generic netlink family IPVS not found; load ip_vs or build \
         CONFIG_IP_VS)"
    )]
    NoIpvs,
    /// A socket or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel answered a request with an error.
    #[error("{op}: {}", describe_errno(*.errno))]
    Kernel {
        /// The request (`add service TCP 10.96.0.10:80`, …).
        op: String,
        /// The errno (positive).
        errno: i32,
    },
    /// A reply did not parse.
    #[error("{context}: malformed netlink reply: {message}")]
    Decode {
        /// What was being read.
        context: String,
        /// The decoder's complaint.
        message: String,
    },
    /// `nft` failed.
    #[error("{context}: {source}")]
    Nft {
        /// What was being done.
        context: String,
        /// The run error (with nft's stderr).
        #[source]
        source: RunError,
    },
    /// A sysctl could not be written.
    #[error("setting {}: {source}", .path.display())]
    Sysctl {
        /// `/proc/sys/…` path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// An [`Error::Io`].
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The kernel's errno, for [`Error::Kernel`].
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// What an errno means for an IPVS or rtnetlink request, in words.
pub fn describe_errno(errno: i32) -> String {
    let what = match errno {
        libc::EEXIST => "already exists",
        libc::ESRCH => "no such virtual server",
        // IPVS says ENOENT both for a missing destination (set, delete) and for a missing
        // scheduler or persistence engine (add or update a virtual server).
        libc::ENOENT => {
            "not found (no such destination; for a virtual server being added or updated: no \
             such scheduler, its ip_vs_<name> module is missing)"
        }
        libc::EPERM => "operation not permitted (needs CAP_NET_ADMIN in the network namespace)",
        libc::EINVAL => "invalid argument (the kernel rejected an attribute)",
        libc::EAFNOSUPPORT => "address family not supported (no IPv6 in IPVS?)",
        libc::EOPNOTSUPP => "not supported by this kernel",
        libc::EADDRNOTAVAIL => "no such address",
        libc::ENODEV => "no such device",
        _ => return io::Error::from_raw_os_error(errno).to_string(),
    };
    format!("{what} (errno {errno})")
}

/// This crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_and_why() {
        assert_eq!(
            Error::NoIpvs.to_string(),
            "the kernel has no IPVS (generic netlink family IPVS not found; load ip_vs or build \
             CONFIG_IP_VS)"
        );
        let e = Error::Kernel {
            op: "add service TCP 10.96.0.10:80 bogus".into(),
            errno: libc::ENOENT,
        };
        assert!(e.to_string().starts_with(
            "add service TCP 10.96.0.10:80 bogus: not found (no such destination; for a virtual \
             server being added or updated: no such scheduler"
        ));
        // The same errno for a missing destination must not read as a scheduler problem only.
        let e = Error::Kernel {
            op: "deleting destination 10.244.1.2:8080 of IPVS service TCP 10.96.0.10:80".into(),
            errno: libc::ENOENT,
        };
        assert!(
            e.to_string().starts_with(
                "deleting destination 10.244.1.2:8080 of IPVS service TCP 10.96.0.10:80: not \
                 found (no such destination;"
            ),
            "{e}"
        );
        assert_eq!(e.errno(), Some(libc::ENOENT));
        let e = Error::Kernel {
            op: "x".into(),
            errno: libc::EEXIST,
        };
        assert_eq!(e.to_string(), "x: already exists (errno 17)");
        assert_eq!(
            describe_errno(libc::EBUSY),
            io::Error::from_raw_os_error(libc::EBUSY).to_string()
        );
    }
}
