//! ConfigMap, Secret and ServiceAccount defaults, prepare hooks and validation.

mod common;

use common::{assert_valid, create_errors, decode, one};
use serde_json::{json, Value};
use sluice_validation::{
    apply_defaults, is_config_map_key, normalize, prepare_for_create, prepare_for_update,
    validate_create, validate_update, Kind,
};

fn config_map(extra: Value) -> Value {
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "cfg", "namespace": "default"}});
    if let (Some(o), Some(e)) = (cm.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    cm
}

fn secret(extra: Value) -> Value {
    let mut s = json!({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "creds", "namespace": "default"}});
    if let (Some(o), Some(e)) = (s.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    s
}

#[test]
fn config_key_messages() {
    assert!(is_config_map_key("key.name_1-x").is_empty());
    assert_eq!(
        is_config_map_key("a/b"),
        vec!["a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')".to_string()]
    );
    assert_eq!(
        is_config_map_key(".."),
        vec!["must not be '..'".to_string()]
    );
    assert_eq!(
        is_config_map_key("..a"),
        vec!["must not start with '..'".to_string()]
    );
    assert_eq!(
        is_config_map_key(&"a".repeat(254)),
        vec!["must be no more than 253 characters".to_string()]
    );
}

#[test]
fn config_map_rules() {
    assert_valid(&create_errors(
        Kind::ConfigMap,
        config_map(json!({"data": {"app.properties": "a=b"}, "binaryData": {"blob": "AAE="}})),
    ));
    let errs = create_errors(
        Kind::ConfigMap,
        config_map(
            json!({"data": {"bad key": "x", "both": "1"}, "binaryData": {"both": "AA==", "..x": ""}}),
        ),
    );
    assert_eq!(
        one(&errs, "data[both]").message(),
        r#"data[both]: Invalid value: "both": duplicate of key present in binaryData"#
    );
    assert!(one(&errs, "data[bad key]").message().starts_with(
        r#"data[bad key]: Invalid value: "bad key": a valid config key must consist of"#
    ));
    assert_eq!(
        one(&errs, "binaryData[..x]").message(),
        r#"binaryData[..x]: Invalid value: "..x": must not start with '..'"#
    );

    let big = "x".repeat(600 * 1024);
    let errs = create_errors(
        Kind::ConfigMap,
        config_map(json!({"data": {"a": big, "b": big}})),
    );
    assert_eq!(
        one(&errs, "").message(),
        ": Too long: may not be more than 1048576 bytes"
    );
}

#[test]
fn config_map_immutable() {
    let old = decode(
        Kind::ConfigMap,
        config_map(json!({"data": {"a": "1"}, "immutable": true})),
    );
    let mut new = old.clone();
    new["data"]["a"] = json!("2");
    new["binaryData"] = json!({"b": "AA=="});
    new["immutable"] = json!(false);
    let errs = validate_update(Kind::ConfigMap, &old, &new);
    let msgs: Vec<String> = errs.iter().map(|e| e.message()).collect();
    assert_eq!(
        msgs,
        vec![
            "immutable: Forbidden: field is immutable when `immutable` is set",
            "data: Forbidden: field is immutable when `immutable` is set",
            "binaryData: Forbidden: field is immutable when `immutable` is set",
        ]
    );
    // An added key with an empty value is a change too.
    let mut added = old.clone();
    added["data"]["empty"] = json!("");
    assert_eq!(validate_update(Kind::ConfigMap, &old, &added).len(), 1);
    // Labels may still change.
    let mut labelled = old.clone();
    labelled["metadata"]["labels"] = json!({"a": "b"});
    assert_valid(&validate_update(Kind::ConfigMap, &old, &labelled));
    // A mutable ConfigMap may become immutable along with a data change.
    let mutable = decode(Kind::ConfigMap, config_map(json!({"data": {"a": "1"}})));
    assert_valid(&validate_update(Kind::ConfigMap, &mutable, &new));
}

