//! [`IpvsClient`]: the kernel's IPVS table over generic netlink, one blocking request at a
//! time (the messages are [`crate::netlink`]'s).
//!
//! ```no_run
//! use sluice_proxy_ipvs::client::IpvsClient;
//! use sluice_proxy_ipvs::netlink::{Destination, Service, IPPROTO_TCP};
//!
//! let mut ipvs = IpvsClient::connect()?;
//! let svc = Service::new("10.96.0.10".parse().unwrap(), IPPROTO_TCP, 80, "rr");
//! ipvs.add_service(&svc)?;
//! ipvs.add_destination(&svc, &Destination::masq("10.244.1.1".parse().unwrap(), 8080, 1))?;
//! for s in ipvs.services()? {
//!     println!("{s}: {:?}", ipvs.destinations(&s)?);
//! }
//! ipvs.delete_service(&svc)?;
//! # Ok::<(), sluice_proxy_ipvs::Error>(())
//! ```

use std::fmt::Write as _;

use netlink_packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_sys::protocols::NETLINK_GENERIC;

use crate::error::{Error, Result};
use crate::netlink::{
    encode_request, protocol_name, Destination, Info, IpvsMessage, Service, FAMILY_NAME,
    IP_VS_CONN_F_DROUTE, IP_VS_CONN_F_FWD_MASK, IP_VS_CONN_F_LOCALNODE, IP_VS_CONN_F_TUNNEL,
    IP_VS_SVC_F_ONEPACKET, IP_VS_SVC_F_PERSISTENT,
};
use crate::nl::Conn;

/// A generic netlink socket bound to the IPVS family of the caller's network namespace.
pub struct IpvsClient {
    conn: Conn,
    family: u16,
}

/// The id of generic netlink family `name` (`CTRL_CMD_GETFAMILY`); `ENOENT` = no such family.
fn resolve_family(conn: &mut Conn, name: &str) -> Result<u16> {
    let mut genl = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(name.to_owned())],
    });
    genl.finalize();
    let mut msg = NetlinkMessage::from(genl);
    msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    msg.header.sequence_number = conn.next_seq();
    msg.finalize();
    let replies = conn.transact(&msg, &|| {
        format!("looking up generic netlink family {name}")
    })?;
    replies
        .iter()
        .flat_map(|r| r.payload.nlas.iter())
        .find_map(|a| match a {
            GenlCtrlAttrs::FamilyId(id) => Some(*id),
            _ => None,
        })
        .ok_or_else(|| Error::Decode {
            context: format!("looking up generic netlink family {name}"),
            message: "no family id in the reply".into(),
        })
}

impl IpvsClient {
    /// Opens a socket and resolves the IPVS family; [`Error::NoIpvs`] when the kernel has none.
    pub fn connect() -> Result<Self> {
        let mut conn = Conn::open(NETLINK_GENERIC, "generic netlink")?;
        let family = match resolve_family(&mut conn, FAMILY_NAME) {
            Ok(id) => id,
            Err(Error::Kernel { errno, .. }) if errno == libc::ENOENT => return Err(Error::NoIpvs),
            Err(e) => return Err(e),
        };
        Ok(Self { conn, family })
    }

    /// The family id the kernel gave IPVS.
    pub fn family_id(&self) -> u16 {
        self.family
    }

    fn request(
        &mut self,
        msg: IpvsMessage,
        dump: bool,
        op: &dyn Fn() -> String,
    ) -> Result<Vec<IpvsMessage>> {
        let seq = self.conn.next_seq();
        let flags = if dump {
            NLM_F_REQUEST | NLM_F_DUMP
        } else {
            NLM_F_REQUEST | NLM_F_ACK
        };
        let bytes = encode_request(self.family, flags, seq, msg);
        let replies: Vec<GenlMessage<IpvsMessage>> = self.conn.transact_bytes(&bytes, seq, op)?;
        Ok(replies.into_iter().map(|r| r.payload).collect())
    }

    /// IPVS version and connection table size (`ipvsadm`'s first line).
    pub fn info(&mut self) -> Result<Info> {
        let op = || "reading IPVS info".to_string();
        let replies = self.request(IpvsMessage::get_info(), false, &op)?;
        replies
            .iter()
            .find_map(IpvsMessage::info)
            .ok_or_else(|| Error::Decode {
                context: op(),
                message: "no IPVS_CMD_SET_INFO reply".into(),
            })
    }

