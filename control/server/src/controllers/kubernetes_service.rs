//! The `kubernetes` Service in `default`, pointing at the API servers (what the apiserver's
//! endpoint reconciler keeps): ClusterIP the first address of the service CIDR, port 443
//! (`https`) to the servers' port, with an Endpoints object and an EndpointSlice naming every
//! live API server's advertised address. In-cluster clients find the API through it
//! (`kubernetes.default.svc`).
//!
//! Several API servers share one store, so the endpoints are kept as upstream's `lease`
//! endpoint reconciler keeps them: each API server holds a lease key
//! `/registry/sluice.dev/masterleases/<identity>` naming its address and port and renews it
//! every interval (10 s); each one then lists the leases, deletes those that stopped being
//! renewed, and writes the endpoints as the sorted, distinct addresses of the live ones.
//!
//! A lease is expired when its revision has not changed for the TTL (15 s) as *this* server
//! has watched it: upstream relies on etcd's key TTLs; observing the revision on one's own
//! clock (as the leader election does) needs no TTL in the store and no synchronised clocks.
//! Upstream keys its leases by address; keying them by the server's identity (the one it uses
//! in leader election) lets several servers share one advertised address (a load balancer in
//! front, as in the lab) without one's shutdown taking the address out under the others. A
//! server shutting down deletes its lease and takes its address out at once, as upstream's
//! does.
//!
//! All API servers are expected to serve on one port (as upstream requires); if they do not,
//! they agree on the port most of them use and list only those servers (see
//! [`EndpointReconciler`]), rather than each writing its own port in turn.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_store::{Revision, StoreError};

use crate::registry::{store_unavailable, Part, Registry};
use crate::resources::{by_kind, Resource};
use crate::status::ApiResult;

/// The Service's name.
pub const NAME: &str = "kubernetes";

/// The first address of the service CIDR (`10.96.0.1` for `10.96.0.0/12`).
pub fn cluster_ip(reg: &Registry) -> IpAddr {
    let net = reg.config().service_cidr;
    match net.network() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 1).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 1).into()),
    }
}

