//! Label and field selectors, parsed from the query string as the apiserver does.
//!
//! Label selectors support `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` and `!k`.
//! Field selectors support `=`, `==` and `!=` on `metadata.name`, `metadata.namespace` and the
//! per-kind fields the apiserver exposes (`spec.nodeName`, `status.phase`, …).

use std::collections::BTreeMap;

use serde_json::Value;

/// One label requirement.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelReq {
    /// key in values (also `=`/`==`).
    In(String, Vec<String>),
    /// key notin values (also `!=`; matches when the key is absent).
    NotIn(String, Vec<String>),
    /// key exists.
    Exists(String),
    /// key does not exist.
    NotExists(String),
}

/// A parsed label selector (requirements ANDed).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LabelSelector(pub Vec<LabelReq>);

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn set_values(s: &str) -> Result<Vec<String>, String> {
    let s = s.trim();
    let inner = s
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised set, got {s:?}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    /// Parses `labelSelector`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let p = part.trim();
            if p.is_empty() {
                continue;
            }
            if let Some(k) = p.strip_prefix('!') {
                reqs.push(LabelReq::NotExists(k.trim().to_string()));
            } else if let Some((k, v)) = p.split_once("!=") {
                reqs.push(LabelReq::NotIn(k.trim().into(), vec![v.trim().into()]));
            } else if let Some((k, v)) = p.split_once("==") {
                reqs.push(LabelReq::In(k.trim().into(), vec![v.trim().into()]));
            } else if let Some((k, v)) = p.split_once('=') {
                reqs.push(LabelReq::In(k.trim().into(), vec![v.trim().into()]));
            } else if let Some((k, v)) = p.split_once(" notin ") {
                reqs.push(LabelReq::NotIn(k.trim().into(), set_values(v)?));
            } else if let Some((k, v)) = p.split_once(" in ") {
                reqs.push(LabelReq::In(k.trim().into(), set_values(v)?));
            } else if p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            {
                reqs.push(LabelReq::Exists(p.to_string()));
            } else {
                return Err(format!("unable to parse requirement: {p:?}"));
            }
        }
        Ok(LabelSelector(reqs))
    }

    /// The selector a Service's or Deployment's `matchLabels`-style map stands for.
    pub fn from_map(m: &BTreeMap<String, String>) -> Self {
        LabelSelector(
            m.iter()
                .map(|(k, v)| LabelReq::In(k.clone(), vec![v.clone()]))
                .collect(),
        )
    }

    /// True when the selector has no requirement (matches everything).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Matches a label map.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            LabelReq::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            LabelReq::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            LabelReq::Exists(k) => labels.contains_key(k),
            LabelReq::NotExists(k) => !labels.contains_key(k),
        })
    }
}

/// Labels of a JSON object.
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(|l| l.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// A parsed field selector (requirements ANDed).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldSelector(pub Vec<(String, bool, String)>);

/// Fields the apiserver lets clients select on, per kind (besides metadata.name/namespace).
fn selectable(kind: &str, field: &str) -> bool {
    matches!(field, "metadata.name" | "metadata.namespace")
        || match kind {
            "Pod" => matches!(
                field,
                "spec.nodeName"
                    | "spec.restartPolicy"
                    | "spec.schedulerName"
                    | "spec.serviceAccountName"
                    | "spec.hostNetwork"
                    | "status.phase"
                    | "status.podIP"
                    | "status.nominatedNodeName"
            ),
            "Node" => field == "spec.unschedulable",
            "Namespace" => field == "status.phase",
            "Service" => field == "spec.clusterIP" || field == "spec.type",
            _ => false,
        }
}

impl FieldSelector {
    /// Parses `fieldSelector` for a kind; unsupported fields are errors (400), as on the apiserver.
    pub fn parse(kind: &str, s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in s.split(',') {
            let p = part.trim();
            if p.is_empty() {
                continue;
            }
            let (k, eq, v) = if let Some((k, v)) = p.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = p.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = p.split_once('=') {
                (k, true, v)
            } else {
                return Err(format!("invalid selector: '{p}'; can't understand '{p}'"));
            };
            let k = k.trim();
            if !selectable(kind, k) {
                return Err(format!("field label not supported: {k}"));
            }
            reqs.push((k.to_string(), eq, v.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when every requirement can be answered from the object's namespace and name.
    pub fn only_identity(&self) -> bool {
        self.0
            .iter()
            .all(|(k, _, _)| k == "metadata.name" || k == "metadata.namespace")
    }

    /// Matches using the object's identity and, when needed, its JSON.
    pub fn matches(&self, ns: Option<&str>, name: &str, obj: Option<&Value>) -> bool {
        self.0.iter().all(|(k, eq, want)| {
            let got: String = match k.as_str() {
                "metadata.name" => name.to_string(),
                "metadata.namespace" => ns.unwrap_or("").to_string(),
                path => {
                    let ptr = format!("/{}", path.replace('.', "/"));
                    match obj.and_then(|o| o.pointer(&ptr)) {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Bool(b)) => b.to_string(),
                        Some(Value::Null) | None => String::new(),
                        Some(other) => other.to_string(),
                    }
                }
            };
            (got == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors() {
        let s = LabelSelector::parse("app=web,tier!=db,env in (prod, dev),!legacy,team").unwrap();
        assert!(s.matches(&l(&[("app", "web"), ("env", "dev"), ("team", "x")])));
        assert!(!s.matches(&l(&[("app", "web"), ("env", "qa"), ("team", "x")])));
        assert!(!s.matches(&l(&[
            ("app", "web"),
            ("env", "dev"),
            ("team", "x"),
            ("legacy", "1")
        ])));
        assert!(!s.matches(&l(&[
            ("app", "web"),
            ("env", "dev"),
            ("team", "x"),
            ("tier", "db")
        ])));
        assert!(!s.matches(&l(&[("app", "web"), ("env", "dev")])));
        let n = LabelSelector::parse("env notin (a,b)").unwrap();
        assert!(n.matches(&l(&[])));
        assert!(!n.matches(&l(&[("env", "a")])));
        assert!(LabelSelector::parse("").unwrap().is_empty());
        assert!(LabelSelector::parse("a b c").is_err());
    }

    #[test]
    fn field_selectors() {
        let f = FieldSelector::parse("Pod", "metadata.name=web,spec.nodeName!=n2").unwrap();
        let pod = serde_json::json!({"spec": {"nodeName": "n1"}});
        assert!(f.matches(Some("default"), "web", Some(&pod)));
        assert!(!f.matches(Some("default"), "api", Some(&pod)));
        let on_n2 = serde_json::json!({"spec": {"nodeName": "n2"}});
        assert!(!f.matches(Some("default"), "web", Some(&on_n2)));
        assert!(!f.only_identity());
        assert!(FieldSelector::parse("Pod", "metadata.name==x")
            .unwrap()
            .only_identity());
        assert_eq!(
            FieldSelector::parse("Service", "spec.nodeName=x").unwrap_err(),
            "field label not supported: spec.nodeName"
        );
        // Unscheduled pods have an empty nodeName.
        let f = FieldSelector::parse("Pod", "spec.nodeName=").unwrap();
        assert!(f.matches(None, "p", Some(&serde_json::json!({"spec": {}}))));
    }
}
