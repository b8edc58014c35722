//! The ipvs proxy mode's netlink client against a real kernel's IPVS, in the VM (the host
//! kernel has no IPVS; harness: `sluice_tests::vm`, docs/vm-tests.md).
//!
//! * `vm_ipvs_netlink_round_trip` proves that what [`IpvsClient`] writes is what the kernel
//!   holds, and that what it reads back is what the kernel reports. In a fresh network
//!   namespace it creates, lists, updates and deletes TCP, UDP and IPv6 virtual servers and
//!   their destinations (weights 1–3, scheduler changes rr → lc → mh and rr → sh,
//!   persistence on with a timeout and off again, thresholds, a drain to weight 0, a
//!   destination delete, service deletes). After every step four views of the table must be
//!   equal to the state the test expects: the client's own `services()`/`destinations()`,
//!   `ipvsadm -Sn` and `ipvsadm -Ln` parsed into one normalised structure, and the client's
//!   `ipvsadm_listing()` parsed the same way (whose text must also equal `ipvsadm -Ln` line by
//!   line). The error path: deleting or updating a missing service is `ESRCH`, a missing
//!   destination `ENOENT`, a duplicate service or destination `EEXIST`, an unknown scheduler
//!   `ENOENT`, each with a message that names the operation and says what went wrong; and a
//!   failed request leaves the table as it was. A service as listed (with the kernel's
//!   `IP_VS_SVC_F_HASHED`) can be sent back to create or update it. It ends with
//!   `client::selftest`, compared with `ipvsadm -Ln` at each step.
//! * `vm_ipvs_schedulers` proves that the virtual servers the client programs balance real
//!   traffic as their scheduler promises. A director namespace (ip_forward=1, the VIP on a
//!   dummy `sluice-ipvs0`) NATs (masquerade forwarding) to four backend namespaces, each
//!   running a TCP server thread that answers with its name; a client namespace holds 24
//!   source addresses. `sh` keeps one client address on one backend (20 connections) and
//!   spreads different addresses; `mh` (Maglev) sends each client to one backend and, when a
//!   destination is deleted, moves that backend's clients and at most one other (≤ 1/N of the
//!   table moves); `rr` spreads 40 connections exactly evenly.
//!
//! On the host each test only boots the VM and runs itself there (`run_self`). Without qemu
//! (or, before the kernel cache exists, root and apt-get) they print `SKIP: <reason>` and
//! return; under `SLUICE_REQUIRE_ALL=1` they fail instead.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::libc::{EEXIST, ENOENT, ESRCH};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
use nix::sys::time::TimeVal;
use sluice_proxy_ipvs::client::{self, forward_name, IpvsClient};
use sluice_proxy_ipvs::netlink::{
    full_netmask, Destination, Service, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, IP_VS_SVC_F_HASHED,
    IP_VS_SVC_F_ONEPACKET, IP_VS_SVC_F_PERSISTENT,
};
use sluice_proxy_ipvs::rtnl::Rtnl;
use sluice_proxy_ipvs::DUMMY_LINK;
use sluice_tests::vm::{self, cmd, in_fresh_netns, in_ns, netns_add, serve, Vm};

/// The host half: boots the VM and runs `test` there.
fn run_in_vm(test: &str) {
    if !vm::available_or_skip() {
        return;
    }
    let run = Vm::builder()
        .timeout(Duration::from_secs(180))
        .run_self(test);
    println!("vm kernel: {}", run.kernel);
    run.assert_debian_kernel();
}

fn print_guest_kernel() {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    println!("vm kernel: {}", kernel.trim());
}

#[test]
fn vm_ipvs_netlink_round_trip() {
    if vm::in_vm() {
        print_guest_kernel();
        in_fresh_netns(round_trip);
        return;
    }
    run_in_vm("vm_ipvs_netlink_round_trip");
}

#[test]
fn vm_ipvs_schedulers() {
    if vm::in_vm() {
        print_guest_kernel();
        schedulers();
        return;
    }
    run_in_vm("vm_ipvs_schedulers");
}

// ---------------------------------------------------------------------------------------------
// The normalised table: what `ipvsadm -Sn`, `ipvsadm -Ln` and the client all say.

