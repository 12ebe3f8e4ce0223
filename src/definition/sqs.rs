//! SQS's rules for a definition's `sqs`: a queue name or URL, an owner account, which counts to
//! add up. Placeholders are checked twice: their shape here, and the filled-in values when a
//! series is read ([`render_queue`]), so a label value that makes no queue name or account id
//! is refused for that series alone.

use std::collections::BTreeSet;
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;

use super::limits::ACCOUNT_ID;
use super::placeholder::{MissingLabel, collect_placeholders, render};
use super::spec::{MetricSpec, QueueCount, SqsSpec};

/// Refresh interval of an SQS definition that sets none: near real time at a cost of about
/// $0.07 per queue per month.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(15);
/// The shortest refresh interval an SQS definition may ask for.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// A queue name: 1 to 80 letters, digits, hyphens and underscores, `.fifo` for FIFO queues.
static QUEUE_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z0-9_-]{1,80}$|^[A-Za-z0-9_-]{1,75}\.fifo$").expect("static regex")
});
/// A queue URL: scheme, host, the 12-digit owner account and the name.
static QUEUE_URL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^https?://[A-Za-z0-9.:_-]+/([0-9]{12})/([A-Za-z0-9_.-]{1,80})$")
        .expect("static regex")
});

/// What a valid SQS definition reads.
#[derive(Debug, Clone, PartialEq)]
pub struct SqsRead {
    /// The counts added up, sorted, each once.
    pub counts: Vec<QueueCount>,
}

/// A queue as the request will name it, placeholders filled.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QueueRef {
    /// A full URL: `GetQueueAttributes` takes it as is.
    Url(String),
    /// A name (and owner account): resolved to a URL with `GetQueueUrl`, once.
    Name {
        /// The queue's name.
        name: String,
        /// The owning account, when not the caller's.
        owner: Option<String>,
    },
}

impl std::fmt::Display for QueueRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueRef::Url(url) => f.write_str(url),
            QueueRef::Name { name, owner: None } => f.write_str(name),
            QueueRef::Name {
                name,
                owner: Some(owner),
            } => write!(f, "{name} (account {owner})"),
        }
    }
}

fn is_url(queue: &str) -> bool {
    queue.starts_with("https://") || queue.starts_with("http://")
}

/// Check `spec.sqs` against SQS's rules, collecting the labels its placeholders need.
pub(crate) fn validate(
    spec: &MetricSpec,
    sqs: &SqsSpec,
    labels: &mut BTreeSet<String>,
    problems: &mut Vec<String>,
) -> SqsRead {
    let mut push = |problem: String| problems.push(format!("sqs: {problem}"));
    collect_placeholders("queue", &sqs.queue, labels, &mut push);
    // The literal parts must already be possible: a placeholder filled with a plain value must
    // be able to make a valid name or URL.
    let sample = fill_sample(&sqs.queue);
    if sqs.queue.trim().is_empty() {
        push("queue is required (a queue name or URL)".into());
    } else if is_url(&sqs.queue) {
        if !QUEUE_URL.is_match(&sample) {
            push(format!(
                "queue {:?} is not an SQS queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)",
                sqs.queue
            ));
        }
        if sqs.account_id.is_some() {
            push("accountId is set, but the queue URL already names the owning account".into());
        }
    } else if !QUEUE_NAME.is_match(&sample) {
        push(format!(
            "queue {:?} is not an SQS queue name (up to 80 letters, digits, '-' and '_', or a name ending in .fifo) nor a queue URL",
            sqs.queue
        ));
    }
    if let Some(account) = &sqs.account_id {
        collect_placeholders("accountId", account, labels, &mut push);
        if !account.contains("${") && !ACCOUNT_ID.is_match(account) {
            push(format!(
                "accountId {account:?} must be a 12-digit AWS account id"
            ));
        }
    }
    let mut counts = sqs
        .count
        .clone()
        .unwrap_or_else(|| vec![QueueCount::Visible]);
    if counts.is_empty() {
        push("count: list at least one of visible, inFlight, delayed (or leave it out for [visible])".into());
    }
    let before = counts.len();
    counts.sort();
    counts.dedup();
    if counts.len() != before {
        push("count: each count may be listed once".into());
    }
    for (field, set) in [
        ("window", spec.window.is_some()),
        ("endOffset", spec.end_offset.is_some()),
    ] {
        if set {
            problems.push(format!(
                "{field} applies to CloudWatch queries only: an SQS queue's depth is read as it is now"
            ));
        }
    }
    if spec.no_data_value.is_some() {
        problems.push(
            "noDataValue applies to CloudWatch queries only: SQS always answers, and an empty queue is a real 0"
                .to_string(),
        );
    }
    SqsRead { counts }
}

/// `template` with every placeholder filled with a value valid in any position of a queue
/// name, URL or account id.
fn fill_sample(template: &str) -> String {
    let mut labels = std::collections::BTreeMap::new();
    let mut names = BTreeSet::new();
    collect_placeholders("", template, &mut names, &mut |_| {});
    for name in names {
        labels.insert(name, "000000000000".to_string());
    }
    render(template, &labels).unwrap_or_default()
}

/// Why a series' label values make no queue to read (see [`render_queue`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// A placeholder's label is not in the selector.
    #[error(transparent)]
    MissingLabel(#[from] MissingLabel),
    /// The filled-in URL is not a queue URL.
    #[error("the selector's labels make queue URL {queue:?}, which is not an SQS queue URL")]
    NotAQueueUrl {
        /// The URL as filled in.
        queue: String,
    },
    /// The filled-in name is not a queue name.
    #[error(
        "the selector's labels make queue name {queue:?}, which is not an SQS queue name (up to 80 letters, digits, '-' and '_', or ending in .fifo)"
    )]
    NotAQueueName {
        /// The name as filled in.
        queue: String,
    },
    /// The filled-in owner is not an account id.
    #[error(
        "the selector's labels make accountId {account:?}, which is not a 12-digit AWS account id"
    )]
    NotAnAccountId {
        /// The account id as filled in.
        account: String,
    },
}

/// The queue a series reads: `sqs` with the series' label values filled in, checked again,
/// because a label value can make an invalid name (`orders.v2`) or account id. The error names
/// the field and is meant for the HPA's selector.
pub fn render_queue(
    sqs: &SqsSpec,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<QueueRef, QueueError> {
    let queue = render(&sqs.queue, labels)?;
    if is_url(&sqs.queue) {
        return if QUEUE_URL.is_match(&queue) {
            Ok(QueueRef::Url(queue))
        } else {
            Err(QueueError::NotAQueueUrl { queue })
        };
    }
    if !QUEUE_NAME.is_match(&queue) {
        return Err(QueueError::NotAQueueName { queue });
    }
    let owner = match &sqs.account_id {
        None => None,
        Some(template) => {
            let account = render(template, labels)?;
            if !ACCOUNT_ID.is_match(&account) {
                return Err(QueueError::NotAnAccountId { account });
            }
            Some(account)
        }
    };
    Ok(QueueRef::Name { name: queue, owner })
}
