//! The lab's API servers. With `up --control-planes 1` (the default) one `sluice-control`
//! listens on 172.31.0.1:6443 itself. With N > 1, API server i (1-based) listens on
//! `172.31.0.{1+i}:6443` (addresses on the lab's bridge), data in `DIR/control` (i = 1) or
//! `DIR/control-<i>`, log `DIR/logs/control.log` or `control-<i>.log`; all of them share one
//! etcd cluster and advertise the front address 172.31.0.1:6443, where `sluice-lab forward
//! --listen-in-netns` balances connections over the live ones.
//!
//! Each API server signs its own serving certificate (its listen address and `--tls-san` of
//! it, plus the advertised front address) with one CA: server 1 makes the CA and the token
//! file, the lab copies both into the other data directories before starting those, and copies
//! `tokens.json` again whenever it mints a node token (API servers re-read it when its mtime
//! changes), so any API server accepts any lab credential.
//!
//! Their controller Lease identities (`<hostname>_<listen address>`) differ by listen address,
//! so exactly one of them runs the controllers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::{alive, spawn_detached, LabState, API_PORT, LAB_NET};

/// One API server (`sluice-control`) of the lab.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ApiServerRec {
    /// `api<i>`, 1-based.
    pub name: String,
    /// Its own `host:port` (the front's is 172.31.0.1:6443).
    pub address: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// The whole command line (`ip netns exec <lab> sluice-control …`), reused by
    /// `control start`.
    pub argv: Vec<String>,
    /// 0 once killed with `control kill` (a dead pid may be reused by anything).
    pub pid: i32,
}

/// The records (command lines included) of `n` API servers of lab `lab`.
pub fn plan(
    dir: &Path,
    lab: &str,
    control: &Path,
    n: usize,
    etcd_endpoints: Option<&str>,
    extra: &[String],
) -> Vec<ApiServerRec> {
    let gw = format!("{LAB_NET}.1");
    (1..=n)
        .map(|i| {
            let (ip, data_dir, log) = if i == 1 {
                let ip = if n == 1 {
                    gw.clone()
                } else {
                    format!("{LAB_NET}.2")
                };
                (ip, dir.join("control"), dir.join("logs/control.log"))
            } else {
                (
                    format!("{LAB_NET}.{}", 1 + i),
                    dir.join(format!("control-{i}")),
                    dir.join(format!("logs/control-{i}.log")),
                )
            };
            let address = format!("{ip}:{API_PORT}");
            let mut argv: Vec<String> = vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                lab.to_string(),
                control.to_string_lossy().into(),
                "--data-dir".into(),
                data_dir.to_string_lossy().into(),
                "--listen".into(),
                address.clone(),
                "--advertise-address".into(),
                gw.clone(),
            ];
            if n > 1 {
                // Covered anyway as the listen address; named so the certificate's intent
                // does not hang on that detail.
                argv.extend(["--tls-san".into(), ip.clone()]);
            }
            if let Some(e) = etcd_endpoints {
                argv.extend([
                    "--store".into(),
                    "etcd".into(),
                    "--etcd-endpoints".into(),
                    e.to_string(),
                ]);
            }
            argv.extend(extra.iter().cloned());
            ApiServerRec {
                name: format!("api{i}"),
                address,
                data_dir,
                log,
                argv,
                pid: 0,
            }
        })
        .collect()
}

/// Starts API server `i` (0-based index into the records) and returns the length its log had
/// before, for [`wait_serving`].
pub fn spawn(state: &mut LabState, i: usize) -> anyhow::Result<u64> {
    let a = &mut state.api_servers[i];
    let offset = std::fs::metadata(&a.log).map(|m| m.len()).unwrap_or(0);
    a.pid = spawn_detached(&a.argv, &a.log, None)?;
    if i == 0 {
        state.control_pid = state.api_servers[0].pid;
    }
    Ok(offset)
}

/// Waits until API server `i` prints that it serves (in its log after `offset`: logs are
/// appended across restarts and labs); fails at once if it exited.
pub fn wait_serving(
    state: &LabState,
    i: usize,
    offset: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let a = &state.api_servers[i];
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read(&a.log).unwrap_or_default();
        let new = String::from_utf8_lossy(text.get(offset as usize..).unwrap_or_default());
        if new.contains("sluice-control serving on") {
            return Ok(());
        }
        if !alive(a.pid) {
            bail!(
                "API server {} exited:\n{}",
                a.name,
                new.lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        if Instant::now() > deadline {
            bail!(
                "API server {} not serving within {timeout:?}; see {}",
                a.name,
                a.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Copies `name` from `from` into `to` as a private file, atomically (a temp file renamed
/// over it: an API server re-reading tokens.json never sees half of it, and the new file's
/// mtime tells it to re-read).
fn copy_private(from: &Path, to: &Path, name: &str) -> anyhow::Result<()> {
    let body = std::fs::read(from.join(name))
        .with_context(|| format!("reading {}", from.join(name).display()))?;
    crate::write_private_bytes(&to.join(name), &body)
}

/// Gives every other API server the CA (certificate and key) and the tokens of API server 1,
/// in private (0700) data directories; before they start, so they sign with that CA and find
/// the admin token instead of minting their own.
pub fn share_pki(state: &LabState) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let first = &state.api_servers[0].data_dir;
    for a in &state.api_servers[1..] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&a.data_dir)?;
        std::fs::set_permissions(&a.data_dir, std::fs::Permissions::from_mode(0o700))?;
        for f in ["ca.crt", "ca.key", "tokens.json"] {
            copy_private(first, &a.data_dir, f)?;
        }
    }
    Ok(())
}

/// Copies API server 1's tokens.json to the others (after `token create` minted one there).
pub fn share_tokens(state: &LabState) -> anyhow::Result<()> {
    let first = &state.api_servers[0].data_dir;
    for a in &state.api_servers[1..] {
        copy_private(first, &a.data_dir, "tokens.json")?;
    }
    Ok(())
}

/// The API server with 1-based index `i`, as a 0-based index into the records.
pub fn index(state: &LabState, i: usize) -> anyhow::Result<usize> {
    if i == 0 || i > state.api_servers.len() {
        bail!(
            "no API server {i} in this lab (it has {}: 1-based)",
            state.api_servers.len()
        );
    }
    Ok(i - 1)
}
