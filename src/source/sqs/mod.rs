//! SQS `GetQueueAttributes` as a [`Source`]: a queue's approximate message counts, read near real
//! time, about 25x cheaper per queue than `GetMetricData` at the same cadence.
//!
//! - A queue named by name is resolved to its URL with `GetQueueUrl` once, and the URL cached
//!   (a queue that stops existing drops it, so a recreated queue is found again).
//! - Series that read the same queue (several definitions, or counts) share one call.
//! - An empty queue is a real 0 read from SQS. A queue that does not exist is a 404 naming it;
//!   access denied names the IAM permission; throttling and outages are failures, so the engine
//!   serves the last good value until its max age. Nothing is fabricated.
//! - The value's timestamp is the time the attributes were read; it has no window.
//!
//! Only `client.rs` imports AWS SDK types.

pub mod client;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use crate::definition::sqs::render_queue;
use crate::definition::{Backend, Definition, QueueCount, QueueRef};
use crate::provider::{BackendFailure, ProviderError, Reading};
use crate::source::aws::{CREDENTIALS_HINT, Target};
use crate::source::{Fetched, Member, Planned, Profile, Source, SourceError, Usage, backend_error};

/// How SQS batches and what it costs: one queue a call, about $0.40 per million requests.
pub const PROFILE: Profile = Profile {
    backend: Backend::Sqs,
    max_items_per_call: 1,
    dollars_per_unit: 0.40 / 1_000_000.0,
    permissions: "sqs:GetQueueAttributes and sqs:GetQueueUrl (and sts:AssumeRole for a definition's roleArn)",
    credentials_hint: CREDENTIALS_HINT,
    operation: "GetQueueAttributes",
};

/// One series' read: where, which queue, which counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SqsRequest {
    /// Who makes the call.
    #[serde(skip)]
    pub target: Target,
    /// The queue, placeholders filled.
    #[serde(skip)]
    pub queue: QueueRef,
    /// The counts added up.
    #[serde(skip)]
    pub counts: Vec<QueueCount>,
}

impl SqsRequest {
    /// The calls this read makes, as `query --dry-run` prints them: `GetQueueUrl` (for a queue
    /// given by name, once) and `GetQueueAttributes`.
    pub fn describe_calls(&self) -> serde_json::Value {
        let attributes: Vec<&str> = self.counts.iter().map(|c| c.attribute()).collect();
        match &self.queue {
            QueueRef::Url(url) => serde_json::json!([
                {"GetQueueAttributes": {"QueueUrl": url, "AttributeNames": attributes}},
            ]),
            QueueRef::Name { name, owner } => {
                let mut get_url = serde_json::json!({"QueueName": name});
                if let Some(owner) = owner {
                    get_url["QueueOwnerAWSAccountId"] = owner.clone().into();
                }
                serde_json::json!([
                    {"GetQueueUrl": get_url, "note": "once; the URL is cached"},
                    {"GetQueueAttributes": {"QueueUrl": "<from GetQueueUrl>", "AttributeNames": attributes}},
                ])
            }
        }
    }
}

/// One call: a queue and the union of the counts its members need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsCall {
    /// Who makes the call.
    pub target: Target,
    /// The queue.
    pub queue: QueueRef,
    /// Every count any member needs.
    pub counts: Vec<QueueCount>,
}

/// A queue's counts, as SQS reported them.
pub type QueueCounts = BTreeMap<QueueCount, u64>;

/// How an SQS call failed: the one answer the source branches on, and everything else.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SqsError {
    /// The queue does not exist (or, as SQS words it, the caller cannot see it).
    #[error("the queue does not exist")]
    QueueNotFound(#[source] SourceError),
    /// Any other failure.
    #[error(transparent)]
    Failed(#[from] SourceError),
}

/// The narrow seam in front of the AWS SDK, so the source's logic can be tested with a fake;
/// the real client is tested against moto.
pub trait QueueApi: Send + Sync + 'static {
    /// `GetQueueUrl`.
    fn queue_url(
        &self,
        target: &Target,
        name: &str,
        owner: Option<&str>,
    ) -> impl Future<Output = Result<String, SqsError>> + Send;

    /// `GetQueueAttributes` for `counts`.
    fn queue_counts(
        &self,
        target: &Target,
        url: &str,
        counts: &[QueueCount],
    ) -> impl Future<Output = Result<QueueCounts, SqsError>> + Send;
}

impl<T: QueueApi> QueueApi for std::sync::Arc<T> {
    fn queue_url(
        &self,
        target: &Target,
        name: &str,
        owner: Option<&str>,
    ) -> impl Future<Output = Result<String, SqsError>> + Send {
        (**self).queue_url(target, name, owner)
    }

    fn queue_counts(
        &self,
        target: &Target,
        url: &str,
        counts: &[QueueCount],
    ) -> impl Future<Output = Result<QueueCounts, SqsError>> + Send {
        (**self).queue_counts(target, url, counts)
    }
}

/// `GetQueueAttributes` behind the engine's [`Source`] seam, over any [`QueueApi`].
#[derive(Debug)]
pub struct SqsSource<Q> {
    api: Q,
    /// Queue URLs by target and name, from `GetQueueUrl`.
    urls: Mutex<HashMap<(Target, QueueRef), String>>,
}

impl<Q: QueueApi> SqsSource<Q> {
    /// A source calling `api`.
    pub fn new(api: Q) -> Self {
        Self {
            api,
            urls: Mutex::new(HashMap::new()),
        }
    }

