//! Bearer-token authentication and authorization.
//!
//! Tokens live in `DATA_DIR/tokens.json` (mode 0600), written by the server at first start
//! (the admin token) and by `sluice-control token create --node N`; the server re-reads the
//! file when it changes, so a node token minted while the server runs works at once.
//!
//! Authorization follows Kubernetes' Node authorizer in spirit: members of `system:masters`
//! may do anything; a node (`system:node:<name>`, group `system:nodes`) may read services,
//! endpoints, endpointslices, pods and nodes, write its own Node and its Lease in
//! `kube-node-lease`, write the status of pods bound to it, and delete pods bound to it —
//! nothing else.
//!
//! The NodeRestriction admission plugin's rules for nodes (upstream
//! `plugin/pkg/admission/noderestriction`) are here too: a node may delete only pods whose
//! `spec.nodeName` is itself, and may not add, change or remove its own Node's taints, labels
//! under `node-restriction.kubernetes.io/`, or labels under `kubernetes.io`/`k8s.io` other than
//! kubelet's ([`is_kubelet_label`]). The label and taint checks need the object being written,
//! which [`authorize`] does not see: the API handler runs each request inside
//! [`as_requester`], and the registry asks [`requesting_node`] and runs [`admit_node_write`] on
//! the object it is about to store.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::registry::strategy::NodeRequest;
use crate::resources::Resource;
use crate::status::ApiError;

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// User name (`admin`, `system:node:n1`).
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
}

impl User {
    /// Cluster admin.
    pub fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }

    /// The node name for node credentials.
    pub fn node_name(&self) -> Option<&str> {
        if self.groups.iter().any(|g| g == "system:nodes") {
            self.name.strip_prefix("system:node:")
        } else {
            None
        }
    }

    /// Credentials for node `n`.
    pub fn node(n: &str) -> Self {
        User {
            name: format!("system:node:{n}"),
            groups: vec!["system:nodes".into(), "system:authenticated".into()],
        }
    }

    /// The admin user.
    pub fn admin() -> Self {
        User {
            name: "admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenEntry {
    token: String,
    user: String,
    groups: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFileData {
    tokens: Vec<TokenEntry>,
}

/// Errors reading or writing the token file.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// I/O on the token file.
    #[error("token file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON.
    #[error("token file {path} is corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TokenError + '_ {
    move |source| TokenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_file(path: &Path) -> Result<TokenFileData, TokenError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|source| TokenError::Corrupt {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFileData::default()),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn new_token() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..40)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// Adds a token for `user` to the file (created if missing) and returns it. An existing
/// token for the same user name is returned instead of minting a second one.
pub fn mint_token(path: &Path, user: &User) -> Result<String, TokenError> {
    let mut data = read_file(path)?;
    if let Some(e) = data.tokens.iter().find(|e| e.user == user.name) {
        return Ok(e.token.clone());
    }
    let token = new_token();
    data.tokens.push(TokenEntry {
        token: token.clone(),
        user: user.name.clone(),
        groups: user.groups.clone(),
    });
    let body = serde_json::to_vec_pretty(&data).map_err(|source| TokenError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    crate::fsutil::write_private(path, &body).map_err(io_err(path))?;
    Ok(token)
}

/// The server's view of the token file, re-read when its modification time changes.
pub struct Tokens {
    path: PathBuf,
    cache: Mutex<(Option<SystemTime>, HashMap<String, User>)>,
}

impl Tokens {
    /// Tokens from `path`.
    pub fn new(path: PathBuf) -> Self {
        Tokens {
            path,
            cache: Mutex::new((None, HashMap::new())),
        }
    }

    /// The user a bearer token belongs to.
    pub fn authenticate(&self, token: &str) -> Option<User> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.0 != mtime || mtime.is_none() {
            match read_file(&self.path) {
                Ok(data) => {
                    cache.1 = data
                        .tokens
                        .into_iter()
                        .map(|e| {
                            (
                                e.token,
                                User {
                                    name: e.user,
                                    groups: e.groups,
                                },
                            )
                        })
                        .collect();
                    cache.0 = mtime;
                }
                Err(e) => tracing::error!(error = %e, "cannot read tokens"),
            }
        }
        cache.1.get(token).cloned()
    }
}

/// What a request wants to do.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    /// Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: &'a str,
    /// Resource.
    pub res: &'a Resource,
    /// Subresource.
    pub sub: Option<&'a str>,
    /// Namespace.
    pub ns: Option<&'a str>,
    /// Object name (for create: the name in the body).
    pub name: Option<&'a str>,
    /// For pods: the node the stored pod is bound to.
    pub pod_node: Option<&'a str>,
    /// For a node's read of a ConfigMap, Secret or ServiceAccount: whether a pod bound to
    /// that node references the object (the Node authorizer's graph, reduced to what it
    /// asks).
    pub referenced_by_node: bool,
}

