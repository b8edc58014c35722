//! The error type of patch application.

/// Why a strategic merge patch could not be applied.
///
/// Every variant names the path of the offending field in the patched object
/// (`<root>` for the top level; list elements as `[key=value]` or `[index]`)
/// and, where one is involved, the directive. The server maps all of them to
/// a 422/400 answer, as the apiserver does.
#[derive(Debug, thiserror::Error)]
pub enum SmpError {
    /// The request body is not a JSON object.
    #[error("strategic merge patch must be a JSON object, got {found}")]
    PatchNotObject {
        /// JSON type of the body.
        found: &'static str,
    },
    /// The stored object is not a JSON object.
    #[error("object to patch must be a JSON object, got {found}")]
    OriginalNotObject {
        /// JSON type of the stored value.
        found: &'static str,
    },
    /// A `$patch` directive with a value other than `replace`, `delete` or `merge`.
    #[error("{path}: unknown $patch directive {value}")]
    UnknownPatchDirective {
        /// Where the directive was found.
        path: String,
        /// The value as JSON text.
        value: String,
    },
    /// `$patch: merge` used as a list element, which strategic merge patch does not support.
    #[error("{path}: $patch: merge cannot be used as a list element")]
    MergeDirectiveInList {
        /// The list.
        path: String,
    },
    /// A list element (of the patch or of the stored list) lacks the merge key.
    #[error("{path}: list element {element} does not contain declared merge key {key:?}")]
    MissingMergeKey {
        /// The list.
        path: String,
        /// The merge key of the list.
        key: &'static str,
        /// The element as JSON text.
        element: String,
    },
    /// A list of objects is to be merged but the schema gives no merge key.
    #[error("{path}: cannot merge a list of objects without a merge key")]
    NoMergeKey {
        /// The list.
        path: String,
    },
    /// A merged list mixes objects and scalars, or holds lists.
    #[error("{path}: cannot merge list: {reason}")]
    BadListElements {
        /// The list.
        path: String,
        /// What is wrong with the elements.
        reason: &'static str,
    },
    /// A directive key that needs a `/<field>` suffix lacks it (`$setElementOrder`,
    /// `$deleteFromPrimitiveList`).
    #[error("{path}: directive key {key:?} must have the form {prefix}/<field>")]
    MalformedDirectiveKey {
        /// The map holding the key.
        path: String,
        /// The key as written.
        key: String,
        /// The directive prefix.
        prefix: &'static str,
    },
    /// A directive whose value must be a list is something else.
    #[error("{path}: {directive} must be a list, got {found}")]
    DirectiveNotList {
        /// The map holding the directive.
        path: String,
        /// The directive key as written (`$retainKeys`, `$setElementOrder/containers`, ...).
        directive: String,
        /// JSON type of the value.
        found: &'static str,
    },
    /// A field that a list directive applies to holds something other than a list.
    #[error("{path}: field used with {directive} must be a list, got {found}")]
    FieldNotList {
        /// The field.
        path: String,
        /// The directive key as written.
        directive: String,
        /// JSON type of the value.
        found: &'static str,
    },
    /// The patch list is not in the order its `$setElementOrder` list gives.
    #[error(
        "{path}: the order of the patch list does not match its $setElementOrder/{field} list"
    )]
    SetElementOrderMismatch {
        /// The map holding the list.
        path: String,
        /// The list field.
        field: String,
    },
    /// A field set by the patch is missing from the `$retainKeys` list.
    #[error("{path}: field {field:?} is set by the patch but not listed in $retainKeys")]
    NotInRetainKeys {
        /// The map holding the directive.
        path: String,
        /// The field.
        field: String,
    },
}

/// JSON type name of a value, for messages.
pub(crate) fn type_name(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}
