//! `pods/log`: the API server's side of `kubectl logs`.
//!
//! As kube-apiserver does, it is forwarded to the kubelet API of the pod's node at
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

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::{AppState, Target};
use crate::resources;
use crate::status::{ApiError, ApiResult};

/// kubelet's port, when a Node does not report one.
pub const DEFAULT_KUBELET_PORT: u16 = 10250;
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
