//! Builders for Kubernetes objects used by the unit tests.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::LABEL_SERVICE_NAME;

/// A ClusterIP service `ns/name` with `ip` and ports `(name, port, protocol)`.
pub fn service(ns: &str, name: &str, ip: &str, ports: &[(&str, i32, &str)]) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            cluster_ips: Some(vec![ip.into()]),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, proto)| ServicePort {
                        name: (!n.is_empty()).then(|| n.to_string()),
                        port: *p,
                        protocol: Some(proto.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

/// Sets a label on a service.
pub fn with_label(mut svc: Service, k: &str, v: &str) -> Service {
    svc.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(k.into(), v.into());
    svc
}

/// Endpoint state shorthand for [`slice`].
#[derive(Clone, Copy)]
pub enum Cond {
    Ready,
    ServingTerminating,
    NotReady,
}

/// An IPv4 EndpointSlice `slice_name` for service `ns/svc` with ports `(name, port, protocol)`
/// and endpoints `(ip, node, state)`.
pub fn slice(
    ns: &str,
    svc: &str,
    slice_name: &str,
    ports: &[(&str, i32, &str)],
    eps: &[(&str, &str, Cond)],
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(slice_name.into()),
            labels: Some(BTreeMap::from([(
                LABEL_SERVICE_NAME.to_string(),
                svc.to_string(),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        ports: Some(
            ports
                .iter()
                .map(|(n, p, proto)| EndpointPort {
                    name: Some(n.to_string()),
                    port: Some(*p),
                    protocol: Some(proto.to_string()),
                    ..Default::default()
                })
                .collect(),
        ),
        endpoints: eps
            .iter()
            .map(|(ip, node, c)| {
                let (ready, serving, terminating) = match c {
                    Cond::Ready => (true, true, false),
                    Cond::ServingTerminating => (false, true, true),
                    Cond::NotReady => (false, false, false),
                };
                Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        serving: Some(serving),
                        terminating: Some(terminating),
                    }),
                    node_name: (!node.is_empty()).then(|| node.to_string()),
                    ..Default::default()
                }
            })
            .collect(),
    }
}
