//! The one place errors become an HTTP status and a `metav1.Status` body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, Status};

use crate::provider::{BackendFailure, ProviderError};

/// An API error: HTTP code, Kubernetes reason and a user-facing message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub code: StatusCode,
    /// `metav1.StatusReason`.
    pub reason: &'static str,
    /// What kubectl prints after `Error from server (<reason>):`.
    pub message: String,
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

    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    /// The `metav1.Status` body.
    pub fn status(&self) -> Status {
        Status {
            code: Some(i32::from(self.code.as_u16())),
            details: None,
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
            ProviderError::NotFound { .. } | ProviderError::NoData(_) => Self::not_found(message),
            ProviderError::InvalidSelector(_) => Self::bad_request(message),
            ProviderError::Unrepresentable(_) => Self::internal(message),
            ProviderError::Backend { failure, .. } => match failure {
                // Transient: the HPA retries every sync period; tell it (and humans) so.
                BackendFailure::Throttled
                | BackendFailure::Unreachable
                | BackendFailure::ServiceError => Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    message,
                ),
                // Configuration problems: retrying will not help until someone acts.
                BackendFailure::AccessDenied
                | BackendFailure::NoCredentials
                | BackendFailure::InvalidQuery => Self::internal(message),
            },
        }
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
