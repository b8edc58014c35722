//! The dataplane over an in-memory kernel that answers as IPVS does (`EEXIST`, `ESRCH`,
//! `ENOENT`) and logs every change.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_proxy::model::{NamespacedName, ServicePort, ServicePortName};
use sluice_proxy::scenarios::{self, ep, spn, NODE, NODE_IP};

use super::*;
use crate::netlink::{Destination, IPPROTO_TCP, IPPROTO_UDP};
use crate::plan::Config;

type Key = (u32, u16, IpAddr, u16);

fn key(s: &Service) -> Key {
    (s.fwmark, s.protocol, s.addr, s.port)
}

#[derive(Default)]
struct World {
    services: BTreeMap<Key, (Service, BTreeMap<SocketAddr, Destination>)>,
    link: Option<u32>,
    addresses: BTreeSet<IpAddr>,
    nft: Vec<String>,
    /// Changes, in order.
    log: Vec<String>,
    /// Fail the change whose log line starts with this.
    fail: Option<String>,
}

impl World {
    fn change(&mut self, line: String) -> Result<(), Error> {
        if self.fail.as_deref().is_some_and(|f| line.starts_with(f)) {
            return Err(Error::Kernel {
                op: line,
                errno: libc::ENOENT,
            });
        }
        self.log.push(line);
        Ok(())
    }

    fn dest_mut(&mut self, s: &Service, d: &Destination) -> Option<&mut Destination> {
        self.services
            .get_mut(&key(s))
            .and_then(|(_, ds)| ds.get_mut(&d.socket_addr()))
    }
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<World>>);

impl Fake {
    fn w(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().unwrap()
    }

    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.w().log)
    }

    fn set_conns(&self, fe: &str, dest: &str, active: u32, inactive: u32) {
        let (proto, addr) = fe.split_once(' ').unwrap();
        let a: SocketAddr = addr.parse().unwrap();
        let p = if proto == "TCP" {
            IPPROTO_TCP
        } else {
            IPPROTO_UDP
        };
        let s = Service::new(a.ip(), p, a.port(), "");
        let d: SocketAddr = dest.parse().unwrap();
        let mut w = self.w();
        let x = w
            .dest_mut(&s, &Destination::masq(d.ip(), d.port(), 0))
            .unwrap();
        x.active_conns = active;
        x.inactive_conns = inactive;
    }

    /// Sluice-independent text of the IPVS table.
    fn table(&self) -> String {
        let w = self.w();
        let t: Vec<(Service, Vec<Destination>)> = w
            .services
            .values()
            .map(|(s, d)| (s.clone(), d.values().cloned().collect()))
            .collect();
        crate::client::ipvsadm_text(None, &t)
    }
}

fn kernel_err(op: String, errno: i32) -> Error {
    Error::Kernel { op, errno }
}

impl Kernel for Fake {
    fn services(&mut self) -> Result<Vec<Service>, Error> {
        Ok(self.w().services.values().map(|(s, _)| s.clone()).collect())
    }

    fn destinations(&mut self, svc: &Service) -> Result<Vec<Destination>, Error> {
        Ok(self
            .w()
            .services
            .get(&key(svc))
            .map(|(_, d)| d.values().cloned().collect())
            .unwrap_or_default())
    }

    fn add_service(&mut self, svc: &Service) -> Result<(), Error> {
        let mut w = self.w();
        let line = format!("add service {svc} {}", svc.scheduler);
        if w.services.contains_key(&key(svc)) {
            return Err(kernel_err(line, libc::EEXIST));
        }
        w.change(line)?;
        let mut s = svc.clone();
        s.flags |= crate::netlink::IP_VS_SVC_F_HASHED;
        w.services.insert(key(svc), (s, BTreeMap::new()));
        Ok(())
    }

    fn update_service(&mut self, svc: &Service) -> Result<(), Error> {
        let mut w = self.w();
        let line = format!("update service {svc} {}", svc.scheduler);
        if !w.services.contains_key(&key(svc)) {
            return Err(kernel_err(line, libc::ESRCH));
        }
        w.change(line)?;
        let e = w.services.get_mut(&key(svc)).unwrap();
        e.0.scheduler = svc.scheduler.clone();
        e.0.flags = svc.flags | crate::netlink::IP_VS_SVC_F_HASHED;
        e.0.timeout = svc.timeout;
        Ok(())
    }

    fn delete_service(&mut self, svc: &Service) -> Result<(), Error> {
        let mut w = self.w();
        let line = format!("delete service {svc}");
        if !w.services.contains_key(&key(svc)) {
            return Err(kernel_err(line, libc::ESRCH));
        }
        w.change(line)?;
        w.services.remove(&key(svc));
        Ok(())
    }