#[test]
fn secret_defaults_and_string_data() {
    let s = decode(
        Kind::Secret,
        secret(json!({"data": {"user": "YWRtaW4=", "pass": "b2xk"},
                      "stringData": {"pass": "new", "token": "t0k"}})),
    );
    assert_eq!(s["type"], "Opaque");
    assert!(s.get("stringData").is_none());
    // stringData wins over data for the same key.
    assert_eq!(
        s["data"],
        json!({"user": "YWRtaW4=", "pass": "bmV3", "token": "dDBr"})
    );
    // Idempotent.
    let mut again = s.clone();
    apply_defaults(Kind::Secret, &mut again);
    assert_eq!(again, s);
    // Invalid base64 is a decode error.
    let bad = normalize(Kind::Secret, secret(json!({"data": {"a": "!!"}})));
    assert!(
        bad.is_err_and(
            |e| e.starts_with(r#"Secret in version "v1" cannot be handled as a Secret: "#)
        )
    );
}

#[test]
fn secret_type_rules() {
    let errs = create_errors(
        Kind::Secret,
        secret(json!({"type": "kubernetes.io/service-account-token"})),
    );
    assert_eq!(
        one(
            &errs,
            "metadata.annotations[kubernetes.io/service-account.name]"
        )
        .message(),
        "metadata.annotations[kubernetes.io/service-account.name]: Required value"
    );
    let mut sa = secret(json!({"type": "kubernetes.io/service-account-token"}));
    sa["metadata"]["annotations"] = json!({"kubernetes.io/service-account.name": "default"});
    assert_valid(&create_errors(Kind::Secret, sa));

    let errs = create_errors(Kind::Secret, secret(json!({"type": "kubernetes.io/tls"})));
    let msgs: Vec<String> = errs.iter().map(|e| e.message()).collect();
    assert_eq!(
        msgs,
        vec![
            "data[tls.crt]: Required value",
            "data[tls.key]: Required value"
        ]
    );
    assert_valid(&create_errors(
        Kind::Secret,
        secret(
            json!({"type": "kubernetes.io/tls", "stringData": {"tls.crt": "c", "tls.key": "k"}}),
        ),
    ));

    let errs = create_errors(
        Kind::Secret,
        secret(json!({"type": "kubernetes.io/dockerconfigjson"})),
    );
    assert_eq!(
        one(&errs, "data[.dockerconfigjson]").message(),
        "data[.dockerconfigjson]: Required value"
    );
    let errs = create_errors(
        Kind::Secret,
        secret(
            json!({"type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": "[1]"}}),
        ),
    );
    assert_eq!(
        one(&errs, "data[.dockerconfigjson]").message(),
        r#"data[.dockerconfigjson]: Invalid value: "<secret contents redacted>": json: cannot unmarshal array into Go value of type map[string]interface {}"#
    );
    let errs = create_errors(
        Kind::Secret,
        secret(
            json!({"type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": "xyz"}}),
        ),
    );
    assert_eq!(
        one(&errs, "data[.dockerconfigjson]").message(),
        r#"data[.dockerconfigjson]: Invalid value: "<secret contents redacted>": invalid character 'x' looking for beginning of value"#
    );
    assert_valid(&create_errors(
        Kind::Secret,
        secret(json!({"type": "kubernetes.io/dockerconfigjson",
                      "stringData": {".dockerconfigjson": "{\"auths\":{}}"}})),
    ));

    let errs = create_errors(
        Kind::Secret,
        secret(json!({"type": "kubernetes.io/basic-auth"})),
    );
    assert_eq!(errs.len(), 2);
    assert_eq!(errs[0].message(), "data[username]: Required value");
    assert_eq!(errs[1].message(), "data[password]: Required value");
    let errs = create_errors(
        Kind::Secret,
        secret(json!({"type": "kubernetes.io/ssh-auth", "data": {"ssh-privatekey": ""}})),
    );
    assert_eq!(errs[0].message(), "data[ssh-privatekey]: Required value");

    let errs = create_errors(Kind::Secret, secret(json!({"data": {"a b": "AA=="}})));
    assert!(one(&errs, "data[a b]")
        .message()
        .contains("a valid config key"));
}

#[test]
fn secret_update_rules() {
    let old = decode(
        Kind::Secret,
        secret(json!({"stringData": {"a": "1"}, "immutable": true})),
    );
    let mut new = old.clone();
    new["type"] = json!("kubernetes.io/basic-auth");
    new["stringData"] = json!({"a": "2", "username": "u"});
    apply_defaults(Kind::Secret, &mut new);
    let errs = validate_update(Kind::Secret, &old, &new);
    let msgs: Vec<String> = errs.iter().map(|e| e.message()).collect();
    assert_eq!(
        msgs,
        vec![
            r#"type: Invalid value: "kubernetes.io/basic-auth": field is immutable"#,
            "data: Forbidden: field is immutable when `immutable` is set",
        ]
    );
    let mut unset = old.clone();
    unset.as_object_mut().map(|o| o.remove("immutable"));
    let errs = validate_update(Kind::Secret, &old, &unset);
    assert_eq!(
        one(&errs, "immutable").message(),
        "immutable: Forbidden: field is immutable when `immutable` is set"
    );
}

#[test]
fn service_account_rules() {
    let sa = json!({"metadata": {"name": "builder", "namespace": "ci"},
                    "secrets": [{"name": "tok", "namespace": "ci", "uid": "u-1"}],
                    "imagePullSecrets": [{"name": "regcred"}]});
    let mut sa = decode(Kind::ServiceAccount, sa);
    assert_valid(&validate_create(Kind::ServiceAccount, &sa));
    prepare_for_create(Kind::ServiceAccount, &mut sa);
    assert_eq!(sa["secrets"], json!([{"name": "tok"}]));
    let mut updated = sa.clone();
    updated["secrets"] = json!([{"name": "tok"}, {"name": "tok2", "kind": "Secret"}]);
    prepare_for_update(Kind::ServiceAccount, &sa, &mut updated);
    assert_eq!(
        updated["secrets"],
        json!([{"name": "tok"}, {"name": "tok2"}])
    );

    let errs = create_errors(
        Kind::ServiceAccount,
        json!({"metadata": {"name": "Bad_Name", "namespace": "ci"}}),
    );
    assert!(one(&errs, "metadata.name").message().starts_with(
        r#"metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain"#
    ));
}
