//! Patch metadata: which lists merge, by what key, and which maps retain keys.
//!
//! A [`Schema`] is a static tree of [`Field`]s rooted at an object kind. Each
//! field carries the information Kubernetes expresses with the Go struct tags
//! `patchStrategy` and `patchMergeKey`; fields not mentioned in the tree are
//! plain maps or atomic (`Replace`) lists, which is also the apiserver's default.

/// Where a list lives and how it merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// The patch list replaces the stored list (no `patchStrategy` tag).
    Replace,
    /// A list of objects merged element by element; elements are matched on
    /// the value of the named field (`patchStrategy:"merge"` plus `patchMergeKey`).
    MergeByKey(&'static str),
    /// A list of scalars merged as an ordered set (`patchStrategy:"merge"`
    /// without a merge key).
    MergePrimitives,
}

/// One field of an object in a [`Schema`] tree.
///
/// `children` describe the fields of the value: of the object itself for a map
/// field, of each element for a list of objects. Only fields with a non-default
/// strategy (or with such fields below them) need to appear.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The JSON field name.
    pub name: &'static str,
    /// How the field merges when it holds a list.
    pub list: ListStrategy,
    /// The field has patch strategy `retainKeys` (for a list, its elements do).
    pub retain_keys: bool,
    /// Fields of the value (or of each list element).
    pub children: &'static [Field],
}

impl Field {
    /// A map-valued field whose own fields are described by `children`.
    pub const fn object(name: &'static str, children: &'static [Field]) -> Field {
        Field {
            name,
            list: ListStrategy::Replace,
            retain_keys: false,
            children,
        }
    }

    /// A list of objects merged by `key`; `children` describe each element.
    pub const fn merge_by(
        name: &'static str,
        key: &'static str,
        children: &'static [Field],
    ) -> Field {
        Field {
            name,
            list: ListStrategy::MergeByKey(key),
            retain_keys: false,
            children,
        }
    }

    /// A list replaced wholesale by a patch (no `patchStrategy` tag). That is the
    /// default for unlisted fields; tables use it to document the choice.
    pub const fn atomic(name: &'static str) -> Field {
        Field::object(name, &[])
    }

    /// A list of scalars merged as an ordered set.
    pub const fn primitives(name: &'static str) -> Field {
        Field {
            name,
            list: ListStrategy::MergePrimitives,
            retain_keys: false,
            children: &[],
        }
    }

    /// The same field, with patch strategy `retainKeys` added.
    pub const fn retaining(self) -> Field {
        Field {
            retain_keys: true,
            ..self
        }
    }
}

/// Per-kind patch metadata, answering questions about a field path.
///
/// Paths are field names only, without list indices: the containers of a
/// Deployment are `["spec", "template", "spec", "containers"]` and their
/// environment variables `["spec", "template", "spec", "containers", "env"]`.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    fields: &'static [Field],
}

impl Schema {
    /// A schema whose top-level object has the given fields.
    pub const fn new(fields: &'static [Field]) -> Schema {
        Schema { fields }
    }

    /// The top-level fields.
    pub(crate) fn root(&self) -> &'static [Field] {
        self.fields
    }

    /// The field at `path`, if the schema describes it.
    pub fn field(&self, path: &[&str]) -> Option<&'static Field> {
        let mut fields = self.fields;
        let mut found = None;
        for name in path {
            let field = lookup(fields, name)?;
            fields = field.children;
            found = Some(field);
        }
        found
    }

    /// How the list at `path` merges; [`ListStrategy::Replace`] when the schema
    /// says nothing about it.
    pub fn list_strategy(&self, path: &[&str]) -> ListStrategy {
        self.field(path)
            .map_or(ListStrategy::Replace, |field| field.list)
    }

    /// Whether the field at `path` has patch strategy `retainKeys` (for a list,
    /// whether its elements do).
    pub fn retain_keys(&self, path: &[&str]) -> bool {
        self.field(path).is_some_and(|field| field.retain_keys)
    }
}

/// The field called `name` among `fields`.
pub(crate) fn lookup(fields: &'static [Field], name: &str) -> Option<&'static Field> {
    fields.iter().find(|field| field.name == name)
}
