//! Kubernetes strategic merge patch for Sluice.
//!
//! This crate is the server side of `Content-Type:
//! application/strategic-merge-patch+json`, the patch type `kubectl apply`,
//! `kubectl patch` and most controllers send. It works on `serde_json::Value`s
//! and has no knowledge of storage or HTTP.
//!
//! Data flow: the server looks up the patched kind's [`Schema`] with
//! [`schema_for`] (no schema: the kind does not support this patch type and the
//! server answers 415), reads the stored object, and calls
//! [`strategic_merge_patch`] with the stored object, the request body and the
//! schema. The returned object then goes through the usual update path
//! (validation, resourceVersion check, store). Errors ([`SmpError`]) name the
//! offending path and directive and become a 4xx answer.
//!
//! The schema supplies what Kubernetes keeps in Go struct tags: which lists
//! merge by key ([`ListStrategy::MergeByKey`]), which merge as sets of scalars
//! ([`ListStrategy::MergePrimitives`]), and which are replaced wholesale
//! ([`ListStrategy::Replace`], the default). Maps always merge key by key.
//!
//! Semantics follow apimachinery's `strategicpatch` package:
//! - maps merge recursively; `null` deletes a key; other values replace;
//! - `"$patch": "replace"` replaces a map with the rest of the patch map,
//!   `"$patch": "delete"` removes the field (apimachinery leaves an empty map,
//!   which the typed round trip usually drops), `"$patch": "merge"` is the default;
//! - `"$retainKeys": [..]` prunes the stored map to the listed keys, and every
//!   key the patch sets must be listed;
//! - lists merged by key match elements on the key, merge matches, append the
//!   rest; `{key: v, "$patch": "delete"}` deletes, a `{"$patch": "replace"}`
//!   element makes the other elements the whole list; elements without the key
//!   are an error;
//! - scalar lists merge as ordered sets; `"$deleteFromPrimitiveList/<f>": [..]`
//!   removes items from list `f`;
//! - `"$setElementOrder/<f>": [..]` orders list `f` after merging it, even when
//!   the patch does not touch `f` otherwise;
//! - directive keys never reach the result.
//!
//! Element order follows apimachinery exactly (its `normalizeElementOrder`):
//! elements the patch (or `$setElementOrder`) names take the order given
//! there, the others keep their stored order, and the two runs are
//! interleaved by stored position.
//!
//! Deliberate differences from apimachinery, all on inputs kubectl does not
//! produce, and all because the result here is stored as JSON rather than
//! decoded into a Go struct first:
//! - `"$patch": "delete"` on a map removes the field (apimachinery leaves `{}`);
//!   `"$patch": "merge"` on a map is accepted as a no-op (apimachinery rejects it);
//! - a value the stored object lacks is applied to an empty value instead of
//!   being stored raw, so its directives are honoured and stripped and its
//!   `null`s dropped; lists inside it are not checked for merge keys, since
//!   there is nothing to merge with (validation judges the result);
//! - fields the schema does not know are plain maps / atomic lists rather than
//!   an "unable to find api field" error;
//! - `$setElementOrder` on an atomic list of objects leaves the patch list as sent.

mod error;
mod kinds;
mod merge;
mod schema;

pub use error::SmpError;
pub use kinds::schema_for;
pub use merge::strategic_merge_patch;
pub use schema::{Field, ListStrategy, Schema};
