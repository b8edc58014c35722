//! `sluice-lab forward`: kubectl on the host reaches the lab's API server without any address
//! or route added to the host. It listens on `127.0.0.1:<port>` in the host's network
//! namespace (port 0: the kernel picks one, so labs never collide; the port is published in a
//! file `up` waits for) and relays every TCP connection to the API server inside the lab
//! namespace, bytes as they are (TLS end to end: the serving certificate names 127.0.0.1).
//!
//! A socket belongs to the network namespace of the thread that creates it, so the outbound
//! sockets are made by one dedicated connector thread that entered the lab namespace with
//! `setns(CLONE_NEWNET)`; the listener and accepted sockets stay in the host's. Each
//! connection then gets two plain threads, one blocking copy per direction.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;

type Reply = mpsc::SyncSender<std::io::Result<TcpStream>>;

/// Runs the forwarder until killed.
pub fn run(netns: &str, to: SocketAddr, port_file: &Path) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    let connect = connector(netns, to)?;
    let port = listener.local_addr()?.port();
    let tmp = port_file.with_extension("tmp");
    std::fs::write(&tmp, format!("{port}\n"))?;
    std::fs::rename(&tmp, port_file)?;
    println!("forwarding 127.0.0.1:{port} to {to} in netns {netns}");
    for conn in listener.incoming() {
        let client = match conn {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let (tx, rx) = mpsc::sync_channel(1);
        if connect.send(tx).is_err() {
            anyhow::bail!("the connector thread is gone");
        }
        std::thread::spawn(move || match rx.recv() {
            Ok(Ok(upstream)) => relay(client, upstream),
            Ok(Err(e)) => eprintln!("connecting to {to}: {e}"),
            Err(_) => {}
        });
    }
    Ok(())
}

/// The thread that makes sockets in the lab namespace: send it a reply channel, get back a
/// connected stream.
fn connector(netns: &str, to: SocketAddr) -> anyhow::Result<mpsc::Sender<Reply>> {
    let path = format!("/run/netns/{netns}");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    let (tx, rx) = mpsc::channel::<Reply>();
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("connector".into())
        .spawn(move || {
            // Only this thread moves; the rest of the process stays in the host's namespace.
            let r = nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET);
            let failed = r.is_err();
            let _ = ready_tx.send(r);
            if failed {
                return;
            }
            for reply in rx {
                let _ = reply.send(TcpStream::connect_timeout(&to, Duration::from_secs(10)));
            }
        })?;
    ready_rx
        .recv()
        .context("connector thread")?
        .with_context(|| format!("setns into {path}"))?;
    Ok(tx)
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
