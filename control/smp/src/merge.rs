//! The strategic merge patch algorithm.
//!
//! The structure follows apimachinery's `strategicpatch` package (server side:
//! parallel lists are merged and unmatched nulls are dropped), re-expressed on
//! owned `serde_json` values. Processing one map of the patch goes:
//!
//! 1. `$patch` (`replace`, `delete`, `merge`) decides the map as a whole;
//! 2. `$retainKeys` prunes the stored map to the listed keys;
//! 3. each `$setElementOrder/<list>` merges `<list>` right away and orders the result;
//! 4. the remaining keys merge recursively (`null` deletes);
//! 5. `$deleteFromPrimitiveList/<list>` removes scalars from `<list>`.
//!
//! Values the stored object does not have yet (new keys, new list elements,
//! values replacing one of another JSON type) are "cleaned" by patching an
//! empty value with them, so that directives and `null`s never reach the result.

use serde_json::{Map, Value};

use crate::error::{type_name, SmpError};
use crate::schema::{lookup, Field, ListStrategy, Schema};

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList";

type Object = Map<String, Value>;

/// Apply a strategic merge patch. `original` is the stored object, `patch` the request body.
///
/// The result is a new value; neither input is modified. A top-level
/// `{"$patch": "delete"}` yields an empty object, as in apimachinery.
pub fn strategic_merge_patch(
    original: &Value,
    patch: &Value,
    schema: &Schema,
) -> Result<Value, SmpError> {
    let Value::Object(patch) = patch else {
        return Err(SmpError::PatchNotObject {
            found: type_name(patch),
        });
    };
    let Value::Object(original) = original else {
        return Err(SmpError::OriginalNotObject {
            found: type_name(original),
        });
    };
    let merged = merge_map(Some(original.clone()), patch, schema.root(), Path::Root)?;
    Ok(Value::Object(merged.unwrap_or_default()))
}

/// Where in the object the merge is, for error messages. Built on the stack and
/// rendered only when an error is reported.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Elem(&'a Path<'a>, &'static str, &'a Value),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        if out.is_empty() {
            out.push_str("<root>");
        }
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Path::Root => {}
            Path::Key(parent, key) => {
                parent.write(out);
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Path::Elem(parent, key, value) => {
                parent.write(out);
                out.push('[');
                out.push_str(key);
                out.push('=');
                match value {
                    Value::String(text) => out.push_str(text),
                    other => out.push_str(&other.to_string()),
                }
                out.push(']');
            }
            Path::Index(parent, index) => {
                parent.write(out);
                out.push('[');
                out.push_str(&index.to_string());
                out.push(']');
            }
        }
    }
}

