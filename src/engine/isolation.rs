//! What the engine learns when a backend rejects shared calls as bad requests.
//!
//! CloudWatch rejects a whole `GetMetricData` call when one query in it is invalid, so one
//! tenant's broken definition would fail every series batched with it. When a call is rejected
//! and its error blames its members ([`Blame::Members`]), its members are searched, through the
//! ordinary fair planner (so the search is paced, charged to the tenants whose series were in the
//! rejected call, and never holds a call permit while it waits):
//!
//! 1. Members of several definitions are split by definition, in two halves.
//! 2. Members of one definition: the first time, one member is tried alone beside the rest (is the
//!    definition itself bad?); after that the rest is halved, and while the definition has a
//!    known offender one more member is tried alone beside the halves.
//! 3. A member rejected alone is an offender: from then on it gets calls of its own, charged to
//!    its tenant. Two offenders of one definition make the definition the offender: its series
//!    are answered with the rejection without a call, and one of them (not a known offender) is
//!    tried alone once per refresh interval; when that probe passes, the definition is batched
//!    again.
//!
//! So one offender among n costs O(log n) calls, a definition rejected whatever the selector
//! costs a handful of calls and then one per refresh interval, and a rejection no member causes
//! ([`Blame::Request`]: clock skew, a proxy's page) isolates nobody. What is learned is kept per
//! definition (an edited definition starts afresh), per label set where labels are the cause, and
//! forgotten after [`GOOD_CALLS_TO_FORGET`] good calls alone or [`MEMORY`], so batching returns
//! to what it was once a fault has passed.
//!
//! [`Blame::Members`]: crate::source::Blame::Members
//! [`Blame::Request`]: crate::source::Blame::Request

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::definition::Definition;
use crate::series::{Labels, Series, Suspect};

/// How long anything learned is kept.
pub(crate) const MEMORY: Duration = Duration::from_secs(15 * 60);
/// Good calls alone after which a series is batched again.
pub(crate) const GOOD_CALLS_TO_FORGET: u32 = 3;
/// Offending label sets remembered per definition; the oldest is forgotten past it.
const MAX_OFFENDERS: usize = 1024;

/// How a due series is read this cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Batched with everyone else.
    Shared,
    /// Only with the other members of its suspect group.
    Group(Suspect),
    /// In a call of its own: a known offender.
    Offender,
    /// In a call of its own: the once-per-interval try of a definition rejected as a whole.
    Probe,
    /// Answered with the rejection, without a call: its definition is rejected whatever the
    /// selector.
    Rejected,
}

impl Route {
    /// Whether the route gives the series a call of its own.
    pub(crate) fn alone(self) -> bool {
        matches!(self, Route::Offender | Route::Probe)
    }
}

/// What to do with a member of a rejected call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Try again at once, with the other members of this group only.
    Retry(Suspect),
    /// Answer with the rejection. `whole`: the definition is rejected whatever the selector.
    Reject {
        /// The definition itself is the offender.
        whole: bool,
    },
}

#[derive(Debug)]
struct Offender {
    since: Instant,
    good_calls: u32,
}

#[derive(Debug)]
struct Whole {
    since: Instant,
    last_probe: Option<Instant>,
}

#[derive(Debug)]
struct Learned {
    /// Keeps the allocation (so the address key is not reused) and tells an edited definition
    /// apart.
    definition: Weak<Definition>,
    offenders: HashMap<Labels, Offender>,
    whole: Option<Whole>,
    /// When a probe last passed: offenders found before it do not count towards blaming the
    /// definition again (they are label values that are bad, not the definition).
    refuted: Option<Instant>,
}

impl Learned {
    fn new(definition: &Arc<Definition>) -> Self {
        Self {
            definition: Arc::downgrade(definition),
            offenders: HashMap::new(),
            whole: None,
            refuted: None,
        }
    }

    fn forget_old(&mut self, now: Instant) {
        self.offenders
            .retain(|_, offender| now.saturating_duration_since(offender.since) < MEMORY);
        if self
            .whole
            .as_ref()
            .is_some_and(|whole| now.saturating_duration_since(whole.since) >= MEMORY)
        {
            self.whole = None;
        }
    }

