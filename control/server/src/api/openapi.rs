//! OpenAPI documents of the served types: `/openapi/v3` (discovery), `/openapi/v3/<gv>`
//! (OpenAPI 3.0 per group-version) and `/openapi/v2` (Swagger 2.0 as gnostic protobuf).
//!
//! The schemas come from k8s-openapi's `schemars` impls (generated from the upstream spec, so
//! descriptions and `required` lists match upstream). Two things the generated impls lack are
//! added here: `x-kubernetes-group-version-kind` on the top-level kinds (kubectl finds a kind's
//! schema by it) and the strategic-merge-patch extensions, taken from the tables the server's
//! own patch code uses (`sluice_smp`), so kubectl computes the same patches the server applies.
//!
//! What kubectl does with the documents decides how much of upstream's shape is served:
//! - `kubectl explain` (1.27+) reads `/openapi/v3/<gv>`, finds the kind through the
//!   `x-kubernetes-group-version-kind` of a `get` operation under the resource's path, then the
//!   component schema carrying the same GVK. Every resource gets that one `get` operation.
//! - No `patch` operations are published. With one, kubectl would compute apply patches from
//!   the v3 schema and, if it listed `fieldValidation`, leave validation to the server, which
//!   does not implement that parameter. Without them kubectl keeps its built-in patch metadata
//!   (1.21+) and validates client side against `/openapi/v2`, exactly like an older server.
//! - `/openapi/v2` has definitions and no paths. kubectl 1.20 uses it for `explain`, client
//!   side validation and apply patch metadata; kubectl 1.32 only for client side validation.
//!   kubectl 1.20 cannot read it as JSON (it only decodes protobuf), so it is encoded by hand as
//!   gnostic's `openapi_v2.Document` (the subset of fields kubectl reads).
//!
//! Not modelled: `x-kubernetes-list-type`/`-list-map-keys` (k8s-openapi's schemas do not
//! carry them and no kubectl code path reads them), `default`/`enum` values in v2.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Binding, ConfigMap, Endpoints, Event, Namespace, Node, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event as EventsEvent;
use k8s_openapi::schemars::generate::{SchemaGenerator, SchemaSettings};
use k8s_openapi::schemars::JsonSchema;
use serde_json::{json, Map, Value};
use sluice_smp::{Field, ListStrategy};

use crate::resources::RESOURCES;

/// Where definitions live in the neutral (and v2) form of the schemas.
const V2_REF: &str = "#/definitions/";
/// Where components live in OpenAPI 3.
const V3_REF: &str = "#/components/schemas/";

/// A top-level kind and the name of its definition (`io.k8s.api.apps.v1.Deployment`).
#[derive(Debug, Clone)]
struct KindDef {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    def: String,
}

/// The documents, built once on first use.
struct Documents {
    /// `/openapi/v2` as gnostic protobuf.
    v2: Vec<u8>,
    /// `/openapi/v3`.
    v3_discovery: String,
    /// `/openapi/v3/<key>` by key (`api/v1`, `apis/apps/v1`).
    v3: BTreeMap<String, String>,
}

fn documents() -> &'static Documents {
    static DOCS: OnceLock<Documents> = OnceLock::new();
    DOCS.get_or_init(build)
}

/// `GET /openapi/v2`: Swagger 2.0 as protobuf (`openapi_v2.Document`).
pub fn v2_protobuf() -> &'static [u8] {
    &documents().v2
}

/// `GET /openapi/v3`: `{"paths": {"apis/apps/v1": {"serverRelativeURL": "..."}}}`.
pub fn v3_discovery() -> &'static str {
    &documents().v3_discovery
}

/// `GET /openapi/v3/<key>` (`key` is `api/v1` or `apis/<group>/<version>`); None when the
/// group-version is not served.
pub fn v3_group_version(key: &str) -> Option<&'static str> {
    documents().v3.get(key).map(String::as_str)
}

