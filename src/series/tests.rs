//! The series table's capacity rules, without the engine.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::definition::{Definition, parse};

fn definition(namespace: &str) -> Arc<Definition> {
    let spec = parse(
        r#"
metrics:
  - name: depth
    queries:
      - id: visible
        metricStat:
          metric:
            namespace: AWS/SQS
            metricName: ApproximateNumberOfMessagesVisible
            dimensions: [{name: QueueName, value: "${QueueName}"}]
          period: 60
          stat: Average
"#,
    )
    .unwrap()
    .get("depth")
    .unwrap()
    .spec
    .clone();
    let mut definition = Definition::new(spec).unwrap();
    definition.namespace = Some(namespace.to_string());
    Arc::new(definition)
}

fn key(queue: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("QueueName".to_string(), queue.to_string())])
}

fn insert(table: &SeriesTable, definition: &Arc<Definition>, queue: &str) -> Found {
    table
        .get_or_insert(definition, &key(queue), Instant::now())
        .unwrap()
}

fn dropped(found: Found) -> Option<Arc<Series>> {
    match found {
        Found::Created { dropped, .. } => dropped,
        Found::Existing(_) => panic!("expected a new series"),
    }
}

#[tokio::test(start_paused = true)]
async fn making_room_drops_the_least_recently_requested_series_of_the_largest_tenant() {
    let table = SeriesTable::new(6);
    let (greedy, other, newcomer) = (definition("greedy"), definition("other"), definition("new"));
    for i in 0..4 {
        insert(&table, &greedy, &format!("g{i}"));
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    for i in 0..2 {
        insert(&table, &other, &format!("o{i}"));
    }
    // g0 is the oldest insert but was asked for again since: g1 is now the least recent.
    tokio::time::advance(Duration::from_secs(1)).await;
    table
        .get(&greedy, &key("g0"))
        .unwrap()
        .lock()
        .last_requested = Instant::now();

    let victim = dropped(insert(&table, &newcomer, "n0")).unwrap();
    assert_eq!(victim.labels.to_map()["QueueName"], "g1");
    assert!(victim.lock().removed);
    assert!(!table.contains(&greedy, &key("g1")));
    assert!(table.contains(&greedy, &key("g0")));
    assert_eq!(table.len(), 6);
    // Next: g2 (g0 was re-queued behind it with its newer time).
    let victim = dropped(insert(&table, &newcomer, "n1")).unwrap();
    assert_eq!(victim.labels.to_map()["QueueName"], "g2");
}

#[tokio::test(start_paused = true)]
async fn at_the_bound_a_tenant_at_its_share_is_refused_and_a_series_that_left_is_never_picked() {
    let table = SeriesTable::new(4);
    let (a, b) = (definition("a"), definition("b"));
    for i in 0..4 {
        insert(&table, &a, &format!("a{i}"));
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    // a0, the least recent, leaves on its own (idle): it must not be "evicted" a second time.
    let a0 = table.get(&a, &key("a0")).unwrap();
    table.remove(&a0);
    assert_eq!(table.len(), 3);
    insert(&table, &a, "a4");
    // b takes room from a, whose least recent live series is a1.
    let victim = dropped(insert(&table, &b, "b0")).unwrap();
    assert_eq!(victim.labels.to_map()["QueueName"], "a1");
    insert(&table, &b, "b1");
    // b holds its share (2 of 4): refused, nothing dropped.
    let refused = table
        .get_or_insert(&b, &key("b2"), Instant::now())
        .unwrap_err();
    assert_eq!(refused, AtCapacity::FairShare { share: 2 });
    assert_eq!(table.len(), 4);
    // And a, now at its share too, is refused rather than evicting b.
    assert!(matches!(
        table.get_or_insert(&a, &key("a9"), Instant::now()),
        Err(AtCapacity::FairShare { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn churn_below_the_bound_keeps_the_eviction_order_bounded() {
    let table = SeriesTable::new(100_000);
    let a = definition("a");
    let Found::Created { series: kept, .. } = insert(&table, &a, "kept") else {
        panic!("expected a new series");
    };
    for round in 0..50 {
        for i in 0..100 {
            insert(&table, &a, &format!("q{round}-{i}"));
        }
        for series in table.snapshot() {
            if !Arc::ptr_eq(&series, &kept) {
                table.remove(&series);
            }
        }
    }
    let accounts = table.accounts();
    // 5,000 series came and went: the tenant's eviction order is rebuilt as it grows, so it
    // holds at most about twice the live series of its busiest moment, not 5,000 dead entries.
    assert_eq!(
        accounts.held(&crate::definition::Tenant::Namespace("a".into())),
        1
    );
    assert!(
        accounts.order_len() <= 2 * 101 + 16,
        "{}",
        accounts.order_len()
    );
}

#[tokio::test(start_paused = true)]
async fn a_series_holds_its_labels_once_and_answers_with_its_own_name_and_labels() {
    let table = SeriesTable::new(10);
    let a = definition("a");
    let Found::Created { series, .. } = insert(&table, &a, "orders") else {
        panic!("expected a new series");
    };
    let reading = Reading {
        timestamp: std::time::UNIX_EPOCH + Duration::from_secs(60),
        window: Some(Duration::from_secs(60)),
        value: 1.5,
    };
    series.lock().latest = Some((Ok(reading), Instant::now()));
    let (answer, stale) = answer(&series, Duration::from_secs(300), Instant::now());
    let value = answer.unwrap();
    assert!(!stale);
    assert_eq!(value.metric_name, "depth");
    assert_eq!(value.labels["QueueName"], "orders");
    assert_eq!(value.value, 1.5);
    // The table keeps no key beside the series: a lookup by selector finds the series itself,
    // and a key's labels find it too.
    assert!(Arc::ptr_eq(
        &table.get(&a, &key("orders")).unwrap(),
        &series
    ));
    assert!(Arc::ptr_eq(
        &table.get(&a, &series.key().labels).unwrap(),
        &series
    ));
    assert!(table.get(&a, &key("other")).is_none());
}

/// RSS per active series is a goal (`scripts/bench-scale.sh`): a series with its `Arc` counts
/// fits mimalloc's 256-byte size class; 8 more bytes would take the next one, 320.
#[test]
fn a_series_with_its_reference_counts_fits_in_256_bytes() {
    let arc_counts = 2 * std::mem::size_of::<usize>();
    assert!(
        std::mem::size_of::<Series>() + arc_counts <= 256,
        "Series is {} bytes",
        std::mem::size_of::<Series>()
    );
}

#[tokio::test(start_paused = true)]
async fn a_first_value_for_another_series_of_the_same_waiting_shard_does_not_end_the_wait() {
    let depth = definition("a");
    let labels = Labels::new(&key("orders"));
    let first = Arc::new(Series::new(depth.clone(), labels.clone(), Instant::now()));
    // Ids are consecutive: the series FIRST_FETCH_SHARDS later waits in the same shard.
    let same_shard = loop {
        let series = Arc::new(Series::new(depth.clone(), labels.clone(), Instant::now()));
        if series.id % FIRST_FETCH_SHARDS as u64 == first.id % FIRST_FETCH_SHARDS as u64 {
            break series;
        }
    };
    let waiter = tokio::spawn({
        let same_shard = same_shard.clone();
        async move { same_shard.wait_first(Duration::from_secs(5)).await }
    });
    tokio::task::yield_now().await;
    first.publish();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !waiter.is_finished(),
        "woken by another series' first value"
    );
    same_shard.publish();
    assert!(waiter.await.unwrap());
    // And one nobody publishes times out.
    let silent = Series::new(depth, labels, Instant::now());
    assert!(!silent.wait_first(Duration::from_secs(5)).await);
}
