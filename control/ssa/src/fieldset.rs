//! Field sets: which fields of an object someone owns, and their `fieldsV1` form.
//!
//! A [`FieldSet`] is structured-merge-diff's `fieldpath.Set`: at each level, the
//! path elements that are *members* (owned as a whole: a leaf, a list element,
//! an atomic list or map) and the path elements that have owned fields *below*
//! them. A node can be both (a list element owned as such and field by field),
//! which `fieldsV1` writes as `{".": {}, "f:image": {}}`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::error::ApplyError;
use crate::path::{go_json_escape, parse_element, serialize_element, PathElement};

/// A set of field paths, stored as a trie.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    members: BTreeSet<PathElement>,
    /// Invariant: no child set is empty.
    children: BTreeMap<PathElement, FieldSet>,
}

impl FieldSet {
    /// The empty set.
    pub fn new() -> FieldSet {
        FieldSet::default()
    }

    /// Whether the set has no paths.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.children.is_empty()
    }

    /// Add `path` as a member. The empty path is ignored (the root is never a member).
    pub fn insert(&mut self, path: &[PathElement]) {
        match path {
            [] => {}
            [last] => {
                self.members.insert(last.clone());
            }
            [first, rest @ ..] => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    /// Whether `path` is a member.
    pub fn has(&self, path: &[PathElement]) -> bool {
        match path {
            [] => false,
            [last] => self.members.contains(last),
            [first, rest @ ..] => self.children.get(first).is_some_and(|c| c.has(rest)),
        }
    }

    /// Whether `pe` is a member at this level.
    pub(crate) fn has_member(&self, pe: &PathElement) -> bool {
        self.members.contains(pe)
    }

    /// The paths below `pe` at this level (not including `pe` itself).
    pub(crate) fn child(&self, pe: &PathElement) -> Option<&FieldSet> {
        self.children.get(pe)
    }

    /// Whether anything at or below `pe` is in the set.
    pub(crate) fn touches(&self, pe: &PathElement) -> bool {
        self.members.contains(pe) || self.children.contains_key(pe)
    }

    /// Every element that is a member or has members below it, in order.
    pub(crate) fn elements(&self) -> BTreeSet<&PathElement> {
        self.members.iter().chain(self.children.keys()).collect()
    }

    /// Paths in either set.
    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.members.extend(other.members.iter().cloned());
        for (pe, set) in &other.children {
            let merged = match out.children.get(pe) {
                Some(mine) => mine.union(set),
                None => set.clone(),
            };
            out.children.insert(pe.clone(), merged);
        }
        out
    }

    /// Paths in both sets.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let members = self.members.intersection(&other.members).cloned().collect();
        let mut children = BTreeMap::new();
        for (pe, set) in &self.children {
            if let Some(theirs) = other.children.get(pe) {
                let both = set.intersection(theirs);
                if !both.is_empty() {
                    children.insert(pe.clone(), both);
                }
            }
        }
        FieldSet { members, children }
    }

    /// Paths in `self` but not in `other` (path by path: removing `a` keeps `a.b`).
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let members = self.members.difference(&other.members).cloned().collect();
        let mut children = BTreeMap::new();
        for (pe, set) in &self.children {
            let rest = match other.children.get(pe) {
                Some(theirs) => set.difference(theirs),
                None => set.clone(),
            };
            if !rest.is_empty() {
                children.insert(pe.clone(), rest);
            }
        }
        FieldSet { members, children }
    }

    /// Paths in `self` that neither are in `prefixes` nor lie below one of its
    /// members (upstream `RecursiveDifference`, used to drop reset fields such
    /// as everything under `status`).
    pub fn recursive_difference(&self, prefixes: &FieldSet) -> FieldSet {
        let members = self
            .members
            .difference(&prefixes.members)
            .cloned()
            .collect();
        let mut children = BTreeMap::new();
        for (pe, set) in &self.children {
            if prefixes.members.contains(pe) {
                continue;
            }
            let rest = match prefixes.children.get(pe) {
                Some(theirs) => set.recursive_difference(theirs),
                None => set.clone(),
            };
            if !rest.is_empty() {
                children.insert(pe.clone(), rest);
            }
        }
        FieldSet { members, children }
    }

    /// All member paths, in upstream's iteration order (a level's members
    /// first, then the paths below each child in element order).
    pub fn paths(&self) -> Vec<Vec<PathElement>> {
        let mut out = Vec::new();
        self.collect_paths(&mut Vec::new(), &mut out);
        out
    }

    fn collect_paths(&self, prefix: &mut Vec<PathElement>, out: &mut Vec<Vec<PathElement>>) {
        for pe in &self.members {
            let mut path = prefix.clone();
            path.push(pe.clone());
            out.push(path);
        }
        for (pe, set) in &self.children {
            prefix.push(pe.clone());
            set.collect_paths(prefix, out);
            prefix.pop();
        }
    }

    /// The `fieldsV1` object (`{"f:spec":{"f:replicas":{}}}`). Key order in the
    /// returned map is serde_json's; use [`FieldSet::to_json_string`] for
    /// upstream's exact bytes.
    pub fn to_fields_v1(&self) -> Value {
        Value::Object(self.to_map(false))
    }

    fn to_map(&self, include_self: bool) -> Map<String, Value> {
        let mut map = Map::new();
        if include_self {
            map.insert(".".to_string(), Value::Object(Map::new()));
        }
        for pe in self.elements() {
            let inner = match self.children.get(pe) {
                Some(set) => set.to_map(self.members.contains(pe)),
                None => Map::new(),
            };
            map.insert(serialize_element(pe), Value::Object(inner));
        }
        map
    }

    /// The `fieldsV1` JSON text exactly as the apiserver writes it: `.` first,
    /// then elements in path-element order, compact, Go's HTML escaping.
    pub fn to_json_string(&self) -> String {
        let mut out = String::new();
        self.write_json(false, &mut out);
        out
    }

    fn write_json(&self, include_self: bool, out: &mut String) {
        out.push('{');
        let mut first = true;
        if include_self {
            out.push_str("\".\":{}");
            first = false;
        }
        for pe in self.elements() {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&go_json_escape(
                &Value::String(serialize_element(pe)).to_string(),
            ));
            out.push(':');
            match self.children.get(pe) {
                Some(set) => set.write_json(self.members.contains(pe), out),
                None => out.push_str("{}"),
            }
        }
        out.push('}');
    }

    /// Parse a `fieldsV1` object. Unknown element types are skipped, as upstream does.
    pub fn from_fields_v1(value: &Value) -> Result<FieldSet, ApplyError> {
        let Value::Object(map) = value else {
            return Err(ApplyError::InvalidFieldsV1(
                "fieldsV1 must be an object".to_string(),
            ));
        };
        Ok(FieldSet::read(map)?.0.unwrap_or_default())
    }

    /// Parse `fieldsV1` JSON text.
    pub fn from_json_str(text: &str) -> Result<FieldSet, ApplyError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| ApplyError::InvalidFieldsV1(e.to_string()))?;
        FieldSet::from_fields_v1(&value)
    }

    /// Upstream `readIterV1`: the set below a node and whether the node itself
    /// is a member (it has a `.` key, or nothing below it).
    fn read(map: &Map<String, Value>) -> Result<(Option<FieldSet>, bool), ApplyError> {
        let mut set: Option<FieldSet> = None;
        let mut is_member = false;
        for (key, child) in map {
            if key == "." {
                is_member = true;
                continue;
            }
            let pe = match parse_element(key).map_err(ApplyError::InvalidFieldsV1)? {
                Some(pe) => pe,
                None => continue,
            };
            let Value::Object(child) = child else {
                return Err(ApplyError::InvalidFieldsV1(format!(
                    "value of {key:?} must be an object"
                )));
            };
            let (grandchildren, child_is_member) = FieldSet::read(child)?;
            if child_is_member {
                set.get_or_insert_with(FieldSet::new)
                    .members
                    .insert(pe.clone());
            }
            if let Some(grandchildren) = grandchildren {
                let set = set.get_or_insert_with(FieldSet::new);
                let merged = match set.children.remove(&pe) {
                    Some(existing) => existing.union(&grandchildren),
                    None => grandchildren,
                };
                set.children.insert(pe, merged);
            }
        }
        if set.is_none() {
            is_member = true;
        }
        Ok((set, is_member))
    }
}
