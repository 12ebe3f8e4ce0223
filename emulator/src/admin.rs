//! The JSON admin API under `/_emulator/`, for scripts and the standalone binary.
//!
//! | Method + path                | Body                                                     | Effect |
//! |------------------------------|----------------------------------------------------------|--------|
//! | `GET /_emulator/health`      |                                                          | `{"status":"ok"}` |
//! | `GET /_emulator/stats`       |                                                          | counters per operation |
//! | `POST /_emulator/reset`      |                                                          | forget data, faults, latency, counters |
//! | `POST /_emulator/data`       | one series object or an array of them (see [`SeedSeries`]) | store datapoints, `{"stored":N}` |
//! | `GET /_emulator/data`        |                                                          | stored metrics with datapoint counts |
//! | `DELETE /_emulator/data`     |                                                          | forget data only |
//! | `POST /_emulator/faults`     | `{"kind":"Throttling","count":3,"operation":"GetMetricData"}` | fail the next calls (`operation` optional) |
//! | `POST /_emulator/faults`     | `{"kind":"RequestExpired","seconds":20,"operation":"GetMetricData"}` | fail every call for that long (`operation` optional) |
//! | `GET /_emulator/faults`      |                                                          | pending counts, windows, poison markers, latency |
//! | `DELETE /_emulator/faults`   |                                                          | clear faults, windows, poison markers and latency |
//! | `POST /_emulator/poison`     | `{"marker":"bad-queue","code":"InvalidParameterValue"}`  | refuse every GetMetricData call mentioning the marker (`code` optional) |
//! | `DELETE /_emulator/poison`   |                                                          | remove every poison marker |
//! | `POST /_emulator/latency`    | `{"millis":250}`                                         | delay every CloudWatch call |
//! | `POST /_emulator/down`       | `{"seconds":5}`                                          | refuse connections for that long, then listen again |
//!
//! Errors are `400 {"error": "..."}`.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::faults::{FaultKind, PoisonCode};
use crate::metering::Operation;
use crate::server::{AppState, down_for};
use crate::store::StorageResolution;
use crate::{Datum, units};

/// Longest outage the admin API schedules (the in-process handle has no limit).
const MAX_DOWN_SECONDS: f64 = 3600.0;
/// Longest fault window the admin API sets (a day: anything longer is a unit mistake).
const MAX_WINDOW_SECONDS: f64 = 86_400.0;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/_emulator/health", get(health))
        .route("/_emulator/stats", get(stats))
        .route("/_emulator/reset", post(reset))
        .route(
            "/_emulator/data",
            post(seed).get(list_data).delete(clear_data),
        )
        .route(
            "/_emulator/faults",
            post(inject).get(list_faults).delete(clear_faults),
        )
        .route("/_emulator/poison", post(poison).delete(clear_poison))
        .route("/_emulator/latency", post(latency))
        .route("/_emulator/down", post(down))
}

fn bad_request(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": message.into() })),
    )
        .into_response()
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

async fn health() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

async fn stats(State(state): State<AppState>) -> Response {
    axum::Json(state.shared.meter.snapshot()).into_response()
}

async fn reset(State(state): State<AppState>) -> Response {
    state.shared.reset();
    axum::Json(json!({ "reset": true })).into_response()
}

/// One metric's datapoints to seed, e.g.
/// `{"namespace":"AWS/SQS","metricName":"ApproximateNumberOfMessagesVisible",
///   "dimensions":{"QueueName":"orders"},"unit":"Count",
///   "points":[{"timestamp":1790000000,"value":1250}]}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SeedSeries {
    /// Any namespace, including `AWS/...`.
    pub(crate) namespace: String,
    /// The metric name.
    pub(crate) metric_name: String,
    /// Dimension name to value.
    #[serde(default)]
    pub(crate) dimensions: BTreeMap<String, String>,
    /// A `StandardUnit`; absent means `None`.
    #[serde(default)]
    pub(crate) unit: Option<String>,
    /// 60 (default) or 1.
    #[serde(default)]
    pub(crate) storage_resolution: Option<u32>,
    /// The datapoints.
    pub(crate) points: Vec<SeedPoint>,
}

/// One seeded datapoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SeedPoint {
    /// Epoch seconds (fractions allowed).
    pub(crate) timestamp: f64,
    /// The value.
    pub(crate) value: f64,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(SeedSeries),
    Many(Vec<SeedSeries>),
}

fn validate(series: &SeedSeries) -> Result<StorageResolution, String> {
    if series.namespace.is_empty() || series.metric_name.is_empty() {
        return Err("namespace and metricName must not be empty".into());
    }
    if let Some(unit) = &series.unit
        && !units::is_valid(unit)
    {
        return Err(format!("unit {unit} is not one of {}", units::enum_list()));
    }
    if series.dimensions.len() > 30 {
        return Err("at most 30 dimensions".into());
    }
    for point in &series.points {
        // Up to the year 5000: anything later is a unit mistake (milliseconds for seconds).
        if !point.value.is_finite() || !(0.0..=95_617_584_000.0).contains(&point.timestamp) {
            return Err(format!(
                "point {{timestamp: {}, value: {}}} needs a finite value and a timestamp in \
                 epoch seconds between 1970 and 5000",
                point.timestamp, point.value
            ));
        }
    }
    match series.storage_resolution {
        None | Some(60) => Ok(StorageResolution::Standard),
        Some(1) => Ok(StorageResolution::High),
        Some(other) => Err(format!("storageResolution must be 1 or 60, not {other}")),
    }
}

