//! The gateway's own Prometheus metrics; every name and label set lives here. RPC outcomes and
//! latency by method and code (`gateway_rpc_*`) are counted by the platform's server build.
//! Labels are bounded: operations, outcomes, parts and statuses from fixed lists, Infinity's
//! codes only when they are among its documented ones; never a tenant, collector or call id.
//!
//! | metric | what |
//! |---|---|
//! | `gateway_make_call_duration_seconds{part}` | MakeCall latency: `total`, the `acquire` and `infinity` waits, and `own` (the rest: validation, database) |
//! | `gateway_infinity_requests_total{op,outcome,code}` | requests to Infinity by operation and outcome (`ok`, `refused`, `auth`, `upstream`, `not_sent`, `ambiguous`) with the code |
//! | `gateway_callbacks_total{outcome}` | callbacks: `completed`, `duplicate`, `unmatched`, `unauthorized`, `forbidden`, `bad_request`, `error` |
//! | `gateway_open_calls{status}` | calls dialing, ringing or unknown |
//! | `gateway_outbox_depth`, `gateway_outbox_oldest_seconds` | lease releases still owed to the allocator, and the age of the oldest |
//! | `gateway_pool_purges_pending` | pools of deleted configs the allocator has still to delete |
//! | `gateway_reconciler_lag_seconds` | how long the oldest open call due for reconciliation has waited |
//! | `gateway_cache_lookups_total{cache,outcome}` | reads of the `config` and `collector` caches: `hit`, `miss`, `off` (cache disabled or the change feed down) |
//! | `gateway_coalesced_ringing_statements`, `..._requests` | transactions that marked accepted dials ringing, and the dials they carried |
//! | `gateway_coalesced_release_confirmations_statements`, `..._requests` | transactions that cleared confirmed releases from the outbox, and the releases |

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::domain::GwError;
use crate::domain::call::{Call, CallStatus, Completion};
use crate::domain::config::TenantConfig;
use crate::ports::{Dial, Pbx, PbxError, PbxExtension, RecordingLink};
use crate::store::calls::Snapshot;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartLabel {
    part: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfinityLabels {
    op: &'static str,
    outcome: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

/// Handles to every metric of the gateway (cheap to clone).
#[derive(Clone, Debug)]
pub struct GatewayMetrics {
    make_call: Family<PartLabel, Histogram, fn() -> Histogram>,
    infinity: Family<InfinityLabels, Counter>,
    callbacks: Family<OutcomeLabel, Counter>,
    open_calls: Family<StatusLabel, Gauge>,
    outbox_depth: Gauge,
    outbox_oldest: Gauge,
    purges: Gauge,
    reconciler_lag: Gauge,
    cache: Family<CacheLabels, Counter>,
}

fn latency() -> Histogram {
    Histogram::new([
        0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
    ])
}

/// Infinity's codes worth a label of their own (the documented ones); others are `other`.
fn code_label(code: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "400", "500", "600", "601", "602", "603", "604", "1001", "1002", "1003", "1010", "1011",
        "1012", "1013", "1014", "1015", "1016", "1017", "1018", "1019", "1020", "1021", "1024",
        "1025", "1026", "1027", "1028", "1029", "1031", "1032", "1033",
    ];
    KNOWN
        .iter()
        .find(|k| **k == code)
        .copied()
        .unwrap_or("other")
}

impl GatewayMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            make_call: Family::new_with_constructor(latency as fn() -> Histogram),
            infinity: Family::default(),
            callbacks: Family::default(),
            open_calls: Family::default(),
            outbox_depth: Gauge::default(),
            outbox_oldest: Gauge::default(),
            purges: Gauge::default(),
            reconciler_lag: Gauge::default(),
            cache: Family::default(),
        };
        registry.register(
            "gateway_make_call_duration_seconds",
            "MakeCall latency: total, acquire and infinity waits, and the gateway's own time",
            m.make_call.clone(),
        );
        registry.register(
            "gateway_infinity_requests",
            "Requests to Infinity by operation, outcome and code",
            m.infinity.clone(),
        );
        registry.register(
            "gateway_callbacks",
            "Infinity callbacks by outcome",
            m.callbacks.clone(),
        );
        registry.register(
            "gateway_open_calls",
            "Calls dialing, ringing or unknown",
            m.open_calls.clone(),
        );
        registry.register(
            "gateway_outbox_depth",
            "Lease releases still owed to the allocator",
            m.outbox_depth.clone(),
        );
        registry.register(
            "gateway_outbox_oldest_seconds",
            "Age of the oldest lease release still owed",
            m.outbox_oldest.clone(),
        );
        registry.register(
            "gateway_pool_purges_pending",
            "Pools of deleted configs the allocator has still to delete",
            m.purges.clone(),
        );
        registry.register(
            "gateway_reconciler_lag_seconds",
            "How long the oldest open call due for reconciliation has waited",
            m.reconciler_lag.clone(),
        );
        registry.register(
            "gateway_cache_lookups",
            "Reads of the config and collector caches by outcome",
            m.cache.clone(),
        );
        m
    }

    /// Metrics that go nowhere (tools and tests that build services without a registry).
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    /// Records one MakeCall's latency and its split.
    pub fn make_call(&self, total: Duration, acquire: Duration, infinity: Duration) {
        let own = total.saturating_sub(acquire).saturating_sub(infinity);
        for (part, d) in [
            ("total", total),
            ("acquire", acquire),
            ("infinity", infinity),
            ("own", own),
        ] {
            self.make_call
                .get_or_create(&PartLabel { part })
                .observe(d.as_secs_f64());
        }
    }

    /// Counts one read of a cache by outcome (`hit`, `miss`, `off`).
    pub fn cache_lookup(&self, cache: &'static str, outcome: &'static str) {
        self.cache
            .get_or_create(&CacheLabels { cache, outcome })
            .inc();
    }

    /// Counts one callback by outcome.
    pub fn callback(&self, outcome: &'static str) {
        self.callbacks
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    fn infinity<T>(&self, op: &'static str, r: &Result<T, PbxError>) {
        let (outcome, code) = match r {
            Ok(_) => ("ok", "ok"),
            Err(PbxError::Refused { code, .. }) => ("refused", code_label(code)),
            Err(PbxError::Auth { ret, .. }) => ("auth", code_label(&ret.to_string())),
            Err(PbxError::Upstream(_)) => ("upstream", "other"),
            Err(PbxError::NotSent(_)) => ("not_sent", "other"),
            Err(PbxError::Ambiguous(_)) => ("ambiguous", "other"),
        };
        self.infinity
            .get_or_create(&InfinityLabels { op, outcome, code })
            .inc();
    }

    /// Sets the gauges from a snapshot of the call store.
    pub fn observe(&self, s: &Snapshot) {
        for status in [
            CallStatus::Dialing,
            CallStatus::Ringing,
            CallStatus::Unknown,
        ] {
            let n = s
                .open
                .iter()
                .find(|(st, _)| *st == status)
                .map_or(0, |(_, n)| *n);
            self.open_calls
                .get_or_create(&StatusLabel {
                    status: status.as_str(),
                })
                .set(n);
        }
        self.outbox_depth.set(s.outbox_depth);
        self.outbox_oldest.set(age(s.outbox_oldest, s.now));
        self.purges.set(s.pool_purges);
        self.reconciler_lag.set(age(s.reconcile_due_since, s.now));
    }
}