fn desired(reg: &Registry, ips: &[IpAddr], port: u16) -> [(&'static Resource, Value); 3] {
    let family = if ips.first().is_none_or(IpAddr::is_ipv4) {
        "IPv4"
    } else {
        "IPv6"
    };
    let cip = cluster_ip(reg).to_string();
    let ports = json!([{"name": "https", "port": port, "protocol": "TCP"}]);
    // Endpoints without addresses have no subsets (what upstream writes when the last
    // server goes).
    let subsets = if ips.is_empty() {
        json!([])
    } else {
        json!([{"addresses": ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect::<Vec<_>>(),
                "ports": ports}])
    };
    [
        (
            by_kind("Service"),
            json!({
                "metadata": {"name": NAME, "namespace": "default",
                             "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {"type": "ClusterIP", "clusterIP": cip, "clusterIPs": [cip],
                         "sessionAffinity": "None",
                         "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                                    "targetPort": port}]},
            }),
        ),
        (
            by_kind("Endpoints"),
            json!({
                "metadata": {"name": NAME, "namespace": "default",
                             "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                "subsets": subsets,
            }),
        ),
        (
            by_kind("EndpointSlice"),
            json!({
                "metadata": {"name": NAME, "namespace": "default",
                             "labels": {"kubernetes.io/service-name": NAME}},
                "addressType": family,
                "endpoints": ips.iter()
                    .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
                    .collect::<Vec<_>>(),
                "ports": ports,
            }),
        ),
    ]
}

/// Whether `current` already has every field `want` sets (ignoring server-set fields; lists
/// compare whole, so an address taken out is noticed).
fn covers(current: &Value, want: &Value) -> bool {
    match (current, want) {
        (Value::Object(c), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| c.get(k).is_some_and(|cv| covers(cv, wv))),
        (c, w) => c == w,
    }
}

/// Creates the Service, and with `endpoints` the Endpoints and EndpointSlice naming `ips` on
/// `port`, or brings them up to date (nothing is rewritten when nothing changed).
pub async fn ensure(reg: &Registry, ips: &[IpAddr], port: u16, endpoints: bool) -> ApiResult<()> {
    for (res, want) in desired(reg, ips, port) {
        if res.kind != "Service" && !endpoints {
            continue;
        }
        match reg.get_value(res, Some("default"), NAME) {
            Err(e) if e.code == 404 => {
                reg.create(res, Some("default"), want).await?;
            }
            Err(e) => return Err(e),
            Ok(current) if covers(&current, &want) => {}
            Ok(mut current) => {
                for (k, v) in want.as_object().into_iter().flatten() {
                    if k == "metadata" {
                        current["metadata"]["labels"] = v["labels"].clone();
                    } else {
                        current[k] = v.clone();
                    }
                }
                reg.update(res, Some("default"), NAME, current, Part::Main)
                    .await?;
            }
        }
    }
    Ok(())
}

/// A loopback or unspecified address is no endpoint any pod could reach (and validation
/// refuses it, as upstream's): such a server writes only the Service.
pub fn reachable(ip: IpAddr) -> bool {
    !ip.is_loopback() && !ip.is_unspecified()
}

/// Where the API servers' leases live.
pub const LEASES_PREFIX: &str = "/registry/sluice.dev/masterleases/";

/// How often a server renews its lease and rewrites the endpoints (upstream: 10 s).
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(10);

/// How long a lease may go unrenewed before it is deleted (upstream: 15 s).
pub const LEASE_TTL: Duration = Duration::from_secs(15);

/// The lease endpoint reconciler of one API server.
pub struct EndpointReconciler {
    identity: String,
    addr: SocketAddr,
    ttl: Duration,
    /// Other servers' leases: the revision last seen and when it was first seen.
    seen: BTreeMap<String, (Revision, Instant)>,
    renewals: u64,
}

impl EndpointReconciler {
    /// The reconciler of the server `identity` (unique among the API servers, stable across
    /// restarts) advertising `addr`; leases unrenewed for `ttl` expire.
    pub fn new(identity: &str, addr: SocketAddr, ttl: Duration) -> Self {
        EndpointReconciler {
            identity: identity.replace('/', "_"),
            addr,
            ttl,
            seen: BTreeMap::new(),
            renewals: 0,
        }
    }

    fn own_key(&self) -> String {
        format!("{LEASES_PREFIX}{}", self.identity)
    }

    /// Renews this server's lease, deletes expired ones and brings the Service and its
    /// endpoints up to date; returns the live addresses written.
    pub async fn reconcile(&mut self, reg: &Registry) -> ApiResult<Vec<IpAddr>> {
        if !reachable(self.addr.ip()) {
            ensure(reg, &[], self.addr.port(), false).await?;
            return Ok(Vec::new());
        }
        self.renew(reg).await?;
        let (ips, port) = self.live(reg, true).await;
        ensure(reg, &ips, port.unwrap_or(self.addr.port()), true).await?;
        Ok(ips)
    }

    /// On shutdown: deletes this server's lease and takes its address out of the endpoints.
    pub async fn remove(&mut self, reg: &Registry) -> ApiResult<()> {
        if !reachable(self.addr.ip()) {
            return Ok(());
        }
        match reg.store().delete(self.own_key(), None).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(store_unavailable(e)),
        }
        let (ips, port) = self.live(reg, false).await;
        ensure(reg, &ips, port.unwrap_or(self.addr.port()), true).await
    }

    async fn renew(&mut self, reg: &Registry) -> ApiResult<()> {
        self.renewals += 1;
        let ip = self.addr.ip().to_string();
        // Any write changes the key's revision, which is what other servers watch.
        let lease = json!({
            "apiVersion": "sluice.dev/v1",
            "kind": "MasterLease",
            "metadata": {"name": self.identity},
            "ip": ip,
            "port": self.addr.port(),
            "renewals": self.renewals,
        });
        let key = self.own_key();
        let result = match reg.store().update(key.clone(), lease.clone(), None).await {
            Err(StoreError::NotFound { .. }) => reg.store().create(key, lease).await,
            r => r,
        };
        result.map(|_| ()).map_err(store_unavailable)
    }

    /// The sorted, distinct addresses of the live leases and their port; with `expire`,
    /// expired ones are deleted. Servers on different ports (a misconfiguration: one slice
    /// carries one port) would make each server write its own: all agree instead on the port
    /// most of them serve on (the lowest of equals) and list only the servers on it.
    async fn live(&mut self, reg: &Registry, expire: bool) -> (Vec<IpAddr>, Option<u16>) {
        let own = self.own_key();
        let (leases, _) = reg.store().list(LEASES_PREFIX);
        let now = Instant::now();
        let mut ips = Vec::new();
        let mut present = Vec::new();
        for l in leases {
            let Some((ip, port)) = l.value().ok().and_then(|v| {
                let ip = v.get("ip")?.as_str()?.parse::<IpAddr>().ok()?;
                let port = u16::try_from(v.get("port")?.as_u64()?).ok()?;
                Some((ip, port))
            }) else {
                continue;
            };
            if l.key == own {
                if expire {
                    ips.push((ip, port));
                }
                continue;
            }
            present.push(l.key.clone());
            let since = match self.seen.get(&l.key) {
                Some((rev, at)) if *rev == l.mod_revision => *at,
                _ => {
                    self.seen.insert(l.key.clone(), (l.mod_revision, now));
                    now
                }
            };
            if expire && now.duration_since(since) >= self.ttl {
                // With the revision seen as precondition: a renewal meanwhile keeps it.
                match reg
                    .store()
                    .delete(l.key.clone(), Some(l.mod_revision))
                    .await
                {
                    Ok(_) => {
                        tracing::info!(apiserver = %ip, "API server lease expired: endpoint removed");
                        continue;
                    }
                    Err(StoreError::NotFound { .. }) => continue,
                    Err(_) => {}
                }
            }
            ips.push((ip, port));
        }
        self.seen.retain(|k, _| present.contains(k));
        let mut per_port: BTreeMap<u16, usize> = BTreeMap::new();
        for (_, port) in &ips {
            *per_port.entry(*port).or_default() += 1;
        }
        // The most common port; `max_by_key` keeps the last of equals, so iterate downwards.
        let port = per_port
            .iter()
            .rev()
            .max_by_key(|(_, n)| **n)
            .map(|(p, _)| *p);
        let mut out: Vec<IpAddr> = ips
            .iter()
            .filter(|(_, p)| Some(*p) == port)
            .map(|(ip, _)| *ip)
            .collect();
        if out.len() < ips.len() {
            tracing::warn!(port = ?port, leases = ?ips, "API servers serve on different ports; the kubernetes Service lists only those on the most common one");
        }
        out.sort();
        out.dedup();
        (out, port)
    }
}

/// Runs the reconciler every `interval` until aborted.
pub async fn run(reg: std::sync::Arc<Registry>, mut r: EndpointReconciler, interval: Duration) {
    loop {
        if let Err(e) = r.reconcile(&reg).await {
            // A user may hold the first ClusterIP, or the store may be failing: retried.
            tracing::warn!(error = %e, "the kubernetes Service could not be written");
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sluice_store::{RedbStore, Store, StoreOptions};

    use super::*;
    use crate::registry::RegistryConfig;

    fn registry() -> Registry {
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::in_memory(StoreOptions::default()).unwrap());
        Registry::new(store, RegistryConfig::default())
    }

    fn slice_ips(reg: &Registry) -> Vec<String> {
        let slice = reg
            .get_value(by_kind("EndpointSlice"), Some("default"), NAME)
            .unwrap();
        slice["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["addresses"][0].as_str().unwrap().to_string())
            .collect()
    }

    fn endpoints_ips(reg: &Registry) -> Vec<String> {
        let ep = reg
            .get_value(by_kind("Endpoints"), Some("default"), NAME)
            .unwrap();
        ep["subsets"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["addresses"].as_array().unwrap().clone())
            .map(|a| a["ip"].as_str().unwrap().to_string())
            .collect()
    }

    fn rev(reg: &Registry, kind: &str) -> u64 {
        reg.get(by_kind(kind), Some("default"), NAME)
            .unwrap()
            .mod_revision
    }

    #[tokio::test]
    async fn the_kubernetes_service_points_at_the_server_and_follows_its_address() {
        let reg = registry();
        reg.bootstrap().await.unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        ensure(&reg, &[ip("192.0.2.10")], 6443, true).await.unwrap();
        let svc = reg
            .get_value(by_kind("Service"), Some("default"), NAME)
            .unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 6443);
        let before = rev(&reg, "EndpointSlice");
        ensure(&reg, &[ip("192.0.2.10")], 6443, true).await.unwrap();
        assert_eq!(
            rev(&reg, "EndpointSlice"),
            before,
            "nothing rewritten when nothing changed"
        );
        ensure(&reg, &[ip("192.0.2.11")], 7443, true).await.unwrap();
        assert_eq!(slice_ips(&reg), ["192.0.2.11"]);
        let slice = reg
            .get_value(by_kind("EndpointSlice"), Some("default"), NAME)
            .unwrap();
        assert_eq!(slice["ports"][0]["port"], 7443);
        assert_eq!(endpoints_ips(&reg), ["192.0.2.11"]);
        // A server without a reachable address writes only the Service.
        let mut lo = EndpointReconciler::new("lo", "127.0.0.1:7444".parse().unwrap(), LEASE_TTL);
        assert!(lo.reconcile(&reg).await.unwrap().is_empty());
        assert_eq!(
            endpoints_ips(&reg),
            ["192.0.2.11"],
            "a loopback address is not written as an endpoint"
        );
    }

    #[tokio::test]
    async fn every_live_api_server_is_an_endpoint_and_a_silent_one_expires() {
        let reg = registry();
        reg.bootstrap().await.unwrap();
        let ttl = Duration::from_millis(300);
        let mut a = EndpointReconciler::new("a", "192.0.2.20:6443".parse().unwrap(), ttl);
        let mut b = EndpointReconciler::new("b", "192.0.2.10:6443".parse().unwrap(), ttl);
        let mut c = EndpointReconciler::new("c", "192.0.2.30:6443".parse().unwrap(), ttl);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(a.reconcile(&reg).await.unwrap(), [ip("192.0.2.20")]);
        assert_eq!(
            b.reconcile(&reg).await.unwrap(),
            [ip("192.0.2.10"), ip("192.0.2.20")]
        );
        assert_eq!(
            c.reconcile(&reg).await.unwrap(),
            [ip("192.0.2.10"), ip("192.0.2.20"), ip("192.0.2.30")]
        );
        assert_eq!(slice_ips(&reg), ["192.0.2.10", "192.0.2.20", "192.0.2.30"]);
        assert_eq!(
            endpoints_ips(&reg),
            ["192.0.2.10", "192.0.2.20", "192.0.2.30"]
        );
        // Renewals move no endpoint: the objects are not rewritten.
        let (slice_rev, ep_rev) = (rev(&reg, "EndpointSlice"), rev(&reg, "Endpoints"));
        for r in [&mut a, &mut b, &mut c] {
            r.reconcile(&reg).await.unwrap();
        }
        assert_eq!(rev(&reg, "EndpointSlice"), slice_rev);
        assert_eq!(rev(&reg, "Endpoints"), ep_rev);

        // c stops renewing (killed): it stays while its lease is younger than the TTL as the
        // others have seen it, and goes after.
        let mut waited = Duration::ZERO;
        let step = Duration::from_millis(100);
        while slice_ips(&reg).len() == 3 {
            assert!(waited < Duration::from_secs(5), "c's lease never expired");
            tokio::time::sleep(step).await;
            waited += step;
            a.reconcile(&reg).await.unwrap();
            b.reconcile(&reg).await.unwrap();
        }
        assert!(waited >= ttl, "expired after {waited:?}, before the TTL");
        assert_eq!(slice_ips(&reg), ["192.0.2.10", "192.0.2.20"]);
        assert_eq!(endpoints_ips(&reg), ["192.0.2.10", "192.0.2.20"]);
        assert!(reg.store().get(&format!("{LEASES_PREFIX}c")).is_none());

        // b shuts down: out at once, without waiting for the TTL.
        b.remove(&reg).await.unwrap();
        assert_eq!(slice_ips(&reg), ["192.0.2.20"]);
        assert_eq!(endpoints_ips(&reg), ["192.0.2.20"]);
        // c comes back.
        assert_eq!(
            c.reconcile(&reg).await.unwrap(),
            [ip("192.0.2.20"), ip("192.0.2.30")]
        );
        // A server on another port (a misconfiguration): every server keeps to the port most
        // of them serve on, so the slice does not flip between ports; it is left out.
        let mut e = EndpointReconciler::new("e", "192.0.2.40:7443".parse().unwrap(), ttl);
        assert_eq!(
            e.reconcile(&reg).await.unwrap(),
            [ip("192.0.2.20"), ip("192.0.2.30")]
        );
        assert_eq!(
            a.reconcile(&reg).await.unwrap(),
            [ip("192.0.2.20"), ip("192.0.2.30")]
        );
        let slice = reg
            .get_value(by_kind("EndpointSlice"), Some("default"), NAME)
            .unwrap();
        assert_eq!(slice["ports"][0]["port"], 6443);
        e.remove(&reg).await.unwrap();
        // Two servers behind one address (a load balancer in front): one leaving keeps the
        // address while the other lives.
        let mut d = EndpointReconciler::new("d", "192.0.2.30:6443".parse().unwrap(), ttl);
        d.reconcile(&reg).await.unwrap();
        assert_eq!(slice_ips(&reg), ["192.0.2.20", "192.0.2.30"]);
        c.remove(&reg).await.unwrap();
        assert_eq!(slice_ips(&reg), ["192.0.2.20", "192.0.2.30"]);
        // The last ones go: no address left, the Endpoints have no subsets.
        d.remove(&reg).await.unwrap();
        a.remove(&reg).await.unwrap();
        assert!(slice_ips(&reg).is_empty());
        assert!(endpoints_ips(&reg).is_empty());
    }
}
