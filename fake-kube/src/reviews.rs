//! `TokenReview` and `SubjectAccessReview` creates, answered as kube-apiserver does (`201
//! Created`, the object echoed with its `status`) after the checks it makes (a JSON body of the
//! right kind with a spec). Every review body is recorded.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use crate::lock;
use crate::status::{self, failure};

/// Matches any user or any resource in an allow rule.
pub(crate) const ANY: &str = "*";

/// What the review endpoints know and saw.
#[derive(Debug, Default)]
pub(crate) struct Reviews {
    /// token -> `status.user` of a successful TokenReview.
    tokens: Mutex<HashMap<String, Value>>,
    /// (user, resource or non-resource path) pairs that SubjectAccessReview allows; [`ANY`]
    /// matches every user or every resource.
    allowed: Mutex<HashSet<(String, String)>>,
    token_reviews: Mutex<Vec<Value>>,
    access_reviews: Mutex<Vec<Value>>,
    access_review_count: AtomicUsize,
    /// While `true`, each SubjectAccessReview is recorded and then left unanswered until it
    /// turns `false`: a review stays under way for exactly as long as a test says.
    held: tokio::sync::watch::Sender<bool>,
}

impl Reviews {
    pub(crate) fn add_token(&self, token: &str, username: &str, uid: &str, groups: &[&str]) {
        let mut user = json!({"username": username, "groups": groups});
        if !uid.is_empty() {
            user["uid"] = json!(uid);
        }
        lock(&self.tokens).insert(token.to_string(), user);
    }

    pub(crate) fn allow(&self, user: &str, what: &str) {
        lock(&self.allowed).insert((user.to_string(), what.to_string()));
    }

    pub(crate) fn hold(&self, held: bool) {
        self.held.send_replace(held);
    }

    pub(crate) fn access_reviews(&self) -> Vec<Value> {
        lock(&self.access_reviews).clone()
    }

    pub(crate) fn access_review_count(&self) -> usize {
        self.access_review_count.load(Ordering::Relaxed)
    }

    pub(crate) fn token_reviews(&self) -> Vec<Value> {
        lock(&self.token_reviews).clone()
    }

    fn allows(&self, user: &str, what: &str) -> bool {
        let allowed = lock(&self.allowed);
        [(user, what), (user, ANY), (ANY, what), (ANY, ANY)]
            .iter()
            .any(|(u, w)| allowed.contains(&(u.to_string(), w.to_string())))
    }
}

/// The checks kube-apiserver makes before a create: JSON, the right type, a spec.
#[allow(clippy::result_large_err, reason = "the error is the response itself")]
fn check_create(
    headers: &HeaderMap,
    body: &Bytes,
    api_version: &str,
    kind: &str,
) -> Result<Value, Response> {
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return Err(failure(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "the body must be JSON",
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| failure(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()))?;
    if value["apiVersion"] != api_version || value["kind"] != kind || !value["spec"].is_object() {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("expected a {api_version} {kind} with a spec"),
        ));
    }
    Ok(value)
}

pub(crate) async fn token_review(
    State(state): State<Arc<crate::State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let review = match check_create(&headers, &body, "authentication.k8s.io/v1", "TokenReview") {
        Ok(review) => review,
        Err(response) => return response,
    };
    let reviews = &state.reviews;
    lock(&reviews.token_reviews).push(review.clone());
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let user = lock(&reviews.tokens).get(token).cloned();
    let status_body = match user {
        Some(user) => json!({"authenticated": true, "user": user,
                             "audiences": ["https://kubernetes.default.svc.cluster.local"]}),
        None => json!({"user": {}, "error": "[invalid bearer token, token lookup failed]"}),
    };
    status::json(
        StatusCode::CREATED,
        &json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null}, "spec": review["spec"], "status": status_body}),
    )
}

pub(crate) async fn access_review(
    State(state): State<Arc<crate::State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let review = match check_create(
        &headers,
        &body,
        "authorization.k8s.io/v1",
        "SubjectAccessReview",
    ) {
        Ok(review) => review,
        Err(response) => return response,
    };
    let reviews = &state.reviews;
    lock(&reviews.access_reviews).push(review.clone());
    reviews.access_review_count.fetch_add(1, Ordering::Relaxed);
    // The sender lives as long as the state, so the wait ends only when a test lets go.
    let _ = reviews.held.subscribe().wait_for(|held| !*held).await;
    let spec = &review["spec"];
    let user = spec["user"].as_str().unwrap_or_default();
    let what = spec["resourceAttributes"]["resource"]
        .as_str()
        .or_else(|| spec["nonResourceAttributes"]["path"].as_str())
        .unwrap_or_default();
    // RBAC's own answers: a reason when allowed, none when it simply found no rule.
    let status_body = if reviews.allows(user, what) {
        json!({"allowed": true, "reason": format!("RBAC: allowed by ClusterRoleBinding \"test\" of ClusterRole \"test\" to User \"{user}\"")})
    } else {
        json!({"allowed": false})
    };
    status::json(
        StatusCode::CREATED,
        &json!({"kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": null}, "spec": spec, "status": status_body}),
    )
}
