//! Leases (`coordination.k8s.io/v1`, namespaced), stored and checked as kube-apiserver does:
//! - create: `201 Created`; `409 AlreadyExists` if the name exists; a `resourceVersion` in the
//!   body is a `500` ("resourceVersion should not be set on objects to be created").
//! - update (PUT): `metadata.resourceVersion` is required (the Lease strategy refuses
//!   unconditional updates: `422 Invalid`, "must be specified for an update"); a stale one is
//!   `409 Conflict`; a PUT to a name that does not exist creates it (`201`; the strategy allows
//!   create-on-update); an update that changes nothing keeps its resourceVersion.
//! - get, list, delete (with optional preconditions), `404 NotFound` naming the object.
//! - validation: the name is a DNS subdomain, `leaseDurationSeconds` is positive and
//!   `leaseTransitions` not negative (`422 Invalid`); `MicroTime` fields must have exactly six
//!   fractional digits, as Go's `time.Parse` with `RFC3339Micro` demands, and are stored and
//!   served in UTC.
//!
//! Every write that reaches the store is recorded ([`LeaseWrite`]): who (the bearer token),
//! what (verb, holder, the resourceVersion it carried) and the answer, so a test can check that
//! two holders never won together.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::status::{self, failure_with_details};
use crate::{Caller, lock};

const GROUP: &str = "coordination.k8s.io";
const API_VERSION: &str = "coordination.k8s.io/v1";
/// Go's `metav1.RFC3339Micro`, named in decode errors as kube-apiserver names it.
const MICRO_LAYOUT: &str = "2006-01-02T15:04:05.000000Z07:00";

/// What a Lease write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseVerb {
    /// `POST .../leases`, or a PUT to a name that did not exist.
    Create,
    /// `PUT .../leases/{name}` of an existing Lease.
    Update,
    /// `DELETE .../leases/{name}`.
    Delete,
}

/// One Lease write as the API server received and answered it.
#[derive(Clone, Debug)]
pub struct LeaseWrite {
    /// When it was answered (tokio's clock, so paused-time tests can reason about it).
    pub at: Instant,
    /// The caller's bearer token.
    pub caller: String,
    /// What it did (for a PUT that created the Lease, `Create`).
    pub verb: LeaseVerb,
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// The `metadata.resourceVersion` the write carried (for a delete, its precondition).
    pub sent_resource_version: Option<String>,
    /// `spec.holderIdentity` written (`None` for a delete or when absent).
    pub holder: Option<String>,
    /// `spec.leaseDurationSeconds` written.
    pub lease_duration_seconds: Option<i32>,
    /// The HTTP status of the answer.
    pub code: u16,
    /// The `metav1.Status` reason of a refusal (`Conflict`, `AlreadyExists`, `Invalid`...).
    pub reason: Option<String>,
    /// The resourceVersion stored by a successful create or update.
    pub resource_version: Option<String>,
}

impl LeaseWrite {
    /// Whether the write took effect (or, for an update that changed nothing, was accepted).
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

#[derive(Debug, Default)]
struct Store {
    /// The last resourceVersion given out.
    revision: u64,
    /// Objects by (namespace, name).
    objects: BTreeMap<(String, String), Lease>,
    writes: Vec<LeaseWrite>,
}

/// A gate that holds writes until `count` are waiting, then lets them all go.
#[derive(Debug)]
struct Gate {
    count: usize,
    waiting: Vec<oneshot::Sender<()>>,
}

/// The Lease API's storage and what it saw.
#[derive(Debug, Default)]
pub struct Leases {
    store: Mutex<Store>,
    gate: Mutex<Option<Gate>>,
}

impl Leases {
    /// The stored Lease, if any.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Lease> {
        lock(&self.store)
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The stored Lease's `spec.holderIdentity` (`None` if there is no Lease or no holder;
    /// `Some("")` after a release).
    pub fn holder(&self, namespace: &str, name: &str) -> Option<String> {
        self.get(namespace, name)?.spec?.holder_identity
    }

