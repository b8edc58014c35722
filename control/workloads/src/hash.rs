//! The `pod-template-hash`: a stable name suffix and label for a pod template.
//!
//! Upstream (`controller.ComputeHash`) feeds the template through Go's deep-hash
//! printer into 32-bit FNV-1a, appends the collision count (as 8 bytes, the low
//! four little-endian) and renders the decimal value of the hash with
//! `rand.SafeEncodeString`. We cannot reproduce Go's printer byte for byte, so we
//! hash a canonical JSON rendering instead (sorted keys, no nulls / empty lists /
//! empty label-like maps, the hash label itself removed). The values therefore
//! differ from a real cluster's, but they have the same shape (alphabet, length up
//! to 10) and the same properties: stable across runs and processes, sensitive to
//! every field of the template, independent of an existing hash label.

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

use crate::Error;

/// The label (on ReplicaSets, their selector and template, and pods) that keeps
/// the ReplicaSets of one Deployment from selecting each other's pods.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// `rand.SafeEncodeString`'s alphabet: no vowels (no words) and no look-alikes.
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Canonical JSON of a template minus the hash label (see the module docs).
fn canonical(t: &PodTemplateSpec) -> Result<String, Error> {
    let mut v = serde_json::to_value(t).map_err(|e| Error::Serialize(e.to_string()))?;
    if let Some(labels) = v
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(POD_TEMPLATE_HASH_LABEL);
    }
    let mut out = String::new();
    write_canonical(&prune(v), &mut out);
    Ok(out)
}

/// Drops "absent" fields, innermost first. Go's semantic equality treats nil and
/// empty slices/maps alike; for objects we only drop the map-typed fields and the
/// template metadata, so `emptyDir: {}` still counts.
fn prune(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k, prune(v)))
                .filter(|(k, v)| !is_void(k, v))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(prune).collect()),
        other => other,
    }
}

fn is_void(key: &str, v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => {
            o.is_empty()
                && matches!(
                    key,
                    "labels" | "annotations" | "nodeSelector" | "metadata" | "limits" | "requests"
                )
        }
        _ => false,
    }
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(o) => {
            // serde_json may preserve insertion order (feature unification), so sort here.
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}:", Value::String(k.clone()));
                write_canonical(&o[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

/// 32-bit FNV-1a.
fn fnv1a32(chunks: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for c in chunks {
        for b in *c {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// `rand.SafeEncodeString`: each byte mapped into the safe alphabet.
fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()]))
        .collect()
}

/// The pod-template-hash of `template` with the Deployment's `collisionCount`
/// (see the module docs for how it relates to upstream's value).
pub fn compute_hash(
    template: &PodTemplateSpec,
    collision_count: Option<i32>,
) -> Result<String, Error> {
    let c = canonical(template)?;
    let mut tail = [0u8; 8];
    if let Some(n) = collision_count {
        // Upstream writes a uint32 little-endian into an 8-byte buffer.
        tail[..4].copy_from_slice(&(n as u32).to_le_bytes());
    }
    let chunks: Vec<&[u8]> = if collision_count.is_some() {
        vec![c.as_bytes(), &tail]
    } else {
        vec![c.as_bytes()]
    };
    Ok(safe_encode(&fnv1a32(&chunks).to_string()))
}

/// `EqualIgnoreHash`: templates equal once the hash label is dropped from both.
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> Result<bool, Error> {
    Ok(canonical(a)? == canonical(b)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn tpl(image: &str, hash: Option<&str>) -> PodTemplateSpec {
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("app".to_string(), "web".to_string());
        if let Some(h) = hash {
            labels.insert(POD_TEMPLATE_HASH_LABEL.to_string(), h.to_string());
        }
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn fnv_reference_vectors() {
        assert_eq!(fnv1a32(&[b""]), 0x811c_9dc5);
        assert_eq!(fnv1a32(&[b"a"]), 0xe40c_292c);
        assert_eq!(fnv1a32(&[b"foobar"]), 0xbf9c_f968);
    }

    #[test]
    fn safe_encode_matches_upstream_alphabet() {
        // '0'..'9' are bytes 48..57; 48 % 27 = 21 -> '4', as in rand.SafeEncodeString.
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
    }

    #[test]
    fn hash_is_stable_and_ignores_hash_label() {
        let a = compute_hash(&tpl("nginx:1", None), None).expect("hash");
        let b = compute_hash(&tpl("nginx:1", Some("zzz")), None).expect("hash");
        assert_eq!(a, b);
        assert!(!a.is_empty() && a.len() <= 10);
        assert!(a.bytes().all(|c| ALPHANUMS.contains(&c)));
        assert_ne!(a, compute_hash(&tpl("nginx:2", None), None).expect("hash"));
        assert_ne!(
            a,
            compute_hash(&tpl("nginx:1", None), Some(1)).expect("hash")
        );
        assert!(equal_ignore_hash(&tpl("nginx:1", Some("x")), &tpl("nginx:1", None)).expect("eq"));
        assert!(!equal_ignore_hash(&tpl("nginx:1", None), &tpl("nginx:2", None)).expect("eq"));
        // Empty vs missing label maps are the same template.
        let mut bare = tpl("nginx:1", None);
        bare.metadata = Some(ObjectMeta {
            labels: Some(Default::default()),
            ..Default::default()
        });
        let mut none = tpl("nginx:1", None);
        none.metadata = None;
        assert!(equal_ignore_hash(&bare, &none).expect("eq"));
    }
}
