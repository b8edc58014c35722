//! HealthCheckNodePort server (kube-proxy's `service_health.go`), mode-agnostic.
//!
//! Every Service of type LoadBalancer with `externalTrafficPolicy: Local` has a
//! `healthCheckNodePort`; cloud load balancers probe it on every node and send traffic only to
//! nodes that answer 200. For each such Service the agent listens on `<bind IP>:<port>` (TCP,
//! `0.0.0.0` in the agent) and answers any request with:
//!
//! * `200` when the Service has at least one local ready endpoint (the ready members of the
//!   Local set of [`categorize_endpoints`], as the dataplanes program it) **and** the proxy is
//!   healthy ([`ProxyHealth`]; like kube-proxy, stale rules make the node fail its probe);
//! * `503` otherwise;
//! * headers `Content-Type: application/json`, `X-Content-Type-Options: nosniff`, and
//!   kube-proxy's `X-Load-Balancing-Endpoint-Weight: <local endpoints>`;
//! * body `{"service":{"namespace":…,"name":…},"localEndpoints":N,"serviceProxyHealthy":bool}`.
//!
//! Local serving-but-terminating endpoints still receive traffic through the Local fallback but
//! do not count here: the 503 drains the node from the load balancer, as kube-proxy intends.
//!
//! The proxy loop calls [`ServiceHealthServer::update`] with [`desired`] of the proxier's maps
//! after every successful sync: listeners open and close as Services come and go. A port that
//! cannot be bound is retried on the next update.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use sluice_proxy::categorize::categorize_endpoints;
use sluice_proxy::model::{EndpointsMap, NamespacedName, ServicePortMap};
use tokio::task::JoinHandle;

use crate::health::ProxyHealth;

/// What one Service's health check serves: its port and its local ready endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceHealth {
    /// `healthCheckNodePort`.
    pub port: u16,
    /// Local ready endpoints (the most over the Service's ports).
    pub local_endpoints: usize,
}

/// The health checks the maps call for: one per Service with a health-check node port.
pub fn desired(
    services: &ServicePortMap,
    endpoints: &EndpointsMap,
    node_name: &str,
) -> BTreeMap<NamespacedName, ServiceHealth> {
    let mut out: BTreeMap<NamespacedName, ServiceHealth> = BTreeMap::new();
    let no_labels = BTreeMap::new();
    for (spn, sp) in services {
        let Some(port) = sp.health_check_node_port else {
            continue;
        };
        let eps = endpoints.get(spn).map(Vec::as_slice).unwrap_or(&[]);
        let local_ready = if sp.uses_local_endpoints() {
            // Topology labels only shape the Cluster set; the Local set ignores them.
            categorize_endpoints(eps, sp, node_name, &no_labels)
                .local
                .iter()
                .filter(|e| e.ready)
                .count()
        } else {
            // Not externally reachable yet (no node port, no LB IP): same count, directly.
            eps.iter().filter(|e| e.is_local && e.ready).count()
        };
        let e = out.entry(spn.service()).or_insert(ServiceHealth {
            port,
            local_endpoints: 0,
        });
        e.local_endpoints = e.local_endpoints.max(local_ready);
    }
    out
}

type Counts = Arc<RwLock<HashMap<NamespacedName, usize>>>;

#[derive(Clone)]
struct HcState {
    name: NamespacedName,
    counts: Counts,
    health: Arc<ProxyHealth>,
}

async fn answer(State(st): State<HcState>) -> Response {
    let count = st
        .counts
        .read()
        .map(|c| c.get(&st.name).copied().unwrap_or(0))
        .unwrap_or(0);
    let healthy = st.health.status().healthy;
    let body = serde_json::json!({
        "service": {"namespace": st.name.namespace, "name": st.name.name},
        "localEndpoints": count,
        "serviceProxyHealthy": healthy,
    });
    let code = if count > 0 && healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut resp = (code, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&count.to_string()) {
        h.insert("X-Load-Balancing-Endpoint-Weight", v);
    }
    resp
}

