//! The crate's one error type.

use std::io;

use sluice_proxy::model::Protocol;

/// Errors of the userspace proxy mode.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An iptables tool could not be run, or failed.
    #[error(transparent)]
    Run(#[from] sluice_iptables_tools::RunError),
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
