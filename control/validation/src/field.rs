//! `field.Error` of apimachinery: error types, paths and the exact message
//! text, including the Go rendering of the offending value (`%q` strings,
//! `map[string]string{...}`, `[]string{...}`, and the few Go structs that
//! Kubernetes prints verbatim).

use std::fmt;

use serde_json::Value;

/// Kubernetes `field.ErrorType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// A required field is missing (`Required value`).
    Required,
    /// The value is malformed or out of range (`Invalid value`).
    Invalid,
    /// The value is not one of an enumerated set (`Unsupported value`).
    NotSupported,
    /// The value collides with another one that must be unique (`Duplicate value`).
    Duplicate,
    /// The field may not be set or changed (`Forbidden`).
    Forbidden,
    /// The value is longer than allowed (`Too long`).
    TooLong,
    /// The list has more items than allowed (`Too many`).
    TooMany,
    /// A reference names something that does not exist (`Not found`), e.g. a
    /// volume mount naming an undeclared volume.
    NotFound,
}

impl ErrorType {
    /// The text Kubernetes prints for this type (`ErrorType.String()`).
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorType::Required => "Required value",
            ErrorType::Invalid => "Invalid value",
            ErrorType::NotSupported => "Unsupported value",
            ErrorType::Duplicate => "Duplicate value",
            ErrorType::Forbidden => "Forbidden",
            ErrorType::TooLong => "Too long",
            ErrorType::TooMany => "Too many",
            ErrorType::NotFound => "Not found",
        }
    }

    /// The `Status.details.causes[].reason` string (`metav1.CauseType`).
    pub fn reason(&self) -> &'static str {
        match self {
            ErrorType::Required => "FieldValueRequired",
            ErrorType::Invalid => "FieldValueInvalid",
            ErrorType::NotSupported => "FieldValueNotSupported",
            ErrorType::Duplicate => "FieldValueDuplicate",
            ErrorType::Forbidden => "FieldValueForbidden",
            ErrorType::TooLong => "FieldValueTooLong",
            ErrorType::TooMany => "FieldValueTooMany",
            ErrorType::NotFound => "FieldValueNotFound",
        }
    }
}

impl fmt::Display for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One validation error, the Rust twin of apimachinery's `field.Error`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// The field path, e.g. `spec.ports[0].port` or `metadata.annotations[a/b]`.
    pub field: String,
    /// What kind of error this is.
    pub error_type: ErrorType,
    /// The offending value; `None` when Kubernetes omits it from the message
    /// (always for `Required`, `Forbidden` and `TooLong`).
    pub value: Option<Value>,
    /// The explanation after the value; may be empty.
    pub detail: String,
}

impl FieldError {
    /// `field.Required(path, detail)`.
    pub fn required(field: impl AsRef<str>, detail: impl Into<String>) -> FieldError {
        FieldError::new(field, ErrorType::Required, None, detail)
    }

    /// `field.Invalid(path, value, detail)`.
    pub fn invalid(field: impl AsRef<str>, value: Value, detail: impl Into<String>) -> FieldError {
        FieldError::new(field, ErrorType::Invalid, Some(value), detail)
    }

