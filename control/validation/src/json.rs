//! Tolerant accessors over `serde_json::Value`. Validation reads objects that
//! may not have been normalized, so every accessor treats a missing key, a
//! `null` and a value of the wrong JSON type alike: as the Go zero value.

use serde_json::{Map, Value};

/// The value under `key`, unless absent or `null`.
pub(crate) fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_object()?.get(key).filter(|x| !x.is_null())
}

/// The value at a chain of keys.
pub(crate) fn get_in<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().try_fold(v, |cur, k| get(cur, k))
}

/// A string field, `""` when absent or not a string.
pub(crate) fn string<'a>(v: &'a Value, key: &str) -> &'a str {
    get(v, key).and_then(Value::as_str).unwrap_or("")
}

/// A string field, `None` when absent or not a string.
pub(crate) fn opt_string<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    get(v, key).and_then(Value::as_str)
}

/// A list field, empty when absent or not a list.
pub(crate) fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    get(v, key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// An object field.
pub(crate) fn object<'a>(v: &'a Value, key: &str) -> Option<&'a Map<String, Value>> {
    get(v, key).and_then(Value::as_object)
}

/// An integer field.
pub(crate) fn int(v: &Value, key: &str) -> Option<i64> {
    get(v, key).and_then(Value::as_i64)
}

/// A boolean field, `false` when absent.
pub(crate) fn flag(v: &Value, key: &str) -> bool {
    get(v, key).and_then(Value::as_bool).unwrap_or(false)
}

/// A `map[string]string` field as sorted pairs (non-string values read as "").
pub(crate) fn string_map<'a>(v: &'a Value, key: &str) -> Vec<(&'a str, &'a str)> {
    let mut pairs: Vec<(&str, &str)> = object(v, key)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    pairs.sort();
    pairs
}

/// The strings of a `[]string` field (non-strings read as "").
pub(crate) fn strings<'a>(v: &'a Value, key: &str) -> Vec<&'a str> {
    list(v, key)
        .iter()
        .map(|x| x.as_str().unwrap_or(""))
        .collect()
}

/// Go's zero-value test on JSON: null, "", 0, false, [] and {}.
pub(crate) fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// [`is_zero`], also for objects whose members are all zero.
fn is_deep_zero(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.values().all(is_deep_zero),
        other => is_zero(other),
    }
}

/// Semantic equality in the sense of `apiequality.Semantic.DeepEqual` on
/// decoded Go structs: a missing field equals its zero value (so `[]`,
/// `{}`, `""`, `0`, `false` and absent all compare equal).
pub(crate) fn semantic_eq(a: Option<&Value>, b: Option<&Value>) -> bool {
    let a = a.filter(|v| !is_deep_zero(v));
    let b = b.filter(|v| !is_deep_zero(v));
    match (a, b) {
        (None, None) => true,
        (Some(Value::Object(x)), Some(Value::Object(y))) => x
            .keys()
            .chain(y.keys())
            .all(|k| semantic_eq(x.get(k), y.get(k))),
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| semantic_eq(Some(p), Some(q)))
        }
        (Some(Value::Number(x)), Some(Value::Number(y))) => x.as_f64() == y.as_f64(),
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Paths (JSON-ish, `a.b[0].c`) at which two values differ semantically.
pub(crate) fn diff_paths(
    prefix: &str,
    a: Option<&Value>,
    b: Option<&Value>,
    out: &mut Vec<String>,
) {
    if semantic_eq(a, b) {
        return;
    }
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                diff_paths(&format!("{prefix}.{k}"), x.get(k), y.get(k), out);
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff_paths(&format!("{prefix}[{i}]"), Some(p), Some(q), out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

/// The value under `key`, created as `{}` when absent or null; `None` when
/// `v` is not an object or the key holds a non-object.
pub(crate) fn ensure<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    let map = v.as_object_mut()?;
    let slot = map.entry(key.to_string()).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    if slot.is_object() {
        Some(slot)
    } else {
        None
    }
}

/// The existing value under `key` (not null), mutably.
pub(crate) fn get_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    v.as_object_mut()?.get_mut(key).filter(|x| !x.is_null())
}

/// The existing list under `key`, mutably.
pub(crate) fn list_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Vec<Value>> {
    get_mut(v, key)?.as_array_mut()
}

/// Sets `key` when absent or null (a pointer field's default).
pub(crate) fn default_absent(v: &mut Value, key: &str, default: Value) {
    if let Some(map) = v.as_object_mut() {
        let slot = map.entry(key.to_string()).or_insert(Value::Null);
        if slot.is_null() {
            *slot = default;
        }
    }
}

/// Sets `key` when absent, null or zero ("" / 0 / false): a value field's default.
pub(crate) fn default_zero(v: &mut Value, key: &str, default: Value) {
    if let Some(map) = v.as_object_mut() {
        let slot = map.entry(key.to_string()).or_insert(Value::Null);
        if is_zero(slot) && !slot.is_array() && !slot.is_object() {
            *slot = default;
        }
    }
}

/// Sets `key` unconditionally (no-op when `v` is not an object).
pub(crate) fn set(v: &mut Value, key: &str, value: Value) {
    if let Some(map) = v.as_object_mut() {
        map.insert(key.to_string(), value);
    }
}

/// Removes `key` (no-op when `v` is not an object).
pub(crate) fn remove(v: &mut Value, key: &str) {
    if let Some(map) = v.as_object_mut() {
        map.remove(key);
    }
}

/// Removes `key` and returns its value.
pub(crate) fn take(v: &mut Value, key: &str) -> Option<Value> {
    v.as_object_mut().and_then(|map| map.remove(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn zero_equivalence() {
        assert!(semantic_eq(
            Some(&json!({"a": [], "b": ""})),
            Some(&json!({}))
        ));
        assert!(semantic_eq(None, Some(&json!({"x": false}))));
        assert!(!semantic_eq(Some(&json!({"a": 1})), Some(&json!({"a": 2}))));
        assert!(semantic_eq(Some(&json!(1.0)), Some(&json!(1))));
    }

    #[test]
    fn diffs() {
        let mut out = Vec::new();
        diff_paths(
            "spec",
            Some(&json!({"a": 1, "c": [{"x": 1}]})),
            Some(&json!({"a": 2, "c": [{"x": 2}]})),
            &mut out,
        );
        assert_eq!(out, vec!["spec.a", "spec.c[0].x"]);
    }

    #[test]
    fn defaults_helpers() {
        let mut v = json!({"a": "", "b": null, "c": 5});
        default_zero(&mut v, "a", json!("x"));
        default_absent(&mut v, "b", json!(1));
        default_absent(&mut v, "c", json!(1));
        default_zero(&mut v, "d", json!(true));
        assert_eq!(v, json!({"a": "x", "b": 1, "c": 5, "d": true}));
    }
}
