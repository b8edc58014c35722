//! Cluster-wide claims on allocated values (ClusterIPs, NodePorts, podCIDRs), so that API
//! servers sharing one store never hand the same value out twice.
//!
//! Each API server keeps its allocators in memory (fast, and they decide which value to try),
//! but a value only counts as taken once a claim key for it exists in the store:
//! `/registry/sluice.dev/claims/<range>/<value>`, created with the store's create-if-absent
//! (an etcd transaction on `create_revision == 0`), naming the owning object's key and uid.
//! Upstream keeps one allocation bitmap per range in etcd and compare-and-swaps it; one key
//! per value does the same job without making every allocation contend on a single key.
//!
//! A write flows: reserve in memory → claim the values the object gains → write the object →
//! release the claims of values it gave up (or, if the write failed, the claims just made).
//! When a claim already belongs to someone else (another API server took the value after this
//! one last looked), the value is marked used in memory and the reservation is retried with
//! another value; a value the client asked for by name then fails validation as taken.
//!
//! Claims are exact values: two Nodes given overlapping podCIDR blocks of *different* sizes
//! through two API servers at the same moment are not caught by them (the node IPAM
//! controller, which runs in one instance, only hands out blocks of one size).
//!
//! A crash between claim and write leaves an orphan claim, and a claim can be missing for an
//! object written by an older version: [`Registry::repair_claims`] (run by the leader's
//! controllers, like upstream's repair loops) creates the missing ones and deletes claims
//! whose owner no longer holds the value, once they have been orphans for two passes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::{json, Value};
use sluice_store::StoreError;

use super::{node, service, store_unavailable, Registry};
use crate::alloc::{parse_cidr_sloppy, Holder};
use crate::resources::{by_kind, Resource};
use crate::status::{ApiError, ApiResult};

/// Where claims live.
pub(crate) const PREFIX: &str = "/registry/sluice.dev/claims/";

/// How often the leader checks claims against the objects.
pub(crate) const REPAIR_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Service ClusterIPs.
pub(crate) const SERVICE_IPS: &str = "serviceips";
/// Service NodePorts (and health-check NodePorts).
pub(crate) const NODE_PORTS: &str = "nodeports";
/// Node podCIDR blocks.
pub(crate) const POD_CIDRS: &str = "podcidrs";

/// One allocated value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Claim {
    /// [`SERVICE_IPS`], [`NODE_PORTS`] or [`POD_CIDRS`].
    pub(crate) range: &'static str,
    /// The value as the object spells it (`10.96.0.10`, `30080`, `10.244.1.0/24`).
    pub(crate) value: String,
}

impl Claim {
    pub(crate) fn new(range: &'static str, value: impl ToString) -> Self {
        Claim {
            range,
            value: value.to_string(),
        }
    }

    /// The claim's store key (`/` in a CIDR becomes `_`: keys are paths).
    pub(crate) fn key(&self) -> String {
        format!("{PREFIX}{}/{}", self.range, self.value.replace('/', "_"))
    }

    fn object(&self, owner: &Owner) -> Value {
        json!({
            "apiVersion": "sluice.dev/v1",
            "kind": "AllocationClaim",
            "metadata": {"name": self.value.replace('/', "_")},
            "range": self.range,
            "value": self.value,
            "owner": {"key": owner.key, "uid": owner.uid},
        })
    }

    fn from_object(v: &Value) -> Option<(Claim, Owner)> {
        let range = match v.get("range")?.as_str()? {
            SERVICE_IPS => SERVICE_IPS,
            NODE_PORTS => NODE_PORTS,
            POD_CIDRS => POD_CIDRS,
            _ => return None,
        };
        let claim = Claim::new(range, v.get("value")?.as_str()?);
        let owner = Owner {
            key: v.pointer("/owner/key")?.as_str()?.to_string(),
            uid: v.pointer("/owner/uid")?.as_str()?.to_string(),
        };
        Some((claim, owner))
    }
}

/// The object a claim belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    /// Its store key.
    pub(crate) key: String,
    /// Its uid (a recreated object with the same name is another owner).
    pub(crate) uid: String,
}

impl Owner {
    pub(crate) fn of(key: &str, v: &Value) -> Self {
        Owner {
            key: key.to_string(),
            uid: v
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        }
    }
}

