//! The one place errors become an HTTP status and a `metav1.Status` body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, Status, StatusDetails};

use crate::forward::ForwardError;
use crate::provider::ProviderError;

/// An API error: HTTP code, Kubernetes reason and a user-facing message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub code: StatusCode,
    /// `metav1.StatusReason`.
    pub reason: &'static str,
    /// What kubectl prints after `Error from server (<reason>):`.
    pub message: String,
    /// `Status.details` (group, kind, name), as kube-apiserver sets it on `Forbidden`.
    pub details: Option<ErrorDetails>,
}

/// The parts of `metav1.StatusDetails` this server sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorDetails {
    /// API group of the resource.
    pub group: String,
    /// For `Forbidden`, the resource (apimachinery puts the resource in `kind`).
    pub kind: String,
    /// The object's name, if the request named one.
    pub name: String,
}

impl ApiError {
    /// 404 NotFound.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }

    /// 401 Unauthorized, worded as kube-apiserver words it: the caller gets no hint about which
    /// credential failed or why (that is in the server's log).
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }

    /// 403 Forbidden, built as apimachinery's `NewForbidden(groupResource, name, err)`:
    /// `<resource>.<group> "<name>" is forbidden: <why>`, or `forbidden: <why>` when the
    /// request was not for a resource (empty `resource` and `group`).
    pub fn forbidden(group: &str, resource: &str, name: &str, why: &str) -> Self {
        let qualified = if group.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}.{group}")
        };
        let message = if qualified.is_empty() {
            format!("forbidden: {why}")
        } else if name.is_empty() {
            format!("{qualified} is forbidden: {why}")
        } else {
            format!("{qualified} {name:?} is forbidden: {why}")
        };
        let mut error = Self::new(StatusCode::FORBIDDEN, "Forbidden", message);
        error.details = Some(ErrorDetails {
            group: group.to_string(),
            kind: resource.to_string(),
            name: name.to_string(),
        });
        error
    }

    /// 413 RequestEntityTooLarge: this API takes no request bodies.
    pub fn request_body_refused() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "this API takes no request body: send the request (a GET) without one",
        )
    }

    /// 504 Timeout: the request was not answered in time; the caller may retry.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "Timeout", message)
    }

    /// 503 ServiceUnavailable: a dependency is down; the caller should retry.
    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            message,
        )
    }

    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// The `metav1.Status` body.
    pub fn status(&self) -> Status {
        Status {
            code: Some(i32::from(self.code.as_u16())),
            details: self.details.as_ref().map(|details| StatusDetails {
                group: Some(details.group.clone()).filter(|g| !g.is_empty()),
                kind: Some(details.kind.clone()).filter(|k| !k.is_empty()),
                name: Some(details.name.clone()).filter(|n| !n.is_empty()),
                ..StatusDetails::default()
            }),
            message: Some(self.message.clone()),
            metadata: ListMeta::default(),
            reason: Some(self.reason.to_string()),
            status: Some("Failure".to_string()),
        }
    }
}

impl From<ProviderError> for ApiError {
    fn from(error: ProviderError) -> Self {
        let message = error.to_string();
        match error {
            ProviderError::NotFound { .. }
            | ProviderError::NoData(_)
            | ProviderError::ResourceNotFound(_) => Self::not_found(message),
            ProviderError::InvalidSelector(_) => Self::bad_request(message),
            ProviderError::Unrepresentable(_) => Self::internal(message),
            ProviderError::Backend { failure, .. }
            | ProviderError::Stale {
                failure: Some(failure),
                ..
            } => {
                if failure.is_transient() {
                    // The HPA retries every sync period; tell it (and humans) so.
                    Self::service_unavailable(message)
                } else {
                    // Configuration problems: retrying will not help until someone acts.
                    Self::internal(message)
                }
            }
            // The adapter's own conditions, all passing: refreshes behind, a first fetch not
            // answered yet, the series table full.
            ProviderError::Stale { failure: None, .. }
            | ProviderError::FirstFetchPending(_)
            | ProviderError::AtCapacity(_) => Self::service_unavailable(message),
        }
    }
}

