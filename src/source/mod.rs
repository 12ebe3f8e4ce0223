//! Sources: how a series' value is read from a backend.
//!
//! A [`Source`] takes a batch of due series and returns an outcome per series. It declares how it
//! batches and what it costs ([`Profile`]), so the refresh engine ([`crate::engine`]) plans,
//! paces, isolates failures and counts cost without knowing which backend it talks to. Each
//! backend is a submodule; only their `client.rs` files import AWS SDK types.
//!
//! Errors cross the seam typed: a call that failed as a whole is a [`SourceError`] (its kind,
//! whether the backend refused the request as invalid, and a detail for the log only); a series
//! whose value could not be made is a [`ProviderError`] whose message names the backend.

mod aws;
pub mod cloudwatch;
pub mod sqs;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::SystemTime;

use serde::Serialize;

use crate::definition::{Backend, Definition};
use crate::provider::{BackendFailure, MetricValue, ProviderError};

/// Which account, region and identity a call runs as. Calls are batched per target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Region; the adapter's default when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Role to assume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// External id for the role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

impl Target {
    /// Where `definition`'s calls run.
    pub fn of(definition: &Definition) -> Self {
        let spec = &definition.spec;
        Self {
            region: spec.region.clone(),
            role_arn: spec.role_arn.clone(),
            external_id: spec.external_id.clone(),
        }
    }
}

/// How a source batches and what it costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// Which backend.
    pub backend: Backend,
    /// The most items one call carries (CloudWatch: 500 queries; a series may take several).
    pub max_items_per_call: usize,
    /// List price of one billed unit, in dollars.
    pub dollars_per_unit: f64,
    /// The IAM permissions a read needs, for access-denied messages.
    pub permissions: &'static str,
    /// The operation that reads values, for messages.
    pub operation: &'static str,
}

/// What one call used, for the adapter's own metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Items sent (CloudWatch: queries).
    pub items: usize,
    /// Units billed (CloudWatch: metrics requested).
    pub billed: usize,
    /// Datapoints returned.
    pub datapoints: usize,
    /// Some results were left incomplete (pagination stopped before the last page).
    pub truncated: bool,
}

/// Why a call failed as a whole. `detail` is for the log only: it may carry AWS request details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} ({detail})", failure.describe())]
pub struct SourceError {
    /// What kind of failure.
    pub failure: BackendFailure,
    /// The backend refused the request itself as invalid. A batched call refused this way is
    /// retried in halves until the member that caused it is found.
    pub rejected: bool,
    /// The backend's own words, for the log.
    pub detail: String,
}

/// One series' share of a call.
#[derive(Debug)]
pub struct Member<'a, R> {
    /// The series' definition.
    pub definition: &'a Definition,
    /// The series' labels (from the selector).
    pub labels: &'a BTreeMap<String, String>,
    /// What [`Source::prepare`] made of it.
    pub request: &'a R,
}

/// A series to plan into calls.
#[derive(Debug)]
pub struct PlanItem<'a, R> {
    /// Its prepared request.
    pub request: &'a R,
    /// It must get a call of its own (it was found to make calls fail).
    pub alone: bool,
}

/// A planned call and the plan items (by index) it serves, in the order the call serves them.
#[derive(Debug)]
pub struct Planned<C> {
    /// The call.
    pub call: C,
    /// Indexes into the planned items.
    pub members: Vec<usize>,
}

/// What a call returned.
#[derive(Debug)]
pub struct Fetched {
    /// What it used (also when it failed).
    pub usage: Usage,
    /// One outcome per member, in order, or why the call failed as a whole.
    pub outcome: Result<Vec<Result<MetricValue, ProviderError>>, SourceError>,
}

/// A backend the engine reads series from.
pub trait Source: Send + Sync + 'static {
    /// One series' prepared request.
    type Request: Clone + Send + Sync + 'static;
    /// One planned call.
    type Call: Send + Sync + 'static;

    /// How it batches and what it costs.
    fn profile(&self) -> Profile;

    /// Turn a series into its request as of `now`, or say why it cannot be read (a refusal that
    /// concerns this series only, never reaching a shared call).
    fn prepare(
        &self,
        definition: &Definition,
        labels: &BTreeMap<String, String>,
        now: SystemTime,
    ) -> Result<Self::Request, ProviderError>;

    /// How many of [`Profile::max_items_per_call`] a series of `definition` takes (known before
    /// preparing it, so the engine prepares only what the budget admits).
    fn size(&self, definition: &Definition) -> usize;

    /// Pack requests into as few calls as the backend allows. Earlier items go into earlier
    /// calls where the backend's rules allow it (the engine orders items fairly).
    fn plan(&self, items: &[PlanItem<'_, Self::Request>]) -> Vec<Planned<Self::Call>>;

    /// Make one call and evaluate it for each member (in the order [`Source::plan`] gave).
    fn fetch(
        &self,
        call: &Self::Call,
        members: &[Member<'_, Self::Request>],
        now: SystemTime,
    ) -> impl Future<Output = Fetched> + Send;
}

/// The error a series gets when its call failed: which metric, which backend, what kind of
/// failure and what to do. Never the backend's own words (those go to the log).
pub fn backend_error(profile: &Profile, failure: BackendFailure, metric: &str) -> ProviderError {
    let backend = profile.backend;
    let message = match failure {
        BackendFailure::AccessDenied => format!(
            "unable to fetch metric {metric} from {backend}: access denied; check that the adapter's IAM role allows {}",
            profile.permissions
        ),
        BackendFailure::NoCredentials => format!(
            "unable to fetch metric {metric} from {backend}: no AWS credentials; configure IRSA (eks.amazonaws.com/role-arn on the service account) or another credentials source"
        ),
        BackendFailure::Throttled => format!(
            "unable to fetch metric {metric} from {backend}: throttled ({} rate limit for the account and region); it will be retried",
            profile.operation
        ),
        BackendFailure::Unreachable => format!(
            "unable to fetch metric {metric} from {backend}: {backend} is unreachable (network, DNS or timeout)"
        ),
        BackendFailure::ServiceError => format!(
            "unable to fetch metric {metric} from {backend}: {backend} returned a server error; it will be retried"
        ),
        BackendFailure::InvalidQuery => format!(
            "unable to fetch metric {metric} from {backend}: the request was rejected; check the definition with `cloudwatch-metrics-adapter query`"
        ),
    };
    ProviderError::Backend { failure, message }
}

impl<T: Source> Source for std::sync::Arc<T> {
    type Request = T::Request;
    type Call = T::Call;

    fn profile(&self) -> Profile {
        (**self).profile()
    }

    fn prepare(
        &self,
        definition: &Definition,
        labels: &BTreeMap<String, String>,
        now: SystemTime,
    ) -> Result<Self::Request, ProviderError> {
        (**self).prepare(definition, labels, now)
    }

    fn size(&self, definition: &Definition) -> usize {
        (**self).size(definition)
    }

    fn plan(&self, items: &[PlanItem<'_, Self::Request>]) -> Vec<Planned<Self::Call>> {
        (**self).plan(items)
    }

    fn fetch(
        &self,
        call: &Self::Call,
        members: &[Member<'_, Self::Request>],
        now: SystemTime,
    ) -> impl Future<Output = Fetched> + Send {
        (**self).fetch(call, members, now)
    }
}
