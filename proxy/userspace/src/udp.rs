//! UDP listeners: one flow per client address, each with its own socket connected to the
//! endpoint chosen for it.
//!
//! * The listener task reads datagrams from the listener socket, finds (or creates) the client's
//!   flow and forwards the datagram on the flow's socket.
//! * A flow task relays the endpoint's replies back to the client *from the listener socket*
//!   (so conntrack un-does the REDIRECT/DNAT and the client sees the Service address), and ends
//!   after [`crate::UserspaceConfig::udp_idle_timeout`] without traffic in either direction, or
//!   when the endpoint answers with ICMP port unreachable (the next datagram then picks again).
//! * A flow whose endpoint was removed by a sync is replaced on its next datagram.
//! * Flow tasks live in a `JoinSet` owned by the listener task: closing the listener (service
//!   port removed) ends every flow.
//!
//! Datagram buffers live on the stack of the synchronous drain loops (never across an await),
//! so a flow costs a socket, a small task and no 64 KiB heap buffer. Sockets are std sockets
//! in an [`AsyncFd`]: reads wait for readiness, sends are plain non-blocking `send`s (a send
//! that would block drops the datagram, as the network may).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::debug;

use crate::listener::Portal;

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_536;

struct Flow {
    id: u64,
    socket: Arc<AsyncFd<UdpSocket>>,
    endpoint: SocketAddr,
    generation: u64,
    activity: Arc<Activity>,
    abort: AbortHandle,
}

/// Last traffic of a flow, as nanoseconds since the listener's start (lock-free).
struct Activity {
    base: Instant,
    last: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let n = self.base.elapsed().as_nanos() as u64;
        self.last.store(n, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + std::time::Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

struct Listener {
    socket: Arc<AsyncFd<UdpSocket>>,
    portal: Arc<Portal>,
    flows: HashMap<SocketAddr, Flow>,
    tasks: JoinSet<(SocketAddr, u64)>,
    next_id: u64,
    base: Instant,
}

/// Serves the UDP listener `socket` (non-blocking) until the task is aborted.
pub(crate) async fn serve(socket: AsyncFd<UdpSocket>, portal: Arc<Portal>) {
    let socket = Arc::new(socket);
    let mut l = Listener {
        socket: socket.clone(),
        portal,
        flows: HashMap::new(),
        tasks: JoinSet::new(),
        next_id: 0,
        base: Instant::now(),
    };
    loop {
        tokio::select! {
            r = socket.readable() => match r {
                Ok(mut guard) => l.drain(&mut guard),
                Err(e) => {
                    debug!(listener = %l.portal.name, error = %e, "listener socket failed");
                    return;
                }
            },
            Some(done) = l.tasks.join_next(), if !l.tasks.is_empty() => {
                if let Ok((client, id)) = done {
                    if l.flows.get(&client).is_some_and(|f| f.id == id) {
                        l.flows.remove(&client);
                    }
                }
            }
        }
    }
}

impl Listener {
    /// Forwards every queued datagram (synchronous: the buffer never lives across an await).
    fn drain(&mut self, guard: &mut AsyncFdReadyGuard<'_, UdpSocket>) {
        let mut buf = [0u8; MAX_DATAGRAM];
        loop {
            let (n, client) = match guard.try_io(|s| s.get_ref().recv_from(&mut buf)) {
                Ok(Ok(r)) => r,
                // Drained; readiness cleared.
                Err(_would_block) => return,
                Ok(Err(e)) => {
                    // E.g. ECONNREFUSED queued by an ICMP error for an earlier reply.
                    debug!(listener = %self.portal.name, error = %e, "recv failed");
                    continue;
                }
            };
            let Some(flow) = self.flow(client) else {
                debug!(listener = %self.portal.name, %client, "no endpoints; dropping datagram");
                continue;
            };
            flow.activity.touch();
            if let Err(e) = flow.socket.get_ref().send(&buf[..n]) {
                debug!(%client, endpoint = %flow.endpoint, error = %e, "datagram to endpoint dropped");
            }
        }
    }

    /// The client's live flow, or a new one to a freshly chosen endpoint.
    fn flow(&mut self, client: SocketAddr) -> Option<&Flow> {
        let portal = self.portal.clone();
        let generation = portal.balancer.generation();
        let stale = match self.flows.get_mut(&client) {
            // Ended (idle or refused) but not reaped yet: nobody reads its socket any more.
            Some(f) if f.abort.is_finished() => true,
            Some(f) if f.generation == generation => false,
            Some(f) if portal.balancer.contains(f.endpoint) => {
                f.generation = generation;
                false
            }
            Some(_) => true,
            None => false,
        };
        if stale {
            if let Some(f) = self.flows.remove(&client) {
                f.abort.abort();
            }
        }
        if !self.flows.contains_key(&client) {
            let flow = self.open(client, generation)?;
            self.flows.insert(client, flow);
        }
        self.flows.get(&client)
    }

    fn open(&mut self, client: SocketAddr, generation: u64) -> Option<Flow> {
        let choice = self
            .portal
            .balancer
            .pick(client.ip(), std::time::Instant::now())?;
        let endpoint = choice.first();
        let socket = match connected_socket(endpoint) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                debug!(listener = %self.portal.name, %client, %endpoint, error = %e, "cannot open flow socket");
                return None;
            }
        };
        self.next_id += 1;
        let id = self.next_id;
        let activity = Arc::new(Activity {
            base: self.base,
            last: AtomicU64::new(0),
        });
        activity.touch();
        let abort = self.tasks.spawn(relay_replies(
            socket.clone(),
            self.socket.clone(),
            client,
            activity.clone(),
            self.portal.clone(),
            id,
        ));
        debug!(listener = %self.portal.name, %client, %endpoint, "new UDP flow");
        Some(Flow {
            id,
            socket,
            endpoint,
            generation,
            activity,
            abort,
        })
    }
}

