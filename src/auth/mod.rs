//! Who is calling, and may they: delegated authentication and authorization, as an aggregated
//! API server does it (`k8s.io/apiserver`'s delegating authenticator and authorizer).
//!
//! Authentication tries, in kube-apiserver's order, and the first success wins:
//! 1. the front proxy: a client certificate chaining to the requestheader CA with an allowed CN,
//!    whose identity headers (`X-Remote-User`, `X-Remote-Group`, ...) are then believed;
//! 2. a client certificate chaining to the client CA: user = CN, groups = O;
//! 3. a bearer token, checked with a `TokenReview` (answers cached briefly);
//! 4. if `--anonymous-auth`, `system:anonymous`, unless one of the above failed outright (a
//!    certificate that verifies as no one, a token the cluster rejects): then 401.
//!
//! Authorization asks a `SubjectAccessReview` (answers cached with separate allowed and denied
//! TTLs, keyed on the user and the request's attributes), except for `system:masters` and in
//! `AlwaysAllow` mode. When the cluster cannot be asked, new decisions fail closed with 503;
//! cached ones still apply. Identical reviews under way at the same time are made once.
//!
//! On a warm connection this costs no cryptography: what a client certificate proves is worked
//! out once per connection and version of the trusted CAs (`connection`).
//!
//! Nothing here logs a token, a certificate, a user name or an identity header's value: logs
//! say how a caller authenticated, never who.

pub mod attributes;
pub mod cache;
pub mod connection;
pub mod metrics;
pub mod requestheader;
pub mod review;
pub mod source;
#[cfg(test)]
mod test_ca;
pub mod trust;
pub mod x509;

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReviewSpec,
};
use sha2::{Digest, Sha256};

use crate::api::status::ApiError;
use crate::auth::metrics::AuthMetrics;
use crate::config::AuthorizationMode;
use crate::remote::Peer;
use attributes::Attributes;
use cache::ReviewCache;
use connection::{ClientCaVerdict, ClientCertificate, FrontProxyVerdict};
use review::{ReviewError, Reviewer};
use trust::TrustStore;

/// The user name of unauthenticated callers.
pub const ANONYMOUS: &str = "system:anonymous";
/// The group of unauthenticated callers.
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// The group every authenticated caller is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// Members are allowed everything without asking (kube's delegating default).
pub const MASTERS: &str = "system:masters";

/// How many token and decision answers are remembered at most.
const CACHE_CAPACITY: u64 = 10_000;
/// Reviews of each kind in flight at once. kube's client speaks HTTP/1.1, so each review in
/// flight is a connection to the API server, which the client's pool then keeps idle for 90 s.
/// Without a bound, a burst of distinct reviews (a thousand HPAs in a thousand namespaces at
/// start-up, or a client sending made-up bearer tokens) opens as many connections: about 25 KB
/// each here, and a connection each on the API server. Identical reviews already share one
/// call (see [`cache`]), so waiting for a slot only queues distinct ones. TokenReviews and
/// SubjectAccessReviews have a bound each: made-up tokens, which anyone can send, never hold
/// the slots the aggregator's requests are authorized with.
const MAX_REVIEWS_IN_FLIGHT: usize = 32;
/// How long a review waits for a slot before its request is answered 503 (kube's delegating
/// timeout for the review itself).
const REVIEW_SLOT_WAIT: Duration = Duration::from_secs(10);

/// A caller's identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct UserInfo {
    /// User name.
    pub name: String,
    /// UID, empty if unknown.
    pub uid: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (keys lowercase for front-proxy users, as kube has them).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    fn anonymous() -> Self {
        Self {
            name: ANONYMOUS.to_string(),
            groups: vec![UNAUTHENTICATED.to_string()],
            ..Self::default()
        }
    }

    /// kube's `AuthenticatedGroupAdder`: every authenticated user is in `system:authenticated`.
    fn with_authenticated_group(mut self) -> Self {
        if !self
            .groups
            .iter()
            .any(|g| g == AUTHENTICATED || g == UNAUTHENTICATED)
        {
            self.groups.push(AUTHENTICATED.to_string());
        }
        self
    }
}

/// `system:anonymous`, shared rather than built per request.
static ANONYMOUS_USER: LazyLock<Arc<UserInfo>> = LazyLock::new(|| Arc::new(UserInfo::anonymous()));

/// How a caller proved who they are: the only thing about a caller that is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// kube-apiserver's aggregator: front-proxy certificate, identity in headers.
    FrontProxy,
    /// A certificate from the client CA.
    ClientCertificate,
    /// A bearer token, checked with a TokenReview.
    Token,
    /// No credentials, and anonymous access is on.
    Anonymous,
}

