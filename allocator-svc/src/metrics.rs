//! The allocator's own Prometheus metrics; every name lives here. RPC outcomes and latency by
//! method and code (`allocator_rpc_*`) are counted by the platform's server build. Labels are
//! bounded: never a tenant or collector id.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Handles to every metric.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Acquire latency in seconds.
    pub acquire_seconds: Histogram,
    /// Live leases across all tenants (refreshed by the reaper).
    pub live_leases: Gauge,
    /// Leases freed by the reaper.
    pub reaped: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            acquire_seconds: Histogram::new([
                0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            live_leases: Gauge::default(),
            reaped: Counter::default(),
        };
        registry.register(
            "allocator_acquire_duration_seconds",
            "Time to serve one Acquire",
            m.acquire_seconds.clone(),
        );
        registry.register(
            "allocator_live_leases",
            "Live leases across all tenants",
            m.live_leases.clone(),
        );
        registry.register(
            "allocator_reaped_leases",
            "Leases freed by the reaper",
            m.reaped.clone(),
        );
        m
    }
}
