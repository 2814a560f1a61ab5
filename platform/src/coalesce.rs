//! Coalescing: concurrent requests that share a key (one tenant's Acquires, or any Releases)
//! are gathered and run as one statement, so a busy service spends one round trip, one plan and
//! one commit on many requests instead of one each.
//!
//! There is no timer. A request joins its key's queue; if fewer than `in_flight` batches of that
//! key are running, it starts one (as a spawned task, so a cancelled caller cannot strand the
//! others). A running batch, when its statement returns, takes whatever queued up meanwhile. A
//! lone request therefore runs at once; under load, batches grow to what arrived during one
//! statement, up to `max_batch`. Two requests with the same twin key (request id, lease id)
//! never share a batch: the later one waits for the next, so a batch never races itself.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;

/// How requests are gathered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most requests in one statement; 1 turns coalescing off.
    pub max_batch: usize,
    /// Batches of one key running at once.
    pub in_flight: usize,
}

/// The coalescing settings of a service (`<SERVICE>__COALESCE__*`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoalesceSettings {
    /// Most requests in one statement (or transaction); 1 turns coalescing off.
    pub max_batch: u32,
    /// Batches of one key running at once.
    pub in_flight: u32,
}

impl Default for CoalesceSettings {
    fn default() -> Self {
        Self {
            max_batch: 32,
            in_flight: 2,
        }
    }
}

impl CoalesceSettings {
    /// The limits a batcher applies.
    pub fn limits(&self) -> Limits {
        Limits {
            max_batch: self.max_batch as usize,
            in_flight: self.in_flight as usize,
        }
    }

    /// Checks the ranges; the error names the setting.
    ///
    /// # Errors
    /// When a value is out of range.
    pub fn check(&self) -> anyhow::Result<()> {
        if !(1..=1_000).contains(&self.max_batch) {
            anyhow::bail!("coalesce.max_batch: must be 1-1000 (1 turns coalescing off)");
        }
        if !(1..=64).contains(&self.in_flight) {
            anyhow::bail!("coalesce.in_flight: must be 1-64");
        }
        Ok(())
    }
}

struct Queue<J, R> {
    pending: VecDeque<(J, oneshot::Sender<R>)>,
    running: usize,
}

/// Gathers jobs `J` by key `K`; each job gets its own result `R`.
pub struct Batcher<K, J, R> {
    queues: Mutex<HashMap<K, Queue<J, R>>>,
    limits: Limits,
    twin: fn(&J) -> &str,
    /// Batches run, and the jobs they carried (jobs / statements = the mean batch).
    pub statements: Counter,
    pub jobs: Counter,
}

