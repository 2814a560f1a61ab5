//! The allocator's Prometheus metrics; every name and label set lives here. Labels are bounded:
//! the RPC name and the gRPC code, never a tenant or collector id.

use cco_platform::metrics::{OutcomeLabels, code_name};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Handles to every metric.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Acquire latency in seconds.
    pub acquire_seconds: Histogram,
    /// RPC outcomes.
    pub outcomes: Family<OutcomeLabels, Counter>,
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
            outcomes: Family::default(),
            live_leases: Gauge::default(),
            reaped: Counter::default(),
        };
        registry.register(
            "allocator_acquire_duration_seconds",
            "Time to serve one Acquire",
            m.acquire_seconds.clone(),
        );
        registry.register(
            "allocator_rpc_outcomes",
            "RPC outcomes by code",
            m.outcomes.clone(),
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

    /// Counts one outcome of `op`.
    pub fn outcome(&self, op: &'static str, code: tonic::Code) {
        self.outcomes
            .get_or_create(&OutcomeLabels {
                op,
                code: code_name(code),
            })
            .inc();
    }
}
