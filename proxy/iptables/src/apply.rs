//! The thin apply side: pipe the render to `iptables-restore --noflush` and keep the jumps from
//! the built-in chains into the Sluice chains in place.

use std::collections::BTreeSet;
use std::io::{BufRead as _, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use sluice_proxy::conntrack::Conntrack;
use sluice_proxy::model::{EndpointsMap, ServicePortMap};
use sluice_proxy::proxier::{Changes, Dataplane, Error};
use tracing::debug;

use crate::chains;
use crate::render::{render_parts, restore_words, ExistingChains, RenderConfig, RenderState};

/// A jump from a built-in chain into a Sluice chain, installed outside the restore transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseJump {
    /// Table.
    pub table: &'static str,
    /// Built-in chain.
    pub chain: &'static str,
    /// Only for new connections (`-m conntrack --ctstate NEW`): filter jumps that reject or drop
    /// must not see replies of established flows.
    pub new_only: bool,
    /// The rule's comment (how an operator recognises it).
    pub comment: &'static str,
    /// The Sluice chain jumped to.
    pub target: &'static str,
}

impl BaseJump {
    /// Rule specification (without `-A chain`); the comment stays a single argument.
    pub fn rule(&self) -> Vec<&'static str> {
        let mut r = Vec::with_capacity(10);
        if self.new_only {
            r.extend(["-m", "conntrack", "--ctstate", "NEW"]);
        }
        r.extend([
            "-m",
            "comment",
            "--comment",
            self.comment,
            "-j",
            self.target,
        ]);
        r
    }
}

const fn jump(
    table: &'static str,
    chain: &'static str,
    new_only: bool,
    comment: &'static str,
    target: &'static str,
) -> BaseJump {
    BaseJump {
        table,
        chain,
        new_only,
        comment,
        target,
    }
}

const PORTALS: &str = "sluice service portals";
const FIREWALL: &str = "sluice load balancer firewall";
const EXTERNAL: &str = "sluice externally-visible service portals";

/// The jumps into Sluice chains, in the order they are inserted (each at position 1 of its
/// chain, so later entries end up first within a chain — see [`IptablesDataplane::ensure_jumps`]).
#[rustfmt::skip]
pub const BASE_JUMPS: &[BaseJump] = &[
    jump("nat", "PREROUTING", false, PORTALS, chains::SERVICES),
    jump("nat", "OUTPUT", false, PORTALS, chains::SERVICES),
    jump("nat", "POSTROUTING", false, "sluice postrouting rules", chains::POSTROUTING),
    jump("filter", "INPUT", true, FIREWALL, chains::FIREWALL),
    jump("filter", "INPUT", true, EXTERNAL, chains::EXTERNAL_SERVICES),
    jump("filter", "FORWARD", true, FIREWALL, chains::FIREWALL),
    jump("filter", "FORWARD", true, PORTALS, chains::SERVICES),
    jump("filter", "FORWARD", true, EXTERNAL, chains::EXTERNAL_SERVICES),
    jump("filter", "FORWARD", false, "sluice forwarding rules", chains::FORWARD),
    jump("filter", "OUTPUT", true, FIREWALL, chains::FIREWALL),
    jump("filter", "OUTPUT", true, PORTALS, chains::SERVICES),
];

/// The base jumps as restore text that appends them in order (also used to set up the `Fake` of the tests).
pub fn base_jumps_restore_text() -> String {
    let mut out = String::new();
    for table in ["filter", "nat"] {
        out.push_str(&format!("*{table}\n"));
        for j in BASE_JUMPS.iter().filter(|j| j.table == table) {
            out.push_str(&format!("-A {} {}\n", j.chain, restore_words(&j.rule())));
        }
        out.push_str("COMMIT\n");
    }
    out
}

use sluice_iptables_tools::RunError;
pub use sluice_iptables_tools::{Backend, Commands};

/// The iptables mode.
pub struct IptablesDataplane {
    config: RenderConfig,
    commands: Commands,
    /// State of the last successfully applied render: it describes the Sluice chains in the
    /// kernel, so later syncs (partial and full) need not read them back. `None` = unknown (first
    /// sync, or after a failure): the next sync reads the kernel with `iptables-save`.
    state: Option<RenderState>,
    conntrack: Conntrack,
}

impl IptablesDataplane {
    /// A dataplane rendering with `config` and running `commands`.
    pub fn new(config: RenderConfig, commands: Commands) -> Self {
        Self {
            config,
            conntrack: Conntrack::with_binary(&commands.conntrack),
            commands,
            state: None,
        }
    }

