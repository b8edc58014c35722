//! The `kubernetes` Service with several API servers on one etcd cluster (in process): each
//! server's lease puts its advertised address into the Service's Endpoints and EndpointSlice,
//! a server shutting down takes its address out at once, a server that stops renewing (a
//! crash) is taken out by the others after the lease TTL, and a restarted one comes back.
//!
//! Real etcd (Debian's `etcd-server`); without it the test prints `SKIP:` and passes, unless
//! `SLUICE_REQUIRE_ALL=1`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_control::controllers::kubernetes_service::{LEASES_PREFIX, NAME};
use sluice_control::registry::Registry;
use sluice_control::resources::by_kind;
use sluice_control::{Server, ServerConfig, StoreBackend};
use sluice_store::testing::{skip, EtcdCluster};
use sluice_store::EtcdOptions;

const INTERVAL: Duration = Duration::from_millis(200);
const TTL: Duration = Duration::from_millis(1500);

/// API server `i` listens on 127.0.0.`i`:`port`: all on one port, as the endpoints need.
async fn start(dir: &Path, etcd: &EtcdCluster, i: u8, port: u16) -> Server {
    let mut cfg = ServerConfig::new(dir.join(format!("api{i}")));
    cfg.listen = format!("127.0.0.{i}:{port}").parse().unwrap();
    // Documentation addresses: advertised, never dialled here.
    cfg.advertise_address = Some(format!("192.0.2.{i}").parse().unwrap());
    cfg.leader.identity = format!("api{i}");
    cfg.endpoint_reconciler.interval = INTERVAL;
    cfg.endpoint_reconciler.lease_ttl = TTL;
    cfg.backend = StoreBackend::Etcd(EtcdOptions {
        endpoints: etcd.endpoints(),
        compaction_interval: None,
        request_timeout: Duration::from_secs(3),
        ..EtcdOptions::default()
    });
    Server::start(cfg).await.unwrap()
}

/// The addresses of the `kubernetes` EndpointSlice and Endpoints as `reg` reads them now.
async fn addresses(reg: &Registry) -> (Vec<String>, Vec<String>) {
    reg.store().fresh().await.unwrap();
    let slice = reg
        .get_value(by_kind("EndpointSlice"), Some("default"), NAME)
        .unwrap();
    let from_slice = slice["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["addresses"][0].as_str().unwrap().to_string())
        .collect();
    let ep = reg
        .get_value(by_kind("Endpoints"), Some("default"), NAME)
        .unwrap();
    let from_endpoints = ep["subsets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["addresses"].as_array().unwrap().clone())
        .map(|a| a["ip"].as_str().unwrap().to_string())
        .collect();
    (from_slice, from_endpoints)
}

/// Waits until both objects list exactly `want`; returns how long that took.
async fn wait_for(reg: &Registry, want: &[&str], limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let (s, e) = addresses(reg).await;
        if s == want && e == want {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "after {:?} the kubernetes endpoints are {s:?} / {e:?}, not {want:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_service_lists_every_live_api_server() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = match EtcdCluster::start(&dir.path().join("etcd"), 1) {
        Ok(c) => c,
        Err(e) if e.contains("not installed") => return skip(&e),
        Err(e) => panic!("{e}"),
    };
    // A port free on 127.0.0.1 (the other loopback addresses are as good as unused).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut servers = Vec::new();
    for i in 1..=3 {
        servers.push(Some(start(dir.path(), &etcd, i, port).await));
    }
    let reg = |servers: &[Option<Server>], i: usize| servers[i].as_ref().unwrap().registry.clone();
    let all = ["192.0.2.1", "192.0.2.2", "192.0.2.3"];
    let took = wait_for(&reg(&servers, 0), &all, Duration::from_secs(5)).await;
    println!("three API servers listed after {took:?}");
    // Every server reads the same, and the Service points at the servers' port.
    for i in 1..3 {
        assert_eq!(addresses(&reg(&servers, i)).await.0, all);
    }
    let svc = reg(&servers, 0)
        .get_value(by_kind("Service"), Some("default"), NAME)
        .unwrap();
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], port);
    // Steady state: renewals rewrite nothing (agents watching the slice see no churn).
    let rev = reg(&servers, 0)
        .get(by_kind("EndpointSlice"), Some("default"), NAME)
        .unwrap()
        .mod_revision;
    tokio::time::sleep(INTERVAL * 5).await;
    reg(&servers, 0).store().fresh().await.unwrap();
    assert_eq!(
        reg(&servers, 0)
            .get(by_kind("EndpointSlice"), Some("default"), NAME)
            .unwrap()
            .mod_revision,
        rev,
        "the slice was rewritten although no server came or went"
    );

    // A graceful shutdown takes the address out at once (well before the TTL).
    servers[1].take().unwrap().shutdown().await;
    let took = wait_for(&reg(&servers, 0), &["192.0.2.1", "192.0.2.3"], TTL / 2).await;
    println!("a server shut down: out after {took:?}");

    // A server that crashed just after writing its lease (the lease of a process that is
    // gone, written here as it would have): listed, then taken out by the others once it
    // has gone unrenewed for the TTL.
    let r0 = reg(&servers, 0);
    r0.store()
        .create(
            format!("{LEASES_PREFIX}api9"),
            json!({"apiVersion": "sluice.dev/v1", "kind": "MasterLease",
                   "metadata": {"name": "api9"}, "ip": "192.0.2.9", "port": port, "renewals": 1}),
        )
        .await
        .unwrap();
    let t = Instant::now();
    wait_for(
        &r0,
        &["192.0.2.1", "192.0.2.3", "192.0.2.9"],
        Duration::from_secs(5),
    )
    .await;
    let took = wait_for(&r0, &["192.0.2.1", "192.0.2.3"], TTL * 4).await;
    let gone = t.elapsed();
    println!("a crashed server's address out {gone:?} after its last renewal (TTL {TTL:?})");
    assert!(gone >= TTL, "taken out before its lease expired ({took:?})");
    assert!(r0.store().get(&format!("{LEASES_PREFIX}api9")).is_none());

    // The server shut down earlier, restarted: back.
    servers[1] = Some(start(dir.path(), &etcd, 2, port).await);
    let took = wait_for(&reg(&servers, 0), &all, Duration::from_secs(5)).await;
    println!("restarted server back after {took:?}");
    for s in servers.into_iter().flatten() {
        s.shutdown().await;
    }
}