    fn urls(&self) -> std::sync::MutexGuard<'_, HashMap<(Target, QueueRef), String>> {
        self.urls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The queue's URL: given, cached, or asked for (counted in `usage`).
    async fn url(&self, call: &SqsCall, usage: &mut Usage) -> Result<String, SqsError> {
        let (name, owner) = match &call.queue {
            QueueRef::Url(url) => return Ok(url.clone()),
            QueueRef::Name { name, owner } => (name, owner),
        };
        let key = (call.target.clone(), call.queue.clone());
        if let Some(url) = self.urls().get(&key) {
            return Ok(url.clone());
        }
        usage.billed += 1;
        let url = self
            .api
            .queue_url(&call.target, name, owner.as_deref())
            .await?;
        self.urls().insert(key, url.clone());
        Ok(url)
    }
}

/// The queue a definition and labels read, or why the labels cannot make one.
pub fn request(
    definition: &Definition,
    labels: &BTreeMap<String, String>,
) -> Result<SqsRequest, ProviderError> {
    let Some((spec, read)) = definition.sqs() else {
        return Err(ProviderError::Backend {
            failure: BackendFailure::InvalidQuery,
            message: format!("metric {} is not read from SQS", definition.spec.name),
        });
    };
    let queue = render_queue(spec, labels).map_err(|reason| {
        ProviderError::InvalidSelector(format!("metric {}: sqs: {reason}", definition.spec.name))
    })?;
    Ok(SqsRequest {
        target: Target::of(definition),
        queue,
        counts: read.counts.clone(),
    })
}

impl<Q: QueueApi> Source for SqsSource<Q> {
    type Request = SqsRequest;
    type Call = SqsCall;

    fn profile(&self) -> Profile {
        PROFILE
    }

    fn prepare(
        &self,
        definition: &Definition,
        labels: &BTreeMap<String, String>,
        _now: SystemTime,
    ) -> Result<SqsRequest, ProviderError> {
        request(definition, labels)
    }

    fn size(&self, _definition: &Definition) -> usize {
        1
    }

    /// One call per queue: series reading the same queue share it.
    fn plan(&self, items: &[&SqsRequest]) -> Vec<Planned<SqsCall>> {
        let mut calls: Vec<Planned<SqsCall>> = Vec::new();
        let mut by_queue: HashMap<(&Target, &QueueRef), usize> = HashMap::new();
        for (index, request) in items.iter().enumerate() {
            let key = (&request.target, &request.queue);
            match by_queue.get(&key) {
                Some(&slot) => {
                    let planned = &mut calls[slot];
                    planned.members.push(index);
                    for count in &request.counts {
                        if !planned.call.counts.contains(count) {
                            planned.call.counts.push(*count);
                        }
                    }
                    planned.call.counts.sort();
                }
                None => {
                    by_queue.insert(key, calls.len());
                    calls.push(Planned {
                        call: SqsCall {
                            target: request.target.clone(),
                            queue: request.queue.clone(),
                            counts: request.counts.clone(),
                        },
                        members: vec![index],
                    });
                }
            }
        }
        calls
    }

    async fn fetch(
        &self,
        call: &SqsCall,
        members: &[Member<'_, SqsRequest>],
        now: SystemTime,
    ) -> Fetched {
        let mut usage = Usage::default();
        let counts = match self.url(call, &mut usage).await {
            Ok(url) => {
                usage.billed += 1;
                usage.items = 1;
                self.api
                    .queue_counts(&call.target, &url, &call.counts)
                    .await
            }
            Err(error) => Err(error),
        };
        let counts = match counts {
            Ok(counts) => counts,
            Err(SqsError::QueueNotFound(error)) => {
                // A deleted queue may come back under the same name with another URL.
                self.urls()
                    .remove(&(call.target.clone(), call.queue.clone()));
                tracing::info!(queue = %call.queue, error = %crate::telemetry::Chain(&error), "SQS queue does not exist");
                let outcome = members
                    .iter()
                    .map(|member| {
                        Err(ProviderError::ResourceNotFound(format!(
                            "metric {}: SQS queue {} does not exist{}",
                            member.definition.spec.name,
                            call.queue,
                            member
                                .definition
                                .spec
                                .region
                                .as_ref()
                                .map(|r| format!(" in region {r}"))
                                .unwrap_or_default()
                        )))
                    })
                    .collect();
                return Fetched {
                    usage,
                    outcome: Ok(outcome),
                };
            }
            Err(SqsError::Failed(error)) => {
                return Fetched {
                    usage,
                    outcome: Err(error),
                };
            }
        };
        usage.datapoints = counts.len();
        let outcome = members
            .iter()
            .map(|member| value(member, &counts, now))
            .collect();
        Fetched {
            usage,
            outcome: Ok(outcome),
        }
    }
}

/// A member's value: the sum of its counts, read `now`.
fn value(
    member: &Member<'_, SqsRequest>,
    counts: &QueueCounts,
    now: SystemTime,
) -> Result<Reading, ProviderError> {
    let mut sum = 0u64;
    for count in &member.request.counts {
        match counts.get(count) {
            Some(n) => sum = sum.saturating_add(*n),
            // SQS always returns the attributes asked for; a missing one is not a zero.
            None => {
                tracing::warn!(queue = %member.request.queue, attribute = count.attribute(), "SQS did not return an attribute");
                return Err(backend_error(
                    &PROFILE,
                    BackendFailure::ServiceError,
                    &member.definition.spec.name,
                ));
            }
        }
    }
    Ok(Reading {
        timestamp: now,
        window: None,
        value: sum as f64,
    })
}

#[cfg(test)]
mod tests;
