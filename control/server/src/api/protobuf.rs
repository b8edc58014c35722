//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), as client-go sends them for
//! typed clients: the 4-byte magic `k8s\0`, then a `runtime.Unknown` whose `typeMeta` names the
//! kind and whose `raw` is the kind's own protobuf message. The message types are the prost
//! bindings of the `k8s-pb` crate; each served kind is converted to the same JSON the JSON path
//! would have decoded.
//!
//! Two decoders: the served kinds (core, apps, discovery and coordination `v1`) through a
//! descriptor set compiled from the vendored upstream `.proto` files (`proto/k8s.desc`, made by
//! `scripts/gen-proto-descriptors`, so building needs no protoc) and `prost-reflect`, turned into JSON field by field with the Kubernetes special types
//! (`Time`, `MicroTime`, `IntOrString`, `Quantity`, `Duration`, `RawExtension`, `FieldsV1`)
//! written as their JSON forms; and `authorization.k8s.io/v1` SelfSubjectAccessReview through
//! `k8s-pb`'s typed message (`kubectl auth can-i`).
//!
//! Go's JSON encoder leaves out empty optional fields, while the protobuf encoder writes every
//! non-pointer field, empty or not: empty strings, lists and maps are dropped here so the JSON
//! matches what the same client would have sent as JSON. Numbers and booleans are kept (a
//! pointer's zero, such as `replicas: 0`, means something).

use std::sync::OnceLock;

use base64::Engine;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MapKey, ReflectMessage, Value as PValue};
use serde_json::{json, Map, Value};

use super::protobuf_keep::{INLINE, KEEP_ZERO};

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

/// Whether `<message>.<field>` is in one of the sorted tables of [`protobuf_keep`].
fn listed(table: &[&str], message: &str, field: &str) -> bool {
    let key = format!("{message}.{field}");
    table.binary_search(&key.as_str()).is_ok()
}

/// The descriptors of the served kinds.
fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(&include_bytes!("../../proto/k8s.desc")[..])
            .expect("the committed descriptor set decodes")
    })
}

/// The protobuf package of an `apiVersion` (`v1` → `k8s.io.api.core.v1`, `apps/v1` →
/// `k8s.io.api.apps.v1`, `discovery.k8s.io/v1` → `k8s.io.api.discovery.v1`).
fn package_of(api_version: &str) -> String {
    match api_version.split_once('/') {
        None => format!("k8s.io.api.core.{api_version}"),
        Some((group, version)) => {
            let short = group.strip_suffix(".k8s.io").unwrap_or(group);
            format!("k8s.io.api.{short}.{version}")
        }
    }
}

/// The JSON of a served kind's protobuf body (envelope opened), with `apiVersion` and `kind`.
pub fn object(env: &Envelope) -> Result<Value, ApiError> {
    let name = format!("{}.{}", package_of(&env.api_version), env.kind);
    let desc = pool().get_message_by_name(&name).ok_or_else(|| {
        ApiError::unsupported_media(&format!(
            "{MEDIA_TYPE} for {}/{} (no protobuf decoder for this kind)",
            env.api_version, env.kind
        ))
    })?;
    let msg = DynamicMessage::decode(desc, &env.raw[..]).map_err(bad)?;
    let mut v = message_json(&msg)?;
    if let Value::Object(m) = &mut v {
        m.insert("apiVersion".into(), json!(env.api_version));
        m.insert("kind".into(), json!(env.kind));
    }
    Ok(v)
}

fn field<'a>(m: &'a DynamicMessage, name: &str) -> Option<std::borrow::Cow<'a, PValue>> {
    let f = m.descriptor().get_field_by_name(name)?;
    m.has_field(&f).then(|| m.get_field(&f))
}

/// RFC 3339 of `seconds`/`nanos` (`Time`: whole seconds; `MicroTime`: six fraction digits).
fn time_json(m: &DynamicMessage, micro: bool) -> Result<Value, ApiError> {
    let secs = field(m, "seconds").and_then(|v| v.as_i64()).unwrap_or(0);
    let nanos = field(m, "nanos").and_then(|v| v.as_i32()).unwrap_or(0);
    if secs == 0 && nanos == 0 {
        // Go's zero time, which its JSON encoder writes as null.
        return Ok(Value::Null);
    }
    let t = jiff::Timestamp::from_second(secs).map_err(bad)?;
    let base = t.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    Ok(if micro {
        json!(format!("{base}.{:06}Z", nanos.max(0) / 1000))
    } else {
        json!(format!("{base}Z"))
    })
}

/// Go's `time.Duration` string of nanoseconds (`1h0m0s`, `1.5s`, `0s`).
fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let ns = ns.unsigned_abs();
    if ns < 1_000_000_000 {
        return format!("{sign}{}ms", ns as f64 / 1e6);
    }
    let (h, rest) = (ns / 3_600_000_000_000, ns % 3_600_000_000_000);
    let (m, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let secs = rest as f64 / 1e9;
    match (h, m) {
        (0, 0) => format!("{sign}{secs}s"),
        (0, m) => format!("{sign}{m}m{secs}s"),
        (h, m) => format!("{sign}{h}h{m}m{secs}s"),
    }
}

