//! TCP listeners: accept, connect to an endpoint (retrying the next one on failure), relay.
//!
//! Per connection: one spawned task, one `Arc` clone of the endpoint snapshot, the two copy
//! buffers of [`tokio::io::copy_bidirectional_with_sizes`]. `TCP_NODELAY` on both sides (the
//! proxy must not add Nagle delays to request/response traffic); a half-close (FIN) is
//! propagated as a `shutdown(SHUT_WR)`; an error (e.g. a reset) on either side resets both.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::listener::Portal;

/// Accepts connections until the task is aborted (which closes the listener). Connections
/// already accepted live in their own tasks and are not affected.
pub(crate) async fn serve(listener: TcpListener, portal: Arc<Portal>) {
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                tokio::spawn(handle(client, peer, portal.clone()));
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS and aborted handshakes: back off briefly, keep serving.
                warn!(listener = %portal.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Connects to the first endpoint of the balancer's choice that accepts within the connect
/// timeout, trying each endpoint at most once.
pub(crate) async fn connect(
    portal: &Portal,
    client: SocketAddr,
) -> Option<(TcpStream, SocketAddr)> {
    let choice = portal.balancer.pick(client.ip(), Instant::now())?;
    for (i, ep) in choice.candidates().enumerate() {
        match tokio::time::timeout(portal.settings.connect_timeout, TcpStream::connect(ep)).await {
            Ok(Ok(s)) => {
                if i > 0 {
                    portal.balancer.pin(client.ip(), ep, Instant::now());
                }
                return Some((s, ep));
            }
            Ok(Err(e)) => {
                debug!(listener = %portal.name, %client, endpoint = %ep, error = %e, "connect failed, trying next endpoint");
            }
            Err(_) => {
                debug!(listener = %portal.name, %client, endpoint = %ep, "connect timed out, trying next endpoint");
            }
        }
    }
    None
}

async fn handle(mut client: TcpStream, peer: SocketAddr, portal: Arc<Portal>) {
    let _ = client.set_nodelay(true);
    let Some((mut backend, ep)) = connect(&portal, peer).await else {
        debug!(listener = %portal.name, client = %peer, "no endpoint accepted the connection; resetting client");
        // RST rather than FIN: the client learns at once that the connection failed.
        let _ = client.set_zero_linger();
        return;
    };
    let _ = backend.set_nodelay(true);
    let size = portal.settings.tcp_buffer_size;
    if let Err(e) =
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut backend, size, size).await
    {
        debug!(listener = %portal.name, client = %peer, endpoint = %ep, error = %e, "relay ended with an error; resetting both sides");
        let _ = client.set_zero_linger();
        let _ = backend.set_zero_linger();
    }
}
