//! Runs the userspace dataplane standalone, for manual tests and benchmarks inside a network
//! namespace (it programs the *current* namespace's iptables: never run it in the root one).
//!
//! ```text
//! ip netns exec NS cargo run --release -p sluice-proxy-userspace --example standalone -- \
//!     NODE_IP VIP:PORT=ENDPOINT:PORT[,ENDPOINT:PORT…] [VIP:PORT=…]
//! ```
//!
//! Each argument after the node IP is one TCP ClusterIP service port. It syncs once, prints
//! the dump, serves until interrupted (Ctrl-C), then removes its rules.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use sluice_proxy::model::{
    Endpoint, EndpointsMap, Protocol, ServicePort, ServicePortMap, ServicePortName,
};
use sluice_proxy::proxier::{Changes, Dataplane};
use sluice_proxy_userspace::{UserspaceConfig, UserspaceDataplane};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((node_ip, specs)) = args.split_first() else {
        eprintln!("usage: standalone NODE_IP VIP:PORT=EP:PORT[,EP:PORT…]…");
        std::process::exit(2);
    };
    let node_ip: Ipv4Addr = node_ip.parse().expect("node IP");
    let mut services = ServicePortMap::new();
    let mut endpoints = EndpointsMap::new();
    for (i, spec) in specs.iter().enumerate() {
        let (vip, eps) = spec.split_once('=').expect("VIP:PORT=EP:PORT");
        let vip: SocketAddr = vip.parse().expect("VIP:PORT");
        let name = ServicePortName::new("default", format!("svc{i}"), "", Protocol::Tcp);
        services.insert(
            name.clone(),
            Arc::new(ServicePort::cluster_ip(vip.ip(), vip.port(), Protocol::Tcp)),
        );
        endpoints.insert(
            name,
            eps.split(',')
                .map(|e| {
                    let a: SocketAddr = e.parse().expect("EP:PORT");
                    Arc::new(Endpoint::ready(a.ip(), a.port()))
                })
                .collect(),
        );
    }
    let mut dp = UserspaceDataplane::new(
        UserspaceConfig::new("standalone", node_ip),
        tokio::runtime::Handle::current(),
    );
    let full = Changes {
        full: true,
        ..Changes::default()
    };
    dp.sync(&services, &endpoints, &full).expect("sync");
    println!("{}", dp.dump());
    tokio::signal::ctrl_c().await.expect("ctrl-c");
    dp.cleanup().expect("cleanup");
}
