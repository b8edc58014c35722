//! The `kubernetes` Service in `default`, pointing at the API server (what the apiserver's
//! endpoint reconciler keeps): ClusterIP the first address of the service CIDR, port 443
//! (`https`) to the server's port, with an Endpoints object and an EndpointSlice naming the
//! advertised address. In-cluster clients find the API through it (`kubernetes.default.svc`).
//! Written at start-up and brought up to date when the advertised address changes.

use std::net::{IpAddr, SocketAddr};

use serde_json::{json, Value};

use crate::registry::{Part, Registry};
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

fn desired(reg: &Registry, addr: SocketAddr) -> [(&'static Resource, Value); 3] {
    let ip = addr.ip().to_string();
    let port = addr.port();
    let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
    let cip = cluster_ip(reg).to_string();
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
                "subsets": [{"addresses": [{"ip": ip}],
                             "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
            }),
        ),
        (
            by_kind("EndpointSlice"),
            json!({
                "metadata": {"name": NAME, "namespace": "default",
                             "labels": {"kubernetes.io/service-name": NAME}},
                "addressType": family,
                "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            }),
        ),
    ]
}

/// Whether `current` already has every field `want` sets (ignoring server-set fields).
fn covers(current: &Value, want: &Value) -> bool {
    match (current, want) {
        (Value::Object(c), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| c.get(k).is_some_and(|cv| covers(cv, wv))),
        (c, w) => c == w,
    }
}

/// Creates the Service, Endpoints and EndpointSlice, or brings them up to date. A loopback
/// address is no endpoint any pod could reach (and validation refuses it, as upstream's):
/// then only the Service is written, and `--advertise-address` is what gives it endpoints.
pub async fn ensure(reg: &Registry, addr: SocketAddr) -> ApiResult<()> {
    let reachable = !addr.ip().is_loopback() && !addr.ip().is_unspecified();
    for (res, want) in desired(reg, addr) {
        if res.kind != "Service" && !reachable {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sluice_store::{RedbStore, Store, StoreOptions};

    use super::*;
    use crate::registry::RegistryConfig;

    #[tokio::test]
    async fn the_kubernetes_service_points_at_the_server_and_follows_its_address() {
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::in_memory(StoreOptions::default()).unwrap());
        let reg = Registry::new(store, RegistryConfig::default());
        reg.bootstrap().await.unwrap();
        ensure(&reg, "192.0.2.10:6443".parse().unwrap())
            .await
            .unwrap();
        let svc = reg
            .get_value(by_kind("Service"), Some("default"), NAME)
            .unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 6443);
        let rev = reg
            .get(by_kind("EndpointSlice"), Some("default"), NAME)
            .unwrap()
            .mod_revision;
        ensure(&reg, "192.0.2.10:6443".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(
            reg.get(by_kind("EndpointSlice"), Some("default"), NAME)
                .unwrap()
                .mod_revision,
            rev,
            "nothing rewritten when nothing changed"
        );
        ensure(&reg, "192.0.2.11:7443".parse().unwrap())
            .await
            .unwrap();
        ensure(&reg, "127.0.0.1:7444".parse().unwrap())
            .await
            .unwrap();
        let slice = reg
            .get_value(by_kind("EndpointSlice"), Some("default"), NAME)
            .unwrap();
        assert_eq!(slice["endpoints"][0]["addresses"][0], "192.0.2.11");
        assert_eq!(slice["ports"][0]["port"], 7443);
        let ep = reg
            .get_value(by_kind("Endpoints"), Some("default"), NAME)
            .unwrap();
        assert_eq!(
            ep["subsets"][0]["addresses"][0]["ip"], "192.0.2.11",
            "a loopback address is not written as an endpoint"
        );
    }
}
