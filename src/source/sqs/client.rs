//! The AWS SDK behind [`QueueApi`]: the only SQS file that imports `aws-sdk-*` types.

use aws_config::SdkConfig;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::QueueAttributeName;

use super::{QueueApi, QueueCounts, SqsError};
use crate::definition::QueueCount;
use crate::provider::BackendFailure;
use crate::source::aws::{self, Clients, Target};
use crate::source::{Blame, SourceError};

/// Error codes SQS answers a missing queue with: the awsQuery-compatible code (from the
/// `x-amzn-query-error` header) and the JSON shape name.
const NOT_FOUND_CODES: &[&str] = &[
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
];

/// SQS through the real SDK, one client per target, built once and reused.
#[derive(Debug)]
pub struct AwsSqs {
    clients: Clients<Client>,
}

impl AwsSqs {
    /// Wrap a loaded SDK configuration (region, credentials chain, retries, timeouts), sending
    /// SQS calls to `endpoint_url` if given (STS keeps its own endpoint).
    pub fn new(base: SdkConfig, endpoint_url: Option<String>) -> Self {
        Self {
            clients: Clients::new(base).with_endpoint_url(endpoint_url),
        }
    }

    async fn client(&self, target: &Target) -> Client {
        self.clients
            .get(target, |config, endpoint_url| {
                let mut builder = aws_sdk_sqs::config::Builder::from(config);
                // Only an override replaces the base configuration's endpoint (which may
                // itself come from AWS_ENDPOINT_URL).
                if let Some(url) = endpoint_url {
                    builder.set_endpoint_url(Some(url.to_string()));
                }
                Client::from_conf(builder.build())
            })
            .await
    }
}

fn sqs_error((error, code): (SourceError, Option<String>)) -> SqsError {
    if code.is_some_and(|code| NOT_FOUND_CODES.contains(&code.as_str())) {
        SqsError::QueueNotFound(error)
    } else {
        SqsError::Failed(error)
    }
}

/// An answer SQS should not give (a missing URL, a count that is not a number).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UnexpectedAnswer(String);

fn attribute(count: QueueCount) -> QueueAttributeName {
    match count {
        QueueCount::Visible => QueueAttributeName::ApproximateNumberOfMessages,
        QueueCount::InFlight => QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        QueueCount::Delayed => QueueAttributeName::ApproximateNumberOfMessagesDelayed,
    }
}

impl QueueApi for AwsSqs {
    async fn queue_url(
        &self,
        target: &Target,
        name: &str,
        owner: Option<&str>,
    ) -> Result<String, SqsError> {
        let output = self
            .client(target)
            .await
            .get_queue_url()
            .queue_name(name)
            .set_queue_owner_aws_account_id(owner.map(str::to_string))
            .send()
            .await
            .map_err(|error| sqs_error(aws::classify(error)))?;
        output.queue_url().map(str::to_string).ok_or_else(|| {
            SqsError::Failed(SourceError::new(
                BackendFailure::ServiceError,
                Blame::Request,
                UnexpectedAnswer("GetQueueUrl answered without a QueueUrl".to_string()),
            ))
        })
    }

    async fn queue_counts(
        &self,
        target: &Target,
        url: &str,
        counts: &[QueueCount],
    ) -> Result<QueueCounts, SqsError> {
        let output = self
            .client(target)
            .await
            .get_queue_attributes()
            .queue_url(url)
            .set_attribute_names(Some(counts.iter().map(|c| attribute(*c)).collect()))
            .send()
            .await
            .map_err(|error| sqs_error(aws::classify(error)))?;
        let attributes = output.attributes();
        let mut values = QueueCounts::new();
        for count in counts {
            let Some(text) = attributes.and_then(|a| a.get(&attribute(*count))) else {
                continue;
            };
            let number = text.trim().parse::<u64>().map_err(|_| {
                SqsError::Failed(SourceError::new(
                    BackendFailure::ServiceError,
                    Blame::Request,
                    UnexpectedAnswer(format!("{} is not a count: {text:?}", count.attribute())),
                ))
            })?;
            values.insert(*count, number);
        }
        Ok(values)
    }
}
