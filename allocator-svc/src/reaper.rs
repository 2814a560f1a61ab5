//! Frees expired leases. Every instance runs one; `skip locked` (PostgreSQL) or the single
//! write lock (SQLite) keeps them from freeing the same lease twice. A lease is freed no
//! earlier than its expiry (the store compares with the database clock) and no later than
//! expiry plus one interval plus the sweep's own time.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::service::Allocator;

/// Sweeps until `shutdown` is cancelled.
pub async fn run(
    svc: Allocator,
    metrics: Metrics,
    interval: Duration,
    batch: u32,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        sweep(&svc, &metrics, batch).await;
    }
}

/// Frees every lease expired now, in batches; returns how many were freed.
pub async fn sweep(svc: &Allocator, metrics: &Metrics, batch: u32) -> usize {
    let mut total = 0;
    loop {
        match svc.store().reap_expired(batch).await {
            Ok(reaped) => {
                for l in &reaped {
                    tracing::info!(lease_id = %l.lease_id, tenant_id = %l.tenant_id, extension = %l.extension_number, "lease expired and freed");
                }
                total += reaped.len();
                metrics.reaped.inc_by(reaped.len() as u64);
                if reaped.len() < batch as usize {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reaper sweep failed; retrying next tick");
                break;
            }
        }
    }
    if let Ok(n) = svc.store().live_leases().await {
        metrics.live_leases.set(n);
    }
    total
}