impl Method {
    /// The word used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::FrontProxy => "front-proxy",
            Method::ClientCertificate => "client-certificate",
            Method::Token => "token",
            Method::Anonymous => "anonymous",
        }
    }
}

/// The outcome of authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// Who the caller is, and how that was established.
    User(Arc<UserInfo>, Method),
    /// No acceptable credentials: 401. Names the credential that was presented and proved no
    /// one (a certificate or a token), if any.
    Refused(Option<Method>),
}

/// Who is calling, as the request's handlers see it (a request extension once authorized).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The identity.
    pub user: Arc<UserInfo>,
    /// How it was established.
    pub method: Method,
}

/// An authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// 403, with the authorizer's reason (may be empty).
    Deny(String),
}

/// A decision could not be made because the cluster could not be asked.
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct Unavailable(#[from] ReviewError);

/// What the answers are cached for, and what is allowed without a credential.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Accept callers without credentials as `system:anonymous`.
    pub anonymous: bool,
    /// Delegated or AlwaysAllow.
    pub mode: AuthorizationMode,
    /// TokenReview answers (authenticated or not).
    pub token_ttl: Duration,
    /// Allowed SubjectAccessReview answers.
    pub allowed_ttl: Duration,
    /// Denied SubjectAccessReview answers.
    pub denied_ttl: Duration,
}

#[derive(Debug, Clone)]
enum TokenAnswer {
    Authenticated(Arc<UserInfo>),
    Rejected,
}

/// What a SubjectAccessReview answer is cached under: the attributes themselves (user, UID,
/// groups, extra, and the request's attributes), compared whole, never an encoding of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AccessKey {
    user: Arc<UserInfo>,
    attributes: Arc<Attributes>,
}

/// Authentication and authorization for the API port.
#[derive(Debug)]
pub struct Auth {
    trust: Arc<TrustStore>,
    reviewer: Option<Arc<dyn Reviewer>>,
    settings: AuthSettings,
    /// TokenReview answers by the token's SHA-256 (never the token itself).
    tokens: ReviewCache<[u8; 32], TokenAnswer>,
    decisions: ReviewCache<AccessKey, Decision>,
    /// [`MAX_REVIEWS_IN_FLIGHT`] permits for TokenReviews, and as many for
    /// SubjectAccessReviews.
    token_slots: tokio::sync::Semaphore,
    access_slots: tokio::sync::Semaphore,
    metrics: AuthMetrics,
}

impl Auth {
    /// Without a `reviewer` (no cluster), bearer tokens are ignored as kube ignores them without
    /// a token authenticator, and `Delegated` authorization refuses everyone but `system:masters`.
    pub fn new(
        trust: Arc<TrustStore>,
        reviewer: Option<Arc<dyn Reviewer>>,
        settings: AuthSettings,
        metrics: AuthMetrics,
    ) -> Self {
        Self {
            trust,
            reviewer,
            settings,
            tokens: ReviewCache::new(CACHE_CAPACITY, metrics.review_waiting("TokenReview")),
            decisions: ReviewCache::new(
                CACHE_CAPACITY,
                metrics.review_waiting("SubjectAccessReview"),
            ),
            token_slots: tokio::sync::Semaphore::new(MAX_REVIEWS_IN_FLIGHT),
            access_slots: tokio::sync::Semaphore::new(MAX_REVIEWS_IN_FLIGHT),
            metrics,
        }
    }

