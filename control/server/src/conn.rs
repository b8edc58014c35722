//! The API server's connection layer: accepts TCP connections, runs the TLS handshake under a
//! deadline, serves HTTP/1.1 and HTTP/2 with hyper, and keeps clients that never prove who they
//! are from exhausting the server.
//!
//! Data flow: `TcpListener::accept` → [`Tracker::register`] (every connection starts
//! *unauthenticated*) → TLS handshake (`handshake_timeout`) → hyper (HTTP/1.1 header read
//! deadline, HTTP/2 stream cap) → per request: [`ConnInfo`] in the request's extensions, an
//! in-flight guard that lives as long as the response body → the axum router. The request
//! handler calls [`ConnInfo::authenticated`] once a bearer token checks out.
//!
//! Why each limit exists (the apiserver's values where it has one):
//! - **Handshake deadline**: a client that opens TCP and never finishes TLS holds a file
//!   descriptor for nothing.
//! - **Header read deadline** (32 s, kube-apiserver's `ReadHeaderTimeout`): slowloris.
//! - **Idle deadline** (90 s, kube-apiserver's `IdleTimeout`): a connection with no request in
//!   flight and no traffic is closed (HTTP/2 with GOAWAY). Watches are requests in flight, so
//!   a quiet watch is never idle.
//! - **Unauthenticated connections** are capped, and closed after a short idle time: when the
//!   cap is reached the oldest one is closed to make room, so a flood of connections without a
//!   token can neither use up the file limit nor lock real clients out — a real client sends
//!   its token within milliseconds and leaves the pool.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tower::ServiceExt;

/// Deadlines and caps of the connection layer and of request handling.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// HTTP/1.1: a request's headers must arrive within this (also bounds the wait for the next
    /// request on a kept-alive connection).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Same, for a connection that has not sent an authenticated request yet.
    pub unauthenticated_idle_timeout: Duration,
    /// Most connections without an authenticated request at once; the oldest is closed to
    /// make room for a new one.
    pub max_unauthenticated_connections: usize,
    /// A request body must arrive within this (kube-apiserver's `--request-timeout`, 60 s).
    pub request_timeout: Duration,
    /// Largest request body (kube-apiserver's `--max-request-bytes`, 3 MiB); larger is 413.
    pub max_request_body_bytes: usize,
    /// Non-mutating requests in flight at once (`--max-requests-inflight`); more is 429.
    pub max_requests_inflight: usize,
    /// Mutating requests in flight at once (`--max-mutating-requests-inflight`); more is 429.
    pub max_mutating_requests_inflight: usize,
    /// Concurrent streams per HTTP/2 connection (Go's default, which kube-apiserver keeps).
    pub http2_max_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(32),
            idle_timeout: Duration::from_secs(90),
            unauthenticated_idle_timeout: Duration::from_secs(10),
            max_unauthenticated_connections: 4096,
            request_timeout: Duration::from_secs(60),
            max_request_body_bytes: 3 * 1024 * 1024,
            max_requests_inflight: 400,
            max_mutating_requests_inflight: 200,
            http2_max_streams: 250,
        }
    }
}

/// Pending connections the kernel may queue before `accept` (capped by `net.core.somaxconn`).
/// The std default of 128 overflows under a flood of new connections, and a client whose SYN is
/// dropped waits a whole second for its retransmit; Go's servers (kube-apiserver) ask for
/// `somaxconn` the same way.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the API listener with a deep accept queue.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(LISTEN_BACKLOG)
}

/// Raises the soft limit on open files to the hard limit (as Go's runtime does for every Go
/// server, kube-apiserver included) and returns `(soft, hard)`: each connection is a file
/// descriptor, and the usual soft default of 1,024 is far below what a server needs.
pub fn raise_file_limit() -> nix::Result<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    getrlimit(Resource::RLIMIT_NOFILE)
}

/// One connection's shared state.
#[derive(Debug)]
struct ConnState {
    id: u64,
    authenticated: AtomicBool,
    /// Requests whose response body has not finished.
    inflight: AtomicUsize,
    /// Milliseconds since the tracker's epoch of the last request start or end.
    last_active: AtomicU64,
    close: Notify,
    tracker: Arc<Tracker>,
}