tokio::task_local! {
    /// The node whose own request is being served (set by the API handler for the whole
    /// request, so it follows the request's future across awaits and threads).
    static REQUESTING_NODE: Option<String>;
}

/// Runs `fut` — the handling of one request of `user` — so that the registry's Node writes
/// inside it are held to NodeRestriction when `user` is a node ([`requesting_node`]).
pub async fn as_requester<F: std::future::Future>(user: &User, fut: F) -> F::Output {
    REQUESTING_NODE
        .scope(user.node_name().map(str::to_string), fut)
        .await
}

/// The node whose request is being served, if the caller runs inside [`as_requester`] for a
/// node; None for administrators, controllers and anything outside a request.
pub fn requesting_node() -> Option<String> {
    REQUESTING_NODE.try_with(Clone::clone).ok().flatten()
}

/// The authorizer alone (what a SubjectAccessReview answers): admins may do anything; see the
/// module doc for nodes. Admission's checks (NodeRestriction) are not part of it.
pub fn allowed(user: &User, a: &Attributes<'_>) -> Result<(), ApiError> {
    if !user.is_admin() && !node_allowed(user, a) {
        return Err(denied(user, a));
    }
    Ok(())
}

/// Decides a request: the authorizer, then NodeRestriction's checks that need only the
/// request.
pub fn authorize(user: &User, a: &Attributes<'_>) -> Result<(), ApiError> {
    allowed(user, a)?;
    if let Some(node) = user.node_name() {
        admit_node_request(node, a)?;
    }
    Ok(())
}

fn denied(user: &User, a: &Attributes<'_>) -> ApiError {
    let resource = match a.sub {
        Some(s) => format!("{}/{s}", a.res.plural),
        None => a.res.plural.to_string(),
    };
    let scope = match a.ns {
        Some(ns) if a.res.namespaced => format!(" in the namespace \"{ns}\""),
        _ => {
            if a.res.namespaced {
                String::new()
            } else {
                ": node is not allowed to modify this object".to_string()
            }
        }
    };
    let mut e = ApiError::forbidden(&user.name, a.verb, &resource, a.res.group, &scope);
    if let Some(n) = a.name {
        e.message = format!("{} \"{n}\" is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\"{scope}", a.res.qualified(), user.name, a.verb, a.res.group);
    }
    e.with_subject(a.name, a.res.plural)
}

/// What the `system:node` role lets every node do (the Node authorizer and NodeRestriction
/// narrow it to the node's own objects); each kind's strategy answers for itself.
fn node_allowed(user: &User, a: &Attributes<'_>) -> bool {
    let Some(node) = user.node_name() else {
        return false;
    };
    a.res.strategy.node_allowed(&NodeRequest {
        verb: a.verb,
        sub: a.sub,
        ns: a.ns,
        name: a.name,
        node,
        referenced: a.referenced_by_node,
    })
}

/// A 403 the way admission plugins answer (`admission.NewForbidden`):
/// `<resource> "<name>" is forbidden: <why>`.
pub fn admission_forbidden(res: &Resource, name: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        403,
        "Forbidden",
        format!("{} \"{name}\" is forbidden: {why}", res.qualified()),
    )
    .with_subject(Some(name), res.plural)
}