    fn add_destination(&mut self, svc: &Service, dest: &Destination) -> Result<(), Error> {
        let mut w = self.w();
        let line = format!("add dest {svc} -> {} w{}", dest.socket_addr(), dest.weight);
        let Some((_, ds)) = w.services.get(&key(svc)) else {
            return Err(kernel_err(line, libc::ESRCH));
        };
        if ds.contains_key(&dest.socket_addr()) {
            return Err(kernel_err(line, libc::EEXIST));
        }
        w.change(line)?;
        w.services
            .get_mut(&key(svc))
            .unwrap()
            .1
            .insert(dest.socket_addr(), dest.clone());
        Ok(())
    }

    fn update_destination(&mut self, svc: &Service, dest: &Destination) -> Result<(), Error> {
        let mut w = self.w();
        let line = format!("set dest {svc} -> {} w{}", dest.socket_addr(), dest.weight);
        if w.dest_mut(svc, dest).is_none() {
            return Err(kernel_err(line, libc::ENOENT));
        }
        w.change(line)?;
        let d = w.dest_mut(svc, dest).unwrap();
        d.weight = dest.weight;
        d.fwd_method = dest.fwd_method;
        Ok(())
    }

    fn delete_destination(&mut self, svc: &Service, dest: &Destination) -> Result<(), Error> {
        let mut w = self.w();
        let line = format!("delete dest {svc} -> {}", dest.socket_addr());
        if w.dest_mut(svc, dest).is_none() {
            return Err(kernel_err(line, libc::ENOENT));
        }
        w.change(line)?;
        w.services
            .get_mut(&key(svc))
            .unwrap()
            .1
            .remove(&dest.socket_addr());
        Ok(())
    }

    fn link(&mut self) -> Result<Option<u32>, Error> {
        Ok(self.w().link)
    }

    fn ensure_link(&mut self) -> Result<u32, Error> {
        let mut w = self.w();
        if w.link.is_none() {
            w.change("create link".into())?;
            w.link = Some(42);
        }
        Ok(42)
    }

    fn delete_link(&mut self) -> Result<(), Error> {
        let mut w = self.w();
        if w.link.take().is_some() {
            w.addresses.clear();
            w.change("delete link".into())?;
        }
        Ok(())
    }

    fn link_addresses(&mut self, index: u32) -> Result<Vec<IpAddr>, Error> {
        assert_eq!(index, 42);
        Ok(self.w().addresses.iter().copied().collect())
    }

    fn add_address(&mut self, index: u32, ip: IpAddr) -> Result<(), Error> {
        assert_eq!(index, 42);
        let mut w = self.w();
        w.change(format!("bind {ip}"))?;
        w.addresses.insert(ip);
        Ok(())
    }

    fn delete_address(&mut self, index: u32, ip: IpAddr) -> Result<(), Error> {
        assert_eq!(index, 42);
        let mut w = self.w();
        w.change(format!("unbind {ip}"))?;
        w.addresses.remove(&ip);
        Ok(())
    }

    fn nft(&mut self, script: &str) -> Result<(), Error> {
        let mut w = self.w();
        let first = script.lines().next().unwrap_or("").to_string();
        w.change(format!("nft {first}"))?;
        w.nft.push(script.to_string());
        Ok(())
    }
}

fn cfg() -> Config {
    let mut c = Config::new(NODE);
    c.node.node_ips = vec![scenarios::ip(NODE_IP)];
    c.node.cluster_cidr = Some("10.244.0.0/16".parse().unwrap());
    c
}

/// A dataplane over `fake` with a clock the test moves.
fn dataplane(fake: &Fake) -> (IpvsDataplane, Arc<AtomicU64>) {
    let secs = Arc::new(AtomicU64::new(100));
    let s = secs.clone();
    let dp = IpvsDataplane::with_clock(
        cfg(),
        Box::new(fake.clone()),
        Box::new(move || Duration::from_secs(s.load(Ordering::SeqCst))),
    );
    (dp, secs)
}

fn full() -> Changes {
    scenarios::full()
}

fn partial(names: &[&str]) -> Changes {
    Changes {
        services: names
            .iter()
            .map(|n| NamespacedName::new("default", *n))
            .collect(),
        ..Changes::default()
    }
}

