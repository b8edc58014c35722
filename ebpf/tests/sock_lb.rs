//! Privileged functional test of the socket load balancer against the real kernel.
//!
//! A fresh cgroup (under the cgroup2 mount, never the root cgroup), a fresh network namespace
//! with "backend" addresses on `lo`, and a unique pin directory. The programs are loaded and
//! attached to that cgroup only; services are written through the `Maps` API. Clients run in
//! a child process (this same binary, `SLUICE_EBPF_CLIENT=...`) that joins the cgroup and then
//! the netns before it execs (`ip netns exec` would remount /sys and hide the cgroup tree);
//! servers run on threads of this process that joined the netns only, so the hooks do not
//! apply to them.
//!
//! Not root / no cgroup2 / no `ip`: prints `SKIP: <reason>` and passes, unless
//! `SLUICE_REQUIRE_ALL=1`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

mod common;

use common::{put_frontend, run, Bpffs, CGROUP2};
use sluice_ebpf::{
    abi::{self, Backend},
    LoadOptions, Loader, Maps,
};

const CLIENT_ENV: &str = "SLUICE_EBPF_CLIENT";

fn main() {
    if common::answered_listing("sock_lb") {
        return;
    }
    if let Ok(cmd) = std::env::var(CLIENT_ENV) {
        client(&cmd);
        return;
    }
    if let Some(reason) = common::cannot_run_with_cgroup2() {
        return common::skip(&reason);
    }
    let env = Env::new();
    sock_lb(&env);
    ten_thousand_services(&env);
    println!("sock_lb: ok");
}

/// The test environment; Drop removes every trace of it.
struct Env {
    netns: String,
    cgroup: PathBuf,
    pin_dir: PathBuf,
    /// Dropped last (declared last): the pins live on it.
    _bpffs: Bpffs,
}

impl Env {
    fn new() -> Self {
        let pid = std::process::id();
        let bpffs = Bpffs::new("ebpf-test");
        let env = Self {
            netns: format!("sluice-ebpf-test-{pid}"),
            cgroup: Path::new(CGROUP2).join(format!("sluice-ebpf-test-{pid}")),
            pin_dir: bpffs.root.join(format!("sluice-test-{pid}")),
            _bpffs: bpffs,
        };
        fs::create_dir(&env.cgroup).unwrap();
        run("ip", &["netns", "add", &env.netns]);
        run("ip", &["-n", &env.netns, "link", "set", "lo", "up"]);
        for a in ["10.250.0.1/32", "10.250.0.2/32", "10.250.0.3/32"] {
            run("ip", &["-n", &env.netns, "addr", "add", a, "dev", "lo"]);
        }
        env
    }

    fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    /// Run the client command in a child that is in the test cgroup and netns.
    fn client(&self, cmd: &str) -> String {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.env(CLIENT_ENV, cmd);
        let fds = common::join_on_exec(&mut command, &self.cgroup, &self.netns_path());
        let out = command.output().unwrap();
        drop(fds);
        assert!(
            out.status.success(),
            "client {cmd}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Err(e) = sluice_ebpf::detach_all(&self.pin_dir, Some(&self.cgroup), None) {
            eprintln!("cleanup: detach_all: {e}");
        }
        if let Err(e) = fs::remove_dir(&self.cgroup) {
            eprintln!("cleanup: rmdir {}: {e}", self.cgroup.display());
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// TCP servers that answer every connection with their own address, and UDP servers that
/// echo their own address to each datagram; on threads inside the test netns.
fn start_servers(env: &Env, addrs: &[Ipv4Addr], tcp_port: u16, udp_port: u16) {
    for &addr in addrs {
        let (tx, rx) = std::sync::mpsc::channel();
        let netns = env.netns_path();
        std::thread::spawn(move || {
            let f = fs::File::open(netns).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let tcp = TcpListener::bind(SocketAddrV4::new(addr, tcp_port)).unwrap();
            let udp = UdpSocket::bind(SocketAddrV4::new(addr, udp_port)).unwrap();
            tx.send(()).unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok((_, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(addr.to_string().as_bytes(), from);
                }
            });
            for conn in tcp.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.write_all(addr.to_string().as_bytes());
            }
        });
        rx.recv().unwrap();
    }
}

/// The client side, in the child process. Prints one line per attempt.
fn client(cmd: &str) {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let target: SocketAddrV4 = words[1].split(',').next().unwrap().parse().unwrap();
    let n: usize = words[2].parse().unwrap();
    match words[0] {
        // `tcp <frontend> <n>`: `hit <backend> peer <getpeername>` or `err <errno>`.
        "tcp" => {
            for _ in 0..n {
                match TcpStream::connect_timeout(&target.into(), Duration::from_secs(2)) {
                    Ok(mut s) => {
                        let mut who = String::new();
                        s.read_to_string(&mut who).unwrap();
                        println!("hit {who} peer {}", s.peer_addr().unwrap());
                    }
                    Err(e) => println!("err {}", e.raw_os_error().unwrap_or(-1)),
                }
            }
        }
        // `tcp-each <frontend>,<frontend>,… 1`: one connection to each, `hit`/`err` as above.
        "tcp-each" => {
            for t in words[1].split(',') {
                let target: SocketAddrV4 = t.parse().unwrap();
                match TcpStream::connect_timeout(&target.into(), Duration::from_secs(2)) {
                    Ok(mut s) => {
                        let mut who = String::new();
                        s.read_to_string(&mut who).unwrap();
                        println!("hit {who} peer {}", s.peer_addr().unwrap());
                    }
                    Err(e) => println!("err {}", e.raw_os_error().unwrap_or(-1)),
                }
            }
        }
        // `udp <frontend> <n> <sockets>`: per socket, n unconnected sendto/recvfrom:
        // `udp <socket#> <backend> from <source>`.
        "udp" => {
            let sockets: usize = words[3].parse().unwrap();
            for i in 0..sockets {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                for _ in 0..n {
                    match s.send_to(b"ping", target) {
                        Ok(_) => {}
                        Err(e) => {
                            println!("err {}", e.raw_os_error().unwrap_or(-1));
                            continue;
                        }
                    }
                    let mut buf = [0u8; 64];
                    match s.recv_from(&mut buf) {
                        Ok((len, from)) => println!(
                            "udp {i} {} from {from}",
                            String::from_utf8_lossy(&buf[..len])
                        ),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => println!("timeout"),
                        Err(e) => println!("err {}", e.raw_os_error().unwrap_or(-1)),
                    }
                }
            }
        }
        other => panic!("unknown client command {other}"),
    }
}

const FRONTEND: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const STICKY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
const B1: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const B2: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);

/// Write a service the node's own sockets see.
fn put_service(
    maps: &mut Maps,
    frontend: Ipv4Addr,
    port: u16,
    proto: u8,
    svc_id: u32,
    flags: u8,
    backend_ids: &[u32],
) {
    put_frontend(
        maps,
        frontend,
        port,
        proto,
        abi::SCOPE_SOCK,
        svc_id,
        flags,
        backend_ids,
    );
}

fn tally<'a>(lines: impl Iterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for l in lines {
        *out.entry(l.to_string()).or_insert(0) += 1;
    }
    out
}

