//! The walks over JSON values: field set of an object, comparison of two
//! objects, merge of an applied configuration into a live object, and removal
//! of fields an applier stopped applying.
//!
//! Each walk carries the field-name path (list elements add nothing to it),
//! which is how the patch schema is queried.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sluice_smp::Schema;

use crate::error::ApplyError;
use crate::fieldset::FieldSet;
use crate::path::{path_to_string, PathElement};
use crate::types::{element_key, is_atomic_map, list_kind, ListKind};

/// How a value is walked.
enum Shape {
    /// Owned, compared and replaced as a whole.
    Leaf,
    /// Granular object: each key is a field.
    Map,
    /// Associative list (set or map), element by element.
    List(ListKind),
}

fn shape(schema: &Schema, names: &[String], value: &Value) -> Shape {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    match value {
        Value::Object(_) if is_atomic_map(&refs, value) => Shape::Leaf,
        Value::Object(_) => Shape::Map,
        Value::Array(_) => match list_kind(schema, &refs) {
            ListKind::Atomic => Shape::Leaf,
            kind => Shape::List(kind),
        },
        _ => Shape::Leaf,
    }
}

/// Whether two values are walked the same way; otherwise the pair is a leaf
/// (a type change replaces the value).
fn same_kind(a: &Value, b: &Value) -> bool {
    matches!(
        (a, b),
        (Value::Object(_), Value::Object(_))
            | (Value::Array(_), Value::Array(_))
            | (Value::Null, Value::Object(_) | Value::Array(_))
            | (Value::Object(_) | Value::Array(_), Value::Null)
    )
}

fn is_empty_container(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(l)) => l.is_empty(),
        Some(_) => false,
    }
}

