//! The iptables commands the mode runs, and running them.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::chains::BASE_JUMPS;
use crate::error::Error;

/// Paths of the iptables tools (tests point them at fake scripts or at wrappers that enter a
/// test network namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commands {
    /// `iptables-restore`.
    pub restore: PathBuf,
    /// `iptables-save`.
    pub save: PathBuf,
    /// `iptables`.
    pub iptables: PathBuf,
}

impl Default for Commands {
    fn default() -> Self {
        Self {
            restore: "iptables-restore".into(),
            save: "iptables-save".into(),
            iptables: "iptables".into(),
        }
    }
}

/// Runs `program args…` with `input` on stdin; returns stdout, or an error naming the command.
pub(crate) fn run(program: &Path, args: &[&str], input: Option<&str>) -> Result<String, Error> {
    let what = std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let spawn_err = |source| Error::Spawn {
        command: what.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(Error::Command {
            command: what,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Commands {
    /// `iptables-restore -w --noflush` with `text`.
    pub(crate) fn restore(&self, text: &str) -> Result<(), Error> {
        run(&self.restore, &["-w", "--noflush"], Some(text)).map(drop)
    }

    /// `iptables-save` of the filter and nat tables, concatenated.
    pub(crate) fn save(&self) -> Result<String, Error> {
        let mut out = run(&self.save, &["-t", "filter"], None)?;
        out.push_str(&run(&self.save, &["-t", "nat"], None)?);
        Ok(out)
    }

    /// Inserts each missing [`BASE_JUMPS`] entry at the top of its built-in chain (in reverse,
    /// so the list's order holds within a chain when all are missing).
    pub(crate) fn ensure_jumps(&self) -> Result<(), Error> {
        for j in BASE_JUMPS.iter().rev() {
            let mut check = vec!["-w", "-t", j.table, "-C", j.chain];
            check.extend_from_slice(j.rule);
            if run(&self.iptables, &check, None).is_ok() {
                continue;
            }
            let mut insert = vec!["-w", "-t", j.table, "-I", j.chain, "1"];
            insert.extend_from_slice(j.rule);
            run(&self.iptables, &insert, None)?;
        }
        Ok(())
    }
}
