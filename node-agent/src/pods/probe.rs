//! Container probes (startup, readiness, liveness) with kubelet's timing rules, and the
//! restart back-off.
//!
//! A [`Prober`] holds one probe's counters: it is due `initialDelaySeconds` after the
//! container started and every `periodSeconds` after that; `successThreshold` consecutive
//! successes flip the result to success, `failureThreshold` consecutive failures to failure.
//! Readiness starts as failure, liveness and startup as success-until-proven-otherwise
//! (liveness) / unknown (startup). The handlers: `httpGet` (HTTP/1.1 by hand over a TCP
//! connection: a 2xx or 3xx status line is success; a few lines, where an HTTP client crate
//! would add TLS and pooling that probes do not use), `tcpSocket` (a connect), `exec` (CRI
//! ExecSync, exit 0) and `grpc` (`grpc.health.v1.Health/Check`, SERVING is success; the two
//! messages are declared here with prost, as no crate of this stack ships them).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cri::Cri;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// startupProbe.
    Startup,
    /// readinessProbe.
    Readiness,
    /// livenessProbe.
    Liveness,
}

/// One probe's state for one container attempt.
#[derive(Debug, Clone)]
pub struct Prober {
    /// Which probe.
    pub kind: Kind,
    spec: Probe,
    successes: i32,
    failures: i32,
    /// The current result.
    pub ok: bool,
    next: Instant,
}

impl Prober {
    /// A prober for a container that started at `started`.
    pub fn new(kind: Kind, spec: Probe, started: Instant) -> Prober {
        let delay = Duration::from_secs(spec.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        Prober {
            kind,
            ok: kind == Kind::Liveness,
            spec,
            successes: 0,
            failures: 0,
            next: started + delay,
        }
    }

    /// When it is next due.
    pub fn due(&self) -> Instant {
        self.next
    }

    fn period(&self) -> Duration {
        Duration::from_secs(self.spec.period_seconds.unwrap_or(10).max(1) as u64)
    }

    /// Timeout of one probe.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.spec.timeout_seconds.unwrap_or(1).max(1) as u64)
    }

    /// Records a result taken at `now`; returns whether the outcome changed.
    pub fn record(&mut self, success: bool, now: Instant) -> bool {
        self.next = now + self.period();
        let before = self.ok;
        if success {
            self.failures = 0;
            self.successes += 1;
            // Liveness and startup need exactly one success (the API enforces it).
            if self.successes >= self.spec.success_threshold.unwrap_or(1).max(1) {
                self.ok = true;
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.failures >= self.spec.failure_threshold.unwrap_or(3).max(1) {
                self.ok = false;
            }
        }
        before != self.ok
    }

    /// Failures in a row so far.
    pub fn consecutive_failures(&self) -> i32 {
        self.failures
    }

    /// Whether enough failures piled up for the container to be killed (liveness, startup).
    pub fn failed(&self) -> bool {
        self.failures >= self.spec.failure_threshold.unwrap_or(3).max(1)
    }

    /// Runs the probe's handler once against a container.
    pub async fn run(
        &self,
        cri: &Cri,
        container: &Container,
        container_id: &str,
        pod_ip: &str,
    ) -> Result<(), String> {
        run_handler(
            &self.spec,
            cri,
            container,
            container_id,
            pod_ip,
            self.timeout(),
        )
        .await
    }
}

/// A named or numbered port of a container.
pub fn resolve_port(c: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => {
            if let Ok(p) = name.parse::<u16>() {
                return Ok(p);
            }
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port as u16)
                .ok_or_else(|| format!("port {name:?} not found in container {}", c.name))
        }
    }
}

