//! The decode step: JSON in, k8s-openapi struct, JSON out. Unknown fields
//! disappear (the apiserver's non-strict decoder drops them), type mismatches
//! become decode errors, `null` means "unset" as it does for Go's decoder, and
//! quantities are checked for syntax the way `resource.Quantity` unmarshals.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, Node, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1 as events;
use k8s_openapi::serde::de::DeserializeOwned;
use k8s_openapi::serde::Serialize;
use serde_json::Value;

use crate::quantity::Quantity;
use crate::Kind;

/// Keys whose object values are `ResourceList`s (name -> Quantity).
const QUANTITY_MAPS: [&str; 6] = [
    "limits",
    "requests",
    "capacity",
    "allocatable",
    "overhead",
    "allocatedResources",
];
/// Keys whose values are a single Quantity.
const QUANTITY_FIELDS: [&str; 1] = ["sizeLimit"];

/// Round-trips `obj` through the k8s-openapi type of `kind`.
pub(crate) fn normalize(kind: Kind, mut obj: Value) -> Result<Value, String> {
    strip_nulls(&mut obj);
    prepare_quantities(&mut obj).map_err(|e| decode_error(kind, e))?;
    let result = match kind {
        Kind::Namespace => round_trip::<Namespace>(obj),
        Kind::Node => round_trip::<Node>(obj),
        Kind::Pod => round_trip::<Pod>(obj),
        Kind::Service => round_trip::<Service>(obj),
        Kind::Endpoints => round_trip::<Endpoints>(obj),
        Kind::EndpointSlice => round_trip::<EndpointSlice>(obj),
        Kind::Deployment => round_trip::<Deployment>(obj),
        Kind::Lease => round_trip::<Lease>(obj),
        Kind::ReplicaSet => round_trip::<ReplicaSet>(obj),
        Kind::ConfigMap => round_trip::<ConfigMap>(obj),
        Kind::Secret => round_trip::<Secret>(obj),
        Kind::ServiceAccount => round_trip::<ServiceAccount>(obj),
        Kind::Event => round_trip::<Event>(obj),
        Kind::EventsV1Event => round_trip::<events::Event>(obj),
    };
    result.map_err(|e| decode_error(kind, &e))
}

fn decode_error(kind: Kind, msg: &str) -> String {
    let version = kind.api_version().rsplit('/').next().unwrap_or("v1");
    format!(
        "{name} in version \"{version}\" cannot be handled as a {name}: {msg}",
        name = kind.name()
    )
}

fn round_trip<T: DeserializeOwned + Serialize>(obj: Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(obj).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

/// Removes `null` members of objects, recursively (Go decodes `null` as the
/// zero value, i.e. as if the field were absent).
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, x| !x.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Quantities may be sent as JSON numbers; they must parse either way.
fn prepare_quantities(v: &mut Value) -> Result<(), &'static str> {
    match v {
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                if QUANTITY_MAPS.contains(&k.as_str()) {
                    if let Value::Object(list) = x {
                        for q in list.values_mut() {
                            check_quantity(q)?;
                        }
                        continue;
                    }
                }
                if QUANTITY_FIELDS.contains(&k.as_str()) {
                    check_quantity(x)?;
                    continue;
                }
                prepare_quantities(x)?;
            }
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(prepare_quantities),
        _ => Ok(()),
    }
}

fn check_quantity(q: &mut Value) -> Result<(), &'static str> {
    if let Value::Number(n) = q {
        *q = Value::from(n.to_string());
    }
    if let Value::String(s) = q {
        Quantity::parse(s)?;
    }
    Ok(())
}
