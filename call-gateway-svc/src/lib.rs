//! call-gateway-svc: tenant configs, collectors, calls, and the Infinity integration.
//!
//! Direction of travel (see `ARCHITECTURE.md`): the transports [`grpc`] and [`http`] convert
//! and call [`service`]; the services hold the rules and reach the outside only through
//! [`ports`] (the allocator's pool and Infinity) and [`store`] (the only module with SQL).
//! [`domain`] is plain types and rules, used by all and using none of them.
//!
//! - [`app`]: `Application::build` then `run_until_stopped`; wires everything.
//! - [`settings`]: typed, layered configuration.
//! - [`domain`]: validated types (configs, phone numbers, collectors, calls) and the error.
//! - [`service`]: configs, collectors, calls, settling (callbacks, outboxes, reconciler).
//! - [`ports`]: the `Leases` and `Pbx` traits the services depend on.
//! - [`allocator`]: `Leases` over allocator-svc's gRPC API (the only user of its contracts).
//! - [`infinity`]: `Pbx` over the Infinity HTTP API, and the vendor record parser.
//! - [`grpc`], [`http`]: the transports (gRPC services; the Infinity callback).
//! - [`store`]: one store for PostgreSQL, MySQL/MariaDB and SQLite.
//! - [`crypto`]: AES-256-GCM sealing of secrets at rest with a rotating key ring.
//! - [`metrics`]: the gateway's own Prometheus metrics.
//! - [`background`]: outboxes, reconciler and gauges on a timer.
pub mod allocator;
pub mod app;
pub mod background;
pub mod crypto;
pub mod domain;
pub mod grpc;
pub mod http;
pub mod infinity;
pub mod metrics;
pub mod ports;
pub mod relay;
pub mod service;
pub mod settings;
pub mod store;
