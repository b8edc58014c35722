//! Helpers shared by both controllers: selectors, controller references, pod
//! readiness, time and IntOrString arithmetic.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::Error;

/// A label selector validated once and then evaluated many times.
pub(crate) struct Selector<'a> {
    sel: Option<&'a LabelSelector>,
}

impl<'a> Selector<'a> {
    /// Validates `sel` (operators and value counts as `LabelSelectorAsSelector` does).
    pub(crate) fn new(sel: Option<&'a LabelSelector>) -> Result<Self, Error> {
        if let Some(s) = sel {
            for e in s.match_expressions.iter().flatten() {
                let n = e.values.as_ref().map_or(0, Vec::len);
                match e.operator.as_str() {
                    "In" | "NotIn" if n == 0 => {
                        return Err(Error::InvalidSelector(format!(
                            "{}: values must be non-empty for operator {}",
                            e.key, e.operator
                        )))
                    }
                    "Exists" | "DoesNotExist" if n > 0 => {
                        return Err(Error::InvalidSelector(format!(
                            "{}: values must be empty for operator {}",
                            e.key, e.operator
                        )))
                    }
                    "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                    other => {
                        return Err(Error::InvalidSelector(format!(
                            "{:?} is not a valid label selector operator",
                            other
                        )))
                    }
                }
            }
        }
        Ok(Selector { sel })
    }

    /// True when the selector has no requirements (it would select everything).
    pub(crate) fn is_empty(&self) -> bool {
        self.sel.is_some_and(|s| {
            s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
                && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
        })
    }

    /// Evaluates the selector; a missing selector selects nothing and an empty one
    /// everything, as upstream.
    pub(crate) fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let Some(s) = self.sel else { return false };
        let get = |k: &str| labels.and_then(|l| l.get(k));
        for (k, v) in s.match_labels.iter().flatten() {
            if get(k) != Some(v) {
                return false;
            }
        }
        for e in s.match_expressions.iter().flatten() {
            let vals = e.values.as_deref().unwrap_or(&[]);
            let have = get(&e.key);
            let ok = match e.operator.as_str() {
                "In" => have.is_some_and(|h| vals.contains(h)),
                "NotIn" => have.is_none_or(|h| !vals.contains(h)),
                "Exists" => have.is_some(),
                _ => have.is_none(),
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

/// The controller owner reference of an object, if any.
pub(crate) fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// `metav1.NewControllerRef`: what adoption and creation put on owned objects.
pub(crate) fn new_controller_ref(kind: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".to_string(),
        kind: kind.to_string(),
        name: name.to_string(),
        uid: uid.to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Outcome of `ControllerRefManager.ClaimObject` for one candidate.
pub(crate) enum Claim {
    /// Already ours and still matching.
    Owned,
    /// An orphan that matches: adopt it; the new owner reference list is attached.
    Adopt(Vec<OwnerReference>),
    /// Ours but no longer matching: release it; the new owner reference list is attached.
    Release(Vec<OwnerReference>),
    /// Someone else's, or not ours and not adoptable.
    Ignore,
}

/// ClaimObject semantics: own-and-match keeps; own-and-mismatch releases (unless the
/// owner is being deleted); orphan-and-match adopts unless the owner or the orphan is
/// being deleted or they live in different namespaces.
pub(crate) fn claim(
    owner: &ObjectMeta,
    owner_kind: &str,
    owner_uid: &str,
    obj: &ObjectMeta,
    matches: bool,
) -> Claim {
    let owner_deleting = owner.deletion_timestamp.is_some();
    if let Some(c) = controller_of(obj) {
        if c.uid != owner_uid {
            return Claim::Ignore;
        }
        if matches {
            return Claim::Owned;
        }
        if owner_deleting {
            return Claim::Ignore;
        }
        let refs = obj
            .owner_references
            .iter()
            .flatten()
            .filter(|r| r.uid != owner_uid)
            .cloned()
            .collect();
        return Claim::Release(refs);
    }
    if owner_deleting
        || !matches
        || obj.deletion_timestamp.is_some()
        || obj.namespace != owner.namespace
    {
        return Claim::Ignore;
    }
    let mut refs = obj.owner_references.clone().unwrap_or_default();
    refs.push(new_controller_ref(
        owner_kind,
        owner.name.as_deref().unwrap_or_default(),
        owner_uid,
    ));
    Claim::Adopt(refs)
}

/// Name, namespace and uid of an owner object, all required.
pub(crate) fn identity<'a>(
    kind: &'static str,
    meta: &'a ObjectMeta,
) -> Result<(&'a str, &'a str, &'a str), Error> {
    let name = meta.name.as_deref().unwrap_or_default();
    let missing = |field| Error::MissingField {
        kind,
        name: name.to_string(),
        field,
    };
    if name.is_empty() {
        return Err(missing("metadata.name"));
    }
    let ns = meta
        .namespace
        .as_deref()
        .ok_or_else(|| missing("metadata.namespace"))?;
    let uid = meta.uid.as_deref().ok_or_else(|| missing("metadata.uid"))?;
    Ok((name, ns, uid))
}

/// Pod phase string ("" when unset).
pub(crate) fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// `controller.IsPodActive`: not terminal and not being deleted.
pub(crate) fn is_pod_active(pod: &Pod) -> bool {
    let p = phase(pod);
    p != "Succeeded" && p != "Failed" && pod.metadata.deletion_timestamp.is_none()
}

/// The Ready condition's last transition time when the pod is Ready, else `None`
/// (`podutil.IsPodReady` plus the time `IsPodAvailable` measures from).
pub(crate) fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    pod.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

/// `podutil.IsPodReady`.
pub(crate) fn is_pod_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// `podutil.IsPodAvailable`: ready, and ready for strictly longer than
/// minReadySeconds (a missing transition time never counts as long enough).
pub(crate) fn is_pod_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(t)) => t + secs(min_ready_seconds) < now,
    }
}

