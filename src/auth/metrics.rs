//! Authentication and authorization metrics, registered by the auth module itself.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthenticationLabels {
    method: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReviewLabels {
    review: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReviewCacheLabels {
    review: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReviewWaitingLabels {
    review: &'static str,
}

/// Authentication and authorization counters. Every label value is a fixed word (how a caller
/// authenticated, never who). The known combinations are created up front, so they show as 0
/// before they happen and counting one is an atomic increment, not a map lookup.
#[derive(Clone, Debug)]
pub struct AuthMetrics {
    authentications: Vec<(&'static str, &'static str, Counter)>,
    decisions: Vec<(&'static str, Counter)>,
    reviews: Vec<(&'static str, &'static str, Counter)>,
    review_cache: Vec<(&'static str, &'static str, Counter)>,
    review_waiting: Vec<(&'static str, Gauge)>,
    certificate_verifications: Counter,
}

impl AuthMetrics {
    /// Count one authentication: `method` is `front-proxy`, `client-certificate`, `token`,
    /// `anonymous` or `none`; `result` is `success`, `failure` (401) or `error` (503).
    pub fn authentication(&self, method: &'static str, result: &'static str) {
        count(&self.authentications, method, result);
    }

    /// Count one authorization decision: `allowed`, `denied` or `error`.
    pub fn decision(&self, decision: &'static str) {
        if let Some((_, counter)) = self.decisions.iter().find(|(d, _)| *d == decision) {
            counter.inc();
        }
    }

    /// Count one call to the cluster: `review` is `TokenReview` or `SubjectAccessReview`,
    /// `outcome` what it answered (`authenticated`, `rejected`, `allowed`, `denied`) or `error`.
    pub fn review(&self, review: &'static str, outcome: &'static str) {
        count(&self.reviews, review, outcome);
    }

    /// Count one review-cache lookup: `hit`, `miss` (a review was made) or `shared` (waited for
    /// an identical review already under way).
    pub fn review_cache(&self, review: &'static str, result: &'static str) {
        count(&self.review_cache, review, result);
    }

    /// Requests waiting for a `review` answer (`TokenReview` or `SubjectAccessReview`), made
    /// for them or shared with an identical review under way: the review cache keeps it.
    pub fn review_waiting(&self, review: &'static str) -> Gauge {
        self.review_waiting
            .iter()
            .find(|(name, _)| *name == review)
            .map(|(_, gauge)| gauge.clone())
            // An unknown name gets a gauge of its own, counted but not exposed.
            .unwrap_or_default()
    }

    /// Count one verification of a client certificate chain (once per connection and CA
    /// version, and again when a certificate expires).
    pub fn certificate_verification(&self) {
        self.certificate_verifications.inc();
    }
}

fn count(counters: &[(&'static str, &'static str, Counter)], first: &str, second: &str) {
    if let Some((.., counter)) = counters
        .iter()
        .find(|(a, b, _)| *a == first && *b == second)
    {
        counter.inc();
    }
}

const AUTHENTICATIONS: [(&str, &str); 8] = [
    ("front-proxy", "success"),
    ("client-certificate", "success"),
    ("client-certificate", "failure"),
    ("token", "success"),
    ("token", "failure"),
    ("token", "error"),
    ("anonymous", "success"),
    ("none", "failure"),
];
const DECISIONS: [&str; 3] = ["allowed", "denied", "error"];
const REVIEWS: [(&str, &str); 6] = [
    ("TokenReview", "authenticated"),
    ("TokenReview", "rejected"),
    ("TokenReview", "error"),
    ("SubjectAccessReview", "allowed"),
    ("SubjectAccessReview", "denied"),
    ("SubjectAccessReview", "error"),
];
const REVIEW_CACHE: [(&str, &str); 6] = [
    ("TokenReview", "hit"),
    ("TokenReview", "miss"),
    ("TokenReview", "shared"),
    ("SubjectAccessReview", "hit"),
    ("SubjectAccessReview", "miss"),
    ("SubjectAccessReview", "shared"),
];

impl AuthMetrics {
    /// Register the auth metrics on `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let authentications = Family::<AuthenticationLabels, Counter>::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        let reviews = Family::<ReviewLabels, Counter>::default();
        let review_cache = Family::<ReviewCacheLabels, Counter>::default();
        let review_waiting = Family::<ReviewWaitingLabels, Gauge>::default();
        let certificate_verifications = Counter::default();
        registry.register(
            "authentications",
            "API requests by how the caller authenticated (front-proxy, client-certificate, token, anonymous, none) and the result",
            authentications.clone(),
        );
        registry.register(
            "authorization_decisions",
            "Authorization decisions on API requests",
            decisions.clone(),
        );
        registry.register(
            "reviews",
            "TokenReview and SubjectAccessReview calls to the Kubernetes API server by outcome",
            reviews.clone(),
        );
        registry.register(
            "review_cache_lookups",
            "Review answers found in the cache (hit), asked for (miss), or shared with an identical review under way",
            review_cache.clone(),
        );
        registry.register(
            "review_waiting",
            "API requests waiting now for a TokenReview or SubjectAccessReview answer (their own, or an identical review under way): a slow Kubernetes API server shows here first",
            review_waiting.clone(),
        );
        registry.register(
            "client_certificate_verifications",
            "Client certificate chains verified (once per connection and CA version)",
            certificate_verifications.clone(),
        );
        Self {
            authentications: AUTHENTICATIONS
                .iter()
                .map(|&(method, result)| {
                    let labels = AuthenticationLabels { method, result };
                    (
                        method,
                        result,
                        authentications.get_or_create(&labels).clone(),
                    )
                })
                .collect(),
            decisions: DECISIONS
                .iter()
                .map(|&decision| {
                    let counter = decisions
                        .get_or_create(&DecisionLabels { decision })
                        .clone();
                    (decision, counter)
                })
                .collect(),
            reviews: REVIEWS
                .iter()
                .map(|&(review, outcome)| {
                    let labels = ReviewLabels { review, outcome };
                    (review, outcome, reviews.get_or_create(&labels).clone())
                })
                .collect(),
            review_cache: REVIEW_CACHE
                .iter()
                .map(|&(review, result)| {
                    let labels = ReviewCacheLabels { review, result };
                    (review, result, review_cache.get_or_create(&labels).clone())
                })
                .collect(),
            review_waiting: ["TokenReview", "SubjectAccessReview"]
                .into_iter()
                .map(|review| {
                    let labels = ReviewWaitingLabels { review };
                    (review, review_waiting.get_or_create(&labels).clone())
                })
                .collect(),
            certificate_verifications,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::metrics::AdapterMetrics;

    #[test]
    fn auth_counters_exist_from_the_start_and_count() {
        let metrics = AdapterMetrics::default();
        let text = metrics.encode();
        for line in [
            "cloudwatch_adapter_authentications_total{method=\"front-proxy\",result=\"success\"} 0",
            "cloudwatch_adapter_authorization_decisions_total{decision=\"denied\"} 0",
            "cloudwatch_adapter_reviews_total{review=\"SubjectAccessReview\",outcome=\"error\"} 0",
            "cloudwatch_adapter_review_cache_lookups_total{review=\"TokenReview\",result=\"shared\"} 0",
            "cloudwatch_adapter_client_certificate_verifications_total 0",
            "cloudwatch_adapter_review_waiting{review=\"SubjectAccessReview\"} 0",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        let auth = metrics.auth();
        auth.authentication("front-proxy", "success");
        auth.authentication("front-proxy", "success");
        auth.decision("allowed");
        auth.review("SubjectAccessReview", "allowed");
        auth.review_cache("SubjectAccessReview", "hit");
        auth.certificate_verification();
        let text = metrics.encode();
        for line in [
            "cloudwatch_adapter_authentications_total{method=\"front-proxy\",result=\"success\"} 2",
            "cloudwatch_adapter_authorization_decisions_total{decision=\"allowed\"} 1",
            "cloudwatch_adapter_reviews_total{review=\"SubjectAccessReview\",outcome=\"allowed\"} 1",
            "cloudwatch_adapter_review_cache_lookups_total{review=\"SubjectAccessReview\",result=\"hit\"} 1",
            "cloudwatch_adapter_client_certificate_verifications_total 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