/// Virtual servers by `TCP 10.96.0.10:80` / `UDP [fd00::10]:53` / `FWM 7`.
type Table = BTreeMap<String, Svc>;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Svc {
    scheduler: String,
    /// Persistence timeout, when persistent.
    persistent: Option<u32>,
    /// The persistence netmask, when not a full one (as ipvsadm prints it).
    mask: Option<String>,
    one_packet: bool,
    /// Destinations by `10.244.1.1:8080` / `[fd00::1:1]:8443`.
    dests: BTreeMap<String, Dest>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Dest {
    /// `Masq`, `Route`, `Tunnel`, `Local`.
    forward: String,
    weight: u32,
}

fn svc_view(s: &Service) -> Svc {
    let persistent = s.flags & IP_VS_SVC_F_PERSISTENT != 0;
    let mask = (persistent && s.netmask != full_netmask(s.af)).then(|| {
        if s.af == AF_INET6 {
            s.netmask.to_string()
        } else {
            // ipvsadm: inet_ntoa of the attribute's raw u32.
            Ipv4Addr::from(s.netmask.to_ne_bytes()).to_string()
        }
    });
    Svc {
        scheduler: s.scheduler.clone(),
        persistent: persistent.then_some(s.timeout),
        mask,
        one_packet: s.flags & IP_VS_SVC_F_ONEPACKET != 0,
        dests: BTreeMap::new(),
    }
}

fn dest_view(d: &Destination) -> (String, Dest) {
    (
        d.socket_addr().to_string(),
        Dest {
            forward: forward_name(d.fwd_method).to_string(),
            weight: d.weight,
        },
    )
}

/// The client's own view: `services()` and each one's `destinations()`.
fn client_table(ipvs: &mut IpvsClient) -> Table {
    let mut t = Table::new();
    for s in ipvs.services().expect("listing services") {
        assert!(
            s.flags & IP_VS_SVC_F_HASHED != 0,
            "a listed service is hashed: {s:?}"
        );
        let mut v = svc_view(&s);
        for d in ipvs.destinations(&s).expect("listing destinations") {
            let (k, dv) = dest_view(&d);
            v.dests.insert(k, dv);
        }
        assert!(t.insert(s.to_string(), v).is_none(), "{s} listed twice");
    }
    t
}

/// `ipvsadm -Ln` (or the client's `ipvsadm_listing()`): the version line, if any, and the table.
fn parse_list(text: &str) -> (Option<String>, Table) {
    let mut header = None;
    let mut t = Table::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let tok: Vec<&str> = line.split_whitespace().collect();
        if tok.is_empty() {
            continue;
        }
        if line.starts_with("IP Virtual Server version") {
            header = Some(line.trim().to_string());
            continue;
        }
        if line.starts_with("Prot ") || (tok[0] == "->" && tok[1] == "RemoteAddress:Port") {
            continue;
        }
        if tok[0] == "->" {
            assert!(tok.len() >= 4, "ipvsadm -Ln destination line {line:?}");
            let key = current
                .as_ref()
                .unwrap_or_else(|| panic!("destination before any service: {line:?}"));
            let dest = Dest {
                forward: tok[2].to_string(),
                weight: tok[3]
                    .parse()
                    .unwrap_or_else(|_| panic!("weight in {line:?}")),
            };
            t.get_mut(key)
                .unwrap()
                .dests
                .insert(tok[1].to_string(), dest);
            continue;
        }
        // PROT ADDR:PORT SCHED [persistent T [mask M]] [pe NAME] [ops]
        assert!(tok.len() >= 3, "ipvsadm -Ln service line {line:?}");
        let key = format!("{} {}", tok[0], tok[1]);
        let mut svc = Svc {
            scheduler: tok[2].to_string(),
            ..Svc::default()
        };
        let mut i = 3;
        while i < tok.len() {
            match tok[i] {
                "persistent" => {
                    svc.persistent = Some(tok[i + 1].parse().unwrap());
                    i += 2;
                }
                "mask" => {
                    svc.mask = Some(tok[i + 1].to_string());
                    i += 2;
                }
                "ops" => {
                    svc.one_packet = true;
                    i += 1;
                }
                other => panic!("unexpected {other:?} in ipvsadm -Ln line {line:?}"),
            }
        }
        assert!(t.insert(key.clone(), svc).is_none(), "{key} listed twice");
        current = Some(key);
    }
    (header, t)
}

