//! `authorization.k8s.io/v1` SelfSubjectAccessReview ("may I do this?") and
//! SelfSubjectRulesReview ("what may I do here?"), answered by the same authorizer that guards
//! every request, so `kubectl auth can-i [--list]` tells the truth about node credentials.
//! Nothing is stored: a review is created and answered. A rules review is not a second copy of
//! the rules: it asks the authorizer about every served resource, subresource and verb.

use serde_json::{json, Value};

use crate::auth::{self, Attributes, User};
use crate::resources::{Resource, RESOURCES};
use crate::status::{ApiError, ApiResult, Cause};

/// The API group.
pub const GROUP: &str = "authorization.k8s.io";
/// Its version.
pub const VERSION: &str = "v1";
/// The access review resource.
pub const PLURAL: &str = "selfsubjectaccessreviews";
/// The rules review resource.
pub const RULES_PLURAL: &str = "selfsubjectrulesreviews";

/// The verbs a rules review asks about.
const VERBS: [&str; 8] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

/// `GET /apis/authorization.k8s.io/v1` resources.
pub fn resources() -> Value {
    json!([{
        "name": PLURAL,
        "singularName": "selfsubjectaccessreview",
        "namespaced": false,
        "kind": "SelfSubjectAccessReview",
        "verbs": ["create"],
    }, {
        "name": RULES_PLURAL,
        "singularName": "selfsubjectrulesreview",
        "namespaced": false,
        "kind": "SelfSubjectRulesReview",
        "verbs": ["create"],
    }])
}

/// Paths every authenticated user may GET (discovery, health, version, OpenAPI), as
/// `nonResourceURLs` patterns.
const PUBLIC_PATHS: [&str; 10] = [
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/openapi",
    "/openapi/*",
    "/version",
    "/healthz",
    "/livez",
    "/readyz",
];

/// Whether every authenticated user may GET `path`.
fn public_path(path: &str) -> bool {
    let under = |p: &str| path == p || path.starts_with(&format!("{p}/"));
    ["/api", "/apis", "/openapi", "/version"]
        .iter()
        .any(|p| under(p))
        || matches!(path, "/healthz" | "/livez" | "/readyz")
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The served resource a review names (any version of its group).
fn find(group: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.plural == plural)
}

/// Decides a review's `resourceAttributes`: allowed, and why not.
fn decide_resource(user: &User, ra: &Value) -> (bool, String) {
    if user.is_admin() {
        return (true, String::new());
    }
    let (verb, plural) = (str_of(ra, "verb"), str_of(ra, "resource"));
    let Some(res) = find(str_of(ra, "group"), plural) else {
        return (false, format!("no rule allows access to {plural:?}"));
    };
    let non_empty = |k: &str| Some(str_of(ra, k)).filter(|s| !s.is_empty());
    let attrs = Attributes {
        verb,
        res,
        sub: non_empty("subresource"),
        ns: non_empty("namespace"),
        name: non_empty("name"),
        pod_node: None,
        referenced_by_node: false,
    };
    // The authorizer only, as upstream: admission (NodeRestriction) judges the write itself.
    match auth::allowed(user, &attrs) {
        Ok(()) => (true, String::new()),
        Err(e) => (false, e.message),
    }
}

/// Answers a SelfSubjectAccessReview of `user` (201 body).
pub fn review(user: &User, body: &Value) -> ApiResult<Value> {
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let (ra, na) = (
        spec.get("resourceAttributes"),
        spec.get("nonResourceAttributes"),
    );
    let (allowed, reason) = match (ra, na) {
        (Some(ra), None) => decide_resource(user, ra),
        (None, Some(na)) => {
            let ok =
                user.is_admin() || (str_of(na, "verb") == "get" && public_path(str_of(na, "path")));
            (ok, String::new())
        }
        _ => {
            let mut e = ApiError::new(
                422,
                "Invalid",
                "SelfSubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )
            .with_subject(None, "SelfSubjectAccessReview");
            if let Some(d) = e.details.as_mut() {
                d.group = Some(GROUP.into());
                d.causes.push(Cause {
                    reason: "FieldValueInvalid".into(),
                    message: "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified".into(),
                    field: "spec.resourceAttributes".into(),
                });
            }
            return Err(e);
        }
    };
    let mut status = json!({"allowed": allowed});
    if !reason.is_empty() {
        status["reason"] = json!(reason);
    }
    Ok(json!({
        "kind": "SelfSubjectAccessReview",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    }))
}

/// Answers a SelfSubjectRulesReview of `user` for `spec.namespace` (201 body).
pub fn rules_review(user: &User, body: &Value) -> ApiResult<Value> {
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let ns = str_of(&spec, "namespace");
    let (resource_rules, non_resource_rules) = if user.is_admin() {
        (
            json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]),
            json!([{"verbs": ["*"], "nonResourceURLs": ["*"]}]),
        )
    } else {
        (
            Value::Array(resource_rules(user, ns)),
            json!([{"verbs": ["get"], "nonResourceURLs": PUBLIC_PATHS}]),
        )
    };
    Ok(json!({
        "kind": "SelfSubjectRulesReview",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": {
            "resourceRules": resource_rules,
            "nonResourceRules": non_resource_rules,
            "incomplete": false,
        },
    }))
}