/// What a request handler knows of its connection (in the request's extensions).
#[derive(Debug, Clone)]
pub struct ConnInfo(Arc<ConnState>);

impl ConnInfo {
    /// The connection carried an authenticated request: it leaves the unauthenticated pool
    /// and gets the normal idle deadline.
    pub fn authenticated(&self) {
        if !self.0.authenticated.swap(true, Ordering::AcqRel) {
            self.0.tracker.forget(self.0.id);
        }
    }

    /// True once [`ConnInfo::authenticated`] was called.
    pub fn is_authenticated(&self) -> bool {
        self.0.authenticated.load(Ordering::Acquire)
    }

    /// Asks the connection to close after the responses in flight.
    pub fn close(&self) {
        self.0.close.notify_one();
    }
}

/// Counts connections and holds the unauthenticated ones in accept order.
#[derive(Debug)]
pub struct Tracker {
    epoch: Instant,
    next_id: AtomicU64,
    open: AtomicUsize,
    evicted: AtomicU64,
    max_unauth: usize,
    unauth: Mutex<BTreeMap<u64, Arc<ConnState>>>,
}

/// A snapshot of the connection counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnStats {
    /// Connections open (TCP accepted, not yet closed).
    pub open: usize,
    /// Of those, connections that have not sent an authenticated request.
    pub unauthenticated: usize,
    /// Unauthenticated connections closed to make room since start.
    pub evicted: u64,
}