/// The elements of a list grouped by path element, in first-appearance
/// order. Elements without a key are left out.
fn index_list<'a>(kind: &ListKind, list: &'a [Value]) -> Vec<(PathElement, Vec<&'a Value>)> {
    let mut out: Vec<(PathElement, Vec<&'a Value>)> = Vec::new();
    let mut positions: BTreeMap<PathElement, usize> = BTreeMap::new();
    for item in list {
        let Some(pe) = element_key(kind, item) else {
            continue;
        };
        match positions.get(&pe) {
            Some(&i) => out[i].1.push(item),
            None => {
                positions.insert(pe.clone(), out.len());
                out.push((pe, vec![item]));
            }
        }
    }
    out
}

/// Upstream `ToFieldSet`: every leaf, null or empty object, atomic list or map,
/// and associative-list element the object sets.
pub(crate) fn field_set(schema: &Schema, value: &Value) -> FieldSet {
    let mut set = FieldSet::new();
    collect(schema, &mut Vec::new(), &mut Vec::new(), value, &mut set);
    set
}

fn collect(
    schema: &Schema,
    names: &mut Vec<String>,
    path: &mut Vec<PathElement>,
    value: &Value,
    set: &mut FieldSet,
) {
    match shape(schema, names, value) {
        Shape::Leaf => set.insert(path),
        Shape::Map => {
            let Value::Object(map) = value else { return };
            for (key, child) in map {
                path.push(PathElement::Field(key.clone()));
                names.push(key.clone());
                collect(schema, names, path, child, set);
                if is_empty_container(Some(child)) && !child.is_array() {
                    set.insert(path);
                }
                names.pop();
                path.pop();
            }
        }
        Shape::List(kind) => {
            let Value::Array(list) = value else { return };
            for (pe, items) in index_list(&kind, list) {
                path.push(pe);
                if let [item] = items.as_slice() {
                    collect(schema, names, path, item, set);
                }
                // Duplicated elements are owned as a whole, without descent.
                set.insert(path);
                path.pop();
            }
        }
    }
}

/// What changed between two objects (upstream `typed.Comparison`).
#[derive(Debug, Default)]
pub(crate) struct Comparison {
    pub added: FieldSet,
    pub modified: FieldSet,
    pub removed: FieldSet,
}

/// Compare `old` with `new`.
pub(crate) fn compare(schema: &Schema, old: &Value, new: &Value) -> Comparison {
    let mut out = Comparison::default();
    compare_at(
        schema,
        &mut Vec::new(),
        &mut Vec::new(),
        Some(old),
        Some(new),
        &mut out,
    );
    out
}

fn compare_leaf(path: &[PathElement], l: Option<&Value>, r: Option<&Value>, out: &mut Comparison) {
    match (l, r) {
        (None, Some(_)) => out.added.insert(path),
        (Some(_), None) => out.removed.insert(path),
        (Some(a), Some(b)) if a != b => out.modified.insert(path),
        _ => {}
    }
}

fn compare_at(
    schema: &Schema,
    names: &mut Vec<String>,
    path: &mut Vec<PathElement>,
    l: Option<&Value>,
    r: Option<&Value>,
    out: &mut Comparison,
) {
    let (l, r) = match (l, r) {
        (Some(a), Some(b)) if !same_kind(a, b) && a != b => {
            return compare_leaf(path, l, r, out);
        }
        (None, None) => return,
        pair => pair,
    };
    let Some(probe) = r.filter(|v| !v.is_null()).or(l) else {
        return compare_leaf(path, l, r, out);
    };
    match shape(schema, names, probe) {
        Shape::Leaf => return compare_leaf(path, l, r, out),
        _ if is_empty_container(l) && is_empty_container(r) => {
            // Upstream treats empty/null on both sides as a leaf, which keeps
            // the empty/null distinction.
            return compare_leaf(path, l, r, out);
        }
        Shape::Map => {
            let empty = Map::new();
            let lm = l.and_then(Value::as_object).unwrap_or(&empty);
            let rm = r.and_then(Value::as_object).unwrap_or(&empty);
            let keys: Vec<&String> = lm
                .keys()
                .chain(rm.keys().filter(|k| !lm.contains_key(*k)))
                .collect();
            for key in keys {
                path.push(PathElement::Field(key.clone()));
                names.push(key.clone());
                compare_at(schema, names, path, lm.get(key), rm.get(key), out);
                names.pop();
                path.pop();
            }
        }
        Shape::List(kind) => {
            let empty = Vec::new();
            let ll = l.and_then(Value::as_array).unwrap_or(&empty);
            let rl = r.and_then(Value::as_array).unwrap_or(&empty);
            let lhs = index_list(&kind, ll);
            let rhs = index_list(&kind, rl);
            let rmap: BTreeMap<&PathElement, &Vec<&Value>> =
                rhs.iter().map(|(pe, v)| (pe, v)).collect();
            let lmap: BTreeMap<&PathElement, &Vec<&Value>> =
                lhs.iter().map(|(pe, v)| (pe, v)).collect();
            let mut all: Vec<&PathElement> = lhs.iter().map(|(pe, _)| pe).collect();
            all.extend(
                rhs.iter()
                    .map(|(pe, _)| pe)
                    .filter(|pe| !lmap.contains_key(pe)),
            );
            for pe in all {
                let litems = lmap.get(pe).map_or(&[][..], |v| v.as_slice());
                let ritems = rmap.get(pe).map_or(&[][..], |v| v.as_slice());
                path.push(pe.clone());
                match (litems.len(), ritems.len()) {
                    (0..=1, 0..=1) => compare_at(
                        schema,
                        names,
                        path,
                        litems.first().copied(),
                        ritems.first().copied(),
                        out,
                    ),
                    (2.., 2..) => {
                        if litems != ritems {
                            out.modified.insert(path);
                        }
                    }
                    (2.., _) => {
                        if let Some(item) = ritems.first() {
                            compare_at(schema, names, path, None, Some(item), out);
                        }
                        out.removed.insert(path);
                    }
                    (_, _) => {
                        if let Some(item) = litems.first() {
                            compare_at(schema, names, path, Some(item), None, out);
                        }
                        out.added.insert(path);
                    }
                }
                path.pop();
            }
        }
    }
    match (l, r) {
        (None, Some(_)) => out.added.insert(path),
        (Some(_), None) => out.removed.insert(path),
        _ => {}
    }
}

/// Check an applied configuration the way upstream's typed conversion does:
/// every element of a map-list has a key field, and no list has the same
/// element twice.
pub(crate) fn validate_applied(schema: &Schema, value: &Value) -> Result<(), ApplyError> {
    validate_at(schema, &mut Vec::new(), &mut Vec::new(), value)
}

fn validate_at(
    schema: &Schema,
    names: &mut Vec<String>,
    path: &mut Vec<PathElement>,
    value: &Value,
) -> Result<(), ApplyError> {
    match shape(schema, names, value) {
        Shape::Leaf => Ok(()),
        Shape::Map => {
            let Value::Object(map) = value else {
                return Ok(());
            };
            for (key, child) in map {
                path.push(PathElement::Field(key.clone()));
                names.push(key.clone());
                validate_at(schema, names, path, child)?;
                names.pop();
                path.pop();
            }
            Ok(())
        }
        Shape::List(kind) => {
            let Value::Array(list) = value else {
                return Ok(());
            };
            let mut seen: BTreeMap<PathElement, ()> = BTreeMap::new();
            for (i, item) in list.iter().enumerate() {
                let Some(pe) = element_key(&kind, item) else {
                    let keys = match &kind {
                        ListKind::Map(keys) => {
                            keys.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
                        }
                        _ => String::new(),
                    };
                    return Err(ApplyError::BadRequest(format!(
                        "{}: element {i}: associative list with keys has an element that omits all key fields [{keys}]",
                        path_to_string(path)
                    )));
                };
                path.push(pe.clone());
                if seen.insert(pe, ()).is_some() {
                    return Err(ApplyError::BadRequest(format!(
                        "{}: duplicate entries for key",
                        path_to_string(path)
                    )));
                }
                validate_at(schema, names, path, item)?;
                path.pop();
            }
            Ok(())
        }
    }
}

/// Merge `applied` into `live` (upstream `typed.Merge` with "applied wins"):
/// objects merge key by key, set and map lists element by element, everything
/// else is replaced. An applied `null` removes the field, as it disappears
/// when the apiserver round-trips the result through the Go type.
pub(crate) fn merge(schema: &Schema, live: &Value, applied: &Value) -> Value {
    merge_at(schema, &mut Vec::new(), Some(live), Some(applied))
        .unwrap_or(Value::Object(Map::new()))
}

fn merge_at(
    schema: &Schema,
    names: &mut Vec<String>,
    l: Option<&Value>,
    r: Option<&Value>,
) -> Option<Value> {
    let r = match r {
        None => return l.cloned(),
        Some(Value::Null) => return None,
        Some(r) => r,
    };
    let l = l.filter(|l| same_kind(l, r));
    if is_empty_container(l) && is_empty_container(Some(r)) {
        return Some(r.clone());
    }
    match shape(schema, names, r) {
        Shape::Leaf => Some(r.clone()),
        Shape::Map => {
            let empty = Map::new();
            let lm = l.and_then(Value::as_object).unwrap_or(&empty);
            let rm = r.as_object().unwrap_or(&empty);
            let mut out = Map::new();
            for (key, lv) in lm {
                names.push(key.clone());
                if let Some(v) = merge_at(schema, names, Some(lv), rm.get(key)) {
                    out.insert(key.clone(), v);
                }
                names.pop();
            }
            for (key, rv) in rm.iter().filter(|(k, _)| !lm.contains_key(*k)) {
                names.push(key.clone());
                if let Some(v) = merge_at(schema, names, None, Some(rv)) {
                    out.insert(key.clone(), v);
                }
                names.pop();
            }
            Some(Value::Object(out))
        }
        Shape::List(kind) => {
            let empty = Vec::new();
            let ll = l.and_then(Value::as_array).unwrap_or(&empty);
            let rl = r.as_array().unwrap_or(&empty);
            Some(Value::Array(merge_list(schema, names, &kind, ll, rl)))
        }
    }
}

/// Upstream's associative list merge, including its order: applied elements
/// in applied order, live-only elements kept where they were, and elements in
/// both emitted when the applied list reaches them.
fn merge_list(
    schema: &Schema,
    names: &mut Vec<String>,
    kind: &ListKind,
    ll: &[Value],
    rl: &[Value],
) -> Vec<Value> {
    // Live elements in order, each with its key (None: no key, kept as is).
    let lhs: Vec<(Option<PathElement>, &Value)> =
        ll.iter().map(|v| (element_key(kind, v), v)).collect();
    let rhs: Vec<(PathElement, &Value)> = rl
        .iter()
        .filter_map(|v| element_key(kind, v).map(|pe| (pe, v)))
        .collect();
    let mut lcount: BTreeMap<&PathElement, usize> = BTreeMap::new();
    let mut lfirst: BTreeMap<&PathElement, &Value> = BTreeMap::new();
    for (pe, v) in lhs
        .iter()
        .filter_map(|(pe, v)| pe.as_ref().map(|pe| (pe, *v)))
    {
        *lcount.entry(pe).or_default() += 1;
        lfirst.entry(pe).or_insert(v);
    }
    let rset: BTreeMap<&PathElement, &Value> = rhs.iter().map(|(pe, v)| (pe, *v)).collect();
    // A duplicated live element the applied list names is replaced by the
    // applied one alone (upstream merges with "no live element").
    let live_of = |pe: &PathElement| -> Option<&Value> {
        match lcount.get(pe) {
            Some(1) => lfirst.get(pe).copied(),
            _ => None,
        }
    };
    let mut shared: std::collections::VecDeque<&PathElement> = rhs
        .iter()
        .map(|(pe, _)| pe)
        .filter(|pe| lcount.contains_key(pe))
        .collect();
    let mut next_shared = shared.pop_front();
    let mut merged: BTreeMap<&PathElement, ()> = BTreeMap::new();
    let mut out = Vec::new();
    let (mut li, mut ri) = (0, 0);
    while li < lhs.len() || ri < rhs.len() {
        if li < lhs.len() && ri < rhs.len() {
            if let Some(pe) = &lhs[li].0 {
                if *pe == rhs[ri].0 && !merged.contains_key(pe) {
                    merged.insert(&rhs[ri].0, ());
                    out.extend(merge_at(schema, names, live_of(pe), Some(rhs[ri].1)));
                    li += 1;
                    ri += 1;
                    next_shared = shared.pop_front();
                    continue;
                }
                if rset.contains_key(pe) && next_shared.is_some_and(|n| n != pe) {
                    // Shared, but the applied list places it later.
                    li += 1;
                    continue;
                }
            }
        }
        if li < lhs.len() {
            match &lhs[li].0 {
                Some(pe) if rset.contains_key(pe) => {
                    if merged.contains_key(pe) {
                        li += 1;
                    }
                }
                _ => {
                    out.extend(merge_at(schema, names, Some(lhs[li].1), None));
                    li += 1;
                    continue;
                }
            }
        }
        if ri < rhs.len() {
            let (pe, item) = (&rhs[ri].0, rhs[ri].1);
            merged.insert(pe, ());
            out.extend(merge_at(schema, names, live_of(pe), Some(item)));
            ri += 1;
            if next_shared.is_some_and(|n| n == pe) {
                next_shared = shared.pop_front();
            }
        }
    }
    out
}

/// Remove from `value` what `last` (the applier's previous applied set) has
/// and nobody in `managed` (every manager's set, the applier's new one
/// included) has at or below it (upstream `prune` with its add-back passes).
///
/// A field is removed whole when nobody owns anything at or below it; list
/// elements only when they were owned as such. Key fields of a kept element are
/// never removed, and containers emptied by removals are dropped too.
pub(crate) fn prune(schema: &Schema, value: &mut Value, last: &FieldSet, managed: &FieldSet) {
    prune_at(schema, &mut Vec::new(), value, last, Some(managed), &[]);
}

fn prune_at(
    schema: &Schema,
    names: &mut Vec<String>,
    value: &mut Value,
    last: &FieldSet,
    managed: Option<&FieldSet>,
    key_fields: &[String],
) {
    let owned = |pe: &PathElement| managed.is_some_and(|m| m.touches(pe));
    let owned_whole = |pe: &PathElement| managed.is_some_and(|m| m.has_member(pe));
    match value {
        Value::Object(map) => {
            for pe in last.elements() {
                let PathElement::Field(name) = pe else {
                    continue;
                };
                if key_fields.contains(name) || !map.contains_key(name) {
                    continue;
                }
                if !owned(pe) {
                    map.remove(name);
                    continue;
                }
                let (Some(sub), Some(child)) = (last.child(pe), map.get_mut(name)) else {
                    continue;
                };
                let was_empty = is_empty_container(Some(child));
                names.push(name.clone());
                prune_at(
                    schema,
                    names,
                    child,
                    sub,
                    managed.and_then(|m| m.child(pe)),
                    &[],
                );
                names.pop();
                if !was_empty
                    && is_empty_container(Some(child))
                    && !child.is_null()
                    && !owned_whole(pe)
                {
                    map.remove(name);
                }
            }
        }
        Value::Array(list) => {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let kind = list_kind(schema, &refs);
            let keys: Vec<String> = match &kind {
                ListKind::Map(keys) => keys.iter().map(|k| k.name.to_string()).collect(),
                _ => Vec::new(),
            };
            let mut kept = Vec::with_capacity(list.len());
            for mut item in std::mem::take(list) {
                if let Some(pe) = element_key(&kind, &item) {
                    if last.has_member(&pe) && !owned(&pe) {
                        continue;
                    }
                    if let Some(sub) = last.child(&pe) {
                        prune_at(
                            schema,
                            names,
                            &mut item,
                            sub,
                            managed.and_then(|m| m.child(&pe)),
                            &keys,
                        );
                    }
                }
                kept.push(item);
            }
            *list = kept;
        }
        _ => {}
    }
}
