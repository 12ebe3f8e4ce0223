//! Answers as kube-apiserver writes them: JSON objects, and `metav1.Status` for every error.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A JSON body with this code.
pub(crate) fn json(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A `metav1.Status` failure. An empty `reason` is `StatusReasonUnknown`, which the API server
/// leaves out of the body.
pub(crate) fn failure(code: StatusCode, reason: &str, message: &str) -> Response {
    failure_with_details(code, reason, message, None)
}

/// A `metav1.Status` failure naming the object (`details`: name, group, kind, causes).
pub(crate) fn failure_with_details(
    code: StatusCode,
    reason: &str,
    message: &str,
    details: Option<Value>,
) -> Response {
    json(code, &failure_body(code, reason, message, details))
}

/// The body of [`failure_with_details`].
pub(crate) fn failure_body(
    code: StatusCode,
    reason: &str,
    message: &str,
    details: Option<Value>,
) -> Value {
    let mut body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "code": code.as_u16()});
    if !reason.is_empty() {
        body["reason"] = json!(reason);
    }
    if let Some(details) = details {
        body["details"] = details;
    }
    body
}