async fn run_handler(
    p: &Probe,
    cri: &Cri,
    c: &Container,
    container_id: &str,
    pod_ip: &str,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(h) = &p.http_get {
        let host = h.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let port = resolve_port(c, &h.port)?;
        if h.scheme.as_deref() == Some("HTTPS") {
            return Err("HTTPS probes are not supported yet".into());
        }
        let headers: Vec<(String, String)> = h
            .http_headers
            .iter()
            .flatten()
            .map(|x| (x.name.clone(), x.value.clone()))
            .collect();
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        return tokio::time::timeout(timeout, http_get(&host, port, &path, &headers))
            .await
            .map_err(|_| {
                format!("Get \"http://{host}:{port}{path}\": timeout after {timeout:?}")
            })?;
    }
    if let Some(t) = &p.tcp_socket {
        let host = t.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let port = resolve_port(c, &t.port)?;
        let ip: IpAddr = host.parse().map_err(|_| format!("bad host {host}"))?;
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((ip, port))).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {ip}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {ip}:{port}: i/o timeout")),
        };
    }
    if let Some(e) = &p.exec {
        let cmd = e.command.clone().unwrap_or_default();
        return match cri.exec_sync(container_id, cmd, timeout).await {
            Ok(r) if r.exit_code == 0 => Ok(()),
            Ok(r) => Err(format!(
                "command exited {}: {}",
                r.exit_code,
                String::from_utf8_lossy(&r.stdout).trim()
            )),
            Err(s) => Err(s.message().to_string()),
        };
    }
    if let Some(g) = &p.grpc {
        let port = u16::try_from(g.port).map_err(|_| format!("invalid port {}", g.port))?;
        let service = g.service.clone().unwrap_or_default();
        return tokio::time::timeout(timeout, grpc_check(pod_ip, port, service, timeout))
            .await
            .map_err(|_| format!("timeout: health rpc did not complete within {timeout:?}"))?;
    }
    Err("probe has no handler".into())
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    /// The service to check ("" for the server as a whole).
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    /// UNKNOWN 0, SERVING 1, NOT_SERVING 2, SERVICE_UNKNOWN 3.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// The gRPC health check's path.
pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// One `grpc.health.v1.Health/Check` call over plaintext HTTP/2; SERVING is success.
pub async fn grpc_check(
    host: &str,
    port: u16,
    service: String,
    timeout: Duration,
) -> Result<(), String> {
    let ip: IpAddr = host.parse().map_err(|_| format!("bad host {host}"))?;
    let ch = tonic::transport::Endpoint::from_shared(format!(
        "http://{}",
        std::net::SocketAddr::new(ip, port)
    ))
    .map_err(|e| e.to_string())?
    .connect_timeout(timeout)
    .timeout(timeout)
    .connect()
    .await
    .map_err(|e| format!("failed to connect service \"{ip}:{port}\" within {timeout:?}: {e}"))?;
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.map_err(|e| e.to_string())?;
    let resp: tonic::Response<HealthCheckResponse> = grpc
        .unary(
            tonic::Request::new(HealthCheckRequest { service }),
            http::uri::PathAndQuery::from_static(HEALTH_CHECK),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .map_err(|s| format!("health rpc failed: {}: {}", s.code(), s.message()))?;
    match resp.into_inner().status {
        1 => Ok(()),
        2 => Err("service unhealthy (responded with \"NOT_SERVING\")".into()),
        3 => Err("service unhealthy (responded with \"SERVICE_UNKNOWN\")".into()),
        s => Err(format!("service unhealthy (responded with status {s})")),
    }
}

/// `GET path` over HTTP/1.1 with `Connection: close`; a 2xx or 3xx status is success.
pub async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let ip: IpAddr = host.parse().map_err(|_| format!("bad host {host}"))?;
    let url = format!("http://{host}:{port}{path}");
    let mut s = tokio::net::TcpStream::connect((ip, port))
        .await
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.35\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get \"{url}\": malformed HTTP response"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// Restart back-off of one container (kubelet's: 10 s doubling to 5 min; the first restart
/// is immediate; a container that ran 10 minutes without exiting starts over).
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    delay: Option<Duration>,
}

/// The first back-off.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// The longest back-off.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

