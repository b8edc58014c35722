//! Three API servers on a three-member etcd cluster, under a steady stream of acknowledged
//! writes and with a watcher on each API server, through the faults an operator meets: an API
//! server killed with SIGKILL, the controller leader killed, one etcd member lost, two lost
//! (no quorum) and back. Counted and asserted at the end: no acknowledged write lost, no
//! ClusterIP or NodePort handed out twice, no watcher gap (every watcher, resuming from its
//! last resourceVersion on another API server when its own dies, saw every acknowledged write
//! exactly once, in order), writes without quorum refused with clean `Status` errors.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use sluice_store::testing::EtcdCluster;
use sluice_tests::{backend_missing, eventually, Backend, ControlPlane};

const SERVERS: usize = 3;

/// One API server slot: its process (None while killed) and a client for it.
struct Server {
    cp: ControlPlane,
    client: kube::Client,
    alive: Arc<AtomicBool>,
}

/// A Service without a selector (the writes load the API servers and the allocators, not the
/// EndpointSlice controller): a ClusterIP to allocate, and for every fourth a NodePort too.
fn svc(name: &str, node_port: bool) -> Service {
    let kind = if node_port { "NodePort" } else { "ClusterIP" };
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"type": kind, "ports": [{"port": 80}]}
    }))
    .unwrap()
}

/// Outcome of the writers.
#[derive(Default)]
struct Writes {
    /// Acknowledged creates: name → resourceVersion.
    acked: BTreeMap<String, u64>,
    /// Refusals by status code.
    refused: BTreeMap<u16, usize>,
    /// Failures that were not a `Status` from a server (connection refused: a killed server).
    unreachable: usize,
    /// Status errors seen while etcd had no quorum, with their message.
    no_quorum: Vec<(u16, String)>,
    /// The last refusal's message.
    last_refusal: String,
    /// Creates sent while etcd had no quorum that were acknowledged anyway (must stay empty).
    acked_without_quorum: Vec<String>,
    /// Per writer: when its current request was sent, and to which server.
    inflight: BTreeMap<usize, (Instant, usize)>,
}

/// What one watcher saw: (name, resourceVersion) of every ADDED, in order.
type Seen = Arc<Mutex<Vec<(String, u64)>>>;

fn rv_of(s: &Service) -> u64 {
    s.metadata
        .resource_version
        .as_deref()
        .unwrap_or("0")
        .parse()
        .unwrap()
}

