//! The agent's kubelet API: what kube-apiserver's `pods/log` and `pods/exec` reach on a node.
//!
//! An HTTPS server on `--kubelet-port` (10250) of the node IP, started when the agent runs pods.
//! Its serving certificate is self-signed at start (the API server does not verify it, as
//! kube-apiserver does not by default); clients must present a certificate signed by the
//! cluster CA (the `certificate-authority-data` of the agent's kubeconfig), and only the API
//! server's (CN `kube-apiserver-kubelet-client`, or organisation `system:masters`) is served.
//!
//! - `GET /containerLogs/{namespace}/{pod}/{container}?follow=&previous=&tailLines=&timestamps=
//!   &sinceSeconds=&sinceTime=&limitBytes=`: the container's CRI log file (its `log_path` from
//!   ContainerStatus), as kubelet's `ReadLogs` prints it. The current attempt is the container
//!   with the highest `metadata.attempt`; `previous` the one before it (the pod workers keep
//!   it). `follow` polls the file until the container stops running or the client leaves.
//! - `GET|POST /exec/{namespace}/{pod}/{container}?command=…&stdin=1&stdout=1&stderr=1&tty=1`:
//!   a WebSocket upgrade (`v5.channel.k8s.io` or `v4.channel.k8s.io`; channel byte 0 stdin,
//!   1 stdout, 2 stderr, 3 error/Status, 4 resize, v5's 255 closes a stream). CRI `Exec` gives
//!   a URL on containerd's streaming server (loopback of this network namespace, where the
//!   agent runs too); the agent speaks SPDY/3.1 (`v4.channel.k8s.io`) to it, as kubelet and
//!   kube-apiserver do, because only SPDY can close stdin alone: v5's `[255, 0]` becomes the
//!   stdin stream's FIN, so `cat` sees the end of its input. Frames are relayed both ways
//!   until the runtime ends the session (the command's Status on the error channel first).
//!   A SPDY upgrade (kubectl < 1.30, or a newer one falling back) is passed on to the
//!   streaming server with its `X-Stream-Protocol-Version`s and the connections are spliced,
//!   as kubelet proxies it.
//!
//! Pure parts with unit tests: [`LogOptions::parse`], [`parse_cri_line`], [`LogWriter`] (P/F
//! joins, timestamps, since, limitBytes), [`tail_start`], [`pick_container`],
//! [`ExecOptions::parse`], [`spdy`] framing, [`subject_names`] (the client certificate's CN
//! and O).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_openapi::jiff::Timestamp;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tower::ServiceExt;

use super::cri::{labels, Cri};

/// kubelet's port.
pub const DEFAULT_PORT: u16 = 10250;
/// The common name of the API server's client certificate for kubelets.
pub const APISERVER_CLIENT_CN: &str = "kube-apiserver-kubelet-client";
/// The group whose members may do anything.
pub const MASTERS: &str = "system:masters";
/// WebSocket subprotocols of remote command streams.
pub const V5: &str = "v5.channel.k8s.io";
/// The v4 subprotocol (the newest containerd 1.6's streaming server speaks).
pub const V4: &str = "v4.channel.k8s.io";
/// How often a followed log file is polled for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(150);
/// How often a followed container's state is asked of the runtime.
const STATE_CHECK: Duration = Duration::from_secs(1);
/// The TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` and serves the kubelet API in the background; the CA that signs the API
/// server's client certificate comes from the agent's kubeconfig.
pub async fn start(
    addr: SocketAddr,
    kubeconfig: &Path,
    node_name: &str,
    cri: Cri,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .context("loading kubeconfig")?;
    let mut cas = cfg.root_cert.unwrap_or_default();
    if let (true, Some(file)) = (cas.is_empty(), &cfg.root_cert_file) {
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_file_iter(file)
            .with_context(|| format!("reading {}", file.display()))?
        {
            cas.push(
                c.with_context(|| format!("reading {}", file.display()))?
                    .to_vec(),
            );
        }
    }
    if cas.is_empty() {
        anyhow::bail!(
            "the kubeconfig has no certificate-authority(-data): the kubelet API cannot tell the API server's client certificate"
        );
    }
    let tls = tls_config(&cas, addr.ip(), node_name)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the kubelet API on {addr}"))?;
    tracing::info!(%addr, "kubelet API (containerLogs, exec) serving");
    let app = router(Arc::new(Ctx { cri }));
    Ok(tokio::spawn(accept_loop(
        listener,
        tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
        app,
    )))
}

/// The server's TLS: a fresh self-signed certificate for the node's name and IP, and client
/// certificates required, verified against `cas` (DER).
pub fn tls_config(
    cas: &[Vec<u8>],
    ip: IpAddr,
    node_name: &str,
) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for der in cas {
        roots
            .add(CertificateDer::from(der.clone()))
            .context("adding the cluster CA")?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .context("client certificate verifier")?;
    let mut names = vec![node_name.to_string()];
    if !ip.is_unspecified() {
        names.push(ip.to_string());
    }
    let mut params = rcgen::CertificateParams::new(names)?;
    // kubelet's self-signed serving certificate is named `<host>@<unix time>`.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{node_name}@{now}"));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "kubelet API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "kubelet API handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let allowed = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| subject_names(c.as_ref()))
                .is_some_and(|(cn, o)| {
                    cn.iter().any(|n| n == APISERVER_CLIENT_CN) || o.iter().any(|g| g == MASTERS)
                });
            let svc = hyper::service::service_fn(
                move |req: hyper::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    async move {
                        if !allowed {
                            return Ok::<_, Infallible>(text(
                            StatusCode::FORBIDDEN,
                            format!(
                                "Forbidden: only the API server (CN {APISERVER_CLIENT_CN} or O {MASTERS}) may use the kubelet API"
                            ),
                        ));
                        }
                        Ok(match app.oneshot(req.map(Body::new)).await {
                            Ok(r) => r,
                            Err(never) => match never {},
                        })
                    }
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "kubelet API connection ended");
            }
        });
    }
}

struct Ctx {
    cri: Cri,
}

fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route("/exec/{ns}/{pod}/{container}", get(exec).post(exec))
        .fallback(|| async { text(StatusCode::NOT_FOUND, "404 page not found".into()) })
        .with_state(ctx)
}