/// NodeRestriction's checks that need only the request and the stored pod's node.
fn admit_node_request(node: &str, a: &Attributes<'_>) -> Result<(), ApiError> {
    if a.res.kind != "Pod" || a.pod_node == Some(node) {
        return Ok(());
    }
    let name = a.name.unwrap_or("");
    match (a.sub, a.verb) {
        (None, "delete") => Err(admission_forbidden(
            a.res,
            name,
            format!("node \"{node}\" can only delete pods with spec.nodeName set to itself"),
        )),
        (Some("status"), "update" | "patch") => Err(admission_forbidden(
            a.res,
            name,
            format!(
                "node \"{node}\" can only update pod status for pods with spec.nodeName set to itself"
            ),
        )),
        _ => Ok(()),
    }
}

/// Label keys kubelets may set on their own Node (`kubeletapis.KubeletLabels()`).
pub const KUBELET_LABELS: [&str; 11] = [
    "kubernetes.io/hostname",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
];

/// Label namespaces (and their subdomains) kubelets may set (`KubeletLabelNamespaces()`).
pub const KUBELET_LABEL_NAMESPACES: [&str; 2] = ["kubelet.kubernetes.io", "node.kubernetes.io"];

/// Labels in this namespace (or a subdomain) are the cluster admin's for steering workloads
/// to nodes; nodes may never set them.
pub const NODE_RESTRICTION_NAMESPACE: &str = "node-restriction.kubernetes.io";

/// The prefix of a label key, "" when it has none (`getLabelNamespace`).
fn label_namespace(key: &str) -> &str {
    key.split_once('/').map(|(p, _)| p).unwrap_or("")
}