#[test]
fn first_sync_then_a_restart_changes_nothing() {
    let fake = Fake::default();
    let (s, e) = scenarios::scenario("etp_local_with_local_endpoints");
    let (mut dp, _) = dataplane(&fake);
    dp.sync(&s, &e, &full()).unwrap();
    let log = fake.take_log();
    assert_eq!(log[0], "create link");
    assert!(log[1].starts_with("nft table ip sluice-ipvs {"), "{log:?}");
    assert_eq!(
        fake.table(),
        "Prot LocalAddress:Port Scheduler Flags\n  \
         -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n\
         TCP  10.96.0.10:80 rr\n  \
         -> 10.244.1.1:8080              Masq    1      0          0         \n  \
         -> 10.244.2.1:8080              Masq    1      0          0         \n\
         TCP  192.168.1.10:30080 rr\n  \
         -> 10.244.1.1:8080              Masq    1      0          0         \n\
         TCP  198.51.100.7:80 rr\n  \
         -> 10.244.1.1:8080              Masq    1      0          0         \n\
         TCP  203.0.113.10:80 rr\n  \
         -> 10.244.1.1:8080              Masq    1      0          0         \n"
    );
    assert_eq!(
        fake.w().addresses,
        ["10.96.0.10", "198.51.100.7", "203.0.113.10"]
            .map(scenarios::ip)
            .into()
    );
    assert!(dp.knows_kernel_state());
    drop(dp);

    // A new agent over the same kernel: the table is rewritten (one atomic transaction, same
    // content), IPVS and the link are left alone.
    let (mut dp2, _) = dataplane(&fake);
    dp2.sync(&s, &e, &full()).unwrap();
    assert_eq!(fake.take_log(), ["nft table ip sluice-ipvs {"]);
    // A partial sync with nothing changed for the named service writes nothing.
    dp2.sync(&s, &e, &partial(&["web"])).unwrap();
    assert_eq!(fake.take_log(), Vec::<String>::new());
}

#[test]
fn foreign_virtual_servers_survive_syncs_and_cleanup() {
    let fake = Fake::default();
    let mut other = fake.clone();
    let dns = Service::new(scenarios::ip("192.0.2.53"), IPPROTO_UDP, 53, "wlc");
    other.add_service(&dns).unwrap();
    other
        .add_destination(&dns, &Destination::masq(scenarios::ip("192.0.2.54"), 53, 5))
        .unwrap();
    let on_node = Service::new(scenarios::ip(NODE_IP), IPPROTO_TCP, 443, "rr");
    other.add_service(&on_node).unwrap();
    fake.take_log();
    let (s, e) = scenarios::scenario("nodeport");
    let (mut dp, _) = dataplane(&fake);
    dp.sync(&s, &e, &full()).unwrap();
    assert!(!fake
        .take_log()
        .iter()
        .any(|l| l.contains("192.0.2.53") || l.contains(":443")));
    dp.cleanup().unwrap();
    let log = fake.take_log();
    assert_eq!(
        log,
        [
            "delete service TCP 10.96.0.10:80",
            "delete service TCP 192.168.1.10:30080",
            "delete link",
            "nft add table ip sluice-ipvs",
        ]
    );
    let w = fake.w();
    assert_eq!(w.services.len(), 2, "foreign services stay");
    assert!(w
        .nft
        .last()
        .unwrap()
        .contains("delete table ip sluice-ipvs"));
}

#[test]
fn a_partial_sync_adds_first_drains_busy_ones_and_the_drain_check_finishes() {
    let fake = Fake::default();
    let (s, mut e) = scenarios::scenario("clusterip_three_endpoints");
    let (mut dp, clock) = dataplane(&fake);
    dp.sync(&s, &e, &full()).unwrap();
    fake.take_log();
    fake.set_conns("TCP 10.96.0.10:80", "10.244.2.1:8080", 1, 0);
    e.insert(
        spn("web"),
        vec![ep("10.244.1.1", true), ep("10.244.9.9", false)],
    );
    dp.sync(&s, &e, &partial(&["web"])).unwrap();
    assert_eq!(
        fake.take_log(),
        [
            "add dest TCP 10.96.0.10:80 -> 10.244.9.9:8080 w1",
            "set dest TCP 10.96.0.10:80 -> 10.244.2.1:8080 w0",
            "delete dest TCP 10.96.0.10:80 -> 10.244.3.1:8080",
        ]
    );
    // Still busy.
    clock.fetch_add(30, Ordering::SeqCst);
    assert_eq!(dp.drain_now().unwrap(), 0);
    // Idle now: the drain check deletes it.
    fake.set_conns("TCP 10.96.0.10:80", "10.244.2.1:8080", 0, 0);
    assert_eq!(dp.drain_now().unwrap(), 1);
    assert_eq!(
        fake.take_log(),
        ["delete dest TCP 10.96.0.10:80 -> 10.244.2.1:8080"]
    );
    assert!(dp.current().draining.is_empty());
    assert_eq!(dp.drain_now().unwrap(), 0);
}

