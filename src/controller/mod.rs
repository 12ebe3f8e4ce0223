//! Watches `ExternalMetric` objects and serves them as namespaced definitions.
//!
//! A kube-runtime watcher (list, then watch; re-watch from the last resource version; relist when
//! that is too old; exponential back-off on errors) feeds a map of objects. Each object becomes a
//! [`Definition`] with its namespace set, or a rejection with every reason. The valid ones are
//! merged with the definitions file's into the [`DefinitionSet`] the cache reads, so adds, edits
//! and deletes take effect at once. Unchanged objects keep their `Arc<Definition>`, so a re-list
//! or a status write does not make the cache drop and refetch their series.
//!
//! Objects are decoded one by one from dynamic objects: a malformed or hostile object is reported
//! in its own status and never fails the list, nor affects any other metric.

pub mod status;

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::crd::{self, ExternalMetricStatus};
use crate::definition::{Definition, DefinitionSet};
use status::{ObjectUpdate, StatusSender, Verdict};

/// Namespace and name of an `ExternalMetric`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The object's namespace (where HPAs may use it).
    pub namespace: String,
    /// The object's name (the metric's name).
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What is kept of one object: enough to tell whether it changed, and what it became.
#[derive(Debug, Clone)]
struct Entry {
    uid: Option<String>,
    generation: Option<i64>,
    spec: Option<Value>,
    verdict: Verdict,
}

impl Entry {
    fn definition(&self) -> Option<&Arc<Definition>> {
        match &self.verdict {
            Verdict::Valid { definition, .. } => Some(definition),
            _ => None,
        }
    }
}

/// The watched objects and the definitions they produce.
#[derive(Debug)]
pub struct Reconciler {
    file: Arc<DefinitionSet>,
    definitions: Arc<ArcSwap<DefinitionSet>>,
    status: Option<StatusSender>,
    entries: BTreeMap<ObjectKey, Entry>,
    /// Objects of a (re)list in progress, swapped in whole when it completes.
    relist: Option<BTreeMap<ObjectKey, Entry>>,
    synced: bool,
    /// Roles objects may assume (`--external-metric-allowed-role-arns`).
    allowed_roles: Vec<String>,
}

impl Reconciler {
    /// Merge objects with the definitions file's `file` set into `definitions`, telling `status`
    /// about every object whose verdict changed.
    pub fn new(
        file: Arc<DefinitionSet>,
        definitions: Arc<ArcSwap<DefinitionSet>>,
        status: Option<StatusSender>,
    ) -> Self {
        Self {
            file,
            definitions,
            status,
            entries: BTreeMap::new(),
            relist: None,
            synced: false,
            allowed_roles: Vec::new(),
        }
    }

    /// Let objects use these roles (exact ARNs, or prefixes ending in `*`); none by default.
    pub fn with_allowed_roles(mut self, allowed_roles: Vec<String>) -> Self {
        self.allowed_roles = allowed_roles;
        self
    }

