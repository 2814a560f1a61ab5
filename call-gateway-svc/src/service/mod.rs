//! The gateway's rules, called by the transports ([`crate::grpc`], [`crate::http`]): no SQL and
//! no protobuf here. Each service owns one concern and holds only what it needs:
//!
//! - [`Configs`]: tenant configs (validation, sealing, versions), policies, TestConnection,
//!   DeleteConfig.
//! - [`Collectors`]: collectors and their callback numbers.
//! - [`Calls`]: MakeCall and the call queries (GetCall, ListCalls, GetRecording, HangUp).
//! - [`Settling`]: what ends a call and frees its lease: Infinity's record (callback or
//!   reconciler), the release and pool-deletion outboxes, expiry.
//! - [`Events`]: live call events (WatchCalls).
//! - [`Compliance`]: the compliance gate at dial time (CheckCall too), policies, do-not-call
//!   lists, overrides and the decisions' audit.
//! - [`Tenants`]: reading and writing configs (sealing secrets), shared by all of them.
//!
//! They reach the outside through the ports ([`crate::ports::Leases`], [`crate::ports::Pbx`])
//! and the stores.

mod cache;
mod calls;
mod collectors;
mod compliance;
mod configs;
mod events;
mod settling;
mod tenants;

use std::sync::Arc;

pub use calls::{Calls, MakeCall, Recording};
pub use collectors::{Collectors, MAX_PAGE};
pub use compliance::{
    Admission, Clock, Compliance, ComplianceSettings, GateInput, ImportReport, MAX_IMPORT_LINES,
    MAX_LINE_ERRORS, SystemClock, Verdict, number_refusal,
};
pub use configs::{Configs, TestReport};
pub use events::{EventSettings, Events, WatchRequest};
pub use settling::{CallbackOutcome, Settling};
pub use tenants::Tenants;

use crate::crypto::Cipher;
use crate::metrics::GatewayMetrics;
use crate::ports::{Leases, Pbx};
use crate::store::ConfigStore;
use crate::store::calls::CallStore;

/// Tuning of the call flow: its background work, caches and coalescing.
#[derive(Debug, Clone)]
pub struct CallTuning {
    /// Open calls are first looked up with GetBill this long after they were created.
    pub reconcile_after: chrono::Duration,
    /// An open call with no record from Infinity after this long is expired and its lease freed.
    pub max_call_age: chrono::Duration,
    /// How often a claimed open call is looked at again.
    pub reconcile_every: chrono::Duration,
    /// Longest use of a cached config or collector (zero: no cache).
    pub cache_ttl: std::time::Duration,
    /// Coalescing of accepted dials and release confirmations.
    pub coalesce: cco_platform::coalesce::Limits,
    /// Live call events.
    pub events: EventSettings,
}

/// The gateway's services, wired once at start-up.
#[derive(Clone, Debug)]
pub struct Services {
    /// Tenant configs.
    pub configs: Configs,
    /// Collectors.
    pub collectors: Collectors,
    /// Calls.
    pub calls: Calls,
    /// Settling calls and their leases.
    pub settling: Settling,
    /// Live call events.
    pub events: Events,
    /// The compliance gate and its administration.
    pub compliance: Compliance,
    /// Tenant configs as the call path reads them.
    pub tenants: Tenants,
}

impl Services {
    /// Registers the coalescing counters.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.calls.register_metrics(registry);
        self.settling.register_metrics(registry);
    }

    /// Wires the services over the stores and the ports.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        configs: Arc<dyn ConfigStore>,
        calls: Arc<dyn CallStore>,
        cipher: Cipher,
        pbx: Arc<dyn Pbx>,
        leases: Arc<dyn Leases>,
        compliance: Compliance,
        tuning: CallTuning,
        metrics: GatewayMetrics,
    ) -> Self {
        let events = Events::new(calls.clone(), tuning.events.clone());
        let tenants = Tenants::new(configs.clone(), cipher, tuning.cache_ttl, metrics.clone());
        let settling = Settling::new(
            tenants.clone(),
            calls.clone(),
            leases.clone(),
            pbx.clone(),
            tuning.clone(),
            metrics.clone(),
        );
        let collectors = Collectors::new(
            tenants.clone(),
            configs.clone(),
            tuning.cache_ttl,
            metrics.clone(),
        );
        Self {
            configs: Configs::new(
                tenants.clone(),
                calls.clone(),
                leases.clone(),
                pbx.clone(),
                settling.clone(),
            ),
            calls: Calls::new(
                tenants.clone(),
                collectors.clone(),
                calls,
                leases,
                pbx,
                settling.clone(),
                compliance.clone(),
                tuning,
                metrics,
            ),
            collectors,
            settling,
            events,
            compliance,
            tenants,
        }
    }
}