    fn is_empty(&self) -> bool {
        self.offenders.is_empty() && self.whole.is_none()
    }
}

/// What one lane has learned, by definition.
#[derive(Debug, Default)]
pub(crate) struct Isolation {
    /// By the definition's address, which its `Weak` keeps from being reused.
    learned: Mutex<HashMap<usize, Learned>>,
    groups: AtomicU64,
}

fn address(definition: &Arc<Definition>) -> usize {
    Arc::as_ptr(definition) as usize
}

impl Isolation {
    fn learned(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Learned>> {
        self.learned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn group(&self, probed: bool, now: Instant) -> Suspect {
        Suspect {
            group: self.groups.fetch_add(1, Ordering::Relaxed),
            probed,
            since: now,
        }
    }

    /// Forget what is old or belongs to definitions that are gone. Called once a cycle.
    pub(crate) fn tidy(&self, now: Instant) {
        self.learned().retain(|_, learned| {
            learned.forget_old(now);
            learned.definition.strong_count() > 0 && !learned.is_empty()
        });
    }

    /// How `series` is read this cycle (`suspect` is its state's; an expired one is cleared).
    pub(crate) fn route(
        &self,
        series: &Series,
        suspect: &mut Option<Box<Suspect>>,
        now: Instant,
    ) -> Route {
        if suspect
            .as_deref()
            .is_some_and(|s| now.saturating_duration_since(s.since) >= MEMORY)
        {
            *suspect = None;
        }
        let mut learned = self.learned();
        if let Some(entry) = learned.get_mut(&address(&series.definition))
            && entry
                .definition
                .upgrade()
                .is_some_and(|d| Arc::ptr_eq(&d, &series.definition))
        {
            let offender = entry.offenders.contains_key(&series.labels);
            if let Some(whole) = &mut entry.whole {
                let interval = series.definition.refresh_interval;
                let probe_due = whole
                    .last_probe
                    .is_none_or(|at| now.saturating_duration_since(at) >= interval);
                // A known offender would only confirm what is known: the probe is another series.
                if probe_due && !offender {
                    whole.last_probe = Some(now);
                    return Route::Probe;
                }
                return Route::Rejected;
            }
            if offender {
                return Route::Offender;
            }
        }
        drop(learned);
        match suspect {
            Some(suspect) => Route::Group(**suspect),
            None => Route::Shared,
        }
    }

    /// A call of `route` with these members succeeded.
    pub(crate) fn passed(&self, route: Route, members: &[Arc<Series>]) {
        let [series] = members else {
            return;
        };
        let mut learned = self.learned();
        let Some(entry) = learned.get_mut(&address(&series.definition)) else {
            return;
        };
        match route {
            Route::Probe => {
                tracing::info!(
                    metric = %series.definition.spec.name,
                    "a query of this metric was accepted again: its series are batched again"
                );
                entry.whole = None;
                entry.refuted = Some(Instant::now());
            }
            Route::Offender => {
                let forget = entry.offenders.get_mut(&series.labels).is_some_and(|o| {
                    o.good_calls += 1;
                    o.good_calls >= GOOD_CALLS_TO_FORGET
                });
                if forget {
                    entry.offenders.remove(&series.labels);
                }
            }
            _ => {}
        }
    }

    /// A call of `route` with these members was rejected, and the backend blames its members:
    /// what becomes of each member.
    pub(crate) fn rejected(
        &self,
        route: Route,
        members: &[Arc<Series>],
        now: Instant,
    ) -> Vec<Verdict> {
        if let [series] = members {
            return vec![Verdict::Reject {
                whole: self.learn_offender(route, series, now),
            }];
        }
        // Members of several definitions: split by definition, in two halves of about equal
        // size, keeping each definition's members together.
        let mut by_definition: Vec<(usize, Vec<usize>)> = Vec::new();
        for (index, series) in members.iter().enumerate() {
            let key = address(&series.definition);
            match by_definition.iter_mut().find(|(k, _)| *k == key) {
                Some((_, indexes)) => indexes.push(index),
                None => by_definition.push((key, vec![index])),
            }
        }
        let mut verdicts = vec![Verdict::Reject { whole: false }; members.len()];
        if by_definition.len() > 1 {
            by_definition.sort_by_key(|(_, indexes)| std::cmp::Reverse(indexes.len()));
            let (left, right) = (self.group(false, now), self.group(false, now));
            let (mut left_size, mut right_size) = (0, 0);
            for (_, indexes) in by_definition {
                let (group, size) = if left_size <= right_size {
                    (left, &mut left_size)
                } else {
                    (right, &mut right_size)
                };
                *size += indexes.len();
                for index in indexes {
                    verdicts[index] = Verdict::Retry(group);
                }
            }
            return verdicts;
        }
        let definition = &members[0].definition;
        let (whole, known_offender) = {
            let learned = self.learned();
            match learned.get(&address(definition)) {
                Some(entry) => (entry.whole.is_some(), !entry.offenders.is_empty()),
                None => (false, false),
            }
        };
        if whole {
            // Found to be the offender meanwhile: its members are answered, not searched.
            return vec![Verdict::Reject { whole: true }; members.len()];
        }
        let probed = matches!(route, Route::Group(suspect) if suspect.probed);
        let alone = !probed || known_offender;
        let rest = if alone { 1 } else { 0 };
        if alone {
            verdicts[0] = Verdict::Retry(self.group(true, now));
        }
        let remaining = members.len() - rest;
        if !probed || remaining < 2 {
            let group = self.group(true, now);
            for verdict in &mut verdicts[rest..] {
                *verdict = Verdict::Retry(group);
            }
        } else {
            let (left, right) = (self.group(true, now), self.group(true, now));
            let half = rest + remaining / 2;
            for (index, verdict) in verdicts.iter_mut().enumerate().skip(rest) {
                *verdict = Verdict::Retry(if index < half { left } else { right });
            }
        }
        verdicts
    }

    /// `series` was rejected in a call of its own: remember it as an offender. True if its
    /// definition is (now, or already) the offender itself.
    fn learn_offender(&self, route: Route, series: &Arc<Series>, now: Instant) -> bool {
        let mut learned = self.learned();
        let key = address(&series.definition);
        let entry = learned
            .entry(key)
            .or_insert_with(|| Learned::new(&series.definition));
        if !entry
            .definition
            .upgrade()
            .is_some_and(|d| Arc::ptr_eq(&d, &series.definition))
        {
            *entry = Learned::new(&series.definition);
        }
        if route == Route::Probe || entry.whole.is_some() {
            return true;
        }
        if entry.offenders.len() >= MAX_OFFENDERS
            && let Some(oldest) = entry
                .offenders
                .iter()
                .min_by_key(|(_, offender)| offender.since)
                .map(|(labels, _)| labels.clone())
        {
            entry.offenders.remove(&oldest);
        }
        let known = entry
            .offenders
            .insert(
                series.labels.clone(),
                Offender {
                    since: now,
                    good_calls: 0,
                },
            )
            .is_some();
        if !known {
            tracing::warn!(
                metric = %series.definition.spec.name,
                labels = ?series.labels,
                "the backend rejects the calls this series is in: it gets calls of its own"
            );
        }
        let since_refuted = entry
            .offenders
            .values()
            .filter(|o| entry.refuted.is_none_or(|at| o.since > at))
            .count();
        if since_refuted >= 2 {
            tracing::warn!(
                metric = %series.definition.spec.name,
                "the backend rejects this metric's queries whatever the selector: its series are answered with the rejection, and one is tried again each refresh interval"
            );
            entry.whole = Some(Whole {
                since: now,
                last_probe: Some(now),
            });
            return true;
        }
        false
    }

    /// Definitions with something learned, and definitions rejected as a whole (for tests and
    /// metrics).
    pub(crate) fn counts(&self) -> (usize, usize) {
        let learned = self.learned();
        let whole = learned.values().filter(|l| l.whole.is_some()).count();
        (learned.len(), whole)
    }
}
