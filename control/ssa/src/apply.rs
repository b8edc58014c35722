//! The two write paths: server-side apply, and ownership tracking for every
//! other write (upstream `merge.Updater.Apply` / `Update` with the
//! apiserver's field-manager layers around them).

use jiff::Timestamp;
use serde_json::{Map, Value};
use sluice_smp::Schema;

use crate::error::{ApplyError, Conflict};
use crate::fieldset::FieldSet;
use crate::managed::{
    self, cap_update_managers, identifier, ManagedFieldsEntry, Managers, Operation,
};
use crate::path::path_to_string;
use crate::types::{pad_with_zero_structs, reset_fields, stripped_fields};
use crate::walk::{self, Comparison};

/// Upstream's manager for the fields of an object that has no managedFields
/// when it is first applied to, so the applier does not silently own them.
pub const BEFORE_FIRST_APPLY_MANAGER: &str = "before-first-apply";

/// RFC 3339 in whole seconds, UTC, as `metav1.Time` is written.
fn format_time(now: Timestamp) -> String {
    Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

fn api_version_of(obj: &Value) -> Option<&str> {
    obj.get("apiVersion").and_then(Value::as_str)
}

/// Compare two objects as the apiserver's Go types would see them, minus the
/// fields this write resets.
fn compare(schema: &Schema, old: &Value, new: &Value, reset: &FieldSet) -> Comparison {
    let (mut old, mut new) = (old.clone(), new.clone());
    pad_with_zero_structs(schema, &mut old);
    pad_with_zero_structs(schema, &mut new);
    let cmp = walk::compare(schema, &old, &new);
    Comparison {
        added: cmp.added.recursive_difference(reset),
        modified: cmp.modified.recursive_difference(reset),
        removed: cmp.removed.recursive_difference(reset),
    }
}

/// Keep `live`'s value of each reset top-level field in `merged`: the
/// apiserver's strategy restores them (status on the main resource, spec on
/// the status subresource), so an applied value there has no effect.
fn restore_reset_fields(merged: &mut Value, live: &Value, reset: &FieldSet) {
    let Value::Object(out) = merged else { return };
    for path in reset.paths() {
        let [crate::PathElement::Field(name)] = path.as_slice() else {
            continue;
        };
        match live.get(name) {
            Some(v) => {
                out.insert(name.clone(), v.clone());
            }
            None => {
                out.remove(name);
            }
        }
    }
}

/// Server-side apply to the main resource: see [`apply_to_subresource`].
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    schema: &Schema,
    now: Timestamp,
) -> Result<Value, ApplyError> {
    apply_to_subresource(live, applied, manager, force, None, schema, now)
}

/// Server-side apply: merge `applied` into `live` (`None`: the object does not
/// exist yet) on behalf of `manager`, and return the object to store, its
/// `metadata.managedFields` updated.
///
/// - Applied fields win; map-lists merge by key, set-lists by value, anything
///   else is replaced.
/// - Fields `manager` applied last time, does not apply now, and nobody else
///   owns, are removed.
/// - A field whose value changes and that another manager owns is a conflict:
///   [`ApplyError::Conflicts`] unless `force`, which moves it to `manager`.
/// - `manager`'s Apply entry becomes exactly the applied configuration's
///   fields (minus server-managed metadata and reset fields); other managers
///   lose what changed; empty entries go.
/// - When nothing changed, the object and the entries' times are left as they
///   are (a new entry gets `now`).
#[allow(clippy::too_many_arguments)]
pub fn apply_to_subresource(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    subresource: Option<&str>,
    schema: &Schema,
    now: Timestamp,
) -> Result<Value, ApplyError> {
    if !applied.is_object() {
        return Err(ApplyError::BadRequest(
            "the applied configuration must be an object".to_string(),
        ));
    }
    if managed::raw_managed_fields(applied).is_some() {
        return Err(ApplyError::BadRequest(
            "metadata.managedFields must be nil".to_string(),
        ));
    }
    let api_version = api_version_of(applied)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApplyError::BadRequest("apiVersion must be set".to_string()))?
        .to_string();
    if let Some(expected) = live.and_then(api_version_of) {
        if expected != api_version {
            return Err(ApplyError::BadRequest(format!(
                "Incorrect version specified in apply patch. Specified patch version: {api_version}, expected: {expected}"
            )));
        }
    }
    walk::validate_applied(schema, applied)?;

    let mut managers = match live {
        Some(obj) => managed::decode(obj)?,
        None => Managers::new(),
    };
    let mut live_obj = live.cloned().unwrap_or_else(|| Value::Object(Map::new()));
    managed::strip(&mut live_obj);
    let reset = reset_fields(schema, subresource);
    let strip = stripped_fields();
    let time = format_time(now);

    // An object written before anyone tracked ownership: its current fields
    // go to a placeholder manager first, so they can conflict.
    if managers.is_empty() && live.is_some() {
        let cmp = compare(schema, &Value::Object(Map::new()), &live_obj, &reset);
        let set = cmp.added.union(&cmp.modified).difference(&strip);
        if !set.is_empty() {
            let entry = ManagedFieldsEntry {
                manager: BEFORE_FIRST_APPLY_MANAGER.to_string(),
                operation: Operation::Update,
                api_version: api_version_of(&live_obj)
                    .unwrap_or(&api_version)
                    .to_string(),
                time: Some(time.clone()),
                subresource: None,
                fields: set,
            };
            managers.insert(entry.identifier(), entry);
        }
    }

    let mut merged = walk::merge(schema, &live_obj, applied);
    restore_reset_fields(&mut merged, &live_obj, &reset);

    let me = identifier(manager, Operation::Apply, "", subresource);
    let previous = managers.remove(&me);
    let last = previous
        .as_ref()
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let new_set = walk::field_set(schema, applied).recursive_difference(&reset);
    managers.insert(
        me.clone(),
        ManagedFieldsEntry {
            manager: manager.to_string(),
            operation: Operation::Apply,
            api_version: api_version.clone(),
            time: previous.as_ref().and_then(|e| e.time.clone()),
            subresource: subresource.map(str::to_string),
            fields: new_set,
        },
    );

    if !last.is_empty() {
        let everyone = managers
            .values()
            .fold(FieldSet::new(), |acc, e| acc.union(&e.fields));
        walk::prune(schema, &mut merged, &last, &everyone);
    }

    let cmp = compare(schema, &live_obj, &merged, &reset);
    let changed = cmp.modified.union(&cmp.added);
    let mut conflicts = Vec::new();
    for (id, entry) in managers.iter_mut() {
        if *id == me {
            continue;
        }
        let taken = entry.fields.intersection(&changed);
        for path in taken.paths() {
            conflicts.push(Conflict {
                manager: entry.manager.clone(),
                operation: entry.operation,
                api_version: entry.api_version.clone(),
                subresource: entry.subresource.clone(),
                field: path_to_string(&path),
            });
        }
        entry.fields = entry.fields.difference(&taken).difference(&cmp.removed);
    }
    if !force && !conflicts.is_empty() {
        return Err(ApplyError::Conflicts(conflicts));
    }

    let object_changed = merged != live_obj;
    if let Some(entry) = managers.get_mut(&me) {
        entry.fields = entry.fields.difference(&strip);
        if object_changed || entry.time.is_none() {
            entry.time = Some(time);
        }
    }
    let mut out = if object_changed { merged } else { live_obj };
    managed::set_managed_fields(&mut out, managers.into_values().collect());
    Ok(out)
}

