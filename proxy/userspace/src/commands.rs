//! The iptables commands the mode runs (through `sluice-iptables-tools`, shared with the
//! iptables mode and the node masquerade).

use sluice_iptables_tools::Commands;

use crate::chains::BASE_JUMPS;
use crate::error::Error;

/// `iptables-restore -w --noflush` with `text`.
pub(crate) fn restore(commands: &Commands, text: &str) -> Result<(), Error> {
    Ok(commands.restore_noflush(text)?)
}

/// `iptables-save` of the filter and nat tables, concatenated.
pub(crate) fn save(commands: &Commands) -> Result<String, Error> {
    let mut out = commands.save_table("filter")?;
    out.push_str(&commands.save_table("nat")?);
    Ok(out)
}

/// Inserts each missing [`BASE_JUMPS`] entry at the top of its built-in chain (in reverse, so
/// the list's order holds within a chain when all are missing).
pub(crate) fn ensure_jumps(commands: &Commands) -> Result<(), Error> {
    for j in BASE_JUMPS.iter().rev() {
        let mut check = vec!["-w", "-t", j.table, "-C", j.chain];
        check.extend_from_slice(j.rule);
        if commands.iptables(&check).is_ok() {
            continue;
        }
        let mut insert = vec!["-w", "-t", j.table, "-I", j.chain, "1"];
        insert.extend_from_slice(j.rule);
        commands.iptables(&insert)?;
    }
    Ok(())
}