    /// Whether a complete list has been applied at least once.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Apply one watcher event. Returns true when this event completed a (re)list.
    pub fn apply(&mut self, event: Event<DynamicObject>) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(object) => {
                if let Some((key, entry)) = self.entry_for(&object) {
                    self.relist
                        .get_or_insert_with(BTreeMap::new)
                        .insert(key, entry);
                }
                false
            }
            Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                let gone: Vec<ObjectKey> = self
                    .entries
                    .keys()
                    .filter(|key| !listed.contains_key(*key))
                    .cloned()
                    .collect();
                self.entries = listed;
                for key in gone {
                    self.send(ObjectUpdate::Deleted { key });
                }
                self.publish();
                self.synced = true;
                tracing::info!(
                    objects = self.entries.len(),
                    served = self
                        .entries
                        .values()
                        .filter(|e| e.definition().is_some())
                        .count(),
                    "ExternalMetric objects listed"
                );
                true
            }
            Event::Apply(object) => {
                if let Some((key, entry)) = self.entry_for(&object) {
                    let changed = self
                        .entries
                        .get(&key)
                        .is_none_or(|old| !same_definition(old, &entry));
                    if changed {
                        tracing::info!(object = %key, verdict = entry.verdict.describe(), "ExternalMetric applied");
                        self.entries.insert(key, entry);
                        self.publish();
                    }
                }
                false
            }
            Event::Delete(object) => {
                let key = key_of(&object);
                if self.entries.remove(&key).is_some() {
                    tracing::info!(object = %key, "ExternalMetric deleted");
                    self.send(ObjectUpdate::Deleted { key });
                    self.publish();
                }
                false
            }
        }
    }

    /// Turn an object into an entry, reusing the previous entry (and its `Arc<Definition>`)
    /// when nothing that matters changed, and telling the status writer when something did.
    fn entry_for(&mut self, object: &DynamicObject) -> Option<(ObjectKey, Entry)> {
        let key = key_of(object);
        if key.namespace.is_empty() || key.name.is_empty() {
            return None;
        }
        let uid = object.metadata.uid.clone();
        let generation = object.metadata.generation;
        let spec = object.data.get("spec").cloned();
        if let Some(old) = self.entries.get(&key)
            && old.uid == uid
            && old.generation == generation
            && old.spec == spec
        {
            return Some((key, old.clone()));
        }
        let converted = crd::to_definition(
            &key.namespace,
            &key.name,
            spec.as_ref(),
            &self.allowed_roles,
        );
        let verdict = match converted.definition {
            Ok(definition) if self.file.get(&definition.spec.name).is_some() => Verdict::Conflict,
            Ok(definition) => Verdict::Valid {
                definition,
                note: converted.note,
            },
            Err(invalid) => Verdict::Invalid {
                problems: invalid.problems,
            },
        };
        let entry = Entry {
            uid: uid.clone(),
            generation,
            spec,
            verdict: verdict.clone(),
        };
        let existing_status = object
            .data
            .get("status")
            .and_then(|status| serde_json::from_value::<ExternalMetricStatus>(status.clone()).ok())
            .map(Box::new);
        self.send(ObjectUpdate::Object {
            key: key.clone(),
            uid,
            generation,
            verdict,
            existing_status,
        });
        Some((key, entry))
    }

    /// Store the merged definitions where the cache reads them.
    fn publish(&self) {
        let namespaced = self
            .entries
            .values()
            .filter_map(|e| e.definition().cloned());
        self.definitions
            .store(Arc::new(self.file.with_namespaced(namespaced)));
    }

    fn send(&self, update: ObjectUpdate) {
        if let Some(status) = &self.status {
            status.object(update);
        }
    }
}

fn same_definition(old: &Entry, new: &Entry) -> bool {
    match (old.definition(), new.definition()) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => {
            old.uid == new.uid && old.generation == new.generation && old.spec == new.spec
        }
        _ => false,
    }
}

fn key_of(object: &DynamicObject) -> ObjectKey {
    ObjectKey {
        namespace: object.namespace().unwrap_or_default(),
        name: object.name_any(),
    }
}

/// Watch `ExternalMetric`s in every namespace until `stop`, keeping `reconciler`'s definitions
/// current. `on_synced` runs once, after the first complete list.
pub async fn run(
    client: Client,
    mut reconciler: Reconciler,
    on_synced: impl FnOnce() + Send,
    stop: CancellationToken,
) {
    let api: Api<DynamicObject> = Api::all_with(client, &crd::api_resource());
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    futures_util::pin_mut!(stream);
    let mut on_synced = Some(on_synced);
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            next = stream.next() => next,
        };
        match next {
            Some(Ok(event)) => {
                if reconciler.apply(event)
                    && let Some(callback) = on_synced.take()
                {
                    callback();
                }
            }
            Some(Err(error)) => tracing::warn!(
                "watching ExternalMetric objects failed (retrying with back-off): {}",
                explain(&error)
            ),
            None => return,
        }
    }
}

/// A watch error with the likely fix for the two that need an administrator.
fn explain(error: &watcher::Error) -> String {
    let source = match error {
        watcher::Error::InitialListFailed(source)
        | watcher::Error::WatchStartFailed(source)
        | watcher::Error::WatchFailed(source) => Some(source),
        _ => None,
    };
    let hint = match source {
        Some(kube::Error::Api(status)) if status.code == 404 => {
            " (the ExternalMetric CRD is not installed: apply charts/cloudwatch-metrics-adapter/crds/, or run with --watch-external-metrics=false)"
        }
        Some(kube::Error::Api(status)) if status.code == 403 => {
            " (the adapter's ServiceAccount may not list/watch externalmetrics.metrics.aws: check its ClusterRole)"
        }
        _ => "",
    };
    format!("{error}{hint}")
}

#[cfg(test)]
mod tests;
