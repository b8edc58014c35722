//! Field ownership (`metadata.managedFields`) on every write, and server-side apply.
//!
//! The manager of a write is the request's `fieldManager`, or the first part of its
//! User-Agent as upstream derives it (`kubectl-client-side-apply/v1.32…` → that prefix), or
//! `sluice-control` for the in-process controllers. The API handler sets it for the request
//! with [`with_field_manager`]; the registry reads it when it records a write. Ownership and
//! apply merges are `sluice-ssa`'s, over the kind's merge schema from `sluice-smp`.

use std::future::Future;

use serde_json::Value;
use sluice_smp::Schema;

use crate::resources::Resource;
use crate::status::{ApiError, Cause};

tokio::task_local! {
    static FIELD_MANAGER: String;
}

/// The manager of writes made outside any request (the controllers).
pub const IN_PROCESS_MANAGER: &str = "sluice-control";

/// Runs `fut` (the handling of one request) with `manager` as the field manager of its writes.
pub async fn with_field_manager<F: Future>(manager: String, fut: F) -> F::Output {
    FIELD_MANAGER.scope(manager, fut).await
}

/// The field manager of the write being served.
pub fn field_manager() -> String {
    FIELD_MANAGER
        .try_with(Clone::clone)
        .unwrap_or_else(|_| IN_PROCESS_MANAGER.to_string())
}

/// The manager upstream derives when a request names none: the User-Agent up to its first `/`.
pub fn manager_from_user_agent(ua: &str) -> String {
    let m = ua.split('/').next().unwrap_or("").trim();
    if m.is_empty() {
        IN_PROCESS_MANAGER.to_string()
    } else {
        m.chars().take(128).collect()
    }
}

static NO_MERGE_KEYS: Schema = Schema::new(&[]);

/// The kind's merge schema (no merge keys when the kind has none listed).
pub fn schema_of(res: &Resource) -> &'static Schema {
    sluice_smp::schema_for(res.group, res.kind).unwrap_or(&NO_MERGE_KEYS)
}

/// Records the write of `new` over `old` (None on create) as the current manager's.
pub fn record_update(res: &Resource, old: Option<&Value>, new: &mut Value, sub: Option<&str>) {
    sluice_ssa::update_managed_fields(
        old,
        new,
        &field_manager(),
        sub,
        schema_of(res),
        jiff::Timestamp::now(),
    );
}

/// Merges an applied configuration into the live object (None: not there yet) for the current
/// manager; conflicts are a 409 naming each field and its manager, as the apiserver answers.
pub fn merge_apply(
    res: &Resource,
    name: &str,
    live: Option<&Value>,
    applied: &Value,
    force: bool,
    sub: Option<&str>,
) -> Result<Value, ApiError> {
    let manager = field_manager();
    sluice_ssa::apply_to_subresource(
        live,
        applied,
        &manager,
        force,
        sub,
        schema_of(res),
        jiff::Timestamp::now(),
    )
    .map_err(|e| match &e {
        sluice_ssa::ApplyError::Conflicts(cs) => {
            let mut err = ApiError::new(409, "Conflict", e.to_string()).about(res, name);
            err.details_mut().causes = cs
                .iter()
                .map(|c| Cause {
                    reason: "FieldManagerConflict".into(),
                    message: c.cause_message(),
                    field: c.field.clone(),
                })
                .collect();
            err
        }
        sluice_ssa::ApplyError::BadRequest(m) => ApiError::bad_request(m.clone()),
        other => ApiError::internal(other.to_string()),
    })
}