fn text(code: StatusCode, body: String) -> Response {
    (
        code,
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// An error answered as kubelet answers them: a status and a plain-text message.
type HttpError = (StatusCode, String);

fn cri_error(s: tonic::Status) -> HttpError {
    (StatusCode::INTERNAL_SERVER_ERROR, s.message().to_string())
}

// --- containerLogs -------------------------------------------------------------------------

/// `PodLogOptions` as the kubelet reads them from the query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    /// Keep streaming new lines.
    pub follow: bool,
    /// The previous attempt of the container.
    pub previous: bool,
    /// Prefix each line with its time.
    pub timestamps: bool,
    /// Only the last N lines.
    pub tail_lines: Option<u64>,
    /// At most N bytes.
    pub limit_bytes: Option<u64>,
    /// Only lines newer than N seconds.
    pub since_seconds: Option<u64>,
    /// Only lines at or after this time.
    pub since_time: Option<Timestamp>,
}

/// A boolean query value as apimachinery converts one: absent is false, `0`/`false` are false,
/// anything else (even empty) is true.
pub fn query_bool(v: Option<&str>) -> bool {
    match v {
        None => false,
        Some(v) => !(v == "0" || v.eq_ignore_ascii_case("false")),
    }
}

impl LogOptions {
    /// Parses and validates a query string.
    pub fn parse(query: &str) -> Result<LogOptions, String> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let int = |k: &str, min: i64| -> Result<Option<u64>, String> {
            match get(k) {
                None | Some("") => Ok(None),
                Some(v) => match v.parse::<i64>() {
                    Ok(n) if n >= min => Ok(Some(n as u64)),
                    Ok(n) => Err(format!(
                        "{k}: Invalid value: {n}: must be greater than or equal to {min}"
                    )),
                    Err(_) => Err(format!("{k}: Invalid value: {v:?}: must be an integer")),
                },
            }
        };
        let since_time = match get("sinceTime") {
            None | Some("") => None,
            Some(v) => Some(
                v.parse::<Timestamp>()
                    .map_err(|e| format!("sinceTime: Invalid value: {v:?}: {e}"))?,
            ),
        };
        let o = LogOptions {
            follow: query_bool(get("follow")),
            previous: query_bool(get("previous")),
            timestamps: query_bool(get("timestamps")),
            tail_lines: int("tailLines", 0)?,
            limit_bytes: int("limitBytes", 1)?,
            since_seconds: int("sinceSeconds", 1)?,
            since_time,
        };
        if o.since_seconds.is_some() && o.since_time.is_some() {
            return Err("at most one of `sinceTime` or `sinceSeconds` may be specified".into());
        }
        Ok(o)
    }

    /// The earliest time of a line to print, if any.
    pub fn since(&self, now: Timestamp) -> Option<Timestamp> {
        self.since_time.or_else(|| {
            self.since_seconds.and_then(|s| {
                now.checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(
                    s.min(i64::MAX as u64) as i64,
                ))
                .ok()
            })
        })
    }
}

/// One line of a CRI log file: `<RFC3339Nano time> <stdout|stderr> <P|F>[:more tags] <text>`.
#[derive(Debug, Clone, PartialEq)]
pub struct CriLine<'a> {
    /// The time as written.
    pub time: &'a str,
    /// `stdout` or `stderr`.
    pub stream: &'a str,
    /// `P`: the text continues in the next line; `F`: the line ends here.
    pub partial: bool,
    /// The text (without the newline).
    pub text: &'a [u8],
}

/// Parses one CRI log line (without its newline); `None` when it is not one.
pub fn parse_cri_line(line: &[u8]) -> Option<CriLine<'_>> {
    let mut fields = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(fields.next()?).ok()?;
    let stream = std::str::from_utf8(fields.next()?).ok()?;
    if time.is_empty() || !matches!(stream, "stdout" | "stderr") {
        return None;
    }
    let tag = fields.next()?;
    let text = fields.next().unwrap_or(b"");
    let partial = tag.split(|b| *b == b':').next() == Some(b"P");
    Some(CriLine {
        time,
        stream,
        partial,
        text,
    })
}

/// The time in kubelet's output format (`RFC3339NanoFixed`: always nine fraction digits), the
/// zone kept as written.
pub fn fixed_nanos(time: &str) -> String {
    // `YYYY-MM-DDTHH:MM:SS` is 19 bytes.
    if time.len() < 20 || !time.is_char_boundary(19) {
        return time.to_string();
    }
    let (head, rest) = time.split_at(19);
    let (frac, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            r.split_at(n)
        }
        None => ("", rest),
    };
    let mut f = frac.to_string();
    f.truncate(9);
    while f.len() < 9 {
        f.push('0');
    }
    format!("{head}.{f}{zone}")
}

/// Turns CRI log lines into what `kubectl logs` prints, as kubelet's log writer does: partial
/// lines are written as they come and joined by the next one, `timestamps` prefixes the time
/// of the first piece of each line, lines older than `since` are skipped, and output stops
/// after `limit` bytes.
#[derive(Debug)]
pub struct LogWriter {
    timestamps: bool,
    since: Option<Timestamp>,
    remaining: Option<u64>,
    at_line_start: bool,
}

impl LogWriter {
    /// A writer for `opts` (with `since` already resolved against the clock).
    pub fn new(opts: &LogOptions, since: Option<Timestamp>) -> LogWriter {
        LogWriter {
            timestamps: opts.timestamps,
            since,
            remaining: opts.limit_bytes,
            at_line_start: true,
        }
    }

    /// Whether the byte limit is used up.
    pub fn done(&self) -> bool {
        self.remaining == Some(0)
    }

    /// Appends the output for one raw line of the file to `out`; returns false once the byte
    /// limit is used up (nothing more is to be written).
    pub fn line(&mut self, raw: &[u8], out: &mut Vec<u8>) -> bool {
        if self.done() {
            return false;
        }
        let Some(l) = parse_cri_line(raw) else {
            // kubelet logs unparsable lines and goes on.
            return true;
        };
        let start = self.at_line_start;
        self.at_line_start = !l.partial;
        if let Some(since) = self.since {
            match l.time.parse::<Timestamp>() {
                Ok(t) if t < since => return true,
                _ => {}
            }
        }
        let mut chunk = Vec::with_capacity(l.text.len() + 32);
        if self.timestamps && start {
            chunk.extend_from_slice(fixed_nanos(l.time).as_bytes());
            chunk.push(b' ');
        }
        chunk.extend_from_slice(l.text);
        if !l.partial {
            chunk.push(b'\n');
        }
        if let Some(r) = &mut self.remaining {
            let n = (chunk.len() as u64).min(*r) as usize;
            out.extend_from_slice(&chunk[..n]);
            *r -= n as u64;
            return *r > 0;
        }
        out.extend_from_slice(&chunk);
        true
    }
}

