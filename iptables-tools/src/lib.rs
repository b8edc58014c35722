//! The iptables tools, as every Sluice component that programs iptables runs them.
//!
//! [`Commands`] names the tools (`iptables-restore`, `iptables-save`, `iptables`, and
//! `conntrack` for flow cleanup) of one [`Backend`]; [`run`] runs one of them, streaming its
//! standard input from a writer callback while it runs (a full iptables sync at 10,000 services
//! is ~13 MB of restore input that is never held in memory as one text) and returning its
//! standard output, or a [`RunError`] naming the command and carrying its standard error.
//!
//! Data flow: proxy modes and the node masquerade render text → [`run`] → the tool's stdin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// An iptables backend: the same rules, programmed through nf_tables (`iptables-nft`) or through
/// the kernel's legacy x_tables (`iptables-legacy`). One node must not mix them: packets
/// traverse both, and each backend's tools see only their own rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-nft*`.
    Nft,
    /// `iptables-legacy*`. Its restores are fast in bulk (no per-rule chain scan) but rewrite
    /// the whole table on every transaction.
    Legacy,
}

impl Backend {
    /// The other backend.
    pub fn other(self) -> Backend {
        match self {
            Backend::Nft => Backend::Legacy,
            Backend::Legacy => Backend::Nft,
        }
    }

    /// `"nft"` / `"legacy"`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }
}

/// Paths of the tools (tests point them at fake scripts or at wrappers that enter a test
/// network namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commands {
    /// `iptables-restore`.
    pub restore: PathBuf,
    /// `iptables-save`.
    pub save: PathBuf,
    /// `iptables`.
    pub iptables: PathBuf,
    /// `conntrack` (conntrack-tools), for UDP flow cleanup.
    pub conntrack: PathBuf,
}

impl Default for Commands {
    /// Whatever `iptables*` the system's alternatives point at.
    fn default() -> Self {
        Self {
            restore: "iptables-restore".into(),
            save: "iptables-save".into(),
            iptables: "iptables".into(),
            conntrack: "conntrack".into(),
        }
    }
}

impl Commands {
    /// The tools of `backend` (`iptables-nft`, `iptables-nft-save`, … or the `-legacy` ones).
    pub fn for_backend(backend: Backend) -> Self {
        let b = backend.name();
        Self {
            restore: format!("iptables-{b}-restore").into(),
            save: format!("iptables-{b}-save").into(),
            iptables: format!("iptables-{b}").into(),
            ..Self::default()
        }
    }

    /// Whether `iptables` runs (`--version`).
    pub fn available(&self) -> bool {
        quiet_success(Command::new(&self.iptables).arg("--version"))
    }

    /// Whether `chain` exists in `table` (`iptables -t table -S chain`, output discarded; far
    /// cheaper than an `iptables-save` of a large table).
    pub fn has_chain(&self, table: &str, chain: &str) -> bool {
        quiet_success(Command::new(&self.iptables).args(["-w", "-t", table, "-S", chain]))
    }

    /// `iptables-restore -w --noflush` with `text`.
    pub fn restore_noflush(&self, text: &str) -> Result<(), RunError> {
        run(
            Command::new(&self.restore).args(["-w", "--noflush"]),
            Some(|w: &mut dyn Write| w.write_all(text.as_bytes())),
        )
        .map(drop)
    }

    /// Whether any of `chains` (table, chain) exists in this backend.
    pub fn holds_any(&self, chains: &[(&str, &str)]) -> bool {
        chains.iter().any(|(t, c)| self.has_chain(t, c))
    }

    /// `iptables-save -t table`.
    pub fn save_table(&self, table: &str) -> Result<String, RunError> {
        run(Command::new(&self.save).args(["-t", table]), NO_INPUT)
    }

    /// `iptables args…` (no input).
    pub fn iptables(&self, args: &[&str]) -> Result<String, RunError> {
        run(Command::new(&self.iptables).args(args), NO_INPUT)
    }
}