impl From<ForwardError> for ApiError {
    /// No answer from a delegate is always retryable for the HPA: `503`, naming the delegate,
    /// its URL and what went wrong. (A delegate's own `Status` errors never come here: they are
    /// passed on as they are.)
    fn from(error: ForwardError) -> Self {
        Self::service_unavailable(error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.status()).unwrap_or_default();
        let mut response = (self.code, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::BackendFailure;

    #[test]
    fn status_body_matches_the_contract() {
        let error = ApiError::from(ProviderError::NotFound {
            metric: "sqs-orders".into(),
            namespace: "default".into(),
        });
        let body = serde_json::to_value(error.status()).unwrap_or_default();
        assert_eq!(
            body,
            serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                "message":"the server could not find the metric sqs-orders for namespace default",
                "reason":"NotFound","code":404})
        );
    }

    #[test]
    fn auth_errors_are_worded_as_kube_apiserver_words_them() {
        let body = serde_json::to_value(ApiError::unauthorized().status()).unwrap_or_default();
        assert_eq!(
            body,
            serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                "message":"Unauthorized","reason":"Unauthorized","code":401})
        );
        let forbidden = ApiError::forbidden(
            "external.metrics.k8s.io",
            "sqs-visible",
            "",
            "User \"bob\" cannot list resource",
        );
        let body = serde_json::to_value(forbidden.status()).unwrap_or_default();
        assert_eq!(
            body,
            serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                "message":"sqs-visible.external.metrics.k8s.io is forbidden: User \"bob\" cannot list resource",
                "reason":"Forbidden","code":403,
                "details":{"group":"external.metrics.k8s.io","kind":"sqs-visible"}})
        );
        let named = ApiError::forbidden("", "pods", "web-0", "why");
        assert_eq!(named.message, "pods \"web-0\" is forbidden: why");
        let path = ApiError::forbidden("", "", "", "User \"bob\" cannot get path \"/apis\"");
        assert_eq!(
            path.message,
            "forbidden: User \"bob\" cannot get path \"/apis\""
        );
        assert_eq!(path.code, StatusCode::FORBIDDEN);
        let down = ApiError::service_unavailable("down");
        assert_eq!(
            (down.code.as_u16(), down.reason),
            (503, "ServiceUnavailable")
        );
    }

    #[test]
    fn a_delegate_without_an_answer_is_503_naming_it() {
        let error = ApiError::from(ForwardError {
            delegate: "keda".into(),
            url: "https://keda:443".into(),
            metric: "s0-x".into(),
            failure: crate::forward::ForwardFailure::Tls,
            detail: "TLS handshake failed: invalid peer certificate: UnknownIssuer".into(),
        });
        assert_eq!(
            (error.code.as_u16(), error.reason),
            (503, "ServiceUnavailable")
        );
        assert!(
            error
                .message
                .contains("delegate \"keda\" (https://keda:443)"),
            "{}",
            error.message
        );
        assert!(error.message.contains("UnknownIssuer"), "{}", error.message);
    }

    #[test]
    fn the_adapters_own_conditions_are_their_own_statuses() {
        let stale_throttled = ApiError::from(ProviderError::Stale {
            failure: Some(BackendFailure::Throttled),
            message: "m".into(),
        });
        assert_eq!(stale_throttled.code, StatusCode::SERVICE_UNAVAILABLE);
        let stale_denied = ApiError::from(ProviderError::Stale {
            failure: Some(BackendFailure::AccessDenied),
            message: "m".into(),
        });
        assert_eq!(stale_denied.code, StatusCode::INTERNAL_SERVER_ERROR);
        for error in [
            ProviderError::Stale {
                failure: None,
                message: "m".into(),
            },
            ProviderError::FirstFetchPending("m".into()),
            ProviderError::AtCapacity("m".into()),
        ] {
            let api = ApiError::from(error);
            assert_eq!(
                (api.code, api.reason),
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
            );
        }
    }

    #[test]
    fn backend_failures_map_to_5xx() {
        let throttled = ApiError::from(ProviderError::Backend {
            failure: BackendFailure::Throttled,
            message: "m".into(),
        });
        assert_eq!(throttled.code, StatusCode::SERVICE_UNAVAILABLE);
        let denied = ApiError::from(ProviderError::Backend {
            failure: BackendFailure::AccessDenied,
            message: "m".into(),
        });
        assert_eq!(denied.code, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(denied.reason, "InternalError");
    }
}