    /// `field.NotSupported(path, value, validValues)`: the detail lists the
    /// supported values, each quoted, in the order given.
    pub fn not_supported(field: impl AsRef<str>, value: Value, supported: &[&str]) -> FieldError {
        let detail = if supported.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
            format!("supported values: {}", quoted.join(", "))
        };
        FieldError::new(field, ErrorType::NotSupported, Some(value), detail)
    }

    /// `field.Duplicate(path, value)`.
    pub fn duplicate(field: impl AsRef<str>, value: Value) -> FieldError {
        FieldError::new(field, ErrorType::Duplicate, Some(value), "")
    }

    /// `field.Forbidden(path, detail)`.
    pub fn forbidden(field: impl AsRef<str>, detail: impl Into<String>) -> FieldError {
        FieldError::new(field, ErrorType::Forbidden, None, detail)
    }

    /// `field.TooLong(path, value, maxLength)` (the value is never printed).
    pub fn too_long(field: impl AsRef<str>, max_length: usize) -> FieldError {
        let unit = if max_length == 1 { "byte" } else { "bytes" };
        FieldError::new(
            field,
            ErrorType::TooLong,
            None,
            format!("may not be more than {max_length} {unit}"),
        )
    }

    /// `field.TooMany(path, actualQuantity, maxQuantity)`.
    pub fn too_many(field: impl AsRef<str>, actual: usize, max: usize) -> FieldError {
        let unit = if max == 1 { "item" } else { "items" };
        FieldError::new(
            field,
            ErrorType::TooMany,
            Some(Value::from(actual)),
            format!("must have at most {max} {unit}"),
        )
    }

    /// `field.NotFound(path, value)`.
    pub fn not_found(field: impl AsRef<str>, value: Value) -> FieldError {
        FieldError::new(field, ErrorType::NotFound, Some(value), "")
    }

    fn new(
        field: impl AsRef<str>,
        error_type: ErrorType,
        value: Option<Value>,
        detail: impl Into<String>,
    ) -> FieldError {
        FieldError {
            field: field.as_ref().to_string(),
            error_type,
            value,
            detail: detail.into(),
        }
    }

    /// Kubernetes' full text (`field.Error.Error()`), e.g.
    /// `spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive`.
    pub fn message(&self) -> String {
        format!("{}: {}", self.field, self.body())
    }

    /// The text without the field path (`field.Error.ErrorBody()`): what the
    /// apiserver puts in `Status.details.causes[].message`.
    pub fn body(&self) -> String {
        let mut s = self.error_type.as_str().to_string();
        let omit = matches!(
            self.error_type,
            ErrorType::Required | ErrorType::Forbidden | ErrorType::TooLong
        );
        if !omit {
            if let Some(v) = &self.value {
                s.push_str(": ");
                s.push_str(&render_value(v));
            }
        }
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }

    /// The apiserver's `reason` for `Status.details.causes[].reason`.
    pub fn reason(&self) -> &'static str {
        self.error_type.reason()
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for FieldError {}

/// The aggregate text of an error list (`ErrorList.ToAggregate().Error()`):
/// duplicates (same message) are dropped, one error prints bare, several print
/// as `[a, b]`. Empty for an empty list.
pub fn aggregate_message(errors: &[FieldError]) -> String {
    let mut seen = std::collections::HashSet::new();
    let mut msgs = Vec::new();
    for e in errors {
        let m = e.message();
        if seen.insert(m.clone()) {
            msgs.push(m);
        }
    }
    match msgs.len() {
        0 => String::new(),
        1 => msgs.remove(0),
        _ => format!("[{}]", msgs.join(", ")),
    }
}

/// A field path under construction (`field.Path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Path(String);

impl Path {
    pub(crate) fn new(root: &str) -> Path {
        Path(root.to_string())
    }

    pub(crate) fn child(&self, name: &str) -> Path {
        if self.0.is_empty() {
            Path(name.to_string())
        } else {
            Path(format!("{}.{}", self.0, name))
        }
    }

    pub(crate) fn index(&self, i: usize) -> Path {
        Path(format!("{}[{}]", self.0, i))
    }

    pub(crate) fn key(&self, k: &str) -> Path {
        Path(format!("{}[{}]", self.0, k))
    }
}

