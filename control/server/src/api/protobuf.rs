//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), as client-go sends them for
//! typed clients: the 4-byte magic `k8s\0`, then a `runtime.Unknown` whose `typeMeta` names the
//! kind and whose `raw` is the kind's own protobuf message. The message types are the prost
//! bindings of the `k8s-pb` crate; each served kind is converted to the same JSON the JSON path
//! would have decoded.
//!
//! Served so far: `authorization.k8s.io/v1` SelfSubjectAccessReview (`kubectl auth can-i`).
//! Other kinds still answer 415, which client-go does not retry in JSON.

use prost::Message;
use serde_json::{json, Map, Value};

use crate::status::ApiError;

/// The media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Magic bytes before every protobuf-encoded object.
const MAGIC: &[u8; 4] = b"k8s\0";

/// The envelope's type meta and the kind's encoded message.
#[derive(Debug, PartialEq)]
pub struct Envelope {
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// The kind's protobuf message.
    pub raw: Vec<u8>,
}

fn bad(what: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!(
        "the protobuf request body could not be decoded: {what}"
    ))
}

/// Opens the envelope.
pub fn open(body: &[u8]) -> Result<Envelope, ApiError> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("it does not start with the k8s\\0 magic"))?;
    let u = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(rest).map_err(bad)?;
    if u.content_encoding.as_deref().is_some_and(|e| !e.is_empty()) {
        return Err(bad("content encodings are not supported"));
    }
    let tm = u.type_meta.unwrap_or_default();
    Ok(Envelope {
        api_version: tm.api_version.unwrap_or_default(),
        kind: tm.kind.unwrap_or_default(),
        raw: u.raw.unwrap_or_default(),
    })
}

/// Puts `raw` in an envelope (for tests and clients).
pub fn seal(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let u = k8s_pb::apimachinery::pkg::runtime::Unknown {
        type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
            api_version: Some(api_version.to_string()),
            kind: Some(kind.to_string()),
        }),
        raw: Some(raw),
        content_encoding: None,
        content_type: None,
    };
    let mut out = MAGIC.to_vec();
    out.extend(u.encode_to_vec());
    out
}

/// Sets `key` to `v` when present and not empty.
fn put(m: &mut Map<String, Value>, key: &str, v: Option<String>) {
    if let Some(v) = v.filter(|v| !v.is_empty()) {
        m.insert(key.to_string(), json!(v));
    }
}

/// A SelfSubjectAccessReview's JSON from its protobuf message (the spec is all a review reads).
pub fn self_subject_access_review(raw: &[u8]) -> Result<Value, ApiError> {
    let r = k8s_pb::api::authorization::v1::SelfSubjectAccessReview::decode(raw).map_err(bad)?;
    let spec = r.spec.unwrap_or_default();
    let mut s = Map::new();
    if let Some(ra) = spec.resource_attributes {
        let mut m = Map::new();
        put(&mut m, "namespace", ra.namespace);
        put(&mut m, "verb", ra.verb);
        put(&mut m, "group", ra.group);
        put(&mut m, "version", ra.version);
        put(&mut m, "resource", ra.resource);
        put(&mut m, "subresource", ra.subresource);
        put(&mut m, "name", ra.name);
        s.insert("resourceAttributes".into(), Value::Object(m));
    }
    if let Some(na) = spec.non_resource_attributes {
        let mut m = Map::new();
        put(&mut m, "path", na.path);
        put(&mut m, "verb", na.verb);
        s.insert("nonResourceAttributes".into(), Value::Object(m));
    }
    Ok(json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": s,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::api::authorization::v1 as pb;

    fn ssar(ra: Option<pb::ResourceAttributes>, na: Option<pb::NonResourceAttributes>) -> Vec<u8> {
        let r = pb::SelfSubjectAccessReview {
            metadata: None,
            spec: Some(pb::SelfSubjectAccessReviewSpec {
                resource_attributes: ra,
                non_resource_attributes: na,
            }),
            status: None,
        };
        seal(
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
            r.encode_to_vec(),
        )
    }

    #[test]
    fn a_review_round_trips_to_the_json_of_the_json_path() {
        let body = ssar(
            Some(pb::ResourceAttributes {
                namespace: Some("default".into()),
                verb: Some("create".into()),
                resource: Some("pods".into()),
                group: Some(String::new()),
                ..Default::default()
            }),
            None,
        );
        let env = open(&body).unwrap();
        assert_eq!(env.api_version, "authorization.k8s.io/v1");
        assert_eq!(env.kind, "SelfSubjectAccessReview");
        assert_eq!(
            self_subject_access_review(&env.raw).unwrap(),
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                   "spec": {"resourceAttributes": {"namespace": "default", "verb": "create", "resource": "pods"}}})
        );
        let body = ssar(
            None,
            Some(pb::NonResourceAttributes {
                path: Some("/healthz".into()),
                verb: Some("get".into()),
            }),
        );
        let env = open(&body).unwrap();
        assert_eq!(
            self_subject_access_review(&env.raw).unwrap()["spec"],
            json!({"nonResourceAttributes": {"path": "/healthz", "verb": "get"}})
        );
    }

    #[test]
    fn malformed_envelopes_are_400() {
        for body in [&b""[..], b"k8s", b"{\"kind\":\"x\"}", b"k8s\0\xff\xff\xff"] {
            let e = open(body)
                .and_then(|e| self_subject_access_review(&e.raw))
                .unwrap_err();
            assert_eq!(e.code, 400, "{body:?}");
        }
    }
}
