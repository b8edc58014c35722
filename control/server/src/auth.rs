//! Bearer-token authentication and authorization.
//!
//! Tokens live in `DATA_DIR/tokens.json` (mode 0600), written by the server at first start
//! (the admin token) and by `sluice-control token create --node N`; the server re-reads the
//! file when it changes, so a node token minted while the server runs works at once.
//!
//! Authorization follows Kubernetes' Node authorizer in spirit: members of `system:masters`
//! may do anything; a node (`system:node:<name>`, group `system:nodes`) may read services,
//! endpoints, endpointslices, pods and nodes, write its own Node and its Lease in
//! `kube-node-lease`, and write the status of pods bound to it — nothing else.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use rand::Rng;
use serde::{Deserialize, Serialize};

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
}

/// Decides a request. Admins may do anything; see the module doc for nodes.
pub fn authorize(user: &User, a: &Attributes<'_>) -> Result<(), ApiError> {
    if user.is_admin() || node_allowed(user, a) {
        return Ok(());
    }
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
    Err(e.with_subject(a.name, a.res.plural))
}

fn node_allowed(user: &User, a: &Attributes<'_>) -> bool {
    let Some(node) = user.node_name() else {
        return false;
    };
    let read = matches!(a.verb, "get" | "list" | "watch");
    match (a.res.kind, a.sub) {
        ("Service" | "Endpoints" | "EndpointSlice", None) => read,
        ("Pod", None) => read,
        ("Pod", Some("status")) => {
            read || (matches!(a.verb, "update" | "patch") && a.pod_node == Some(node))
        }
        ("Node", None | Some("status")) => {
            read || (matches!(a.verb, "create" | "update" | "patch") && a.name == Some(node))
        }
        ("Lease", None) => {
            a.ns == Some("kube-node-lease")
                && a.name == Some(node)
                && matches!(a.verb, "get" | "create" | "update" | "patch" | "delete")
        }
        _ => false,
    }
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