    /// The commands this dataplane runs.
    pub fn commands(&self) -> &Commands {
        &self.commands
    }

    /// Whether the dataplane knows the kernel's Sluice chains (a sync succeeded and none failed
    /// since); if not, the next sync reads them with `iptables-save`.
    pub fn knows_kernel_state(&self) -> bool {
        self.state.is_some()
    }

    fn sync_err(&self, message: String, source: Option<std::io::Error>) -> Error {
        Error::Sync {
            dataplane: "iptables",
            message,
            source: source.map(|e| e.into()),
        }
    }

    fn run(
        &self,
        cmd: &mut Command,
        input: Option<&str>,
    ) -> Result<String, (String, Option<std::io::Error>)> {
        self.run_with(
            cmd,
            input.map(|text| |w: &mut dyn Write| w.write_all(text.as_bytes())),
        )
    }

    /// Runs `cmd`; `input` (if any) writes its stdin while it runs.
    fn run_with(
        &self,
        cmd: &mut Command,
        input: Option<impl FnOnce(&mut dyn Write) -> std::io::Result<()>>,
    ) -> Result<String, (String, Option<std::io::Error>)> {
        sluice_iptables_tools::run(cmd, input).map_err(message_and_source)
    }

    /// Sluice chains present in the kernel, from `iptables-save` (streamed: only the Sluice
    /// chain declarations are kept, never the whole save text).
    pub fn read_chains(&self) -> Result<ExistingChains, Error> {
        let mut existing = ExistingChains::default();
        for (table, set) in [("filter", &mut existing.filter), ("nat", &mut existing.nat)] {
            read_save_chains(&self.commands.save, table, set)
                .map_err(|(m, e)| self.sync_err(m, e))?;
        }
        Ok(existing)
    }

    /// The [`BASE_JUMPS`] entries missing from the kernel (`iptables -C` each).
    pub fn missing_jumps(&self) -> Vec<&'static BaseJump> {
        BASE_JUMPS
            .iter()
            .filter(|j| {
                self.run(
                    Command::new(&self.commands.iptables)
                        .args(["-w", "-t", j.table, "-C", j.chain])
                        .args(j.rule()),
                    None,
                )
                .is_err()
            })
            .collect()
    }

    /// Inserts each missing [`BASE_JUMPS`] entry at the top of its built-in chain.
    pub fn ensure_jumps(&self) -> Result<(), Error> {
        for j in BASE_JUMPS.iter().rev() {
            let check = self.run(
                Command::new(&self.commands.iptables)
                    .args(["-w", "-t", j.table, "-C", j.chain])
                    .args(j.rule()),
                None,
            );
            if check.is_ok() {
                continue;
            }
            self.run(
                Command::new(&self.commands.iptables)
                    .args(["-w", "-t", j.table, "-I", j.chain, "1"])
                    .args(j.rule()),
                None,
            )
            .map_err(|(m, e)| self.sync_err(m, e))?;
        }
        Ok(())
    }
}

/// A [`RunError`] as the message and source of this crate's [`Error`]s.
fn message_and_source(e: RunError) -> (String, Option<std::io::Error>) {
    match e {
        RunError::Spawn { command, source } => (format!("running {command}"), Some(source)),
        RunError::Write {
            command,
            stderr,
            source,
        } => (format!("writing to {command}: {stderr}"), Some(source)),
        e @ RunError::Failed { .. } => (e.to_string(), None),
    }
}

