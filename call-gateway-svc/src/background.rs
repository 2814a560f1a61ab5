//! The gateway's background work, on every replica: retrying owed lease releases and pool
//! deletions (the outboxes), reconciling calls whose callback never came, and refreshing the
//! gauges. Safe with several replicas (see [`crate::service::Settling`]).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::service::Settling;

/// How often the gauges of open calls and outboxes are refreshed.
pub const OBSERVE_EVERY: Duration = Duration::from_secs(5);

/// Runs the loops until `shutdown` is cancelled.
pub async fn run(
    settling: Settling,
    outbox_every: Duration,
    reconcile_every: Duration,
    shutdown: CancellationToken,
) {
    let mut outbox = tokio::time::interval(outbox_every);
    let mut reconcile = tokio::time::interval(reconcile_every);
    let mut observe = tokio::time::interval(OBSERVE_EVERY);
    for t in [&mut outbox, &mut reconcile, &mut observe] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = outbox.tick() => {
                if let Err(e) = settling.drain_outbox().await {
                    tracing::warn!(error = %e, "outbox pass failed");
                }
            }
            _ = reconcile.tick() => {
                if let Err(e) = settling.reconcile().await {
                    tracing::warn!(error = %e, "reconciler pass failed");
                }
            }
            _ = observe.tick() => {
                if let Err(e) = settling.observe().await {
                    tracing::debug!(error = %e, "gauges not refreshed");
                }
            }
        }
    }
}
