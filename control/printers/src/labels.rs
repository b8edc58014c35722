//! Label and label-selector rendering (`labels.FormatLabels`,
//! `metav1.LabelSelectorAsSelector(..).String()`).

use serde_json::Value;

use crate::json::{arr_at, get, str_at, str_map};

/// `labels.FormatLabels`: `k=v` pairs sorted by key, joined by `,`;
/// `<none>` for an empty or missing map.
pub(crate) fn format_labels(obj: &Value, path: &[&str]) -> String {
    let pairs = str_map(obj, path);
    if pairs.is_empty() {
        return "<none>".to_string();
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The string form of a `metav1.LabelSelector`, as the Deployment printer
/// shows it: requirements sorted by key, `k=v` for match labels,
/// `k in (a,b)`, `k notin (a,b)`, `k`, `!k` for expressions. A missing or
/// empty selector renders as `""`; an invalid one as `<invalid>`.
pub(crate) fn selector_string(selector: Option<&Value>) -> String {
    let Some(sel) = selector.filter(|v| v.is_object()) else {
        return String::new();
    };
    let mut reqs: Vec<(String, String)> = Vec::new();

    if let Some(labels) = get(sel, &["matchLabels"]) {
        let Some(map) = labels.as_object() else {
            return "<invalid>".to_string();
        };
        for (k, v) in map {
            let Some(v) = v.as_str() else {
                return "<invalid>".to_string();
            };
            reqs.push((k.clone(), format!("{k}={v}")));
        }
    }

    for expr in arr_at(sel, &["matchExpressions"]) {
        let key = str_at(expr, &["key"]);
        let mut values: Vec<&str> = Vec::new();
        for v in arr_at(expr, &["values"]) {
            match v.as_str() {
                Some(s) => values.push(s),
                None => return "<invalid>".to_string(),
            }
        }
        values.sort_unstable();
        if key.is_empty() {
            return "<invalid>".to_string();
        }
        let rendered = match str_at(expr, &["operator"]) {
            "In" | "NotIn" if values.is_empty() => return "<invalid>".to_string(),
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" | "DoesNotExist" if !values.is_empty() => return "<invalid>".to_string(),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => return "<invalid>".to_string(),
        };
        reqs.push((key.to_string(), rendered));
    }

    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    reqs.into_iter()
        .map(|(_, r)| r)
        .collect::<Vec<_>>()
        .join(",")
}
