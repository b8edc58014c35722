//! The registry: every write to an object goes through here, whether it comes from an API
//! client or from a controller. What differs by kind is the kind's [`strategy::Strategy`].
//!
//! Create: decode (unknown fields dropped) → fill metadata (uid, creationTimestamp,
//! generateName) → kind defaults → the strategy's create preparation → managedFields for the
//! writer → validate → allocate (ClusterIP, NodePort, podCIDR) → store. Update: the same on top
//! of the stored object with optimistic concurrency; status and main resource are written
//! separately as on the apiserver. Patch: JSON patch, merge patch or strategic merge patch on
//! the stored object, then update; server-side apply merges the manager's configuration with
//! `sluice-ssa` (creating the object when missing). Delete: graceful for pods bound to a node,
//! cascading for namespaces; an object with finalizers (or deleted with the Orphan or
//! Foreground propagation policy) is only marked, and goes when its last finalizer is removed.

pub(crate) mod claims;
mod managed;
mod namespace;
mod node;
mod pod;
mod service;
pub mod strategy;

pub use managed::{field_manager, manager_from_user_agent, with_field_manager, IN_PROCESS_MANAGER};
pub use namespace::NamespaceStrategy;
pub use node::{LeaseStrategy, NodeStrategy};
pub use pod::PodStrategy;
pub use service::ServiceStrategy;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::{IpNet, Ipv4Net};
use rand::Rng;
use serde_json::{json, Value};
use sluice_store::{Revision, Store, StoreError, Stored};

use crate::alloc::{IpAllocator, PodCidrs, PortAllocator};
use crate::resources::{self, Resource};
use crate::selectors::{labels_of, FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult, Cause};
use strategy::DeleteMode;

/// Ranges the registry allocates from.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// `--service-cidr`.
    pub service_cidr: IpNet,
    /// `--service-node-port-range`.
    pub node_port_range: (u16, u16),
    /// `--cluster-cidr`.
    pub cluster_cidr: Ipv4Net,
    /// `--node-cidr-mask-size`.
    pub node_cidr_mask: u8,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            service_cidr: "10.96.0.0/12".parse().expect("literal"),
            node_port_range: (30000, 32767),
            cluster_cidr: "10.244.0.0/16".parse().expect("literal"),
            node_cidr_mask: 24,
        }
    }
}

pub(crate) struct Allocators {
    pub(crate) cluster_ips: IpAllocator,
    pub(crate) node_ports: PortAllocator,
    pub(crate) pod_cidrs: PodCidrs,
}

/// Patch body formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// RFC 6902.
    Json,
    /// RFC 7396.
    Merge,
    /// Kubernetes strategic merge patch.
    Strategic,
    /// Server-side apply (`application/apply-patch+yaml`): the body is the manager's whole
    /// intent, not a patch.
    Apply,
}

impl PatchType {
    /// From a Content-Type header value.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            // JSON is YAML: one parser reads both forms.
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The object (status is kept from the stored object where a status subresource exists).
    Main,
    /// The `status` subresource (only status is taken from the request).
    Status,
}

/// `DeleteOptions.propagationPolicy`: what happens to the object's dependents (objects whose
/// `ownerReferences` name it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// The dependents are kept and their references to the owner removed (the `orphan`
    /// finalizer holds the owner until the garbage collector has done so).
    Orphan,
    /// The owner goes now; the garbage collector deletes the dependents afterwards.
    Background,
    /// The owner stays, marked deleted with the `foregroundDeletion` finalizer, until the
    /// garbage collector has deleted the dependents that block it.
    Foreground,
}

impl Propagation {
    /// From the `propagationPolicy` string.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Orphan" => Some(Propagation::Orphan),
            "Background" => Some(Propagation::Background),
            "Foreground" => Some(Propagation::Foreground),
            _ => None,
        }
    }

    /// The finalizer that holds the owner while the garbage collector works.
    fn finalizer(self) -> Option<&'static str> {
        match self {
            Propagation::Orphan => Some(FINALIZER_ORPHAN),
            Propagation::Foreground => Some(FINALIZER_FOREGROUND),
            Propagation::Background => None,
        }
    }
}

