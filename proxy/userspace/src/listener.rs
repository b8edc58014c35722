//! One listener: a socket bound on a kernel-chosen port plus the task serving it, sharing a
//! [`Portal`] (balancer + settings) with the dataplane.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use sluice_proxy::model::Protocol;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::balancer::Balancer;

/// Listen backlog of TCP listeners.
const BACKLOG: u32 = 4096;

/// Per-connection settings shared by every listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) connect_timeout: Duration,
    pub(crate) udp_idle_timeout: Duration,
    pub(crate) tcp_buffer_size: usize,
}

/// State shared between the dataplane and a listener's tasks.
#[derive(Debug)]
pub(crate) struct Portal {
    /// `ns/svc:port/PROTO set`, for logs.
    pub(crate) name: String,
    pub(crate) balancer: Balancer,
    pub(crate) settings: Arc<Settings>,
}

/// A bound listener and its serving task. Dropping it closes the socket (the task is aborted);
/// established TCP connections live in their own tasks and survive.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) protocol: Protocol,
    pub(crate) port: u16,
    pub(crate) portal: Arc<Portal>,
    task: JoinHandle<()>,
}

impl Listener {
    /// Binds `address:0` for `protocol` and spawns its serving task on `runtime`.
    pub(crate) fn bind(
        runtime: &Handle,
        address: Ipv4Addr,
        protocol: Protocol,
        portal: Arc<Portal>,
    ) -> std::io::Result<Self> {
        // Registering sockets with the reactor needs the runtime's context; this does not block.
        let _guard = runtime.enter();
        let addr = SocketAddr::from((address, 0));
        let (port, task) = match protocol {
            Protocol::Tcp => {
                let s = tokio::net::TcpSocket::new_v4()?;
                s.set_reuseaddr(true)?;
                s.bind(addr)?;
                let l = s.listen(BACKLOG)?;
                let port = l.local_addr()?.port();
                (port, runtime.spawn(crate::tcp::serve(l, portal.clone())))
            }
            Protocol::Udp => {
                let s = std::net::UdpSocket::bind(addr)?;
                s.set_nonblocking(true)?;
                let port = s.local_addr()?.port();
                let s = crate::udp::register(s)?;
                (port, runtime.spawn(crate::udp::serve(s, portal.clone())))
            }
            Protocol::Sctp => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "SCTP is not supported by the userspace proxy",
                ))
            }
        };
        Ok(Self {
            protocol,
            port,
            portal,
            task,
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}