    /// Every Lease write received so far, in the order they were answered.
    pub fn writes(&self) -> Vec<LeaseWrite> {
        lock(&self.store).writes.clone()
    }

    /// Hold the next Lease writes until `count` of them are waiting, then let them all go at
    /// once (they are then applied one by one, in whatever order they run): a test's way to
    /// make two candidates race with the same resourceVersion. A held write whose caller gave
    /// up still counts.
    pub fn hold_writes(&self, count: usize) {
        *lock(&self.gate) = Some(Gate {
            count,
            waiting: Vec::new(),
        });
    }

    /// Let every held write go and stop holding.
    pub fn release_writes(&self) {
        if let Some(gate) = lock(&self.gate).take() {
            for waiter in gate.waiting {
                let _ = waiter.send(());
            }
        }
    }

    /// Wait at the gate, if one is set.
    async fn pass_gate(&self) {
        let waiting = {
            let mut slot = lock(&self.gate);
            let Some(gate) = slot.as_mut() else {
                return;
            };
            let (sender, receiver) = oneshot::channel();
            gate.waiting.push(sender);
            if gate.waiting.len() >= gate.count
                && let Some(gate) = slot.take()
            {
                for waiter in gate.waiting {
                    let _ = waiter.send(());
                }
            }
            receiver
        };
        let _ = waiting.await;
    }
}

/// The answer to a write, and what to record of it.
struct Answer {
    response: Response,
    code: StatusCode,
    reason: Option<&'static str>,
    resource_version: Option<String>,
    verb: LeaseVerb,
}

impl Answer {
    fn refused(
        verb: LeaseVerb,
        code: StatusCode,
        reason: &'static str,
        message: &str,
        details: Option<Value>,
    ) -> Answer {
        Answer {
            response: failure_with_details(code, reason, message, details),
            code,
            reason: (!reason.is_empty()).then_some(reason),
            resource_version: None,
            verb,
        }
    }