/// `ipvsadm -Sn`: `-A -t ADDR:PORT -s SCHED [-p T [-M MASK]] [pe NAME] [ops]` and
/// `-a -t ADDR:PORT -r ADDR:PORT -m|-g|-i -w W [-x U -y L]`.
fn parse_save(text: &str) -> Table {
    let mut t = Table::new();
    for line in text.lines() {
        let tok: Vec<&str> = line.split_whitespace().collect();
        if tok.is_empty() {
            continue;
        }
        assert!(tok.len() >= 3, "ipvsadm -Sn line {line:?}");
        let key = match tok[1] {
            "-t" => format!("TCP {}", tok[2]),
            "-u" => format!("UDP {}", tok[2]),
            "--sctp-service" => format!("SCTP {}", tok[2]),
            "-f" => format!("FWM {}", tok[2]),
            other => panic!("unexpected {other:?} in ipvsadm -Sn line {line:?}"),
        };
        let mut i = 3;
        match tok[0] {
            "-A" => {
                let mut svc = Svc::default();
                while i < tok.len() {
                    match tok[i] {
                        "-s" => svc.scheduler = tok[i + 1].to_string(),
                        "-p" => svc.persistent = Some(tok[i + 1].parse().unwrap()),
                        "-M" => svc.mask = Some(tok[i + 1].to_string()),
                        "pe" => {}
                        "ops" | "-o" => {
                            svc.one_packet = true;
                            i += 1;
                            continue;
                        }
                        other => panic!("unexpected {other:?} in ipvsadm -Sn line {line:?}"),
                    }
                    i += 2;
                }
                assert!(t.insert(key.clone(), svc).is_none(), "{key} saved twice");
            }
            "-a" => {
                let mut addr = None;
                let mut dest = Dest {
                    forward: String::new(),
                    weight: 0,
                };
                while i < tok.len() {
                    let fwd = match tok[i] {
                        "-m" => "Masq",
                        "-g" => "Route",
                        "-i" => "Tunnel",
                        _ => "",
                    };
                    if !fwd.is_empty() {
                        dest.forward = fwd.to_string();
                        i += 1;
                        continue;
                    }
                    match tok[i] {
                        "-r" => addr = Some(tok[i + 1].to_string()),
                        "-w" => dest.weight = tok[i + 1].parse().unwrap(),
                        "-x" | "-y" => {}
                        other => panic!("unexpected {other:?} in ipvsadm -Sn line {line:?}"),
                    }
                    i += 2;
                }
                let svc = t
                    .get_mut(&key)
                    .unwrap_or_else(|| panic!("destination of an unsaved service: {line:?}"));
                svc.dests.insert(addr.expect("-r"), dest);
            }
            other => panic!("unexpected {other:?} in ipvsadm -Sn line {line:?}"),
        }
    }
    t
}

/// Each line without its trailing blanks (ipvsadm pads its columns).
fn trim_lines(s: &str) -> Vec<&str> {
    s.lines().map(str::trim_end).collect()
}

// ---------------------------------------------------------------------------------------------
// vm_ipvs_netlink_round_trip

/// The table the test expects, in the client's own types.
#[derive(Default)]
struct Model(BTreeMap<String, (Service, Vec<Destination>)>);

impl Model {
    fn add(&mut self, s: &Service) {
        self.0.insert(s.to_string(), (s.clone(), Vec::new()));
    }
    fn set(&mut self, s: &Service) {
        self.0.get_mut(&s.to_string()).unwrap().0 = s.clone();
    }
    fn remove(&mut self, s: &Service) {
        self.0.remove(&s.to_string());
    }
    fn set_dest(&mut self, s: &Service, d: &Destination) {
        let dests = &mut self.0.get_mut(&s.to_string()).unwrap().1;
        dests.retain(|x| x.socket_addr() != d.socket_addr());
        dests.push(d.clone());
    }
    fn remove_dest(&mut self, s: &Service, d: &Destination) {
        let dests = &mut self.0.get_mut(&s.to_string()).unwrap().1;
        dests.retain(|x| x.socket_addr() != d.socket_addr());
    }
    fn table(&self) -> Table {
        self.0
            .iter()
            .map(|(k, (s, ds))| {
                let mut v = svc_view(s);
                v.dests = ds.iter().map(dest_view).collect();
                (k.clone(), v)
            })
            .collect()
    }
    fn dest_count(&self) -> usize {
        self.0.values().map(|(_, d)| d.len()).sum()
    }
}

/// What one comparison of the client's and the kernel's views covered.
#[derive(Default)]
struct Checked {
    steps: usize,
    max_services: usize,
    max_dests: usize,
    ipvsadm_runs: usize,
    errors: usize,
}