/// One Service's listener; `task` is `None` while its port could not be bound.
struct Listener {
    port: u16,
    task: Option<JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// The set of health-check listeners.
pub struct ServiceHealthServer {
    bind_ip: IpAddr,
    health: Arc<ProxyHealth>,
    counts: Counts,
    listeners: Mutex<BTreeMap<NamespacedName, Listener>>,
}

impl ServiceHealthServer {
    /// A server listening on `bind_ip` (the agent uses `0.0.0.0`), answering with `health`.
    pub fn new(bind_ip: IpAddr, health: Arc<ProxyHealth>) -> Self {
        Self {
            bind_ip,
            health,
            counts: Arc::default(),
            listeners: Mutex::new(BTreeMap::new()),
        }
    }

    /// Makes the listeners and counts match `want`. Must run inside a tokio runtime.
    pub fn update(&self, want: &BTreeMap<NamespacedName, ServiceHealth>) {
        if let Ok(mut c) = self.counts.write() {
            *c = want
                .iter()
                .map(|(k, v)| (k.clone(), v.local_endpoints))
                .collect();
        }
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        // Dropping a Listener aborts its server, which closes the socket.
        listeners.retain(|name, l| want.get(name).is_some_and(|w| w.port == l.port));
        for (name, w) in want {
            let l = listeners.entry(name.clone()).or_insert(Listener {
                port: w.port,
                task: None,
            });
            if l.task.is_none() {
                l.task = self.listen(name, w.port);
            }
        }
    }

