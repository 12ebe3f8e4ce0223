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
//! TTLs), except for `system:masters` and in `AlwaysAllow` mode. When the cluster cannot be
//! asked, new decisions fail closed with 503; cached ones still apply.
//!
//! Nothing here logs a token, a certificate or an identity header's value.

pub mod attributes;
pub mod requestheader;
pub mod review;
pub mod source;
pub mod trust;
pub mod ttl;
pub mod x509;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReviewSpec,
};
use sha2::{Digest, Sha256};

use crate::api::status::ApiError;
use crate::config::AuthorizationMode;
use crate::server::ConnectionInfo;
use attributes::Attributes;
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
const CACHE_CAPACITY: usize = 10_000;

/// A caller's identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

/// The outcome of authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// Who the caller is, and how that was established (for logs).
    User(UserInfo, &'static str),
    /// No acceptable credentials: 401.
    Refused,
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
    Authenticated(UserInfo),
    Rejected,
}

/// Authentication and authorization for the API port.
#[derive(Debug)]
pub struct Auth {
    trust: Arc<TrustStore>,
    reviewer: Option<Arc<dyn Reviewer>>,
    settings: AuthSettings,
    tokens: ttl::TtlCache<[u8; 32], TokenAnswer>,
    decisions: ttl::TtlCache<String, Decision>,
}

impl Auth {
    /// Without a `reviewer` (no cluster), bearer tokens are ignored as kube ignores them without
    /// a token authenticator, and `Delegated` authorization refuses everyone but `system:masters`.
    pub fn new(
        trust: Arc<TrustStore>,
        reviewer: Option<Arc<dyn Reviewer>>,
        settings: AuthSettings,
    ) -> Self {
        Self {
            trust,
            reviewer,
            settings,
            tokens: ttl::TtlCache::new(CACHE_CAPACITY),
            decisions: ttl::TtlCache::new(CACHE_CAPACITY),
        }
    }