/// Bytes holding JSON (`RawExtension.raw`, `FieldsV1.Raw`).
fn raw_json(m: &DynamicMessage, name: &str) -> Result<Value, ApiError> {
    match field(m, name) {
        Some(v) => match v.as_bytes() {
            Some(b) if !b.is_empty() => serde_json::from_slice(b).map_err(bad),
            _ => Ok(Value::Null),
        },
        None => Ok(Value::Null),
    }
}

/// A message's JSON: the Kubernetes special types in their JSON forms, other messages as
/// objects of their set, non-empty fields under their JSON names.
fn message_json(m: &DynamicMessage) -> Result<Value, ApiError> {
    let desc = m.descriptor();
    match desc.full_name() {
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time" => return time_json(m, false),
        "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime" => return time_json(m, true),
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
            let is_str = field(m, "type").and_then(|v| v.as_i64()).unwrap_or(0) == 1;
            return Ok(if is_str {
                json!(field(m, "strVal")
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default())
            } else {
                json!(field(m, "intVal").and_then(|v| v.as_i32()).unwrap_or(0))
            });
        }
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => {
            return Ok(json!(field(m, "string")
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()));
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" => {
            let ns = field(m, "duration").and_then(|v| v.as_i64()).unwrap_or(0);
            return Ok(json!(go_duration(ns)));
        }
        "k8s.io.apimachinery.pkg.runtime.RawExtension" => return raw_json(m, "raw"),
        "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1" => return raw_json(m, "Raw"),
        _ => {}
    }
    let mut out = Map::new();
    for (f, v) in m.fields() {
        let j = value_json(v)?;
        if let Value::Object(inner) = &j {
            if listed(INLINE, desc.full_name(), f.name()) {
                out.extend(inner.clone());
                continue;
            }
        }
        let zero = match &j {
            Value::String(s) => s.is_empty(),
            Value::Bool(b) => !b,
            Value::Number(n) => n.as_f64() == Some(0.0),
            _ => false,
        };
        let drop = match &j {
            Value::Null => true,
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty() && f.is_map(),
            _ => zero && !listed(KEEP_ZERO, desc.full_name(), f.json_name()),
        };
        if !drop {
            out.insert(f.json_name().to_string(), j);
        }
    }
    Ok(Value::Object(out))
}