    /// A slot among `slots` for one `review` call, or the error its request is answered with
    /// when none frees up in time.
    async fn slot<'a>(
        &self,
        slots: &'a tokio::sync::Semaphore,
        review: &'static str,
    ) -> Result<tokio::sync::SemaphorePermit<'a>, ReviewError> {
        match tokio::time::timeout(REVIEW_SLOT_WAIT, slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a closed one is as good as no slot.
            Ok(Err(_)) | Err(_) => {
                self.metrics.review(review, "error");
                Err(ReviewError {
                    review,
                    detail: format!(
                        "no slot within {} s: {MAX_REVIEWS_IN_FLIGHT} reviews were already waiting for the API server, which answers too slowly",
                        REVIEW_SLOT_WAIT.as_secs()
                    ),
                })
            }
        }
    }

    /// Establish who sent a request with `headers` from `peer`.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: Option<&Peer>,
    ) -> Result<Authentication, Unavailable> {
        // A credential that was presented and failed refuses the request even when anonymous
        // access is on: a bad certificate or token is not "no credentials".
        let mut failed = None;
        if let Some(presented) = peer.and_then(|p| p.certificate.as_deref()) {
            // Never `None` (nothing else keeps a memo there); if it were, the certificate
            // could not be evaluated, which refuses it rather than ignoring it.
            let Some(certificate) = ClientCertificate::of(presented) else {
                return Ok(Authentication::Refused(Some(Method::ClientCertificate)));
            };
            // The trust snapshot is read without a reference count and released before any
            // await.
            let trust = self.trust.load();
            let verdict = certificate.verdict(&trust, SystemTime::now(), || {
                self.metrics.certificate_verification()
            });
            if verdict.front_proxy == FrontProxyVerdict::Trusted
                && let Some(user) = certificate.front_proxy_identity(&trust, headers)
            {
                return Ok(Authentication::User(user, Method::FrontProxy));
            }
            if let ClientCaVerdict::User(user) = &verdict.client_ca {
                return Ok(Authentication::User(
                    user.clone(),
                    Method::ClientCertificate,
                ));
            }
            if verdict.front_proxy == FrontProxyVerdict::Refused
                || verdict.client_ca == ClientCaVerdict::Refused
            {
                failed = Some(Method::ClientCertificate);
            }
        }
        if let (Some(token), Some(reviewer)) = (bearer_token(headers), &self.reviewer) {
            match self.review_token(reviewer.as_ref(), token).await? {
                TokenAnswer::Authenticated(user) => {
                    return Ok(Authentication::User(user, Method::Token));
                }
                TokenAnswer::Rejected => failed = Some(Method::Token),
            }
        }
        if self.settings.anonymous && failed.is_none() {
            return Ok(Authentication::User(
                ANONYMOUS_USER.clone(),
                Method::Anonymous,
            ));
        }
        Ok(Authentication::Refused(failed))
    }

    async fn review_token(
        &self,
        reviewer: &dyn Reviewer,
        token: &str,
    ) -> Result<TokenAnswer, Unavailable> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let (answer, lookup) = self
            .tokens
            .get_or_review(&key, async {
                let _slot = self.slot(&self.token_slots, "TokenReview").await?;
                let status = match reviewer.review_token(token).await {
                    Ok(status) => status,
                    Err(err) => {
                        self.metrics.review("TokenReview", "error");
                        return Err(err);
                    }
                };
                let answer = match (status.authenticated, status.user) {
                    (Some(true), Some(user))
                        if user.username.as_deref().is_some_and(|n| !n.is_empty()) =>
                    {
                        TokenAnswer::Authenticated(Arc::new(
                            UserInfo {
                                name: user.username.unwrap_or_default(),
                                uid: user.uid.unwrap_or_default(),
                                groups: user.groups.unwrap_or_default(),
                                extra: user.extra.unwrap_or_default(),
                            }
                            .with_authenticated_group(),
                        ))
                    }
                    _ => {
                        if let Some(error) = status.error.filter(|e| !e.is_empty()) {
                            tracing::debug!(%error, "TokenReview did not authenticate the token");
                        }
                        TokenAnswer::Rejected
                    }
                };
                self.metrics.review(
                    "TokenReview",
                    match answer {
                        TokenAnswer::Authenticated(_) => "authenticated",
                        TokenAnswer::Rejected => "rejected",
                    },
                );
                Ok((answer, self.settings.token_ttl))
            })
            .await;
        self.metrics.review_cache("TokenReview", lookup.as_str());
        answer.map_err(|err| Unavailable((*err).clone()))
    }

    /// Whether `user` is allowed everything without a SubjectAccessReview (`AlwaysAllow`, or a
    /// member of `system:masters`).
    pub fn skips_review(&self, user: &UserInfo) -> bool {
        self.settings.mode == AuthorizationMode::AlwaysAllow
            || user.groups.iter().any(|g| g == MASTERS)
    }

    /// May `user` do what `attributes` describe?
    pub async fn authorize(
        &self,
        user: &Arc<UserInfo>,
        attributes: &Arc<Attributes>,
    ) -> Result<Decision, Unavailable> {
        if self.skips_review(user) {
            return Ok(Decision::Allow);
        }
        let Some(reviewer) = &self.reviewer else {
            return Ok(Decision::Deny("no authorizer is configured".to_string()));
        };
        let key = AccessKey {
            user: user.clone(),
            attributes: attributes.clone(),
        };
        let (decision, lookup) = self
            .decisions
            .get_or_review(&key, async {
                let _slot = self.slot(&self.access_slots, "SubjectAccessReview").await?;
                let spec = access_review_spec(user, attributes);
                let status = match reviewer.review_access(spec).await {
                    Ok(status) => status,
                    Err(err) => {
                        self.metrics.review("SubjectAccessReview", "error");
                        return Err(err);
                    }
                };
                if let Some(error) = status.evaluation_error.as_deref().filter(|e| !e.is_empty()) {
                    tracing::warn!(%error, "SubjectAccessReview evaluation error");
                }
                Ok(if status.allowed {
                    self.metrics.review("SubjectAccessReview", "allowed");
                    (Decision::Allow, self.settings.allowed_ttl)
                } else {
                    self.metrics.review("SubjectAccessReview", "denied");
                    (
                        Decision::Deny(status.reason.unwrap_or_default()),
                        self.settings.denied_ttl,
                    )
                })
            })
            .await;
        self.metrics
            .review_cache("SubjectAccessReview", lookup.as_str());
        decision.map_err(|err| Unavailable((*err).clone()))
    }

    /// Remove the credentials and identity headers from a request once it is authenticated.
    fn clear_credentials(&self, headers: &mut HeaderMap) {
        headers.remove(header::AUTHORIZATION);
        if let Some(front_proxy) = &self.trust.load().request_header {
            requestheader::clear(headers, &front_proxy.settings);
        }
    }
}

