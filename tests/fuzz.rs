//! Bounded property tests ("fuzzing") of what an unauthenticated client controls: the request
//! path and method against the real router (through `oneshot`, guard layer included), the label
//! selector parser, and the quantity formatter. Each runs a fixed number of random cases inside
//! `cargo test`; the whole file takes a few seconds on two cores. A failure prints the smallest
//! input that still fails.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use cloudwatch_metrics_adapter::api::{self, ApiState, quantity, selector};
use cloudwatch_metrics_adapter::metrics::AdapterMetrics;
use cloudwatch_metrics_adapter::provider::{
    ExternalMetricsProvider, MetricInfo, MetricRequest, MetricValue, ProviderError,
};
use http_body_util::BodyExt;
use proptest::prelude::*;
use tower::ServiceExt;

/// A provider that knows one metric, `queue-depth`, in every namespace, and answers every
/// selector with one value (or refuses selectors that name `fail`).
struct Fake;

impl ExternalMetricsProvider for Fake {
    fn list_metrics(&self) -> Vec<MetricInfo> {
        vec![MetricInfo {
            name: "queue-depth".into(),
        }]
    }

    fn is_defined(&self, _namespace: &str, metric: &str) -> bool {
        metric == "queue-depth"
    }

    async fn get_values(&self, request: MetricRequest) -> Result<Vec<MetricValue>, ProviderError> {
        if request
            .selector
            .requirements
            .iter()
            .any(|r| r.key == "fail")
        {
            return Err(ProviderError::InvalidSelector(
                "the label fail cannot be used".into(),
            ));
        }
        Ok(vec![MetricValue {
            metric_name: request.metric,
            labels: BTreeMap::new(),
            timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            window: Some(Duration::from_secs(60)),
            value: 1.5,
        }])
    }
}

fn router() -> axum::Router {
    let metrics = Arc::new(AdapterMetrics::default());
    let router = api::router(Arc::new(ApiState {
        provider: Fake,
        metrics: metrics.clone(),
    }));
    api::guard(router, Duration::from_secs(5), metrics)
}

/// One runtime for every case (only this test's thread drives it).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Shrunk failures are printed; no regression files are written into the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Path segments an attacker would try: valid names, percent-encodings valid and not (`%ff`,
/// `%`, `%zz`, encoded slashes and NULs), dots, unicode, and long runs.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("queue-depth".to_string()),
        Just("default".to_string()),
        "[a-z0-9-]{1,20}",
        "(%[0-9a-fA-F]{2}|%[g-z]{0,2}|%|[a-z.~_-]|\\.\\.|%2[fF]|%00|é|😀){1,12}",
        "[ -~]{0,40}",
        "x{200,300}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    let prefix = prop_oneof![
        Just("/apis/external.metrics.k8s.io/v1beta1/namespaces/"),
        Just("/apis/external.metrics.k8s.io/v1beta1/"),
        Just("/apis/external.metrics.k8s.io/"),
        Just("/apis/"),
        Just("/openapi/"),
        Just("/"),
    ];
    let query = prop_oneof![
        Just(String::new()),
        Just("?labelSelector=QueueName%3Dorders".to_string()),
        "\\?labelSelector=[ -~]{0,60}",
        "\\?(labelSelector=(%[0-9a-fA-F]{2}|%|[a-z=!,() ]){0,30}&?){1,3}",
        "\\?[ -~]{0,40}",
    ];
    (prefix, prop::collection::vec(segment(), 0..4), query)
        .prop_map(|(prefix, segments, query)| format!("{prefix}{}{query}", segments.join("/")))
}

fn method() -> impl Strategy<Value = http::Method> {
    prop_oneof![
        4 => Just(http::Method::GET),
        1 => Just(http::Method::HEAD),
        1 => Just(http::Method::POST),
        1 => Just(http::Method::PUT),
        1 => Just(http::Method::DELETE),
        1 => Just(http::Method::PATCH),
        1 => Just(http::Method::OPTIONS),
    ]
}

