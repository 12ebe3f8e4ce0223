//! Smithy RPC v2 CBOR on the wire: reading request members, writing response bodies and errors.
//!
//! Requests are decoded into a dynamic [`ciborium::Value`] and read through [`Obj`] and [`List`],
//! which turn every wrong type into a 400 `SerializationException` naming the member, so that no
//! malformed input can panic. Timestamps are CBOR tag 1 (epoch seconds, integer or float) in both
//! directions; the SDK truncates them to milliseconds, so the emulator keeps milliseconds.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ciborium::Value;

use crate::error::ApiError;

/// The `smithy-protocol` header value of RPC v2 CBOR.
pub(crate) const PROTOCOL: &str = "rpc-v2-cbor";
/// Media type of every request and response body.
pub(crate) const CBOR_CONTENT_TYPE: &str = "application/cbor";

/// Decodes a request body. An empty body is an empty input structure.
pub(crate) fn decode_body(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.is_empty() {
        return Ok(Value::Map(Vec::new()));
    }
    // ciborium bounds recursion itself, so deeply nested garbage is an error, not a stack overflow.
    ciborium::de::from_reader(bytes)
        .map_err(|e| ApiError::serialization(format!("request body is not valid CBOR: {e}")))
}

/// Encodes a response body.
pub(crate) fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    ciborium::ser::into_writer(value, &mut out).expect("writing CBOR into a Vec cannot fail");
    out
}

/// A CBOR text value.
pub(crate) fn text(s: impl Into<String>) -> Value {
    Value::Text(s.into())
}

/// A CBOR map with text keys, in the given order.
pub(crate) fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (text(k), v)).collect())
}

/// A timestamp as CBOR tag 1: an integer when it falls on a whole second, else a float.
pub(crate) fn timestamp(ms: i64) -> Value {
    let inner = if ms % 1000 == 0 {
        Value::Integer((ms / 1000).into())
    } else {
        Value::Float(ms as f64 / 1000.0)
    };
    Value::Tag(1, Box::new(inner))
}

/// A successful operation response.
pub(crate) fn ok_response(body: &Value, request_id: &str) -> Response {
    cbor_response(StatusCode::OK, encode(body), request_id, None)
}

/// An error response in the shape the SDK decodes into its typed errors.
pub(crate) fn error_response(err: &ApiError, request_id: &str) -> Response {
    let body = map(vec![
        // The SDK strips a `namespace#` prefix; the header below takes precedence anyway.
        (
            "__type",
            text(format!("com.amazonaws.cloudwatch#{}", err.code)),
        ),
        ("message", text(err.message.clone())),
    ]);
    let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let query_error = format!("{};{}", err.code, err.fault());
    cbor_response(status, encode(&body), request_id, Some(query_error))
}

/// A page that did not come from AWS (a proxy's error page): no `smithy-protocol`, no request
/// id, no `x-amzn-query-error`.
pub(crate) fn html_response(status: u16, body: &'static str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    response
}

fn cbor_response(
    status: StatusCode,
    body: Vec<u8>,
    request_id: &str,
    query_error: Option<String>,
) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert("smithy-protocol", HeaderValue::from_static(PROTOCOL));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(CBOR_CONTENT_TYPE),
    );
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-requestid", value);
    }
    if let Some(value) = query_error.and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.insert("x-amzn-query-error", value);
    }
    response
}

/// Read access to one CBOR map (an input structure), with its member path for error messages.
#[derive(Debug, Clone)]
pub(crate) struct Obj<'a> {
    path: String,
    entries: &'a [(Value, Value)],
}

/// Read access to one CBOR array (an input list), with its member path for error messages.
#[derive(Debug, Clone)]
pub(crate) struct List<'a> {
    path: String,
    items: &'a [Value],
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Integer(_) => "integer",
        Value::Bytes(_) => "byte string",
        Value::Float(_) => "float",
        Value::Text(_) => "text",
        Value::Bool(_) => "boolean",
        Value::Null => "null",
        Value::Tag(..) => "tagged value",
        Value::Array(_) => "array",
        Value::Map(_) => "map",
        _ => "unknown value",
    }
}

