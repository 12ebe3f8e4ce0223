//! What the AWS-backed sources share: the SDK configuration of a target (region, assumed role),
//! a client per target built once, and the classification of SDK errors.
//!
//! `SdkError`, `HttpResponse` and `ProvideErrorMetadata` are aws-smithy-runtime-api's and
//! aws-smithy-types' types, which every service crate re-exports; they are named here through
//! the CloudWatch crate, and serve the SQS client just the same.

use std::error::Error as _;

use aws_config::sts::AssumeRoleProvider;
use aws_config::{Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_cloudwatch::config::http::HttpResponse;
use aws_sdk_cloudwatch::error::{ProvideErrorMetadata, SdkError};

use super::Target;
use crate::provider::BackendFailure;

/// Session name the adapter uses when assuming a definition's role (shows in CloudTrail).
const SESSION_NAME: &str = "cloudwatch-metrics-adapter";

/// The SDK configuration for `target`: its region, and the assumed role's credentials (the
/// provider caches and refreshes them) when it names one. STS is called with the base
/// configuration, never a service endpoint override.
pub(crate) async fn target_config(base: &SdkConfig, target: &Target) -> SdkConfig {
    let mut builder = base.to_builder();
    if let Some(region) = &target.region {
        builder = builder.region(Region::new(region.clone()));
    }
    if let Some(role) = &target.role_arn {
        let mut provider = AssumeRoleProvider::builder(role.clone())
            .session_name(SESSION_NAME)
            .configure(base);
        if let Some(external_id) = &target.external_id {
            provider = provider.external_id(external_id.clone());
        }
        builder =
            builder.credentials_provider(SharedCredentialsProvider::new(provider.build().await));
    }
    builder.build()
}

/// Targets (region, role, external id) whose clients are kept at once. A target comes from a
/// definition, which a namespace user can change at will: the bound keeps a stream of
/// made-up regions or external ids from holding a client (and an STS provider) each, forever.
const MAX_CLIENTS: u64 = 1024;

/// A client unused this long is dropped (its definition is gone or idle).
const CLIENT_IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

/// One client per target, built on first use and reused (clients pool connections), from a
/// base SDK configuration and an optional endpoint override for the service.
pub(crate) struct Clients<C> {
    base: SdkConfig,
    endpoint_url: Option<String>,
    clients: moka::sync::Cache<Target, C>,
}

impl<C> std::fmt::Debug for Clients<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("endpoint_url", &self.endpoint_url)
            .finish_non_exhaustive()
    }
}

impl<C: Clone + Send + Sync + 'static> Clients<C> {
    /// Clients built from `base` (region, credentials chain, retries, timeouts).
    pub(crate) fn new(base: SdkConfig) -> Self {
        Self {
            base,
            endpoint_url: None,
            clients: moka::sync::Cache::builder()
                .max_capacity(MAX_CLIENTS)
                .time_to_idle(CLIENT_IDLE)
                .build(),
        }
    }

    /// Send the service's calls (only those: STS `AssumeRole` keeps its own endpoint) to `url`.
    pub(crate) fn with_endpoint_url(mut self, url: Option<String>) -> Self {
        self.endpoint_url = url;
        self
    }

    /// The client of `target`, built with `build` (its configuration and the endpoint
    /// override) if there is none yet.
    pub(crate) async fn get(
        &self,
        target: &Target,
        build: impl FnOnce(&SdkConfig, Option<&str>) -> C,
    ) -> C {
        if let Some(client) = self.clients.get(target) {
            return client;
        }
        let config = target_config(&self.base, target).await;
        let client = build(&config, self.endpoint_url.as_deref());
        self.clients
            .entry(target.clone())
            .or_insert(client)
            .into_value()
    }
}

/// Error codes that mean "who you are is not allowed", across services and STS.
const ACCESS_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredToken",
    "ExpiredTokenException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "InvalidSignatureException",
    "NotAuthorized",
    "InvalidSecurity",
    "AWS.SimpleQueueService.InvalidSecurity",
];
const THROTTLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
    "AWS.SimpleQueueService.RequestThrottled",
];

/// An SDK error, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Classified {
    /// What kind of failure.
    pub failure: BackendFailure,
    /// The service refused the request itself (a 4xx that is neither throttling nor access).
    pub rejected: bool,
    /// The service's error code, when it answered.
    pub code: Option<String>,
    /// For the log: code, status, message and causes; never request dumps.
    pub detail: String,
}

/// Classify an SDK error for users and metrics.
pub(crate) fn classify<E>(error: &SdkError<E, HttpResponse>) -> Classified
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let classified = |failure, detail| Classified {
        failure,
        rejected: false,
        code: None,
        detail,
    };
    // Walk the chain for a credentials failure: it can hide under a dispatch failure.
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(credentials) = cause.downcast_ref::<CredentialsError>() {
            let detail = summarize(credentials);
            let failure = match credentials {
                CredentialsError::CredentialsNotLoaded(_)
                | CredentialsError::InvalidConfiguration(_) => BackendFailure::NoCredentials,
                CredentialsError::ProviderTimedOut(_) => BackendFailure::Unreachable,
                // A provider that answered and refused, e.g. STS denying a definition's roleArn.
                _ => BackendFailure::AccessDenied,
            };
            return classified(failure, detail);
        }
        source = cause.source();
    }
    match error {
        SdkError::ServiceError(context) => {
            let code = context.err().code().unwrap_or("Unknown").to_string();
            let status = context.raw().status().as_u16();
            let message = context.err().message().unwrap_or_default();
            let detail = format!("{code}, HTTP {status}: {message}");
            let (failure, rejected) = if THROTTLE_CODES.contains(&code.as_str()) || status == 429 {
                (BackendFailure::Throttled, false)
            } else if ACCESS_CODES.contains(&code.as_str()) || status == 403 {
                (BackendFailure::AccessDenied, false)
            } else if status >= 500 {
                (BackendFailure::ServiceError, false)
            } else {
                (BackendFailure::InvalidQuery, true)
            };
            Classified {
                failure,
                rejected,
                code: Some(code),
                detail,
            }
        }
        SdkError::TimeoutError(_) => {
            classified(BackendFailure::Unreachable, "request timed out".to_string())
        }
        SdkError::DispatchFailure(failure) => classified(
            BackendFailure::Unreachable,
            summarize(error)
                + if failure.is_timeout() {
                    " (timeout)"
                } else {
                    ""
                },
        ),
        SdkError::ResponseError(_) => classified(BackendFailure::ServiceError, summarize(error)),
        SdkError::ConstructionFailure(_) => Classified {
            failure: BackendFailure::InvalidQuery,
            rejected: true,
            code: None,
            detail: summarize(error),
        },
        _ => classified(BackendFailure::ServiceError, summarize(error)),
    }
}

/// The error and its causes on one line (for logs), without request or response dumps.
pub(crate) fn summarize(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
