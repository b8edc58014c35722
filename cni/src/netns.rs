//! Running code inside a network namespace: a fresh OS thread `setns()`s into it and the
//! closure runs there (never on a shared runtime worker), so the caller's thread stays put.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

/// Errors entering a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace path does not exist.
    #[error("netns {0} does not exist")]
    Missing(PathBuf),
    /// The namespace could not be opened.
    #[error("opening netns {path}: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `setns` failed.
    #[error("setns into {path}: {source}")]
    Setns {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The worker thread panicked.
    #[error("netns worker thread panicked")]
    Panicked,
}

/// Opens a namespace file, mapping a missing path to [`NetnsError::Missing`].
pub fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            NetnsError::Missing(path.to_path_buf())
        } else {
            NetnsError::Open {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Runs `f` on a new thread inside the namespace at `path`.
pub fn run_in<T: Send, F: FnOnce() -> T + Send>(path: &Path, f: F) -> Result<T, NetnsError> {
    let ns = open(path)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Setns {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(f())
        })
        .join()
        .map_err(|_| NetnsError::Panicked)?
    })
}

/// Whether `path` is the namespace this process is in (device and inode compare equal).
pub fn is_current(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(path),
        std::fs::metadata("/proc/self/ns/net"),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}