/// Fields of the value held by `field` (none when the schema does not know it).
fn children(field: Option<&'static Field>) -> &'static [Field] {
    field.map_or(&[], |field| field.children)
}

fn strategy_of(field: Option<&'static Field>) -> ListStrategy {
    field.map_or(ListStrategy::Replace, |field| field.list)
}

/// Merge patch map `patch` into `original` (`None`: no stored value).
/// `Ok(None)` means the map is deleted (`$patch: delete`).
fn merge_map(
    original: Option<Object>,
    patch: &Object,
    fields: &'static [Field],
    path: Path<'_>,
) -> Result<Option<Object>, SmpError> {
    if let Some(directive) = patch.get(PATCH) {
        match directive.as_str() {
            Some("replace") => {
                let mut rest = patch.clone();
                remove_key(&mut rest, PATCH);
                return merge_map(None, &rest, fields, path);
            }
            Some("delete") => return Ok(None),
            Some("merge") => {}
            _ => {
                return Err(SmpError::UnknownPatchDirective {
                    path: path.render(),
                    value: directive.to_string(),
                })
            }
        }
    }

    let mut out = original.unwrap_or_default();

    if let Some(retain) = patch.get(RETAIN_KEYS) {
        apply_retain_keys(&mut out, retain, patch, path)?;
    }

    // Lists named by `$setElementOrder/<list>` are merged and ordered first, and
    // skipped by the main loop.
    let mut ordered: Vec<&str> = Vec::new();
    for (key, value) in patch {
        let Some(suffix) = key.strip_prefix(SET_ELEMENT_ORDER) else {
            continue;
        };
        let name = directive_field(key, suffix, SET_ELEMENT_ORDER, path)?;
        let Value::Array(order) = value else {
            return Err(SmpError::DirectiveNotList {
                path: path.render(),
                directive: key.clone(),
                found: type_name(value),
            });
        };
        set_element_order(&mut out, key, name, order, patch.get(name), fields, path)?;
        ordered.push(name);
    }

    let mut deletions: Vec<(&str, &str, &Value)> = Vec::new();
    for (key, value) in patch {
        if key == PATCH || key == RETAIN_KEYS || key.starts_with(SET_ELEMENT_ORDER) {
            continue;
        }
        if let Some(suffix) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            let name = directive_field(key, suffix, DELETE_FROM_PRIMITIVE_LIST, path)?;
            deletions.push((key, name, value));
            continue;
        }
        if ordered.contains(&key.as_str()) {
            continue;
        }
        if value.is_null() {
            remove_key(&mut out, key);
            continue;
        }
        let field = lookup(fields, key);
        let child = Path::Key(&path, key);
        match out.get_mut(key) {
            Some(slot) => {
                let current = std::mem::take(slot);
                match merge_value(current, value, field, child)? {
                    Some(merged) => *slot = merged,
                    None => {
                        remove_key(&mut out, key);
                    }
                }
            }
            None => {
                if let Some(added) = clean(value, field, child)? {
                    out.insert(key.clone(), added);
                }
            }
        }
    }

    for (key, name, value) in deletions {
        delete_from_primitive_list(&mut out, key, name, value, path)?;
    }
    Ok(Some(out))
}

/// Merge a patch value into a stored value of the same field. `Ok(None)`: delete the field.
fn merge_value(
    current: Value,
    patch: &Value,
    field: Option<&'static Field>,
    path: Path<'_>,
) -> Result<Option<Value>, SmpError> {
    match (current, patch) {
        (Value::Object(current), Value::Object(patch)) => {
            Ok(merge_map(Some(current), patch, children(field), path)?.map(Value::Object))
        }
        (Value::Array(current), Value::Array(patch)) => Ok(Some(Value::Array(
            merge_list(current, patch, field, path)?.items,
        ))),
        // Scalars, and values of a different JSON type, are replaced.
        (_, patch) => clean(patch, field, path),
    }
}

/// A patch value with nothing to merge into: apply it to an empty value so
/// directives are honoured and stripped, and `null`s in maps dropped.
fn clean(
    patch: &Value,
    field: Option<&'static Field>,
    path: Path<'_>,
) -> Result<Option<Value>, SmpError> {
    match patch {
        Value::Object(patch) => {
            Ok(merge_map(None, patch, children(field), path)?.map(Value::Object))
        }
        Value::Array(patch) => Ok(Some(Value::Array(clean_list(patch, field, path)?))),
        scalar => Ok(Some(scalar.clone())),
    }
}

/// A patch list with nothing to merge into. Directive elements (`$patch:
/// delete` / `replace` markers) have nothing to act on and are dropped; the
/// other elements are cleaned. Scalars, `null` included, are kept as sent.
fn clean_list(
    patch: &[Value],
    field: Option<&'static Field>,
    path: Path<'_>,
) -> Result<Vec<Value>, SmpError> {
    let mut out = Vec::with_capacity(patch.len());
    for (index, element) in patch.iter().enumerate() {
        match element {
            Value::Object(map) => {
                if matches!(
                    map.get(PATCH).and_then(Value::as_str),
                    Some("delete" | "replace")
                ) {
                    continue;
                }
                let element_path = Path::Index(&path, index);
                if let Some(cleaned) = merge_map(None, map, children(field), element_path)? {
                    out.push(Value::Object(cleaned));
                }
            }
            other => out.push(other.clone()),
        }
    }
    Ok(out)
}

/// A merged list, plus the record of the stored order that `$setElementOrder`
/// interleaves server-only elements by (see [`merge_objects`]).
struct MergedList {
    items: Vec<Value>,
    live_order: Vec<Value>,
}