/// Restore text inserting `jumps` at the top of their chains, in the order [`BASE_JUMPS`] lists
/// them relative to each other (as [`IptablesDataplane::ensure_jumps`] would).
pub fn insert_jumps_text(jumps: &[&BaseJump]) -> String {
    let mut out = String::new();
    for table in ["filter", "nat"] {
        let mine: Vec<&&BaseJump> = jumps.iter().filter(|j| j.table == table).collect();
        if mine.is_empty() {
            continue;
        }
        out.push_str(&format!("*{table}\n"));
        for j in mine.iter().rev() {
            out.push_str(&format!("-I {} 1 {}\n", j.chain, restore_words(&j.rule())));
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// `save -t table`, keeping the Sluice chain names declared in its output.
fn read_save_chains(
    save: &Path,
    table: &str,
    set: &mut BTreeSet<String>,
) -> Result<(), (String, Option<std::io::Error>)> {
    let what = format!("{} -t {table}", save.display());
    let mut child = Command::new(save)
        .args(["-t", table])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| (format!("spawning {what}"), Some(e)))?;
    let stdout = child.stdout.take().expect("piped");
    let mut reader = std::io::BufReader::with_capacity(1 << 16, stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {
                if let Some(c) = std::str::from_utf8(&line)
                    .ok()
                    .and_then(|l| l.strip_prefix(':'))
                    .and_then(|l| l.split_whitespace().next())
                    .filter(|c| chains::is_sluice_chain(c))
                {
                    set.insert(c.to_string());
                }
            }
            Err(e) => return Err((format!("reading {what}"), Some(e))),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| (format!("waiting for {what}"), Some(e)))?;
    if !out.status.success() {
        return Err((
            format!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            None,
        ));
    }
    Ok(())
}

/// One restore transaction removing every Sluice chain, and every rule of another chain that
/// jumps into one, from `iptables-save` output (any number of tables).
pub fn cleanup_text(saved: &str) -> String {
    let mut out = String::new();
    let mut table: Option<(String, Vec<String>, BTreeSet<String>)> = None;
    let flush = |out: &mut String, t: (String, Vec<String>, BTreeSet<String>)| {
        out.push_str(&format!("*{}\n", t.0));
        for d in &t.1 {
            out.push_str(d);
            out.push('\n');
        }
        for c in &t.2 {
            out.push_str(&format!(":{c} - [0:0]\n"));
        }
        for c in &t.2 {
            out.push_str(&format!("-X {c}\n"));
        }
        out.push_str("COMMIT\n");
    };
    for line in saved.lines() {
        if let Some(name) = line.strip_prefix('*') {
            if let Some(t) = table.take() {
                flush(&mut out, t);
            }
            table = Some((name.trim().to_string(), Vec::new(), BTreeSet::new()));
            continue;
        }
        let Some((_, deletes, owned)) = table.as_mut() else {
            continue;
        };
        if let Some(decl) = line.strip_prefix(':') {
            if let Some(c) = decl
                .split_whitespace()
                .next()
                .filter(|c| chains::is_sluice_chain(c))
            {
                owned.insert(c.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let Ok(ws) = crate::render::words(rest) else {
                continue;
            };
            let from_ours = ws.first().is_some_and(|c| chains::is_sluice_chain(c));
            let into_ours = ws
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && chains::is_sluice_chain(&w[1]));
            if into_ours && !from_ours {
                deletes.push(format!("-D {rest}"));
            }
        }
    }
    if let Some(t) = table.take() {
        flush(&mut out, t);
    }
    out
}

/// Sluice chain names declared in `iptables-save` output.
pub fn parse_save_chains(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| chains::is_sluice_chain(c))
        .map(str::to_string)
        .collect()
}

impl Dataplane for IptablesDataplane {
    fn sync(
        &mut self,
        services: &ServicePortMap,
        endpoints: &EndpointsMap,
        changes: &Changes,
    ) -> Result<(), Error> {
        // Forgotten until this sync succeeds: after a failure the kernel is read again.
        let prev = self.state.take();
        let existing = match &prev {
            Some(p) if changes.full => p.chains(),
            Some(_) => ExistingChains::default(), // incremental: the state is enough
            None => self.read_chains()?,
        };
        // Jumps are checked on full syncs, before the restore (while a fresh node's tables are
        // still small), and missing ones are inserted by the restore itself: one `iptables -I`
        // against a table of 60,000 chains costs a whole-table round trip with either backend.
        let missing = if changes.full {
            self.missing_jumps()
        } else {
            Vec::new()
        };
        let mut rendered =
            render_parts(services, endpoints, &self.config, changes, &existing, prev);
        drop(existing);
        if !missing.is_empty() {
            rendered.push_text(insert_jumps_text(&missing));
        }
        let mut bytes = 0;
        if !rendered.is_empty() {
            self.run_with(
                Command::new(&self.commands.restore).args(["-w", "--noflush"]),
                Some(|w: &mut dyn Write| {
                    bytes = rendered.write_to(w)?;
                    Ok(())
                }),
            )
            .map_err(|(m, e)| self.sync_err(m, e))?;
        }
        debug!(
            bytes,
            full = changes.full,
            incremental = rendered.incremental,
            "iptables-restore"
        );
        self.state = Some(rendered.state);
        // The render's text (tens of MB at 10,000 services) is freed now; glibc would keep
        // most of that heap.
        sluice_proxy::heap::trim_after(bytes);
        // Only now do the rules send new UDP flows to the right endpoints; flows pinned to the
        // old ones by conntrack must go.
        self.conntrack.clear(services, changes);
        Ok(())
    }

    fn cleanup(&mut self) -> Result<(), Error> {
        let cerr = |(message, source): (String, Option<std::io::Error>)| Error::Cleanup {
            dataplane: "iptables",
            message,
            source: source.map(|e| e.into()),
        };
        let mut saved = Vec::new();
        for table in ["filter", "nat"] {
            let text = self
                .run(Command::new(&self.commands.save).args(["-t", table]), None)
                .map_err(cerr)?;
            saved.push(text);
        }
        let text = cleanup_text(&saved.join("\n"));
        self.run(
            Command::new(&self.commands.restore).args(["-w", "--noflush"]),
            Some(&text),
        )
        .map_err(cerr)?;
        self.state = None;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "iptables"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::Path;
    use std::sync::Arc;

    use sluice_proxy::model::{Endpoint, NamespacedName, Protocol, ServicePort, ServicePortName};

    fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn dataplane(dir: &Path, restore_exit: u8) -> IptablesDataplane {
        let d = dir.display();
        let commands = Commands {
            restore: script(
                dir,
                "restore",
                &format!("cat >> {d}/restore.log\nexit {restore_exit}"),
            ),
            save: script(
                dir,
                "save",
                &format!("echo \"$@\" >> {d}/save.log\ncat {d}/saved 2>/dev/null; true"),
            ),
            iptables: script(
                dir,
                "iptables",
                &format!("echo \"$@\" >> {d}/iptables.log\ncase \"$*\" in *' -C '*) exit 1;; esac"),
            ),
            conntrack: script(
                dir,
                "conntrack",
                &format!("echo \"$@\" >> {d}/conntrack.log"),
            ),
        };
        IptablesDataplane::new(RenderConfig::new("node-a"), commands)
    }

    fn maps() -> (ServicePortMap, EndpointsMap) {
        let spn = ServicePortName::new("default", "web", "", Protocol::Tcp);
        let mut s = ServicePortMap::new();
        s.insert(
            spn.clone(),
            Arc::new(ServicePort::cluster_ip(
                "10.96.0.1".parse().unwrap(),
                80,
                Protocol::Tcp,
            )),
        );
        let mut e = EndpointsMap::new();
        e.insert(
            spn,
            vec![Arc::new(Endpoint::ready("10.244.1.1".parse().unwrap(), 80))],
        );
        (s, e)
    }

    fn read(dir: &Path, f: &str) -> String {
        std::fs::read_to_string(dir.join(f)).unwrap_or_default()
    }

    #[test]
    fn sync_pipes_the_render_and_installs_jumps_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut dp = dataplane(dir.path(), 0);
        let (s, e) = maps();
        dp.sync(
            &s,
            &e,
            &Changes {
                full: true,
                ..Changes::default()
            },
        )
        .unwrap();
        let restored = read(dir.path(), "restore.log");
        assert!(
            restored.starts_with("*filter\n") && restored.contains("-j DNAT"),
            "{restored}"
        );
        assert_eq!(
            read(dir.path(), "save.log").lines().count(),
            2,
            "existing chains read on full"
        );
        let ipt = read(dir.path(), "iptables.log");
        assert_eq!(
            ipt.lines().filter(|l| l.contains(" -C ")).count(),
            BASE_JUMPS.len(),
            "jumps checked before the restore"
        );
        assert_eq!(
            restored.lines().filter(|l| l.starts_with("-I ")).count(),
            BASE_JUMPS.len(),
            "missing jumps inserted by the restore"
        );
        assert!(restored.contains(
            "-I PREROUTING 1 -m comment --comment \"sluice service portals\" -j SLUICE-SERVICES"
        ));

        // Partial with nothing changed: no iptables-save, no jump checks, nothing restored.
        dp.sync(&s, &e, &Changes::default()).unwrap();
        assert_eq!(read(dir.path(), "save.log").lines().count(), 2);
        assert_eq!(read(dir.path(), "iptables.log"), ipt);
        // (one `*nat` of the render, one of the jump insertions)
        assert_eq!(read(dir.path(), "restore.log").matches("*nat").count(), 2);

        // Partial with web changed: only web's chains, no save.
        let mut c = Changes::default();
        c.services.insert(NamespacedName::new("default", "web"));
        let (s2, mut e2) = (s.clone(), e.clone());
        let spn = ServicePortName::new("default", "web", "", Protocol::Tcp);
        e2.insert(
            spn,
            vec![Arc::new(Endpoint::ready("10.244.1.2".parse().unwrap(), 80))],
        );
        dp.sync(&s2, &e2, &c).unwrap();
        assert_eq!(read(dir.path(), "save.log").lines().count(), 2);
        let restored = read(dir.path(), "restore.log");
        let last = &restored[restored.rfind("*nat").unwrap()..];
        assert!(!last.contains("SLUICE-SERVICES"), "{last}");
        assert!(last.contains("--to-destination 10.244.1.2:80"), "{last}");
        assert!(
            !last.contains("10.244.1.1"),
            "the service chain is rewritten without the old endpoint: {last}"
        );

        // A later full sync uses the known chains: still no iptables-save; jumps re-checked.
        dp.sync(
            &s2,
            &e2,
            &Changes {
                full: true,
                ..Changes::default()
            },
        )
        .unwrap();
        assert_eq!(read(dir.path(), "save.log").lines().count(), 2);
        assert_eq!(read(dir.path(), "restore.log").matches("*nat").count(), 5);
    }

    #[test]
    fn kernel_is_read_again_after_a_failed_sync() {
        let dir = tempfile::tempdir().unwrap();
        let mut dp = dataplane(dir.path(), 0);
        let (s, e) = maps();
        let full = Changes {
            full: true,
            ..Changes::default()
        };
        dp.sync(&s, &e, &full).unwrap();
        assert!(dp.knows_kernel_state());
        assert_eq!(read(dir.path(), "save.log").lines().count(), 2);
        // Make the restore fail once.
        let restore = dp.commands.restore.clone();
        dp.commands.restore = script(dir.path(), "restore-fail", "cat >/dev/null\nexit 1");
        dp.sync(&s, &e, &full).unwrap_err();
        assert!(!dp.knows_kernel_state());
        dp.commands.restore = restore;
        dp.sync(&s, &e, &full).unwrap();
        assert_eq!(
            read(dir.path(), "save.log").lines().count(),
            4,
            "read again (filter, nat)"
        );
        assert!(dp.knows_kernel_state());
    }

    #[test]
    fn failed_restore_is_a_sync_error_and_forgets_known_chains() {
        let dir = tempfile::tempdir().unwrap();
        let mut dp = dataplane(dir.path(), 1);
        let (s, e) = maps();
        let err = dp
            .sync(
                &s,
                &e,
                &Changes {
                    full: true,
                    ..Changes::default()
                },
            )
            .unwrap_err();
        assert!(matches!(err, Error::Sync { .. }), "{err}");
        assert!(!dp.knows_kernel_state());
    }

    /// A UDP service port whose endpoint 10.244.1.1 went away in `changes`.
    fn udp_changes(s: &mut ServicePortMap) -> Changes {
        let spn = ServicePortName::new("default", "dns", "", Protocol::Udp);
        s.insert(
            spn.clone(),
            Arc::new(ServicePort::cluster_ip(
                "10.96.0.10".parse().unwrap(),
                53,
                Protocol::Udp,
            )),
        );
        let mut c = Changes::default();
        c.services.insert(spn.service());
        c.deleted_udp_endpoints
            .insert((spn, "10.244.1.1:53".parse().unwrap()));
        c
    }

    #[test]
    fn stale_udp_flows_are_deleted_after_the_rules_and_not_when_they_fail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, e) = maps();
        let changes = udp_changes(&mut s);
        dataplane(dir.path(), 1).sync(&s, &e, &changes).unwrap_err();
        assert_eq!(read(dir.path(), "conntrack.log"), "");
        dataplane(dir.path(), 0).sync(&s, &e, &changes).unwrap();
        assert_eq!(
            read(dir.path(), "conntrack.log"),
            "-D -p udp --orig-dst 10.96.0.10 --dst-nat 10.244.1.1\n"
        );
    }

    #[test]
    fn cleanup_deletes_jumps_and_chains_from_saved_state() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("saved"),
            "*nat\n:PREROUTING ACCEPT [0:0]\n:SLUICE-SERVICES - [0:0]\n\
             -A PREROUTING -m comment --comment \"sluice service portals\" -j SLUICE-SERVICES\nCOMMIT\n",
        )
        .unwrap();
        let mut dp = dataplane(dir.path(), 0);
        dp.cleanup().unwrap();
        let restored = read(dir.path(), "restore.log");
        assert!(restored.contains(
            "-D PREROUTING -m comment --comment \"sluice service portals\" -j SLUICE-SERVICES"
        ));
        assert!(restored.contains("-X SLUICE-SERVICES"), "{restored}");
    }
}