fn wrong_type(path: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::serialization(format!(
        "expected {expected} for {path}, got {}",
        type_name(got)
    ))
}

fn as_f64(path: &str, v: &Value) -> Result<f64, ApiError> {
    match v {
        Value::Float(f) => Ok(*f),
        // Smithy allows a double to arrive as a CBOR integer; cbor2-based scripts send them.
        Value::Integer(i) => Ok(i128::from(*i) as f64),
        other => Err(wrong_type(path, "a number", other)),
    }
}

fn as_int(path: &str, v: &Value) -> Result<i64, ApiError> {
    match v {
        Value::Integer(i) => i64::try_from(i128::from(*i))
            .map_err(|_| ApiError::serialization(format!("integer out of range for {path}"))),
        other => Err(wrong_type(path, "an integer", other)),
    }
}

fn as_timestamp_ms(path: &str, v: &Value) -> Result<i64, ApiError> {
    let Value::Tag(1, inner) = v else {
        return Err(wrong_type(path, "a timestamp (CBOR tag 1)", v));
    };
    let secs = as_f64(path, inner)?;
    // Beyond year 5000 (or NaN) is certainly not a CloudWatch timestamp; refuse before converting.
    if !secs.is_finite() || secs.abs() > 95_617_584_000.0 {
        return Err(ApiError::serialization(format!(
            "timestamp out of range for {path}"
        )));
    }
    Ok((secs * 1000.0).round() as i64)
}

impl<'a> Obj<'a> {
    /// The top-level input structure.
    pub fn root(value: &'a Value) -> Result<Self, ApiError> {
        match value {
            Value::Map(entries) => Ok(Self {
                path: String::new(),
                entries,
            }),
            other => Err(wrong_type("the request body", "a map", other)),
        }
    }

    fn member_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The member's value; a CBOR null counts as absent, as Smithy specifies.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.entries.iter().find_map(|(k, v)| match k {
            Value::Text(name) if name == key && !v.is_null() => Some(v),
            _ => None,
        })
    }

    /// Whether the member is present (and not null).
    #[cfg(test)]
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn str(&self, key: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Text(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(wrong_type(&self.member_path(key), "text", other)),
        }
    }

    pub fn f64(&self, key: &str) -> Result<Option<f64>, ApiError> {
        self.get(key)
            .map(|v| as_f64(&self.member_path(key), v))
            .transpose()
    }

    pub fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        self.get(key)
            .map(|v| as_int(&self.member_path(key), v))
            .transpose()
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(wrong_type(&self.member_path(key), "a boolean", other)),
        }
    }

    /// A timestamp member, in milliseconds since the epoch.
    pub fn timestamp_ms(&self, key: &str) -> Result<Option<i64>, ApiError> {
        self.get(key)
            .map(|v| as_timestamp_ms(&self.member_path(key), v))
            .transpose()
    }

    pub fn list(&self, key: &str) -> Result<Option<List<'a>>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(List {
                path: self.member_path(key),
                items,
            })),
            Some(other) => Err(wrong_type(&self.member_path(key), "an array", other)),
        }
    }

    pub fn obj(&self, key: &str) -> Result<Option<Obj<'a>>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Map(entries)) => Ok(Some(Obj {
                path: self.member_path(key),
                entries,
            })),
            Some(other) => Err(wrong_type(&self.member_path(key), "a map", other)),
        }
    }
}

impl<'a> List<'a> {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    fn item_path(&self, index: usize) -> String {
        format!("{}[{index}]", self.path)
    }