/// Merge patch list `patch` into stored list `original` according to the field's strategy.
fn merge_list(
    original: Vec<Value>,
    patch: &[Value],
    field: Option<&'static Field>,
    path: Path<'_>,
) -> Result<MergedList, SmpError> {
    let strategy = strategy_of(field);
    if strategy == ListStrategy::Replace {
        return Ok(MergedList {
            items: clean_list(patch, field, path)?,
            live_order: original,
        });
    }
    if original.is_empty() && patch.is_empty() {
        return Ok(MergedList {
            items: original,
            live_order: Vec::new(),
        });
    }
    if holds_objects(&original, patch, path)? {
        let ListStrategy::MergeByKey(key) = strategy else {
            return Err(SmpError::NoMergeKey {
                path: path.render(),
            });
        };
        merge_objects(original, patch, key, children(field), path)
    } else {
        Ok(merge_scalars(original, patch))
    }
}

/// Whether the elements of both lists are objects (`false`: scalars). Lists
/// mixing the two, or holding lists, cannot be merged.
fn holds_objects(original: &[Value], patch: &[Value], path: Path<'_>) -> Result<bool, SmpError> {
    let mut objects = None;
    for element in original.iter().chain(patch) {
        let is_object = match element {
            Value::Object(_) => true,
            Value::Array(_) => {
                return Err(SmpError::BadListElements {
                    path: path.render(),
                    reason: "lists of lists are not supported",
                })
            }
            _ => false,
        };
        match objects {
            None => objects = Some(is_object),
            Some(seen) if seen != is_object => {
                return Err(SmpError::BadListElements {
                    path: path.render(),
                    reason: "elements mix objects and scalars",
                })
            }
            Some(_) => {}
        }
    }
    Ok(objects.unwrap_or(false))
}

/// Merge a list of scalars as an ordered set.
///
/// Order: elements the patch names follow the patch's order, the other stored
/// elements keep theirs, and the two runs are interleaved by stored position
/// (see [`merge_sorted`]); new elements therefore land before the stored
/// elements that follow them in the patch, which for a patch of only new
/// items means in front.
fn merge_scalars(original: Vec<Value>, patch: &[Value]) -> MergedList {
    let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
    for value in original.iter().chain(patch) {
        if !merged.iter().any(|seen| values_eq(seen, value)) {
            merged.push(value.clone());
        }
    }
    let ident = Ident::Scalar;
    let patch_ids = ids(patch, ident);
    let (named, server_only): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|value| position(&patch_ids, Some(value)).is_some());
    let server_ids = ids(&original, ident);
    let items = normalize(named, server_only, &patch_ids, &server_ids, ident);
    MergedList {
        items,
        live_order: original,
    }
}

