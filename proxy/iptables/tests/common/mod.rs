//! Scenarios shared by the golden-file and tracer tests.
#![allow(dead_code)]

use sluice_proxy::model::{EndpointsMap, Protocol, ServicePortMap};
pub use sluice_proxy::scenarios::*;
use sluice_proxy_iptables::apply::base_jumps_restore_text;
use sluice_proxy_iptables::{render, Action, ExistingChains, Fake, Packet, RenderConfig, Verdict};

pub fn config() -> RenderConfig {
    RenderConfig {
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        ..RenderConfig::new(NODE)
    }
}

pub fn render_full(s: &ServicePortMap, e: &EndpointsMap) -> String {
    render(s, e, &config(), &full(), &ExistingChains::default()).text
}

/// A fake with the scenario applied and the base jumps installed.
pub fn load(name: &str) -> Fake {
    let (s, e) = scenario(name);
    let mut f = Fake::new();
    f.local_addrs.insert(ip(NODE_IP));
    f.restore(&render_full(&s, &e)).expect("render applies");
    f.restore(&base_jumps_restore_text()).expect("jumps apply");
    f
}

pub fn tcp(src: &str, dst: &str, dport: u16) -> Packet {
    Packet {
        src: ip(src),
        dst: ip(dst),
        dport,
        proto: Protocol::Tcp,
        from_local: false,
    }
}

pub fn dnat(addrs: &[&str], masquerade: bool) -> Vec<Verdict> {
    addrs
        .iter()
        .map(|a| Verdict {
            action: Action::Dnat(format!("{a}:8080").parse().unwrap()),
            masquerade,
        })
        .collect()
}

pub fn only(action: Action) -> Vec<Verdict> {
    vec![Verdict {
        action,
        masquerade: false,
    }]
}

pub fn trace(f: &Fake, p: Packet) -> Vec<Verdict> {
    f.trace(&p).expect("trace").into_iter().collect()
}
