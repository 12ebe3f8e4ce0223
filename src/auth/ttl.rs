//! A small map whose entries expire, on tokio's clock (so tests can pause time).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Entries live for the TTL given when inserted; the map never holds more than `capacity`.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// An empty cache holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The value, if present and not expired.
    pub fn get(&self, key: &K) -> Option<V> {
        let now = Instant::now();
        let mut entries = self.lock();
        match entries.get(key) {
            Some((value, expires)) if *expires > now => Some(value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keep `value` for `ttl` (a zero TTL keeps nothing).
    pub fn insert(&self, key: K, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= self.capacity {
                // Still full of live entries: forget the one closest to expiry.
                if let Some(victim) = entries
                    .iter()
                    .min_by_key(|(_, (_, expires))| *expires)
                    .map(|(key, _)| key.clone())
                {
                    entries.remove(&victim);
                }
            }
        }
        entries.insert(key, (value, now + ttl));
    }

    /// How many entries are held (expired ones included until touched).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (V, Instant)>> {
        // A panic while holding the lock cannot leave the map inconsistent: keep using it.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_own_ttl() {
        let cache = TtlCache::new(10);
        cache.insert("allowed", 1, Duration::from_secs(10));
        cache.insert("denied", 2, Duration::from_secs(3));
        cache.insert("never", 3, Duration::ZERO);
        assert_eq!(cache.get(&"never"), None);
        tokio::time::advance(Duration::from_millis(2999)).await;
        assert_eq!(cache.get(&"denied"), Some(2));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(cache.get(&"denied"), None);
        assert_eq!(cache.get(&"allowed"), Some(1));
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(cache.get(&"allowed"), None);
        assert!(cache.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_is_a_hard_bound() {
        let cache = TtlCache::new(3);
        for key in 0..3 {
            cache.insert(key, key, Duration::from_secs(10 + key));
        }
        cache.insert(99, 99, Duration::from_secs(60));
        assert_eq!(cache.len(), 3);
        // The entry closest to expiry made room.
        assert_eq!(cache.get(&0), None);
        assert_eq!(cache.get(&99), Some(99));
        // Expired entries go first.
        tokio::time::advance(Duration::from_secs(12)).await;
        cache.insert(100, 100, Duration::from_secs(60));
        assert_eq!(cache.len(), 2);
    }
}