/// Merge a list of objects by merge key `key`.
///
/// Special patch elements act first: `{key: v, "$patch": "delete"}` removes
/// every stored element with that key, `{"$patch": "replace"}` makes the other
/// patch elements the whole list. Then each patch element merges into the
/// first stored element with its key, or is appended. The result is ordered
/// like [`merge_scalars`] does, by key.
///
/// `live_order` reproduces what apimachinery's `$setElementOrder` handling
/// reads as "the live list": its merge mutates the stored slice in place, so
/// after `d` deletions that record is the stored list without the deleted
/// elements followed by the first `d` appended elements. Kubernetes' own test
/// fixtures depend on that (for example, deleting one element and adding
/// another keeps a server-only element ahead of the new one).
fn merge_objects(
    original: Vec<Value>,
    patch: &[Value],
    key: &'static str,
    fields: &'static [Field],
    path: Path<'_>,
) -> Result<MergedList, SmpError> {
    let stored = original.len();
    let mut list = original;
    let mut rest: Vec<&Value> = Vec::with_capacity(patch.len());
    let mut replace = false;
    for element in patch {
        match element.get(PATCH) {
            None => rest.push(element),
            Some(directive) => match directive.as_str() {
                Some("delete") => {
                    let value = merge_key_of(element, key, path)?;
                    list.retain(|stored| !has_key_value(stored, key, value));
                }
                Some("replace") => replace = true,
                Some("merge") => {
                    return Err(SmpError::MergeDirectiveInList {
                        path: path.render(),
                    })
                }
                _ => {
                    return Err(SmpError::UnknownPatchDirective {
                        path: path.render(),
                        value: directive.to_string(),
                    })
                }
            },
        }
    }
    let deleted = stored - list.len();

    if replace {
        let mut items = Vec::with_capacity(rest.len());
        for element in rest {
            let value = merge_key_of(element, key, path)?;
            if let Value::Object(map) = element {
                if let Some(cleaned) = merge_map(None, map, fields, Path::Elem(&path, key, value))?
                {
                    items.push(Value::Object(cleaned));
                }
            }
        }
        return Ok(MergedList {
            items,
            live_order: list,
        });
    }

    let kept = list.len();
    let mut appended = Vec::new();
    for element in &rest {
        let value = merge_key_of(element, key, path)?;
        let Value::Object(map) = element else {
            continue;
        };
        let element_path = Path::Elem(&path, key, value);
        match list
            .iter()
            .position(|stored| has_key_value(stored, key, value))
        {
            Some(index) => {
                let merged = match std::mem::take(&mut list[index]) {
                    Value::Object(current) => merge_map(Some(current), map, fields, element_path)?,
                    _ => merge_map(None, map, fields, element_path)?,
                };
                match merged {
                    Some(merged) => list[index] = Value::Object(merged),
                    None => {
                        list.remove(index);
                    }
                }
            }
            None => {
                if let Some(added) = merge_map(None, map, fields, element_path)? {
                    if appended.len() < deleted {
                        appended.push(Value::Object(added.clone()));
                    }
                    list.push(Value::Object(added));
                }
            }
        }
    }

    for element in &list {
        merge_key_of(element, key, path)?;
    }
    let server_order: Vec<Value> = list.iter().take(kept).cloned().collect();
    let ident = Ident::Key(key);
    let patch_ids: Vec<Option<&Value>> = rest.iter().map(|element| ident.of(element)).collect();
    let (named, server_only): (Vec<Value>, Vec<Value>) = list
        .into_iter()
        .partition(|element| position(&patch_ids, ident.of(element)).is_some());
    let server_ids = ids(&server_order, ident);
    let items = normalize(named, server_only, &patch_ids, &server_ids, ident);

    let mut live_order = server_order;
    live_order.extend(appended);
    Ok(MergedList { items, live_order })
}

/// Handle `$setElementOrder/<name>`: merge list `name` now and order it as `order` says.
fn set_element_order(
    out: &mut Object,
    directive: &str,
    name: &str,
    order: &[Value],
    patch: Option<&Value>,
    fields: &'static [Field],
    path: Path<'_>,
) -> Result<(), SmpError> {
    let field = lookup(fields, name);
    let ident = match strategy_of(field) {
        ListStrategy::MergeByKey(key) => Ident::Key(key),
        ListStrategy::Replace | ListStrategy::MergePrimitives => Ident::Scalar,
    };
    let list_path = Path::Key(&path, name);
    let not_list = |value: &Value| SmpError::FieldNotList {
        path: list_path.render(),
        directive: directive.to_owned(),
        found: type_name(value),
    };
    let original = match out.get(name) {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => Some(list.clone()),
        Some(other) => return Err(not_list(other)),
    };
    let patch = match patch {
        None => None,
        Some(Value::Array(list)) => Some(list.as_slice()),
        Some(other) => return Err(not_list(other)),
    };
    if let Some(patch) = patch {
        validate_order(patch, order, ident, path, name)?;
    }
    let merged = match (original, patch) {
        (None, None) => return Ok(()),
        (Some(original), None) => MergedList {
            items: original.clone(),
            live_order: original,
        },
        (None, Some(patch)) => MergedList {
            items: clean_list(patch, field, list_path)?,
            live_order: Vec::new(),
        },
        (Some(original), Some(patch)) => merge_list(original, patch, field, list_path)?,
    };
    let items = reorder(merged, order, ident, list_path)?;
    out.insert(name.to_owned(), Value::Array(items));
    Ok(())
}