/// Compares the four views of the table with `want` after `step`.
fn check(ipvs: &mut IpvsClient, want: &Model, step: &str, c: &mut Checked) {
    let want_table = want.table();
    let client = client_table(ipvs);
    let save_text = cmd("ipvsadm", &["-Sn"], "");
    let list_text = cmd("ipvsadm", &["-Ln"], "");
    c.ipvsadm_runs += 2;
    let saved = parse_save(&save_text);
    let (header, listed) = parse_list(&list_text);
    let ours_text = ipvs.ipvsadm_listing().expect("ipvsadm_listing");
    let (our_header, ours) = parse_list(&ours_text);
    let ctx = || {
        format!(
            "after step {step:?}\n--- ipvsadm -Sn\n{save_text}--- ipvsadm -Ln\n{list_text}\
             --- IpvsClient::ipvsadm_listing\n{ours_text}"
        )
    };
    assert_eq!(client, want_table, "the client's view, {}", ctx());
    assert_eq!(saved, want_table, "ipvsadm -Sn, {}", ctx());
    assert_eq!(listed, want_table, "ipvsadm -Ln, {}", ctx());
    assert_eq!(ours, want_table, "ipvsadm_listing(), {}", ctx());
    assert!(header.is_some(), "no version line, {}", ctx());
    assert_eq!(our_header, header, "the version line, {}", ctx());
    assert_eq!(
        trim_lines(&ours_text),
        trim_lines(&list_text),
        "ipvsadm_listing() is not ipvsadm -Ln's text, {}",
        ctx()
    );
    c.steps += 1;
    c.max_services = c.max_services.max(want.0.len());
    c.max_dests = c.max_dests.max(want.dest_count());
    println!(
        "  ok: {step} ({} services, {} destinations)",
        want.0.len(),
        want.dest_count()
    );
}

/// Asserts that `r` failed with `errno`, and that its message names the operation (`op`) and
/// says `why`.
fn expect_errno<T: std::fmt::Debug>(
    c: &mut Checked,
    r: Result<T, sluice_proxy_ipvs::Error>,
    errno: i32,
    op: &str,
    why: &str,
) {
    let e = r.expect_err(op);
    let msg = e.to_string();
    assert_eq!(e.errno(), Some(errno), "{op}: {msg}");
    assert!(
        msg.contains(op) && msg.contains(why) && msg.contains(&format!("errno {errno}")),
        "the message of {op} does not say {why:?}: {msg}"
    );
    println!("  ok: error {msg}");
    c.errors += 1;
}