    fn stored(verb: LeaseVerb, code: StatusCode, lease: &Lease) -> Answer {
        Answer {
            response: status::json(code, &to_json(lease)),
            code,
            reason: None,
            resource_version: lease.metadata.resource_version.clone(),
            verb,
        }
    }
}

fn to_json(lease: &Lease) -> Value {
    serde_json::to_value(lease).unwrap_or(Value::Null)
}

/// `details` of a Status about one Lease, as the registry names the resource.
fn details(name: &str) -> Option<Value> {
    Some(json!({"name": name, "group": GROUP, "kind": "leases"}))
}

fn not_found(verb: LeaseVerb, name: &str) -> Answer {
    Answer::refused(
        verb,
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("leases.{GROUP} \"{name}\" not found"),
        details(name),
    )
}

fn conflict(verb: LeaseVerb, name: &str, why: &str) -> Answer {
    Answer::refused(
        verb,
        StatusCode::CONFLICT,
        "Conflict",
        &format!("Operation cannot be fulfilled on leases.{GROUP} \"{name}\": {why}"),
        details(name),
    )
}

fn bad_request(verb: LeaseVerb, message: &str) -> Answer {
    Answer::refused(verb, StatusCode::BAD_REQUEST, "BadRequest", message, None)
}

/// A `422 Invalid` for `kind` (`Lease.coordination.k8s.io` from validation,
/// `leases.coordination.k8s.io` from the registry) with field errors `(field, reason, detail)`.
fn invalid(verb: LeaseVerb, kind: &str, name: &str, errors: &[(String, &str, String)]) -> Answer {
    let texts: Vec<String> = errors
        .iter()
        .map(|(field, _, detail)| format!("{field}: {detail}"))
        .collect();
    // Go's ErrorList aggregate: one error as is, several in brackets.
    let summary = match texts.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    let causes: Vec<Value> = errors
        .iter()
        .map(|(field, reason, detail)| json!({"reason": reason, "message": detail, "field": field}))
        .collect();
    let (group, kind_name) = kind.split_once('.').map_or((GROUP, kind), |(k, g)| (g, k));
    Answer::refused(
        verb,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        &format!("{kind} \"{name}\" is invalid: {summary}"),
        Some(json!({"name": name, "group": group, "kind": kind_name, "causes": causes})),
    )
}

/// Decode a Lease body as the API server does: JSON, the right type, strict `MicroTime`s.
#[allow(clippy::result_large_err, reason = "the error is the answer itself")]
fn decode(verb: LeaseVerb, headers: &HeaderMap, body: &Bytes) -> Result<Lease, Answer> {
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return Err(Answer::refused(
            verb,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf",
            None,
        ));
    }
    let cannot = |why: String| {
        bad_request(
            verb,
            &format!("Lease in version \"v1\" cannot be handled as a Lease: {why}"),
        )
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| cannot(e.to_string()))?;
    if let Some(api_version) = value.get("apiVersion").and_then(Value::as_str)
        && api_version != API_VERSION
    {
        return Err(bad_request(
            verb,
            &format!(
                "the API version in the data ({api_version}) does not match the expected API version ({API_VERSION})"
            ),
        ));
    }
    if let Some(kind) = value.get("kind").and_then(Value::as_str)
        && kind != "Lease"
    {
        return Err(bad_request(
            verb,
            &format!("the kind in the data ({kind}) does not match the expected kind (Lease)"),
        ));
    }
    for field in ["acquireTime", "renewTime"] {
        if let Some(text) = value["spec"].get(field).and_then(Value::as_str)
            && !is_micro_time(text)
        {
            return Err(cannot(format!(
                "parsing time \"{text}\" as \"{MICRO_LAYOUT}\": spec.{field} is not a MicroTime with six fractional digits"
            )));
        }
    }
    serde_json::from_value(value).map_err(|e| cannot(e.to_string()))
}

/// Whether `text` parses with Go's `RFC3339Micro` layout: exactly six fractional digits, then
/// `Z` or an offset `+hh:mm`.
fn is_micro_time(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |from: usize, to: usize| {
        b.get(from..to)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let date_time = digits(0, 4)
        && at(4, b'-')
        && digits(5, 7)
        && at(7, b'-')
        && digits(8, 10)
        && at(10, b'T')
        && digits(11, 13)
        && at(13, b':')
        && digits(14, 16)
        && at(16, b':')
        && digits(17, 19)
        && at(19, b'.')
        && digits(20, 26);
    let zone = match b.get(26..) {
        Some(b"Z") => true,
        Some([sign, h1, h2, b':', m1, m2]) => {
            matches!(sign, b'+' | b'-') && [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit())
        }
        _ => false,
    };
    date_time && zone
}

/// `ValidateLease`: object meta (the name) and the spec. Field errors as (field, reason, detail).
fn validate(lease: &Lease) -> Vec<(String, &'static str, String)> {
    let mut errors = Vec::new();
    match lease.metadata.name.as_deref() {
        None | Some("") => errors.push((
            "metadata.name".to_string(),
            "FieldValueRequired",
            "Required value: name or generateName is required".to_string(),
        )),
        Some(name) if !is_dns_subdomain(name) => errors.push((
            "metadata.name".to_string(),
            "FieldValueInvalid",
            format!(
                "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            ),
        )),
        Some(_) => {}
    }
    if let Some(spec) = &lease.spec {
        if let Some(seconds) = spec.lease_duration_seconds
            && seconds <= 0
        {
            errors.push((
                "spec.leaseDurationSeconds".to_string(),
                "FieldValueInvalid",
                format!("Invalid value: {seconds}: must be greater than 0"),
            ));
        }
        if let Some(transitions) = spec.lease_transitions
            && transitions < 0
        {
            errors.push((
                "spec.leaseTransitions".to_string(),
                "FieldValueInvalid",
                format!("Invalid value: {transitions}: must be greater than or equal to 0"),
            ));
        }
        if spec
            .preferred_holder
            .as_deref()
            .is_some_and(|h| !h.is_empty())
            && spec.strategy.as_deref().is_none_or(str::is_empty)
        {
            errors.push((
                "spec.preferredHolder".to_string(),
                "FieldValueForbidden",
                "Forbidden: may only be specified if `strategy` is defined".to_string(),
            ));
        }
    }
    errors
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b.first().is_some_and(u8::is_ascii_alphanumeric)
                && b.last().is_some_and(u8::is_ascii_alphanumeric)
        })
}

