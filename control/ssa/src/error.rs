//! The crate's error type and the apiserver's conflict wording.

use crate::managed::Operation;

/// A field the applier sets to a different value than the one owned by another
/// manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The other manager's name (`kubectl-client-side-apply`).
    pub manager: String,
    /// How the other manager wrote the field.
    pub operation: Operation,
    /// The other manager's apiVersion (`apps/v1`); upstream prints it for
    /// `Update` managers only.
    pub api_version: String,
    /// The subresource the other manager wrote through, if any.
    pub subresource: Option<String>,
    /// The field as upstream prints it (`.spec.replicas`,
    /// `.spec.template.spec.containers[name="web"].image`).
    pub field: String,
}

impl Conflict {
    /// The manager as the apiserver's `printManager` shows it:
    /// `"m"`, `"m" using apps/v1`, `"m" with subresource "status" using v1`.
    pub fn manager_description(&self) -> String {
        let mut out = quote(&self.manager);
        if let Some(sub) = &self.subresource {
            out.push_str(&format!(" with subresource {}", quote(sub)));
        }
        if self.operation == Operation::Update {
            out.push_str(&format!(" using {}", self.api_version));
        }
        out
    }

    /// The message of this conflict's `FieldManagerConflict` status cause:
    /// `conflict with "m" using apps/v1` (the cause's `field` is [`Conflict::field`]).
    pub fn cause_message(&self) -> String {
        format!("conflict with {}", self.manager_description())
    }

    /// The upstream manager identifier (`{"manager":"m","operation":"Update","apiVersion":"apps/v1"}`),
    /// by which the message groups and sorts conflicts.
    pub(crate) fn identifier(&self) -> String {
        crate::managed::identifier(
            &self.manager,
            self.operation,
            &self.api_version,
            self.subresource.as_deref(),
        )
    }
}

fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The 409 message the apiserver returns for these conflicts:
/// `Apply failed with 1 conflict: conflict with "m" using apps/v1: .spec.replicas`,
/// or for several, grouped by sorted manager,
/// `Apply failed with 2 conflicts: conflicts with "m":\n- .a\n- .b`.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [only] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            only.manager_description(),
            only.field
        );
    }
    let mut managers: Vec<(String, &Conflict)> =
        conflicts.iter().map(|c| (c.identifier(), c)).collect();
    managers.sort_by(|a, b| a.0.cmp(&b.0));
    managers.dedup_by(|a, b| a.0 == b.0);
    let mut lines = Vec::new();
    for (id, first) in managers {
        lines.push(format!("conflicts with {}:", first.manager_description()));
        for c in conflicts.iter().filter(|c| c.identifier() == id) {
            lines.push(format!("- {}", c.field));
        }
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

/// Everything that can go wrong in this crate. The comment on each variant
/// says which HTTP status the server should answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// 409 Conflict: the apply changes fields other managers own and `force` is
    /// not set. Build the Status causes from [`Conflict::cause_message`] and
    /// [`Conflict::field`].
    #[error("{}", conflict_message(.0))]
    Conflicts(Vec<Conflict>),
    /// 400: the applied configuration is unusable (not an object, a list
    /// element without its key, duplicate keys, managedFields set, ...).
    #[error("{0}")]
    BadRequest(String),
    /// 500 (upstream: "failed to decode managed fields"): the stored object's
    /// `metadata.managedFields` cannot be read.
    #[error("failed to decode managed fields: {0}")]
    InvalidManagedFields(String),
    /// A `fieldsV1` document that is not a valid field set.
    #[error("invalid fieldsV1: {0}")]
    InvalidFieldsV1(String),
}
