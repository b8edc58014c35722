//! API errors as Kubernetes `Status` objects.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{json, Value};

use crate::resources::Resource;

/// One cause in `Status.details.causes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    /// `FieldValueInvalid`, …
    pub reason: String,
    /// Human message.
    pub message: String,
    /// Field path, e.g. `spec.ports[0].port`.
    pub field: String,
}

/// `Status.details`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Details {
    /// `details.name`.
    pub name: Option<String>,
    /// `details.group`.
    pub group: Option<String>,
    /// `details.kind` (the plural resource name, or the kind for 422, as the apiserver sends).
    pub kind: Option<String>,
    /// `details.causes`.
    pub causes: Vec<Cause>,
    /// `details.retryAfterSeconds`; also sent as the `Retry-After` header.
    pub retry_after_seconds: Option<u32>,
}

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, …
    pub reason: &'static str,
    /// Message; kubectl prints it after `Error from server (<reason>): `.
    pub message: String,
    /// Details, boxed to keep `Result<_, ApiError>` small on the happy path.
    pub details: Option<Box<Details>>,
}

impl ApiError {
    /// A bare error.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub(crate) fn details_mut(&mut self) -> &mut Details {
        self.details.get_or_insert_with(Default::default)
    }

    /// The field causes (422).
    pub fn causes(&self) -> &[Cause] {
        self.details
            .as_ref()
            .map(|d| d.causes.as_slice())
            .unwrap_or(&[])
    }

    pub(crate) fn about(mut self, res: &Resource, name: &str) -> Self {
        let d = self.details_mut();
        d.name = Some(name.to_string());
        d.group = Some(res.group.to_string());
        d.kind = Some(res.plural.to_string());
        self
    }

    /// Sets `details.name` and `details.kind`.
    pub fn with_subject(mut self, name: Option<&str>, kind: &str) -> Self {
        let d = self.details_mut();
        d.name = name.map(str::to_string);
        d.kind = Some(kind.to_string());
        self
    }

    /// 404 `<plural> "<name>" not found`.
    pub fn not_found(res: &Resource, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", res.qualified()),
        )
        .about(res, name)
    }

    /// 409 `<plural> "<name>" already exists`.
    pub fn already_exists(res: &Resource, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", res.qualified()),
        )
        .about(res, name)
    }

    /// 409 Conflict on a stale resourceVersion.
    pub fn conflict(res: &Resource, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                res.qualified()
            ),
        )
        .about(res, name)
    }

    /// 422 Invalid with field causes.
    pub fn invalid(res: &Resource, name: &str, causes: Vec<Cause>) -> Self {
        let list = causes.iter().map(|c| c.message.clone()).collect::<Vec<_>>();
        let joined = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {joined}", kind_title(res)),
        )
        .about(res, name);
        let d = e.details_mut();
        d.kind = Some(res.kind.to_string());
        d.causes = causes;
        e
    }

    /// 422 with one field error.
    pub fn invalid_field(res: &Resource, name: &str, field: &str, message: String) -> Self {
        Self::invalid(
            res,
            name,
            vec![Cause {
                reason: "FieldValueInvalid".into(),
                message: format!("{field}: {message}"),
                field: field.to_string(),
            }],
        )
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 401.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 with the apiserver's wording.
    pub fn forbidden(user: &str, verb: &str, res: &str, group: &str, scope: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            format!(
                "{res} is forbidden: User \"{user}\" cannot {verb} resource \"{res}\" in API group \"{group}\"{scope}"
            ),
        )
    }

    /// 405.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// 410 Gone: watch too old.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 415.
    pub fn unsupported_media(ct: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {ct:?})"),
        )
    }

    /// 413 for a body over the limit, with the apiserver's wording.
    pub fn entity_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// 429 when the in-flight limit is reached; the client retries after a second.
    pub fn too_many_requests() -> Self {
        let mut e = Self::new(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
        );
        e.details_mut().retry_after_seconds = Some(1);
        e
    }

    /// 504 Timeout: the request did not complete in time (e.g. its body never arrived).
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }

    /// 504 for a resourceVersion the store has not reached after waiting, as the apiserver's
    /// watch cache answers it (cause `ResourceVersionTooLarge`, retry after a second).
    pub fn resource_version_too_large(requested: u64, current: u64) -> Self {
        let mut e = Self::timeout(format!(
            "Too large resource version: {requested}, current: {current}"
        ));
        let d = e.details_mut();
        d.causes.push(Cause {
            reason: "ResourceVersionTooLarge".into(),
            message: "Too large resource version".into(),
            field: String::new(),
        });
        d.retry_after_seconds = Some(1);
        e
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// 404 for a path that is not a resource.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(det) = &self.details {
            let mut d = serde_json::Map::new();
            if let Some(n) = &det.name {
                d.insert("name".into(), json!(n));
            }
            if let Some(g) = &det.group {
                if !g.is_empty() {
                    d.insert("group".into(), json!(g));
                }
            }
            if let Some(k) = &det.kind {
                d.insert("kind".into(), json!(k));
            }
            if !det.causes.is_empty() {
                d.insert(
                    "causes".into(),
                    Value::Array(
                        det.causes
                            .iter()
                            .map(|c| {
                                let mut o = json!({"reason": c.reason, "message": c.message});
                                if !c.field.is_empty() {
                                    o["field"] = json!(c.field);
                                }
                                o
                            })
                            .collect(),
                    ),
                );
            }
            if let Some(r) = det.retry_after_seconds {
                d.insert("retryAfterSeconds".into(), json!(r));
            }
            v["details"] = Value::Object(d);
        }
        v
    }
}

fn kind_title(res: &Resource) -> String {
    if res.group.is_empty() {
        res.kind.to_string()
    } else {
        format!("{}.{}", res.kind, res.group)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (
            code,
            [(http::header::CONTENT_TYPE, "application/json")],
            self.to_status().to_string(),
        )
            .into_response();
        if let Some(secs) = self.details.as_ref().and_then(|d| d.retry_after_seconds) {
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        r
    }
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;
