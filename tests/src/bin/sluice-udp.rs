//! A tiny UDP peer for the end-to-end suites (busybox's `nc` has no UDP mode).
//!
//! ```text
//! sluice-udp serve PORT REPLY          answer every datagram with REPLY
//! sluice-udp ask ADDR:PORT [SRC_PORT]  send one datagram (from SRC_PORT if given, so that
//!                                      repeated asks share one conntrack entry) and print the
//!                                      reply, or `timeout` / `error: …` after 1 s
//! sluice-udp stream ADDR:PORT          one connected socket asking every 200 ms, a line per
//!                                      answer (`timeout` / `error: …` likewise); after an
//!                                      error it connects a new socket, as an application that
//!                                      re-resolves would
//! ```

use std::net::UdpSocket;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", port, reply] => serve(port, reply),
        ["ask", addr] => ask(addr, "0"),
        ["ask", addr, src] => ask(addr, src),
        ["stream", addr] => stream(addr),
        _ => {
            eprintln!("usage: sluice-udp serve PORT REPLY | sluice-udp ask ADDR:PORT [SRC_PORT] | sluice-udp stream ADDR:PORT");
            std::process::exit(2);
        }
    }
}

fn serve(port: &str, reply: &str) {
    let sock = UdpSocket::bind(format!("0.0.0.0:{port}")).expect("bind");
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((_, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(reply.as_bytes(), peer);
        }
    }
}

fn ask(addr: &str, src: &str) {
    let sock = UdpSocket::bind(format!("0.0.0.0:{src}")).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    // Connected, so an ICMP port unreachable (a REJECT) surfaces as "connection refused".
    if let Err(e) = sock.connect(addr).and_then(|()| sock.send(b"?")) {
        println!("error: {e}");
        return;
    }
    let mut buf = [0u8; 2048];
    match sock.recv(&mut buf) {
        Ok(n) => println!("{}", String::from_utf8_lossy(&buf[..n])),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            println!("timeout")
        }
        Err(e) => println!("error: {e}"),
    }
}

fn stream(addr: &str) {
    use std::io::Write;
    let connect = || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        sock.connect(addr).map(|()| sock)
    };
    let mut sock = connect();
    let mut buf = [0u8; 2048];
    loop {
        let line = match &sock {
            Err(e) => format!("error: {e}"),
            Ok(s) => match s.send(b"?").and_then(|_| s.recv(&mut buf)) {
                Ok(n) => String::from_utf8_lossy(&buf[..n]).to_string(),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    "timeout".to_string()
                }
                Err(e) => format!("error: {e}"),
            },
        };
        println!("{line}");
        let _ = std::io::stdout().flush();
        if line.starts_with("error") {
            sock = connect();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
