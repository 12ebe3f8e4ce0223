//! Sources: how a series' value is read from a backend.
//!
//! A [`Source`] takes a batch of due series and returns an outcome per series. It declares how it
//! batches and what it costs ([`Profile`]), so the refresh engine ([`crate::engine`]) plans,
//! paces, isolates failures and counts cost without knowing which backend it talks to. Each
//! backend is a submodule; only their `client.rs` files import AWS SDK types.
//!
//! Errors cross the seam typed: a call that failed as a whole is a [`SourceError`] (its kind, who
//! is to blame, and the backend's own error as its `source`, for the log only); a series whose
//! value could not be made is a [`ProviderError`] whose message names the backend.
//!
//! The seam is backend-neutral: where a call runs (an AWS region and identity) is each source's
//! own business ([`aws`]), decided in [`Source::prepare`].

pub mod aws;
pub mod cloudwatch;
pub mod sqs;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use crate::definition::{Backend, Definition};
use crate::provider::{BackendFailure, ProviderError, Reading};

/// How a source batches and what it costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// Which backend.
    pub backend: Backend,
    /// The most items one call carries (CloudWatch: 500 queries; a series may take several).
    pub max_items_per_call: usize,
    /// List price of one billed unit, in dollars.
    pub dollars_per_unit: f64,
    /// The permissions a read needs, for access-denied messages.
    pub permissions: &'static str,
    /// Where the backend's credentials come from, for no-credentials messages.
    pub credentials_hint: &'static str,
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

/// Who a failed call's failure is on: it decides whether the engine searches the call's members
/// for one that causes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The request as a whole: no member could have caused it (throttling, the network,
    /// credentials, a signature or clock error, a proxy's error page, a request the SDK could not
    /// build). Retried as it is, with back-off; nobody is isolated.
    Request,
    /// The backend refused what the request asked for (a validation error): one of its members
    /// causes it. A shared call failing this way is searched for that member.
    Members,
}

/// Why a call failed as a whole. The backend's own error is the `source`: for the log only (it
/// may carry AWS request details); users get a message built from `failure`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", failure.describe())]
pub struct SourceError {
    /// What kind of failure.
    pub failure: BackendFailure,
    /// Who it is on.
    pub blame: Blame,
    /// The backend's (or the SDK's) error.
    #[source]
    pub cause: Arc<dyn std::error::Error + Send + Sync>,
}

impl SourceError {
    /// A failure of `failure`'s kind, blamed on `blame`, caused by `cause`.
    pub fn new(
        failure: BackendFailure,
        blame: Blame,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            failure,
            blame,
            cause: Arc::from(cause.into()),
        }
    }

    /// Whether the backend refused the request's content, so one of its members is to blame.
    pub fn blames_members(&self) -> bool {
        self.blame == Blame::Members
    }
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
    pub outcome: Result<Vec<Result<Reading, ProviderError>>, SourceError>,
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
    ///
    /// Every item must be a member of exactly one planned call: the engine checks, and answers
    /// an item left out (or claimed twice) with an internal error rather than losing it. Items
    /// that must not share a call with others are planned by the engine in calls of their own.
    fn plan(&self, items: &[&Self::Request]) -> Vec<Planned<Self::Call>>;

    /// Make one call and evaluate it for each member (in the order [`Source::plan`] gave). The
    /// outcome has one entry per member; a missing one is answered with an internal error.
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
            "unable to fetch metric {metric} from {backend}: no credentials; {}",
            profile.credentials_hint
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
        BackendFailure::RequestRefused => format!(
            "unable to fetch metric {metric} from {backend}: {backend} refused the request as a whole, before reading any query in it (a clock or signing problem, or a proxy in the way); it will be retried"
        ),
        BackendFailure::Internal => format!(
            "unable to fetch metric {metric} from {backend}: the refresh did not complete (an internal error, logged); it will be retried"
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

    fn plan(&self, items: &[&Self::Request]) -> Vec<Planned<Self::Call>> {
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
