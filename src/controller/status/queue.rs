//! The queue of object updates from the watcher to the status writer, bounded by coalescing.
//!
//! It holds at most one update per object: a newer update for an object replaces the one still
//! waiting, in its place in the queue. So it never holds more entries than there are objects
//! the watcher has told about (which the watcher keeps in memory anyway), however many updates
//! they produce while the writer is busy with a paced flush, and nothing is ever dropped that
//! matters: the writer only acts on an object's newest state. Replacing is exact for the
//! writer's bookkeeping: an `Object` after a `Deleted` of the same key is a recreated object
//! (another uid, which the writer starts afresh), a `Deleted` after an `Object` removes it, and
//! an `Object` after an `Object` is the newest verdict. What is lost are only intermediate
//! verdicts nobody would see: the writer coalesces writes per object to the newest state too.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;

use super::ObjectUpdate;
use crate::controller::ObjectKey;

#[derive(Debug, Default)]
struct Pending {
    /// Keys in the order their first waiting update arrived.
    order: VecDeque<ObjectKey>,
    /// The newest waiting update of each key in `order`.
    updates: HashMap<ObjectKey, ObjectUpdate>,
}

/// Updates waiting for the status writer, at most one per object.
#[derive(Debug, Default)]
pub(super) struct ObjectQueue {
    pending: Mutex<Pending>,
    ready: Notify,
}

impl ObjectQueue {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Plain data: a panic elsewhere while holding the lock leaves it consistent.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue `update`, replacing the object's update still waiting, if any. Never blocks.
    pub(super) fn push(&self, update: ObjectUpdate) {
        let key = update.key().clone();
        {
            let mut pending = self.pending();
            if pending.updates.insert(key.clone(), update).is_none() {
                pending.order.push_back(key);
            }
        }
        self.ready.notify_one();
    }

    /// Every waiting update, oldest object first, leaving the queue empty.
    pub(super) fn take_all(&self) -> Vec<ObjectUpdate> {
        let mut pending = self.pending();
        let Pending { order, updates } = &mut *pending;
        order
            .drain(..)
            .filter_map(|key| updates.remove(&key))
            .collect()
    }

    /// The oldest waiting update, if any.
    #[cfg(test)]
    pub(super) fn try_take(&self) -> Option<ObjectUpdate> {
        let mut pending = self.pending();
        let key = pending.order.pop_front()?;
        pending.updates.remove(&key)
    }

    /// How many objects have an update waiting.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.pending().order.len()
    }

    /// Wait until something is queued and take it all. Cancel-safe: updates are taken in the
    /// same poll that returns them, so a dropped wait loses none.
    pub(super) async fn next_batch(&self) -> Vec<ObjectUpdate> {
        loop {
            let batch = self.take_all();
            if !batch.is_empty() {
                return batch;
            }
            // `notify_one` stores a permit when nobody waits, so a push between `take_all`
            // and here is not missed.
            self.ready.notified().await;
        }
    }
}
