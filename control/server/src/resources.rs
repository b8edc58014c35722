//! The resources Sluice serves: one descriptor per resource drives routing, discovery, store
//! keys, validation and printing.

use crate::registry::strategy::{self, NodeReadable, Strategy};
use crate::registry::{
    LeaseStrategy, NamespaceStrategy, NodeStrategy, PodStrategy, ServiceStrategy,
};

/// A served resource.
#[derive(Debug)]
pub struct Resource {
    /// API group ("" for core).
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Plural (URL) name.
    pub plural: &'static str,
    /// Singular name.
    pub singular: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// Discovery categories (`all` makes `kubectl get all` list it, as upstream lists pods,
    /// services and workloads).
    pub categories: &'static [&'static str],
    /// Subresources served (`status`, `binding`, `scale`; pods' `log` and `exec`).
    pub subresources: &'static [&'static str],
    /// What the registry, field selectors and the node authorizer do differently for it.
    pub strategy: &'static dyn Strategy,
}

impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        (self.group, self.version, self.plural) == (other.group, other.version, other.plural)
    }
}

impl Eq for Resource {}

impl Resource {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `services` or `deployments.apps` (the form used in Status messages).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Store key prefix for all objects of this resource.
    pub fn prefix(&self) -> String {
        let g = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        format!("/registry/{g}/{}/", self.plural)
    }

    /// Store key prefix for a namespace (or the whole resource when `ns` is None).
    pub fn ns_prefix(&self, ns: Option<&str>) -> String {
        match ns {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.prefix()),
            _ => self.prefix(),
        }
    }

    /// Store key of one object.
    pub fn key(&self, ns: Option<&str>, name: &str) -> String {
        match ns {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.prefix()),
            _ => format!("{}{name}", self.prefix()),
        }
    }

    /// `(namespace, name)` parsed back from a store key of this resource.
    pub fn split_key<'a>(&self, key: &'a str) -> (Option<&'a str>, &'a str) {
        let rest = key.get(self.prefix().len()..).unwrap_or("");
        if self.namespaced {
            match rest.split_once('/') {
                Some((ns, name)) => (Some(ns), name),
                None => (None, rest),
            }
        } else {
            (None, rest)
        }
    }

    /// The validation kind, when validation knows it.
    pub fn validation_kind(&self) -> Option<sluice_validation::Kind> {
        sluice_validation::Kind::from_group_kind(self.group, self.kind)
    }

    /// Whether the subresource is served.
    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }
}

/// Every served resource.
pub static RESOURCES: &[Resource] = &[
    Resource {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        subresources: &["status"],
        strategy: &NamespaceStrategy,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        short_names: &["no"],
        categories: &[],
        subresources: &["status"],
        strategy: &NodeStrategy,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        namespaced: true,
        short_names: &["po"],
        categories: &["all"],
        subresources: &["status", "binding", "log", "exec"],
        strategy: &PodStrategy,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        singular: "service",
        namespaced: true,
        short_names: &["svc"],
        categories: &["all"],
        subresources: &["status"],
        strategy: &ServiceStrategy,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Endpoints",
        plural: "endpoints",
        singular: "endpoints",
        namespaced: true,
        short_names: &["ep"],
        categories: &[],
        subresources: &[],
        strategy: &NodeReadable,
    },
    Resource {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        strategy: &NodeReadable,
    },
    Resource {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        singular: "deployment",
        namespaced: true,
        short_names: &["deploy"],
        categories: &["all"],
        subresources: &["status", "scale"],
        strategy: &strategy::DEPLOYMENT,
    },
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        strategy: &LeaseStrategy,
    },
    Resource {
        group: "apps",
        version: "v1",
        kind: "ReplicaSet",
        plural: "replicasets",
        singular: "replicaset",
        namespaced: true,
        short_names: &["rs"],
        categories: &["all"],
        subresources: &["status", "scale"],
        strategy: &strategy::REPLICA_SET,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        namespaced: true,
        short_names: &["cm"],
        categories: &[],
        subresources: &[],
        strategy: &strategy::REFERENCED,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        singular: "secret",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        strategy: &strategy::SECRET,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        namespaced: true,
        short_names: &["sa"],
        categories: &[],
        subresources: &[],
        strategy: &strategy::REFERENCED,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        subresources: &[],
        strategy: &strategy::CORE_EVENT,
    },
    Resource {
        group: "events.k8s.io",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        subresources: &[],
        strategy: &strategy::EVENTS_V1_EVENT,
    },
];

/// Looks a resource up by URL coordinates.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Looks a resource up by kind (core/v1 first where two groups serve the same kind, as
/// Event).
pub fn by_kind(kind: &str) -> &'static Resource {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind)
        .unwrap_or_else(|| panic!("kind {kind} is not served"))
}

/// The group/versions served, in discovery order.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let pods = find("", "v1", "pods").unwrap();
        let k = pods.key(Some("default"), "web");
        assert_eq!(k, "/registry/core/pods/default/web");
        assert_eq!(pods.split_key(&k), (Some("default"), "web"));
        let nodes = find("", "v1", "nodes").unwrap();
        assert_eq!(nodes.key(Some("ignored"), "n1"), "/registry/core/nodes/n1");
        assert_eq!(nodes.split_key("/registry/core/nodes/n1"), (None, "n1"));
        let d = find("apps", "v1", "deployments").unwrap();
        assert_eq!(d.qualified(), "deployments.apps");
        assert_eq!(d.ns_prefix(Some("a")), "/registry/apps/deployments/a/");
    }

    #[test]
    fn every_kind_is_known_to_validation() {
        for r in RESOURCES {
            assert!(r.validation_kind().is_some(), "{}", r.kind);
        }
    }
}
