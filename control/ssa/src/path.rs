//! Path elements: how one step into an object is named, ordered and printed.
//!
//! The four kinds and their order (field < key < value < index, then by
//! content) are structured-merge-diff's `fieldpath.PathElement`; the order
//! matters because it is the order entries appear in `fieldsV1` and the order
//! conflicts are listed in.

use std::cmp::Ordering;
use std::fmt;

use serde_json::Value;

/// One step from a value to a child value.
#[derive(Debug, Clone)]
pub enum PathElement {
    /// A field of an object (`f:name`), or a key of a granular map.
    Field(String),
    /// The element of a `listType=map` list whose key fields have these
    /// values (`k:{"name":"web"}`); sorted by field name.
    Key(Vec<(String, Value)>),
    /// The element of a `listType=set` list with this value (`v:"a"`).
    Value(Value),
    /// An element of a list by position (`i:3`). Never produced here (every
    /// list of the served kinds is atomic, a set or a map), but accepted when
    /// parsing `fieldsV1` written elsewhere.
    Index(usize),
}

impl PathElement {
    /// A key element from unsorted `(field, value)` pairs.
    pub fn key(mut fields: Vec<(String, Value)>) -> PathElement {
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        PathElement::Key(fields)
    }

    fn rank(&self) -> u8 {
        match self {
            PathElement::Field(_) => 0,
            PathElement::Key(_) => 1,
            PathElement::Value(_) => 2,
            PathElement::Index(_) => 3,
        }
    }
}

impl Ord for PathElement {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (PathElement::Field(a), PathElement::Field(b)) => a.cmp(b),
            (PathElement::Key(a), PathElement::Key(b)) => compare_field_lists(a, b),
            (PathElement::Value(a), PathElement::Value(b)) => compare_values(a, b),
            (PathElement::Index(a), PathElement::Index(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for PathElement {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for PathElement {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for PathElement {}

/// Upstream `FieldList.Compare`: pairwise by name then value, shorter first.
fn compare_field_lists(a: &[(String, Value)], b: &[(String, Value)]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let c = x.0.cmp(&y.0).then_with(|| compare_values(&x.1, &y.1));
        if c != Ordering::Equal {
            return c;
        }
    }
    a.len().cmp(&b.len())
}

/// Upstream `value.Compare`: numbers (ints and floats compared numerically) <
/// strings < bools < lists < maps < null.
pub(crate) fn compare_values(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Number(_) => 0,
            Value::String(_) => 1,
            Value::Bool(_) => 2,
            Value::Array(_) => 3,
            Value::Object(_) => 4,
            Value::Null => 5,
        }
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i.cmp(&j),
            _ => {
                let (f, g) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
                f.total_cmp(&g)
            }
        },
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let c = compare_values(p, q);
                if c != Ordering::Equal {
                    return c;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => {
            // Upstream zips the two maps in lexical key order; a key only one
            // side has makes that side the greater one.
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let c = match (x.get(key), y.get(key)) {
                    (Some(p), Some(q)) => compare_values(p, q),
                    (None, _) => Ordering::Greater,
                    (_, None) => Ordering::Less,
                };
                if c != Ordering::Equal {
                    return c;
                }
            }
            Ordering::Equal
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

/// A value as upstream's `value.ToString` prints it in conflict paths:
/// strings quoted, everything else bare.
fn value_to_string(v: &Value) -> String {
    match v {
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(value_to_string).collect();
            format!("[{}]", parts.join(","))
        }
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", value_to_string(v)))
            .collect::<Vec<_>>()
            .join(""),
        other => other.to_string(),
    }
}

impl fmt::Display for PathElement {
    /// Upstream's human-readable form: `.name`, `[name="web"]`, `[=value]`, `[3]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathElement::Field(name) => write!(f, ".{name}"),
            PathElement::Key(fields) => {
                let parts: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| format!("{k}={}", value_to_string(v)))
                    .collect();
                write!(f, "[{}]", parts.join(","))
            }
            PathElement::Value(v) => write!(f, "[={}]", value_to_string(v)),
            PathElement::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// A path as upstream prints it: its elements concatenated
/// (`.spec.template.spec.containers[name="web"].image`).
pub fn path_to_string(path: &[PathElement]) -> String {
    path.iter().map(ToString::to_string).collect()
}

/// Escape as Go's `encoding/json` does: `<`, `>`, `&`, U+2028 and U+2029 become
/// `\u` escapes. Applied to JSON text, where these characters only occur
/// inside strings, so the replacement cannot change the structure.
pub(crate) fn go_json_escape(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// The `fieldsV1` key of an element: `f:name`, `k:{"name":"web"}`, `v:"a"`, `i:3`.
pub(crate) fn serialize_element(pe: &PathElement) -> String {
    match pe {
        PathElement::Field(name) => format!("f:{name}"),
        PathElement::Key(fields) => {
            let parts: Vec<String> = fields
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}:{}",
                        Value::String(k.clone()),
                        go_json_escape(&v.to_string())
                    )
                })
                .collect();
            format!("k:{{{}}}", parts.join(","))
        }
        PathElement::Value(v) => format!("v:{}", go_json_escape(&v.to_string())),
        PathElement::Index(i) => format!("i:{i}"),
    }
}

/// Parse a `fieldsV1` key. `Ok(None)` for an unknown element type, which
/// upstream skips so newer writers do not break older readers.
pub(crate) fn parse_element(s: &str) -> Result<Option<PathElement>, String> {
    let (kind, rest) = match (s.get(..1), s.get(1..2), s.get(2..)) {
        (Some(kind), Some(":"), Some(rest)) => (kind, rest),
        _ => return Err(format!("invalid path element {s:?}")),
    };
    match kind {
        "f" => Ok(Some(PathElement::Field(rest.to_string()))),
        "v" => serde_json::from_str(rest)
            .map(|v| Some(PathElement::Value(v)))
            .map_err(|e| format!("invalid value in path element {s:?}: {e}")),
        "k" => match serde_json::from_str::<Value>(rest) {
            Ok(Value::Object(map)) => Ok(Some(PathElement::key(map.into_iter().collect()))),
            Ok(_) => Err(format!("key path element {s:?} is not an object")),
            Err(e) => Err(format!("invalid key in path element {s:?}: {e}")),
        },
        "i" => rest
            .parse()
            .map(|i| Some(PathElement::Index(i)))
            .map_err(|e| format!("invalid index in path element {s:?}: {e}")),
        _ => Ok(None),
    }
}
