//! The `nft` binary for one of Sluice's tables: `nft -f -` transactions, listing and deleting
//! the table in both families. Used by this mode (`sluice`) and by the ipvs mode's companion
//! table (`sluice-ipvs`).

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use sluice_iptables_tools::{run, RunError, NO_INPUT};
use sluice_proxy::model::IpFamily;

use crate::text::family;

/// `nft`, for the table named `table` (in the `ip` and `ip6` families).
#[derive(Debug, Clone)]
pub struct Nft {
    /// The binary (`nft`, found on `PATH`, by default).
    pub binary: PathBuf,
    /// The table's name.
    pub table: &'static str,
}

impl Nft {
    /// The `nft` on `PATH`, for `table`.
    pub fn new(table: &'static str) -> Self {
        Self {
            binary: "nft".into(),
            table,
        }
    }

    /// Whether `nft` runs.
    pub fn available(&self) -> bool {
        Command::new(&self.binary)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// `nft -f -` with `script` on stdin (one transaction); a failure carries nft's message.
    pub fn run_script(&self, script: &str) -> Result<(), RunError> {
        run(
            Command::new(&self.binary).args(["-f", "-"]),
            Some(|w: &mut dyn Write| w.write_all(script.as_bytes())),
        )
        .map(drop)
    }

    /// `nft args…`: its standard output.
    pub fn run(&self, args: &[&str]) -> Result<String, RunError> {
        run(Command::new(&self.binary).args(args), NO_INPUT)
    }

    /// Whether the table of `f` exists (`nft list tables`: names only; listing the table
    /// itself would load every element first, seconds at 10,000 services).
    pub fn has_table(&self, f: IpFamily) -> bool {
        let want = format!("table {} {}", family(f), self.table);
        self.run(&["list", "tables"])
            .is_ok_and(|out| out.lines().any(|l| l.trim() == want))
    }

    /// `nft list table <family> <table>`, or `None` when there is no such table.
    pub fn dump(&self, f: IpFamily) -> Option<String> {
        self.run(&["list", "table", family(f), self.table]).ok()
    }

    /// Deletes the table in both families (whatever exists); returns how many.
    pub fn delete_tables(&self) -> Result<usize, RunError> {
        let mut n = 0;
        for f in [IpFamily::V4, IpFamily::V6] {
            if self.has_table(f) {
                self.run(&["delete", "table", family(f), self.table])?;
                n += 1;
            }
        }
        Ok(n)
    }
}