fn age(since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> i64 {
    since.map_or(0, |t| (now - t).num_seconds().max(0))
}

/// A [`Pbx`] that counts every request by operation and outcome, around another.
pub struct MeteredPbx {
    inner: Arc<dyn Pbx>,
    metrics: GatewayMetrics,
}

impl MeteredPbx {
    /// Counts the requests of `inner` in `metrics`.
    pub fn new(inner: Arc<dyn Pbx>, metrics: GatewayMetrics) -> Self {
        Self { inner, metrics }
    }
}

#[async_trait]
impl Pbx for MeteredPbx {
    fn check_api_url(&self, api_url: &str) -> Result<(), GwError> {
        self.inner.check_api_url(api_url)
    }

    async fn dial(&self, cfg: &TenantConfig, dial: &Dial) -> Result<String, PbxError> {
        let r = self.inner.dial(cfg, dial).await;
        self.metrics.infinity("dial", &r);
        r
    }

    async fn find_record(
        &self,
        cfg: &TenantConfig,
        call: &Call,
        now: DateTime<Utc>,
    ) -> Result<Option<Completion>, PbxError> {
        let r = self.inner.find_record(cfg, call, now).await;
        self.metrics.infinity("get_bill", &r);
        r
    }

    async fn recording_link(
        &self,
        cfg: &TenantConfig,
        filename: &str,
    ) -> Result<RecordingLink, PbxError> {
        let r = self.inner.recording_link(cfg, filename).await;
        self.metrics.infinity("recording_link", &r);
        r
    }

    async fn hang_up(&self, cfg: &TenantConfig, extension: &str) -> Result<String, PbxError> {
        let r = self.inner.hang_up(cfg, extension).await;
        self.metrics.infinity("hang_up", &r);
        r
    }

    async fn login(&self, cfg: &TenantConfig) -> Result<String, PbxError> {
        let r = self.inner.login(cfg).await;
        self.metrics.infinity("login", &r);
        r
    }

    async fn extensions(&self, cfg: &TenantConfig) -> Result<Vec<PbxExtension>, PbxError> {
        let r = self.inner.extensions(cfg).await;
        self.metrics.infinity("extensions", &r);
        r
    }
}
