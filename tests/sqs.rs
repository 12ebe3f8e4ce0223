//! SQS read natively, end to end: the real server against a real moto_server, through a fault
//! layer that answers the way SQS fails (throttling, access denied, a missing queue, an outage).
//! Real sockets, so waits are real but bounded and short (1 s refresh intervals).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime};

use cloudwatch_emulator::Emulator;
use common::TestServer;
use common::sqs::{FaultProxy, Moto, SqsFault};
use serde_json::Value;

const DEFINITIONS: &str = r#"
metrics:
  - name: sqs-visible
    refreshInterval: 1s
    sqs:
      queue: "${QueueName}"
  - name: sqs-backlog
    refreshInterval: 1s
    maxAge: 4s
    sqs:
      queue: "${QueueName}"
      count: [visible, inFlight, delayed]
"#;

struct Setup {
    moto: Moto,
    proxy: FaultProxy,
    server: TestServer,
    _emulator: Emulator,
}

async fn setup() -> Setup {
    let moto = Moto::start().await;
    let proxy = FaultProxy::start(&moto).await;
    let emulator = Emulator::start().await.unwrap();
    let server = TestServer::start_with(
        DEFINITIONS,
        &emulator,
        &["--sqs-endpoint-url", &proxy.endpoint],
    )
    .await;
    Setup {
        moto,
        proxy,
        server,
        _emulator: emulator,
    }
}

async fn create_queue(moto: &Moto, name: &str, messages: usize) -> String {
    let client = moto.client().await;
    let url = client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    for i in 0..messages {
        client
            .send_message()
            .queue_url(&url)
            .message_body(format!("m{i}"))
            .send()
            .await
            .unwrap();
    }
    url
}

fn path(metric: &str, queue: &str) -> String {
    format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/{metric}?labelSelector=QueueName%3D{queue}"
    )
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within 10 s");
}

#[tokio::test]
async fn queue_depth_is_read_natively_with_its_read_time_and_no_window() {
    let Setup {
        moto,
        proxy,
        server,
        ..
    } = setup().await;
    let orders = create_queue(&moto, "orders", 3).await;
    create_queue(&moto, "idle", 0).await;

    let before = SystemTime::now() - Duration::from_secs(1);
    let (status, body) = server.get(&path("sqs-visible", "orders")).await;
    assert_eq!(status, 200, "{body}");
    let item = &body["items"][0];
    assert_eq!(item["value"], "3");
    assert_eq!(item["metricLabels"]["QueueName"], "orders");
    assert!(
        item.get("window").is_none(),
        "SQS values have no window: {item}"
    );
    let stamped = humantime::parse_rfc3339(item["timestamp"].as_str().unwrap()).unwrap();
    assert!(stamped >= before, "timestamp {stamped:?} is the read time");

    // An empty queue is a real 0, read from SQS.
    let (status, body) = server.get(&path("sqs-visible", "idle")).await;
    assert_eq!(
        (status, body["items"][0]["value"].clone()),
        (200, Value::from("0"))
    );

    // In flight and delayed messages count when asked for.
    let client = moto.client().await;
    client
        .receive_message()
        .queue_url(&orders)
        .max_number_of_messages(1)
        .send()
        .await
        .unwrap();
    client
        .send_message()
        .queue_url(&orders)
        .message_body("later")
        .delay_seconds(60)
        .send()
        .await
        .unwrap();
    let (status, body) = server.get(&path("sqs-backlog", "orders")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["items"][0]["value"], "4",
        "2 visible + 1 in flight + 1 delayed"
    );

    // Changes show up within a refresh interval, and the URL was resolved once per queue.
    until(
        "the received message gone from the visible count",
        async || server.get(&path("sqs-visible", "orders")).await.1["items"][0]["value"] == "2",
    )
    .await;
    client
        .send_message()
        .queue_url(&orders)
        .message_body("more")
        .send()
        .await
        .unwrap();
    until("the new depth", async || {
        server.get(&path("sqs-visible", "orders")).await.1["items"][0]["value"] == "3"
    })
    .await;
    assert!(proxy.calls("GetQueueAttributes") >= 4);
    assert_eq!(proxy.calls("GetQueueUrl"), 2, "orders and idle, once each");

    // A queue that does not exist is a 404 that names it; nothing is made up.
    let (status, body) = server.get(&path("sqs-visible", "ghost")).await;
    assert_eq!(status, 404, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("SQS queue ghost does not exist"),
        "{message}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn failures_say_what_to_do_and_outages_serve_the_last_good_value_until_max_age() {
    let Setup {
        moto,
        proxy,
        server,
        ..
    } = setup().await;
    create_queue(&moto, "orders", 2).await;

    // Access denied names the IAM permission, never AWS's words.
    proxy.inject("GetQueueUrl", SqsFault::AccessDenied, 1);
    let (status, body) = server.get(&path("sqs-visible", "orders")).await;
    assert_eq!(status, 500, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("from SQS: access denied"), "{message}");
    assert!(message.contains("sqs:GetQueueAttributes"), "{message}");
    assert!(!message.contains("arn:aws"), "{message}");

    // A good value, then throttling: the last good value is served while within max age (4 s).
    until("a value after the denial", async || {
        server.get(&path("sqs-backlog", "orders")).await.0 == 200
    })
    .await;
    proxy.always(Some(SqsFault::Throttled));
    let throttled_from = proxy.calls("GetQueueAttributes");
    until("a throttled refresh", async || {
        proxy.calls("GetQueueAttributes") > throttled_from
    })
    .await;
    let (status, body) = server.get(&path("sqs-backlog", "orders")).await;
    assert_eq!(
        (status, body["items"][0]["value"].clone()),
        (200, Value::from("2"))
    );
    // Past max age: an error saying why, never the old number.
    until("the value past its max age", async || {
        server.get(&path("sqs-backlog", "orders")).await.0 == 503
    })
    .await;
    let (_, body) = server.get(&path("sqs-backlog", "orders")).await;
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("from SQS: throttled"), "{message}");
    assert!(message.contains("past its max age of 4s"), "{message}");

    // An outage (503s) is the same; when SQS answers again the value comes back by itself.
    proxy.always(Some(SqsFault::Unavailable));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _) = server.get(&path("sqs-backlog", "orders")).await;
    assert_eq!(status, 503);
    proxy.always(None);
    until("recovery", async || {
        server.get(&path("sqs-backlog", "orders")).await.0 == 200
    })
    .await;

    // A queue deleted meanwhile: the next refresh finds it gone.
    proxy.always(Some(SqsFault::QueueDoesNotExist));
    until("the deleted queue", async || {
        server.get(&path("sqs-visible", "orders")).await.0 == 404
    })
    .await;
    server.stop().await.unwrap();
}