/// The finalizer of an owner deleted with `propagationPolicy: Orphan`.
pub const FINALIZER_ORPHAN: &str = "orphan";
/// The finalizer of an owner deleted with `propagationPolicy: Foreground`.
pub const FINALIZER_FOREGROUND: &str = "foregroundDeletion";

/// `DeleteOptions` that matter here.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `gracePeriodSeconds`.
    pub grace_period_seconds: Option<i64>,
    /// `propagationPolicy` (or the deprecated `orphanDependents`); None is Background, the
    /// default of every kind served here.
    pub propagation: Option<Propagation>,
    /// `preconditions.resourceVersion`.
    pub precondition_rv: Option<String>,
    /// `preconditions.uid`.
    pub precondition_uid: Option<String>,
}

/// The registry.
pub struct Registry {
    store: Arc<dyn Store>,
    cfg: RegistryConfig,
    alloc: Mutex<Allocators>,
}

/// Current time as the apiserver writes it.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn random_suffix() -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(|x| x.as_str())
}

fn store_err(res: &Resource, name: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::AlreadyExists { .. } => ApiError::already_exists(res, name),
        StoreError::NotFound { .. } => ApiError::not_found(res, name),
        StoreError::Conflict { .. } => ApiError::conflict(res, name),
        other => store_unavailable(other),
    }
}

/// A store failure that is not about the object (etcd without quorum, a timeout): 504
/// `Timeout` when the backend timed out, else 500 — the write was not acknowledged.
pub(crate) fn store_unavailable(e: StoreError) -> ApiError {
    let msg = e.to_string();
    if msg.contains("timed out") {
        ApiError::timeout(msg)
    } else {
        ApiError::internal(msg)
    }
}

fn causes(errs: Vec<sluice_validation::FieldError>) -> Vec<Cause> {
    errs.into_iter()
        .map(|e| Cause {
            reason: e.reason().to_string(),
            message: e.message(),
            field: e.field.clone(),
        })
        .collect()
}

impl Registry {
    /// A registry over `store`; rebuilds the allocators from the stored objects.
    pub fn new(store: Arc<dyn Store>, cfg: RegistryConfig) -> Self {
        let reg = Registry {
            store,
            alloc: Mutex::new(Allocators {
                cluster_ips: IpAllocator::new(cfg.service_cidr),
                node_ports: PortAllocator::new(cfg.node_port_range.0, cfg.node_port_range.1),
                pod_cidrs: PodCidrs::new(cfg.cluster_cidr, cfg.node_cidr_mask),
            }),
            cfg,
        };
        let mut alloc = reg.build_allocators();
        // Values claimed through other API servers (or by writes in flight) are taken too.
        reg.occupy_claimed(&mut alloc);
        *reg.allocators() = alloc;
        reg
    }

