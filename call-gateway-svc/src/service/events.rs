//! Live call events (`WatchCalls`): every change of a call is an event written in the change's
//! own transaction, with a per-tenant id that grows by exactly one per event (see the store).
//!
//! Events are written without their id where rows lock (PostgreSQL); the hub numbers them
//! after the commit ([`CallStore::sequence_events`]): at once for tenants someone here watches,
//! on a sweep every [`EventSettings::sequence_every`] for the rest (the NATS relay, later
//! watchers, events of a replica that went away).
//!
//! One hub per process reads each watched tenant's new events once and hands them to every
//! watcher of that tenant through a bounded broadcast. This process's own commits wake it at
//! once; other replicas' events are found by polling every [`EventSettings::poll`], only while
//! someone watches: one query for events still to number (numbering the watched tenants'),
//! one of the one-row-per-tenant counter table. Polling rather than LISTEN/NOTIFY: a NOTIFY
//! takes a database-wide lock at every commit that sends one, and every listening replica reads
//! each notification in a transaction of its own, so the cost would grow with every call; the
//! poll costs the same whatever the call rate. A watcher first reads what it asked to replay
//! from the table, then follows the hub; because ids are dense, a jump in the live ids means
//! events it has not seen, which it reads from the table before going on. A watcher that falls
//! more than [`EventSettings::buffer`] events behind gets `RESOURCE_EXHAUSTED` and resumes
//! from its last id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::domain::event::CallEvent;
use crate::domain::{GwError, TenantId};
use crate::store::calls::{CallStore, EventFilter};

/// Tuning of live events.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// Events are kept this long (for resuming and for the NATS relay).
    pub retention: chrono::Duration,
    /// Events a watcher may fall behind before its stream ends with `RESOURCE_EXHAUSTED`.
    pub buffer: usize,
    /// How often other replicas' events are looked for while someone watches.
    pub poll: Duration,
    /// How often events nobody here watches are numbered.
    pub sequence_every: Duration,
    /// Watches open at once on this replica.
    pub max_watches: usize,
    /// Watches open at once per key or person on this replica.
    pub max_watches_per_principal: usize,
}

/// What a watcher wants.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    /// Who watches (the principal's key id), for the per-principal cap.
    pub principal: String,
    pub tenant: TenantId,
    pub collector_id: Option<String>,
    pub call_id: Option<String>,
    /// `None`: replay everything retained; `Some(0)`: from the next event; `Some(n)`: after n.
    pub after: Option<u64>,
}

/// Rows read from the table per query.
const PAGE: u32 = 500;

/// The hub; cheap to clone.
#[derive(Clone)]
pub struct Events {
    store: Arc<dyn CallStore>,
    tenants: Arc<Mutex<HashMap<String, Arc<TenantFeed>>>>,
    /// Open watches by principal.
    open: Arc<Mutex<HashMap<String, usize>>>,
    settings: EventSettings,
    stop: CancellationToken,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

struct TenantFeed {
    tx: broadcast::Sender<Arc<CallEvent>>,
    /// The last id broadcast; events above it are read and sent by the next pump.
    cursor: tokio::sync::Mutex<u64>,
}

impl Events {
    /// A hub over `store`.
    pub fn new(store: Arc<dyn CallStore>, settings: EventSettings) -> Self {
        Self {
            store,
            tenants: Arc::default(),
            open: Arc::default(),
            settings,
            stop: CancellationToken::new(),
        }
    }

    /// Runs the hub until `shutdown` (then every watch ends cleanly): wakes, the poll of
    /// watched tenants, the numbering sweep, retention.
    pub async fn run(self, shutdown: CancellationToken) {
        let _ends_watches = self.stop.clone().drop_guard();
        let mut wakes = self.store.event_wakes();
        let mut tick = tokio::time::interval(self.settings.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(Duration::from_secs(600));
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(self.settings.sequence_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                w = wakes.recv() => match w {
                    Ok(t) if !t.is_empty() => {
                        // This process committed events of `t` (and maybe of others since):
                        // the watched ones are numbered and sent now, the rest by the sweep.
                        let mut woken = vec![t];
                        while let Ok(more) = wakes.try_recv() {
                            if !woken.contains(&more) {
                                woken.push(more);
                            }
                        }
                        woken.retain(|t| self.feed(t).is_some());
                        if !woken.is_empty() {
                            self.sequence(&woken).await;
                            for t in &woken {
                                self.pump(t).await;
                            }
                        }
                    }
                    // Wakes were dropped: number and look at every watched tenant.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => self.poll().await,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = tick.tick() => {
                    self.forget_unwatched();
                    self.poll().await;
                }
                _ = sweep.tick() => {
                    // Events nobody here watches still get their ids soon (for the relay, for
                    // later watchers, and for replicas that went away before numbering them).
                    self.sequence(&[]).await;
                }
                _ = prune.tick() => {
                    let before = chrono::Utc::now() - self.settings.retention;
                    match self.store.prune_events(before).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(deleted = n, "call events past retention deleted"),
                        Err(e) => tracing::warn!(error = %e, "call event retention failed"),
                    }
                }
            }
        }
    }