fn in_domain(namespace: &str, domain: &str) -> bool {
    namespace == domain
        || namespace
            .strip_suffix(domain)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// Whether kubelets may set `key` on their own Node (`kubeletapis.IsKubeletLabel`).
pub fn is_kubelet_label(key: &str) -> bool {
    let ns = label_namespace(key);
    KUBELET_LABELS.contains(&key) || KUBELET_LABEL_NAMESPACES.iter().any(|d| in_domain(ns, d))
}

fn is_kubernetes_label(key: &str) -> bool {
    let ns = label_namespace(key);
    in_domain(ns, "kubernetes.io") || in_domain(ns, "k8s.io")
}

/// Keys added, removed or changed between two label maps (`getModifiedLabels`).
fn modified_labels(old: Option<&Value>, new: Option<&Value>) -> BTreeSet<String> {
    let (old, new) = (
        old.and_then(Value::as_object),
        new.and_then(Value::as_object),
    );
    let mut out = BTreeSet::new();
    for (a, b) in [(old, new), (new, old)] {
        for (k, v) in a.into_iter().flatten() {
            if b.and_then(|b| b.get(k)) != Some(v) {
                out.insert(k.clone());
            }
        }
    }
    out
}

/// Of the modified label keys, those a node may not add, change or remove on its own Node
/// (`getForbiddenLabels`), sorted.
pub fn forbidden_node_labels<'a>(modified: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = modified
        .into_iter()
        .filter(|k| {
            in_domain(label_namespace(k), NODE_RESTRICTION_NAMESPACE)
                || (is_kubernetes_label(k) && !is_kubelet_label(k))
        })
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

fn taints_of(v: &Value) -> &[Value] {
    v.pointer("/spec/taints")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// NodeRestriction's `admitNode` for node `node` writing Node `name`: `old` is the stored
/// object (`None` on create), `new` the decoded object about to be written. A node may write
/// only its own Node; on create it may not set forbidden labels; on update it may not modify
/// taints or add, change or remove forbidden labels (labels it leaves as they are pass).
pub fn admit_node_write(
    node: &str,
    res: &Resource,
    name: &str,
    old: Option<&Value>,
    new: &Value,
) -> Result<(), ApiError> {
    if name != node {
        return Err(admission_forbidden(
            res,
            name,
            format!("node \"{node}\" is not allowed to modify node \"{name}\""),
        ));
    }
    let labels = |v: &Value| v.pointer("/metadata/labels").cloned();
    let new_labels = labels(new);
    let Some(old) = old else {
        let modified = modified_labels(None, new_labels.as_ref());
        let forbidden = forbidden_node_labels(modified.iter().map(String::as_str));
        if !forbidden.is_empty() {
            return Err(admission_forbidden(
                res,
                name,
                format!(
                    "node \"{node}\" is not allowed to set the following labels: {}",
                    forbidden.join(", ")
                ),
            ));
        }
        return Ok(());
    };
    if taints_of(old) != taints_of(new) {
        return Err(admission_forbidden(
            res,
            name,
            format!("node \"{node}\" is not allowed to modify taints"),
        ));
    }
    let modified = modified_labels(labels(old).as_ref(), new_labels.as_ref());
    let forbidden = forbidden_node_labels(modified.iter().map(String::as_str));
    if !forbidden.is_empty() {
        return Err(admission_forbidden(
            res,
            name,
            format!("is not allowed to modify labels: {}", forbidden.join(", ")),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::by_kind;

    fn attrs<'a>(
        verb: &'a str,
        kind: &str,
        sub: Option<&'a str>,
        ns: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Attributes<'a> {
        Attributes {
            verb,
            res: by_kind(kind),
            sub,
            ns,
            name,
            pod_node: None,
            referenced_by_node: false,
        }
    }

    #[test]
    fn node_rules() {
        let n1 = User::node("n1");
        assert!(authorize(&n1, &attrs("list", "Service", None, None, None)).is_ok());
        assert!(authorize(
            &n1,
            &attrs("watch", "EndpointSlice", None, Some("default"), None)
        )
        .is_ok());
        assert!(authorize(
            &n1,
            &attrs("create", "Service", None, Some("default"), Some("x"))
        )
        .is_err());
        assert!(authorize(
            &n1,
            &attrs("update", "Node", Some("status"), None, Some("n1"))
        )
        .is_ok());
        assert!(authorize(&n1, &attrs("create", "Node", None, None, Some("n1"))).is_ok());
        let e = authorize(
            &n1,
            &attrs("update", "Node", Some("status"), None, Some("n2")),
        )
        .unwrap_err();
        assert_eq!(e.code, 403);
        assert!(e.message.contains("system:node:n1"), "{}", e.message);
        assert!(authorize(
            &n1,
            &attrs("update", "Lease", None, Some("kube-node-lease"), Some("n1"))
        )
        .is_ok());
        assert!(authorize(
            &n1,
            &attrs("update", "Lease", None, Some("kube-node-lease"), Some("n2"))
        )
        .is_err());
        assert!(authorize(
            &n1,
            &attrs("delete", "Pod", None, Some("default"), Some("p"))
        )
        .is_err());
        let mut a = attrs("patch", "Pod", Some("status"), Some("default"), Some("p"));
        a.pod_node = Some("n1");
        assert!(authorize(&n1, &a).is_ok());
        a.pod_node = Some("n2");
        assert!(authorize(&n1, &a).is_err());
        assert!(authorize(
            &User::admin(),
            &attrs("delete", "Namespace", None, None, Some("x"))
        )
        .is_ok());
        let nobody = User {
            name: "bob".into(),
            groups: vec![],
        };
        assert!(authorize(
            &nobody,
            &attrs("get", "Pod", None, Some("default"), Some("p"))
        )
        .is_err());
    }

    #[test]
    fn nodes_delete_only_their_own_pods() {
        let n1 = User::node("n1");
        let mut a = attrs("delete", "Pod", None, Some("default"), Some("p"));
        a.pod_node = Some("n1");
        assert!(authorize(&n1, &a).is_ok());
        for other in [Some("n2"), None] {
            a.pod_node = other;
            let e = authorize(&n1, &a).unwrap_err();
            assert_eq!(
                (e.code, e.message.as_str()),
                (
                    403,
                    "pods \"p\" is forbidden: node \"n1\" can only delete pods with spec.nodeName set to itself"
                )
            );
        }
        // Not a collection, and nobody else's.
        let dc = attrs("deletecollection", "Pod", None, Some("default"), None);
        assert!(authorize(&n1, &dc).is_err());
    }

    #[test]
    fn kubelet_label_rules_match_upstream() {
        // (key, kubelet may set it)
        for (key, ok) in [
            ("kubernetes.io/hostname", true),
            ("kubernetes.io/arch", true),
            ("kubernetes.io/os", true),
            ("beta.kubernetes.io/arch", true),
            ("beta.kubernetes.io/os", true),
            ("beta.kubernetes.io/instance-type", true),
            ("node.kubernetes.io/instance-type", true),
            ("failure-domain.beta.kubernetes.io/region", true),
            ("failure-domain.beta.kubernetes.io/zone", true),
            ("topology.kubernetes.io/region", true),
            ("topology.kubernetes.io/zone", true),
            ("kubelet.kubernetes.io/anything", true),
            ("x.kubelet.kubernetes.io/anything", true),
            ("node.kubernetes.io/anything", true),
            ("a.b.node.kubernetes.io/anything", true),
            ("example.com/team", true),
            ("plain", true),
            ("kubernetes.io.example.com/x", true),
            ("xkubernetes.io/x", true),
            ("node-role.kubernetes.io/worker", false),
            ("node-role.kubernetes.io/control-plane", false),
            ("kubernetes.io/role", false),
            ("kubernetes.io/hostnamex", false),
            ("topology.kubernetes.io/rack", false),
            ("k8s.io/x", false),
            ("foo.k8s.io/x", false),
            ("xnode.kubernetes.io/x", false),
            ("node-restriction.kubernetes.io/pool", false),
            ("a.node-restriction.kubernetes.io/pool", false),
        ] {
            assert_eq!(forbidden_node_labels([key]).is_empty(), ok, "{key}");
        }
        assert!(!is_kubelet_label("node-restriction.kubernetes.io/x"));
        assert_eq!(
            forbidden_node_labels(["z.k8s.io/a", "plain", "k8s.io/b", "z.k8s.io/a"]),
            ["k8s.io/b", "z.k8s.io/a"]
        );
    }

    #[test]
    fn node_writes_compare_old_and_new() {
        let nodes = by_kind("Node");
        let old = serde_json::json!({"metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/master": "", "a": "1"}},
                                     "spec": {"taints": [{"key": "t", "effect": "NoSchedule"}]}});
        // Untouched forbidden label: fine; changing an allowed one too.
        let mut new = old.clone();
        new["metadata"]["labels"]["a"] = serde_json::json!("2");
        assert!(admit_node_write("n1", nodes, "n1", Some(&old), &new).is_ok());
        // Taints: any change, removal included.
        let mut new = old.clone();
        new["spec"] = serde_json::json!({});
        let e = admit_node_write("n1", nodes, "n1", Some(&old), &new).unwrap_err();
        assert_eq!(
            e.message,
            "nodes \"n1\" is forbidden: node \"n1\" is not allowed to modify taints"
        );
        // Absent and empty taints are the same.
        let bare = serde_json::json!({"metadata": {"name": "n1"}});
        let empty = serde_json::json!({"metadata": {"name": "n1"}, "spec": {"taints": []}});
        assert!(admit_node_write("n1", nodes, "n1", Some(&bare), &empty).is_ok());
        // Another node's object.
        let e = admit_node_write("n2", nodes, "n1", Some(&old), &old).unwrap_err();
        assert_eq!(
            e.message,
            "nodes \"n1\" is forbidden: node \"n2\" is not allowed to modify node \"n1\""
        );
        // A create may keep a taint (the create rules only look at labels).
        assert!(admit_node_write("n1", nodes, "n1", None, &empty).is_ok());
    }

    #[test]
    fn token_file_round_trip_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let admin = mint_token(&path, &User::admin()).unwrap();
        assert_eq!(mint_token(&path, &User::admin()).unwrap(), admin);
        let tokens = Tokens::new(path.clone());
        assert_eq!(tokens.authenticate(&admin), Some(User::admin()));
        assert_eq!(tokens.authenticate("nope"), None);
        // A token minted while the server runs is picked up.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let n1 = mint_token(&path, &User::node("n1")).unwrap();
        assert_eq!(tokens.authenticate(&n1), Some(User::node("n1")));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
