//! The caches of TokenReview and SubjectAccessReview answers: a moka cache (bounded, each entry
//! with its own time to live, so allowed and denied answers can have different TTLs) that also
//! makes concurrent identical reviews wait for one call instead of each asking the cluster.
//!
//! moka is an implementation detail of this file: the rest of `auth` sees [`ReviewCache`].
//! Entries also carry their deadline on tokio's clock, which is what the rest of the process
//! (and paused-time tests) measure time with; moka's own expiry, on the same TTL, is what frees
//! the memory.

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use moka::Expiry;
use moka::future::Cache;
use moka::ops::compute::Op;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

/// How a lookup was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// From the cache.
    Hit,
    /// By a review this caller made.
    Miss,
    /// By an identical review another caller was already making.
    Shared,
}

impl Lookup {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Shared => "shared",
        }
    }
}

#[derive(Debug, Clone)]
struct Entry<V> {
    value: V,
    ttl: Duration,
    expires: Instant,
}

/// Each entry lives for the TTL it was stored with.
struct EntryTtl;

impl<K, V> Expiry<K, Entry<V>> for EntryTtl {
    fn expire_after_create(
        &self,
        _key: &K,
        entry: &Entry<V>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// Review answers by key, at most `capacity` of them.
pub struct ReviewCache<K, V> {
    entries: Cache<K, Entry<V>>,
    /// Callers waiting for a review now (their own or a shared one).
    waiting: Gauge,
}

/// One caller waiting for a review, counted in the gauge while it lives.
struct Waiting<'a>(&'a Gauge);

impl<'a> Waiting<'a> {
    fn start(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Waiting(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl<K, V> std::fmt::Debug for ReviewCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReviewCache")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl<K, V> ReviewCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// An empty cache holding at most about `capacity` answers (moka evicts the least useful);
    /// `waiting` counts the callers waiting for a review at any moment.
    pub fn new(capacity: u64, waiting: Gauge) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(capacity.max(1))
                .expire_after(EntryTtl)
                .build(),
            waiting,
        }
    }

    /// The answer for `key`: cached, or the one `review` gives, kept for the TTL it comes with
    /// (zero keeps nothing). Callers asking for the same key while a review is under way wait
    /// for that one. A failed review is not kept: every waiter gets its error, the next caller
    /// asks again.
    pub async fn get_or_review<E, F>(&self, key: &K, review: F) -> (Result<V, Arc<E>>, Lookup)
    where
        E: Send + Sync + 'static,
        F: Future<Output = Result<(V, Duration), E>>,
    {
        if let Some(entry) = self.entries.get(key).await {
            if entry.expires > Instant::now() {
                return (Ok(entry.value), Lookup::Hit);
            }
            self.forget_expired(key).await;
        }
        let _waiting = Waiting::start(&self.waiting);
        let reviewed = AtomicBool::new(false);
        let answer = self
            .entries
            .try_get_with_by_ref(key, async {
                reviewed.store(true, Ordering::Relaxed);
                let (value, ttl) = review.await?;
                Ok(Entry {
                    value,
                    ttl,
                    expires: Instant::now() + ttl,
                })
            })
            .await;
        let lookup = if reviewed.load(Ordering::Relaxed) {
            Lookup::Miss
        } else {
            Lookup::Shared
        };
        // A zero TTL is shared with the callers that waited, and then gone.
        (answer.map(|entry| entry.value), lookup)
    }

    /// Remove `key` if its deadline has passed on tokio's clock, and only then: an identical
    /// review may have stored a fresh answer meanwhile.
    async fn forget_expired(&self, key: &K) {
        let now = Instant::now();
        self.entries
            .entry_by_ref(key)
            .and_compute_with(|entry| {
                let expired = entry.is_some_and(|entry| entry.value().expires <= now);
                std::future::ready(if expired { Op::Remove } else { Op::Nop })
            })
            .await;
    }