impl Tracker {
    /// A tracker with a cap on unauthenticated connections.
    pub fn new(max_unauth: usize) -> Arc<Tracker> {
        Arc::new(Tracker {
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
            max_unauth: max_unauth.max(1),
            unauth: Mutex::new(BTreeMap::new()),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Registers a new, unauthenticated connection; closes the oldest unauthenticated one when
    /// the cap is reached.
    fn register(self: &Arc<Self>) -> Arc<ConnState> {
        let st = Arc::new(ConnState {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            authenticated: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            last_active: AtomicU64::new(self.now_ms()),
            close: Notify::new(),
            tracker: self.clone(),
        });
        self.open.fetch_add(1, Ordering::Relaxed);
        let victim = {
            let mut m = self.unauth.lock().expect("tracker lock");
            let victim = if m.len() >= self.max_unauth {
                m.pop_first().map(|(_, v)| v)
            } else {
                None
            };
            m.insert(st.id, st.clone());
            victim
        };
        if let Some(v) = victim {
            self.evicted.fetch_add(1, Ordering::Relaxed);
            v.close.notify_one();
        }
        st
    }

    fn forget(&self, id: u64) {
        self.unauth.lock().expect("tracker lock").remove(&id);
    }

    fn closed(&self, st: &ConnState) {
        self.forget(st.id);
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn stats(&self) -> ConnStats {
        ConnStats {
            open: self.open.load(Ordering::Relaxed),
            unauthenticated: self.unauth.lock().expect("tracker lock").len(),
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }
}

/// Keeps a request counted as in flight until its response body is done (or dropped).
struct InflightGuard(Arc<ConnState>);

impl InflightGuard {
    fn new(st: Arc<ConnState>) -> Self {
        st.inflight.fetch_add(1, Ordering::AcqRel);
        st.last_active.store(st.tracker.now_ms(), Ordering::Relaxed);
        InflightGuard(st)
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0
            .last_active
            .store(self.0.tracker.now_ms(), Ordering::Relaxed);
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that carries its request's in-flight guard.
struct Tracked {
    inner: Body,
    _guard: InflightGuard,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Accepts and serves connections until the returned future is dropped (dropping it closes
/// every connection it serves).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: Limits,
    tracker: Arc<Tracker>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams);
    let builder = Arc::new(builder);
    let limits = Arc::new(limits);
    let mut conns = JoinSet::new();
    let mut accept_errors = 0u64;
    loop {
        // Finished connection tasks are reaped as they finish: reaping them in a batch before
        // the next accept made the first connection after a flood wait for thousands of drops.
        let accepted = tokio::select! {
            biased;
            r = listener.accept() => r,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (tcp, _peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning; the pending
                // connections wait in the backlog.
                accept_errors += 1;
                if accept_errors.is_power_of_two() {
                    tracing::warn!(error = %e, count = accept_errors, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let st = tracker.register();
        conns.spawn(serve_conn(
            tcp,
            acceptor.clone(),
            builder.clone(),
            app.clone(),
            limits.clone(),
            st,
        ));
    }
}

async fn serve_conn(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    builder: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    app: Router,
    limits: Arc<Limits>,
    st: Arc<ConnState>,
) {
    let tracker = st.tracker.clone();
    let tls = tokio::select! {
        r = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)) => match r {
            Ok(Ok(tls)) => Some(tls),
            _ => None,
        },
        _ = st.close.notified() => None,
    };
    if let Some(tls) = tls {
        let info = ConnInfo(st.clone());
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let app = app.clone();
            let info = info.clone();
            async move {
                let guard = InflightGuard::new(info.0.clone());
                req.extensions_mut().insert(info);
                let resp = match app.oneshot(req.map(Body::new)).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(resp.map(|inner| Tracked {
                    inner,
                    _guard: guard,
                }))
            }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
        tokio::pin!(conn);
        // One timer per connection, set to when it would become idle; re-armed when woken early
        // by activity, so 10,000 quiet connections cost no wake-ups until their deadlines.
        let closing = loop {
            let limit = if st.authenticated.load(Ordering::Acquire) {
                limits.idle_timeout
            } else {
                limits.unauthenticated_idle_timeout
            }
            .as_millis() as u64;
            let now = tracker.now_ms();
            let due = if st.inflight.load(Ordering::Acquire) > 0 {
                now + limit
            } else {
                st.last_active.load(Ordering::Relaxed) + limit
            };
            if due <= now {
                break true;
            }
            let wake = tracker.epoch + Duration::from_millis(due);
            tokio::select! {
                _ = conn.as_mut() => break false,
                _ = st.close.notified() => break true,
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        };
        if closing {
            // GOAWAY on HTTP/2, `Connection: close` after the current response on HTTP/1.1;
            // a peer that does not finish within a second is cut off.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
        }
    }
    tracker.closed(&st);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_unauthenticated_connection_makes_room() {
        let t = Tracker::new(3);
        let a = t.register();
        let b = t.register();
        let c = t.register();
        ConnInfo(b.clone()).authenticated();
        let d = t.register();
        assert_eq!(t.stats().unauthenticated, 3);
        let e = t.register();
        // `a` was the oldest unauthenticated one; `b` left the pool when it authenticated.
        assert_eq!(t.stats().evicted, 1);
        assert!(futures::FutureExt::now_or_never(a.close.notified()).is_some());
        assert!(futures::FutureExt::now_or_never(b.close.notified()).is_none());
        assert!(futures::FutureExt::now_or_never(c.close.notified()).is_none());
        let ids: Vec<u64> = t.unauth.lock().unwrap().keys().copied().collect();
        assert_eq!(ids, vec![c.id, d.id, e.id]);
        for s in [&a, &b, &c, &d, &e] {
            t.closed(s);
        }
        assert_eq!(
            t.stats(),
            ConnStats {
                open: 0,
                unauthenticated: 0,
                evicted: 1
            }
        );
    }

    #[test]
    fn inflight_guard_counts_until_dropped() {
        let t = Tracker::new(4);
        let s = t.register();
        let g1 = InflightGuard::new(s.clone());
        let g2 = InflightGuard::new(s.clone());
        assert_eq!(s.inflight.load(Ordering::Acquire), 2);
        drop(g1);
        assert_eq!(s.inflight.load(Ordering::Acquire), 1);
        drop(g2);
        assert_eq!(s.inflight.load(Ordering::Acquire), 0);
    }
}