fn round_trip() {
    let start = Instant::now();
    let mut ipvs = IpvsClient::connect().expect("connecting to IPVS in the new namespace");
    let info = ipvs.info().unwrap();
    println!(
        "IPVS {} (size={}), family id {}",
        info.version_string(),
        info.conn_tab_size,
        ipvs.family_id()
    );
    let mut c = Checked::default();
    let mut want = Model::default();
    check(&mut ipvs, &want, "fresh namespace: empty", &mut c);

    let vip: IpAddr = "10.96.0.10".parse().unwrap();
    let vip6: IpAddr = "fd00::10".parse().unwrap();
    // The VIP on the dummy link, as the mode binds it. Besides, a namespace with no IPv4
    // address at all has no local routing table yet, and the kernel then refuses every IPv4
    // destination with EINVAL (ip_vs_new_dest: inet_addr_type() is RTN_BROADCAST).
    let mut rtnl = Rtnl::open().unwrap();
    let link = rtnl.ensure_dummy(DUMMY_LINK).unwrap();
    rtnl.add_address(link, vip).unwrap();
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    let mut web = Service::new(vip, IPPROTO_TCP, 80, "rr");
    let mut dns = Service::new(vip, IPPROTO_UDP, 53, "rr");
    let mut web6 = Service::new(vip6, IPPROTO_TCP, 443, "rr");
    for s in [&web, &dns, &web6] {
        ipvs.add_service(s).unwrap();
        want.add(s);
    }
    check(
        &mut ipvs,
        &want,
        "add TCP, UDP and IPv6 services (rr)",
        &mut c,
    );

    let w1 = Destination::masq(ip("10.244.1.1"), 8080, 1);
    let w2 = Destination::masq(ip("10.244.1.2"), 8080, 2);
    let w3 = Destination::masq(ip("10.244.2.3"), 8080, 3);
    let d1 = Destination::masq(ip("10.244.1.1"), 53, 1);
    let d2 = Destination::masq(ip("10.244.2.3"), 5353, 1);
    let v1 = Destination::masq(ip("fd00::1:1"), 8443, 1);
    let v2 = Destination::masq(ip("fd00::2:1"), 8443, 2);
    for (s, d) in [
        (&web, &w3),
        (&web, &w1),
        (&web, &w2),
        (&dns, &d1),
        (&dns, &d2),
        (&web6, &v1),
        (&web6, &v2),
    ] {
        ipvs.add_destination(s, d).unwrap();
        want.set_dest(s, d);
    }
    check(&mut ipvs, &want, "add destinations (weights 1-3)", &mut c);

    web.scheduler = "lc".into();
    dns.scheduler = "sh".into();
    for s in [&web, &dns] {
        ipvs.update_service(s).unwrap();
        want.set(s);
    }
    check(
        &mut ipvs,
        &want,
        "scheduler TCP rr -> lc, UDP rr -> sh",
        &mut c,
    );

    web.scheduler = "mh".into();
    ipvs.update_service(&web).unwrap();
    want.set(&web);
    check(&mut ipvs, &want, "scheduler TCP lc -> mh", &mut c);

    web = web.persistent(300);
    dns = dns.persistent(60);
    web6 = web6.persistent(10800);
    for s in [&web, &dns, &web6] {
        ipvs.update_service(s).unwrap();
        want.set(s);
    }
    check(
        &mut ipvs,
        &want,
        "persistence 300 s / 60 s / 10800 s (IPv6)",
        &mut c,
    );
    // The netmask the kernel keeps is the full one the client sends, in either family.
    for s in [&web, &web6] {
        let got = ipvs.service(s).unwrap().expect("the service exists");
        assert_eq!(
            (got.netmask, got.timeout, got.flags & IP_VS_SVC_F_PERSISTENT),
            (full_netmask(s.af), s.timeout, IP_VS_SVC_F_PERSISTENT),
            "{s}: {got:?}"
        );
    }

    web = Service::new(vip, IPPROTO_TCP, 80, "mh");
    ipvs.update_service(&web).unwrap();
    want.set(&web);
    check(&mut ipvs, &want, "persistence off again (TCP)", &mut c);

    // Thresholds: ipvsadm shows them only with --thresholds.
    let w3t = Destination {
        upper_threshold: 100,
        lower_threshold: 10,
        ..w3.clone()
    };
    ipvs.update_destination(&web, &w3t).unwrap();
    want.set_dest(&web, &w3t);
    check(
        &mut ipvs,
        &want,
        "thresholds 100/10 on one destination",
        &mut c,
    );
    let th = cmd(
        "ipvsadm",
        &["-Ln", "--thresholds", "-t", "10.96.0.10:80"],
        "",
    );
    c.ipvsadm_runs += 1;
    let th_line = th
        .lines()
        .find(|l| l.contains("10.244.2.3:8080"))
        .unwrap_or_else(|| panic!("ipvsadm -Ln --thresholds:\n{th}"));
    let th_tok: Vec<&str> = th_line.split_whitespace().collect();
    assert_eq!(&th_tok[1..4], ["10.244.2.3:8080", "100", "10"], "{th}");
    let got = ipvs
        .destinations(&web)
        .unwrap()
        .into_iter()
        .find(|d| d.socket_addr() == w3.socket_addr())
        .unwrap();
    assert_eq!((got.upper_threshold, got.lower_threshold), (100, 10));

    let drained = Destination {
        weight: 0,
        ..w2.clone()
    };
    ipvs.update_destination(&web, &drained).unwrap();
    want.set_dest(&web, &drained);
    check(&mut ipvs, &want, "drain 10.244.1.2:8080 (weight 0)", &mut c);

    let heavier = Destination {
        weight: 7,
        ..v1.clone()
    };
    ipvs.update_destination(&web6, &heavier).unwrap();
    want.set_dest(&web6, &heavier);
    check(&mut ipvs, &want, "weight 1 -> 7 (IPv6)", &mut c);

    ipvs.delete_destination(&web, &w2).unwrap();
    want.remove_dest(&web, &w2);
    check(
        &mut ipvs,
        &want,
        "delete destination 10.244.1.2:8080",
        &mut c,
    );

    ipvs.delete_service(&dns).unwrap();
    want.remove(&dns);
    check(
        &mut ipvs,
        &want,
        "delete the UDP service (and its destinations)",
        &mut c,
    );

    // The error path: each error names the request and says why; the table is unchanged.
    expect_errno(
        &mut c,
        ipvs.delete_service(&dns),
        ESRCH,
        "deleting IPVS service UDP 10.96.0.10:53",
        "no such virtual server",
    );
    expect_errno(
        &mut c,
        ipvs.update_service(&dns),
        ESRCH,
        "updating IPVS service UDP 10.96.0.10:53",
        "no such virtual server",
    );
    expect_errno(
        &mut c,
        ipvs.add_service(&web),
        EEXIST,
        "adding IPVS service TCP 10.96.0.10:80",
        "already exists",
    );
    expect_errno(
        &mut c,
        ipvs.add_destination(&web, &w1),
        EEXIST,
        "adding destination 10.244.1.1:8080 to IPVS service TCP 10.96.0.10:80",
        "already exists",
    );
    expect_errno(
        &mut c,
        ipvs.delete_destination(&web, &w2),
        ENOENT,
        "deleting destination 10.244.1.2:8080 of IPVS service TCP 10.96.0.10:80",
        "not found (no such destination",
    );
    expect_errno(
        &mut c,
        ipvs.update_destination(&web, &w2),
        ENOENT,
        "setting destination 10.244.1.2:8080 of IPVS service TCP 10.96.0.10:80",
        "not found (no such destination",
    );
    expect_errno(
        &mut c,
        ipvs.add_service(&Service::new(vip, IPPROTO_TCP, 8081, "no-such")),
        ENOENT,
        "adding IPVS service TCP 10.96.0.10:8081 (no-such)",
        "no such scheduler",
    );
    assert_eq!(
        ipvs.service(&dns).unwrap(),
        None,
        "service() of a missing one"
    );
    assert_eq!(
        ipvs.destinations(&dns).unwrap(),
        vec![],
        "destinations() of a missing service"
    );
    check(
        &mut ipvs,
        &want,
        "after the failed requests: unchanged",
        &mut c,
    );

    // A service as listed (the kernel's IP_VS_SVC_F_HASHED set) can be created again as it is.
    let listed = ipvs.service(&web6).unwrap().unwrap();
    assert!(listed.flags & IP_VS_SVC_F_HASHED != 0, "{listed:?}");
    ipvs.delete_service(&web6).unwrap();
    ipvs.add_service(&listed).unwrap();
    for d in [&heavier, &v2] {
        ipvs.add_destination(&listed, d).unwrap();
    }
    check(
        &mut ipvs,
        &want,
        "re-create the IPv6 service from its listing",
        &mut c,
    );
    ipvs.update_service(&listed).unwrap();
    check(
        &mut ipvs,
        &want,
        "update the IPv6 service with its listing",
        &mut c,
    );

    for s in [&web, &web6] {
        ipvs.delete_service(s).unwrap();
        want.remove(s);
    }
    check(&mut ipvs, &want, "delete the remaining services", &mut c);

    // client::selftest, each step compared with ipvsadm -Ln.
    let mut selftest_steps = 0;
    let listings = client::selftest(ip("10.96.0.50"), 8080, |step, text| {
        let list = cmd("ipvsadm", &["-Ln"], "");
        let kernel: Vec<&str> = trim_lines(&list).into_iter().skip(1).collect();
        assert_eq!(
            trim_lines(text),
            kernel,
            "selftest step {step:?}:\n{text}--- ipvsadm -Ln\n{list}"
        );
        selftest_steps += 1;
    })
    .expect("client::selftest");
    c.ipvsadm_runs += selftest_steps;
    assert_eq!(listings.len(), selftest_steps);
    assert!(client_table(&mut ipvs).is_empty());

    println!(
        "ipvs netlink round trip: {} steps checked against ipvsadm -Sn and -Ln (up to {} \
         services, {} destinations; TCP, UDP, IPv6; rr/lc/sh/mh; persistence; thresholds; \
         drain; deletes), {} error cases, client::selftest {selftest_steps} steps; \
         {} ipvsadm runs, {:.2} s",
        c.steps,
        c.max_services,
        c.max_dests,
        c.errors,
        c.ipvsadm_runs,
        start.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// vm_ipvs_schedulers

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const DIRECTOR: &str = "sluice-dir";
const CLIENT: &str = "sluice-cl";
const BACKENDS: [&str; 4] = ["sluice-b1", "sluice-b2", "sluice-b3", "sluice-b4"];
const N: usize = BACKENDS.len();
/// Source addresses on the client's interface.
const CLIENTS: usize = 24;
const SH_PORT: u16 = 80;
const MH_PORT: u16 = 81;
const RR_PORT: u16 = 82;

fn backend_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 0, 2 + i as u8)
}