    /// How many answers are held (moka's estimate; pending maintenance is run first).
    pub async fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks().await;
        self.entries.entry_count()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::AtomicUsize;

    async fn answer(
        cache: &ReviewCache<&'static str, u32>,
        key: &'static str,
        value: u32,
        ttl: Duration,
        calls: &AtomicUsize,
    ) -> (Result<u32, Arc<String>>, Lookup) {
        cache
            .get_or_review(&key, async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>((value, ttl))
            })
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_own_ttl() {
        let cache = ReviewCache::new(10, Gauge::default());
        let calls = AtomicUsize::new(0);
        let ten = Duration::from_secs(10);
        let three = Duration::from_secs(3);
        assert_eq!(
            answer(&cache, "allowed", 1, ten, &calls).await,
            (Ok(1), Lookup::Miss)
        );
        assert_eq!(
            answer(&cache, "denied", 2, three, &calls).await,
            (Ok(2), Lookup::Miss)
        );
        tokio::time::advance(Duration::from_millis(2999)).await;
        assert_eq!(
            answer(&cache, "denied", 20, three, &calls).await,
            (Ok(2), Lookup::Hit)
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            answer(&cache, "denied", 20, three, &calls).await,
            (Ok(20), Lookup::Miss)
        );
        assert_eq!(
            answer(&cache, "allowed", 10, ten, &calls).await,
            (Ok(1), Lookup::Hit)
        );
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(
            answer(&cache, "allowed", 10, ten, &calls).await,
            (Ok(10), Lookup::Miss)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_ttl_keeps_nothing_and_errors_are_not_kept() {
        let cache = ReviewCache::new(10, Gauge::default());
        let calls = AtomicUsize::new(0);
        for _ in 0..2 {
            assert_eq!(
                answer(&cache, "never", 3, Duration::ZERO, &calls).await,
                (Ok(3), Lookup::Miss)
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        for _ in 0..2 {
            let (result, lookup) = cache
                .get_or_review(&"down", async { Err::<(u32, Duration), _>("unreachable") })
                .await;
            assert_eq!(*result.unwrap_err(), "unreachable");
            assert_eq!(lookup, Lookup::Miss);
        }
        assert_eq!(
            answer(&cache, "down", 4, Duration::from_secs(1), &calls).await,
            (Ok(4), Lookup::Miss)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_identical_reviews_make_one_call() {
        let waiting = Gauge::default();
        let cache = Arc::new(ReviewCache::<&'static str, u32>::new(10, waiting.clone()));
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let mut waiters = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (cache, calls, mut released) = (cache.clone(), calls.clone(), released.clone());
            waiters.spawn(async move {
                cache
                    .get_or_review(&"same", async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        released.wait_for(|go| *go).await.unwrap();
                        Ok::<_, String>((7, Duration::from_secs(10)))
                    })
                    .await
            });
        }
        // Every caller is inside the cache, waiting, before the one review may answer.
        while waiting.get() < 8 {
            tokio::task::yield_now().await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        release.send(true).unwrap();
        let mut lookups = Vec::new();
        while let Some(done) = waiters.join_next().await {
            let (value, lookup) = done.unwrap();
            assert_eq!(value.unwrap(), 7);
            lookups.push(lookup);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(lookups.iter().filter(|l| **l == Lookup::Miss).count(), 1);
        assert_eq!(lookups.iter().filter(|l| **l == Lookup::Shared).count(), 7);
        assert_eq!(waiting.get(), 0);
    }

    #[tokio::test]
    async fn capacity_bounds_the_cache() {
        let cache = ReviewCache::new(100, Gauge::default());
        let calls = AtomicUsize::new(0);
        for key in 0..1_000u32 {
            let key: &'static str = Box::leak(key.to_string().into_boxed_str());
            answer(&cache, key, 1, Duration::from_secs(60), &calls)
                .await
                .0
                .unwrap();
        }
        let held = cache.entry_count().await;
        assert!(held <= 100, "{held}");
    }
}
