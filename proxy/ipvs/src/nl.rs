//! A blocking netlink request/reply loop, shared by the IPVS client ([`crate::client`]) and
//! the dummy-link code ([`crate::rtnl`]).
//!
//! Dataplane syncs already run on a blocking thread, so plain blocking sockets (`netlink-sys`)
//! are the simplest fit: one request at a time, replies matched by sequence number, a dump read
//! until `NLMSG_DONE`, an acknowledged request until its `NLMSG_ERROR` (code 0 = success).

use std::io;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::{Socket, SocketAddr};

use crate::error::{Error, Result};

/// One netlink socket and its sequence numbers.
pub(crate) struct Conn {
    sock: Socket,
    seq: u32,
}

impl Conn {
    /// A socket of netlink `protocol` (`NETLINK_GENERIC`, `NETLINK_ROUTE`) connected to the
    /// kernel.
    pub fn open(protocol: isize, what: &str) -> Result<Self> {
        let mut sock =
            Socket::new(protocol).map_err(|e| Error::io(format!("opening a {what} socket"), e))?;
        sock.bind_auto()
            .map_err(|e| Error::io(format!("binding the {what} socket"), e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io(format!("connecting the {what} socket"), e))?;
        Ok(Self { sock, seq: 0 })
    }

    /// The next sequence number.
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Sends `msg` (already finalized, with `seq`) and collects the replies to it: for a dump
    /// every message until `NLMSG_DONE`, otherwise every message until the acknowledgement (so
    /// a request that is not a dump must ask for one: `NLM_F_ACK`). A negative
    /// acknowledgement is [`Error::Kernel`] naming `op`.
    pub fn transact<I>(
        &mut self,
        msg: &NetlinkMessage<I>,
        op: &dyn Fn() -> String,
    ) -> Result<Vec<I>>
    where
        I: NetlinkSerializable + NetlinkDeserializable,
        <I as NetlinkDeserializable>::Error: std::fmt::Display,
    {
        let mut bytes = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut bytes);
        self.transact_bytes(&bytes, msg.header.sequence_number, op)
    }

    /// [`Conn::transact`] for a request already encoded.
    pub fn transact_bytes<I>(
        &mut self,
        bytes: &[u8],
        seq: u32,
        op: &dyn Fn() -> String,
    ) -> Result<Vec<I>>
    where
        I: NetlinkDeserializable,
        <I as NetlinkDeserializable>::Error: std::fmt::Display,
    {
        loop {
            match self.sock.send(bytes, 0) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(format!("sending {}", op()), e)),
            }
        }
        let mut out = Vec::new();
        loop {
            let buf = loop {
                match self.sock.recv_from_full() {
                    Ok((buf, _)) => break buf,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::io(format!("receiving the reply to {}", op()), e)),
                }
            };
            let mut off = 0;
            while off + 16 <= buf.len() {
                let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
                    as usize;
                if len < 16 || off + len > buf.len() {
                    return Err(Error::Decode {
                        context: op(),
                        message: format!("message length {len} at offset {off}"),
                    });
                }
                let msg = NetlinkMessage::<I>::deserialize(&buf[off..off + len]).map_err(|e| {
                    Error::Decode {
                        context: op(),
                        message: e.to_string(),
                    }
                })?;
                off += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    // A late reply to an earlier, abandoned request.
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(out),
                        Some(code) => {
                            return Err(Error::Kernel {
                                op: op(),
                                errno: code.get().abs(),
                            })
                        }
                    },
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }
}
