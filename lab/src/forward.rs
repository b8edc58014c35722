//! `sluice-lab forward`: kubectl on the host reaches the lab's API server without any address
//! or route added to the host. It listens on `127.0.0.1:<port>` in the host's network
//! namespace (port 0: the kernel picks one, so labs never collide; the port is published in a
//! file `up` waits for) and relays every TCP connection to the API server inside the lab
//! namespace, bytes as they are (TLS end to end: the serving certificate names 127.0.0.1).
//!
//! The same relay is the lab's front for several API servers (`up --control-planes N`):
//! `--listen-in-netns 172.31.0.1:6443` binds inside the lab namespace instead, and with more
//! than one `--to` each accepted connection goes to the next target round-robin, skipping any
//! that refuses or does not answer, so a dead API server is invisible to new connections (the
//! connections it held break, as they would behind any TCP load balancer).
//!
//! A socket belongs to the network namespace of the thread that creates it, so the outbound
//! sockets are made by threads in the lab namespace: one dispatcher thread enters it with
//! `setns(CLONE_NEWNET)` and spawns each connection's thread, which inherits the namespace;
//! the listener and accepted sockets stay where they were made. Each connection then gets two
//! plain threads, one blocking copy per direction.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;

/// Runs the forwarder until killed: listens on `127.0.0.1:0` on the host, or on
/// `listen_in_netns` inside `netns`, and relays each connection to one of `targets` there.
pub fn run(
    netns: &str,
    targets: Vec<SocketAddr>,
    listen_in_netns: Option<SocketAddr>,
    port_file: &Path,
) -> anyhow::Result<()> {
    anyhow::ensure!(!targets.is_empty(), "no --to target");
    let path = format!("/run/netns/{netns}");
    let listener = match listen_in_netns {
        Some(addr) => {
            // The main thread moves (the dispatcher below enters the same namespace anyway).
            let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into {path}"))?;
            TcpListener::bind(addr).with_context(|| format!("binding {addr} in {netns}"))?
        }
        None => TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?,
    };
    let local = listener.local_addr()?;
    let dispatch = dispatcher(&path, targets.clone())?;
    let tmp = port_file.with_extension("tmp");
    std::fs::write(&tmp, format!("{}\n", local.port()))?;
    std::fs::rename(&tmp, port_file)?;
    let to: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    println!("forwarding {local} to {} in netns {netns}", to.join(", "));
    for conn in listener.incoming() {
        let client = match conn {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if dispatch.send(client).is_err() {
            anyhow::bail!("the dispatcher thread is gone");
        }
    }
    Ok(())
}

/// The thread that lives in the lab namespace: for each accepted connection it spawns a
/// thread there (threads inherit their creator's namespace) that dials the next target
/// round-robin and relays.
fn dispatcher(path: &str, targets: Vec<SocketAddr>) -> anyhow::Result<mpsc::Sender<TcpStream>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    let (tx, rx) = mpsc::channel::<TcpStream>();
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("dispatcher".into())
        .spawn(move || {
            // Only this thread (and the threads it spawns) moves; the listener stays put.
            let r = nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET);
            let failed = r.is_err();
            let _ = ready_tx.send(r);
            if failed {
                return;
            }
            let targets = std::sync::Arc::new(targets);
            let mut next = 0usize;
            for client in rx {
                let first = next;
                next = next.wrapping_add(1);
                let targets = targets.clone();
                std::thread::spawn(move || match dial(&targets, first) {
                    Ok(upstream) => relay(client, upstream),
                    // Dropping the client closes it: it sees a reset, as with no listener.
                    Err(e) => eprintln!("no target answered: {e}"),
                });
            }
        })?;
    ready_rx
        .recv()
        .context("dispatcher thread")?
        .with_context(|| format!("setns into {path}"))?;
    Ok(tx)
}

/// Connects to `targets[first % n]`, else the ones after it in turn. A dead API server's
/// address stays on the lab's bridge, so a refusal is immediate; the timeout only matters for
/// an address that answers nothing. With a single target, a long one (it is all there is).
fn dial(targets: &[SocketAddr], first: usize) -> std::io::Result<TcpStream> {
    let timeout = if targets.len() == 1 {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(2)
    };
    let mut last = None;
    for k in 0..targets.len() {
        let to = targets[(first + k) % targets.len()];
        match TcpStream::connect_timeout(&to, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => {
                eprintln!("connecting to {to}: {e}");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no targets")))
}

fn relay(client: TcpStream, upstream: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || pipe(client, upstream));
    pipe(u2, c2);
    let _ = up.join();
}

/// Copies until EOF, then half-closes the other side so it sees EOF too.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.flush();
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// The admin kubeconfig with its server replaced by the forwarder's address.
pub fn host_kubeconfig(lab_kubeconfig: &str, port: u16) -> String {
    lab_kubeconfig
        .lines()
        .map(|l| match l.trim_start().strip_prefix("server: ") {
            Some(_) => {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}server: https://127.0.0.1:{port}")
            }
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_goes_round_robin_and_skips_a_refusing_target() {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        // A port nothing listens on any more: connecting there is refused at once.
        let dead = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let targets = [a.local_addr().unwrap(), dead, b.local_addr().unwrap()];
        let peer = |s: TcpStream| s.peer_addr().unwrap();
        assert_eq!(peer(dial(&targets, 0).unwrap()), targets[0]);
        assert_eq!(
            peer(dial(&targets, 1).unwrap()),
            targets[2],
            "skips the dead one"
        );
        assert_eq!(peer(dial(&targets, 2).unwrap()), targets[2]);
        assert_eq!(peer(dial(&targets, 3).unwrap()), targets[0], "wraps around");
        assert!(dial(&[dead], 0).is_err());
    }

    #[test]
    fn kubeconfig_server_is_replaced() {
        let kc = "apiVersion: v1\nclusters:\n- name: sluice\n  cluster:\n    server: https://172.31.0.1:6443\n    certificate-authority-data: QUJD\nusers: []\n";
        let out = host_kubeconfig(kc, 40123);
        assert!(
            out.contains("    server: https://127.0.0.1:40123\n"),
            "{out}"
        );
        assert!(!out.contains("172.31.0.1"), "{out}");
        assert!(out.contains("certificate-authority-data: QUJD"));
    }
}
