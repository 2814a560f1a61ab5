//! The gateway's background work: retrying owed lease releases (the outbox) and reconciling
//! calls whose callback never came. Safe with several replicas: rows are claimed in the
//! database before they are worked on, and every step is idempotent.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::service::Gateway;

/// Runs both loops until `shutdown` is cancelled.
pub async fn run(
    gw: Gateway,
    outbox_every: Duration,
    reconcile_every: Duration,
    shutdown: CancellationToken,
) {
    let mut outbox = tokio::time::interval(outbox_every);
    let mut reconcile = tokio::time::interval(reconcile_every);
    outbox.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = outbox.tick() => {
                if let Err(e) = gw.drain_outbox().await {
                    tracing::warn!(error = %e, "outbox pass failed");
                }
            }
            _ = reconcile.tick() => {
                if let Err(e) = gw.reconcile().await {
                    tracing::warn!(error = %e, "reconciler pass failed");
                }
            }
        }
    }
}