/// The claims an object holds (only Services and Nodes hold any).
pub(crate) fn of(res: &Resource, v: &Value) -> BTreeSet<Claim> {
    let mut out = BTreeSet::new();
    match res.kind {
        "Service" => {
            let t = service::held_by(v);
            out.extend(t.ips.iter().map(|ip| Claim::new(SERVICE_IPS, ip)));
            out.extend(t.ports.iter().map(|p| Claim::new(NODE_PORTS, p)));
        }
        "Node" => {
            out.extend(node::cidrs_of(v).iter().map(|n| Claim::new(POD_CIDRS, n)));
        }
        _ => {}
    }
    out
}

/// Why claiming failed.
pub(crate) enum ClaimError {
    /// Another object holds this value.
    Taken(Claim),
    /// The store failed.
    Store(ApiError),
}

/// What one write claimed, and what it gives up once stored.
#[derive(Debug, Default)]
pub(crate) struct Claimed {
    owner: Option<Owner>,
    /// Claims this write created (deleted again if the write fails).
    made: Vec<Claim>,
    /// Claims of values the object gives up (deleted once the write is stored).
    freed: Vec<Claim>,
}

impl Registry {
    /// Claims `want` for `owner`. A claim `owner` already holds counts as made by an earlier
    /// attempt and is kept. On a value held by another object, the claims made here are
    /// deleted again and the value is returned.
    async fn claim_all(
        &self,
        owner: &Owner,
        want: &BTreeSet<Claim>,
    ) -> Result<Vec<Claim>, ClaimError> {
        let mut made = Vec::new();
        for c in want {
            let failure = match self.store.create(c.key(), c.object(owner)).await {
                Ok(_) => {
                    made.push(c.clone());
                    continue;
                }
                Err(StoreError::AlreadyExists { .. }) => {
                    let held = self
                        .store
                        .get(&c.key())
                        .and_then(|s| s.value().ok())
                        .and_then(|v| Claim::from_object(&v));
                    if held.is_some_and(|(_, o)| o == *owner) {
                        continue;
                    }
                    ClaimError::Taken(c.clone())
                }
                Err(e) => ClaimError::Store(store_unavailable(e)),
            };
            // Give back what this call made — unless the store is failing: then the deletes
            // would only fail slowly too, and the repair pass removes the orphans later.
            if matches!(failure, ClaimError::Taken(_)) {
                self.delete_claims(None, &made).await;
            }
            return Err(failure);
        }
        Ok(made)
    }

