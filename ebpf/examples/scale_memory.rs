//! The heap the ebpf mode's planner keeps at scale (a counting allocator), beside the proxy
//! core's own maps: N ClusterIP services × 5 endpoints, the model of the desired state, a
//! mirror of the maps (built once, for comparison) and the ids the dataplane keeps instead.
//! `cargo run --release -p sluice-ebpf --example scale_memory -- 10000`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sluice_ebpf::plan::{self, Assigned, Config, Current, Model};
use sluice_proxy::model::{
    Endpoint, EndpointsMap, Protocol, ServicePort, ServicePortMap, ServicePortName,
};

/// The system allocator, counting live bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator; only counts.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn live_mb() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64 / 1e6
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let ip = |k: usize, base: u8| {
        IpAddr::V4(Ipv4Addr::new(
            10,
            base,
            (k / 250) as u8,
            (k % 250 + 1) as u8,
        ))
    };
    let t0 = live_mb();
    let mut s = ServicePortMap::new();
    let mut e = EndpointsMap::new();
    for i in 0..n {
        let spn = ServicePortName::new("default", format!("scale-{i}"), "http", Protocol::Tcp);
        s.insert(
            spn.clone(),
            Arc::new(ServicePort::cluster_ip(ip(i, 96), 80, Protocol::Tcp)),
        );
        let mut eps: Vec<Arc<Endpoint>> = (0..5)
            .map(|k| Arc::new(Endpoint::ready(ip(i * 5 + k, 244), 8080)))
            .collect();
        eps.sort_by_key(|x| x.addr());
        e.insert(spn, eps);
    }
    let t1 = live_mb();
    let cfg = Config {
        node_name: "n1".into(),
        node_ips: vec![Ipv4Addr::new(10, 0, 0, 1)],
    };
    let model = Model::build(&s, &e, &cfg, &BTreeMap::new());
    let t2 = live_mb();
    let ops = plan::plan(model.desired(), &Current::default());
    let mut current = Current::default();
    for op in &ops {
        current.apply(op);
    }
    drop(ops);
    let t3 = live_mb();
    let assigned = Assigned::of(&current);
    let t4 = live_mb();
    drop(current);
    let t5 = live_mb();
    println!(
        "{n} services × 5 endpoints: proxy maps {:.1} MB, model {:.1} MB, maps mirror {:.1} MB, ids kept instead {:.1} MB",
        t1 - t0,
        t2 - t1,
        t3 - t2,
        t4 - t3,
    );
    println!("the ebpf mode keeps: {:.1} MB", t5 - t1);
    std::hint::black_box((&model, &assigned));
}
