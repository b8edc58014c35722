//! The decode step.

use serde_json::json;
use sluice_validation::{normalize, Kind};

#[test]
fn drops_unknown_fields_and_keeps_type_meta() {
    let out = normalize(
        Kind::Pod,
        json!({"apiVersion": "v1", "kind": "Pod", "bogus": 1,
               "metadata": {"name": "p", "unknownMeta": "x", "creationTimestamp": null},
               "spec": {"containers": [{"name": "a", "image": "x", "notAField": true}], "extra": {}}}),
    );
    let out = match out {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(out["apiVersion"], "v1");
    assert_eq!(out["kind"], "Pod");
    assert!(out.get("bogus").is_none());
    assert!(out["metadata"].get("unknownMeta").is_none());
    assert!(out["metadata"].get("creationTimestamp").is_none());
    assert!(out["spec"].get("extra").is_none());
    assert!(out["spec"]["containers"][0].get("notAField").is_none());
    assert_eq!(out["spec"]["containers"][0]["image"], "x");
}

#[test]
fn keeps_group_versions() {
    let out = normalize(
        Kind::Deployment,
        json!({"metadata": {"name": "d"}, "spec": {"selector": {}, "template": {}}}),
    );
    let out = match out {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(out["apiVersion"], "apps/v1");
    assert_eq!(out["kind"], "Deployment");
}

#[test]
fn type_mismatch_is_a_decode_error() {
    let err = normalize(Kind::Pod, json!({"metadata": {"name": 5}})).err();
    let err = err.unwrap_or_default();
    assert!(
        err.starts_with("Pod in version \"v1\" cannot be handled as a Pod: "),
        "{err}"
    );

    let err = normalize(
        Kind::Service,
        json!({"spec": {"ports": [{"port": "eighty"}]}}),
    )
    .err();
    assert!(err.is_some());

    let err = normalize(Kind::Pod, json!({"apiVersion": "v2", "kind": "Pod"})).err();
    assert!(err.is_some());
}

#[test]
fn quantities() {
    let out = normalize(
        Kind::Pod,
        json!({"spec": {"containers": [{"name": "a", "image": "x", "resources": {"limits": {"cpu": 2, "memory": "1Gi"}}}]}}),
    );
    let out = match out {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        out["spec"]["containers"][0]["resources"]["limits"]["cpu"],
        "2"
    );

    let err = normalize(
        Kind::Pod,
        json!({"spec": {"containers": [{"name": "a", "image": "x", "resources": {"requests": {"cpu": "lots"}}}]}}),
    )
    .err()
    .unwrap_or_default();
    assert_eq!(
        err,
        "Pod in version \"v1\" cannot be handled as a Pod: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    );
}

#[test]
fn micro_time_round_trips() {
    let out = normalize(
        Kind::Lease,
        json!({"metadata": {"name": "l", "namespace": "d"},
               "spec": {"renewTime": "2024-01-01T00:00:00.123456Z", "acquireTime": "2024-01-01T00:00:00Z"}}),
    );
    let out = match out {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(out["spec"]["renewTime"], "2024-01-01T00:00:00.123456Z");
    assert_eq!(out["spec"]["acquireTime"], "2024-01-01T00:00:00.000000Z");
}