/// Registers `T`'s schema (and everything it references) with the generator.
fn kind<T: JsonSchema + k8s_openapi::Resource>(gen: &mut SchemaGenerator) -> KindDef {
    gen.subschema_for::<T>();
    KindDef {
        group: T::GROUP,
        version: T::VERSION,
        kind: T::KIND,
        def: T::schema_name().into_owned(),
    }
}

/// The kinds with schemas: every served resource plus the kinds of subresources (Scale,
/// Binding). A resource added to `RESOURCES` needs its type added here (a unit test checks).
fn kinds(gen: &mut SchemaGenerator) -> Vec<KindDef> {
    vec![
        kind::<Namespace>(gen),
        kind::<Node>(gen),
        kind::<Pod>(gen),
        kind::<Binding>(gen),
        kind::<Service>(gen),
        kind::<Endpoints>(gen),
        kind::<ConfigMap>(gen),
        kind::<Secret>(gen),
        kind::<ServiceAccount>(gen),
        kind::<Event>(gen),
        kind::<EndpointSlice>(gen),
        kind::<Deployment>(gen),
        kind::<ReplicaSet>(gen),
        kind::<Scale>(gen),
        kind::<Lease>(gen),
        kind::<EventsEvent>(gen),
    ]
}

/// All definitions (refs as `#/definitions/<name>`) with the extensions added, and the kinds.
fn model() -> (BTreeMap<String, Value>, Vec<KindDef>) {
    let mut gen = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/definitions".into();
            s.meta_schema = None;
        })
        .into_generator();
    let kinds = kinds(&mut gen);
    let mut defs: BTreeMap<String, Value> = gen.take_definitions(false).into_iter().collect();
    for (name, def) in defs.iter_mut() {
        // Upstream publishes IntOrString as a string of format int-or-string and Quantity as a
        // string; k8s-openapi only marks them `x-kubernetes-int-or-string`. A type is what
        // kubectl explain shows, and kubectl's validator accepts any scalar for a string.
        if let Some(obj) = def.as_object_mut() {
            if obj.contains_key("x-kubernetes-int-or-string") && !obj.contains_key("type") {
                obj.insert("type".into(), json!("string"));
                if name == "io.k8s.apimachinery.pkg.util.intstr.IntOrString" {
                    obj.insert("format".into(), json!("int-or-string"));
                }
            }
        }
    }
    for k in &kinds {
        if let Some(obj) = defs.get_mut(&k.def).and_then(Value::as_object_mut) {
            obj.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": k.group, "kind": k.kind, "version": k.version}]),
            );
        }
        if let Some(schema) = sluice_smp::schema_for(k.group, k.kind) {
            let names: Vec<String> = defs
                .get(&k.def)
                .and_then(|d| d.get("properties"))
                .and_then(Value::as_object)
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            for name in names {
                if let Some(field) = schema.field(&[name.as_str()]) {
                    annotate(&mut defs, &k.def, std::slice::from_ref(field));
                }
            }
        }
    }
    (defs, kinds)
}

/// Puts the patch strategy of `fields` on the properties of definition `def`, and recurses
/// into the definitions the fields' values (or list elements) refer to.
fn annotate(defs: &mut BTreeMap<String, Value>, def: &str, fields: &[Field]) {
    for f in fields {
        let Some(prop) = defs
            .get_mut(def)
            .and_then(|d| d.get_mut("properties"))
            .and_then(|p| p.get_mut(f.name))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        let (strategy, key) = match f.list {
            ListStrategy::MergeByKey(key) => (Some("merge"), Some(key)),
            ListStrategy::MergePrimitives => (Some("merge"), None),
            ListStrategy::Replace => (None, None),
        };
        let strategy = match (strategy, f.retain_keys) {
            (Some(s), true) => Some(format!("{s},retainKeys")),
            (Some(s), false) => Some(s.to_string()),
            (None, true) => Some("retainKeys".to_string()),
            (None, false) => None,
        };
        if let Some(s) = strategy {
            prop.insert("x-kubernetes-patch-strategy".into(), json!(s));
        }
        if let Some(k) = key {
            prop.insert("x-kubernetes-patch-merge-key".into(), json!(k));
        }
        if f.children.is_empty() {
            continue;
        }
        let target = prop
            .get("$ref")
            .or_else(|| prop.get("items").and_then(|i| i.get("$ref")))
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix(V2_REF))
            .map(str::to_string);
        if let Some(target) = target {
            annotate(defs, &target, f.children);
        }
    }
}