proptest! {
    #![proptest_config(config(1500))]

    /// Whatever the path, method, query and body: no panic, and every answer that is not a
    /// success is a `metav1.Status` whose code is the HTTP status.
    #[test]
    fn every_rejection_is_a_status(path in path(), method in method(), with_body in any::<bool>()) {
        // Paths hyper itself would refuse to parse never reach the router.
        let Ok(uri) = http::Uri::try_from(path.as_str()) else { return Ok(()) };
        let (status, body) = runtime().block_on(async {
            let mut request = http::Request::builder().method(method.clone()).uri(uri);
            let body = if with_body {
                request = request.header(http::header::CONTENT_LENGTH, "2");
                Body::from("{}")
            } else {
                Body::empty()
            };
            let response = router().oneshot(request.body(body).unwrap()).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        });
        // A success, or an answer to HEAD: HTTP forbids it a body.
        if status.is_success() || (method == http::Method::HEAD && body.is_empty()) {
            return Ok(());
        }
        let parsed: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|err| TestCaseError::fail(format!("{method} {path}: {status} with a non-JSON body {:?}: {err}", String::from_utf8_lossy(&body))))?;
        prop_assert_eq!(&parsed["kind"], "Status", "{} {}: {}", method, path, parsed);
        prop_assert_eq!(&parsed["apiVersion"], "v1");
        prop_assert_eq!(&parsed["status"], "Failure");
        prop_assert_eq!(parsed["code"].as_u64(), Some(u64::from(status.as_u16())), "{} {}: {}", method, path, parsed);
        prop_assert!(parsed["reason"].as_str().is_some_and(|r| !r.is_empty()));
        prop_assert!(parsed["message"].as_str().is_some_and(|m| !m.is_empty() && m.len() < 2048), "{}", parsed);
        if with_body {
            prop_assert_eq!(status.as_u16(), 413);
        }
    }
}

/// Selector text: mostly grammar pieces (so the parser gets deep), sometimes anything.
fn selector_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-zA-Z0-9._/-]{0,12}",
        Just("=".to_string()),
        Just("==".to_string()),
        Just("!=".to_string()),
        Just("!".to_string()),
        Just(" in ".to_string()),
        Just(" notin ".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just(",".to_string()),
        Just(" ".to_string()),
        "[<>~=!()., \\u{0}-\\u{7f}]",
        "\\PC{0,3}",
    ];
    prop_oneof![
        prop::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat()),
        "\\PC{0,80}",
    ]
}

proptest! {
    #![proptest_config(config(2000))]

    /// The selector parser never panics, accepts only valid keys, and its errors quote the
    /// selector once and stay short.
    #[test]
    fn selectors_parse_or_fail_with_a_short_message(text in selector_text()) {
        match selector::parse(&text) {
            Ok(parsed) => {
                for requirement in &parsed.requirements {
                    prop_assert!(!requirement.key.is_empty());
                    prop_assert!(requirement.key.len() <= 253 + 1 + 63);
                }
            }
            Err(err) => {
                let message = err.to_string();
                prop_assert!(message.starts_with("invalid label selector"), "{}", message);
                prop_assert!(message.len() < 1024, "{}", message);
            }
        }
    }
}

/// Parse a quantity as the formatter writes it: an integer with an optional m, u or n suffix.
fn parse_quantity(text: &str) -> f64 {
    let (digits, scale) = match text.as_bytes().last() {
        Some(b'm') => (&text[..text.len() - 1], 1e-3),
        Some(b'u') => (&text[..text.len() - 1], 1e-6),
        Some(b'n') => (&text[..text.len() - 1], 1e-9),
        _ => (text, 1.0),
    };
    let units: i64 = digits.parse().unwrap();
    units as f64 * scale
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        -1e4..1e4f64,
        -1e-6..1e-6f64,
        -9.3e15..9.3e15f64,
        Just(9.2e9),
        Just(-9.2e9),
        Just(0.0),
        Just(-0.0),
    ]
}

proptest! {
    #![proptest_config(config(10_000))]

    /// Quantities round-trip to nano precision below 9.2e9 and milli precision above, are in
    /// canonical form, and only values the HPA cannot read are refused.
    #[test]
    fn quantities_round_trip_within_precision(value in value()) {
        match quantity::format(value) {
            Ok(text) => {
                prop_assert!(value.is_finite() && value.abs() < 9.2e15, "{} accepted", value);
                prop_assert!(!text.is_empty() && text.len() <= 21, "{}", text);
                let back = parse_quantity(&text);
                let step = if value.abs() < 9.2e9 { 1e-9 } else { 1e-3 };
                // Half a step of rounding, plus f64's own error in scaling and parsing.
                let tolerance = step / 2.0 + value.abs() * 1e-15 + 1e-18;
                prop_assert!((back - value).abs() <= tolerance, "{} -> {} -> {}", value, text, back);
                // Canonical: no suffix with a trailing group of three zeros.
                let digits = text.trim_end_matches(['m', 'u', 'n']);
                if digits.len() < text.len() {
                    prop_assert!(!digits.ends_with("000"), "{} is not canonical", text);
                }
            }
            Err(reason) => {
                prop_assert!(!value.is_finite() || value.abs() >= 9.2e15, "{} refused: {}", value, reason);
            }
        }
    }
}