impl Backoff {
    /// After an exit of a container that ran for `ran`: how long to wait before the restart
    /// (zero for the first restart), and the delay grows for the next one.
    pub fn next(&mut self, ran: Duration) -> Duration {
        if ran >= 2 * BACKOFF_MAX {
            self.delay = None;
        }
        let wait = self.delay.unwrap_or(Duration::ZERO);
        self.delay = Some(match self.delay {
            None => BACKOFF_INITIAL,
            Some(d) => (d * 2).min(BACKOFF_MAX),
        });
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn probe(v: serde_json::Value) -> Probe {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn thresholds_and_timing() {
        let t0 = Instant::now();
        let mut r = Prober::new(
            Kind::Readiness,
            probe(json!({"periodSeconds": 2, "initialDelaySeconds": 3,
                         "successThreshold": 2, "failureThreshold": 2, "tcpSocket": {"port": 1}})),
            t0,
        );
        assert!(!r.ok);
        assert_eq!(r.due(), t0 + Duration::from_secs(3));
        assert!(!r.record(true, t0));
        assert_eq!(r.due(), t0 + Duration::from_secs(2));
        assert!(r.record(true, t0));
        assert!(r.ok);
        assert!(!r.record(false, t0));
        assert!(r.ok, "one failure is below the threshold");
        assert!(r.record(false, t0));
        assert!(!r.ok);
        let l = Prober::new(
            Kind::Liveness,
            probe(json!({"exec": {"command": ["x"]}})),
            t0,
        );
        assert!(l.ok, "liveness passes until it fails");
        assert_eq!(l.timeout(), Duration::from_secs(1));
    }

    #[test]
    fn back_off_doubles_and_resets() {
        let mut b = Backoff::default();
        let short = Duration::from_secs(1);
        let waits: Vec<u64> = (0..8).map(|_| b.next(short).as_secs()).collect();
        assert_eq!(waits, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.next(Duration::from_secs(601)), Duration::ZERO);
        assert_eq!(b.next(short), BACKOFF_INITIAL);
    }

    #[test]
    fn named_ports() {
        let c: Container = serde_json::from_value(json!({"name": "a",
            "ports": [{"name": "http", "containerPort": 8080}]}))
        .unwrap();
        assert_eq!(
            resolve_port(&c, &IntOrString::String("http".into())),
            Ok(8080)
        );
        assert_eq!(resolve_port(&c, &IntOrString::Int(9000)), Ok(9000));
        assert!(resolve_port(&c, &IntOrString::String("nope".into())).is_err());
    }

    /// A gRPC health server answering `status` for every service.
    #[derive(Clone)]
    struct Health(i32);

    impl tonic::server::NamedService for Health {
        const NAME: &'static str = "grpc.health.v1.Health";
    }

    impl tower::Service<http::Request<tonic::body::Body>> for Health {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
        >;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            struct Check(i32);
            impl tonic::server::UnaryService<HealthCheckRequest> for Check {
                type Response = HealthCheckResponse;
                type Future =
                    std::future::Ready<Result<tonic::Response<HealthCheckResponse>, tonic::Status>>;
                fn call(&mut self, _: tonic::Request<HealthCheckRequest>) -> Self::Future {
                    std::future::ready(Ok(tonic::Response::new(HealthCheckResponse {
                        status: self.0,
                    })))
                }
            }
            let status = self.0;
            Box::pin(async move {
                assert_eq!(req.uri().path(), HEALTH_CHECK);
                let mut g = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(g.unary(Check(status), req).await)
            })
        }
    }

    #[tokio::test]
    async fn grpc_health_checks() {
        let mut ports = Vec::new();
        for status in [1, 2] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            ports.push(l.local_addr().unwrap().port());
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(Health(status))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
            );
        }
        let t = Duration::from_secs(2);
        assert_eq!(
            grpc_check("127.0.0.1", ports[0], String::new(), t).await,
            Ok(())
        );
        let e = grpc_check("127.0.0.1", ports[1], "x".into(), t)
            .await
            .unwrap_err();
        assert!(e.contains("NOT_SERVING"), "{e}");
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        assert!(grpc_check("127.0.0.1", port, String::new(), t)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn http_get_reads_the_status_line() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            for code in [200, 503] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
                assert!(req.contains("X-A: b\r\n"), "{req}");
                s.write_all(format!("HTTP/1.1 {code} X\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
            }
        });
        let h = [("X-A".to_string(), "b".to_string())];
        assert_eq!(http_get("127.0.0.1", port, "/healthz", &h).await, Ok(()));
        let e = http_get("127.0.0.1", port, "/healthz", &h)
            .await
            .unwrap_err();
        assert!(e.contains("503"), "{e}");
    }
}