fn sock_lb(env: &Env) {
    let loader_opts = LoadOptions::new(&env.pin_dir);
    let mut loader = Loader::load(loader_opts.clone()).expect("load");
    loader.attach_cgroup(&env.cgroup).expect("attach");
    let links = sluice_ebpf::attached_links(Some(&env.cgroup), None).unwrap();
    assert_eq!(links.len(), 4, "{links:?}");
    assert!(sluice_ebpf::is_present(&env.pin_dir));

    start_servers(env, &[B1, B2], 8080, 5353);

    let mut maps = loader.maps().unwrap();
    maps.put_backend(
        1,
        &Backend::new(B1, 8080, abi::IPPROTO_TCP, abi::BACKEND_LOCAL),
    )
    .unwrap();
    maps.put_backend(
        2,
        &Backend::new(B2, 8080, abi::IPPROTO_TCP, abi::BACKEND_LOCAL),
    )
    .unwrap();
    maps.put_backend(3, &Backend::new(B1, 5353, abi::IPPROTO_UDP, 0))
        .unwrap();
    maps.put_backend(4, &Backend::new(B2, 5353, abi::IPPROTO_UDP, 0))
        .unwrap();
    put_service(&mut maps, FRONTEND, 80, abi::IPPROTO_TCP, 7, 0, &[1, 2]);
    put_service(&mut maps, EMPTY, 80, abi::IPPROTO_TCP, 8, 0, &[]);
    put_service(
        &mut maps,
        STICKY,
        80,
        abi::IPPROTO_TCP,
        9,
        abi::SVC_AFFINITY,
        &[1, 2],
    );
    put_service(&mut maps, FRONTEND, 53, abi::IPPROTO_UDP, 10, 0, &[3, 4]);

    // TCP: both backends get hits and getpeername shows the frontend.
    let out = env.client("tcp 10.96.0.10:80 40");
    let hits = tally(out.lines());
    assert_eq!(
        hits.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "hit 10.250.0.1 peer 10.96.0.10:80".to_string(),
            "hit 10.250.0.2 peer 10.96.0.10:80".to_string(),
        ]),
        "{out}"
    );

    // A service without backends refuses at once.
    let out = env.client("tcp 10.96.0.11:80 3");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec![format!("err {}", libc::ECONNREFUSED); 3],
        "{out}"
    );

    // ClientIP affinity: one backend for every connection from this netns.
    let out = env.client("tcp 10.96.0.12:80 20");
    let hits = tally(out.lines());
    assert_eq!(hits.len(), 1, "affinity should keep one backend: {out}");
    assert!(
        hits.keys().next().unwrap().ends_with("peer 10.96.0.12:80"),
        "{out}"
    );

    // UDP, unconnected sockets: replies come from the frontend, each socket stays on one
    // backend, and across sockets both backends are used.
    let out = env.client("udp 10.96.0.10:53 5 16");
    let mut per_socket: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        assert!(
            w.len() == 5 && w[0] == "udp" && w[4] == "10.96.0.10:53",
            "bad reply {line:?} in\n{out}"
        );
        per_socket.entry(w[1]).or_default().insert(w[2]);
    }
    assert_eq!(per_socket.len(), 16, "{out}");
    assert!(
        per_socket.values().all(|b| b.len() == 1),
        "flow hopped: {out}"
    );
    let used: BTreeSet<&str> = per_socket.values().flatten().copied().collect();
    assert_eq!(used.len(), 2, "both UDP backends should be used: {out}");

    // dump_text is stable and complete.
    let dump = maps.dump_text().unwrap();
    assert!(
        dump.contains(
            "svc 10.96.0.12:80/tcp sock slot=0 count=2 id=9 flags=affinity timeout=600\n"
        ),
        "{dump}"
    );
    assert!(
        dump.contains("backend 1 10.250.0.1:8080/tcp local\n"),
        "{dump}"
    );
    assert_eq!(dump, maps.dump_text().unwrap());

    // Restart: a new loader on the same pin directory reuses the maps (services still there)
    // and the pinned links (still 4 links, now running the new programs).
    drop(maps);
    drop(loader);
    let mut loader = Loader::load(loader_opts).expect("reload");
    loader.attach_cgroup(&env.cgroup).expect("re-attach");
    let again = sluice_ebpf::attached_links(Some(&env.cgroup), None).unwrap();
    assert_eq!(again.len(), 4, "re-attach must not attach twice: {again:?}");
    for (a, b) in links.iter().zip(&again) {
        assert_eq!(a.link_id, b.link_id, "same links");
        assert_ne!(a.prog_id, b.prog_id, "programs replaced in place");
    }
    let maps = loader.maps().unwrap();
    assert_eq!(maps.iter_svc().unwrap().len(), 3 + 1 + 3 + 3);
    let out = env.client("tcp 10.96.0.10:80 10");
    assert!(
        out.lines().all(|l| l.ends_with("peer 10.96.0.10:80")),
        "{out}"
    );

    // detach_all removes links, pins and maps, and is idempotent.
    sluice_ebpf::detach_all(&env.pin_dir, Some(&env.cgroup), None).unwrap();
    assert!(!sluice_ebpf::is_present(&env.pin_dir));
    assert!(sluice_ebpf::attached_links(Some(&env.cgroup), None)
        .unwrap()
        .is_empty());
    sluice_ebpf::detach_all(&env.pin_dir, Some(&env.cgroup), None).unwrap();
    // Nothing attached: the frontend is just an unreachable address again.
    let out = env.client("tcp 10.96.0.11:80 1");
    assert_ne!(out.trim(), format!("err {}", libc::ECONNREFUSED), "{out}");
}