/// Every definition name referenced anywhere in `v`.
fn refs_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => {
                        if let Some(name) = r.strip_prefix(V2_REF) {
                            out.push(name.to_string());
                        }
                    }
                    _ => refs_in(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs_in(x, out)),
        _ => {}
    }
}

/// The definitions reachable from `roots`.
fn closure(defs: &BTreeMap<String, Value>, roots: &[&str]) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = roots.iter().map(|s| s.to_string()).collect();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(d) = defs.get(&name) {
            refs_in(d, &mut todo);
        }
    }
    seen
}

/// A schema in OpenAPI 3 form: refs point at `#/components/schemas/`, and a `$ref` with
/// siblings (a field's own description) becomes `allOf: [{$ref}]` plus the siblings, as
/// upstream publishes it (OpenAPI 3.0 ignores siblings of `$ref`).
fn to_v3(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            let mut reference = None;
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => {
                        let name = r.strip_prefix(V2_REF).unwrap_or(r);
                        reference = Some(format!("{V3_REF}{name}"));
                    }
                    // Property names are keys, not schemas: only their values convert.
                    ("properties", Value::Object(props)) => {
                        let props: Map<String, Value> =
                            props.iter().map(|(n, s)| (n.clone(), to_v3(s))).collect();
                        out.insert(k.clone(), Value::Object(props));
                    }
                    _ => {
                        out.insert(k.clone(), to_v3(x));
                    }
                }
            }
            match reference {
                Some(r) if out.is_empty() => json!({"$ref": r}),
                Some(r) => {
                    out.insert("allOf".into(), json!([{"$ref": r}]));
                    Value::Object(out)
                }
                None => Value::Object(out),
            }
        }
        Value::Array(a) => Value::Array(a.iter().map(to_v3).collect()),
        other => other.clone(),
    }
}

/// `api/v1` or `apis/<group>/<version>`.
fn gv_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The OpenAPI 3 document of one group-version.
fn v3_document(
    defs: &BTreeMap<String, Value>,
    kinds: &[KindDef],
    group: &str,
    version: &str,
) -> Value {
    let def_of = |g: &str, v: &str, k: &str| {
        kinds
            .iter()
            .find(|d| (d.group, d.version, d.kind) == (g, v, k))
            .map(|d| d.def.as_str())
    };
    let mut roots = Vec::new();
    let mut paths = Map::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let Some(def) = def_of(r.group, r.version, r.kind) else {
            continue;
        };
        roots.push(def);
        // Subresource kinds belong to the document of the resource serving them.
        for sub in r.subresources {
            let extra = match *sub {
                "scale" => def_of("autoscaling", "v1", "Scale"),
                "binding" => def_of("", "v1", "Binding"),
                _ => None,
            };
            roots.extend(extra);
        }
        let prefix = if r.namespaced {
            format!("/{}/namespaces/{{namespace}}", gv_key(group, version))
        } else {
            format!("/{}", gv_key(group, version))
        };
        let mut params = vec![json!({
            "name": "name", "in": "path", "required": true, "schema": {"type": "string"},
            "description": format!("name of the {}", r.kind),
        })];
        if r.namespaced {
            params.push(json!({
                "name": "namespace", "in": "path", "required": true,
                "schema": {"type": "string"},
                "description": "object name and auth scope, such as for teams and projects",
            }));
        }
        paths.insert(
            format!("{prefix}/{}/{{name}}", r.plural),
            json!({
                "get": {
                    "description": format!("read the specified {}", r.kind),
                    "operationId": format!("read{}", r.kind),
                    "parameters": params,
                    "responses": {"200": {
                        "description": "OK",
                        "content": {"application/json": {"schema": {"$ref": format!("{V3_REF}{def}")}}},
                    }},
                    "x-kubernetes-action": "get",
                    "x-kubernetes-group-version-kind": {"group": r.group, "kind": r.kind, "version": r.version},
                }
            }),
        );
    }
    roots.sort();
    roots.dedup();
    let schemas: Map<String, Value> = closure(defs, &roots)
        .into_iter()
        .filter_map(|name| defs.get(&name).map(|d| (name, to_v3(d))))
        .collect();
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.35.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