    /// Establish who sent a request with `headers` over `connection`.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        connection: Option<&ConnectionInfo>,
    ) -> Result<Authentication, Unavailable> {
        let trust = self.trust.current();
        // A credential that was presented and failed refuses the request even when anonymous
        // access is on: a bad certificate or token is not "no credentials".
        let mut failed = false;
        if let Some(chain) = connection.and_then(|c| c.peer_certificates.as_deref()) {
            let subject = chain.first().map(x509::subject);
            let common_name = match &subject {
                Some(Ok(subject)) => subject.common_name.as_deref(),
                _ => None,
            };
            if let Some(front_proxy) = &trust.request_header {
                match front_proxy.ca.verify(chain) {
                    Ok(()) if front_proxy.settings.allows(common_name) => {
                        if let Some(user) = requestheader::identity(headers, &front_proxy.settings)
                        {
                            return Ok(Authentication::User(
                                user.with_authenticated_group(),
                                "front-proxy",
                            ));
                        }
                    }
                    Ok(()) => {
                        tracing::debug!(
                            cn = common_name.unwrap_or_default(),
                            "front-proxy certificate has a common name not in the allowed names"
                        );
                        failed = true;
                    }
                    Err(_) => failed = true,
                }
            }
            if let Some(client_ca) = &trust.client_ca {
                match (client_ca.verify(chain), &subject) {
                    (Ok(()), Some(Ok(subject))) => {
                        // No CN: not an identity, but not a failure either (kube's reading).
                        if let Some(name) = subject.common_name.clone().filter(|n| !n.is_empty()) {
                            let user = UserInfo {
                                name,
                                groups: subject.organizations.clone(),
                                ..UserInfo::default()
                            };
                            return Ok(Authentication::User(
                                user.with_authenticated_group(),
                                "client-certificate",
                            ));
                        }
                    }
                    // Parseable by TLS but not here: a credential that proves no one.
                    (Ok(()), _) => failed = true,
                    (Err(_), _) => failed = true,
                }
            }
        }
        if let (Some(token), Some(reviewer)) = (bearer_token(headers), &self.reviewer) {
            match self.review_token(reviewer.as_ref(), token).await? {
                TokenAnswer::Authenticated(user) => {
                    return Ok(Authentication::User(
                        user.with_authenticated_group(),
                        "token",
                    ));
                }
                TokenAnswer::Rejected => failed = true,
            }
        }
        if self.settings.anonymous && !failed {
            return Ok(Authentication::User(UserInfo::anonymous(), "anonymous"));
        }
        Ok(Authentication::Refused)
    }

    async fn review_token(
        &self,
        reviewer: &dyn Reviewer,
        token: &str,
    ) -> Result<TokenAnswer, Unavailable> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(answer) = self.tokens.get(&key) {
            return Ok(answer);
        }
        let status = reviewer.review_token(token).await?;
        let answer = match (status.authenticated, status.user) {
            (Some(true), Some(user)) if user.username.as_deref().is_some_and(|n| !n.is_empty()) => {
                TokenAnswer::Authenticated(UserInfo {
                    name: user.username.unwrap_or_default(),
                    uid: user.uid.unwrap_or_default(),
                    groups: user.groups.unwrap_or_default(),
                    extra: user.extra.unwrap_or_default(),
                })
            }
            _ => {
                if let Some(error) = status.error.filter(|e| !e.is_empty()) {
                    tracing::debug!(%error, "TokenReview did not authenticate the token");
                }
                TokenAnswer::Rejected
            }
        };
        self.tokens
            .insert(key, answer.clone(), self.settings.token_ttl);
        Ok(answer)
    }

    /// May `user` do what `attributes` describe?
    pub async fn authorize(
        &self,
        user: &UserInfo,
        attributes: &Attributes,
    ) -> Result<Decision, Unavailable> {
        if self.settings.mode == AuthorizationMode::AlwaysAllow
            || user.groups.iter().any(|g| g == MASTERS)
        {
            return Ok(Decision::Allow);
        }
        let Some(reviewer) = &self.reviewer else {
            return Ok(Decision::Deny("no authorizer is configured".to_string()));
        };
        let spec = access_review_spec(user, attributes);
        // The spec holds no secret (names, groups, the request's attributes), so it is the key.
        let key = serde_json::to_string(&spec).unwrap_or_default();
        if let Some(decision) = self.decisions.get(&key) {
            return Ok(decision);
        }
        let status = reviewer.review_access(spec).await?;
        if let Some(error) = status.evaluation_error.as_deref().filter(|e| !e.is_empty()) {
            tracing::warn!(user = %user.name, %error, "SubjectAccessReview evaluation error");
        }
        let (decision, ttl) = if status.allowed {
            (Decision::Allow, self.settings.allowed_ttl)
        } else {
            (
                Decision::Deny(status.reason.unwrap_or_default()),
                self.settings.denied_ttl,
            )
        };
        self.decisions.insert(key, decision.clone(), ttl);
        Ok(decision)
    }

    /// Remove the credentials and identity headers from a request once it is authenticated.
    fn clear_credentials(&self, headers: &mut HeaderMap) {
        headers.remove(header::AUTHORIZATION);
        if let Some(front_proxy) = &self.trust.current().request_header {
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
    let connection = request.extensions().get::<ConnectionInfo>().cloned();
    let user = match auth
        .authenticate(request.headers(), connection.as_ref())
        .await
    {
        Ok(Authentication::User(user, via)) => {
            tracing::debug!(user = %user.name, via, "authenticated");
            user
        }
        Ok(Authentication::Refused) => {
            tracing::debug!(
                peer = ?connection.as_ref().map(|c| c.peer),
                "request refused: no acceptable credentials"
            );
            return ApiError::unauthorized().into_response();
        }
        Err(Unavailable(err)) => {
            tracing::warn!(error = %err, "cannot authenticate: the Kubernetes API server could not be asked");
            return ApiError::service_unavailable(
                "the caller's token could not be checked because the Kubernetes API server did not answer the TokenReview; try again shortly",
            )
            .into_response();
        }
    };
    auth.clear_credentials(request.headers_mut());
    let attributes = Attributes::from_request(
        request.method(),
        request.uri().path(),
        request.uri().query(),
    );
    match auth.authorize(&user, &attributes).await {
        Ok(Decision::Allow) => {
            request.extensions_mut().insert(user);
            next.run(request).await
        }
        Ok(Decision::Deny(reason)) => {
            let why = attributes.forbidden_explanation(&user.name, &reason);
            tracing::debug!(user = %user.name, reason = %why, "request forbidden");
            match &attributes {
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
            tracing::warn!(user = %user.name, error = %err, "cannot authorize: the Kubernetes API server could not be asked");
            ApiError::service_unavailable(
                "whether the caller may read this could not be checked because the Kubernetes API server did not answer the SubjectAccessReview; try again shortly",
            )
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests;