#[test]
fn a_busy_drained_destination_goes_after_the_timeout() {
    let fake = Fake::default();
    let (s, mut e) = scenarios::scenario("clusterip_three_endpoints");
    let (mut dp, clock) = dataplane(&fake);
    dp.sync(&s, &e, &full()).unwrap();
    fake.set_conns("TCP 10.96.0.10:80", "10.244.3.1:8080", 0, 4);
    e.insert(
        spn("web"),
        vec![ep("10.244.1.1", true), ep("10.244.2.1", false)],
    );
    dp.sync(&s, &e, &partial(&["web"])).unwrap();
    fake.take_log();
    clock.fetch_add(cfg().drain_timeout.as_secs() - 1, Ordering::SeqCst);
    assert_eq!(dp.drain_now().unwrap(), 0);
    clock.fetch_add(1, Ordering::SeqCst);
    assert_eq!(dp.drain_now().unwrap(), 1);
    assert_eq!(
        fake.take_log(),
        ["delete dest TCP 10.96.0.10:80 -> 10.244.3.1:8080"]
    );
}

#[test]
fn one_failed_operation_does_not_stop_the_others_and_the_next_sync_retries() {
    let fake = Fake::default();
    let (mut s, mut e) = scenarios::scenario("clusterip_three_endpoints");
    let other = ServicePortName::new("default", "api", "http", sluice_proxy::model::Protocol::Tcp);
    s.insert(
        other.clone(),
        Arc::new(ServicePort {
            cluster_ips: vec![scenarios::ip("10.96.0.11")],
            ..scenarios::cluster_ip()
        }),
    );
    e.insert(other.clone(), vec![ep("10.244.5.5", false)]);
    fake.w().fail = Some("add service TCP 10.96.0.11:80".into());
    let (mut dp, _) = dataplane(&fake);
    let err = dp.sync(&s, &e, &full()).unwrap_err().to_string();
    assert!(err.contains("add service TCP 10.96.0.11:80"), "{err}");
    assert!(!dp.knows_kernel_state());
    let log = fake.take_log();
    assert!(
        log.contains(&"add service TCP 10.96.0.10:80 rr".to_string()),
        "{log:?}"
    );
    assert!(
        !log.iter()
            .any(|l| l.starts_with("add dest TCP 10.96.0.11:80")),
        "{log:?}"
    );
    assert!(log.contains(&"bind 10.96.0.10".to_string()), "{log:?}");
    // Fixed: the next sync (partial as asked, full because the last failed) converges.
    fake.w().fail = None;
    dp.sync(&s, &e, &partial(&["web"])).unwrap();
    assert_eq!(
        fake.take_log(),
        [
            "nft table ip sluice-ipvs {",
            "add service TCP 10.96.0.11:80 rr",
            "add dest TCP 10.96.0.11:80 -> 10.244.5.5:8080 w1",
        ]
    );
    assert!(dp.knows_kernel_state());
}

#[test]
fn a_table_nft_refuses_is_replaced_in_one_transaction() {
    let fake = Fake::default();
    let (s, e) = scenarios::scenario("nodeport");
    fake.w().fail = Some("nft table ip sluice-ipvs {".into());
    let (mut dp, _) = dataplane(&fake);
    dp.sync(&s, &e, &full()).unwrap();
    let w = fake.w();
    assert_eq!(w.nft.len(), 1);
    assert!(w.nft[0].starts_with(
        "add table ip sluice-ipvs\ndelete table ip sluice-ipvs\ntable ip sluice-ipvs {"
    ));
}

#[test]
fn service_removal_unbinds_after_deleting() {
    let fake = Fake::default();
    let (mut s, mut e) = scenarios::scenario("etp_local_without_local_endpoints");
    let (mut dp, _) = dataplane(&fake);
    dp.sync(&s, &e, &full()).unwrap();
    fake.take_log();
    s.clear();
    e.clear();
    dp.sync(&s, &e, &partial(&["web"])).unwrap();
    let log = fake.take_log();
    assert_eq!(log[0], "nft delete element ip sluice-ipvs cluster-ips {");
    assert_eq!(
        &log[1..],
        [
            "delete service TCP 10.96.0.10:80",
            "delete service TCP 192.168.1.10:30080",
            "delete service TCP 198.51.100.7:80",
            "delete service TCP 203.0.113.10:80",
            "unbind 10.96.0.10",
            "unbind 198.51.100.7",
            "unbind 203.0.113.10",
        ]
    );
    assert!(fake.w().services.is_empty());
}