/// The authorizer's answers for every served resource and subresource in `ns`, as rules: verbs
/// allowed on any name, then verbs allowed only on the user's own object (a node's own Node
/// and Lease) with that name in `resourceNames`.
fn resource_rules(user: &User, ns: &str) -> Vec<Value> {
    let own = user.node_name();
    let mut rules = Vec::new();
    for res in RESOURCES {
        let subs = std::iter::once(None).chain(res.subresources.iter().map(|s| Some(*s)));
        for sub in subs {
            let ask = |verb, name| {
                auth::allowed(
                    user,
                    &Attributes {
                        verb,
                        res,
                        sub,
                        ns: (res.namespaced && !ns.is_empty()).then_some(ns),
                        name,
                        pod_node: None,
                        referenced_by_node: false,
                    },
                )
                .is_ok()
            };
            let any: Vec<&str> = VERBS.into_iter().filter(|v| ask(v, None)).collect();
            let named: Vec<&str> = match own {
                Some(n) => VERBS
                    .into_iter()
                    .filter(|v| !any.contains(v) && ask(v, Some(n)))
                    .collect(),
                None => Vec::new(),
            };
            let resource = match sub {
                Some(s) => format!("{}/{s}", res.plural),
                None => res.plural.to_string(),
            };
            if !any.is_empty() {
                rules
                    .push(json!({"verbs": any, "apiGroups": [res.group], "resources": [resource]}));
            }
            if !named.is_empty() {
                rules.push(
                    json!({"verbs": named, "apiGroups": [res.group], "resources": [resource],
                                  "resourceNames": [own]}),
                );
            }
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_gets_the_rules_the_authorizer_applies() {
        let rules = |ns| {
            rules_review(&User::node("n1"), &json!({"spec": {"namespace": ns}})).unwrap()["status"]
                ["resourceRules"]
                .clone()
        };
        let default = rules("default");
        let find = |rules: &Value, resource: &str, named: bool| -> Option<Value> {
            rules.as_array().unwrap().iter().find_map(|r| {
                (r["resources"][0] == resource && r.get("resourceNames").is_some() == named)
                    .then(|| r["verbs"].clone())
            })
        };
        assert_eq!(
            find(&default, "services", false),
            Some(json!(["get", "list", "watch"]))
        );
        assert_eq!(
            find(&default, "nodes", true),
            Some(json!(["create", "update", "patch"]))
        );
        assert_eq!(
            find(&default, "pods/status", false),
            Some(json!(["get", "list", "watch", "update", "patch"]))
        );
        assert_eq!(find(&default, "deployments", false), None);
        assert_eq!(
            find(&default, "leases", true),
            None,
            "only in kube-node-lease"
        );
        let lease_ns = rules("kube-node-lease");
        assert_eq!(
            find(&lease_ns, "leases", true),
            Some(json!(["get", "create", "update", "patch", "delete"]))
        );
        let admin =
            rules_review(&User::admin(), &json!({"spec": {"namespace": "default"}})).unwrap();
        assert_eq!(
            admin["status"]["resourceRules"][0]["resources"],
            json!(["*"])
        );
    }

    #[test]
    fn public_paths() {
        for p in [
            "/api",
            "/api/v1",
            "/apis/apps/v1",
            "/healthz",
            "/version",
            "/openapi/v2",
        ] {
            assert!(public_path(p), "{p}");
        }
        for p in ["/apix", "/metrics", "/", "/debug/pprof"] {
            assert!(!public_path(p), "{p}");
        }
    }
}