fn build() -> Documents {
    let (defs, kinds) = model();
    let mut v3 = BTreeMap::new();
    let mut listing = Map::new();
    for (group, version) in crate::resources::group_versions() {
        let key = gv_key(group, version);
        let doc = v3_document(&defs, &kinds, group, version).to_string();
        // The hash lets clients cache a group-version's document until it changes.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        doc.hash(&mut h);
        listing.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={:016X}", h.finish())}),
        );
        v3.insert(key, doc);
    }
    Documents {
        v2: v2_document(&defs),
        v3_discovery: json!({"paths": listing}).to_string(),
        v3,
    }
}

// --- gnostic `openapi_v2` protobuf encoding -------------------------------------------------
//
// Field numbers from gnostic-models' `openapiv2/OpenAPIv2.proto`. Only what kube-openapi's
// `proto.NewOpenAPIData` reads is written: types, formats, descriptions, required lists,
// properties, items, additionalProperties, allOf, `$ref`s and the `x-` vendor extensions
// (whose values it parses as YAML, so they are written as JSON text).

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// A length-delimited field (string, bytes or embedded message).
fn put_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(buf, (u64::from(field) << 3) | 2);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

fn put_bool(buf: &mut Vec<u8>, field: u32, b: bool) {
    put_varint(buf, u64::from(field) << 3);
    put_varint(buf, u64::from(b));
}

/// `NamedAny {name = 1; Any value = 2}` with `Any {yaml = 2}`.
fn named_any(name: &str, value: &Value) -> Vec<u8> {
    let mut any = Vec::new();
    put_bytes(&mut any, 2, value.to_string().as_bytes());
    let mut out = Vec::new();
    put_bytes(&mut out, 1, name.as_bytes());
    put_bytes(&mut out, 2, &any);
    out
}

/// `NamedSchema {name = 1; Schema value = 2}`.
fn named_schema(name: &str, schema: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    put_bytes(&mut out, 1, name.as_bytes());
    put_bytes(&mut out, 2, &v2_schema(schema));
    out
}

/// One `openapi_v2.Schema`.
fn v2_schema(s: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let Some(m) = s.as_object() else {
        return out;
    };
    let str_field = |out: &mut Vec<u8>, key: &str, field: u32| {
        if let Some(v) = m.get(key).and_then(Value::as_str) {
            put_bytes(out, field, v.as_bytes());
        }
    };
    str_field(&mut out, "$ref", 1);
    str_field(&mut out, "format", 2);
    str_field(&mut out, "title", 3);
    str_field(&mut out, "description", 4);
    str_field(&mut out, "pattern", 13);
    for r in m
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(r) = r.as_str() {
            put_bytes(&mut out, 19, r.as_bytes());
        }
    }
    match m.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut item = Vec::new();
            put_bool(&mut item, 2, *b);
            put_bytes(&mut out, 21, &item);
        }
        Some(sub @ Value::Object(_)) => {
            let mut item = Vec::new();
            put_bytes(&mut item, 1, &v2_schema(sub));
            put_bytes(&mut out, 21, &item);
        }
        _ => {}
    }
    let types: Vec<&str> = match m.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        let mut item = Vec::new();
        for t in types {
            put_bytes(&mut item, 1, t.as_bytes());
        }
        put_bytes(&mut out, 22, &item);
    }
    let items: Vec<&Value> = match m.get("items") {
        Some(i @ Value::Object(_)) => vec![i],
        Some(Value::Array(is)) => is.iter().collect(),
        _ => Vec::new(),
    };
    if !items.is_empty() {
        let mut item = Vec::new();
        for i in items {
            put_bytes(&mut item, 1, &v2_schema(i));
        }
        put_bytes(&mut out, 23, &item);
    }
    for sub in m
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        put_bytes(&mut out, 24, &v2_schema(sub));
    }
    if let Some(props) = m.get("properties").and_then(Value::as_object) {
        let mut p = Vec::new();
        for (name, sub) in props {
            put_bytes(&mut p, 1, &named_schema(name, sub));
        }
        put_bytes(&mut out, 25, &p);
    }
    if let Some(true) = m.get("readOnly").and_then(Value::as_bool) {
        put_bool(&mut out, 27, true);
    }
    for (k, v) in m.iter().filter(|(k, _)| k.starts_with("x-")) {
        put_bytes(&mut out, 31, &named_any(k, v));
    }
    out
}

