//! The lab's etcd cluster (`up --etcd M`): M members of one cluster inside the lab namespace,
//! member i (0-based) serving clients on `http://172.31.0.1:{2379+10i}` and peers on
//! `http://172.31.0.1:{2380+10i}`, data in `DIR/etcd/m<i>`, log `DIR/logs/etcd-m<i>.log`.
//! Every API server then stores the cluster there (`--store etcd`). Members are detached
//! processes like the rest of the lab; `etcd kill` / `etcd start` stop one with SIGKILL and
//! start it again with the same command line on its data, for fault tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::{alive, spawn_detached, LabState, LAB_NET};

/// One etcd member of the lab.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct EtcdRec {
    /// `m<i>`.
    pub name: String,
    /// `http://172.31.0.1:<port>` (inside the lab namespace).
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// The whole command line (`ip netns exec <lab> etcd …`), reused by `etcd start`.
    pub argv: Vec<String>,
    /// 0 once killed with `etcd kill` (a dead pid may be reused by anything).
    pub pid: i32,
}

impl EtcdRec {
    /// The client address (`host:port`) of the URL.
    fn client_addr(&self) -> anyhow::Result<SocketAddr> {
        self.client_url
            .trim_start_matches("http://")
            .parse()
            .with_context(|| format!("client URL {}", self.client_url))
    }
}

/// The `etcd` binary: on PATH, else where Debian's etcd-server puts it.
fn binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .context("etcd is not installed (Debian: apt-get install etcd-server)")
}

/// The records (command lines included) of `m` members of one new cluster for lab `lab`.
pub fn plan(dir: &Path, lab: &str, m: usize) -> anyhow::Result<Vec<EtcdRec>> {
    let bin = binary()?;
    let url = |port: usize| format!("http://{LAB_NET}.1:{port}");
    let initial_cluster = (0..m)
        .map(|i| format!("m{i}={}", url(2380 + 10 * i)))
        .collect::<Vec<_>>()
        .join(",");
    // Unique per `up`: members of another cluster (an earlier lab's, say) never join this one.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let token = format!("{lab}-{nanos:x}");
    Ok((0..m)
        .map(|i| {
            let name = format!("m{i}");
            let client_url = url(2379 + 10 * i);
            let peer_url = url(2380 + 10 * i);
            let data_dir = dir.join("etcd").join(&name);
            let argv = [
                "ip",
                "netns",
                "exec",
                lab,
                &bin.to_string_lossy(),
                "--name",
                &name,
                "--data-dir",
                &data_dir.to_string_lossy(),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &initial_cluster,
                // Ignored once the data dir exists (`etcd start` after a kill rejoins).
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &token,
                "--logger",
                "zap",
            ]
            .map(String::from)
            .to_vec();
            EtcdRec {
                log: dir.join(format!("logs/etcd-{name}.log")),
                name,
                client_url,
                peer_url,
                data_dir,
                argv,
                pid: 0,
            }
        })
        .collect())
}

/// Starts member `i` (not waiting for it).
pub fn spawn(state: &mut LabState, i: usize) -> anyhow::Result<()> {
    let m = &mut state.etcd[i];
    std::fs::create_dir_all(m.data_dir.parent().context("data dir has a parent")?)?;
    m.pid = spawn_detached(&m.argv, &m.log, None)?;
    Ok(())
}

/// Whether the member at `addr` inside namespace `netns` answers `/health` with
/// `"health":"true"` (which needs a quorum). The socket is made on a thread that entered the
/// namespace; the rest of the process stays where it is.
fn healthy(netns: &str, addr: SocketAddr) -> bool {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || -> anyhow::Result<bool> {
        let file = std::fs::File::open(&path)?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        Ok(out.contains("\"health\":\"true\""))
    })
    .join()
    .is_ok_and(|r| r.unwrap_or(false))
}

/// Waits until member `i` is healthy; fails at once if its process is gone.
pub fn wait_healthy(state: &LabState, i: usize, timeout: Duration) -> anyhow::Result<()> {
    let m = &state.etcd[i];
    let addr = m.client_addr()?;
    let deadline = Instant::now() + timeout;
    loop {
        if healthy(&state.lab_netns, addr) {
            return Ok(());
        }
        if !alive(m.pid) {
            bail!("etcd member {} exited; see {}", m.name, m.log.display());
        }
        if Instant::now() > deadline {
            bail!(
                "etcd member {} not healthy within {timeout:?}; see {}",
                m.name,
                m.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `--etcd-endpoints` for the API servers: every member's client URL.
pub fn endpoints(state: &LabState) -> String {
    state
        .etcd
        .iter()
        .map(|m| m.client_url.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The member with index `i`, or an error naming the ones there are.
pub fn member(state: &LabState, i: usize) -> anyhow::Result<&EtcdRec> {
    state.etcd.get(i).with_context(|| {
        format!(
            "no etcd member {i} in this lab (it has {}: 0-based)",
            state.etcd.len()
        )
    })
}