/// Where the last `n` lines of a CRI log begin in `buf`, a suffix of the file (`at_file_start`:
/// it is the whole file). A line is a logical one: `P` pieces count with the `F` line ending
/// them. `None` when `buf` holds fewer than `n` lines that are known to start in it (read more
/// of the file); at the file's start, the start of the file.
pub fn tail_start(buf: &[u8], n: u64, at_file_start: bool) -> Option<usize> {
    if n == 0 {
        return Some(buf.len());
    }
    // Raw line starts: the first is known only at the file's start.
    let mut starts = Vec::new();
    if at_file_start {
        starts.push(0);
    }
    for (i, b) in buf.iter().enumerate() {
        if *b == b'\n' && i + 1 < buf.len() {
            starts.push(i + 1);
        }
    }
    // A raw line starts a logical line when the line before it was full (F).
    let mut logical = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let first_of_file = at_file_start && k == 0;
        let prev_full = if first_of_file {
            true
        } else if k == 0 {
            // The line before is cut off by the buffer's start: unknown.
            continue;
        } else {
            let prev = &buf[starts[k - 1]..s - 1];
            parse_cri_line(prev).is_none_or(|l| !l.partial)
        };
        if prev_full {
            logical.push(s);
        }
    }
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if logical.len() >= n {
        return Some(logical[logical.len() - n]);
    }
    at_file_start.then_some(0)
}

/// Of a pod's containers with one name (from ListContainers), the one `previous` asks for: the
/// newest pod UID's highest attempt, or the attempt before it.
pub fn pick_container(
    mut list: Vec<cri::Container>,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<cri::Container, HttpError> {
    // A pod deleted and made again under the same name: only the newest one's containers.
    let newest_uid = list
        .iter()
        .max_by_key(|c| c.created_at)
        .and_then(|c| c.labels.get(labels::POD_UID).cloned());
    list.retain(|c| c.labels.get(labels::POD_UID) == newest_uid.as_ref());
    list.sort_by_key(|c| std::cmp::Reverse(c.metadata.as_ref().map_or(0, |m| m.attempt)));
    let idx = usize::from(previous);
    if list.len() > idx {
        return Ok(list.swap_remove(idx));
    }
    Err((
        StatusCode::BAD_REQUEST,
        if previous {
            format!("previous terminated container {container:?} in pod {pod:?} not found")
        } else {
            format!("container {container:?} in pod {pod:?} is waiting to start: ContainerCreating")
        },
    ))
}

impl Ctx {
    /// The container (current or previous attempt) of a pod by namespace, name and container
    /// name.
    async fn find(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        previous: bool,
    ) -> Result<cri::Container, HttpError> {
        let filter = cri::ContainerFilter {
            label_selector: [
                (labels::POD_NAMESPACE.to_string(), ns.to_string()),
                (labels::POD_NAME.to_string(), pod.to_string()),
                (labels::CONTAINER_NAME.to_string(), container.to_string()),
                (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let list = self
            .cri
            .rt
            .clone()
            .list_containers(cri::ListContainersRequest {
                filter: Some(filter),
            })
            .await
            .map_err(cri_error)?
            .into_inner()
            .containers;
        pick_container(list, pod, container, previous)
    }

    async fn running(&self, id: &str) -> bool {
        matches!(
            self.cri.container_status(id).await,
            Ok(Some(s)) if s.state == cri::ContainerState::ContainerRunning as i32
        )
    }
}

async fn container_logs(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    uri: http::Uri,
) -> Response {
    let opts = match LogOptions::parse(uri.query().unwrap_or("")) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let found = match ctx.find(&ns, &pod, &container, opts.previous).await {
        Ok(c) => c,
        Err((code, msg)) => return text(code, msg),
    };
    let status = match ctx.cri.container_status(&found.id).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return text(
                StatusCode::NOT_FOUND,
                format!("container {container:?} in pod {pod:?} is gone"),
            )
        }
        Err(e) => {
            let (code, msg) = cri_error(e);
            return text(code, msg);
        }
    };
    if status.state == cri::ContainerState::ContainerCreated as i32 && !opts.previous {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "container {container:?} in pod {pod:?} is waiting to start: ContainerCreating"
            ),
        );
    }
    let since = opts.since(Timestamp::now());
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(stream_log(
        ctx.clone(),
        found.id.clone(),
        PathBuf::from(status.log_path),
        opts,
        since,
        tx,
    ));
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(body),
    )
        .into_response()
}

/// Offset of the last `n` lines of an open log file.
async fn tail_offset(f: &mut tokio::fs::File, n: u64) -> std::io::Result<u64> {
    let len = f.metadata().await?.len();
    let mut chunk: u64 = 64 * 1024;
    loop {
        let start = len.saturating_sub(chunk);
        f.seek(std::io::SeekFrom::Start(start)).await?;
        let mut buf = vec![0; (len - start) as usize];
        f.read_exact(&mut buf).await?;
        if let Some(off) = tail_start(&buf, n, start == 0) {
            return Ok(start + off as u64);
        }
        chunk = chunk.saturating_mul(4);
    }
}

/// Feeds complete lines of `pending` to the writer; keeps an incomplete last line. Returns
/// false when the writer wants no more.
fn drain_lines(pending: &mut Vec<u8>, w: &mut LogWriter, out: &mut Vec<u8>) -> bool {
    let mut used = 0;
    let mut more = true;
    while let Some(i) = pending[used..].iter().position(|b| *b == b'\n') {
        more = w.line(&pending[used..used + i], out);
        used += i + 1;
        if !more {
            break;
        }
    }
    pending.drain(..used);
    more
}

async fn stream_log(
    ctx: Arc<Ctx>,
    id: String,
    path: PathBuf,
    opts: LogOptions,
    since: Option<Timestamp>,
    tx: mpsc::Sender<Bytes>,
) {
    let mut f = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "no log file");
            return;
        }
    };
    let start = match opts.tail_lines {
        Some(n) => tail_offset(&mut f, n).await.unwrap_or(0),
        None => 0,
    };
    if f.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return;
    }
    let mut w = LogWriter::new(&opts, since);
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut running = opts.follow;
    let mut last_check = tokio::time::Instant::now();
    loop {
        let n = match f.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "reading a log file");
                return;
            }
        };
        if n > 0 {
            pending.extend_from_slice(&buf[..n]);
            let mut out = Vec::new();
            let more = drain_lines(&mut pending, &mut w, &mut out);
            if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                return;
            }
            if !more {
                return;
            }
            continue;
        }
        // End of the file for now.
        if running {
            if last_check.elapsed() >= STATE_CHECK {
                last_check = tokio::time::Instant::now();
                running = ctx.running(&id).await;
                if !running {
                    // One more pass: what it wrote before it stopped.
                    continue;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = tx.closed() => return,
            }
            continue;
        }
        break;
    }
    // An incomplete last line is written too, as kubelet does.
    if !pending.is_empty() {
        let mut out = Vec::new();
        w.line(&pending, &mut out);
        if !out.is_empty() {
            let _ = tx.send(Bytes::from(out)).await;
        }
    }
}

// --- exec ----------------------------------------------------------------------------------

/// `PodExecOptions` as the kubelet reads them from the query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecOptions {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Attach stdin.
    pub stdin: bool,
    /// Attach stdout.
    pub stdout: bool,
    /// Attach stderr.
    pub stderr: bool,
    /// Allocate a terminal.
    pub tty: bool,
}