fn now() -> Timestamp {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    // Whole seconds, as metav1.Time is serialised.
    Timestamp::from_second(since_epoch.as_secs().try_into().unwrap_or(i64::MAX))
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

impl Store {
    fn next_revision(&mut self) -> String {
        self.revision += 1;
        self.revision.to_string()
    }

    /// Store a new Lease (create, or create-on-update).
    fn insert(&mut self, namespace: &str, mut lease: Lease, verb: LeaseVerb) -> Answer {
        let errors = validate(&lease);
        let name = lease.metadata.name.clone().unwrap_or_default();
        if !errors.is_empty() {
            return invalid(verb, &format!("Lease.{GROUP}"), &name, &errors);
        }
        let key = (namespace.to_string(), name.clone());
        if self.objects.contains_key(&key) {
            return Answer::refused(
                verb,
                StatusCode::CONFLICT,
                "AlreadyExists",
                &format!("leases.{GROUP} \"{name}\" already exists"),
                details(&name),
            );
        }
        let revision = self.next_revision();
        let metadata = &mut lease.metadata;
        metadata.namespace = Some(namespace.to_string());
        metadata.uid = Some(format!("00000000-0000-4000-8000-{:012x}", self.revision));
        metadata.resource_version = Some(revision);
        metadata.creation_timestamp = Some(Time(now()));
        metadata.generation = None;
        metadata.self_link = None;
        self.objects.insert(key, lease.clone());
        Answer::stored(verb, StatusCode::CREATED, &lease)
    }
}

fn record(
    store: &mut Store,
    caller: &str,
    namespace: &str,
    name: &str,
    sent: (Option<String>, Option<&Lease>),
    answer: &Answer,
) {
    let (sent_resource_version, lease) = sent;
    let spec = lease.and_then(|lease| lease.spec.as_ref());
    store.writes.push(LeaseWrite {
        at: Instant::now(),
        caller: caller.to_string(),
        verb: answer.verb,
        namespace: namespace.to_string(),
        name: name.to_string(),
        sent_resource_version,
        holder: spec.and_then(|spec| spec.holder_identity.clone()),
        lease_duration_seconds: spec.and_then(|spec| spec.lease_duration_seconds),
        code: answer.code.as_u16(),
        reason: answer.reason.map(str::to_string),
        resource_version: answer.resource_version.clone(),
    });
}

pub(crate) async fn get_one(
    State(state): State<std::sync::Arc<crate::State>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    match state.leases.get(&namespace, &name) {
        Some(lease) => status::json(StatusCode::OK, &to_json(&lease)),
        None => not_found(LeaseVerb::Update, &name).response,
    }
}

pub(crate) async fn list(
    State(state): State<std::sync::Arc<crate::State>>,
    Path(namespace): Path<String>,
) -> Response {
    let store = lock(&state.leases.store);
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((ns, _), _)| *ns == namespace)
        .map(|(_, lease)| {
            // List items carry no kind or apiVersion, as kube-apiserver sends them.
            let mut item = to_json(lease);
            if let Some(fields) = item.as_object_mut() {
                fields.remove("kind");
                fields.remove("apiVersion");
            }
            item
        })
        .collect();
    status::json(
        StatusCode::OK,
        &json!({"kind": "LeaseList", "apiVersion": API_VERSION,
                "metadata": {"resourceVersion": store.revision.to_string()}, "items": items}),
    )
}