    /// Deletes claims (those `owner` holds, or with `None` the given ones unconditionally:
    /// claims this API server has just made). Failures are logged: a leftover claim only
    /// keeps a value out of use until the repair pass removes it.
    async fn delete_claims(&self, owner: Option<&Owner>, claims: &[Claim]) {
        for c in claims {
            let key = c.key();
            let Some(cur) = self.store.get(&key) else {
                continue;
            };
            if let Some(owner) = owner {
                let holder = cur.value().ok().and_then(|v| Claim::from_object(&v));
                if holder.is_none_or(|(_, o)| o != *owner) {
                    continue;
                }
            }
            match self.store.delete(key, Some(cur.mod_revision)).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => tracing::warn!(claim = %c.key(), error = %e, "could not release a claim"),
            }
        }
    }

    /// Marks a value another object holds as used in this server's allocators.
    fn occupy(&self, c: &Claim, owner: Option<&Owner>) {
        occupy_in(&mut self.allocators(), c, owner);
    }

    /// Marks every claimed value as used in `a` (at start-up and on a resync: values other
    /// API servers hold, including those of writes still in flight), except those of stored
    /// objects, which are reserved under their object already.
    pub(crate) fn occupy_claimed(&self, a: &mut super::Allocators) {
        for s in self.store.list(PREFIX).0 {
            let Some((c, o)) = s.value().ok().and_then(|v| Claim::from_object(&v)) else {
                continue;
            };
            let stored = self.store.get(&o.key).and_then(|s| s.value().ok());
            let kind = crate::controllers::kind_of_key(&o.key);
            if let (Some(v), Some(kind)) = (stored, kind) {
                if Owner::of(&o.key, &v) == o && of(by_kind(kind), &v).contains(&c) {
                    continue;
                }
            }
            occupy_in(a, &c, Some(&o));
        }
    }

    /// Rebuilds this server's allocators from the newest stored objects and claims: values
    /// released through other API servers become free here again.
    async fn resync_allocators(&self) -> ApiResult<()> {
        self.store.fresh().await.map_err(store_unavailable)?;
        let mut fresh = self.build_allocators();
        self.occupy_claimed(&mut fresh);
        *self.allocators() = fresh;
        Ok(())
    }

    /// Reserves in memory what `new` needs (the strategy's `reserve`, which may fill values
    /// in) and claims in the store the values it gains over `old`; retries with other values
    /// while other API servers hold the ones picked.
    pub(crate) async fn reserve_and_claim(
        &self,
        res: &Resource,
        name: &str,
        key: &str,
        old: Option<&Value>,
        new: &mut Value,
    ) -> ApiResult<(Box<dyn super::strategy::Held>, Claimed)> {
        const ATTEMPTS: usize = 16;
        let original = new.clone();
        let before = old.map(|o| of(res, o)).unwrap_or_default();
        let mut resynced = false;
        let mut conflicts = 0;
        for _ in 0..ATTEMPTS {
            *new = original.clone();
            let held = match res.strategy.reserve(self, res, name, old, new) {
                Ok(h) => h,
                // This server's allocators may be stale (values freed or taken through
                // another API server): look again once before refusing. Only for Services:
                // their values are exact, so a claim catches any clash a rebuild lets
                // through, while podCIDR blocks of different sizes can overlap, which only
                // this server's allocator (not a claim key) sees.
                Err(e)
                    if !resynced && res.kind == "Service" && (e.code == 422 || e.code == 500) =>
                {
                    resynced = true;
                    self.resync_allocators().await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let after = of(res, new);
            let want: BTreeSet<Claim> = after.difference(&before).cloned().collect();
            let owner = Owner::of(key, old.unwrap_or(new));
            if want.is_empty() && before == after {
                return Ok((held, Claimed::default()));
            }
            match self.claim_all(&owner, &want).await {
                Ok(made) => {
                    let freed = before.difference(&after).cloned().collect();
                    return Ok((
                        held,
                        Claimed {
                            owner: Some(owner),
                            made,
                            freed,
                        },
                    ));
                }
                Err(ClaimError::Taken(c)) => {
                    held.rollback(self);
                    tracing::debug!(claim = %c.key(), "value taken through another API server; picking another");
                    self.occupy(&c, None);
                    conflicts += 1;
                    // Repeated clashes: this server's view is far behind; catch up once.
                    if conflicts == 3 && !resynced && res.kind == "Service" {
                        resynced = true;
                        self.resync_allocators().await?;
                    }
                }
                Err(ClaimError::Store(e)) => {
                    held.rollback(self);
                    return Err(e);
                }
            }
        }
        Err(ApiError::internal(format!(
            "could not allocate for {name}: every value tried in {ATTEMPTS} attempts was taken through another API server"
        )))
    }

    /// The write was stored: the claims of values the object gave up go.
    pub(crate) async fn claims_commit(&self, c: Claimed) {
        if let Some(owner) = &c.owner {
            self.delete_claims(Some(owner), &c.freed).await;
        }
    }

    /// The write failed or was not made: the claims it made go. When the write failed in a
    /// way that leaves open whether it was stored (`definite` false: a timeout, a lost
    /// connection to etcd), they stay: deleting them could free values a stored object holds.
    /// The repair pass removes them if the object was not stored after all.
    pub(crate) async fn claims_rollback(&self, c: Claimed, definite: bool) {
        if definite {
            self.delete_claims(None, &c.made).await;
        } else if !c.made.is_empty() {
            tracing::warn!(
                claims = c.made.len(),
                "write outcome unknown; its allocation claims are left to the repair pass"
            );
        }
    }

    /// A stored object was deleted: its claims go.
    pub(crate) async fn claims_release(&self, res: &Resource, key: &str, v: &Value) {
        let held: Vec<Claim> = of(res, v).into_iter().collect();
        if !held.is_empty() {
            self.delete_claims(Some(&Owner::of(key, v)), &held).await;
        }
    }

    /// One repair pass: creates the claims stored objects should have and lacks, and deletes
    /// claims whose owner does not hold the value if they were already orphans in `suspects`
    /// (the previous pass's orphans, updated here). Returns (created, deleted).
    pub(crate) async fn repair_claims(
        &self,
        suspects: &mut BTreeSet<String>,
    ) -> ApiResult<(usize, usize)> {
        self.store.fresh().await.map_err(store_unavailable)?;
        let mut wanted: BTreeMap<String, (Claim, Owner)> = BTreeMap::new();
        for kind in ["Service", "Node"] {
            let res = by_kind(kind);
            for s in self.store.list(&res.prefix()).0 {
                let Ok(v) = s.value() else { continue };
                let owner = Owner::of(&s.key, &v);
                for c in of(res, &v) {
                    wanted.insert(c.key(), (c, owner.clone()));
                }
            }
        }
        let mut have: BTreeMap<String, (Claim, Owner, u64)> = BTreeMap::new();
        for s in self.store.list(PREFIX).0 {
            if let Some((c, o)) = s.value().ok().and_then(|v| Claim::from_object(&v)) {
                have.insert(s.key.clone(), (c, o, s.mod_revision));
            }
        }
        let mut created = 0;
        for (key, (c, owner)) in &wanted {
            match have.get(key) {
                Some((_, o, _)) if o == owner => {}
                Some((_, o, _)) => tracing::error!(
                    claim = %key, holder = %o.key, also = %owner.key,
                    "one value held by two objects"
                ),
                None => match self.store.create(key.clone(), c.object(owner)).await {
                    Ok(_) => created += 1,
                    Err(StoreError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(store_unavailable(e)),
                },
            }
        }
        let mut deleted = 0;
        let mut orphans = BTreeSet::new();
        for (key, (_, o, rev)) in &have {
            if wanted.get(key).is_some_and(|(_, w)| w == o) {
                continue;
            }
            // The owner may be a write still in flight: only a claim that was already an
            // orphan a whole interval ago goes.
            if suspects.contains(key) {
                match self.store.delete(key.clone(), Some(*rev)).await {
                    Ok(_) => deleted += 1,
                    Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(store_unavailable(e)),
                }
            } else {
                orphans.insert(key.clone());
            }
        }
        *suspects = orphans;
        Ok((created, deleted))
    }
}

/// Marks claim `c` used in `a`, held by `owner` (podCIDR blocks are held per Node).
fn occupy_in(a: &mut super::Allocators, c: &Claim, owner: Option<&Owner>) {
    match c.range {
        SERVICE_IPS => {
            if let Ok(ip) = c.value.parse::<IpAddr>() {
                let _ = a.cluster_ips.allocate(ip);
            }
        }
        NODE_PORTS => {
            if let Ok(p) = c.value.parse::<u16>() {
                let _ = a.node_ports.allocate(p);
            }
        }
        POD_CIDRS => {
            if let Some(net) = parse_cidr_sloppy(&c.value) {
                let holder = match owner {
                    Some(o) => Holder::new(o.key.rsplit('/').next().unwrap_or(""), &o.uid),
                    None => Holder::new("(another API server)", &c.value),
                };
                let _ = a.pod_cidrs.occupy(&holder, net);
            }
        }
        _ => {}
    }
}

/// Whether a failed store write certainly did not happen (a precondition failed), as opposed
/// to an outcome the store could not report (timeouts, lost connections).
pub(crate) fn definitely_not_written(e: &StoreError) -> bool {
    !matches!(e, StoreError::Backend(_) | StoreError::Closed)
}

/// The repair loop the leader runs.
pub(crate) async fn run_repair(reg: std::sync::Arc<Registry>) {
    let mut suspects = BTreeSet::new();
    loop {
        match reg.repair_claims(&mut suspects).await {
            Ok((0, 0)) => {}
            Ok((created, deleted)) => {
                tracing::info!(created, deleted, "allocation claims repaired")
            }
            Err(e) => tracing::warn!(error = %e, "allocation claim repair failed"),
        }
        tokio::time::sleep(REPAIR_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sluice_store::{RedbStore, Store, StoreOptions};

    use super::*;
    use crate::registry::{DeleteOptions, RegistryConfig};

    /// Two registries over one store: two API servers sharing a backend.
    async fn pair(cfg: RegistryConfig) -> (Arc<Registry>, Arc<Registry>) {
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::in_memory(StoreOptions::default()).unwrap());
        let a = Arc::new(Registry::new(store.clone(), cfg.clone()));
        a.bootstrap().await.unwrap();
        let b = Arc::new(Registry::new(store, cfg));
        (a, b)
    }

    fn small() -> RegistryConfig {
        RegistryConfig {
            // 14 usable addresses, the first taken by nothing here (no bootstrap Service).
            service_cidr: "10.96.0.0/28".parse().unwrap(),
            node_port_range: (30000, 30019),
            ..RegistryConfig::default()
        }
    }

    fn node_port_svc(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
               "spec": {"type": "NodePort", "selector": {"app": name}, "ports": [{"port": 80}]}})
    }

    fn held(r: &Registry) -> (Vec<String>, Vec<u64>) {
        let mut ips = vec![];
        let mut ports = vec![];
        for s in r.store().list(&by_kind("Service").prefix()).0 {
            let v = s.value().unwrap();
            ips.push(v["spec"]["clusterIP"].as_str().unwrap().to_string());
            ports.push(v["spec"]["ports"][0]["nodePort"].as_u64().unwrap());
        }
        (ips, ports)
    }

    fn unique<T: Ord + Clone + std::fmt::Debug>(v: &[T]) {
        let mut s = v.to_vec();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), v.len(), "duplicates in {v:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_servers_never_hand_out_one_value_twice() {
        let (a, b) = pair(small()).await;
        let svcs = by_kind("Service");
        // Both start with empty allocators and race for the same few values.
        let mut tasks = vec![];
        for i in 0..12 {
            let r = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                r.create(svcs, Some("default"), node_port_svc(&format!("s{i}")))
                    .await
                    .map(|_| ())
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let (ips, ports) = held(&a);
        assert_eq!(ips.len(), 12);
        unique(&ips);
        unique(&ports);
        // Every value has exactly its Service's claim.
        let claims = a.store().list(PREFIX).0.len();
        assert_eq!(claims, 24);

        // Free values through one server, allocate them through the other: its allocators
        // are stale (it never saw the releases) and catch up instead of reporting "full".
        for i in 0..12 {
            a.delete(
                svcs,
                Some("default"),
                &format!("s{i}"),
                &DeleteOptions::default(),
            )
            .await
            .unwrap();
        }
        assert_eq!(a.store().list(PREFIX).0.len(), 0, "deletes release claims");
        for i in 0..14 {
            b.create(svcs, Some("default"), node_port_svc(&format!("t{i}")))
                .await
                .unwrap_or_else(|e| panic!("t{i}: {e}"));
        }
        let (ips, ports) = held(&b);
        assert_eq!(ips.len(), 14);
        unique(&ips);
        unique(&ports);
        // The range is now really full.
        let e = a
            .create(svcs, Some("default"), node_port_svc("x"))
            .await
            .unwrap_err();
        assert!(e.message.contains("range is full"), "{}", e.message);
        // A value asked for by name that another server holds is refused as taken.
        let taken = held(&b).0[0].clone();
        let mut v = node_port_svc("y");
        v["spec"]["clusterIP"] = json!(taken);
        let e = a.create(svcs, Some("default"), v).await.unwrap_err();
        assert_eq!(e.code, 422, "{}", e.message);
    }

    #[tokio::test]
    async fn repair_creates_missing_claims_and_removes_confirmed_orphans() {
        let (a, _) = pair(RegistryConfig::default()).await;
        let svcs = by_kind("Service");
        a.create(svcs, Some("default"), node_port_svc("web"))
            .await
            .unwrap();
        let claims = |r: &Registry| {
            r.store()
                .list(PREFIX)
                .0
                .iter()
                .map(|s| s.key.clone())
                .collect::<BTreeSet<_>>()
        };
        let want = claims(&a);
        assert_eq!(want.len(), 2);
        // A lost claim (written by an older version, say) comes back.
        let lost = want.iter().next().unwrap().clone();
        a.store().delete(lost.clone(), None).await.unwrap();
        // An orphan (a crash between claim and write) goes, but only on the second pass.
        let orphan = Claim::new(SERVICE_IPS, "10.96.9.9");
        let owner = Owner {
            key: "/registry/services/specs/default/gone".into(),
            uid: "u".into(),
        };
        a.store()
            .create(orphan.key(), orphan.object(&owner))
            .await
            .unwrap();
        let mut suspects = BTreeSet::new();
        assert_eq!(a.repair_claims(&mut suspects).await.unwrap(), (1, 0));
        assert!(claims(&a).contains(&orphan.key()));
        assert_eq!(a.repair_claims(&mut suspects).await.unwrap(), (0, 1));
        assert_eq!(claims(&a), want);
    }
}
