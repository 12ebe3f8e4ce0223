//! The one error type every CloudWatch operation returns, and the AWS error codes it carries.
//!
//! `wire.rs` turns an [`ApiError`] into the rpc-v2-cbor error shape the SDK decodes: the HTTP
//! status, `x-amzn-query-error: <Code>;<Sender|Receiver>` (the SDK takes the code from this header
//! because it sends `x-amzn-query-mode: true`) and a CBOR body `{"__type", "message"}`.

use std::fmt;

/// Error codes, as the SDK sees them in `ProvideErrorMetadata::code()`.
pub(crate) mod code {
    /// Input failed a model constraint or a CloudWatch rule (GetMetricData reports all of these).
    pub const VALIDATION_ERROR: &str = "ValidationError";
    /// A PutMetricData / ListMetrics parameter has a bad value (modelled error).
    pub const INVALID_PARAMETER_VALUE: &str = "InvalidParameterValue";
    /// Two PutMetricData parameters that exclude each other were both given (modelled error).
    pub const INVALID_PARAMETER_COMBINATION: &str = "InvalidParameterCombination";
    /// A required PutMetricData parameter is missing (modelled error).
    pub const MISSING_PARAMETER: &str = "MissingParameter";
    /// GetMetricData's NextToken does not belong to this request (modelled error).
    pub const INVALID_NEXT_TOKEN: &str = "InvalidNextToken";
    /// The body is not CBOR, or a member has the wrong CBOR type.
    pub const SERIALIZATION: &str = "SerializationException";
    /// The path names an operation this emulator does not serve.
    pub const UNKNOWN_OPERATION: &str = "UnknownOperationException";
    /// The request body is larger than CloudWatch accepts (1 MB).
    pub const REQUEST_TOO_LARGE: &str = "RequestEntityTooLarge";
    /// Valid for AWS, but this emulator does not implement it (never a silently wrong answer).
    pub const EMULATOR_UNSUPPORTED: &str = "EmulatorUnsupported";
    /// Injected fault: request rate exceeded.
    pub const THROTTLING: &str = "Throttling";
    /// Injected fault: generic server failure.
    pub const INTERNAL_FAILURE: &str = "InternalFailure";
    /// Injected fault: temporary unavailability.
    pub const SERVICE_UNAVAILABLE: &str = "ServiceUnavailable";
    /// Injected fault: IAM denies the call.
    pub const ACCESS_DENIED: &str = "AccessDenied";
    /// Injected fault: the request's signing time is too far from the server's clock.
    pub const REQUEST_EXPIRED: &str = "RequestExpired";
}

/// An error answer to a CloudWatch operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    /// HTTP status code (400, 403, 404, 413, 500, 503).
    pub status: u16,
    /// AWS error code (see [`code`]).
    pub code: &'static str,
    /// Human-readable message, as AWS would word it.
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `ValidationError`.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(400, code::VALIDATION_ERROR, message)
    }

    /// 400 `SerializationException`: the body could not be read as the operation's input.
    pub fn serialization(message: impl Into<String>) -> Self {
        Self::new(400, code::SERIALIZATION, message)
    }

    /// 400 `EmulatorUnsupported`: AWS would accept this, the emulator refuses to guess.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(
            400,
            code::EMULATOR_UNSUPPORTED,
            format!("cloudwatch-emulator does not support {}", message.into()),
        )
    }

    /// `Sender` for client errors, `Receiver` for server errors, as awsQuery reports the fault.
    pub fn fault(&self) -> &'static str {
        if self.status >= 500 {
            "Receiver"
        } else {
            "Sender"
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl std::error::Error for ApiError {}
