//! Asking the cluster: `TokenReview` (authentication.k8s.io/v1) and `SubjectAccessReview`
//! (authorization.k8s.io/v1), behind a narrow trait so the caching and decision logic can be
//! tested with a fake.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::authorization::v1::{
    SubjectAccessReview, SubjectAccessReviewSpec, SubjectAccessReviewStatus,
};
use kube::api::PostParams;

/// What a review call returns.
pub type ReviewFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ReviewError>> + Send + 'a>>;

/// The review APIs of the cluster.
pub trait Reviewer: Send + Sync + std::fmt::Debug {
    /// `POST /apis/authentication.k8s.io/v1/tokenreviews` for `token`.
    fn review_token<'a>(&'a self, token: &'a str) -> ReviewFuture<'a, TokenReviewStatus>;
    /// `POST /apis/authorization.k8s.io/v1/subjectaccessreviews` for `spec`.
    fn review_access(
        &self,
        spec: SubjectAccessReviewSpec,
    ) -> ReviewFuture<'_, SubjectAccessReviewStatus>;
}

/// A review could not be made (API server unreachable, timed out, or refused the call). Never
/// carries the token.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{review} failed: {detail}")]
pub struct ReviewError {
    /// `TokenReview` or `SubjectAccessReview`.
    pub review: &'static str,
    /// What went wrong.
    pub detail: String,
}

/// Reviews through a kube client (in-cluster service account or `--kubeconfig`).
#[derive(Clone)]
pub struct KubeReviewer {
    client: kube::Client,
    timeout: Duration,
}

impl std::fmt::Debug for KubeReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeReviewer")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl KubeReviewer {
    /// Reviews with `client`, each call bounded by `timeout` (kube's delegating default: 10 s).
    pub fn new(client: kube::Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    /// `POST` the review and read the answer. Not `Api::create`: kube's client logs a body it
    /// cannot decode, and the API server echoes the review's spec (the token, the user and
    /// groups) in its answer. Nothing here puts the body into an error or a log line.
    async fn create<K>(&self, review: &'static str, object: K) -> Result<K, ReviewError>
    where
        K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope, DynamicType = ()>
            + serde::Serialize
            + serde::de::DeserializeOwned,
    {
        let failed = |detail: String| ReviewError { review, detail };
        let body = serde_json::to_vec(&object)
            .map_err(|err| failed(format!("cannot encode the review: {err}")))?;
        let request = kube::core::Request::new(K::url_path(&(), None))
            .create(&PostParams::default(), body)
            .map_err(|err| failed(format!("cannot build the request: {err}")))?;
        let text = match tokio::time::timeout(self.timeout, self.client.request_text(request)).await
        {
            Ok(Ok(text)) => text,
            Ok(Err(err)) => return Err(failed(err.to_string())),
            Err(_) => return Err(failed(format!("no answer within {:?}", self.timeout))),
        };
        // serde_json's message may quote the offending value; its position is enough.
        serde_json::from_str(&text).map_err(|err| {
            failed(format!(
                "the answer is not a {review} ({:?} error at line {} column {})",
                err.classify(),
                err.line(),
                err.column()
            ))
        })
    }
}

impl Reviewer for KubeReviewer {
    fn review_token<'a>(&'a self, token: &'a str) -> ReviewFuture<'a, TokenReviewStatus> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_string()),
                    audiences: None,
                },
                ..TokenReview::default()
            };
            let answer = self.create("TokenReview", review).await?;
            Ok(answer.status.unwrap_or_default())
        })
    }

    fn review_access(
        &self,
        spec: SubjectAccessReviewSpec,
    ) -> ReviewFuture<'_, SubjectAccessReviewStatus> {
        Box::pin(async move {
            let review = SubjectAccessReview {
                spec,
                ..SubjectAccessReview::default()
            };
            let answer = self.create("SubjectAccessReview", review).await?;
            Ok(answer.status.unwrap_or_default())
        })
    }
}