    /// The store the events are read from (for the NATS relay).
    pub fn store(&self) -> Arc<dyn CallStore> {
        self.store.clone()
    }

    fn feed(&self, tenant: &str) -> Option<Arc<TenantFeed>> {
        self.tenants.lock().ok()?.get(tenant).cloned()
    }

    fn forget_unwatched(&self) {
        if let Ok(mut t) = self.tenants.lock() {
            t.retain(|_, f| f.tx.receiver_count() > 0);
        }
    }

    /// Numbers the committed events of `tenants` (every tenant with some, when empty).
    async fn sequence(&self, tenants: &[String]) {
        if let Err(e) = self.store.sequence_events(tenants).await {
            tracing::warn!(error = %e, "cannot number call events; retrying on the next pass");
        }
    }

    /// Numbers the watched tenants' new events (other replicas' too), then pumps those whose
    /// last event id moved past the hub's cursor.
    async fn poll(&self) {
        let watched: HashMap<String, Arc<TenantFeed>> = match self.tenants.lock() {
            Ok(t) if !t.is_empty() => t.clone(),
            _ => return,
        };
        let names: Vec<String> = watched.keys().cloned().collect();
        self.sequence(&names).await;
        let heads = match self.store.event_heads().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the call event counters; watchers wait");
                return;
            }
        };
        for (tenant, last) in heads {
            let Some(feed) = watched.get(&tenant) else {
                continue;
            };
            if *feed.cursor.lock().await < last {
                self.pump(&tenant).await;
            }
        }
    }

    /// Broadcasts the tenant's events above the hub's cursor (if anyone watches it).
    async fn pump(&self, tenant: &str) {
        let Some(feed) = self.feed(tenant) else {
            return;
        };
        let mut cursor = feed.cursor.lock().await;
        loop {
            let page = match self
                .store
                .events(tenant, *cursor, PAGE, &EventFilter::default())
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(tenant, error = %e, "cannot read call events; watchers wait");
                    return;
                }
            };
            let full = page.len() == PAGE as usize;
            for e in page {
                *cursor = e.event_id;
                let _ = feed.tx.send(Arc::new(e));
            }
            if !full {
                return;
            }
        }
    }

    /// Subscribes to the tenant's live events, creating its feed at the current last id. The
    /// receiver is taken under the map's lock, so the once-a-second clean-up (which drops
    /// feeds nobody receives from, under the same lock) can never orphan it.
    async fn subscribe(
        &self,
        tenant: &str,
    ) -> Result<broadcast::Receiver<Arc<CallEvent>>, GwError> {
        let poisoned = || GwError::Internal(anyhow::anyhow!("event hub lock poisoned"));
        if let Some(f) = self.tenants.lock().map_err(|_| poisoned())?.get(tenant) {
            return Ok(f.tx.subscribe());
        }
        let last = self.store.event_bounds(tenant).await?.last_id;
        let mut map = self.tenants.lock().map_err(|_| poisoned())?;
        let feed = map.entry(tenant.to_owned()).or_insert_with(|| {
            Arc::new(TenantFeed {
                tx: broadcast::channel(self.settings.buffer.max(1)).0,
                cursor: tokio::sync::Mutex::new(last),
            })
        });
        Ok(feed.tx.subscribe())
    }

    /// Counts a new watch of `principal`, or refuses it over the caps (each stream holds a slot
    /// of the port's requests in progress for its whole life, so watches are bounded apart).
    fn take_slot(&self, principal: &str) -> Result<Slot, GwError> {
        let mut open = self
            .open
            .lock()
            .map_err(|_| GwError::Internal(anyhow::anyhow!("watch count lock poisoned")))?;
        let total: usize = open.values().sum();
        if total >= self.settings.max_watches {
            return Err(GwError::ResourceExhausted(format!(
                "this replica already serves {total} watches (events.max_watches); retry shortly"
            )));
        }
        let mine = open.entry(principal.to_owned()).or_insert(0);
        if *mine >= self.settings.max_watches_per_principal {
            return Err(GwError::ResourceExhausted(format!(
                "{mine} watches are already open with these credentials (events.max_watches_per_principal); close one first"
            )));
        }
        *mine += 1;
        Ok(Slot {
            open: self.open.clone(),
            principal: principal.to_owned(),
        })
    }

    /// Starts a watch: the events it asked for, then live ones, into a bounded channel; the
    /// stream ends on shutdown, when the client goes away, or with an error.
    ///
    /// # Errors
    /// `OUT_OF_RANGE` for an id older than the retention or newer than any event.
    pub async fn watch(
        &self,
        req: WatchRequest,
    ) -> Result<mpsc::Receiver<Result<CallEvent, GwError>>, GwError> {
        let slot = self.take_slot(&req.principal)?;
        let tenant = req.tenant.as_str().to_owned();
        let live = self.subscribe(&tenant).await?;
        let bounds = self.store.event_bounds(&tenant).await?;
        let start = match req.after {
            None => bounds.pruned_through,
            Some(0) => bounds.last_id,
            Some(n) if n < bounds.pruned_through => {
                return Err(GwError::OutOfRange(format!(
                    "after_event_id: events up to {} are past the retention; resume with from_start (the oldest kept is {})",
                    bounds.pruned_through,
                    bounds.pruned_through.saturating_add(1)
                )));
            }
            Some(n) if n > bounds.last_id => {
                return Err(GwError::OutOfRange(format!(
                    "after_event_id: {n} is newer than the tenant's last event ({})",
                    bounds.last_id
                )));
            }
            Some(n) => n,
        };
        let (tx, rx) = mpsc::channel(self.settings.buffer.clamp(1, 1024));
        let watcher = Watcher {
            store: self.store.clone(),
            tenant,
            filter: EventFilter {
                call_id: req.call_id,
                collector_id: req.collector_id,
            },
            last: start,
            out: tx,
            _slot: slot,
        };
        tokio::spawn(watcher.run(live, self.stop.clone()));
        Ok(rx)
    }
}