/// The ebpf proxy mode itself (`EbpfMode` → `EbpfDataplane`, as the agent runs it) programs
/// 10,000 ClusterIP services of three endpoints each; a sample of 200 is probed with real
/// connections, then one endpoint change is a partial sync that only that service sees.
fn ten_thousand_services(env: &Env) {
    use sluice_proxy::mode::{Mode, ModeContext};
    use sluice_proxy::model::{
        Endpoint, EndpointsMap, NamespacedName, Protocol, ServicePort, ServicePortMap,
        ServicePortName,
    };
    use sluice_proxy::proxier::Changes;
    use std::sync::Arc;
    use std::time::Instant;

    const N: u32 = 10_000;
    let frontend = |i: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i);
    let name = |i: u32| ServicePortName::new("default", format!("svc-{i}"), "", Protocol::Tcp);
    let backends = [B1, B2, Ipv4Addr::new(10, 250, 0, 3)];
    start_servers(env, &backends[2..], 8080, 5354);
    let mut services = ServicePortMap::new();
    let mut endpoints = EndpointsMap::new();
    for i in 0..N {
        let ip = frontend(i).into();
        services.insert(
            name(i),
            Arc::new(ServicePort::cluster_ip(ip, 80, Protocol::Tcp)),
        );
        endpoints.insert(
            name(i),
            backends
                .iter()
                .map(|b| Arc::new(Endpoint::ready((*b).into(), 8080)))
                .collect(),
        );
    }
    let mut ctx = ModeContext::new("scale");
    ctx.cgroup = Some(env.cgroup.clone());
    ctx.bpf_dir = env.pin_dir.clone();
    let mode = sluice_ebpf::mode::EbpfMode;
    mode.probe(&ctx).expect("probe");
    let mut dp = mode.build(&ctx).expect("build");
    let full = Changes {
        full: true,
        ..Changes::default()
    };
    let t = Instant::now();
    dp.sync(&services, &endpoints, &full).expect("full sync");
    println!(
        "10,000 services × 3 endpoints: full map sync {:?}",
        t.elapsed()
    );
    let maps = Maps::open(&env.pin_dir).unwrap();
    let current = sluice_ebpf::mode::read_current(&maps).unwrap();
    let masters = current
        .svc()
        .iter()
        .filter(|((_, slot), v)| *slot == 0 && v.count == 3);
    assert_eq!(masters.count(), N as usize);

    // Every 50th service, one connection each: all answered by a backend, seen as the service.
    let sample: Vec<u32> = (0..N).step_by(50).collect();
    let targets: Vec<String> = sample
        .iter()
        .map(|i| format!("{}:80", frontend(*i)))
        .collect();
    let out = env.client(&format!("tcp-each {} 1", targets.join(",")));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), sample.len(), "{out}");
    for (line, i) in lines.iter().zip(&sample) {
        let peer = format!("peer {}:80", frontend(*i));
        assert!(
            line.starts_with("hit 10.250.0.") && line.ends_with(&peer),
            "service {i}: {line}"
        );
    }

    // One endpoint of one service goes: a partial sync touches that service only.
    let before = current;
    endpoints.insert(
        name(0),
        backends[..2]
            .iter()
            .map(|b| Arc::new(Endpoint::ready((*b).into(), 8080)))
            .collect(),
    );
    let partial = Changes {
        services: [NamespacedName::new("default", "svc-0")].into(),
        ..Changes::default()
    };
    let t = Instant::now();
    dp.sync(&services, &endpoints, &partial)
        .expect("partial sync");
    println!(
        "one endpoint change at 10,000 services: sync {:?}",
        t.elapsed()
    );
    let after = sluice_ebpf::mode::read_current(&maps).unwrap();
    let changed: Vec<_> = before
        .svc()
        .iter()
        .filter(|(k, v)| after.svc().get(k) != Some(v))
        .map(|(k, _)| k.0.addr)
        .collect();
    assert!(
        changed.iter().all(|a| *a == frontend(0)),
        "other services rewritten: {changed:?}"
    );
    let out = env.client(&format!("tcp {}:80 20", frontend(0)));
    assert!(
        out.lines().all(|l| !l.starts_with("hit 10.250.0.3")),
        "the removed endpoint still gets connections: {out}"
    );
    dp.cleanup().expect("cleanup");
    assert!(!sluice_ebpf::is_present(&env.pin_dir));
}
