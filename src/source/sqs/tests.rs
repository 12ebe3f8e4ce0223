//! The SQS source against a scripted queue API.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::definition::parse;

/// Queues by name with their counts; records every call.
#[derive(Default)]
struct FakeSqs {
    queues: Mutex<BTreeMap<String, QueueCounts>>,
    calls: Mutex<Vec<String>>,
    failure: Mutex<Option<SqsError>>,
}

impl FakeSqs {
    fn set(&self, name: &str, visible: u64, in_flight: u64, delayed: u64) {
        self.queues.lock().unwrap().insert(
            name.to_string(),
            BTreeMap::from([
                (QueueCount::Visible, visible),
                (QueueCount::InFlight, in_flight),
                (QueueCount::Delayed, delayed),
            ]),
        );
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

fn not_found(text: &str) -> SqsError {
    SqsError::QueueNotFound(SourceError::new(
        BackendFailure::InvalidQuery,
        crate::source::Blame::Members,
        text,
    ))
}

impl QueueApi for FakeSqs {
    async fn queue_url(
        &self,
        _target: &Target,
        name: &str,
        owner: Option<&str>,
    ) -> Result<String, SqsError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("GetQueueUrl {name}"));
        if !self.queues.lock().unwrap().contains_key(name) {
            return Err(not_found("AWS.SimpleQueueService.NonExistentQueue"));
        }
        Ok(format!(
            "https://sqs.us-east-1.amazonaws.com/{}/{name}",
            owner.unwrap_or("123456789012")
        ))
    }

    async fn queue_counts(
        &self,
        _target: &Target,
        url: &str,
        counts: &[QueueCount],
    ) -> Result<QueueCounts, SqsError> {
        let names: Vec<&str> = counts.iter().map(|c| c.attribute()).collect();
        self.calls
            .lock()
            .unwrap()
            .push(format!("GetQueueAttributes {url} {}", names.join(",")));
        if let Some(error) = self.failure.lock().unwrap().clone() {
            return Err(error);
        }
        let name = url.rsplit('/').next().unwrap();
        let queues = self.queues.lock().unwrap();
        let Some(all) = queues.get(name) else {
            return Err(not_found("gone"));
        };
        Ok(counts.iter().map(|c| (*c, all[c])).collect())
    }
}

const DEFINITIONS: &str = r#"
metrics:
  - name: visible
    sqs:
      queue: "${QueueName}"
  - name: backlog
    sqs:
      queue: "${QueueName}"
      count: [visible, inFlight, delayed]
  - name: other-account
    sqs:
      queue: "orders-${Env}"
      accountId: "${Account}"
  - name: by-url
    sqs:
      queue: "https://sqs.eu-west-1.amazonaws.com/123456789012/${QueueName}"
