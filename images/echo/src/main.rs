//! `sluice-echo`: the server inside the `docker.io/library/sluice-echo:0.1` test image (built
//! static by `sluice-images`, loaded into containerd without a registry).
//!
//! It answers the questions the end-to-end tests ask of a pod:
//! - HTTP on `--http-port` (8080): `GET /` says who answered and who asked
//!   (`pod=<hostname> ip=<local address> client=<peer ip:port>`), so a test can tell which
//!   backend a Service picked and whether the client address survived NAT; `/healthz` and
//!   `/ready` can be made to fail (`/sick`, `/unready`, `/ready-again`) for liveness and
//!   readiness probes.
//! - TCP echo and UDP echo on `--echo-port` (9000, both protocols).
//! - SIGTERM/SIGINT: as PID 1 of its PID namespace the default actions are ignored, so a handler
//!   is installed; the process keeps serving `--drain-seconds` (0) and then exits 0.
//!
//! std threads only: one thread per listener and one per connection; every HTTP answer closes
//! its connection (`Connection: close`).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Largest request head (request line plus headers) read before answering 400.
const MAX_HEAD: usize = 16 * 1024;

/// Command-line options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// HTTP port (`--http-port`, 8080; 0 picks a free one).
    pub http_port: u16,
    /// TCP and UDP echo port (`--echo-port`, 9000; 0 picks a free one).
    pub echo_port: u16,
    /// Seconds to keep serving after SIGTERM/SIGINT before exiting 0 (`--drain-seconds`, 0).
    pub drain_seconds: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            http_port: 8080,
            echo_port: 9000,
            drain_seconds: 0,
        }
    }
}

const USAGE: &str =
    "usage: sluice-echo [--http-port N (8080)] [--echo-port N (9000)] [--drain-seconds N (0)]";

/// Parses the arguments after the program name (`--flag N` or `--flag=N`).
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Err(USAGE.to_string());
        }
        let (flag, value) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), v.to_string()),
            None => {
                let v = it
                    .next()
                    .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))?;
                (arg, v)
            }
        };
        let bad = |e: std::num::ParseIntError| format!("{flag} {value}: {e}\n{USAGE}");
        match flag.as_str() {
            "--http-port" => o.http_port = value.parse().map_err(bad)?,
            "--echo-port" => o.echo_port = value.parse().map_err(bad)?,
            "--drain-seconds" => o.drain_seconds = value.parse().map_err(bad)?,
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    Ok(o)
}

/// Process-wide state the HTTP handlers read and flip.
#[derive(Debug)]
pub struct State {
    /// Pod name (the UTS hostname), reported by `GET /`.
    pub hostname: String,
    /// `/healthz` answers 200 while set; `/sick` clears it.
    pub healthy: AtomicBool,
    /// `/ready` answers 200 while set; `/unready` clears it, `/ready-again` sets it.
    pub ready: AtomicBool,
}

impl State {
    /// Healthy and ready, named `hostname`.
    pub fn new(hostname: String) -> Self {
        State {
            hostname,
            healthy: AtomicBool::new(true),
            ready: AtomicBool::new(true),
        }
    }
}

/// The UTS hostname from `/proc/sys/kernel/hostname` (in a pod: the pod name).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// A parsed HTTP request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLine {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// The path without its query string.
    pub path: String,
}

/// Parses the first line of `head` (`METHOD TARGET HTTP/x.y`). An absolute-form target
/// (`http://host/path`) is reduced to its path; the query string is dropped.
pub fn parse_request_line(head: &str) -> Option<RequestLine> {
    let line = head.split("\r\n").next()?.trim_end_matches('\n');
    let mut parts = line.split(' ');
    let method = parts.next().filter(|m| !m.is_empty())?;
    let target = parts.next().filter(|t| !t.is_empty())?;
    let version = parts.next()?;
    if parts.next().is_some() || !version.starts_with("HTTP/") {
        return None;
    }
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let path = target.split(['?', '#']).next().unwrap_or("/");
    Some(RequestLine {
        method: method.to_string(),
        path: if path.is_empty() { "/" } else { path }.to_string(),
    })
}

/// An HTTP answer: status and a `text/plain` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body (one line ending in `\n`).
    pub body: String,
}