/// The token of `Authorization: Bearer <token>`, as kube's bearer authenticator reads it.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let mut parts = value.splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The `SubjectAccessReview` spec kube's webhook authorizer sends for `user` and `attributes`.
pub fn access_review_spec(user: &UserInfo, attributes: &Attributes) -> SubjectAccessReviewSpec {
    let some = |value: &str| Some(value.to_string()).filter(|v| !v.is_empty());
    let mut spec = SubjectAccessReviewSpec {
        user: some(&user.name),
        uid: some(&user.uid),
        groups: Some(user.groups.clone()).filter(|g| !g.is_empty()),
        extra: Some(user.extra.clone()).filter(|e| !e.is_empty()),
        ..SubjectAccessReviewSpec::default()
    };
    match attributes {
        Attributes::Resource {
            verb,
            group,
            version,
            resource,
            subresource,
            namespace,
            name,
        } => {
            spec.resource_attributes = Some(ResourceAttributes {
                namespace: some(namespace),
                verb: some(verb),
                group: some(group),
                version: some(version),
                resource: some(resource),
                subresource: some(subresource),
                name: some(name),
                ..ResourceAttributes::default()
            });
        }
        Attributes::NonResource { path, verb } => {
            spec.non_resource_attributes = Some(NonResourceAttributes {
                path: some(path),
                verb: some(verb),
            });
        }
    }
    spec
}

/// The axum middleware guarding every route of the API port.
pub async fn middleware(
    State(auth): State<Arc<Auth>>,
    mut request: Request,
    next: Next,
) -> Response {
    let metrics = &auth.metrics;
    let peer = request.extensions().get::<Peer>();
    let (user, method) = match auth.authenticate(request.headers(), peer).await {
        Ok(Authentication::User(user, method)) => {
            metrics.authentication(method.as_str(), "success");
            tracing::debug!(method = method.as_str(), "authenticated");
            (user, method)
        }
        Ok(Authentication::Refused(presented)) => {
            let method = presented.map_or("none", Method::as_str);
            metrics.authentication(method, "failure");
            tracing::debug!(
                peer = ?peer.map(|p| p.address),
                credential = method,
                "request refused: no acceptable credentials"
            );
            return ApiError::unauthorized().into_response();
        }
        Err(Unavailable(err)) => {
            metrics.authentication(Method::Token.as_str(), "error");
            tracing::warn!(error = %err, "cannot authenticate: the Kubernetes API server could not be asked");
            return ApiError::service_unavailable(
                "the caller's token could not be checked because the Kubernetes API server did not answer the TokenReview; try again shortly",
            )
            .into_response();
        }
    };
    auth.clear_credentials(request.headers_mut());
    if auth.skips_review(&user) {
        metrics.decision("allowed");
        request.extensions_mut().insert(Caller { user, method });
        return next.run(request).await;
    }
    // The request's attributes are only worked out when a review needs them.
    let attributes = Arc::new(Attributes::from_request(
        request.method(),
        request.uri().path(),
        request.uri().query(),
    ));
    match auth.authorize(&user, &attributes).await {
        Ok(Decision::Allow) => {
            metrics.decision("allowed");
            request.extensions_mut().insert(Caller { user, method });
            next.run(request).await
        }
        Ok(Decision::Deny(reason)) => {
            metrics.decision("denied");
            tracing::debug!(
                method = method.as_str(),
                request = %attributes.describe(),
                "request forbidden"
            );
            let why = attributes.forbidden_explanation(&user.name, &reason);
            match &*attributes {
                Attributes::Resource {
                    group,
                    resource,
                    name,
                    ..
                } => ApiError::forbidden(group, resource, name, &why),
                Attributes::NonResource { .. } => ApiError::forbidden("", "", "", &why),
            }
            .into_response()
        }
        Err(Unavailable(err)) => {
            metrics.decision("error");
            tracing::warn!(method = method.as_str(), error = %err, "cannot authorize: the Kubernetes API server could not be asked");
            ApiError::service_unavailable(
                "whether the caller may read this could not be checked because the Kubernetes API server did not answer the SubjectAccessReview; try again shortly",
            )
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests;