    fn listen(&self, name: &NamespacedName, port: u16) -> Option<JoinHandle<()>> {
        let addr = SocketAddr::new(self.bind_ip, port);
        let listener = match std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(service = %name, %addr, error = %e,
                    "cannot open the health check node port; retrying after the next sync");
                return None;
            }
        };
        tracing::info!(service = %name, %addr, "health check node port open");
        let router = Router::new().fallback(answer).with_state(HcState {
            name: name.clone(),
            counts: self.counts.clone(),
            health: self.health.clone(),
        });
        let name = name.clone();
        Some(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!(service = %name, error = %e, "health check server failed");
            }
        }))
    }

    /// Services with an open listener and its port.
    pub fn open_ports(&self) -> BTreeMap<NamespacedName, u16> {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, l)| l.task.is_some())
            .map(|(k, l)| (k.clone(), l.port))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;
    use std::time::Duration;

    use sluice_proxy::model::{Endpoint, Protocol, ServicePort, ServicePortName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    async fn get(port: u16) -> Option<(u16, String, String)> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        let (head, body) = buf.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, head.to_ascii_lowercase(), body.to_string()))
    }

    fn lb_local(port: u16) -> Arc<ServicePort> {
        let mut sp = ServicePort::cluster_ip(Ipv4Addr::new(10, 96, 0, 5).into(), 80, Protocol::Tcp);
        sp.node_port = Some(30080);
        sp.external_policy_local = true;
        sp.health_check_node_port = Some(port);
        Arc::new(sp)
    }

    fn ep(ip: [u8; 4], local: bool, ready: bool) -> Arc<Endpoint> {
        let mut e = Endpoint::ready(Ipv4Addr::from(ip).into(), 8080);
        e.is_local = local;
        e.node_name = Some(if local { "n1" } else { "n2" }.into());
        e.ready = ready;
        e.terminating = !ready;
        Arc::new(e)
    }

    #[test]
    fn desired_counts_local_ready_endpoints() {
        let spn = ServicePortName::new("ns", "web", "http", Protocol::Tcp);
        let services: ServicePortMap = BTreeMap::from([(spn.clone(), lb_local(31000))]);
        let mut endpoints: EndpointsMap = BTreeMap::from([(
            spn.clone(),
            vec![
                ep([10, 1, 0, 1], false, true),
                ep([10, 1, 0, 2], true, false),
            ],
        )]);
        let d = desired(&services, &endpoints, "n1");
        // A local serving-terminating endpoint is used by the fallback but does not count.
        assert_eq!(
            d[&NamespacedName::new("ns", "web")],
            ServiceHealth {
                port: 31000,
                local_endpoints: 0
            }
        );
        endpoints
            .get_mut(&spn)
            .unwrap()
            .push(ep([10, 1, 0, 3], true, true));
        let d = desired(&services, &endpoints, "n1");
        assert_eq!(d[&NamespacedName::new("ns", "web")].local_endpoints, 1);
        // No health-check port: nothing.
        let plain = Arc::new(ServicePort::cluster_ip(
            Ipv4Addr::new(10, 96, 0, 6).into(),
            80,
            Protocol::Tcp,
        ));
        let services: ServicePortMap = BTreeMap::from([(spn, plain)]);
        assert!(desired(&services, &endpoints, "n1").is_empty());
    }

    #[tokio::test]
    async fn listeners_follow_the_maps() {
        let health = Arc::new(ProxyHealth::new(Duration::from_secs(60)));
        health.updated();
        let srv = ServiceHealthServer::new(Ipv4Addr::LOCALHOST.into(), health.clone());
        let (p1, p2) = (free_port(), free_port());
        let web = NamespacedName::new("ns", "web");
        let api = NamespacedName::new("ns", "api");
        srv.update(&BTreeMap::from([
            (
                web.clone(),
                ServiceHealth {
                    port: p1,
                    local_endpoints: 0,
                },
            ),
            (
                api.clone(),
                ServiceHealth {
                    port: p2,
                    local_endpoints: 2,
                },
            ),
        ]));
        assert_eq!(srv.open_ports().len(), 2);

        let (code, head, body) = get(p1).await.expect("web answers");
        assert_eq!(code, 503);
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"service": {"namespace": "ns", "name": "web"},
                               "localEndpoints": 0, "serviceProxyHealthy": true})
        );
        let (code, head, body) = get(p2).await.expect("api answers");
        assert_eq!(code, 200, "{body}");
        assert!(
            head.contains("x-load-balancing-endpoint-weight: 2"),
            "{head}"
        );
        assert!(body.contains("\"localEndpoints\":2"), "{body}");

        // web gains an endpoint, api goes away.
        srv.update(&BTreeMap::from([(
            web.clone(),
            ServiceHealth {
                port: p1,
                local_endpoints: 1,
            },
        )]));
        assert_eq!(get(p1).await.map(|r| r.0), Some(200));
        let mut closed = false;
        for _ in 0..50 {
            if get(p2).await.is_none() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(closed, "api's listener should be closed");
        assert_eq!(srv.open_ports(), BTreeMap::from([(web.clone(), p1)]));

        // A port change moves the listener.
        let p3 = free_port();
        srv.update(&BTreeMap::from([(
            web.clone(),
            ServiceHealth {
                port: p3,
                local_endpoints: 1,
            },
        )]));
        assert_eq!(get(p3).await.map(|r| r.0), Some(200));
        assert_eq!(srv.open_ports(), BTreeMap::from([(web, p3)]));
    }

    #[tokio::test]
    async fn stale_proxy_fails_the_check() {
        // Never synced: unhealthy, so even a Service with local endpoints answers 503.
        let health = Arc::new(ProxyHealth::new(Duration::from_secs(60)));
        let srv = ServiceHealthServer::new(Ipv4Addr::LOCALHOST.into(), health);
        let p = free_port();
        srv.update(&BTreeMap::from([(
            NamespacedName::new("ns", "web"),
            ServiceHealth {
                port: p,
                local_endpoints: 3,
            },
        )]));
        let (code, _, body) = get(p).await.expect("answers");
        assert_eq!(code, 503);
        assert!(body.contains("\"serviceProxyHealthy\":false"), "{body}");
    }
}