"#;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn read(
    source: &SqsSource<Arc<FakeSqs>>,
    reads: &[(&str, BTreeMap<String, String>)],
) -> Vec<Result<Reading, ProviderError>> {
    let set = parse(DEFINITIONS).unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(1_790_000_000);
    let prepared: Vec<(Arc<Definition>, BTreeMap<String, String>, SqsRequest)> = reads
        .iter()
        .map(|(metric, labels)| {
            let definition = set.get(metric).unwrap().clone();
            let request = source.prepare(&definition, labels, now).unwrap();
            (definition, labels.clone(), request)
        })
        .collect();
    let items: Vec<&SqsRequest> = prepared.iter().map(|(_, _, request)| request).collect();
    let mut results: Vec<Option<Result<Reading, ProviderError>>> =
        (0..prepared.len()).map(|_| None).collect();
    for planned in source.plan(&items) {
        let members: Vec<Member<'_, SqsRequest>> = planned
            .members
            .iter()
            .map(|&i| Member {
                definition: &prepared[i].0,
                labels: &prepared[i].1,
                request: &prepared[i].2,
            })
            .collect();
        let fetched = source.fetch(&planned.call, &members, now).await;
        let outcome = fetched.outcome.map_err(|e| e.failure);
        for (slot, &index) in planned.members.iter().enumerate() {
            results[index] = Some(match &outcome {
                Ok(values) => values[slot].clone(),
                Err(failure) => Err(backend_error(&PROFILE, *failure, "x")),
            });
        }
    }
    results.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn counts_are_added_up_an_empty_queue_is_zero_and_the_url_is_resolved_once() {
    let fake = Arc::new(FakeSqs::default());
    fake.set("orders", 7, 3, 2);
    fake.set("empty", 0, 0, 0);
    let source = SqsSource::new(fake.clone());
    let orders = labels(&[("QueueName", "orders")]);
    let values = read(
        &source,
        &[
            ("visible", orders.clone()),
            ("backlog", orders.clone()),
            ("visible", labels(&[("QueueName", "empty")])),
        ],
    )
    .await;
    let value = |i: usize| values[i].as_ref().unwrap();
    assert_eq!(value(0).value, 7.0);
    assert_eq!(value(1).value, 12.0, "visible + inFlight + delayed");
    assert_eq!(value(2).value, 0.0, "an empty queue is a real 0");
    assert_eq!(value(0).window, None, "SQS values have no window");
    assert_eq!(
        value(0).timestamp,
        UNIX_EPOCH + Duration::from_secs(1_790_000_000),
        "stamped with the read time"
    );
    // Two series on one queue share a call that asks for the union of their counts.
    let calls = fake.calls();
    assert_eq!(
        calls,
        [
            "GetQueueUrl orders",
            "GetQueueAttributes https://sqs.us-east-1.amazonaws.com/123456789012/orders ApproximateNumberOfMessages,ApproximateNumberOfMessagesNotVisible,ApproximateNumberOfMessagesDelayed",
            "GetQueueUrl empty",
            "GetQueueAttributes https://sqs.us-east-1.amazonaws.com/123456789012/empty ApproximateNumberOfMessages",
        ]
    );
    // The next refresh asks for no URL.
    read(&source, &[("visible", orders)]).await;
    assert_eq!(fake.calls().len(), 5);
    assert!(fake.calls()[4].starts_with("GetQueueAttributes"));
}

#[tokio::test]
async fn a_missing_queue_is_not_found_naming_it_and_is_looked_up_again() {
    let fake = Arc::new(FakeSqs::default());
    let source = SqsSource::new(fake.clone());
    let missing = labels(&[("QueueName", "ghost")]);
    let values = read(&source, &[("visible", missing.clone())]).await;
    let Err(ProviderError::ResourceNotFound(message)) = &values[0] else {
        panic!("expected ResourceNotFound, got {:?}", values[0]);
    };
    assert!(
        message.contains("SQS queue ghost does not exist"),
        "{message}"
    );
    // Created later: found, because a miss is never cached.
    fake.set("ghost", 4, 0, 0);
    let values = read(&source, &[("visible", missing)]).await;
    assert_eq!(values[0].as_ref().unwrap().value, 4.0);
}

#[tokio::test]
async fn failures_are_typed_and_name_sqs_and_its_permission() {
    let fake = Arc::new(FakeSqs::default());
    fake.set("orders", 1, 0, 0);
    *fake.failure.lock().unwrap() = Some(SqsError::Failed(SourceError::new(
        BackendFailure::AccessDenied,
        crate::source::Blame::Request,
        "User: arn:aws:sts::1:assumed-role/x is not authorized",
    )));
    let source = SqsSource::new(fake.clone());
    let values = read(&source, &[("visible", labels(&[("QueueName", "orders")]))]).await;
    let Err(ProviderError::Backend { failure, message }) = &values[0] else {
        panic!("expected a backend error");
    };
    assert_eq!(*failure, BackendFailure::AccessDenied);
    assert!(message.contains("from SQS"), "{message}");
    assert!(message.contains("sqs:GetQueueAttributes"), "{message}");
    assert!(!message.contains("arn:aws"), "{message}");
}

#[test]
fn label_values_that_make_no_queue_name_or_account_are_refused_for_that_series() {
    let set = parse(DEFINITIONS).unwrap();
    let refuse = |metric: &str, pairs: &[(&str, &str)]| {
        let definition = set.get(metric).unwrap();
        match request(definition, &labels(pairs)) {
            Err(ProviderError::InvalidSelector(message)) => message,
            other => panic!("{metric} {pairs:?}: expected a refusal, got {other:?}"),
        }
    };
    assert!(refuse("visible", &[("QueueName", "")]).contains("not an SQS queue name"));
    assert!(refuse("visible", &[("QueueName", "a.b")]).contains("not an SQS queue name"));
    assert!(
        refuse("other-account", &[("Env", "prod"), ("Account", "1234")])
            .contains("not a 12-digit AWS account id")
    );
    let ok = request(
        set.get("other-account").unwrap(),
        &labels(&[("Env", "prod"), ("Account", "210987654321")]),
    )
    .unwrap();
    assert_eq!(
        ok.queue,
        QueueRef::Name {
            name: "orders-prod".into(),
            owner: Some("210987654321".into())
        }
    );
    let url = request(
        set.get("by-url").unwrap(),
        &labels(&[("QueueName", "o.fifo")]),
    )
    .unwrap();
    assert_eq!(
        url.queue,
        QueueRef::Url("https://sqs.eu-west-1.amazonaws.com/123456789012/o.fifo".into())
    );
}