fn client_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 20, 0, 100 + i as u8)
}

fn backend_name(i: usize) -> String {
    format!("backend-{}", i + 1)
}

fn schedulers() {
    let start = Instant::now();
    // Topology: director ── bridge ── 4 backends; director ── veth ── client (24 addresses).
    for ns in BACKENDS.iter().chain(&[DIRECTOR, CLIENT]) {
        netns_add(ns);
    }
    let mut dir = format!(
        "link set lo up\n\
         link add sluice-ipvs0 type dummy\n\
         addr add {VIP}/32 dev sluice-ipvs0\n\
         link set sluice-ipvs0 up\n\
         link add sluice-br0 type bridge\n\
         addr add 10.10.0.1/24 dev sluice-br0\n\
         link set sluice-br0 up\n\
         link add vcl type veth peer name eth0 netns {CLIENT}\n\
         addr add 10.20.0.1/24 dev vcl\n\
         link set vcl up\n"
    );
    for (i, ns) in BACKENDS.iter().enumerate() {
        dir.push_str(&format!(
            "link add vb{i} type veth peer name eth0 netns {ns}\n\
             link set vb{i} master sluice-br0\n\
             link set vb{i} up\n"
        ));
    }
    cmd("ip", &["-n", DIRECTOR, "-batch", "-"], &dir);
    for (i, ns) in BACKENDS.iter().enumerate() {
        cmd(
            "ip",
            &["-n", ns, "-batch", "-"],
            &format!(
                "link set lo up\naddr add {}/24 dev eth0\nlink set eth0 up\n\
                 route add default via 10.10.0.1\n",
                backend_addr(i)
            ),
        );
    }
    let mut cl = String::from("link set lo up\naddr add 10.20.0.2/24 dev eth0\n");
    for i in 0..CLIENTS {
        cl.push_str(&format!("addr add {}/24 dev eth0\n", client_addr(i)));
    }
    cl.push_str("link set eth0 up\nroute add default via 10.20.0.1\n");
    cmd("ip", &["-n", CLIENT, "-batch", "-"], &cl);
    in_ns(DIRECTOR, || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .unwrap()
                .trim(),
            "1"
        );
    });
    for (i, ns) in BACKENDS.iter().enumerate() {
        serve(
            ns,
            SocketAddrV4::new(backend_addr(i), 8080),
            backend_name(i),
        );
    }

    // IPVS, programmed with the client: one virtual server per scheduler, masquerading to all
    // four backends.
    let dests: Vec<Destination> = (0..N)
        .map(|i| Destination::masq(backend_addr(i).into(), 8080, 1))
        .collect();
    let svc = |port: u16, sched: &str| Service::new(VIP.into(), IPPROTO_TCP, port, sched);
    let mh = svc(MH_PORT, "mh");
    let programmed = {
        let (sh, mh, rr, dests) = (
            svc(SH_PORT, "sh"),
            mh.clone(),
            svc(RR_PORT, "rr"),
            dests.clone(),
        );
        in_ns(DIRECTOR, move || {
            let mut ipvs = IpvsClient::connect().unwrap();
            for s in [&sh, &mh, &rr] {
                ipvs.add_service(s).unwrap();
                for d in &dests {
                    ipvs.add_destination(s, d).unwrap();
                }
            }
            cmd("ipvsadm", &["-Ln"], "")
        })
    };
    println!("{}", programmed.trim_end());
    let setup = start.elapsed();

    // (a) sh: one client address always lands on one backend; different ones are spread.
    let t = Instant::now();
    let one = probe(vec![client_addr(0); 20], SH_PORT);
    let first = &one[0];
    assert!(
        first.starts_with("backend-") && one.iter().all(|r| r == first),
        "sh: 20 connections from {} went to {one:?}",
        client_addr(0)
    );
    let spread_from: Vec<Ipv4Addr> = (0..8).map(client_addr).collect();
    let mut plan = Vec::new();
    for _ in 0..3 {
        plan.extend(&spread_from);
    }
    let replies = probe(plan.clone(), SH_PORT);
    let mut per_client: BTreeMap<Ipv4Addr, BTreeSet<String>> = BTreeMap::new();
    for (src, r) in plan.iter().zip(&replies) {
        per_client.entry(*src).or_default().insert(r.clone());
    }
    for (src, got) in &per_client {
        assert_eq!(got.len(), 1, "sh: {src} went to {got:?}");
    }
    let sh_map: BTreeMap<Ipv4Addr, String> = per_client
        .iter()
        .map(|(k, v)| (*k, v.iter().next().unwrap().clone()))
        .collect();
    let sh_backends: BTreeSet<&String> = sh_map.values().collect();
    assert!(
        sh_map.values().all(|b| b.starts_with("backend-")),
        "sh: {sh_map:?}"
    );
    assert!(
        sh_backends.len() >= 2,
        "sh: 8 client addresses all on one backend: {sh_map:?}"
    );
    assert_eq!(
        sh_map[&client_addr(0)],
        *first,
        "sh: {} moved",
        client_addr(0)
    );
    println!(
        "sh: 20/20 connections from {} on {first}; 8 addresses x 3 connections each sticky, \
         spread over {} backends: {:?} ({:.2} s)",
        client_addr(0),
        sh_backends.len(),
        counts(sh_map.values()),
        t.elapsed().as_secs_f64()
    );

    // (b) mh: every client on one backend; deleting a destination moves its clients only.
    let t = Instant::now();
    let all: Vec<Ipv4Addr> = (0..CLIENTS).map(client_addr).collect();
    let before = probe(all.clone(), MH_PORT);
    let again = probe(all.clone(), MH_PORT);
    assert_eq!(before, again, "mh: a client changed backend with no change");
    assert!(
        before.iter().all(|r| r.starts_with("backend-")),
        "mh: {before:?}"
    );
    let before_counts = counts(before.iter());
    // Remove the busiest backend (the move is then the largest).
    let (removed_name, removed_clients) = before_counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(b, n)| (b.clone(), *n))
        .unwrap();
    let removed = (0..N).find(|i| backend_name(*i) == removed_name).unwrap();
    {
        let (mh, d) = (mh.clone(), dests[removed].clone());
        in_ns(DIRECTOR, move || {
            IpvsClient::connect()
                .unwrap()
                .delete_destination(&mh, &d)
                .unwrap()
        });
    }
    let after = probe(all.clone(), MH_PORT);
    let mut moved_removed = 0;
    let mut moved_others = Vec::new();
    for ((src, b), a) in all.iter().zip(&before).zip(&after) {
        assert!(
            a.starts_with("backend-") && *a != removed_name,
            "mh: {src} went to {a:?} after {removed_name} was deleted"
        );
        if *b == removed_name {
            moved_removed += 1;
        } else if a != b {
            moved_others.push(format!("{src}: {b} -> {a}"));
        }
    }
    let others = CLIENTS - removed_clients;
    let moved = moved_removed + moved_others.len();
    let fraction = moved as f64 / CLIENTS as f64;
    println!(
        "mh: {CLIENTS} clients {before_counts:?}; deleted {removed_name} ({removed_clients} \
         clients): {moved}/{CLIENTS} moved = {fraction:.3} (1/N = {:.3}): its {moved_removed} \
         and {} of the other {others} {moved_others:?}; after {:?} ({:.2} s)",
        1.0 / N as f64,
        moved_others.len(),
        counts(after.iter()),
        t.elapsed().as_secs_f64()
    );
    assert_eq!(moved_removed, removed_clients);
    assert!(
        moved_others.len() <= 1,
        "mh: more than one client of the surviving backends moved: {moved_others:?}"
    );
    assert!(
        (moved_others.len() as f64) <= others as f64 / N as f64,
        "mh: the surviving backends' clients moved more than 1/N: {moved_others:?}"
    );

    // (c) rr: 40 connections, from rotating source addresses, exactly 10 per backend.
    let t = Instant::now();
    let plan: Vec<Ipv4Addr> = (0..40).map(|i| client_addr(i % 4)).collect();
    let replies = probe(plan, RR_PORT);
    let rr_counts = counts(replies.iter());
    println!(
        "rr: 40 connections: {rr_counts:?} ({:.2} s)",
        t.elapsed().as_secs_f64()
    );
    let want: BTreeMap<String, usize> = (0..N).map(|i| (backend_name(i), 40 / N)).collect();
    assert_eq!(rr_counts, want, "rr over {N} backends, 40 connections");

    let listed = in_ns(DIRECTOR, || cmd("ipvsadm", &["-Ln"], ""));
    println!("{}", listed.trim_end());
    println!(
        "ipvs schedulers: sh sticky and spread, mh remap {fraction:.3} (1/N {:.3}), rr even; \
         setup {:.2} s, total {:.2} s",
        1.0 / N as f64,
        setup.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}