    /// Every virtual server of the network namespace (ours and anyone else's).
    pub fn services(&mut self) -> Result<Vec<Service>> {
        let op = || "listing IPVS services".to_string();
        let replies = self.request(IpvsMessage::get_services(), true, &op)?;
        replies
            .iter()
            .filter_map(IpvsMessage::service)
            .map(|r| {
                r.map_err(|e| Error::Decode {
                    context: op(),
                    message: e.to_string(),
                })
            })
            .collect()
    }

    /// The virtual server `svc` names (protocol, address, port or firewall mark), if it exists.
    pub fn service(&mut self, svc: &Service) -> Result<Option<Service>> {
        let op = || format!("reading IPVS service {svc}");
        match self.request(IpvsMessage::get_service(svc), false, &op) {
            Ok(replies) => replies
                .iter()
                .filter_map(IpvsMessage::service)
                .next()
                .transpose()
                .map_err(|e| Error::Decode {
                    context: op(),
                    message: e.to_string(),
                }),
            Err(Error::Kernel { errno, .. }) if errno == libc::ESRCH => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The real servers of `svc` (none if it does not exist).
    pub fn destinations(&mut self, svc: &Service) -> Result<Vec<Destination>> {
        let op = || format!("listing the destinations of IPVS service {svc}");
        let replies = self.request(IpvsMessage::get_dests(svc), true, &op)?;
        replies
            .iter()
            .filter_map(|m| m.destination(svc.af))
            .map(|r| {
                r.map_err(|e| Error::Decode {
                    context: op(),
                    message: e.to_string(),
                })
            })
            .collect()
    }

    /// Creates `svc` (`EEXIST` if it exists).
    pub fn add_service(&mut self, svc: &Service) -> Result<()> {
        let op = || format!("adding IPVS service {svc} ({})", svc.scheduler);
        self.request(IpvsMessage::new_service(svc), false, &op)
            .map(drop)
    }

    /// Changes `svc`'s scheduler, flags, timeout and netmask (`ESRCH` if it does not exist).
    pub fn update_service(&mut self, svc: &Service) -> Result<()> {
        let op = || format!("updating IPVS service {svc} ({})", svc.scheduler);
        self.request(IpvsMessage::set_service(svc), false, &op)
            .map(drop)
    }

    /// Deletes `svc` and its destinations (`ESRCH` if it does not exist).
    pub fn delete_service(&mut self, svc: &Service) -> Result<()> {
        let op = || format!("deleting IPVS service {svc}");
        self.request(IpvsMessage::del_service(svc), false, &op)
            .map(drop)
    }

    /// Adds `dest` to `svc` (`EEXIST` if present).
    pub fn add_destination(&mut self, svc: &Service, dest: &Destination) -> Result<()> {
        let op = || {
            format!(
                "adding destination {} to IPVS service {svc}",
                dest.socket_addr()
            )
        };
        self.request(IpvsMessage::new_dest(svc, dest), false, &op)
            .map(drop)
    }

    /// Changes `dest` of `svc` (weight, forwarding method, thresholds; `ENOENT` if absent).
    pub fn update_destination(&mut self, svc: &Service, dest: &Destination) -> Result<()> {
        let op = || {
            format!(
                "setting destination {} of IPVS service {svc} to weight {}",
                dest.socket_addr(),
                dest.weight
            )
        };
        self.request(IpvsMessage::set_dest(svc, dest), false, &op)
            .map(drop)
    }

    /// Removes `dest` from `svc` (`ENOENT` if absent).
    pub fn delete_destination(&mut self, svc: &Service, dest: &Destination) -> Result<()> {
        let op = || {
            format!(
                "deleting destination {} of IPVS service {svc}",
                dest.socket_addr()
            )
        };
        self.request(IpvsMessage::del_dest(svc, dest), false, &op)
            .map(drop)
    }

    /// Deletes every virtual server of the network namespace, Sluice's or not. The mode never
    /// calls it; tests may.
    pub fn flush(&mut self) -> Result<()> {
        let op = || "flushing IPVS".to_string();
        self.request(IpvsMessage::flush(), false, &op).map(drop)
    }

    /// The whole table in `ipvsadm -Ln`'s layout (header, services and destinations sorted as
    /// `ipvsadm` sorts them), for comparing with `ipvsadm -Ln` in tests.
    pub fn ipvsadm_listing(&mut self) -> Result<String> {
        let info = self.info()?;
        let mut table = Vec::new();
        for s in self.services()? {
            let d = self.destinations(&s)?;
            table.push((s, d));
        }
        Ok(ipvsadm_text(Some(&info), &table))
    }
}

/// `ipvsadm -Ln`'s text for `table` (with its version line when `info` is given): services
/// sorted by firewall mark, family, protocol, address, port; destinations by address, port.
pub fn ipvsadm_text(info: Option<&Info>, table: &[(Service, Vec<Destination>)]) -> String {
    let mut out = String::new();
    if let Some(i) = info {
        let _ = writeln!(
            out,
            "IP Virtual Server version {} (size={})",
            i.version_string(),
            i.conn_tab_size
        );
    }
    out.push_str("Prot LocalAddress:Port Scheduler Flags\n");
    out.push_str("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n");
    let mut sorted: Vec<&(Service, Vec<Destination>)> = table.iter().collect();
    sorted.sort_by(|(a, _), (b, _)| {
        (a.fwmark, a.af, a.protocol, a.addr, a.port)
            .cmp(&(b.fwmark, b.af, b.protocol, b.addr, b.port))
    });
    for (s, dests) in sorted {
        if s.is_fwmark() {
            let _ = write!(out, "FWM  {} {}", s.fwmark, s.scheduler);
        } else {
            let _ = write!(
                out,
                "{}  {} {}",
                protocol_name(s.protocol),
                std::net::SocketAddr::new(s.addr, s.port),
                s.scheduler
            );
        }
        if s.flags & IP_VS_SVC_F_PERSISTENT != 0 {
            let _ = write!(out, " persistent {}", s.timeout);
        }
        if s.flags & IP_VS_SVC_F_ONEPACKET != 0 {
            out.push_str(" ops");
        }
        out.push('\n');
        let mut dests: Vec<&Destination> = dests.iter().collect();
        dests.sort_by_key(|d| (d.addr, d.port));
        for d in dests {
            let _ = writeln!(
                out,
                "  -> {:<28} {:<7} {:<6} {:<10} {:<10}",
                d.socket_addr().to_string(),
                forward_name(d.fwd_method),
                d.weight,
                d.active_conns,
                d.inactive_conns
            );
        }
    }
    out
}

/// `ipvsadm`'s name of a forwarding method.
pub fn forward_name(conn_flags: u32) -> &'static str {
    match conn_flags & IP_VS_CONN_F_FWD_MASK {
        IP_VS_CONN_F_LOCALNODE => "Local",
        IP_VS_CONN_F_TUNNEL => "Tunnel",
        IP_VS_CONN_F_DROUTE => "Route",
        _ => "Masq",
    }
}

/// A netlink round trip against the real kernel for the VM tests: in the caller's network
/// namespace, creates a TCP virtual server on `addr:port` (which must not exist) with two
/// destinations, changes its scheduler and persistence, drains and deletes a destination,
/// reading the table back after each step, then deletes the service. Returns the
/// [`ipvsadm_text`] listing after each step (without the version line), so a test can
/// compare a step with `ipvsadm -Ln` run at the same point (see `steps`) or just check that
/// every step succeeded.
///
/// `steps` is called after each step with its listing, e.g. to run `ipvsadm -Ln` and diff.
pub fn selftest(
    addr: std::net::IpAddr,
    port: u16,
    mut steps: impl FnMut(&str, &str),
) -> Result<Vec<String>> {
    use crate::netlink::IPPROTO_TCP;
    let mut ipvs = IpvsClient::connect()?;
    let svc = Service::new(addr, IPPROTO_TCP, port, "rr");
    let a = Destination::masq(shift(addr, 1), 8080, 1);
    let b = Destination::masq(shift(addr, 2), 8080, 1);
    let mut out = Vec::new();
    let mut snap = |ipvs: &mut IpvsClient, step: &str| -> Result<()> {
        let mut table = Vec::new();
        if let Some(s) = ipvs.service(&svc)? {
            let d = ipvs.destinations(&s)?;
            table.push((s, d));
        }
        let text = ipvsadm_text(None, &table);
        steps(step, &text);
        out.push(text);
        Ok(())
    };
    ipvs.add_service(&svc)?;
    snap(&mut ipvs, "add service")?;
    ipvs.add_destination(&svc, &a)?;
    ipvs.add_destination(&svc, &b)?;
    snap(&mut ipvs, "add destinations")?;
    let changed = Service::new(addr, IPPROTO_TCP, port, "lc").persistent(300);
    ipvs.update_service(&changed)?;
    snap(&mut ipvs, "scheduler lc, persistent 300")?;
    ipvs.update_destination(
        &svc,
        &Destination {
            weight: 0,
            ..b.clone()
        },
    )?;
    snap(&mut ipvs, "drain second destination")?;
    ipvs.delete_destination(&svc, &b)?;
    snap(&mut ipvs, "delete second destination")?;
    ipvs.delete_service(&svc)?;
    snap(&mut ipvs, "delete service")?;
    Ok(out)
}

/// `ip` + `n` in its last octet / segment (destination addresses for [`selftest`]).
fn shift(ip: std::net::IpAddr, n: u8) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V4(a) => {
            let mut o = a.octets();
            o[3] = o[3].wrapping_add(n);
            o.into()
        }
        std::net::IpAddr::V6(a) => {
            let mut o = a.octets();
            o[15] = o[15].wrapping_add(n);
            o.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{Info, IPPROTO_UDP};

    #[test]
    fn ipvsadm_layout() {
        let web = Service::new(
            "10.96.0.10".parse().unwrap(),
            crate::netlink::IPPROTO_TCP,
            80,
            "rr",
        );
        let dns =
            Service::new("10.96.0.2".parse().unwrap(), IPPROTO_UDP, 53, "sh").persistent(10800);
        let table = vec![
            (
                web,
                vec![
                    Destination::masq("10.244.2.1".parse().unwrap(), 8080, 1),
                    Destination {
                        active_conns: 2,
                        inactive_conns: 11,
                        ..Destination::masq("10.244.1.1".parse().unwrap(), 8080, 0)
                    },
                ],
            ),
            (dns, vec![]),
        ];
        let info = Info {
            version: 0x010201,
            conn_tab_size: 4096,
        };
        assert_eq!(
            ipvsadm_text(Some(&info), &table),
            "IP Virtual Server version 1.2.1 (size=4096)\n\
             Prot LocalAddress:Port Scheduler Flags\n  \
             -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n\
             TCP  10.96.0.10:80 rr\n  \
             -> 10.244.1.1:8080              Masq    0      2          11        \n  \
             -> 10.244.2.1:8080              Masq    1      0          0         \n\
             UDP  10.96.0.2:53 sh persistent 10800\n"
        );
    }

    #[test]
    fn family_lookup_reports_no_ipvs_here_or_works() {
        // This host's kernel has no IPVS; a VM kernel does. Either answer is a clean one.
        match IpvsClient::connect() {
            Err(Error::NoIpvs) => {
                eprintln!("SKIP: no IPVS in this kernel (the expected answer here)")
            }
            Err(Error::Io { context, source })
                if source.raw_os_error() == Some(libc::EPERM)
                    || source.raw_os_error() == Some(libc::EACCES) =>
            {
                eprintln!("SKIP: {context}: {source}")
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(mut c) => {
                assert_ne!(c.family_id(), 0);
                let info = c.info().unwrap();
                assert_eq!(info.version >> 16, 1);
            }
        }
    }

    #[test]
    fn nlctrl_itself_resolves() {
        // The lookup path end to end against this kernel: `nlctrl` always exists (id 0x10).
        let mut conn = Conn::open(NETLINK_GENERIC, "generic netlink").unwrap();
        assert_eq!(resolve_family(&mut conn, "nlctrl").unwrap(), 0x10);
        // (Names longer than 15 bytes are EINVAL, not ENOENT.)
        let e = resolve_family(&mut conn, "no-such-fam").unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
    }

    #[test]
    fn shift_addresses() {
        assert_eq!(
            shift("10.0.0.1".parse().unwrap(), 2).to_string(),
            "10.0.0.3"
        );
        assert_eq!(shift("fd00::1".parse().unwrap(), 1).to_string(), "fd00::2");
    }
}