struct Watcher {
    store: Arc<dyn CallStore>,
    tenant: String,
    filter: EventFilter,
    /// The last id handled (sent, filtered out, or known to hold nothing for this filter).
    last: u64,
    out: mpsc::Sender<Result<CallEvent, GwError>>,
    _slot: Slot,
}

/// One open watch, counted until it ends.
struct Slot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    principal: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.lock()
            && let Some(n) = open.get_mut(&self.principal)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.principal);
            }
        }
    }
}

/// Why a watch stopped early.
enum Stop {
    /// The client went away or the server is stopping: end quietly.
    Quiet,
    /// Tell the client.
    Error(GwError),
}

impl Watcher {
    async fn run(mut self, mut live: broadcast::Receiver<Arc<CallEvent>>, stop: CancellationToken) {
        let result: Result<(), Stop> = async {
            self.catch_up(None).await?;
            loop {
                let ev = tokio::select! {
                    () = stop.cancelled() => return Err(Stop::Quiet),
                    () = self.out.closed() => return Err(Stop::Quiet),
                    ev = live.recv() => ev,
                };
                match ev {
                    Ok(e) if e.event_id <= self.last => {}
                    Ok(e) => {
                        if e.event_id > self.last.saturating_add(1) {
                            // Ids are dense: the ones in between were committed before the
                            // hub caught up with us; read them from the table.
                            self.catch_up(Some(e.event_id - 1)).await?;
                        }
                        if e.event_id == self.last.saturating_add(1) {
                            self.send(&e).await?;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        return Err(Stop::Error(GwError::ResourceExhausted(format!(
                            "the watcher fell {n} events behind; reconnect with after_event_id {} (the last event received)",
                            self.last
                        ))));
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(Stop::Quiet),
                }
            }
        }
        .await;
        if let Err(Stop::Error(e)) = result {
            let _ = self.out.send(Err(e)).await;
        }
    }

    /// Reads and sends the stored events of the filter after `last` (up to `until`, or all);
    /// with `until`, everything up to it counts as handled afterwards, matching or not.
    async fn catch_up(&mut self, until: Option<u64>) -> Result<(), Stop> {
        loop {
            let page = self
                .store
                .events(&self.tenant, self.last, PAGE, &self.filter)
                .await
                .map_err(Stop::Error)?;
            let full = page.len() == PAGE as usize;
            for e in page {
                if until.is_some_and(|u| e.event_id > u) {
                    return Ok(());
                }
                self.send(&e).await?;
            }
            if !full {
                if let Some(u) = until {
                    self.last = self.last.max(u);
                }
                return Ok(());
            }
        }
    }

    async fn send(&mut self, e: &CallEvent) -> Result<(), Stop> {
        self.last = e.event_id;
        let f = &self.filter;
        let wanted = f.collector_id.as_ref().is_none_or(|c| *c == e.collector_id)
            && f.call_id.as_ref().is_none_or(|c| *c == e.call_id);
        if wanted {
            self.out
                .send(Ok(e.clone()))
                .await
                .map_err(|_| Stop::Quiet)?;
        }
        Ok(())
    }
}