/// `openapi_v2.Document` with swagger, info and definitions.
fn v2_document(defs: &BTreeMap<String, Value>) -> Vec<u8> {
    let mut doc = Vec::new();
    put_bytes(&mut doc, 1, b"2.0");
    let mut info = Vec::new();
    put_bytes(&mut info, 1, b"Kubernetes");
    put_bytes(&mut info, 2, b"v1.35.0");
    put_bytes(&mut doc, 2, &info);
    let mut definitions = Vec::new();
    for (name, d) in defs {
        put_bytes(&mut definitions, 1, &named_schema(name, d));
    }
    put_bytes(&mut doc, 9, &definitions);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v3(key: &str) -> Value {
        serde_json::from_str(v3_group_version(key).expect("served")).unwrap()
    }

    fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
        &doc["components"]["schemas"][name]
    }

    #[test]
    fn every_served_resource_has_a_schema() {
        let mut gen = SchemaGenerator::default();
        let kinds = kinds(&mut gen);
        for r in RESOURCES {
            assert!(
                kinds
                    .iter()
                    .any(|k| (k.group, k.version, k.kind) == (r.group, r.version, r.kind)),
                "{}/{} {} has no schema in openapi::kinds",
                r.group,
                r.version,
                r.kind
            );
        }
    }

    #[test]
    fn discovery_lists_every_group_version() {
        let d: Value = serde_json::from_str(v3_discovery()).unwrap();
        for (g, v) in crate::resources::group_versions() {
            let key = gv_key(g, v);
            let url = d["paths"][&key]["serverRelativeURL"].as_str().unwrap();
            assert!(
                url.starts_with(&format!("/openapi/v3/{key}?hash=")),
                "{url}"
            );
            assert!(v3_group_version(&key).is_some());
        }
        assert!(v3_group_version("apis/apps/v2").is_none());
    }

    #[test]
    fn deployment_schema_carries_gvk_descriptions_and_patch_metadata() {
        let doc = v3("apis/apps/v1");
        let dep = schema(&doc, "io.k8s.api.apps.v1.Deployment");
        assert_eq!(
            dep["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "kind": "Deployment", "version": "v1"}])
        );
        let spec = schema(&doc, "io.k8s.api.apps.v1.DeploymentSpec");
        let strategy = &spec["properties"]["strategy"];
        assert_eq!(
            strategy["allOf"],
            json!([{"$ref": "#/components/schemas/io.k8s.api.apps.v1.DeploymentStrategy"}])
        );
        assert!(strategy["description"]
            .as_str()
            .unwrap()
            .contains("deployment strategy"));
        assert_eq!(strategy["x-kubernetes-patch-strategy"], "retainKeys");
        let pod_spec = schema(&doc, "io.k8s.api.core.v1.PodSpec");
        let containers = &pod_spec["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(
            pod_spec["properties"]["volumes"]["x-kubernetes-patch-strategy"],
            "merge,retainKeys"
        );
        let container = schema(&doc, "io.k8s.api.core.v1.Container");
        assert_eq!(
            container["properties"]["env"]["x-kubernetes-patch-merge-key"],
            "name"
        );
        // The `get` operation kubectl explain takes the GVK from.
        let get = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["get"];
        assert_eq!(
            get["x-kubernetes-group-version-kind"],
            json!({"group": "apps", "kind": "Deployment", "version": "v1"})
        );
        // Scale is served as deployments/scale.
        assert!(schema(&doc, "io.k8s.api.autoscaling.v1.Scale").is_object());
    }

    #[test]
    fn every_ref_resolves_and_no_patch_operations() {
        for (g, v) in crate::resources::group_versions() {
            let doc = v3(&gv_key(g, v));
            let mut refs = Vec::new();
            fn collect(v: &Value, out: &mut Vec<String>) {
                match v {
                    Value::Object(m) => {
                        for (k, x) in m {
                            if k == "$ref" {
                                out.push(x.as_str().unwrap().to_string());
                            } else {
                                collect(x, out);
                            }
                        }
                    }
                    Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
                    _ => {}
                }
            }
            collect(&doc, &mut refs);
            assert!(!refs.is_empty());
            for r in refs {
                let name = r.strip_prefix(V3_REF).expect("component ref");
                assert!(schema(&doc, name).is_object(), "{g}/{v}: dangling {r}");
            }
            for (path, item) in doc["paths"].as_object().unwrap() {
                assert!(item.get("patch").is_none(), "{path}");
            }
        }
    }

    #[test]
    fn int_or_string_is_a_string() {
        let doc = v3("apis/apps/v1");
        let ios = schema(&doc, "io.k8s.apimachinery.pkg.util.intstr.IntOrString");
        assert_eq!(ios["type"], "string");
        assert_eq!(ios["format"], "int-or-string");
        let q = schema(&doc, "io.k8s.apimachinery.pkg.api.resource.Quantity");
        assert_eq!(q["type"], "string");
    }

    /// Splits a protobuf message into (field, payload) pairs; varints as their value bytes.
    fn fields(mut b: &[u8]) -> Vec<(u64, Vec<u8>)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let mut v = 0u64;
            let mut shift = 0;
            loop {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    return v;
                }
                shift += 7;
            }
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            match key & 7 {
                0 => out.push((key >> 3, varint(&mut b).to_le_bytes().to_vec())),
                2 => {
                    let len = varint(&mut b) as usize;
                    out.push((key >> 3, b[..len].to_vec()));
                    b = &b[len..];
                }
                w => panic!("unexpected wire type {w}"),
            }
        }
        out
    }

    fn field(b: &[u8], n: u64) -> Vec<Vec<u8>> {
        fields(b)
            .into_iter()
            .filter(|(f, _)| *f == n)
            .map(|(_, v)| v)
            .collect()
    }

    #[test]
    fn v2_protobuf_has_definitions_with_gvk() {
        let doc = v2_protobuf();
        assert_eq!(field(doc, 1), vec![b"2.0".to_vec()]);
        let defs = &field(doc, 9)[0];
        let named = field(defs, 1);
        let (model, _) = model();
        assert_eq!(named.len(), model.len());
        let dep = named
            .iter()
            .find(|n| field(n, 1)[0] == b"io.k8s.api.apps.v1.Deployment")
            .expect("Deployment");
        let s = &field(dep, 2)[0];
        assert!(String::from_utf8(field(s, 4)[0].clone())
            .unwrap()
            .contains("Deployment"));
        let ext = field(s, 31);
        let gvk = ext
            .iter()
            .find(|e| field(e, 1)[0] == b"x-kubernetes-group-version-kind")
            .expect("gvk extension");
        let yaml = field(&field(gvk, 2)[0], 2)[0].clone();
        let v: Value = serde_json::from_slice(&yaml).unwrap();
        assert_eq!(v[0]["kind"], "Deployment");
        // Properties: `spec` refers to DeploymentSpec.
        let props = &field(s, 25)[0];
        let spec = field(props, 1)
            .into_iter()
            .find(|n| field(n, 1)[0] == b"spec")
            .unwrap();
        assert_eq!(
            field(&field(&spec, 2)[0], 1)[0],
            b"#/definitions/io.k8s.api.apps.v1.DeploymentSpec"
        );
    }
}
