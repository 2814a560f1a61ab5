//! Caches of what every call reads and almost nothing writes: tenant configs and collectors.
//!
//! An entry is used only while the store's cache epoch is the one it was loaded under (the
//! epoch is read *before* loading, so a change that commits during the load already makes the
//! entry stale) and for at most `ttl`. The epoch moves on every change of a config or a
//! collector on any replica: PostgreSQL notifies every replica at commit, SQLite bumps a
//! counter in the database (see [`crate::store::ConfigStore::cache_epoch`]). While a replica
//! cannot tell (its listener is down) nothing is served from the cache. Writes of this replica
//! move the epoch before they return, so a replica always reads its own writes.
//!
//! The version check of UpdateConfig and every rule enforced in the database are unaffected:
//! the cache only saves reads on the call path.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::domain::GwError;
use crate::metrics::GatewayMetrics;
use crate::store::ConfigStore;

/// Entries kept at most; past it the cache starts over (bounded by the data, not by requests:
/// only values found in the store are cached).
const MAX_ENTRIES: usize = 100_000;

struct Entry<V> {
    value: V,
    epoch: u64,
    at: Instant,
}

/// A cache of `V` by `K` over the store's change epoch.
pub(crate) struct Cache<K, V> {
    name: &'static str,
    entries: Mutex<HashMap<K, Entry<V>>>,
    ttl: Duration,
    store: Arc<dyn ConfigStore>,
    metrics: GatewayMetrics,
}

impl<K: Eq + Hash + Clone, V: Clone> Cache<K, V> {
    /// A cache named `name` (the metrics label); a zero `ttl` turns it off.
    pub(crate) fn new(
        name: &'static str,
        ttl: Duration,
        store: Arc<dyn ConfigStore>,
        metrics: GatewayMetrics,
    ) -> Self {
        Self {
            name,
            entries: Mutex::new(HashMap::new()),
            ttl,
            store,
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Entry<V>>> {
        // Every change under the lock is a single insert, remove or clear.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The value of `key`: from the cache if it is still good, else from `load` (and cached
    /// when found).
    pub(crate) async fn get<F, Fut>(&self, key: &K, load: F) -> Result<Option<V>, GwError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, GwError>>,
    {
        if self.ttl.is_zero() {
            self.metrics.cache_lookup(self.name, "off");
            return load().await;
        }
        let epoch = self.store.cache_epoch().await?;
        if let Some(e) = epoch
            && let Some(hit) = self
                .lock()
                .get(key)
                .filter(|x| x.epoch == e && x.at.elapsed() < self.ttl)
                .map(|x| x.value.clone())
        {
            self.metrics.cache_lookup(self.name, "hit");
            return Ok(Some(hit));
        }
        self.metrics
            .cache_lookup(self.name, if epoch.is_some() { "miss" } else { "off" });
        let value = load().await?;
        match (epoch, &value) {
            (Some(epoch), Some(v)) => {
                let mut entries = self.lock();
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
                entries.insert(
                    key.clone(),
                    Entry {
                        value: v.clone(),
                        epoch,
                        at: Instant::now(),
                    },
                );
            }
            _ => {
                self.lock().remove(key);
            }
        }
        Ok(value)
    }
}
