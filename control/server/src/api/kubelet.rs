//! `pods/log` and `pods/exec`: the API server's side of `kubectl logs` and `kubectl exec`.
//!
//! As kube-apiserver does, both are forwarded to the kubelet API of the pod's node at
//! `https://<node InternalIP>:<status.daemonEndpoints.kubeletEndpoint.Port>` (10250 when
//! unset), authenticating with the kubelet client certificate ([`crate::tls`]) and not
//! verifying the node's serving certificate.
//!
//! - log (`GET`, authorized as `get pods/log`): the pod must exist (404), the container is
//!   the `container` parameter or the pod's only one (else 400 with the choices), the options
//!   are validated as `PodLogOptions`; then `GET /containerLogs/{ns}/{pod}/{container}?…` on
//!   the node, whose body is streamed back as it arrives (`text/plain`, so `-f` follows). A
//!   pod not bound to a node has no logs yet: an empty body, as upstream. The node's errors
//!   become Statuses with its code and its message.
//! - exec (`GET`/`POST`, authorized as `create pods/exec`, as kube-apiserver ≥ 1.31 does for
//!   WebSocket upgrades too): a WebSocket upgrade with subprotocol `v5.channel.k8s.io` (chosen
//!   when offered) or `v4.channel.k8s.io`; the API server opens a WebSocket with the same
//!   subprotocol to `/exec/{ns}/{pod}/{container}?command=…&stdin=1…` on the node and relays
//!   frames both ways. A failure on the node side after the checks here is reported on the
//!   error channel (3) as a Status, so kubectl shows it rather than falling back to SPDY.
//!   A SPDY upgrade (`Upgrade: SPDY/3.1`: kubectl < 1.30's only transport, newer kubectl's
//!   fallback) is passed on to the node as is, with its `X-Stream-Protocol-Version`s, and
//!   once the node has switched protocols the two connections are spliced, as kube-apiserver's
//!   upgrade-aware proxy does; the node's refusal becomes a Status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{AppState, Target};
use crate::resources;
use crate::status::{ApiError, ApiResult};

/// kubelet's port, when a Node does not report one.
pub const DEFAULT_KUBELET_PORT: u16 = 10250;
/// Remote command subprotocols, newest first.
pub const V5: &str = "v5.channel.k8s.io";
/// The v4 subprotocol.
pub const V4: &str = "v4.channel.k8s.io";
/// Connecting to a node (TCP and TLS) must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The container a request is for: `asked`, which must be one of the pod's, or the pod's
/// only container (kube-apiserver's `validateContainer`).
pub fn choose_container(pod: &Value, name: &str, asked: Option<&str>) -> ApiResult<String> {
    let names = |k: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{k}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    let (main, init, eph) = (
        names("containers"),
        names("initContainers"),
        names("ephemeralContainers"),
    );
    match asked.filter(|a| !a.is_empty()) {
        Some(a) => {
            if main.iter().chain(&init).chain(&eph).any(|c| c == a) {
                Ok(a.to_string())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {a} is not valid for pod {name}"
                )))
            }
        }
        None if main.len() == 1 => Ok(main[0].clone()),
        None if main.is_empty() => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}"
        ))),
        None => {
            let mut m = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                main.join(" ")
            );
            if !init.is_empty() {
                m += &format!(" or one of the init containers: [{}]", init.join(" "));
            }
            if !eph.is_empty() {
                m += &format!(" or one of the ephemeral containers: [{}]", eph.join(" "));
            }
            Err(ApiError::bad_request(m))
        }
    }
}

/// A boolean query value as apimachinery converts one: `0`/`false` are false, anything else
/// true.
fn truthy(v: &str) -> bool {
    !(v == "0" || v.eq_ignore_ascii_case("false"))
}