impl ExecOptions {
    /// Parses and validates a query string.
    pub fn parse(query: &str) -> Result<ExecOptions, String> {
        let mut o = ExecOptions::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "command" => o.command.push(v.into_owned()),
                "input" | "stdin" => o.stdin = query_bool(Some(v.as_ref())),
                "output" | "stdout" => o.stdout = query_bool(Some(v.as_ref())),
                "error" | "stderr" => o.stderr = query_bool(Some(v.as_ref())),
                "tty" => o.tty = query_bool(Some(v.as_ref())),
                _ => {}
            }
        }
        if o.command.is_empty() {
            return Err("you must specify at least one command for the container".into());
        }
        if !(o.stdin || o.stdout || o.stderr) {
            return Err("you must specify at least 1 of stdin, stdout, stderr".into());
        }
        if o.tty && o.stderr {
            // kubelet: with a terminal, stderr is part of stdout.
            o.stderr = false;
        }
        Ok(o)
    }
}

/// Whether the request asks for a WebSocket upgrade.
pub fn is_websocket(h: &HeaderMap) -> bool {
    let has = |name: http::header::HeaderName, want: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(want)))
        })
    };
    has(http::header::UPGRADE, "websocket") && has(http::header::CONNECTION, "upgrade")
}

/// Whether the request asks for a SPDY upgrade (`Upgrade: SPDY/3.1`).
pub fn is_spdy(h: &HeaderMap) -> bool {
    h.get_all(http::header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.trim().to_ascii_lowercase().starts_with("spdy/"))
}

/// The subprotocol to answer with: v5 if offered, else v4.
pub fn choose_protocol(h: &HeaderMap) -> Option<&'static str> {
    let offered: Vec<String> = h
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    [V5, V4]
        .into_iter()
        .find(|p| offered.iter().any(|o| o == p))
}

async fn exec(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    mut req: Request,
) -> Response {
    let opts = match ExecOptions::parse(req.uri().query().unwrap_or("")) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let headers = req.headers();
    if is_spdy(headers) {
        return exec_spdy(ctx, &ns, &pod, &container, &opts, req).await;
    }
    if !is_websocket(headers) {
        return text(
            StatusCode::BAD_REQUEST,
            "exec needs an upgrade: WebSocket (v5.channel.k8s.io, v4.channel.k8s.io) or SPDY/3.1"
                .into(),
        );
    }
    let Some(protocol) = choose_protocol(headers) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "no supported WebSocket subprotocol offered (this server speaks {V5} and {V4})"
            ),
        );
    };
    let Some(key) = headers.get(http::header::SEC_WEBSOCKET_KEY) else {
        return text(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key is missing".into(),
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let url = match cri_exec(&ctx, &ns, &pod, &container, &opts).await {
        Ok(u) => u,
        Err((code, msg)) => return text(code, msg),
    };
    let upstream = match connect_runtime(&url, &opts).await {
        Ok(ws) => ws,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("connecting to the runtime's streaming server: {e:#}"),
            )
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let v5 = protocol == V5;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => {
                let client =
                    WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
                relay_exec(client, upstream, v5).await;
            }
            Err(e) => tracing::debug!(error = %e, "exec upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, "websocket")
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::SEC_WEBSOCKET_ACCEPT, accept)
        .header(http::header::SEC_WEBSOCKET_PROTOCOL, protocol)
        .body(Body::empty())
        .expect("a valid response")
}

/// The CRI exec of the current attempt of a container; the runtime's stream URL.
async fn cri_exec(
    ctx: &Ctx,
    ns: &str,
    pod: &str,
    container: &str,
    opts: &ExecOptions,
) -> Result<String, HttpError> {
    let c = ctx.find(ns, pod, container, false).await?;
    ctx.cri
        .rt
        .clone()
        .exec(cri::ExecRequest {
            container_id: c.id.clone(),
            cmd: opts.command.clone(),
            tty: opts.tty,
            stdin: opts.stdin,
            stdout: opts.stdout,
            stderr: opts.stderr,
        })
        .await
        .map(|r| r.into_inner().url)
        .map_err(cri_error)
}

/// A SPDY client (kubectl < 1.30, or a newer one falling back): the upgrade is passed on to
/// the runtime's streaming server as is, and the two connections are spliced, as kubelet
/// proxies it.
async fn exec_spdy(
    ctx: Arc<Ctx>,
    ns: &str,
    pod: &str,
    container: &str,
    opts: &ExecOptions,
    mut req: Request,
) -> Response {
    let protocols = stream_protocols(req.headers());
    let url = match cri_exec(&ctx, ns, pod, container, opts).await {
        Ok(u) => u,
        Err((code, msg)) => return text(code, msg),
    };
    let (tcp, early, protocol) = match upgrade_runtime(&url, &protocols).await {
        Ok(x) => x,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("connecting to the runtime's streaming server: {e:#}"),
            )
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let Ok(up) = on_upgrade.await else {
            return;
        };
        let mut client = TokioIo::new(up);
        let mut tcp = tcp;
        if client.write_all(&early).await.is_ok() {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut tcp).await;
        }
    });
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "SPDY/3.1");
    if let Some(p) = protocol {
        resp = resp.header("X-Stream-Protocol-Version", p);
    }
    resp.body(Body::empty()).expect("a valid response")
}

/// The runtime's side of one exec: a SPDY/3.1 connection (`v4.channel.k8s.io`, as kubelet
/// and kube-apiserver speak to the streaming server) whose streams are made and answered.
pub struct RuntimeSession {
    rd: tokio::net::tcp::OwnedReadHalf,
    wr: tokio::net::tcp::OwnedWriteHalf,
    /// Bytes read and not yet parsed.
    buf: Vec<u8>,
    /// The SPDY stream of each channel: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize.
    ids: [Option<u32>; 5],
    /// Data frames that came before the last stream was answered.
    early: Vec<spdy::Frame>,
}