    /// Every element as a structure.
    pub fn objs(&self) -> Result<Vec<Obj<'a>>, ApiError> {
        self.items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Map(entries) => Ok(Obj {
                    path: self.item_path(i),
                    entries,
                }),
                other => Err(wrong_type(&self.item_path(i), "a map", other)),
            })
            .collect()
    }

    /// Every element as a number.
    pub fn f64s(&self) -> Result<Vec<f64>, ApiError> {
        self.items
            .iter()
            .enumerate()
            .map(|(i, v)| as_f64(&self.item_path(i), v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cbor(v: &Value) -> Vec<u8> {
        encode(v)
    }

    #[test]
    fn garbage_is_a_serialization_error() {
        let err = decode_body(&[0xff, 0x00, 0x13]).unwrap_err();
        assert_eq!(err.code, "SerializationException");
        assert_eq!(err.status, 400);
    }

    #[test]
    fn empty_body_is_an_empty_structure() {
        let v = decode_body(&[]).unwrap();
        let obj = Obj::root(&v).unwrap();
        assert_eq!(obj.str("Namespace").unwrap(), None);
    }

    #[test]
    fn non_map_body_is_rejected() {
        let v = decode_body(&cbor(&Value::Array(vec![]))).unwrap();
        let err = Obj::root(&v).unwrap_err();
        assert!(err.message.contains("expected a map"), "{}", err.message);
    }

    #[test]
    fn wrong_member_type_names_the_member() {
        let v = map(vec![(
            "MetricDataQueries",
            Value::Array(vec![map(vec![("Id", Value::Integer(3.into()))])]),
        )]);
        let obj = Obj::root(&v).unwrap();
        let queries = obj
            .list("MetricDataQueries")
            .unwrap()
            .unwrap()
            .objs()
            .unwrap();
        let err = queries[0].str("Id").unwrap_err();
        assert_eq!(err.code, "SerializationException");
        assert!(
            err.message.contains("MetricDataQueries[0].Id"),
            "{}",
            err.message
        );
    }

    #[test]
    fn timestamps_accept_integer_and_float_seconds_and_round_to_millis() {
        let v = map(vec![
            (
                "A",
                Value::Tag(1, Box::new(Value::Integer(1_790_000_000.into()))),
            ),
            (
                "B",
                Value::Tag(1, Box::new(Value::Float(1_790_000_000.123))),
            ),
            ("C", Value::Integer(5.into())),
            ("D", Value::Tag(1, Box::new(Value::Float(f64::NAN)))),
        ]);
        let obj = Obj::root(&v).unwrap();
        assert_eq!(obj.timestamp_ms("A").unwrap(), Some(1_790_000_000_000));
        assert_eq!(obj.timestamp_ms("B").unwrap(), Some(1_790_000_000_123));
        assert!(obj.timestamp_ms("C").is_err());
        assert!(obj.timestamp_ms("D").is_err());
    }

    #[test]
    fn null_members_count_as_absent() {
        let v = map(vec![("Label", Value::Null)]);
        let obj = Obj::root(&v).unwrap();
        assert!(!obj.has("Label"));
        assert_eq!(obj.str("Label").unwrap(), None);
    }

    #[test]
    fn timestamps_encode_as_tag_1() {
        assert_eq!(
            timestamp(1_790_000_060_000),
            Value::Tag(1, Box::new(Value::Integer(1_790_000_060.into())))
        );
        assert_eq!(timestamp(1_500), Value::Tag(1, Box::new(Value::Float(1.5))));
    }

    #[test]
    fn error_response_carries_the_query_error_header() {
        let err = ApiError::new(400, "Throttling", "Rate exceeded");
        let response = error_response(&err, "req-1");
        assert_eq!(response.status(), 400);
        let headers = response.headers();
        assert_eq!(headers["x-amzn-query-error"], "Throttling;Sender");
        assert_eq!(headers["smithy-protocol"], "rpc-v2-cbor");
        assert_eq!(headers["content-type"], "application/cbor");
        let fault = ApiError::new(500, "InternalFailure", "boom");
        let response = error_response(&fault, "req-2");
        assert_eq!(
            response.headers()["x-amzn-query-error"],
            "InternalFailure;Receiver"
        );
    }
}