/// Validates `PodLogOptions` from the query and returns the kubelet's query string.
pub fn log_query(pod: &str, q: &HashMap<String, String>) -> ApiResult<String> {
    let invalid = |field: &str, v: &str, why: &str| {
        ApiError::new(
            422,
            "Invalid",
            format!("PodLogOptions \"{pod}\" is invalid: {field}: Invalid value: {v}: {why}"),
        )
    };
    let int = |k: &str| -> ApiResult<Option<i64>> {
        match q.get(k).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
                ApiError::bad_request(format!("invalid value for {k}: {v:?}: must be an integer"))
            }),
        }
    };
    let mut out = form_urlencoded::Serializer::new(String::new());
    for k in ["follow", "previous", "timestamps"] {
        if q.get(k).is_some_and(|v| truthy(v)) {
            out.append_pair(k, "true");
        }
    }
    let since_seconds = int("sinceSeconds")?;
    let since_time = q.get("sinceTime").filter(|v| !v.is_empty());
    if since_seconds.is_some() && since_time.is_some() {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!("PodLogOptions \"{pod}\" is invalid: []: Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified"),
        ));
    }
    if let Some(s) = since_seconds {
        if s < 1 {
            return Err(invalid(
                "sinceSeconds",
                &s.to_string(),
                "must be greater than 0",
            ));
        }
        out.append_pair("sinceSeconds", &s.to_string());
    }
    if let Some(t) = since_time {
        let ts: jiff::Timestamp = t.parse().map_err(|e| {
            ApiError::bad_request(format!("invalid value for sinceTime: {t:?}: {e}"))
        })?;
        out.append_pair("sinceTime", &ts.to_string());
    }
    if let Some(n) = int("tailLines")? {
        if n < 0 {
            return Err(invalid(
                "tailLines",
                &n.to_string(),
                "must be greater than or equal to 0",
            ));
        }
        out.append_pair("tailLines", &n.to_string());
    }
    if let Some(n) = int("limitBytes")? {
        if n < 1 {
            return Err(invalid(
                "limitBytes",
                &n.to_string(),
                "must be greater than 0",
            ));
        }
        out.append_pair("limitBytes", &n.to_string());
    }
    Ok(out.finish())
}

/// `PodExecOptions` from the query: the container asked for and the kubelet's query string
/// (`command` repeated, `stdin`/`stdout`/`stderr`/`tty` as `1`, as kube-apiserver writes it).
pub fn exec_query(query: &str) -> ApiResult<(Option<String>, String)> {
    let mut container = None;
    let mut command = Vec::new();
    let mut flags = [
        ("stdin", false),
        ("stdout", false),
        ("stderr", false),
        ("tty", false),
    ];
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "container" => container = Some(v.into_owned()),
            "command" => command.push(v.into_owned()),
            k => {
                if let Some(f) = flags.iter_mut().find(|(n, _)| *n == k) {
                    f.1 = truthy(&v);
                }
            }
        }
    }
    if command.is_empty() {
        return Err(ApiError::bad_request(
            "you must specify at least one command for the container",
        ));
    }
    if !flags[..3].iter().any(|(_, on)| *on) {
        return Err(ApiError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    let mut out = form_urlencoded::Serializer::new(String::new());
    for c in &command {
        out.append_pair("command", c);
    }
    for (k, on) in flags {
        if on {
            out.append_pair(k, "1");
        }
    }
    Ok((container, out.finish()))
}

/// The kubelet API address of a Node: its InternalIP and reported port.
pub fn node_endpoint(node: &Value) -> ApiResult<(String, u16)> {
    let name = node
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let ip = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            ApiError::internal(format!(
                "node {name:?} has no InternalIP address to reach its kubelet"
            ))
        })?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Ok((ip.to_string(), port))
}

/// `host:port` for URLs (IPv6 in brackets).
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The checked pod, its container and its node's kubelet address (`None` when unbound).
struct Located {
    container: String,
    endpoint: Option<(String, u16)>,
}

