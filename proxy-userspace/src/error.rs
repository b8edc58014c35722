//! The crate's one error type.

use std::io;

use sluice_proxy::model::Protocol;

/// Errors of the userspace proxy mode.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command (`iptables-restore`, `iptables-save`, `iptables`) could not be run.
    #[error("running {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it could not be spawned, fed or waited for.
        #[source]
        source: io::Error,
    },
    /// A command ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A listener socket could not be bound.
    #[error("binding the {protocol} listener of {listener}: {source}")]
    Bind {
        /// `ns/svc:port set`.
        listener: String,
        /// Protocol.
        protocol: Protocol,
        /// The socket error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// As a [`sluice_proxy::proxier::Error::Sync`] of the `userspace` dataplane.
    pub fn into_sync(self, message: &str) -> sluice_proxy::proxier::Error {
        sluice_proxy::proxier::Error::Sync {
            dataplane: crate::NAME,
            message: format!("{message}: {self}"),
            source: Some(Box::new(self)),
        }
    }

    /// As a [`sluice_proxy::proxier::Error::Cleanup`] of the `userspace` dataplane.
    pub fn into_cleanup(self, message: &str) -> sluice_proxy::proxier::Error {
        sluice_proxy::proxier::Error::Cleanup {
            dataplane: crate::NAME,
            message: format!("{message}: {self}"),
            source: Some(Box::new(self)),
        }
    }
}