async fn seed(State(state): State<AppState>, body: Bytes) -> Response {
    let all = match parse::<OneOrMany>(&body) {
        Ok(OneOrMany::One(one)) => vec![one],
        Ok(OneOrMany::Many(many)) => many,
        Err(message) => return bad_request(message),
    };
    // Validate everything first so that a bad request stores nothing.
    let mut resolutions = Vec::with_capacity(all.len());
    for series in &all {
        match validate(series) {
            Ok(r) => resolutions.push(r),
            Err(message) => return bad_request(message),
        }
    }
    let mut stored = 0u64;
    for (series, resolution) in all.into_iter().zip(resolutions) {
        let dimensions: Vec<(String, String)> = series.dimensions.into_iter().collect();
        for point in series.points {
            state.shared.put(
                Datum {
                    namespace: series.namespace.clone(),
                    metric_name: series.metric_name.clone(),
                    dimensions: dimensions.clone(),
                    timestamp: UNIX_EPOCH + Duration::from_secs_f64(point.timestamp),
                    value: point.value,
                    unit: series.unit.clone(),
                },
                resolution,
            );
            stored += 1;
        }
    }
    axum::Json(json!({ "stored": stored })).into_response()
}

async fn list_data(State(state): State<AppState>) -> Response {
    let store = state.shared.read_store();
    let mut metrics: Vec<_> = store
        .metrics()
        .map(|(key, _, count)| {
            let dimensions: BTreeMap<&str, &str> = key
                .dimensions
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            json!({
                "namespace": key.namespace,
                "metricName": key.name,
                "dimensions": dimensions,
                "datapoints": count,
            })
        })
        .collect();
    metrics.sort_by_key(|m| m.to_string());
    axum::Json(json!({ "metrics": metrics, "datapoints": store.sample_count() })).into_response()
}

async fn clear_data(State(state): State<AppState>) -> Response {
    state.shared.write_store().clear();
    axum::Json(json!({ "cleared": true })).into_response()
}

/// A counted fault (`count`) or a window (`seconds`), exactly one of the two.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    kind: FaultKind,
    #[serde(default)]
    count: Option<u32>,
    #[serde(default)]
    seconds: Option<f64>,
    #[serde(default)]
    operation: Option<Operation>,
}

async fn inject(State(state): State<AppState>, body: Bytes) -> Response {
    let request: FaultRequest = match parse(&body) {
        Ok(r) => r,
        Err(message) => return bad_request(message),
    };
    let faults = &state.shared.faults;
    match (request.count, request.seconds) {
        (Some(count), None) => {
            match request.operation {
                Some(op) => faults.inject_for(op, request.kind, count),
                None => faults.inject(request.kind, count),
            }
            axum::Json(json!({ "pending": faults.pending() })).into_response()
        }
        (None, Some(seconds)) => {
            if !(seconds > 0.0 && seconds <= MAX_WINDOW_SECONDS) {
                return bad_request(format!(
                    "seconds must be more than 0 and at most {MAX_WINDOW_SECONDS}"
                ));
            }
            let duration = Duration::from_secs_f64(seconds);
            match request.operation {
                Some(op) => faults.inject_window_for(op, request.kind, duration),
                None => faults.inject_window(request.kind, duration),
            }
            axum::Json(json!({ "pending": faults.pending(), "windows": faults.windows() }))
                .into_response()
        }
        _ => bad_request(
            "give either count (fail the next N calls) or seconds (fail every call for that long)",
        ),
    }
}

async fn list_faults(State(state): State<AppState>) -> Response {
    let faults = &state.shared.faults;
    axum::Json(json!({
        "pending": faults.pending(),
        "windows": faults.windows(),
        "poison": faults.markers(),
        "latencyMillis": u64::try_from(faults.latency().as_millis()).unwrap_or(u64::MAX),
    }))
    .into_response()
}

async fn clear_faults(State(state): State<AppState>) -> Response {
    state.shared.faults.clear();
    axum::Json(json!({ "pending": 0 })).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoisonRequest {
    marker: String,
    #[serde(default)]
    code: PoisonCode,
}

async fn poison(State(state): State<AppState>, body: Bytes) -> Response {
    let request: PoisonRequest = match parse(&body) {
        Ok(r) => r,
        Err(message) => return bad_request(message),
    };
    if request.marker.is_empty() {
        return bad_request("marker must not be empty (it would match every call)");
    }
    let faults = &state.shared.faults;
    faults.reject_marker(&request.marker, request.code);
    axum::Json(json!({ "poison": faults.markers() })).into_response()
}

async fn clear_poison(State(state): State<AppState>) -> Response {
    state.shared.faults.poison(None);
    axum::Json(json!({ "poison": [] })).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyRequest {
    millis: u64,
}

async fn latency(State(state): State<AppState>, body: Bytes) -> Response {
    let request: LatencyRequest = match parse(&body) {
        Ok(r) => r,
        Err(message) => return bad_request(message),
    };
    state
        .shared
        .faults
        .set_latency(Duration::from_millis(request.millis));
    axum::Json(json!({ "millis": request.millis })).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DownRequest {
    seconds: f64,
}

async fn down(State(state): State<AppState>, body: Bytes) -> Response {
    let request: DownRequest = match parse(&body) {
        Ok(r) => r,
        Err(message) => return bad_request(message),
    };
    if !(request.seconds > 0.0 && request.seconds <= MAX_DOWN_SECONDS) {
        return bad_request(format!(
            "seconds must be between 0 and {MAX_DOWN_SECONDS} (the admin API goes down with the server, \
             so it needs to know when to come back)"
        ));
    }
    down_for(&state.control, Duration::from_secs_f64(request.seconds));
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "downForSeconds": request.seconds })),
    )
        .into_response()
}