impl Response {
    fn new(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            body: body.into(),
        }
    }

    /// The whole HTTP/1.1 message, `Connection: close`; without the body for HEAD.
    pub fn to_bytes(&self, with_body: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            self.status,
            self.body.len()
        )
        .into_bytes();
        if with_body {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// The `GET /` body: `pod=<hostname> ip=<local ip> client=<peer ip:port>\n`.
pub fn identity(hostname: &str, local: SocketAddr, peer: SocketAddr) -> String {
    format!("pod={hostname} ip={} client={peer}\n", local.ip())
}

/// Answers `req` (flipping the health and readiness flags for the switch paths).
pub fn route(req: &RequestLine, state: &State, local: SocketAddr, peer: SocketAddr) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return Response::new(405, "method not allowed\n");
    }
    match req.path.as_str() {
        "/" => Response::new(200, identity(&state.hostname, local, peer)),
        "/healthz" if state.healthy.load(Ordering::SeqCst) => Response::new(200, "ok\n"),
        "/healthz" => Response::new(500, "sick\n"),
        "/sick" => {
            state.healthy.store(false, Ordering::SeqCst);
            Response::new(200, "healthz now fails\n")
        }
        "/ready" if state.ready.load(Ordering::SeqCst) => Response::new(200, "ready\n"),
        "/ready" => Response::new(503, "not ready\n"),
        "/unready" => {
            state.ready.store(false, Ordering::SeqCst);
            Response::new(200, "ready now fails\n")
        }
        "/ready-again" => {
            state.ready.store(true, Ordering::SeqCst);
            Response::new(200, "ready again\n")
        }
        _ => Response::new(404, "not found\n"),
    }
}

/// Writes one line to stdout and flushes it (errors ignored: logging never stops serving).
fn log(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Reads the request head (through the blank line); `None` when it is too long or the peer
/// closed first.
fn read_head(stream: &mut TcpStream) -> io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = find_end(&buf) {
            buf.truncate(end);
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            // A request line without the blank line still gets an answer (e.g. `nc`).
            return Ok((!buf.is_empty()).then(|| String::from_utf8_lossy(&buf).into_owned()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find_end(buf: &[u8]) -> Option<usize> {
    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some(i);
    }
    buf.windows(2).position(|w| w == b"\n\n")
}

/// Serves one HTTP connection: one request, one answer, close.
fn handle_http(mut stream: TcpStream, state: &State) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let peer = stream.peer_addr()?;
    let local = stream.local_addr()?;
    let Some(head) = read_head(&mut stream)? else {
        return Ok(());
    };
    let (resp, with_body, what) = match parse_request_line(&head) {
        Some(req) => {
            let resp = route(&req, state, local, peer);
            (
                resp,
                req.method != "HEAD",
                format!("{} {}", req.method, req.path),
            )
        }
        None => (Response::new(400, "bad request\n"), true, "BAD".to_string()),
    };
    log(&format!("{what} from {peer} -> {}", resp.status));
    stream.write_all(&resp.to_bytes(with_body))?;
    stream.flush()?;
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}

/// Echoes one TCP connection until the peer's EOF, then closes.
fn handle_echo(stream: TcpStream) -> io::Result<()> {
    let peer = stream.peer_addr()?;
    log(&format!("tcp echo from {peer}"));
    let mut reader = stream.try_clone()?;
    let mut writer = stream;
    let n = io::copy(&mut reader, &mut writer)?;
    let _ = writer.shutdown(Shutdown::Write);
    log(&format!("tcp echo from {peer} done, {n} bytes"));
    Ok(())
}

/// The listening sockets.
#[derive(Debug)]
pub struct Sockets {
    /// HTTP listener.
    pub http: TcpListener,
    /// TCP echo listener.
    pub echo_tcp: TcpListener,
    /// UDP echo socket (same port number as `echo_tcp` when bound by [`bind`]).
    pub echo_udp: UdpSocket,
}

/// Binds all three on 0.0.0.0; with `echo_port` 0 UDP takes the port TCP was given.
pub fn bind(http_port: u16, echo_port: u16) -> io::Result<Sockets> {
    let any = Ipv4Addr::UNSPECIFIED;
    let http = TcpListener::bind((any, http_port))?;
    let echo_tcp = TcpListener::bind((any, echo_port))?;
    let echo_udp = UdpSocket::bind((any, echo_tcp.local_addr()?.port()))?;
    Ok(Sockets {
        http,
        echo_tcp,
        echo_udp,
    })
}

/// Starts the accept loops and the UDP loop on their own threads and returns at once.
pub fn serve(sockets: Sockets, state: Arc<State>) -> io::Result<()> {
    let Sockets {
        http,
        echo_tcp,
        echo_udp,
    } = sockets;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for conn in http.incoming() {
                match conn {
                    Ok(stream) => {
                        let state = state.clone();
                        std::thread::spawn(move || {
                            if let Err(e) = handle_http(stream, &state) {
                                log(&format!("http: {e}"));
                            }
                        });
                    }
                    Err(e) => accept_failed("http", e),
                }
            }
        })?;
    std::thread::Builder::new()
        .name("tcp-echo".into())
        .spawn(move || {
            for conn in echo_tcp.incoming() {
                match conn {
                    Ok(stream) => {
                        std::thread::spawn(move || {
                            if let Err(e) = handle_echo(stream) {
                                log(&format!("tcp echo: {e}"));
                            }
                        });
                    }
                    Err(e) => accept_failed("tcp echo", e),
                }
            }
        })?;
    std::thread::Builder::new()
        .name("udp-echo".into())
        .spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                match echo_udp.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        log(&format!("udp echo from {from}, {n} bytes"));
                        if let Err(e) = echo_udp.send_to(&buf[..n], from) {
                            log(&format!("udp echo to {from}: {e}"));
                        }
                    }
                    Err(e) => {
                        log(&format!("udp echo: {e}"));
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })?;
    Ok(())
}