/// `--iptables-backend auto`: the backend whose tools see any of `markers` (the chains of
/// every Sluice component that writes iptables rules) in this network namespace; if both or
/// neither do, nft (the default of current distributions). This is kube-proxy's
/// iptables-wrapper idea, keyed on our own chains.
pub fn detect_backend(markers: &[(&str, &str)]) -> Backend {
    let holds = |b: Backend| {
        let c = Commands::for_backend(b);
        c.available() && c.holds_any(markers)
    };
    if !holds(Backend::Nft) && holds(Backend::Legacy) {
        Backend::Legacy
    } else {
        Backend::Nft
    }
}

fn quiet_success(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why running a tool failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// It could not be started or waited for.
    #[error("running {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Writing its input failed (usually: it exited early on bad input).
    #[error("writing to {command}: {source}: {stderr}")]
    Write {
        /// The command line.
        command: String,
        /// Its standard error, trimmed.
        stderr: String,
        /// The write error.
        #[source]
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
}

/// No input: [`run`] gives the tool `/dev/null` as stdin.
pub const NO_INPUT: Option<fn(&mut dyn Write) -> std::io::Result<()>> = None;

/// Runs `cmd`; `input` (if any) writes its stdin, buffered, while it runs. Returns its stdout
/// (lossily UTF-8).
pub fn run(
    cmd: &mut Command,
    input: Option<impl FnOnce(&mut dyn Write) -> std::io::Result<()>>,
) -> Result<String, RunError> {
    let command = describe(cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| RunError::Spawn {
        command: command.clone(),
        source,
    })?;
    if let (Some(input), Some(stdin)) = (input, child.stdin.take()) {
        let mut w = std::io::BufWriter::with_capacity(1 << 16, stdin);
        let written = input(&mut w).and_then(|()| w.flush());
        drop(w);
        if let Err(source) = written {
            // The tool may have exited early (bad input): its stderr says why.
            let stderr = child
                .wait_with_output()
                .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
                .unwrap_or_default();
            return Err(RunError::Write {
                command,
                stderr,
                source,
            });
        }
    }
    let out = child.wait_with_output().map_err(|source| RunError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(RunError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `program arg…` for messages.
fn describe(cmd: &Command) -> String {
    std::iter::once(Path::new(cmd.get_program()).display().to_string())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_with_streamed_input_and_reports_failures() {
        let out = run(
            Command::new("sh").args(["-c", "tr a-z A-Z"]),
            Some(|w: &mut dyn Write| {
                w.write_all(b"abc")?;
                w.write_all(b"def")
            }),
        )
        .unwrap();
        assert_eq!(out, "ABCDEF");
        assert_eq!(
            run(Command::new("echo").arg("hi"), NO_INPUT).unwrap(),
            "hi\n"
        );
        let err = run(
            Command::new("sh").args(["-c", "echo nope >&2; exit 3"]),
            NO_INPUT,
        )
        .unwrap_err();
        assert!(
            matches!(&err, RunError::Failed { command, stderr, .. }
                if command == "sh -c echo nope >&2; exit 3" && stderr == "nope"),
            "{err}"
        );
        let err = run(&mut Command::new("/nonexistent/tool"), NO_INPUT).unwrap_err();
        assert!(matches!(err, RunError::Spawn { .. }), "{err}");
        // A tool that exits without reading: the write fails and its stderr is reported.
        let big = vec![b'x'; 1 << 20];
        let err = run(
            Command::new("sh").args(["-c", "echo bad input >&2; exit 1"]),
            Some(|w: &mut dyn Write| w.write_all(&big)),
        )
        .unwrap_err();
        assert!(
            matches!(&err, RunError::Write { stderr, .. } if stderr == "bad input")
                || matches!(&err, RunError::Failed { stderr, .. } if stderr == "bad input"),
            "{err}"
        );
    }

    #[test]
    fn backend_tools() {
        let c = Commands::for_backend(Backend::Legacy);
        assert_eq!(c.restore, PathBuf::from("iptables-legacy-restore"));
        assert_eq!(c.save, PathBuf::from("iptables-legacy-save"));
        assert_eq!(c.iptables, PathBuf::from("iptables-legacy"));
        assert_eq!(Backend::Nft.other(), Backend::Legacy);
        assert!(!Commands {
            iptables: "/nonexistent/iptables".into(),
            ..Commands::default()
        }
        .available());
    }
}
