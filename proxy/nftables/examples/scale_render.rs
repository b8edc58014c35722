//! Writes the full render of N ClusterIP services × 5 endpoints and one incremental render
//! (one endpoint replaced) to files, for timing `nft -f` by hand, and prints the render times
//! and the heap the render state keeps (a counting allocator):
//! `cargo run --release -p sluice-proxy-nftables --example scale_render -- 10000 /tmp/full.nft /tmp/partial.nft`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use sluice_proxy::model::{
    Endpoint, EndpointsMap, NamespacedName, Protocol, ServicePort, ServicePortMap, ServicePortName,
};
use sluice_proxy::proxier::Changes;
use sluice_proxy_nftables::{render, Existing, RenderConfig};

/// The system allocator, counting live bytes.
struct Counting;

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

// SAFETY: delegates to the system allocator; only counts.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        LIVE.fetch_sub(l.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn live_mb() -> f64 {
    LIVE.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let (full_path, partial_path) = (&args[2], &args[3]);
    let mut s = ServicePortMap::new();
    let mut e = EndpointsMap::new();
    let ip = |k: usize, base: u8| {
        IpAddr::V4(Ipv4Addr::new(
            10,
            base,
            (k / 250) as u8,
            (k % 250 + 1) as u8,
        ))
    };
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
    let config = RenderConfig {
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        ..RenderConfig::new("n1")
    };
    let full = Changes {
        full: true,
        ..Changes::default()
    };
    let before = live_mb();
    let t = std::time::Instant::now();
    let r = render(&s, &e, &config, &full, None, &Existing::default());
    eprintln!("full render {:?}, {} bytes", t.elapsed(), r.text.len());
    std::fs::write(full_path, &r.text).unwrap();
    let text_mb = r.text.capacity() as f64 / 1e6;
    eprintln!(
        "heap kept by the render state: {:.1} MB (text {text_mb:.1} MB besides)",
        live_mb() - before - text_mb
    );
    let spn = ServicePortName::new("default", "scale-17", "http", Protocol::Tcp);
    e.get_mut(&spn).unwrap()[2] = Arc::new(Endpoint::ready("10.250.0.1".parse().unwrap(), 8080));
    let changes = Changes {
        services: [NamespacedName::new("default", "scale-17")].into(),
        ..Changes::default()
    };
    let t = std::time::Instant::now();
    let p = render(
        &s,
        &e,
        &config,
        &changes,
        Some(r.state),
        &Existing::default(),
    );
    eprintln!("partial render {:?}, {} bytes", t.elapsed(), p.text.len());
    std::fs::write(partial_path, &p.text).unwrap();
}
