//! Shared by the HTTP-level tests: an in-process `sluice-control` on 127.0.0.1:0 and a raw
//! HTTP/1.1-over-TLS client, so tests control every byte a client sends (half-sent heads,
//! bodies shorter than their Content-Length, garbage).
#![allow(dead_code)] // each test binary uses a different part

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use sluice_control::conn::Limits;
use sluice_control::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub struct Fixture {
    pub server: Server,
    _dir: tempfile::TempDir,
    pub data: std::path::PathBuf,
    pub connector: TlsConnector,
    pub admin: String,
}

pub fn token_of(kubeconfig: &str) -> String {
    kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("token:"))
        .expect("token in kubeconfig")
        .trim()
        .to_string()
}

/// A TLS connector trusting the server's CA, speaking HTTP/1.1 only (the tests write raw
/// requests).
pub fn connector(ca: &std::path::Path) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(tls))
}

/// Starts `sluice-control` in-process on 127.0.0.1:0 with these limits.
pub async fn start(limits: Limits) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cfg = ServerConfig::new(data.clone());
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.limits = limits;
    let server = Server::start(cfg).await.unwrap();
    let admin = token_of(&std::fs::read_to_string(&server.kubeconfig).unwrap());
    let connector = connector(&data.join("ca.crt"));
    Fixture {
        server,
        _dir: dir,
        data,
        connector,
        admin,
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Resp {
    pub code: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    /// Asserts a `Status` with this code and reason.
    pub fn status(&self, code: u16, reason: &str) -> Value {
        assert_eq!(self.code, code, "{}", String::from_utf8_lossy(&self.body));
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/json")
        );
        let v = self.json();
        assert_eq!(v["kind"], "Status", "{v}");
        assert_eq!(v["code"], code, "{v}");
        assert_eq!(v["reason"], reason, "{v}");
        v
    }
}

impl Fixture {
    pub async fn tcp(&self) -> TcpStream {
        TcpStream::connect(self.server.addr).await.unwrap()
    }

    pub async fn tls(&self) -> TlsStream<TcpStream> {
        let tcp = self.tcp().await;
        self.connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    /// One request on a fresh connection; `extra` are header lines (without CRLF).
    pub async fn req(&self, method: &str, path: &str, extra: &[&str], body: &[u8]) -> Resp {
        let mut s = self.tls().await;
        send(&mut s, method, path, extra, body).await;
        read_resp(&mut s).await.expect("a response")
    }

    /// A request as the administrator.
    pub async fn admin(&self, method: &str, path: &str, ct: Option<&str>, body: &[u8]) -> Resp {
        let auth = format!("Authorization: Bearer {}", self.admin);
        let ctl = ct.map(|c| format!("Content-Type: {c}"));
        let mut h = vec![auth.as_str()];
        h.extend(ctl.as_deref());
        self.req(method, path, &h, body).await
    }
}

pub async fn send<S: AsyncWriteExt + Unpin>(
    s: &mut S,
    method: &str,
    path: &str,
    extra: &[&str],
    body: &[u8],
) {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in extra {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    // A server that refuses the request from its headers (413) may answer and close before
    // the body is all sent: the write then fails (EPIPE) and the response is what counts.
    let _ = s.write_all(body).await;
    let _ = s.flush().await;
}

/// Reads one response (Content-Length or chunked body); None on EOF before a status line.
pub async fn read_resp<S: AsyncReadExt + Unpin>(s: &mut S) -> Option<Resp> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let code: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut rest = buf[end + 4..].to_vec();
    let mut r = Resp {
        code,
        head,
        body: Vec::new(),
    };
    if let Some(n) = r.header("content-length") {
        let n: usize = n.parse().unwrap();
        while rest.len() < n {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(k) => rest.extend_from_slice(&chunk[..k]),
            }
        }
        rest.truncate(n);
        r.body = rest;
    } else if r.header("transfer-encoding").as_deref() == Some("chunked") {
        // Enough for the tests: read until the terminating chunk.
        while !rest.ends_with(b"0\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(k) => rest.extend_from_slice(&chunk[..k]),
            }
        }
        r.body = dechunk(&rest);
    }
    Some(r)
}

pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 2 + n + 2..];
    }
    out
}

/// Waits until the peer closes the connection; returns how long that took (None: still
/// open at `within`).
pub async fn closed_within<S: AsyncReadExt + Unpin>(
    s: &mut S,
    within: Duration,
) -> Option<Duration> {
    let t0 = Instant::now();
    let mut b = [0u8; 1024];
    loop {
        match tokio::time::timeout(within.saturating_sub(t0.elapsed()), s.read(&mut b)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t0.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// An authenticated GET answered, and how long it took.
pub async fn timed_get(f: &Fixture) -> Duration {
    let t0 = Instant::now();
    let r = f
        .admin("GET", "/api/v1/namespaces/default", None, b"")
        .await;
    assert_eq!(r.code, 200);
    t0.elapsed()
}