fn locate(state: &AppState, t: &Target, asked: Option<&str>) -> ApiResult<Located> {
    let reg = &state.registry;
    let name = t.name.as_deref().unwrap_or_default();
    let pod = reg.get_value(t.res, t.ns.as_deref(), name)?;
    let container = choose_container(&pod, name, asked)?;
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let endpoint = match node {
        None => None,
        Some(n) => {
            let nodes = resources::find("", "v1", "nodes").expect("nodes are served");
            let node = reg.get_value(nodes, None, n).map_err(|e| {
                if e.code == 404 {
                    ApiError::internal(format!(
                        "pod {name:?} is bound to node {n:?}, which does not exist"
                    ))
                } else {
                    e
                }
            })?;
            Some(node_endpoint(&node)?)
        }
    };
    Ok(Located {
        container,
        endpoint,
    })
}

type KubeletStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to a node's kubelet API with the kubelet client certificate.
async fn connect(state: &AppState, host: &str, port: u16) -> Result<KubeletStream, String> {
    let tls = state
        .kubelet_tls
        .clone()
        .ok_or_else(|| "this server has no kubelet client certificate".to_string())?;
    let addr = authority(host, port);
    let dial = async {
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("dial tcp {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host}: {e}"))?;
        tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, dial)
        .await
        .map_err(|_| format!("dial tcp {addr}: i/o timeout"))?
}

/// The node's error as a Status with its code and message (kube-apiserver's
/// `GenericHttpResponseChecker`).
fn node_error(code: u16, body: &[u8]) -> ApiError {
    let msg = String::from_utf8_lossy(body).trim().to_string();
    let reason = match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        422 => "Invalid",
        500 => "InternalError",
        _ => "",
    };
    ApiError::new(code, reason, msg)
}

/// `GET …/pods/{name}/log`.
pub(super) async fn log(
    state: &AppState,
    t: &Target,
    q: &HashMap<String, String>,
) -> ApiResult<Response> {
    let name = t.name.as_deref().unwrap_or_default();
    let ns = t.ns.as_deref().unwrap_or_default();
    let loc = locate(state, t, q.get("container").map(String::as_str))?;
    let query = log_query(name, q)?;
    let Some((host, port)) = loc.endpoint else {
        // Not scheduled yet: nothing to show, as upstream.
        return Ok(text_response(Body::empty()));
    };
    let path = format!(
        "/containerLogs/{}/{}/{}{}{}",
        seg(ns),
        seg(name),
        seg(&loc.container),
        if query.is_empty() { "" } else { "?" },
        query
    );
    let url = format!("https://{}{path}", authority(&host, port));
    let fail = |e: String| ApiError::internal(format!("Get \"{url}\": {e}"));
    let io = connect(state, &host, port).await.map_err(fail)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| fail(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "kubelet connection ended");
        }
    });
    let req = http::Request::get(path)
        .header(http::header::HOST, authority(&host, port))
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| fail(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let code = resp.status();
    if !(200..=206).contains(&code.as_u16()) {
        use http_body_util::BodyExt;
        let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        return Err(node_error(code.as_u16(), &body));
    }
    Ok(text_response(Body::new(resp.into_body())))
}

fn text_response(body: Body) -> Response {
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "text/plain")],
        body,
    )
        .into_response()
}