impl AsRef<str> for Path {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Go's `strconv.Quote`.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{07}' => out.push_str("\\a"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\u{0b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => {
                let n = c as u32;
                if n <= 0xffff {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// How Kubernetes prints a bad value: scalars with `%v`/`%q`, and the Go
/// `%#v` syntax for the composite values validation reports.
pub(crate) fn render_value(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => go_quote(s),
        Value::Array(items) => {
            if items.is_empty() {
                "[]string(nil)".to_string()
            } else if items.iter().all(Value::is_string) {
                go_string_slice(items)
            } else {
                Value::Array(items.clone()).to_string()
            }
        }
        Value::Object(map) => {
            let keys: Vec<&str> = map.keys().map(String::as_str).collect();
            let only = |allowed: &[&str]| keys.iter().all(|k| allowed.contains(k));
            if !keys.is_empty() && only(&["matchLabels", "matchExpressions"]) {
                go_label_selector(v)
            } else if keys.len() == 2 && only(&["port", "protocol"]) {
                go_service_port_key(v)
            } else if keys.contains(&"effect") && only(&["key", "value", "effect", "timeAdded"]) {
                go_taint(v)
            } else if map.values().all(Value::is_string) {
                go_string_map(map)
            } else {
                v.to_string()
            }
        }
    }
}

fn go_string_slice(items: &[Value]) -> String {
    let parts: Vec<String> = items
        .iter()
        .map(|i| go_quote(i.as_str().unwrap_or_default()))
        .collect();
    format!("[]string{{{}}}", parts.join(", "))
}

fn go_string_map(map: &serde_json::Map<String, Value>) -> String {
    if map.is_empty() {
        return "map[string]string(nil)".to_string();
    }
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let parts: Vec<String> = entries
        .iter()
        .map(|(k, v)| {
            format!(
                "{}:{}",
                go_quote(k),
                go_quote(v.as_str().unwrap_or_default())
            )
        })
        .collect();
    format!("map[string]string{{{}}}", parts.join(", "))
}

fn go_label_selector(v: &Value) -> String {
    let labels = match v.get("matchLabels").and_then(Value::as_object) {
        Some(m) if !m.is_empty() => go_string_map(m),
        _ => "map[string]string(nil)".to_string(),
    };
    let exprs = match v.get("matchExpressions").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => {
            let parts: Vec<String> = list
                .iter()
                .map(|e| {
                    let values = match e.get("values").and_then(Value::as_array) {
                        Some(vals) if !vals.is_empty() => go_string_slice(vals),
                        _ => "[]string(nil)".to_string(),
                    };
                    format!(
                        "v1.LabelSelectorRequirement{{Key:{}, Operator:{}, Values:{}}}",
                        go_quote(e.get("key").and_then(Value::as_str).unwrap_or_default()),
                        go_quote(
                            e.get("operator")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                        ),
                        values
                    )
                })
                .collect();
            format!("[]v1.LabelSelectorRequirement{{{}}}", parts.join(", "))
        }
        _ => "[]v1.LabelSelectorRequirement(nil)".to_string(),
    };
    format!("v1.LabelSelector{{MatchLabels:{labels}, MatchExpressions:{exprs}}}")
}

fn go_service_port_key(v: &Value) -> String {
    format!(
        "core.ServicePort{{Name:\"\", Protocol:{}, AppProtocol:(*string)(nil), Port:{}, \
         TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}",
        go_quote(
            v.get("protocol")
                .and_then(Value::as_str)
                .unwrap_or_default()
        ),
        v.get("port").and_then(Value::as_i64).unwrap_or(0)
    )
}

fn go_taint(v: &Value) -> String {
    let s = |k: &str| go_quote(v.get(k).and_then(Value::as_str).unwrap_or_default());
    let time = match v.get("timeAdded").and_then(Value::as_str) {
        Some(t) => t.to_string(),
        None => "(*v1.Time)(nil)".to_string(),
    };
    format!(
        "core.Taint{{Key:{}, Value:{}, Effect:{}, TimeAdded:{}}}",
        s("key"),
        s("value"),
        s("effect"),
        time
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quote_like_go() {
        assert_eq!(go_quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        assert_eq!(go_quote("é"), "\"é\"");
        assert_eq!(go_quote("\u{1}"), "\"\\x01\"");
    }

    #[test]
    fn render_composites() {
        assert_eq!(
            render_value(&json!({"b": "2", "a": "1"})),
            r#"map[string]string{"a":"1", "b":"2"}"#
        );
        assert_eq!(render_value(&json!(["x", "y"])), r#"[]string{"x", "y"}"#);
        assert_eq!(render_value(&json!([])), "[]string(nil)");
        assert_eq!(
            render_value(&json!({"matchLabels": {"app": "nginx2"}})),
            r#"v1.LabelSelector{MatchLabels:map[string]string{"app":"nginx2"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}"#
        );
    }

    #[test]
    fn paths() {
        let p = Path::new("metadata").child("annotations").key("a/b");
        assert_eq!(p.as_ref(), "metadata.annotations[a/b]");
        assert_eq!(
            Path::new("spec").child("ports").index(2).as_ref(),
            "spec.ports[2]"
        );
    }

    #[test]
    fn bodies() {
        assert_eq!(
            FieldError::too_long("x", 262144).body(),
            "Too long: may not be more than 262144 bytes"
        );
        assert_eq!(
            FieldError::too_many("x", 1001, 1000).body(),
            "Too many: 1001: must have at most 1000 items"
        );
        assert_eq!(FieldError::required("x", "").body(), "Required value");
        assert_eq!(
            FieldError::not_found("x", json!("v")).body(),
            "Not found: \"v\""
        );
    }
}
