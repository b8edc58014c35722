//! Namespaces: created Active and labelled with their name; deleting one deletes what is in it.

use serde_json::{json, Value};

use super::strategy::{DeleteMode, Strategy};
use super::DeleteOptions;

/// The Namespace strategy.
#[derive(Debug)]
pub struct NamespaceStrategy;

impl Strategy for NamespaceStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": "Active"});
        let name = obj
            .pointer("/metadata/name")
            .cloned()
            .unwrap_or(Value::Null);
        if let Some(m) = obj["metadata"].as_object_mut() {
            let labels = m.entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert("kubernetes.io/metadata.name".into(), name);
            }
        }
    }

    fn delete_mode(&self, _v: &Value, _opts: &DeleteOptions) -> DeleteMode {
        DeleteMode::NamespaceContents
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["status.phase"]
    }
}
