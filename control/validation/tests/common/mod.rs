//! Helpers shared by the integration tests.
#![allow(dead_code)]

use serde_json::Value;
use sluice_validation::{apply_defaults, normalize, validate_create, FieldError, Kind};

/// The errors at `field`, panicking with the whole list when there is none.
pub fn at<'a>(errs: &'a [FieldError], field: &str) -> Vec<&'a FieldError> {
    let found: Vec<&FieldError> = errs.iter().filter(|e| e.field == field).collect();
    assert!(
        !found.is_empty(),
        "no error at {field}; got: {:#?}",
        messages(errs)
    );
    found
}

/// The single error at `field`.
pub fn one<'a>(errs: &'a [FieldError], field: &str) -> &'a FieldError {
    let found = at(errs, field);
    assert_eq!(
        found.len(),
        1,
        "expected one error at {field}; got: {:#?}",
        messages(errs)
    );
    found[0]
}

/// All messages, for assertion output.
pub fn messages(errs: &[FieldError]) -> Vec<String> {
    errs.iter().map(FieldError::message).collect()
}

/// Asserts the list is empty, printing it otherwise.
pub fn assert_valid(errs: &[FieldError]) {
    assert!(errs.is_empty(), "unexpected errors: {:#?}", messages(errs));
}

/// normalize + apply_defaults, the server's create pipeline up to validation.
pub fn decode(kind: Kind, obj: Value) -> Value {
    let mut v = match normalize(kind, obj) {
        Ok(v) => v,
        Err(e) => panic!("normalize failed: {e}"),
    };
    apply_defaults(kind, &mut v);
    v
}

/// decode + validate_create.
pub fn create_errors(kind: Kind, obj: Value) -> Vec<FieldError> {
    validate_create(kind, &decode(kind, obj))
}