/// Record ownership for a write that is not an apply (create, update, a
/// JSON/merge/strategic patch): `new` is the object about to be stored (after
/// defaulting, so defaulted fields are owned too), `old` the stored one
/// (`None` on create). Sets `new.metadata.managedFields`.
///
/// The fields the write added or changed become `manager`'s, in its Update
/// entry for `new`'s apiVersion and `subresource` (time `now`), and are taken
/// from everyone else; removed fields leave every entry; empty entries are
/// dropped; beyond ten Update entries the oldest merge into `ancient-changes`.
///
/// managedFields sent by the client, as the apiserver treats them (main
/// resource only; a subresource write always starts from `old`'s):
/// - a valid, non-empty list is taken as given, then this write is recorded
///   on top;
/// - `[]` (or a single empty entry) clears them: only this write's fields stay
///   owned;
/// - absent, or invalid: `old`'s entries are used (invalid ones there: none).
pub fn update_managed_fields(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    schema: &Schema,
    now: Timestamp,
) {
    if !new.is_object() {
        return;
    }
    let from_old = || old.map_or_else(Managers::new, |o| managed::decode(o).unwrap_or_default());
    let mut managers = if subresource.is_some() {
        from_old()
    } else if is_reset_request(managed::raw_managed_fields(new)) {
        Managers::new()
    } else {
        match managed::decode(new) {
            Ok(sent) if !sent.is_empty() => sent,
            _ => from_old(),
        }
    };
    managed::strip(new);
    let mut old_obj = old.cloned().unwrap_or_else(|| Value::Object(Map::new()));
    managed::strip(&mut old_obj);

    let reset = reset_fields(schema, subresource);
    let cmp = compare(schema, &old_obj, new, &reset);
    let changed = cmp.modified.union(&cmp.added);
    for entry in managers.values_mut() {
        entry.fields = entry.fields.difference(&changed).difference(&cmp.removed);
    }
    let mine = changed.difference(&stripped_fields());
    if !mine.is_empty() {
        let api_version = api_version_of(new)
            .or_else(|| old.and_then(api_version_of))
            .unwrap_or_default()
            .to_string();
        let id = identifier(manager, Operation::Update, &api_version, subresource);
        let previous = managers.remove(&id).map(|e| e.fields).unwrap_or_default();
        managers.insert(
            id,
            ManagedFieldsEntry {
                manager: manager.to_string(),
                operation: Operation::Update,
                api_version,
                time: Some(format_time(now)),
                subresource: subresource.map(str::to_string),
                fields: mine.union(&previous),
            },
        );
    }
    managers.retain(|_, e| !e.fields.is_empty());
    cap_update_managers(&mut managers);
    managed::set_managed_fields(new, managers.into_values().collect());
}

/// Upstream `isResetManagedFields`: an empty list, or one empty entry.
fn is_reset_request(raw: Option<&Value>) -> bool {
    match raw {
        Some(Value::Array(list)) => match list.as_slice() {
            [] => true,
            [Value::Object(only)] => only.is_empty(),
            _ => false,
        },
        _ => false,
    }
}

/// Drop `obj`'s managedFields when they are not valid (the apiserver does not
/// store entries it cannot read); returns whether it did.
pub fn reset_managed_fields_if_invalid(obj: &mut Value) -> bool {
    if managed::decode(obj).is_err() {
        managed::strip(obj);
        true
    } else {
        false
    }
}
