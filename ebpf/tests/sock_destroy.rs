//! Privileged functional test of `sockdestroy` against the real kernel (sock_diag
//! `SOCK_DESTROY`).
//!
//! A fresh cgroup `sluice-sockdestroy-<pid>` under the cgroup2 mount with two children, `pod`
//! and `empty`; a fresh network namespace with 10.250.1.1 and 10.250.1.2 on `lo`. A child
//! process (this same binary, `SLUICE_SOCKDESTROY_CHILD=1`) joins `pod` and then the netns
//! before it execs (`ip netns exec` would remount /sys and hide the cgroup tree). It runs UDP
//! echo servers on both addresses, port 5353, and two clients, `c1` connected to .1 and `c2`
//! connected to .2, and answers commands on stdin:
//!
//! - `round`: each client sends a datagram and waits for the echo; one line per client,
//!   `c1 ok` or `c1 recv-err <errno>` / `c1 send-err <errno>` (a pending socket error is
//!   checked first with a non-blocking recv), then `end`;
//! - `park`: a thread blocks in `recv()` on `c1` (as a resolver waiting for its answer does)
//!   and prints `parked ok` or `parked recv-err <errno>` when it returns.
//!
//! The test also holds a socket of its own in that netns, connected to .1 but created outside
//! the cgroup: the cgroup-scoped call must spare it, the netns-wide one must not.
//!
//! Not root / no cgroup2 / no `ip` / kernel without `CONFIG_INET_DIAG_DESTROY`: prints
//! `SKIP: <reason>` and passes, unless `SLUICE_REQUIRE_ALL=1`.

use std::{
    fs,
    io::{BufRead, BufReader, ErrorKind, Write},
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

mod common;

use common::{run, CGROUP2};
use sluice_ebpf::sockdestroy::{destroy_udp_connected_to, destroy_udp_in_netns, netns_of_cgroup};

const CHILD_ENV: &str = "SLUICE_SOCKDESTROY_CHILD";
const B1: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 250, 1, 1), 5353);
const B2: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 250, 1, 2), 5353);

fn main() {
    if common::answered_listing("sock_destroy") {
        return;
    }
    if std::env::var_os(CHILD_ENV).is_some() {
        child();
        return;
    }
    if let Some(reason) = common::cannot_run_with_cgroup2() {
        return common::skip(&reason);
    }
    let mut env = Env::new();
    if sock_destroy(&mut env) {
        println!("sock_destroy: ok");
    }
}

/// The test environment; Drop removes every trace of it.
struct Env {
    netns: String,
    cgroup: PathBuf,
    child: Option<Child>,
}

impl Env {
    fn new() -> Self {
        let pid = std::process::id();
        let env = Self {
            netns: format!("sluice-sockdestroy-{pid}"),
            cgroup: Path::new(CGROUP2).join(format!("sluice-sockdestroy-{pid}")),
            child: None,
        };
        fs::create_dir(&env.cgroup).unwrap();
        fs::create_dir(env.pod_cgroup()).unwrap();
        fs::create_dir(env.empty_cgroup()).unwrap();
        run("ip", &["netns", "add", &env.netns]);
        run("ip", &["-n", &env.netns, "link", "set", "lo", "up"]);
        for a in ["10.250.1.1/32", "10.250.1.2/32"] {
            run("ip", &["-n", &env.netns, "addr", "add", a, "dev", "lo"]);
        }
        env
    }

    fn pod_cgroup(&self) -> PathBuf {
        self.cgroup.join("pod")
    }

    fn empty_cgroup(&self) -> PathBuf {
        self.cgroup.join("empty")
    }

    fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    /// Start the child in the `pod` cgroup and the netns; returns its stdin and stdout.
    fn start_child(&mut self) -> (ChildStdin, BufReader<ChildStdout>) {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .env(CHILD_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let fds = common::join_on_exec(&mut command, &self.pod_cgroup(), &self.netns_path());
        let mut child = command.spawn().unwrap();
        drop(fds);
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        self.child = Some(child);
        (stdin, stdout)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        for dir in [self.pod_cgroup(), self.empty_cgroup(), self.cgroup.clone()] {
            // A just-reaped process may keep its cgroup busy for a moment.
            let mut tries = 0;
            while let Err(e) = fs::remove_dir(&dir) {
                tries += 1;
                if e.kind() == ErrorKind::NotFound || tries == 50 {
                    if e.kind() != ErrorKind::NotFound {
                        eprintln!("cleanup: rmdir {}: {e}", dir.display());
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The child side: servers and clients in the test netns and `pod` cgroup.
fn child() {
    for addr in [B1, B2] {
        let server = UdpSocket::bind(addr).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((len, from)) = server.recv_from(&mut buf) {
                let _ = server.send_to(&buf[..len], from);
            }
        });
    }
    let clients: Vec<(&str, UdpSocket)> = [("c1", B1), ("c2", B2)]
        .into_iter()
        .map(|(name, to)| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.connect(to).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            (name, s)
        })
        .collect();
    println!("ready");
    for line in std::io::stdin().lock().lines() {
        match line.unwrap().as_str() {
            "round" => {
                for (name, s) in &clients {
                    println!("{name} {}", exchange(s));
                }
                println!("end");
            }
            "park" => {
                let s = clients[0].1.try_clone().unwrap();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    match s.recv(&mut buf) {
                        Ok(_) => println!("parked ok"),
                        Err(e) => println!("parked recv-err {}", errno(&e)),
                    }
                });
            }
            other => panic!("unknown command {other}"),
        }
    }
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// One request/answer on a connected client, reporting the first error.
fn exchange(s: &UdpSocket) -> String {
    let mut buf = [0u8; 64];
    // A pending socket error (what SOCK_DESTROY leaves behind) is returned by the next recv.
    s.set_nonblocking(true).unwrap();
    let pending = s.recv(&mut buf);
    s.set_nonblocking(false).unwrap();
    match pending {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Err(e) => return format!("recv-err {}", errno(&e)),
        Ok(_) => return "stray-datagram".into(),
    }
    if let Err(e) = s.send(b"ping") {
        return format!("send-err {}", errno(&e));
    }
    match s.recv(&mut buf) {
        Ok(_) => "ok".into(),
        Err(e) => format!("recv-err {}", errno(&e)),
    }
}

fn read_line(out: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(!line.is_empty(), "child exited");
    line.trim_end().to_string()
}

/// `round` → the clients' lines.
fn round(stdin: &mut ChildStdin, out: &mut BufReader<ChildStdout>) -> Vec<String> {
    writeln!(stdin, "round").unwrap();
    let mut lines = Vec::new();
    loop {
        let l = read_line(out);
        if l == "end" {
            return lines;
        }
        lines.push(l);
    }
}

/// Returns false when skipped (the kernel cannot destroy sockets).
fn sock_destroy(env: &mut Env) -> bool {
    let (mut stdin, mut out) = env.start_child();
    assert_eq!(read_line(&mut out), "ready");
    assert_eq!(round(&mut stdin, &mut out), ["c1 ok", "c2 ok"]);

    // One netns, found through the child in the descendant `pod` cgroup.
    let netns_ino = fs::metadata(env.netns_path()).unwrap().ino();
    let child_pid = env.child.as_ref().unwrap().id() as i32;
    assert_eq!(netns_of_cgroup(&env.cgroup), [(netns_ino, child_pid)]);
    assert_eq!(netns_of_cgroup(&env.empty_cgroup()), []);

    // A socket of this process in the same netns, connected to .1, outside the cgroup.
    let netns = env.netns_path();
    let outsider = std::thread::spawn(move || {
        common::enter_netns(netns.file_name().unwrap().to_str().unwrap());
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(B1).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    })
    .join()
    .unwrap();
    assert_eq!(exchange(&outsider), "ok");

    // Nothing matching: other port, unknown address, no backends, empty cgroup.
    let miss = [
        SocketAddrV4::new(*B1.ip(), 5354),
        SocketAddrV4::new(Ipv4Addr::new(10, 250, 1, 3), 5353),
    ];
    match destroy_udp_connected_to(&env.cgroup, &miss) {
        Ok(n) => assert_eq!(n, 0),
        Err(e) => panic!("{e}"),
    }
    assert_eq!(destroy_udp_connected_to(&env.cgroup, &[]).unwrap(), 0);
    assert_eq!(
        destroy_udp_connected_to(&env.empty_cgroup(), &[B1, B2]).unwrap(),
        0
    );
    assert_eq!(round(&mut stdin, &mut out), ["c1 ok", "c2 ok"]);

    // c1 waits for an answer that will never come; its backend goes away.
    writeln!(stdin, "park").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let n = match destroy_udp_connected_to(&env.cgroup, &[B1]) {
        Ok(n) => n,
        Err(e @ sluice_ebpf::Error::Unsupported(_)) => {
            common::skip(&e.to_string());
            return false;
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(n, 1, "exactly c1 (the outsider is not in the cgroup)");
    // The blocked recv wakes up with ECONNABORTED, at once (not after its 5 s timeout).
    assert_eq!(
        read_line(&mut out),
        format!("parked recv-err {}", libc::ECONNABORTED)
    );
    // c1 is disconnected now (the application must reconnect); c2 is untouched.
    assert_eq!(
        round(&mut stdin, &mut out),
        [
            format!("c1 send-err {}", libc::EDESTADDRREQ),
            "c2 ok".to_string()
        ]
    );
    // The outsider still is connected and works.
    assert!(outsider.take_error().unwrap().is_none());
    assert_eq!(outsider.peer_addr().unwrap(), B1.into());
    assert_eq!(exchange(&outsider), "ok");
    // Nothing left to destroy in the cgroup.
    assert_eq!(destroy_udp_connected_to(&env.cgroup, &[B1]).unwrap(), 0);

    // The netns-wide building block takes the outsider too.
    assert_eq!(destroy_udp_in_netns(&env.netns_path(), &[B1]).unwrap(), 1);
    assert_eq!(
        outsider
            .take_error()
            .unwrap()
            .and_then(|e| e.raw_os_error()),
        Some(libc::ECONNABORTED)
    );
    assert_eq!(
        outsider.peer_addr().unwrap_err().raw_os_error(),
        Some(libc::ENOTCONN)
    );
    assert_eq!(destroy_udp_in_netns(&env.netns_path(), &[B1]).unwrap(), 0);

    // The leaf cgroup directly: c2 goes the same way.
    assert_eq!(
        destroy_udp_connected_to(&env.pod_cgroup(), &[B2]).unwrap(),
        1
    );
    assert_eq!(
        round(&mut stdin, &mut out),
        [
            format!("c1 send-err {}", libc::EDESTADDRREQ),
            format!("c2 recv-err {}", libc::ECONNABORTED)
        ]
    );
    true
}