/// Follows services through API server `home`, moving to the next live one (from the last
/// resourceVersion it saw) whenever its server goes away.
async fn watcher(
    clients: Vec<(kube::Client, Arc<AtomicBool>)>,
    home: usize,
    from: u64,
    seen: Seen,
    gaps: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let mut rv = from;
    let mut at = home;
    while !stop.load(Ordering::SeqCst) {
        if !clients[at].1.load(Ordering::SeqCst) {
            at = (at + 1) % clients.len();
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let api: Api<Service> = Api::namespaced(clients[at].0.clone(), "default");
        let stream = match api
            .watch(&WatchParams::default().timeout(30), &rv.to_string())
            .await
        {
            Ok(s) => s,
            Err(_) => {
                at = (at + 1) % clients.len();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut stream = stream.boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(WatchEvent::Added(s)) => {
                    rv = rv_of(&s);
                    seen.lock()
                        .unwrap()
                        .push((s.metadata.name.clone().unwrap_or_default(), rv));
                }
                Ok(WatchEvent::Modified(s)) | Ok(WatchEvent::Deleted(s)) => rv = rv_of(&s),
                Ok(WatchEvent::Bookmark(b)) => {
                    rv = b.metadata.resource_version.parse().unwrap_or(rv);
                }
                Ok(WatchEvent::Error(e)) => {
                    if e.code == 410 {
                        // The history this watcher needs is gone: a gap.
                        gaps.fetch_add(1, Ordering::SeqCst);
                        eprintln!(
                            "watcher {home}: 410 from server {at} at {rv}: {}",
                            e.message
                        );
                        return;
                    }
                    break;
                }
                Err(_) => break,
            }
        }
        // The stream ended (timeout, or the server died): go on from `rv`.
        if !clients[at].1.load(Ordering::SeqCst) {
            at = (at + 1) % clients.len();
        }
    }
}

/// Creates NodePort Services through the live API servers in turn until told to stop.
async fn writer(
    id: usize,
    clients: Vec<(kube::Client, Arc<AtomicBool>)>,
    out: Arc<Mutex<Writes>>,
    no_quorum: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0usize;
    let mut at = id % clients.len();
    while !stop.load(Ordering::SeqCst) {
        at = (at + 1) % clients.len();
        if !clients[at].1.load(Ordering::SeqCst) {
            continue;
        }
        let name = format!("w{id}-{i}");
        let api: Api<Service> = Api::namespaced(clients[at].0.clone(), "default");
        let without_quorum = no_quorum.load(Ordering::SeqCst);
        out.lock()
            .unwrap()
            .inflight
            .insert(id, (Instant::now(), at));
        match api
            .create(&PostParams::default(), &svc(&name, i.is_multiple_of(4)))
            .await
        {
            Ok(s) => {
                {
                    let mut w = out.lock().unwrap();
                    if without_quorum {
                        w.acked_without_quorum.push(name.clone());
                    }
                    w.acked.insert(name, rv_of(&s));
                }
                i += 1;
                // A steady stream, not a flood: the ranges must not run out during the test.
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            Err(kube::Error::Api(e)) => {
                {
                    let mut w = out.lock().unwrap();
                    *w.refused.entry(e.code).or_default() += 1;
                    w.last_refusal = e.message.clone();
                    if no_quorum.load(Ordering::SeqCst) {
                        w.no_quorum.push((e.code, e.message.clone()));
                    }
                }
                // A refused create may still have been stored (a timeout after commit):
                // never reuse the name.
                i += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => {
                out.lock().unwrap().unreachable += 1;
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A client of `cp` that reports server errors instead of retrying them (kube-rs retries 5xx
/// such as 504 by default, which would hide how the API servers answer without quorum).
async fn plain_client(cp: &ControlPlane) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(&cp.kubeconfig).unwrap();
    let mut cfg =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
    cfg.default_retry = false;
    kube::Client::try_from(cfg).unwrap()
}

/// The index of the API server holding the controller Lease.
async fn leader(servers: &[Server]) -> Option<usize> {
    for s in servers.iter().filter(|s| s.alive.load(Ordering::SeqCst)) {
        let leases: Api<Lease> = Api::namespaced(s.client.clone(), "kube-system");
        if let Ok(l) = leases.get("sluice-controller-manager").await {
            let holder = l.spec?.holder_identity?;
            return servers
                .iter()
                .position(|s| holder.ends_with(&format!("_{}", s.cp.addr)));
        }
    }
    None
}

async fn slice_ips(client: &kube::Client) -> Option<Vec<String>> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let l = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .ok()?;
    let mut ips: Vec<String> = l
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter().map(|e| e.addresses[0].clone()))
        .collect();
    ips.sort();
    Some(ips)
}

async fn ready_pod(client: &kube::Client, name: &str, ip: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True"}]}})),
    )
    .await
    .unwrap();
}

/// A live server's client.
fn live(servers: &[Server]) -> kube::Client {
    servers
        .iter()
        .find(|s| s.alive.load(Ordering::SeqCst))
        .expect("a live API server")
        .client
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_api_servers_survive_api_server_leader_and_etcd_member_failures() {
    if backend_missing(Backend::Etcd) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = EtcdCluster::start(&dir.path().join("etcd"), 3).unwrap();
    let endpoints = etcd.endpoints_arg();
    let args = [
        "--store",
        "etcd",
        "--etcd-endpoints",
        &endpoints,
        "--etcd-request-timeout",
        "3s",
        "--leader-elect-lease-duration",
        "4s",
        "--leader-elect-renew-deadline",
        "3s",
        "--leader-elect-retry-period",
        "500ms",
        // Small ranges (4,094 ClusterIPs, 2,000 NodePorts), so that allocations through three
        // servers at once would collide.
        "--service-cidr",
        "10.96.0.0/20",
        "--service-node-port-range",
        "30000-31999",
        // No kubelet heartbeats here: keep the node Ready for the whole test.
        "--node-monitor-grace-period",
        "3600",
    ];
    let mut servers = Vec::new();
    for i in 0..SERVERS {
        let cp = ControlPlane::start(&dir.path().join(format!("cp{i}")), &args).unwrap();
        let client = cp.client().await.unwrap();
        servers.push(Server {
            cp,
            client,
            alive: Arc::new(AtomicBool::new(true)),
        });
    }
    let clients: Vec<(kube::Client, Arc<AtomicBool>)> = servers
        .iter()
        .map(|s| (s.client.clone(), s.alive.clone()))
        .collect();

    // A node, and a Service with one ready pod on it: its EndpointSlice comes from the
    // leader's controller.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(servers[0].client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap(),
        )
        .await
        .unwrap();
    nodes
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .unwrap();
    let web: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    Api::<Service>::namespaced(servers[0].client.clone(), "default")
        .create(&PostParams::default(), &web)
        .await
        .unwrap();
    ready_pod(&servers[1].client, "web-1", "10.244.0.1").await;
    eventually(Duration::from_secs(15), "slice with web-1", || async {
        (slice_ips(&servers[2].client).await? == ["10.244.0.1"]).then_some(())
    })
    .await;
    let first_leader = eventually(Duration::from_secs(10), "a leader", || leader(&servers)).await;

    // Writers and one watcher per API server.
    let start_rv: u64 = Api::<Service>::namespaced(servers[0].client.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
        .parse()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let no_quorum = Arc::new(AtomicBool::new(false));
    let gaps = Arc::new(AtomicUsize::new(0));
    let writes = Arc::new(Mutex::new(Writes::default()));
    let mut tasks = Vec::new();
    for id in 0..4 {
        // Each writer has clients of its own, which report errors rather than retry them.
        let mut own = Vec::new();
        for s in &servers {
            own.push((plain_client(&s.cp).await, s.alive.clone()));
        }
        tasks.push(tokio::spawn(writer(
            id,
            own,
            writes.clone(),
            no_quorum.clone(),
            stop.clone(),
        )));
    }
    let mut seen: Vec<Seen> = Vec::new();
    let mut watchers = Vec::new();
    for home in 0..SERVERS {
        let s: Seen = Arc::default();
        seen.push(s.clone());
        watchers.push(tokio::spawn(watcher(
            clients.clone(),
            home,
            start_rv,
            s,
            gaps.clone(),
            stop.clone(),
        )));
    }
    let acked = || writes.lock().unwrap().acked.len();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 1. SIGKILL an API server that is not the leader: the others go on.
    let victim = (first_leader + 1) % SERVERS;
    servers[victim].alive.store(false, Ordering::SeqCst);
    servers[victim].cp.crash();
    let before = acked();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = acked() - before;
    assert!(during > 0, "writes stopped with one API server down");
    println!("API server {victim} killed: {during} writes acknowledged in the next 3 s");

    // 2. SIGKILL the controller leader: another takes over within the lease duration and
    //    the EndpointSlices keep following pods.
    servers[first_leader].alive.store(false, Ordering::SeqCst);
    servers[first_leader].cp.crash();
    let t = Instant::now();
    let next = eventually(Duration::from_secs(20), "a new leader", || async {
        leader(&servers)
            .await
            .filter(|l| *l != first_leader && servers[*l].alive.load(Ordering::SeqCst))
    })
    .await;
    let takeover = t.elapsed();
    println!("leader {first_leader} killed: server {next} leads after {takeover:?}");
    assert!(
        takeover < Duration::from_secs(10),
        "takeover took {takeover:?}"
    );
    ready_pod(&live(&servers), "web-2", "10.244.0.2").await;
    let t = Instant::now();
    eventually(Duration::from_secs(15), "slice with web-2", || async {
        (slice_ips(&live(&servers)).await? == ["10.244.0.1", "10.244.0.2"]).then_some(())
    })
    .await;
    println!(
        "EndpointSlice followed a new pod {:?} after the takeover",
        t.elapsed()
    );

    // Both killed servers come back (same data, same address).
    for i in [victim, first_leader] {
        servers[i].cp.restart().unwrap();
        servers[i].alive.store(true, Ordering::SeqCst);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. One etcd member of three down: writes go on (after etcd's own leader election when
    //    the member was its leader).
    etcd.kill(0);
    let t = Instant::now();
    let before = acked();
    while acked() <= before + 10 {
        if t.elapsed() > Duration::from_secs(20) {
            let w = writes.lock().unwrap();
            panic!(
                "writes stopped with one etcd member down: {} acknowledged since, refused {:?} (last: {}), unreachable {}",
                w.acked.len() - before,
                w.refused,
                w.last_refusal,
                w.unreachable
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stall = t.elapsed();
    let before = acked();
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "etcd member 0 killed: 10 writes acknowledged within {stall:?}, then {} in 3 s",
        acked() - before
    );

    // 4. Two of three down: no quorum. Writes are refused with clean Status errors (5xx),
    //    not hangs or dropped connections; nothing acknowledged is lost.
    etcd.kill(1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    no_quorum.store(true, Ordering::SeqCst);
    // A create through each API server: refused promptly, with a Status (5xx).
    for (i, s) in servers.iter().enumerate() {
        let api: Api<Service> = Api::namespaced(plain_client(&s.cp).await, "default");
        let t = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            api.create(&PostParams::default(), &svc(&format!("probe-{i}"), true)),
        )
        .await;
        match r {
            Ok(Err(kube::Error::Api(e))) if e.code >= 500 => println!(
                "no quorum: API server {i} refused a create after {:?}: {} {}",
                t.elapsed(),
                e.code,
                e.message
            ),
            other => panic!("API server {i} without quorum: {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    no_quorum.store(false, Ordering::SeqCst);
    {
        let w = writes.lock().unwrap();
        assert!(
            !w.no_quorum.is_empty(),
            "no write was refused without quorum: in flight {:?}, acked {}, refused {:?} (last {}), unreachable {}",
            w.inflight.values().map(|(t, at)| (t.elapsed(), *at)).collect::<Vec<_>>(),
            w.acked.len(),
            w.refused,
            w.last_refusal,
            w.unreachable
        );
        for (code, msg) in &w.no_quorum {
            assert!(*code >= 500, "{code}: {msg}");
        }
        assert!(
            w.acked_without_quorum.is_empty(),
            "writes acknowledged without quorum: {:?}",
            w.acked_without_quorum
        );
        println!(
            "no quorum for 10 s: 0 writes acknowledged, {} refused ({:?}, e.g. {:?})",
            w.no_quorum.len(),
            w.no_quorum.iter().map(|(c, _)| *c).collect::<BTreeSet<_>>(),
            w.no_quorum[0].1
        );
    }
    etcd.restart(0, false).unwrap();
    etcd.restart(1, true).unwrap();
    let before = acked();
    let t = Instant::now();
    eventually(Duration::from_secs(30), "writes to resume", || async {
        (acked() > before).then_some(())
    })
    .await;
    println!("quorum back: writes resumed after {:?}", t.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Stop writing; let the watchers catch up.
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let w = std::mem::take(&mut *writes.lock().unwrap());
    let all: Api<Service> = Api::namespaced(live(&servers), "default");
    let list = all.list(&ListParams::default()).await.unwrap();
    let stored: BTreeMap<String, Service> = list
        .items
        .into_iter()
        .map(|s| (s.metadata.name.clone().unwrap(), s))
        .collect();
    // 0 acknowledged writes lost.
    let lost: Vec<&String> = w
        .acked
        .keys()
        .filter(|n| !stored.contains_key(*n))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    // 0 duplicate allocations.
    let mut ips = BTreeMap::new();
    let mut ports = BTreeMap::new();
    for (name, s) in &stored {
        let spec = s.spec.as_ref().unwrap();
        if let Some(ip) = &spec.cluster_ip {
            if let Some(other) = ips.insert(ip.clone(), name.clone()) {
                panic!("ClusterIP {ip} held by {name} and {other}");
            }
        }
        for p in spec.ports.iter().flatten() {
            if let Some(np) = p.node_port {
                if let Some(other) = ports.insert(np, name.clone()) {
                    panic!("NodePort {np} held by {name} and {other}");
                }
            }
        }
    }
    // No watcher gap: each saw every acknowledged write once, in resourceVersion order.
    assert_eq!(gaps.load(Ordering::SeqCst), 0, "a watcher got 410 Gone");
    let last_rv = w.acked.values().max().copied().unwrap_or(0);
    for (i, s) in seen.iter().enumerate() {
        eventually(Duration::from_secs(20), "watcher catching up", || async {
            s.lock()
                .unwrap()
                .iter()
                .any(|(_, rv)| *rv >= last_rv)
                .then_some(())
        })
        .await;
        let got = s.lock().unwrap().clone();
        let names: BTreeSet<&String> = got.iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), got.len(), "watcher {i} saw a write twice");
        let missing: Vec<&String> = w.acked.keys().filter(|n| !names.contains(n)).collect();
        assert!(missing.is_empty(), "watcher {i} missed {missing:?}");
        assert!(
            got.windows(2).all(|p| p[0].1 < p[1].1),
            "watcher {i} saw events out of order"
        );
    }
    for t in watchers {
        t.abort();
    }
    println!(
        "{} writes acknowledged, {} stored, 0 lost; {} ClusterIPs and {} NodePorts, all distinct; \
         refused {:?}, unreachable {}; {} watchers saw every write once",
        w.acked.len(),
        stored.len(),
        ips.len(),
        ports.len(),
        w.refused,
        w.unreachable,
        SERVERS
    );
}

/// `--etcd-cafile/--etcd-certfile/--etcd-keyfile`: an API server on an etcd that serves TLS
/// and requires client certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_on_etcd_with_client_certificates() {
    if backend_missing(Backend::Etcd) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdCluster::start_tls(&dir.path().join("etcd"), 1).unwrap();
    let tls = etcd.tls().unwrap();
    let endpoints = etcd.endpoints_arg();
    let (ca, cert, key) = (
        tls.ca.display().to_string(),
        tls.cert.display().to_string(),
        tls.key.display().to_string(),
    );
    let cp = ControlPlane::start(
        &dir.path().join("cp"),
        &[
            "--store",
            "etcd",
            "--etcd-endpoints",
            &endpoints,
            "--etcd-cafile",
            &ca,
            "--etcd-certfile",
            &cert,
            "--etcd-keyfile",
            &key,
        ],
    )
    .unwrap();
    let api: Api<Service> = Api::namespaced(cp.client().await.unwrap(), "default");
    let made = api
        .create(&PostParams::default(), &svc("tls", true))
        .await
        .unwrap();
    let got = api.get("tls").await.unwrap();
    assert_eq!(got.metadata.uid, made.metadata.uid);
    assert!(got.spec.unwrap().cluster_ip.is_some());
}