/// Check that the patch list names its elements in the order of the
/// `$setElementOrder` list (a subsequence of it; directive elements ignored).
fn validate_order(
    patch: &[Value],
    order: &[Value],
    ident: Ident,
    path: Path<'_>,
    name: &str,
) -> Result<(), SmpError> {
    let named: Vec<&Value> = patch
        .iter()
        .filter(|element| element.get(PATCH).is_none())
        .collect();
    if order.is_empty() || named.is_empty() {
        return Ok(());
    }
    // Objects in a list without merge key cannot be matched against an order list.
    if matches!(ident, Ident::Scalar) && named.iter().any(|element| element.is_object()) {
        return Ok(());
    }
    let list_path = Path::Key(&path, name);
    let (mut at_patch, mut at_order) = (0, 0);
    while at_patch < named.len() && at_order < order.len() {
        let equal = match ident {
            Ident::Scalar => values_eq(named[at_patch], &order[at_order]),
            Ident::Key(key) => values_eq(
                merge_key_of(named[at_patch], key, list_path)?,
                merge_key_of(&order[at_order], key, list_path)?,
            ),
        };
        if equal {
            at_patch += 1;
        }
        at_order += 1;
    }
    if at_patch < named.len() {
        return Err(SmpError::SetElementOrderMismatch {
            path: path.render(),
            field: name.to_owned(),
        });
    }
    Ok(())
}

/// Order a merged list by a `$setElementOrder` list: elements it names come in
/// its order; the others keep their stored order and are interleaved by their
/// stored position (see [`merge_sorted`]).
fn reorder(
    merged: MergedList,
    order: &[Value],
    ident: Ident,
    path: Path<'_>,
) -> Result<Vec<Value>, SmpError> {
    let MergedList { items, live_order } = merged;
    let objects = items.iter().any(Value::is_object);
    let ident = match ident {
        // A list of objects without merge key (an atomic list) has no identity
        // to order by; the patch list stands as sent.
        Ident::Scalar if objects => return Ok(items),
        Ident::Key(_) if !objects => Ident::Scalar,
        ident => ident,
    };
    if let Ident::Key(key) = ident {
        for element in items.iter().chain(order) {
            merge_key_of(element, key, path)?;
        }
    }
    let order_ids = ids(order, ident);
    let (named, server_only): (Vec<Value>, Vec<Value>) = items
        .into_iter()
        .partition(|element| position(&order_ids, ident.of(element)).is_some());
    let live_ids = ids(&live_order, ident);
    Ok(normalize(named, server_only, &order_ids, &live_ids, ident))
}

/// Handle `$deleteFromPrimitiveList/<name>`: drop the listed scalars from list `name`.
/// A missing list, or a stored value that is not a list, is left alone.
fn delete_from_primitive_list(
    out: &mut Object,
    directive: &str,
    name: &str,
    value: &Value,
    path: Path<'_>,
) -> Result<(), SmpError> {
    match value {
        // apimachinery treats a null deletion list like a null field.
        Value::Null => {
            remove_key(out, name);
        }
        Value::Array(remove) => {
            if let Some(Value::Array(list)) = out.get_mut(name) {
                list.retain(|element| !remove.iter().any(|gone| values_eq(gone, element)));
            }
        }
        other => {
            return Err(SmpError::DirectiveNotList {
                path: path.render(),
                directive: directive.to_owned(),
                found: type_name(other),
            })
        }
    }
    Ok(())
}

/// Handle `$retainKeys`: every field the patch sets must be listed; stored
/// fields not listed are removed before the merge.
fn apply_retain_keys(
    out: &mut Object,
    retain: &Value,
    patch: &Object,
    path: Path<'_>,
) -> Result<(), SmpError> {
    let Value::Array(retain) = retain else {
        return Err(SmpError::DirectiveNotList {
            path: path.render(),
            directive: RETAIN_KEYS.to_owned(),
            found: type_name(retain),
        });
    };
    let listed = |key: &str| retain.iter().any(|entry| entry.as_str() == Some(key));
    for (key, value) in patch {
        if value.is_null()
            || key == PATCH
            || key == RETAIN_KEYS
            || key.starts_with(SET_ELEMENT_ORDER)
            || key.starts_with(DELETE_FROM_PRIMITIVE_LIST)
        {
            continue;
        }
        if !listed(key) {
            return Err(SmpError::NotInRetainKeys {
                path: path.render(),
                field: key.clone(),
            });
        }
    }
    out.retain(|key, _| listed(key));
    Ok(())
}

