//! `authorization.k8s.io/v1` SelfSubjectAccessReview: "may I do this?", answered by the same
//! authorizer that guards every request (so `kubectl auth can-i` tells the truth about node
//! credentials and NodeRestriction). Nothing is stored: a review is created and answered.

use serde_json::{json, Value};

use crate::auth::{self, Attributes, User};
use crate::resources::{Resource, RESOURCES};
use crate::status::{ApiError, ApiResult, Cause};

/// The API group.
pub const GROUP: &str = "authorization.k8s.io";
/// Its version.
pub const VERSION: &str = "v1";
/// The resource.
pub const PLURAL: &str = "selfsubjectaccessreviews";

/// `GET /apis/authorization.k8s.io/v1` resources.
pub fn resources() -> Value {
    json!([{
        "name": PLURAL,
        "singularName": "selfsubjectaccessreview",
        "namespaced": false,
        "kind": "SelfSubjectAccessReview",
        "verbs": ["create"],
    }])
}

/// Paths every authenticated user may GET (discovery, health, version, OpenAPI).
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

#[cfg(test)]
mod tests {
    use super::*;

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