fn connected_socket(endpoint: SocketAddr) -> io::Result<AsyncFd<UdpSocket>> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    s.connect(endpoint)?;
    s.set_nonblocking(true)?;
    register(s)
}

/// Registers a non-blocking UDP socket with the current runtime's reactor.
pub(crate) fn register(s: UdpSocket) -> io::Result<AsyncFd<UdpSocket>> {
    // SAFETY: `UdpSocket` owns its file descriptor, keeps it open until dropped and always
    // returns the same one from `as_raw_fd`; the `AsyncFd` takes ownership of the socket.
    unsafe { AsyncFd::register(s) }.map_err(io::Error::from)
}

/// Relays the endpoint's datagrams to `client` until the flow is idle for the timeout or the
/// endpoint refuses. Returns the flow's identity so the listener can forget it.
async fn relay_replies(
    backend: Arc<AsyncFd<UdpSocket>>,
    listener: Arc<AsyncFd<UdpSocket>>,
    client: SocketAddr,
    activity: Arc<Activity>,
    portal: Arc<Portal>,
    id: u64,
) -> (SocketAddr, u64) {
    let idle = portal.settings.udp_idle_timeout;
    let sleep = tokio::time::sleep(idle);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            r = backend.readable() => {
                let ok = match r {
                    Ok(mut guard) => drain_replies(&mut guard, listener.get_ref(), client, &activity),
                    Err(e) => Err(e),
                };
                if let Err(e) = ok {
                    debug!(listener = %portal.name, %client, error = %e, "endpoint socket failed");
                    break;
                }
            }
            () = &mut sleep => {
                let deadline = activity.last() + idle;
                if Instant::now() >= deadline {
                    break;
                }
                sleep.as_mut().reset(deadline);
            }
        }
    }
    debug!(listener = %portal.name, %client, "UDP flow closed");
    (client, id)
}

fn drain_replies(
    guard: &mut AsyncFdReadyGuard<'_, UdpSocket>,
    listener: &UdpSocket,
    client: SocketAddr,
    activity: &Activity,
) -> io::Result<()> {
    let mut buf = [0u8; MAX_DATAGRAM];
    loop {
        match guard.try_io(|s| s.get_ref().recv(&mut buf)) {
            Ok(Ok(n)) => {
                activity.touch();
                // Best effort, like the network: a full send buffer drops the reply.
                let _ = listener.send_to(&buf[..n], client);
            }
            Err(_would_block) => return Ok(()),
            Ok(Err(e)) => return Err(e),
        }
    }
}
