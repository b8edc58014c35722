//! The crate's one error type.

use std::{io, path::PathBuf};

/// Errors of loading, attaching, detaching and map access, each with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem or plain syscall step failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (names the path or object).
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// aya could not parse or load a BPF object (this includes map creation and verifier
    /// rejections of the object as a whole).
    #[error("loading BPF object {object}: {source}")]
    Load {
        /// Object file name (`sock.o`, `nodeport.o`).
        object: &'static str,
        /// aya's error.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// A program failed to load (verifier log included in `source`) or attach.
    #[error("BPF program {program}: {action}: {source}")]
    Program {
        /// C function name of the program.
        program: &'static str,
        /// `load`, `attach to <target>`, ...
        action: String,
        /// aya's error; a verifier rejection carries the verifier log.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A pinned map could not be opened or accessed.
    #[error("map {map}: {action}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// What was being done.
        action: String,
        /// aya's error.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// A pinned map exists but with another layout than this build expects.
    #[error(
        "pinned map {path} has type {found_type}, key size {found_key}, value size {found_value}; \
         this build expects type {want_type}, key {want_key}, value {want_value} \
         (remove it with detach_all, or bump the layout version)"
    )]
    MapLayout {
        /// Pin path.
        path: PathBuf,
        /// Map type found.
        found_type: String,
        /// Key size found.
        found_key: u32,
        /// Value size found.
        found_value: u32,
        /// Expected map type.
        want_type: String,
        /// Expected key size.
        want_key: u32,
        /// Expected value size.
        want_value: u32,
    },
    /// This kernel or machine cannot do what was asked.
    #[error("{0}")]
    Unsupported(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
    pub(crate) fn map(
        map: &'static str,
        action: impl Into<String>,
        e: aya::maps::MapError,
    ) -> Self {
        Self::Map {
            map,
            action: action.into(),
            source: Box::new(e),
        }
    }
    pub(crate) fn program(
        program: &'static str,
        action: impl Into<String>,
        e: aya::programs::ProgramError,
    ) -> Self {
        Self::Program {
            program,
            action: action.into(),
            source: Box::new(e),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