pub(crate) async fn create(
    State(state): State<std::sync::Arc<crate::State>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let verb = LeaseVerb::Create;
    let lease = match decode(verb, &headers, &body) {
        Ok(lease) => lease,
        Err(answer) => return answer.response,
    };
    if lease
        .metadata
        .namespace
        .as_deref()
        .is_some_and(|ns| !ns.is_empty() && ns != namespace)
    {
        return bad_request(
            verb,
            "the namespace of the provided object does not match the namespace sent on the request",
        )
        .response;
    }
    state.leases.pass_gate().await;
    let name = lease.metadata.name.clone().unwrap_or_default();
    let sent = lease
        .metadata
        .resource_version
        .clone()
        .filter(|v| !v.is_empty());
    let mut store = lock(&state.leases.store);
    let answer = if sent.is_some() {
        // The storage layer refuses it, with an error that is no metav1.Status: a 500 without
        // a reason.
        Answer::refused(
            verb,
            StatusCode::INTERNAL_SERVER_ERROR,
            "",
            "resourceVersion should not be set on objects to be created",
            None,
        )
    } else {
        store.insert(&namespace, lease.clone(), verb)
    };
    record(
        &mut store,
        &caller,
        &namespace,
        &name,
        (sent, Some(&lease)),
        &answer,
    );
    answer.response
}

pub(crate) async fn update(
    State(state): State<std::sync::Arc<crate::State>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let lease = match decode(LeaseVerb::Update, &headers, &body) {
        Ok(lease) => lease,
        Err(answer) => return answer.response,
    };
    let body_name = lease.metadata.name.clone().unwrap_or_default();
    if body_name != name {
        return bad_request(
            LeaseVerb::Update,
            &format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            ),
        )
        .response;
    }
    if lease
        .metadata
        .namespace
        .as_deref()
        .is_some_and(|ns| !ns.is_empty() && ns != namespace)
    {
        return bad_request(
            LeaseVerb::Update,
            "the namespace of the provided object does not match the namespace sent on the request",
        )
        .response;
    }
    state.leases.pass_gate().await;
    let sent = lease
        .metadata
        .resource_version
        .clone()
        .filter(|v| !v.is_empty());
    let mut store = lock(&state.leases.store);
    let answer = replace(
        &mut store,
        &namespace,
        &name,
        lease.clone(),
        sent.as_deref(),
    );
    record(
        &mut store,
        &caller,
        &namespace,
        &name,
        (sent, Some(&lease)),
        &answer,
    );
    answer.response
}

/// The registry's update: create-on-update, then resourceVersion, UID, validation, no-op.
fn replace(
    store: &mut Store,
    namespace: &str,
    name: &str,
    mut lease: Lease,
    sent: Option<&str>,
) -> Answer {
    let verb = LeaseVerb::Update;
    let key = (namespace.to_string(), name.to_string());
    let Some(existing) = store.objects.get(&key).cloned() else {
        // The Lease strategy allows create-on-update; the sent resourceVersion is dropped.
        lease.metadata.resource_version = None;
        return store.insert(namespace, lease, LeaseVerb::Create);
    };
    let current = existing
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    match sent {
        None => {
            return invalid(
                verb,
                &format!("leases.{GROUP}"),
                name,
                &[(
                    "metadata.resourceVersion".to_string(),
                    "FieldValueInvalid",
                    "Invalid value: 0x0: must be specified for an update".to_string(),
                )],
            );
        }
        Some(sent) if sent.parse::<u64>().is_err() => {
            return bad_request(verb, &format!("invalid resource version: {sent}"));
        }
        Some(sent) if sent != current => {
            return conflict(
                verb,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            );
        }
        Some(_) => {}
    }
    if let (Some(uid), Some(stored)) = (
        lease.metadata.uid.as_deref(),
        existing.metadata.uid.as_deref(),
    ) && !uid.is_empty()
        && uid != stored
    {
        return conflict(
            verb,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {stored}"
            ),
        );
    }
    let errors = validate(&lease);
    if !errors.is_empty() {
        return invalid(verb, &format!("Lease.{GROUP}"), name, &errors);
    }
    // System fields stay the server's.
    lease.metadata.namespace = existing.metadata.namespace.clone();
    lease.metadata.uid = existing.metadata.uid.clone();
    lease.metadata.creation_timestamp = existing.metadata.creation_timestamp.clone();
    lease.metadata.generation = existing.metadata.generation;
    lease.metadata.self_link = None;
    lease.metadata.resource_version = existing.metadata.resource_version.clone();
    if lease == existing {
        // etcd is not written when nothing changes: same object, same resourceVersion.
        return Answer::stored(verb, StatusCode::OK, &existing);
    }
    lease.metadata.resource_version = Some(store.next_revision());
    store.objects.insert(key, lease.clone());
    Answer::stored(verb, StatusCode::OK, &lease)
}