/// When a ready-but-not-yet-available pod becomes available, relative to `now`.
pub(crate) fn becomes_available_in(
    pod: &Pod,
    min_ready_seconds: i32,
    now: Timestamp,
) -> Option<std::time::Duration> {
    if min_ready_seconds <= 0 || is_pod_available(pod, min_ready_seconds, now) {
        return None;
    }
    let t = ready_since(pod)??;
    // Availability needs `now` strictly after t+minReady, hence the extra second.
    let left = (t + secs(min_ready_seconds)).duration_since(now) + SignedDuration::from_secs(1);
    std::time::Duration::try_from(left).ok()
}

/// Seconds as a jiff duration.
pub(crate) fn secs(n: i32) -> SignedDuration {
    SignedDuration::from_secs(i64::from(n))
}

/// A metav1.Time for `now`, truncated to whole seconds as the wire format is, so a
/// stored-and-reread time compares equal to the one we computed.
pub(crate) fn wire_time(now: Timestamp) -> Time {
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// `intstr.GetScaledValueFromIntOrPercent`: integers as is, "N%" of `total`
/// rounded up or down.
pub(crate) fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, Error> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let Some(p) = s.strip_suffix('%') else {
                return Err(Error::InvalidIntOrString(format!(
                    "invalid type: string is not a percentage: {s:?}"
                )));
            };
            let p: i64 = p
                .parse()
                .map_err(|e| Error::InvalidIntOrString(format!("invalid value {s:?}: {e}")))?;
            let scaled = p * i64::from(total);
            let v = if round_up {
                scaled.div_euclid(100) + i64::from(scaled.rem_euclid(100) != 0)
            } else {
                scaled.div_euclid(100)
            };
            Ok(i32::try_from(v).unwrap_or(i32::MAX))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_like_upstream() {
        let p = |s: &str| IntOrString::String(s.to_string());
        assert_eq!(scaled_value(&p("25%"), 3, true), Ok(1));
        assert_eq!(scaled_value(&p("25%"), 3, false), Ok(0));
        assert_eq!(scaled_value(&p("50%"), 5, true), Ok(3));
        assert_eq!(scaled_value(&p("50%"), 5, false), Ok(2));
        assert_eq!(scaled_value(&p("100%"), 7, false), Ok(7));
        assert_eq!(scaled_value(&IntOrString::Int(2), 7, false), Ok(2));
        assert!(scaled_value(&p("2"), 7, false).is_err());
        assert!(scaled_value(&p("x%"), 7, false).is_err());
    }

    #[test]
    fn selector_semantics() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())]
            .into_iter()
            .collect();
        let sel = LabelSelector {
            match_labels: Some(labels.clone()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "DoesNotExist".into(),
                values: None,
            }]),
        };
        let s = Selector::new(Some(&sel)).expect("valid");
        assert!(s.matches(Some(&labels)));
        assert!(!s.matches(None));
        assert!(!Selector::new(None).expect("valid").matches(Some(&labels)));
        let empty = LabelSelector::default();
        let e = Selector::new(Some(&empty)).expect("valid");
        assert!(e.is_empty() && e.matches(None));
        let bad = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "a".into(),
                operator: "In".into(),
                values: None,
            }]),
        };
        assert!(Selector::new(Some(&bad)).is_err());
    }
}