impl<K, J, R> Batcher<K, J, R>
where
    K: Eq + Hash + Clone + Send + 'static,
    J: Send + 'static,
    R: Send + 'static,
{
    /// A batcher; `twin` names what may not appear twice in one batch.
    pub fn new(limits: Limits, twin: fn(&J) -> &str) -> Self {
        Self {
            queues: Mutex::new(HashMap::new()),
            limits,
            twin,
            statements: Counter::default(),
            jobs: Counter::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Queue<J, R>>> {
        // The map is consistent after every statement that touches it; a panic elsewhere
        // while holding the lock cannot leave it half-changed.
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers the batch counters as `<name>_statements` (batches run) and `<name>_requests`
    /// (jobs they carried; requests / statements is the mean batch).
    pub fn register(
        &self,
        registry: &mut prometheus_client::registry::Registry,
        name: &str,
        what: &str,
    ) {
        registry.register(
            format!("{name}_statements"),
            format!("Statements (or transactions) that served coalesced {what}"),
            self.statements.clone(),
        );
        registry.register(
            format!("{name}_requests"),
            format!("{what} served by coalesced statements (or transactions)"),
            self.jobs.clone(),
        );
    }

    /// Jobs of `key` waiting for a batch (not counting those running).
    pub fn queued(&self, key: &K) -> usize {
        self.lock().get(key).map_or(0, |q| q.pending.len())
    }

    /// Queues `job` under `key` and waits for its result. `run` executes one batch and returns
    /// one result per job, in order; it is called only if this request starts a batch task.
    /// `None` means the batch task ended without answering (it does not, short of a panic).
    pub async fn submit<F, Fut>(self: &Arc<Self>, key: K, job: J, run: F) -> Option<R>
    where
        F: Fn(K, Vec<J>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queues = self.lock();
            let q = queues.entry(key.clone()).or_insert_with(|| Queue {
                pending: VecDeque::new(),
                running: 0,
            });
            q.pending.push_back((job, tx));
            let start = q.running < self.limits.in_flight.max(1);
            if start {
                q.running += 1;
            }
            start
        };
        if start {
            tokio::spawn(Arc::clone(self).drain(key, run));
        }
        rx.await.ok()
    }

    /// Runs batches of `key` until its queue is empty.
    async fn drain<F, Fut>(self: Arc<Self>, key: K, run: F)
    where
        F: Fn(K, Vec<J>) -> Fut,
        Fut: Future<Output = Vec<R>>,
    {
        // Gives the running slot back if this task ends without finding the queue empty (a
        // panic in `run`): the normal end gives it back inside `take`, under the same lock that
        // saw the queue empty, so a request queued a moment later always starts a new task.
        let mut slot = Slot {
            batcher: &self,
            key: key.clone(),
            held: true,
        };
        while let Some(batch) = self.take(&key, &mut slot.held) {
            let (jobs, replies): (Vec<J>, Vec<oneshot::Sender<R>>) = batch.into_iter().unzip();
            self.statements.inc();
            self.jobs.inc_by(jobs.len() as u64);
            let results = run(key.clone(), jobs).await;
            for (reply, r) in replies.into_iter().zip(results) {
                // The caller may have gone away; its result is not needed then.
                let _ = reply.send(r);
            }
        }
    }

    /// The next batch of `key`: queued jobs in arrival order, at most `max_batch`, no two with
    /// the same twin key. `None` when nothing is queued; the caller's running slot is then given
    /// back (and `held` cleared) before the lock is released.
    fn take(&self, key: &K, held: &mut bool) -> Option<Vec<(J, oneshot::Sender<R>)>> {
        let mut queues = self.lock();
        let Some(q) = queues.get_mut(key) else {
            *held = false;
            return None;
        };
        if q.pending.is_empty() {
            q.running = q.running.saturating_sub(1);
            *held = false;
            if q.running == 0 {
                queues.remove(key);
            }
            return None;
        }
        let mut batch: Vec<(J, oneshot::Sender<R>)> = Vec::new();
        let mut later = VecDeque::new();
        while let Some(item) = q.pending.pop_front() {
            if batch.len() >= self.limits.max_batch.max(1) {
                q.pending.push_front(item);
                break;
            }
            let twin = (self.twin)(&item.0);
            if batch.iter().any(|(j, _)| (self.twin)(j) == twin) {
                later.push_back(item);
            } else {
                batch.push(item);
            }
        }
        while let Some(item) = later.pop_back() {
            q.pending.push_front(item);
        }
        (!batch.is_empty()).then_some(batch)
    }
}

/// A running batch task's slot in its key's queue, while `held`.
struct Slot<'a, K: Eq + Hash, J, R> {
    batcher: &'a Batcher<K, J, R>,
    key: K,
    held: bool,
}

impl<K: Eq + Hash, J, R> Drop for Slot<'_, K, J, R> {
    /// Only reached with `held` when the task is unwinding: the slot is given back, and if no
    /// other task is running for the key, what is queued is dropped, so its callers get `None`
    /// (an error) instead of waiting for a task that will not come.
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let mut queues = self
            .batcher
            .queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(q) = queues.get_mut(&self.key) {
            q.running = q.running.saturating_sub(1);
            if q.running == 0 {
                queues.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Barrier;

    fn name(j: &(String, usize)) -> &str {
        &j.0
    }

    /// 64 concurrent submissions with 8 distinct twin keys: every job answered once, with its
    /// own result; no batch ever holds twins or more than max_batch; never more than in_flight
    /// batches at once; and the queue map is empty afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn batches_answer_every_job_and_keep_twins_apart() {
        let limits = Limits {
            max_batch: 5,
            in_flight: 2,
        };
        let b: Arc<Batcher<&'static str, (String, usize), usize>> =
            Arc::new(Batcher::new(limits, name));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let batches = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(64));
        let mut tasks = Vec::new();
        for i in 0..64 {
            let (b, barrier) = (b.clone(), barrier.clone());
            let (running, peak, batches) = (running.clone(), peak.clone(), batches.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let run = move |_k: &'static str, jobs: Vec<(String, usize)>| {
                    let (running, peak, batches) = (running.clone(), peak.clone(), batches.clone());
                    async move {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        batches.fetch_add(1, Ordering::SeqCst);
                        assert!(jobs.len() <= 5, "batch of {}", jobs.len());
                        let mut names: Vec<&str> = jobs.iter().map(|j| j.0.as_str()).collect();
                        names.sort_unstable();
                        names.dedup();
                        assert_eq!(names.len(), jobs.len(), "twins in one batch: {jobs:?}");
                        tokio::task::yield_now().await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        jobs.iter().map(|j| j.1 * 10).collect()
                    }
                };
                b.submit("t1", (format!("r{}", i % 8), i), run).await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap(), Some(i * 10));
        }
        assert!(peak.load(Ordering::SeqCst) <= 2);
        // 64 jobs, at most 5 per batch: at least 13 batches.
        assert!(batches.load(Ordering::SeqCst) >= 13);
        // The last batch task answers its jobs before it looks at the queue once more and
        // removes it: let it run that last step (yields, no timer).
        for _ in 0..10_000 {
            if b.lock().is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(b.lock().is_empty(), "queues left behind");
    }
}