/// A path segment, percent-encoded.
fn seg(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Whether the request asks for a WebSocket upgrade.
pub fn is_websocket(h: &HeaderMap) -> bool {
    header_has(h, http::header::UPGRADE, "websocket")
        && header_has(h, http::header::CONNECTION, "upgrade")
}

/// Whether the request asks for a SPDY upgrade.
pub fn is_spdy(h: &HeaderMap) -> bool {
    h.get_all(http::header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().starts_with("spdy/"))
}

fn header_has(h: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
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

/// `GET|POST …/pods/{name}/exec`.
pub(super) async fn exec(
    state: &Arc<AppState>,
    t: &Target,
    uri: &Uri,
    headers: &HeaderMap,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> ApiResult<Response> {
    let name = t.name.as_deref().unwrap_or_default();
    let ns = t.ns.as_deref().unwrap_or_default();
    let (asked, query) = exec_query(uri.query().unwrap_or(""))?;
    let loc = locate(state, t, asked.as_deref())?;
    let Some((host, port)) = loc.endpoint else {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    let path = format!(
        "/exec/{}/{}/{}?{query}",
        seg(ns),
        seg(name),
        seg(&loc.container)
    );
    if !is_websocket(headers) {
        if is_spdy(headers) {
            return exec_spdy(state, &host, port, &path, headers, upgrade).await;
        }
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    let protocol = choose_protocol(headers).ok_or_else(|| {
        ApiError::bad_request(format!(
            "none of the requested WebSocket subprotocols is supported; this server speaks {V5} and {V4}"
        ))
    })?;
    let key = headers
        .get(http::header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| ApiError::bad_request("Sec-WebSocket-Key is missing"))?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = upgrade.ok_or_else(|| {
        ApiError::bad_request("this connection cannot be upgraded (exec needs HTTP/1.1)")
    })?;
    let url = format!("wss://{}{path}", authority(&host, port));
    // The node connection is made before answering, so that its refusal is known; it is
    // reported on the error channel after the upgrade either way.
    let node = connect_exec(state, &host, port, &url, protocol).await;
    let v4_or_5 = protocol;
    tokio::spawn(async move {
        let up = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "exec upgrade failed");
                return;
            }
        };
        let mut client =
            WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
        match node {
            Ok(node) => relay(client, node).await,
            Err(e) => {
                let mut frame = vec![3u8];
                frame.extend_from_slice(e.to_status().to_string().as_bytes());
                let _ = client.send(Message::Binary(frame.into())).await;
                let _ = client.send(normal_close()).await;
                let _ = client.close(None).await;
                tracing::debug!(protocol = v4_or_5, error = %e, "exec: the node refused");
            }
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, "websocket")
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::SEC_WEBSOCKET_ACCEPT, accept)
        .header(http::header::SEC_WEBSOCKET_PROTOCOL, protocol)
        .body(Body::empty())
        .expect("a valid response"))
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

/// An HTTP/1.1 response head: the status code, the headers (names lower-case), and where
/// the bytes after it start.
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

/// A SPDY exec: the upgrade request goes to the node as it came (its protocol versions),
/// then the connections are spliced.
async fn exec_spdy(
    state: &AppState,
    host: &str,
    port: u16,
    path: &str,
    headers: &HeaderMap,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> ApiResult<Response> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let on_upgrade = upgrade.ok_or_else(|| {
        ApiError::bad_request("this connection cannot be upgraded (exec needs HTTP/1.1)")
    })?;
    let url = format!("https://{}{path}", authority(host, port));
    let fail = |e: String| ApiError::internal(format!("error dialing backend: {e}"));
    let mut io = connect(state, host, port).await.map_err(fail)?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n",
        authority(host, port)
    );
    for v in headers
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        req += &format!("X-Stream-Protocol-Version: {v}\r\n");
    }
    req += "Content-Length: 0\r\n\r\n";
    io.write_all(req.as_bytes())
        .await
        .map_err(|e| fail(format!("{url}: {e}")))?;
    let mut buf = Vec::new();
    let head = async {
        loop {
            if let Some(h) = parse_head(&buf) {
                return Ok(h);
            }
            if buf.len() > 64 * 1024 {
                return Err("the node's answer has no end of headers".to_string());
            }
            let mut tmp = [0u8; 4096];
            match io.read(&mut tmp).await {
                Ok(0) => return Err("the node closed the connection".to_string()),
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    let head = tokio::time::timeout(Duration::from_secs(60), head)
        .await
        .map_err(|_| fail(format!("{url}: no answer within 60 s")))?
        .map_err(|e| fail(format!("{url}: {e}")))?;
    let (code, end) = (head.code, head.end);
    if code != 101 {
        // The node's error message: the body, as far as it is announced and arrives soon.
        let len = head
            .get("content-length")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(0)
            .min(64 * 1024);
        let rest = async {
            while buf.len() < end + len {
                let mut tmp = [0u8; 4096];
                match io.read(&mut tmp).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), rest).await;
        let body = &buf[end..buf.len().min(end + len)];
        return Err(node_error(code, body));
    }
    let early = buf.split_off(end);
    tokio::spawn(async move {
        let Ok(up) = on_upgrade.await else {
            return;
        };
        let mut client = TokioIo::new(up);
        if client.write_all(&early).await.is_ok() {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut io).await;
        }
    });
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "SPDY/3.1");
    if let Some(p) = head.get("x-stream-protocol-version") {
        resp = resp.header("X-Stream-Protocol-Version", p);
    }
    Ok(resp.body(Body::empty()).expect("a valid response"))
}

/// A WebSocket to the node's exec endpoint with `protocol`.
async fn connect_exec(
    state: &AppState,
    host: &str,
    port: u16,
    url: &str,
    protocol: &'static str,
) -> ApiResult<WebSocketStream<KubeletStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error as WsError;
    let fail = |e: String| ApiError::internal(format!("error dialing backend: {e}"));
    let io = connect(state, host, port).await.map_err(fail)?;
    let mut req = url.into_client_request().map_err(|e| fail(e.to_string()))?;
    req.headers_mut().insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static(protocol),
    );
    match tokio_tungstenite::client_async(req, io).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => Err(node_error(
            resp.status().as_u16(),
            resp.body().as_deref().unwrap_or_default(),
        )),
        Err(e) => Err(fail(e.to_string())),
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

/// Relays frames between the client and the node until either side closes.
async fn relay<A, B>(client: WebSocketStream<A>, node: WebSocketStream<B>)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut c_tx, mut c_rx) = client.split();
    let (mut n_tx, mut n_rx) = node.split();
    let up = async {
        while let Some(Ok(m)) = c_rx.next().await {
            let data = match m {
                Message::Binary(_) | Message::Text(_) => m,
                Message::Close(_) => break,
                _ => continue,
            };
            if n_tx.send(data).await.is_err() {
                break;
            }
        }
        let _ = n_tx.close().await;
    };
    let down = async {
        while let Some(Ok(m)) = n_rx.next().await {
            let data = match m {
                Message::Binary(_) | Message::Text(_) => m,
                Message::Close(_) => break,
                _ => continue,
            };
            if c_tx.send(data).await.is_err() {
                break;
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
            let _ = tokio::time::timeout(Duration::from_secs(5), down).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: &[&str], init: &[&str]) -> Value {
        let list = |n: &[&str]| n.iter().map(|c| json!({"name": c})).collect::<Vec<_>>();
        json!({"spec": {"containers": list(containers), "initContainers": list(init)}})
    }

    #[test]
    fn container_choice() {
        assert_eq!(choose_container(&pod(&["a"], &[]), "p", None).unwrap(), "a");
        assert_eq!(
            choose_container(&pod(&["a", "b"], &[]), "p", Some("b")).unwrap(),
            "b"
        );
        let e = choose_container(&pod(&["a", "b"], &[]), "two", None).unwrap_err();
        assert_eq!((e.code, e.reason), (400, "BadRequest"));
        assert_eq!(
            e.message,
            "a container name must be specified for pod two, choose one of: [a b]"
        );
        let e = choose_container(&pod(&["a", "b"], &["i"]), "two", None).unwrap_err();
        assert_eq!(
            e.message,
            "a container name must be specified for pod two, choose one of: [a b] or one of the init containers: [i]"
        );
        let e = choose_container(&pod(&["a"], &[]), "p", Some("z")).unwrap_err();
        assert_eq!(e.message, "container z is not valid for pod p");
        assert_eq!(
            choose_container(&pod(&["a"], &["i"]), "p", Some("i")).unwrap(),
            "i"
        );
    }

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn log_options() {
        let s = log_query(
            "p",
            &q(&[
                ("follow", "true"),
                ("previous", "false"),
                ("timestamps", "1"),
                ("tailLines", "2"),
                ("container", "c"),
            ]),
        )
        .unwrap();
        let got: HashMap<String, String> =
            form_urlencoded::parse(s.as_bytes()).into_owned().collect();
        assert_eq!(
            got,
            q(&[
                ("follow", "true"),
                ("timestamps", "true"),
                ("tailLines", "2")
            ])
        );
        let s = log_query(
            "p",
            &q(&[("sinceTime", "2026-01-02T03:04:05Z"), ("limitBytes", "9")]),
        )
        .unwrap();
        assert!(
            s.contains("sinceTime=2026-01-02T03%3A04%3A05Z") && s.contains("limitBytes=9"),
            "{s}"
        );
        let e = log_query("p", &q(&[("tailLines", "-1")])).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(e.message.contains("tailLines"), "{}", e.message);
        assert_eq!(
            log_query("p", &q(&[("limitBytes", "0")])).unwrap_err().code,
            422
        );
        assert_eq!(
            log_query("p", &q(&[("sinceSeconds", "0")]))
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(
            log_query("p", &q(&[("tailLines", "x")])).unwrap_err().code,
            400
        );
        assert_eq!(
            log_query(
                "p",
                &q(&[("sinceSeconds", "5"), ("sinceTime", "2026-01-02T03:04:05Z")])
            )
            .unwrap_err()
            .code,
            422
        );
        assert_eq!(log_query("p", &q(&[])).unwrap(), "");
    }

    #[test]
    fn exec_options() {
        let (c, s) = exec_query(
            "command=sh&command=-c&command=echo%20hi&container=b&stdin=true&stdout=true&stderr=false&tty=false",
        )
        .unwrap();
        assert_eq!(c.as_deref(), Some("b"));
        assert_eq!(s, "command=sh&command=-c&command=echo+hi&stdin=1&stdout=1");
        assert!(exec_query("stdout=true").is_err());
        let e = exec_query("command=ls").unwrap_err();
        assert_eq!(
            e.message,
            "you must specify at least 1 of stdin, stdout, stderr"
        );
    }

    #[test]
    fn upgrades_and_protocols() {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONNECTION, "Upgrade".parse().unwrap());
        h.insert(http::header::UPGRADE, "websocket".parse().unwrap());
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            "v5.channel.k8s.io, v4.channel.k8s.io, v3.channel.k8s.io"
                .parse()
                .unwrap(),
        );
        assert!(is_websocket(&h) && !is_spdy(&h));
        assert_eq!(choose_protocol(&h), Some(V5));
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            "v4.channel.k8s.io".parse().unwrap(),
        );
        assert_eq!(choose_protocol(&h), Some(V4));
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            "base64.channel.k8s.io".parse().unwrap(),
        );
        assert_eq!(choose_protocol(&h), None);
        h.insert(http::header::UPGRADE, "SPDY/3.1".parse().unwrap());
        assert!(!is_websocket(&h) && is_spdy(&h));
        let answer = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nnoX";
        let head = parse_head(answer).unwrap();
        assert_eq!(head.code, 400);
        assert_eq!(head.get("content-length"), Some("3"));
        assert_eq!(&answer[head.end..], b"noX");
        assert_eq!(parse_head(b"HTTP/1.1 101"), None);
    }

    #[test]
    fn node_addresses() {
        let n = json!({"metadata": {"name": "n1"}, "status": {
            "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "172.31.0.11"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10255}}}});
        assert_eq!(
            node_endpoint(&n).unwrap(),
            ("172.31.0.11".to_string(), 10255)
        );
        let n = json!({"metadata": {"name": "n1"}, "status": {
            "addresses": [{"type": "InternalIP", "address": "fd00::1"}]}});
        let (h, p) = node_endpoint(&n).unwrap();
        assert_eq!(p, DEFAULT_KUBELET_PORT);
        assert_eq!(authority(&h, p), "[fd00::1]:10250");
        let e = node_endpoint(&json!({"metadata": {"name": "n1"}})).unwrap_err();
        assert_eq!(e.code, 500);
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
        let e = node_error(
            400,
            b"previous terminated container \"c\" in pod \"p\" not found\n",
        );
        assert_eq!((e.code, e.reason), (400, "BadRequest"));
        assert_eq!(
            e.message,
            "previous terminated container \"c\" in pod \"p\" not found"
        );
    }
}