fn value_json(v: &PValue) -> Result<Value, ApiError> {
    Ok(match v {
        PValue::Bool(b) => json!(b),
        PValue::I32(n) => json!(n),
        PValue::I64(n) => json!(n),
        PValue::U32(n) => json!(n),
        PValue::U64(n) => json!(n),
        PValue::F32(n) => json!(n),
        PValue::F64(n) => json!(n),
        PValue::String(s) => json!(s),
        // Go encodes []byte as standard base64 in JSON.
        PValue::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        PValue::EnumNumber(n) => json!(n),
        PValue::Message(m) => message_json(m)?,
        PValue::List(items) => {
            Value::Array(items.iter().map(value_json).collect::<Result<_, _>>()?)
        }
        PValue::Map(map) => {
            let mut o = Map::new();
            for (k, v) in map {
                let key = match k {
                    MapKey::String(s) => s.clone(),
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(n) => n.to_string(),
                    MapKey::I64(n) => n.to_string(),
                    MapKey::U32(n) => n.to_string(),
                    MapKey::U64(n) => n.to_string(),
                };
                o.insert(key, value_json(v)?);
            }
            Value::Object(o)
        }
    })
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

/// A SelfSubjectRulesReview's JSON from its protobuf message.
pub fn self_subject_rules_review(raw: &[u8]) -> Result<Value, ApiError> {
    let r = k8s_pb::api::authorization::v1::SelfSubjectRulesReview::decode(raw).map_err(bad)?;
    let ns = r.spec.and_then(|s| s.namespace).unwrap_or_default();
    Ok(json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": ns},
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

    /// A Deployment encoded by `k8s-pb`'s typed messages (as client-go encodes it) decodes to
    /// the JSON Go's encoder would write: embedded structs inlined, zero non-pointer fields
    /// dropped, pointer zeros kept, special types in their JSON forms.
    #[test]
    fn a_typed_deployment_decodes_to_the_json_form() {
        use k8s_pb::api::apps::v1 as apps;
        use k8s_pb::api::core::v1 as core;
        use k8s_pb::apimachinery::pkg::api::resource::Quantity;
        use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
        use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
        let labels: std::collections::BTreeMap<String, String> =
            [("app".to_string(), "web".to_string())].into();
        let container = core::Container {
            name: Some("web".into()),
            image: Some("nginx".into()),
            // Written by Go's protobuf encoder although zero; JSON leaves them out.
            stdin: Some(false),
            tty: Some(false),
            termination_message_path: Some(String::new()),
            ports: vec![core::ContainerPort {
                container_port: Some(8080),
                ..Default::default()
            }],
            resources: Some(core::ResourceRequirements {
                requests: [(
                    "cpu".to_string(),
                    Quantity {
                        string: Some("100m".into()),
                    },
                )]
                .into(),
                ..Default::default()
            }),
            readiness_probe: Some(core::Probe {
                handler: Some(core::ProbeHandler {
                    http_get: Some(core::HttpGetAction {
                        path: Some("/".into()),
                        port: Some(IntOrString {
                            r#type: Some(1),
                            int_val: Some(0),
                            str_val: Some("http".into()),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                period_seconds: Some(5),
                ..Default::default()
            }),
            ..Default::default()
        };
        let d = apps::Deployment {
            metadata: Some(meta::ObjectMeta {
                name: Some("web".into()),
                labels: labels.clone(),
                creation_timestamp: Some(meta::Time {
                    seconds: Some(0),
                    nanos: Some(0),
                }),
                generation: Some(0),
                ..Default::default()
            }),
            spec: Some(apps::DeploymentSpec {
                // A pointer: zero replicas is kept.
                replicas: Some(0),
                min_ready_seconds: Some(0),
                paused: Some(false),
                selector: Some(meta::LabelSelector {
                    match_labels: labels.clone(),
                    ..Default::default()
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(meta::ObjectMeta {
                        labels,
                        ..Default::default()
                    }),
                    spec: Some(core::PodSpec {
                        containers: vec![container],
                        host_network: Some(false),
                        termination_grace_period_seconds: Some(0),
                        volumes: vec![core::Volume {
                            name: Some("data".into()),
                            volume_source: Some(core::VolumeSource {
                                empty_dir: Some(core::EmptyDirVolumeSource::default()),
                                ..Default::default()
                            }),
                        }],
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        };
        let body = seal("apps/v1", "Deployment", d.encode_to_vec());
        let got = object(&open(&body).unwrap()).unwrap();
        assert_eq!(
            got,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {
                            "containers": [{
                                "name": "web", "image": "nginx",
                                "ports": [{"containerPort": 8080}],
                                "resources": {"requests": {"cpu": "100m"}},
                                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 5},
                            }],
                            "terminationGracePeriodSeconds": 0,
                            "volumes": [{"name": "data", "emptyDir": {}}],
                        },
                    },
                },
            })
        );
    }

    #[test]
    fn special_types() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(package_of("v1"), "k8s.io.api.core.v1");
        assert_eq!(package_of("apps/v1"), "k8s.io.api.apps.v1");
        assert_eq!(package_of("discovery.k8s.io/v1"), "k8s.io.api.discovery.v1");
        // The generated tables are sorted (they are binary-searched).
        for t in [KEEP_ZERO, INLINE] {
            assert!(t.windows(2).all(|w| w[0] < w[1]));
        }
        // A kind without a decoder is a 415, not a guess.
        let env = Envelope {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            raw: Vec::new(),
        };
        assert_eq!(object(&env).unwrap_err().code, 415);
    }

    /// The committed descriptor set is what protoc makes of the vendored `.proto` files now
    /// (compared decoded, so protoc's byte layout does not matter).
    #[test]
    fn the_descriptor_set_matches_the_proto_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
        let out = tempfile::NamedTempFile::new().unwrap();
        let run = std::process::Command::new("protoc")
            .current_dir(&dir)
            .args(["-I", ".", "--include_imports"])
            .arg(format!("--descriptor_set_out={}", out.path().display()))
            .args([
                "k8s.io/api/core/v1/generated.proto",
                "k8s.io/api/apps/v1/generated.proto",
                "k8s.io/api/discovery/v1/generated.proto",
                "k8s.io/api/coordination/v1/generated.proto",
            ])
            .output();
        let Ok(o) = run else {
            let why = "protoc is not installed (Debian: protobuf-compiler)";
            assert!(
                !matches!(
                    std::env::var("SLUICE_REQUIRE_ALL").as_deref(),
                    Ok("1" | "true")
                ),
                "this test could not run: {why} (SLUICE_REQUIRE_ALL is set)"
            );
            println!("SKIP: {why}");
            return;
        };
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let fresh = DescriptorPool::decode(&std::fs::read(out.path()).unwrap()[..]).unwrap();
        let names = |p: &DescriptorPool| {
            p.all_messages()
                .map(|m| {
                    let fields: Vec<String> = m
                        .fields()
                        .map(|f| format!("{}:{}", f.name(), f.number()))
                        .collect();
                    format!("{} {}", m.full_name(), fields.join(","))
                })
                .collect::<std::collections::BTreeSet<_>>()
        };
        assert_eq!(
            names(pool()),
            names(&fresh),
            "control/server/proto/k8s.desc is stale: run scripts/gen-proto-descriptors"
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
