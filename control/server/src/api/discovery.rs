//! Legacy discovery documents, `/version` and the OpenAPI documents.
//!
//! kubectl 1.33 asks for aggregated discovery first and falls back to these when the reply is
//! plain `APIVersions`/`APIGroupList` JSON; kubectl 1.20 only knows these.

use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::resources::{self, RESOURCES};

fn json_response(v: Value) -> Response {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// `GET /api`.
pub fn api_versions(server_address: &str) -> Response {
    json_response(json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }))
}

/// `GET /apis`.
pub fn api_groups() -> Response {
    let groups: Vec<Value> = resources::group_versions()
        .into_iter()
        .chain([(super::review::GROUP, super::review::VERSION)])
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json_response(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `GET /api/v1` or `GET /apis/<group>/<version>`; None when the group/version is not served.
pub fn resource_list(group: &str, version: &str) -> Option<Response> {
    if (group, version) == (super::review::GROUP, super::review::VERSION) {
        return Some(json_response(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": format!("{group}/{version}"),
            "resources": super::review::resources(),
        })));
    }
    let mut list = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        list.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        for sub in r.subresources {
            let mut e = json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            });
            match *sub {
                "scale" => {
                    e["group"] = json!("autoscaling");
                    e["version"] = json!("v1");
                    e["kind"] = json!("Scale");
                }
                "binding" => {
                    e["kind"] = json!("Binding");
                    e["verbs"] = json!(["create"]);
                }
                // Connect subresources, as kube-apiserver lists them.
                "log" => e["verbs"] = json!(["get"]),
                "exec" => {
                    e["kind"] = json!("PodExecOptions");
                    e["verbs"] = json!(["create", "get"]);
                }
                _ => {}
            }
            list.push(e);
        }
    }
    if list.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json_response(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": list,
    })))
}

/// `GET /version`.
pub fn version() -> Response {
    json_response(json!({
        "major": "1",
        "minor": "35",
        "gitVersion": concat!("v1.35.0-sluice.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "n/a (rust)",
        "compiler": "rustc",
        "platform": "linux/amd64",
    }))
}

/// `GET /openapi/v2`: the served types' schemas as gnostic `openapi_v2.Document` protobuf
/// (see [`super::openapi`]). It is sent as `application/octet-stream` because kubectl 1.20
/// rejects the real `...spec.v2@v1.0+protobuf` media type (Go's mime parser chokes on `@`)
/// and cannot decode a JSON document.
pub fn openapi_v2() -> Response {
    (
        [(http::header::CONTENT_TYPE, "application/octet-stream")],
        super::openapi::v2_protobuf(),
    )
        .into_response()
}

/// `GET /openapi/v3`: the group-versions with OpenAPI 3 documents.
pub fn openapi_v3() -> Response {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        super::openapi::v3_discovery(),
    )
        .into_response()
}

/// `GET /openapi/v3/api/v1` or `/openapi/v3/apis/<group>/<version>` (`key` without the
/// prefix); None when the group-version is not served.
pub fn openapi_v3_group_version(key: &str) -> Option<Response> {
    let doc = super::openapi::v3_group_version(key)?;
    Some(([(http::header::CONTENT_TYPE, "application/json")], doc).into_response())
}