/// Remove `key` keeping the order of the other keys, whichever map
/// representation serde_json was built with.
fn remove_key(map: &mut Object, key: &str) {
    map.retain(|own, _| own != key);
}

/// The field name after a directive prefix: `suffix` must be `/<field>`.
fn directive_field<'k>(
    key: &str,
    suffix: &'k str,
    prefix: &'static str,
    path: Path<'_>,
) -> Result<&'k str, SmpError> {
    suffix
        .strip_prefix('/')
        .ok_or_else(|| SmpError::MalformedDirectiveKey {
            path: path.render(),
            key: key.to_owned(),
            prefix,
        })
}

/// The merge-key value of a list element, or the error naming the element.
fn merge_key_of<'v>(
    element: &'v Value,
    key: &'static str,
    path: Path<'_>,
) -> Result<&'v Value, SmpError> {
    element.get(key).ok_or_else(|| SmpError::MissingMergeKey {
        path: path.render(),
        key,
        element: element.to_string(),
    })
}

fn has_key_value(element: &Value, key: &str, value: &Value) -> bool {
    element.get(key).is_some_and(|own| values_eq(own, value))
}

/// What identifies a list element when lists are ordered: the element itself
/// (scalars) or the value of its merge key.
#[derive(Clone, Copy)]
enum Ident {
    Scalar,
    Key(&'static str),
}

impl Ident {
    fn of(self, element: &Value) -> Option<&Value> {
        match self {
            Ident::Scalar => Some(element),
            Ident::Key(key) => element.get(key),
        }
    }
}

fn ids(list: &[Value], ident: Ident) -> Vec<Option<&Value>> {
    list.iter().map(|element| ident.of(element)).collect()
}

fn position(ids: &[Option<&Value>], id: Option<&Value>) -> Option<usize> {
    ids.iter().position(|candidate| match (candidate, id) {
        (Some(candidate), Some(id)) => values_eq(candidate, id),
        (None, None) => true,
        _ => false,
    })
}

/// apimachinery's `normalizeElementOrder`: sort `named` by `named_order`, sort
/// `server_only` by `server_order`, then interleave them with [`merge_sorted`].
fn normalize(
    named: Vec<Value>,
    server_only: Vec<Value>,
    named_order: &[Option<&Value>],
    server_order: &[Option<&Value>],
    ident: Ident,
) -> Vec<Value> {
    let named = sort_by_position(named, named_order, ident);
    let server_only = sort_by_position(server_only, server_order, ident);
    merge_sorted(server_only, named, server_order, ident)
}

/// Stable sort by position in `order`; elements `order` lacks go last.
fn sort_by_position(items: Vec<Value>, order: &[Option<&Value>], ident: Ident) -> Vec<Value> {
    let mut keyed: Vec<(usize, Value)> = items
        .into_iter()
        .map(|item| {
            let at = position(order, ident.of(&item)).unwrap_or(usize::MAX);
            (at, item)
        })
        .collect();
    keyed.sort_by_key(|(at, _)| *at);
    keyed.into_iter().map(|(_, item)| item).collect()
}

/// apimachinery's `mergeSortedSlice`: merge two sorted runs, keeping each
/// run's order. At each step the server-only element goes first only when both
/// heads have a stored position and its position is earlier; otherwise the
/// named (patch) element goes first.
fn merge_sorted(
    server_only: Vec<Value>,
    named: Vec<Value>,
    order: &[Option<&Value>],
    ident: Ident,
) -> Vec<Value> {
    let mut out = Vec::with_capacity(server_only.len() + named.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = named.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => matches!(
                (position(order, ident.of(l)), position(order, ident.of(r))),
                (Some(at_l), Some(at_r)) if at_l < at_r
            ),
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    out
}

/// JSON equality with numbers compared by value (`80` equals `80.0`), as Go's
/// decoded `float64`s compare.
fn values_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                x == y
            } else {
                x.as_f64() == y.as_f64()
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| values_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, value)| y.get(key).is_some_and(|other| values_eq(value, other)))
        }
        _ => a == b,
    }
}