pub(crate) async fn delete(
    State(state): State<std::sync::Arc<crate::State>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let verb = LeaseVerb::Delete;
    // DeleteOptions are optional; only their preconditions matter here.
    let options: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(options) => options,
            Err(e) => return bad_request(verb, &e.to_string()).response,
        }
    };
    let want_version = options["preconditions"]["resourceVersion"]
        .as_str()
        .map(str::to_string);
    let want_uid = options["preconditions"]["uid"].as_str().map(str::to_string);
    state.leases.pass_gate().await;
    let mut store = lock(&state.leases.store);
    let key = (namespace.clone(), name.clone());
    let answer = match store.objects.get(&key).cloned() {
        None => not_found(verb, &name),
        Some(existing) => {
            let version = existing
                .metadata
                .resource_version
                .clone()
                .unwrap_or_default();
            let uid = existing.metadata.uid.clone().unwrap_or_default();
            if let Some(want) = want_uid.as_deref().filter(|want| *want != uid) {
                conflict(
                    verb,
                    &name,
                    &format!(
                        "Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
                    ),
                )
            } else if let Some(want) = want_version.as_deref().filter(|want| *want != version) {
                conflict(
                    verb,
                    &name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {version}"
                    ),
                )
            } else {
                store.objects.remove(&key);
                store.next_revision();
                Answer {
                    response: status::json(
                        StatusCode::OK,
                        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Success",
                                "details": {"name": name, "group": GROUP, "kind": "leases", "uid": uid}}),
                    ),
                    code: StatusCode::OK,
                    reason: None,
                    resource_version: None,
                    verb,
                }
            }
        }
    };
    record(
        &mut store,
        &caller,
        &namespace,
        &name,
        (want_version, None),
        &answer,
    );
    answer.response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_times_need_exactly_six_fractional_digits() {
        for good in [
            "2026-11-21T12:00:00.123456Z",
            "2026-11-21T12:00:00.000000+02:00",
            "2026-11-21T12:00:00.999999-07:30",
        ] {
            assert!(is_micro_time(good), "{good}");
        }
        for bad in [
            "2026-11-21T12:00:00Z",
            "2026-11-21T12:00:00.123Z",
            "2026-11-21T12:00:00.123456789Z",
            "2026-11-21T12:00:00.123456",
            "2026-11-21 12:00:00.123456Z",
            "2026-11-21T12:00:00.123456+0200",
            "",
        ] {
            assert!(!is_micro_time(bad), "{bad}");
        }
    }

    #[test]
    fn names_are_dns_subdomains() {
        assert!(is_dns_subdomain("cloudwatch-metrics-adapter"));
        assert!(is_dns_subdomain("a.b-c.d"));
        for bad in [
            "",
            "Upper",
            "-lead",
            "trail-",
            "a..b",
            "under_score",
            &"a".repeat(254),
        ] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}
