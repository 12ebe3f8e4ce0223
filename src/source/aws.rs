//! What the AWS-backed sources share: where a call runs ([`Target`]: region and identity), the
//! SDK configuration of a target (region, assumed role), a client per target built once, and
//! the classification of SDK errors into [`SourceError`]s.
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

use serde::Serialize;

use super::{Blame, SourceError};
use crate::definition::Definition;
use crate::provider::BackendFailure;

/// Which account, region and identity a call runs as. Calls are batched per target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Region; the adapter's default when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Role to assume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// External id for the role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

impl Target {
    /// Where `definition`'s calls run.
    pub fn of(definition: &Definition) -> Self {
        let spec = &definition.spec;
        Self {
            region: spec.region.clone(),
            role_arn: spec.role_arn.clone(),
            external_id: spec.external_id.clone(),
        }
    }
}

/// Where an AWS source's credentials come from, for no-credentials messages.
pub const CREDENTIALS_HINT: &str = "configure IRSA (eks.amazonaws.com/role-arn on the service account) or another AWS credentials source";

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
/// 4xx codes about the request as a whole, not what it asks for: its age or clock, its size,
/// the action itself. No query in a batch causes them, so nobody is isolated for them.
const REQUEST_WIDE_CODES: &[&str] = &[
    "RequestExpired",
    "RequestTimeTooSkewed",
    "RequestTimeout",
    "RequestEntityTooLarge",
    "InvalidAction",
    "OptInRequired",
    "MalformedQueryString",
    "MissingAction",
    "UnsupportedProtocol",
    "InvalidQueryParameter",
];

/// What AWS answered: the error code, the HTTP status and the service's message. The source of
/// a [`SourceError`] for a service error (the SDK error around it adds nothing but request
/// details, which stay out of logs).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} (HTTP {status}): {message}", code.as_deref().unwrap_or("no error code"))]
pub struct ServiceReply {
    /// The service's error code, if it sent one (a proxy's page has none).
    pub code: Option<String>,
    /// The HTTP status.
    pub status: u16,
    /// The service's message.
    pub message: String,
}

/// Classify an SDK error: its kind, who is to blame, and the error itself as the source. The
/// service's error code comes back too, for sources that branch on their own codes.
pub(crate) fn classify<E>(error: SdkError<E, HttpResponse>) -> (SourceError, Option<String>)
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    // Walk the chain for a credentials failure: it can hide under a dispatch failure.
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(credentials) = cause.downcast_ref::<CredentialsError>() {
            let failure = match credentials {
                CredentialsError::CredentialsNotLoaded(_)
                | CredentialsError::InvalidConfiguration(_) => BackendFailure::NoCredentials,
                CredentialsError::ProviderTimedOut(_) => BackendFailure::Unreachable,
                // A provider that answered and refused, e.g. STS denying a definition's roleArn.
                _ => BackendFailure::AccessDenied,
            };
            return (SourceError::new(failure, Blame::Request, error), None);
        }
        source = cause.source();
    }
    let (failure, blame) = match &error {
        SdkError::ServiceError(context) => {
            let code = context.err().code().map(str::to_string);
            let status = context.raw().status().as_u16();
            let (failure, blame) = classify_reply(code.as_deref(), status);
            let reply = ServiceReply {
                message: context.err().message().unwrap_or_default().to_string(),
                code: code.clone(),
                status,
            };
            return (SourceError::new(failure, blame, reply), code);
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
            (BackendFailure::Unreachable, Blame::Request)
        }
        // A request the SDK could not build is no query's fault in particular (a bad region or
        // endpoint): nobody is isolated for it.
        SdkError::ConstructionFailure(_) => (BackendFailure::RequestRefused, Blame::Request),
        _ => (BackendFailure::ServiceError, Blame::Request),
    };
    (SourceError::new(failure, blame, error), None)
}

/// The kind of a service's error answer and who is to blame, from its code and HTTP status.
fn classify_reply(code: Option<&str>, status: u16) -> (BackendFailure, Blame) {
    let is = |codes: &[&str]| code.is_some_and(|code| codes.contains(&code));
    if is(THROTTLE_CODES) || status == 429 {
        (BackendFailure::Throttled, Blame::Request)
    } else if is(ACCESS_CODES) || status == 403 {
        (BackendFailure::AccessDenied, Blame::Request)
    } else if status >= 500 {
        (BackendFailure::ServiceError, Blame::Request)
    } else if code.is_none() || is(REQUEST_WIDE_CODES) {
        // A 4xx without an error code is not the service speaking (a proxy's page, a load
        // balancer), and these codes are about the request as a whole.
        (BackendFailure::RequestRefused, Blame::Request)
    } else {
        (BackendFailure::InvalidQuery, Blame::Members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_validation_error_blames_the_members() {
        let cases = [
            (
                Some("InvalidParameterValue"),
                400,
                BackendFailure::InvalidQuery,
                Blame::Members,
            ),
            (
                Some("ValidationError"),
                400,
                BackendFailure::InvalidQuery,
                Blame::Members,
            ),
            (
                Some("RequestExpired"),
                400,
                BackendFailure::RequestRefused,
                Blame::Request,
            ),
            (None, 400, BackendFailure::RequestRefused, Blame::Request),
            (
                Some("Throttling"),
                400,
                BackendFailure::Throttled,
                Blame::Request,
            ),
            (
                Some("AccessDenied"),
                403,
                BackendFailure::AccessDenied,
                Blame::Request,
            ),
            (
                Some("InternalFailure"),
                500,
                BackendFailure::ServiceError,
                Blame::Request,
            ),
            (None, 502, BackendFailure::ServiceError, Blame::Request),
        ];
        for (code, status, failure, blame) in cases {
            assert_eq!(
                classify_reply(code, status),
                (failure, blame),
                "{code:?} {status}"
            );
        }
    }
}