/// Reads the next SPDY frame (`None` at the end of the connection).
async fn read_frame(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<spdy::Frame>> {
    loop {
        if let Some((f, used)) = spdy::parse(buf) {
            buf.drain(..used);
            return Ok(Some(f));
        }
        let mut tmp = [0u8; 16 * 1024];
        let n = rd.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// Upgrades a connection to the runtime's stream URL (`http://127.0.0.1:P/exec/T`) to SPDY/3.1
/// and opens the streams `opts` asks for (error, stdin, stdout, stderr, resize), waiting for
/// the runtime's replies.
/// The X-Stream-Protocol-Version values of a request (repeated or comma-separated).
pub fn stream_protocols(h: &HeaderMap) -> Vec<String> {
    h.get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// An HTTP/1.1 response head.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// Status code.
    pub code: u16,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Where the bytes after the head start.
    pub end: usize,
}

impl Head {
    /// A header's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 response head: the status code, the headers, and the bytes read past it.
pub fn parse_head(buf: &[u8]) -> Option<Head> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split("\r\n");
    let code = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Head { code, headers, end })
}

/// A connection to the runtime's stream URL (`http://127.0.0.1:P/exec/T`) upgraded to
/// SPDY/3.1 with one of `protocols`; the bytes read past the answer, and the protocol chosen.
async fn upgrade_runtime(
    url: &str,
    protocols: &[String],
) -> anyhow::Result<(tokio::net::TcpStream, Vec<u8>, Option<String>)> {
    use tokio::io::AsyncWriteExt;
    let uri: http::Uri = url.parse().context("the runtime's stream URL")?;
    let host = uri.host().context("stream URL without a host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    let _ = tcp.set_nodelay(true);
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    );
    for p in protocols {
        req += &format!("X-Stream-Protocol-Version: {p}\r\n");
    }
    req += "Content-Length: 0\r\n\r\n";
    tcp.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let head = loop {
        if let Some(h) = parse_head(&buf) {
            break h;
        }
        anyhow::ensure!(
            buf.len() < 64 * 1024,
            "the runtime's answer has no end of headers"
        );
        let mut tmp = [0u8; 4096];
        let n = tcp.read(&mut tmp).await?;
        anyhow::ensure!(n > 0, "the runtime closed the connection before answering");
        buf.extend_from_slice(&tmp[..n]);
    };
    if head.code != 101 {
        let body = String::from_utf8_lossy(&buf[head.end..]).trim().to_string();
        anyhow::bail!(
            "the runtime's streaming server answered {}: {body}",
            head.code
        );
    }
    buf.drain(..head.end);
    let protocol = head.get("x-stream-protocol-version").map(str::to_string);
    Ok((tcp, buf, protocol))
}

async fn connect_runtime(url: &str, opts: &ExecOptions) -> anyhow::Result<RuntimeSession> {
    use tokio::io::AsyncWriteExt;
    let (tcp, mut buf, _) = upgrade_runtime(url, &[V4.to_string()]).await?;
    let (mut rd, mut wr) = tcp.into_split();
    let mut headers = spdy::HeaderWriter::default();
    let mut ids = [None; 5];
    let mut next = 1u32;
    for (ch, kind, on) in [
        (3, "error", true),
        (0, "stdin", opts.stdin),
        (1, "stdout", opts.stdout),
        (2, "stderr", opts.stderr),
        (4, "resize", opts.tty),
    ] {
        if on {
            let block = headers.block(&[("streamtype", kind)]);
            wr.write_all(&spdy::syn_stream(next, &block)).await?;
            ids[ch] = Some(next);
            next += 2;
        }
    }
    let want = ids.iter().flatten().count();
    let mut replied = std::collections::HashSet::new();
    let mut early = Vec::new();
    let answered = async {
        while replied.len() < want {
            match read_frame(&mut rd, &mut buf).await? {
                None => anyhow::bail!("the runtime closed the connection while streams were made"),
                Some(spdy::Frame::Control { kind, payload, .. }) => match kind {
                    spdy::SYN_REPLY => {
                        replied.extend(spdy::control_stream(&payload));
                    }
                    spdy::RST_STREAM => anyhow::bail!("the runtime refused a stream"),
                    spdy::PING => {
                        wr.write_all(&spdy::control(spdy::PING, 0, &payload))
                            .await?
                    }
                    _ => {}
                },
                Some(f @ spdy::Frame::Data { .. }) => early.push(f),
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(30), answered)
        .await
        .context("the runtime did not answer the streams within 30 s")??;
    Ok(RuntimeSession {
        rd,
        wr,
        buf,
        ids,
        early,
    })
}

/// Relays one exec session between the client's WebSocket and the runtime's SPDY streams:
/// stdin (0) and resize (4) frames to their streams, v5's close of stdin (`[255, 0]`) as the
/// stdin stream's FIN; stdout (1), stderr (2) and the error stream's Status (3) back as
/// frames. Ends when the runtime closes the connection (the command ended) or the client
/// leaves.
async fn relay_exec<S>(client: WebSocketStream<S>, rt: RuntimeSession, v5: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let RuntimeSession {
        mut rd,
        wr,
        mut buf,
        ids,
        early,
    } = rt;
    let wr = tokio::sync::Mutex::new(wr);
    let (mut c_tx, mut c_rx) = client.split();
    let up = async {
        let mut stdin_open = true;
        while let Some(Ok(m)) = c_rx.next().await {
            let b = match m {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&ch, data)) = b.split_first() else {
                continue;
            };
            let frames: Vec<Vec<u8>> = match (ch, ids.get(usize::from(ch)).copied().flatten()) {
                (255, _) if v5 && data.first() == Some(&0) && stdin_open => {
                    stdin_open = false;
                    ids[0]
                        .map(|id| vec![spdy::data(id, true, &[])])
                        .unwrap_or_default()
                }
                (0, Some(_)) if !stdin_open => continue,
                (0 | 4, Some(id)) => data
                    .chunks(32 * 1024)
                    .map(|c| spdy::data(id, false, c))
                    .collect(),
                _ => continue,
            };
            let mut w = wr.lock().await;
            for f in frames {
                if w.write_all(&f).await.is_err() {
                    return;
                }
            }
        }
        let _ = wr.lock().await.shutdown().await;
    };
    let down = async {
        let mut early = early.into_iter();
        loop {
            let f = match early.next() {
                Some(f) => f,
                None => match read_frame(&mut rd, &mut buf).await {
                    Ok(Some(f)) => f,
                    _ => break,
                },
            };
            match f {
                spdy::Frame::Data { stream, data, .. } if !data.is_empty() => {
                    let Some(ch) = ids.iter().position(|i| *i == Some(stream)) else {
                        continue;
                    };
                    if !matches!(ch, 1..=3) {
                        continue;
                    }
                    let mut frame = Vec::with_capacity(data.len() + 1);
                    frame.push(ch as u8);
                    frame.extend_from_slice(&data);
                    if c_tx.send(Message::Binary(frame.into())).await.is_err() {
                        break;
                    }
                }
                spdy::Frame::Control {
                    kind: spdy::PING,
                    payload,
                    ..
                } => {
                    let _ = wr
                        .lock()
                        .await
                        .write_all(&spdy::control(spdy::PING, 0, &payload))
                        .await;
                }
                _ => {}
            }
        }
        // A normal close (1000): kubectl takes a close without a code (1005) for an error.
        let _ = c_tx.send(normal_close()).await;
        let _ = c_tx.close().await;
    };
    tokio::pin!(up, down);
    tokio::select! {
        _ = &mut down => {}
        _ = &mut up => {
            // The client left: give the runtime a moment to end the session.
            let _ = tokio::time::timeout(Duration::from_secs(5), down).await;
        }
    }
}

/// A close frame with code 1000.
fn normal_close() -> Message {
    use tokio_tungstenite::tungstenite::protocol::frame::{coding::CloseCode, CloseFrame};
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

/// The few SPDY/3.1 frames an exec client needs (what Go's `spdystream`, inside containerd's
/// streaming server, reads and writes). Header blocks this side sends are one zlib stream of
/// stored (uncompressed) deflate blocks: valid zlib without the SPDY dictionary, which a
/// reader needs only when the stream's header says so. Header blocks received (the replies)
/// are not decoded: only their stream IDs matter.
pub mod spdy {
    /// Control frame type SYN_STREAM.
    pub const SYN_STREAM: u16 = 1;
    /// Control frame type SYN_REPLY.
    pub const SYN_REPLY: u16 = 2;
    /// Control frame type RST_STREAM.
    pub const RST_STREAM: u16 = 3;
    /// Control frame type PING.
    pub const PING: u16 = 6;
    /// Control frame type GOAWAY.
    pub const GOAWAY: u16 = 7;
    /// The FIN flag (last frame of a stream from this side).
    pub const FLAG_FIN: u8 = 1;

    /// A frame.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Frame {
        /// A data frame.
        Data {
            /// Stream ID.
            stream: u32,
            /// FIN flag.
            fin: bool,
            /// Payload.
            data: Vec<u8>,
        },
        /// A control frame.
        Control {
            /// Type.
            kind: u16,
            /// Flags.
            flags: u8,
            /// Payload.
            payload: Vec<u8>,
        },
    }

    /// One frame from the front of `buf` and the bytes it took; `None` until it is all there.
    pub fn parse(buf: &[u8]) -> Option<(Frame, usize)> {
        let word = |i: usize| -> Option<u32> {
            Some(u32::from_be_bytes(buf.get(i..i + 4)?.try_into().ok()?))
        };
        let (w0, w1) = (word(0)?, word(4)?);
        let flags = (w1 >> 24) as u8;
        let len = (w1 & 0x00ff_ffff) as usize;
        let payload = buf.get(8..8 + len)?.to_vec();
        let f = if w0 & 0x8000_0000 != 0 {
            Frame::Control {
                kind: (w0 & 0xffff) as u16,
                flags,
                payload,
            }
        } else {
            Frame::Data {
                stream: w0 & 0x7fff_ffff,
                fin: flags & FLAG_FIN != 0,
                data: payload,
            }
        };
        Some((f, 8 + len))
    }

    /// The stream a SYN_REPLY, RST_STREAM or HEADERS frame is about.
    pub fn control_stream(payload: &[u8]) -> Option<u32> {
        Some(u32::from_be_bytes(payload.get(..4)?.try_into().ok()?) & 0x7fff_ffff)
    }

    /// A control frame.
    pub fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(8 + payload.len());
        f.extend_from_slice(&(0x8003_0000u32 | u32::from(kind)).to_be_bytes());
        f.extend_from_slice(&((u32::from(flags) << 24) | payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// A SYN_STREAM opening stream `id` with a header block from [`HeaderWriter::block`].
    pub fn syn_stream(id: u32, block: &[u8]) -> Vec<u8> {
        let mut p = Vec::with_capacity(10 + block.len());
        p.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
        // Associated-to stream, priority and slot: none.
        p.extend_from_slice(&[0; 6]);
        p.extend_from_slice(block);
        control(SYN_STREAM, 0, &p)
    }

    /// A data frame (at most 16 MiB of data).
    pub fn data(id: u32, fin: bool, data: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(8 + data.len());
        f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
        let flags = if fin { FLAG_FIN } else { 0 };
        f.extend_from_slice(&((u32::from(flags) << 24) | data.len() as u32).to_be_bytes());
        f.extend_from_slice(data);
        f
    }

    /// An empty stored deflate block (the end of a zlib sync flush).
    pub const SYNC_FLUSH: [u8; 5] = [0, 0, 0, 0xff, 0xff];

    /// This side's header compression: the connection's header blocks continue one zlib
    /// stream.
    #[derive(Debug, Default)]
    pub struct HeaderWriter {
        started: bool,
    }

    impl HeaderWriter {
        /// The compressed name/value block of `headers` (names lower-case, a block under
        /// 64 KiB).
        pub fn block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
            let mut raw = Vec::new();
            raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
            for (k, v) in headers {
                for s in [k, v] {
                    raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                    raw.extend_from_slice(s.as_bytes());
                }
            }
            let mut out = Vec::with_capacity(raw.len() + 7);
            if !self.started {
                // zlib header: deflate, 32 KiB window, no preset dictionary.
                out.extend_from_slice(&[0x78, 0x01]);
                self.started = true;
            }
            // One stored block, not the last: BFINAL 0, BTYPE 00, then LEN and NLEN.
            let n = raw.len() as u16;
            out.push(0);
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&(!n).to_le_bytes());
            out.extend_from_slice(&raw);
            // Then an empty one, as a zlib sync flush ends with: a reader hands the block's
            // bytes over when it meets it, without reading past the frame for the next block.
            out.extend_from_slice(&SYNC_FLUSH);
            out
        }
    }
}

// --- client certificates -------------------------------------------------------------------

/// One DER TLV: (tag, contents, rest).
fn der_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let l0 = *b.get(1)?;
    let (len, hdr) = if l0 < 0x80 {
        (l0 as usize, 2)
    } else {
        let n = (l0 & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    (end <= b.len()).then(|| (tag, &b[hdr..end], &b[end..]))
}

/// The subject's common names and organisations of a DER certificate.
pub fn subject_names(cert: &[u8]) -> Option<(Vec<String>, Vec<String>)> {
    const SEQ: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
    const OID_O: &[u8] = &[0x55, 0x04, 0x0a];
    let (SEQ, cert, _) = der_tlv(cert)? else {
        return None;
    };
    let (SEQ, tbs, _) = der_tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // [0] version (optional), serial, signature algorithm, issuer, validity, subject.
    let (tag, _, r) = der_tlv(rest)?;
    rest = if tag == 0xa0 { der_tlv(r)?.2 } else { r };
    for _ in 0..3 {
        rest = der_tlv(rest)?.2;
    }
    let (SEQ, mut name, _) = der_tlv(rest)? else {
        return None;
    };
    let (mut cn, mut o) = (Vec::new(), Vec::new());
    while !name.is_empty() {
        let (SET, mut rdn, r) = der_tlv(name)? else {
            return None;
        };
        name = r;
        while !rdn.is_empty() {
            let (SEQ, atv, r) = der_tlv(rdn)? else {
                return None;
            };
            rdn = r;
            let (0x06, oid, value) = der_tlv(atv)? else {
                return None;
            };
            let (_, v, _) = der_tlv(value)?;
            let v = String::from_utf8_lossy(v).into_owned();
            if oid == OID_CN {
                cn.push(v);
            } else if oid == OID_O {
                o.push(v);
            }
        }
    }
    Some((cn, o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(opts: &LogOptions, since: Option<Timestamp>, file: &str) -> String {
        let mut w = LogWriter::new(opts, since);
        let mut out = Vec::new();
        for l in file.lines() {
            if !w.line(l.as_bytes(), &mut out) {
                break;
            }
        }
        String::from_utf8(out).unwrap()
    }

    const FILE: &str = "2026-01-02T03:04:05.1Z stdout F one\n\
        2026-01-02T03:04:06.123456789Z stderr P tw\n\
        2026-01-02T03:04:07Z stderr F o\n\
        2026-01-02T03:04:08.5+02:00 stdout F three\n";

    #[test]
    fn cri_lines_parse() {
        let l = parse_cri_line(b"2026-01-02T03:04:05.1Z stdout F hello world").unwrap();
        assert_eq!(
            l,
            CriLine {
                time: "2026-01-02T03:04:05.1Z",
                stream: "stdout",
                partial: false,
                text: b"hello world",
            }
        );
        assert!(
            parse_cri_line(b"2026-01-02T03:04:05Z stderr P:x part")
                .unwrap()
                .partial
        );
        assert_eq!(
            parse_cri_line(b"2026-01-02T03:04:05Z stdout F")
                .unwrap()
                .text,
            b""
        );
        assert_eq!(
            parse_cri_line(b"2026-01-02T03:04:05Z stdout F ")
                .unwrap()
                .text,
            b""
        );
        assert!(parse_cri_line(b"garbage").is_none());
        assert!(parse_cri_line(b"2026-01-02T03:04:05Z stdin F x").is_none());
    }

    #[test]
    fn partial_lines_join_and_timestamps_prefix_whole_lines() {
        let o = LogOptions::default();
        assert_eq!(run(&o, None, FILE), "one\ntwo\nthree\n");
        let o = LogOptions {
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(
            run(&o, None, FILE),
            "2026-01-02T03:04:05.100000000Z one\n\
             2026-01-02T03:04:06.123456789Z two\n\
             2026-01-02T03:04:08.500000000+02:00 three\n"
        );
        assert_eq!(
            fixed_nanos("2026-01-02T03:04:07Z"),
            "2026-01-02T03:04:07.000000000Z"
        );
        assert_eq!(fixed_nanos("bad"), "bad");
    }

    #[test]
    fn since_and_limit() {
        let o = LogOptions::default();
        // 03:04:08+02:00 is 01:04:08Z: older than everything else.
        let since: Timestamp = "2026-01-02T03:04:06Z".parse().unwrap();
        assert_eq!(run(&o, Some(since), FILE), "two\n");
        let o = LogOptions {
            limit_bytes: Some(6),
            ..Default::default()
        };
        assert_eq!(run(&o, None, FILE), "one\ntw");
        let o = LogOptions {
            limit_bytes: Some(4),
            ..Default::default()
        };
        assert_eq!(run(&o, None, FILE), "one\n");
    }

    #[test]
    fn tail_counts_logical_lines() {
        let b = FILE.as_bytes();
        let tail = |n, start| tail_start(b, n, start).map(|i| &FILE[i..]);
        assert_eq!(
            tail(1, true),
            Some("2026-01-02T03:04:08.5+02:00 stdout F three\n")
        );
        // The second-last line is two pieces: it starts at the P piece.
        assert!(tail(2, true)
            .unwrap()
            .starts_with("2026-01-02T03:04:06.123456789Z stderr P"));
        assert_eq!(tail(3, true), Some(FILE));
        assert_eq!(tail(10, true), Some(FILE));
        assert_eq!(tail(0, true), Some(""));
        // A suffix cut in the middle of the first line: only later starts are known.
        let cut = &b[10..];
        assert_eq!(
            tail_start(cut, 1, false).map(|i| &cut[i..]),
            Some(&b"2026-01-02T03:04:08.5+02:00 stdout F three\n"[..])
        );
        assert_eq!(tail_start(cut, 2, false), None, "read more of the file");
        let mut w = LogWriter::new(&LogOptions::default(), None);
        let start = tail_start(b, 2, true).unwrap();
        let mut out = Vec::new();
        let mut pending = b[start..].to_vec();
        drain_lines(&mut pending, &mut w, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "two\nthree\n");
    }

    #[test]
    fn log_query() {
        let o = LogOptions::parse(
            "follow=true&previous=1&timestamps=false&tailLines=2&limitBytes=10&sinceSeconds=5",
        )
        .unwrap();
        assert!(o.follow && o.previous && !o.timestamps);
        assert_eq!(
            (o.tail_lines, o.limit_bytes, o.since_seconds),
            (Some(2), Some(10), Some(5))
        );
        let now: Timestamp = "2026-01-02T03:04:10Z".parse().unwrap();
        assert_eq!(o.since(now), Some("2026-01-02T03:04:05Z".parse().unwrap()));
        let o = LogOptions::parse("sinceTime=2026-01-02T03:04:05Z&follow=").unwrap();
        assert!(
            o.follow,
            "an empty value is true, as apimachinery converts it"
        );
        assert_eq!(o.since(now), Some("2026-01-02T03:04:05Z".parse().unwrap()));
        assert_eq!(LogOptions::parse("").unwrap(), LogOptions::default());
        assert!(LogOptions::parse("tailLines=-1").is_err());
        assert!(LogOptions::parse("limitBytes=0").is_err());
        assert!(LogOptions::parse("tailLines=x").is_err());
        assert!(LogOptions::parse("sinceSeconds=1&sinceTime=2026-01-02T03:04:05Z").is_err());
    }

    fn ctr(id: &str, uid: &str, attempt: u32, created: i64) -> cri::Container {
        cri::Container {
            id: id.into(),
            metadata: Some(cri::ContainerMetadata {
                name: "c".into(),
                attempt,
            }),
            labels: [(labels::POD_UID.to_string(), uid.to_string())].into(),
            created_at: created,
            ..Default::default()
        }
    }

    #[test]
    fn current_and_previous_attempts() {
        let list = vec![
            ctr("a0", "u", 0, 1),
            ctr("a2", "u", 2, 3),
            ctr("a1", "u", 1, 2),
        ];
        assert_eq!(
            pick_container(list.clone(), "p", "c", false).unwrap().id,
            "a2"
        );
        assert_eq!(pick_container(list, "p", "c", true).unwrap().id, "a1");
        let one = vec![ctr("a0", "u", 0, 1)];
        let e = pick_container(one, "p", "c", true).unwrap_err();
        assert_eq!(e.0, StatusCode::BAD_REQUEST);
        assert_eq!(
            e.1,
            r#"previous terminated container "c" in pod "p" not found"#
        );
        let e = pick_container(vec![], "p", "c", false).unwrap_err();
        assert!(e.1.contains("is waiting to start"), "{}", e.1);
        // An older pod of the same name is not looked at.
        let list = vec![ctr("old", "u1", 5, 1), ctr("new", "u2", 0, 9)];
        assert_eq!(
            pick_container(list.clone(), "p", "c", false).unwrap().id,
            "new"
        );
        assert!(pick_container(list, "p", "c", true).is_err());
    }

    #[test]
    fn exec_query() {
        let o = ExecOptions::parse(
            "command=sh&command=-c&command=echo+hi&stdin=1&stdout=true&tty=1&stderr=1",
        )
        .unwrap();
        assert_eq!(o.command, ["sh", "-c", "echo hi"]);
        assert!(o.stdin && o.stdout && o.tty);
        assert!(!o.stderr, "a terminal has no separate stderr");
        assert!(ExecOptions::parse("stdout=1").is_err());
        assert!(ExecOptions::parse("command=ls").is_err());
        let mut h = HeaderMap::new();
        h.insert(http::header::UPGRADE, "websocket".parse().unwrap());
        h.insert(
            http::header::CONNECTION,
            "keep-alive, Upgrade".parse().unwrap(),
        );
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            "v5.channel.k8s.io, v4.channel.k8s.io".parse().unwrap(),
        );
        assert!(is_websocket(&h));
        assert_eq!(choose_protocol(&h), Some(V5));
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            "base64.channel.k8s.io,v4.channel.k8s.io".parse().unwrap(),
        );
        assert_eq!(choose_protocol(&h), Some(V4));
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            "channel.k8s.io".parse().unwrap(),
        );
        assert_eq!(choose_protocol(&h), None);
        h.insert(http::header::UPGRADE, "SPDY/3.1".parse().unwrap());
        assert!(!is_websocket(&h));
    }

    #[test]
    fn spdy_upgrades() {
        let mut h = HeaderMap::new();
        h.insert(http::header::UPGRADE, "SPDY/3.1".parse().unwrap());
        h.append(
            "X-Stream-Protocol-Version",
            "v4.channel.k8s.io".parse().unwrap(),
        );
        h.append(
            "X-Stream-Protocol-Version",
            "v3.channel.k8s.io, channel.k8s.io".parse().unwrap(),
        );
        assert!(is_spdy(&h) && !is_websocket(&h));
        assert_eq!(
            stream_protocols(&h),
            ["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"]
        );
        let answer = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n\x80\x03";
        let head = parse_head(answer).unwrap();
        assert_eq!(head.code, 101);
        assert_eq!(
            head.get("x-stream-protocol-version"),
            Some("v4.channel.k8s.io")
        );
        assert_eq!(&answer[head.end..], b"\x80\x03");
        assert_eq!(parse_head(b"HTTP/1.1 101 Switching"), None, "incomplete");
    }

    #[test]
    fn spdy_frames() {
        let mut h = spdy::HeaderWriter::default();
        let b1 = h.block(&[("streamtype", "error")]);
        let b2 = h.block(&[("streamtype", "stdout")]);
        // The first block starts the zlib stream; both are stored deflate blocks.
        assert_eq!(&b1[..2], &[0x78, 0x01]);
        assert_eq!((0x78u32 * 256 + 0x01) % 31, 0, "a valid zlib header");
        let stored = |b: &[u8]| -> Vec<u8> {
            assert_eq!(b[0], 0, "BFINAL 0, BTYPE 00");
            let n = u16::from_le_bytes([b[1], b[2]]);
            assert_eq!(!n, u16::from_le_bytes([b[3], b[4]]));
            assert_eq!(b.len(), 5 + n as usize + 5);
            assert_eq!(
                b[5 + n as usize..],
                spdy::SYNC_FLUSH,
                "ends with a sync flush"
            );
            b[5..5 + n as usize].to_vec()
        };
        let raw = stored(&b1[2..]);
        let mut want = Vec::new();
        want.extend_from_slice(&1u32.to_be_bytes());
        want.extend_from_slice(&10u32.to_be_bytes());
        want.extend_from_slice(b"streamtype");
        want.extend_from_slice(&5u32.to_be_bytes());
        want.extend_from_slice(b"error");
        assert_eq!(raw, want);
        assert!(stored(&b2).ends_with(b"stdout"));

        let syn = spdy::syn_stream(3, &b2);
        assert_eq!(&syn[..4], &[0x80, 0x03, 0x00, 0x01]);
        let (f, used) = spdy::parse(&syn).unwrap();
        assert_eq!(used, syn.len());
        let spdy::Frame::Control {
            kind,
            flags,
            payload,
        } = f
        else {
            panic!("{f:?}")
        };
        assert_eq!((kind, flags), (spdy::SYN_STREAM, 0));
        assert_eq!(spdy::control_stream(&payload), Some(3));
        assert_eq!(&payload[10..], &b2[..]);

        let mut two = spdy::data(5, false, b"hello");
        two.extend(spdy::data(1, true, b""));
        let (f, used) = spdy::parse(&two).unwrap();
        assert_eq!(
            f,
            spdy::Frame::Data {
                stream: 5,
                fin: false,
                data: b"hello".to_vec()
            }
        );
        let (f, _) = spdy::parse(&two[used..]).unwrap();
        assert_eq!(
            f,
            spdy::Frame::Data {
                stream: 1,
                fin: true,
                data: vec![]
            }
        );
        assert_eq!(spdy::parse(&two[..used - 1]), None, "incomplete");
        let ping = spdy::control(spdy::PING, 0, &7u32.to_be_bytes());
        assert_eq!(
            spdy::parse(&ping).unwrap().0,
            spdy::Frame::Control {
                kind: spdy::PING,
                flags: 0,
                payload: 7u32.to_be_bytes().to_vec()
            }
        );
    }

    #[test]
    fn client_certificate_names() {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, APISERVER_CLIENT_CN);
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, MASTERS);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let (cn, o) = subject_names(cert.der()).unwrap();
        assert_eq!(cn, [APISERVER_CLIENT_CN]);
        assert_eq!(o, [MASTERS]);
        assert!(subject_names(b"\x30\x03\x02\x01").is_none());
        assert!(subject_names(b"").is_none());
    }

    #[test]
    fn serving_tls_needs_a_ca() {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = p.self_signed(&key).unwrap();
        let cfg = tls_config(&[ca.der().to_vec()], "10.0.0.1".parse().unwrap(), "n1").unwrap();
        assert_eq!(cfg.alpn_protocols, [b"http/1.1".to_vec()]);
        assert!(tls_config(&[b"nope".to_vec()], "10.0.0.1".parse().unwrap(), "n1").is_err());
    }
}