fn counts<'a>(it: impl Iterator<Item = &'a String>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for s in it {
        *m.entry(s.clone()).or_insert(0) += 1;
    }
    m
}

// ---------------------------------------------------------------------------------------------
// Namespaces, servers and clients as threads (an exec costs ~80 ms under TCG).

/// One connection from the client namespace per entry of `sources`, bound to that source
/// address, to VIP:`port`, one after the other: each reply (or the error, as text).
fn probe(sources: Vec<Ipv4Addr>, port: u16) -> Vec<String> {
    in_ns(CLIENT, move || {
        let target = SocketAddrV4::new(VIP, port);
        sources
            .iter()
            .map(|src| {
                connect_from(*src, target).unwrap_or_else(|e| format!("error from {src}: {e}"))
            })
            .collect()
    })
}

/// A TCP connection from `src` (any port) to `dst`: what the server sends before closing.
/// SO_LINGER 0 closes with a reset, so no TIME_WAIT is left behind; timeouts 5 s.
fn connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> std::io::Result<String> {
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(
        &fd,
        sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )?;
    // A blocking connect() gives up after SO_SNDTIMEO.
    socket::setsockopt(&fd, sockopt::SendTimeout, &TimeVal::new(5, 0))?;
    socket::bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0)))?;
    socket::connect(fd.as_raw_fd(), &SockaddrIn::from(dst))?;
    let mut s = TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf)
}