    /// Allocators holding what the stored Services and Nodes hold.
    fn build_allocators(&self) -> Allocators {
        let cfg = &self.cfg;
        let mut alloc = Allocators {
            cluster_ips: IpAllocator::new(cfg.service_cidr),
            node_ports: PortAllocator::new(cfg.node_port_range.0, cfg.node_port_range.1),
            pod_cidrs: PodCidrs::new(cfg.cluster_cidr, cfg.node_cidr_mask),
        };
        let svcs = resources::by_kind("Service");
        for s in self.store.list(&svcs.prefix()).0 {
            if let Ok(v) = s.value() {
                service::reserve_existing(&mut alloc, &v, &s.key);
            }
        }
        node::rebuild(&mut alloc.pod_cidrs, self.store.as_ref());
        alloc
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    pub(crate) fn allocators(&self) -> std::sync::MutexGuard<'_, Allocators> {
        self.alloc.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads one object.
    pub fn get(&self, res: &Resource, ns: Option<&str>, name: &str) -> ApiResult<Arc<Stored>> {
        self.store
            .get(&res.key(ns, name))
            .ok_or_else(|| ApiError::not_found(res, name))
    }

    /// Reads one object as JSON.
    pub fn get_value(&self, res: &Resource, ns: Option<&str>, name: &str) -> ApiResult<Value> {
        let s = self.get(res, ns, name)?;
        s.value().map_err(|e| ApiError::internal(e.to_string()))
    }

    /// Lists objects matching selectors, in key order, with the revision they reflect.
    pub fn list(
        &self,
        res: &Resource,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> (Vec<Arc<Stored>>, Revision) {
        let (items, rev) = self.store.list(&res.ns_prefix(ns));
        if labels.is_empty() && fields.is_empty() {
            return (items, rev);
        }
        let items = items
            .into_iter()
            .filter(|s| matches(res, s, labels, fields))
            .collect();
        (items, rev)
    }

    fn check_namespace(&self, res: &Resource, ns: Option<&str>) -> ApiResult<()> {
        if let (true, Some(ns)) = (res.namespaced, ns) {
            let nsr = resources::by_kind("Namespace");
            match self.store.get(&nsr.key(None, ns)) {
                None => return Err(ApiError::not_found(nsr, ns)),
                Some(s) => {
                    let v = s.value().map_err(|e| ApiError::internal(e.to_string()))?;
                    if v.pointer("/metadata/deletionTimestamp").is_some()
                        || str_at(&v, "/status/phase") == Some("Terminating")
                    {
                        return Err(ApiError::new(
                            403,
                            "Forbidden",
                            format!(
                                "{} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                                res.plural
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Decodes and checks type meta; fills apiVersion/kind when absent.
    fn decode(&self, res: &Resource, mut obj: Value) -> ApiResult<Value> {
        let Some(map) = obj.as_object_mut() else {
            return Err(ApiError::bad_request(
                "the body of the request is not a JSON object",
            ));
        };
        // Type meta and metadata of the wrong JSON type are decode errors (400), as Go's
        // decoder reports them, not something to fill in and then fail validation on.
        for (field, want) in [("kind", "string"), ("apiVersion", "string")] {
            if let Some(v) = map.get(field).filter(|v| !v.is_string() && !v.is_null()) {
                return Err(ApiError::bad_request(format!(
                    "couldn't get version/kind; json parse error: json: cannot unmarshal {} into Go struct field .{field} of type {want}",
                    json_type(v)
                )));
            }
        }
        if let Some(m) = map
            .get("metadata")
            .filter(|m| !m.is_object() && !m.is_null())
        {
            return Err(ApiError::bad_request(format!(
                "{kind} in version \"{version}\" cannot be handled as a {kind}: json: cannot unmarshal {} into Go struct field {kind}.metadata of type v1.ObjectMeta",
                json_type(m),
                kind = res.kind,
                version = res.version,
            )));
        }
        match map.get("kind").and_then(|k| k.as_str()) {
            None | Some("") => {
                map.insert("kind".into(), json!(res.kind));
            }
            Some(k) if k == res.kind => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({}) does not match the expected API version ({}) or kind {k} is not {}",
                    map.get("apiVersion").and_then(|a| a.as_str()).unwrap_or(""),
                    res.api_version(),
                    res.kind
                )))
            }
        }
        match map.get("apiVersion").and_then(|k| k.as_str()) {
            None | Some("") => {
                map.insert("apiVersion".into(), json!(res.api_version()));
            }
            Some(v) if v == res.api_version() => {}
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({})",
                res.api_version()
            )))
            }
        }
        if !map.get("metadata").is_some_and(|m| m.is_object()) {
            map.insert("metadata".into(), json!({}));
        }
        let kind = res
            .validation_kind()
            .ok_or_else(|| ApiError::internal(format!("no validation for {}", res.kind)))?;
        sluice_validation::normalize(kind, obj).map_err(ApiError::bad_request)
    }

    /// Creates an object.
    pub async fn create(
        &self,
        res: &Resource,
        ns: Option<&str>,
        obj: Value,
    ) -> ApiResult<Arc<Stored>> {
        self.create_inner(res, ns, obj, false).await
    }

    /// Creates an object; `applied` when it is the result of a server-side apply, whose
    /// managedFields are already the apply's.
    async fn create_inner(
        &self,
        res: &Resource,
        ns: Option<&str>,
        obj: Value,
        applied: bool,
    ) -> ApiResult<Arc<Stored>> {
        let node_writer = node::writer(res);
        let mut obj = self.decode(res, obj)?;
        let ns = if res.namespaced { ns } else { None };
        {
            let meta = obj["metadata"]
                .as_object_mut()
                .expect("decode ensures metadata");
            if let Some(want) = ns {
                match meta.get("namespace").and_then(|n| n.as_str()) {
                    None | Some("") => {
                        meta.insert("namespace".into(), json!(want));
                    }
                    Some(n) if n == want => {}
                    Some(_) => {
                        return Err(ApiError::bad_request(
                            "the namespace of the provided object does not match the namespace sent on the request",
                        ))
                    }
                }
            } else {
                meta.remove("namespace");
            }
            let name = meta.get("name").and_then(|n| n.as_str()).unwrap_or("");
            if name.is_empty() {
                if let Some(g) = meta.get("generateName").and_then(|g| g.as_str()) {
                    if !g.is_empty() {
                        let n = format!("{g}{}", random_suffix());
                        meta.insert("name".into(), json!(n));
                    }
                }
            }
            meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
            meta.insert("generation".into(), json!(1));
            for k in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
                meta.remove(k);
            }
        }
        let vkind = res.validation_kind().expect("decode checked");
        sluice_validation::apply_defaults(vkind, &mut obj);
        res.strategy.prepare_for_create(&mut obj);
        if !applied {
            managed::record_update(res, None, &mut obj, None);
        }
        let name = str_at(&obj, "/metadata/name").unwrap_or("").to_string();
        node::admit(node_writer.as_deref(), res, &name, None, &obj, Part::Main)?;
        let errs = sluice_validation::validate_create(vkind, &obj);
        if !errs.is_empty() {
            return Err(ApiError::invalid(res, &name, causes(errs)));
        }
        self.check_namespace(res, ns)?;
        let key = res.key(ns, &name);
        if self.store.get(&key).is_some() {
            return Err(ApiError::already_exists(res, &name));
        }
        let (held, claimed) = self
            .reserve_and_claim(res, &name, &key, None, &mut obj)
            .await?;
        match self.store.create(key, obj).await {
            Ok(s) => {
                held.commit(self);
                self.claims_commit(claimed).await;
                Ok(s)
            }
            Err(e) => {
                held.rollback(self);
                self.claims_rollback(claimed, claims::definitely_not_written(&e))
                    .await;
                Err(store_err(res, &name, e))
            }
        }
    }

    /// Replaces an object (PUT), or its status.
    pub async fn update(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        part: Part,
    ) -> ApiResult<Arc<Stored>> {
        let node_writer = node::writer(res);
        let ns = if res.namespaced { ns } else { None };
        let current = self.get(res, ns, name)?;
        let new = self.decode(res, obj)?;
        if node_writer.is_some() {
            let old = current
                .value()
                .map_err(|e| ApiError::internal(e.to_string()))?;
            node::admit(node_writer.as_deref(), res, name, Some(&old), &new, part)?;
        }
        let body_rv = str_at(&new, "/metadata/resourceVersion").map(str::to_string);
        if let Some(rv) = &body_rv {
            if !rv.is_empty() && *rv != current.mod_revision.to_string() {
                return Err(ApiError::conflict(res, name));
            }
        }
        let body_name = str_at(&new, "/metadata/name").unwrap_or("");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        self.write_update(res, ns, name, &current, new, part).await
    }

    /// Applies a patch to the stored object and writes the result. Retries a few times when
    /// the object changes underneath (as the apiserver does for patches without a
    /// resourceVersion precondition).
    pub async fn patch(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        patch_type: PatchType,
        patch: Value,
        part: Part,
    ) -> ApiResult<Arc<Stored>> {
        let node_writer = node::writer(res);
        let ns = if res.namespaced { ns } else { None };
        let mut attempts = 0;
        loop {
            attempts += 1;
            let current = self.get(res, ns, name)?;
            let original = current
                .value()
                .map_err(|e| ApiError::internal(e.to_string()))?;
            let patched = apply_patch(res, &original, patch_type, &patch)?;
            // A resourceVersion in the patch is a precondition.
            if let Some(rv) = str_at(&patched, "/metadata/resourceVersion") {
                if rv != current.mod_revision.to_string() {
                    return Err(ApiError::conflict(res, name));
                }
            }
            let patched = self.decode(res, patched)?;
            node::admit(
                node_writer.as_deref(),
                res,
                name,
                Some(&original),
                &patched,
                part,
            )?;
            match self
                .write_update(res, ns, name, &current, patched, part)
                .await
            {
                Err(e) if e.code == 409 && e.reason == "Conflict" && attempts < 5 => continue,
                other => return other,
            }
        }
    }

    /// Server-side apply (`PATCH` with `application/apply-patch+yaml`): merges the manager's
    /// configuration into the object, or creates it when missing (the bool says created).
    pub async fn apply(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        applied: Value,
        force: bool,
        part: Part,
    ) -> ApiResult<(Arc<Stored>, bool)> {
        let node_writer = node::writer(res);
        let ns = if res.namespaced { ns } else { None };
        let body_name = str_at(&applied, "/metadata/name").unwrap_or("");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let sub = (part == Part::Status).then_some("status");
        let mut attempts = 0;
        loop {
            attempts += 1;
            let Some(current) = self.store.get(&res.key(ns, name)) else {
                if part == Part::Status {
                    return Err(ApiError::not_found(res, name));
                }
                let merged = managed::merge_apply(res, name, None, &applied, force, sub)?;
                match self.create_inner(res, ns, merged, true).await {
                    Err(e) if e.code == 409 && attempts < 5 => continue,
                    other => return other.map(|s| (s, true)),
                }
            };
            let live = current
                .value()
                .map_err(|e| ApiError::internal(e.to_string()))?;
            let merged = managed::merge_apply(res, name, Some(&live), &applied, force, sub)?;
            let merged = self.decode(res, merged)?;
            node::admit(
                node_writer.as_deref(),
                res,
                name,
                Some(&live),
                &merged,
                part,
            )?;
            match self
                .write_update_inner(res, ns, name, &current, merged, part, true)
                .await
            {
                Err(e) if e.code == 409 && e.reason == "Conflict" && attempts < 5 => continue,
                other => return other.map(|s| (s, false)),
            }
        }
    }

    async fn write_update(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        current: &Stored,
        new: Value,
        part: Part,
    ) -> ApiResult<Arc<Stored>> {
        self.write_update_inner(res, ns, name, current, new, part, false)
            .await
    }

    /// [`Registry::write_update`]; `applied` when `new` is a server-side apply's result, whose
    /// managedFields are already the apply's.
    #[allow(clippy::too_many_arguments)]
    async fn write_update_inner(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        current: &Stored,
        mut new: Value,
        part: Part,
        applied: bool,
    ) -> ApiResult<Arc<Stored>> {
        let old = current
            .value()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let has_status = res.has_subresource("status");
        match part {
            Part::Status => {
                // Only status comes from the request.
                let status = new.get("status").cloned();
                let mut merged = old.clone();
                match status {
                    Some(s) => merged["status"] = s,
                    None => {
                        if let Some(m) = merged.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                // Labels and annotations are writable through status on the apiserver only
                // for a few kinds; keep the stored metadata.
                new = merged;
            }
            Part::Main => {
                if has_status {
                    match old.get("status") {
                        Some(s) => new["status"] = s.clone(),
                        None => {
                            if let Some(m) = new.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
            }
        }
        // Server-owned metadata is kept from the stored object.
        {
            let old_meta = old["metadata"].as_object().cloned().unwrap_or_default();
            let meta = new["metadata"]
                .as_object_mut()
                .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
                "name",
            ] {
                match old_meta.get(k) {
                    Some(v) => {
                        meta.insert(k.into(), v.clone());
                    }
                    None => {
                        meta.remove(k);
                    }
                }
            }
            meta.remove("selfLink");
        }
        let vkind = res.validation_kind().expect("served kind");
        sluice_validation::apply_defaults(vkind, &mut new);
        if !applied {
            let sub = (part == Part::Status).then_some("status");
            managed::record_update(res, Some(&old), &mut new, sub);
        }
        if part == Part::Main && old.get("spec") != new.get("spec") {
            let g = old
                .pointer("/metadata/generation")
                .and_then(|g| g.as_i64())
                .unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        let (held, claimed): (Box<dyn strategy::Held>, claims::Claimed) = if part == Part::Main {
            self.reserve_and_claim(res, name, &current.key, Some(&old), &mut new)
                .await?
        } else {
            (Box::new(strategy::NothingHeld), claims::Claimed::default())
        };
        let errs = match part {
            Part::Main => sluice_validation::validate_update(vkind, &old, &new),
            Part::Status => sluice_validation::validate_status_update(vkind, &old, &new),
        };
        if !errs.is_empty() {
            held.rollback(self);
            self.claims_rollback(claimed, true).await;
            return Err(ApiError::invalid(res, name, causes(errs)));
        }
        if old == new_without_rv(&new, &old) {
            // No-op update: the apiserver does not write (resourceVersion stays).
            held.rollback(self);
            self.claims_rollback(claimed, true).await;
            return Ok(Arc::new(current.clone()));
        }
        if finalized(&new) {
            // The last finalizer of an object marked deleted went: it is removed, as the
            // apiserver does on such an update.
            held.rollback(self);
            self.claims_rollback(claimed, true).await;
            return self.remove(res, name, current, &old).await;
        }
        match self
            .store
            .update(res.key(ns, name), new, Some(current.mod_revision))
            .await
        {
            Ok(s) => {
                held.commit(self);
                self.claims_commit(claimed).await;
                Ok(s)
            }
            Err(e) => {
                held.rollback(self);
                self.claims_rollback(claimed, claims::definitely_not_written(&e))
                    .await;
                Err(store_err(res, name, e))
            }
        }
    }

    /// Deletes an object; pods bound to a node are deleted gracefully (deletionTimestamp set,
    /// removed when the grace period ends or the node confirms with a zero grace period).
    pub async fn delete(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<Arc<Stored>> {
        // A write between our read and the delete (a controller's status update) is not the
        // client's conflict: retry on the newer object, as the apiserver's delete does, unless
        // the client asked for a resourceVersion precondition.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.delete_once(res, ns, name, opts).await {
                Err(e)
                    if e.code == 409
                        && e.reason == "Conflict"
                        && opts.precondition_rv.is_none()
                        && attempts < 5
                        && !self.uid_precondition_failed(res, ns, name, opts) =>
                {
                    continue
                }
                other => return other,
            }
        }
    }

    fn uid_precondition_failed(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> bool {
        let Some(uid) = &opts.precondition_uid else {
            return false;
        };
        let ns = if res.namespaced { ns } else { None };
        self.get_value(res, ns, name)
            .ok()
            .is_none_or(|v| str_at(&v, "/metadata/uid") != Some(uid.as_str()))
    }

    async fn delete_once(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<Arc<Stored>> {
        let ns = if res.namespaced { ns } else { None };
        let current = self.get(res, ns, name)?;
        let v = current
            .value()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        if let Some(rv) = &opts.precondition_rv {
            if *rv != current.mod_revision.to_string() {
                return Err(ApiError::conflict(res, name));
            }
        }
        if let Some(uid) = &opts.precondition_uid {
            if Some(uid.as_str()) != str_at(&v, "/metadata/uid") {
                return Err(ApiError::conflict(res, name));
            }
        }
        match res.strategy.delete_mode(&v, opts) {
            DeleteMode::Graceful(grace) => {
                if v.pointer("/metadata/deletionTimestamp").is_some() {
                    return Ok(current);
                }
                let mut nv = v.clone();
                let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace);
                nv["metadata"]["deletionTimestamp"] =
                    json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
                nv["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                return self
                    .store
                    .update(current.key.clone(), nv, Some(current.mod_revision))
                    .await
                    .map_err(|e| store_err(res, name, e));
            }
            DeleteMode::NamespaceContents => self.delete_namespace_contents(name).await?,
            DeleteMode::Immediate => {}
        }
        // Finalizers hold the object, marked deleted, until their controllers remove them.
        let mut finalizers: Vec<String> = v
            .pointer("/metadata/finalizers")
            .and_then(|f| f.as_array())
            .map(|f| {
                f.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(f) = opts.propagation.and_then(Propagation::finalizer) {
            // A later delete may switch the policy, as upstream allows.
            finalizers.retain(|x| x != FINALIZER_ORPHAN && x != FINALIZER_FOREGROUND);
            finalizers.push(f.to_string());
        }
        if !finalizers.is_empty() {
            let mut nv = v.clone();
            nv["metadata"]["finalizers"] = json!(finalizers);
            if v.pointer("/metadata/deletionTimestamp").is_none() {
                nv["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            }
            nv["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            if nv == v {
                return Ok(current);
            }
            return self
                .store
                .update(current.key.clone(), nv, Some(current.mod_revision))
                .await
                .map_err(|e| store_err(res, name, e));
        }
        self.remove(res, name, &current, &v).await
    }

    /// Removes a stored object and gives back what it held.
    async fn remove(
        &self,
        res: &Resource,
        name: &str,
        current: &Stored,
        v: &Value,
    ) -> ApiResult<Arc<Stored>> {
        let gone = self
            .store
            .delete(current.key.clone(), Some(current.mod_revision))
            .await
            .map_err(|e| store_err(res, name, e))?;
        res.strategy.release_deleted(self, v);
        self.claims_release(res, &current.key, v).await;
        Ok(gone)
    }

    async fn delete_namespace_contents(&self, ns: &str) -> ApiResult<()> {
        for r in resources::RESOURCES.iter().filter(|r| r.namespaced) {
            for s in self.store.list(&r.ns_prefix(Some(ns))).0 {
                let (_, name) = r.split_key(&s.key);
                let name = name.to_string();
                let opts = DeleteOptions {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                };
                match Box::pin(self.delete(r, Some(ns), &name, &opts)).await {
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// `pods/binding`: assigns a pod to a node once.
    pub async fn bind_pod(&self, ns: &str, name: &str, binding: &Value) -> ApiResult<Arc<Stored>> {
        let res = resources::by_kind("Pod");
        let target = str_at(binding, "/target/name").unwrap_or("");
        if target.is_empty() {
            return Err(ApiError::invalid_field(
                res,
                name,
                "target.name",
                "Required value".into(),
            ));
        }
        let current = self.get(res, Some(ns), name)?;
        let mut v = current
            .value()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        if let Some(n) = str_at(&v, "/spec/nodeName").filter(|n| !n.is_empty()) {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{n}\""),
            ));
        }
        v["spec"]["nodeName"] = json!(target);
        // The binding sets PodScheduled=True, as the apiserver's binding storage does.
        if !v["status"].is_object() {
            v["status"] = json!({});
        }
        if let Some(st) = v["status"].as_object_mut() {
            let conds = st.entry("conditions").or_insert_with(|| json!([]));
            if let Some(list) = conds.as_array_mut() {
                list.retain(|c| c["type"] != "PodScheduled");
                list.push(json!({
                    "type": "PodScheduled",
                    "status": "True",
                    "lastProbeTime": null,
                    "lastTransitionTime": now_rfc3339(),
                }));
            }
        }
        self.store
            .update(current.key.clone(), v, Some(current.mod_revision))
            .await
            .map_err(|e| store_err(res, name, e))
    }

    /// Creates the namespaces every cluster has.
    pub async fn bootstrap(&self) -> ApiResult<()> {
        let nsr = resources::by_kind("Namespace");
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            if self.store.get(&nsr.key(None, ns)).is_none() {
                match self
                    .create(nsr, None, json!({"metadata": {"name": ns}}))
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Whether a pod bound to `node` references the object `res`/`ns`/`name` (for the Node
    /// authorizer: a kubelet reads the ConfigMaps, Secrets and ServiceAccounts of its pods).
    pub fn node_references(&self, node: &str, res: &Resource, ns: &str, name: &str) -> bool {
        let pods = resources::by_kind("Pod");
        self.store
            .list(&pods.ns_prefix(Some(ns)))
            .0
            .iter()
            .filter_map(|s| s.value().ok())
            .any(|p| {
                str_at(&p, "/spec/nodeName") == Some(node) && pod::references(&p, res.kind, name)
            })
    }

    /// Whether a ClusterIP lies in the service CIDR (for tests and controllers).
    pub fn in_service_cidr(&self, ip: IpAddr) -> bool {
        self.allocators().cluster_ips.in_range(ip)
    }
}

impl Registry {
    fn scale_of(&self, d: &Stored) -> ApiResult<Value> {
        let v = d.value().map_err(|e| ApiError::internal(e.to_string()))?;
        let selector = v
            .pointer("/spec/selector/matchLabels")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let meta = &v["metadata"];
        Ok(json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta["resourceVersion"],
                "creationTimestamp": meta["creationTimestamp"],
            },
            "spec": {"replicas": v.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
            "status": {
                "replicas": v.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
                "selector": selector,
            },
        }))
    }

    /// `GET <deployments|replicasets>/<name>/scale`: an `autoscaling/v1` Scale.
    pub fn get_scale(&self, res: &Resource, ns: &str, name: &str) -> ApiResult<Value> {
        let d = self.get(res, Some(ns), name)?;
        self.scale_of(&d)
    }

    /// `PUT <deployments|replicasets>/<name>/scale`.
    pub async fn update_scale(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        scale: Value,
    ) -> ApiResult<Value> {
        let current = self.get(res, Some(ns), name)?;
        if let Some(rv) = str_at(&scale, "/metadata/resourceVersion").filter(|r| !r.is_empty()) {
            if rv != current.mod_revision.to_string() {
                return Err(ApiError::conflict(res, name));
            }
        }
        let replicas = scale
            .pointer("/spec/replicas")
            .and_then(|r| r.as_i64())
            .unwrap_or(0);
        if replicas < 0 {
            return Err(ApiError::invalid_field(
                res,
                name,
                "spec.replicas",
                format!("Invalid value: {replicas}: must be greater than or equal to 0"),
            ));
        }
        let mut v = current
            .value()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        v["spec"]["replicas"] = json!(replicas);
        let s = self
            .write_update(res, Some(ns), name, &current, v, Part::Main)
            .await?;
        self.scale_of(&s)
    }

    /// `PATCH <deployments|replicasets>/<name>/scale`: the patch applies to the Scale object.
    pub async fn patch_scale(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        pt: PatchType,
        patch: Value,
    ) -> ApiResult<Value> {
        let scale = self.get_scale(res, ns, name)?;
        let patched = match pt {
            PatchType::Strategic => {
                let schema = sluice_smp::schema_for("autoscaling", "Scale").ok_or_else(|| {
                    ApiError::unsupported_media("application/strategic-merge-patch+json")
                })?;
                sluice_smp::strategic_merge_patch(&scale, &patch, schema)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?
            }
            other => apply_patch(res, &scale, other, &patch)?,
        };
        self.update_scale(res, ns, name, patched).await
    }
}

/// Whether an object is marked deleted with no grace period left and no finalizer.
fn finalized(v: &Value) -> bool {
    v.pointer("/metadata/deletionTimestamp").is_some()
        && v.pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(|g| g.as_i64())
            .unwrap_or(0)
            == 0
        && v.pointer("/metadata/finalizers")
            .and_then(|f| f.as_array())
            .is_none_or(|f| f.is_empty())
}

/// Compares ignoring resourceVersion: the stored object carries one, the new one may not.
fn new_without_rv(new: &Value, old: &Value) -> Value {
    let mut n = new.clone();
    match old.pointer("/metadata/resourceVersion") {
        Some(rv) => n["metadata"]["resourceVersion"] = rv.clone(),
        None => {
            if let Some(m) = n["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
        }
    }
    n
}

/// Applies a patch document of the given type.
pub fn apply_patch(
    res: &Resource,
    original: &Value,
    pt: PatchType,
    patch: &Value,
) -> ApiResult<Value> {
    match pt {
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            let mut doc = original.clone();
            json_patch::patch(&mut doc, &p).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
            Ok(doc)
        }
        PatchType::Merge => {
            let mut doc = original.clone();
            json_patch::merge(&mut doc, patch);
            Ok(doc)
        }
        PatchType::Strategic => {
            let schema = sluice_smp::schema_for(res.group, res.kind).ok_or_else(|| {
                ApiError::unsupported_media("application/strategic-merge-patch+json")
            })?;
            sluice_smp::strategic_merge_patch(original, patch, schema)
                .map_err(|e| ApiError::bad_request(e.to_string()))
        }
        PatchType::Apply => Err(ApiError::unsupported_media("application/apply-patch+yaml")),
    }
}

/// Whether a stored object matches the selectors.
pub fn matches(res: &Resource, s: &Stored, labels: &LabelSelector, fields: &FieldSelector) -> bool {
    let (ns, name) = res.split_key(&s.key);
    if labels.is_empty() && fields.only_identity() {
        return fields.matches(ns, name, None);
    }
    let Ok(v) = s.value() else { return false };
    labels.matches(&labels_of(&v)) && fields.matches(ns, name, Some(&v))
}

#[cfg(test)]
mod tests;

/// Go's name for a JSON value's type, as its decoder's errors say it.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