/// Logs a failed accept and backs off briefly (EMFILE and friends would otherwise spin).
fn accept_failed(what: &str, e: io::Error) {
    log(&format!("{what} accept: {e}"));
    std::thread::sleep(Duration::from_millis(50));
}

/// The signal that arrived (0: none yet).
static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SIGNALLED.store(sig, Ordering::SeqCst);
}

/// Installs the SIGTERM and SIGINT handler (as PID 1 in a PID namespace the default actions
/// would be ignored).
fn install_handlers() -> io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "signal",
    }
}

fn main() {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    if let Err(e) = install_handlers() {
        eprintln!("sluice-echo: installing signal handlers: {e}");
        std::process::exit(1);
    }
    let sockets = match bind(opts.http_port, opts.echo_port) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "sluice-echo: binding http=:{} echo=:{}: {e}",
                opts.http_port, opts.echo_port
            );
            std::process::exit(1);
        }
    };
    let http_port = sockets.http.local_addr().map_or(0, |a| a.port());
    let echo_port = sockets.echo_tcp.local_addr().map_or(0, |a| a.port());
    let state = Arc::new(State::new(hostname()));
    if let Err(e) = serve(sockets, state) {
        eprintln!("sluice-echo: starting threads: {e}");
        std::process::exit(1);
    }
    log(&format!(
        "sluice-echo listening http=:{http_port} echo=:{echo_port} (tcp+udp)"
    ));
    let sig = loop {
        match SIGNALLED.load(Ordering::SeqCst) {
            0 => std::thread::sleep(Duration::from_millis(100)),
            sig => break sig,
        }
    };
    log(&format!(
        "sluice-echo: {}, serving {} more seconds, then exiting",
        signal_name(sig),
        opts.drain_seconds
    ));
    std::thread::sleep(Duration::from_secs(opts.drain_seconds));
    log("sluice-echo: exiting 0");
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn args(a: &[&str]) -> Result<Options, String> {
        parse_args(a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags() {
        assert_eq!(args(&[]).unwrap(), Options::default());
        let o = args(&["--http-port", "0", "--echo-port=7", "--drain-seconds", "3"]).unwrap();
        assert_eq!(
            o,
            Options {
                http_port: 0,
                echo_port: 7,
                drain_seconds: 3
            }
        );
        assert!(args(&["--http-port"]).is_err());
        assert!(args(&["--http-port", "x"]).is_err());
        assert!(args(&["--http-port", "70000"]).is_err());
        assert!(args(&["--nope", "1"]).is_err());
    }

    #[test]
    fn request_lines() {
        let r = parse_request_line("GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/"));
        let r = parse_request_line("GET /healthz?x=1 HTTP/1.0").unwrap();
        assert_eq!(r.path, "/healthz");
        let r = parse_request_line("GET http://10.0.0.1:8080/ready HTTP/1.1\r\n").unwrap();
        assert_eq!(r.path, "/ready");
        let r = parse_request_line("GET http://10.0.0.1:8080 HTTP/1.1\r\n").unwrap();
        assert_eq!(r.path, "/");
        let r = parse_request_line("HEAD /x HTTP/1.1\n").unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("HEAD", "/x"));
        for bad in [
            "",
            "GET",
            "GET /",
            "GET / FTP/1",
            "GET  / HTTP/1.1",
            "GET / HTTP/1.1 x",
        ] {
            assert_eq!(parse_request_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn responses() {
        let local = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 5), 8080));
        let peer = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 3), 41234));
        assert_eq!(
            identity("web-0", local, peer),
            "pod=web-0 ip=10.244.1.5 client=10.244.2.3:41234\n"
        );
        let r = Response::new(200, "ok\n");
        assert_eq!(
            String::from_utf8(r.to_bytes(true)).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\
             Connection: close\r\n\r\nok\n"
        );
        assert!(String::from_utf8(r.to_bytes(false))
            .unwrap()
            .ends_with("\r\n\r\n"));

        let state = State::new("p".into());
        let get = |path: &str| {
            let req = RequestLine {
                method: "GET".into(),
                path: path.into(),
            };
            route(&req, &state, local, peer).status
        };
        assert_eq!(get("/healthz"), 200);
        assert_eq!(get("/sick"), 200);
        assert_eq!(get("/healthz"), 500);
        assert_eq!(get("/ready"), 200);
        assert_eq!(get("/unready"), 200);
        assert_eq!(get("/ready"), 503);
        assert_eq!(get("/ready-again"), 200);
        assert_eq!(get("/ready"), 200);
        assert_eq!(get("/nope"), 404);
        let post = RequestLine {
            method: "POST".into(),
            path: "/".into(),
        };
        assert_eq!(route(&post, &state, local, peer).status, 405);
    }

    fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: test\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out.split_once("\r\n\r\n").unwrap().1.to_string();
        (status, body)
    }

    #[test]
    fn serves_over_loopback() {
        let lo = Ipv4Addr::LOCALHOST;
        let sockets = Sockets {
            http: TcpListener::bind((lo, 0)).unwrap(),
            echo_tcp: TcpListener::bind((lo, 0)).unwrap(),
            echo_udp: UdpSocket::bind((lo, 0)).unwrap(),
        };
        let http = sockets.http.local_addr().unwrap();
        let tcp = sockets.echo_tcp.local_addr().unwrap();
        let udp = sockets.echo_udp.local_addr().unwrap();
        serve(sockets, Arc::new(State::new("echo-test".into()))).unwrap();

        let (status, body) = http_get(http, "/");
        assert_eq!(status, 200);
        let rest = body
            .strip_prefix("pod=echo-test ip=127.0.0.1 client=127.0.0.1:")
            .unwrap_or_else(|| panic!("{body:?}"));
        assert!(rest.trim_end().parse::<u16>().is_ok(), "{body:?}");
        assert!(body.ends_with('\n'));
        assert_eq!(http_get(http, "/healthz"), (200, "ok\n".into()));
        assert_eq!(http_get(http, "/sick").0, 200);
        assert_eq!(http_get(http, "/healthz").0, 500);
        assert_eq!(http_get(http, "/missing").0, 404);

        let mut s = TcpStream::connect(tcp).unwrap();
        s.write_all(b"hello over tcp").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"hello over tcp");

        let u = UdpSocket::bind((lo, 0)).unwrap();
        u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        u.send_to(b"hello over udp", udp).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = u.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"hello over udp"[..], udp));
    }

    #[test]
    fn bind_ephemeral_shares_the_echo_port() {
        let s = bind(0, 0).unwrap();
        assert_eq!(
            s.echo_tcp.local_addr().unwrap().port(),
            s.echo_udp.local_addr().unwrap().port()
        );
    }
}
